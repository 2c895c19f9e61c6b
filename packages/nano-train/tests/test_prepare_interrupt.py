"""Ctrl-C while `python -m nano_train.prepare` is still importing numpy (its first
moments) is one error line and exit status 130, as a Ctrl-C later in prepare is,
not a traceback."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

SLOW_NUMPY = """
from pathlib import Path
import time
Path({marker!r}).write_text("importing")  # tells the test that the import has begun
time.sleep(60)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="no SIGINT to send to a process there")
def test_ctrl_c_while_prepare_imports_numpy_is_one_line_and_130(tmp_path, shared_file):
    fake = tmp_path / "fake"  # a numpy whose import takes a minute, to be interrupted by a real SIGINT
    (fake / "numpy").mkdir(parents=True)
    marker = tmp_path / "importing"
    (fake / "numpy" / "__init__.py").write_text(SLOW_NUMPY.format(marker=str(marker)))
    (tmp_path / "a.txt").write_text("some text\n", encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake), str(SRC), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "data"
    p = subprocess.Popen([sys.executable, "-m", "nano_train.prepare", "pretrain", "--tokenizer",
                          str(shared_file("data/nano_80.json")), "--out_dir", str(out), str(tmp_path / "a.txt")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), p.communicate(timeout=10)
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, stderr
    assert stderr == "\nerror: interrupted while starting; nothing was written\n"
    assert stdout == "" and not out.exists()
