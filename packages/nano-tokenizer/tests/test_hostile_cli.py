"""The command line and loaders given hostile or mistaken input: empty file names
(an unset shell variable), FIFOs nothing writes to, devices that never end, broken
.npy headers, digits of other scripts. Each row is a case that once hung, gave a
traceback, a misleading message or a silent wrong result."""

import io
import json
import os
import re
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from nano_tokenizer import Tokenizer, TokenizerError, build_vocab, cli


def run(args, stdin: bytes = b"", cwd=None):
    """python -m nano_tokenizer with a time limit: what once hung (a FIFO nothing
    writes to, /dev/zero) fails the test instead of hanging it. Standard output is
    thrown away, as an endless input once gave endless output."""
    try:
        proc = subprocess.run([sys.executable, "-m", "nano_tokenizer", *(a if isinstance(a, bytes) else str(a) for a in args)], input=stdin,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=20, cwd=cwd)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung: {args}")
    return proc.returncode, proc.stderr.decode("utf-8")


def run_here(capsys, args):
    """cli.main in this process: (status, stdout, stderr); an exception escaping main() fails the test."""
    rc = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def error_line(rc, err) -> str:
    # a command line that is itself wrong: status 2 after the usage lines; anything else 1
    assert rc == (2 if err.startswith("usage: ") else 1) and "Traceback" not in err, (rc, err)
    line = err.strip().splitlines()[-1]
    assert line.startswith("nano-tokenizer: error: ") and err.count("error:") == 1, err
    return line


@pytest.fixture
def files(shared, tmp_path):
    """A folder holding a vocabulary, a text, a FIFO nothing writes to and broken .npy files."""
    (tmp_path / "vocab.json").write_bytes((shared / "data" / "nano_80.json").read_bytes())
    (tmp_path / "text.txt").write_text("hello, world\n", encoding="utf-8")
    os.mkfifo(tmp_path / "fifo")
    os.mkfifo(tmp_path / "fifo.npy")
    header = b"{'descr': '<u4', 'fortran_order': False, 'shape': (2,"  # the dict is never closed
    (tmp_path / "open.npy").write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header)
    header = b"{'descr': evil, 'fortran_order': False, 'shape': (2,), }\n"
    (tmp_path / "name.npy").write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header)
    ok = (tmp_path / "ok.npy")
    np.save(ok, np.array([1, 2], dtype="<u4"))
    (tmp_path / "v9.npy").write_bytes(ok.read_bytes()[:6] + b"\x09\x00" + ok.read_bytes()[8:])
    return tmp_path


