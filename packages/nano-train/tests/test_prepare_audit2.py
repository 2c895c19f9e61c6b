"""prepare after the second data audit: UTF-16/UTF-32 files without a byte-order mark,
the line of a bad byte in a file with CR line ends, a file reached through a folder
and an argument, the remedy the validation warning names for shuffled data, and a
prepare --overwrite killed while its files move into place."""

import io
import json
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nano_tokenizer import Tokenizer

from nano_train import prepare as prepare_cmd
from nano_train.data import MOVING_FILE, DataError, Dataset, _dataset_files, prepare_pretrain


def run(capsys, *argv):
    rc = prepare_cmd.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def words_text(lines=20000, seed=0):
    """The audit's corpus: lines of twelve words from a small ASCII vocabulary."""
    r = random.Random(seed)
    w = "the of and radio antenna signal band".split()
    return "\n".join(" ".join(r.choice(w) for _ in range(12)) for _ in range(lines))


# ---------------------------------------------------------------------------
# UTF-16 and UTF-32 without a byte-order mark


@pytest.mark.parametrize("encoding, name", [("utf-16-le", "UTF-16LE"), ("utf-16-be", "UTF-16BE"),
                                            ("utf-32-le", "UTF-32LE"), ("utf-32-be", "UTF-32BE")])
def test_utf16_or_utf32_without_a_byte_order_mark_is_refused(tmp_path, shared_file, capsys, monkeypatch,
                                                             encoding, name):
    """(was: accepted; every ASCII character of UTF-16LE text is valid UTF-8 followed by a
    NUL, which tokenizer_16384_v2 has as token 7: a dataset half NULs, without a warning)"""
    monkeypatch.chdir(tmp_path)
    data = words_text().encode(encoding)
    Path("en16.txt").write_bytes(data)
    rc, out, err = run(capsys, "pretrain", "--quiet", "--tokenizer", shared_file("data/tokenizer_16384_v2.json"),
                       "--out_dir", "o16", "en16.txt")
    head = data[:1 << 16]
    assert (rc, out) == (2, "")
    assert err == (f"error: en16.txt: not UTF-8 text: {head.count(0):,} of its first {len(head):,} bytes are NUL, "
                   f"as in a {name} file without a byte order mark (or a binary file); if it is {name} text, "
                   f"convert it to UTF-8 (e.g. iconv -f {name} -t UTF-8 en16.txt > en16.utf8.txt)\n")
    assert not Path("o16").exists()


def test_utf16_text_of_mostly_other_characters_is_refused_too(tmp_path, shared_file):
    """Chinese text with some ASCII (a space, a newline) in UTF-16LE: far fewer NULs, all at odd offsets."""
    src = tmp_path / "zh.txt"
    src.write_bytes(("中文的信号天线，" * 5 + "ok\n").encode("utf-16-le") * 500)
    with pytest.raises(DataError, match=r"as in a UTF-16LE file without a byte order mark .*iconv -f UTF-16LE"):
        prepare_pretrain([src], shared_file("data/tokenizer_16384_v2.json"), tmp_path / "d", progress=False)


@pytest.mark.parametrize("encoding, name", [("utf-16-le", "UTF-16LE"), ("utf-16-be", "UTF-16BE")])
def test_utf16_chinese_full_of_characters_whose_low_byte_is_0_is_named_right(tmp_path, shared_file, encoding, name):
    """一 (U+4E00), 开 (U+5F00): each puts a NUL where the other byte order has it, so the
    pattern of NULs alone named UTF-16LE text UTF-16BE (and an iconv that makes nonsense)."""
    src = tmp_path / "zh.txt"
    src.write_bytes(("一个人的一生一定要有一次说走就走的旅行。一开始，一切都很好。" * 600).encode(encoding))
    with pytest.raises(DataError, match=rf"as in a {name} file without a byte order mark .*iconv -f {name} -t"):
        prepare_pretrain([src], shared_file("data/tokenizer_16384_v2.json"), tmp_path / "d", progress=False)


