"""The C loader gives nano_format's verdict on every file (reference defect 10).

Valid files are built with nano_format (to_bytes), then each field is
corrupted; the C status must be the one the mapping table gives for the error
class nano_format.read raises, or for what `nano-format validate` adds to it
(check_scales, check_finite: a NaN or an infinity in the weights). A
hypothesis test mutates valid files at random and checks the same agreement.
The tensor tables must agree too.
"""

from __future__ import annotations

import os
import re
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nano_format as nf
from nano_format import spec

# nano_format error class -> C status
VERDICT = {
    None: "NANO_OK",
    "BadMagic": "NANO_ERR_BAD_MAGIC",
    "UnsupportedVersion": "NANO_ERR_UNSUPPORTED_VERSION",
    "UnknownModelType": "NANO_ERR_UNKNOWN_MODEL_TYPE",
    "UnknownQuantType": "NANO_ERR_UNKNOWN_QUANT_TYPE",
    "BadHeader": "NANO_ERR_BAD_HEADER",
    "BadConfig": "NANO_ERR_BAD_CONFIG",
    "BadGroupSize": "NANO_ERR_BAD_GROUP_SIZE",
    "Truncated": "NANO_ERR_TRUNCATED",
    "BadTokenRecord": "NANO_ERR_BAD_TOKEN_RECORD",
    "TrailingBytes": "NANO_ERR_TRAILING_BYTES",
    "SizeOverflow": "NANO_ERR_SIZE_OVERFLOW",
    # `nano-format validate`'s checks after read(): the C loader makes them too
    "BadScale": "NANO_ERR_NON_FINITE",
    "NonFiniteValue": "NANO_ERR_NON_FINITE",
}


def python_verdict(data: bytes) -> str | None:
    """The error class `nano-format validate` gives (read, then the scales and the F32
    values; Q4K parameters cannot be read, so they are not checked)."""
    try:
        f = nf.read(data)
    except nf.FormatError as e:
        return type(e).__name__
    if not f.loadable:
        return None
    try:
        f.check_scales()
        f.check_finite()
    except nf.FormatError as e:
        return type(e).__name__
    return None


def patch(data: bytes, offset: int, fmt: str, *values) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def config_word(name: str) -> int:
    return spec.config_offset(name)


NAN_BITS, SNAN_BITS = 0x7FC00000, 0x7F800001  # a quiet and a signalling NaN
FLT_MAX = float(np.finfo(np.float32).max)


def tensor_entry(data: bytes, name: str):
    """nano_format's table row of tensor `name` ("wq.0" for a per-layer Q8_0 matrix)."""
    return next(t for t in nf.read(data).tensors if t.name == name)


def patch_value(data: bytes, name: str, index: int, fmt: str, value) -> bytes:
    """Element `index` (flat) of F32 tensor `name` set to value (packed with fmt)."""
    t = tensor_entry(data, name)
    assert t.dtype == "f32" and 0 <= index < t.nbytes // 4
    return patch(data, t.offset + 4 * index, fmt, value)


def patch_scale(data: bytes, name: str, index: int, value: float, first_q: int | None = None) -> bytes:
    """Scale `index` (flat) of Q8_0 tensor `name` set to value; first_q: also the first q
    of that scale's group (the writer never stores -128)."""
    t = tensor_entry(data, name)
    rows, cols = t.shape
    group = nf.read(data).group_size
    assert t.dtype == "q8_0" and 0 <= index < rows * cols // group
    out = patch(data, t.offset + rows * cols + 4 * index, "<f", value)
    return out if first_q is None else patch(out, t.offset + index * group, "<b", first_q)


