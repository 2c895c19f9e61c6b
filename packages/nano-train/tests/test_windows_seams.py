"""Pretraining rows never join text that was not adjacent in the corpus.

The corpus here is made so that every token tells its place: a vocabulary of one
character per token, and a text whose character at stream position p is the p-th of
the vocabulary. A row (x, then y's last token) is then text that was adjacent in
the corpus exactly when its ids run up by one, and a row that crossed a seam of
the shuffled shards (two chunks that were not neighbours) would show a jump.
"""

import json

import numpy as np
import pytest

from nano_tokenizer import Tokenizer

from nano_train import prepare as prepare_cmd
from nano_train.data import CHUNK_TOKENS, Batcher, DataError, Dataset, TokenWindows, prepare_pretrain

SPECIALS = ["<|padding|>", "<|unknown|>", "<|bos|>", "<|eos|>", "<|instruct_mark|>", "<|response_mark|>"]
N_CHARS = 8000
CHUNK = 64


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    itos = SPECIALS + [chr(0x4E00 + i) for i in range(N_CHARS)]
    path = tmp_path_factory.mktemp("vocab") / "places.json"
    Tokenizer(itos, {t: i for i, t in enumerate(SPECIALS)}).save(path)
    return path


def place_corpus(folder, n_tokens):
    """A text of n_tokens tokens whose token at stream position p is place p (id 6 + p)."""
    path = folder / "places.txt"
    path.write_text("".join(chr(0x4E00 + p) for p in range(n_tokens)), encoding="utf-8")
    return path


def prepared(tmp_path, vocab, n_tokens, name="d", **options):
    out = tmp_path / name
    options = {"chunk_tokens": CHUNK, "val_fraction": 0.2, "seed": 3, "doc_mode": "file", **options}
    summary = prepare_pretrain([place_corpus(tmp_path, n_tokens)], vocab, out, progress=False, **options)
    return out, summary


def epochs_of_rows(source, epochs, seed=0):
    """Every row of the first `epochs` epochs, as stream positions [epochs, rows, T + 1]."""
    batches = Batcher(source, source.n_rows, seed=seed)
    out = []
    for _ in range(epochs):
        x, y, _ = batches.next()
        out.append(np.concatenate([x, y[:, -1:]], axis=1) - len(SPECIALS))
    return np.stack(out)


def split_chunks(meta, split):
    val = set(meta["split"]["val_chunks"])
    return [c for c in range(meta["split"]["n_chunks"]) if (c in val) == (split == "val")]


def runs(chunks):
    """The runs of consecutive numbers in a sorted list, as lists."""
    out = []
    for c in chunks:
        if out and out[-1][-1] == c - 1:
            out[-1].append(c)
        else:
            out.append([c])
    return out