@pytest.mark.parametrize("skip_bad", [False, True])
def test_a_utf16_jsonl_file_without_a_byte_order_mark_is_refused(tmp_path, shared_file, capsys, skip_bad):
    """(was: every line a bad one, or with --skip_bad "no training samples")"""
    src = tmp_path / "chat.jsonl"
    src.write_bytes('{"question": "q", "answer": "a"}\n'.encode("utf-16-le") * 20)
    rc, _, err = run(capsys, "sft", "--tokenizer", shared_file("data/nano_80.json"), "--out_dir", tmp_path / "d",
                     "--block_size", 16, "--quiet", *(["--skip_bad"] if skip_bad else []), src)
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {src}: not UTF-8 text: ")
    assert "as in a UTF-16LE file without a byte order mark" in err


def test_a_few_nuls_in_utf8_text_stay_text(tmp_path, shared_file):
    """A guard: NULs scattered in real text, or a run of them, are not UTF-16's pattern."""
    text = words_text(3000, seed=1)
    cut = len(text) // 3
    src = tmp_path / "t.txt"
    src.write_text("a\0b\0c " + text[:cut] + "\0" * 4096 + text[cut:] + "\0", encoding="utf-8")
    tok = shared_file("data/tokenizer_16384_v2.json")  # (NUL is its token 7)
    prepare_pretrain([src], tok, tmp_path / "d", val_fraction=0.0, shuffle=False, doc_mode="file", progress=False)
    meta = json.loads((tmp_path / "d" / "meta.json").read_text(encoding="utf-8"))
    ids = np.concatenate([np.fromfile(tmp_path / "d" / s["file"], dtype=meta["dtype"])
                          for s in meta["shards"]["train"]])
    assert Tokenizer.load(tok).decode(ids.tolist()) == src.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------
# The line of the first bad byte


def universal_line(data: bytes, offset: int) -> int:
    """The line that byte `offset` is on as Python's text reader (prepare's) splits lines."""
    return io.TextIOWrapper(io.BytesIO(data[:offset]), encoding="latin-1", newline=None).read().count("\n") + 1


def test_the_bad_byte_of_a_file_with_cr_line_ends_is_on_its_line(tmp_path, shared_file, capsys):
    """(was: cr_bad.txt:1:, counting \\n only, where prepare reads a lone \\r as a line end)"""
    lines = [f"line {i} ok" for i in range(1, 1001)]
    data = ("\r".join(lines[:499]) + "\r").encode() + b"bad \xff here\r" + "\r".join(lines[500:]).encode()
    src = tmp_path / "cr_bad.txt"
    src.write_bytes(data)
    rc, _, err = run(capsys, "pretrain", "--quiet", "--val_fraction", 0, "--tokenizer",
                     shared_file("data/tokenizer_4096.json"), "--out_dir", tmp_path / "o", src)
    bad = data.index(b"\xff")
    assert universal_line(data, bad) == 500
    assert (rc, err) == (2, f"error: {src}:500: not UTF-8 text (invalid start byte at byte {bad}); "
                            "convert it to UTF-8 first\n")


@pytest.mark.parametrize("after", [b"", b"\n", b"\n\n"])
def test_a_crlf_across_the_scans_read_boundary_is_one_line_end(tmp_path, shared_file, after):
    """Lines of every kind of ending, then a line of 64 KiB ending in \\r: the scan reads at
    most that much at a time, so a \\r\\n there is split in two (\\r then \\n), and
    the \\n completes it; then the bad byte."""
    ends = [b"\r\n", b"\r", b"\n"]
    start = b"".join(b"line %d" % i + ends[i % 3] for i in range(300))  # (the last one ends in \n)
    data = start + b"x" * ((1 << 16) - 1) + b"\r" + after + b"ok\rnext\r\n\r" + b"bad \xff\n"
    src = tmp_path / "mixed.txt"
    src.write_bytes(data)
    bad = data.index(b"\xff")
    with pytest.raises(DataError) as e:
        prepare_pretrain([src], shared_file("data/tokenizer_4096.json"), tmp_path / "o", val_fraction=0.0,
                         progress=False)
    assert str(e.value).startswith(f"{src}:{universal_line(data, bad)}: not UTF-8 text (invalid start byte at "
                                   f"byte {bad});")


