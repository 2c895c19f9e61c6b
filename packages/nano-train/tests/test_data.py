"""Pretraining data preparation and batching: the held-out split (defect 4),
bounded memory, documents, shards, one prepare at a time per directory, and
deterministic resumable batches (defect 14)."""

import codecs
import gc
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nano_tokenizer import Tokenizer

from nano_train import data, prepare as prepare_cmd
from nano_train.data import (
    Batcher,
    DataError,
    Dataset,
    TokenWindows,
    iter_documents,
    prepare_pretrain,
    prepare_sft,
    split_hash,
    write_rows,
)


def read_split(path, split):
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    dtype = np.dtype(meta["dtype"])
    return meta, [np.fromfile(path / s["file"], dtype=dtype) for s in meta["shards"][split]]


# ---------------------------------------------------------------------------
# Defect 4: validation never enters training


def test_validation_chunks_never_appear_in_training_shards(tmp_path, shared_file, psycho_slice):
    tok_path = shared_file("data/tokenizer_4096.json")
    out = tmp_path / "d"
    prepare_pretrain([psycho_slice], tok_path, out, chunk_tokens=256, val_fraction=0.1, seed=7, progress=False)
    meta, train = read_split(out, "train")
    _, val = read_split(out, "val")
    # The whole stream, encoded directly: chunk i is stream[i*C:(i+1)*C].
    stream = Tokenizer.load(tok_path).encode_array(psycho_slice.read_text(encoding="utf-8"))
    C = meta["split"]["chunk_tokens"]
    chunks = [stream[i:i + C].tobytes() for i in range(0, len(stream), C)]
    val_ids = meta["split"]["val_chunks"]
    assert meta["split"]["n_chunks"] == len(chunks)
    # The rule in meta.json reproduces the recorded choice.
    assert val_ids == np.flatnonzero(split_hash(7, np.arange(len(chunks))) < 0.1).tolist()
    assert 0 < len(val_ids) < len(chunks)

    train_bytes = b"".join(s.tobytes() for s in train)
    val_set = set(val_ids)
    # Every validation chunk is held out: its tokens appear nowhere in the training shards...
    for i in val_ids:
        assert train_bytes.find(chunks[i]) == -1
    # ...and the shards are exactly the chunks of each split (shuffled), nothing more or less.
    train_chunks = sorted(train_bytes[k:k + C * 2] for k in range(0, len(train_bytes), C * 2))
    assert train_chunks == sorted(chunks[i] for i in range(len(chunks)) if i not in val_set)
    val_bytes = b"".join(s.tobytes() for s in val)
    val_chunks = sorted(val_bytes[k:k + C * 2] for k in range(0, len(val_bytes), C * 2))
    assert val_chunks == sorted(chunks[i] for i in val_ids)
    assert meta["counts"]["tokens"] == len(stream)


def test_held_out_windows_are_unseen_text(small_pretrain):
    """The psycho text has no repeated 64-token passages, so a validation window
    found in the training shards would mean leakage."""
    meta, train = read_split(small_pretrain, "train")
    _, val = read_split(small_pretrain, "val")
    train_bytes = b"".join(s.tobytes() for s in train)
    v = val[0]
    for start in range(0, len(v) - 64, 97):
        assert train_bytes.find(v[start:start + 64].tobytes()) == -1


def test_split_and_shuffle_are_seeded(tmp_path, shared_file, psycho_slice):
    tok = shared_file("data/tokenizer_4096.json")
    a, b, c = (tmp_path / n for n in "abc")
    prepare_pretrain([psycho_slice], tok, a, chunk_tokens=256, seed=1, progress=False)
    prepare_pretrain([psycho_slice], tok, b, chunk_tokens=256, seed=1, progress=False)
    prepare_pretrain([psycho_slice], tok, c, chunk_tokens=256, seed=2, progress=False)
    assert (a / "train_000.bin").read_bytes() == (b / "train_000.bin").read_bytes()
    assert (a / "train_000.bin").read_bytes() != (c / "train_000.bin").read_bytes()
    ma = json.loads((a / "meta.json").read_text())
    mc = json.loads((c / "meta.json").read_text())
    assert ma["split"]["val_chunks"] != mc["split"]["val_chunks"]
    # no shuffle: the training shard is the stream minus the validation chunks, in order
    d = tmp_path / "d"
    prepare_pretrain([psycho_slice], tok, d, chunk_tokens=256, seed=1, shuffle=False, progress=False)
    stream = Tokenizer.load(tok).encode_array(psycho_slice.read_text(encoding="utf-8"))
    keep = [stream[i * 256:(i + 1) * 256] for i in range(ma["split"]["n_chunks"]) if i not in set(ma["split"]["val_chunks"])]
    assert np.array_equal(np.fromfile(d / "train_000.bin", dtype=np.uint16), np.concatenate(keep))