# (arguments, standard input, fragment of the error line); run in the `files` folder
CASES = [
    # An empty name was read as "." (".: cannot read: Is a directory"), or --out "" printed the ids instead
    (["info", ""], b"", "argument VOCAB: the file name is empty"),
    (["encode", "vocab.json", ""], b"", "argument TEXTFILE: the file name is empty"),
    (["encode", "vocab.json", "text.txt", "--out", ""], b"", "argument --out: the file name is empty"),
    (["decode", "", "1"], b"", "argument VOCAB: the file name is empty"),
    (["build", "", "--size", "20", "-o", "out.json"], b"", "argument CORPUS: the file name is empty"),
    (["build", "text.txt", "--words", "", "--size", "20", "-o", "out.json"], b"", "argument --words: the file name is empty"),
    (["build", "text.txt", "--size", "20", "-o", ""], b"", "argument -o/--output: the file name is empty"),
    # A FIFO that nothing writes to: open() waited for a writer forever
    (["info", "fifo"], b"", "fifo: cannot read: a FIFO (a pipe) that nothing wrote to in 3 s"),
    (["encode", "fifo", "text.txt"], b"", "fifo: cannot read: a FIFO (a pipe) that nothing wrote to in 3 s"),
    (["encode", "vocab.json", "fifo"], b"", "fifo: cannot read: a FIFO (a pipe) that nothing wrote to in 3 s"),
    (["build", "fifo", "--size", "20", "-o", "out.json"], b"", "fifo: cannot read: a FIFO (a pipe) that nothing wrote to in 3 s"),
    (["build", "text.txt", "--words", "fifo", "--size", "20", "-o", "out.json"], b"",
     "fifo: cannot read: a FIFO (a pipe) that nothing wrote to in 3 s"),
    (["decode", "vocab.json", "fifo.npy"], b"", "fifo.npy: cannot read: not a regular file but a FIFO (a pipe)"),
    # Devices: /dev/zero never ends (encode and build ran forever, --out filled the disk);
    # /dev/null as a corpus silently built a vocabulary of the specials alone
    (["encode", "vocab.json", "/dev/zero"], b"", "/dev/zero: cannot read: not a regular file but a character device"),
    (["encode", "vocab.json", "/dev/zero", "--out", "ids.npy"], b"",
     "/dev/zero: cannot read: not a regular file but a character device"),
    (["build", "/dev/zero", "--size", "20", "-o", "out.json"], b"",
     "/dev/zero: cannot read: not a regular file but a character device"),
    (["build", "/dev/null", "--size", "20", "-o", "out.json"], b"",
     "/dev/null: cannot read: not a regular file but a character device"),
    # .npy headers: an unclosed dict was a traceback (tokenize.TokenError), a name showed
    # ast's repr with a memory address, an unknown version was read as 2.0
    (["decode", "vocab.json", "open.npy"], b"", "open.npy: not a .npy file (its header is cut short)"),
    (["decode", "vocab.json", "name.npy"], b"", "name.npy: not a .npy file (its header holds more than literals)"),
    (["decode", "vocab.json", "v9.npy"], b"", "v9.npy: not a .npy file (format version 9.0 is unknown)"),
    # Numbers: int() takes '٣٠' and '1_000'; a huge --chunk-ids was a MemoryError traceback
    (["build", "text.txt", "--size", "\u0663\u0660", "-o", "out.json"], b"", "argument --size: not an integer"),
    (["build", "text.txt", "--size", "1_000", "-o", "out.json"], b"", "argument --size: not an integer"),
    (["decode", "vocab.json", "-", "--chunk-ids", "1000000000000000000"], b"1 2",
     "argument --chunk-ids: must be from 1 to 16777216"),
    (["encode", "vocab.json", "text.txt", "--chunk-chars", "0"], b"", "argument --chunk-chars: must be from 1 to"),
    # A --special that is not UTF-8 on the command line was blamed on the built vocabulary's itos[7]
    (["build", "text.txt", "--size", "20", "--special", b"\xff", "-o", "out.json"], b"",
     "invalid special token '\\udcff': not UTF-8 text"),
]


@pytest.mark.parametrize("args, stdin, fragment", CASES, ids=[repr(c[0][:4]) for c in CASES])
def test_hostile_command_lines(files, args, stdin, fragment):
    rc, err = run(args, stdin, cwd=files)
    assert fragment in error_line(rc, err)
    assert not (files / "out.json").exists() and not (files / "ids.npy").exists()
    assert not [n for n in os.listdir(files) if n.endswith(".tmp")]


