"""Sampling: the portable per-step sampler, KV-cache generation, prompts, seq2seq.

The per-step sampler is written in numpy on a 1-D float32 logits vector so that
the C engine can implement the same steps and be compared with it token for
token on identical logits. The algorithm (also in the package README):

  0. a NaN logit is an error (a broken model: nothing sensible can be drawn).
  1. repetition penalty (when != 1): for every distinct token id in the context
     so far (prompt + generated): logit > 0 -> logit / penalty, else
     logit * penalty. Both push the logit down for penalty > 1. Then every
     logit is clamped to the finite float32 range (+-3.4028235e38).
  2. temperature == 0: greedy argmax, ties to the lowest id; done (no RNG draw).
  3. softmax in float32 of (logit - max) / temperature: the max is subtracted
     before the division, so no temperature > 0 makes inf - inf (NaN). The
     exponential is exp32 below, not a math library's: libraries round some
     results differently in the last bit (numpy's float32 exp and glibc's expf
     disagree on about 4 inputs in 10), enough to swap two near-equal candidates.
  4. candidates ordered by probability descending, ties by lower id. Filters,
     each on the step-3 probabilities, each keeping a prefix of that order:
     top_k > 0 keeps the first k; top_p < 1 keeps the smallest prefix whose
     cumulative probability >= top_p (all of them if rounding never gets
     there); min_p > 0 drops candidates whose probability < min_p * max
     probability. At least one candidate is always kept. The kept
     probabilities are divided by their sum.
  5. u = one uniform draw in [0, 1); the answer is the first kept candidate
     whose cumulative (renormalised) probability exceeds u, or the last kept
     candidate if rounding leaves none.
  All sums are running float32 sums in candidate order.

exp32(z), every operation in float32 and rounded by itself (no fused
multiply-add), so that numpy and C give the same bits:
  z < -87 (or -inf) -> 0 (below that the result would be a subnormal)
  k = floor(z * LOG2E + 0.5);  r = (z - k * LN2_HI) - k * LN2_LO
  p = 1 + r * (1 + r * (1/2 + r * (1/6 + r * (1/24 + r * (1/120 + r * (1/720 + r * (1/5040)))))))
  exp32(z) = p * 2^k   (2^k made from its bits: exact)
  with LOG2E = 0x1.715476p+0, LN2_HI = 0x1.63p-1, LN2_LO = -0x1.bd0106p-13 and
  the 1/n! constants float32 quotients (1.0f / 6.0f, ...). Within 2 units in the
  last place of the true value for -87 <= z <= 0.

Generation (generate) stops, as the C engine's sessions do, after max_new_tokens
new tokens (0 = no limit), when the context (the block size) is full, on a stop
token or stop string, and on <|eos|> whenever the tokenizer has it.

RNG (xorshift64* seeded through splitmix64, all arithmetic mod 2^64):
  seeding: z = seed + 0x9E3779B97F4A7C15; z = (z ^ z >> 30) * 0xBF58476D1CE4E5B9;
           z = (z ^ z >> 27) * 0x94D049BB133111EB; state = z ^ z >> 31 (1 if 0)
  next:    x ^= x >> 12; x ^= x << 25; x ^= x >> 27; out = x * 0x2545F4914F6CDD1D
  uniform: (out >> 40) * 2^-24, a float32 in [0, 1)
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from nano_tokenizer import EOS

from nano_train.data import sft_encode, sft_turn, with_system

__all__ = [
    "SamplerConfig",
    "Rng",
    "splitmix64",
    "sample_logits",
    "exp32",
    "generate",
    "StopError",
    "instruct_prompt",
    "chat_prompt",
    "answer_ids",
    "seq2seq",
]

_MASK64 = (1 << 64) - 1
_F32_MAX = float(np.finfo(np.float32).max)


def splitmix64(seed: int) -> int:
    """One splitmix64 step from `seed`: the RNG's starting state."""
    z = (seed + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class Rng:
    """xorshift64*: small, fast and trivially the same in C (uint64_t arithmetic)."""

    def __init__(self, seed: int = 0):
        self.state = splitmix64(int(seed) & _MASK64) or 1

    def next_u64(self) -> int:
        x = self.state
        x ^= x >> 12
        x = (x ^ (x << 25)) & _MASK64
        x ^= x >> 27
        self.state = x
        return (x * 0x2545F4914F6CDD1D) & _MASK64

    def uniform(self) -> float:
        """A float32 value in [0, 1): the top 24 bits of the output, exact in float32."""
        return (self.next_u64() >> 40) * (1.0 / (1 << 24))


@dataclass
class SamplerConfig:
    """How the next token is picked, as the C engine picks it: each setting's "off"
    value leaves its filter out (temperature 0 is greedy). Numbers are checked when
    the config is made; see the README's sampler section for the order of the steps."""

    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off
    max_new_tokens: int = 256  # 0 = until a stop or the context is full
    stop_tokens: tuple = field(default=())  # token ids and strings; strings need a tokenizer (see generate)
    seed: int = 0  # in [0, 2^64): the C engine's uint64_t

    def __post_init__(self) -> None:
        for name in ("top_k", "max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral):
                raise TypeError(f"{name} must be an integer, got {value!r}")
        # float32, as the C engine stores them: a value beyond its range is refused
        for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not abs(value) <= _F32_MAX:
                raise ValueError(f"{name} must be a finite float32 number, got {value}")
        # each is checked as the float32 it becomes, as the C engine checks it: --min-p
        # 1.00000001 is 1, and a value that rounds to -0.0 (-1e-46) is 0
        if not np.float32(self.temperature) >= 0.0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < np.float32(self.top_p) <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= np.float32(self.min_p) <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if not np.float32(self.repetition_penalty) > 0.0:
            raise ValueError(f"repetition_penalty must be > 0 (in float32), got {self.repetition_penalty}")
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0 (0 = until the context is full), got {self.max_new_tokens}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed <= _MASK64:
            raise ValueError(f"seed must be an integer in [0, 2^64), got {self.seed!r}")
        stops = self.stop_tokens
        if isinstance(stops, str):  # tuple() would split it into characters
            raise TypeError(f"stop_tokens must be a sequence of ids or strings, got the string {stops!r}: "
                            f"write ({stops!r},) for one string")
        if isinstance(stops, bytes) or not hasattr(stops, "__iter__"):  # bytes would become ids
            raise TypeError(f"stop_tokens must be a sequence of ids or strings, got {stops!r}")
        self.stop_tokens = tuple(stops)
        for stop in self.stop_tokens:
            if isinstance(stop, bool) or not isinstance(stop, (Integral, str)):
                raise TypeError(f"stop_tokens must hold token ids and strings, got {stop!r}")


_LOG2E = np.float32(float.fromhex("0x1.715476p+0"))
_LN2_HI = np.float32(float.fromhex("0x1.63p-1"))
_LN2_LO = np.float32(float.fromhex("-0x1.bd0106p-13"))
# 1/n! for n = 7 down to 2, each a float32 quotient as C's 1.0f / 5040.0f is
_TAYLOR = tuple(np.float32(1) / np.float32(math.factorial(n)) for n in range(7, 1, -1))


def exp32(z: np.ndarray) -> np.ndarray:
    """e^z for float32 z <= 0, bit for bit as the C engine's sampler computes it (see
    the module docstring): the sampler's softmax must not depend on a math library."""
    z = np.asarray(z, dtype=np.float32)
    keep = z >= np.float32(-87.0)  # false for -inf and NaN too
    z = np.where(keep, z, np.float32(0.0))
    k = np.floor(z * _LOG2E + np.float32(0.5))
    r = (z - k * _LN2_HI) - k * _LN2_LO
    p = np.full_like(r, _TAYLOR[0])
    for c in _TAYLOR[1:]:
        p = c + r * p
    one = np.float32(1.0)
    p = one + r * (one + r * p)
    scale = ((k.astype(np.int32) + 127) << 23).view(np.float32)  # 2^k, k >= -126
    return np.where(keep, p * scale, np.float32(0.0))


def _running_sum(x: np.ndarray) -> np.ndarray:
    """Running float32 sums in order (np.sum would sum pairwise, unlike a C loop)."""
    return np.cumsum(x, dtype=np.float32)


def sample_logits(
    logits: np.ndarray,
    history_ids: Sequence[int] | np.ndarray,
    config: SamplerConfig,
    rng: Rng,
) -> int:
    """One sampling step (see the module docstring). logits: [V] (or [1, V]); history_ids:
    the context so far (prompt + generated), used only by the repetition penalty."""
    x = np.array(logits, dtype=np.float32)  # a copy we may change
    if x.ndim == 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 1:
        raise ValueError(f"logits must be one vector [V] (or [1, V]), got shape {x.shape}")
    v = x.shape[0]
    if v == 0:
        raise ValueError("empty logits")
    if np.isnan(x).any():  # NaN would pass the clamp below and argmax would read it as id 0
        raise ValueError(f"the logits hold NaN (at id {int(np.argmax(np.isnan(x)))}): the model's weights "
                         f"or activations are not finite numbers")

    # 1. repetition penalty on each distinct seen id, pushing it down whatever its sign
    if config.repetition_penalty != 1.0 and len(history_ids) > 0:
        ids = np.unique(np.asarray(history_ids, dtype=np.int64))
        ids = ids[(ids >= 0) & (ids < v)]
        pen = np.float32(config.repetition_penalty)
        seen = x[ids]
        with np.errstate(over="ignore"):  # overflows become infinities, clamped below
            x[ids] = np.where(seen > 0, seen / pen, seen * pen).astype(np.float32)
    np.clip(x, -_F32_MAX, _F32_MAX, out=x)

    # 2. greedy (also for a temperature below float32's range, which the C engine reads as 0):
    #    np.argmax returns the first (lowest) id among equal maxima
    t = np.float32(config.temperature)
    if t == 0.0:
        return int(np.argmax(x))

    # 3. tempered softmax, the max subtracted first (-FLT_MAX - FLT_MAX is -inf: exp gives 0)
    with np.errstate(over="ignore"):  # (z is -inf where -FLT_MAX - FLT_MAX overflows)
        e = exp32((x - x.max()) / t)
    p = e / _running_sum(e)[-1]  # [V] float32

    # 4. candidates: probability descending; the stable sort keeps lower ids first on ties.
    #    With top-k only the k first are wanted: those above the k-th largest probability and,
    #    of those equal to it, the lowest ids; only they are sorted (not the whole vocabulary)
    if 0 < config.top_k < v:
        kth = np.partition(p, v - config.top_k)[v - config.top_k]
        pool = np.flatnonzero(p >= kth)  # ids ascending
        order = pool[np.argsort(-p[pool], kind="stable")][:config.top_k]
    else:
        order = np.argsort(-p, kind="stable")  # [V]
    ps = p[order]
    n = len(order)
    top_p = np.float32(config.top_p)  # as the C engine stores it: 1 - 1e-9 is 1 there, the filter off
    if top_p < 1.0:
        reached = np.nonzero(_running_sum(ps[:n]) >= top_p)[0]
        if reached.size:
            n = int(reached[0]) + 1
    if config.min_p > 0.0:
        threshold = np.float32(config.min_p) * ps[0]
        n = max(1, int(np.count_nonzero(ps[:n] >= threshold)))  # a prefix: ps is sorted
    kept = ps[:n]
    cdf = _running_sum(kept / _running_sum(kept)[-1])  # [n]

    # 5. inverse-CDF draw
    u = np.float32(rng.uniform())
    above = np.nonzero(cdf > u)[0]
    i = int(above[0]) if above.size else n - 1
    return int(order[i])


# ---------------------------------------------------------------------------
# Generation


class StopError(ValueError):
    """A stop entry that can never work: an empty string, one the vocabulary cannot
    write, a string without a tokenizer."""


def _resolve_stops(stops: Sequence, tokenizer) -> tuple[set[int], list[str]]:
    """Split stop entries into token ids and text strings. <|eos|> is a stop id
    whenever the tokenizer has it (the C engine's stop_at_eos, on in every mode).
    A string that is a special token becomes its id; other strings are matched on
    the decoded text (which needs a tokenizer), also where the vocabulary has them
    as one token: other tokens can write the same text. A string
    the vocabulary cannot write (a character with no token: it would encode to
    <|unknown|>) can never appear in the output and is an error, as is an empty one."""
    ids: set[int] = set()
    texts: list[str] = []
    if tokenizer is not None and EOS in tokenizer.special_tokens:
        ids.add(tokenizer.special_tokens[EOS])
    for s in stops:
        if isinstance(s, (int, np.integer)):
            ids.add(int(s))
            continue
        if s == "":  # it would match before the first token: nothing could ever be generated
            raise StopError("stop string '' is empty: give the text to stop at")
        if tokenizer is None:
            raise StopError(f"stop string {s!r} needs a tokenizer")
        enc = tokenizer.encode(s, allow_special=True)
        if tokenizer.decode(enc) != s:
            missing = "".join(dict.fromkeys(c for c in s if tokenizer.decode(tokenizer.encode(c)) != c))
            raise StopError(f"stop string {s!r} can never occur: the vocabulary has no token for {missing!r}")
        if s in tokenizer.special_tokens:
            ids.add(tokenizer.special_tokens[s])
        else:
            texts.append(s)
    return ids, texts


def _starting_before(tokenizer, ids: list[int], at: int) -> int:
    """How many of the first ids have a text that starts before character `at`
    of the text of ids."""
    length = 0
    for n, t in enumerate(ids):
        if length >= at:
            return n
        length += len(tokenizer.decode([t]))
    return len(ids)


def _held_back(tokenizer, tail: list[int], stop_texts: list[str]) -> int:
    """How many of the last tokens of tail to hold back: those that start at or
    after the earliest character from which the text could still be the start of
    a stop string (the text from there on is a prefix of one), so that no token
    of a stop string is shown. That character may lie inside a token already shown:
    the tokens after it wait all the same."""
    text = tokenizer.decode(tail)
    start = next(c for c in range(len(text) + 1) if any(s.startswith(text[c:]) for s in stop_texts))
    return len(tail) - _starting_before(tokenizer, tail, start)


def _vocabulary_ids(model, ids: Sequence[int], what: str) -> list[int]:
    """ids as ints, each checked against the model's vocabulary (on the host, so free:
    on a GPU a bad id would be a device-side assert, on a CPU an IndexError)."""
    try:  # ints, numpy integers, integer 0-d tensors; not 2.7, which int() would make 2
        ids = [operator.index(t) for t in ids]
    except TypeError as e:
        raise TypeError(f"{what} ids must be integers: {e}") from None
    v = model.config.vocab_size
    for i, t in enumerate(ids):
        if not 0 <= t < v:
            raise ValueError(f"{what} id {t} at position {i} is outside the vocabulary 0..{v - 1}")
    return ids


def generate(
    model,
    prompt_ids: Sequence[int],
    config: SamplerConfig,
    tokenizer=None,
    on_sample: Callable[[int], None] | None = None,
) -> Iterator[int]:
    """Stream new token ids after prompt_ids, using the KV cache.

    Stops after config.max_new_tokens tokens (0: no limit), at the model's block
    size, on a stop token or, tokenizer given, on <|eos|> (neither is yielded), or
    when the decoded output (tokenizer given) contains a stop string. The tokens
    of a stop string are not yielded: while the text of the newest tokens could
    still begin one they are held back, then yielded once it cannot, or at the
    end. A token whose text starts before the stop string is yielded (so the
    text before it is never lost), even where its text runs into the stop string.

    on_sample, if given, is called with each token id as it is sampled (stop tokens
    included), before a stop string may hold it back: `sample --profile` times the
    tokens with it.

    The arguments are checked here, at the call, not at the first next(). A
    full-attention model (config.is_causal False) is refused: its outputs are not
    next-token predictions (seq2seq is its use). A stop entry that can never work is
    a StopError.
    """
    if not model.config.is_causal:
        raise ValueError("generate needs a causal model, and this one has full attention (config.is_causal "
                         "False): use seq2seq(model, ids)")
    prompt = _vocabulary_ids(model, prompt_ids, "prompt")
    if not prompt:
        raise ValueError("the prompt is empty: give at least one token")
    stop_ids, stop_texts = _resolve_stops(config.stop_tokens, tokenizer)  # (a bad stop first, as nano run)
    block = model.config.block_size
    if len(prompt) >= block:
        raise ValueError(
            f"the prompt has {len(prompt)} token{'s' if len(prompt) != 1 else ''}; the model's block size is {block} "
            "(a prompt must leave room for at least one new token)"
        )
    return _generate(model, prompt, config, tokenizer, stop_ids, stop_texts, on_sample)


@torch.no_grad()
def _generate(model, prompt: list[int], config: SamplerConfig, tokenizer, stop_ids: set[int],
              stop_texts: list[str], on_sample: Callable[[int], None] | None) -> Iterator[int]:
    """generate's stream, its arguments checked."""
    block = model.config.block_size
    longest = max(map(len, stop_texts), default=0)
    rng = Rng(config.seed)
    max_len = min(block, len(prompt) + config.max_new_tokens) if config.max_new_tokens else block

    was_training = model.training
    model.eval()
    try:
        device = model.tok_embd.weight.device
        cache = model.init_cache(1, max_len)
        x = torch.tensor([prompt], dtype=torch.long, device=device)
        logits = model.forward_cached(x, cache, 0)[0, -1]  # [V]
        history = list(prompt)
        generated: list[int] = []
        shown = 0  # generated[:shown] were yielded (only stop strings hold tokens back)
        pos = len(prompt)
        while True:
            tok = sample_logits(logits.cpu().numpy(), history, config, rng)
            if on_sample is not None:
                on_sample(tok)
            if tok in stop_ids:
                break
            generated.append(tok)
            keep = 0
            if stop_texts:
                # a stop string ending in the new token, or the start of one, lies within
                # the last `longest` tokens (no token's text is empty)
                start = max(0, len(generated) - longest)
                text = tokenizer.decode(generated[start:])
                at = min((i for i in map(text.find, stop_texts) if i >= 0), default=-1)
                if at >= 0:  # the tokens from the stop string's start on go; those before are yielded below
                    del generated[start + _starting_before(tokenizer, generated[start:], at):]
                    break
                keep = _held_back(tokenizer, generated[start:], stop_texts)
            history.append(tok)
            yield from generated[shown:len(generated) - keep]
            shown = len(generated) - keep
            if len(generated) == config.max_new_tokens or pos >= max_len:
                break
            x = torch.tensor([[tok]], dtype=torch.long, device=device)
            logits = model.forward_cached(x, cache, pos)[0, -1]
            pos += 1
        yield from generated[shown:]  # held back for a stop string that never came
    finally:
        model.train(was_training)


def instruct_prompt(tokenizer, question: str | Sequence[int], system: str | None = None) -> list[int]:
    """The SFT prompt: <|instruct_mark|> question <|response_mark|>, the template's
    turn (data.sft_turn) up to its answer. The model's answer follows and ends with
    <|eos|>. A system text goes before the question as `prepare sft` puts a record's
    system message there (data.with_system). A question given as token ids (a text
    question, encoded) is taken as it is."""
    if isinstance(question, str):
        question = tokenizer.encode(with_system(system, question))
    elif system:
        raise ValueError("a system text goes with a question given as text, not as token ids")
    return [t for part, _ in sft_turn(tokenizer, question) for t in part]


def _is_id_list(x) -> bool:
    return (isinstance(x, (list, tuple)) and
            all(isinstance(t, Integral) and not isinstance(t, bool) for t in x))


def answer_ids(tokenizer, generated: Sequence[int]) -> list[int]:
    """An answer the model wrote (its printed token ids) as the training data holds an
    answer: each run of ordinary tokens decoded and encoded again (prepare sft's
    tokenization of that text), each special token kept as itself. A generated
    <|unknown|> (prepare sft's token for a character the vocabulary lacks) stays one
    token: its text, encoded again, would be the 11 characters "<|unknown|>"."""
    specials = set(tokenizer.special_tokens.values())
    out: list[int] = []
    run: list[int] = []
    for t in [*generated, None]:
        if t is None or t in specials:
            if run:
                out += tokenizer.encode(tokenizer.decode(run))
                run = []
            if t is not None:
                out.append(int(t))
        else:
            run.append(int(t))
    return out


def chat_prompt(tokenizer, turns: Sequence[tuple[str, str | Sequence[int]]], question: str,
                system: str | None = None, n_ctx: int | None = None) -> tuple[list[int], int]:
    """The prompt for `question` in a conversation, laid out as `prepare sft` lays out a
    multi-turn record: each earlier turn <|instruct_mark|> Q <|response_mark|> A <|eos|>
    (data.sft_encode), then <|instruct_mark|> question <|response_mark|> (instruct_prompt).
    turns: the earlier (question, answer) pairs, oldest first. An answer is the token ids
    the model wrote and were printed (taken by answer_ids: its text encoded again, as the
    training data has it, its special tokens kept), or a text (encoded). A system text goes
    before the earliest question kept, never before later ones (data.with_system, as
    `prepare sft --system prepend` folds a record's system message into its first question).

    n_ctx: the context the prompt runs in (None: no limit). While the prompt is longer
    than n_ctx / 2 (it would leave less than half of the context for the answer), its
    oldest whole turn is dropped, down to the question alone (which may still be too long:
    generate says so). `nano run --multi-turn` builds the same ids.

    Returns (ids, dropped): dropped counts the oldest turns left out.
    """
    turns = list(turns)
    for k, turn in enumerate(turns):
        if not (isinstance(turn, (tuple, list)) and len(turn) == 2 and isinstance(turn[0], str)
                and (isinstance(turn[1], str) or _is_id_list(turn[1]))):
            raise TypeError(f"turns[{k}] must be a (question, answer) pair: a string and a string or a list of "
                            f"token ids, got {turn!r}")
        if not isinstance(turn[1], str):
            bad = [t for t in turn[1] if not 0 <= t < tokenizer.vocab_size]
            if bad:
                raise ValueError(f"turns[{k}]: token id {bad[0]} is outside the vocabulary (0..{tokenizer.vocab_size - 1})")
            turns[k] = (turn[0], answer_ids(tokenizer, turn[1]))
    if not isinstance(question, str):
        raise TypeError(f"question must be a string, got {question!r}")
    if n_ctx is not None and (isinstance(n_ctx, bool) or not isinstance(n_ctx, Integral) or n_ctx < 1):
        raise ValueError(f"n_ctx must be a positive integer (or None: no limit), got {n_ctx!r}")
    encoded = [sft_encode(tokenizer, [turn])[0] for turn in turns]  # the turns without the system text
    ask = instruct_prompt(tokenizer, question)
    for dropped, (first_q, first_a) in enumerate(turns):
        first = sft_encode(tokenizer, [(with_system(system, first_q), first_a)])[0] if system else encoded[dropped]
        n = len(first) + sum(map(len, encoded[dropped + 1:])) + len(ask)
        if n_ctx is None or 2 * n <= n_ctx:
            return [*first, *(t for ids in encoded[dropped + 1:] for t in ids), *ask], dropped
    return instruct_prompt(tokenizer, question, system), len(turns)


@torch.no_grad()
def seq2seq(model, ids: Sequence[int]) -> list[int]:
    """Non-autoregressive use of a full-attention model: one forward over the
    input and the argmax (lowest id on ties) at each position."""
    ids = _vocabulary_ids(model, ids, "input")
    if not ids:
        raise ValueError("the input is empty")
    if len(ids) > model.config.block_size:
        raise ValueError(f"the input has {len(ids)} tokens; the block size is {model.config.block_size}")
    was_training = model.training
    model.eval()
    try:
        x = torch.tensor([ids], dtype=torch.long, device=model.tok_embd.weight.device)
        logits, _ = model(x)  # [1, T, V]
    finally:
        model.train(was_training)
    logits = logits[0].cpu().numpy()
    if np.isnan(logits).any():  # the C engine's NANO_ERR_NON_FINITE; numpy would pick the NaN
        pos = int(np.isnan(logits).any(axis=-1).argmax())
        raise ValueError(f"the logits hold NaN (first at position {pos}): the model's weights or activations "
                         "are not finite")
    # numpy's argmax, like the sampler's greedy step, takes the first maximum
    return [int(i) for i in np.argmax(logits, axis=-1)]