def test_tiny_corpus_still_holds_out_one_chunk(tmp_path, shared_file):
    text = tmp_path / "t.txt"
    text.write_text("心理学是研究人的心理现象的科学。" * 20, encoding="utf-8")
    out = tmp_path / "d"
    prepare_pretrain([text], shared_file("data/tokenizer_4096.json"), out, chunk_tokens=100, val_fraction=0.01,
                     progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert len(meta["split"]["val_chunks"]) == 1
    with pytest.raises(DataError, match="too small"):
        prepare_pretrain([text], shared_file("data/tokenizer_4096.json"), tmp_path / "e", chunk_tokens=10_000,
                         progress=False)


def test_the_forced_validation_chunk_is_never_the_short_last_one(tmp_path, shared_file):
    """320 tokens in chunks of 100: the last chunk holds 20. With a seed whose smallest
    hash is that chunk's, it used to be the whole validation split, too short for any
    row; now a full chunk is held out, and the summary warns that val is short."""
    text = tmp_path / "t.txt"
    text.write_text("心理学是研究人的心理现象的科学。" * 20, encoding="utf-8")
    tok = shared_file("data/tokenizer_4096.json")
    assert len(Tokenizer.load(tok).encode_array(text.read_text(encoding="utf-8"))) == 320
    seed = next(s for s in range(1000) if np.argmin(split_hash(s, np.arange(4))) == 3)
    out = tmp_path / "d"
    summary = prepare_pretrain([text], tok, out, chunk_tokens=100, val_fraction=1e-9, seed=seed, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["split"]["val_chunks"] == [int(np.argmin(split_hash(seed, np.arange(3))))]
    assert (summary.val_tokens, summary.train_tokens) == (100, 220)
    assert Dataset(out).source("val", 64).n_rows == 1
    assert "warning: the validation split's longest chunk holds 100 tokens" in summary.text()
    assert "--val_fraction" in summary.text()
    # the error for a block too long for the validation split says how to get one, or do without
    # (shuffled, each chunk is a piece of its own: a larger --val_fraction would join none of them)
    with pytest.raises(DataError, match=r"validation split is too short for block_size 100: .*; prepare the data with "
                                        r"a larger --chunk_tokens, lower model.block_size, or train without "
                                        r"validation \(--eval_iters=0\)$"):
        Dataset(out).source("val", 100)
    prepare_pretrain([text], tok, tmp_path / "o", chunk_tokens=100, val_fraction=1e-9, seed=seed, shuffle=False,
                     progress=False)
    with pytest.raises(DataError, match=r"validation split is too short for block_size 100: .*; prepare the data with "
                                        r"a larger --val_fraction or --chunk_tokens, lower model.block_size, or"):
        Dataset(tmp_path / "o").source("val", 100)
    # a draw that takes only the short last chunk gets the full chunk with the smallest hash too
    u = split_hash(seed, np.arange(4))
    summary = prepare_pretrain([text], tok, tmp_path / "f", chunk_tokens=100, val_fraction=(u[3] + u[:3].min()) / 2,
                               seed=seed, progress=False)
    meta = json.loads((tmp_path / "f" / "meta.json").read_text())
    assert meta["split"]["val_chunks"] == [int(np.argmin(u[:3])), 3]
    assert (summary.val_tokens, summary.train_tokens) == (120, 200)
    assert Dataset(tmp_path / "f").source("val", 64).n_rows == 1
    # no validation split: no warning about it (the training split's chunks of 100 get theirs)
    big = prepare_pretrain([text], tok, tmp_path / "e", chunk_tokens=100, val_fraction=0.0, progress=False)
    assert "warning: the validation" not in big.text() and "warning: the training" in big.text()


# ---------------------------------------------------------------------------
# Bounded memory


def _peak_traced(fn) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_prepare_memory_does_not_grow_with_the_corpus(tmp_path, shared_file):
    """Peak Python+numpy allocation (tracemalloc) is the same for a 2 MB and a
    12 MB corpus: the text is streamed, never held whole."""
    base = shared_file("data/pretrain_psycho.txt").read_text(encoding="utf-8")[:200_000]
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    with open(small, "w", encoding="utf-8") as f:
        f.write(base * 3)  # ~1.8 MB, one line (no newline at all, like the real file)
    with open(big, "w", encoding="utf-8") as f:
        for i in range(20):  # ~12 MB
            f.write(base)
    tok = shared_file("data/tokenizer_4096.json")
    Tokenizer.load(tok).encode("预热")  # compile the matcher outside the measurement

    def run(src, name):
        return lambda: prepare_pretrain([src], tok, tmp_path / name, chunk_tokens=1024, piece_chars=1 << 16,
                                        progress=False)

    peak_small = _peak_traced(run(small, "s"))
    peak_big = _peak_traced(run(big, "b"))
    size_big = big.stat().st_size
    print(f"peak traced memory: {peak_small / 1e6:.2f} MB for {small.stat().st_size / 1e6:.1f} MB of text, "
          f"{peak_big / 1e6:.2f} MB for {size_big / 1e6:.1f} MB")
    assert peak_big < size_big / 4
    assert peak_big - peak_small < 1_000_000  # only the per-chunk index grows (8 bytes per 1024 tokens)


# ---------------------------------------------------------------------------
# Documents


def _docs(text, mode, tmp_path, piece_chars=1 << 20):
    p = tmp_path / "doc.txt"
    p.write_text(text, encoding="utf-8")
    with open(p, encoding="utf-8") as f:
        return ["".join(d) for d in iter_documents(f, mode, piece_chars)]


def test_document_modes(tmp_path):
    text = "第一段第一行\n第一段第二行\n\n  \n第二段\n\n\n第三段\n"
    assert _docs(text, "blank", tmp_path) == ["第一段第一行\n第一段第二行", "第二段", "第三段"]
    assert _docs(text, "line", tmp_path) == ["第一段第一行", "第一段第二行", "第二段", "第三段"]
    assert _docs(text, "file", tmp_path) == [text.rstrip("\n")]
    # pieces shorter than a line change nothing
    assert _docs(text, "blank", tmp_path, piece_chars=2) == ["第一段第一行\n第一段第二行", "第二段", "第三段"]
    assert _docs("\r\nA\r\n\r\nB", "blank", tmp_path) == ["A", "B"]
    assert _docs("", "blank", tmp_path) == []


def test_bos_eos_wrapping_and_separators(tmp_path, shared_file):
    text = tmp_path / "t.txt"
    text.write_text("甲乙\n\n丙丁\n", encoding="utf-8")
    tok = Tokenizer.load(shared_file("data/tokenizer_4096.json"))
    for bos_eos, expected in ((True, "<|bos|>甲乙<|eos|><|bos|>丙丁<|eos|>"), (False, "甲乙\n\n丙丁")):
        out = tmp_path / f"d{bos_eos}"
        summary = prepare_pretrain([text], shared_file("data/tokenizer_4096.json"), out, bos_eos=bos_eos,
                                   val_fraction=0.0, shuffle=False, progress=False)
        ids = np.fromfile(out / "train_000.bin", dtype=np.uint16)
        assert tok.decode(ids) == expected
        assert summary.documents == 2 and summary.characters == 4
        # tokens per character: the documents' tokens over their characters; the separator
        # (or bos/eos) tokens are counted apart, as their characters are not counted
        text_tokens = len(tok.encode("甲乙")) + len(tok.encode("丙丁"))
        extra = 4 if bos_eos else len(tok.encode("\n\n"))
        assert (summary.tokens, summary.text_tokens) == (text_tokens + extra, text_tokens)
        counts = json.loads((out / "meta.json").read_text())["counts"]
        assert counts["text_tokens"] == text_tokens and counts["tokens"] == text_tokens + extra
        assert counts["tokens_per_character"] == text_tokens / 4
        assert f"{text_tokens / 4:.3f} text tokens per character" in summary.text()
        assert f"{extra} of them separators or bos/eos" in summary.text()


@pytest.mark.parametrize("vocab_size,dtype", [(65_536, "uint16"), (65_537, "uint32"), (70_000, "uint32")])
def test_large_vocabulary_uses_uint32(tmp_path, vocab_size, dtype):
    """uint16 holds ids up to 65535: exactly the vocabularies of at most 65,536 tokens."""
    itos = ["<|padding|>", "<|unknown|>", "<|bos|>", "<|eos|>", "<|instruct_mark|>", "<|response_mark|>"]
    itos += [chr(0x4E00 + i) for i in range(0x5000)] + [f"t{i}" for i in range(vocab_size - 6 - 0x5000)]
    tok = Tokenizer(itos, {t: i for i, t in enumerate(itos[:6])})
    tok_path = tmp_path / "big_vocab.json"
    tok.save(tok_path)
    text = tmp_path / "t.txt"
    text.write_text(f"{itos[-1]}一二三t5 " * 50, encoding="utf-8")  # the largest id
    prepare_pretrain([text], tok_path, tmp_path / "d", chunk_tokens=16, val_fraction=0.1, progress=False)
    ds = Dataset(tmp_path / "d")
    assert ds.dtype == np.dtype(dtype) and ds.meta["dtype"] == dtype
    all_ids = np.concatenate([np.asarray(s) for s in ds.splits["train"] + ds.splits["val"]])
    assert all_ids.max() == vocab_size - 1


@pytest.mark.parametrize("vocab_size,dtype", [(65_536, "uint16"), (70_000, "uint32")])
def test_large_vocabulary_uses_uint32_for_sft_and_seq2seq_rows(tmp_path, vocab_size, dtype):
    """As prepare_pretrain's shards: prepare_sft's rows and write_rows' (a mutation audit
    found nothing checking them)."""
    itos = ["<|padding|>", "<|unknown|>", "<|bos|>", "<|eos|>", "<|instruct_mark|>", "<|response_mark|>"]
    itos += [chr(0x4E00 + i) for i in range(0x5000)] + [f"t{i}" for i in range(vocab_size - 6 - 0x5000)]
    tok = Tokenizer(itos, {t: i for i, t in enumerate(itos[:6])})
    tok.save(tmp_path / "v.json")
    (tmp_path / "s.jsonl").write_text("\n".join(json.dumps({"question": "一二", "answer": itos[-1] + "三"})
                                                for _ in range(4)), encoding="utf-8")
    prepare_sft([tmp_path / "s.jsonl"], tmp_path / "v.json", tmp_path / "sft", block_size=16, progress=False)
    top = np.array([[vocab_size - 1, 7]], dtype=np.int64)
    write_rows(tmp_path / "s2s", tok, "seq2seq", {"train": (top, top, np.ones_like(top, np.uint8))})
    for name in ("sft", "s2s"):
        ds = Dataset(tmp_path / name)
        assert ds.dtype == np.dtype(dtype) and ds.meta["dtype"] == dtype
        _, y, _ = ds.source("train", 2 if name == "s2s" else 16).fetch(np.array([0]), None)
        assert int(y.max()) == vocab_size - 1


# ---------------------------------------------------------------------------
# Errors that say what to do


def test_helpful_errors(tmp_path, shared_file, small_pretrain):
    tok = shared_file("data/tokenizer_4096.json")
    with pytest.raises(DataError, match="does not exist"):
        prepare_pretrain([tmp_path / "nope.txt"], tok, tmp_path / "x", progress=False)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\xfe broken")
    with pytest.raises(DataError, match="not UTF-8"):
        prepare_pretrain([bad], tok, tmp_path / "x", progress=False)
    with pytest.raises(DataError, match="already holds a prepared dataset"):
        prepare_pretrain([bad], tok, small_pretrain, progress=False)
    with pytest.raises(DataError, match="does not exist"):
        Dataset(tmp_path / "missing")
    with pytest.raises(DataError, match="no meta.json"):
        Dataset(tmp_path)
    with pytest.raises(DataError, match="larger than the data"):
        Dataset(small_pretrain).source("train", 10_000_000)
    with pytest.raises(DataError, match="validation split is too short"):
        Dataset(small_pretrain).source("val", 100_000)
    # a tokenizer that is not the one the shards were written with
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in small_pretrain.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    Tokenizer.load(shared_file("data/tokenizer_16384_v2.json")).save(copy / "tokenizer.json")
    with pytest.raises(DataError, match="fingerprint"):
        Dataset(copy)
    # a truncated shard
    (copy / "tokenizer.json").write_bytes((small_pretrain / "tokenizer.json").read_bytes())
    shard = copy / "train_000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match="truncated"):
        Dataset(copy)


def test_a_bad_byte_is_reported_by_line_and_offset(tmp_path, shared_file):
    """The text reader decodes a buffer at a time; the error names the file's line and
    byte, also past the first buffer and after a character split across pieces."""
    tok = shared_file("data/tokenizer_4096.json")
    bad = tmp_path / "bad.txt"
    head = b"ok line\n" * 20_000 + "é".encode("utf-8") * 40_000  # the long line is read in several pieces
    bad.write_bytes(head + b" \xff tail\nmore\n")
    where = rf"bad.txt:20001: not UTF-8 text \(invalid start byte at byte {len(head) + 1}\)"
    with pytest.raises(DataError, match=where):
        prepare_pretrain([bad], tok, tmp_path / "x", progress=False)
    bad.write_bytes(b"ab\ncd\n\xe9")  # a character cut off by the end of the file
    with pytest.raises(DataError, match=r"bad.txt:3: not UTF-8 text \(unexpected end of data at byte 6\)"):
        prepare_pretrain([bad], tok, tmp_path / "x", progress=False)


def test_chinese_text_in_gbk_is_named_with_the_command_that_converts_it(tmp_path, shared_file):
    """Windows in Chinese saves text as GBK (GB18030): the error says so and how to convert it,
    for a corpus and for SFT lines (skipped or not); a UTF-8 file with a damaged byte is not
    called GBK, although GB18030 reads almost any bytes."""
    tok = shared_file("data/tokenizer_4096.json")
    text = "人的心理是一个复杂的系统，包括认知、情感和意志。\n" * 40
    gbk = tmp_path / "gbk.txt"
    gbk.write_bytes(text.encode("gbk"))
    hint = (r"it reads as Chinese text in GB18030 \(GBK\), which Windows saves text in: convert it to UTF-8 \(e\.g\. "
            r"iconv -f GB18030 -t UTF-8 \S*gbk\.txt > \S*gbk\.utf8\.txt\)")
    with pytest.raises(DataError, match=r"gbk\.txt:1: not UTF-8 text \(invalid continuation byte at byte 0\); " + hint):
        prepare_pretrain([gbk], tok, tmp_path / "x", progress=False)
    damaged = tmp_path / "damaged.txt"
    cut = 2 * len(text.encode("utf-8")) // 40  # the start of line 3
    damaged.write_bytes(text.encode("utf-8")[:cut] + b"\xff" + text.encode("utf-8")[cut:])
    with pytest.raises(DataError, match=rf"damaged\.txt:3: not UTF-8 text \(invalid start byte at byte {cut}\); "
                                        r"convert it to UTF-8 first$"):
        prepare_pretrain([damaged], tok, tmp_path / "x", progress=False)
    # Japanese and Korean bytes read as GB18030 too (as rare characters): not called Chinese
    for encoding, other in (("shift_jis", "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。\n"),
                            ("euc_kr", "나는 고양이로소이다. 이름은 아직 없다. 어디서 태어났는지 모른다.\n")):
        (tmp_path / f"{encoding}.txt").write_bytes((other * 40).encode(encoding))
        with pytest.raises(DataError, match=r"not UTF-8 text \(.*\); convert it to UTF-8 first$"):
            prepare_pretrain([tmp_path / f"{encoding}.txt"], tok, tmp_path / "x", progress=False)
    line = json.dumps({"question": "你是谁？", "answer": "我是一个小小的语言模型。"}, ensure_ascii=False).encode("gbk")
    for name, start in (("sft.jsonl", b""), ("bom.jsonl", codecs.BOM_UTF8)):  # (the offset counts the mark)
        (tmp_path / name).write_bytes(start + line)
        with pytest.raises(DataError, match=rf"{name}:1: not UTF-8 \(invalid continuation byte at byte {14 + len(start)} "
                                            r"of the line\); it reads as Chinese text in GB18030 \(GBK\)"):
            prepare_sft([tmp_path / name], tok, tmp_path / "y", block_size=64, progress=False)


def test_chinese_text_in_utf16_without_a_mark_is_named_with_the_command_that_converts_it(tmp_path, shared_file):
    """What `iconv -t UTF-16LE` writes (no byte-order mark) has few NULs when the text is
    Chinese (its ASCII characters only): the NUL check did not see it, and the error said
    "convert it to UTF-8 first" without naming the encoding. Now it is named, whichever
    byte of a character the first bad UTF-8 byte is."""
    tok = shared_file("data/tokenizer_4096.json")
    text = "人的心理是一个复杂的系统，包括认知、情感和意志。\n" * 40
    for encoding, lead in (("UTF-16LE", ""), ("UTF-16BE", ""), ("UTF-16LE", "ab")):
        path = tmp_path / f"{encoding}{lead}.txt"
        path.write_bytes((lead + text).encode(encoding.lower()))
        with pytest.raises(DataError, match=rf"{path.name}:1: not UTF-8 text \(.*\); it reads as Chinese text in "
                                            rf"{encoding} without a byte order mark: convert it to UTF-8 \(e\.g\. "
                                            rf"iconv -f {encoding} -t UTF-8 \S*{path.name} > \S*\.utf8\.txt\)$"):
            prepare_pretrain([path], tok, tmp_path / "x", progress=False)
    # Japanese in UTF-16 is no Chinese text: the plain message (as for Shift-JIS)
    (tmp_path / "ja.txt").write_bytes(("吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。\n" * 40).encode("utf-16-le"))
    with pytest.raises(DataError, match=r"not UTF-8 text \(.*\); convert it to UTF-8 first$"):
        prepare_pretrain([tmp_path / "ja.txt"], tok, tmp_path / "x", progress=False)


def test_inputs_must_be_distinct_regular_files(tmp_path, shared_file):
    tok = shared_file("data/tokenizer_4096.json")
    text = tmp_path / "t.txt"
    text.write_text("甲乙\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    other_path = tmp_path / "sub" / ".." / "t.txt"  # the same file by another path
    with pytest.raises(DataError, match=f"inputs {text} and {other_path} are the same file"):
        prepare_pretrain([text, other_path], tok, tmp_path / "x", progress=False)
    with pytest.raises(DataError, match="are the same file"):
        prepare_sft([text, text], tok, tmp_path / "x", block_size=16, progress=False)
    with pytest.raises(DataError, match=f"the input folder {tmp_path / 'sub'} holds no files"):
        prepare_pretrain([tmp_path / "sub"], tok, tmp_path / "x", progress=False)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo")
        with pytest.raises(DataError, match="is a FIFO"):
            prepare_pretrain([tmp_path / "fifo"], tok, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_a_folder_stands_for_its_files_in_path_order(tmp_path, shared_file):
    tok = shared_file("data/tokenizer_4096.json")
    corpus = tmp_path / "corpus"
    texts = {"b/c.txt": "乙\n", "a.txt": "甲\n", "d": "丙\n", "b/.hidden": "丁\n", ".git/x": "戊\n"}
    for name, text in texts.items():
        (corpus / name).parent.mkdir(parents=True, exist_ok=True)
        (corpus / name).write_text(text, encoding="utf-8")
    kw = dict(val_fraction=0.0, progress=False, shuffle=False)
    # the dataset lives inside the corpus folder: a second prepare must not read it as text
    prepare_pretrain([corpus], tok, corpus / "data", **kw)
    prepare_pretrain([corpus], tok, corpus / "data", overwrite=True, **kw)
    prepare_pretrain([corpus / n for n in ("a.txt", "b/c.txt", "d")], tok, tmp_path / "by_name", **kw)
    meta, shards = read_split(corpus / "data", "train")
    by_name_meta, by_name_shards = read_split(tmp_path / "by_name", "train")
    assert [i["path"] for i in meta["inputs"]] == [str(corpus / n) for n in ("a.txt", "b/c.txt", "d")]
    assert np.array_equal(np.concatenate(shards), np.concatenate(by_name_shards))
    assert Tokenizer.load(tok).decode(np.concatenate(shards).tolist()) == "甲\n\n乙\n\n丙"
    # a vocabulary kept in the corpus folder is not text either (its JSON was read as 397 unknown tokens)
    vocab = corpus / "b" / "vocab.json"
    vocab.write_bytes(tok.read_bytes())
    prepare_pretrain([corpus], vocab, corpus / "data", overwrite=True, **kw)
    assert np.array_equal(np.concatenate(read_split(corpus / "data", "train")[1]), np.concatenate(shards))
    vocab.unlink()
    # a folder and one of its files: the same file twice
    with pytest.raises(DataError) as e:  # (named as typed: the folder's argument too)
        prepare_pretrain([corpus, corpus / "a.txt"], tok, tmp_path / "x", **kw)
    assert str(e.value).startswith(f"inputs {corpus / 'a.txt'} (in folder {corpus}) and {corpus / 'a.txt'} are "
                                   "the same file")
    # SFT takes folders too
    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / "one.jsonl").write_text('{"question": "甲", "answer": "乙"}\n', encoding="utf-8")
    assert prepare_sft([sft], tok, tmp_path / "s", block_size=16, progress=False).train_samples == 1


def test_a_vocabulary_without_a_needed_special_token(tmp_path):
    """Checked when the tokenizer is loaded, before anything is read or written."""
    specials = ["<|padding|>", "<|unknown|>", "<|eos|>", "<|response_mark|>"]  # no <|bos|>, no <|instruct_mark|>
    itos = specials + list("甲乙丙丁")
    tok_path = tmp_path / "v.json"
    Tokenizer(itos, {t: i for i, t in enumerate(specials)}).save(tok_path)
    text = tmp_path / "t.txt"
    text.write_text("甲乙\n\n丙丁\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{tok_path}: the vocabulary has no <\|bos\|> special token, which --bos_eos"):
        prepare_pretrain([text], tok_path, tmp_path / "x", bos_eos=True, progress=False)
    assert not (tmp_path / "x").exists()
    jsonl = tmp_path / "s.jsonl"
    jsonl.write_text('{"question": "甲", "answer": "乙"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{tok_path}: the vocabulary has no <\|instruct_mark\|> special token"):
        prepare_sft([jsonl], tok_path, tmp_path / "x", block_size=16, progress=False)
    assert not (tmp_path / "x").exists()
    prepare_pretrain([text], tok_path, tmp_path / "y", val_fraction=0.0, progress=False)  # needs none of them


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _poke(path, dtype, index, value):
    ids = np.fromfile(path, dtype=dtype)
    ids.reshape(-1)[index] = value
    ids.tofile(path)


def test_token_ids_outside_the_vocabulary(tmp_path, small_pretrain, shared_file):
    """Checked once when a dataset is opened (they would stop training inside F.embedding)."""
    vocab = Tokenizer.load(small_pretrain / "tokenizer.json").vocab_size  # 4096, stored as uint16
    bad = _copy(small_pretrain, tmp_path / "pre")
    _poke(bad / "val_000.bin", np.uint16, 77, vocab)
    with pytest.raises(DataError, match=rf"val_000.bin: token id {vocab} at position 77 is outside the vocabulary"):
        Dataset(bad)
    tok = Tokenizer.load(shared_file("data/tokenizer_4096.json"))
    rows = np.full((2, 8), tok.pad_id)
    mask = np.ones((2, 8), dtype=np.uint8)
    write_rows(tmp_path / "sft", tok, "sft", {"train": (rows, mask)})
    write_rows(tmp_path / "s2s", tok, "seq2seq", {"train": (rows, rows, mask)})
    Dataset(tmp_path / "sft")
    Dataset(tmp_path / "s2s")
    _poke(tmp_path / "sft" / "sft_train.bin", np.uint16, 9, 65535)
    with pytest.raises(DataError, match="sft_train.bin: token id 65535 at position 9"):
        Dataset(tmp_path / "sft")
    _poke(tmp_path / "s2s" / "s2s_train_y.bin", np.uint16, 15, 5000)
    with pytest.raises(DataError, match="s2s_train_y.bin: token id 5000 at position 15"):
        Dataset(tmp_path / "s2s")


@pytest.mark.parametrize("text,why", [("[" * 100_000 + "]" * 100_000, "arrays or objects nested too deeply"),
                                      ('{"format": ' + "1" * 5000 + "}", "a number with too many digits")])
def test_a_hostile_meta_json(tmp_path, small_pretrain, psycho_slice, shared_file, text, why):
    """json raises RecursionError or a plain ValueError on these, not JSONDecodeError."""
    bad = _copy(small_pretrain, tmp_path / "d")
    (bad / "meta.json").write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=f"meta.json: not valid JSON \\({why}\\)"):
        Dataset(bad)
    # --overwrite reads the old meta.json for the files to replace: a damaged one lists none, so
    # its shards are in the way (they are not known to be the dataset's) and must be moved by hand
    with pytest.raises(DataError, match=r"train_000.bin is in the way: .*its meta.json does not list it"):
        prepare_pretrain([psycho_slice], shared_file("data/tokenizer_4096.json"), bad, overwrite=True,
                         progress=False)
    for shard in bad.glob("*.bin"):
        shard.unlink()
    prepare_pretrain([psycho_slice], shared_file("data/tokenizer_4096.json"), bad, overwrite=True, progress=False)
    assert Dataset(bad).kind == "pretrain"


def test_a_huge_field_in_meta_json_is_not_echoed(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"format": "x" * 1_000_000}), encoding="utf-8")
    with pytest.raises(DataError, match="not a nano-train-dataset") as err:
        Dataset(tmp_path)
    assert len(str(err.value)) < 300


def test_prepare_command(tmp_path, shared_file, psycho_slice, capsys):
    out = tmp_path / "d"
    rc = prepare_cmd.main(["pretrain", "--tokenizer", str(shared_file("data/tokenizer_4096.json")), "--out_dir", str(out),
                           "--chunk_tokens", "512", str(psycho_slice)])
    captured = capsys.readouterr()
    assert rc == 0
    assert "tokens per character" in captured.out and "200,000 characters" in captured.out
    assert "encode [" in captured.err  # the progress bar
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer"]["fingerprint"] == Tokenizer.load(shared_file("data/tokenizer_4096.json")).fingerprint()
    assert meta["counts"]["tokens"] == sum(s["tokens"] for v in meta["shards"].values() for s in v)
    rc = prepare_cmd.main(["pretrain", "--tokenizer", str(shared_file("data/tokenizer_4096.json")), "--out_dir", str(out),
                           str(psycho_slice)])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err


def _files(path):
    return {f.name: f.read_bytes() for f in sorted(path.iterdir())}


def test_a_failed_overwrite_keeps_the_old_dataset(tmp_path, shared_file, psycho_slice):
    tok = shared_file("data/tokenizer_4096.json")
    out = tmp_path / "d"
    prepare_pretrain([psycho_slice], tok, out, chunk_tokens=512, shard_tokens=20_000, progress=False)
    (out / "notes.txt").write_text("mine")
    before = _files(out)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\xfe broken")
    with pytest.raises(DataError, match="not UTF-8"):
        prepare_pretrain([psycho_slice, bad], tok, out, overwrite=True, progress=False)
    assert _files(out) == before  # nothing removed, nothing left behind
    Dataset(out)
    # A successful overwrite replaces the dataset (fewer shards now), keeps other files.
    prepare_pretrain([psycho_slice], tok, out, chunk_tokens=512, overwrite=True, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    listed = {s["file"] for split in meta["shards"].values() for s in split}
    assert set(_files(out)) == listed | {"meta.json", "tokenizer.json", "notes.txt"}
    assert (out / "notes.txt").read_text() == "mine"


def test_a_users_file_of_a_datasets_name_is_never_replaced(tmp_path, shared_file, psycho_slice, monkeypatch, capsys):
    """Without meta.json no file in out_dir is a dataset's: prepare used to replace a
    user's tokenizer.json or train_000.bin there, --overwrite or not. Refused up front,
    before any work (the lock is never taken)."""
    import nano_train.data as data

    tok = shared_file("data/tokenizer_4096.json")
    out = tmp_path / "d"
    out.mkdir()
    (out / "tokenizer.json").write_text("my vocabulary")
    (out / "notes.txt").write_text("mine")

    def no_work(*a, **k):
        raise AssertionError("prepare went on to work")

    with monkeypatch.context() as m:
        m.setattr(data, "_claim_out_dir", no_work)
        for overwrite in (False, True):
            with pytest.raises(DataError, match=rf"^{out / 'tokenizer.json'} is in the way: the new dataset has "
                                                rf"a file of that name, and it is not a file of a dataset in {out} "
                                                r"\(there is no meta.json\); move it away or choose another "
                                                r"--out_dir$"):
                prepare_pretrain([psycho_slice], tok, out, overwrite=overwrite, progress=False)
    assert _command(tmp_path, shared_file, psycho_slice, "--out_dir", str(out), "--overwrite") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out / 'tokenizer.json'} is in the way") and err.count("\n") == 1
    (out / "tokenizer.json").rename(out / "train_012.bin")
    with pytest.raises(DataError, match="train_012.bin is in the way"):
        prepare_pretrain([psycho_slice], tok, out, overwrite=True, progress=False)
    assert _files(out) == {"notes.txt": b"mine", "train_012.bin": b"my vocabulary"}

    # With a dataset there, --overwrite replaces the files its meta.json lists, and no other
    (out / "train_012.bin").unlink()
    prepare_pretrain([psycho_slice], tok, out, chunk_tokens=512, progress=False)
    (out / "val_001.bin").write_text("mine too")  # not listed: the dataset has val_000.bin only
    before = _files(out)
    with pytest.raises(DataError, match="val_001.bin is in the way: .*its meta.json does not list it"):
        prepare_pretrain([psycho_slice], tok, out, chunk_tokens=512, shard_tokens=1024, overwrite=True,
                         progress=False)
    assert _files(out) == before
    (out / "val_001.bin").unlink()
    prepare_pretrain([psycho_slice], tok, out, chunk_tokens=512, shard_tokens=1024, overwrite=True,
                     progress=False)
    assert Dataset(out).meta["shards"]["val"][1]["file"] == "val_001.bin"


def test_a_file_put_in_the_way_during_the_run_is_not_replaced(tmp_path, shared_file, psycho_slice, monkeypatch):
    """The lock keeps other prepares out, not the user: the names are checked again just
    before the files move in."""
    import nano_train.data as data

    out = tmp_path / "d"
    save = data._save_tokenizer

    def save_while_the_user_writes(tok, build):
        (out / "train_000.bin").write_text("mine")
        save(tok, build)

    monkeypatch.setattr(data, "_save_tokenizer", save_while_the_user_writes)
    with pytest.raises(DataError, match="train_000.bin is in the way"):
        prepare_pretrain([psycho_slice], shared_file("data/tokenizer_4096.json"), out, progress=False)
    assert _files(out) == {"train_000.bin": b"mine"}  # no dataset, no build folder, no lock


def test_a_file_name_that_is_not_utf8(tmp_path, shared_file, psycho_slice, capsys):
    """Such names arrive as lone surrogates, which meta.json (UTF-8) and standard output
    cannot hold: json.dump used to fail after all the work. They are written with \\xNN."""
    try:
        text = tmp_path / os.fsdecode(b"in\xfe.txt")
        text.write_bytes(psycho_slice.read_bytes())
        vocab = tmp_path / os.fsdecode(b"tok\xff.json")
        vocab.write_bytes(shared_file("data/tokenizer_4096.json").read_bytes())
    except (OSError, UnicodeError):
        pytest.skip("the file system takes only UTF-8 names")
    out = tmp_path / os.fsdecode(b"out\xfd")
    assert prepare_cmd.main(["pretrain", "--quiet", "--tokenizer", str(vocab), "--out_dir", str(out), str(text)]) == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path}/out\\xfd: ")
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["inputs"][0]["path"] == f"{tmp_path}/in\\xfe.txt"
    assert meta["tokenizer"]["source"] == f"{tmp_path}/tok\\xff.json"
    tok = Tokenizer.load(vocab)  # write_rows records the tokenizer's source
    write_rows(tmp_path / "rows", tok, "sft", {"train": (np.full((1, 4), tok.pad_id), np.ones((1, 4), np.uint8))},
               source=str(text))
    meta = json.loads((tmp_path / "rows" / "meta.json").read_text(encoding="utf-8"))
    assert meta["tokenizer"]["source"].endswith("tok\\xff.json") and meta["inputs"][0]["path"].endswith("in\\xfe.txt")


