"""What `build` leaves out and says so, and how it reads corpora: as data
preparation does (byte-order mark, CRLF, lone CR), and UTF-16 files named."""

import subprocess
import sys
from collections import Counter

import pytest

from nano_tokenizer import TokenizerError, build_vocab, cli
from nano_tokenizer.build import BuildReport, as_prepared, count_characters


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def run_here(capsys, *args):
    rc = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# 10 distinct characters: a x40, b x30, c x20, d..j once each: 97 in all.
CORPUS = ("a" * 40 + "b" * 30 + "c" * 20 + "defghij").encode()


def test_build_notes_the_characters_that_did_not_fit(tmp_path, capsys):
    corpus = write(tmp_path / "c.txt", CORPUS)
    out = tmp_path / "v.json"
    rc, _, err = run_here(capsys, "build", corpus, "--size", 7 + 3, "-o", out)
    assert rc == 0, err
    assert err.splitlines() == [
        f"10 tokens (7 special) -> {out}",
        # d..j: 7 of 97 characters
        "note: 7 of the corpus' 10 characters did not fit (7.2% of its characters will encode as <|unknown|>): "
        "--size 10 left room for 3 after 7 special tokens; raise --size",
    ]
    assert out.exists()  # the vocabulary is still written
    rc, _, err = run_here(capsys, "build", corpus, "--size", 7 + 10, "-o", out)
    assert rc == 0 and err.splitlines() == [f"17 tokens (7 special) -> {out}"]  # all fit: no note


def test_the_note_says_when_words_took_the_room(tmp_path, capsys):
    corpus = write(tmp_path / "c.txt", CORPUS)
    words = write(tmp_path / "w.txt", b"ab\nbc\ncd\n")
    out = tmp_path / "v.json"
    rc, _, err = run_here(capsys, "build", corpus, "--size", 7 + 3 + 2, "--words", words, "-o", out)
    assert rc == 0, err
    assert err.splitlines()[-1] == (
        "note: 8 of the corpus' 10 characters did not fit (27.8% of its characters, which encode as <|unknown|> "
        "wherever no word covers them): --size 12 left room for 2 after 7 special tokens and 3 words; "
        "raise --size, or fewer --words"
    )


def test_the_report_names_the_left_out_characters(tmp_path):
    corpus = write(tmp_path / "c.txt", CORPUS)
    # "c" as a one-character word has a token: it is not left out, though ranked after the room.
    words = write(tmp_path / "w.txt", b"c\n")
    report = BuildReport()
    tok = build_vocab([corpus], 7 + 1 + 2, words_file=words, report=report)
    assert list(tok.itos[7:]) == ["a", "b", "c"]
    assert report.counts == Counter(CORPUS.decode())
    assert (report.words, report.room) == (1, 2)
    assert report.left_out == tuple("defghij") and report.left_out_count == 7
    # Every corpus character that is not left out encodes as itself.
    assert tok.unk_id not in tok.encode("abc")
    assert tok.encode("d") == [tok.unk_id]
    # A character that is a special token never matches in plain text: it has no token of its own.
    report = BuildReport()
    build_vocab([corpus], 100, specials=["d"], report=report)
    assert report.left_out == ("d",)


