"""Q8_0 quantization, exactly the rule written in spec.py (bit for bit with C).

For each group of G consecutive values of a row (float32 throughout):

    amax  = max |x|
    scale = amax / 127                     float32 division
    q     = roundf(x / scale)              float32 division, ties away from zero
            clamped to [-127, 127]; 0 wherever scale is 0
    x'    = q * scale                      float32 product

numpy's `np.round` rounds ties to even, so rounding is done by hand:
t = trunc(v); the remainder v - t is exact in float32, and |remainder| >= 0.5
moves one step away from zero. (Adding 0.5 and truncating would be wrong for
0.49999997, whose sum with 0.5 rounds up to 1.0 in float32.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import spec
from .errors import BadGroupSize

__all__ = ["QuantizedTensor", "quantize_q8_0", "dequantize_q8_0", "choose_group_size", "check_group_size",
           "round_half_away", "first_non_finite", "first_bad_scale"]

_Q8_MAX = np.float32(spec.Q8_MAX)
_CHUNK = 1 << 20  # values looked at a time, so that temporaries stay small for huge tensors


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """A Q8_0 tensor: q int8 [..., rows, cols], scales float32 [..., rows, cols / G].

    The arrays may be read-only zero-copy views into a model file.
    """

    q: np.ndarray
    scales: np.ndarray

    def __post_init__(self):
        q, s = self.q, self.scales
        if not isinstance(q, np.ndarray) or q.dtype != np.int8:
            raise ValueError(f"QuantizedTensor.q must be an int8 array, not {getattr(q, 'dtype', type(q))}")
        if not isinstance(s, np.ndarray) or s.dtype != np.float32:
            raise ValueError(
                f"QuantizedTensor.scales must be a float32 array, not {getattr(s, 'dtype', type(s))}")
        if q.ndim < 1 or s.shape[:-1] != q.shape[:-1] or s.ndim != q.ndim:
            raise ValueError(f"QuantizedTensor: scales shape {s.shape} does not fit q shape {q.shape}")
        if s.shape[-1] == 0 or q.shape[-1] == 0 or q.shape[-1] % s.shape[-1]:
            raise ValueError(f"QuantizedTensor: {s.shape[-1]} scales per row do not divide "
                             f"a row of {q.shape[-1]} values into groups of at least one")

    @property
    def shape(self) -> tuple[int, ...]:
        return self.q.shape

    @property
    def group_size(self) -> int:
        return self.q.shape[-1] // self.scales.shape[-1]

    def __getitem__(self, index) -> "QuantizedTensor":
        """Index the leading axes, e.g. qt[3] is layer 3 of a stacked matrix."""
        q, s = self.q[index], self.scales[index]
        return QuantizedTensor(q, s)

    def dequantize(self) -> np.ndarray:
        return dequantize_q8_0(self)


def first_non_finite(values: np.ndarray) -> int | None:
    """The flat (C-order) index of the first NaN or infinity in `values`, or None.

    Scans in chunks: a huge tensor never gets a boolean copy of its own size.
    """
    flat = values.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        finite = np.isfinite(flat[start:start + _CHUNK])
        if not finite.all():
            return start + int(np.argmin(finite))
    return None


def first_bad_scale(q: np.ndarray, scales: np.ndarray) -> tuple[int, str] | None:
    """The flat index of the first scale for which q * scale is not a finite float32
    for some stored q, and why; None when every scale is fine.

    q: int8 [..., cols]; scales: float32 [..., cols / G]. The quantizer writes q
    in [-127, 127], but an int8 can hold -128 and the C engine computes with it
    like any other q: a scale above FLT_MAX / 128 (the quantizer makes them up to
    FLT_MAX / 127) is fine unless its group holds a -128, so only those rare
    groups have their q values read, about 1 MiB at a time.
    """
    flat = scales.reshape(-1)
    group = q.shape[-1] // scales.shape[-1]
    groups = q.reshape(-1, group)  # a row per scale
    with np.errstate(over="ignore", invalid="ignore"):
        near = np.flatnonzero(~np.isfinite(flat * np.float32(128)))
        over = ~np.isfinite(flat[near] * _Q8_MAX)  # overflows whatever q is
    step = max(1, _CHUNK // group)
    for lo in range(0, near.size, step):
        bad = over[lo:lo + step] | (groups[near[lo:lo + step]] == -128).any(axis=1)
        if bad.any():
            k = lo + int(np.argmax(bad))
            if not np.isfinite(flat[near[k]]):
                return int(near[k]), "is not a finite number"
            if over[k]:
                return int(near[k]), "overflows float32 when dequantized"
            return int(near[k]), "overflows float32 when dequantized (its group holds q = -128)"
    return None


def round_half_away(v: np.ndarray) -> np.ndarray:
    """C's roundf on a float32 array: ties go away from zero."""
    t = np.trunc(v)
    step = (np.abs(v - t) >= np.float32(0.5)).astype(np.float32)
    return t + np.copysign(step, v)


