"""holes: count the closed loops in the digits of a number (0, 6 and 9 have one,
8 has two, the others none: 2024 -> 1, 888 -> 6), with an autoregressive model.

The question is a number of exactly `digits` digits (no leading zero); the
answer is the count in decimal, generated greedily after <|response_mark|>.
"""

from __future__ import annotations

import itertools
import random

from nano_train.problems.base import Problem, train_config
from nano_train.problems.sort import DIGITS

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
    examples = ("202400", "888888", "123457", "609860", "100000")

    def check(self) -> None:
        # 2 digits: 90 numbers, one of them held out for the test and none for validation
        if self.digits < 3:
            raise ValueError("holes: --digits must be at least 3 (with fewer, no number is held out for the test "
                             "or for validation)")
        if self.digits > 40:
            raise ValueError("holes: --digits must be at most 40")

    def question_count(self) -> int:
        return 9 * 10 ** (self.digits - 1)

    def all_questions(self):
        for first in DIGITS[1:]:
            for rest in itertools.product(DIGITS, repeat=self.digits - 1):
                yield first + "".join(rest)

    def alphabet(self) -> str:
        return DIGITS

    def draw(self, rng: random.Random) -> str:
        return rng.choice(DIGITS[1:]) + "".join(rng.choice(DIGITS) for _ in range(self.digits - 1))

    def solve(self, question: str) -> str:
        return str(count_holes(question))

    def max_answer_tokens(self) -> int:
        return len(str(2 * self.digits))

    def block_size(self) -> int:
        # <|instruct_mark|> digits <|response_mark|> answer <|eos|>, minus one (x = row[:-1])
        return 1 + self.digits + 1 + self.max_answer_tokens() + 1 - 1

    def model_config(self) -> dict:
        return train_config({"block_size": self.block_size(), "n_layer": 2, "n_embd": 64})
