"""boolean: evaluate prefix boolean expressions over * (and) and + (or) on 0
and 1, nested up to `depth` levels: (+ (* 0 1) (* 1 1)) = -> 1, with an
autoregressive model.

Grammar: E = 0 | 1 | (op E E), op = * | +. Depth: 0 for a digit, one more than
the deeper operand for (op A B). The question is the expression followed by
" ="; the answer is one digit. The generator picks the depth uniformly in
1..depth, then a random expression of exactly that depth, so deep cases are as
common as shallow ones. The vocabulary holds the expression's pieces as tokens
("(+", " (*", " 0", ")", ...), which halves the sequence length.
"""

from __future__ import annotations

import random

from nano_train.problems.base import Problem, train_config

OPS = "*+"


def evaluate(expr: str) -> int:
    """The value of a prefix expression (a small recursive-descent parser)."""
    pos = 0

    def parse() -> int:
        nonlocal pos
        if pos < len(expr) and expr[pos] in "01":
            pos += 1
            return int(expr[pos - 1])
        if expr[pos:pos + 1] != "(" or pos + 2 >= len(expr) or expr[pos + 1] not in OPS or expr[pos + 2] != " ":
            raise ValueError(f"bad expression at {pos}: {expr!r}")
        op = expr[pos + 1]
        pos += 3
        a = parse()
        if expr[pos:pos + 1] != " ":
            raise ValueError(f"expected a space at {pos}: {expr!r}")
        pos += 1
        b = parse()
        if expr[pos:pos + 1] != ")":
            raise ValueError(f"expected ')' at {pos}: {expr!r}")
        pos += 1
        return (a & b) if op == "*" else (a | b)

    value = parse()
    if pos != len(expr):
        raise ValueError(f"trailing text at {pos}: {expr!r}")
    return value


def depth_of(expr: str) -> int:
    """Nesting depth: the deepest run of open parentheses."""
    depth = best = 0
    for ch in expr:
        if ch == "(":
            depth += 1
            best = max(best, depth)
        elif ch == ")":
            depth -= 1
    return best


def random_expr(rng: random.Random, depth: int, exact: bool, leaf_p: float = 0.3) -> str:
    """An expression of depth exactly `depth` (exact) or at most `depth`."""
    if depth == 0 or (not exact and rng.random() < leaf_p):
        return "01"[rng.getrandbits(1)]
    bits = rng.getrandbits(2)  # bit 0: which operand carries the depth; bit 1: the operator
    a = random_expr(rng, depth - 1, exact and not bits & 1, leaf_p)
    b = random_expr(rng, depth - 1, exact and bits & 1, leaf_p)
    return f"({OPS[bits >> 1]} {a} {b})"


class Boolean(Problem):
    name = "boolean"
    title = "evaluate prefix boolean expressions, (+ (* 0 1) (* 1 1)) = -> 1, autoregressive"
    kind = "instruct"
    PARAMS = {"depth": 4}
    examples = ("(+ (* 0 1) (* 1 1)) =", "(* (+ 1 0) (* 1 (+ 0 0))) =",
                "(+ (* (+ 0 (* 1 1)) 0) (* (+ (* 0 1) 0) 1)) =")
    train_rows = 300_000

    def check(self) -> None:
        # depth 1: 8 expressions, two of them held out for the test and none for validation
        if self.depth < 2:
            raise ValueError("boolean: --depth must be at least 2 (with 1, no expression is held out for "
                             "validation)")
        if self.depth > 6:
            raise ValueError("boolean: --depth must be at most 6")

    def question_count(self) -> int:
        at_most = 2  # expressions of depth at most d: 0, 1 and (op A B) for 2 ops, A and B of depth < d
        for _ in range(self.depth):
            at_most = 2 + 2 * at_most * at_most
        return at_most - 2  # a question has depth 1 or more

    def all_questions(self):
        def at_most(d: int) -> list[str]:
            if d == 0:
                return ["0", "1"]
            sub = at_most(d - 1)
            return ["0", "1"] + [f"({op} {a} {b})" for op in OPS for a in sub for b in sub]

        return (e + " =" for e in at_most(self.depth)[2:])

    def alphabet(self) -> str:
        return "01*+() ="

    def words(self) -> list[str]:
        return ["(*", "(+", " (*", " (+", " 0", " 1", " ="]

    def draw(self, rng: random.Random) -> str:
        return random_expr(rng, rng.randint(1, self.depth), exact=True) + " ="

    def solve(self, question: str) -> str:
        if not question.endswith(" ="):
            raise ValueError(f"a question ends with ' =': {question!r}")
        return str(evaluate(question[:-2]))

    def category(self, question: str) -> str:
        return f"depth {depth_of(question)}"

    def max_answer_tokens(self) -> int:
        return 1

    def block_size(self) -> int:
        # a full tree: 2^depth - 1 operators (an opening token and ")" each), 2^depth
        # digits, " =", the two marks, the answer and <|eos|>; minus one (x = row[:-1])
        n = 2 ** self.depth
        return 2 * (n - 1) + n + 1 + 2 + 1 + 1 - 1

    def model_config(self) -> dict:
        return train_config({"block_size": self.block_size(), "n_layer": 4, "n_embd": 96}, batch_size=128,
                            learning_rate=2e-3, warmup_iters=200, max_iters=20000, time_budget=900.0,
                            eval_iters=8)
