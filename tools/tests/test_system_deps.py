"""tools/setup/system_deps.py: the packages it asks for and the command it prints, with
fake clang, apt-cache and dpkg-query programs first on PATH."""

from __future__ import annotations

import importlib.util
import os
import stat
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load():
    spec = importlib.util.spec_from_file_location("system_deps", ROOT / "tools" / "setup" / "system_deps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def only_fakes(monkeypatch, tmp_path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/bin{os.pathsep}/usr/bin")
    return bin_dir


def test_the_runtimes_follow_the_installed_clang(monkeypatch, tmp_path):
    bin_dir = only_fakes(monkeypatch, tmp_path)
    fake(bin_dir, "clang", 'echo "Ubuntu clang version 18.1.3 (1ubuntu1)"\n')
    deps = load()
    assert deps.llvm_major() == "18"
    assert deps.packages_of("sanitize") == ["clang", "libclang-rt-18-dev", "libomp-18-dev"]


def test_without_clang_the_version_apt_would_install(monkeypatch, tmp_path):
    bin_dir = only_fakes(monkeypatch, tmp_path)
    fake(bin_dir, "apt-cache", 'echo "clang"; echo "  Depends: clang-19"; echo "  Breaks: <clang-3.2>"\n')
    deps = load()  # the machine's own clang (in /usr/bin here) is hidden
    monkeypatch.setattr(deps.shutil, "which", lambda name: str(bin_dir / name) if (bin_dir / name).exists() else None)
    assert deps.llvm_major() == "19"
    (bin_dir / "apt-cache").unlink()
    assert deps.llvm_major() == deps.DEFAULT_LLVM == "14"


def test_a_user_gets_the_exact_command_with_and_without_sudo(monkeypatch, tmp_path, capsys):
    bin_dir = only_fakes(monkeypatch, tmp_path)
    fake(bin_dir, "clang", 'echo "Debian clang version 14.0.6"\n')
    fake(bin_dir, "dpkg-query", 'case "$3" in libwebsockets-dev|libomp-14-dev) exit 1;; esac\n'
                                'echo "install ok installed"\n')
    deps = load()
    monkeypatch.setattr(deps.os, "geteuid", lambda: 1000)
    assert deps.main([]) == 1
    err = capsys.readouterr().err
    want = "apt-get install -y --no-install-recommends libomp-14-dev libwebsockets-dev"
    assert f"  sudo apt-get update && sudo {want}\n" in err
    assert f"or, as root (where there is no sudo):\n  apt-get update && {want}\n" in err
    assert deps.main(["build"]) == 0  # every package of that group is there
