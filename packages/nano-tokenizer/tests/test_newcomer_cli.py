"""Mistakes a newcomer makes on the command line, and the messages that say what
went wrong: arguments swapped, a checkpoint or a model where a vocabulary or a
text belongs, a .npy file under another name. Each message once named only a
JSON or UTF-8 error, or `not a token id`."""

import io
import re
import zipfile

import numpy as np
import pytest

from nano_tokenizer import Tokenizer, TokenizerError, build_vocab, cli


def run_here(capsys, args):
    """cli.main in this process: (status, stdout, stderr)."""
    rc = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def error_line(rc, err) -> str:
    assert rc == 1 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("nano-tokenizer: error: ") and err.count("error:") == 1, err
    return line


def checkpoint_bytes() -> bytes:
    """What torch.save writes: a zip archive (built here without torch), whose
    local header holds bytes that are not UTF-8."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("archive/data/0", np.arange(16, dtype="<f4").tobytes())
    return buffer.getvalue()


@pytest.fixture
def files(shared, tmp_path, monkeypatch):
    """A folder (the current one) holding a vocabulary, a Nano model, a text,
    a PyTorch-style checkpoint and the start of a GGUF file."""
    (tmp_path / "vocab.json").write_bytes((shared / "data" / "nano_80.json").read_bytes())
    (tmp_path / "model.bin").write_bytes((shared / "fixtures" / "sort6_f32.bin").read_bytes())
    (tmp_path / "t.txt").write_text("hello, world\n", encoding="utf-8")
    (tmp_path / "ck.pt").write_bytes(checkpoint_bytes())
    (tmp_path / "m.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00\xff" * 32)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_checkpoint_stand_in_fails_utf8_after_its_magic():
    """What the tests below rely on: the stand-in starts as torch.save's files do and
    is not UTF-8 (so the old message was a bad byte's offset)."""
    data = checkpoint_bytes()
    assert data.startswith(b"PK\x03\x04")
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")


# --- 1. swapped arguments ---------------------------------------------------


@pytest.mark.parametrize("vocab", ["vocab.json", "model.bin"])
def test_encode_with_the_arguments_swapped_says_the_vocabulary_comes_first(files, capsys, vocab):
    rc, out, err = run_here(capsys, ["encode", "t.txt", vocab])
    line = error_line(rc, err)
    assert line.startswith("nano-tokenizer: error: t.txt: not a tokenizer JSON file nor a .bin model")
    assert f"{vocab} is a vocabulary, and the vocabulary comes first: encode VOCAB TEXTFILE" in line
    assert out == ""


def test_decode_with_the_arguments_swapped_says_the_vocabulary_comes_first(files, capsys):
    np.save(files / "ids.npy", np.array([1, 2], dtype="<u4"))
    rc, _, err = run_here(capsys, ["decode", "ids.npy", "vocab.json"])
    assert "vocab.json is a vocabulary, and the vocabulary comes first: decode VOCAB IDS" in error_line(rc, err)


def test_no_swap_is_suggested_when_neither_argument_is_a_vocabulary(files, capsys):
    (files / "u.txt").write_text("more text", encoding="utf-8")
    rc, _, err = run_here(capsys, ["encode", "t.txt", "u.txt"])
    line = error_line(rc, err)
    assert line.endswith("t.txt: not a tokenizer JSON file nor a .bin model (Expecting value at line 1 column 1)")


# --- 2. a checkpoint or a GGUF file given as the vocabulary -------------------


@pytest.mark.parametrize("name, what", [("ck.pt", "a zip archive (a PyTorch checkpoint?)"), ("m.gguf", "a GGUF file")])
def test_a_known_binary_file_as_the_vocabulary_is_named(files, capsys, name, what):
    rc, _, err = run_here(capsys, ["info", name])
    assert error_line(rc, err) == f"nano-tokenizer: error: {name}: {what}, not a tokenizer JSON file nor a .bin model"
    with pytest.raises(TokenizerError, match=re.escape(f"{name}: {what}, not a tokenizer JSON file")):
        Tokenizer.load(files / name)


def test_a_npy_file_as_the_vocabulary_is_named(files, capsys):
    np.save(files / "ids.npy", np.array([1, 2], dtype="<u4"))
    rc, _, err = run_here(capsys, ["info", "ids.npy"])
    assert "ids.npy: a .npy file, not a tokenizer JSON file nor a .bin model" in error_line(rc, err)


# --- 3. a model, a checkpoint or a GGUF file given as text -------------------


@pytest.mark.parametrize("name, what", [
    ("model.bin", "a Nano model file"),
    ("ck.pt", "a zip archive (a PyTorch checkpoint?)"),
    ("m.gguf", "a GGUF file"),
])
def test_a_binary_corpus_is_named_not_a_bad_byte(files, capsys, name, what):
    rc, _, err = run_here(capsys, ["build", name, "--size", "100", "-o", "v.json"])
    assert error_line(rc, err) == f"nano-tokenizer: error: {name}: {what}, not UTF-8 text"
    assert not (files / "v.json").exists()
    rc, _, err = run_here(capsys, ["encode", "vocab.json", name])
    assert error_line(rc, err) == f"nano-tokenizer: error: {name}: {what}, not UTF-8 text"


def test_the_nano_magic_is_nano_formats(files):
    """The model file's magic is the one nano-format's spec and reader check."""
    import nano_format

    assert (files / "model.bin").read_bytes().startswith(nano_format.spec.MAGIC_BYTES)
    with pytest.raises(TokenizerError, match="model.bin: a Nano model file, not UTF-8 text"):
        build_vocab([files / "model.bin"], 100)


def test_a_magic_cut_between_reads_is_still_named(files):
    """The first bytes are gathered over reads, as a pipe may hand them over a few at a time."""
    from nano_tokenizer.tokenizer import read_utf8

    with open(files / "model.bin", "rb") as f, pytest.raises(TokenizerError, match="a Nano model file, not UTF-8 text"):
        list(read_utf8(f, "model.bin", size=3))


def test_text_that_starts_like_a_format_but_is_utf8_is_still_text(files, capsys):
    """Only a file that fails to decode is named by its first bytes: text is text."""
    (files / "g.txt").write_text("GGUF is a file format\n", encoding="utf-8")
    rc, out, err = run_here(capsys, ["encode", "vocab.json", "g.txt"])
    assert rc == 0, err
    tok = Tokenizer.load(files / "vocab.json")
    assert out.split() == [str(i) for i in tok.encode("GGUF is a file format\n")]


def test_other_bad_utf8_keeps_its_byte_offset(files, capsys):
    (files / "bad.txt").write_bytes(b"abc\xffdef")
    rc, _, err = run_here(capsys, ["build", "bad.txt", "--size", "100", "-o", "v.json"])
    assert error_line(rc, err).endswith("bad.txt: not UTF-8 text (invalid start byte at byte 3)")


# --- 4. a .npy file under another name, and other files as ids ---------------


def test_encode_out_under_a_txt_name_decodes(files, capsys):
    """`encode --out ids.txt` writes a .npy whatever the name; decode reads it back by its magic."""
    rc, _, err = run_here(capsys, ["encode", "vocab.json", "t.txt", "--out", "ids.txt"])
    assert rc == 0, err
    rc, out, err = run_here(capsys, ["decode", "vocab.json", "ids.txt"])
    assert rc == 0, err
    assert out == "hello, world\n"


def test_a_file_that_is_not_npy_as_ids_says_how_ids_come(files, capsys):
    rc, _, err = run_here(capsys, ["decode", "vocab.json", "t.txt"])
    assert error_line(rc, err) == ("nano-tokenizer: error: t.txt: not a .npy file "
                                   "(token ids come as numbers, a .npy file, or - for standard input)")
    rc, _, err = run_here(capsys, ["decode", "vocab.json", "5", "t.txt"])
    assert "t.txt: not a .npy file (token ids come as numbers" in error_line(rc, err)


def test_a_npy_file_among_other_ids_is_refused_by_name(files, capsys):
    np.save(files / "ids.npy", np.array([1, 2], dtype="<u4"))
    rc, out, err = run_here(capsys, ["decode", "vocab.json", "5", "ids.npy"])
    assert "ids.npy: a .npy file must be the only IDS argument" in error_line(rc, err)
    assert out == ""


def test_ids_stay_ids_even_when_a_file_has_their_name(files, capsys):
    """`decode VOCAB 12` means id 12, even beside a file named 12; a word that is
    neither an id nor a file keeps its old message."""
    (files / "12").write_text("not ids", encoding="utf-8")
    tok = Tokenizer.load(files / "vocab.json")
    rc, out, err = run_here(capsys, ["decode", "vocab.json", "12"])
    assert rc == 0, err
    assert out == tok.decode([12])
    rc, _, err = run_here(capsys, ["decode", "vocab.json", "nothing-here"])
    assert error_line(rc, err).endswith("not a token id: 'nothing-here'")
