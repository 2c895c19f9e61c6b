"""holes: count the closed loops in the digits of a number (0, 6 and 9 have one,
8 has two, the others none: 2024 -> 1, 888 -> 6), with an autoregressive model.

The question is a number of exactly `digits` digits (no leading zero); the
answer is the count in decimal, generated greedily after <|response_mark|>.
"""

from __future__ import annotations

import random

from nano_train.problems.base import Problem

LOOPS = {"0": 1, "6": 1, "9": 1, "8": 2}


def count_holes(number: str) -> int:
    """Closed loops in the written digits: 0, 6, 9 have one, 8 has two."""
    if not number or not number.isdigit() or not number.isascii():
        raise ValueError(f"not a number: {number!r}")
    return sum(LOOPS.get(d, 0) for d in number)


class Holes(Problem):
    name = "holes"
    title = "count the closed loops in the digits of a number (2024 -> 1, 888 -> 6), autoregressive"
    kind = "instruct"
    PARAMS = {"digits": 6}
    PARAM_HELP = {"digits": "digits of the numbers (default 6)"}
    examples = ("202400", "888888", "123457", "609860", "100000")

    def check(self) -> None:
        if self.digits > 40:
            raise ValueError("holes: --digits must be at most 40")

    def alphabet(self) -> str:
        return "0123456789"

    def draw(self, rng: random.Random) -> str:
        return rng.choice("123456789") + "".join(rng.choice("0123456789") for _ in range(self.digits - 1))

    def solve(self, question: str) -> str:
        return str(count_holes(question))

    def max_answer_tokens(self) -> int:
        return len(str(2 * self.digits))

    def block_size(self) -> int:
        # <|instruct_mark|> digits <|response_mark|> answer <|eos|>, minus one (x = row[:-1])
        return 1 + self.digits + 1 + self.max_answer_tokens() + 1 - 1

    def model_config(self) -> dict:
        return {
            "model": {"block_size": self.block_size(), "n_layer": 2, "n_embd": 64, "n_head": 4, "n_kv_head": 4},
            "data": {"batch_size": 256},
            "optim": {"learning_rate": 3e-3, "min_lr": 1e-4, "warmup_iters": 100, "max_iters": 6000,
                      "weight_decay": 0.0, "time_budget": 120.0},
            "eval": {"eval_interval": 500, "eval_iters": 4},
            "run": {"log_interval": 20},
            "system": {"threads": 1},
        }
