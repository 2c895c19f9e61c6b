"""nano.h's format constants against nano_format.spec, the one source of truth.

The header's #defines and enum values are parsed from the file (not through the
compiler) and compared name by name with the Python spec module.
"""

import re

import pytest
from nano_format import spec


@pytest.fixture(scope="module")
def header(h):
    return (h.CORE / "include" / "nano.h").read_text()


@pytest.fixture(scope="module")
def defines(header):
    out = {}
    for name, value in re.findall(r"^#define (NANO_\w+) (.+?)\s*(?:/\*.*)?$", header, re.M):
        value = value.strip()
        if value.startswith('"'):
            out[name] = value.strip('"')
            continue
        expr = re.sub(r"(?<=[0-9a-fA-Fx])[uU]\b", "", value)
        expr = re.sub(r"(?<=\d)f\b", "", expr)
        try:
            out[name] = eval(expr, {})  # numbers and shifts only
        except Exception:
            pass
    return out


@pytest.fixture(scope="module")
def enums(header):
    out = {}
    for body in re.findall(r"typedef enum \w+ \{(.*?)\}", header, re.S):
        for name, value in re.findall(r"(NANO_\w+)\s*=\s*(0x[0-9A-Fa-f]+|\d+)", body):
            out[name] = int(value, 0)
    return out


SCALARS = [
    "MAGIC0", "MAGIC1", "HEADER_SIZE", "OFF_MAGIC0", "OFF_MAGIC1", "OFF_MAJOR", "OFF_MINOR", "OFF_MODEL_TYPE",
    "OFF_CONFIG_LEN", "OFF_CONFIG", "OFF_QUANT", "OFF_GROUP_SIZE", "OFF_EXT_ATTENTION", "OFF_EXT_POSITION",
    "OFF_EXT_NORM_EPS", "OFF_EXT_ROPE_THETA", "OFF_EXT_TOKENIZER", "EXT_END", "CONFIG_WORDS",
    "TOKEN_RECORD_HEADER", "TOKEN_RESERVED_BYTE", "TOKEN_MAX_CODEPOINTS", "TOKENIZER_SECTION_HEADER",
    "BPE_RECORD_HEADER", "DEFAULT_NORM_EPS", "DEFAULT_ROPE_THETA", "QWEN3_ROPE_THETA", "Q8_MAX",
    "DEFAULT_GROUP_SIZE", "LEGACY_Q8_0_2025", "MAX_DIM", "MAX_VOCAB", "MAX_LAYERS", "MAX_HEADS",
]


@pytest.mark.parametrize("name", SCALARS)
def test_scalar_constants(defines, name):
    assert f"NANO_{name}" in defines, f"nano.h lacks NANO_{name}"
    assert defines[f"NANO_{name}"] == pytest.approx(getattr(spec, name), rel=1e-7), name


def test_magic_bytes(defines):
    assert defines["NANO_MAGIC_BYTES"].encode() == spec.MAGIC_BYTES


def test_config_word_order(enums, defines):
    for i, field in enumerate(spec.CONFIG_FIELDS):
        assert enums[f"NANO_CONFIG_{field.upper()}"] == i
    for i, field in enumerate(spec.LORA_CONFIG_FIELDS):
        assert enums[f"NANO_LORA_CONFIG_{field.upper()}"] == i
    assert defines["NANO_LORA_CONFIG_WORDS"] == len(spec.LORA_CONFIG_FIELDS)


@pytest.mark.parametrize("enum_type,prefix", [
    (spec.ModelType, "NANO_MODEL_TYPE_"), (spec.QuantType, "NANO_QUANT_TYPE_"),
    (spec.Attention, "NANO_ATTENTION_"), (spec.Position, "NANO_POSITION_"),
    (spec.TokenizerKind, "NANO_TOKENIZER_KIND_"),
])
def test_enums(enums, enum_type, prefix):
    c_names = {k[len(prefix):]: v for k, v in enums.items() if k.startswith(prefix)
               and not k.startswith("NANO_ATTENTION_MODE_")}
    assert c_names == {m.name: m.value for m in enum_type}


