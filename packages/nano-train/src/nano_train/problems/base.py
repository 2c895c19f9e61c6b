"""What every problem shares: the Problem class, held-out splits by hash,
vocabularies, and the generated rows the training loop reads.

A problem is a task with a generator of questions and a solver giving the
right answer. Its model is trained by nano_train.train on rows generated here:

    seq2seq   full attention; the answer has as many tokens as the question and
              is read position by position (argmax at every position), x and y
              aligned: `sort`, `reverse`
    instruct  causal (autoregressive): <|instruct_mark|> question <|response_mark|>
              answer <|eos|>, the loss on the answer and <|eos|> only, the answer
              generated greedily: `holes`, `boolean`

Held-out cases: a question's split depends on the question alone, through a
hash of (problem name, question) as a number h in [0, 1):

    h <  held_out / 2            test   (the exact-match evaluation)
    h <  held_out                val    (the validation loss during training)
    otherwise                    train

so no test or validation question is ever a training row, whatever the seed.

How many test questions there are: a problem with at most ENUMERATE_MAX
questions lists them (`all_questions`) and its split is counted exactly; a
larger one has about question_count() x held_out / 2 of them, of which
`test_cases` draws at most half (`most_test_cases`), as random draws of a
larger share would mostly draw questions already taken. The test questions
come in one fixed order (`test_questions`), so that the cases for a smaller n
are the first of those for a larger one.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nano_tokenizer import Tokenizer, build_vocab

from nano_train.data import quantity, sft_encode

GENERATOR_VERSION = 1  # bump when a generator or the row layout changes (invalidates cached data)
ENUMERATE_MAX = 1_000_000  # a problem with at most this many questions lists them to count its splits (~2 s)
# test_questions stops drawing at random after this many draws in a row found no new test
# question (with half of a split taken, one draw in 80 finds one: a run of 10,000 misses
# does not happen by chance; it means the split holds no more)
MAX_MISSES = 10_000


def train_config(model: dict, *, batch_size: int = 256, learning_rate: float = 3e-3, warmup_iters: int = 100,
                 max_iters: int = 6000, time_budget: float = 120.0, eval_iters: int = 4) -> dict:
    """A problem's training config sections: its model, and the small-model
    training settings every problem starts from (the keyword arguments are the
    ones a problem may change)."""
    return {
        "model": {"n_head": 4, **model},  # n_kv_head: n_head
        "data": {"batch_size": batch_size},
        "optim": {"learning_rate": learning_rate, "min_lr": 1e-4, "warmup_iters": warmup_iters,
                  "max_iters": max_iters, "weight_decay": 0.0, "time_budget": time_budget},
        "eval": {"eval_interval": 500, "eval_iters": eval_iters},
        "run": {"log_interval": 20},
        "system": {"threads": 1},
    }


@dataclass(frozen=True)
class Case:
    question: str
    answer: str


def case_hash(name: str, question: str) -> float:
    """A uniform number in [0, 1) fixed by the problem and the question."""
    digest = hashlib.blake2b(f"{name}\0{question}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


class Problem:
    """One task. Subclasses set the class attributes and implement `alphabet`,
    `draw`, `solve`, `block_size` and `model_config`; settings (PARAMS) become
    attributes of the instance (`Sort(digits=8).digits`)."""

    name = ""
    title = ""  # one line: what the task is
    kind = "seq2seq"  # or "instruct"
    PARAMS: dict[str, int] = {}  # settings and their defaults, e.g. {"digits": 6}
    examples: tuple[str, ...] = ()  # questions shown in reports (for the default settings)
    train_rows = 200_000  # generated training rows (drawn with replacement)
    val_rows = 2_000  # distinct validation questions
    held_out = 0.05  # share of all questions kept out of training (half test, half val)

    def __init__(self, **params: int):
        unknown = sorted(set(params) - set(self.PARAMS))
        if unknown:
            known = ", ".join(f"--{k}" for k in self.PARAMS) or "none"
            raise ValueError(f"{self.name}: unknown setting(s) {', '.join(unknown)} (its settings: {known})")
        self.params = {**self.PARAMS, **{k: v for k, v in params.items() if v is not None}}
        for key, value in self.params.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{self.name}: --{key} must be a positive integer, got {value!r}")
            setattr(self, key, value)
        self.check()

    # -- what a problem defines ------------------------------------------------

    def check(self) -> None:
        """Refuse settings the problem cannot use (raise ValueError)."""

    def alphabet(self) -> str:
        """Every character a question or an answer can hold."""
        raise NotImplementedError

    def words(self) -> list[str]:
        """Multi-character tokens for the vocabulary (greedy longest match picks them)."""
        return []

    def draw(self, rng: random.Random) -> str:
        """A random question."""
        raise NotImplementedError

    def solve(self, question: str) -> str:
        """The right answer."""
        raise NotImplementedError

    def block_size(self) -> int:
        """The model's block size: seq2seq, the longest question in tokens;
        instruct, the longest row (marks, question, answer, <|eos|>) minus one."""
        raise NotImplementedError

    def model_config(self) -> dict:
        """The training config's sections (model, data, optim, eval, ...) for this problem."""
        raise NotImplementedError

    def max_answer_tokens(self) -> int:
        """instruct: the most tokens an answer has (generation stops after one more, for <|eos|>)."""
        raise NotImplementedError

    def question_count(self) -> int | None:
        """How many distinct questions `draw` can give (None: not known)."""
        return None

    def all_questions(self) -> Iterable[str]:
        """Every question `draw` can give, each once, in a fixed order (called only when
        question_count() is at most ENUMERATE_MAX)."""
        raise NotImplementedError

    def category(self, question: str) -> str | None:
        """A label to break the accuracy down by (e.g. the nesting depth), or None."""
        return None

    # -- shared ------------------------------------------------------------------

    def describe(self) -> str:
        settings = ", ".join(f"{k} {v}" for k, v in self.params.items())
        return f"{self.name} ({settings})" if settings else self.name

    def split_of(self, question: str) -> str:
        h = case_hash(self.name, question)
        if h < self.held_out / 2:
            return "test"
        return "val" if h < self.held_out else "train"

    def case(self, question: str) -> Case:
        return Case(question, self.solve(question))

    def tokenizer(self, work_dir: str | Path | None = None) -> Tokenizer:
        """The problem's own small vocabulary, built by nano_tokenizer.build_vocab:
        the reference's seven special tokens, the alphabet's characters, then the words."""
        chars = sorted(set(self.alphabet()))
        words = [w for w in self.words() if w not in chars]
        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            alphabet = Path(tmp) / f"{self.name}_alphabet.txt"
            alphabet.write_text("".join(chars), encoding="utf-8")
            words_file = None
            if words:
                words_file = Path(tmp) / f"{self.name}_words.txt"
                words_file.write_text("".join(w + "\n" for w in words), encoding="utf-8")
            return build_vocab([alphabet], size=7 + len(chars) + len(words), words_file=words_file)

    def vocab_size(self) -> int:
        """The number of tokens in tokenizer()'s vocabulary (built once, then kept)."""
        if "_vocab_size" not in self.__dict__:
            self._vocab_size = self.tokenizer().vocab_size
        return self._vocab_size

    def draw_split(self, rng: random.Random, split: str, n: int, distinct: bool) -> list[str]:
        """n questions of one split (fewer if the split is too small to hold n distinct ones)."""
        out: list[str] = []
        seen: set[str] = set()
        attempts, limit = 0, max(1000, 200 * n)
        while len(out) < n and attempts < limit:
            attempts += 1
            q = self.draw(rng)
            if self.split_of(q) != split or (distinct and q in seen):
                continue
            seen.add(q)
            out.append(q)
        return out

    def split_questions(self, split: str) -> list[str] | None:
        """Every question of the split, in a fixed order, when the problem has at most
        ENUMERATE_MAX questions (listed once, then kept); None for a larger space."""
        count = self.question_count()
        if count is None or count > ENUMERATE_MAX:
            return None
        key = (split, self.held_out)
        listed = self.__dict__.setdefault("_listed", {})
        if key not in listed:
            listed[key] = [q for q in self.all_questions() if self.split_of(q) == split]
        return list(listed[key])

    def most_test_cases(self) -> tuple[int, bool] | None:
        """The most distinct test questions `test_cases` gives, and whether that number
        is exact: the test split's size when the questions can be listed; otherwise half
        its expected size (question_count() x held_out / 4). None: not known."""
        listed = self.split_questions("test")
        if listed is not None:
            return len(listed), True
        count = self.question_count()
        return None if count is None else (int(count * self.held_out / 4), False)

    def _small_share(self, n: int) -> bool:
        """n is at most a quarter of the test split's expected size: random draws find
        n distinct test questions quickly, and the split need not be listed."""
        count = self.question_count()
        return count is not None and n <= count * self.held_out / 8

    def check_eval_cases(self, n: int) -> None:
        """Refuse (ValueError) n test cases where the test split cannot give that many,
        naming the most it can; cheap unless n is a large share of the split."""
        if self._small_share(n):
            return
        most = self.most_test_cases()
        if most is None or n <= most[0]:
            return
        limit, exact = most
        if limit == 0:
            raise ValueError(f"{self.describe()}: none of its questions is held out for the test")
        if exact:
            raise ValueError(f"--eval_cases {n:,}: {self.describe()} has {quantity(limit, 'held-out test question')}; "
                             f"at most {limit:,}")
        raise ValueError(f"--eval_cases {n:,}: {self.describe()} has about {quantity(2 * limit, 'held-out test question')}, "
                         f"of which at most half, {limit:,}, can be drawn at random in reasonable time")

    def test_cases(self, n: int) -> list[Case]:
        """The first n of the test questions (test_questions) with their answers: n distinct
        held-out questions, fewer only when the test split holds fewer (see most_test_cases).
        They depend on the problem, its settings and n only (not on the training seed), so
        runs with different seeds are scored on the same cases, and the cases for a smaller
        n are the first of those for a larger one."""
        return [self.case(q) for q in itertools.islice(self.test_questions(), n)]

    def test_questions(self) -> Iterator[str]:
        """The test split's questions, each once, in an order fixed by the problem and its
        settings: drawn at random (seeded) until half the split's expected size
        (question_count() x held_out / 4) is reached or MAX_MISSES draws in a row find no
        new one; then, for a split that can be listed (split_questions), the rest of it in
        a seeded shuffle, as random draws would mostly draw questions already taken. A
        small share of a large split is drawn without listing it (lazily: only what is
        taken is made)."""
        rng = random.Random(f"{self.describe()}/test")
        count = self.question_count()
        drawn_at_most = None if count is None else int(count * self.held_out / 4)
        seen: set[str] = set()
        misses = 0
        while (drawn_at_most is None or len(seen) < drawn_at_most) and misses < MAX_MISSES:
            q = self.draw(rng)
            if q in seen or self.split_of(q) != "test":
                misses += 1
                continue
            misses = 0
            seen.add(q)
            yield q
        listed = self.split_questions("test")
        if listed is not None:
            rest = [q for q in listed if q not in seen]
            random.Random(f"{self.describe()}/test/rest").shuffle(rest)
            yield from rest

    def encode_rows(self, tok: Tokenizer, cases: list[Case]) -> tuple[np.ndarray, ...]:
        """The rows of the cases in the layout nano_train.data.write_rows takes:
        seq2seq (inputs, targets, mask) [N, T]; instruct (tokens, mask) [N, T + 1],
        each row what nano_train.data.sft_encode makes of (question, answer)."""
        T = self.block_size()
        n = len(cases)
        questions = encode_many(tok, [c.question for c in cases])
        answers = encode_many(tok, [c.answer for c in cases])
        if self.kind == "seq2seq":
            x = np.full((n, T), tok.pad_id, dtype=np.int64)
            y = np.full((n, T), tok.pad_id, dtype=np.int64)
            m = np.zeros((n, T), dtype=np.uint8)
            for i, (qi, ai) in enumerate(zip(questions, answers)):
                if len(qi) != len(ai) or len(qi) > T:
                    raise ValueError(f"{self.name}: {cases[i].question!r} -> {cases[i].answer!r}: a seq2seq answer "
                                     f"needs as many tokens as its question ({len(qi)} vs {len(ai)}), at most {T}")
                x[i, :len(qi)] = qi
                y[i, :len(ai)] = ai
                m[i, :len(ai)] = 1
            return x, y, m
        rows = np.full((n, T + 1), tok.pad_id, dtype=np.int64)
        mask = np.zeros((n, T + 1), dtype=np.uint8)
        for i, (qi, ai) in enumerate(zip(questions, answers)):
            ids, answer = sft_encode(tok, [(qi, ai)])  # (the mask: the answer and its <|eos|>)
            if len(ids) > T + 1:
                raise ValueError(f"{self.name}: {cases[i].question!r} is {len(ids)} tokens as a row; block size {T} "
                                 f"holds {T + 1}")
            rows[i, :len(ids)] = ids
            mask[i, :len(ids)] = answer
        return rows, mask

    def prompt_ids(self, tok: Tokenizer, question: str) -> list[int]:
        """What the model reads: seq2seq, the question's tokens; instruct, the instruct prompt."""
        if self.kind == "seq2seq":
            return tok.encode(question)
        from nano_train.sampling import instruct_prompt  # (torch: imported when a model is scored)

        return instruct_prompt(tok, question)


def encode_many(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    """tok.encode of each text, in one call: the texts are joined by a line break,
    which no problem's vocabulary holds, so no token spans two texts and each
    break becomes one <|unknown|> to split at."""
    if not texts:
        return []
    if "\n" in tok.stoi or any("\n" in t for t in texts):
        return [tok.encode(t) for t in texts]
    ids = np.asarray(tok.encode("\n".join(texts)), dtype=np.int64)
    breaks = np.flatnonzero(ids == tok.unk_id)
    if len(breaks) != len(texts) - 1:  # an unknown character inside a text: do it one by one
        return [tok.encode(t) for t in texts]
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [len(ids)]])
    return [ids[a:b].tolist() for a, b in zip(starts, ends)]
