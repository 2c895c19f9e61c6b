"""Holding Ctrl-C and SIGTERM back while a few files move into place.

prepare and export stage their outputs and then rename them into place; a signal
between two renames would leave some new files and some old ones. Inside `held()`
such a signal is only recorded, and acted on as the block ends: Ctrl-C raises
KeyboardInterrupt there, SIGTERM ends the process as it would have.

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

# The signals held, each with the handling it must have for us to hold it
_HELD = ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL))


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Run the block whole: Ctrl-C or SIGTERM meanwhile is acted on when it ends.

    Only in the main thread (the only one that may set handlers), and only for a
    signal still at Python's default handling: a caller with its own handler (the
    training loop saves a checkpoint on Ctrl-C) keeps it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    ours = [sig for sig, default in _HELD if signal.getsignal(sig) is default]
    for sig in ours:
        signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, default in _HELD:
            if sig in ours:
                signal.signal(sig, default)
        if signal.SIGTERM in caught:
            os.kill(os.getpid(), signal.SIGTERM)  # its default handling: the process ends
    if signal.SIGINT in caught:
        raise KeyboardInterrupt
