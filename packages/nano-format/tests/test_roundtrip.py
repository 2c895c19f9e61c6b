"""The writer: every layout and quantization round-trips, byte for byte."""

import dataclasses
import os
import struct

import numpy as np
import pytest

import nano_format as nf
from nano_format import spec
from nano_format.spec import Attention, Position, QuantType, TokenizerKind

CASES = [
    # (name, config changes, quant, layout)
    ("mha-tied-f32-2026.1", dict(n_kv_head=4), "f32", "2026.1"),
    ("gqa-untied-f32-2026.1", dict(tie_embeddings=False), "f32", "2026.1"),
    ("gqa-tied-q8-2026.1", dict(), "q8_0", "2026.1"),
    ("gqa-untied-q8-2026.1", dict(tie_embeddings=False), "q8_0", "2026.1"),
    ("full-attention-f32-2026.101", dict(attention=Attention.FULL), "f32", "2026.101"),
    ("learned-pos-q8-2026.101", dict(position=Position.LEARNED, tie_embeddings=False), "q8_0", "2026.101"),
    ("eps-theta-q8-2026.101", dict(norm_eps=1e-6, rope_theta=500000.0), "q8_0", "2026.101"),
    ("odd-widths-q8", dict(n_embd=24, n_head=2, n_kv_head=1, n_hidden=40), "q8_0", "2026.1"),
]


@pytest.mark.parametrize("name, changes, quant, layout", CASES, ids=[c[0] for c in CASES])
def test_write_read_write_is_identical(name, changes, quant, layout, build, tmp_path):
    config = build.small_config(**changes)
    tensors = build.random_tensors(config, seed=len(name))
    tokens = build.make_tokens(config.vocab_size)
    path = tmp_path / "model.bin"
    size = nf.write(path, config, tensors, tokens, quant=quant, layout=layout)
    data = path.read_bytes()
    assert size == len(data)
    assert data == nf.to_bytes(config, tensors, tokens, quant=quant, layout=layout)

    with nf.read(path) as m:
        assert m.layout.name == layout and m.config == config and m.tokens == tokens
        assert m.quant == QuantType(0x80 if quant == "q8_0" else 0)
        assert spec.HEADER_SIZE + m.tokenizer_nbytes + sum(t.nbytes for t in m.tensors) == len(data)
        for n, arr in tensors.items():
            if quant == "q8_0" and n in spec.QUANTIZED_TENSORS:
                expected = nf.quantize_q8_0(arr, m.group_size)
                got = m.quantized(n)
                assert np.array_equal(got.q, expected.q) and np.array_equal(got.scales, expected.scales)
                assert np.array_equal(m.tensor(n), expected.dequantize())
            else:
                assert np.array_equal(m.tensor(n), arr), n
        # read -> write gives the same bytes
        again = nf.to_bytes(m.config, m.weights(), m.tokens, quant=m.quant, group_size=m.group_size,
                            layout=m.layout)
        assert again == data
        # and without naming the group size: it comes from the QuantizedTensor values
        assert nf.to_bytes(m.config, m.weights(), m.tokens, quant=m.quant, layout=m.layout) == data


def test_rope_tables_computed_when_absent(build):
    config = build.small_config(rope_theta=123.0)
    tensors = build.random_tensors(config, with_rope=False)
    m = nf.read(nf.to_bytes(config, tensors, build.make_tokens(config.vocab_size), layout="2026.101"))
    cos, sin = nf.rope_tables(config.block_size, config.head_dim, 123.0)
    assert np.array_equal(m.tensor("rope_cos"), cos) and np.array_equal(m.tensor("rope_sin"), sin)


def test_rope_tables_formula():
    cos, sin = nf.rope_tables(5, 6, 10000.0)
    t = np.arange(5)[:, None]
    freq = 10000.0 ** (-(2 * np.arange(3)) / 6)
    assert np.array_equal(cos, np.cos(t * freq).astype(np.float32))
    assert np.array_equal(sin, np.sin(t * freq).astype(np.float32))
    with pytest.raises(ValueError):
        nf.rope_tables(4, 5)


def test_group_size_is_settled_before_the_header_is_written(build):
    """Reference defect 5: the header's group size is the one the scales use."""
    config = build.small_config(n_embd=40, n_head=4, n_kv_head=2, n_hidden=100)  # gcd(40, 40, 100) = 20
    data = nf.to_bytes(config, build.random_tensors(config), build.make_tokens(config.vocab_size), quant="q8_0")
    assert struct.unpack_from("<I", data, spec.OFF_GROUP_SIZE)[0] == 20
    m = nf.read(data)
    assert m.group_size == 20 and m.quantized("tok_embd").scales.shape == (config.vocab_size, 2)


def test_no_vocabulary_only_in_2026_101(build):
    config = build.small_config()
    tensors = build.random_tensors(config)
    with pytest.raises(nf.WriteError, match="2026.101"):
        nf.to_bytes(config, tensors, None)
    m = nf.read(nf.to_bytes(config, tensors, None, layout="2026.101"))
    assert m.tokenizer_kind == TokenizerKind.NONE and m.tokens is None and m.tokenizer_nbytes == 0


def test_atomic_write_leaves_nothing_behind_on_error(build, tmp_path):
    config = build.small_config()
    tensors = build.random_tensors(config)
    tokens = build.make_tokens(config.vocab_size)
    path = tmp_path / "model.bin"
    nf.write(path, config, tensors, tokens)
    before = path.read_bytes()
    bad = dict(tensors, wq=tensors["wq"][:, :-1])
    with pytest.raises(nf.WriteError, match="'wq' has shape"):
        nf.write(path, config, bad, tokens)
    assert path.read_bytes() == before  # the old file is untouched
    assert os.listdir(tmp_path) == ["model.bin"]  # no temporary file left
    mode = path.stat().st_mode & 0o777
    assert mode & 0o600 == 0o600  # a normal file, readable by its owner (umask decides the rest)


