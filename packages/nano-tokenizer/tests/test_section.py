"""The vocabulary as nano-format's tokenizer section, against the reference's files."""

import json
import struct

import numpy as np
import nano_format
import pytest

from nano_tokenizer import Tokenizer, TokenizerError

FIXTURES = [("psycho_230k_1214_q80.bin", "tokenizer_4096.json"), ("sort6_f32.bin", "nano_80.json")]


def fixture_section(path) -> bytes:
    """The tokenizer section's bytes as stored: right after the header, its
    length in its own first u32."""
    data = path.read_bytes()
    start = nano_format.spec.HEADER_SIZE
    (length,) = struct.unpack_from("<I", data, start)
    return data[start : start + length]


@pytest.mark.parametrize("model, vocab_json", FIXTURES)
def test_json_to_section_reproduces_the_fixture_bytes(shared, model, vocab_json):
    tok = Tokenizer.load(shared / "data" / vocab_json)
    section = nano_format.encode_tokenizer_section(tok.to_tokens())
    assert section == fixture_section(shared / "fixtures" / model)


@pytest.mark.parametrize("model, vocab_json", FIXTURES)
def test_section_to_json_equals_the_reference_json(shared, tmp_path, model, vocab_json):
    entries = nano_format.decode_tokenizer_section(fixture_section(shared / "fixtures" / model))
    from_section = Tokenizer.from_tokens(entries)
    from_json = Tokenizer.load(shared / "data" / vocab_json)
    assert from_section == from_json
    assert dict(from_section.special_tokens) == dict(from_json.special_tokens)
    # And through a file: the saved JSON holds the reference's keys and values.
    from_section.save(tmp_path / "v.json")
    saved = json.loads((tmp_path / "v.json").read_text(encoding="utf-8"))
    reference = json.loads((shared / "data" / vocab_json).read_text(encoding="utf-8"))
    assert {k: saved[k] for k in reference} == reference


@pytest.mark.parametrize("model, vocab_json", FIXTURES)
def test_load_reads_a_bin_model(shared, model, vocab_json):
    tok = Tokenizer.load(shared / "fixtures" / model)
    assert tok == Tokenizer.load(shared / "data" / vocab_json)
    assert tok.fingerprint() == Tokenizer.load(shared / "data" / vocab_json).fingerprint()


def test_is_special_flags(vocab):
    tok = vocab("tokenizer_4096.json")
    flagged = [e.text for e in tok.to_tokens() if e.is_special]
    assert flagged == list(tok.special_tokens) and len(flagged) == 12
    assert [e.id for e in tok.to_tokens()] == list(range(4096))


def test_old_files_without_special_flags(vocab):
    # Older exporters did not always set is_special: fall back to the <|name|> shape.
    tok = vocab("nano_80.json")
    unflagged = [nano_format.TokenEntry(e.id, e.text, False) for e in tok.to_tokens()]
    assert Tokenizer.from_tokens(unflagged) == tok


def test_from_tokens_in_any_order_and_bad_ids(vocab):
    tok = vocab("nano_80.json")
    entries = tok.to_tokens()
    assert Tokenizer.from_tokens(list(reversed(entries))) == tok
    with pytest.raises(TokenizerError, match="id 79 is missing"):
        Tokenizer.from_tokens(entries[:79] + [nano_format.TokenEntry(80, "€", False)])
    with pytest.raises(TokenizerError, match="appears twice"):
        Tokenizer.from_tokens(entries + [nano_format.TokenEntry(3, "€", False)])


def test_bin_without_a_nano_vocabulary(tmp_path):
    config = nano_format.LoraConfig(rank=1, alpha=1, n_layer=1, n_embd=4, n_head=1, n_kv_head=1, n_hidden=4)
    tensors = {
        name: np.zeros((1, 1, 4) if name.endswith("A") else (1, 4, 1), np.float32)
        for name in nano_format.spec.LORA_TENSORS
    }
    path = tmp_path / "lora.bin"
    nano_format.write_lora(path, config, tensors)
    with pytest.raises(TokenizerError, match="lora.bin: has no tokenizer section"):
        Tokenizer.load(path)


def test_corrupt_bin_names_the_file(shared, tmp_path):
    path = tmp_path / "cut.bin"
    path.write_bytes((shared / "fixtures" / "sort6_f32.bin").read_bytes()[:300])
    with pytest.raises(TokenizerError, match="cut.bin"):
        Tokenizer.load(path)
