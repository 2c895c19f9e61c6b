"""The spec module is self-consistent (the C header is checked against it elsewhere)."""

import struct

import nano_format as nf
from nano_format import spec
from nano_format.spec import QuantType


def test_magic_and_offsets():
    assert struct.pack("<II", spec.MAGIC0, spec.MAGIC1) == spec.MAGIC_BYTES
    assert spec.OFF_CONFIG + 4 * spec.CONFIG_WORDS == spec.OFF_QUANT
    assert spec.OFF_QUANT + 4 == spec.OFF_GROUP_SIZE and spec.OFF_GROUP_SIZE + 4 == spec.OFF_EXT_ATTENTION
    assert spec.OFF_EXT_TOKENIZER + 4 == spec.EXT_END <= spec.HEADER_SIZE
    assert spec.config_offset("n_head") == 0x28 and spec.config_offset("reserved") == 0x34


def test_version_table():
    assert [la.name for la in spec.LAYOUTS] == ["2024.10", "2025.12", "2026.1", "2026.101"]
    assert spec.DEFAULT_LAYOUT.name == "2026.1" and spec.DEFAULT_LAYOUT.config_len == 36
    assert spec.LAYOUT_NANO_EXT_1.extension and spec.LAYOUT_NANO_EXT_1.writer == "nano"
    assert spec.LAYOUT_2025_12.writer == "reference"
    for layout in spec.LAYOUTS:
        assert spec.LAYOUTS_BY_VERSION[layout.version] is layout is spec.LAYOUTS_BY_NAME[layout.name]
        assert layout.name in spec.QUANT_CODES


def test_quant_codes():
    assert spec.quant_from_code(spec.LAYOUT_2025_12, 10) == QuantType.Q8_0
    assert spec.quant_from_code(spec.LAYOUT_2026_1, 10) is None
    assert spec.quant_code(spec.LAYOUT_2026_1, QuantType.Q8_0) == 0x80
    assert spec.quant_code(spec.LAYOUT_NANO_EXT_1, QuantType.Q4K) is None
    assert spec.quant_code(spec.LAYOUT_2024_10, QuantType.F32) == 0


def test_param_order_and_names():
    assert spec.PARAM_ORDER[:4] == ("norm_attn", "norm_ffn", "norm_final", "tok_embd")
    assert spec.PARAM_ORDER[-1] == "lm_head"
    assert spec.LORA_TENSORS == ("wq_A", "wq_B", "wk_A", "wk_B", "wv_A", "wv_B", "wo_A", "wo_B")
    from nano_format.plan import model_params

    config = nf.Config(block_size=4, vocab_size=8, n_layer=1, n_embd=8, n_head=2, n_hidden=8, tie_embeddings=False)
    names = [p.name for p in model_params(config)]
    assert names == [n for n in spec.PARAM_ORDER if n in names]  # the plan follows the spec's order


def test_public_api():
    assert nf.__version__ == "0.1.0"
    for name in nf.__all__:
        assert hasattr(nf, name), name
    for error in (nf.BadMagic, nf.UnsupportedVersion, nf.UnknownModelType, nf.UnknownQuantType, nf.BadHeader,
                  nf.BadConfig, nf.BadGroupSize, nf.Truncated, nf.BadTokenRecord, nf.TrailingBytes,
                  nf.SizeOverflow, nf.UnsupportedQuant, nf.WriteError):
        assert issubclass(error, nf.FormatError)
