"""Nano's PyTorch reference model and training toolkit."""
import contextlib
import os
import sys

__version__ = "0.1.0"


def start(task: str) -> int:
    """`python -m nano_train.pretrain|sft|lora_train`: nano_train.train imports torch, which
    takes seconds, so a Ctrl-C during that import is caught here and is one error line and
    status 130, as a Ctrl-C later in train.main is."""
    try:
        from nano_train.train import main
    except KeyboardInterrupt:
        print("\nerror: interrupted while starting; nothing was written", file=sys.stderr)
        return 130
    return main(task)


def discard_stdout() -> None:
    """Point standard output at the null device after writing to it failed (a reader
    that went away, a full disk), so that the interpreter's last flush of what is still
    buffered does not fail again, with a traceback, when it exits."""
    with contextlib.suppress(AttributeError, OSError, ValueError):  # no stdout, or no descriptor (a test's capture)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