# ---------------------------------------------------------------------------
# One file by a folder and an argument


def test_a_file_in_a_folder_and_given_again_is_named_as_typed(tmp_path, shared_file, capsys, monkeypatch):
    """(was: "inputs corpus/b.txt and corpus/b.txt are the same file", which reads as a typo)"""
    monkeypatch.chdir(tmp_path)
    Path("corpus/sub").mkdir(parents=True)
    Path("corpus/b.txt").write_text("hello\n", encoding="utf-8")
    Path("corpus/sub/c.txt").write_text("world\n", encoding="utf-8")
    base = ["pretrain", "--quiet", "--val_fraction", 0, "--tokenizer", shared_file("data/nano_80.json"),
            "--out_dir", "o"]
    for inputs, said in (
            (["corpus", "corpus/b.txt"], "corpus/b.txt (in folder corpus) and corpus/b.txt"),
            (["corpus/b.txt", "corpus/"], "corpus/b.txt and corpus/b.txt (in folder corpus/)"),
            (["corpus", "corpus/sub"],
             "corpus/sub/c.txt (in folder corpus) and corpus/sub/c.txt (in folder corpus/sub)")):
        rc, _, err = run(capsys, *base, *inputs)
        assert (rc, err) == (2, f"error: inputs {said} are the same file; give each file once\n"), inputs
    assert not Path("o").exists()


# ---------------------------------------------------------------------------
# The validation warning's remedy


def test_the_validation_warning_of_shuffled_data_names_chunk_tokens(tmp_path, shared_file):
    """(was: "pass a larger --val_fraction", which cannot lengthen a chunk: shuffled,
    each chunk is a piece of its own)"""
    src = tmp_path / "ar.txt"
    src.write_text(shared_file("data/pretrain_amateur_radio.txt").read_text(encoding="utf-8")[:10000],
                   encoding="utf-8")
    tok = shared_file("data/tokenizer_16384_v2.json")
    shuffled = prepare_pretrain([src], tok, tmp_path / "a", chunk_tokens=500, progress=False)
    line = [s for s in shuffled.text().splitlines() if s.startswith("warning: the validation split")]
    assert line == [f"warning: the validation split's longest chunk holds {shuffled.longest_val_piece} tokens: a "
                    f"model with block_size {shuffled.longest_val_piece} or more cannot validate on it (pass a larger "
                    "--chunk_tokens (default 8192), or train with --eval_iters=0)"]
    # in corpus order a larger share held out can join neighbouring chunks: both remedies hold
    ordered = prepare_pretrain([src], tok, tmp_path / "b", chunk_tokens=500, val_fraction=0.2, shuffle=False,
                               progress=False)
    assert ("cannot validate on it (pass a larger --chunk_tokens or --val_fraction, or train with "
            "--eval_iters=0)") in ordered.text()


# ---------------------------------------------------------------------------
# prepare --overwrite killed while the files move in

# Runs prepare with os.replace and os.unlink counting the calls that touch a file directly
# in OUT; the process kills itself (SIGKILL: nothing runs after it, as after kill -9 or a
# power cut) as call number KILL_AT begins, or with KILL_AT "meta" as the call that puts
# OUT/meta.json in place begins. Otherwise it runs through and writes the count to COUNT.
KILLER = """
import os, signal, sys

out, kill_at, count_file = os.path.abspath(sys.argv[1]), sys.argv[2], sys.argv[3]
calls = 0


def counted(real, name):
    def op(*args, **kwargs):
        global calls
        paths = [os.path.abspath(a) for a in args if isinstance(a, (str, os.PathLike))]
        if "dir_fd" not in kwargs and any(os.path.dirname(p) == out for p in paths):
            calls += 1
            if str(calls) == kill_at or (kill_at == "meta" and name == "replace"
                                         and paths[-1] == os.path.join(out, "meta.json")):
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return op


os.replace, os.unlink = counted(os.replace, "replace"), counted(os.unlink, "unlink")
from nano_train.prepare import main

rc = main(sys.argv[4:])
with open(count_file, "w") as f:
    f.write(str(calls))
sys.exit(rc)
"""


