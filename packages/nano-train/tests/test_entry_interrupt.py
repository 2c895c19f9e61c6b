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
