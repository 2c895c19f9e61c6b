"""Training checkpoints: atomic writes, RNG capture, loading for resume.

A checkpoint is one `torch.save`d dict that `torch.load(path, weights_only=True)`
reads (tensors, dicts, lists, str, int, float, bool, None only):

    "format": "nano-train-checkpoint", "version": 1, "task": "pretrain" | "sft" | "lora",
    "model":        state dict of the whole model (for LoRA runs: base weights + the
                    layers.{i}.{wq,wk,wv,wo}.lora_{A,B} adapters), no wrapper prefixes
    "config":       {"model": ModelConfig.to_dict(), "train": {section: {key: value}}}
    "tokenizer":    the vocabulary JSON dict (vocab_size, stoi, itos, special_tokens)
    "lora":         {"rank", "alpha", "dropout"}   (LoRA runs only)
    "base":         the init_from path of an SFT/LoRA run (provenance; not needed to load)
    "optimizer", "scaler" (None unless float16), "step", "tokens_seen",
    "data_state":   the train Batcher's state (its row counter)
    "rng":          {"world_size": W, "ranks": [{"torch", "cuda", "numpy", "python"} per rank]}
    "best_val_loss", "val_loss", "train_loss", "elapsed_s", "dataset", "versions"
    "warmup_end_s": the elapsed_s at which warmup ended (None before; older checkpoints lack it)
    "val_step":     the step whose evaluation gave val_loss (None: none yet; older checkpoints lack it)
    "eval_seed":    the seed of the validation rows' order (train.EVAL_SEED; checkpoints from before
                    2026-11-27 lack it: their losses were taken on rows in the run's seed's order)
    "dataset_id":   sha256 of the dataset's meta.json "shards", "split", "shuffle" and
                    "content" entries (resume refuses another dataset; older checkpoints
                    lack it, or its "content")
    "final":        True when written at the run's last step (max_iters or the time budget),
                    False on Ctrl-C and at periodic checkpoints (older checkpoints lack it)

Writes go to a temporary file in the same directory, `.{name}.{pid}.tmp`, which
is flushed and fsynced, then renamed over the target (os.replace is atomic on
POSIX and Windows), then the directory is fsynced so the rename itself is
durable. Killing the process at any instant leaves either the old or the new
file, and perhaps the temporary file, which the next run into the directory
removes once its writer (the pid in its name) is gone. A write that fails (a full
disk) leaves the old file whole and no temporary file, and is an OSError naming the
target, never torch's RuntimeError about its zip writer.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import random
import re
import sys
from pathlib import Path

import numpy as np
import torch

from nano_format import file_kind
from nano_train.metrics import short_repr as _short

FORMAT = "nano-train-checkpoint"
VERSION = 1  # raised when a field's meaning changes: an older nano-train then refuses the file
LATEST = "latest.pt"
BEST = "best.pt"
INT64_MAX = 2**63 - 1  # step, tokens and the data position are int64s where they are used
_TMP_SUFFIX = ".tmp"
# The temporary files save_atomic writes for checkpoints: .{name}.pt.{pid}.tmp
_TMP_NAME = re.compile(r"\..+\.pt\.(?P<pid>[0-9]+)" + re.escape(_TMP_SUFFIX))
# What torch's zip writer raises when a write of its file fails
_TORCH_WRITER_FAILED = re.compile(r"inline_container|PytorchStreamWriter|unexpected pos")
# What resuming reads ("scaler", "val_loss", "train_loss", "elapsed_s", ... are optional)
REQUIRED = ("task", "model", "config", "tokenizer", "optimizer", "step", "tokens_seen", "data_state", "rng",
            "best_val_loss")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the run."""


