"""Hostile or broken input to the data-preparation and training commands: each case is
one `error: ...` line and the documented exit status (2 for a config, data or
checkpoint error), never a traceback, a misleading message or a silent wrong result."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from nano_train import prepare
from nano_train.data import DataError, Dataset, write_rows
from nano_train.train import main

pytestmark = pytest.mark.usefixtures("one_thread")


def error_line(err: str) -> str:
    """The one error line of a command's stderr (notes may come before it)."""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------------------
# prepare


def _text(tmp_path, shared_file):
    path = tmp_path / "text.txt"
    path.write_text(shared_file("data/pretrain_psycho.txt").read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return path


def _jsonl(tmp_path, shared_file):
    path = tmp_path / "qa.jsonl"
    path.write_text(shared_file("data/sft_self_id.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    return path


PREPARE_CASES = {
    # an empty --out_dir ("$DIR" unset) would be "." as a Path: the dataset landed in the current directory
    "empty --out_dir, pretrain": (
        lambda t, s: ["pretrain", "--tokenizer", s("data/tokenizer_4096.json"), "--out_dir", "", _text(t, s)],
        2, r"the output directory \(--out_dir\) is empty"),
    "empty --out_dir, sft": (
        lambda t, s: ["sft", "--tokenizer", s("data/tokenizer_4096.json"), "--out_dir", "", "--block_size", "64",
                      _jsonl(t, s)],
        2, r"the output directory \(--out_dir\) is empty"),
    # (was: "cannot load the tokenizer: .: cannot read: Is a directory")
    "empty --tokenizer": (
        lambda t, s: ["pretrain", "--tokenizer", "", "--out_dir", t / "d", _text(t, s)],
        2, "the tokenizer path is empty"),
    # (was: "input . is a directory")
    "empty input name": (
        lambda t, s: ["pretrain", "--tokenizer", s("data/tokenizer_4096.json"), "--out_dir", t / "d", ""],
        2, "an input file name is empty"),
}


@pytest.mark.parametrize("case", PREPARE_CASES)
def test_prepare_refuses(case, tmp_path, shared_file, capsys, monkeypatch):
    argv, status, message = PREPARE_CASES[case]
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    assert prepare.main([str(a) for a in argv(tmp_path, shared_file)]) == status
    assert re.search(message, error_line(capsys.readouterr().err))
    assert list(work.iterdir()) == []  # nothing written where the command ran


def test_prepare_warns_when_most_tokens_are_unknown(tmp_path, shared_file, capsys):
    """Chinese text through the 80-token English vocabulary is all <|unknown|>: the
    dataset is made (it is what was asked for), and the summary says it is useless."""
    text = _text(tmp_path, shared_file)
    assert prepare.main(["pretrain", "--quiet", "--tokenizer", str(shared_file("data/nano_80.json")),
                         "--out_dir", str(tmp_path / "d"), "--chunk_tokens", "1024", str(text)]) == 0
    out, err = capsys.readouterr()
    # on standard error, as every warning (was: standard output, with the summary)
    assert "warning: 100% of the text tokens are <|unknown|>" in err and "warning" not in out
    assert out.count("\n") == 1 and "-> " in out  # the summary alone
    assert prepare.main(["pretrain", "--quiet", "--tokenizer", str(shared_file("data/tokenizer_4096.json")),
                         "--out_dir", str(tmp_path / "e"), "--chunk_tokens", "1024", str(text)]) == 0
    assert "<|unknown|>" not in capsys.readouterr().err  # a handful of unknown characters is no warning


# ---------------------------------------------------------------------------
# A dataset damaged or edited by hand, through the training command


def _edit_meta(folder, edit):
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    edit(meta)
    (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")


def _set_dtype(meta):
    meta["dtype"] = "uint32"  # every shard then reads as half as many ids: the sizes disagree


def _set_vocab(meta):
    meta["tokenizer"]["vocab_size"] = 100


def _mask_byte(folder):
    path = folder / "sft_train_mask.bin"
    mask = bytearray(path.read_bytes())
    mask[40] = 7  # would weigh its token 7 times in the loss
    path.write_bytes(bytes(mask))


def _mask_zero(folder):
    path = folder / "sft_train_mask.bin"
    path.write_bytes(bytes(path.stat().st_size))  # a training loss of 0 and no gradient, every step


def _dataset_is_a_file(folder):
    shutil.rmtree(folder)
    folder.write_text("not a dataset\n", encoding="utf-8")


DATASET_CASES = {
    # (was: "train_000.bin is N bytes, meta.json says 2N: the file is truncated or stale")
    "meta.json dtype disagrees": ("pretrain", lambda d: _edit_meta(d, _set_dtype),
                                  r"meta.json: field 'dtype' is uint32, but .* stored as uint16"),
    # (was: trained, the edit unnoticed)
    "meta.json vocab_size disagrees": ("pretrain", lambda d: _edit_meta(d, _set_vocab),
                                       r"meta.json: field 'tokenizer.vocab_size' is 100, but tokenizer.json has 4096"),
    # (was: "dataset directory ... does not exist")
    "dataset is a file": ("pretrain", _dataset_is_a_file, r"is a regular file, not a dataset directory"),
    # (was: trained)
    "mask byte not 0 or 1": ("sft", _mask_byte, r"sft_train_mask.bin: mask value 7 at position 40 is not 0 or 1"),
    # (was: trained on nothing: loss 0.0000, grad norm 0)
    "mask all zero": ("sft", _mask_zero, r"the train split has no token the loss counts \(its mask, "
                                         r"sft_train_mask.bin, is 0 everywhere"),
}


@pytest.mark.parametrize("case", DATASET_CASES)
def test_a_damaged_dataset_is_refused(case, tmp_path, small_pretrain, uneven_sft, tiny_args, capsys):
    task, damage, message = DATASET_CASES[case]
    data = tmp_path / "data"
    shutil.copytree(small_pretrain if task == "pretrain" else uneven_sft, data)
    damage(data)
    block = {} if task == "pretrain" else {"block_size": 63}
    assert main(task, tiny_args(data, tmp_path / "run", **block)) == 2
    assert re.search(message, error_line(capsys.readouterr().err))


def test_seq2seq_rows_whose_mask_counts_nothing(tmp_path, nano80):
    x = np.full((4, 6), nano80.stoi["1"], dtype=np.int64)
    write_rows(tmp_path / "ok", nano80, "seq2seq", {"train": (x, x, np.ones_like(x))})
    assert Dataset(tmp_path / "ok").source("train", 8).n_rows == 4
    write_rows(tmp_path / "none", nano80, "seq2seq", {"train": (x, x, np.zeros_like(x))})
    with pytest.raises(DataError, match="the train split has no token the loss counts"):
        Dataset(tmp_path / "none").source("train", 8)


# ---------------------------------------------------------------------------
# --init_from=resume with a latest.pt that is not this run's


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_pretrain, uneven_sft, tiny_args):
    """One finished run of each task: {task: out_dir}."""
    root = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    short = dict(max_iters=1, eval_iters=1, sample_tokens=1)
    assert main("pretrain", tiny_args(small_pretrain, root / "pretrain", **short)) == 0
    assert main("sft", tiny_args(uneven_sft, root / "sft", block_size=63, **short)) == 0
    assert main("lora", tiny_args(uneven_sft, root / "lora", init_from=str(root / "sft" / "latest.pt"),
                                  block_size=63, lora_rank=2, **short)) == 0
    torch.set_num_threads(threads)
    return {task: root / task for task in ("pretrain", "sft", "lora")}


RESUME_CASES = {
    # (was: "this command trains task 'pretrain' but the config says run.task = 'sft'": no config said so)
    "sft checkpoint into pretrain": ("pretrain", "sft",
                                     r"latest.pt is a checkpoint of task 'sft', and this command trains 'pretrain': "
                                     r"resume it with `python -m nano_train.sft`"),
    "lora checkpoint into sft": ("sft", "lora", r"latest.pt is a checkpoint of task 'lora', .* "
                                                r"`python -m nano_train.lora_train`"),
    "sft checkpoint into lora": ("lora", "sft", r"latest.pt is a checkpoint of task 'sft', and this command trains "
                                                r"'lora'"),
    "pretrain checkpoint into sft": ("sft", "pretrain", r"latest.pt is a checkpoint of task 'pretrain'"),
    # (was: "latest.pt does not exist (is run.out_dir right?)")
    "latest.pt is a directory": ("pretrain", None, r"latest.pt is a directory, not a checkpoint file"),
}


@pytest.mark.parametrize("case", RESUME_CASES)
def test_resume_from_a_checkpoint_that_is_not_this_runs(case, tmp_path, runs, capsys):
    task, other, message = RESUME_CASES[case]
    out = tmp_path / "run"
    shutil.copytree(runs[task], out)
    (out / "latest.pt").unlink()
    if other is None:
        (out / "latest.pt").mkdir()
    else:
        shutil.copy(runs[other] / "latest.pt", out / "latest.pt")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(task, ["--init_from=resume", f"--out_dir={out}", "--max_iters=3"]) == 2
    assert re.search(message, error_line(capsys.readouterr().err))
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing touched


# ---------------------------------------------------------------------------
# A model or a batch too large for the machine's memory

# Runs the pretrain command with the address space limited to 6 GiB, so that the
# 16 GiB weight matrix of n_embd 65536 cannot be allocated (without the limit the
# allocation could succeed on paper and the kernel kill the process later)
_LIMITED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
from nano_train.train import main
sys.exit(main("pretrain", sys.argv[1:]))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS limits every allocation on Linux only")
def test_a_model_too_large_for_memory_is_one_error_line(tmp_path, small_pretrain, tiny_args):
    # (was: a traceback ending in "RuntimeError: ... DefaultCPUAllocator: can't allocate memory")
    args = tiny_args(small_pretrain, tmp_path / "run", n_embd=65536, n_head=2, n_kv_head=2, threads=1)
    child = subprocess.run([sys.executable, "-c", _LIMITED, *args], capture_output=True, text=True, timeout=600)
    assert child.returncode == 1, child.stderr
    assert re.search(r"out of memory while building the model on cpu \(n_layer 1, n_embd 65536, vocabulary "
                     r"4096\): could not allocate 16.0 GiB; .* lower model.n_layer or model.n_embd",
                     error_line(child.stderr))
    assert not (tmp_path / "run").exists()  # the run made it, and wrote nothing into it


def test_running_out_of_memory_in_a_step_is_one_error_line(tmp_path, small_pretrain, tiny_args, capsys,
                                                           monkeypatch):
    """As torch's CPU allocator says it, mid-training (a batch too large for the machine). A
    run from a base model keeps its block_size: only the batch is offered (was: model.block_size
    too, which would conflict with the base)."""
    from nano_train.model import Transformer

    base = tmp_path / "base"
    assert main("pretrain", tiny_args(small_pretrain, base, eval_iters=0, max_iters=1, sample_tokens=0)) == 0

    def forward(self, *args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 429496729 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(Transformer, "forward", forward)
    assert main("pretrain", tiny_args(small_pretrain, tmp_path / "run", eval_iters=0)) == 1
    assert re.search(r"^error: out of memory: could not allocate 0.4 GiB; lower data.batch_size or "
                     r"model.block_size .*; no checkpoint was written: start again with --overwrite=true$",
                     error_line(capsys.readouterr().err))
    assert main("pretrain", [f"--dataset={small_pretrain}", f"--out_dir={tmp_path / 'from_base'}", "--eval_iters=0",
                             f"--init_from={base / 'latest.pt'}", "--device=cpu"]) == 1
    assert re.search(r"^error: out of memory: could not allocate 0.4 GiB; lower data.batch_size \(a larger "
                     r"optim.gradient_accumulation_steps keeps the tokens per step\); no checkpoint was written",
                     error_line(capsys.readouterr().err))
    # the base's model itself too large: no model keys to lower either
    from nano_train import train as train_module

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "Transformer", forward)  # (the trainer's model; the base still loads)
        assert main("pretrain", [f"--dataset={small_pretrain}", f"--out_dir={tmp_path / 'from_base2'}",
                                 "--eval_iters=0", f"--init_from={base / 'latest.pt'}", "--device=cpu"]) == 1
    assert (f"could not allocate 0.4 GiB; this machine cannot hold a model of that size (the base model "
            f"{base / 'latest.pt'}'s architecture, which this run keeps)") in error_line(capsys.readouterr().err)

    def broken(self, *args, **kwargs):  # any other error is no user mistake: it stays a traceback
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(Transformer, "forward", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main("pretrain", tiny_args(small_pretrain, tmp_path / "run2", eval_iters=0))


# ---------------------------------------------------------------------------
# A FIFO where a file belongs: reading it would wait for a writer forever. Each case
# runs in a child, with a timeout, so that a hang fails the test instead of stopping it.


def _fifo(path):
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    return path


FIFO_CASES = {
    # (was: a hang)
    "prepare --tokenizer": (
        lambda t, s, data: ["nano_train.prepare", "pretrain", "--quiet", "--tokenizer", _fifo(t / "vocab.json"),
                            "--out_dir", t / "d", _text(t, s)],
        r"cannot load the tokenizer: \S*vocab.json: cannot read: a FIFO \(a pipe\) that nothing wrote to"),
    # (was: a hang)
    "config file": (
        lambda t, s, data: ["nano_train.pretrain", _fifo(t / "config.json")],
        r"config.json: cannot read config: it is a FIFO \(a pipe\), not a file"),
    # (was: a hang)
    "dataset tokenizer.json": (
        lambda t, s, data: ["nano_train.pretrain", f"--dataset={_fifo(data / 'tokenizer.json').parent}"],
        r"cannot load the tokenizer: \S*tokenizer.json: cannot read: a FIFO \(a pipe\) that nothing wrote to"),
    # (was: "train_000.bin is missing (listed in meta.json)")
    "dataset shard": (
        lambda t, s, data: ["nano_train.pretrain", f"--dataset={_fifo(data / 'train_000.bin').parent}"],
        r"train_000.bin is a FIFO \(a pipe\), not a data file"),
    # (was: "DIR has no meta.json: not a prepared dataset")
    "dataset meta.json": (
        lambda t, s, data: ["nano_train.pretrain", f"--dataset={_fifo(data / 'meta.json').parent}"],
        r"meta.json is a FIFO \(a pipe\), not a file"),
}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
@pytest.mark.parametrize("case", FIFO_CASES)
def test_a_fifo_is_refused_not_read(case, tmp_path, shared_file, small_pretrain):
    argv, message = FIFO_CASES[case]
    data = tmp_path / "data"
    shutil.copytree(small_pretrain, data)
    argv = [str(a) for a in argv(tmp_path, shared_file, data)]
    if argv[0] != "nano_train.prepare":
        argv += [f"--out_dir={tmp_path / 'run'}", "--device=cpu", "--threads=1"]
    child = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=60)
    assert child.returncode == 2, child.stderr
    assert re.search(message, error_line(child.stderr))