def test_an_empty_out_never_falls_back_to_printing(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    rc, out, err = run_here(capsys, ["encode", "vocab.json", "text.txt", "--out", ""])
    assert out == ""  # once: status 0 and the ids on standard output
    error_line(rc, err)


def test_a_fifo_with_a_writer_is_still_read(files):
    """What the FIFO check must not break: a writer that is there (here blocked in
    opening the FIFO, as `cat x > fifo &` would be) is waited for, even when it
    writes late, and read to its end."""
    writer = subprocess.Popen(["sh", "-c", 'exec 3>"$1"; sleep 1; printf hello >&3', "sh", files / "fifo"])
    try:
        time.sleep(0.5)  # let the writer reach its open()
        proc = subprocess.run([sys.executable, "-m", "nano_tokenizer", "encode", "vocab.json", "fifo"],
                              cwd=files, capture_output=True, timeout=60)
    finally:
        writer.kill()
        writer.wait(timeout=60)
    tok = Tokenizer.load(files / "vocab.json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().split() == [str(i) for i in tok.encode("hello")]


def test_a_fifo_whose_writer_starts_after_the_reader_is_read(files):
    """`reader fifo & writer > fifo`: the writer opens the FIFO only after the reader has
    found it empty; it has FIFO_WRITER_WAIT seconds to do so."""
    reader = subprocess.Popen([sys.executable, "-m", "nano_tokenizer", "encode", "vocab.json", "fifo"],
                              cwd=files, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(1.5)  # the reader has started and opened the FIFO, with no writer yet
        # without blocking: a reader that has given up already fails the open (ENXIO), not hangs it
        fd = os.open(files / "fifo", os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b"hello")
        os.close(fd)
        out, err = reader.communicate(timeout=60)
    finally:
        reader.kill()
        reader.wait(timeout=60)
    tok = Tokenizer.load(files / "vocab.json")
    assert reader.returncode == 0, err
    assert out.decode().split() == [str(i) for i in tok.encode("hello")]


def test_a_npy_header_length_is_checked_before_it_is_read(files, capsys):
    """A 2.0 header length of 1 GiB in a small file: numpy would set aside that many
    bytes to read it."""
    ok = (files / "ok.npy").read_bytes()
    (files / "big.npy").write_bytes(b"\x93NUMPY\x02\x00" + struct.pack("<I", 1 << 30) + ok[10:])
    tracemalloc.start()
    try:
        rc, _, err = run_here(capsys, ["decode", files / "vocab.json", files / "big.npy"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "its header length says 1073741824 bytes" in error_line(rc, err)
    assert peak < 16 << 20, peak


def _vocab_size_text(d):
    d["vocab_size"] = str(d["vocab_size"])


def _vocab_size_float(d):
    d["vocab_size"] = float(d["vocab_size"])


def test_vocab_size_of_the_wrong_type_is_named(shared, tmp_path):
    """Once: "vocab_size is '80' but itos holds 80 tokens", as if the numbers differed."""
    for change, shown in ((_vocab_size_text, "'80'"), (_vocab_size_float, "80.0")):
        d = json.loads((shared / "data" / "nano_80.json").read_text(encoding="utf-8"))
        change(d)
        (tmp_path / "v.json").write_text(json.dumps(d), encoding="utf-8")
        with pytest.raises(TokenizerError, match=f"v.json: vocab_size is {shown}, not an integer"):
            Tokenizer.load(tmp_path / "v.json")


def test_empty_names_are_refused_by_the_api(files, monkeypatch):
    monkeypatch.chdir(files)
    with pytest.raises(TokenizerError, match="the file name is empty"):
        Tokenizer.load("")  # once read as "." (".: cannot read: Is a directory")
    with pytest.raises(TokenizerError, match="the file name is empty"):
        build_vocab([""], 20)
    with pytest.raises(TokenizerError, match="the file name is empty"):
        build_vocab(["text.txt"], 20, words_file="")


def test_a_vocabulary_with_a_byte_order_mark_says_so(shared, tmp_path):
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + (shared / "data" / "nano_80.json").read_bytes())
    with pytest.raises(TokenizerError) as info:
        Tokenizer.load(tmp_path / "bom.json")
    assert "byte order mark" in str(info.value) and "utf-8-sig" not in str(info.value)


# ---------------------------------------------------------------------------
# Mistakes a newcomer makes on the command line, and the messages that say what
# went wrong: arguments swapped, a checkpoint or a model where a vocabulary or a
# text belongs, a .npy file under another name. Each message once named only a
# JSON or UTF-8 error, or `not a token id`.


def checkpoint_bytes() -> bytes:
    """What torch.save writes: a zip archive (built here without torch), whose
    local header holds bytes that are not UTF-8."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("archive/data/0", np.arange(16, dtype="<f4").tobytes())
    return buffer.getvalue()


@pytest.fixture
def mistaken_files(shared, tmp_path, monkeypatch):
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
def test_encode_with_the_arguments_swapped_says_the_vocabulary_comes_first(mistaken_files, capsys, vocab):
    rc, out, err = run_here(capsys, ["encode", "t.txt", vocab])
    line = error_line(rc, err)
    assert line.startswith("nano-tokenizer: error: t.txt: not a tokenizer JSON file nor a .bin model")
    assert f"{vocab} is a vocabulary, and the vocabulary comes first: encode VOCAB TEXTFILE" in line
    assert out == ""


def test_decode_with_the_arguments_swapped_says_the_vocabulary_comes_first(mistaken_files, capsys):
    np.save(mistaken_files / "ids.npy", np.array([1, 2], dtype="<u4"))
    rc, _, err = run_here(capsys, ["decode", "ids.npy", "vocab.json"])
    assert "vocab.json is a vocabulary, and the vocabulary comes first: decode VOCAB IDS" in error_line(rc, err)


def test_no_swap_is_suggested_when_neither_argument_is_a_vocabulary(mistaken_files, capsys):
    (mistaken_files / "u.txt").write_text("more text", encoding="utf-8")
    rc, _, err = run_here(capsys, ["encode", "t.txt", "u.txt"])
    line = error_line(rc, err)
    assert line.endswith("t.txt: not a tokenizer JSON file nor a .bin model (Expecting value at line 1 column 1)")


# --- 2. a checkpoint or a GGUF file given as the vocabulary -------------------


@pytest.mark.parametrize("name, what", [("ck.pt", "a zip archive (a PyTorch checkpoint?)"), ("m.gguf", "a GGUF file")])
def test_a_known_binary_file_as_the_vocabulary_is_named(mistaken_files, capsys, name, what):
    rc, _, err = run_here(capsys, ["info", name])
    assert error_line(rc, err) == f"nano-tokenizer: error: {name}: {what}, not a tokenizer JSON file nor a .bin model"
    with pytest.raises(TokenizerError, match=re.escape(f"{name}: {what}, not a tokenizer JSON file")):
        Tokenizer.load(mistaken_files / name)


def test_a_npy_file_as_the_vocabulary_is_named(mistaken_files, capsys):
    np.save(mistaken_files / "ids.npy", np.array([1, 2], dtype="<u4"))
    rc, _, err = run_here(capsys, ["info", "ids.npy"])
    assert "ids.npy: a .npy file, not a tokenizer JSON file nor a .bin model" in error_line(rc, err)


# --- 3. a model, a checkpoint or a GGUF file given as text -------------------


@pytest.mark.parametrize("name, what", [
    ("model.bin", "a Nano model file"),
    ("ck.pt", "a zip archive (a PyTorch checkpoint?)"),
    ("m.gguf", "a GGUF file"),
])
def test_a_binary_corpus_is_named_not_a_bad_byte(mistaken_files, capsys, name, what):
    rc, _, err = run_here(capsys, ["build", name, "--size", "100", "-o", "v.json"])
    assert error_line(rc, err) == f"nano-tokenizer: error: {name}: {what}, not UTF-8 text"
    assert not (mistaken_files / "v.json").exists()
    rc, _, err = run_here(capsys, ["encode", "vocab.json", name])
    assert error_line(rc, err) == f"nano-tokenizer: error: {name}: {what}, not UTF-8 text"


def test_the_nano_magic_is_nano_formats(mistaken_files):
    """The model file's magic is the one nano-format's spec and reader check."""
    import nano_format

    assert (mistaken_files / "model.bin").read_bytes().startswith(nano_format.spec.MAGIC_BYTES)
    with pytest.raises(TokenizerError, match="model.bin: a Nano model file, not UTF-8 text"):
        build_vocab([mistaken_files / "model.bin"], 100)


def test_a_magic_cut_between_reads_is_still_named(mistaken_files):
    """The first bytes are gathered over reads, as a pipe may hand them over a few at a time."""
    from nano_tokenizer.tokenizer import read_utf8

    with open(mistaken_files / "model.bin", "rb") as f, pytest.raises(TokenizerError, match="a Nano model file, not UTF-8 text"):
        list(read_utf8(f, "model.bin", size=3))


def test_text_that_starts_like_a_format_but_is_utf8_is_still_text(mistaken_files, capsys):
    """Only a file that fails to decode is named by its first bytes: text is text."""
    (mistaken_files / "g.txt").write_text("GGUF is a file format\n", encoding="utf-8")
    rc, out, err = run_here(capsys, ["encode", "vocab.json", "g.txt"])
    assert rc == 0, err
    tok = Tokenizer.load(mistaken_files / "vocab.json")
    assert out.split() == [str(i) for i in tok.encode("GGUF is a file format\n")]


def test_other_bad_utf8_keeps_its_byte_offset(mistaken_files, capsys):
    (mistaken_files / "bad.txt").write_bytes(b"abc\xffdef")
    rc, _, err = run_here(capsys, ["build", "bad.txt", "--size", "100", "-o", "v.json"])
    assert error_line(rc, err).endswith("bad.txt: not UTF-8 text (invalid start byte at byte 3)")


# --- 4. a .npy file under another name, and other files as ids ---------------------------


def test_encode_out_under_a_txt_name_decodes(mistaken_files, capsys):
    """`encode --out ids.txt` writes a .npy whatever the name; decode reads it back by its magic."""
    rc, _, err = run_here(capsys, ["encode", "vocab.json", "t.txt", "--out", "ids.txt"])
    assert rc == 0, err
    rc, out, err = run_here(capsys, ["decode", "vocab.json", "ids.txt"])
    assert rc == 0, err
    assert out == "hello, world\n"


def test_a_file_that_is_not_npy_as_ids_says_how_ids_come(mistaken_files, capsys):
    rc, _, err = run_here(capsys, ["decode", "vocab.json", "t.txt"])
    assert error_line(rc, err) == ("nano-tokenizer: error: t.txt: not a .npy file "
                                   "(token ids come as numbers, a .npy file, or - for standard input)")
    rc, _, err = run_here(capsys, ["decode", "vocab.json", "5", "t.txt"])
    assert "t.txt: not a .npy file (token ids come as numbers" in error_line(rc, err)


def test_a_npy_file_among_other_ids_is_refused_by_name(mistaken_files, capsys):
    np.save(mistaken_files / "ids.npy", np.array([1, 2], dtype="<u4"))
    rc, out, err = run_here(capsys, ["decode", "vocab.json", "5", "ids.npy"])
    assert "ids.npy: a .npy file must be the only IDS argument" in error_line(rc, err)
    assert out == ""


def test_ids_stay_ids_even_when_a_file_has_their_name(mistaken_files, capsys):
    """`decode VOCAB 12` means id 12, even beside a file named 12; a word that is
    neither an id nor a file keeps its old message."""
    (mistaken_files / "12").write_text("not ids", encoding="utf-8")
    tok = Tokenizer.load(mistaken_files / "vocab.json")
    rc, out, err = run_here(capsys, ["decode", "vocab.json", "12"])
    assert rc == 0, err
    assert out == tok.decode([12])
    rc, _, err = run_here(capsys, ["decode", "vocab.json", "nothing-here"])
    assert error_line(rc, err).endswith("not a token id: 'nothing-here'")


def test_encode_notes_characters_the_vocabulary_lacks(capsys, tmp_path, shared):
    # (was: silent, as nano run and nano_train.sample were not: the ids just held <|unknown|>)
    text = tmp_path / "u.txt"
    text.write_text("人的心理\U0001F600\U0001F601\n", encoding="utf-8")
    vocab = shared / "data" / "tokenizer_4096.json"
    rc, out, err = run_here(capsys, ["encode", vocab, text])
    unk = Tokenizer.load(vocab).unk_id
    assert rc == 0 and out.split().count(str(unk)) == 2
    assert err == ("note: 2 characters are not in the vocabulary and became <|unknown|> (as nano run and "
                   "nano_train.sample note)\n")
    text.write_text("人的心理\n", encoding="utf-8")
    assert run_here(capsys, ["encode", vocab, text])[2] == ""
