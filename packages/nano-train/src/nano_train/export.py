"""Export a training checkpoint as a `.bin` model file (and its LoRA, if any).

usage: python -m nano_train.export --ckpt CKPT.pt --out MODEL.bin [--quant f32|q8_0]
                                   [--group-size N] [--layout 2026.1|2026.101]
                                   [--lora-out LORA.bin]
       (hatch run train:export ...)

  --ckpt PATH        a checkpoint written by nano-train (pretrain, sft or lora)
  --out PATH         the model file to write (the checkpoint's vocabulary goes in it)
  --quant Q          f32 (default) or q8_0
  --group-size N     Q8_0 values per scale; default: the largest divisor (<= 128)
                     of every row length, settled before the header is written
  --layout L         2026.1 (what the reference engine reads; the default) or
                     2026.101 (records attention kind, position kind, eps, theta);
                     chosen automatically for full-attention or learned-position models
  --lora-out PATH    for a LoRA checkpoint: write the base model to --out and the
                     adapters to PATH (layout 2024.10). Without it the adapters are
                     merged into the exported weights.

Nothing is written unless every file succeeds: each is written to a temporary
file next to its destination (.NAME.PID.export.tmp, or .HASH.PID.export.tmp where
NAME is too long for that) and moved into place at the end; a replaced file keeps
its mode. The moves are all or none as well: a file already there is kept as a
backup (.NAME.PID.export.bak) until every file is in place, and should a move fail
the ones done are undone, every destination left as it was. Such files left by an
export that was killed (its PID no longer runs), and the partial files written
beside them, are removed when the next export to the same destination starts.
--out and --lora-out must differ from each other and from --ckpt, and must not be
anything but a regular file (a folder, a FIFO, a device, a symbolic link): those
are refused, never replaced.

The summary (what was written) is printed once every file is in place. Should
standard output fail then, the files stay: a reader that went away (`| head`) ends
it quietly, any other failure (a full disk) is one `error: writing standard
output: ...` line that says the files were written; exit status 1 either way.
Ctrl-C (or SIGTERM, or SIGHUP) is one `error: interrupted; ...` line and exit status 130; it removes the
staged files, so nothing is written, unless it came once the files were being
moved into place: it is held back until all are, and the line then names them.
Bad input is one `error: ...` line and exit status 1; a command line argparse
cannot parse gets the usage and exit status 2.

Example:
  python -m nano_train.export --ckpt out/ckpt.pt --out model_q80.bin --quant q8_0
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from nano_format import BadGroupSize, WriteError, check_writable, file_kind, kept_mode
from nano_format.quant import check_group_size

from nano_train import discard_stdout, either_spelling, standard_streams, integer, interrupts

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nano_train.export",
        description="Export a nano-train checkpoint (.pt) as a .bin model file (and a LoRA .bin).",
        epilog="Nothing is written unless every file is: each goes to a temporary file and is moved into "
               "place at the end. Exit status: 0 once every file is in place and the summary printed; 1 for "
               "bad input or a failed write (nothing written), or for a summary that could not be printed "
               "(the files are in place, as the error line says); 2 for a usage error; 130 for Ctrl-C (the "
               "line says whether files were written). "
               "Example: python -m nano_train.export --ckpt out/ckpt.pt --out model_q80.bin --quant q8_0",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint .pt written by nano-train")
    p.add_argument("--out", required=True, help="model .bin to write")
    p.add_argument("--quant", choices=("f32", "q8_0"), default="f32", help="weight format (default f32)")
    p.add_argument("--group-size", type=integer, default=None, help="Q8_0 group size (default: automatic)")
    p.add_argument("--layout", choices=("2026.1", "2026.101"), default=None,
                   help="file layout (default 2026.1, or 2026.101 when the model needs it)")
    p.add_argument("--lora-out", help="for a LoRA checkpoint: write the adapters here, the base to --out")
    return p


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _check_outputs(ckpt: Path, outs: dict[str, Path]) -> None:
    """Refuse outputs that would overwrite the checkpoint or each other, or that
    cannot be written, before anything is read or written."""
    for opt, path in outs.items():
        if _same_file(path, ckpt):
            raise ValueError(f"{opt} {path} is the checkpoint itself; write the export elsewhere")
        if path.is_dir():
            example = path / ("lora.bin" if opt == "--lora-out" else "model.bin")
            raise ValueError(f"{opt} {path} is a directory; give a file name, e.g. {example}")
        parent = path.parent
        if not parent.is_dir():
            raise ValueError(f"{opt} {path}: directory {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(f"{opt} {path}: directory {parent} is not writable")
    if len(outs) == 2 and _same_file(*outs.values()):
        raise ValueError("--out and --lora-out are the same file; give the base model and the LoRA different names")
    for opt, path in outs.items():
        # What the final rename would do to a FIFO, a device or a symbolic link: replace it.
        try:
            check_writable(path)
        except WriteError as e:
            raise ValueError(f"{opt} {e}") from None
        except OSError as e:
            raise ValueError(f"{opt} {path}: cannot create a file in {path.parent}: {e.strerror or e}") from None


_STAGED_SUFFIX = ".export.tmp"
_BACKUP_SUFFIX = ".export.bak"  # the same length: _staged_stem's room fits both
# Worst cases for the staged name's length: a pid of 10 digits (32 bits), and the
# temporary name nano-format's write_atomically makes beside it (.NAME.<8 hex>.tmp),
# which must fit too, or it falls back to a name that says nothing of the destination.
_PID_DIGITS = 10
_INNER_EXTRA = len(".") + len(".01234567.tmp")
_INNER_TMP = r"\.[0-9a-f]+\.tmp"


def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf here: the common limit
        return 255


def _staged_stem(path: Path) -> str:
    """The staged name's part before the pid: ".NAME", or ".HASH" (a digest of NAME)
    where ".NAME.PID.export.tmp" would not fit the directory's name limit together
    with write_atomically's temporary name around it. Fixed per destination, so the
    next export finds what a killed one left."""
    stem = f".{path.name}"
    longest = len(os.fsencode(stem)) + 1 + _PID_DIGITS + len(_STAGED_SUFFIX) + _INNER_EXTRA
    if longest > _name_max(path.parent):
        stem = "." + hashlib.sha256(os.fsencode(path.name)).hexdigest()[:16]
    return stem


def _staged(path: Path) -> Path:
    """Where path is written first: its own directory, so moving it into place is a rename."""
    return path.with_name(f"{_staged_stem(path)}.{os.getpid()}{_STAGED_SUFFIX}")


def _stale_pattern(path: Path) -> re.Pattern:
    """The names _staged and _backup give path for any pid, and the names of the
    temporary files write_atomically makes for the staged ones (".<staged name>.<hex>.tmp"),
    which a kill during the write leaves instead."""
    stem = re.escape(_staged_stem(path) + ".") + r"(?P<pid>[0-9]+)"
    staged, backup = re.escape(_STAGED_SUFFIX), re.escape(_BACKUP_SUFFIX)
    return re.compile(rf"(?P<inner>\.)?{stem}(?(inner){staged}{_INNER_TMP}|(?:{staged}|{backup}))")


def _remove_stale_staged(path: Path) -> None:
    """Delete what killed exports left staged for path: files named as _staged names
    them for path (or write_atomically's temporary files for those) whose pid no
    longer runs (a live export's are left alone)."""
    from .checkpoint import remove_dead_writers_files

    name = _stale_pattern(path)
    for p in remove_dead_writers_files(path.parent, name):
        print(f"note: removed {p}: left by an export that was interrupted (pid {name.fullmatch(p.name)['pid']})",
              file=sys.stderr)


def _naming(path: Path, tmp: Path, op, *args, **kwargs):
    """op(*args, **kwargs), with an OSError about the staged file tmp told as one about path,
    the destination the user named."""
    try:
        return op(*args, **kwargs)
    except OSError as e:
        if e.filename is not None and os.fspath(e.filename) != os.fspath(tmp):
            raise
        raise OSError(e.errno, e.strerror, str(path)) from None


def _backup(path: Path) -> Path:
    """Where the file at path is kept while the export replaces it: beside it, named as
    its staged file is but for the suffix."""
    return path.with_name(f"{_staged_stem(path)}.{os.getpid()}{_BACKUP_SUFFIX}")


def _keep(path: Path, backup: Path) -> bool:
    """Keep the file at path as backup: a second link to it, so that path is never
    missing, or where the file system has no hard links, the file itself renamed
    (True: path is gone until something is moved there)."""
    backup.unlink(missing_ok=True)  # our own name: nothing but a leftover of this pid can be there
    try:
        os.link(path, backup)
        return False
    except OSError:
        os.replace(path, backup)
        return True


@dataclass
class _Move:
    path: Path  # the destination
    backup: Path | None = None  # where its old file is kept, if it had one
    old_off: bool = False  # whether the old file is off path (renamed aside, or the new one moved over it)
    moved: bool = False  # whether the new file is at path


def _move_into_place(staged: dict[Path, Path], opts: dict[Path, str]) -> None:
    """Rename each staged file (destination -> temporary file) onto its destination,
    all of them or none: a file already there is kept as a backup first, and should a
    later move fail the moves done are undone (the old files put back, the new ones
    removed) and the error is one line. The backups are removed once every file is in place."""
    moves: list[_Move] = []
    try:
        for path, tmp in staged.items():
            move = _Move(path)
            moves.append(move)
            if os.path.lexists(path):
                move.backup = _backup(path)
                move.old_off = _keep(path, move.backup)
            os.replace(tmp, path)
            move.moved = move.old_off = True
    except OSError as e:
        path = moves[-1].path
        message = f"{opts[path]} {path}: cannot move the export into place ({e.strerror or e}); nothing was written"
        raise OSError(message + _undo(moves, opts)) from None
    for move in moves:
        if move.backup is not None:
            try:
                move.backup.unlink()
            except OSError as e:  # (the next export removes it)
                print(f"note: could not remove {move.backup}, the file replaced: {e.strerror or e}", file=sys.stderr)


def _undo(moves: list[_Move], opts: dict[Path, str]) -> str:
    """Put every destination of moves back as it was; "" when that worked, else what
    could not be put back and where its old file is now."""
    failures = []
    for move in reversed(moves):
        try:
            if move.backup is None:
                if move.moved:
                    move.path.unlink()  # there was nothing before
            elif move.old_off:
                os.replace(move.backup, move.path)  # the old file back, over the new one if it is there
            else:
                move.backup.unlink()  # a second link to the old file, which is still in place
        except OSError as e:
            why = e.strerror or e
            if move.backup is not None and move.old_off:
                failures.append(f"{opts[move.path]} {move.path} could not be put back ({why}), "
                                f"its old file is {move.backup}")
            elif move.backup is not None:
                failures.append(f"{move.backup} (a second link to {move.path}) could not be removed ({why})")
            else:
                failures.append(f"{opts[move.path]} {move.path} could not be removed ({why})")
    return "".join(f"; but {f}" for f in failures)


def _check_checkpoint(ckpt: Path) -> None:
    """Refuse a --ckpt that is missing or is not a regular file (a folder, a device,
    a FIFO), saying which, before anything is loaded."""
    try:
        st = ckpt.stat()  # a symbolic link to a checkpoint is read as the checkpoint
    except FileNotFoundError:
        raise ValueError(f"--ckpt {ckpt}: checkpoint not found") from None
    except OSError as e:
        raise ValueError(f"--ckpt {ckpt}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"--ckpt {ckpt}: is {file_kind(st.st_mode)}, not a checkpoint file")


def _check_group_size(model_config, group_size: int) -> None:
    """--group-size against the model's row lengths, told as the option it is (not as
    the header field it would become)."""
    from .convert import file_config_from_model

    try:
        check_group_size(file_config_from_model(model_config), group_size)
    except BadGroupSize as e:
        raise ValueError(f"--group-size: {e.message}") from None


def _export(args, written: list[Path]) -> list[str]:
    """Export as the arguments say; return the summary to print once every file is in
    place. The paths written are appended to `written` when, and only when, all of
    them are in place."""
    from .convert import export_bin, export_lora, load_checkpoint_model
    from .lora import detach_lora, has_lora, merge_lora

    # An empty argument (an unset shell variable) would read as "." or, for
    # --lora-out, as no option at all: the adapters merged instead of kept apart.
    for opt, value in (("--ckpt", args.ckpt), ("--out", args.out), ("--lora-out", args.lora_out)):
        if value == "":
            raise ValueError(f"{opt}: the path is empty")
    ckpt = Path(args.ckpt)
    _check_checkpoint(ckpt)
    if args.group_size is not None:
        if args.quant != "q8_0":
            raise ValueError("--group-size applies to --quant q8_0 only")
        if args.group_size < 1:
            raise ValueError(f"--group-size: must be at least 1, got {args.group_size}")
    outs = {"--out": Path(args.out)}
    if args.lora_out:
        outs["--lora-out"] = Path(args.lora_out)
    _check_outputs(ckpt, outs)
    for path in outs.values():
        _remove_stale_staged(path)
    model, tokenizer = load_checkpoint_model(ckpt)
    if args.lora_out and not has_lora(model):
        raise ValueError(f"--lora-out: {ckpt} has no LoRA adapters")
    if args.group_size is not None:
        _check_group_size(model.config, args.group_size)
    summary = []
    staged = {}  # final path -> temporary path, registered before anything is written to it
    infos = []
    try:
        if args.lora_out:
            path = outs["--lora-out"]
            staged[path] = tmp = _staged(path)
            infos.append(_naming(path, tmp, export_lora, model, tmp))
            detach_lora(model)  # the base weights, untouched by the adapters
        elif has_lora(model):
            merge_lora(model)
            summary.append("note: the checkpoint's LoRA adapters are merged into the exported weights "
                           "(use --lora-out to keep them separate)")
        path = outs["--out"]
        staged[path] = tmp = _staged(path)
        infos.append(_naming(path, tmp, export_bin, model, tmp, quant=args.quant,
                             group_size=args.group_size, layout=args.layout, tokenizer=tokenizer))
        for path, tmp in staged.items():  # checked again: things may have changed meanwhile
            mode = kept_mode(path)  # WriteError for what is not a regular file
            if mode is not None:
                _naming(path, tmp, os.chmod, tmp, mode)
        with interrupts.held():  # every file succeeded: move them all into place
            _move_into_place(staged, {path: opt for opt, path in outs.items()})
            written.extend(outs.values())
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
    for path, info in zip(staged, infos):
        info.path = str(path)
        summary.append(str(info))
    if tokenizer is None:
        summary.append("note: the checkpoint has no vocabulary, so the file has none either")
    return summary


def _print_summary(summary: list[str], written: list[Path]) -> int:
    """Print the summary of an export whose files are all in place. A reader that went
    away (`| head`) ends it quietly, as in sample, nano-format and nano-tokenizer; any
    other failure (a full disk) is one line saying the files were written. Exit 1 either way."""
    try:
        for line in summary:  # what was written on standard output, notes on standard error
            print(line, file=sys.stderr if line.startswith("note: ") else sys.stdout)
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:
        discard_stdout()
        return 1
    except OSError as e:
        discard_stdout()
        print(f"error: writing standard output: {e.strerror or e} (the export itself succeeded: "
              f"{_and(written)} written)", file=sys.stderr)
        return 1
    return 0


def _and(paths: list[Path]) -> str:
    return " and ".join(str(p) for p in paths)


def main(argv=None) -> int:
    standard_streams()
    parser = build_parser()
    args = parser.parse_args(either_spelling(parser, argv))
    written: list[Path] = []  # filled once every file is in place
    interrupts.as_ctrl_c()  # SIGTERM and SIGHUP clean up as Ctrl-C does
    try:
        return _print_summary(_export(args, written), written)
    except KeyboardInterrupt:  # the staged files are gone already (_export's finally)
        done = f"the export was complete: {_and(written)} written" if written else "nothing was written"
        print(f"\nerror: interrupted; {done}", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # bad input (ConvertError is a ValueError): no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
