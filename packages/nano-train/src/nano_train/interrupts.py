"""Stop signals for the commands that stage files: prepare and export.

`as_ctrl_c()` makes SIGTERM (`timeout`, `kill`, batch schedulers) and SIGHUP (a
closed terminal or ssh session) a KeyboardInterrupt, as Ctrl-C is, so that what a
command cleans up after a Ctrl-C (its staging folder, the --out_dir it made) is
cleaned up after them too. A signal that is ignored (SIGHUP under nohup) stays ignored.

The commands stage their outputs and then rename them into place; a signal
between two renames would leave some new files and some old ones. Inside `held()`
such a signal is only recorded, and acted on as the block ends: as a
KeyboardInterrupt where it raises one, else as its default handling (the process ends).

The handlers are swapped rather than the signals masked: Python runs its handlers
in the main thread whichever thread the kernel picked, and torch's worker threads
do not mask anything, so a mask on the main thread alone would not hold a signal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

# The signals a user or a system sends to stop a command (no SIGHUP on Windows)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def _as_ctrl_c(signum, frame):
    raise KeyboardInterrupt


# The handlers held() holds a signal under: Python's own, and _as_ctrl_c
_HOLDABLE = (signal.default_int_handler, signal.SIG_DFL, _as_ctrl_c)


def main_thread() -> bool:
    """Whether this is the main thread, the only one that may set signal handlers."""
    return threading.current_thread() is threading.main_thread()


def as_ctrl_c() -> None:
    """SIGTERM and SIGHUP raise KeyboardInterrupt from now on, where they still have
    their default handling (in the main thread only, the one that may set handlers)."""
    if not main_thread():
        return
    for sig in STOP_SIGNALS:
        if sig != signal.SIGINT and signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _as_ctrl_c)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Run the block whole: a stop signal meanwhile is acted on when it ends.

    Only in the main thread (the only one that may set handlers), and only for a
    signal at Python's default handling or as_ctrl_c's: a caller with its own
    handler (the training loop saves a checkpoint on Ctrl-C) keeps it.
    """
    if not main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    ours = [sig for sig, handler in previous.items() if any(handler is h for h in _HOLDABLE)]
    for sig in ours:
        signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig in ours:
            signal.signal(sig, previous[sig])
        for sig in caught:
            if previous[sig] is signal.SIG_DFL:
                os.kill(os.getpid(), sig)  # its default handling: the process ends
    if caught:
        raise KeyboardInterrupt
