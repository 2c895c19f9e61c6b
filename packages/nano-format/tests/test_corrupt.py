"""One corrupt file per failure kind: each raises its own error, with field and offset."""

import struct

import pytest

import nano_format as nf
from nano_format import spec

# sort6 (2025.12, F32): tokenizer section at 0x100, 1260 bytes; token 0 is "<|padding|>"
# (11 code points) at 0x108, token 1 at 0x108 + 8 + 44.
TOKEN0 = 0x108


def patched(data: bytes, offset: int, fmt: str, *values) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def raises(error, data, match):
    with pytest.raises(error, match=match) as info:
        nf.read(data)
    assert isinstance(info.value, nf.FormatError)
    return info.value


@pytest.fixture(scope="module")
def f101(sort6_bytes):
    """sort6 in our extended layout 2026.101."""
    m = nf.read(sort6_bytes)
    return nf.to_bytes(m.config, m.weights(), m.tokens, layout="2026.101")


@pytest.fixture(scope="module")
def f2026(sort6_bytes):
    m = nf.read(sort6_bytes)
    return nf.to_bytes(m.config, m.weights(), m.tokens)


def test_bad_magic(sort6_bytes):
    err = raises(nf.BadMagic, patched(sort6_bytes, 0, "<B", ord("X")), "S4DBMLRU")
    assert (err.field, err.offset) == ("magic", 0)
    raises(nf.BadMagic, b"GGUF" + bytes(300), "GGUF")
    raises(nf.BadMagic, b"x", "not a Nano model file")


def test_unsupported_version(sort6_bytes):
    err = raises(nf.UnsupportedVersion, patched(sort6_bytes, 0x0C, "<i", 13), r"2025\.13 .*2026\.101")
    assert err.offset == 0x08


def test_unknown_model_type(sort6_bytes):
    err = raises(nf.UnknownModelType, patched(sort6_bytes, 0x10, "<I", 7), "unknown model type 7")
    assert err.offset == 0x10
    raises(nf.UnknownModelType, patched(sort6_bytes, 0x10, "<I", 2), "qwen2 model cannot be stored in layout 2025.12")


def test_unknown_quant_type(sort6_bytes, f2026):
    err = raises(nf.UnknownQuantType, patched(sort6_bytes, 0x3C, "<I", 0x80), "0x80 means nothing in layout 2025.12")
    assert err.offset == 0x3C
    raises(nf.UnknownQuantType, patched(f2026, 0x3C, "<I", 10), "0x0A means nothing in layout 2026.1")
    raises(nf.UnknownQuantType, patched(f2026, 0x3C, "<I", 5), "0x05")


def test_bad_header(sort6_bytes, f2026, f101):
    raises(nf.BadHeader, patched(sort6_bytes, 0x14, "<I", 36), "config length is 36; layout 2025.12 stores 32")
    err = raises(nf.BadHeader, patched(sort6_bytes, 0x90, "<B", 1), "reserved byte is 0x01")
    assert err.offset == 0x90
    raises(nf.BadHeader, patched(f2026, 0x44, "<I", 1), "layout 2026.101 only")
    raises(nf.BadHeader, patched(f101, 0x60, "<B", 7), "reserved byte is 0x07")
    err = raises(nf.BadHeader, patched(f101, 0x54, "<I", 9), "unknown tokenizer kind 9")
    assert err.offset == 0x54


@pytest.mark.parametrize("offset, value, match", [
    (0x28, 3, "n_head at offset 0x28: 3 does not divide n_embd 32"),
    (0x2C, 3, "n_kv_head at offset 0x2C: 3 does not divide n_head 4"),
    (0x20, 0, "n_layer at offset 0x20: 0 is out of range"),
    (0x38, 16, "head_dim at offset 0x38: 16 is inconsistent with n_embd / n_head"),
    (0x34, 2, "is_shared_classifier at offset 0x34: is 2, must be 0 or 1"),
    (0x1C, 1 << 23, "vocab_size .*out of range"),
    (0x24, 0xFFFFFFFF, "n_embd .*out of range"),
])
def test_bad_config(sort6_bytes, offset, value, match):
    err = raises(nf.BadConfig, patched(sort6_bytes, offset, "<I", value), match)
    assert err.offset == offset


def test_bad_config_in_the_extension(f101):
    raises(nf.BadConfig, patched(f101, 0x44, "<I", 7), "attention at offset 0x44: unknown value 7")
    raises(nf.BadConfig, patched(f101, 0x48, "<I", 2), "position at offset 0x48")
    raises(nf.BadConfig, patched(f101, 0x4C, "<f", float("nan")), "norm_eps at offset 0x4C")
    raises(nf.BadConfig, patched(f101, 0x50, "<f", -1.0), "rope_theta at offset 0x50")


