"""sort: sort a string of digits (114515 -> 111455) with a full-attention seq2seq model.

The model reads the whole string at once and writes the answer's digit at each
position (argmax at every position): one forward, no generation loop.
"""

from __future__ import annotations

import random

from nano_train.problems.base import Problem, train_config

DIGITS = "0123456789"


class Sort(Problem):
    name = "sort"
    title = "sort a string of digits (114515 -> 111455), full-attention seq2seq"
    kind = "seq2seq"
    PARAMS = {"digits": 6}
    PARAM_HELP = {"digits": "length of the strings (default 6)"}
    examples = ("251212", "114515", "987654", "000000", "909090")

    def alphabet(self) -> str:
        return DIGITS

    def draw(self, rng: random.Random) -> str:
        return "".join(rng.choice(DIGITS) for _ in range(self.digits))

    def solve(self, question: str) -> str:
        return "".join(sorted(question))

    def block_size(self) -> int:
        return self.digits

    def model_config(self) -> dict:
        return seq2seq_config(self.digits)


def seq2seq_config(digits: int) -> dict:
    """sort and reverse: a small full-attention model with learned positions (the
    answer at position i depends on i itself, which learned positions give directly)."""
    return train_config({"block_size": digits, "n_layer": 2, "n_embd": 64, "is_causal": False, "use_rope": False})