def test_an_interrupted_preparation_leaves_no_dataset(tmp_path, shared_file, psycho_slice, monkeypatch):
    import nano_train.data as data

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "write_json_atomic", interrupt)  # killed just before meta.json
    out = tmp_path / "d"
    with pytest.raises(KeyboardInterrupt):
        prepare_pretrain([psycho_slice], shared_file("data/tokenizer_4096.json"), out, progress=False)
    assert not out.exists() or list(out.iterdir()) == []


def test_the_tokenizer_copy_has_the_permissions_of_the_shards(tmp_path, shared_file, psycho_slice):
    old = os.umask(0o027)
    try:
        prepare_pretrain([psycho_slice], shared_file("data/tokenizer_4096.json"), tmp_path / "d", progress=False)
    finally:
        os.umask(old)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in (tmp_path / "d").iterdir()}
    assert set(modes.values()) == {0o640}, modes


def test_a_byte_order_mark_is_dropped(tmp_path, shared_file):
    tok = shared_file("data/tokenizer_4096.json")
    plain, marked = tmp_path / "plain.txt", tmp_path / "bom.txt"
    plain.write_text("心理学\n\n科学\n", encoding="utf-8")
    marked.write_text("心理学\n\n科学\n", encoding="utf-8-sig")
    a = prepare_pretrain([plain], tok, tmp_path / "a", val_fraction=0.0, progress=False)
    b = prepare_pretrain([marked], tok, tmp_path / "b", val_fraction=0.0, progress=False)
    assert (a.characters, a.tokens, a.unknown_tokens) == (b.characters, b.tokens, 0)
    assert (tmp_path / "a" / "train_000.bin").read_bytes() == (tmp_path / "b" / "train_000.bin").read_bytes()


