"""Qwen2/Qwen3 files, made by hand with struct: header, BPE vocabulary, extra tensors."""

import struct

import numpy as np
import pytest

import nano_format as nf
from nano_format import spec
from nano_format.spec import ModelType, QuantType, TokenizerKind


@pytest.mark.parametrize("quant", [QuantType.F32, QuantType.Q8_0])
@pytest.mark.parametrize("model_type, tied", [(ModelType.QWEN2, False), (ModelType.QWEN3, True),
                                              (ModelType.QWEN2, True), (ModelType.QWEN3, False)])
def test_qwen_files_parse(model_type, tied, quant, build):
    f = build.qwen_file(model_type, quant, tied=tied)
    m = nf.read(f.data)
    assert m.layout.name == "2026.1" and m.model_type == model_type and m.quant == quant
    assert m.config == f.config
    assert m.config.rope_theta == (1e6 if model_type == ModelType.QWEN3 else 1e4)
    assert m.tokenizer_kind == TokenizerKind.BPE and m.tokenizer_nbytes == f.section_len
    assert m.tokens == f.tokens and m.max_token_length == f.max_token_length
    assert m.tensor_names() == list(f.arrays)
    assert spec.HEADER_SIZE + m.tokenizer_nbytes + sum(t.nbytes for t in m.tensors) == len(f.data)
    for name, arr in f.arrays.items():
        if name in f.quantized:
            q, s = f.quantized[name]
            qt = m.quantized(name)
            assert np.array_equal(qt.q, q) and np.array_equal(qt.scales, s)
            G = f.group_size
            manual = (q.astype(np.float32).reshape(*q.shape[:-1], -1, G) * s[..., None]).reshape(q.shape)
            assert np.array_equal(m.tensor(name), manual)
        else:  # norms, biases, Qwen3 q/k norms and RoPE tables are F32 in every file
            assert np.array_equal(m.tensor(name), arr), name
    # The writer produces the same bytes as the hand-made file.
    again = nf.to_bytes(m.config, m.weights(), m.tokens, quant=m.quant)
    assert again == f.data


def test_qwen3_head_dim_is_stored(build):
    m = nf.read(build.qwen_file(ModelType.QWEN3).data)
    c = m.config
    assert c.head_dim == 8 and c.n_embd // c.n_head == 4
    assert m.tensor("wq").shape == (2, 32, 16) and m.tensor("wo").shape == (2, 16, 32)
    assert m.tensor("q_norm").shape == (2, 8) and m.tensor("rope_cos").shape == (8, 4)


def test_qwen2_biases(build):
    m = nf.read(build.qwen_file(ModelType.QWEN2).data)
    assert [m.tensor(n).shape for n in ("bq", "bk", "bv")] == [(2, 16), (2, 8), (2, 8)]


def test_qwen2_head_dim_must_match(build):
    data = bytearray(build.qwen_file(ModelType.QWEN2).data)
    struct.pack_into("<I", data, 0x38, 8)
    with pytest.raises(nf.BadConfig, match="inconsistent"):
        nf.read(bytes(data))


def test_bad_bpe_records(build):
    f = build.qwen_file(ModelType.QWEN2)
    data = bytearray(f.data)
    struct.pack_into("<I", data, 0x104, 1)  # max token length shorter than the tokens
    with pytest.raises(nf.BadTokenRecord, match="more than the section's max token length 1"):
        nf.read(bytes(data))
    data = bytearray(f.data)
    struct.pack_into("<I", data, 0x104, 1 << 30)
    with pytest.raises(nf.BadTokenRecord, match="larger than the whole section"):
        nf.read(bytes(data))
    data = bytearray(f.data)
    struct.pack_into("<I", data, 0x100, f.section_len - 1)  # the last record runs past the section
    with pytest.raises(nf.BadTokenRecord, match="run past the section end"):
        nf.read(bytes(data))
    data = bytearray(f.data)
    struct.pack_into("<I", data, 0x10C, 1 << 20)  # token 0's byte length
    with pytest.raises(nf.BadTokenRecord, match="token 0"):
        nf.read(bytes(data))


def test_qwen_only_in_2026_1(build):
    data = bytearray(build.qwen_file(ModelType.QWEN3).data)
    struct.pack_into("<ii", data, 8, 2026, 101)
    with pytest.raises(nf.UnknownModelType, match="2026.101"):
        nf.read(bytes(data))


def test_bpe_section_helpers():
    tokens = [nf.BpeToken(1.5, b"ab"), nf.BpeToken(-2.0, b""), nf.BpeToken(0.0, "\u4e2d".encode())]
    section = nf.encode_bpe_section(tokens)
    assert struct.unpack_from("<II", section) == (len(section), 3)
    assert nf.decode_bpe_section(section, 3) == (tokens, 3)
    with pytest.raises(nf.BadTokenRecord, match="shorter than the longest"):
        nf.encode_bpe_section(tokens, max_token_length=2)
