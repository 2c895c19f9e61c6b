"""Install the system packages Nano's builds and tests need, idempotently.

Usage:
    python tools/setup/system_deps.py [--check] [GROUP ...]

Groups (default: all of them):
    build    C and C++ compilers and make, for the C engine and torch.compile
    sanitize clang with its sanitizer/libFuzzer runtime and OpenMP
    wss      libwebsockets, for the WebSocket server

Packages already present are left alone. As root, missing packages are
installed with apt-get; otherwise the exact command to run is printed and the
exit status is 1. With --check nothing is installed: missing packages are
listed and the exit status says whether any are missing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

# Debian package names per group. Later targets add their own groups here.
GROUPS: dict[str, tuple[str, ...]] = {
    # libc6-dev: headers and libc.a (static nano); cmake: the c-core CMakeLists.txt (tested);
    # g++: torch.compile's CPU backend (inductor) compiles the C++ it generates
    "build": ("gcc", "g++", "make", "pkg-config", "libc6-dev", "cmake"),
    # the runtimes' version follows the clang that is (or would be) installed: see llvm_major()
    "sanitize": ("clang", "libclang-rt-{llvm}-dev", "libomp-{llvm}-dev"),
    "wss": ("libwebsockets-dev",),
}
DEFAULT_LLVM = "14"  # Debian 12's clang, the base the project is tested on


def llvm_major() -> str:
    """The major version of the installed clang, else of the one apt would install (the
    `clang` package depends on clang-N), else Debian 12's. The sanitizer and OpenMP
    runtimes must match the compiler."""
    if shutil.which("clang"):
        res = subprocess.run(["clang", "--version"], capture_output=True, text=True)
        m = re.search(r"clang version (\d+)", res.stdout)
        if m:
            return m.group(1)
    if shutil.which("apt-cache"):
        res = subprocess.run(["apt-cache", "depends", "clang"], capture_output=True, text=True)
        m = re.search(r"Depends: clang-(\d+)\b", res.stdout)
        if m:
            return m.group(1)
    return DEFAULT_LLVM


def packages_of(group: str) -> list[str]:
    packages = GROUPS[group]
    if any("{llvm}" in pkg for pkg in packages):
        llvm = llvm_major()
        packages = tuple(pkg.format(llvm=llvm) for pkg in packages)
    return list(packages)


def missing_packages(packages: list[str]) -> list[str]:
    """The packages dpkg does not report as installed."""
    missing = []
    for pkg in packages:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0 or "install ok installed" not in result.stdout:
            missing.append(pkg)
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("groups", nargs="*", metavar="GROUP", help=f"one of {', '.join(GROUPS)}")
    parser.add_argument("--check", action="store_true", help="only report what is missing")
    args = parser.parse_args(argv)

    unknown = [g for g in args.groups if g not in GROUPS]
    if unknown:
        parser.error(f"unknown group {unknown[0]!r}; known: {', '.join(GROUPS)}")
    groups = args.groups or list(GROUPS)
    wanted = [pkg for group in groups for pkg in packages_of(group)]
    if shutil.which("dpkg-query") is None:
        print(
            "setup: this is not a Debian-like system; install the equivalents of:\n  "
            + " ".join(wanted),
            file=sys.stderr,
        )
        return 0
    missing = missing_packages(wanted)
    if not missing:
        print(f"setup: system packages present ({', '.join(groups)})")
        return 0
    command = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if args.check:
        print("setup: missing system packages: " + " ".join(missing), file=sys.stderr)
        return 1
    if os.geteuid() != 0:
        print(
            "setup: missing system packages. Run this, then try again:\n"
            f"  sudo apt-get update && sudo {' '.join(command)}\n"
            f"or, as root (where there is no sudo):\n"
            f"  apt-get update && {' '.join(command)}",
            file=sys.stderr,
        )
        return 1
    print("setup: installing " + " ".join(missing), flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    still = missing_packages(missing)
    if still:
        print("setup: apt-get did not install: " + " ".join(still), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