def test_shards_hold_at_most_shard_tokens(tmp_path, shared_file, psycho_slice):
    tok = shared_file("data/tokenizer_4096.json")
    prepare_pretrain([psycho_slice], tok, tmp_path / "d", chunk_tokens=256, shard_tokens=1000, progress=False)
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert max(s["tokens"] for split in meta["shards"].values() for s in split) == 768
    with pytest.raises(DataError, match="shard_tokens .* at least chunk_tokens"):
        prepare_pretrain([psycho_slice], tok, tmp_path / "e", chunk_tokens=256, shard_tokens=1, progress=False)


@pytest.mark.parametrize("edit,field", [
    (lambda m: m.pop("dtype"), "dtype"),
    (lambda m: m.update(dtype="float64"), "dtype"),
    (lambda m: m.update(kind="poetry"), "kind"),
    (lambda m: m.update(shards="train_000.bin"), "shards"),
    (lambda m: m["shards"].update(train="train_000.bin"), "shards.train"),
    (lambda m: m["shards"]["train"][0].pop("tokens"), "shards.train[0].tokens"),
    (lambda m: m["shards"]["train"][0].update(file=3), "shards.train[0].file"),
    (lambda m: m.update(tokenizer="tokenizer.json"), "tokenizer"),
    (lambda m: m["tokenizer"].pop("fingerprint"), "tokenizer.fingerprint"),
])
def test_a_damaged_meta_json_names_the_field(tmp_path, small_pretrain, edit, field):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in small_pretrain.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    meta = json.loads((copy / "meta.json").read_text())
    edit(meta)
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="meta.json") as err:
        Dataset(copy)
    assert f"'{field}'" in str(err.value)