def non_finite_files(b: dict) -> dict:
    """Files nano_format reads but `nano-format validate` refuses (a NaN or an infinity in
    the weights), with near misses that both accept. Built from the valid bases."""
    f, q, ext, lora = b["f32_2026_1"], b["q8_2026_1"], b["ext_full_learned"], b["lora"]
    last_f32 = [t for t in nf.read(f).tensors if t.dtype == "f32"][-1]
    qwen2_first = nf.read(b["qwen2"]).tensors[0].name
    near = np.float32(FLT_MAX / 127.5)  # above FLT_MAX / 128: q * scale overflows only for q = -128
    return {
        "f32_nan": patch_value(f, "norm_final", 3, "<I", NAN_BITS),
        "f32_signalling_nan_in_rope_table": patch_value(f, "rope_cos", 5, "<I", SNAN_BITS),
        "f32_inf_first_weight": patch_value(f, "tok_embd", 0, "<f", float("inf")),
        "f32_minus_inf_last_value": patch_value(f, last_f32.name, last_f32.nbytes // 4 - 1, "<f", float("-inf")),
        "f32_flt_max_is_finite": patch_value(f, "norm_final", 0, "<f", FLT_MAX),
        "ext_nan_pos_embd": patch_value(ext, "pos_embd", 17, "<I", NAN_BITS | 0x80000000),
        "q8_nan_norm": patch_value(q, "norm_attn", 20, "<I", NAN_BITS),
        "q8_nan_scale": patch_scale(q, "wq.0", 0, float("nan")),
        "q8_inf_scale_last": patch_scale(q, "w3.1", 31, float("-inf")),
        "q8_inf_scale_tok_embd": patch_scale(q, "tok_embd", 7, float("inf")),
        "q8_scale_times_127_overflows": patch_scale(q, "wk.1", 3, 3e38),
        "q8_scale_near_with_q_minus_128": patch_scale(q, "w2.0", 5, float(near), first_q=-128),
        "q8_scale_near_with_q_127_is_fine": patch_scale(q, "w2.0", 5, float(near), first_q=127),
        "q8_scale_flt_max_over_128_is_fine": patch_scale(q, "wo.1", 2, FLT_MAX / 128, first_q=-128),
        "q8_untied_nan_lm_head_scale": patch_scale(b["q8_untied_g4"], "lm_head", 11, float("nan")),
        "lora_nan": patch_value(lora, "wq_A", 0, "<I", NAN_BITS),
        "lora_inf_last": patch_value(lora, "wo_B", tensor_entry(lora, "wo_B").nbytes // 4 - 1, "<f", float("inf")),
        "qwen2_inf": patch_value(b["qwen2"], qwen2_first, 1, "<f", float("inf")),
        "qwen3_nan_scale": patch_scale(b["qwen3"], [t.name for t in nf.read(b["qwen3"]).tensors
                                                    if t.dtype == "q8_0"][0], 0, float("nan")),
        "psycho_nan_scale": patch_scale(b["psycho"], "wq.0", 0, float("nan")),
        "psycho_nan_norm_final": patch_value(b["psycho"], "norm_final", 0, "<I", NAN_BITS),
        "sort6_nan_norm_final": patch_value(b["sort6"], "norm_final", 31, "<I", NAN_BITS),
        "sort6_inf_wq": patch_value(b["sort6"], "wq", 0, "<f", float("inf")),
        # Q4K parameters are opaque: nothing in them is read, NaN bits included
        "q4k_opaque_nan_bits": patch(b["q4k"], tensor_entry(f, "norm_final").offset, "<I", NAN_BITS),
    }


# ---------------------------------------------------------------------------
# Valid base files


def qwen_bytes(model_type: spec.ModelType, quant="f32", **kw) -> bytes:
    from nano_format.plan import model_params

    c = dict(model_type=model_type, block_size=8, vocab_size=5, n_layer=1, n_embd=16, n_head=2, n_kv_head=1,
             n_hidden=32, tie_embeddings=False)
    c.update(kw)
    config = nf.Config(**c)
    rng = np.random.default_rng(0)
    tensors = {p.name: rng.standard_normal(p.shape).astype(np.float32) for p in model_params(config)
               if p.name not in ("rope_cos", "rope_sin")}
    tokens = [nf.BpeToken(float(i), bytes([97 + i]) * (i + 1)) for i in range(c["vocab_size"])]
    return nf.to_bytes(config, tensors, tokens, quant=quant)


@pytest.fixture(scope="module")
def bases(h, psycho_path, sort6_path):
    b = {
        "f32_2026_1": h.model_bytes(),
        "q8_2026_1": h.model_bytes(quant="q8_0", seed=1),
        "q8_untied_g4": h.model_bytes(quant="q8_0", group_size=4, tie_embeddings=False, seed=2),
        "ext_full_learned": h.model_bytes(layout="2026.101", attention=spec.Attention.FULL,
                                          position=spec.Position.LEARNED, norm_eps=1e-6, rope_theta=500.0),
        "ext_q8": h.model_bytes(layout="2026.101", quant="q8_0", n_embd=24, n_head=3, n_kv_head=1, n_hidden=40),
        "qwen2": qwen_bytes(spec.ModelType.QWEN2),
        "qwen3": qwen_bytes(spec.ModelType.QWEN3, head_dim=12, quant="q8_0"),
        "psycho": psycho_path.read_bytes(),
        "sort6": sort6_path.read_bytes(),
    }
    lc = nf.LoraConfig(rank=2, alpha=4, n_layer=2, n_embd=16, n_head=4, n_kv_head=2, n_hidden=32)
    from nano_format.plan import lora_params

    rng = np.random.default_rng(3)
    b["lora"] = nf.to_bytes(lc, {p.name: rng.standard_normal(p.shape).astype(np.float32)
                                 for p in lora_params(lc)})
    # Q4K: recognised, parameters opaque (no size check)
    b["q4k"] = patch(b["f32_2026_1"], spec.OFF_QUANT, "<I", 0x42) + b"\x01\x02\x03"
    for name, data in b.items():
        assert python_verdict(data) is None, name
    return b


def test_every_base_file_loads_with_the_same_tables(nano, bases):
    for name, data in bases.items():
        m = nano.load(data)
        py = nf.read(data)
        info = m.info
        assert info["file_size"] == len(data)
        assert info["layout"] == py.layout.name, name
        assert info["model_type"] == py.model_type
        assert info["quant_type"] == py.quant and info["quant_code"] == py.quant_code
        assert info["group_size"] == py.group_size
        assert info["tokenizer_kind"] == py.tokenizer_kind
        assert info["tokenizer_size"] == py.tokenizer_nbytes
        assert info["params_offset"] == py.params_offset
        c = py.config
        for field in ("n_layer", "n_embd", "n_head", "n_kv_head", "n_hidden"):
            assert info[field] == getattr(c, field), (name, field)
        if py.model_type == spec.ModelType.LORA:
            assert (info["lora_rank"], info["lora_alpha"]) == (c.rank, c.alpha)
        else:
            for field in ("block_size", "vocab_size", "head_dim"):
                assert info[field] == getattr(c, field), (name, field)
            assert info["tied"] == c.tie_embeddings
            assert info["attention"] == c.attention and info["position"] == c.position
            assert np.float32(info["norm_eps"]) == np.float32(c.norm_eps)
            assert np.float32(info["rope_theta"]) == np.float32(c.rope_theta)
        table = [(f"{t.name}.{t.layer}" if t.layer >= 0 else t.name,
                  {0: "f32", 0x80: "q8_0", 0x42: "q4k"}[t.quant_type], t.shape, t.offset, t.size)
                 for t in m.tensors]
        assert table == [(t.name, t.dtype, tuple(t.shape), t.offset, t.nbytes) for t in py.tensors], name
        assert info["runnable"] == (py.model_type == spec.ModelType.NANO and py.quant != spec.QuantType.Q4K)


def test_fixtures_config(nano, psycho_path, sort6_path):
    p = nano.load(psycho_path).info
    assert (p["major"], p["minor"], p["quant_code"], p["quant_type"], p["group_size"]) == (2025, 12, 10, 0x80, 16)
    assert (p["n_layer"], p["n_embd"], p["n_head"], p["n_kv_head"], p["n_hidden"], p["vocab_size"],
            p["block_size"], p["tied"]) == (8, 32, 4, 2, 96, 4096, 512, 1)
    s = nano.load(sort6_path).info
    assert (s["quant_type"], s["vocab_size"], s["block_size"], s["n_layer"]) == (0, 80, 6, 2)
    assert s["attention"] == 0 and s["has_extension"] == 0  # the header cannot say "full"


def test_path_buffer_and_read_agree(nano, bases, tmp_path):
    data = bases["q8_untied_g4"]
    path = tmp_path / "m.bin"
    path.write_bytes(data)
    infos = [nano.load(path).info, nano.load(path, use_mmap=False).info, nano.load(data).info]
    for d in infos:
        d.pop("layout")
    assert infos[0] == infos[1] == infos[2]
    ctxs = [nano.load(path).context(), nano.load(data).context()]
    a, b = (c.eval([1, 2, 3], all_logits=True) for c in ctxs)
    assert np.array_equal(a, b)


def test_misaligned_buffer(nano, bases):
    """Float tensors that are not 4-byte aligned in the caller's buffer still work (copied)."""
    for name in ("f32_2026_1", "q8_untied_g4"):
        data = bases[name]
        shifted = bytearray(len(data) + 1)
        shifted[1:] = data
        view = memoryview(shifted)[1:]
        a = nano.load(data).context().eval([5, 6, 7], all_logits=True)
        b = nano.load(view).context().eval([5, 6, 7], all_logits=True)
        assert np.array_equal(a, b), name


def test_io_errors(nano, tmp_path):
    out = nano.ffi.new("nano_model **")
    st = nano.lib.nano_model_load_file(str(tmp_path / "missing.bin").encode(), nano.ffi.NULL, out)
    assert nano.status_name(st) == "NANO_ERR_IO" and out[0] == nano.ffi.NULL
    st = nano.lib.nano_model_load_file(str(tmp_path).encode(), nano.ffi.NULL, out)  # a directory
    assert nano.status_name(st) == "NANO_ERR_IO"
    st = nano.lib.nano_model_load_file(nano.ffi.NULL, nano.ffi.NULL, out)
    assert nano.status_name(st) == "NANO_ERR_BAD_ARGUMENT"
    (tmp_path / "empty.bin").write_bytes(b"")
    st = nano.lib.nano_model_load_file(str(tmp_path / "empty.bin").encode(), nano.ffi.NULL, out)
    assert nano.status_name(st) == "NANO_ERR_TRUNCATED"


# ---------------------------------------------------------------------------
# One corruption per field


def corruptions(b: dict) -> dict:
    f = b["f32_2026_1"]
    q = b["q8_2026_1"]
    ext = b["ext_full_learned"]
    lora = b["lora"]
    sort6 = b["sort6"]
    tok = spec.HEADER_SIZE  # tokenizer section
    rec0 = tok + 8          # first token record
    c = {
        "empty": b"",
        "magic_prefix_only": f[:5],
        "bad_magic": b"XXXX" + f[4:],
        "gguf": b"GGUF" + bytes(300),
        "bad_magic1": patch(f, 4, "<I", 0),
        "short_header": f[:200],
        "version_2026_2": patch(f, spec.OFF_MINOR, "<i", 2),
        "version_1999": patch(f, spec.OFF_MAJOR, "<i", 1999),
        "version_negative": patch(f, spec.OFF_MAJOR, "<i", -2026),
        "model_type_1": patch(f, spec.OFF_MODEL_TYPE, "<I", 1),
        "model_type_huge": patch(f, spec.OFF_MODEL_TYPE, "<I", 0xFFFFFFFF),
        "lora_type_in_2026_1": patch(f, spec.OFF_MODEL_TYPE, "<I", 10),
        "qwen_in_2025_12": patch(sort6, spec.OFF_MODEL_TYPE, "<I", 2),
        "qwen_in_ext": patch(ext, spec.OFF_MODEL_TYPE, "<I", 3),
        "nano_in_2024_10": patch(lora, spec.OFF_MODEL_TYPE, "<I", 0),
        "config_len_32": patch(f, spec.OFF_CONFIG_LEN, "<I", 32),
        "config_len_36_in_2025": patch(sort6, spec.OFF_CONFIG_LEN, "<I", 36),
        "quant_0x10": patch(f, spec.OFF_QUANT, "<I", 0x10),
        "quant_legacy_in_2026": patch(q, spec.OFF_QUANT, "<I", 10),
        "quant_0x80_in_2025": patch(sort6, spec.OFF_QUANT, "<I", 0x80),
        "quant_q4k_in_ext": patch(ext, spec.OFF_QUANT, "<I", 0x42),
        "quant_q8_in_lora": patch(lora, spec.OFF_QUANT, "<I", 0x80),
        "reserved_0x44_in_2026_1": patch(f, 0x44, "<B", 1),
        "reserved_0xff_end": patch(f, 0xFF, "<B", 1),
        "reserved_after_ext": patch(ext, 0x58, "<B", 7),
        "lora_ninth_word": patch(lora, 0x38, "<B", 1),
        "lora_reserved_word": patch(lora, config_word("reserved"), "<I", 1),
        "lora_rank_0": patch(lora, config_word("rank"), "<I", 0),
        "lora_head_not_dividing": patch(lora, config_word("n_head"), "<I", 3),
        "lora_kv_not_dividing": patch(lora, config_word("n_kv_head"), "<I", 3),
        "lora_truncated": lora[:-4],
        "lora_trailing": lora + b"\0",
        "block_0": patch(f, config_word("block_size"), "<I", 0),
        "block_huge": patch(f, config_word("block_size"), "<I", spec.MAX_DIM + 1),
        "vocab_0": patch(f, config_word("vocab_size"), "<I", 0),
        "vocab_huge": patch(f, config_word("vocab_size"), "<I", spec.MAX_VOCAB + 1),
        "vocab_mismatch": patch(f, config_word("vocab_size"), "<I", 47),
        "n_layer_0": patch(f, config_word("n_layer"), "<I", 0),
        "n_layer_huge": patch(f, config_word("n_layer"), "<I", spec.MAX_LAYERS + 1),
        "n_layer_big": patch(f, config_word("n_layer"), "<I", 1000),
        "n_embd_0": patch(f, config_word("n_embd"), "<I", 0),
        "n_head_0": patch(f, config_word("n_head"), "<I", 0),
        "n_head_not_dividing": patch(f, config_word("n_head"), "<I", 3),
        "n_head_huge": patch(f, config_word("n_head"), "<I", spec.MAX_HEADS + 1),
        "n_kv_head_not_dividing": patch(f, config_word("n_kv_head"), "<I", 3),
        "n_kv_head_0": patch(f, config_word("n_kv_head"), "<I", 0),
        "n_hidden_0": patch(f, config_word("n_hidden"), "<I", 0),
        "n_hidden_huge": patch(f, config_word("n_hidden"), "<I", spec.MAX_DIM + 1),
        "shared_2": patch(f, config_word("is_shared_classifier"), "<I", 2),
        "untied_without_lm_head": patch(f, config_word("is_shared_classifier"), "<I", 0),
        "head_dim_wrong": patch(f, config_word("head_dim"), "<I", 8),
        "head_dim_0": patch(f, config_word("head_dim"), "<I", 0),
        "ext_attention_2": patch(ext, spec.OFF_EXT_ATTENTION, "<I", 2),
        "ext_position_2": patch(ext, spec.OFF_EXT_POSITION, "<I", 2),
        "ext_eps_0": patch(ext, spec.OFF_EXT_NORM_EPS, "<f", 0.0),
        "ext_eps_negative": patch(ext, spec.OFF_EXT_NORM_EPS, "<f", -1e-5),
        "ext_eps_nan": patch(ext, spec.OFF_EXT_NORM_EPS, "<I", 0x7FC00000),
        "ext_eps_inf": patch(ext, spec.OFF_EXT_NORM_EPS, "<f", float("inf")),
        "ext_eps_3.4e38": patch(ext, spec.OFF_EXT_NORM_EPS, "<f", 3.4e38),
        "ext_eps_just_below": patch(ext, spec.OFF_EXT_NORM_EPS, "<I",
                                    int(np.float32(3.4e38).view(np.uint32)) - 1),
        "ext_theta_0": patch(ext, spec.OFF_EXT_ROPE_THETA, "<f", 0.0),
        "ext_tokenizer_kind_3": patch(ext, spec.OFF_EXT_TOKENIZER, "<I", 3),
        "ext_tokenizer_kind_none": patch(ext, spec.OFF_EXT_TOKENIZER, "<I", 0),
        "ext_tokenizer_kind_bpe": patch(ext, spec.OFF_EXT_TOKENIZER, "<I", 2),
        "ext_rope_after_learned": patch(ext, spec.OFF_EXT_POSITION, "<I", 0),
        "f32_with_group": patch(f, spec.OFF_GROUP_SIZE, "<I", 4),
        "q8_group_0": patch(q, spec.OFF_GROUP_SIZE, "<I", 0),
        "q8_group_3": patch(q, spec.OFF_GROUP_SIZE, "<I", 3),
        "q8_group_32": patch(q, spec.OFF_GROUP_SIZE, "<I", 32),
        "q8_group_8": patch(q, spec.OFF_GROUP_SIZE, "<I", 8),
        "tok_section_short": f[:tok + 6],
        "tok_length_small": patch(f, tok, "<I", 4),
        "tok_length_past_file": patch(f, tok, "<I", len(f)),
        "tok_length_shorter": patch(f, tok, "<I", struct.unpack_from("<I", f, tok)[0] - 4),
        "tok_length_longer": patch(f, tok, "<I", struct.unpack_from("<I", f, tok)[0] + 4),
        "tok_vocab_count": patch(f, tok + 4, "<I", 47),
        "tok_len_0": patch(f, rec0, "<B", 0),
        "tok_len_255": patch(f, rec0, "<B", 255),
        "tok_special_2": patch(f, rec0 + 1, "<B", 2),
        "tok_reserved": patch(f, rec0 + 2, "<B", 0),
        "tok_id_wrong": patch(f, rec0 + 4, "<I", 1),
        "tok_surrogate": patch(f, rec0 + 8, "<I", 0xD800),
        "tok_codepoint_big": patch(f, rec0 + 8, "<I", 0x110000),
        "params_truncated_1": f[:-1],
        "params_truncated_many": f[:len(f) // 2],
        "params_trailing": f + b"\0",
        "params_trailing_many": f + bytes(1000),
        "size_exceeds_file": patch(f, config_word("vocab_size"), "<I", spec.MAX_VOCAB),
        "psycho_truncated": b["psycho"][:-16],
        "psycho_group_32": patch(b["psycho"], spec.OFF_GROUP_SIZE, "<I", 32),
        "psycho_q8_as_f32": patch(b["psycho"], spec.OFF_QUANT, "<I", 0),
        "sort6_as_q8": patch(sort6, spec.OFF_QUANT, "<I", 10),
        "bpe_length_bad": patch(b["qwen2"], tok, "<I", 4),
        "bpe_max_len_past_section": patch(b["qwen2"], tok + 4, "<I", 10 ** 6),
        "bpe_record_too_long": patch(b["qwen2"], tok + 8 + 4, "<I", 1000),
        "bpe_truncated": b["qwen2"][:-1],
        "qwen3_head_dim_0": patch(b["qwen3"], config_word("head_dim"), "<I", 0),
        "qwen2_head_dim_wrong": patch(b["qwen2"], config_word("head_dim"), "<I", 3),
        "qwen3_odd_head_dim": patch(b["qwen3"], config_word("head_dim"), "<I", 13),
    }
    # 64-bit overflow: Qwen3 stores its own head_dim, so H*D*E*L can exceed 2^64
    huge = b["qwen3"]
    for name, v in (("n_layer", spec.MAX_LAYERS), ("n_embd", spec.MAX_DIM), ("n_head", spec.MAX_HEADS),
                    ("n_kv_head", spec.MAX_HEADS), ("head_dim", spec.MAX_DIM), ("n_hidden", spec.MAX_DIM),
                    ("block_size", spec.MAX_DIM)):
        huge = patch(huge, config_word(name), "<I", v)
    c["overflow_64"] = patch(huge, spec.OFF_QUANT, "<I", 0)
    c["overflow_64"] = patch(c["overflow_64"], spec.OFF_GROUP_SIZE, "<I", 0)
    c.update(non_finite_files(b))
    return c


def test_corrupt_files_same_verdict(nano, bases):
    cases = corruptions(bases)
    seen = set()
    failures = []
    for name, data in cases.items():
        want = VERDICT[python_verdict(data)]
        got = nano.load_status(data)
        seen.add(want)
        if got != want:
            failures.append(f"{name}: C {got}, nano_format {want}")
    assert not failures, "\n".join(failures)
    # the table exercises every failure kind the reader has
    assert seen >= set(VERDICT.values()), set(VERDICT.values()) - seen


def test_non_finite_weights_are_refused_at_load(nano, bases, tmp_path):
    """As `nano-format validate` (and nano_train.convert.load_bin): a NaN or an infinity in an
    F32 tensor, or a Q8_0 scale that is not finite or makes q * scale overflow, is
    NANO_ERR_NON_FINITE from every loader (buffer, misaligned buffer, mmap, read, LoRA);
    before, such a file loaded and ran, giving NaN logits or garbage."""
    files = non_finite_files(bases)
    want = {name: VERDICT[python_verdict(data)] for name, data in files.items()}
    assert {k for k, v in want.items() if v == "NANO_OK"} == {
        "f32_flt_max_is_finite", "q8_scale_near_with_q_127_is_fine", "q8_scale_flt_max_over_128_is_fine",
        "q4k_opaque_nan_bits"}
    for name, data in files.items():
        assert nano.load_status(data) == want[name], name
        shifted = bytearray(len(data) + 1)  # float tensors no longer 4-byte aligned
        shifted[1:] = data
        assert nano.load_status(memoryview(shifted)[1:]) == want[name], name
        if want[name] != "NANO_OK":
            path = tmp_path / f"{name}.bin"
            path.write_bytes(data)
            for use_mmap in (True, False):
                with pytest.raises(Exception, match="NANO_ERR_NON_FINITE"):
                    nano.load(path, use_mmap=use_mmap)
    with pytest.raises(Exception, match="NANO_ERR_NON_FINITE"):
        nano.load_lora(files["lora_nan"])
    # the near misses load and run
    m = nano.load(files["q8_scale_near_with_q_127_is_fine"])
    assert m.context().eval([1, 2, 3]).shape == (m.info["vocab_size"],)


def test_lora_loader_refuses_models_and_model_files_refuse_nothing_valid(nano, bases):
    out = nano.ffi.new("nano_lora **")
    data = bases["f32_2026_1"]
    st = nano.lib.nano_lora_load_buffer(nano.ffi.from_buffer(data), len(data), nano.ffi.NULL, out)
    assert nano.status_name(st) == "NANO_ERR_UNKNOWN_MODEL_TYPE"
    lora = nano.load_lora(bases["lora"])
    info = nano.ffi.new("nano_model_info *")
    nano.check(nano.lib.nano_lora_get_info(lora.handle, info))
    assert (info.lora_rank, info.lora_alpha) == (2, 4)


def test_unrunnable_files_load_but_do_not_run(nano, bases):
    for name in ("qwen2", "qwen3", "lora", "q4k"):
        m = nano.load(bases[name])
        out = nano.ffi.new("nano_context **")
        st = nano.lib.nano_context_init(m.handle, nano.ffi.NULL, out)
        assert nano.status_name(st) == "NANO_ERR_UNSUPPORTED", name
    tok = nano.load(bases["qwen2"]).tokenizer
    assert tok.vocab_size == 5 and tok.token_text(2) == b"ccc"
    with pytest.raises(Exception, match="NANO_ERR_UNSUPPORTED"):
        tok.encode("abc")


# ---------------------------------------------------------------------------
# Random mutations


MUTATION_BASES = ("f32_2026_1", "q8_untied_g4", "ext_full_learned", "lora", "sort6", "qwen2")


@st.composite
def mutated(draw, bases):
    data = bytearray(bases[draw(st.sampled_from(MUTATION_BASES))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["byte_header", "byte_tok", "byte_any", "word", "truncate", "extend"]))
        if kind == "truncate" and len(data) > 1:
            del data[draw(st.integers(0, len(data) - 1)):]
        elif kind == "extend":
            data += bytes(draw(st.integers(1, 64)))
        elif kind == "word" and len(data) >= 0x48:
            off = draw(st.sampled_from(range(0x08, 0x48, 4)))
            val = draw(st.sampled_from([0, 1, 2, 3, 10, 0x42, 0x80, 0xFFFFFFFF, 1 << 20, 2025, 2026, 101, 36, 32]))
            struct.pack_into("<I", data, off, val)
        elif data:
            if kind == "byte_header":
                hi = min(len(data), 0x100)
            elif kind == "byte_tok":
                hi = min(len(data), 0x100 + 400)
            else:
                hi = len(data)
            pos = draw(st.integers(0, hi - 1))
            data[pos] = draw(st.integers(0, 255))
    return bytes(data)


@pytest.fixture(scope="module")
def bases_for_hypothesis(bases):
    return {k: bases[k] for k in MUTATION_BASES}


def test_mutations_same_verdict(nano, bases_for_hypothesis):
    @settings(max_examples=int(os.environ.get("NANO_MUTATIONS", "400")), deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(mutated(bases_for_hypothesis))
    def check(data):
        status, detail = nano.load_detail(data)
        assert status == VERDICT[python_verdict(data)]
        assert (detail == "") == (status == "NANO_OK"), (status, detail)  # every refusal explained

    check()


# ---------------------------------------------------------------------------
# Where: nano_model_params.error_detail


def test_a_refused_file_is_explained_in_one_line(nano, bases):
    """Every refusal in the corruption table and the non-finite files comes with
    error_detail: what is wrong and where; a file that loads leaves it "". """
    cases = {**corruptions(bases), **non_finite_files(bases)}
    for name, data in sorted(cases.items()):
        status, detail = nano.load_detail(data)
        print(f"{name:40s} {status:32s} {detail}")
        assert status == VERDICT[python_verdict(data)], name
        if status == "NANO_OK":
            assert detail == "", name
        else:
            assert detail and "#" not in detail and "\n" not in detail and len(detail) < 256, (name, detail)
    for name in ("f32_2026_1", "q8_2026_1", "psycho", "sort6", "qwen2"):
        assert nano.load_detail(bases[name]) == ("NANO_OK", ""), name


def test_the_explanation_names_the_field_the_byte_and_the_tensor(nano, bases):
    cases = {**corruptions(bases), **non_finite_files(bases)}
    want = {
        "version_2026_2": "header: layout version 2026.2 is not one this engine reads",
        "reserved_0x44_in_2026_1": "header: reserved byte 68 is 1, must be 0",
        "n_layer_huge": "config: n_layer is 1025, must be in [1, 1024]",
        "shared_2": "config: is_shared_classifier is 2, must be 0 or 1",
        "quant_0x10": "header: quantization code 16 at byte 60 is not one layout 2026.1 stores",
        "params_truncated_1": "the file ends at byte 23187, inside tensor rope_sin (from byte 23060)",
        "params_trailing": "1 byte follows the last tensor, which ends at byte 23188",
        "tok_len_0": "vocabulary, token 0 (byte 264): a token of 0 code points",
        "tok_surrogate": "vocabulary, token ",
        "q8_nan_scale": "layers.0.wq[0][0]: the Q8_0 scale of the 16 values from here",
        "q8_untied_nan_lm_head_scale": "lm_head[2][12]: the Q8_0 scale of the 4 values from here",
        "q8_scale_times_127_overflows": "layers.1.wk[3][0]: the Q8_0 scale of the 16 values from here (byte 3328) "
                                        "is 3e+38, so q * scale overflows a float",
    }
    for name, prefix in want.items():
        assert nano.load_detail(cases[name])[1].startswith(prefix), (name, nano.load_detail(cases[name]))
    # a NaN or an infinity in an F32 tensor: the element `nano-format validate` names
    for name, data in cases.items():
        if python_verdict(data) != "NonFiniteValue":
            continue
        with pytest.raises(nf.FormatError) as err:
            f = nf.read(data)
            f.check_scales()
            f.check_finite()
        m = re.search(r"tensor '([^']+)'.* index \[([\d, ]+)\]", str(err.value))
        element = m.group(1) + "".join(f"[{i.strip()}]" for i in m.group(2).split(","))
        detail = nano.load_detail(data)[1]
        assert detail.startswith(element + " (byte "), (name, detail, str(err.value))
    # LoRA loader given a model file
    assert nano.load_detail(bases["f32_2026_1"], lora=True) == ("NANO_ERR_UNKNOWN_MODEL_TYPE",
                                                                 "a model file, not a LoRA module")


def test_the_explanation_is_cut_to_the_callers_buffer(nano, bases):
    data = corruptions(bases)["params_truncated_1"]
    full = nano.load_detail(data)[1]
    assert len(full) > 20
    for size in (1, 2, 8, len(full), len(full) + 1):
        status, detail = nano.load_detail(data, size=size)
        assert status == "NANO_ERR_TRUNCATED" and detail == full[:size - 1], (size, detail)
    assert nano.load_detail(data, size=0) == ("NANO_ERR_TRUNCATED", "#")  # size 0: nothing written
    assert nano.load_detail(bases["sort6"], size=4) == ("NANO_OK", "")