def test_layouts(defines):
    for layout in spec.LAYOUTS:
        key = "NANO_EXT_1" if layout is spec.LAYOUT_NANO_EXT_1 else layout.name.replace(".", "_")
        assert defines[f"NANO_LAYOUT_{key}_MAJOR"] == layout.major
        assert defines[f"NANO_LAYOUT_{key}_MINOR"] == layout.minor
        assert defines[f"NANO_LAYOUT_{key}_CONFIG_LEN"] == layout.config_len


def test_layout_names_and_quant_codes_at_runtime(nano, h):
    """Each layout the C loader reports has the spec's name; quant codes per layout match spec.QUANT_CODES."""
    import nano_format as nf

    for layout in ("2026.1", "2026.101"):
        for quant in ("f32", "q8_0"):
            m = nano.load(h.model_bytes(layout=layout, quant=quant))
            assert m.info["layout"] == layout
            code = spec.quant_code(spec.LAYOUTS_BY_NAME[layout], spec.QuantType[quant.upper()])
            assert m.info["quant_code"] == code
            assert m.info["quant_type"] == spec.QuantType[quant.upper()]
    assert nf.spec.QUANT_CODES["2025.12"][spec.LEGACY_Q8_0_2025] == spec.QuantType.Q8_0


def test_param_order(nano, h):
    """The C tensor table lists the parameters in spec.PARAM_ORDER."""
    m = nano.load(h.model_bytes(tie_embeddings=False))
    names = [t.name for t in m.tensors]
    order = [n for n in spec.PARAM_ORDER if n in names]
    assert names == order


SPECIALS = ["PADDING", "UNKNOWN", "BOS", "EOS", "INSTRUCT", "RESPONSE"]


@pytest.mark.parametrize("name", SPECIALS)
def test_special_token_strings(defines, name):
    """The special-token texts the C code looks up (session stop/instruct ids, the
    tokenizer's <|unknown|>, the server's instruct check) are nano.h's NANO_SPECIAL_*."""
    assert defines.get(f"NANO_SPECIAL_{name}") == getattr(spec, f"SPECIAL_{name}")


def test_special_token_strings_are_not_hard_coded(h):
    """No C source spells a special token by hand: they use NANO_SPECIAL_* (and sizeof - 1)."""
    texts = [getattr(spec, f"SPECIAL_{n}") for n in SPECIALS]
    for folder in ("src", "server", "cli"):
        for path in sorted((h.CORE / folder).glob("*.c")):
            source = path.read_text()
            for t in texts:
                assert f'"{t}"' not in source, f"{path.name} spells {t!r} instead of its NANO_SPECIAL_ name"


@pytest.mark.parametrize("layout", ["2025.12", "2026.1", "2026.101"])
def test_quant_codes_per_layout(nano, h, layout):
    """The C layout table accepts exactly the quant codes spec.QUANT_CODES lists for
    each model layout: a model file with every other code is NANO_ERR_UNKNOWN_QUANT_TYPE."""
    import struct

    if layout == "2025.12":  # read only for the writer: the reference fixture
        data = bytearray(h.shared_file("fixtures/sort6_f32.bin").read_bytes())
    else:
        data = bytearray(h.model_bytes(layout=layout, quant="f32"))
    assert nano.load(bytes(data)).info["layout"] == layout
    codes = spec.QUANT_CODES[layout]
    for code in list(range(256)) + [0x100, 0x8000, 0xFFFFFFFF]:
        struct.pack_into("<I", data, spec.OFF_QUANT, code)
        st = nano.load_status(bytes(data))
        if code in codes:
            assert st != "NANO_ERR_UNKNOWN_QUANT_TYPE", (layout, hex(code))
        else:
            assert st == "NANO_ERR_UNKNOWN_QUANT_TYPE", (layout, hex(code), st)