def test_a_meta_json_that_is_not_an_object(tmp_path):
    (tmp_path / "meta.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="meta.json: not a JSON object"):
        Dataset(tmp_path)


def test_the_validation_split_cannot_be_the_training_shards(tmp_path, small_pretrain):
    """A hand-edited meta.json made training validate on its own training data, silently."""
    copy = _copy(small_pretrain, tmp_path / "copy")
    meta = json.loads((copy / "meta.json").read_text())
    meta["shards"]["val"] = meta["shards"]["train"]
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"meta.json: field 'shards.val\[0\].file' names 'train_000.bin', as field "
                                        r"'shards.train\[0\].file' does: each file holds one split's data, once"):
        Dataset(copy)


@pytest.mark.parametrize("edit,field", [
    (lambda m, outside: m["shards"]["train"][0].update(file="../other/train_000.bin"), "shards.train[0].file"),
    (lambda m, outside: m["shards"]["train"][0].update(file=str(outside / "train_000.bin")), "shards.train[0].file"),
    (lambda m, outside: m["shards"]["val"][0].update(file="."), "shards.val[0].file"),
    (lambda m, outside: m["tokenizer"].update(file=str(outside / "tokenizer.json")), "tokenizer.file"),
])
def test_meta_json_names_only_files_inside_the_dataset(tmp_path, small_pretrain, edit, field):
    """Shard and tokenizer files are plain names in the dataset directory: these outside
    files exist (a copy of the dataset), and used to be read."""
    outside = _copy(small_pretrain, tmp_path / "other")
    copy = _copy(small_pretrain, tmp_path / "copy")
    meta = json.loads((copy / "meta.json").read_text())
    edit(meta, outside)
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"meta.json: field .* is missing or not a file name in the dataset "
                                        r"directory \(no folder or drive, not \. or \.\.\)") as err:
        Dataset(copy)
    assert f"'{field}'" in str(err.value)


def test_seq2seq_targets_and_masks_are_checked_too(tmp_path, shared_file):
    tok = Tokenizer.load(shared_file("data/tokenizer_4096.json"))
    rows = np.full((2, 8), tok.pad_id)
    write_rows(tmp_path / "s2s", tok, "seq2seq", {"train": (rows, rows, np.ones((2, 8), dtype=np.uint8)),
                                                  "val": (rows, rows, np.ones((2, 8), dtype=np.uint8))})
    meta = json.loads((tmp_path / "s2s" / "meta.json").read_text())
    meta["shards"]["val"][0]["target"] = meta["shards"]["train"][0]["target"]
    (tmp_path / "s2s" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"'shards.val\[0\].target' names 's2s_train_y.bin'"):
        Dataset(tmp_path / "s2s")
    meta["shards"]["val"][0]["target"] = "sub/s2s_val_y.bin"
    (tmp_path / "s2s" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"'shards.val\[0\].target' is missing or not a file name"):
        Dataset(tmp_path / "s2s")


def test_write_rows_refuses_masks_other_than_0_or_1_and_ids_that_are_not_whole(tmp_path, shared_file):
    """The rows are stored as integers and the mask as bytes: a fraction would be cut to an
    integer, a mask of 2 or -1 stored as 2 or 255, without a word, and training would then
    call the dataset damaged. Whole numbers in a float array, and a bool mask, are fine."""
    tok = Tokenizer.load(shared_file("data/tokenizer_4096.json"))
    x = np.arange(24).reshape(3, 8) + 100
    ones = np.ones((3, 8), np.uint8)
    whole = "must be whole numbers, got"
    bad = {"mask 2": (x, x, ones * 2), "mask -1": (x, x, -ones.astype(np.int64)),
           "mask 0.5": (x, x, ones / 2), "ids 7.5": (x + 0.5, x, ones), "nan": (x, np.where(x > 110, np.nan, x), ones),
           "text": (x.astype(str), x, ones), "objects": (x.astype(object), np.full((3, 8), None), ones)}
    want = {"mask 2": "the mask must be 0 (not scored) or 1 (scored), got 2 at row 0, position 0",
            "mask -1": "the mask must be 0 (not scored) or 1 (scored), got -1 at row 0, position 0",
            "mask 0.5": f"the mask {whole} fractions or values that are not finite",
            "ids 7.5": f"the inputs {whole} fractions or values that are not finite",
            "nan": f"the targets {whole} fractions or values that are not finite",
            "text": f"the inputs {whole} text", "objects": f"the targets {whole} fractions or values that are not finite"}
    for case, arrays in bad.items():
        with pytest.raises(DataError) as e:
            write_rows(tmp_path / "bad", tok, "seq2seq", {"train": arrays})
        assert str(e.value) == f"seq2seq rows of split train: {want[case]}", case
        assert not (tmp_path / "bad").exists(), case
    with pytest.raises(DataError, match="^no seq2seq rows to write$"):  # (was: numpy's error on an empty minimum)
        write_rows(tmp_path / "bad", tok, "seq2seq", {"train": (np.zeros((3, 0), int),) * 3})
    with pytest.raises(DataError, match=r"sft rows of split val: the mask must be 0 .* got 3 at row 2, position 5"):
        write_rows(tmp_path / "bad", tok, "sft", {"val": (x, np.where(x == 121, 3, 1))})
    write_rows(tmp_path / "ok", tok, "seq2seq", {"train": (x.astype(np.float64), x.astype(object), ones.astype(bool))})
    ds = Dataset(tmp_path / "ok")
    xs, ys, ms = ds.source("train", 8).fetch(np.arange(3), None)
    assert (xs == x).all() and (ys == x).all() and (ms == 1).all()


def _command(tmp_path, shared_file, psycho_slice, *args):
    return prepare_cmd.main(["pretrain", "--tokenizer", str(shared_file("data/tokenizer_4096.json")), "--quiet",
                             *args, str(psycho_slice)])


@pytest.mark.parametrize("seed", [-1, 2**32, 2**32 + 1337])  # (2^32 + 1337 would draw 1337's split)
def test_a_seed_outside_32_bits_is_a_usage_error(tmp_path, shared_file, psycho_slice, capsys, seed):
    with pytest.raises(SystemExit) as exit_:
        _command(tmp_path, shared_file, psycho_slice, "--out_dir", str(tmp_path / "d"), "--seed", str(seed))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("error:") == 1 and "--seed" in err and str(seed) in err, err
    with pytest.raises(DataError, match="seed"):
        prepare_pretrain([psycho_slice], shared_file("data/tokenizer_4096.json"), tmp_path / "d", seed=seed)
    assert not (tmp_path / "d").exists()


def test_an_unwritable_out_dir_is_one_error_line(tmp_path, shared_file, psycho_slice, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = _command(tmp_path, shared_file, psycho_slice, "--out_dir", str(blocker / "d"))
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ") and err.count("\n") == 1 and "Not a directory" in err


# ---------------------------------------------------------------------------
# One prepare at a time per directory; what a killed one leaves is cleared

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="no fcntl (prepare runs without the lock)")

# Runs the prepare command in a child that stops for good once it has encoded the
# text and begun writing shards into its build directory, for the test to kill it there.
# (Ctrl-C raises KeyboardInterrupt there, as in a terminal, even where the test runner ignores SIGINT.)
_STOP_WHILE_WRITING = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGHUP, signal.SIG_DFL)  # (under `nohup pytest` it would be ignored)
import nano_train.data as data
update = data.Progress.update
def stop_here(self, done):
    update(self, done)
    if self.label == "shards" and done > 0:
        print("writing", flush=True)
        time.sleep(600)
