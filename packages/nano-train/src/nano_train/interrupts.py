"""Stop signals: for the commands that stage files (prepare and export), and for a
training run (RunSignals).

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
import errno
import os
import signal
import sys
import threading
from collections.abc import Iterator

from nano_train import OutputFailed

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


def stop_signals() -> list[int]:
    """The signals that stop a run after its step, with latest.pt saved: Ctrl-C (SIGINT),
    SIGTERM (what torchrun, `timeout` and batch schedulers send) and SIGHUP (a closed
    terminal or ssh session), unless it is ignored (nohup: the run is to go on)."""
    return [sig for sig in STOP_SIGNALS
            if sig in (signal.SIGINT, signal.SIGTERM) or signal.getsignal(sig) is not signal.SIG_IGN]


def isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def to_null(fds: list[int]) -> None:
    """Point the descriptors at the null device: a terminal that hung up, a pipe whose reader
    went away, where writes would fail and stop the saving of latest.pt a stop asked for."""
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        for fd in fds:
            os.dup2(null, fd)
        os.close(null)


class RunSignals:
    """A training run's stop signals, and its output, which a stop must not break.

    Ctrl-C (SIGINT) or SIGTERM (what torchrun and batch schedulers send): the loop
    finishes its step, saves latest.pt and stops (`requested`). A second signal aborts
    (KeyboardInterrupt). Once training is over (`done`), a signal drops the report's
    samples: while they are drawn (`sampling`) it stops them at once, and before they
    start it is noted (`late`) so that they are not started; a second one aborts.
    SIGHUP (the terminal closed): see hung_up.

    SIGCONT (the process goes on after Ctrl-Z, `kill -STOP` or a scheduler's suspend) is
    counted in `continued`: a step it came in was partly spent stopped, and its time is no
    measure of the training's pace.

    master: this process prints (rank 0). install() sets the handlers (in the main
    thread only, the one that may), restore() puts the earlier ones back.
    """

    def __init__(self, master: bool):
        self.master = master
        self.requested = self.done = self.late = self.sampling = False
        self.continued = 0
        self.terminals = [fd for fd in (1, 2) if isatty(fd)]  # (asked now: a terminal that hung up is no tty)
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        if main_thread():
            for sig in stop_signals():
                self._previous[sig] = signal.signal(sig, self._on_signal)
            if hasattr(signal, "SIGCONT"):  # (not on Windows)
                self._previous[signal.SIGCONT] = signal.signal(signal.SIGCONT, self._on_continue)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            if signal.getsignal(sig) in (self._on_signal, self._on_continue):  # not one set since (talking() ignores SIGTERM)
                signal.signal(sig, handler)

    def _on_continue(self, signum, frame) -> None:
        self.continued += 1

    def _on_signal(self, signum, frame) -> None:
        if signum == getattr(signal, "SIGHUP", None):
            self.hung_up()
            return
        if self.done:
            if self.late or self.sampling:
                self.late = True
                raise KeyboardInterrupt
            self.late = True
            return
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.master:
            with contextlib.suppress(OSError):  # (a closed pipe: the save comes first)
                print(f"\ninterrupt ({signal.Signals(signum).name}): saving latest.pt after this step "
                      "(interrupt again to abort)", file=sys.stderr, flush=True)

    def hung_up(self) -> None:
        """The terminal closed (its SIGHUP, or a write to it failed first): what it showed
        goes nowhere, and the run stops after its step, with latest.pt saved, as on Ctrl-C.
        Never an abort: a hang-up sends SIGHUP twice (the shell's, then the kernel's), so
        the later ones are ignored. Unless SIGHUP was ignored already (nohup, `trap '' HUP`):
        the user asked the run to outlive its terminal, and it goes on."""
        to_null(self.terminals)
        hup = getattr(signal, "SIGHUP", None)
        if hup is None or signal.getsignal(hup) is signal.SIG_IGN:
            return
        if main_thread():
            signal.signal(hup, signal.SIG_IGN)  # (so restore() leaves it ignored too)
        if not self.done and not self.requested:  # (once done, the report goes on: it is a file)
            self.requested = True
            if self.master:
                with contextlib.suppress(OSError):  # (on standard error, when that is not the terminal)
                    print("\ninterrupt (SIGHUP: the terminal closed): saving latest.pt after this step",
                          file=sys.stderr, flush=True)

    def emit(self, msg: str, stream) -> None:
        """Print msg to stream. A terminal that hung up stops the run (hung_up); once a stop
        is asked for, a stream that fails (`| tee log`: tee went with the Ctrl-C) is dropped,
        as the checkpoint comes first; else a closed pipe raises BrokenPipeError and another
        failure OutputFailed."""
        try:
            print(msg, file=stream, flush=True)
        except OSError as e:
            if e.errno == errno.EIO and self.terminals:  # a terminal that hung up, before its SIGHUP came
                self.hung_up()
            elif self.requested:
                with contextlib.suppress(OSError, ValueError):  # (no descriptor: a caller's stream)
                    to_null([stream.fileno()])
            elif isinstance(e, BrokenPipeError):
                raise
            else:
                raise OutputFailed(e.errno, e.strerror or str(e)) from None
