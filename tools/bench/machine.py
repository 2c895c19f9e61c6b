"""What the benchmarks share: what they print about the machine they ran on, and
how they refuse a bad argument and write their --json records."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import NoReturn


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def fail(message: str, status: int = 2) -> NoReturn:
    """One line `error: message` on standard error, then exit: 2 (the default) for a bad
    argument, refused before any work; 1 for a failure of the system."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


def check_output(path, option: str = "--json") -> None:
    """Refuse, before any work, an output path that write_json could not write (no such
    folder, no permission, a folder or other non-regular file there): exit 2."""
    from nano_format import WriteError, check_writable

    try:
        check_writable(path)
    except WriteError as e:
        fail(f"{option} {path}: {e.message}")
    except OSError as e:
        fail(f"{option} {path}: cannot write there: {e.strerror or e}")


def write_json(path, record, indent: int | None = 2) -> None:
    """record as JSON in `path`, written atomically (a failure leaves whatever was there
    whole); a failure is one line and exit 1, the results already printed above it."""
    from nano_format import WriteError, write_atomically

    text = json.dumps(record, indent=indent) + "\n"
    try:
        write_atomically(path, [text.encode("utf-8")])
    except WriteError as e:
        fail(f"cannot write {path}: {e.message} (the results above were not saved)", 1)
    except OSError as e:
        fail(f"cannot write {path}: {e.strerror or e} (the results above were not saved)", 1)
