"""The command line and loaders given hostile or mistaken input: empty file names
(an unset shell variable), FIFOs nothing writes to, devices that never end, broken
.npy headers, digits of other scripts. Each row is a case that once hung, gave a
traceback, a misleading message or a silent wrong result."""

import json
import os
import struct
import subprocess
import sys
import time
import tracemalloc

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
    assert rc == 1 and "Traceback" not in err, err
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
