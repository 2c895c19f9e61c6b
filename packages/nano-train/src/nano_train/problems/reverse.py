"""reverse: reverse a string of digits (123456 -> 654321) with a full-attention seq2seq model."""

from __future__ import annotations

import random

from nano_train.problems.base import Problem
from nano_train.problems.sort import DIGITS, all_digit_strings, check_digits, seq2seq_config


class Reverse(Problem):
    name = "reverse"
    title = "reverse a string of digits (123456 -> 654321), full-attention seq2seq"
    kind = "seq2seq"
    PARAMS = {"digits": 6}
    PARAM_HELP = {"digits": "length of the strings (default 6)"}
    examples = ("123456", "251212", "900001", "777777")

    def check(self) -> None:
        check_digits(self)

    def question_count(self) -> int:
        return 10 ** self.digits

    def all_questions(self):
        return all_digit_strings(self.digits)

    def alphabet(self) -> str:
        return DIGITS

    def draw(self, rng: random.Random) -> str:
        return "".join(rng.choice(DIGITS) for _ in range(self.digits))

    def solve(self, question: str) -> str:
        return question[::-1]

    def block_size(self) -> int:
        return self.digits

    def model_config(self) -> dict:
        return seq2seq_config(self.digits)
