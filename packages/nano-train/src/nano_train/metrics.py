"""Run logging: the JSONL log, the progress line, throughput and MFU.

MFU (model FLOPs utilisation) = achieved model FLOP/s / peak FLOP/s, where
  achieved = Transformer.flops_per_token(T) * tokens per second,
  flops_per_token = 6 * (matmul weights) + 12 * n_layer * n_embd * T
  (forward + backward; see model.py), and the peak per device is, in order:
  system.peak_flops if set; else the dense bfloat16/float16 tensor-core peak of
  a known GPU from GPU_PEAK_FLOPS (halved for float32 when TF32 is on: torch's
  float32_matmul_precision "high" or "medium"); else a measured probe: the best FLOP/s of square
  matmuls in the run's dtype (float32, or bfloat16/float16 for an autocast run) on this device over a
  few short trials, so on a CPU MFU says how close training gets to this machine's own matmul speed
  in the precision the matrix products run in. It is an estimate: LoRA runs do less backward work
  than 6N.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

from nano_format import parse_json, write_atomically

# torch is imported inside the functions that need it, so that data preparation
# (which uses the formatting helpers) starts without loading it.

# Dense (no sparsity) bfloat16/float16 tensor-core peak FLOP/s per device, from
# the vendors' data sheets; matched by substring of torch.cuda.get_device_name().
# More specific names first.
GPU_PEAK_FLOPS = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),
    ("T4", 65e12),
)


def synchronize(device: "torch.device") -> None:
    """Wait until the work queued on an asynchronous device (CUDA, MPS) is done."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_probe(device: "torch.device", seconds: float = 0.25, n: int = 1024, trials: int = 5,
                 dtype: str = "float32", onednn: bool = False, linear: bool = False) -> float:
    """Measured FLOP/s of n x n matmuls of `dtype` on `device`: the best of several
    short trials, so that a moment of contention from other processes does not lower it.
    Under autocast the matrix products of a float32 model run in the autocast dtype,
    so that is the dtype to probe for an autocast run. onednn: the products go through
    torch's oneDNN linear (`matmul.onednn_product`, CPU) instead of `@`; linear: through
    `F.linear`, as the model's layers run them (on a CPU, float16's `@` is a far slower
    kernel than its `F.linear`)."""
    import torch
    import torch.nn.functional as F

    from nano_train.matmul import onednn_product

    a = torch.randn(n, n, device=device).to(getattr(torch, dtype))
    b = torch.randn(n, n, device=device).to(getattr(torch, dtype))

    def product():
        return onednn_product(a, b) if onednn else F.linear(a, b) if linear else a @ b

    product()  # warm up
    synchronize(device)
    # a CPU product is done when it returns; an accelerator's are queued, so sync now and then
    check_every = 1 if device.type == "cpu" else 4
    best, start = 0.0, time.perf_counter()
    for _ in range(trials):
        reps, t0 = 0, time.perf_counter()
        while True:
            product()
            reps += 1
            if reps % check_every == 0:
                synchronize(device)
                dt = time.perf_counter() - t0
                if dt >= seconds / trials:
                    break
        best = max(best, 2.0 * n ** 3 * reps / dt)
        if time.perf_counter() - start >= seconds:  # slow products: fewer trials, not a longer probe
            break
    return best


def peak_flops(device: "torch.device", dtype: str, override: float = 0.0) -> tuple[float, str]:
    """(peak FLOP/s per device, where the number came from)."""
    import torch

    if override > 0:
        return override, "system.peak_flops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        # float32 products run on the tensor cores only as TF32, which torch leaves off by
        # default (float32_matmul_precision "highest"); plain float32 gets the probe below
        tf32 = torch.get_float32_matmul_precision() != "highest" or torch.backends.cuda.matmul.allow_tf32
        for key, flops in GPU_PEAK_FLOPS:
            if key in name and (dtype != "float32" or tf32):
                if dtype == "float32":
                    return flops / 2, f"table: {name} (TF32 = half the bf16 peak)"
                return flops, f"table: {name}"
    # The probe draws random numbers: keep it from disturbing the training RNG.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return cpu_aware_probe(device, dtype)


def cpu_aware_probe(device: "torch.device", dtype: str, **probe) -> tuple[float, str]:
    """(peak, source) from matmul_probe, of the products a run uses: on a CPU, float16
    and bfloat16 through `F.linear`, as the layers run under autocast (float16's `@` is
    a CPU kernel some 15x slower: MFU read 1400% against it, and its 1024^3 products took
    3 s each), and float32 the better of torch's `@` and oneDNN's where this torch has
    them (nano_train.matmul): the peak is what this machine's kernels reach, whichever
    the run uses."""
    from nano_train.matmul import onednn_unavailable

    if device.type == "cpu" and dtype in ("float16", "bfloat16"):
        return matmul_probe(device, dtype=dtype, linear=True, **probe), f"measured {dtype} F.linear on cpu"
    rate = matmul_probe(device, dtype=dtype, **probe)
    source = f"measured {dtype} matmul on {device.type}"
    if device.type == "cpu" and dtype == "float32" and onednn_unavailable() is None:
        rate_dnn = matmul_probe(device, dtype=dtype, onednn=True, **probe)
        best = "oneDNN" if rate_dnn > rate else "torch"
        rate = max(rate, rate_dnn)
        source += f", the better of torch's and oneDNN's products ({best})"
    return rate, source


