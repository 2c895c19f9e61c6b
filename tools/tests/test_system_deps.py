"""tools/setup/system_deps.py: the packages it asks for and the command it prints, with
fake clang, apt-cache and dpkg-query programs first on PATH."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest


def fake(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def only_fakes(monkeypatch, tmp_path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/bin{os.pathsep}/usr/bin")
    return bin_dir


def test_the_runtimes_follow_the_installed_clang(load_tool, monkeypatch, tmp_path):
    bin_dir = only_fakes(monkeypatch, tmp_path)
    fake(bin_dir, "clang", 'echo "Ubuntu clang version 18.1.3 (1ubuntu1)"\n')
    deps = load_tool("setup/system_deps.py")
    assert deps.llvm_major() == "18"
    assert deps.packages_of("sanitize") == ["clang", "libclang-rt-18-dev", "libomp-18-dev"]


def test_without_clang_the_version_apt_would_install(load_tool, monkeypatch, tmp_path):
    bin_dir = only_fakes(monkeypatch, tmp_path)
    fake(bin_dir, "apt-cache", 'echo "clang"; echo "  Depends: clang-19"; echo "  Breaks: <clang-3.2>"\n')
    deps = load_tool("setup/system_deps.py")  # the machine's own clang (in /usr/bin here) is hidden
    monkeypatch.setattr(deps.shutil, "which", lambda name: str(bin_dir / name) if (bin_dir / name).exists() else None)
    assert deps.llvm_major() == "19"
    (bin_dir / "apt-cache").unlink()
    assert deps.llvm_major() == deps.DEFAULT_LLVM == "14"


def test_a_user_gets_the_exact_command_with_and_without_sudo(load_tool, monkeypatch, tmp_path, capsys):
    bin_dir = only_fakes(monkeypatch, tmp_path)
    fake(bin_dir, "clang", 'echo "Debian clang version 14.0.6"\n')
    fake(bin_dir, "dpkg-query", 'case "$3" in libwebsockets-dev|libomp-14-dev) exit 1;; esac\n'
                                'echo "install ok installed"\n')
    deps = load_tool("setup/system_deps.py")
    monkeypatch.setattr(deps.os, "geteuid", lambda: 1000)
    assert deps.main([]) == 1
    err = capsys.readouterr().err
    want = "apt-get install -y --no-install-recommends libomp-14-dev libwebsockets-dev"
    assert f"  sudo apt-get update && sudo {want}\n" in err
    assert f"or, as root (where there is no sudo):\n  apt-get update && {want}\n" in err
    assert deps.main(["build"]) == 0  # every package of that group is there


def only(monkeypatch, tmp_path) -> Path:
    """A PATH holding nothing but the fakes (no /usr/bin: no real apt-get, dpkg or compiler)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


@pytest.fixture
def as_root(load_tool, monkeypatch, tmp_path):
    """(system_deps run as root, its PATH folder) on a Debian with clang where
    libwebsockets-dev is missing and there is no apt-get until the test fakes one."""
    bin_dir = only(monkeypatch, tmp_path)
    fake(bin_dir, "clang", 'echo "Debian clang version 14.0.6"\n')
    fake(bin_dir, "dpkg-query", 'case "$3" in libwebsockets-dev) exit 1;; esac\necho "install ok installed"\n')
    deps = load_tool("setup/system_deps.py")
    monkeypatch.setattr(deps.os, "geteuid", lambda: 0)
    return deps, bin_dir


def one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


WANT = "apt-get update && apt-get install -y --no-install-recommends libwebsockets-dev"


def test_as_root_without_apt_get_says_what_to_run(as_root, capsys):
    deps, _ = as_root
    assert deps.main(["wss"]) == 1  # was FileNotFoundError: 'apt-get'
    line = one_line(capsys.readouterr().err)
    assert "apt-get not found on PATH" in line and WANT in line


def test_as_root_a_failing_apt_get_is_one_line(as_root, capfd):
    deps, bin_dir = as_root
    fake(bin_dir, "apt-get", 'case "$1" in update) exit 100;; esac\nexit 0\n')
    assert deps.main(["wss"]) == 1  # was CalledProcessError
    line = one_line(capfd.readouterr().err)
    assert "`apt-get update -qq` failed (exit status 100)" in line and WANT in line

    fake(bin_dir, "apt-get", 'case "$1" in install) echo "E: Unable to locate package" >&2; exit 100;; esac\n')
    assert deps.main(["wss"]) == 1
    err = capfd.readouterr().err
    assert "E: Unable to locate package" in err  # apt-get's own word, then ours
    line = err.strip().splitlines()[-1]
    assert "`apt-get install -y --no-install-recommends libwebsockets-dev` failed (exit status 100)" in line
    assert "Traceback" not in err and WANT in line


def test_as_root_an_apt_get_that_installs_nothing_is_reported(as_root, capsys):
    deps, bin_dir = as_root
    fake(bin_dir, "apt-get", "exit 0\n")
    assert deps.main(["wss"]) == 1
    assert "apt-get did not install: libwebsockets-dev; run: " + WANT in capsys.readouterr().err


def test_without_dpkg_the_commands_on_path_decide(load_tool, monkeypatch, tmp_path, capsys):
    bin_dir = only(monkeypatch, tmp_path)
    deps = load_tool("setup/system_deps.py")
    for check in ([], ["--check"]):  # nothing there: was exit status 0 even with --check
        assert deps.main([*check, "build"]) == 1
        line = one_line(capsys.readouterr().err)
        assert "not a Debian-like system and cc, c++, make, pkg-config, cmake not found" in line
        assert "gcc g++ make pkg-config libc6-dev cmake" in line
    for name in ("cc", "c++", "make", "cmake"):
        fake(bin_dir, name, "exit 0\n")
    fake(bin_dir, "pkg-config", 'test "$2" = libwebsockets\n')  # knows libwebsockets only
    assert deps.main(["--check", "build", "wss"]) == 0
    assert "the commands the builds need are on PATH (build, wss)" in capsys.readouterr().out
    assert deps.main(["--check"]) == 1  # sanitize wants clang
    assert "and clang not found" in one_line(capsys.readouterr().err)
    fake(bin_dir, "pkg-config", "exit 1\n")
    assert deps.main(["wss"]) == 1
    assert "and libwebsockets not found" in one_line(capsys.readouterr().err)
