"""The tokenizer section helpers (nano-tokenizer and the C engine's tests use them)."""

import struct

import pytest

import nano_format as nf


def test_encode_decode_round_trip(build):
    tokens = build.make_tokens(50, n_special=5)
    section = nf.encode_tokenizer_section(tokens)
    length, vocab = struct.unpack_from("<II", section)
    assert length == len(section) and vocab == 50
    assert nf.decode_tokenizer_section(section) == tokens
    assert nf.decode_tokenizer_section(section, vocab_size=50) == tokens


def test_record_layout():
    section = nf.encode_tokenizer_section([nf.TokenEntry(0, "<|x|>", True), nf.TokenEntry(1, "中a", False)])
    assert section[8:16] == bytes([5, 1, 0xFF, 0xFF, 0, 0, 0, 0])
    assert struct.unpack_from("<5I", section, 16) == tuple(map(ord, "<|x|>"))
    assert section[36:44] == bytes([2, 0, 0xFF, 0xFF, 1, 0, 0, 0])
    assert struct.unpack_from("<2I", section, 44) == (0x4E2D, 0x61)
    assert len(section) == 52


def test_fixture_section_round_trips(psycho_bytes):
    length = struct.unpack_from("<I", psycho_bytes, 256)[0]
    section = psycho_bytes[256:256 + length]
    tokens = nf.decode_tokenizer_section(section, base_offset=256)
    assert nf.encode_tokenizer_section(tokens) == section


@pytest.mark.parametrize("tokens, match", [
    ([nf.TokenEntry(0, "")], "0 code points"),
    ([nf.TokenEntry(0, "x" * 256)], "256 code points"),
    ([nf.TokenEntry(0, "\ud800")], "surrogate"),
    ([nf.TokenEntry(1, "a")], "ids must run"),
    (["a"], "expected a TokenEntry"),
])
def test_encode_refuses_bad_tokens(tokens, match):
    with pytest.raises(nf.BadTokenRecord, match=match):
        nf.encode_tokenizer_section(tokens)


def test_decode_errors_carry_offsets(build):
    section = nf.encode_tokenizer_section(build.make_tokens(4))
    with pytest.raises(nf.TrailingBytes):
        nf.decode_tokenizer_section(section + b"\0")
    with pytest.raises(nf.Truncated):
        nf.decode_tokenizer_section(section[:-1])
    with pytest.raises(nf.BadTokenRecord, match="holds 4 tokens but config vocab_size is 5"):
        nf.decode_tokenizer_section(section, vocab_size=5)
    bad = bytearray(section)
    bad[10] = 0
    with pytest.raises(nf.BadTokenRecord) as info:
        nf.decode_tokenizer_section(bytes(bad), base_offset=0x100)
    assert info.value.offset == 0x100 + 10 and info.value.field == "token 0"
