"""The reference exporter's own files load with the right config, vocabulary and tensors."""

import json
import struct

import numpy as np
import pytest

import nano_format as nf
from nano_format import spec
from nano_format.spec import Attention, ModelType, Position, QuantType, TokenizerKind


def test_psycho_header_and_config(psycho_path):
    with nf.read(psycho_path) as m:
        assert m.layout is spec.LAYOUT_2025_12
        assert m.version == (2025, 12)
        assert m.model_type == ModelType.NANO
        assert m.quant == QuantType.Q8_0 and m.quant_code == spec.LEGACY_Q8_0_2025  # code 10 normalised
        assert m.group_size == 16
        assert m.header["config_length"] == 32  # the 2025.12 quirk: 9 words stored anyway
        c = m.config
        assert (c.block_size, c.vocab_size, c.n_layer, c.n_embd) == (512, 4096, 8, 32)
        assert (c.n_head, c.n_kv_head, c.n_hidden, c.head_dim) == (4, 2, 96, 8)
        assert c.tie_embeddings is True
        # What the reference layout cannot say, read as the reference engine assumes it.
        assert c.attention == Attention.CAUSAL and c.position == Position.ROPE
        assert c.norm_eps == 1e-5 and c.rope_theta == 10000.0
        assert m.tokenizer_kind == TokenizerKind.TRIE
        assert m.file_size == 355268


def test_sort6_header_and_config(sort6_path):
    with nf.read(sort6_path) as m:
        assert m.layout.name == "2025.12" and m.quant == QuantType.F32 and m.group_size == 0
        c = m.config
        assert (c.block_size, c.vocab_size, c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.n_hidden) == \
            (6, 80, 2, 32, 4, 2, 16)
        assert c.head_dim == 8 and c.tie_embeddings


def test_psycho_vocabulary_matches_json(psycho_path, shared_dir):
    itos = json.loads((shared_dir / "data/tokenizer_4096.json").read_text(encoding="utf-8"))["itos"]
    with nf.read(psycho_path) as m:
        tokens = m.tokens
    assert len(tokens) == 4096
    assert [t.id for t in tokens] == list(range(4096))
    assert [t.text for t in tokens] == itos
    assert [t.id for t in tokens if t.is_special] == list(range(12))


def test_sort6_vocabulary_matches_json(sort6_path, shared_dir):
    d = json.loads((shared_dir / "data/nano_80.json").read_text(encoding="utf-8"))
    with nf.read(sort6_path) as m:
        tokens = m.tokens
    assert [t.text for t in tokens] == d["itos"]
    assert {t.text: t.id for t in tokens if t.is_special} == d["special_tokens"]


@pytest.mark.parametrize("which", ["psycho", "sort6"])
def test_tensor_table_accounts_for_every_byte(which, psycho_path, sort6_path):
    with nf.read(psycho_path if which == "psycho" else sort6_path) as m:
        table = m.tensors
        assert spec.HEADER_SIZE + m.tokenizer_nbytes + sum(t.nbytes for t in table) == m.file_size
        offset = m.params_offset
        for t in table:  # contiguous, in file order, no gaps
            assert t.offset == offset
            offset += t.nbytes
        assert offset == m.file_size


def test_psycho_table_is_per_layer(psycho_path):
    with nf.read(psycho_path) as m:
        names = [t.name for t in m.tensors]
        assert names[:4] == ["norm_attn", "norm_ffn", "norm_final", "tok_embd"]
        assert names[4:12] == [f"wq.{i}" for i in range(8)]
        assert names[-2:] == ["rope_cos", "rope_sin"]
        wq3 = m.tensors[names.index("wq.3")]
        assert wq3.dtype == "q8_0" and wq3.shape == (32, 32) and wq3.nbytes == 32 * 32 + 32 * 32 // 16 * 4
        assert m.tensors[0].dtype == "f32"


def test_logical_shapes(psycho_path):
    with nf.read(psycho_path) as m:
        shapes = {n: m.tensor(n).shape for n in m.tensor_names()}
    assert shapes == {
        "norm_attn": (8, 32), "norm_ffn": (8, 32), "norm_final": (32,), "tok_embd": (4096, 32),
        "wq": (8, 32, 32), "wk": (8, 16, 32), "wv": (8, 16, 32), "wo": (8, 32, 32),
        "w1": (8, 96, 32), "w2": (8, 32, 96), "w3": (8, 96, 32), "rope_cos": (512, 4), "rope_sin": (512, 4),
    }


def test_tied_classifier_is_absent(psycho_path):
    with nf.read(psycho_path) as m:
        with pytest.raises(KeyError, match="tied"):
            m.tensor("lm_head")
        with pytest.raises(KeyError, match="no tensor"):
            m.tensor("nonsense")