@pytest.fixture
def kill_setup(tmp_path, shared_file):
    """(run_killer, old args, new args, the new dataset's content digest): the old dataset
    has three training shards, the new one (another seed) one, so the moves replace some
    files and remove others."""
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    text = tmp_path / "t.txt"
    text.write_text(words_text(60, seed=3), encoding="utf-8")
    tok = shared_file("data/nano_80.json")
    old = ["pretrain", "--quiet", "--tokenizer", tok, "--chunk_tokens", 512, "--shard_tokens", 1024, "--seed", 1, text]
    new = ["pretrain", "--quiet", "--tokenizer", tok, "--chunk_tokens", 512, "--seed", 2, text]
    assert prepare_cmd.main([str(a) for a in new + ["--out_dir", tmp_path / "ref"]]) == 0

    def run_killer(out, kill_at):
        """prepare NEW --overwrite into out, killed at kill_at: (returncode, stderr, calls counted or None)."""
        count = tmp_path / "count"
        count.unlink(missing_ok=True)
        p = subprocess.run([sys.executable, str(killer), str(out), str(kill_at), str(count),
                            *map(str, new), "--out_dir", str(out), "--overwrite"],
                           capture_output=True, text=True, timeout=120)
        return p.returncode, p.stderr, int(count.read_text()) if count.exists() else None

    return run_killer, old, new, Dataset(tmp_path / "ref").meta["content"]["sha256"]


def dataset_is_whole(out, digest):
    """out holds the dataset of that content digest and nothing else: no build folder, lock or list left."""
    ds = Dataset(out)
    assert ds.meta["content"]["sha256"] == digest
    listed = {"meta.json", "tokenizer.json"} | {s["file"] for split in ds.meta["shards"].values() for s in split}
    assert {p.name for p in out.iterdir()} == listed


def fresh_old(out, old, capsys):
    """out holding the old dataset (three training shards), and nothing else."""
    if out.exists():
        shutil.rmtree(out)
    assert prepare_cmd.main([str(a) for a in old + ["--out_dir", out]]) == 0
    capsys.readouterr()
    assert {"train_001.bin", "train_002.bin"} <= {p.name for p in out.iterdir()}
    return Dataset(out).meta["content"]["sha256"]


@pytest.mark.skipif(sys.platform == "win32", reason="no SIGKILL there")
@pytest.mark.parametrize("overwrite", [True, False])
def test_a_prepare_killed_before_meta_json_is_in_is_replaced_by_the_next(tmp_path, kill_setup, capsys, overwrite):
    """The audit's case: killed just before the new meta.json is put in place (was: neither
    training nor prepare --overwrite took the folder, "tokenizer.json is in the way ...
    there is no meta.json"). The next prepare replaces what is left, with --overwrite or,
    as there is no dataset left to protect, without."""
    run_killer, old, new, new_digest = kill_setup
    out = tmp_path / "pk"
    fresh_old(out, old, capsys)
    rc, err, _ = run_killer(out, "meta")
    assert rc == -signal.SIGKILL, err
    assert not (out / "meta.json").exists()
    with pytest.raises(DataError, match="has no meta.json"):
        Dataset(out)
    rc, _, err = run(capsys, *new, "--out_dir", out, *(["--overwrite"] if overwrite else []))
    assert rc == 0, err
    assert "note: removed .prepare." in err  # the killed run's build folder
    dataset_is_whole(out, new_digest)