def _writer_error(build, match, error=nf.WriteError, **kwargs):
    config = kwargs.pop("config", build.small_config())
    tensors = kwargs.pop("tensors", build.random_tensors(config))
    tokens = kwargs.pop("tokens", build.make_tokens(config.vocab_size))
    with pytest.raises(error, match=match):
        nf.to_bytes(config, tensors, tokens, **kwargs)


def test_writer_refuses_what_the_layout_cannot_say(build):
    _writer_error(build, "cannot record full attention.*2026.101",
                  config=build.small_config(attention=Attention.FULL))
    config = build.small_config(position=Position.LEARNED)
    _writer_error(build, "cannot record learned.*2026.101", config=config, tensors=build.random_tensors(config))
    _writer_error(build, "norm_eps.*2026.101", config=build.small_config(norm_eps=1e-6))
    _writer_error(build, "rope_theta.*2026.101", config=build.small_config(rope_theta=5e5))
    _writer_error(build, "read only", layout="2025.12")
    _writer_error(build, "unknown layout", layout="2027.1")
    _writer_error(build, "LoRA modules only", layout="2024.10")
    _writer_error(build, "Q4K", quant="q4k")


def test_writer_names_the_wrong_tensor(build):
    config = build.small_config()
    tensors = build.random_tensors(config)
    _writer_error(build, r"'w2' has shape \(2, 48, 32\), expected \[L, E, F\] = \(2, 32, 48\)",
                  tensors=dict(tensors, w2=np.zeros((2, 48, 32), np.float32)))
    missing = dict(tensors)
    del missing["w3"]
    _writer_error(build, "missing tensor 'w3'", tensors=missing)
    _writer_error(build, "unexpected tensor 'lm_head': the classifier is tied",
                  tensors=dict(tensors, lm_head=tensors["tok_embd"]))
    _writer_error(build, "unexpected tensor 'pos_embd'", tensors=dict(tensors, pos_embd=np.zeros((16, 32))))
    _writer_error(build, "dtype", tensors=dict(tensors, wq=np.zeros((2, 32, 32), dtype=object)))
    _writer_error(build, "always stored as f32",
                  tensors=dict(tensors, norm_attn=nf.quantize_q8_0(tensors["norm_attn"], 8)), quant="q8_0")


def test_writer_checks_group_size_and_tokens(build):
    _writer_error(build, "does not divide n_hidden", nf.BadGroupSize, quant="q8_0", group_size=32,
                  config=build.small_config(n_hidden=48))
    _writer_error(build, "makes no sense", group_size=16)
    config = build.small_config()
    tensors = build.random_tensors(config)
    tensors["wq"] = nf.quantize_q8_0(tensors["wq"], 16)
    _writer_error(build, "group size 16 but the file uses 8", tensors=tensors, quant="q8_0", group_size=8)
    _writer_error(build, "has 3 tokens", tokens=build.make_tokens(3))
    bad = build.make_tokens(config.vocab_size)
    bad[5] = nf.TokenEntry(id=6, text="x")
    _writer_error(build, "ids must run", nf.BadTokenRecord, tokens=bad)
    _writer_error(build, "TokenEntry.*BpeToken", tokens=bad[:-1] + [nf.BpeToken(0.0, b"x")])


def test_quantized_input_to_f32_file_is_dequantized(build):
    config = build.small_config()
    tensors = build.random_tensors(config)
    qt = nf.quantize_q8_0(tensors["wq"], 8)
    m = nf.read(nf.to_bytes(config, dict(tensors, wq=qt), build.make_tokens(config.vocab_size)))
    assert np.array_equal(m.tensor("wq"), qt.dequantize())


def test_float64_and_list_inputs_are_accepted(build):
    config = build.small_config()
    tensors = {k: v.astype(np.float64) for k, v in build.random_tensors(config).items()}
    tensors["norm_final"] = tensors["norm_final"].tolist()
    m = nf.read(nf.to_bytes(config, tensors, build.make_tokens(config.vocab_size)))
    assert np.array_equal(m.tensor("wq"), tensors["wq"].astype(np.float32))


def test_config_validation():
    base = dict(block_size=8, vocab_size=10, n_layer=1, n_embd=32, n_hidden=8)
    with pytest.raises(nf.BadConfig, match="n_head.*does not divide n_embd"):
        nf.Config(n_head=3, **base)
    with pytest.raises(nf.BadConfig, match="n_kv_head.*does not divide n_head"):
        nf.Config(n_head=4, n_kv_head=3, **base)
    with pytest.raises(nf.BadConfig, match="head_dim.*inconsistent"):
        nf.Config(n_head=4, head_dim=16, **base)
    with pytest.raises(nf.BadConfig, match="out of range"):
        nf.Config(**dict(base, n_layer=0), n_head=4)
    with pytest.raises(nf.BadConfig, match="norm_eps"):
        nf.Config(n_head=4, norm_eps=1e-60, **base)  # underflows to 0 as a float32
    c = nf.Config(n_head=4, **base)
    assert (c.n_kv_head, c.head_dim, c.rope_theta, c.tie_embeddings) == (4, 8, 10000.0, True)
    q3 = nf.Config(model_type=spec.ModelType.QWEN3, n_head=4, head_dim=16, **base)
    assert q3.q_dim == 64 and q3.rope_theta == 1e6
    with pytest.raises(nf.BadConfig, match="inconsistent"):
        dataclasses.replace(c, n_head=2, n_kv_head=2)  # replace() keeps head_dim 8, but 32 / 2 is 16
