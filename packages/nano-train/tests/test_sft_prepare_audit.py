"""prepare sft after an audit of its records and messages: a key given twice, a record
in both forms, lines ended by a lone CR, the notes on the validation split and the
error when no training sample is left, the lines --skip_bad skips, and the progress
bar on a terminal when prepare stops with an error."""

import io
import json
import re
import sys

import pytest

from nano_train import prepare as prepare_cmd
from nano_train.data import DataError, _jsonl_lines, prepare_sft, sft_messages

TOKENIZER = "data/tokenizer_16384_v2.json"


def run(capsys, *argv):
    rc = prepare_cmd.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def sft(capsys, shared_file, out_dir, *args):
    return run(capsys, "sft", "--quiet", "--tokenizer", shared_file(TOKENIZER), "--out_dir", out_dir,
               "--block_size", 20, *args)


def record(q, a):
    return json.dumps({"question": q, "answer": a})


# ---------------------------------------------------------------------------
# a field given twice, or both forms of a record


DUPLICATE = '{"question": "q", "answer": "first", "answer": "second"}'
BOTH = ('{"question": "q2", "answer": "a2", "messages": [{"role": "user", "content": "other"}, '
        '{"role": "assistant", "content": "thing"}]}')


def test_a_key_given_twice_is_a_bad_line(tmp_path, shared_file, capsys):
    """(was: trained on "second", "first" dropped without a word)"""
    src = tmp_path / "dup.jsonl"
    src.write_text(record("ok", "fine") + "\n" + DUPLICATE + "\n", encoding="utf-8")
    rc, out, err = sft(capsys, shared_file, tmp_path / "d", src)
    assert (rc, out) == (2, "")
    assert err == (f"error: {src}:2: not valid JSON (duplicate key 'answer': it appears twice in one JSON object) "
                   "(pass --skip_bad to skip bad lines)\n")
    # (also inside a message)
    src.write_text('{"messages": [{"role": "user", "content": "a", "content": "b"}, '
                   '{"role": "assistant", "content": "c"}]}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"dup.jsonl:1: not valid JSON \(duplicate key 'content'"):
        prepare_sft([src], shared_file(TOKENIZER), tmp_path / "d", block_size=20, progress=False)


def test_a_record_with_both_forms_is_a_bad_line(tmp_path, shared_file, capsys):
    """(was: the messages trained on, question and answer dropped without a word)"""
    with pytest.raises(DataError, match=r"^f.jsonl:4: the record gives 'messages' and also 'question', 'answer'; "
                                        r"give one form, not both"):
        sft_messages(json.loads(BOTH), "f.jsonl:4")
    with pytest.raises(DataError, match=r"^x: the record gives 'messages' and also 'answer';"):
        sft_messages({"answer": "a", "messages": [{"role": "user", "content": "q"},
                                                  {"role": "assistant", "content": "a"}]}, "x")
    src = tmp_path / "dup2.jsonl"
    src.write_text(DUPLICATE + "\n" + BOTH + "\n" + record("q3", "a3") + "\n", encoding="utf-8")
    rc, out, err = sft(capsys, shared_file, tmp_path / "d", "--skip_bad", src)
    assert rc == 0 and "1 record -> 1 sample" in out and "skipped: 2 bad lines" in out, out


# ---------------------------------------------------------------------------
# line ends: \n, \r\n and a lone \r


MIXED = (record("q1", "a1") + "\r\n" + record("q2", "a2") + "\r" + record("q3", "a3") + "\r\n"
         + '{"question": "q4", "answer": 4}\r\n')


def test_a_lone_cr_ends_a_line_as_in_prepare_pretrain(tmp_path, shared_file, capsys):
    """(was: lines 2 and 3 read as one, "Extra data" at line 2, and the lines after it misnumbered)"""
    src = tmp_path / "mixcr.jsonl"
    src.write_bytes(MIXED.encode())
    rc, out, err = sft(capsys, shared_file, tmp_path / "d", src)
    assert rc == 2 and err.startswith(f"error: {src}:4: expected string fields 'question' and 'answer'"), err
    rc, out, err = sft(capsys, shared_file, tmp_path / "d", "--skip_bad", src)
    assert rc == 0 and "3 records -> 3 samples" in out and "skipped: 1 bad line," in out, out


def reference_lines(data: bytes) -> list[bytes]:
    """The lines of data as the text reader splits them (universal newlines), without their ends."""
    lines = re.split(rb"\r\n|\r|\n", data)
    return lines[:-1] if lines[-1] == b"" else lines


@pytest.mark.parametrize("piece_bytes", [1, 2, 3, 5, 8, 1 << 20])
def test_lines_are_split_alike_wherever_a_piece_ends(piece_bytes):
    """A \\r\\n split between two pieces is one line end; every byte is counted once."""
    data = b"ab\r\ncd\r\re\n\nf\r\n\r\ngh\rij"
    got = list(_jsonl_lines(io.BytesIO(data), 100, piece_bytes))
    assert [(n, raw) for n, raw, _ in got] == list(enumerate(reference_lines(data), 1))
    assert sum(size for *_, size in got) == len(data)


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
def test_the_line_limit_counts_the_line_without_its_end(end):
    """A line of `limit` bytes is read, one byte more is not (was: with CRLF ends, a line of
    `limit` bytes was too long: its \\r counted)."""
    data = b"x" * 10 + end + b"y" * 11 + end + b"z" + end
    got = list(_jsonl_lines(io.BytesIO(data), 10, 4))
    assert got == [(1, b"x" * 10, 10 + len(end)), (2, None, 11 + len(end)), (3, b"z", 1 + len(end))]


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
def test_a_record_as_long_as_the_limit_is_read_whatever_its_line_end(tmp_path, shared_file, end):
    """(was: with CRLF ends, its \r counted: a bad line; with lone CRs, the whole file one line)"""
    fits, over = record("q", "a" * 40), record("q", "b" * 41)
    src = tmp_path / "limit.jsonl"
    src.write_text(fits + end + over + end, encoding="utf-8", newline="")
    s = prepare_sft([src], shared_file(TOKENIZER), tmp_path / "d", block_size=100, skip_bad=True,
                    max_line_bytes=len(fits), progress=False)
    assert (s.records, s.bad_lines) == (1, 1)
    with pytest.raises(DataError, match=rf"limit.jsonl:2: the line is {len(over) + len(end)} bytes, more than "
                                        rf"the {len(fits)} a record may be"):
        prepare_sft([src], shared_file(TOKENIZER), tmp_path / "e", block_size=100, max_line_bytes=len(fits),
                    progress=False)


# ---------------------------------------------------------------------------
# no validation sample, no training sample


def test_a_val_fraction_that_drew_no_sample_is_named_as_given(tmp_path, shared_file, capsys):
    """(was: "--val_fraction 0 is the default for SFT ... --val_fraction 0.05 holds some out",
    with --val_fraction 0.05 given)"""
    src = tmp_path / "one.jsonl"
    src.write_text(record("q1", "a1") + "\n", encoding="utf-8")
    rc, out, err = sft(capsys, shared_file, tmp_path / "d", "--val_fraction", 0.05, src)
    assert rc == 0 and "(train 1, val 0)" in out, out
    assert "is the default" not in out
    assert ("note: no validation samples: --val_fraction 0.05 drew no sample out of 1 (each is held out by a "
            "hash of its content, so few samples may give none)") in err, err
    rc, out, err = sft(capsys, shared_file, tmp_path / "e", src)
    assert "note: no validation samples (--val_fraction 0 is the default for SFT)" in err, err


def test_no_training_sample_gives_the_counts(tmp_path, shared_file, capsys):
    """(was: "every line was bad, too long ... or held out", whichever it was)"""
    src = tmp_path / "one.jsonl"
    src.write_text(record("q1", "a1") + "\n", encoding="utf-8")
    rc, out, err = sft(capsys, shared_file, tmp_path / "d", "--val_fraction", 0.5, src)
    assert (rc, out) == (2, "")
    assert err == (f"error: no training samples from {src}: 1 record (0 too long for block_size 20, 1 held out by "
                   "--val_fraction 0.5) and 0 bad lines\n")

    src.write_text(record("q" * 200, "a") + "\n" + record("w" * 200, "b") + "\n{\n", encoding="utf-8")
    rc, out, err = sft(capsys, shared_file, tmp_path / "d", "--skip_bad", "--too_long", "truncate", src)
    assert err.endswith(f"error: no training samples from {src}: 2 records (2 too long for block_size 20 or left "
                        "no answer token when truncated, 0 held out by --val_fraction 0) and 1 bad line\n"), err
    rc, out, err = sft(capsys, shared_file, tmp_path / "d", "--skip_bad", src)
    assert err.endswith(f"error: no training samples from {src}: 2 records (2 too long for block_size 20, 0 held "
                        "out by --val_fraction 0) and 1 bad line\n"), err


@pytest.mark.parametrize("text", ["", "\n  \r\n\t\n"])
def test_a_file_without_records_says_so(tmp_path, shared_file, capsys, text):
    src = tmp_path / "blank.jsonl"
    src.write_text(text, encoding="utf-8")
    rc, out, err = sft(capsys, shared_file, tmp_path / "d", src)
    assert (rc, out, err) == (2, "", f"error: no training samples: {src} holds no records (empty, or blank "
                                     "lines only)\n")


# ---------------------------------------------------------------------------
# --skip_bad names what it skips


def test_skip_bad_names_the_first_ten_lines_it_skips(tmp_path, shared_file, capsys):
    """(was: only the count in the summary)"""
    src = tmp_path / "bad.jsonl"
    lines = [record("q", "a")] + ['{"question": %d}' % k for k in range(12)] + ["{"]
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rc, out, err = sft(capsys, shared_file, tmp_path / "d", "--skip_bad", src)  # (--quiet: the notes stay)
    assert rc == 0 and "skipped: 13 bad lines" in out, out
    why = "expected string fields 'question' and 'answer' (or a 'messages' list)"
    no_val = ("note: no validation samples (--val_fraction 0 is the default for SFT): a run on this data reports "
              "no validation loss and writes no best.pt; --val_fraction 0.05 holds some out")  # (the summary's)
    assert err.splitlines() == [f"note: {src}:{n}: {why} (skipped)" for n in range(2, 12)] + \
        ["note: 3 more bad lines skipped", no_val]
    # no more than ten: no second note
    src.write_text("\n".join(lines[:5]) + "\n", encoding="utf-8")
    rc, out, err = sft(capsys, shared_file, tmp_path / "e", "--skip_bad", src)
    assert rc == 0 and err.splitlines() == [f"note: {src}:{n}: {why} (skipped)" for n in range(2, 6)] + [no_val]


# ---------------------------------------------------------------------------
# the progress bar on a terminal, when prepare stops with an error


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("kind", ["sft", "pretrain"])
def test_an_error_starts_on_a_line_of_its_own_below_the_bar(tmp_path, shared_file, monkeypatch, kind):
    """(was: "sft [####....] 50.0% ...\\rerror: ...", the error written over the bar, its end left showing)"""
    if kind == "sft":
        src = tmp_path / "bad.jsonl"
        src.write_text((record("q", "a") + "\n") * 2000 + "{\n", encoding="utf-8")
        args = ["--block_size", "20"]
    else:
        src = tmp_path / "bad.txt"
        src.write_bytes(b"some words of text\n" * 50_000 + b"\xff\n")
        args = []
    stderr = Terminal()
    monkeypatch.setattr(sys, "stderr", stderr)
    rc = prepare_cmd.main([kind, "--tokenizer", str(shared_file(TOKENIZER)), "--out_dir", str(tmp_path / "d"),
                           *args, str(src)])
    err = stderr.getvalue()
    assert rc == 2 and err.startswith("sft [" if kind == "sft" else "encode ["), err[:200]  # the bar was drawn
    last = err.split("\n")[-2]
    assert last.startswith("error: ") and "\r" not in last, repr(err[-400:])
