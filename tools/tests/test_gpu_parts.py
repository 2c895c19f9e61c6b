"""tools/bench/gpu_parts.py, the map of a GPU training step, run here on the CPU
with a tiny config: every part is timed and reported, the whole steps are
profiled, and the shape, batch and optimizer come from the config it is given."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = {"model": {"block_size": 32, "vocab_size": 256, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 64,
                  "n_hidden": 128},
        "data": {"batch_size": 2}}


def run(*args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "bench" / "gpu_parts.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=600, env=env)


def test_every_part_is_timed_from_the_config(tmp_path):
    config, out = tmp_path / "tiny.json", tmp_path / "parts.json"
    config.write_text(json.dumps(TINY))
    done = run("--config", config, "--device", "cpu", "--json", out)
    assert done.returncode == 0, done.stderr
    assert "batch 2 x 32 = 64 tokens" in done.stdout  # the config's batch and block size
    parts = {row["part"]: row for row in json.loads(out.read_text())["parts"]}
    for name in ("wq 64->64", "wk or wv 64->32", "w2 128->64", "q|k|v fused 64->128", "w1|w3 fused 64->256",
                 "flash_attention enable_gqa", "blocked (nano-train, eager)", "plain F.cross_entropy, compiled",
                 "clip_grad_norm_ + fused AdamW", "whole step, eager, blocked loss",
                 "whole step, compiled, blocked loss"):
        assert parts[name]["wall_ms"] > 0 and parts[name]["kernel_ms"] is None, name  # no GPU: wall time only
    assert parts["wk or wv 64->32"]["per_step"] == 2 * 2  # two such products in each of 2 layers
    assert done.stdout.count("profile of 3 steps") == 2 and "matrix products" in done.stdout


def test_without_a_gpu_it_says_so():
    done = run(env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})  # hides a GPU where there is one
    assert done.returncode == 2 and "error: no CUDA GPU here" in done.stderr


def test_bad_options_are_one_line_before_any_work(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    cases = (
        (["--config", tmp_path / "missing.json"], f"error: --config {tmp_path / 'missing.json'}: cannot read config"),
        (["--config", tmp_path], f"error: --config {tmp_path}: cannot read config"),
        (["--config", config, "--batch", "-1"], "error: --batch must be at least 1, got -1"),
        (["--config", config, "--batch", "0"], "error: --batch must be at least 1, got 0"),
        (["--config", config, "--json", tmp_path / "no" / "parts.json"],
         f"error: --json {tmp_path / 'no' / 'parts.json'}: cannot write there"),
        (["--config", config, "--json", tmp_path], f"error: --json {tmp_path}: exists and is not a regular file"),
    )
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:  # each run imports torch: seconds
        dones = list(pool.map(lambda case: run(*case[0], "--device", "cpu"), cases))
    for (argv, message), done in zip(cases, dones):
        assert done.returncode == 2 and done.stderr.startswith(message), (argv, done.stderr)
        assert done.stderr.count("\n") == 1 and done.stdout == "", (argv, done.stderr)  # nothing timed


def test_the_json_is_written_atomically(load_tool, tmp_path, monkeypatch, capsys):
    """A write that fails (here: a full disk at fsync) leaves the old file whole, in one line."""
    import errno

    config, out = tmp_path / "tiny.json", tmp_path / "parts.json"
    config.write_text(json.dumps(TINY))
    out.write_text('{"old": true}\n')
    gpu_parts = load_tool("bench/gpu_parts.py")
    monkeypatch.setattr(gpu_parts, "time_ms", lambda fn, reps=20: (1.0, None))  # nothing is run or timed
    monkeypatch.setattr(gpu_parts, "kernel_breakdown", lambda step, dev: None)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    monkeypatch.setattr(sys, "argv", ["gpu_parts.py", "--config", str(config), "--device", "cpu", "--json", str(out)])
    try:
        code = gpu_parts.main()
    except SystemExit as e:
        code = e.code
    assert code == 1
    assert capsys.readouterr().err == (f"error: cannot write {out}: No space left on device "
                                       f"(the results above were not saved)\n")
    assert out.read_text() == '{"old": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts.json", "tiny.json"]