def test_bad_group_size(psycho_bytes, sort6_bytes):
    err = raises(nf.BadGroupSize, patched(psycho_bytes, 0x40, "<I", 0), "group size at offset 0x40: is 0")
    assert err.field == "group size"
    raises(nf.BadGroupSize, patched(psycho_bytes, 0x40, "<I", 12), "12 does not divide n_embd = 32")
    raises(nf.BadGroupSize, patched(psycho_bytes, 0x40, "<I", 64), "64 does not divide n_embd")
    raises(nf.BadGroupSize, patched(sort6_bytes, 0x40, "<I", 16), "an F32 file stores 0")


def test_truncated(sort6_bytes, tmp_path):
    err = raises(nf.Truncated, sort6_bytes[:100], "only 100 bytes; the header needs 256")
    assert err.section == "header"
    err = raises(nf.Truncated, sort6_bytes[:260], "tokenizer section's 8-byte header")
    assert err.section == "tokenizer section"
    err = raises(nf.Truncated, sort6_bytes[:300], "tokenizer section claims 1260 bytes but only 44 remain")
    assert err.section == "tokenizer section" and err.offset == 0x100
    err = raises(nf.Truncated, sort6_bytes[:-10], "need 47936 bytes but the file ends")
    assert err.section == "parameters"
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(nf.Truncated, match="empty"):
        nf.read(empty)


@pytest.mark.parametrize("offset, fmt, value, match", [
    (TOKEN0 + 2, "<B", 0xFE, "token 0 at offset 0x10A: reserved bytes are 0xFE 0xFF"),
    (TOKEN0 + 4, "<I", 5, "record 0 has id 5; ids must run 0..79 in order"),
    (TOKEN0 + 8, "<I", 0xD800, "code point 0xD800 is a surrogate"),
    (TOKEN0 + 12, "<I", 0x110000, "beyond U\\+10FFFF"),
    (TOKEN0 + 1, "<B", 2, "is_special byte is 2"),
    (TOKEN0, "<B", 0, "empty token"),
    (0x100, "<I", 1256, "code points run past the section end"),  # the last record no longer fits
    (0x100, "<I", 1264, "section length says 1264 bytes but its 80 records end after 1260"),
    (0x100, "<I", 4, "smaller than its own 8-byte header"),
    (0x104, "<I", 81, "holds 81 tokens but config vocab_size is 80"),
])
def test_bad_token_record(sort6_bytes, offset, fmt, value, match):
    raises(nf.BadTokenRecord, patched(sort6_bytes, offset, fmt, value), match)


def test_trailing_bytes(sort6_bytes):
    err = raises(nf.TrailingBytes, sort6_bytes + b"\0\0\0\0", "4 bytes after the last tensor")
    assert err.offset == len(sort6_bytes)


def test_size_overflow(sort6_bytes):
    raises(nf.SizeOverflow, patched(sort6_bytes, 0x30, "<I", 1 << 20), r"largest: w1 .* more than the whole file")
    raises(nf.SizeOverflow, patched(sort6_bytes, 0x18, "<I", 1 << 20), "largest: rope_cos")


def test_size_overflow_64_bit(sort6_bytes, monkeypatch):
    # With the sanity limits lifted, dimensions that fit u32 can still overflow 64 bits.
    monkeypatch.setattr(spec, "MAX_DIM", 1 << 32)
    data = patched(sort6_bytes, 0x24, "<I", 1 << 31)  # n_embd
    data = patched(data, 0x30, "<I", 1 << 31)  # n_hidden
    data = patched(data, 0x38, "<I", 1 << 29)  # head_dim = n_embd / 4
    raises(nf.SizeOverflow, data, "overflows 64 bits")


def test_q4k_is_inspectable_not_loadable(f2026):
    data = patched(f2026, 0x3C, "<I", 0x42)
    m = nf.read(data)
    assert m.quant == spec.QuantType.Q4K and not m.loadable
    assert len(m.tokens) == 80
    assert [t.name for t in m.tensors] == ["parameters"]
    assert m.tensors[0].dtype == "q4k" and m.params_offset + m.tensors[0].nbytes == len(data)
    with pytest.raises(nf.UnsupportedQuant, match="Q4K parameters cannot be loaded"):
        m.tensor("wq")
    with pytest.raises(nf.UnsupportedQuant):
        m.ensure_loadable()


def test_errors_name_the_file(sort6_bytes, tmp_path):
    path = tmp_path / "broken.bin"
    path.write_bytes(patched(sort6_bytes, 0x28, "<I", 3))
    with pytest.raises(nf.BadConfig) as info:
        nf.read(path)
    assert str(info.value).startswith(f"{path}: n_head at offset 0x28:")
    assert info.value.path == str(path)
    with pytest.raises(nf.BadConfig, match="^buf.bin: n_head"):
        nf.read(patched(sort6_bytes, 0x28, "<I", 3), name="buf.bin")


def test_errors_pickle(sort6_bytes):
    import pickle

    with pytest.raises(nf.Truncated) as info:
        nf.read(sort6_bytes[:-10], name="x.bin")
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value) and again.section == "parameters"