class RunLog:
    """log.jsonl in the run directory: one JSON object per line, written by rank 0 only.

    Records: {"kind": "start", ...}, {"kind": "train", "step", "loss", "lr",
    "grad_norm", "tokens_per_s", "mfu", "tokens_seen", "elapsed_s"},
    {"kind": "eval", "step", "val_loss", "best_val_loss"}, {"kind": "end", ...}.
    A value that is not a finite number is null: a train record's loss is null for a
    step without a token to learn from (every target masked out).
    """

    def __init__(self, path: Path, enabled: bool, resume_step: int | None, evaluates_resume_step: bool = False):
        self.path = path
        self.enabled = enabled
        if enabled and resume_step is not None and path.exists():
            # Drop what was logged after the checkpoint we resume from (by a killed run, or
            # by the later processes of a run resumed from an older checkpoint): those steps
            # are about to be run again. evaluates_resume_step: the resumed step is evaluated
            # again and the run ends there, so its eval and end records (an interrupted end)
            # go too. A line cut short by a kill (even inside a UTF-8 character) is dropped too.
            kept = []
            for line, rec in _records(path):
                step = rec.get("step")
                if isinstance(step, int) and not isinstance(step, bool) and (
                        step > resume_step or (evaluates_resume_step and step == resume_step
                                               and rec.get("kind") in ("eval", "end"))):
                    continue
                kept.append(line)
            # Atomically (a temporary file beside it, fsynced, renamed over it): a kill
            # or a full disk while rewriting leaves the old log whole, never an empty one.
            write_atomically(path, ["".join(k + "\n" for k in kept).encode("utf-8")])
        elif enabled and resume_step is None:
            path.write_text("", encoding="utf-8")

    def write(self, **record) -> None:
        if not self.enabled:
            return
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        except OSError as e:  # a failed write (a full disk) names no file
            raise OSError(e.errno, e.strerror or str(e), str(self.path)) from None


def _records(path: Path):
    """(line, record) for each line of a JSONL file that is a JSON object. Lines
    are decoded one by one, so that a line cut inside a UTF-8 character, foreign
    bytes, a line nested too deeply for the parser or a line that is not an object
    (`7`, `[1]`) lose that line only."""
    with open(path, "rb") as f:
        for raw in f:
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
                rec = parse_json(line)
            except ValueError:  # UnicodeDecodeError, or parse_json's JSONTextError
                continue
            if isinstance(rec, dict):
                yield line, rec


def read_log(path: str | Path) -> list[dict]:
    """The records of a log.jsonl: its JSON-object lines (other lines are skipped)."""
    return [rec for _, rec in _records(Path(path))]


def short_repr(value, limit: int = 60) -> str:
    """repr(value) cut to about limit characters, for error messages, which never echo a
    whole input; a container or tensor is named by its type (its repr could be huge)."""
    if isinstance(value, (dict, list, tuple, set)) or type(value).__name__ == "Tensor":
        return type(value).__name__
    text = repr(value[:limit + 1] if isinstance(value, str) else value)
    return text if len(text) <= limit else text[:limit] + "..."


def terminal_columns(stream) -> int:
    """The width of the terminal stream draws on (80 where it cannot be asked)."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        columns = 0
    return columns if columns > 0 else shutil.get_terminal_size().columns  # (0: a pty never sized; $COLUMNS)


def bar_line(before: str, frac: float, after: str, columns: int, width: int = 30) -> str:
    """`before [#####.....] after` in at most columns - 1 characters, for a line redrawn in
    place (one that wraps leaves a line behind at each redraw): the bar narrows first
    (to 5), then the end of the text is cut."""
    width = max(5, min(width, columns - 1 - len(before) - len(after) - 4))  # (" [", "] ")
    fill = int(frac * width)
    text = f"{before} [{'#' * fill}{'.' * (width - fill)}] {after}"
    return text[:max(columns - 1, 1)]


def human(n: float, unit: str = "") -> str:
    """n with three significant digits and an SI prefix: 38200 -> "38.2k", 999700 -> "1M"."""
    for prefix in ("", "k", "M", "G", "T", "P"):
        if abs(float(f"{n:.3g}")) < 1000:  # as rounded: 999.7 is "1k", not "1e+03"
            return f"{n:.3g}{prefix}{unit}"
        n /= 1000
    return f"{n:.3g}E{unit}"


def duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