data.Progress.update = stop_here
from nano_train.prepare import main
sys.exit(main(sys.argv[1:]))
"""


def _prepare_stopped_while_writing(shared_file, psycho_slice, out):
    """The prepare command's argv and a child running it, stopped for good once it has
    begun writing shards into its build directory (_STOP_WHILE_WRITING)."""
    argv = ["pretrain", "--tokenizer", str(shared_file("data/tokenizer_4096.json")), "--out_dir", str(out),
            "--quiet", "--chunk_tokens", "512", str(psycho_slice)]
    child = subprocess.Popen([sys.executable, "-c", _STOP_WHILE_WRITING, *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    line = child.stdout.readline()
    if line != "writing\n":
        child.kill()
        pytest.fail(f"the child prepare did not start writing: {child.communicate()}")
    return argv, child


@posix_only
def test_a_killed_prepare_is_cleared_by_the_next_one(tmp_path, shared_file, psycho_slice, capsys):
    out = tmp_path / "d"
    argv, child = _prepare_stopped_while_writing(shared_file, psycho_slice, out)
    child.kill()  # SIGKILL: no finally block, no cleanup in the child
    child.communicate()
    assert child.returncode == -9
    left = [p for p in out.iterdir() if p.name.startswith(".prepare.") and p.name.endswith(".tmp")]
    assert len(left) == 1 and {".tokens.tmp", "train_000.bin"} <= {p.name for p in left[0].iterdir()}
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()

    assert prepare_cmd.main(argv) == 0
    first, *rest = capsys.readouterr().err.splitlines()
    assert first.startswith(f"note: removed {left[0].name} from ") and first.endswith("interrupted")
    assert all(line.startswith(("warning: ", "note: ")) and "removed" not in line for line in rest)  # the summary's
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "notes.txt", "tokenizer.json", "train_000.bin",
                                                     "val_000.bin"]  # no build folder, no lock file
    Dataset(out)


def test_a_stale_build_folder_that_cannot_be_removed_is_named(tmp_path, shared_file, psycho_slice, monkeypatch,
                                                               capsys):
    """Another user's killed prepare left it (was: left in place without a word, its space taken)."""
    from nano_train import data as data_module

    out = tmp_path / "d"
    stale = out / ".prepare.k1ll3d.tmp"
    stale.mkdir(parents=True)
    (stale / "train_000.bin").write_bytes(b"x" * 100)
    real = shutil.rmtree

    def rmtree(path, ignore_errors=False, **kw):
        if Path(path) == stale:  # as for a folder of another user's in a sticky directory
            if not ignore_errors:
                raise PermissionError(13, "Permission denied", str(stale / "train_000.bin"))
            return None
        return real(path, ignore_errors=ignore_errors, **kw)

    monkeypatch.setattr(data_module.shutil, "rmtree", rmtree)
    assert _command(tmp_path, shared_file, psycho_slice, "--out_dir", str(out), "--chunk_tokens", "512") == 0
    assert (f"note: could not remove .prepare.k1ll3d.tmp from {out}, left by a prepare that was interrupted "
            f"({stale / 'train_000.bin'}: Permission denied); remove it by hand") in capsys.readouterr().err


@posix_only
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_ctrl_c_is_one_line_and_130_and_leaves_nothing(tmp_path, shared_file, psycho_slice, sig):
    """A real SIGINT while the shards are written: it used to end in a KeyboardInterrupt
    traceback (exit -2). The build directory, the lock and the directories made go.
    SIGTERM (`timeout`, a scheduler) and SIGHUP (a closed terminal) alike (were: the
    process ended at once, leaving the build folder, as large as the dataset, and the
    folders it made)."""
    out = tmp_path / "new" / "d"
    _, child = _prepare_stopped_while_writing(shared_file, psycho_slice, out)
    try:
        assert any(p.name.startswith(".prepare.") for p in out.iterdir())  # the build folder is there
        child.send_signal(getattr(signal, sig))
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
        child.communicate()
    assert child.returncode == 130, err
    assert err == f"\nerror: interrupted; nothing was written to {out}\n"
    assert list(tmp_path.iterdir()) == []  # not even tmp_path/new


def test_ctrl_c_while_the_files_move_in_waits_until_they_are_in(tmp_path, shared_file, psycho_slice, monkeypatch,
                                                                capsys):
    """The move into out_dir runs whole: a Ctrl-C in it is held until meta.json is in,
    and the line then says the dataset is complete."""
    out = tmp_path / "d"
    prepare_pretrain([psycho_slice], shared_file("data/tokenizer_4096.json"), out, chunk_tokens=512, progress=False)
    old_meta = (out / "meta.json").read_text()
    replace = os.replace

    def ctrl_c_while_moving(src, dst, *a, **k):
        if os.path.dirname(dst) == str(out) and os.path.basename(dst) == "train_000.bin":
            os.kill(os.getpid(), signal.SIGINT)
        return replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", ctrl_c_while_moving)
    try:
        rc = _command(tmp_path, shared_file, psycho_slice, "--out_dir", str(out), "--overwrite",
                      "--chunk_tokens", "256")
    except KeyboardInterrupt:
        pytest.fail("the Ctrl-C escaped prepare's main")
    captured = capsys.readouterr()
    assert rc == 130 and captured.err == f"\nerror: interrupted; the dataset in {out} is complete\n"
    assert captured.out == ""  # (no summary: it was interrupted)
    assert Dataset(out).meta["split"]["chunk_tokens"] == 256 and (out / "meta.json").read_text() != old_meta
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "tokenizer.json", "train_000.bin", "val_000.bin"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_a_full_standard_output_is_one_error_line(tmp_path, shared_file, psycho_slice):
    """The summary could not be printed: it used to be a traceback (exit 120), the dataset complete."""
    out = tmp_path / "d"
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "nano_train.prepare", "pretrain", "--quiet", "--tokenizer",
                               str(shared_file("data/tokenizer_4096.json")), "--out_dir", str(out),
                               str(psycho_slice)], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr == (f"error: writing standard output: No space left on device; the dataset in {out} "
                           "is complete\n")
    Dataset(out)


@posix_only
def test_the_lock_removes_the_parent_directories_it_made(tmp_path):
    """dirlock.exclusive made the missing parents too, but removed only the leaf. Each
    directory it made goes, leaf first, while empty; one that is not empty stays, and
    so do its parents, and so does what was there before."""
    from nano_train import dirlock

    (tmp_path / "a").mkdir()
    with pytest.raises(RuntimeError):
        with dirlock.exclusive(tmp_path / "a" / "b" / "c" / "d", ".lock", "test", DataError) as claim:
            assert claim.made == [tmp_path / "a" / n for n in ("b", "b/c", "b/c/d")] and claim.locked
            raise RuntimeError("failed")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a"]
    with dirlock.exclusive(tmp_path / "a" / "b" / "c" / "d", ".lock", "test", DataError):
        (tmp_path / "a" / "b" / "mine.txt").write_text("mine")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["a", "a/b", "a/b/mine.txt"]
    with dirlock.exclusive(tmp_path / "a" / "b", ".lock", "test", DataError) as claim:
        assert claim.made == []
    assert (tmp_path / "a" / "b" / "mine.txt").exists()


def _plain_files(path):
    return {f.name: f.read_bytes() for f in path.iterdir() if f.is_file()}


def _hold_lock(out_dir, pid=12345):
    """Hold the prepare lock on out_dir as another process (pid) would; close the descriptor to let go."""
    import fcntl

    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir / ".prepare.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{pid}\n".encode())
    return fd


@posix_only
def test_a_second_prepare_into_the_same_dir_fails_at_once(tmp_path, shared_file, psycho_slice, capsys):
    tok = shared_file("data/tokenizer_4096.json")
    out = tmp_path / "d"
    prepare_pretrain([psycho_slice], tok, out, chunk_tokens=512, progress=False)
    before = _plain_files(out)
    fd = _hold_lock(out)
    (out / ".prepare.abcd1234.tmp").mkdir()  # the holder's build directory: in use, not stale
    (out / ".prepare.abcd1234.tmp" / ".tokens.tmp").write_bytes(b"12")
    try:
        rc = _command(tmp_path, shared_file, psycho_slice, "--out_dir", str(out), "--overwrite")
        err = capsys.readouterr().err
        assert rc == 2 and err == f"error: another prepare is writing {out} (pid 12345); wait for it to finish " \
                                  "or choose another --out_dir\n"
        assert (out / ".prepare.abcd1234.tmp" / ".tokens.tmp").read_bytes() == b"12"
        with pytest.raises(DataError, match="another prepare is writing"):
            prepare_pretrain([psycho_slice], tok, out, overwrite=True, progress=False)
        assert _plain_files(out) == before | {".prepare.lock": b"12345\n"}
    finally:
        os.close(fd)  # the holder ends (killed or not): its build directory is now stale
    prepare_pretrain([psycho_slice], tok, out, chunk_tokens=512, overwrite=True, progress=False)
    assert "removed .prepare.abcd1234.tmp" in capsys.readouterr().err
    assert _plain_files(out) == before and not (out / ".prepare.abcd1234.tmp").exists()


@posix_only
def test_a_lock_file_removed_before_it_was_locked_is_made_again(tmp_path, shared_file, psycho_slice, monkeypatch):
    """A prepare that ends removes the lock file while holding its lock. One that opened
    the file just before then locks a file no longer in the directory; it must lock
    the file at the path instead, or a third prepare would run beside it."""
    import fcntl

    from nano_train import dirlock

    out = tmp_path / "d"
    out.mkdir()
    locked = []
    real_flock = fcntl.flock

    def flock(fd, op):
        if not locked:  # the holder finishes between our open and our flock
            (out / ".prepare.lock").unlink()
        real_flock(fd, op)
        at_path = (out / ".prepare.lock").stat().st_ino if (out / ".prepare.lock").exists() else None
        locked.append((os.fstat(fd).st_ino, at_path))

    monkeypatch.setattr(dirlock.fcntl, "flock", flock)
    prepare_pretrain([psycho_slice], shared_file("data/tokenizer_4096.json"), out, progress=False)
    assert len(locked) == 2, locked
    assert locked[0][1] is None and locked[1][0] == locked[1][1]  # the orphan first, then the file at the path
    assert not (out / ".prepare.lock").exists()


def test_without_fcntl_prepare_runs_unlocked(tmp_path, shared_file, psycho_slice, monkeypatch):
    """Windows: no lock file, and no way to tell a stale build directory from a live one."""
    from nano_train import dirlock

    monkeypatch.setattr(dirlock, "fcntl", None)
    out = tmp_path / "d"
    (out / ".prepare.abcd1234.tmp").mkdir(parents=True)
    prepare_pretrain([psycho_slice], shared_file("data/tokenizer_4096.json"), out, progress=False)
    assert (out / ".prepare.abcd1234.tmp").is_dir() and not (out / ".prepare.lock").exists()
    Dataset(out)