@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffled", "corpus_order"])
@pytest.mark.parametrize("block_size", [16, 24])
def test_no_row_joins_chunks_that_were_not_neighbours_and_epochs_cover_every_token(
        tmp_path, vocab, shuffle, block_size):
    """93 full chunks of 64 and a last one of 10 (too short for a row), a fifth held out.
    Over enough epochs the rows read every token of each split but the short chunk's; at
    block 16 (which divides the chunk) a token away from a chunk's ends takes every
    position of a row."""
    n_tokens = 93 * CHUNK + 10
    out, _ = prepared(tmp_path, vocab, n_tokens, shuffle=shuffle)
    ds = Dataset(out)
    stream_chunk = np.arange(n_tokens) // CHUNK
    for split in ("train", "val"):
        chunks = split_chunks(ds.meta, split)
        assert len(chunks) >= 5  # several seams in each split
        src = ds.source(split, block_size)
        rows = epochs_of_rows(src, 300)
        # each row is text that was adjacent in the corpus: its places run up by one
        assert (np.diff(rows, axis=2) == 1).all(), f"{split}: a row crosses a seam"
        # every token of the split is read, but the short last chunk's (10 tokens < block_size + 1)
        expected = {p for p in range(n_tokens) if stream_chunk[p] in chunks and stream_chunk[p] < 93}
        assert set(np.unique(rows).tolist()) == expected
        # an epoch has (length - 1) // block_size rows of each piece: a chunk, or in corpus order a run of chunks
        pieces = runs(chunks) if not shuffle else [[c] for c in chunks]
        lengths = [sum(min(CHUNK, n_tokens - c * CHUNK) for c in piece) for piece in pieces]
        assert src.n_rows == sum((n - 1) // block_size for n in lengths)
        if not shuffle:
            # in corpus order, neighbouring chunks of a split are one text: rows run across their boundary
            assert (stream_chunk[rows[..., 0]] != stream_chunk[rows[..., -1]]).any()
        if block_size == 16 and shuffle:
            middle = (rows % CHUNK >= block_size) & (rows % CHUNK < CHUNK - block_size)
            place_and_column = {(p, c) for p, c in zip(rows[middle], np.nonzero(middle)[2])}
            for p in set(rows[middle].tolist()):
                assert {c for c in range(block_size + 1) if (p, c) in place_and_column} >= set(range(block_size))


def test_a_short_last_chunk_long_enough_for_a_row_is_read(tmp_path, vocab):
    n_tokens = 40 * CHUNK + 30
    out, _ = prepared(tmp_path, vocab, n_tokens, val_fraction=0.1)
    ds = Dataset(out)
    last = [p for p in range(40 * CHUNK, n_tokens)]
    split = "val" if 40 in ds.meta["split"]["val_chunks"] else "train"
    rows = epochs_of_rows(ds.source(split, 16), 200)
    assert (np.diff(rows, axis=2) == 1).all()
    assert set(last) <= set(np.unique(rows).tolist())


def test_chunks_too_short_for_a_row_are_an_error_that_says_to_prepare_again(tmp_path, vocab):
    out, _ = prepared(tmp_path, vocab, 60 * CHUNK)
    ds = Dataset(out)
    assert ds.source("train", CHUNK - 1).n_rows > 0  # a row of 64 tokens fits a chunk exactly
    for split in ("train", "val"):
        with pytest.raises(DataError, match=r"chunks of 64 tokens .*every row would join two unrelated chunks; "
                                            r"prepare the data again with --chunk_tokens 8192 .*model.block_size"):
            ds.source(split, CHUNK)
    # in corpus order, rows run through the runs of neighbouring chunks, which are longer than one chunk
    ordered, _ = prepared(tmp_path, vocab, 60 * CHUNK, name="ordered", shuffle=False)
    src = Dataset(ordered).source("train", 2 * CHUNK)
    assert (np.diff(epochs_of_rows(src, 20), axis=2) == 1).all()
    # runs too short are the ordinary error, which names --chunk_tokens too
    longest = max(len(run) for run in runs(split_chunks(Dataset(ordered).meta, "train"))) * CHUNK
    with pytest.raises(DataError, match=rf"block_size {longest} is larger than the data: the train split's longest "
                                        rf"run of adjacent chunks has {longest} tokens .*--chunk_tokens"):
        Dataset(ordered).source("train", longest)


def test_a_dataset_whose_meta_json_has_no_chunks_keeps_windows_through_whole_shards(tmp_path, vocab):
    out, _ = prepared(tmp_path, vocab, 60 * CHUNK)
    meta = json.loads((out / "meta.json").read_text())
    del meta["split"]["chunk_tokens"]
    (out / "meta.json").write_text(json.dumps(meta))
    ds = Dataset(out)
    src = ds.source("train", 100)  # longer than a chunk: no seams known, no error
    assert src.windows == "shards"
    assert src.n_rows == sum((len(s) - 1) // 100 for s in ds.splits["train"])
    whole = TokenWindows(ds.splits["train"], 100)
    a, b = Batcher(src, 4, seed=1), Batcher(whole, 4, seed=1)
    for _ in range(5):
        assert np.array_equal(a.next()[0], b.next()[0])


def test_a_run_saved_before_rows_stayed_inside_chunks_resumes_exactly(tmp_path, vocab, capsys):
    out, _ = prepared(tmp_path, vocab, 60 * CHUNK)
    ds = Dataset(out)
    old = TokenWindows(ds.splits["train"], 16)  # the rows of that version: through whole shards
    straight = Batcher(old, 5, seed=2)
    batches = [straight.next()[0] for _ in range(9)]
    saved = Batcher(old, 5, seed=2)
    for _ in range(4):
        saved.next()
    state = saved.state_dict()
    del state["windows"]  # (that version's state had no such field)
    resumed = Batcher(ds.source("train", 16), 5, seed=2)
    assert resumed.source.n_rows != old.n_rows
    resumed.load_state_dict(state)
    assert "keeps those rows to resume exactly" in capsys.readouterr().err
    for k in range(4, 9):
        assert np.array_equal(resumed.next()[0], batches[k])
    assert resumed.state_dict()["windows"] == "shards"  # and so on at the next resume
    # a state saved with rows inside chunks resumes with them, without a note
    fresh = Batcher(ds.source("train", 16), 5, seed=2)
    fresh.next()
    again = Batcher(ds.source("train", 16), 5, seed=2)
    again.load_state_dict(fresh.state_dict())
    assert again.source.windows == "chunks" and capsys.readouterr().err == ""
    assert np.array_equal(again.next()[0], fresh.next()[0])


@pytest.mark.parametrize("edit,field", [
    (lambda m: m.pop("shuffle"), "shuffle.enabled"),
    (lambda m: m["split"].update(chunk_tokens=0), "split.chunk_tokens"),
    (lambda m: m["split"].update(chunk_tokens="64"), "split.chunk_tokens"),
    (lambda m: m["split"].update(val_chunks=[10 ** 9]), "split.val_chunks"),
    (lambda m: m["split"].pop("n_chunks"), "split.n_chunks"),
])
def test_a_damaged_chunk_record_names_the_field(tmp_path, vocab, edit, field):
    out, _ = prepared(tmp_path, vocab, 30 * CHUNK, shuffle=False)
    meta = json.loads((out / "meta.json").read_text())
    edit(meta)
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="meta.json") as err:
        Dataset(out)
    assert f"'{field}'" in str(err.value)


def test_chunks_that_do_not_match_the_shards_are_an_error(tmp_path, vocab):
    out, _ = prepared(tmp_path, vocab, 30 * CHUNK, shuffle=False)
    meta = json.loads((out / "meta.json").read_text())
    meta["split"]["val_chunks"] = meta["split"]["val_chunks"][1:]
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"'split.val_chunks' does not match the train shards"):
        Dataset(out).source("train", 16)
    meta["split"]["n_chunks"] += 1
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"'split.n_chunks' is 31, but the shards hold 30 chunks"):
        Dataset(out).source("val", 16)