@pytest.mark.skipif(sys.platform == "win32", reason="no SIGKILL there")
def test_a_prepare_overwrite_killed_at_any_point_leaves_one_dataset_or_one_the_next_replaces(
        tmp_path, kill_setup, capsys):
    """Killed as each rename or removal in the folder begins: the folder holds the old
    dataset whole, or the new one whole, or no meta.json; then the next prepare
    (--overwrite, and without it where there is no meta.json) gives the new dataset and
    leaves nothing else behind."""
    run_killer, old, new, new_digest = kill_setup
    out = tmp_path / "pk"
    fresh_old(out, old, capsys)
    rc, err, calls = run_killer(out, 0)  # a run through, to count the calls
    assert rc == 0 and calls >= 5, err
    dataset_is_whole(out, new_digest)
    seen = set()
    for kill_at in range(1, calls + 1):
        for overwrite in (True, False):
            old_digest = fresh_old(out, old, capsys)
            rc, err, _ = run_killer(out, kill_at)
            assert rc == -signal.SIGKILL, (kill_at, err)
            if (out / "meta.json").exists():  # killed before the old one went, or after the new one came
                digest = Dataset(out).meta["content"]["sha256"]
                assert digest in (old_digest, new_digest), kill_at
                seen.add("old" if digest == old_digest else "new")
                if not overwrite:
                    rc, _, err = run(capsys, *new, "--out_dir", out)
                    assert rc == 2 and "already holds a prepared dataset" in err, (kill_at, err)
                    continue
            else:
                seen.add("none")
                with pytest.raises(DataError, match="has no meta.json"):
                    Dataset(out)
            rc, _, err = run(capsys, *new, "--out_dir", out, *(["--overwrite"] if overwrite else []))
            assert rc == 0, (kill_at, overwrite, err)
            dataset_is_whole(out, new_digest)
    assert seen == {"old", "new", "none"}


def test_the_list_of_moved_files_counts_only_without_meta_json_and_only_plain_names(tmp_path):
    """Without a meta.json the names MOVING_FILE lists are a dataset's, but only plain file
    names (prepare removes them: never one in another folder); with a meta.json its list
    is the dataset's, and a stale MOVING_FILE adds nothing."""
    out = tmp_path / "d"
    out.mkdir()
    (out / MOVING_FILE).write_text(json.dumps({"files": ["train_000.bin", "../x.bin", "a/b.bin", "..", 7]}))
    assert _dataset_files(out) == {"train_000.bin"}
    (out / "meta.json").write_text(json.dumps({"shards": {"train": [{"file": "train_001.bin"}]}}))
    assert _dataset_files(out) == {"meta.json", "tokenizer.json", "train_001.bin"}
    (out / MOVING_FILE).write_text("{not json")
    (out / "meta.json").unlink()
    assert _dataset_files(out) == set()


# ---------------------------------------------------------------------------
# After the review of the audit's fixes: the list of moved files names only a dataset's
# files, and the NUL patterns are those the encodings really write


def test_a_name_in_the_list_of_moved_files_that_no_dataset_has_is_not_removed(tmp_path, shared_file, capsys):
    """(was: prepare deleted notes.txt, any plain name .prepare.moving.json listed)"""
    out = tmp_path / "u"
    out.mkdir()
    (out / "notes.txt").write_text("my notes\n")
    (out / MOVING_FILE).write_text(json.dumps({"files": ["notes.txt"]}))
    text = tmp_path / "a.txt"
    text.write_text(words_text(300), encoding="utf-8")
    rc, _, err = run(capsys, "pretrain", "--quiet", "--tokenizer", shared_file("data/nano_80.json"),
                     "--chunk_tokens", 512, "--out_dir", out, text)
    assert rc == 0, err
    assert (out / "notes.txt").read_text() == "my notes\n"
    assert not (out / MOVING_FILE).exists()