@posix_only
def test_a_folder_that_cannot_be_locked_is_prepared_unlocked(tmp_path, shared_file, psycho_slice, monkeypatch, capsys):
    """A file system without flock (some network mounts): a note, no lock file, the
    dataset all the same, and no build directory removed (it may be a live one)."""
    import errno

    from nano_train import dirlock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(dirlock.fcntl, "flock", no_locks)
    out = tmp_path / "d"
    (out / ".prepare.abcd1234.tmp").mkdir(parents=True)
    prepare_pretrain([psycho_slice], shared_file("data/tokenizer_4096.json"), out, progress=False)
    assert f"note: {out} cannot be locked (No locks available)" in capsys.readouterr().err
    assert (out / ".prepare.abcd1234.tmp").is_dir() and not (out / ".prepare.lock").exists()
    Dataset(out)

    def broken(fd, op):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(dirlock.fcntl, "flock", broken)  # any other error stops the run
    with pytest.raises(OSError, match="Input/output error"):
        prepare_pretrain([psycho_slice], shared_file("data/tokenizer_4096.json"), tmp_path / "e", progress=False)
    assert not (tmp_path / "e").exists()  # nothing left: no lock file, no folder


@posix_only
def test_the_lock_leaves_nothing_behind(tmp_path, shared_file, psycho_slice):
    tok = shared_file("data/tokenizer_4096.json")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\xfe broken")
    with pytest.raises(DataError, match="not UTF-8"):  # a new out_dir is removed again, with the parents it made
        prepare_pretrain([bad], tok, tmp_path / "new" / "d", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt"]
    out = tmp_path / "d"
    out.mkdir()
    (out / ".prepare.lock").write_text("999999\n")  # a killed prepare's lock file: no dataset, no lock
    with pytest.raises(DataError, match="no meta.json"):
        Dataset(out)
    prepare_pretrain([psycho_slice], tok, out, progress=False)
    assert not (out / ".prepare.lock").exists()
    with pytest.raises(DataError, match="already holds"):
        prepare_pretrain([psycho_slice], tok, out, progress=False)
    assert not (out / ".prepare.lock").exists()


# ---------------------------------------------------------------------------
# Batches: deterministic, resumable in O(1), sliced across ranks (defect 14)


class CountingWindows(TokenWindows):
    def __init__(self, *a):
        super().__init__(*a)
        self.fetched = []

    def fetch(self, rows, layout):
        self.fetched.append(rows.copy())
        return super().fetch(rows, layout)


def test_batches_are_windows_of_the_data(small_pretrain):
    ds = Dataset(small_pretrain)
    src = ds.source("train", 32)
    x, y, m = Batcher(src, 8, seed=3).next()
    assert x.shape == y.shape == (8, 32) and m is None and x.dtype == np.int64
    assert np.array_equal(x[:, 1:], y[:, :-1])
    flat = np.asarray(ds.splits["train"][0]).tobytes()
    for row in x:
        assert flat.find(row.astype(np.uint16).tobytes()) % 2 == 0


def test_batcher_is_deterministic_and_covers_each_epoch(small_pretrain):
    src = Dataset(small_pretrain).source("train", 64)
    a, b, c = Batcher(src, 5, seed=1), Batcher(src, 5, seed=1), Batcher(src, 5, seed=2)
    for _ in range(3):
        xa, xb, xc = a.next()[0], b.next()[0], c.next()[0]
        assert np.array_equal(xa, xb) and not np.array_equal(xa, xc)
    perm, _ = a._epoch(0)
    assert sorted(perm.tolist()) == list(range(src.n_rows))  # every row once per epoch


def test_batcher_and_source_arguments_are_checked(small_pretrain):
    """Used from Python: a batch size of 0 ended in numpy's "need at least one array to
    concatenate", a state without its seed in a bare KeyError, block_size 0 in "larger
    than the data" and a divide-by-zero warning."""
    ds = Dataset(small_pretrain)
    src = ds.source("train", 32)
    for args, message in (((0, 1), "batch_size must be an integer >= 1, got 0"),
                          ((2.0, 1), "batch_size must be an integer >= 1, got 2.0"),
                          ((True, 1), "batch_size must be an integer >= 1, got True"),
                          ((2, -1), "seed must be an integer >= 0, got -1"),
                          ((2, 1, 2, 2), r"rank must be an integer in \[0, world_size = 2\), got 2")):
        with pytest.raises(ValueError, match=message):
            Batcher(src, *args)
    b = Batcher(src, 2, seed=1)
    good = b.state_dict()
    for state, message in (({"row": 3}, "holds no seed / n_rows"), ([], "holds no row / seed / n_rows"),
                           ({**good, "row": -1}, "row must be an integer >= 0, got -1"),
                           ({**good, "row": 1.5}, "row must be an integer >= 0, got 1.5")):
        with pytest.raises(DataError, match=message):
            b.load_state_dict(state)
    b.load_state_dict({**good, "row": np.int64(4)})
    assert b.row == 4
    for block_size in (0, -1, 1.5):
        with pytest.raises(ValueError, match="block_size must be an integer >= 1"):
            ds.source("train", block_size)


def test_resume_jumps_to_the_position_without_rereading(small_pretrain):
    ds = Dataset(small_pretrain)
    shards = ds.splits["train"]
    straight = Batcher(CountingWindows(shards, 32), 4, seed=9)
    batches = [straight.next() for _ in range(7)]
    saved = Batcher(CountingWindows(shards, 32), 4, seed=9)
    for _ in range(3):
        saved.next()
    state = saved.state_dict()
    src = CountingWindows(shards, 32)
    resumed = Batcher(src, 4, seed=9)
    resumed.load_state_dict(state)
    for k in range(3, 7):
        x, y, _ = resumed.next()
        assert np.array_equal(x, batches[k][0]) and np.array_equal(y, batches[k][1])
    # exactly the four new batches were read: nothing before the saved position
    assert len(src.fetched) == 4 and sum(len(r) for r in src.fetched) == 16
    # a position a trillion rows in costs one fetch, not a replay
    far = Batcher(src, 4, seed=9)
    far.load_state_dict({**state, "row": 10 ** 12})
    far.next()
    assert len(src.fetched) == 5
    with pytest.raises(DataError, match="changed"):
        Batcher(ds.source("train", 16), 4, seed=9).load_state_dict(state)


def test_ranks_read_disjoint_slices_that_union_to_the_single_process_batches(small_pretrain):
    src = Dataset(small_pretrain).source("train", 32)
    single = Batcher(src, 3, seed=5)
    ranks = [Batcher(src, 3, seed=5, rank=r, world_size=2) for r in range(2)]
    for _ in range(4):
        one = np.concatenate([single.next()[0], single.next()[0]])
        two = np.concatenate([ranks[0].next()[0], ranks[1].next()[0]])
        assert np.array_equal(one, two)
    assert ranks[0].state_dict() == single.state_dict()


def test_batches_cross_epochs(small_pretrain):
    src = Dataset(small_pretrain).source("val", 32)
    b = Batcher(src, src.n_rows - 1, seed=0)
    b.next()
    x, _, _ = b.next()  # rows n-1 of epoch 0 and 0..n-3 of epoch 1
    assert x.shape[0] == src.n_rows - 1


def _reference_documents(text: str, mode: str) -> list[str]:
    """The document rules written the obvious way, on the whole text at once."""
    lines = text.split("\n")
    if mode == "line":
        return [line for line in lines if line.strip()]
    if mode == "file":
        body = text.lstrip("\n")
        body = body[:-1] if body.endswith("\n") else body
        return [body] if body else []
    docs, current = [], []
    for line in lines:
        if line.strip():
            current.append(line)
        elif current:
            docs.append("\n".join(current))
            current = []
    return docs + (["\n".join(current)] if current else [])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet="ab \n", max_size=60), mode=st.sampled_from(["blank", "line", "file"]),
       piece_chars=st.integers(1, 8))
def test_documents_do_not_depend_on_the_piece_size(tmp_path, text, mode, piece_chars):
    assert _docs(text, mode, tmp_path, piece_chars) == _reference_documents(text, mode)


def test_held_signals_are_acted_on_when_the_block_ends():
    """interrupts.held (prepare's and export's last renames): a Ctrl-C meanwhile lets the
    block finish, then raises; a handler of the caller's own is left alone."""
    import signal

    from nano_train import interrupts

    finished = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.held():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # Python runs the handler between bytecodes: give it many
                pass
            finished.append(True)
    assert finished == [True] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with interrupts.held():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
        assert seen == [signal.SIGINT]  # the caller's handler ran at once, nothing raised
    finally:
        signal.signal(signal.SIGINT, previous)


@posix_only
def test_stop_signals_made_ctrl_c_are_held_and_nohup_s_ignore_is_kept():
    import signal

    from nano_train import interrupts

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        interrupts.as_ctrl_c()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        finished = []
        with pytest.raises(KeyboardInterrupt):
            with interrupts.held():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):
                    pass
                finished.append(True)
        assert finished == [True]
        with pytest.raises(KeyboardInterrupt):  # outside held(): at once
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="no /proc on this system")
def test_an_out_dir_the_file_system_refuses_is_one_error_line_and_1(tmp_path, shared_file, psycho_slice, capsys):
    """/proc answers ENOENT to a mkdir: once taken for another prepare's removal and
    retried until "other prepares keep starting and ending in it" (exit 2)."""
    rc = prepare_cmd.main(["pretrain", "--quiet", "--tokenizer", str(shared_file("data/tokenizer_4096.json")),
                           "--out_dir", "/proc/nano-no-such-dir/d", str(psycho_slice)])
    assert rc == 1 and capsys.readouterr().err == "error: /proc/nano-no-such-dir: No such file or directory\n"


