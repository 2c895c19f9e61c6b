"""`python -m nano_train.evaluate`: a model scored on a dataset's split or on a text file.

Each figure is checked against the same cross-entropy computed here another way: from
the model's logits (not the blocked loss the command runs), over windows and rows laid
out here, not by the command's batching.
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nano_train.convert import export_bin
from nano_train.data import Dataset
from nano_train.evaluate import main, score_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vocab(shared_file):
    from nano_tokenizer import Tokenizer

    return Tokenizer.load(shared_file("data/tokenizer_4096.json"))


@pytest.fixture(scope="module")
def model32(vocab, tiny):
    """A seeded causal model of the 4096-token vocabulary, block 32."""
    return tiny(3, vocab_size=vocab.vocab_size, block_size=32, n_head=2, n_kv_head=1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, model32, vocab, save_ckpt):
    return save_ckpt(tmp_path_factory.mktemp("eval") / "m.pt", model32, vocab)


def summed_ce(model, x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, int]:
    """(summed cross-entropy in nats, tokens counted) of one row, from the full logits."""
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(x[None].astype(np.int64)))
    ce = F.cross_entropy(logits[0].double(), torch.from_numpy(y.astype(np.int64)), reduction="none")
    w = torch.ones_like(ce) if mask is None else torch.from_numpy(mask.astype(np.float64))
    return float((ce * w).sum()), int(w.sum())


def run_json(capsys, *args) -> dict:
    assert main([*args, "--json", "--quiet"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_a_text_scores_every_token_but_the_first_once(tmp_path, capsys, ckpt, model32, vocab, psycho_slice):
    text = psycho_slice.read_text(encoding="utf-8")[:700] + "\u2603"  # a character the vocabulary lacks
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    ids = np.array(vocab.encode(text))
    T = model32.config.block_size
    nats = tokens = 0
    for k in range(0, len(ids) - 1, T):  # window k: ids[k : k + T] predicts ids[k + 1 : k + T + 1]
        w = ids[k:k + T + 1]
        n, t = summed_ce(model32, w[:-1], w[1:])
        nats, tokens = nats + n, tokens + t
    assert tokens == len(ids) - 1 and len(ids) % T not in (0, 1)  # (a short last window too)
    for batch in ("1", "3", "64"):
        got = run_json(capsys, "-m", str(ckpt), "--text", str(path), "--batch-size", batch)
        assert got["tokens"] == tokens and got["characters"] == len(text) and got["unknown"] == 1
        assert got["loss"] == pytest.approx(nats / tokens, rel=1e-5)
        assert got["bits_per_character"] == pytest.approx(nats / math.log(2) / len(text), rel=1e-5)
        assert got["perplexity"] == pytest.approx(math.exp(nats / tokens), rel=1e-5)
    # the first 5 windows only: their tokens; the text's characters are not all scored, so no per-character figure
    got = run_json(capsys, "-m", str(ckpt), "--text", str(path), "--max-rows", "5", "--batch-size", "2")
    first = sum(summed_ce(model32, ids[k:k + T], ids[k + 1:k + T + 1])[0] for k in range(0, 5 * T, T))
    assert got["tokens"] == 5 * T and got["loss"] == pytest.approx(first / (5 * T), rel=1e-5)
    assert "bits_per_character" not in got and "characters" not in got


def test_a_text_is_read_as_prepare_reads_a_corpus(tmp_path, capsys, ckpt):
    """A byte-order mark is dropped and CRLF line ends are read as LF, as prepare pretrain
    reads them, so the scored tokens are those a model trained on the text saw."""
    plain, crlf = tmp_path / "lf.txt", tmp_path / "crlf.txt"
    lines = ["人的心理活动", "是一个过程", "心理学研究它"] * 12
    plain.write_bytes("\n".join(lines).encode())
    crlf.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode())
    a = run_json(capsys, "-m", str(ckpt), "--text", str(plain))
    b = run_json(capsys, "-m", str(ckpt), "--text", str(crlf))
    assert a["tokens"] == b["tokens"] and a["characters"] == b["characters"]
    assert a["loss"] == b["loss"]


def test_a_pretraining_split_scores_each_row_of_each_run_in_order(capsys, ckpt, model32, small_pretrain):
    ds = Dataset(small_pretrain)
    T = model32.config.block_size
    source = ds.source("val", T)
    nats = tokens = rows = 0
    for k in range(len(source.shards)):  # each run of adjacent text, its windows from its start
        piece = np.asarray(source.shards[k])
        for j in range((len(piece) - 1) // T):
            w = piece[j * T:j * T + T + 1]
            n, t = summed_ce(model32, w[:-1], w[1:])
            nats, tokens, rows = nats + n, tokens + t, rows + 1
    assert rows == source.n_rows > 8
    got = run_json(capsys, "-m", str(ckpt), "--data", str(small_pretrain), "--batch-size", "5")
    assert (got["rows"], got["tokens"]) == (rows, tokens)
    assert got["loss"] == pytest.approx(nats / tokens, rel=1e-5)
    assert "bits_per_character" not in got
    # the Python API gives the same; --max-rows takes the first rows
    assert score_dataset(model32, ds, "val").loss == pytest.approx(got["loss"], rel=1e-6)
    assert run_json(capsys, "-m", str(ckpt), "--data", str(small_pretrain), "--max-rows", "3")["tokens"] == 3 * T
    train = run_json(capsys, "-m", str(ckpt), "--data", str(small_pretrain), "--split", "train", "--max-rows", "4")
    assert train["rows"] == 4 and train["loss"] != got["loss"]


def test_an_sft_split_scores_the_answers_only(tmp_path, capsys, uneven_sft, vocab, save_ckpt, tiny):
    model = tiny(5, vocab_size=vocab.vocab_size, block_size=64, n_layer=1, n_head=2, n_kv_head=2)
    ckpt = save_ckpt(tmp_path / "sft.pt", model, vocab)
    ds = Dataset(uneven_sft)
    nats = tokens = 0
    for t, m in ds.splits["val"]:
        for row, mask in zip(np.asarray(t), np.asarray(m)):
            n, c = summed_ce(model, row[:-1], row[1:], mask[1:])
            nats, tokens = nats + n, tokens + c
    got = run_json(capsys, "-m", str(ckpt), "--data", str(uneven_sft))
    assert got["tokens"] == tokens < got["rows"] * 63  # the answers, not the rows' every position
    assert got["loss"] == pytest.approx(nats / tokens, rel=1e-5)


def test_a_checkpoint_and_its_export_score_alike_and_q8_0_shows_its_cost(tmp_path, capsys, ckpt, model32, vocab,
                                                                        small_pretrain):
    f32, q8 = tmp_path / "m.bin", tmp_path / "m_q8.bin"
    export_bin(model32, f32, tokenizer=vocab)
    export_bin(model32, q8, quant="q8_0", tokenizer=vocab)
    scores = [run_json(capsys, "-m", str(m), "--data", str(small_pretrain))["loss"] for m in (ckpt, f32, q8)]
    assert scores[1] == pytest.approx(scores[0], rel=1e-6)
    assert scores[2] != scores[0] and scores[2] == pytest.approx(scores[0], rel=1e-2)


def test_bfloat16_scores_close_to_float32(capsys, ckpt, small_pretrain):
    a = run_json(capsys, "-m", str(ckpt), "--data", str(small_pretrain), "--max-rows", "8")
    b = run_json(capsys, "-m", str(ckpt), "--data", str(small_pretrain), "--max-rows", "8", "--dtype", "bfloat16")
    assert b["loss"] != a["loss"] and b["loss"] == pytest.approx(a["loss"], rel=2e-2)


def test_the_text_summary(tmp_path, capsys, ckpt):
    path = tmp_path / "t.txt"
    path.write_text("人的心理活动是一个过程。" * 10, encoding="utf-8")
    assert main(["-m", str(ckpt), "--text", str(path), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"model: {ckpt}: 2 layers x 32, block 32, vocabulary 4096, causal"
    assert lines[1] == f"data: {path}: 4 windows, 119 tokens scored"
    assert lines[2] == "text: 120 characters, 1.000 tokens per character"
    assert lines[3].startswith("loss ") and lines[3].endswith(" bits/character") and len(lines) == 4


def test_bad_input_is_one_error_line(tmp_path, capsys, error_line, ckpt, vocab, self_id_sft, small_pretrain,
                                     save_ckpt, tiny):
    def fails(status, *args) -> str:
        assert main([*args, "--quiet"]) == status
        return error_line(capsys)

    text = tmp_path / "t.txt"
    text.write_text("人的心理", encoding="utf-8")
    assert f"vocabulary mismatch: the model {ckpt} uses a different vocabulary than the dataset {self_id_sft}" in fails(
        1, "-m", str(ckpt), "--data", str(self_id_sft))
    assert "has no split 'test' (it has: train, val)" in fails(1, "-m", str(ckpt), "--data", str(small_pretrain),
                                                                "--split", "test")
    assert "does not exist" in fails(1, "-m", str(ckpt), "--data", str(tmp_path / "none"))
    assert fails(1, "-m", str(ckpt), "--data", str(text)) == (
        f"error: --data {text}: is a regular file, not a dataset folder; give the --out_dir of `prepare`, "
        "or score a text with --text")
    assert fails(1, "-m", str(tmp_path / "no.pt"), "--text", str(text)) == f"error: {tmp_path / 'no.pt'}: not found"
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("人的\n心理 caf\u00e9".encode("utf-8")[:-2] + b"\xe9")
    assert f"error: {bad}:2: not UTF-8 text" in fails(1, "-m", str(ckpt), "--text", str(bad))
    utf16 = tmp_path / "u16.txt"
    utf16.write_bytes("人的心理".encode("utf-16"))
    assert "UTF-16" in fails(1, "-m", str(ckpt), "--text", str(utf16))
    one = tmp_path / "one.txt"
    one.write_text("人", encoding="utf-8")
    assert "fewer than 2 tokens" in fails(1, "-m", str(ckpt), "--text", str(one))
    # a full-attention model sees what it predicts: no text or pretraining split scores it
    full = save_ckpt(tmp_path / "full.pt", tiny(0, vocab_size=4096, block_size=32, n_layer=1, n_head=2, n_kv_head=2,
                                                is_causal=False), vocab)
    assert "full attention" in fails(1, "-m", str(full), "--text", str(text))
    assert "score it on seq2seq data" in fails(1, "-m", str(full), "--data", str(small_pretrain))
    # a model file without a vocabulary needs one for a text, not for a dataset
    plain = tmp_path / "plain.bin"
    export_bin(tiny(3, vocab_size=4096, block_size=32, n_layer=1, n_head=2, n_kv_head=2), plain)
    assert "give one with --tokenizer" in fails(1, "-m", str(plain), "--text", str(text))
    assert main(["-m", str(plain), "--data", str(small_pretrain), "--max-rows", "2", "--quiet"]) == 0
    capsys.readouterr()
    # a held-out split too short for the model's rows: the remedy is another split, not a training setting
    from nano_train.data import prepare_pretrain

    short = tmp_path / "short.txt"
    short.write_text(text.read_text(encoding="utf-8") * 500, encoding="utf-8")
    prepare_pretrain([short], vocab.source, tmp_path / "short", chunk_tokens=512, val_fraction=0.2, shuffle=False,
                     progress=False)
    wide = save_ckpt(tmp_path / "wide.pt", tiny(0, vocab_size=4096, block_size=600, n_layer=1, n_head=2,
                                                n_kv_head=2), vocab)
    err = fails(1, "-m", str(wide), "--data", str(tmp_path / "short"))
    assert f"too short for block_size 600 (set by the model {wide})" in err
    assert err.endswith("or score the train split (--split train)")
    assert main(["-m", str(wide), "--data", str(tmp_path / "short"), "--split", "train", "--quiet"]) == 0
    capsys.readouterr()
    # usage errors: status 2
    assert "--batch-size must be at least 1" in fails(2, "-m", str(ckpt), "--text", str(text), "--batch-size", "0")
    assert "--split goes with --data" in fails(2, "-m", str(ckpt), "--text", str(text), "--split", "train")


def test_a_seq2seq_split_scores_its_targets_with_a_full_attention_model(tmp_path, capsys, nano80, save_ckpt, tiny):
    from nano_train.data import write_rows

    rng = np.random.default_rng(1)
    inputs, targets = (rng.integers(6, 80, size=(7, 16)) for _ in range(2))
    mask = (rng.random((7, 16)) < 0.5).astype(np.uint8)
    write_rows(tmp_path / "s2s", nano80, "seq2seq", {"train": (inputs, targets, mask), "val": (inputs, targets, mask)})
    model = tiny(2, n_layer=1, n_head=2, n_kv_head=2, is_causal=False)
    nats = tokens = 0
    for x, y, m in zip(inputs, targets, mask):
        n, t = summed_ce(model, x, y, m)
        nats, tokens = nats + n, tokens + t
    ckpt = save_ckpt(tmp_path / "s2s.pt", model, nano80)
    got = run_json(capsys, "-m", str(ckpt), "--data", str(tmp_path / "s2s"), "--batch-size", "3")
    assert (got["rows"], got["tokens"]) == (7, tokens) and got["loss"] == pytest.approx(nats / tokens, rel=1e-5)
    # its export (layout 2026.101 records full attention) scores alike; a causal model is refused
    export_bin(model, tmp_path / "s2s.bin", tokenizer=nano80)
    assert run_json(capsys, "-m", str(tmp_path / "s2s.bin"), "--data", str(tmp_path / "s2s"))["loss"] == \
        pytest.approx(got["loss"], rel=1e-6)
    causal = save_ckpt(tmp_path / "c.pt", tiny(0, n_layer=1, n_head=2, n_kv_head=2), nano80)
    assert main(["-m", str(causal), "--data", str(tmp_path / "s2s"), "--quiet"]) == 1
    assert "a seq2seq dataset is scored with a full-attention model" in capsys.readouterr().err


def test_the_sort6_fixture_scores_low_on_sorting_with_seq2seq(tmp_path, capsys, nano80, sort6_path):
    """sort6_f32.bin, a full-attention model in a layout that records no attention kind,
    reads as causal unless --seq2seq; read as full attention, it sorts (a loss near 0)."""
    from nano_train.data import write_rows

    rng = np.random.default_rng(0)
    digits = ["".join(rng.choice(list("123456789"), 6)) for _ in range(32)]
    inputs = np.array([nano80.encode(d) for d in digits])
    targets = np.array([nano80.encode("".join(sorted(d))) for d in digits])
    write_rows(tmp_path / "sort", nano80, "seq2seq", {"val": (inputs, targets, np.ones_like(inputs, np.uint8))})
    assert main(["-m", str(sort6_path), "--data", str(tmp_path / "sort"), "--quiet"]) == 1
    assert "--seq2seq reads a .bin" in capsys.readouterr().err
    got = run_json(capsys, "-m", str(sort6_path), "--data", str(tmp_path / "sort"), "--seq2seq")
    assert got["tokens"] == 32 * 6 and got["loss"] < 0.05


def test_standard_output_that_cannot_be_written(tmp_path, ckpt):
    import subprocess
    import sys

    text = tmp_path / "t.txt"
    text.write_text("人的心理活动是一个过程。" * 4, encoding="utf-8")
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "nano_train.evaluate", "-m", str(ckpt), "--text", str(text), "--quiet"],
                           stdout=full, stderr=subprocess.PIPE, text=True)
    assert (r.returncode, r.stderr) == (1, "error: writing standard output: No space left on device\n")


def test_a_text_that_is_not_a_regular_file_is_refused(tmp_path, ckpt):
    """A FIFO (a shell's <(...) or /dev/stdin) is read twice, its encoding sniffed first: it
    waited forever for a writer, or lost its first 64 KiB (an error that blamed the text,
    or a wrong loss). It is refused as prepare refuses it."""
    import os
    import subprocess
    import sys

    fifo = tmp_path / "t.fifo"
    os.mkfifo(fifo)
    r = subprocess.run([sys.executable, "-m", "nano_train.evaluate", "-m", str(ckpt), "--text", str(fifo), "--quiet"],
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr) == (1, f"error: {fifo}: is a FIFO (a pipe), not a regular file; "
                                           "save the text to a file first\n")


def test_max_rows_stops_reading_a_text_at_the_windows_it_scores(tmp_path, capsys, ckpt):
    """--max-rows 1 reads no further than its window needs, whatever --batch-size: it read
    (and held the ids of) the whole text while waiting for a batch it would never fill. The
    bad byte 6 MB in is never reached."""
    path = tmp_path / "long.txt"
    path.write_bytes(("人的心理活动是一个过程。" * 200_000).encode() + b"\xff")
    got = run_json(capsys, "-m", str(ckpt), "--text", str(path), "--max-rows", "1", "--batch-size", "100000")
    assert (got["rows"], got["tokens"]) == (1, 32) and "characters" not in got


def test_a_batch_too_large_for_memory_is_one_error_line(tmp_path, capsys, error_line, ckpt, monkeypatch):
    from nano_train import evaluate

    def fails(*args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 1280000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(evaluate, "_score", fails)
    text = tmp_path / "t.txt"
    text.write_text("人的心理活动是一个过程。" * 4, encoding="utf-8")
    assert main(["-m", str(ckpt), "--text", str(text), "--batch-size", "100000", "--quiet"]) == 1
    assert error_line(capsys) == ("error: out of memory scoring 100000 rows at a time: could not allocate 1.2 GiB; "
                                  "lower --batch-size")


def test_figures_past_floats_range(tmp_path, capsys, error_line, model32, vocab, save_ckpt):
    """A perplexity that overflows is null in the JSON (Infinity is not JSON: jq and
    JavaScript refuse it); a loss that is NaN (activations that overflow) is an error,
    not figures with status 0."""
    import copy

    text = tmp_path / "t.txt"
    text.write_text("人的心理活动是一个过程。" * 4, encoding="utf-8")
    hot = copy.deepcopy(model32)
    with torch.no_grad():
        hot.tok_embd.weight.mul_(3000)
    got = run_json(capsys, "-m", str(save_ckpt(tmp_path / "hot.pt", hot, vocab)), "--text", str(text))
    assert got["loss"] > 700 and got["perplexity"] is None and math.isfinite(got["bits_per_character"])
    with torch.no_grad():
        for name, w in hot.named_parameters():
            if name.startswith("layers.0.") and "norm" not in name:
                w.mul_(1e30)
    nan = save_ckpt(tmp_path / "nan.pt", hot, vocab)
    assert main(["-m", str(nan), "--text", str(text), "--quiet"]) == 1
    assert error_line(capsys) == f"error: {nan}: the loss is not finite (nan): the model's activations overflow " \
                                 "float32 on this data"


@pytest.mark.parametrize("quiet", [[], ["--quiet"]])
def test_standard_error_closed(tmp_path, capsys, ckpt, monkeypatch, quiet):
    """Started with stderr closed (2>&-), the figures are still printed: the progress bar
    is not drawn (was: an AttributeError, status 1 and nothing on stdout, --quiet or not)."""
    import sys

    text = tmp_path / "t.txt"
    text.write_text("人的心理活动是一个过程。" * 4, encoding="utf-8")
    monkeypatch.setattr(sys, "stderr", None)
    assert main(["-m", str(ckpt), "--text", str(text), *quiet]) == 0
    assert capsys.readouterr().out.splitlines()[1] == f"data: {text}: 2 windows, 47 tokens scored"


def test_a_vocabulary_given_with_tokenizer_is_named_when_the_data_has_another(tmp_path, capsys, error_line,
                                                                             self_id_sft, tiny):
    """A model file without a vocabulary takes --tokenizer's: an error names that file, not the model."""
    plain = tmp_path / "plain.bin"
    export_bin(tiny(0, vocab_size=16384, block_size=32, n_layer=1, n_head=2, n_kv_head=2), plain)
    other = json.loads((self_id_sft / "tokenizer.json").read_text(encoding="utf-8"))  # two tokens swapped
    other["itos"][100], other["itos"][101] = other["itos"][101], other["itos"][100]
    other["stoi"] = {s: i for i, s in enumerate(other["itos"])}
    vocab_file = tmp_path / "other.json"
    vocab_file.write_text(json.dumps(other, ensure_ascii=False), encoding="utf-8")
    assert main(["-m", str(plain), "--tokenizer", str(vocab_file), "--data", str(self_id_sft), "--quiet"]) == 1
    assert error_line(capsys).startswith(f"error: vocabulary mismatch: the vocabulary {vocab_file} uses a different "
                                         f"vocabulary than the dataset {self_id_sft} ")


def test_a_lora_file_is_applied_and_named(tmp_path, capsys, nano80, tiny):
    """-l LORA.bin on the base scores as the model with its adapters does; the summary names it."""
    from nano_train.convert import export_lora
    from nano_train.lora import attach_lora, detach_lora

    model = attach_lora(tiny(), rank=2, alpha=4)
    with torch.no_grad():  # adapters that change the model (B starts at 0)
        for name, p in model.named_parameters():
            if "lora" in name:
                p.normal_(0, 0.5)
    export_lora(model, tmp_path / "l.bin")
    ids = np.array(nano80.encode("123456789012"))  # one window
    with_lora = summed_ce(model, ids[:-1], ids[1:])[0]
    base = detach_lora(model)
    export_bin(base, tmp_path / "base.bin", tokenizer=nano80)
    text = tmp_path / "t.txt"
    text.write_text("123456789012", encoding="utf-8")
    plain = run_json(capsys, "-m", str(tmp_path / "base.bin"), "--text", str(text))
    got = run_json(capsys, "-m", str(tmp_path / "base.bin"), "-l", str(tmp_path / "l.bin"), "--text", str(text))
    assert plain["lora"] is None and got["lora"] == str(tmp_path / "l.bin")
    assert got["loss"] == pytest.approx(with_lora / got["tokens"], rel=1e-5) and got["loss"] != plain["loss"]
    assert main(["-m", str(tmp_path / "base.bin"), "-l", str(tmp_path / "l.bin"), "--text", str(text), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith(f"model: {tmp_path / 'base.bin'}: 2 layers x 32, block 16, "
                                              f"vocabulary 80, causal + LoRA {tmp_path / 'l.bin'}\n")


@pytest.mark.parametrize("command", ["evaluate", "sample"])
def test_a_bad_device_name_is_a_usage_error_before_any_file_is_read(tmp_path, capsys, error_line, command):
    """(was: the files first, so a missing model made the same mistake exit 1 instead of 2)"""
    from nano_train import sample

    missing = str(tmp_path / "none.bin")
    if command == "evaluate":
        status = main(["-m", missing, "--text", missing, "--device", "cpu:1"])
    else:
        status = sample.main(["-m", missing, "-p", "hi", "--device", "cpu:1"])
    assert status == 2
    assert error_line(capsys) == "error: --device must be auto, cpu, cuda, cuda:N or mps, got 'cpu:1'"
