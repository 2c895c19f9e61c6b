"""Answering held-out questions: in PyTorch, and in the C engine through the
`nano` command (a subprocess; nano_train never imports C-engine code).

Both sides decode the same way: seq2seq models take the argmax at every
position of one forward; instruct models generate greedily after the instruct
prompt, at most max_answer_tokens + 1 tokens, stopping at <|eos|> (not part
of the answer). Ties go to the lowest id on both sides.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import torch

from nano_train.problems.base import Case, Problem


class EngineError(RuntimeError):
    """The nano program is missing, cannot be built, or failed on the cases."""


TOOLCHAIN_HINT = "`python tools/setup/system_deps.py build` installs a C toolchain"
# make's own lines around the cause of a failed build: where it works, and the rule that failed
_MAKE_NOISE = re.compile(r"make(\[\d+\])?: (\*\*\* \[.*\] Error \d+|\*\*\* Waiting for unfinished jobs"
                         r"|Entering directory|Leaving directory)")


# ---------------------------------------------------------------------------
# PyTorch


@torch.no_grad()
def predict_torch(problem: Problem, model, tok, questions: list[str], batch_size: int = 512) -> list[str]:
    """The model's answer to each question (batched; questions of one token length together)."""
    model.eval()
    device = model.tok_embd.weight.device
    prompts = [problem.prompt_ids(tok, q) for q in questions]
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_len[len(p)].append(i)
    answers: list[str] = [""] * len(questions)
    block = model.config.block_size
    for length, members in by_len.items():
        if length > block:
            raise ValueError(f"{problem.name}: a question of {length} tokens does not fit block size {block}")
        for start in range(0, len(members), batch_size):
            idx = members[start:start + batch_size]
            x = torch.tensor([prompts[i] for i in idx], dtype=torch.long, device=device)  # [B, T]
            if problem.kind == "seq2seq":
                logits, _ = model(x)  # [B, T, V]
                out = logits.argmax(dim=-1).tolist()  # the first maximum: the lowest id on ties
                for i, ids in zip(idx, out):
                    answers[i] = tok.decode(ids)
                continue
            generated = [[] for _ in idx]
            done = [False] * len(idx)
            for _ in range(problem.max_answer_tokens() + 1):
                if x.shape[1] > block:  # the engines stop at the block size too
                    break
                logits, _ = model(x)
                nxt = logits[:, -1].argmax(dim=-1)  # [B]
                for b, t in enumerate(nxt.tolist()):
                    if done[b]:
                        continue
                    if t == tok.eos_id:
                        done[b] = True
                    else:
                        generated[b].append(t)
                if all(done):
                    break
                x = torch.cat([x, nxt[:, None]], dim=1)
            for i, ids in zip(idx, generated):
                answers[i] = tok.decode(ids)
    return answers


# ---------------------------------------------------------------------------
# The C engine


def repo_root() -> Path | None:
    """The checkout this package runs from (the folder holding engines/c-core), if any."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "engines" / "c-core" / "Makefile").is_file():
            return parent
    return None


def build_failure_cause(stdout: str, stderr: str, status: int) -> str:
    """The line of a failed make that says why: the last error line of the compiler or
    of make (`make: cc: No such file or directory`), else the last line that is not
    make's own bookkeeping (entering a folder, the rule that failed)."""
    lines = [line.strip() for line in (stderr or stdout).splitlines()]
    lines = [line for line in lines if line and not _MAKE_NOISE.match(line)]
    errors = [line for line in lines if re.search(r"error|no such file|not found|cannot", line, re.I)]
    return (errors or lines or [f"make exited with status {status}"])[-1]


def build_nano(root: Path, say=print) -> Path:
    """`make -C engines/c-core build/nano` (incremental; the nano program only, which
    needs a C compiler and nothing else). Returns the program's path. EngineError, one
    line naming the cause and how to install a toolchain, when it cannot be built."""
    if shutil.which("make") is None:
        raise EngineError(f"cannot build the C engine: make is not installed; {TOOLCHAIN_HINT}")
    core = root / "engines" / "c-core"
    res = subprocess.run(["make", "-C", str(core), "build/nano"], capture_output=True, text=True)
    if res.returncode != 0:
        cause = build_failure_cause(res.stdout, res.stderr, res.returncode)
        raise EngineError(f"cannot build the C engine (make -C {core} build/nano): {cause}; {TOOLCHAIN_HINT}")
    if "Nothing to be done" not in res.stdout and "is up to date" not in res.stdout:
        say(f"built {core / 'build' / 'nano'}")
    return core / "build" / "nano"


