"""Writing model files: one writer, parameterised by layout and quantization.

    write(path, config, tensors, tokens=None, quant=QuantType.F32, group_size=None, layout=None)
    to_bytes(config, tensors, tokens=None, quant=..., group_size=None, layout=None) -> bytes

`layout` defaults to 2026.1 (the reference engine loads it) for a Config and to
2024.10 for a LoraConfig; 2026.101 records what 2026.1 cannot (full attention,
learned positions, norm eps, RoPE theta, tokenizer kind). 2025.12 is read only.

Everything is validated before the first byte is produced: the config against
the layout, the group size against every quantized row, every tensor's shape,
every float value (NaN and infinity are refused, naming the tensor).
Files are written with `write_atomically` (a temporary file in the same
directory, fsync, rename), so a failed write never leaves half a model behind,
a replaced file keeps its mode, and only a regular file is ever replaced.
"""

from __future__ import annotations

import struct

import numpy as np

from . import spec
from .atomic import write_atomically
from .config import Config, LoraConfig
from .errors import WriteError
from .plan import Param, lora_params, model_params
from .quant import (
    QuantizedTensor,
    check_group_size,
    choose_group_size,
    dequantize_q8_0,
    first_bad_scale,
    first_non_finite,
    quantize_q8_0,
)
from .spec import Attention, ModelType, Position, QuantType, TokenizerKind
from .vocab import BpeToken, TokenEntry, encode_bpe_section, encode_tokenizer_section

__all__ = ["write", "to_bytes", "write_lora", "rope_tables"]


def rope_tables(block_size: int, head_dim: int, theta: float = spec.DEFAULT_ROPE_THETA):
    """RoPE tables (cos, sin), float32 [block_size, head_dim / 2].

    freq_i = theta ** (-(2 i) / head_dim) for i < head_dim / 2 and the angle
    t * freq_i for position t are computed in float64; cos and sin are then
    cast to float32. (The reference exporter computed its angles in float32:
    its tables differ from these by about half an ulp near the start and by up
    to 2.3e-6 at large positions; files keep whatever tables they were given.)
    """
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim >= 2, not {head_dim}")
    i = np.arange(head_dim // 2, dtype=np.float64)
    freq = float(theta) ** (-(2.0 * i) / head_dim)
    angle = np.arange(block_size, dtype=np.float64)[:, None] * freq[None, :]
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)


def to_bytes(config, tensors, tokens=None, quant=QuantType.F32, group_size=None, layout=None) -> bytes:
    """The file write() would write, as bytes."""
    return b"".join(_as_bytes(c) for c in _encode(config, tensors, tokens, quant, group_size, layout))


def write(path, config, tensors, tokens=None, quant=QuantType.F32, group_size=None, layout=None) -> int:
    """Write a model file atomically; return its size in bytes.

    config: Config (or LoraConfig: see write_lora). tensors: spec names -> float
    arrays in their logical shapes, or QuantizedTensor (written as-is in a Q8_0
    file). rope_cos/rope_sin are computed by rope_tables() when both are absent
    (one without the other is a WriteError).
    tokens: list[TokenEntry] (Nano trie), list[BpeToken] (Qwen), or None (only
    in 2026.101). quant: QuantType or "f32"/"q8_0". group_size: Q8_0 only;
    by default the one of the QuantizedTensor values given, else
    choose_group_size(config). layout: spec.Layout or its name.
    Raises WriteError, naming the tensor, for a wrong shape or a NaN or infinity.
    """
    chunks = _encode(config, tensors, tokens, quant, group_size, layout)
    return write_atomically(path, (_as_bytes(c) for c in chunks))


def write_lora(path, lora_config: LoraConfig, tensors) -> int:
    """Write a LoRA module (layout 2024.10, F32): tensors wq_A [L, R, E],
    wq_B [L, H*D, R], ..., wo_A [L, R, H*D], wo_B [L, E, R]."""
    if not isinstance(lora_config, LoraConfig):
        raise WriteError(f"write_lora needs a LoraConfig, not {type(lora_config).__name__}")
    return write(path, lora_config, tensors, layout=spec.LAYOUT_2024_10)


# ---------------------------------------------------------------------------


