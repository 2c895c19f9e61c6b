"""sort: sort a string of digits (114515 -> 111455) with a full-attention seq2seq model.

The model reads the whole string at once and writes the answer's digit at each
position (argmax at every position): one forward, no generation loop.
"""

from __future__ import annotations

import itertools
import random

from nano_train.problems.base import Problem, train_config

DIGITS = "0123456789"
# --digits of sort and reverse. Fewer than 2: no question is held out for the test
# (1 digit: 10 questions, none of them in the test split). More than 64: the block
# size is the number of digits, and the 200,000 generated training rows grow with it
# (64 digits: about 18 s and 0.75 GB to generate; 128: 30 s and 1.2 GB); the C
# engine itself takes a block of up to 2^20 (nano_format's MAX_DIM).
MIN_DIGITS, MAX_DIGITS = 2, 64


def all_digit_strings(digits: int):
    """Every string of `digits` digits, in order (what DigitStrings.draw can give)."""
    return map("".join, itertools.product(DIGITS, repeat=digits))


class DigitStrings(Problem):
    """A string of --digits digits in, one of the same length out (sort, reverse),
    with a full-attention seq2seq model; subclasses give name, title, examples, solve."""

    kind = "seq2seq"
    PARAMS = {"digits": 6}

    def check(self) -> None:
        if self.digits < MIN_DIGITS:
            raise ValueError(f"{self.name}: --digits must be at least {MIN_DIGITS} (with fewer, no question is "
                             "held out for the test)")
        if self.digits > MAX_DIGITS:
            raise ValueError(f"{self.name}: --digits must be at most {MAX_DIGITS} (the model's block size is the "
                             "number of digits; the generated training rows grow with it)")

    def question_count(self) -> int:
        return 10 ** self.digits

    def all_questions(self):
        return all_digit_strings(self.digits)

    def alphabet(self) -> str:
        return DIGITS

    def draw(self, rng: random.Random) -> str:
        return "".join(rng.choice(DIGITS) for _ in range(self.digits))

    def block_size(self) -> int:
        return self.digits

    def model_config(self) -> dict:
        return seq2seq_config(self.digits)


class Sort(DigitStrings):
    name = "sort"
    title = "sort a string of digits (114515 -> 111455), full-attention seq2seq"
    examples = ("251212", "114515", "987654", "000000", "909090")

    def solve(self, question: str) -> str:
        return "".join(sorted(question))


def seq2seq_config(digits: int) -> dict:
    """sort and reverse: a small full-attention model with learned positions (the
    answer at position i depends on i itself, which learned positions give directly)."""
    return train_config({"block_size": digits, "n_layer": 2, "n_embd": 64, "is_causal": False, "use_rope": False})
