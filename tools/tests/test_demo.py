"""tools/demo.py end to end in its --quick mode: it trains, scores, exports,
builds the C engine, runs the files through `nano` with the same answers as
PyTorch, and a second run reuses the trained model."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def demo(*args):
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "tools/demo.py", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    return r, time.monotonic() - t0


@pytest.mark.slow
def test_demo_quick_end_to_end_then_reuse(tmp_path):
    out = tmp_path / "demo"
    first, t_first = demo("--quick", "--out_dir", str(out))
    print(first.stdout)
    assert first.returncode == 0, first.stdout + first.stderr
    text = first.stdout
    for n in range(1, 6):
        assert f"[{n}/5]" in text
    assert "training [" in first.stderr  # the progress bar
    m = re.search(r"PyTorch: (\d+) of (\d+) sorted exactly right", text)
    assert m and int(m.group(2)) == 500 and int(m.group(1)) >= 400, text
    for label in ("F32 ", "Q8_0"):
        line = next(l for l in text.splitlines() if f"C engine {label}:" in l)
        assert "the same answer as PyTorch on every question" in line, line
    assert "112225        (correct, same as PyTorch)" in text  # nano seq2seq on 251212
    for name in ("sort_f32.bin", "sort_q80.bin", "best.pt", "log.jsonl", "report.md"):
        assert (out / "sort" / name).is_file(), name
    assert "Try next:" in text and "not built yet" in text

    second, t_second = demo("--quick", "--out_dir", str(out))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "reused the model trained earlier" in second.stdout and "training [" not in second.stderr
    assert t_second < t_first
    # the same model, so the same held-out score
    assert re.search(r"PyTorch: (\d+) of (\d+) sorted", second.stdout).groups() == m.groups()


def test_demo_help():
    r, _ = demo("--help")
    assert r.returncode == 0 and "--quick" in r.stdout and "--fresh" in r.stdout
