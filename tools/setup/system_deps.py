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

Without dpkg (not a Debian-like system) nothing is installed: the commands the
groups need are looked for on PATH instead (build: cc, c++, make, pkg-config,
cmake; sanitize: clang; wss: libwebsockets through pkg-config). All there is
success; otherwise the missing ones are named and the exit status is 1.

Exit status: 0 nothing missing (or all installed), 1 something is missing or
could not be installed (the message says what to run), 2 an unknown group.
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

# Without dpkg: what each group needs, as commands on PATH. A name with a space is
# a library found through pkg-config ("pkg-config NAME": `pkg-config --exists NAME`).
COMMANDS: dict[str, tuple[str, ...]] = {
    "build": ("cc", "c++", "make", "pkg-config", "cmake"),
    "sanitize": ("clang",),
    "wss": ("pkg-config libwebsockets",),
}


def run_quietly(command: list[str]) -> subprocess.CompletedProcess | None:
    """command's result, its output captured; None where it cannot be started."""
    try:
        return subprocess.run(command, capture_output=True, text=True)
    except OSError:
        return None


def llvm_major() -> str:
    """The major version of the installed clang, else of the one apt would install (the
    `clang` package depends on clang-N), else Debian 12's. The sanitizer and OpenMP
    runtimes must match the compiler."""
    if shutil.which("clang"):
        res = run_quietly(["clang", "--version"])
        m = res and re.search(r"clang version (\d+)", res.stdout)
        if m:
            return m.group(1)
    if shutil.which("apt-cache"):
        res = run_quietly(["apt-cache", "depends", "clang"])
        m = res and re.search(r"Depends: clang-(\d+)\b", res.stdout)
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
        result = run_quietly(["dpkg-query", "-W", "-f=${Status}", pkg])
        if result is None or result.returncode != 0 or "install ok installed" not in result.stdout:
            missing.append(pkg)
    return missing


def missing_commands(groups: list[str]) -> list[str]:
    """COMMANDS of `groups` that are not on PATH (a library: that pkg-config does not know)."""
    missing = []
    for name in dict.fromkeys(c for g in groups for c in COMMANDS[g]):
        if " " in name:
            tool, library = name.split(" ", 1)
            found = shutil.which(tool) and run_quietly([tool, "--exists", library])
            if not (found and found.returncode == 0):
                missing.append(library)
        elif shutil.which(name) is None:
            missing.append(name)
    return missing


def without_dpkg(groups: list[str], wanted: list[str]) -> int:
    """Not a Debian-like system: nothing to install with, so check the commands instead."""
    missing = missing_commands(groups)
    if not missing:
        print(f"setup: not a Debian-like system; the commands the builds need are on PATH ({', '.join(groups)})")
        return 0
    print(f"setup: not a Debian-like system and {', '.join(missing)} not found; install them with the "
          f"system's package manager (Debian's packages: {' '.join(wanted)}), then try again", file=sys.stderr)
    return 1


def apt_get(command: list[str], install: str, **kwargs) -> bool:
    """Run an apt-get command as root; False (after one line saying what to run) when it fails."""
    shown = " ".join(command)
    try:
        done = subprocess.run(command, **kwargs)
    except OSError as e:
        why = ("apt-get not found on PATH" if isinstance(e, FileNotFoundError)
               else f"cannot run apt-get: {e.strerror or e}")
        print(f"setup: {why}; install the missing packages with the system's package manager "
              f"(on Debian: {install})", file=sys.stderr)
        return False
    if done.returncode != 0:
        print(f"setup: `{shown}` failed (exit status {done.returncode}); fix what it said above, "
              f"then run: {install}", file=sys.stderr)
        return False
    return True


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
        return without_dpkg(groups, wanted)
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
    install = f"apt-get update && {' '.join(command)}"
    if not (apt_get(["apt-get", "update", "-qq"], install, env=env)
            and apt_get(command, install, env=env, stdout=subprocess.DEVNULL)):
        return 1
    still = missing_packages(missing)
    if still:
        print(f"setup: apt-get did not install: {' '.join(still)}; run: {install}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