def find_nano(path: str | os.PathLike | None = None, build: bool = True, say=print) -> Path:
    """The nano program: `path` if given (absolute, so that `./nano` is not looked up on
    PATH; ConfigError, a bad argument, when it is not an executable file); else, in a
    checkout, engines/c-core/build/nano (brought up to date with make when `build`)."""
    if path is not None:
        from nano_train.config import ConfigError

        p = Path(path).absolute()
        if not p.is_file() or not os.access(p, os.X_OK):
            raise ConfigError(f"--nano {path}: not an executable file")
        return p
    root = repo_root()
    if root is None:
        raise EngineError("cannot find the nano program: pass --nano PATH (from Python: "
                          "runner.Options(nano=PATH); build it with `make -C engines/c-core` in a Nano "
                          "checkout), or --no-c (Options(use_c=False)) to skip the C engine")
    if build:
        try:
            return build_nano(root, say)
        except EngineError as e:
            raise EngineError(f"{e}, or --no-c skips the C engine") from None
    p = root / "engines" / "c-core" / "build" / "nano"
    if not p.is_file():
        raise EngineError(f"{p} does not exist: build it with `make -C {root / 'engines' / 'c-core'}`")
    return p


_ESCAPES = {"n": "\n", "r": "\r", "\\": "\\"}


def unescape_answer(line: str) -> str:
    """An answer as `nano` writes it in its line-batch modes (engines/c-core/README.md,
    "One answer per line"): a line break is \\n, a carriage return \\r and a
    backslash \\\\; any other backslash sequence is an error (not nano's output)."""
    if "\\" not in line:
        return line
    out, i = [], 0
    while i < len(line):
        c = line[i]
        if c == "\\":
            e = _ESCAPES.get(line[i + 1:i + 2])
            if e is None:
                raise EngineError(f"nano wrote an answer with a bad escape at character {i}: {line!r}")
            out.append(e)
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def predict_c(problem: Problem, nano: Path, model_path: Path, questions: list[str], threads: int = 1,
              timeout: float = 600) -> list[str]:
    """The C engine's answer to each question: one `nano` process for all of them,
    one question per line of its standard input, one answer per line of its output
    (escaped so that an answer holding a line break stays on its line; unescaped here)."""
    if any("\n" in q or "\r" in q or not q for q in questions):
        raise ValueError("questions must be non-empty single lines")
    if problem.kind == "seq2seq":
        cmd = [str(nano), "seq2seq", "-m", str(model_path), "--threads", str(threads), "-"]
    else:  # the chat mode: one instruct question per line, each from a fresh context
        cmd = [str(nano), "run", "-m", str(model_path), "-t", "0", "-n", str(problem.max_answer_tokens() + 1),
               "--threads", str(threads)]
    text = "".join(q + "\n" for q in questions)
    try:
        res = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EngineError(f"{' '.join(cmd)} took more than {timeout:g} s") from None
    if res.returncode != 0:
        raise EngineError(f"{' '.join(cmd)} failed (exit {res.returncode}): "
                          f"{res.stderr.decode('utf-8', 'replace').strip()}")
    lines = res.stdout.decode("utf-8", "replace").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != len(questions):
        raise EngineError(f"{' '.join(cmd)} gave {len(lines)} answers for {len(questions)} questions")
    return [unescape_answer(line) for line in lines]


# ---------------------------------------------------------------------------
# Scores


def score(cases: list[Case], answers: list[str], problem: Problem | None = None) -> dict:
    """{"correct", "total", "accuracy", "by": {category: [correct, total]}}."""
    correct = sum(a == c.answer for c, a in zip(cases, answers))
    by: dict[str, list[int]] = {}
    if problem is not None:
        for c, a in zip(cases, answers):
            cat = problem.category(c.question)
            if cat is not None:
                slot = by.setdefault(cat, [0, 0])
                slot[0] += a == c.answer
                slot[1] += 1
    return {"correct": correct, "total": len(cases), "accuracy": correct / max(len(cases), 1),
            "by": dict(sorted(by.items()))}


def disagreements(a: list[str], b: list[str]) -> list[int]:
    """Indices where two lists of answers differ."""
    return [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
