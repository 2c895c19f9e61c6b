"""Model hyperparameters as stored in the header: `Config` and `LoraConfig`.

Both are frozen dataclasses that validate themselves on construction, so a
config that exists is a config the format can hold. The reader builds them from
the header words (errors then carry the word's byte offset); the writer takes
them from the caller.
"""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass

import numpy as np

from . import spec
from .errors import BadConfig
from .spec import Attention, ModelType, Position

__all__ = ["Config", "LoraConfig"]

_U32_MAX = 0xFFFFFFFF

# Where each Config field lives in the header, for error messages.
_OFFSETS = {name: spec.config_offset(name) for name in spec.CONFIG_FIELDS}
_OFFSETS.update(
    model_type=spec.OFF_MODEL_TYPE,
    tie_embeddings=spec.config_offset("is_shared_classifier"),
    attention=spec.OFF_EXT_ATTENTION,
    position=spec.OFF_EXT_POSITION,
    norm_eps=spec.OFF_EXT_NORM_EPS,
    rope_theta=spec.OFF_EXT_ROPE_THETA,
)
_LORA_OFFSETS = {name: spec.config_offset(name) for name in spec.LORA_CONFIG_FIELDS}


def _bad(field: str, message: str, offsets=_OFFSETS) -> BadConfig:
    return BadConfig(message, field=field, offset=offsets.get(field))


def _as_int(obj, field: str, offsets=_OFFSETS) -> int:
    value = getattr(obj, field)
    if isinstance(value, bool):
        raise _bad(field, f"must be an integer, not {value!r}", offsets)
    try:
        value = operator.index(value)
    except TypeError:
        raise _bad(field, f"must be an integer, not {value!r}", offsets) from None
    object.__setattr__(obj, field, value)
    return value


def _check_range(obj, field: str, low: int, high: int, offsets=_OFFSETS) -> int:
    value = _as_int(obj, field, offsets)
    if not low <= value <= high:
        raise _bad(field, f"{value} is out of range [{low}, {high}]", offsets)
    return value


def _as_enum(obj, field: str, enum_type):
    value = getattr(obj, field)
    try:
        value = enum_type(value)
    except ValueError:
        known = ", ".join(f"{m.value} {m.name.lower()}" for m in enum_type)
        raise _bad(field, f"unknown value {value!r} (known: {known})") from None
    object.__setattr__(obj, field, value)
    return value


def _as_positive_float(obj, field: str) -> float:
    value = getattr(obj, field)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise _bad(field, f"must be a number, not {value!r}") from None
    # The file stores it as f32: it must stay finite and positive there too.
    with np.errstate(over="ignore", under="ignore"):
        as_f32 = np.float32(value)
    if not (math.isfinite(value) and 0.0 < value < 3.4e38 and as_f32 > 0):
        raise _bad(field, f"{value!r} must be a positive finite float32")
    object.__setattr__(obj, field, value)
    return value