@pytest.mark.parametrize("columns", [80, 40, 12])
def test_progress_on_a_terminal_fits_its_width_and_covers_the_last_draw(monkeypatch, capsys, columns):
    """A bar wider than the terminal wraps, and leaves a line behind at every redraw (was:
    84 characters at 80 columns); a shorter redraw left the end of the last one ("0ss")."""
    from nano_train import data as data_module

    clock = [100.0]
    monkeypatch.setattr(data_module.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(data_module, "terminal_columns", lambda stream: columns)
    bar = data_module.Progress(10**6, "shards", unit=" chunks")
    bar.tty = True
    for done, seconds in ((1, 0.3), (500_000, 0.3), (999_999, 1000.0), (10**6, 0.3)):
        clock[0] += seconds
        bar.update(done)
    draws = capsys.readouterr().err.split("\r")[:-1]
    assert len(draws) == 4 and all(len(d) <= columns - 1 for d in draws), draws
    for last, this in zip(draws, draws[1:]):
        assert len(this) >= len(last.rstrip()), (last, this)
    if columns == 80:
        assert draws[-1].rstrip().endswith("eta    0s")  # the bar narrowed; the text is whole


def test_a_bar_line_fills_the_width_it_narrows_to():
    from nano_train.metrics import bar_line

    after = "x" * 40
    assert bar_line("shards", 0.5, after, 1000) == "shards [" + "#" * 15 + "." * 15 + "] " + after  # 30 wide
    line = bar_line("shards", 0.5, after, 80)  # narrowed: to the last column but one, the text whole
    assert len(line) == 79 and line.endswith("] " + after) and line.count("#") + line.count(".") == 79 - 6 - 4 - 40
    for columns in range(0, 12):  # too narrow for the text: cut, never wider
        assert 1 <= len(bar_line("shards", 0.5, after, columns)) <= max(columns - 1, 1)


@pytest.mark.skipif(sys.platform == "win32", reason="no pty there")
def test_a_terminal_that_says_it_has_no_columns_is_taken_as_unknown(monkeypatch):
    """A pty whose size was never set reports 0 columns (was: bars of one character)."""
    import pty

    from nano_train.metrics import terminal_columns

    main_fd, terminal = pty.openpty()
    try:
        with open(terminal, "w", closefd=False) as stream:
            assert os.get_terminal_size(terminal).columns == 0
            monkeypatch.setenv("COLUMNS", "77")
            assert terminal_columns(stream) == 77
    finally:
        os.close(terminal)
        os.close(main_fd)


def test_the_problems_bar_fits_the_terminal(monkeypatch):
    import io

    from nano_train.problems import runner

    stream = io.StringIO()
    monkeypatch.setattr(runner, "terminal_columns", lambda s: 60)
    bar = runner.TrainingBar(stream=stream)
    bar.tty = True
    bar({"kind": "start", "config": {"optim": {"max_iters": 5000, "time_budget": 120.0}}})
    bar({"kind": "train", "step": 2500, "loss": 1.2345, "elapsed_s": 61.0})
    drawn = stream.getvalue().split("\r")[-1].replace("\033[K", "")
    assert len(drawn) <= 59 and "step 2,500" in drawn, drawn


def test_progress_in_a_log_file_is_a_few_lines(monkeypatch, capsys):
    """Not a terminal: a line as a phase starts, at each further 10% once 10 s have passed
    since the last line, and at the end (was: a line every 10%, 11 for a phase of a second)."""
    from nano_train import data as data_module

    clock = [100.0]
    monkeypatch.setattr(data_module.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(data_module.sys.stderr, "isatty", lambda: False, raising=False)

    def lines(seconds_per_percent: float) -> list[str]:
        bar = data_module.Progress(100, "encode", unit=" chunks")
        for done in range(1, 101):
            clock[0] += seconds_per_percent
            bar.update(done)
        bar.close()
        return capsys.readouterr().err.splitlines()

    quick = lines(0.01)  # one second in all
    assert len(quick) == 2 and "100.0%" in quick[-1], quick
    slow = lines(2.0)  # 200 s: each 10% takes 20 s
    assert [line.split("]")[1].split("%")[0].strip() for line in slow] == ["1.0"] + [
        f"{p:.1f}" for p in range(10, 101, 10)], slow
    medium = lines(0.25)  # 25 s: the first update past a 10% mark once 10 s have passed
    assert [line.split("]")[1].split("%")[0].strip() for line in medium] == ["1.0", "41.0", "81.0", "100.0"], medium


def test_a_progress_bar_that_cannot_be_drawn_does_not_stop_the_work(tmp_path, psycho_slice, shared_file):
    """stderr a file on a full disk: the bar stops being drawn, prepare finishes (was: the
    first draw's ENOSPC ended it, exit 1, with no dataset and no word, stderr being full)."""
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "nano_train.prepare", "pretrain", "--tokenizer",
                            str(shared_file("data/tokenizer_4096.json")), "--out_dir", str(tmp_path / "d"),
                            str(psycho_slice)], stdout=subprocess.PIPE, stderr=full, text=True)
    assert r.returncode == 0 and (tmp_path / "d" / "meta.json").is_file()
    assert r.stdout.startswith(f"{tmp_path / 'd'}: 1 document, 200,000 characters")


@pytest.mark.parametrize("stderr", ["full", "closed"])
def test_notes_that_cannot_be_written_do_not_stop_prepare(tmp_path, shared_file, stderr):
    """A bad line skipped by --skip_bad gets a note on stderr: on a full disk the note is
    lost and the dataset still made (was: exit 1, nothing written); with stderr closed it
    does not go to stdout, among the summary (was: print(file=None) writes to stdout)."""
    src = tmp_path / "s.jsonl"
    src.write_text('{"question": "12", "answer": "34"}\nnot json\n' * 3, encoding="utf-8")
    command = [sys.executable, "-m", "nano_train.prepare", "sft", "--tokenizer", str(shared_file("data/nano_80.json")),
               "--out_dir", str(tmp_path / "d"), "--block_size", "16", "--skip_bad", str(src)]
    with open("/dev/full", "w") as full:
        r = subprocess.run(command, stdout=subprocess.PIPE, text=True,
                           **({"stderr": full} if stderr == "full" else {"stderr": subprocess.DEVNULL,
                                                                          "preexec_fn": lambda: os.close(2)}))
    assert r.returncode == 0 and (tmp_path / "d" / "meta.json").is_file()
    assert "note:" not in r.stdout and "skipped" in r.stdout


def test_an_input_that_changes_while_it_is_read_is_an_error_and_nothing_is_written(tmp_path, shared_file, monkeypatch):
    """A file still being written (or replaced, or cut short) while prepare reads it: the
    dataset would hold other text than the file's, and meta.json another size (was: exit 0,
    the size at the end recorded). A file changed after it was read keeps the size read."""
    tok = shared_file("data/tokenizer_4096.json")
    text = tmp_path / "t.txt"
    original = "第一段的文字。\n\n第二段的文字。\n\n" * 300

    def during(action, reader="iter_documents"):
        """Run action once the reader has handed out its third item."""
        real = getattr(data, reader)

        def reading(f, *args):
            for i, item in enumerate(real(f, *args)):
                if i == 2:
                    action()
                yield item

        monkeypatch.setattr(data, reader, reading)

    def append():
        with open(text, "a", encoding="utf-8") as f:
            f.write("追加的一行。\n")

    def replace():
        (tmp_path / "new.txt").write_text("新的文字。\n", encoding="utf-8")
        os.replace(tmp_path / "new.txt", text)

    cases = [(append, r"its size went from 13,800 to 13,819 bytes"), (replace, "it was replaced by another file"),
             (lambda: os.truncate(text, 3000), "its size went from 13,800 to 3,000 bytes")]
    for action, how in cases:
        text.write_text(original, encoding="utf-8")
        during(action)
        with pytest.raises(DataError, match=rf"t\.txt changed while it was read \({how}\): nothing was written; "
                                            r"prepare again once it no longer changes"):
            prepare_pretrain([text], tok, tmp_path / "x", progress=False)
        assert not (tmp_path / "x").exists()
        monkeypatch.undo()
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"question": "你是谁", "answer": "我是Nano"}, ensure_ascii=False) + "\n" * 2 * 5,
                    encoding="utf-8")
    during(lambda: os.truncate(rows, 10), "_jsonl_lines")
    with pytest.raises(DataError, match=r"rows\.jsonl changed while it was read \(its size went from"):
        prepare_sft([rows], tok, tmp_path / "y", block_size=32, progress=False)
    monkeypatch.undo()
    text.write_text(original, encoding="utf-8")
    real_hash = data.split_hash
    monkeypatch.setattr(data, "split_hash", lambda *a: (append(), real_hash(*a))[1])  # read whole, then changed
    prepare_pretrain([text], tok, tmp_path / "x", val_fraction=0, progress=False)
    assert json.loads((tmp_path / "x" / "meta.json").read_text())["inputs"][0]["bytes"] == len(original.encode())


def test_the_output_folder_is_no_input(tmp_path, shared_file, psycho_slice):
    """A corpus folder given as --out_dir too, or a glob that takes in the dataset folder: its
    shards were read as text the second time (and called UTF-16, with an iconv command)."""
    tok = shared_file("data/tokenizer_4096.json")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(psycho_slice, corpus / "a.txt")
    with pytest.raises(DataError, match=rf"^input {re.escape(str(corpus))} is the output folder --out_dir "
                                        rf"{re.escape(str(corpus))}: what prepare writes there is no input"):
        prepare_pretrain([corpus], tok, corpus, progress=False)
    prepare_pretrain([corpus], tok, corpus / "ds", progress=False)  # a dataset inside the corpus folder: left out
    with pytest.raises(DataError, match=r"ds is the output folder --out_dir"):
        prepare_pretrain([corpus / "a.txt", corpus / "ds"], tok, corpus / "ds", overwrite=True, progress=False)
    with pytest.raises(DataError, match=r"meta\.json is inside the output folder --out_dir"):
        prepare_sft([corpus / "ds" / "meta.json"], tok, corpus / "ds", block_size=32, overwrite=True, progress=False)