def test_the_summary_warns_when_chunks_are_too_short_for_the_default_block(tmp_path, vocab):
    _, summary = prepared(tmp_path, vocab, 60 * CHUNK)
    assert "warning: the training split's longest chunk holds 64 tokens: a model with block_size 64 or more " \
           "cannot train on it" in summary.text()
    assert "warning: the validation split's longest chunk holds 64 tokens" in summary.text()
    # in corpus order the pieces are runs of neighbouring chunks
    out, summary = prepared(tmp_path, vocab, 60 * CHUNK, name="ordered", shuffle=False)
    longest = {split: max(len(run) for run in runs(split_chunks(Dataset(out).meta, split))) * CHUNK
               for split in ("train", "val")}
    assert (summary.longest_train_piece, summary.longest_val_piece) == (longest["train"], longest["val"])
    assert f"warning: the validation split's longest run of adjacent chunks holds {longest['val']} tokens" \
        in summary.text()
    _, summary = prepared(tmp_path, vocab, 7000, name="big", chunk_tokens=1000, val_fraction=0.01)
    assert "warning" not in summary.text()
    # one chunk of seven held out is far more than 1%: a note says why
    assert "note: the validation split is 14% of the tokens (--val_fraction 0.01): it takes whole chunks of " \
           "1,000 tokens" in summary.text()


def test_the_default_chunk_keeps_most_tokens_of_an_epoch():
    assert CHUNK_TOKENS == 8192
    args = prepare_cmd.build_parser().parse_args(["pretrain", "--tokenizer", "v.json", "--out_dir", "d", "t.txt"])
    assert args.chunk_tokens == CHUNK_TOKENS
    shard = np.zeros(3 * CHUNK_TOKENS, dtype=np.uint16)
    for block_size, share in ((128, 0.98), (256, 0.96), (512, 0.93), (1024, 0.87)):
        src = TokenWindows([shard], block_size, [np.array([CHUNK_TOKENS, 2 * CHUNK_TOKENS])])
        assert src.n_rows * block_size / len(shard) > share


@pytest.mark.parametrize("block_size", [40, 16])
def test_a_run_says_when_an_epoch_reads_little_of_each_chunk(tmp_path, vocab, tiny_config, capsys, block_size):
    """Rows of 40 in chunks of 64 read 40 of every 64 tokens an epoch (62%): the run says
    so and how to prepare the data; rows of 16 read 48 of 64 (75%), no note."""
    from nano_train.train import train

    out, _ = prepared(tmp_path, vocab, 60 * CHUNK)
    train(tiny_config(out, max_iters=1, eval_iters=0, sample_tokens=0, block_size=block_size))
    err = capsys.readouterr().err
    if block_size == 40:
        assert ("note: an epoch reads 62% of the training tokens: rows of block_size 40 stay inside the dataset's "
                f"chunks (prepared with --chunk_tokens {CHUNK})") in err
        assert f"prepare the data again with --chunk_tokens {CHUNK_TOKENS} to read more of it each epoch" in err
    else:
        assert "an epoch reads" not in err