def test_a_crlf_and_bom_corpus_builds_the_vocabulary_of_its_lf_copy(tmp_path):
    text = "第一行\n第二行 with words\n\nlast line\n"
    lf = write(tmp_path / "lf.txt", text.encode())
    crlf = write(tmp_path / "crlf.txt", b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    lone_cr = write(tmp_path / "cr.txt", b"\xef\xbb\xbf" + text.replace("\n", "\r").encode())
    for size in (100, 7 + 5):
        plain = build_vocab([lf], size)
        assert build_vocab([crlf], size) == plain
        assert build_vocab([lone_cr], size) == plain
    tok = build_vocab([crlf, lone_cr], 100)
    assert "\r" not in tok.stoi and "\ufeff" not in tok.stoi


def test_corpora_are_counted_as_data_preparation_reads_them(tmp_path):
    # nano-train's prepare opens each file with encoding="utf-8-sig" and universal newlines.
    files = [
        write(tmp_path / "a.txt", b"\xef\xbb\xbfone\r\ntwo\rthree\r\r\n\r"),
        write(tmp_path / "b.txt", "\ufeffa BOM at the start of each file \ufeff but one inside stays\r".encode()),
    ]
    expected = Counter()
    for path in files:
        with open(path, encoding="utf-8-sig") as f:
            expected.update(f.read())
    assert count_characters(files) == expected
    assert expected["\ufeff"] == 1 and "\r" not in expected


def test_a_crlf_cut_between_two_pieces_is_one_line_break():
    assert "".join(as_prepared(["\ufeffa\r", "\nb\r", "c\r", "\r", "\n\ufeff", "d\r"])) == "a\nb\nc\n\n\ufeffd\n"
    assert "".join(as_prepared(["", "\ufeffx"])) == "x"  # the first character, whichever piece holds it


@pytest.mark.parametrize("codec, shown", [
    ("utf-16-le", "FF FE"), ("utf-16-be", "FE FF"), ("utf-32-le", "FF FE 00 00"), ("utf-32-be", "00 00 FE FF"),
])
def test_utf16_files_are_named(tmp_path, capsys, codec, shown):
    encoding = codec[:6].upper()
    utf16 = write(tmp_path / "u16.txt", "\ufeffhello\r\n你好\r\n".encode(codec))
    corpus = write(tmp_path / "c.txt", b"hello")
    why = (f"starts with a {encoding} byte order mark ({shown}): a {encoding} file, not UTF-8; "
           f"convert it (e.g. iconv -f {encoding} -t UTF-8)")
    with pytest.raises(TokenizerError) as e:
        build_vocab([corpus, utf16], 100)
    assert str(e.value) == f"{utf16}: {why}"
    with pytest.raises(TokenizerError) as e:
        build_vocab([corpus], 100, words_file=utf16)
    assert str(e.value) == f"{utf16}: {why}"

    vocab = tmp_path / "v.json"
    build_vocab([corpus], 100).save(vocab)
    for args in (("build", utf16, "--size", 100, "-o", tmp_path / "o.json"),
                 ("build", corpus, "--words", utf16, "--size", 100, "-o", tmp_path / "o.json"),
                 ("encode", vocab, utf16)):
        rc, out, err = run_here(capsys, *args)
        assert (rc, out, err) == (1, "", f"nano-tokenizer: error: {utf16}: {why}\n")
    assert not (tmp_path / "o.json").exists()
    proc = subprocess.run([sys.executable, "-m", "nano_tokenizer", "encode", str(vocab), "-"],
                          input=utf16.read_bytes(), capture_output=True, timeout=120)
    assert (proc.returncode, proc.stdout) == (1, b"")
    assert proc.stderr.decode() == f"nano-tokenizer: error: standard input: {why}\n"


def test_other_bad_first_bytes_keep_their_message(tmp_path):
    # FF then something else, and a lone FF: not a byte order mark, so the byte offset as before.
    for data in (b"\xff\x00h\x00", b"\xff", b"\xfe"):
        bad = write(tmp_path / "bad.txt", data)
        with pytest.raises(TokenizerError, match=r"bad.txt: not UTF-8 text \(invalid start byte at byte 0\)"):
            build_vocab([bad], 100)
    # A UTF-16 mark further in is a bad byte at its offset.
    bad = write(tmp_path / "bad.txt", b"ok\xff\xfe")
    with pytest.raises(TokenizerError, match=r"bad.txt: not UTF-8 text \(invalid start byte at byte 2\)"):
        build_vocab([bad], 100)


def test_a_words_file_with_a_byte_order_mark_keeps_its_first_word(tmp_path):
    """Notepad writes UTF-8 with a byte order mark; it made the first word '\\ufeffword', which
    no text ever matches."""
    from nano_tokenizer.build import read_words

    (tmp_path / "w.txt").write_bytes("\ufeff心理学\r\n意识\n".encode("utf-8"))
    assert list(read_words(tmp_path / "w.txt")) == ["心理学", "意识"]
    (tmp_path / "inner.txt").write_bytes("a\n\ufeffb\n".encode("utf-8"))  # only the file's first character
    assert list(read_words(tmp_path / "inner.txt")) == ["a", "\ufeffb"]