def test_f32_tensors_are_read_only_zero_copy_views(sort6_path, sort6_bytes):
    with nf.read(sort6_path) as m:
        wq = m.tensor("wq")
        info = next(t for t in m.tensors if t.name == "wq")
        assert not wq.flags.writeable and not wq.flags.owndata
        expected = np.frombuffer(sort6_bytes, "<f4", info.nbytes // 4, info.offset).reshape(2, 32, 32)
        assert np.array_equal(wq, expected)
        assert np.array_equal(m.tensor("wq.1"), expected[1])
    assert wq.sum() == expected.sum()  # still valid after close()


def test_q8_0_dequantization_matches_raw_bytes(psycho_path, psycho_bytes):
    with nf.read(psycho_path) as m:
        info = next(t for t in m.tensors if t.name == "w2.5")
        rows, cols = info.shape
        q = np.frombuffer(psycho_bytes, np.int8, rows * cols, info.offset).reshape(rows, cols)
        s = np.frombuffer(psycho_bytes, "<f4", rows * cols // 16, info.offset + rows * cols).reshape(rows, -1)
        qt = m.quantized("w2.5")
        assert np.array_equal(qt.q, q) and np.array_equal(qt.scales, s)
        manual = (q.astype(np.float32).reshape(rows, -1, 16) * s[..., None]).reshape(rows, cols)
        assert np.array_equal(m.tensor("w2.5"), manual)
        assert np.array_equal(m.tensor("w2")[5], manual)
        whole = m.quantized("w2")
        assert whole.q.shape == (8, 32, 96) and whole.scales.shape == (8, 32, 6)
        assert np.array_equal(whole.q[5], q) and not whole.q.flags.writeable
        with pytest.raises(ValueError, match="not quantized"):
            m.quantized("norm_attn")


def test_every_group_reaches_127(psycho_path):
    """The reference exporter used the same rule: each group's largest |q| is 127."""
    with nf.read(psycho_path) as m:
        qt = m.quantized("tok_embd")
        groups = np.abs(qt.q.astype(np.int16)).reshape(-1, 16).max(axis=1)
        assert (groups == 127).all()


def test_requantizing_psycho_reproduces_its_bytes(psycho_path, psycho_bytes):
    """Dequantize then quantize with our rule (group 16): the exporter's bytes come back."""
    with nf.read(psycho_path) as m:
        floats = {n: m.tensor(n) for n in m.tensor_names()}
        data = nf.to_bytes(m.config, floats, m.tokens, quant="q8_0", group_size=16)
    assert data[spec.HEADER_SIZE:] == psycho_bytes[spec.HEADER_SIZE:]


def test_buffer_inputs_read_like_paths(sort6_path, sort6_bytes):
    with nf.read(sort6_path) as a:
        for source in (sort6_bytes, bytearray(sort6_bytes), memoryview(sort6_bytes)):
            b = nf.read(source, name="sort6")
            assert b.config == a.config and b.tokens == a.tokens
            assert np.array_equal(b.tensor("tok_embd"), a.tensor("tok_embd"))
            assert not b.tensor("tok_embd").flags.writeable
    assert nf.load is nf.read


def test_rope_tables_close_to_reference(sort6_path, psycho_path):
    for path in (sort6_path, psycho_path):
        with nf.read(path) as m:
            c = m.config
            cos, sin = nf.rope_tables(c.block_size, c.head_dim, c.rope_theta)
            assert cos.dtype == np.float32 and cos.shape == (c.block_size, c.head_dim // 2)
            # The reference computed its angles in float32, which drifts a little at large positions.
            assert np.abs(cos - m.tensor("rope_cos")).max() <= 1e-5
            assert np.abs(sin - m.tensor("rope_sin")).max() <= 1e-5
            assert np.abs(cos[:6] - m.tensor("rope_cos")[:6]).max() <= 6e-8  # an ulp near 1


@pytest.mark.parametrize("layout", ["2026.1", "2026.101"])
@pytest.mark.parametrize("which", ["psycho", "sort6"])
def test_fixture_converted_reads_back_the_same(which, layout, psycho_path, sort6_path):
    src = nf.read(psycho_path if which == "psycho" else sort6_path)
    data = nf.to_bytes(src.config, src.weights(), src.tokens, quant=src.quant, layout=layout)
    out = nf.read(data)
    assert out.layout.name == layout
    assert out.config == src.config
    assert out.tokens == src.tokens
    assert out.quant == src.quant and out.group_size == src.group_size
    assert out.tensor_names() == src.tensor_names()
    for name in src.tensor_names():
        assert np.array_equal(out.tensor(name), src.tensor(name)), name
    major, minor, _, config_len = struct.unpack_from("<iiII", data, 8)
    assert (major, minor) == out.version and config_len == 36
    if src.quant == QuantType.Q8_0:
        assert struct.unpack_from("<I", data, spec.OFF_QUANT)[0] == 0x80  # not the legacy 10
    # Only the header changes: the tokenizer section and parameters are byte-identical.
    assert data[spec.HEADER_SIZE:] == (psycho_path if which == "psycho" else sort6_path).read_bytes()[256:]


def test_sort6_records_full_attention_in_2026_101(sort6_path):
    import dataclasses

    src = nf.read(sort6_path)
    config = dataclasses.replace(src.config, attention=Attention.FULL)
    with pytest.raises(nf.WriteError, match="2026.101"):
        nf.to_bytes(config, src.weights(), src.tokens)  # 2026.1 cannot say "full"
    out = nf.read(nf.to_bytes(config, src.weights(), src.tokens, layout="2026.101"))
    assert out.config.attention == Attention.FULL
