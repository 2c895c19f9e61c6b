"""RunLog and the log reader: foreign lines are skipped, and a resume's rewrite of
log.jsonl never loses the log (it is written atomically)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nano_train.metrics import RunLog, read_log

RECORDS = [{"kind": "start", "step": 0}] + [{"kind": "train", "step": s, "loss": 9.0 - s} for s in range(1, 41)]


def write_log(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_deeply_nested_line_is_skipped(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    obj = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
    log = write_log(tmp_path / "log.jsonl", [json.dumps(RECORDS[1]), deep, obj, json.dumps(RECORDS[2])])
    assert read_log(log) == RECORDS[1:3]
    RunLog(log, True, resume_step=1)  # resume reads the same lines: no RecursionError either
    assert read_log(log) == RECORDS[1:2]


def test_resume_drops_later_steps_and_keeps_the_rest(tmp_path):
    log = write_log(tmp_path / "log.jsonl", [json.dumps(r) for r in RECORDS] + ['{"kind": "train", "step": 4'])
    RunLog(log, True, resume_step=10)
    assert read_log(log) == RECORDS[:11]
    assert not [p.name for p in tmp_path.iterdir() if p.name != "log.jsonl"]  # no temporary file left behind


def test_resume_from_an_older_checkpoint_drops_later_start_and_end_records(tmp_path):
    # (was: only train and eval records went: a resume from a checkpoint copied over latest.pt
    # kept the start and end records of the processes that had run past it)
    later = [{"kind": "end", "step": 20, "interrupted": True}, {"kind": "start", "step": 20},
             {"kind": "train", "step": 21, "loss": 1.0}, {"kind": "end", "step": 21, "interrupted": False}]
    log = write_log(tmp_path / "log.jsonl", [json.dumps(r) for r in RECORDS[:21] + later])
    RunLog(log, True, resume_step=10)
    assert read_log(log) == RECORDS[:11]


def test_a_resume_that_evaluates_its_step_again_drops_that_steps_eval_and_end_records(tmp_path):
    # the run ends at that step now: its evaluation and end come again (the end was kept: two at the step)
    records = [{"kind": "start", "step": 0}, {"kind": "eval", "step": 2, "val_loss": 5.0},
               {"kind": "train", "step": 4, "loss": 4.0}, {"kind": "eval", "step": 4, "val_loss": 4.5},
               {"kind": "end", "step": 4, "interrupted": True}]
    log = write_log(tmp_path / "log.jsonl", [json.dumps(r) for r in records])
    RunLog(log, True, resume_step=4, evaluates_resume_step=True)
    assert read_log(log) == records[:3]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
def test_resume_rewrite_that_fails_midway_keeps_the_old_log(tmp_path):
    # A write that fails partway (here: a file-size limit, as a full disk would) must
    # leave the old log whole. Rewriting in place (truncate, then write) lost it.
    log = write_log(tmp_path / "log.jsonl", [json.dumps(r) for r in RECORDS])
    before = log.read_bytes()
    limit = len(before) // 4  # the rewritten log (steps <= 30) is larger than this
    script = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from nano_train.metrics import RunLog\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"  # an oversized write then fails with EFBIG
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "try:\n"
        "    RunLog(Path(sys.argv[1]), True, resume_step=30)\n"
        "except OSError:\n"
        "    sys.exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(log)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert log.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["log.jsonl"]


def test_the_gpu_peak_for_float32_is_the_tf32_one_only_when_tf32_is_on(monkeypatch):
    """torch runs float32 products in plain float32 unless told otherwise ("highest"):
    dividing by the TF32 tensor-core peak would understate MFU about 7x."""
    import contextlib

    import torch

    from nano_train import metrics

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setattr(metrics, "matmul_probe", lambda device, dtype="float32": 60e12)
    monkeypatch.setattr(torch.random, "fork_rng", lambda **k: contextlib.nullcontext())
    cuda = torch.device("cuda", 0)
    assert metrics.peak_flops(cuda, "bfloat16") == (989e12, "table: NVIDIA H200")
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert metrics.peak_flops(cuda, "float32") == (60e12, "measured float32 matmul on cuda")
        torch.set_float32_matmul_precision("high")
        assert metrics.peak_flops(cuda, "float32")[0] == 989e12 / 2
    finally:
        torch.set_float32_matmul_precision(previous)


def test_the_cpu_peak_is_probed_in_the_runs_dtype(monkeypatch):
    """An autocast run's products run in its dtype: MFU against a float32 probe would
    be about twice too high where bfloat16 is native (it read 171% before)."""
    import torch

    from nano_train import metrics

    probed = []

    def probe(device, dtype="float32", onednn=False, linear=False, **kw):
        probed.append((dtype, "onednn" if onednn else "linear" if linear else "@"))
        a = torch.ones(4, 4, dtype=getattr(torch, dtype))
        assert (a @ a).dtype == getattr(torch, dtype)
        return {"float32": 1e11, "bfloat16": 2e11, "float16": 1e9}[dtype] * (3 if onednn else 20 if linear else 1)

    monkeypatch.setattr(metrics, "matmul_probe", probe)
    cpu = torch.device("cpu")
    # float16 and bfloat16: F.linear, the layers' product (float16's `@` is a far slower
    # CPU kernel: MFU read 760-1400% against it)
    assert metrics.peak_flops(cpu, "bfloat16") == (4e12, "measured bfloat16 F.linear on cpu")
    assert metrics.peak_flops(cpu, "float16") == (2e10, "measured float16 F.linear on cpu")
    # float32: torch's products and oneDNN's (nano_train.matmul), the better of the two
    assert metrics.peak_flops(cpu, "float32") == (
        3e11, "measured float32 matmul on cpu, the better of torch's and oneDNN's products (oneDNN)")
    assert probed == [("bfloat16", "linear"), ("float16", "linear"), ("float32", "@"), ("float32", "onednn")]


def test_the_linear_probe_runs_f_linear_in_the_dtype_it_is_given(monkeypatch):
    import torch
    import torch.nn.functional as F

    from nano_train import metrics

    seen = []
    linear = F.linear

    def spy(a, b, *rest):
        seen.append((a.dtype, b.dtype))
        return linear(a, b, *rest)

    monkeypatch.setattr(F, "linear", spy)
    for dtype in ("float16", "bfloat16"):
        seen.clear()
        assert metrics.matmul_probe(torch.device("cpu"), seconds=0.01, n=32, trials=2, dtype=dtype, linear=True) > 0
        assert seen and set(seen) == {(getattr(torch, dtype), getattr(torch, dtype))}, (dtype, set(seen))


def test_the_matmul_probe_multiplies_in_the_dtype_it_is_given(monkeypatch):
    import torch

    from nano_train import metrics

    seen = []
    matmul = torch.Tensor.__matmul__

    def spy(a, b):
        seen.append((a.dtype, b.dtype))
        return matmul(a, b)

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    for dtype in ("float32", "bfloat16"):
        seen.clear()
        assert metrics.matmul_probe(torch.device("cpu"), seconds=0.01, n=64, trials=2, dtype=dtype) > 0
        assert seen and set(seen) == {(getattr(torch, dtype), getattr(torch, dtype))}, (dtype, set(seen))


def test_the_probe_of_slow_products_keeps_to_its_time(monkeypatch):
    """Each trial ran at least four products and every trial ran: where one product takes
    longer than the whole probe (float16 on a CPU: 2 s), a 1 s probe took 50 s."""
    import torch

    from nano_train import metrics

    count = []
    matmul = torch.Tensor.__matmul__

    def slow(a, b):
        count.append(1)
        time.sleep(0.05)
        return matmul(a, b)

    monkeypatch.setattr(torch.Tensor, "__matmul__", slow)
    assert metrics.matmul_probe(torch.device("cpu"), seconds=0.01, n=8, trials=5) > 0
    assert len(count) == 2, len(count)  # the warm-up and one trial of one product


def test_human_rounds_before_it_picks_the_prefix():
    """999.7 tokens/s printed as "1e+03" and 999,700 as "1e+03k": the prefix was picked before rounding."""
    from nano_train.metrics import human

    assert [human(x) for x in (0, 999.4, 999.7, 12345, 999_700, 989e12)] == ["0", "999", "1k", "12.3k", "1M", "989T"]
    assert human(999.96e9, "FLOP/s") == "1TFLOP/s"


def test_a_run_of_no_steps_reports_no_throughput(small_pretrain, tiny_config, tmp_path, capsys):
    """A run that trained no step timed none: its report and its last line said "0 tokens/s"."""
    from nano_train.train import train

    train(tiny_config(small_pretrain, max_iters=0, sample_tokens=0))
    done = [line for line in capsys.readouterr().out.splitlines() if line.startswith("done:")]
    assert len(done) == 1 and "no training step run;" in done[0] and "tok/s" not in done[0]
    report = (tmp_path / "run" / "report.md").read_text(encoding="utf-8")
    assert "| throughput | n/a (no training step was run) |" in report
    assert "| MFU (estimate) | n/a " in report


@pytest.mark.skipif(not hasattr(signal, "SIGCONT"), reason="SIGCONT is POSIX's")
def test_a_step_the_process_was_stopped_in_is_left_out_of_the_rates(small_pretrain, tiny_config, capsys, monkeypatch):
    """Ctrl-Z then fg (SIGSTOP, then SIGCONT) during a step: its time says nothing of the pace.
    Was: the record's tokens/s, the run's throughput and the eta counted the stop as training
    time (a pause of 12 s: 209 tok/s between records of 11k and 16k). A step slow without a
    SIGCONT still counts: the rate is measured, not guessed."""
    from nano_train import train as train_mod

    real, plan = train_mod.batch_to_device, []

    def batch_to_device(batch, device):  # the input of a training step (after a record, below)
        if plan:
            seconds, signalled = plan.pop()
            time.sleep(seconds)
            if signalled:
                os.kill(os.getpid(), signal.SIGCONT)  # what the process gets when it goes on after a stop
        return real(batch, device)

    def progress(record):  # the record of step 2 (4) is written before step 3 (5) reads its input
        if record["kind"] == "train" and record["step"] in (2, 4):
            plan.append((3.0, True) if record["step"] == 2 else (1.0, False))
        lines.append(record)

    lines = []
    monkeypatch.setattr(train_mod, "batch_to_device", batch_to_device)
    cfg = tiny_config(small_pretrain, max_iters=6, eval_interval=100, sample_tokens=0)
    result = train_mod.train(cfg, progress=progress)
    rates = {r["step"]: (r["tokens_per_s"], r["mfu"]) for r in lines if r["kind"] == "train"}
    per_step = next(r["tokens_per_step"] for r in lines if r["kind"] == "start")
    assert rates[3] == (None, None)  # its only step was stopped in
    assert rates[5][0] < per_step  # a second-long step without a stop: counted
    assert all(rates[s][0] > per_step for s in (2, 4, 6))  # the others' steps took well under a second
    # the run's throughput leaves out the first step and step 3: 4 steps in 1 s + 3 short ones
    # (was 5 steps in 4 s + 4 short ones: under 1.25 steps a second)
    assert result.tokens_per_s > 1.6 * per_step
    assert not plan
    log = read_log(Path(cfg.run.out_dir) / "log.jsonl")
    assert [r["tokens_per_s"] is None for r in log if r["kind"] == "train"] == [s == 3 for s in range(1, 7)]

    # printed: the stopped step's line says so, without an eta reckoned from the stop
    plan.clear()
    cfg = tiny_config(small_pretrain, max_iters=4, eval_interval=100, sample_tokens=0, overwrite=True)
    real_record, lines = train_mod.RunLog.write, []

    def write(self, **record):
        progress(record)
        real_record(self, **record)

    monkeypatch.setattr(train_mod.RunLog, "write", write)
    capsys.readouterr()
    train_mod.train(cfg)
    out = capsys.readouterr().out.splitlines()
    step3 = next(line for line in out if line.startswith("step      3/4 |"))
    assert "| stopped (Ctrl-Z or SIGSTOP) |" in step3 and "tok/s" not in step3 and "eta" not in step3, out
    assert "tok/s" in next(line for line in out if line.startswith("step      4/4 |"))


@pytest.mark.skipif(not hasattr(signal, "SIGCONT"), reason="SIGCONT is POSIX's")
def test_a_stop_between_steps_restarts_the_pace_of_the_time_left(small_pretrain, tiny_config, capsys, monkeypatch):
    """Ctrl-Z then fg during an evaluation (or a checkpoint): no step's time holds the stop,
    but the pace since the first step does; the eta is reckoned afresh from the next step."""
    from nano_train import train as train_mod

    real = train_mod.evaluate

    def evaluate(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGCONT)  # as if stopped and continued while it ran
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate", evaluate)
    train_mod.train(tiny_config(small_pretrain, max_iters=5, eval_interval=2, sample_tokens=0))
    lines = {int(line.split("/")[0].split()[1]): line for line in capsys.readouterr().out.splitlines()
             if line.startswith("step ") and "/5 |" in line}
    # the evaluations at steps 0, 2 and 4: steps 1 (the first), 3 and 5 (the last) have no eta
    assert [step for step, line in sorted(lines.items()) if ", eta " in line] == [2, 4], lines
    assert all("tok/s" in line for line in lines.values())  # the steps themselves were not stopped in


def test_a_step_without_tokens_to_learn_from_logs_no_loss(nano80, tiny_config, tmp_path, capsys):
    """An SFT step whose rows have every target masked out (answers block_size cut off) has
    no loss: its record's loss is null and its progress line says why (was: loss 0.0000, a
    perfect loss); plot and the report still take the log."""
    from nano_train import plot as plot_cmd
    from nano_train.data import write_rows
    from nano_train.train import train

    rng = np.random.default_rng(0)
    tokens = rng.integers(10, 80, size=(8, 17)).astype(np.int64)
    mask = np.zeros_like(tokens, dtype=np.uint8)
    mask[:4, 8:] = 1  # half the rows have an answer, the others none (cut off)
    write_rows(tmp_path / "data", nano80, "sft", {"train": (tokens, mask)})
    result = train(tiny_config(tmp_path / "data", task="sft", block_size=16, batch_size=1, max_iters=6,
                               eval_iters=0, sample_tokens=0))
    out = capsys.readouterr().out
    trains = [r for r in read_log(tmp_path / "run" / "log.jsonl") if r["kind"] == "train"]
    assert len(trains) == 6
    losses = [r["loss"] for r in trains]
    assert None in losses and any(isinstance(x, float) and x > 0 for x in losses), losses
    lines = [line for line in out.splitlines() if line.startswith("step ") and "/6 |" in line]
    assert len(lines) == 6
    for line, loss in zip(lines, losses):
        assert ("| loss n/a (no tokens to learn from: every target masked out) |" in line) == (loss is None), line
        assert "loss 0.0000" not in line
    assert result.train_loss == losses[-1]
    png = tmp_path / "loss.png"
    assert plot_cmd.main([str(tmp_path / "run"), "-o", str(png)]) == 0 and png.stat().st_size > 0
    report = (tmp_path / "run" / "report.md").read_text(encoding="utf-8")
    final = "n/a" if losses[-1] is None else f"{losses[-1]:.4f}"
    assert f"| final train loss | {final} |" in report
