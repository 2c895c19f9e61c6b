"""Output a terminal cannot encode, and paths a file system cannot name.

Chinese run names and samples go to terminals that may not be UTF-8 (PYTHONIOENCODING=ascii,
a Latin-1 locale, a Windows code page): every command writes what the encoding lacks as
escapes rather than ending with a UnicodeEncodeError after its work is done."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nano_train.config import ConfigError, check


def _run(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONIOENCODING="ascii", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, encoding="ascii", timeout=600)


def test_every_command_writes_chinese_names_as_escapes_on_an_ascii_terminal(tmp_path, psycho_slice, shared_file,
                                                                           tiny_args):
    home = tmp_path / "中文"
    home.mkdir()
    steps = [
        ("nano_train.prepare", "pretrain", str(psycho_slice), "--tokenizer", str(shared_file("data/tokenizer_4096.json")),
         "--out_dir", "数据", "--chunk_tokens", "512", "--quiet"),
        ("nano_train.pretrain", *tiny_args("数据", "运行", sample_prompts='["心理"]')),
        ("nano_train.export", "--ckpt", "运行/latest.pt", "--out", "模型.bin"),
        ("nano_train.plot", "运行"),
        ("nano_train.sample", "-m", "模型.bin", "-p", "心理", "-n", "3", "-t", "0"),
    ]
    for module, *args in steps:
        p = _run(module, *args, cwd=home)
        assert p.returncode == 0, (module, p.stdout, p.stderr)
        assert "Traceback" not in p.stderr and "UnicodeEncodeError" not in p.stderr, (module, p.stderr)
    assert "\\u6570\\u636e" in _run("nano_train.prepare", "pretrain", str(psycho_slice), "--tokenizer",
                                   str(shared_file("data/tokenizer_4096.json")), "--out_dir", "数据", "--overwrite",
                                   "--quiet", cwd=home).stdout  # 数据, as escapes
    assert (home / "运行" / "loss.png").is_file() and (home / "模型.bin").is_file()
    printed = _run("nano_train.pretrain", "--print_config", "--sample_prompts=[\"心理\"]", cwd=home)
    assert printed.returncode == 0 and "\\u5fc3\\u7406" in printed.stdout


def test_a_path_the_file_system_cannot_name_is_a_config_error(monkeypatch, tiny_config, small_pretrain):
    """Under a Latin-1 locale, a Chinese out_dir from a config file cannot be a file name (one
    typed on the command line always can: its bytes come back as they were given)."""
    cfg = tiny_config(small_pretrain, out_dir="运行")
    monkeypatch.setattr(os, "fsencode", lambda path: path.encode("latin-1") if isinstance(path, str) else path)
    with pytest.raises(ConfigError, match=r"run\.out_dir: '运行' cannot be a file name on this system: '运行' is not "
                                          r"in its file names' encoding"):
        check(cfg)
