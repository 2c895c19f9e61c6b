"""Transformers beyond text: small tasks, each with its own data generator,
vocabulary, model and training config, and an exact-match evaluation on
held-out cases in PyTorch and in the C engine.

    sort      sort a string of digits (114515 -> 111455), full-attention seq2seq
    reverse   reverse a string of digits (123456 -> 654321), full-attention seq2seq
    boolean   evaluate prefix boolean expressions ((+ (* 0 1) (* 1 1)) = -> 1), autoregressive
    holes     count the closed loops in a number's digits (2024 -> 1, 888 -> 6), autoregressive

Run one with `python -m nano_train.problems NAME` (see its --help). From Python:

    from nano_train.problems import make, runner
    result = runner.run(make("sort"), runner.Options(out_dir=Path("runs/problems/sort")))
"""

from __future__ import annotations

from nano_train.problems.base import Case, Problem
from nano_train.problems.boolean import Boolean
from nano_train.problems.holes import Holes
from nano_train.problems.reverse import Reverse
from nano_train.problems.sort import Sort

PROBLEMS: dict[str, type[Problem]] = {p.name: p for p in (Sort, Reverse, Boolean, Holes)}

__all__ = ["PROBLEMS", "Problem", "Case", "make"]


def make(name: str, **params: int) -> Problem:
    """The problem called name, with its settings (e.g. digits=6); ValueError if unknown."""
    try:
        cls = PROBLEMS[name]
    except KeyError:
        raise ValueError(f"unknown problem {name!r}; the problems are {', '.join(PROBLEMS)}") from None
    return cls(**params)
