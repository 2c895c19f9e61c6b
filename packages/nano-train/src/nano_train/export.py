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
its mode. Such files left by an export that was killed (its PID no longer runs),
and the partial files written beside them, are removed when the next export to the same
destination starts. --out and --lora-out must differ from each other and from
--ckpt, and must not be anything but a regular file (a folder, a FIFO, a device,
a symbolic link): those are refused, never replaced.

Example:
  python -m nano_train.export --ckpt out/ckpt.pt --out model_q80.bin --quant q8_0
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from pathlib import Path

from nano_format import WriteError, check_writable, kept_mode

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nano_train.export",
        description="Export a nano-train checkpoint (.pt) as a .bin model file (and a LoRA .bin).",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint .pt written by nano-train")
    p.add_argument("--out", required=True, help="model .bin to write")
    p.add_argument("--quant", choices=("f32", "q8_0"), default="f32", help="weight format (default f32)")
    p.add_argument("--group-size", type=int, default=None, help="Q8_0 group size (default: automatic)")
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
            raise ValueError(f"{opt} {path} is a directory")
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
    """The names _staged gives path for any pid, and the names of the temporary files
    write_atomically makes for those (".<staged name>.<hex>.tmp"), which a kill
    during the write leaves instead."""
    staged = re.escape(_staged_stem(path) + ".") + r"(?P<pid>[0-9]+)" + re.escape(_STAGED_SUFFIX)
    return re.compile(rf"(?P<inner>\.)?{staged}(?(inner){_INNER_TMP})")


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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .convert import export_bin, export_lora, load_checkpoint_model
        from .lora import detach_lora, has_lora, merge_lora

        ckpt = Path(args.ckpt)
        if not ckpt.is_file():
            raise ValueError(f"checkpoint not found: {ckpt}")
        if args.group_size is not None and args.quant != "q8_0":
            raise ValueError("--group-size applies to --quant q8_0 only")
        outs = {"--out": Path(args.out)}
        if args.lora_out:
            outs["--lora-out"] = Path(args.lora_out)
        _check_outputs(ckpt, outs)
        for path in outs.values():
            _remove_stale_staged(path)
        model, tokenizer = load_checkpoint_model(ckpt)
        if args.lora_out and not has_lora(model):
            raise ValueError(f"--lora-out: {ckpt} has no LoRA adapters")
        staged = {}  # final path -> (temporary path, ExportInfo)
        try:
            if args.lora_out:
                path = outs["--lora-out"]
                tmp = _staged(path)
                staged[path] = tmp, _naming(path, tmp, export_lora, model, tmp)
                detach_lora(model)  # the base weights, untouched by the adapters
            elif has_lora(model):
                merge_lora(model)
                print("the checkpoint's LoRA adapters are merged into the exported weights "
                      "(use --lora-out to keep them separate)")
            path = outs["--out"]
            tmp = _staged(path)
            staged[path] = tmp, _naming(path, tmp, export_bin, model, tmp, quant=args.quant,
                                        group_size=args.group_size, layout=args.layout, tokenizer=tokenizer)
            for path, (tmp, _) in staged.items():  # checked again: things may have changed meanwhile
                mode = kept_mode(path)  # WriteError for what is not a regular file
                if mode is not None:
                    _naming(path, tmp, os.chmod, tmp, mode)
            for path, (tmp, info) in staged.items():  # every file succeeded: move them into place
                _naming(path, tmp, os.replace, tmp, path)
                info.path = str(path)
                print(info)
        finally:
            for tmp, _ in staged.values():
                tmp.unlink(missing_ok=True)
        if tokenizer is None:
            print("note: the checkpoint has no vocabulary, so the file has none either")
    except (ValueError, OSError) as e:  # bad input (ConvertError is a ValueError): no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