def save_atomic(obj: dict, path: str | Path) -> None:
    """torch.save obj to path atomically (see above). A write that fails (a full disk) is
    an OSError naming path, not the temporary file, which is removed; path stays as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{_TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        failure = write_failure(e, path) if isinstance(e, (OSError, RuntimeError)) else None
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if _interrupted(e):  # torch's writer makes a Ctrl-C inside it a RuntimeError: a Ctrl-C it stays
            raise KeyboardInterrupt from None
        if failure is None:
            raise
        raise failure from None
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename durable
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _interrupted(e: BaseException) -> bool:
    """Whether a KeyboardInterrupt is e or in its chain of causes."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def write_failure(e: BaseException, path: Path) -> OSError | None:
    """The OSError for a failed checkpoint write: errno and reason, naming path; None when
    e is no write failure. torch's zip writer replaces the OSError of a failed write (a
    full disk) by a RuntimeError ("[enforce fail at inline_container.cc:...] . unexpected
    pos ..."): the OSError is found in its context. Where there is none, a writer's error
    on a file system left with almost no room is taken for a full disk."""
    cause = e
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        code, why = cause.errno, cause.strerror or one_line(cause)
    elif _TORCH_WRITER_FAILED.search(str(e)):
        if _little_room(path.parent):
            code, why = errno.ENOSPC, os.strerror(errno.ENOSPC)
        else:
            code, why = errno.EIO, f"torch's writer failed ({one_line(e)[:200]})"
    else:
        return None
    return OSError(code, f"the checkpoint could not be written: {why}", str(path))


def _little_room(directory: Path) -> bool:
    """Whether the file system of directory has less than 1 MiB left (where it says)."""
    try:
        st = os.statvfs(directory)
    except (OSError, AttributeError):  # (no statvfs on Windows)
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


def process_gone(pid: int) -> bool:
    """Whether no process with this id runs on this machine, so that a temporary file
    named after it has no writer left. When in doubt, no: a pid we may not signal
    (another user's process), and any pid on Windows, where os.kill(pid, 0) would
    terminate the process instead of probing it."""
    if os.name == "nt" or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):
        return False
    return False


