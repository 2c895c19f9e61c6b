"""reverse: reverse a string of digits (123456 -> 654321) with a full-attention seq2seq model."""

from __future__ import annotations

from nano_train.problems.sort import DigitStrings


class Reverse(DigitStrings):
    name = "reverse"
    title = "reverse a string of digits (123456 -> 654321), full-attention seq2seq"
    examples = ("123456", "251212", "900001", "777777")

    def solve(self, question: str) -> str:
        return question[::-1]
