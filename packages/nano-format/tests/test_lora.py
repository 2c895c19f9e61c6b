"""LoRA modules: layout 2024.10, 8 config words, F32 only, no tokenizer section."""

import struct

import numpy as np
import pytest

import nano_format as nf
from nano_format import spec
from nano_format.spec import ModelType, TokenizerKind


@pytest.fixture
def lora(build):
    config = nf.LoraConfig(rank=4, alpha=8, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, n_hidden=48)
    return config, build.random_tensors(config, seed=3)


def test_lora_round_trip(lora, tmp_path):
    config, tensors = lora
    path = tmp_path / "lora.bin"
    size = nf.write_lora(path, config, tensors)
    data = path.read_bytes()
    assert size == len(data) == 256 + 4 * sum(a.size for a in tensors.values())
    with nf.read(path) as m:
        assert m.layout is spec.LAYOUT_2024_10 and m.model_type == ModelType.LORA
        assert m.config == config and m.config.scale == 2.0 and m.config.head_dim == 8
        assert m.tokens is None and m.tokenizer_kind == TokenizerKind.NONE
        assert m.tensor_names() == list(spec.LORA_TENSORS)
        assert m.tensor("wq_A").shape == (2, 4, 32) and m.tensor("wk_B").shape == (2, 16, 4)
        assert m.tensor("wo_A").shape == (2, 4, 32) and m.tensor("wo_B").shape == (2, 32, 4)
        for name, arr in tensors.items():
            assert np.array_equal(m.tensor(name), arr)
        assert nf.to_bytes(m.config, m.weights()) == data  # read -> write is identical
    words = struct.unpack_from("<iiII8I", data, 8)
    assert words[:4] == (2024, 10, 10, 32)
    assert words[4:] == (4, 8, 2, 32, 4, 2, 48, 0)


def test_lora_errors(lora, build):
    config, tensors = lora
    data = nf.to_bytes(config, tensors)
    bad = bytearray(data)
    struct.pack_into("<I", bad, 0x34, 1)  # the reserved config word
    with pytest.raises(nf.BadConfig, match="reserved"):
        nf.read(bytes(bad))
    bad = bytearray(data)
    struct.pack_into("<I", bad, 0x38, 1)  # the unused ninth word
    with pytest.raises(nf.BadHeader, match="reserved byte"):
        nf.read(bytes(bad))
    bad = bytearray(data)
    struct.pack_into("<I", bad, 0x3C, 0x80)
    with pytest.raises(nf.UnknownQuantType, match="2024.10"):
        nf.read(bytes(bad))
    bad = bytearray(data)
    struct.pack_into("<I", bad, 0x10, 0)  # a Nano model in a LoRA layout
    with pytest.raises(nf.UnknownModelType, match="2024.10"):
        nf.read(bytes(bad))
    with pytest.raises(nf.WriteError, match=r"'wv_B' has shape"):
        nf.to_bytes(config, dict(tensors, wv_B=np.zeros((2, 32, 4), np.float32)))
    with pytest.raises(nf.WriteError, match="F32 only"):
        nf.to_bytes(config, tensors, quant="q8_0")
    with pytest.raises(nf.WriteError, match="2024.10"):
        nf.to_bytes(config, tensors, layout="2026.1")
    with pytest.raises(nf.WriteError, match="LoraConfig"):
        nf.write_lora("unused.bin", build.small_config(), {})
    with pytest.raises(nf.BadConfig, match="n_head"):
        nf.LoraConfig(rank=4, alpha=8, n_layer=2, n_embd=30, n_head=4, n_hidden=8)