def quantize_q8_0(x, group_size: int) -> QuantizedTensor:
    """Quantize the last axis of `x` in groups of `group_size` (the spec.py rule).

    `x` is first converted to float32; the rule is defined on float32 values.
    Raises TypeError if the group size is not an int, ValueError if it does not
    divide the row length, if `x` holds a NaN or an infinity, or if a group's
    scale would overflow when dequantized (an amax of FLT_MAX).
    """
    group_size = _int("group size", group_size)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 1:
        raise ValueError("quantize_q8_0 needs an array with at least one axis")
    cols = x.shape[-1]
    if group_size < 1 or cols % group_size:
        raise ValueError(f"group size {group_size} does not divide the row length {cols}")
    if first_non_finite(x) is not None:
        raise ValueError("cannot quantize non-finite values (NaN or infinity)")
    groups = x.reshape(*x.shape[:-1], cols // group_size, group_size)
    amax = np.abs(groups).max(axis=-1, initial=np.float32(0))
    scales = (amax / _Q8_MAX).astype(np.float32)
    with np.errstate(over="ignore"):
        too_big = np.flatnonzero(~np.isfinite(scales * _Q8_MAX))
    if too_big.size:  # amax / 127 rounded up past FLT_MAX / 127 (an amax of FLT_MAX itself)
        raise ValueError(f"cannot quantize a value of magnitude {float(amax.flat[too_big[0]]):g}: its scale "
                         "would overflow float32 when dequantized (127 x scale)")
    zero = scales == 0
    # Divide by 1 where the scale is 0 (amax 0, or amax/127 underflowed); those q are zeroed below.
    divisor = np.where(zero, np.float32(1), scales)[..., None]
    v = (groups / divisor).astype(np.float32)
    q = np.clip(round_half_away(v), -_Q8_MAX, _Q8_MAX)
    q = np.where(zero[..., None], np.float32(0), q)
    return QuantizedTensor(q.astype(np.int8).reshape(x.shape), scales)


def dequantize_q8_0(qt: QuantizedTensor) -> np.ndarray:
    """q * scale in float32, in the quantized tensor's shape.

    Scales that are NaN, infinite or too large give NaN or infinity, quietly
    (NanoFile.check_scales() finds them in a file, counting a stored q of -128,
    which the quantizer never writes).
    """
    G = qt.group_size
    shape = qt.q.shape
    q = qt.q.reshape(*shape[:-1], shape[-1] // G, G).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        out = q * qt.scales[..., None]
    return out.astype(np.float32, copy=False).reshape(shape)


def choose_group_size(config, preferred: int = spec.DEFAULT_GROUP_SIZE) -> int:
    """The largest divisor of gcd(n_embd, n_head*head_dim, n_hidden) that is <= preferred.

    Every quantized row (n_embd for tok_embd, wq, wk, wv, w1, w3, lm_head;
    n_head*head_dim for wo; n_hidden for w2) then splits into whole groups.
    The writer settles this before it writes the header (reference defect 5).
    """
    preferred = _int("preferred group size", preferred)
    if preferred < 1:
        raise ValueError(f"preferred group size must be >= 1, not {preferred}")
    g = math.gcd(config.n_embd, config.n_head * config.head_dim, config.n_hidden)
    for d in range(min(g, preferred), 0, -1):
        if g % d == 0:
            return d
    return 1  # unreachable: 1 divides everything


def _int(what: str, value) -> int:
    """`value` as an int; a float (2.5, even 2.0) or a bool is refused, not truncated."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int, not {type(value).__name__} {value!r}")
    return int(value)


def check_group_size(config, group_size: int) -> None:
    """The group size must split every quantized row into whole groups."""
    if group_size < 1:
        raise BadGroupSize(f"is {group_size} in a Q8_0 file; it must be at least 1",
                           field="group size", offset=spec.OFF_GROUP_SIZE)
    for what, length in (("n_embd", config.n_embd), ("n_head*head_dim", config.q_dim),
                         ("n_hidden", config.n_hidden)):
        if length % group_size:
            raise BadGroupSize(f"{group_size} does not divide {what} = {length}, a quantized row length",
                               field="group size", offset=spec.OFF_GROUP_SIZE)
