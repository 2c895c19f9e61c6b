"""Ctrl-C while a training command is still importing torch (the first seconds) is
one error line and exit status 130, as it is later in the run, not a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.parametrize("module", ["pretrain", "sft", "lora_train"])
def test_ctrl_c_while_importing_is_one_line_and_130(module, tmp_path):
    # a torch whose import is interrupted: the KeyboardInterrupt a Ctrl-C raises there
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise KeyboardInterrupt\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(SRC), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", f"nano_train.{module}", f"--out_dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == "error: interrupted while starting; nothing was written"
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="no SIGTERM to send there")
def test_sigterm_while_importing_is_ctrl_c(tmp_path):
    """SIGTERM (`timeout`, a scheduler) in the first seconds (was: killed, exit -15, silent)."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGTERM)\n"
                                                    "time.sleep(60)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(SRC), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "nano_train.pretrain", f"--out_dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == "error: interrupted while starting; nothing was written"


# pretrain, sent SIGTERM once it holds its run lock, while it reads its dataset
_TERM_WHILE_SETTING_UP = """
import os, signal, sys
import nano_train
from nano_train import data
real = data.Dataset.__init__
def init(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    real(self, *args, **kwargs)
data.Dataset.__init__ = init
sys.exit(nano_train.start("pretrain"))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="no SIGTERM to send there")
def test_sigterm_before_the_training_loop_removes_what_the_run_made(tmp_path, small_pretrain):
    """(was: killed, exit -15, its new out_dir left behind with a .run.lock in it)"""
    out = tmp_path / "new" / "run"
    done = subprocess.run([sys.executable, "-c", _TERM_WHILE_SETTING_UP, f"--dataset={small_pretrain}",
                           f"--out_dir={out}", "--max_iters=2", "--n_layer=1", "--n_embd=32", "--n_head=2",
                           "--n_kv_head=2", "--block_size=16", "--batch_size=2"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: interrupted; the run stopped at once"), done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "new").exists()
