"""The command line, run as a user would: python -m nano_tokenizer."""

import io
import json
import os
import stat
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from nano_tokenizer import Tokenizer, TokenizerError, cli
from nano_tokenizer.tokenizer import write_atomically


def run(*args, stdin: bytes | None = b""):
    """stdin=None: the command starts with standard input closed (`<&-`)."""
    proc = subprocess.run(
        [sys.executable, "-m", "nano_tokenizer", *map(str, args)],
        input=stdin,
        capture_output=True,
        timeout=120,
        preexec_fn=(lambda: os.close(0)) if stdin is None else None,
    )
    return proc.returncode, proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8")


def run_here(capsys, *args):
    """The same entry point in this process: quicker, for the many error cases.
    An exception escaping main() (what would be a traceback) fails the test."""
    rc = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_clean_error(rc, err, *fragments):
    # a command line that is itself wrong: status 2 after the usage lines; anything else 1
    assert rc == (2 if err.startswith("usage: ") else 1), (rc, err)
    assert "Traceback" not in err
    # One message line, last (after argparse's usage text for usage errors).
    lines = err.strip().splitlines()
    assert lines[-1].startswith("nano-tokenizer: error:") and err.count("error:") == 1
    for fragment in fragments:
        assert fragment in lines[-1]


def test_help_and_version(capsys):
    rc, out, _ = run("--help")
    assert rc == 0 and "Usage:" in out and "encode VOCAB TEXTFILE" in out
    for command in ("info", "encode", "decode", "build"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out
    rc, out, _ = run("--version")
    assert rc == 0 and "0.1.0" in out


@pytest.mark.parametrize("vocab_file", ["data/tokenizer_16384_v2.json", "fixtures/psycho_230k_1214_q80.bin"])
def test_info(shared, vocab_file):
    rc, out, err = run("info", shared / vocab_file)
    assert rc == 0, err
    tok = Tokenizer.load(shared / vocab_file)
    assert f"tokens       {tok.vocab_size}" in out
    assert "0 <|padding|>, 1 <|unknown|>" in out
    assert "longest      17 code points" in out
    assert "CJK ideographs" in out
    assert tok.fingerprint() in out


def test_encode_decode_round_trip(shared, tmp_path):
    vocab = shared / "data" / "tokenizer_16384_v2.json"
    tok = Tokenizer.load(vocab)
    text = "ability 能力<|eos|>\r\nline two\rend 😀"
    src = tmp_path / "in.txt"
    src.write_bytes(text.encode("utf-8"))

    rc, out, err = run("encode", vocab, src)
    assert rc == 0, err
    ids = [int(x) for x in out.split()]
    assert ids == tok.encode(text)
    assert tok.eos_id not in ids

    rc, out, err = run("encode", vocab, src, "--allow-special")
    assert [int(x) for x in out.split()] == tok.encode(text, allow_special=True)

    # decode from arguments, from stdin, and from a .npy written by encode --out
    rc, out, err = run("decode", vocab, *ids)
    assert rc == 0, err
    assert out == tok.decode(ids)
    rc, out, err = run("decode", vocab, "-", stdin=" ".join(map(str, ids)).encode())
    assert out == tok.decode(ids)
    rc, out, err = run("decode", vocab, stdin=json.dumps(ids).encode())
    assert out == tok.decode(ids)

    npy = tmp_path / "ids.npy"
    rc, _, err = run("encode", vocab, src, "--out", npy)
    assert rc == 0, err
    arr = np.load(npy)
    assert arr.dtype == np.uint32 and arr.tolist() == ids
    rc, out, _ = run("decode", vocab, npy)
    assert out.encode("utf-8") == tok.decode(ids).encode("utf-8")


def test_encode_streams_a_large_file_from_stdin(shared, tmp_path):
    vocab = shared / "data" / "tokenizer_4096.json"
    text = (shared / "data" / "pretrain_psycho.txt").read_bytes()[:600_000].decode("utf-8", "ignore")
    npy = tmp_path / "big.npy"
    rc, _, err = run("encode", vocab, "-", "--out", npy, "--chunk-chars", "1000", stdin=text.encode("utf-8"))
    assert rc == 0, err
    assert np.load(npy).tolist() == Tokenizer.load(vocab).encode(text)


def test_encode_with_a_bin_model_as_vocabulary(shared, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("251212", encoding="utf-8")
    rc, out, _ = run("encode", shared / "fixtures" / "sort6_f32.bin", src)
    assert rc == 0
    tok = Tokenizer.load(shared / "data" / "nano_80.json")
    assert [int(x) for x in out.split()] == tok.encode("251212")


def test_build(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world, hello nano", encoding="utf-8")
    words = tmp_path / "w.txt"
    words.write_text("hello\nnano\n", encoding="utf-8")
    out = tmp_path / "v.json"
    rc, _, err = run("build", corpus, "--size", 30, "--words", words, "--special", "<|nano_meta_0|>", "-o", out)
    assert rc == 0, err
    tok = Tokenizer.load(out)
    assert tok.itos[-2:] == ("hello", "nano")
    assert tok.special_tokens["<|nano_meta_0|>"] == 7
    assert json.loads(out.read_text(encoding="utf-8"))["nano_schema"] == 1


def test_build_takes_a_corpus_folder_as_prepare_does(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text("甲甲甲", encoding="utf-8")
    (corpus / "sub" / "b.txt").write_text("乙乙", encoding="utf-8")
    (corpus / ".hidden").write_text("丙", encoding="utf-8")  # skipped, as prepare skips it
    out = corpus / "v.json"  # written into the folder: not read as corpus text the next time
    for _ in range(2):
        rc, _, err = run_here(capsys, "build", corpus, "--size", 9, "-o", out)
        assert rc == 0, err
        assert Tokenizer.load(out).itos[7:] == ("甲", "乙")
    (corpus / "words.txt").write_text("丁戊\n", encoding="utf-8")  # a words file kept there is no corpus text
    rc, _, err = run_here(capsys, "build", corpus, "--size", 12, "--words", corpus / "words.txt", "-o", out)
    assert rc == 0, err
    assert Tokenizer.load(out).itos[7:] == ("甲", "乙", "丁戊")  # (read as text, it added 丁 and 戊)
    (tmp_path / "empty" / ".git").mkdir(parents=True)
    rc, _, err = run_here(capsys, "build", tmp_path / "empty", "--size", 9, "-o", tmp_path / "v.json")
    assert_clean_error(rc, err, f"the corpus folder {tmp_path / 'empty'} holds no files")


def test_errors_through_the_real_command(tmp_path):
    rc, _, err = run("info", tmp_path / "missing.json")
    assert_clean_error(rc, err, "missing.json: cannot read")
    rc, _, err = run("frobnicate")
    assert_clean_error(rc, err, "invalid choice")


def test_errors_are_one_line_and_exit_1(shared, tmp_path, capsys):
    vocab = shared / "data" / "nano_80.json"

    def run(*args, stdin=None):
        return run_here(capsys, *args)

    rc, _, err = run("info", tmp_path / "missing.json")
    assert_clean_error(rc, err, "missing.json: cannot read")

    notvocab = tmp_path / "notvocab.json"
    notvocab.write_text('{"itos": []}', encoding="utf-8")
    rc, _, err = run("info", notvocab)
    assert_clean_error(rc, err, "notvocab.json", "missing key")

    rc, _, err = run("decode", vocab, "1", "80")
    assert_clean_error(rc, err, "token id 80 is outside")
    rc, _, err = run("decode", vocab, "1", "x2")
    assert_clean_error(rc, err, "not a token id: 'x2'")
    rc, _, err = run("decode", vocab, "1", "9" * 25)  # beyond int64: once an OverflowError traceback
    assert_clean_error(rc, err, "token id out of range: " + "9" * 25)

    bad_text = tmp_path / "bad.txt"
    bad_text.write_bytes(b"abc\xff\xfe")
    rc, _, err = run("encode", vocab, bad_text)
    assert_clean_error(rc, err, "bad.txt: not UTF-8")
    rc, _, err = run("encode", vocab, tmp_path / "none.txt")
    assert_clean_error(rc, err, "none.txt: cannot read")

    rc, _, err = run("build", tmp_path / "none.txt", "--size", "10", "-o", tmp_path / "o.json")
    assert_clean_error(rc, err, "none.txt: cannot read")
    rc, _, err = run("build", bad_text, "--size", "3", "-o", tmp_path / "o.json")
    assert_clean_error(rc, err, "too small")

    rc, _, err = run("frobnicate")
    assert_clean_error(rc, err, "invalid choice")
    rc, _, err = run("build", bad_text)
    assert_clean_error(rc, err, "--size")


def npy_with_header(path, shape, data: bytes, descr="<u4"):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": shape})
    path.write_bytes(header.getvalue() + data)
    return path


def test_decode_hostile_input_is_a_clean_error(shared, tmp_path, capsys):
    vocab = shared / "data" / "nano_80.json"
    rc, _, err = run_here(capsys, "decode", vocab, "9" * 5000)  # once int()'s 4300-digit ValueError
    assert_clean_error(rc, err, "token id out of range: 9999", "(5000 characters)")
    assert len(err) < 200
    rc, _, err = run_here(capsys, "decode", vocab, "١٠٠")  # Arabic-Indic digits: once id 100
    assert_clean_error(rc, err, "not a token id: '١٠٠'")
    rc, _, err = run_here(capsys, "decode", vocab, "x" * 5000)
    assert_clean_error(rc, err, "not a token id: 'xxx", "characters)")

    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")  # once an EOFError
    rc, _, err = run_here(capsys, "decode", vocab, empty)
    assert_clean_error(rc, err, "empty.npy: not a .npy file")
    # The header claims 10**13 ids (40 TB) over 16 bytes: once numpy tried to allocate them.
    huge = npy_with_header(tmp_path / "huge.npy", (10**13,), bytes(16))
    rc, _, err = run_here(capsys, "decode", vocab, huge)
    assert_clean_error(rc, err, "huge.npy: the header promises 10000000000000 ids", "holds 16 bytes")
    short = npy_with_header(tmp_path / "short.npy", (3,), np.array([1, 2], "<u4").tobytes())
    rc, _, err = run_here(capsys, "decode", vocab, short)
    assert_clean_error(rc, err, "short.npy: the header promises 3 ids")
    floats = npy_with_header(tmp_path / "floats.npy", (1,), bytes(4), descr="<f4")
    rc, _, err = run_here(capsys, "decode", vocab, floats)
    assert_clean_error(rc, err, "floats.npy: holds float32, not integer ids")
    # numpy's header parser takes any tuple as the shape: once a traceback from reshape
    for name, shape in (("negative", (-2, -2)), ("bool", (True,))):
        odd = npy_with_header(tmp_path / f"{name}.npy", shape, bytes(16 if name == "negative" else 4))
        rc, _, err = run_here(capsys, "decode", vocab, odd)
        assert_clean_error(rc, err, f"{name}.npy: not a .npy file (its shape {shape!r} is not of sizes >= 0)")
    # A well-formed file of another layout still reads as np.load reads it.
    ids = np.array([[8, 9, 10], [11, 12, 13]], dtype=">i8")
    np.save(tmp_path / "matrix.npy", np.asfortranarray(ids))
    rc, out, err = run_here(capsys, "decode", vocab, tmp_path / "matrix.npy")
    assert rc == 0, err
    assert out == Tokenizer.load(vocab).decode(ids.reshape(-1))


def test_standard_input_broken_or_closed(shared):
    vocab = shared / "data" / "nano_80.json"
    rc, _, err = run("decode", vocab, stdin=b"8 9 \xff")  # once a UnicodeDecodeError
    assert_clean_error(rc, err, "standard input: not UTF-8 text (invalid start byte at byte 4)")
    rc, _, err = run("decode", vocab, stdin=None)  # once an AttributeError on None
    assert_clean_error(rc, err, "standard input is closed")
    rc, _, err = run("encode", vocab, "-", stdin=None)
    assert_clean_error(rc, err, "standard input is closed")
    rc, _, err = run("encode", vocab, "-", stdin="中".encode() * 100_000 + b"\xff")
    assert_clean_error(rc, err, "standard input: not UTF-8 text (invalid start byte at byte 300000)")


def test_encode_utf8_error_gives_the_byte_offset(shared, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes("中".encode() * 1_000_000 + b"\xff")
    rc, _, err = run_here(capsys, "encode", shared / "data" / "nano_80.json", bad, "--out", tmp_path / "o.npy")
    assert_clean_error(rc, err, "bad.txt: not UTF-8 text (invalid start byte at byte 3000000)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt"]  # no output, no temporary files


def test_an_output_that_is_an_input_is_refused(shared, tmp_path, capsys):
    vocab = shared / "data" / "nano_80.json"
    corpus = tmp_path / "c2.txt"
    corpus.write_text("hello world", encoding="utf-8")
    words = tmp_path / "w.txt"
    words.write_text("he\nwo\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    cases = [
        ("build", corpus, "--size", 100, "-o", corpus),
        ("build", corpus, "--size", 100, "--words", words, "-o", words),
        ("build", corpus, "--size", 100, "-o", tmp_path / "sub" / ".." / "c2.txt"),  # another spelling
        ("encode", vocab, corpus, "--out", corpus),
    ]
    for args in cases:
        rc, _, err = run_here(capsys, *args)
        assert_clean_error(rc, err, "is the same file as the input")
    assert corpus.read_text(encoding="utf-8") == "hello world"
    assert words.read_text(encoding="utf-8") == "he\nwo\n"
    os.link(corpus, tmp_path / "hard.txt")  # a hard link is the same file too
    rc, _, err = run_here(capsys, "encode", vocab, corpus, "--out", tmp_path / "hard.txt")
    assert_clean_error(rc, err, "is the same file as the input")
    with open(corpus, "rb") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "nano_tokenizer", "encode", str(vocab), "-", "--out", str(corpus)],
            stdin=f, capture_output=True, timeout=120,
        )
    assert_clean_error(proc.returncode, proc.stderr.decode(), "the same file as standard input")
    assert corpus.read_text(encoding="utf-8") == "hello world"


def test_output_errors_name_the_output_and_no_folder_is_created(shared, tmp_path, capsys):
    vocab = shared / "data" / "nano_80.json"
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello", encoding="utf-8")
    missing = tmp_path / "missing" / "dir"
    # Both commands now fail alike (encode --out once created the folders, build did not).
    rc, _, err = run_here(capsys, "build", corpus, "--size", 100, "-o", missing / "o.json")
    assert_clean_error(rc, err, f"{missing / 'o.json'}: No such file or directory")
    assert ".tmp" not in err  # once named o.json.<random>.tmp
    rc, _, err = run_here(capsys, "encode", vocab, corpus, "--out", missing / "o.npy")
    assert_clean_error(rc, err, f"{missing / 'o.npy'}: No such file or directory")
    assert not (tmp_path / "missing").exists()
    rc, _, err = run_here(capsys, "encode", vocab, corpus, "--out", "/dev/full/x.npy")  # once "File exists"
    assert_clean_error(rc, err, "/dev/full/x.npy: Not a directory")
    rc, _, err = run_here(capsys, "encode", vocab, corpus, "--out", "/dev/null")
    assert_clean_error(rc, err, "/dev/null: exists and is not a regular file")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    rc, _, err = run_here(capsys, "build", corpus, "--size", 100, "-o", tmp_path)
    assert_clean_error(rc, err, "not a regular file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


def test_output_modes(shared, tmp_path, capsys):
    vocab = shared / "data" / "nano_80.json"
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello", encoding="utf-8")
    old_umask = os.umask(0o022)
    try:
        for args, out in [(("build", corpus, "--size", 100, "-o"), tmp_path / "v.json"),
                          (("encode", vocab, corpus, "--out"), tmp_path / "ids.npy")]:
            rc, _, err = run_here(capsys, *args, out)
            assert rc == 0, err
            assert stat.S_IMODE(out.stat().st_mode) == 0o644  # once 0600 from mkstemp
            out.chmod(0o640)
            rc, _, err = run_here(capsys, *args, out)
            assert rc == 0, err
            assert stat.S_IMODE(out.stat().st_mode) == 0o640  # once reset to 0600
    finally:
        os.umask(old_umask)


def test_an_output_it_cannot_write_is_refused_before_any_work(shared, tmp_path, capsys, monkeypatch):
    vocab = shared / "data" / "nano_80.json"
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello", encoding="utf-8")
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(TokenizerError) as late:  # what the final write says
        write_atomically(folder, [b""])

    def no_work(*args, **kwargs):
        raise AssertionError("the work began")  # escapes main(): once, the folder was refused only after it

    monkeypatch.setattr(Tokenizer, "encode_stream", no_work)
    monkeypatch.setattr(cli, "build_vocab", no_work)
    for command in (("encode", vocab, corpus, "--out"), ("encode", vocab, "-", "--out"), ("build", corpus, "--size", 100, "-o")):
        rc, _, err = run_here(capsys, *command, folder)
        assert_clean_error(rc, err)
        assert err.strip().splitlines()[-1] == f"nano-tokenizer: error: {late.value}"
        rc, _, err = run_here(capsys, *command, tmp_path / "missing" / "o.npy")
        assert_clean_error(rc, err, f"{tmp_path / 'missing' / 'o.npy'}: No such file or directory")
        rc, _, err = run_here(capsys, *command, "/dev/null")
        assert_clean_error(rc, err, "/dev/null: exists and is not a regular file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "folder"]  # no temporary file left
    assert not any(folder.iterdir())


def test_the_final_write_still_checks_the_output(shared, tmp_path, capsys, monkeypatch):
    vocab = shared / "data" / "nano_80.json"
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello", encoding="utf-8")
    out = tmp_path / "ids.npy"
    encode_stream = Tokenizer.encode_stream

    def folder_appears(self, *args, **kwargs):
        out.mkdir()  # after the check up front, while the input is encoded
        yield from encode_stream(self, *args, **kwargs)

    monkeypatch.setattr(Tokenizer, "encode_stream", folder_appears)
    rc, _, err = run_here(capsys, "encode", vocab, corpus, "--out", out)
    assert_clean_error(rc, err, f"{out}: exists and is not a regular file")
    assert out.is_dir() and not any(out.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "ids.npy"]


def decode_here(monkeypatch, tmp_path, *args, stdin: bytes | None = None, peak: list | None = None):
    """cli.main(["decode", ...]) in this process with standard output in a
    file: (exit status, the bytes written). `peak`, a list, gets the most
    memory that main() had allocated at once (tracemalloc)."""
    out_path = tmp_path / "decoded.out"
    with open(out_path, "w", encoding="utf-8") as out, monkeypatch.context() as m:
        m.setattr(sys, "stdout", out)
        if stdin is not None:
            m.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
        if peak is not None:
            tracemalloc.start()
        try:
            rc = cli.main(["decode", *map(str, args)])
            if peak is not None:
                peak.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    return rc, out_path.read_bytes()


MULTIBYTE = "能力 ability 😀\r\nline two 中文 €£ ĳ\U00020000 <|eos|> end"  # 3-, 4- and 2-byte characters


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 4096])
def test_decode_in_pieces_gives_the_whole_decode(shared, tmp_path, monkeypatch, corpus, chunk):
    vocab = shared / "data" / "tokenizer_16384_v2.json"
    tok = Tokenizer.load(vocab)
    ids = tok.encode(MULTIBYTE + corpus("pretrain_psycho.txt")[:2000], allow_special=True)
    whole = tok.decode(ids).encode("utf-8")
    assert len(whole) > 2 * len(ids)  # most ids are multi-byte characters, so pieces cut between them

    npy = tmp_path / "ids.npy"
    np.save(npy, np.array(ids, dtype=np.uint32))
    assert decode_here(monkeypatch, tmp_path, vocab, npy, "--chunk-ids", chunk) == (0, whole)
    # Fortran order: the pieces are gathered from all over the file.
    matrix = tmp_path / "matrix.npy"
    np.save(matrix, np.asfortranarray(np.array(ids[:1000], dtype=">i8").reshape(40, 25)))
    assert decode_here(monkeypatch, tmp_path, vocab, matrix, "--chunk-ids", chunk) == (0, tok.decode(ids[:1000]).encode())

    # Text on standard input is read `chunk` bytes at a time, so these multi-byte
    # separators (U+3000, NEL, U+2028) and ids are cut at every place.
    separators = [" ", ",\u3000", "\x85", "\n", "\u2028", ", "]
    text = "[" + "".join(f"{i}{separators[n % len(separators)]}" for n, i in enumerate(ids)) + "]"
    assert decode_here(monkeypatch, tmp_path, vocab, "--chunk-ids", chunk, stdin=text.encode()) == (0, whole)


@pytest.mark.parametrize("chunk", [1, 2, 3, 16384])
def test_decode_in_pieces_fails_as_the_whole_decode(shared, tmp_path, monkeypatch, capsys, chunk):
    vocab = shared / "data" / "nano_80.json"
    cases = [
        (b"8 9 10 11 80", "token id 80 is outside the vocabulary (0..79)"),  # found before any text is out
        (b"8 -3 9 80", "token id -3 is outside"),  # the same id a whole decode names
        ("8\u3000١٠ 9".encode(), "not a token id: '١٠'"),  # a 2-byte digit cut in two
        (b"[8, true]", "not a token id: 'true'"),  # JSON true is no id either
        (b"8 " + b"9" * 25, "token id out of range: " + "9" * 25),
        (b"8 9 \xff", "standard input: not UTF-8 text (invalid start byte at byte 4)"),
        (b"8 " + b"0" * 5000, f"a word over {cli.MAX_WORD_CHARS} characters long is not a token id: '0000"),
    ]
    for stdin, message in cases:
        rc, out = decode_here(monkeypatch, tmp_path, vocab, "--chunk-ids", chunk, stdin=stdin)
        assert_clean_error(rc, capsys.readouterr().err, message)
        assert out == b""
    npy = tmp_path / "ids.npy"
    np.save(npy, np.array([8] * 100 + [80] + [9] * 100, dtype=np.uint16))
    rc, out = decode_here(monkeypatch, tmp_path, vocab, npy, "--chunk-ids", chunk)
    assert_clean_error(rc, capsys.readouterr().err, "token id 80 is outside")
    assert out == b""


def test_decode_memory_stays_flat(shared, tmp_path, monkeypatch, corpus):
    vocab = shared / "data" / "tokenizer_4096.json"
    tok = Tokenizer.load(vocab)
    ids = np.resize(np.array(tok.encode(corpus("pretrain_psycho.txt")[:300_000]), dtype=np.uint16), 1_000_000)
    npy = tmp_path / "ids.npy"
    np.save(npy, ids)
    text_ids = " ".join(map(str, ids[:100_000].tolist())).encode()
    peaks = []
    for args, stdin in [((npy,), None), ((), text_ids)]:
        rc, out = decode_here(monkeypatch, tmp_path, vocab, *args, stdin=stdin, peak=peaks)
        assert rc == 0
        assert out == tok.decode(ids if stdin is None else ids[:100_000]).encode()
    # Once all ids were read, listed and joined at once: peaks of 34 MiB and 10 MiB. Now about 1.4 MiB each.
    assert max(peaks) < 4 << 20, peaks


def test_a_mapped_ids_file_that_shrinks_is_an_error_not_a_crash(tmp_path):
    npy = tmp_path / "ids.npy"
    np.save(npy, np.arange(10_000, dtype=np.uint32))
    ids, check = cli._read_npy(str(npy))
    assert [len(p) for p in cli._pieces(ids, 4096, check)] == [4096, 4096, 1808]
    os.truncate(npy, 1000)
    # Touching the missing pages would kill the process (SIGBUS); the check comes before each piece.
    with pytest.raises(cli._Fail, match="ids.npy: shrank to 1000 bytes while being read"):
        next(cli._pieces(ids, 4096, check))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_info_reads_a_pipe_once(shared, tmp_path):
    """A JSON vocabulary through a FIFO: read once (info once opened it again to sniff
    the kind, and waited there for a second writer forever). A .bin model through a
    pipe is refused: it is memory-mapped."""
    fifo = tmp_path / "vocab"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f'cat "$1" > "$2"', "sh", shared / "data" / "nano_80.json", fifo])
    try:
        rc, out, err = run("info", fifo)
    finally:
        writer.wait(timeout=60)
    assert rc == 0 and out.startswith(f"vocabulary   {fifo} (JSON)\ntokens       80\n"), (rc, out, err)
    writer = subprocess.Popen(["sh", "-c", f'cat "$1" > "$2"', "sh", shared / "fixtures" / "sort6_f32.bin", fifo])
    try:
        rc, out, err = run("info", fifo)
    finally:
        writer.kill()
        writer.wait(timeout=60)
    assert_clean_error(rc, err, f"{fifo}: cannot read: not a regular file but a FIFO (a pipe)")


def test_control_characters_reach_the_terminal_escaped(tmp_path, capsys):
    """As nano-format's commands do: a file name or a special token holding ESC or a line
    break is shown escaped, so it can neither drive the terminal nor split a line."""
    from nano_tokenizer.tokenizer import DEFAULT_SPECIALS

    itos = list(DEFAULT_SPECIALS) + ["<|x\x1b[31mRED\n|>", "a"]
    specials = {t: i for i, t in enumerate(itos[:len(DEFAULT_SPECIALS) + 1])}
    Tokenizer(itos, specials).save(tmp_path / "ctl.json")
    rc, out, err = run_here(capsys, "info", tmp_path / "ctl.json")
    assert rc == 0 and "\x1b" not in out, err
    assert f"{len(DEFAULT_SPECIALS)} <|x\\x1b[31mRED\\n|>\n" in out
    rc, _, err = run_here(capsys, "info", tmp_path / "x\x1b[2Jy.json")
    assert_clean_error(rc, err, "x\\x1b[2Jy.json: cannot read")
    assert "\x1b" not in err