def _as_bytes(chunk) -> bytes | memoryview:
    return memoryview(chunk).cast("B") if isinstance(chunk, np.ndarray) else chunk


def _resolve_layout(layout, config) -> spec.Layout:
    if layout is None:
        return spec.LAYOUT_2024_10 if isinstance(config, LoraConfig) else spec.DEFAULT_LAYOUT
    if isinstance(layout, str):
        found = spec.LAYOUTS_BY_NAME.get(layout)
        if found is None:
            raise WriteError(f"unknown layout {layout!r} (known: {', '.join(spec.LAYOUTS_BY_NAME)})")
        layout = found
    if not isinstance(layout, spec.Layout):
        raise WriteError(f"layout must be a spec.Layout or its name, not {layout!r}")
    if layout.writer == "reference":
        raise WriteError(f"layout {layout.name} is read only; write 2026.1 (reference-loadable) or 2026.101")
    return layout


def _resolve_quant(quant) -> QuantType:
    if isinstance(quant, str):
        names = {"f32": QuantType.F32, "q8_0": QuantType.Q8_0, "q4k": QuantType.Q4K}
        if quant.lower() not in names:
            raise WriteError(f"unknown quant type {quant!r} (f32 or q8_0)")
        quant = names[quant.lower()]
    quant = QuantType(quant)
    if quant == QuantType.Q4K:
        raise WriteError("nano-format cannot write Q4K parameters; use f32 or q8_0")
    return quant


def _check_layout_can_say(config: Config, layout: spec.Layout) -> None:
    """Layouts without the extension imply causal, RoPE, eps 1e-5 and the default theta."""
    if layout.extension:
        return
    use = "use layout 2026.101, which records it"
    if config.attention != Attention.CAUSAL:
        raise WriteError(f"layout {layout.name} cannot record {config.attention.name.lower()} attention "
                         f"(readers assume causal); {use}")
    if config.position != Position.ROPE:
        raise WriteError(f"layout {layout.name} cannot record {config.position.name.lower()} position "
                         f"embeddings (readers assume RoPE); {use}")
    # Compare as the f32 the extension would store: 1e-5 read back from 2026.101 must still fit.
    if np.float32(config.norm_eps) != np.float32(spec.DEFAULT_NORM_EPS):
        raise WriteError(f"layout {layout.name} cannot record norm_eps={config.norm_eps!r} "
                         f"(readers assume {spec.DEFAULT_NORM_EPS}); {use}")
    theta = spec.default_rope_theta(config.model_type)
    if np.float32(config.rope_theta) != np.float32(theta):
        raise WriteError(f"layout {layout.name} cannot record rope_theta={config.rope_theta!r} "
                         f"(readers assume {theta:g} for {config.model_type.name.lower()}); {use}")


def _tokenizer_section(tokens, config: Config, layout: spec.Layout) -> tuple[TokenizerKind, bytes]:
    if tokens is None:
        if not layout.extension:
            raise WriteError(f"layout {layout.name} needs a vocabulary (tokens=...); "
                             f"only 2026.101 can say a model has none")
        return TokenizerKind.NONE, b""
    tokens = list(tokens)
    if len(tokens) != config.vocab_size:
        raise WriteError(f"the vocabulary has {len(tokens)} tokens but config.vocab_size is {config.vocab_size}")
    if all(isinstance(t, TokenEntry) for t in tokens):
        kind = TokenizerKind.TRIE
    elif all(isinstance(t, BpeToken) for t in tokens):
        kind = TokenizerKind.BPE
    else:
        raise WriteError("tokens must all be TokenEntry (Nano) or all BpeToken (Qwen)")
    implied = spec.default_tokenizer_kind(config.model_type)
    if not layout.extension and kind != implied:
        raise WriteError(f"a {config.model_type.name.lower()} model in layout {layout.name} carries a "
                         f"{implied.name.lower()} vocabulary, not {kind.name.lower()}")
    return kind, encode_tokenizer_section(tokens) if kind == TokenizerKind.TRIE else encode_bpe_section(tokens)