@dataclass(frozen=True, kw_only=True)
class Config:
    """A Nano, Qwen2 or Qwen3 model's hyperparameters.

    Shapes use L n_layer, E n_embd, V vocab_size, F n_hidden, H n_head,
    K n_kv_head, D head_dim, B block_size. `n_kv_head` defaults to n_head,
    `head_dim` to n_embd / n_head, `rope_theta` to 10000 (1e6 for Qwen3).
    `attention`, `position`, `norm_eps` and `rope_theta` are only recorded by
    layout 2026.101; the other layouts imply causal, RoPE, 1e-5 and the default theta.
    """

    model_type: ModelType = ModelType.NANO
    block_size: int
    vocab_size: int
    n_layer: int
    n_embd: int
    n_head: int
    n_kv_head: int | None = None
    n_hidden: int
    head_dim: int | None = None
    tie_embeddings: bool = True
    attention: Attention = Attention.CAUSAL
    position: Position = Position.ROPE
    norm_eps: float = spec.DEFAULT_NORM_EPS
    rope_theta: float | None = None

    def __post_init__(self):
        model_type = _as_enum(self, "model_type", ModelType)
        if model_type == ModelType.LORA:
            raise _bad("model_type", "a LoRA module takes a LoraConfig, not a Config")
        _check_range(self, "block_size", 1, spec.MAX_DIM)
        _check_range(self, "vocab_size", 1, spec.MAX_VOCAB)
        _check_range(self, "n_layer", 1, spec.MAX_LAYERS)
        n_embd = _check_range(self, "n_embd", 1, spec.MAX_DIM)
        n_head = _check_range(self, "n_head", 1, spec.MAX_HEADS)
        if self.n_kv_head is None:
            object.__setattr__(self, "n_kv_head", n_head)
        n_kv_head = _check_range(self, "n_kv_head", 1, spec.MAX_HEADS)
        _check_range(self, "n_hidden", 1, spec.MAX_DIM)
        # Nano and Qwen2 derive head_dim from n_embd; only Qwen3 stores its own.
        derived = model_type != ModelType.QWEN3
        if derived and n_embd % n_head:
            raise _bad("n_head", f"{n_head} does not divide n_embd {n_embd}")
        if n_head % n_kv_head:
            raise _bad("n_kv_head", f"{n_kv_head} does not divide n_head {n_head}")
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", n_embd // n_head if n_embd % n_head == 0 else None)
            if self.head_dim is None:
                raise _bad("head_dim", "must be given when n_head does not divide n_embd")
        head_dim = _check_range(self, "head_dim", 1, spec.MAX_DIM)
        if derived and head_dim != n_embd // n_head:
            raise _bad("head_dim", f"{head_dim} is inconsistent with n_embd / n_head = "
                                   f"{n_embd} / {n_head} = {n_embd // n_head}")
        tie = self.tie_embeddings
        if isinstance(tie, (float, str)) or tie not in (0, 1):
            raise _bad("tie_embeddings", f"must be a bool, not {self.tie_embeddings!r}")
        object.__setattr__(self, "tie_embeddings", bool(self.tie_embeddings))
        _as_enum(self, "attention", Attention)
        position = _as_enum(self, "position", Position)
        if position == Position.ROPE and head_dim % 2:
            raise _bad("head_dim", f"RoPE needs an even head_dim, not {head_dim}")
        _as_positive_float(self, "norm_eps")
        if self.rope_theta is None:
            object.__setattr__(self, "rope_theta", spec.default_rope_theta(model_type))
        _as_positive_float(self, "rope_theta")

    # Row lengths of the quantized matrices: the Q8_0 group size must divide all three.
    @property
    def q_dim(self) -> int:
        """H * D: rows of wq, columns of wo."""
        return self.n_head * self.head_dim

    @property
    def kv_dim(self) -> int:
        """K * D: rows of wk and wv."""
        return self.n_kv_head * self.head_dim

    @property
    def row_lengths(self) -> tuple[int, int, int]:
        return (self.n_embd, self.q_dim, self.n_hidden)

    def to_dict(self) -> dict:
        """Plain JSON-friendly values (enums as lower-case names)."""
        d = asdict(self)
        for key in ("model_type", "attention", "position"):
            d[key] = d[key].name.lower()
        return d


@dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """A LoRA module (layout 2024.10) for the attention matrices wq, wk, wv, wo.

    The update to a weight W is (alpha / rank) * B @ A, A [rank, in], B [out, rank].
    `n_hidden` is stored for reference only (no FFN adapters).
    """

    rank: int
    alpha: int
    n_layer: int
    n_embd: int
    n_head: int
    n_kv_head: int | None = None
    n_hidden: int

    def __post_init__(self):
        o = _LORA_OFFSETS
        _check_range(self, "rank", 1, spec.MAX_DIM, o)
        _check_range(self, "alpha", 0, _U32_MAX, o)
        _check_range(self, "n_layer", 1, spec.MAX_LAYERS, o)
        n_embd = _check_range(self, "n_embd", 1, spec.MAX_DIM, o)
        n_head = _check_range(self, "n_head", 1, spec.MAX_HEADS, o)
        if self.n_kv_head is None:
            object.__setattr__(self, "n_kv_head", n_head)
        n_kv_head = _check_range(self, "n_kv_head", 1, spec.MAX_HEADS, o)
        _check_range(self, "n_hidden", 1, spec.MAX_DIM, o)
        if n_embd % n_head:
            raise _bad("n_head", f"{n_head} does not divide n_embd {n_embd}", o)
        if n_head % n_kv_head:
            raise _bad("n_kv_head", f"{n_kv_head} does not divide n_head {n_head}", o)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def q_dim(self) -> int:
        return self.n_head * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_head * self.head_dim

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        return asdict(self)
