"""Nano's PyTorch reference model and training toolkit."""
import argparse
import contextlib
import math
import os
import re
import sys

__version__ = "0.1.0"

# The seed of everything random (initial weights, batches, the held-out split, the shuffle,
# generated problems) unless one is given
DEFAULT_SEED = 1337

# Numbers on a command line, and in --key=value settings, are written in ASCII digits,
# as a config file's JSON numbers are: Python's int() and float() also read "1_0",
# " 5" and other scripts' digits.
INT_TEXT = re.compile(r"[+-]?[0-9]+")
FLOAT_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(inf|infinity|nan)", re.IGNORECASE)


def _cut(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def integer(text: str) -> int:
    """An argparse type: an integer in ASCII digits."""
    try:
        if INT_TEXT.fullmatch(text):
            return int(text)
    except ValueError:  # more digits than Python converts
        pass
    raise argparse.ArgumentTypeError(f"expected an integer, got {_cut(text)}")


def number(text: str) -> float:
    """An argparse type: a finite number in ASCII digits (1, 0.5, 1e-3)."""
    if FLOAT_TEXT.fullmatch(text) and math.isfinite(value := float(text)):
        return value
    raise argparse.ArgumentTypeError(f"expected a finite number, got {_cut(text)}")


def launch_rank() -> int:
    """This process's rank as torchrun's environment gives it (RANK, where WORLD_SIZE is
    over 1), known before the process group is joined; 0 for a process on its own."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    return int(os.environ.get("RANK", "0"))


def start(task: str) -> int:
    """`python -m nano_train.pretrain|sft|lora_train`: nano_train.train imports torch, which
    takes seconds, so a Ctrl-C during that import is caught here and is one error line and
    status 130, as a Ctrl-C later in train.main is. SIGTERM and SIGHUP are Ctrl-C too until
    the training loop takes them over (nano_train.interrupts.as_ctrl_c): what the run made
    is removed, as after a Ctrl-C."""
    from nano_train import interrupts

    interrupts.as_ctrl_c()
    try:
        from nano_train.train import main
    except KeyboardInterrupt:  # under torchrun, the other ranks leave it to rank 0 (torchrun stops them all)
        if launch_rank() == 0:
            print("\nerror: interrupted while starting; nothing was written", file=sys.stderr)
        return 130
    return main(task)


def standard_streams() -> None:
    """Each command's main calls it first. Standard output and error write a character
    their encoding lacks as an escape (\\u5fc3), rather than the command ending with a
    UnicodeEncodeError: Chinese text under PYTHONIOENCODING=ascii, a Latin-1 locale or a
    Windows code page, or a file name that is not UTF-8. A command started with standard
    error closed (2>&-) writes its notes and errors to the null device: print(file=None)
    would put them on standard output, among the text or figures there."""
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            with contextlib.suppress(ValueError, OSError):  # (a closed stream)
                stream.reconfigure(errors="backslashreplace")


def discard_stdout() -> None:
    """Point standard output at the null device after writing to it failed (a reader
    that went away, a full disk), so that the interpreter's last flush of what is still
    buffered does not fail again, with a traceback, when it exits."""
    with contextlib.suppress(AttributeError, OSError, ValueError):  # no stdout, or no descriptor (a test's capture)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)


class OutputFailed(OSError):
    """Standard output could not be written, for another reason than a reader that went
    away (a terminal that hung up, a full disk under `> file`)."""


def print_output(text: str, done: str = "") -> int:
    """Print a command's whole output (--help, --print_config, a list, what was written): 0,
    or 1, quietly, when the reader went away first (`| head -1`), as the other commands do,
    or with an error line when standard output cannot be written (done: what the command
    did all the same, for that line)."""
    try:
        print(text, flush=True)
        return 0
    except BrokenPipeError:
        discard_stdout()
        return 1
    except OSError as e:  # a full disk under `> file`
        discard_stdout()
        print(f"error: writing standard output: {e.strerror or e}" + (f" ({done})" if done else ""), file=sys.stderr)
        return 1


def file_stamp(path) -> tuple[int, int, int] | None:
    """What tells one file at path from another, or from itself rewritten: a file written
    aside and moved in has a new inode; None when there is none."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


def either_spelling(parser: argparse.ArgumentParser, argv: list[str] | None) -> list[str]:
    """argv (default: sys.argv[1:]) with each long option that parser, or one of its
    subcommands, knows in the other spelling rewritten to its own: "-" and "_" between
    words are the same (--out-dir is --out_dir, --top_p is --top-p), as in training keys.
    The commands were written in both styles, and a user should not have to remember which.
    Options argparse knows as typed, abbreviations and everything after "--" pass unchanged."""
    known: set[str] = set()

    def collect(p: argparse.ArgumentParser) -> None:
        for action in p._actions:
            known.update(o for o in action.option_strings if o.startswith("--"))
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    collect(sub)

    collect(parser)
    out = []
    args = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        name, eq, value = arg.partition("=")
        if name.startswith("--") and name not in known:
            for other in ("--" + name[2:].replace("-", "_"), "--" + name[2:].replace("_", "-")):
                if other in known:
                    arg = other + eq + value
                    break
        out.append(arg)
    return out