def _float_array(name: str, value, p: Param) -> np.ndarray:
    if isinstance(value, QuantizedTensor):
        value = dequantize_q8_0(value)
    try:
        arr = np.asarray(value)
    except Exception as e:  # torch bf16 and the like: say which tensor
        raise WriteError(f"tensor {name!r} cannot be read as an array: {e}") from None
    if arr.dtype.kind not in "fiub":
        raise WriteError(f"tensor {name!r} has dtype {arr.dtype}; expected floating point values")
    if arr.shape != p.shape:
        raise WriteError(f"tensor {name!r} has shape {arr.shape}, expected {p.dims} = {p.shape}")
    i = first_non_finite(arr)  # F32 stores them as given and Q8_0 cannot quantize them: refuse both
    if i is None and arr.dtype.kind == "f" and arr.dtype.itemsize > 4 and arr.size:
        big = np.flatnonzero(np.abs(arr) > np.finfo(np.float32).max)  # finite, but inf as float32
        if big.size:
            where = [int(k) for k in np.unravel_index(big[0], arr.shape)]
            raise WriteError(f"tensor {name!r} holds {arr.flat[big[0]]} at index {where}, beyond float32's "
                             f"largest finite value {float(np.finfo(np.float32).max):g}")
    if i is not None:
        where = [int(k) for k in np.unravel_index(i, arr.shape)]
        raise WriteError(f"tensor {name!r} holds {arr.flat[i]} at index {where}; "
                         "a model file holds finite values only")
    return np.ascontiguousarray(arr, dtype="<f4")


def _quantized_array(name: str, value, p: Param, group_size: int) -> QuantizedTensor:
    if isinstance(value, QuantizedTensor):
        if value.shape != p.shape:
            raise WriteError(f"tensor {name!r} has shape {value.shape}, expected {p.dims} = {p.shape}")
        if value.group_size != group_size:
            raise WriteError(f"tensor {name!r} is quantized with group size {value.group_size} but the "
                             f"file uses {group_size}; pass float values to requantize it")
        found = first_bad_scale(value.q, value.scales)  # the reader would refuse the file
        if found is not None:
            i, what = found
            where = [int(k) for k in np.unravel_index(i, value.scales.shape)]
            raise WriteError(f"tensor {name!r}: scale {float(value.scales.flat[i]):g} at index {where} {what}")
        return value
    values = _float_array(name, value, p)
    try:
        return quantize_q8_0(values, group_size)
    except ValueError as e:  # a scale the reader would refuse
        raise WriteError(f"tensor {name!r}: {e}") from None


def _group_size(config: Config, tensors, quant: QuantType, group_size) -> int:
    if quant == QuantType.F32:
        if group_size not in (None, 0):
            raise WriteError(f"group_size={group_size} makes no sense for an F32 file")
        return 0
    if group_size is None:
        given = {v.group_size for v in tensors.values() if isinstance(v, QuantizedTensor)}
        if len(given) > 1:
            raise WriteError(f"the QuantizedTensor values use different group sizes {sorted(given)}")
        group_size = given.pop() if given else choose_group_size(config)
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)):
        raise WriteError(f"group_size must be an int, not {type(group_size).__name__} {group_size!r}")
    check_group_size(config, int(group_size))
    return int(group_size)


def _check_names(tensors, plan: list[Param], optional: set[str], config) -> None:
    expected = {p.name for p in plan}
    for p in plan:
        if p.name not in tensors and p.name not in optional:
            raise WriteError(f"missing tensor {p.name!r} {p.dims} = {p.shape}")
    unknown = [name for name in tensors if name not in expected]
    if unknown:
        name = unknown[0]
        if name == spec.CLASSIFIER:
            why = "the classifier is tied (config.tie_embeddings); drop it or untie"
        elif isinstance(config, Config) and (name in spec.ROPE_TENSORS or name == spec.POS_EMBEDDING):
            why = f"position encoding is {config.position.name.lower()}"
        else:
            why = "this model does not have it"
        raise WriteError(f"unexpected tensor {name!r}: {why} (expected: {', '.join(sorted(expected))})")