def remove_dead_writers_files(directory: str | Path, name: re.Pattern) -> list[Path]:
    """Delete the regular files in `directory` whose whole name matches `name` and
    whose writer, the pid in the pattern's group "pid", no longer runs; the files
    removed. A file a live process may still be writing is left alone."""
    removed = []
    for p in sorted(Path(directory).iterdir()):
        m = name.fullmatch(p.name)
        if m and p.is_file() and not p.is_symlink() and process_gone(int(m.group("pid"))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def remove_stale_temporaries(out_dir: str | Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes whose process was killed (they
    are never loaded), with a note on stderr; the files removed. Only names that
    save_atomic makes for checkpoints (.{name}.pt.{pid}.tmp) whose pid is no longer
    running."""
    removed = remove_dead_writers_files(out_dir, _TMP_NAME)
    if removed:
        print(f"note: removed {', '.join(p.name for p in removed)} from {out_dir}: left by a checkpoint write "
              "that was interrupted", file=sys.stderr)
    return removed


def one_line(text: object) -> str:
    """A message on one line (torch's load_state_dict and unpickling errors span many)."""
    return " ".join(str(text).split())


def load_failure(e: Exception) -> str:
    """One line on why torch.load failed. A weights_only refusal's message is many
    lines of advice (including to load with weights_only=False, which runs the
    file's code); keep only its cause, e.g. "Unsupported operand 83"."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
        text = text.split(" Please use ", 1)[0]  # the allowlisting advice after "Unsupported global: ..."
    return f"{e.__class__.__name__}: {one_line(text)}"


def not_a_file(path: Path) -> str | None:
    """What is at path when something other than a regular file is ("a directory", "a
    symbolic link to nothing", ...); None for a regular file or nothing at all."""
    if path.is_file() or not os.path.lexists(path):
        return None
    return file_kind(path.stat().st_mode) if path.exists() else "a symbolic link to nothing"


def version_error(ck: dict) -> str | None:
    """What keeps this nano-train from reading a checkpoint of its format, by its version
    (None: nothing)."""
    version = ck.get("version")
    if version == VERSION and type(version) is int:
        return None
    if type(version) is int and version > VERSION:
        return (f"checkpoint version {version} is newer than this nano-train reads ({VERSION}): a later "
                "nano-train wrote it; upgrade nano-train to read it")
    return f"checkpoint version {_short(version)} is not {VERSION}"


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        if what := not_a_file(path):
            raise CheckpointError(f"{path} is {what}, not a checkpoint file")
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling raises many types
        others = newest_first(p for p in path.parent.glob("*.pt") if p.name != path.name and p.is_file())
        hint = (f"; other checkpoints in its folder: {', '.join(p.name for p in others[:4])}"
                f"{', ...' if len(others) > 4 else ''} (newest first)" if others else "")
        raise CheckpointError(f"{path}: not a readable checkpoint: damaged, cut short, or not a torch checkpoint "
                              f"({load_failure(e)}){hint}") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a nano-train checkpoint")
    if why := version_error(ck):
        raise CheckpointError(f"{path}: {why}")
    missing = [k for k in REQUIRED if k not in ck]
    if missing:
        raise CheckpointError(f"{path}: an incomplete checkpoint, it has no {', '.join(missing)}")
    config = ck["config"]
    if not (isinstance(config, dict) and isinstance(config.get("model"), dict) and isinstance(config.get("train"), dict)):
        raise CheckpointError(f"{path}: an incomplete checkpoint, its config needs 'model' and 'train' sections")
    check_fields(path, ck)
    return ck


def newest_first(paths) -> list[Path]:
    """paths by modification time, the newest first (ties by name); a file gone meanwhile is left out."""
    dated = []
    for p in paths:
        try:
            dated.append((-p.stat().st_mtime_ns, p.name, p))
        except OSError:
            continue
    return [p for _, _, p in sorted(dated)]


def load_mapped(path: Path, tries: int = 5):
    """torch.load of a checkpoint, mapped rather than read: the optimizer's two moments
    (twice the weights) are never touched, and the weights are copied into a model
    from the page cache. torch opens the path twice (the archive's directory, then the
    map), so a training run that replaces the file meanwhile (latest.pt, by rename)
    would pair one file's offsets with the other's bytes: the file is the same before
    and after, or it is loaded again. A file of torch's legacy (non-zip) format cannot
    be mapped, and is read; what torch raises for a file it cannot read is raised."""
    for _ in range(tries):
        before = path.stat()
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            break  # not mappable (or not a checkpoint): read it, below, for its own error
        after = path.stat()
        if (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns) == \
                (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns):
            return ck
    with open(path, "rb") as f:  # read whole through one open file: consistent whatever happens to the path
        return torch.load(f, map_location="cpu", weights_only=True)


def _recorded(path: str | Path, field: str):
    """A field of the checkpoint at path, or None when there is no readable checkpoint.
    The tensors are mapped from the file, not read."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unpickling raises many types; a damaged file is simply no record
        return None
    return ck.get(field) if isinstance(ck, dict) and ck.get("format") == FORMAT else None


def recorded_val_loss(path: str | Path) -> float | None:
    """The validation loss the checkpoint at path was saved with (for best.pt, the
    best so far), or None when there is no readable checkpoint with a finite one."""
    value = _recorded(path, "val_loss")
    return float(value) if _is_real(value) and math.isfinite(value) else None


def recorded_step(path: str | Path) -> int | None:
    """The step of the checkpoint at path, or None when there is no readable checkpoint."""
    value = _recorded(path, "step")
    return value if _is_int(value) and value >= 0 else None


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_fields(path: str | Path, ck: dict) -> None:
    """Raise one CheckpointError line, naming `path` and the field, if a scalar field
    that resuming uses has the wrong type or range (a wrong one would stop training
    with a traceback, or worse, train on: a negative step gives negative learning rates)."""
    def need(ok: bool, field: str, what: str) -> None:
        if not ok:
            raise CheckpointError(f"{path}: field {field} is {_short(value)}, not {what}")

    value = ck["step"]
    need(_is_int(value) and 0 <= value <= INT64_MAX, "step", "an integer in [0, 2^63)")
    value = ck["tokens_seen"]
    need(_is_int(value) and 0 <= value <= INT64_MAX, "tokens_seen", "an integer in [0, 2^63)")
    value = ck["best_val_loss"]
    need(_is_real(value) and not math.isnan(value), "best_val_loss", "a number (inf before any evaluation)")
    for field in ("val_loss", "train_loss"):
        value = ck.get(field)
        need(value is None or _is_real(value), field, "a number or None")
    value = ck.get("elapsed_s", 0.0)
    need(_is_real(value) and math.isfinite(value) and value >= 0, "elapsed_s", "a finite number of seconds >= 0")
    value = ck.get("val_step")
    need(value is None or (_is_int(value) and 0 <= value <= ck["step"]), "val_step",
         "None or an integer in [0, step]")
    value = ck.get("eval_seed")
    need(value is None or (_is_int(value) and value >= 0), "eval_seed", "None or an integer >= 0")
    value = ck.get("warmup_end_s")
    need(value is None or (_is_real(value) and math.isfinite(value) and value >= 0), "warmup_end_s",
         "None or a finite number of seconds >= 0")
    value = ck.get("final", False)
    need(isinstance(value, bool), "final", "true or false")
    value = ck["data_state"]
    need(isinstance(value, dict), "data_state", "a dict (the data position)")
    state = value
    # the row counter is an int64 where batches are drawn: 10**30 overflowed there
    for field, ok, what in (("row", lambda v: _is_int(v) and 0 <= v <= INT64_MAX, "an integer in [0, 2^63)"),
                            ("seed", _is_int, "an integer"),
                            ("n_rows", lambda v: _is_int(v) and 0 < v <= INT64_MAX, "an integer in [1, 2^63)")):
        value = state.get(field)
        need(ok(value), f"data_state.{field}", what)
    value = ck.get("dataset_id")
    need(value is None or (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())),
         "dataset_id", "a dict of sha256 strings")


def check_state_dict(path: str | Path, state, model: torch.nn.Module) -> None:
    """Raise one CheckpointError line if `state` (a checkpoint's weights) does not fit
    `model`: the missing and unexpected keys and the mismatched shapes, a few of each."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: its 'model' entry is not a state dict")
    mine = model.state_dict()
    problems = []
    missing = [k for k in mine if k not in state]
    unexpected = [_key(k) for k in state if k not in mine]
    shapes = [f"{k} {tuple(getattr(state[k], 'shape', ()))} (the model's: {tuple(v.shape)})"
              for k, v in mine.items() if k in state and getattr(state[k], "shape", None) != v.shape]
    # what loading would silently convert (an integer or complex tensor) or cannot read (a
    # sparse one, or a meta one, which holds no data)
    kinds = [f"{k} ({_tensor_kind(state[k])})" for k, v in mine.items()
             if k in state and isinstance(state[k], torch.Tensor) and v.is_floating_point()
             and (state[k].layout != torch.strided or state[k].is_meta or not state[k].is_floating_point())]
    for what, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes),
                        ("not a dense floating-point tensor with data", kinds)):
        if items:
            problems.append(f"{what}: {', '.join(items[:3])}" + (f" and {len(items) - 3} more" if len(items) > 3 else ""))
    if problems:
        raise CheckpointError(f"{path}: the weights do not fit the model its config describes ({'; '.join(problems)})")


def non_finite(named_tensors) -> list[str]:
    """The names of the tensors that hold NaN or inf (a diverged run's), as messages show them."""
    return [_key(name) for name, t in named_tensors if not bool(torch.isfinite(torch.as_tensor(t)).all())]


def check_finite(path: str | Path, state: dict) -> None:
    """Raise one CheckpointError line if a checkpoint's weights (checked by
    check_state_dict) hold NaN or inf: a resumed run would train on them."""
    bad = non_finite(state.items())
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise CheckpointError(f"{path}: {bad[0]}{more} holds non-finite values (NaN or inf): the run had diverged "
                              "when it was written; resume from an earlier checkpoint of the run (a ckpt_<step>.pt, "
                              "copied over latest.pt) or start again")


def _key(key) -> str:
    """A state-dict key as a message shows it: as it is, or quoted where it is not a
    printable string (a damaged file's key may hold a line break, or be a number)."""
    return key if isinstance(key, str) and key.isprintable() else repr(key)


def _tensor_kind(t: torch.Tensor) -> str:
    """A tensor's dtype, and its layout where that is not the dense one, or its device where
    that holds no data: "torch.int64", "torch.float32, torch.sparse_coo", "torch.float32, meta"."""
    return (str(t.dtype) + ("" if t.layout == torch.strided else f", {t.layout}")
            + (", meta" if t.is_meta else ""))


# ---------------------------------------------------------------------------
# RNG state as weights_only-loadable values


def rng_state() -> dict:
    """This process's torch, CUDA, numpy and python RNG states."""
    np_state = np.random.get_state()  # ('MT19937', uint32[624], pos, has_gauss, cached_gaussian)
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "state": list(py_state), "gauss_next": py_gauss},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        # one state per GPU of the machine that saved it; this one may have fewer (a process
        # trains on its first, cuda:local_rank): those it has (was: an IndexError past them)
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