def test_the_list_of_moved_files_counts_only_names_a_datasets_file_can_have(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    dataset_names = ["meta.json", "tokenizer.json", "train_000.bin", "val_1234.bin", "sft_train.bin",
                     "sft_val_mask.bin", "s2s_train_x.bin", "s2s_val_mask.bin"]
    others = ["notes.txt", "train.bin", "train_00.bin", "sft_test.bin", "s2s_train_z.bin", ".bashrc", "meta.json~"]
    (out / MOVING_FILE).write_text(json.dumps({"files": dataset_names + others}))
    assert _dataset_files(out) == set(dataset_names)


def test_a_file_in_the_way_with_a_list_of_moved_files_but_no_meta_json_says_so(tmp_path, shared_file, capsys):
    """(was: "its meta.json does not list it", with no meta.json there)"""
    out = tmp_path / "u"
    out.mkdir()
    (out / "tokenizer.json").write_text("{}")
    (out / "train_000.bin").write_bytes(b"mine")
    (out / MOVING_FILE).write_text(json.dumps({"files": ["tokenizer.json"]}))
    text = tmp_path / "a.txt"
    text.write_text(words_text(300), encoding="utf-8")
    rc, out_text, err = run(capsys, "pretrain", "--quiet", "--tokenizer", shared_file("data/nano_80.json"),
                            "--chunk_tokens", 512, "--out_dir", out, text)
    assert (rc, out_text) == (2, "")
    assert err == (f"error: {out / 'train_000.bin'} is in the way: the new dataset has a file of that name, and it "
                   f"is not a file of a dataset in {out} (there is no meta.json, and .prepare.moving.json, left by "
                   f"an interrupted prepare, does not list it); move it away or choose another --out_dir\n")
    assert (out / "train_000.bin").read_bytes() == b"mine"


ZH = "中文的信号天线，" * 5 + "ok\n"
EMOJI = "🎉👍🔥💯" * 300


@pytest.mark.parametrize("text, encoding, name", [
    (EMOJI, "utf-32-le", "UTF-32LE"),  # (was: called UTF-16LE, as was every UTF-32 text beyond U+FFFF)
    (EMOJI, "utf-32-be", "UTF-32BE"),
    (ZH * 500, "utf-16-le", "UTF-16LE"),  # (guards: Chinese with a little ASCII, in every encoding)
    (ZH * 500, "utf-16-be", "UTF-16BE"),
    (ZH * 500, "utf-32-le", "UTF-32LE"),
    (ZH * 500, "utf-32-be", "UTF-32BE"),
])
def test_utf16_or_utf32_text_beyond_ascii_is_named_for_its_encoding(tmp_path, shared_file, text, encoding, name):
    src = tmp_path / "e.txt"
    src.write_bytes(text.encode(encoding))
    with pytest.raises(DataError, match=rf"as in a {name} file without a byte order mark .*iconv -f {name} -t"):
        prepare_pretrain([src], shared_file("data/tokenizer_16384_v2.json"), tmp_path / "d", progress=False)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("data", [
    # records ending (or starting) with a NUL: one NUL at one offset of every 4 (was: refused as UTF-16LE/BE)
    b"".join(f"{i % 1000:03d}\0".encode() for i in range(4000)),
    b"".join(f"\0{i % 1000:03d}".encode() for i in range(4000)),
    b"".join(f"{i % 100:02d}\0\1".encode() for i in range(4000)),
    # (guards: real UTF-8 text with a run of NULs)
    (ZH * 300 + "\0" * 4096 + ZH * 300 + "end").encode(),  # (no line end last: not part of the document)
    ("日本語のテキストです。絵文字🎉も少し。\n" * 300 + "\0" * 4095 + "カタカナ\n" * 300 + "end").encode(),
    (EMOJI + "\0" * 333 + "🎉x" * 300).encode(),
], ids=["records-nul-last", "records-nul-first", "records-nul-third", "chinese", "japanese", "emoji"])
def test_utf8_text_with_nuls_not_where_utf16_or_utf32_has_them_stays_text(tmp_path, shared_file, data):
    src = tmp_path / "t.txt"
    src.write_bytes(data)
    tok = shared_file("data/tokenizer_16384_v2.json")  # (NUL is its token 7)
    prepare_pretrain([src], tok, tmp_path / "d", val_fraction=0.0, shuffle=False, doc_mode="file", progress=False)
    meta = json.loads((tmp_path / "d" / "meta.json").read_text(encoding="utf-8"))
    ids = np.concatenate([np.fromfile(tmp_path / "d" / s["file"], dtype=meta["dtype"])
                          for s in meta["shards"]["train"]])
    assert ids.tolist() == Tokenizer.load(tok).encode(data.decode("utf-8"))  # every NUL kept (the vocabulary
    assert (ids == 7).sum() == data.count(0)                                 # has no emoji: <|unknown|>)