def _encode(config, tensors, tokens, quant, group_size, layout) -> list:
    """Validate everything, then return the file as a list of chunks (bytes or arrays)."""
    layout = _resolve_layout(layout, config)
    if not isinstance(tensors, dict):
        raise WriteError(f"tensors must be a dict of name -> array, not {type(tensors).__name__}")
    if isinstance(config, LoraConfig):
        return _encode_lora(config, tensors, tokens, quant, group_size, layout)
    if not isinstance(config, Config):
        raise WriteError(f"config must be a Config or LoraConfig, not {type(config).__name__}")
    if layout.name == spec.LAYOUT_2024_10.name:
        raise WriteError("layout 2024.10 holds LoRA modules only (give a LoraConfig)")
    if config.model_type not in layout.model_types:
        raise WriteError(f"layout {layout.name} cannot hold a {config.model_type.name.lower()} model")
    quant = _resolve_quant(quant)
    _check_layout_can_say(config, layout)
    G = _group_size(config, tensors, quant, group_size)
    kind, section = _tokenizer_section(tokens, config, layout)

    plan = model_params(config)
    optional = set(spec.ROPE_TENSORS) if config.position == Position.ROPE else set()
    _check_names(tensors, plan, optional, config)
    tensors = dict(tensors)
    given = [n for n in spec.ROPE_TENSORS if n in tensors]
    if len(given) == 1:  # the pair is recomputed, or kept, whole
        missing = next(n for n in spec.ROPE_TENSORS if n not in tensors)
        raise WriteError(f"{given[0]!r} is given without {missing!r}: give both RoPE tables or neither "
                         "(then they are computed)")
    if config.position == Position.ROPE and not given:
        tensors["rope_cos"], tensors["rope_sin"] = rope_tables(config.block_size, config.head_dim,
                                                               config.rope_theta)
    params = []
    for p in plan:
        value = tensors[p.name]
        if not p.stored_as_q8_0(quant):
            if isinstance(value, QuantizedTensor) and not p.quantizable:
                raise WriteError(f"tensor {p.name!r} is always stored as f32; give float values")
            params.append(_float_array(p.name, value, p))
            continue
        qt = _quantized_array(p.name, value, p, G)
        layers = [qt] if not p.per_layer else [qt[i] for i in range(p.shape[0])]
        for one in layers:  # Q8_0: each matrix's int8 values, then its scales
            params.append(np.ascontiguousarray(one.q, dtype=np.int8))
            params.append(np.ascontiguousarray(one.scales, dtype="<f4"))

    header = bytearray(spec.HEADER_SIZE)
    struct.pack_into("<IIiiII", header, 0, spec.MAGIC0, spec.MAGIC1, layout.major, layout.minor,
                     config.model_type, layout.config_len)
    c = config
    struct.pack_into(f"<{spec.CONFIG_WORDS}I", header, spec.OFF_CONFIG, c.block_size, c.vocab_size,
                     c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.n_hidden, int(c.tie_embeddings), c.head_dim)
    struct.pack_into("<II", header, spec.OFF_QUANT, spec.quant_code(layout, quant), G)
    if layout.extension:
        struct.pack_into("<IIffI", header, spec.OFF_EXT_ATTENTION, c.attention, c.position,
                         c.norm_eps, c.rope_theta, kind)
    return [bytes(header), section, *params]


def _encode_lora(config: LoraConfig, tensors, tokens, quant, group_size, layout) -> list:
    if layout.name != spec.LAYOUT_2024_10.name:
        raise WriteError(f"a LoRA module is written in layout 2024.10, not {layout.name}")
    if tokens is not None:
        raise WriteError("a LoRA module has no vocabulary")
    if _resolve_quant(quant) != QuantType.F32 or group_size not in (None, 0):
        raise WriteError("a LoRA module is F32 only")
    plan = lora_params(config)
    _check_names(tensors, plan, set(), config)
    header = bytearray(spec.HEADER_SIZE)
    struct.pack_into("<IIiiII", header, 0, spec.MAGIC0, spec.MAGIC1, layout.major, layout.minor,
                     ModelType.LORA, layout.config_len)
    c = config
    struct.pack_into("<8I", header, spec.OFF_CONFIG, c.rank, c.alpha, c.n_layer, c.n_embd, c.n_head,
                     c.n_kv_head, c.n_hidden, 0)
    struct.pack_into("<II", header, spec.OFF_QUANT, spec.quant_code(layout, QuantType.F32), 0)
    return [bytes(header)] + [_float_array(p.name, tensors[p.name], p) for p in plan]
