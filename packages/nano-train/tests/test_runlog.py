"""RunLog and the log reader: foreign lines are skipped, and a resume's rewrite of
log.jsonl never loses the log (it is written atomically)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

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
