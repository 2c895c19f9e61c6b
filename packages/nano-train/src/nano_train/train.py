"""The training loop: pretraining, SFT and LoRA fine-tuning in one function.

usage:
  python -m nano_train.pretrain   [CONFIG.json] [--key=value | --section.key=value ...]
  python -m nano_train.sft        [CONFIG.json] [--key=value ...]
  python -m nano_train.lora_train [CONFIG.json] [--key=value ...]
  torchrun --nproc_per_node=N [--nnodes=M ...] -m nano_train.pretrain CONFIG.json ...

  --print_config   print the resolved config as JSON and exit
  --help           this text and every config key with its default

  Resume: --init_from=resume (reads out_dir/latest.pt; the config file may be
  left out, the checkpoint holds the resolved config). A new run refuses an
  out_dir that holds another run's files unless --overwrite=true (which deletes
  them first). One run at a time per out_dir: a second one into it fails at
  once (out_dir/.run.lock). Ctrl-C (or SIGTERM, or SIGHUP: a closed terminal or ssh session,
  unless nohup ignores it) saves latest.pt and exits with status 130.
  Exit status 2: a config, data or checkpoint error (under torchrun, one met before
  the processes join, as a bad --key=value is, is printed by rank 0 alone); 1: training diverged (the
  loss became inf or nan; latest.pt keeps the last good weights), a file
  could not be written, memory ran out (the model, or a batch, too large for the
  machine: the line says which and what to lower), or (torchrun) another process
  of the run ended in the middle of it (latest.pt keeps the last checkpoint written).

Outputs in run.out_dir: latest.pt (rolling), best.pt (best validation loss),
ckpt_<step>.pt (run.keep_checkpoints; ckpt_000200.pt; run.keep_last=N keeps the newest
N of them), log.jsonl, report.md.

Data: pretraining reads token shards; sft and lora read SFT rows (x = row[:-1],
y = row[1:]) or seq2seq rows (x and y aligned, for full-attention models).
A time budget (--time_budget=SECONDS) ends training after that long, with the
learning-rate decay compressed to fit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import hashlib
import json
import math
import os
import random
import re
import shlex
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import nano_train
from nano_train import (OutputFailed, checkpoint as ckpt_io, dirlock, discard_stdout, standard_streams, interrupts,
                        launch_rank, print_output)
from nano_train.checkpoint import BEST, LATEST, CheckpointError
from nano_train.convert import unrecorded_attention
from nano_train.config import (CPU_BF16_MIN_EMBD, Config, ConfigError, auto_device, help_text, key_type,
                               load_config, unknown_key_hint)
from nano_train.config import check as check_config
from nano_train.data import CHUNK_TOKENS, NO_ROOM, Batcher, DataError, Dataset
from nano_train.lora import attach_lora, has_lora, mark_only_lora_trainable
from nano_train.metrics import RunLog, duration, human, peak_flops, read_log, short_repr, synchronize
from nano_train.matmul import resolve_matmul
from nano_train.model import ModelConfig, RMSNorm, Transformer

PT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# An earlier run's files in out_dir, which a new run there would replace or mix with its own
RUN_FILES = (LATEST, BEST, "ckpt_*.pt", "log.jsonl", "report.md")
# Held by the process that writes out_dir while it trains (nano_train.dirlock)
RUN_LOCK = ".run.lock"
# The temporary files of the run's rewrites of its log (on resume) and report, as
# nano_format.write_atomically names them (.NAME.<8 hex digits>.tmp)
REWRITE_TMP = re.compile(r"\.(?:log\.jsonl|report\.md)\.[0-9a-f]{8}\.tmp")
# The checkpoints run.keep_checkpoints keeps (the step in six digits or more)
KEPT_CKPT = re.compile(r"ckpt_(?P<step>[0-9]{6,})\.pt")


class TrainingDiverged(RuntimeError):
    """The loss or the weights became inf or nan; the message names the last good checkpoint."""


class LostContact(RuntimeError):
    """Under torchrun, a collective failed because another process of the run is gone
    (killed, crashed, or stopped by an error of its own)."""


class OutOfMemory(RuntimeError):
    """An allocation failed (host or device memory); the message says what was being
    done and what to lower."""


def is_out_of_memory(e: BaseException) -> bool:
    """Whether e is a failed allocation: Python's MemoryError, torch's for a device, or
    the RuntimeError its CPU allocator raises ("DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    return isinstance(e, RuntimeError) and ("can't allocate memory" in str(e) or "out of memory" in str(e))


def allocation_failure(e: BaseException) -> str:
    """One short line on a failed allocation: its size where the message gives one."""
    text = str(e)
    found = re.search(r"tried to allocate (\d+) bytes", text)
    if found:
        return f"could not allocate {int(found.group(1)) / 2**30:.1f} GiB"
    found = re.search(r"[Tt]ried to allocate ([0-9.]+ [KMGT]?i?B)", text)  # CUDA's wording
    if found:
        return f"could not allocate {found.group(1)}"
    return short_repr(text.strip().splitlines()[0], 100) if text.strip() else type(e).__name__


def out_of_memory_text(e: BaseException, block_size_fixed: bool = False) -> str:
    """What a command says of an allocation that failed inside the training (is_out_of_memory).
    block_size_fixed: the model is a base model's or a resumed checkpoint's, whose block_size
    the run keeps."""
    lower = "data.batch_size" if block_size_fixed else "data.batch_size or model.block_size"
    return (f"out of memory: {allocation_failure(e)}; lower {lower} "
            "(a larger optim.gradient_accumulation_steps keeps the tokens per step)")


@contextlib.contextmanager
def needs_memory(what: str, remedy: str):
    """Turns a failed allocation inside the block into OutOfMemory: "out of memory WHAT: ...; REMEDY"."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if isinstance(e, OutOfMemory) or not is_out_of_memory(e):
            raise
        raise OutOfMemory(f"out of memory {what}: {allocation_failure(e)}; {remedy}") from None


@dataclass
class TrainResult:
    step: int
    train_loss: float | None
    val_loss: float | None
    best_val_loss: float
    tokens_seen: int
    tokens_per_s: float  # mean over this process's training time (all ranks' tokens)
    seconds: float
    interrupted: bool
    out_dir: Path
    out_of_time: bool = False  # stopped by optim.time_budget before max_iters
    samples_interrupted: bool = False  # Ctrl-C while the report's samples were drawn (exit 130)
    val_step: int | None = None  # the step whose evaluation gave val_loss


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    timeout: float = 0.0  # system.dist_timeout: seconds a collective waits (0 = torch's default)

    @property
    def ddp(self) -> bool:
        return self.world_size > 1


# ---------------------------------------------------------------------------
# Setup helpers (each does one thing; the loop below reads top to bottom)


def init_distributed(system) -> DistInfo:
    """Join the process group torchrun set up (RANK/WORLD_SIZE in the environment)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world, system.dist_timeout)
    backend = system.dist_backend
    if backend == "auto":
        on_gpu = torch.cuda.is_available() and system.device in ("auto", "cuda")
        backend = "nccl" if on_gpu else "gloo"
    if backend == "nccl" and not (dist.is_nccl_available() and torch.cuda.is_available()):
        why = "this torch has no NCCL" if not dist.is_nccl_available() else "this machine has no CUDA GPU"
        raise ConfigError(f"system.dist_backend nccl: {why}; --dist_backend=gloo runs on CPUs")
    if not dist.is_initialized():
        timeout = {"timeout": datetime.timedelta(seconds=system.dist_timeout)} if system.dist_timeout > 0 else {}
        dist.init_process_group(backend=backend, **timeout)
    return info


def communication_failure(e: BaseException) -> str | None:
    """The short reason of a failed collective ("Read error: Connection reset by peer"), or
    None when e is some other error. Gloo's transport raises plain RuntimeErrors that name its
    source file ("[.../gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:7577: ..."),
    NCCL and the rendezvous store torch.distributed's DistError."""
    text = str(e)
    from_gloo = re.search(r"gloo[/\\]transport", text) is not None
    if not isinstance(e, RuntimeError) or not (isinstance(e, dist.DistError) or from_gloo):
        return None
    reason = re.sub(r"^\[[^\]]*\] ", "", ckpt_io.one_line(text))  # the source file and line
    reason = re.sub(r" ?\[[0-9a-fA-F.:]*\]:\d+", "", reason)  # the peer's address and port
    return reason.split(". ")[0][:200]


@contextlib.contextmanager
def talking(info: DistInfo, what: str):
    """Around collectives: their failure for want of another rank becomes one LostContact
    line saying what this rank was doing (`what`: "training step 3")."""
    try:
        yield
    except RuntimeError as e:
        reason = communication_failure(e) if info.ddp else None
        if reason is None:
            raise
        if interrupts.main_thread():
            # torchrun sends SIGTERM to the ranks left as soon as it sees one end: that is no
            # news now, and it must not end this process before main has said what happened
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if re.search(r"timed out|timeout", reason, re.IGNORECASE):  # the peer is there but silent
            limit = f"{info.timeout:g} s" if info.timeout > 0 else "torch's default time"
            why = (f"another rank did not take part within {limit} (system.dist_timeout): it hangs or was cut "
                   "off, is slower than that, or the job was stopped for longer (Ctrl-Z, SIGSTOP); see its output")
        else:
            why = "one of the ranks stopped or crashed, see its output above"
        raise LostContact(f"rank {info.rank}: lost contact with another process of this run during {what} "
                          f"({dist.get_backend()}: {reason}); {why}") from None


def earlier_run_files(out_dir: Path) -> list[Path]:
    return [p for pattern in RUN_FILES for p in sorted(out_dir.glob(pattern))]


def check_new_run(cfg: Config) -> None:
    """A new run (from scratch or a base model) would replace the best.pt and empty
    the log of a run already in out_dir: refuse, unless run.overwrite. Only rank 0
    (the one that writes) looks: under torchrun another rank could otherwise see the
    log.jsonl that rank 0 has just begun, and refuse a run that is new."""
    if cfg.run.init_from == "resume" or cfg.run.overwrite or not writes_out_dir():
        return
    found = earlier_run_files(Path(cfg.run.out_dir))
    if found:  # a run at work is not one that stopped
        dirlock.refuse_if_held(Path(cfg.run.out_dir) / RUN_LOCK, "run", ConfigError)
    if found and not any(p.suffix == ".pt" for p in found):  # a run stopped before its first checkpoint
        raise ConfigError(f"{cfg.run.out_dir} holds a run that stopped before writing a checkpoint "
                          f"({', '.join(p.name for p in found)}): pass --overwrite=true to delete its files and "
                          "start again, or write to another --out_dir")
    if found:
        raise ConfigError(f"{cfg.run.out_dir} already holds a run ({', '.join(p.name for p in found[:4])}"
                          f"{', ...' if len(found) > 4 else ''}): continue it with --init_from=resume, write to "
                          "another --out_dir, or pass --overwrite=true to delete its files and start again")


def writes_out_dir() -> bool:
    """Whether this process writes run.out_dir: the only one, or rank 0 under torchrun."""
    return launch_rank() == 0


# The progress line's word for a step without a token to learn from (its loss is null in log.jsonl)
NO_TOKENS = "no tokens to learn from: every target masked out"


# How long a rank other than 0 waits, after an error met before the process group exists,
# for torchrun to stop it once rank 0 has reported the same error and ended (the ranks
# start together and reach it a moment apart; torchrun looks every 0.1 s)
RANK_ERROR_WAIT = 10.0


def grouped() -> bool:
    """Whether this process has joined a process group (under torchrun, init_distributed)."""
    return dist.is_available() and dist.is_initialized()


def startup_error(message: str, status: int) -> int:
    """`error: message` on standard error, and the exit status. Under torchrun, before
    the process group exists, every rank meets a configuration error alike (the same
    command line, the same config file): rank 0 alone says it, and another rank waits
    for torchrun to stop it once rank 0 has ended, then ends with the same status,
    saying nothing. An error of its own (a file only its node lacks) it says itself,
    naming its rank, when RANK_ERROR_WAIT seconds pass without that."""
    rank = launch_rank()
    if rank == 0 or grouped():  # once in the group, each rank's error is its own (rank 0 may not share it)
        print(f"error: {message}", file=sys.stderr)
        return status
    interrupts.as_ctrl_c()  # torchrun's SIGTERM (where nothing took it over yet): KeyboardInterrupt
    try:
        time.sleep(RANK_ERROR_WAIT)
    except KeyboardInterrupt:
        return status
    print(f"error: rank {rank}: {message}", file=sys.stderr)
    return status


def not_writable(out_dir: Path, e: OSError) -> OSError:
    return OSError(f"run.out_dir {out_dir} is not a writable directory: {e.strerror or e}")


def prepare_out_dir(out_dir: Path, overwrite: bool, init_from: str) -> None:
    """Create out_dir and write to it now, so that an unwritable one fails before any
    data or model is loaded. Remove what killed checkpoint writes left there, and with
    overwrite delete an earlier run's files so that they do not mix with this run's
    (ckpt_*.pt of both, a best.pt of the other)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as e:
        raise not_writable(out_dir, e) from None
    ckpt_io.remove_stale_temporaries(out_dir)
    remove_stale_rewrites(out_dir)
    if overwrite:
        old = earlier_run_files(out_dir)
        if init_from not in ("scratch", "resume") and Path(init_from).resolve() in {p.resolve() for p in old}:
            raise ConfigError(f"run.init_from {init_from} is one of the files that --overwrite would delete from "
                              f"{out_dir}: write this run to another --out_dir")
        for p in old:
            p.unlink()


def remove_stale_rewrites(out_dir: Path) -> list[Path]:
    """Delete the temporary files that a killed run left of its rewrites of log.jsonl and
    report.md (REWRITE_TMP: regular files of exactly those names), with a note on stderr;
    the files removed. Only while this process holds the run lock: then no other run is
    writing them. Where nothing can be locked they stay."""
    if not dirlock.held_here(out_dir / RUN_LOCK):
        return []
    removed = []
    for p in sorted(out_dir.iterdir()):
        if REWRITE_TMP.fullmatch(p.name) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        print(f"note: removed {', '.join(p.name for p in removed)} from {out_dir}: left by a rewrite of "
              "log.jsonl or report.md that was interrupted", file=sys.stderr)
    return removed


def prune_checkpoints(out_dir: Path, step: int, keep: int) -> list[Path]:
    """run.keep_last: delete the ckpt_<step>.pt files of steps up to `step` (the one just
    written) but the newest `keep`; the files removed. Only regular files named as the
    run names them (ckpt_000200.pt, not ckpt_200.pt nor a link); those of later steps (left
    by the run that went on from the checkpoint resumed from) stay: this run replaces them
    when it gets there."""
    found = []
    for p in out_dir.iterdir():
        m = KEPT_CKPT.fullmatch(p.name)
        if m is None or p.name != f"ckpt_{int(m['step']):06d}.pt":  # (ckpt_0000200.pt is no name of ours)
            continue
        if int(m["step"]) <= step and p.is_file() and not p.is_symlink():
            found.append((int(m["step"]), p))
    removed = [p for _, p in sorted(found)[:max(len(found) - keep, 0)]]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def resolve_device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        name = auto_device()
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"system.device is {name!r} but CUDA is not available here; use --device=cpu")
        device = torch.device("cuda", info.local_rank) if name == "cuda" else torch.device(name)
        torch.cuda.set_device(device)
        return device
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("system.device is 'mps' but MPS is not available here; use --device=cpu")
    return torch.device(name)


# oneDNN's instruction-set limits (ONEDNN_MAX_CPU_ISA, or DNNL_ before it) below its bfloat16 kernels
_NO_BF16_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX
    tiles), where oneDNN's bfloat16 products run several times as fast as float32 ones,
    and oneDNN may use them (ONEDNN_MAX_CPU_ISA can hold it below them: 3-14x slower
    than float32 then). Elsewhere bfloat16 is converted back and forth in software and
    is slower."""
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    if limit.strip().upper() in _NO_BF16_ISAS:
        return False
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        supported = getattr(torch.cpu, probe, None)  # private helpers, torch >= 2.3
        if supported is not None and supported():
            return True
    return False


def resolve_dtype(name: str, device: torch.device, n_embd: int) -> str:
    """system.dtype "auto": the fastest precision the device computes natively, for a
    model n_embd wide: bfloat16 on CUDA devices that have it (float16 on older ones) and
    on CPUs with bfloat16 matrix instructions for a model at least CPU_BF16_MIN_EMBD
    wide, float32 elsewhere. Weights, gradients and the optimizer stay float32 in every
    case; only autocast's products run narrower."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device.type == "cpu" and n_embd >= CPU_BF16_MIN_EMBD and cpu_has_native_bf16():
        return "bfloat16"
    return "float32"


def make_grad_scaler(dtype: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling keeps small float16 gradients from flushing to zero. bfloat16
    has float32's exponent range and needs none, so the scaler is enabled for
    float16 only (the reference enabled it for bfloat16: defect 3)."""
    return torch.amp.GradScaler(device.type, enabled=(dtype == "float16"))


def forward_context_factory(device: torch.device, dtype: str, attention_backend: str):
    """A function returning a fresh context for one forward pass: autocast to the
    training dtype (none for float32) and the chosen SDPA kernel."""
    backend = None
    if attention_backend != "auto":
        from torch.nn.attention import SDPBackend

        backend = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION,
                   "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[attention_backend]

    def context():
        stack = contextlib.ExitStack()
        if dtype != "float32":
            stack.enter_context(torch.autocast(device.type, dtype=PT_DTYPES[dtype]))
        if backend is not None:
            from torch.nn.attention import sdpa_kernel

            stack.enter_context(sdpa_kernel(backend))
        return stack

    return context


def compile_cache_tag(attention_backend: str):
    """A context for a whole run (not each forward: every config patch leaves a
    ContextVar behind in torch, about 200 bytes a pass, never freed): torch.compile's
    caches do not key a graph on the SDPA kernel it was traced under, so without the
    tag a run would reuse another backend's graph from disk."""
    if not hasattr(torch.compiler.config, "cache_key_tag"):  # torch < 2.6
        return contextlib.nullcontext()
    return torch.compiler.config.patch(cache_key_tag=f"nano_train sdpa={attention_backend}")


def check_attention_backend(name: str, device: torch.device, dtype: str, model_cfg: ModelConfig, forward_context) -> None:
    """A ConfigError now, rather than "No viable backend" at the first forward pass,
    when system.attention_backend cannot run on this device (efficient or cudnn on a
    CPU, flash on an older GPU or in float32): one tiny attention forward and
    backward with the model's heads, dropout and dtype, under the run's context."""
    if name == "auto":
        return
    import torch.nn.functional as F

    from nano_train.model import _SDPA_GQA

    n_head, n_kv, head_dim = model_cfg.n_head, model_cfg.n_kv_head, model_cfg.head_dim
    rep = n_head // n_kv
    gqa = rep > 1 and _SDPA_GQA
    pt_dtype = PT_DTYPES[dtype]
    q = torch.zeros(1, n_head, 4, head_dim, device=device, dtype=pt_dtype, requires_grad=True)
    k = torch.zeros(1, n_kv if gqa else n_head, 4, head_dim, device=device, dtype=pt_dtype, requires_grad=True)
    # torch gives each kernel's reason for refusing the input as a warning, and then an
    # error that only says none was left: the reason goes into the one error line
    with warnings.catch_warnings(record=True) as reasons:
        warnings.simplefilter("always")
        try:
            with forward_context():
                y = F.scaled_dot_product_attention(q, k, k, dropout_p=float(model_cfg.dropout), is_causal=True,
                                                   **({"enable_gqa": True} if gqa else {}))
            y.float().sum().backward()
        except RuntimeError as e:
            why = ckpt_io.one_line(e).split(". ")[0][:200]
            if reasons:
                why += f" ({ckpt_io.one_line(str(reasons[-1].message)).split(' (Triggered internally')[0][:200]})"
            dropout = f", model.dropout {model_cfg.dropout:g}" if model_cfg.dropout else ""
            raise ConfigError(f"system.attention_backend {name!r} is not available on this device ({device}, "
                              f"{dtype}{dropout}): {why}; use --attention_backend=auto (or math)") from None


# The entries of a dataset's meta.json that decide which rows are trained on and which are
# held out, in which order, and what they hold (content: the shards' sha256; datasets
# prepared before it was recorded have none): a resumed run must read the dataset its
# checkpoint did.
DATASET_ID_ENTRIES = ("shards", "split", "shuffle", "content")


def dataset_identity(meta: dict) -> dict[str, str]:
    """sha256 of each of DATASET_ID_ENTRIES of a dataset's meta.json (canonical JSON)."""
    return {key: hashlib.sha256(json.dumps(meta.get(key), sort_keys=True, ensure_ascii=False).encode()).hexdigest()
            for key in DATASET_ID_ENTRIES}


def check_resume_conflicts(cfg: Config, checkpoint: dict, latest: Path, ds: Dataset) -> None:
    """What resuming cannot continue exactly: another dataset (a DataError naming the
    meta.json entries that differ; a checkpoint older than the identity is not checked),
    and a batch size, accumulation, seed or LoRA adapter set to values other than the
    checkpoint's (a ConfigError, as for model.* keys)."""
    saved_id = checkpoint.get("dataset_id")
    if isinstance(saved_id, dict):
        mine = dataset_identity(ds.meta)
        changed = [k for k in DATASET_ID_ENTRIES if k in saved_id and saved_id[k] != mine[k]]
        if changed:
            raise DataError(f"resume: {ds.path} is not the dataset {latest} was trained on (its meta.json "
                            f"{', '.join(repr(k) for k in changed)} differ{'s' if len(changed) == 1 else ''}: "
                            "prepared again, or another dataset); resume with the original dataset or start a new run")
    saved = checkpoint["config"]["train"]

    def saved_value(section: str, key: str):
        sec = saved.get(section)
        return sec.get(key) if isinstance(sec, dict) else None

    conflicts = []
    for section, key, why in (("data", "batch_size", "the data position and the tokens per step"),
                              ("optim", "gradient_accumulation_steps", "the data position and the tokens per step"),
                              ("system", "seed", "the data order"),
                              *((("lora", "lora_rank", "the adapter's shape"), ("lora", "lora_alpha", "the adapter's scale"))
                                if cfg.run.task == "lora" else ())):
        old, new = saved_value(section, key), getattr(getattr(cfg, section), key)
        if old is not None and old != new:
            conflicts.append((f"{section}.{key} {new} (the checkpoint's: {old})", why))
    if conflicts:
        whys = sorted({why for _, why in conflicts})
        raise ConfigError(f"{'; '.join(c for c, _ in conflicts)} conflict{'s' if len(conflicts) == 1 else ''} with "
                          f"the checkpoint {latest}: {' and '.join(whys)} would no longer be the run's; resume "
                          f"without setting {'it' if len(conflicts) == 1 else 'them'}, or start a new run in another --out_dir")


CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that replay CUDA graphs


def blocked_loss(loss: str, device: torch.device) -> bool:
    """Whether training computes its loss with the blocked classifier + cross-entropy
    (`losses.linear_cross_entropy`) rather than from plain [B, T, V] logits.

    system.loss auto: blocked on a CPU, where each block's logits stay in the cache
    (it made training faster there, and it saves the logits' memory); plain on a GPU,
    where a compiled model keeps it inside its graph (the 56M shape compiled on an
    H200 trained 1.23x faster with it: tools/bench/README.md)."""
    if loss == "auto":
        return device.type == "cpu"
    return loss == "blocked"


def uses_cuda_graphs(cfg: Config, device: torch.device, accum: int, world_size: int) -> bool:
    """Whether the compiled model replays CUDA graphs (system.compile_mode reduce-overhead
    or max-autotune, on a CUDA device); a ConfigError where the run would need them to
    keep memory they do not keep."""
    graphs = cfg.system.compile and device.type == "cuda" and cfg.system.compile_mode in CUDA_GRAPH_MODES
    if graphs and (accum > 1 or world_size > 1):
        # Each CUDA graph run reuses the memory of the one before: a micro-batch's gradients
        # would have to outlive the next micro-batch's run, and DDP's reducer reads them
        # after the backward. Neither has been run on a GPU here, so neither is allowed.
        raise ConfigError(
            f"system.compile_mode {cfg.system.compile_mode} (CUDA graphs) is for one process and one micro-batch per "
            f"step; this run has {world_size} process(es) and {accum} micro-batch(es) per process: use "
            "--compile_mode=default (or max-autotune-no-cudagraphs)")
    return graphs


def make_adamw(groups: list[dict], optim) -> torch.optim.AdamW:
    kwargs = dict(lr=optim.learning_rate, betas=(optim.beta1, optim.beta2))
    try:  # the fused kernel (one launch for all parameters) where this build has it
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, **kwargs)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)


def load_base_model(path: str, is_causal: bool | None = None) -> tuple[ModelConfig, dict, object]:
    """(config, state dict, tokenizer) of the model an SFT/LoRA run starts from:
    a nano-train checkpoint or a model file (.bin) through nano_train.convert.load_model.
    is_causal: the attention kind set for the run (model.is_causal), which a model file
    of a layout that cannot record it takes (the sort6 fixture has full attention)."""
    from nano_train import convert

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"run.init_from: {path} is not a file (expected 'scratch', 'resume', a .pt or a .bin)")
    try:
        model, tok = convert.load_model(p, is_causal=is_causal)  # told apart by the first bytes, not the name
    except (ValueError, OSError, KeyError, TypeError, RuntimeError) as e:  # ConvertError is a ValueError
        why = ckpt_io.one_line(e) or e.__class__.__name__
        raise CheckpointError(f"run.init_from: cannot load {path}: {why}") from None
    if has_lora(model):
        raise CheckpointError(f"run.init_from: {path} carries a LoRA adapter; export or merge it into a base first")
    if tok is None:
        raise CheckpointError(f"run.init_from: {path} holds no vocabulary, so it cannot be checked against the data")
    return model.config, model.state_dict(), tok


def base_model(cfg: Config, explicit: set[str] | frozenset) -> tuple[ModelConfig, dict, object, str]:
    """(config, state dict, tokenizer, what to call it) of the base model a run starts from
    (run.init_from a file), read with the attention kind the run names, where it names one."""
    asked = cfg.model.is_causal if "model.is_causal" in explicit else None
    return (*load_base_model(cfg.run.init_from, asked), f"the base model {cfg.run.init_from}")


def resolve_compute(cfg: Config, info: DistInfo):
    """(device, dtype, forward context, (oneDNN products, why)) of a run of cfg.model, checked
    before it starts: the device is there (ConfigError: --device=cuda without CUDA), and as
    resolve_precision says (nano_train.problems checks them before generating data)."""
    device = resolve_device(cfg.system.device, info)
    return (device, *resolve_precision(cfg, device))


def resolve_precision(cfg: Config, device: torch.device):
    """(dtype, forward context, (oneDNN products, why)) of training cfg.model on device: dtype
    auto for this model's width, checked: the attention backend runs there with this model and
    dtype, and system.matmul applies (ConfigError where not)."""
    dtype = resolve_dtype(cfg.system.dtype, device, cfg.model.n_embd)
    forward_context = forward_context_factory(device, dtype, cfg.system.attention_backend)
    check_attention_backend(cfg.system.attention_backend, device, dtype, cfg.model, forward_context)
    try:
        matmul = resolve_matmul(cfg.system.matmul, device, dtype)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return dtype, forward_context, matmul


def check_attention_fits_data(model: ModelConfig, ds: Dataset, source: str, resuming: bool = False,
                              init_from: str = "scratch") -> str | None:
    """Pretraining and SFT rows are shifted by one token (the target at t is the input
    at t + 1): under full attention every position sees the token it is to predict,
    and the loss falls while the model learns nothing it could generate with. Seq2seq
    rows (input and target aligned) are made for full attention; a causal model can
    still be fitted to them (`nano seq2seq --causal` runs one): the note returned, with
    --is_causal=false where the run may choose (from scratch, or from a model file that
    cannot record its attention kind, which reads as causal)."""
    if not model.is_causal and ds.kind != "seq2seq":
        # --is_causal=true where the run may choose; a checkpoint records the kind, which the run keeps
        may_choose = not resuming and (init_from == "scratch" or unrecorded_attention(init_from))
        raise ConfigError(f"the model has full attention (model.is_causal false, from {source}) but {ds.path} is "
                          f"a {ds.kind} dataset, whose targets are the next tokens: every position would see the "
                          "token it is to predict. Train full attention on seq2seq rows (data.write_rows), or "
                          + ("set --is_causal=true" if may_choose else
                             f"start from a causal model ({source} records full attention, which this run keeps)"))
    if model.is_causal and ds.kind == "seq2seq":
        note = (f"{ds.path} holds seq2seq rows (made for full attention) and the model is causal: each "
                "position answers from the inputs up to itself only")
        if init_from == "scratch" and not resuming:
            return note + "; --is_causal=false trains full attention"
        if not resuming and (layout := unrecorded_attention(init_from)):
            return (note + f"; its model file (layout {layout}) cannot record the attention kind and reads as "
                    "causal: --is_causal=false trains it with full attention")
        return note
    return None


def resolve_model_config(cfg: Config, explicit: set[str], tokenizer, inherited: dict | None, source: str) -> ModelConfig:
    """The architecture of this run. When resuming or fine-tuning it is inherited
    from the checkpoint or base model (`source`): only dropout may be set, and
    any other model key set explicitly to a different value is an error. From
    scratch it is the config's, with vocab_size taken from the data unless set."""
    if inherited is not None:
        mine = cfg.model.to_dict()
        bad = [k for k in inherited if k != "dropout" and f"model.{k}" in explicit and mine[k] != inherited[k]]
        if bad:
            values = ", ".join(f"model.{k} {mine[k]} (its: {inherited[k]})" for k in bad)
            raise ConfigError(f"{values} conflict{'s' if len(bad) == 1 else ''} with {source}, whose architecture "
                              "this run keeps (only dropout may be set)")
        dropout = cfg.model.dropout if "model.dropout" in explicit else inherited["dropout"]
        return ModelConfig.from_dict({**inherited, "dropout": dropout})
    if "model.vocab_size" in explicit and cfg.model.vocab_size != tokenizer.vocab_size:
        # a padded classifier would train, but no model file, sampler or fine-tuning run could use it:
        # the format stores one embedding row per vocabulary entry
        raise ConfigError(f"model.vocab_size {cfg.model.vocab_size} differs from the data's vocabulary "
                          f"({tokenizer.vocab_size} tokens); leave it out to take the data's")
    return dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size)


def batch_to_device(batch, device: torch.device):
    """numpy (x [B,T], y [B,T], mask [B,T] | None) -> tensors on device."""
    def move(a):
        if a is None:
            return None
        t = torch.from_numpy(a)
        if device.type == "cuda":
            return t.pin_memory().to(device, non_blocking=True)
        return t.to(device)

    return tuple(move(a) for a in batch)


EVAL_SEED = 0  # the validation rows' order, one for every run (see evaluate)


@torch.no_grad()
def loss_totals(model, batches, device, forward_context, blocked: bool = True) -> torch.Tensor:
    """[sum of each batch's mean loss x its counted tokens, counted tokens], on the device,
    over batches of numpy (x, y, loss_mask or None): the first over the second is the mean
    loss per counted token of them all (SFT rows count their answers only). Held-out
    evaluation here, and `nano_train.evaluate`, score through it."""
    totals = torch.zeros(2, device=device)
    for batch in batches:
        x, y, m = batch_to_device(batch, device)
        with forward_context():
            _, loss = model(x, y, m, return_logits=False, blocked_loss=blocked)
        tokens = Transformer.loss_weight(y, m).sum()
        totals += torch.stack([loss.float() * tokens, tokens])
    return totals


@torch.no_grad()
def evaluate(model, source, cfg: Config, info: DistInfo, device, forward_context, blocked: bool = True) -> float:
    """Mean loss per counted token over eval_iters micro-batches of the held-out
    split: each batch's mean weighs by its number of counted tokens (SFT rows count
    their answers only), as if the batches were one. With W processes, rank r takes
    batches r, r + W, r + 2W, ... of the ones a single process would read, so the
    mean is over the same eval_iters batches whatever W is (model is never the DDP
    wrapper: the ranks may run different counts). The batches start from row 0
    every time, so successive evaluations are comparable, and their order is
    EVAL_SEED's, not the run's seed: the rows are the first batch_size x eval_iters
    of one fixed order of the split, the same in every run (a seed sweep, or another
    batch size with the same product, compares losses on the same rows)."""
    batches = Batcher(source, cfg.data.batch_size, EVAL_SEED, info.rank, info.world_size)
    mine = len(range(info.rank, cfg.eval.eval_iters, info.world_size))
    was_training = model.training
    model.eval()
    totals = loss_totals(model, (batches.next() for _ in range(mine)), device, forward_context, blocked)
    model.train(was_training)
    if info.ddp:
        dist.all_reduce(totals)
    return (totals[0] / totals[1].clamp_min(1.0)).item()


def gather_rng(info: DistInfo) -> dict:
    """Every rank's RNG states (rank 0 writes them all)."""
    mine = ckpt_io.rng_state()
    if not info.ddp:
        return {"world_size": 1, "ranks": [mine]}
    states = [None] * info.world_size
    dist.all_gather_object(states, mine)
    return {"world_size": info.world_size, "ranks": states}


@contextlib.contextmanager
def restoring_from(path: Path):
    """What a malformed checkpoint makes the restoring code raise, as one CheckpointError line."""
    try:
        yield
    except (CheckpointError, ConfigError, DataError):
        raise
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        why = f"{e.__class__.__name__}: {ckpt_io.one_line(e)}"
        raise CheckpointError(f"{path}: cannot restore the run from it ({why})") from None


OVERFLOW = ("the activations overflow float32 (an RMSNorm's mean square is inf, so the model puts out the "
            "same logits whatever its input)")
STALLED = "every gradient is zero, as " + OVERFLOW


def activations_overflow(model: Transformer, x: torch.Tensor, forward_context) -> bool:
    """Whether a forward of x (one row, at a checkpoint) squares an RMSNorm's input past
    float32: its mean square is inf, so its output is 0 and the model puts out the same
    logits whatever it is given, with finite weights. Eval mode: no dropout, no random
    numbers drawn (a resumed run must draw what an unbroken one draws)."""
    found = []
    hooks = [m.register_forward_pre_hook(lambda _, args: found.append(torch.isinf(args[0].float().pow(2).mean(-1)).any()))
             for m in model.modules() if isinstance(m, RMSNorm)]
    training = model.training
    try:
        model.eval()
        with torch.no_grad(), forward_context():
            model(x)
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return bool(torch.stack(found).any())


def total_norm(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """The 2-norm of all the gradients together, as clip_grad_norm_ computes it, without clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()) for g in grads]))


def weights_finite(model: torch.nn.Module) -> bool:
    """Whether every parameter is finite: one wait for the device, so only before checkpoints."""
    with torch.no_grad():
        return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())


def unwrap_state_dict(model: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------
# The loop


@dataclass
class RunState:
    """Where a run stands: the counters and losses a checkpoint keeps (a fresh run's here)."""
    step: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0  # training time of the run's earlier processes
    best_val_loss: float = math.inf
    val_loss: float | None = None
    val_step: int | None = None  # the step of val_loss
    train_loss: float | None = None
    warmup_end_s: float | None = None  # elapsed_s when warmup ended (None: not yet)


@dataclass
class Pace:
    """Training steps (since the last log record) and the seconds they took, for the
    record's tokens/s. A step timed as None (the process was stopped in it) counts as
    a step but not in the rate."""
    steps: int = 0
    timed: int = 0
    seconds: float = 0.0

    def add(self, seconds: float | None) -> None:
        self.steps += 1
        if seconds is not None:
            self.timed += 1
            self.seconds += seconds

    def tokens_per_s(self, tokens_per_step: int) -> float | None:
        """None where no step was timed (or none took measurable time)."""
        return tokens_per_step * self.timed / self.seconds if self.timed and self.seconds > 0 else None


def trained_dtype(checkpoint: dict, log_path: Path, step: int) -> str | None:
    """The precision a checkpoint's run trained in: its "dtype", or for a checkpoint from
    before that field, the dtype of the last start record before its step in the run's
    log (one at its step is a process that resumed from it: it trained none of its steps).
    None where neither says."""
    def known(dtype) -> str | None:
        return dtype if isinstance(dtype, str) and dtype in PT_DTYPES else None

    if recorded := known(checkpoint.get("dtype")):
        return recorded
    try:
        starts = [r for r in read_log(log_path) if r.get("kind") == "start"]
    except OSError:
        return None
    dtypes = [r.get("dtype") for r in starts if type(r.get("step")) is int and r["step"] < step]
    return known(dtypes[-1]) if dtypes else None


def restore_state(checkpoint: dict, latest: Path, cfg: Config, info: DistInfo, optimizer, scaler,
                  batches: Batcher, note) -> RunState:
    """Put the optimizer, the float16 loss scaler, the data position and this rank's random
    streams back where latest.pt (the loaded `checkpoint`) left them; returns the run's state
    there. note: prints a note (rank 0)."""
    with restoring_from(latest):
        # load_state_dict brings back the saved groups' settings too: keep this run's weight
        # decay and betas (set on the command line, they would be recorded but not used)
        settings = [(group["weight_decay"], group["betas"]) for group in optimizer.param_groups]
        optimizer.load_state_dict(checkpoint["optimizer"])
        for group, (weight_decay, betas) in zip(optimizer.param_groups, settings):
            group["weight_decay"], group["betas"] = weight_decay, betas
        if scaler.is_enabled() and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        step = checkpoint["step"]
        state = RunState(step, checkpoint["tokens_seen"], checkpoint.get("elapsed_s", 0.0),
                         checkpoint["best_val_loss"], checkpoint.get("val_loss"), checkpoint.get("val_step"),
                         checkpoint.get("train_loss"),
                         # a checkpoint from before this field was kept: the time fraction counts from 0
                         checkpoint.get("warmup_end_s", 0.0 if step > cfg.optim.warmup_iters else None))
        batches.load_state_dict(checkpoint["data_state"])
        # best.pt can be newer than latest.pt (a run killed between checkpoints): its
        # loss is the one to beat, or the resumed run would replace it by a worse model
        best = latest.parent / BEST
        on_disk = ckpt_io.recorded_val_loss(best)
        if on_disk is not None:
            state.best_val_loss = min(state.best_val_loss, on_disk)
        elif best.exists():
            note(f"{best} cannot be read; the next best validation loss replaces it")
        if checkpoint.get("eval_seed") != EVAL_SEED and math.isfinite(state.best_val_loss):
            # written before evaluation read one fixed order of rows: its losses are not this run's
            note(f"{latest} was written before validation read a fixed order of rows (2026-11-27): "
                 f"its best validation loss {state.best_val_loss:.4f} was taken on other rows, so the losses "
                 "after this resume are not comparable with those before it; the next evaluation is the "
                 "new best to beat and replaces best.pt")
            state.best_val_loss = math.inf
        saved_eval = checkpoint["config"]["train"].get("eval")
        saved_batches = saved_eval.get("eval_iters") if isinstance(saved_eval, dict) else None
        if (isinstance(saved_batches, int) and saved_batches != cfg.eval.eval_iters and cfg.eval.eval_iters > 0
                and math.isfinite(state.best_val_loss)):
            # the validation rows are the first batch_size x eval_iters of one order: others now
            note(f"the checkpoint's validation losses were taken on {saved_batches} batches (eval.eval_iters), "
                 f"this run's on {cfg.eval.eval_iters}: other rows, so its best {state.best_val_loss:.4f} is not "
                 "comparable with them; the next evaluation is the new best to beat and replaces best.pt")
            state.best_val_loss = math.inf
        rng = checkpoint["rng"]
        if rng["world_size"] == info.world_size:
            ckpt_io.set_rng_state(rng["ranks"][info.rank])
        else:
            seed_everything(cfg.system.seed + info.rank + step)
            note(f"the checkpoint was written by {rng['world_size']} processes, this run has "
                 f"{info.world_size}: RNG streams restart from the seed (data order is unaffected)")
    return state


def data_notes(cfg: Config, ds: Dataset, train_source, val_source) -> list[str]:
    """Notes on how the run reads its data: an epoch that leaves much of the training
    tokens unread (short chunks), no validation, an evaluation that reads its rows many times."""
    notes = []
    covered = (train_source.n_rows * train_source.T / max(ds.n_tokens("train"), 1)
               if getattr(train_source, "windows", None) == "chunks" else 1.0)
    if covered < 0.75:  # rows stay inside chunks: short chunks leave much of each one unread an epoch
        notes.append(f"an epoch reads {covered:.0%} of the training tokens: rows of block_size "
                     f"{cfg.model.block_size} stay inside the dataset's chunks (prepared with --chunk_tokens "
                     f"{ds.meta['split']['chunk_tokens']}), and the rest of each chunk is read in other epochs; "
                     f"prepare the data again with --chunk_tokens {max(CHUNK_TOKENS, 16 * cfg.model.block_size)} "
                     "to read more of it each epoch")
    if val_source is None:
        notes.append("no validation split (or eval_iters = 0): no validation loss, no best.pt")
    elif cfg.eval.eval_iters > 1 and cfg.eval.eval_iters * cfg.data.batch_size >= 2 * val_source.n_rows:
        reads, rows, batch = cfg.eval.eval_iters * cfg.data.batch_size, val_source.n_rows, cfg.data.batch_size
        fix = (f"--eval_iters={-(-rows // batch)} reads each about once" if batch <= rows else
               f"--eval_iters=1 reads the fewest (one batch of {batch} rows is more than the split holds)")
        notes.append(f"an evaluation reads {reads:,} rows (eval_iters {cfg.eval.eval_iters} x batch_size {batch}) "
                     f"from a validation split of {rows:,}: each is read about {reads / rows:.0f} times (more "
                     f"time, no better estimate); {fix}")
    return notes


def unused_settings(cfg: Config, explicit: set[str] | frozenset) -> list[str]:
    """Notes on settings that have no effect in this run (explicit: the keys the user set)."""
    notes = []
    if not cfg.system.compile and cfg.system.compile_mode != "default":
        notes.append(f"system.compile_mode {cfg.system.compile_mode!r} has no effect without --compile=true")
    if cfg.run.keep_last and not cfg.run.keep_checkpoints:
        notes.append(f"run.keep_last {cfg.run.keep_last} has no effect without --keep_checkpoints=true")
    lora_keys = sorted(k for k in explicit if k.startswith("lora.")  # set to other than the default
                       and getattr(cfg.lora, k[5:]) != getattr(type(cfg.lora)(), k[5:]))
    if lora_keys and cfg.run.task != "lora":
        notes.append(f"{', '.join(lora_keys)} set, but the lora section applies to LoRA runs only (lora_train); "
                     f"this {cfg.run.task} run trains every weight")
    return notes


_SCHEDULE_KEYS = ("learning_rate", "min_lr", "warmup_iters", "lr_decay_iters", "max_iters", "time_budget")


def _saved_schedule(o, saved: dict | None):
    """The checkpoint's run's schedule: o with the saved optim settings that set the learning
    rate (those of the right type; None without a saved section)."""
    if not isinstance(saved, dict):
        return None
    kept = {k: type(getattr(o, k))(saved[k]) for k in _SCHEDULE_KEYS
            if isinstance(saved.get(k), (int, float)) and not isinstance(saved[k], bool) and math.isfinite(saved[k])}
    return dataclasses.replace(o, **kept)


def cosine_lr(o, it: int, elapsed: float, warm_s: float | None, decay_end: int | None = None) -> float:
    """The learning rate of step `it` (o: the optim settings): linear warmup, then cosine
    decay to min_lr, which ends at decay_end (default: optim.lr_decay_iters, else max_iters).
    With a time budget the decay follows steps or elapsed seconds, whichever is further
    along; its time runs from the end of warmup (warm_s, None while warming up) to the
    end of the budget."""
    if decay_end is None:
        decay_end = o.lr_decay_iters or o.max_iters
    if it < o.warmup_iters:
        return o.learning_rate * (it + 1) / (o.warmup_iters + 1)
    if it >= decay_end:
        return o.min_lr
    done = (it - o.warmup_iters) / max(decay_end - o.warmup_iters, 1)
    if o.time_budget > 0:
        start = warm_s if warm_s is not None else elapsed
        done = max(done, (elapsed - start) / (o.time_budget - start) if o.time_budget > start else 1.0)
        if done >= 1.0:
            return o.min_lr
    return o.min_lr + 0.5 * (1.0 + math.cos(math.pi * done)) * (o.learning_rate - o.min_lr)


def schedule_notes(o, step: int, elapsed: float, warm_s: float | None, saved: dict | None) -> list[str]:
    """Notes on a schedule (o: the optim settings) that may not do what was meant: warmup
    that never ends, a decay that ends before it starts, a weight decay that overwhelms the
    gradients, and (on resume at `step`, after `elapsed` seconds; saved: the checkpoint's
    optim settings) a cosine that now ends elsewhere than in the checkpoint's run, or a
    changed time budget that moves the learning rate."""
    notes = []
    then = _saved_schedule(o, saved)
    if then is not None:
        now, before = cosine_lr(o, step, elapsed, warm_s), cosine_lr(then, step, elapsed, warm_s)
        change = (f": the learning rate at step {step} is {now:.2e} instead of {before:.2e}"
                  if f"{now:.2e}" != f"{before:.2e}" else "")
        decay_iters, saved_decay_end = o.lr_decay_iters or o.max_iters, then.lr_decay_iters or then.max_iters
        moved = saved_decay_end != decay_iters and step < min(max(saved_decay_end, decay_iters), o.max_iters)
        if then.time_budget != o.time_budget:  # the decay follows steps or seconds, whichever is further
            if change:
                def budget(seconds):
                    return f"{seconds:g} s" if seconds else "none"

                keep = f"; --lr_decay_iters={step} keeps it at optim.min_lr" if before == then.min_lr else ""
                notes.append(f"optim.time_budget is now {budget(o.time_budget)}, {budget(then.time_budget)} in the "
                             f"checkpoint's run, and the cosine decay follows the time budget where it is further "
                             f"along than the steps{change}{keep}")
        elif o.lr_decay_iters == 0 and moved:  # the cosine follows max_iters, which changed
            notes.append(f"the learning rate's cosine decay now ends at step {decay_iters} (optim.max_iters, as "
                         f"optim.lr_decay_iters is 0), in the checkpoint's run at step {saved_decay_end}{change}; "
                         f"--lr_decay_iters={saved_decay_end} keeps the checkpoint's schedule")
    if 0 < o.max_iters <= o.warmup_iters:
        notes.append(f"optim.warmup_iters {o.warmup_iters} >= optim.max_iters {o.max_iters}: the learning rate "
                     f"only warms up (to {cosine_lr(o, o.max_iters - 1, 0.0, None):.2e} at the last step, not "
                     f"optim.learning_rate {o.learning_rate:g}) and never decays; lower --warmup_iters")
    elif 0 < o.lr_decay_iters <= o.warmup_iters:
        notes.append(f"optim.lr_decay_iters {o.lr_decay_iters} <= optim.warmup_iters {o.warmup_iters}: the "
                     f"learning rate warms up, then drops at once to optim.min_lr {o.min_lr:g} (no cosine decay); "
                     "raise --lr_decay_iters, or 0 to decay until max_iters")
    decay = o.learning_rate * o.weight_decay  # AdamW scales each weight by 1 - decay per step
    if decay >= 1:
        what = "sets them to 0" if decay == 1 else "flips their sign" + (" and grows them" if decay > 2 else "")
        notes.append(f"optim.learning_rate * optim.weight_decay is {decay:g}: AdamW multiplies every decayed "
                     f"weight by 1 - {decay:g} = {1 - decay:g} at each step, which {what} whatever the gradients "
                     "say; keep the product well below 1")
    return notes


def train(cfg: Config, explicit: set[str] | frozenset = frozenset(), checkpoint: dict | None = None,
          progress=None, run_lock_held: bool = False) -> TrainResult:
    """Train as cfg says; returns a summary. See the module docstring for the outputs.

    progress: None prints progress lines; a callable instead receives every log
    record as a dict ({"kind": "start" | "train" | "eval" | "end", ...}, as in
    log.jsonl) and no progress is printed (a caller drawing its own progress bar);
    notes about the data and the model still go to standard error.

    An earlier run's files in out_dir are deleted with run.overwrite, else replaced;
    the commands (main) refuse such an out_dir first (check_new_run), callers that
    manage their own directory (nano_train.problems) decide for themselves.
    One run at a time per out_dir: the process that writes it holds a lock there
    (RUN_LOCK) for the whole run, and a second run into it fails at once
    (ConfigError naming the first one's pid). An out_dir this call created is
    removed again if the run ends before writing anything into it. run_lock_held:
    the caller holds that lock already (nano_train.problems, which deletes an
    earlier run's files first); a second flock on the file, even from the same
    process, would conflict with it.
    Raises TrainingDiverged when the loss or the weights become inf or nan, and (under
    torchrun) LostContact when another rank is gone; SIGTERM is then left ignored, as
    torchrun sends it to the ranks left, and the process is to end with the error.

    checkpoint: the loaded latest.pt of a resume (main loads it to resolve the config),
    or None to load it here. The run takes it over: its "model" and "optimizer" entries
    are dropped once the model and optimizer hold them (the weights are not kept twice).

    cfg may be built in code: it is checked as a config file is (config.check: a
    ConfigError naming the key, before anything is written). The caller's torch
    thread count is restored at the end (system.threads is the run's). The run replaces
    cfg.model by the model it trains (the vocabulary size the data's, the
    architecture a base model's or the resumed checkpoint's where explicit does not
    name a model key).
    """
    check_config(cfg)
    threads = torch.get_num_threads()  # system.threads sets them for the run only
    try:
        with contextlib.ExitStack() as held:
            held.enter_context(compile_cache_tag(cfg.system.attention_backend))
            if run_lock_held or not writes_out_dir():
                return _train(cfg, explicit, checkpoint, progress)
            out_dir = Path(cfg.run.out_dir)
            try:
                held.enter_context(dirlock.exclusive(out_dir, RUN_LOCK, "run", ConfigError))
            except OSError as e:
                raise not_writable(out_dir, e) from None
            return _train(cfg, explicit, checkpoint, progress)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: Config, explicit: set[str] | frozenset, checkpoint: dict | None, progress) -> TrainResult:
    """train(), in the process that holds the run lock (or one that does not write)."""
    t_start = time.monotonic()
    task = cfg.run.task

    # ---- processes, device, precision ---------------------------------------------
    info = init_distributed(cfg.system)
    master = info.rank == 0
    if cfg.system.threads:
        torch.set_num_threads(cfg.system.threads)
    device = resolve_device(cfg.system.device, info)
    # The precision and the kernels fit the model trained: from scratch the config's, checked
    # before anything is written; a base model's or the resumed checkpoint's once known, below
    scratch = cfg.run.init_from == "scratch"
    if scratch:
        dtype, forward_context, (onednn, matmul) = resolve_precision(cfg, device)

    # Ctrl-C, SIGTERM or SIGHUP: the run stops after its step, with latest.pt saved (the
    # handlers are set before the loop); and the output that a stop must not break
    stop = interrupts.RunSignals(master)

    def say(msg: str) -> None:
        """Progress: on standard output, unless a caller takes the records (progress)."""
        if master and progress is None:
            stop.emit(msg, sys.stdout)

    def note(msg: str) -> None:
        """A `note: ` about the config, the data or the run: on standard error, always."""
        if master:
            stop.emit(f"note: {msg}", sys.stderr)

    # ---- the run directory: writable (checked before anything is loaded), cleared on overwrite
    out_dir = Path(cfg.run.out_dir)
    resuming = cfg.run.init_from == "resume"
    if master:
        prepare_out_dir(out_dir, cfg.run.overwrite and not resuming, cfg.run.init_from)

    # ---- data and vocabulary ---------------------------------------------------------
    ds = Dataset(cfg.data.dataset)
    wants = ("pretrain",) if task == "pretrain" else ("sft", "seq2seq")
    if ds.kind not in wants:
        raise DataError(f"{ds.path} is a {ds.kind} dataset but task {task} needs a {' or '.join(wants)} dataset "
                        f"(`python -m nano_train.prepare {wants[0]} ...`)")
    tokenizer = ds.tokenizer

    # ---- model: from scratch, from a base model, or from the checkpoint we resume ------
    latest = out_dir / LATEST
    if resuming and checkpoint is None:
        checkpoint = ckpt_io.load(latest)
    base_config = base_sd = None
    if resuming:
        if checkpoint.get("task") != task:
            raise ConfigError(f"resume: {latest} is a {checkpoint.get('task')} checkpoint, not {task}")
        from nano_tokenizer import Tokenizer

        with restoring_from(latest):
            fingerprint = Tokenizer.from_json_dict(checkpoint["tokenizer"], source=str(latest)).fingerprint()
        ds.check_tokenizer(fingerprint, str(latest))
        check_resume_conflicts(cfg, checkpoint, latest, ds)
    elif cfg.run.init_from != "scratch":
        base_config, base_sd, base_tok, base_source = base_model(cfg, explicit)
        ds.check_tokenizer(base_tok.fingerprint(), cfg.run.init_from)
    elif task == "lora":
        raise ConfigError("task lora needs run.init_from = a base model (.pt checkpoint or .bin file)")
    if resuming:
        inherited, source = checkpoint["config"]["model"], f"the checkpoint {latest}"
    elif base_config is not None:
        inherited, source = base_config.to_dict(), base_source
    else:
        inherited, source = None, ""
    cfg.model = resolve_model_config(cfg, set(explicit), tokenizer, inherited, source)
    if causal_note := check_attention_fits_data(cfg.model, ds, source or "the config", resuming, cfg.run.init_from):
        note(causal_note)
    if not scratch:
        # its width picks dtype auto on a CPU, its heads the attention kernels, and the dtype
        # whether system.matmul applies (was: judged by the config's default model, 256 wide, so
        # a 128-wide base trained in bfloat16, and --matmul=onednn was refused as bfloat16)
        dtype, forward_context, (onednn, matmul) = resolve_precision(cfg, device)
    scaler = make_grad_scaler(dtype, device)
    torch.manual_seed(cfg.system.seed)  # the same initial weights on every rank
    m = cfg.model
    with needs_memory(f"while building the model on {device} (n_layer {m.n_layer}, n_embd {m.n_embd}, "
                      f"vocabulary {m.vocab_size})", "this machine cannot hold a model of that size"
                      + (": lower model.n_layer or model.n_embd" if scratch else
                         f" ({source}'s architecture, which this run keeps)")):
        raw_model = Transformer(cfg.model)
        if base_sd is not None:
            raw_model.load_state_dict(base_sd)
            base_sd = None  # the base model's own tensors: a second copy of the weights for the whole run
        if task == "lora":
            attach_lora(raw_model, cfg.lora.lora_rank, cfg.lora.lora_alpha, cfg.lora.lora_dropout)
            mark_only_lora_trainable(raw_model)
        if resuming:
            ckpt_io.check_state_dict(latest, checkpoint["model"], raw_model)
            ckpt_io.check_finite(latest, checkpoint["model"])
            raw_model.load_state_dict(checkpoint["model"])
        raw_model.to(device)
    raw_model.use_onednn(onednn)
    trainable = [p for p in raw_model.parameters() if p.requires_grad]

    # ---- optimizer and batches ----------------------------------------------------------
    groups = [g for g in raw_model.param_groups(cfg.optim.weight_decay) if g["params"]]
    optimizer = make_adamw(groups, cfg.optim)
    if cfg.optim.gradient_accumulation_steps % info.world_size:
        raise ConfigError(f"optim.gradient_accumulation_steps ({cfg.optim.gradient_accumulation_steps}) must be a "
                          f"multiple of the number of processes ({info.world_size})")
    accum = cfg.optim.gradient_accumulation_steps // info.world_size  # micro-batches per rank per step
    graphs = uses_cuda_graphs(cfg, device, accum, info.world_size)
    fixed_by = source or None  # where the architecture is inherited, the data must fit its block_size
    train_source = ds.source("train", cfg.model.block_size, fixed_by)
    if train_source is None:
        raise DataError(f"{ds.path} has no training data")
    val_source = ds.source("val", cfg.model.block_size, fixed_by) if cfg.eval.eval_iters > 0 else None
    for text in data_notes(cfg, ds, train_source, val_source):
        note(text)
    if cfg.data.batch_size * info.world_size > train_source.n_rows:  # each batch would read many epochs
        procs = f" x {info.world_size} processes" if info.ddp else ""
        raise DataError(f"data.batch_size {cfg.data.batch_size:,}{procs} is more rows than the training split of "
                        f"{ds.path} holds ({train_source.n_rows:,} rows of {train_source.T + 1} tokens): lower "
                        "--batch_size")
    train_batches = Batcher(train_source, cfg.data.batch_size, cfg.system.seed, info.rank, info.world_size)
    seq_len = train_source.T
    tokens_per_step = cfg.data.batch_size * seq_len * accum * info.world_size
    dataset_id = dataset_identity(ds.meta)

    # ---- state: fresh, or exactly where the checkpoint left off ------------------------
    seed_everything(cfg.system.seed + info.rank)  # dropout masks differ between ranks
    state = (restore_state(checkpoint, latest, cfg, info, optimizer, scaler, train_batches, note) if resuming
             else RunState())
    step, tokens_seen, elapsed_before = state.step, state.tokens_seen, state.elapsed_s
    best_val_loss, val_loss, val_step = state.best_val_loss, state.val_loss, state.val_step
    train_loss = state.train_loss
    warm_s = state.warmup_end_s  # the elapsed seconds when warmup ended (the time budget's decay starts there)
    resume_step = step if resuming else None
    # Whether latest.pt was written at the run's last step (max_iters or the time budget),
    # rather than on Ctrl-C or at a periodic checkpoint. Checkpoints older than the field
    # count as final, as before it existed.
    ended = resuming and checkpoint.get("final", True) is not False
    # the checkpoint's step is the run's last (max_iters reached or the time budget spent)
    at_end = step >= cfg.optim.max_iters or 0 < cfg.optim.time_budget <= elapsed_before
    if resuming and not ended and step > cfg.optim.max_iters:
        raise ConfigError(f"--init_from=resume: {latest} is at step {step}, past optim.max_iters "
                          f"({cfg.optim.max_iters}): pass --max_iters={step} to end the run there (final evaluation "
                          "and report), or a larger value to train on")
    if ended and at_end:
        # A finished run: its report and log stay as they are, unless its process was killed
        # after the last checkpoint, before its report said so (missing, or an earlier state's)
        limits = ([(f"reached optim.max_iters ({cfg.optim.max_iters})", "--max_iters=N")]
                  if step >= cfg.optim.max_iters else [])
        if 0 < cfg.optim.time_budget <= elapsed_before:
            limits.append((f"has spent its time budget ({cfg.optim.time_budget:g} s)", "--time_budget=S, 0 for none"))
        done = (f"nothing to do: the run in {out_dir} is at step {step} and {' and '.join(w for w, _ in limits)}; "
                f"raise {'it' if len(limits) == 1 else 'both'} ({'; '.join(f for _, f in limits)}) to train on")
        result = TrainResult(step, train_loss, val_loss, best_val_loss, tokens_seen, 0.0, time.monotonic() - t_start,
                             False, out_dir, out_of_time=step < cfg.optim.max_iters, val_step=val_step)
        if master:
            from nano_train.report import ended_at

            if ended_at(out_dir / "report.md") != step:
                result.samples_interrupted = complete_finished_run(
                    cfg, result, elapsed_before, raw_model, ds, device, dtype, info.world_size,
                    sum(p.numel() for p in trainable), seq_len, val_source or train_source)
                done += "; wrote the missing report.md"
        say(done)
        if info.ddp:
            dist.destroy_process_group()
        return result
    # the checkpoint's schedule (for the note when this run moves it)
    saved_optim = checkpoint["config"]["train"].get("optim") if resuming else None
    # the precision the checkpoint's run trained in, for the note when dtype auto picks another now
    saved_dtype = trained_dtype(checkpoint, out_dir / "log.jsonl", step) if resuming else None
    # the model a fine-tuning run started from (kept through resumes, for provenance)
    base_path = checkpoint.get("base") if resuming else (None if cfg.run.init_from == "scratch" else cfg.run.init_from)
    if resuming:  # the model and optimizer hold theirs now; the caller's names keep the dict alive
        checkpoint.pop("model", None)
        checkpoint.pop("optimizer", None)
    del checkpoint

    # ---- wrap for speed and for several processes ---------------------------------------
    for text in unused_settings(cfg, explicit):
        note(text)
    if cfg.system.compile:
        torch._dynamo.reset()  # no graph of an earlier run in this process (traced under another SDPA kernel)
        model = torch.compile(raw_model, mode=cfg.system.compile_mode)
    else:
        model = raw_model
    # CUDA graphs (compile modes reduce-overhead and max-autotune) reuse their memory from
    # one step to the next: each optimizer step's start is marked for them, and evaluation
    # (a few batches now and then) runs the model uncompiled rather than graphs of its own.
    blocked = blocked_loss(cfg.system.loss, device)
    eval_model = raw_model if graphs else model  # evaluation needs no gradient synchronisation
    if info.ddp:
        with talking(info, "the start of training"):  # DDP sends rank 0's weights to every rank
            model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    # ---- logging -------------------------------------------------------------------------
    # a run resumed at its last step from a checkpoint that was not final evaluates that step
    # (again, when the checkpoint was periodic): its earlier eval record there goes
    finishing = resuming and not ended and at_end
    log = RunLog(out_dir / "log.jsonl", master, resume_step, evaluates_resume_step=finishing)

    def record(**fields) -> None:  # one log record, to log.jsonl and to the caller's progress
        log.write(**fields)
        if master and progress is not None:
            progress(fields)

    flops_per_token = raw_model.flops_per_token(seq_len)
    peak, peak_source = peak_flops(device, dtype, cfg.system.peak_flops) if master else (0.0, "")
    n_params = raw_model.num_params()
    n_trainable = sum(p.numel() for p in trainable)
    say(f"{task}: {n_params:,} parameters ({n_trainable:,} trained), {info.world_size} x {device} {dtype}"
        + (" (oneDNN products)" if onednn else "") + ", "
        f"{tokens_per_step:,} tokens per step ({cfg.data.batch_size} x {seq_len} x {accum} x {info.world_size}), "
        f"{ds.size_text()}"
        + (f", resuming at step {step}" if resuming else ""))
    if onednn and peak_source.endswith("products (torch)"):  # the probe timed both kernels; torch's won
        note("torch's float32 products measured faster than oneDNN's on this CPU; "
             "--matmul=torch may train faster here")
    if cfg.system.dtype == "auto" and saved_dtype not in (None, dtype):
        note(f"this run trained in {saved_dtype} up to step {step}; dtype auto picks {dtype} here: "
             f"--dtype={saved_dtype} keeps it")
    elif cfg.system.dtype == "auto" and device.type == "cpu" and dtype == "bfloat16":
        note("dtype auto is bfloat16 on this CPU (it multiplies bfloat16 in hardware, much faster "
             "than float32); --dtype=float32 trains in full precision")
    elif cfg.system.dtype == "auto" and device.type == "cpu" and cpu_has_native_bf16():
        note(f"dtype auto is float32: this CPU multiplies bfloat16 in hardware, but a model "
             f"{cfg.model.n_embd} wide (under {CPU_BF16_MIN_EMBD}) trains faster in float32 here; "
             "--dtype=bfloat16 uses it anyway")
    record(kind="start", step=step, task=task, params=n_params, trainable_params=n_trainable,
           world_size=info.world_size, device=str(device), dtype=dtype, tokens_per_step=tokens_per_step,
           peak_flops=peak, peak_flops_source=peak_source, matmul=matmul, config=cfg.to_dict())

    # ---- notes on the learning-rate schedule (cosine_lr sets each step's rate in the loop) --
    budget = cfg.optim.time_budget
    for text in schedule_notes(cfg.optim, step, elapsed_before, warm_s, saved_optim):
        note(text)

    # A diverged run (loss inf or nan) stops with an error naming the last checkpoint written,
    # which is never replaced by non-finite weights.
    last_saved = f"{latest} (step {step})" if resuming else None

    decay = cfg.optim.learning_rate * cfg.optim.weight_decay  # AdamW scales each weight by 1 - decay per step

    grad_norm = counted = probe = None  # the last step's, on the device (probe: one row of its input)

    def stalled() -> bool:
        """Every gradient of the last step was exactly zero, although it had tokens to learn
        from: what overflowing activations do (see overflowed), and also float16 gradients
        of a loss near 0 (they underflow), so only a hint to probe. The same on every rank."""
        return grad_norm is not None and float(grad_norm) == 0.0 and float(counted) > 0

    def overflowed() -> bool:
        """Whether the last step's first input row makes an RMSNorm's mean square inf: its
        output and every logit are then 0, and no weight is inf or nan, so nothing else
        catches it. A collective under DDP (each rank probes its own row; all decide alike)."""
        if probe is None:
            return False
        found = torch.tensor(float(activations_overflow(raw_model, probe, forward_context)), device=device)
        if info.ddp:
            with talking(info, f"the overflow check of step {step}"):
                dist.all_reduce(found, op=dist.ReduceOp.MAX)
        return bool(found.item())

    def diverged(what: str) -> TrainingDiverged:
        good = (f"the last good checkpoint is {last_saved}" if last_saved else "no checkpoint was written before it")
        fixes = [f"optim.learning_rate (now {cfg.optim.learning_rate:g})"]
        if decay >= 1:
            fixes.append(f"optim.weight_decay (now {cfg.optim.weight_decay:g}: with the learning rate, it scales "
                         f"the weights by {1 - decay:g} at each step)")
        fix = "Lower " + " or ".join(fixes)
        if cfg.optim.grad_clip == 0:
            fix += " or clip gradients (optim.grad_clip, now 0: off)"
        return TrainingDiverged(f"training diverged: {what} at step {step}; {good}. {fix}, then "
                                + ("resume (--init_from=resume) or start again" if last_saved else "start again"))

    def save_checkpoint(names: list[str], final: bool = False) -> str:
        """Write the state to each of names in order (latest.pt last: its step implies the
        others were written). final: written at the run's last step. Returns the last one
        written, with its step, for messages (rank 0's name on every rank)."""
        # every rank checks (the weights are the same on all), so that all of them stop together
        bad_losses = [x for x in (train_loss, val_loss) if x is not None and not math.isfinite(x)]
        if bad_losses or not weights_finite(raw_model):
            raise diverged(f"the loss is {bad_losses[0]}" if bad_losses else "the weights are not finite")
        if overflowed():  # finite weights, but a model that no longer reads its input
            raise diverged(STALLED if stalled() else OVERFLOW)
        with talking(info, f"the checkpoint of step {step}"):
            rng = gather_rng(info)  # a collective: every rank takes part, rank 0 writes
        saved = f"{out_dir / names[-1]} (step {step})"
        if not master:
            return saved
        state = {
            "format": ckpt_io.FORMAT, "version": ckpt_io.VERSION, "task": task,
            "model": unwrap_state_dict(raw_model),
            "config": {"model": cfg.model.to_dict(), "train": cfg.train_dict()},
            "tokenizer": tokenizer.to_json_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "step": step, "tokens_seen": tokens_seen,
            "data_state": train_batches.state_dict(),
            "rng": rng,
            "best_val_loss": best_val_loss, "val_loss": val_loss, "val_step": val_step, "train_loss": train_loss,
            "eval_seed": EVAL_SEED,
            "elapsed_s": elapsed_before + time.monotonic() - t_start, "warmup_end_s": warm_s,
            "dataset": {"path": str(ds.path), "fingerprint": tokenizer.fingerprint()}, "dataset_id": dataset_id,
            "versions": {"torch": str(torch.__version__), "nano_train": nano_train.__version__},
            # the precision the steps were trained in: this process's, once it trained one
            "dtype": dtype if step != resume_step else saved_dtype or dtype,
            "final": final,
        }
        if task == "lora":
            state["lora"] = {"rank": cfg.lora.lora_rank, "alpha": cfg.lora.lora_alpha,
                             "dropout": cfg.lora.lora_dropout}
        if base_path is not None:
            state["base"] = base_path
        for name in names:
            ckpt_io.save_atomic(state, out_dir / name)
        if cfg.run.keep_checkpoints and cfg.run.keep_last and LATEST in names:  # (only once all are written)
            try:
                prune_checkpoints(out_dir, step, cfg.run.keep_last)
            except OSError as e:  # the run goes on; the files are there to delete by hand
                note(f"could not delete the older checkpoints run.keep_last {cfg.run.keep_last} would: "
                     f"{e.filename or out_dir}: {e.strerror or e}")
        return saved

    stop.install()
    checkpoint_interval = cfg.run.checkpoint_interval or cfg.eval.eval_interval
    train_seconds, rate_tokens = 0.0, 0  # for the run's throughput, the first step left out
    first_seconds = 0.0  # ... unless it is the only one
    interval = Pace()  # the steps since the last log record
    eta_from = None  # (clock, step) after the first step, which pays for warm-up: for the time left
    eta_continued = stop.continued  # SIGCONTs when eta_from was set
    interrupted = out_of_time = False

    def time_left(now: float) -> str:
        """", eta 4m10s": the wall-clock time to max_iters at the pace since the first step
        (evaluations and checkpoints included), or to the time budget if that comes first."""
        if eta_from is None or not eta_from[1] < step < cfg.optim.max_iters:
            return ""
        left = (time.monotonic() - eta_from[0]) / (step - eta_from[1]) * (cfg.optim.max_iters - step)
        if budget > 0:
            left = min(left, max(0.0, budget - now))
        return f", eta {duration(left)}"

    def log_train(pace: Pace) -> float | None:
        """The train record of the last step's loss and of the pace of the steps since the
        last record; a collective under DDP. Returns the loss: None for a step without a
        token to learn from (every target masked out, on every rank: SFT rows whose answers
        block_size cut off), whose 0 would read as a perfect loss."""
        total = loss_sum.clone()  # this rank's share of the step's loss, times world_size
        if info.ddp:
            with talking(info, f"the loss report of step {step}"):
                dist.all_reduce(total)
            total /= info.world_size
        loss = total.item()
        if not math.isfinite(loss):  # checked where it is on the host anyway, not every step
            raise diverged(f"the training loss is {loss}")
        if stalled() and overflowed():
            raise diverged(STALLED)
        if float(counted) == 0:  # (counted: the step's tokens summed over the ranks)
            loss = None
        tok_s = pace.tokens_per_s(tokens_per_step)
        mfu = flops_per_token * tok_s / (peak * info.world_size) if peak > 0 and tok_s is not None else None
        now = elapsed_before + time.monotonic() - t_start
        rate = "stopped (Ctrl-Z or SIGSTOP)" if tok_s is None else f"{human(tok_s)} tok/s"
        shown = f"loss {loss:.4f}" if loss is not None else f"loss n/a ({NO_TOKENS})"
        say(f"step {step:>6}/{cfg.optim.max_iters} | {shown} | lr {lr:.2e} | "
            f"grad norm {grad_norm.item():.3f} | {rate}"
            + (f" | mfu {100 * mfu:.2f}%" if mfu is not None else "") + f" | {duration(now)}{time_left(now)}")
        record(kind="train", step=step, loss=loss, lr=lr, grad_norm=grad_norm.item(),
               tokens_per_s=tok_s, mfu=mfu, tokens_seen=tokens_seen, elapsed_s=now)
        return loss

    try:
        while True:
            elapsed = elapsed_before + time.monotonic() - t_start
            stopping = stop.requested
            if info.ddp:  # every rank must stop at the same step and follow the same clock
                flags = torch.tensor([float(stopping), elapsed], device=device, dtype=torch.float64)
                with talking(info, f"the start of step {step + 1}"):
                    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                stopping, elapsed = bool(flags[0].item()), flags[1].item()
            out_of_time = budget > 0 and elapsed >= budget and step < cfg.optim.max_iters
            last = step >= cfg.optim.max_iters or out_of_time
            if (last or stopping) and interval.steps:
                train_loss = log_train(interval)  # the final steps' loss, when the step just run was not logged
                interval = Pace()
            # A resumed step's evaluation and checkpoint were done before it was saved, unless it
            # was saved on Ctrl-C (or periodically) and is now the last: the run ends there as
            # its last step would have ended it.
            fresh = step != resume_step or (last and not ended)

            # -- evaluate on the held-out split; keep the best model (at a resumed step too where
            # its run did not: a Ctrl-C between evaluations, and this run's eval_interval hits it)
            if ((fresh or val_step != step) and val_source is not None
                    and (step % cfg.eval.eval_interval == 0 or last)):
                with talking(info, f"the evaluation at step {step}"):
                    val_loss = evaluate(eval_model, val_source, cfg, info, device, forward_context, blocked)
                val_step = step
                if not math.isfinite(val_loss):
                    raise diverged(f"the validation loss is {val_loss}")
                improved = val_loss < best_val_loss
                best_val_loss = min(best_val_loss, val_loss)
                say(f"step {step:>6} | val loss {val_loss:.4f} | best {best_val_loss:.4f}")
                record(kind="eval", step=step, val_loss=val_loss, best_val_loss=best_val_loss)
                if improved and step > 0:
                    last_saved = save_checkpoint([BEST], final=last)

            # -- checkpoint (at step 0 too when it is the last, so that a run of max_iters 0 can resume)
            if fresh and (step > 0 or stopping or last) and (step % checkpoint_interval == 0 or last or stopping):
                # ckpt_<step>.pt first: a kill between the two writes must not leave a latest.pt
                # at this step without it (a resume from that step would never write it)
                names = ([f"ckpt_{step:06d}.pt"] if cfg.run.keep_checkpoints else []) + [LATEST]
                last_saved = save_checkpoint(names, final=last)
            if last or stopping:
                interrupted = stopping and not last
                break

            # -- one optimizer step: accumulate gradients over micro-batches
            if warm_s is None and step >= cfg.optim.warmup_iters:
                warm_s = elapsed
            lr = cosine_lr(cfg.optim, step, elapsed, warm_s)
            for group in optimizer.param_groups:
                group["lr"] = lr
            t0, continued = time.perf_counter(), stop.continued
            # The model averages its loss over one micro-batch's counted tokens, and SFT rows
            # count their answers only: weigh each micro-batch by its share of the step's
            # tokens (on all ranks; x world_size as DDP averages the ranks' gradients), so that
            # accumulation and DDP give one big batch's mean. Pretraining: 1 / accum each.
            micro_batches = [batch_to_device(train_batches.next(), device) for _ in range(accum)]
            probe = micro_batches[-1][0][:1]
            tokens = [Transformer.loss_weight(y, m).sum() for _, y, m in micro_batches]
            step_tokens = torch.stack(tokens).sum()  # on the device: no wait for it
            loss_sum = torch.zeros((), device=device)
            with talking(info, f"training step {step + 1}"):
                if info.ddp:
                    dist.all_reduce(step_tokens)
                counted = step_tokens  # 0 only where every row of the step is masked out
                step_tokens = step_tokens.clamp_min(1.0)
                if graphs:  # a new step: the last one's graph outputs may be overwritten
                    torch.compiler.cudagraph_mark_step_begin()
                for micro, (x, y, m) in enumerate(micro_batches):
                    # DDP all-reduces gradients on the last micro-batch only
                    sync = contextlib.nullcontext() if not info.ddp or micro == accum - 1 else model.no_sync()
                    with sync:
                        with forward_context():  # CE averaged over unmasked targets
                            _, loss = model(x, y, m, return_logits=False, blocked_loss=blocked)
                        loss = loss * (tokens[micro] * info.world_size / step_tokens)
                        scaler.scale(loss).backward()  # a no-op scale unless float16
                    loss_sum += loss.detach()

            # -- clip, step
            scaler.unscale_(optimizer)  # true gradients for the norm (no-op when disabled)
            if cfg.optim.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.grad_clip)
            else:  # the norm for the log only (clipping at inf would multiply an inf norm's gradients by nan)
                grad_norm = total_norm(trainable)
            scaler.step(optimizer)  # skips the step if float16 gradients overflowed
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tokens_per_step

            # -- time the step. A GPU runs behind the Python code, so a step is timed to the
            #    end of its device work only where the device is waited for: at log lines, before
            #    an evaluation or checkpoint, and after the first step. Each interval between
            #    waits is exact in total, and the log reports throughput over its interval.
            log_now = step % cfg.run.log_interval == 0 or step == cfg.optim.max_iters
            first = step == (resume_step or 0) + 1  # pays for warm-up and compilation
            # (likely) the last step: its record comes at the top of the loop
            ending = stop.requested or (budget > 0 and elapsed_before + time.monotonic() - t_start >= budget)
            if log_now or first or ending or step % cfg.eval.eval_interval == 0 or step % checkpoint_interval == 0:
                synchronize(device)
            dt = time.perf_counter() - t0
            # a step the process was stopped in (Ctrl-Z, SIGSTOP) took time that says nothing of
            # the pace: left out of the rates, and the pace for the time left starts again
            paused = stop.continued != continued
            interval.add(None if paused else dt)
            if first or stop.continued != eta_continued:  # (also a stop in an evaluation or checkpoint)
                eta_from, eta_continued = (time.monotonic(), step), stop.continued
            if first:
                first_seconds = dt
            elif not paused:
                train_seconds += dt
                rate_tokens += tokens_per_step

            # -- log
            if log_now:
                train_loss = log_train(interval)
                interval = Pace()
    except LostContact as e:
        stop.restore()
        if not master:  # only rank 0 writes checkpoints: it says where the run can continue from
            raise
        asked = "the checkpoint the interrupt asked for was not written; " if stop.requested else ""
        where = (f"the last checkpoint written is {last_saved}: {resume_hint(out_dir)}" if last_saved
                 else stopped_hint(out_dir))
        raise LostContact(f"{e}; {asked}{where}") from None
    except BaseException:
        stop.restore()
        raise
    # a signal that came during the last step's evaluation or checkpoint (too late to stop
    # the training) is one for the report
    stop.late = stop.requested and not interrupted
    stop.done = True
    try:
        seconds = time.monotonic() - t_start
        tokens_per_s = (rate_tokens / train_seconds if train_seconds > 0
                        else tokens_per_step / first_seconds if first_seconds > 0 else 0.0)
        result = TrainResult(step, train_loss, val_loss, best_val_loss, tokens_seen, tokens_per_s, seconds,
                             interrupted, out_dir, out_of_time, val_step=val_step)
        if interrupted:
            say(f"interrupted at step {step}: saved {out_dir / LATEST}; {resume_hint(out_dir)}")
        if out_of_time:
            say(f"time budget of {budget:g} s reached at step {step}")
            if step < cfg.optim.warmup_iters:
                note(f"the time budget ran out during warmup (step {step} of optim.warmup_iters "
                     f"{cfg.optim.warmup_iters}): the learning rate never reached optim.learning_rate "
                     f"{cfg.optim.learning_rate:g} nor decayed; lower --warmup_iters or raise --time_budget")
        record(kind="end", step=step, interrupted=interrupted, out_of_time=out_of_time, train_loss=train_loss,
               val_loss=val_loss, best_val_loss=best_val_loss, tokens_seen=tokens_seen, tokens_per_s=tokens_per_s,
               seconds=seconds)
        if master:
            result.samples_interrupted = write_report_card(
                out_dir / "report.md", stop=stop, cfg=cfg, result=result, model=raw_model, tokenizer=tokenizer,
                dataset=ds, device=device, dtype=dtype, world_size=info.world_size, n_params=n_params,
                n_trainable=n_trainable, peak=peak, peak_source=peak_source, flops_per_token=flops_per_token,
                val_source=val_source or train_source)
            from nano_train.report import no_best

            best = f"{best_val_loss:.4f}{no_best(out_dir, best_val_loss)}" if math.isfinite(best_val_loss) else "n/a"
            rate = f"{human(tokens_per_s)} tok/s" if tokens_per_s else "no training step run"
            ended = "stopped" if interrupted else "done"
            say(f"{ended}: step {step}, best val loss {best}, {rate}; report in {out_dir / 'report.md'}")
        if info.ddp:
            with talking(info, "the end of the run"):
                dist.barrier()
            # The DDP wrapper's reducer holds the gloo group. Freed after the group (as train()
            # returns), its destructor joins gloo's threads while holding the GIL, which one of
            # them may be waiting for: rank 1 hung there about once in ten loaded runs. So the
            # wrapper goes first, and the group's last owner is destroy_process_group.
            model = sync = None
            gc.collect()
            dist.destroy_process_group()
        return result
    finally:
        stop.restore()


def write_report_card(path: Path, stop: interrupts.RunSignals | None = None, **report) -> bool:
    """report.md (nano_train.report.write_report); True when Ctrl-C came while its samples
    were drawn, or (stop: the training loop's signal state) after the training ended and
    before they started: the report is then written without them (a second signal aborts)."""
    from nano_train.report import write_report  # before any signal can stop it halfway

    started = False
    try:
        if stop is not None:
            stop.sampling = True  # from here a signal raises KeyboardInterrupt at once
            if stop.late:
                raise KeyboardInterrupt
        started = True
        write_report(path, **report)
        return False
    except KeyboardInterrupt:
        result = report["result"]
        training = (f"the training stopped at step {result.step} (latest.pt saved)" if result.interrupted
                    else "the training is complete")
        when = "while sampling" if started else "before sampling"
        print(f"\ninterrupted {when} for the report: {training}; writing the report without samples",
              file=sys.stderr, flush=True)
        write_report(path, no_samples=f"interrupted {'while' if started else 'before'} they were drawn", **report)
        return True
    finally:
        if stop is not None:
            stop.sampling = False


def complete_finished_run(cfg: Config, result: TrainResult, elapsed_s: float, model: Transformer, ds: Dataset,
                          device: torch.device, dtype: str, world_size: int, n_trainable: int, seq_len: int,
                          sample_source) -> bool:
    """What a finished run's process did not write because it was killed after its last
    checkpoint: log.jsonl's end record (when there is none for the step) and report.md,
    from latest.pt (step, tokens, losses, training time) and log.jsonl (the throughput of
    the run's last training process, else "unknown"), with samples drawn as at the end of
    a run. Returns write_report_card's answer."""
    from nano_train.report import logged_throughput

    out_dir = result.out_dir
    log_path = out_dir / "log.jsonl"
    logged = logged_throughput(log_path)
    tokens_per_s, start = logged if logged else (None, {})
    peak = start.get("peak_flops")
    if isinstance(peak, (int, float)) and isinstance(start.get("world_size"), int):  # the logging process's
        device, dtype, world_size = start.get("device", device), start.get("dtype", dtype), start["world_size"]
        peak_source = start.get("peak_flops_source", "")
    else:
        peak, peak_source = peak_flops(device, dtype, cfg.system.peak_flops)
    late = dataclasses.replace(result, tokens_per_s=tokens_per_s, seconds=elapsed_s)
    ended = log_path.exists() and any(r.get("kind") == "end" and r.get("step") == result.step
                                      and not r.get("interrupted") for r in read_log(log_path))
    if not ended:  # RunLog drops a line the kill cut short, so that the record starts a line
        RunLog(log_path, True, result.step).write(
            kind="end", step=result.step, interrupted=False, out_of_time=result.out_of_time,
            train_loss=result.train_loss, val_loss=result.val_loss, best_val_loss=result.best_val_loss,
            tokens_seen=result.tokens_seen, tokens_per_s=tokens_per_s, seconds=None, written_on_resume=True)
    return write_report_card(out_dir / "report.md", cfg=cfg, result=late, model=model, tokenizer=ds.tokenizer,
                             dataset=ds, device=device, dtype=dtype, world_size=world_size,
                             n_params=model.num_params(), n_trainable=n_trainable, peak=peak,
                             peak_source=peak_source, flops_per_token=model.flops_per_token(seq_len),
                             val_source=sample_source, late=True)


# ---------------------------------------------------------------------------
# Command line


# The command that trains each task (and so resumes its runs)
TASK_COMMANDS = {"pretrain": "nano_train.pretrain", "sft": "nano_train.sft", "lora": "nano_train.lora_train"}


def resolve_config(task: str | None, path: str | None, overrides: list[str]) -> tuple[Config, set[str], dict | None]:
    """Config file + overrides; on resume the checkpoint's config is the base they override."""
    defaults = {"run": {"task": task}} if task else None
    cfg, explicit = load_config(path, overrides, defaults=defaults)
    checkpoint = None
    if cfg.run.init_from == "resume":
        latest = Path(cfg.run.out_dir) / LATEST
        if not latest.is_file():
            if what := ckpt_io.not_a_file(latest):  # a folder, a FIFO, a link to nothing: named as what it is
                raise CheckpointError(f"--init_from=resume: {latest} is {what}, not a checkpoint file")
            dirlock.refuse_if_held(latest.parent / RUN_LOCK, "run", ConfigError)  # at work, not stopped
            # by step: past 999,999 the names have 7 digits, and would sort before ckpt_999999.pt
            kept = sorted(latest.parent.glob("ckpt_*.pt"), key=lambda p: (len(p.name), p.name))
            if kept:  # ckpt_<step>.pt is written before latest.pt: a kill between the two, at the first checkpoint
                raise CheckpointError(f"--init_from=resume: {latest} does not exist: the run in {latest.parent} "
                                      f"stopped while writing its first one, after {kept[-1].name}: copy that file "
                                      f"to {LATEST} to continue from it, or start again with --overwrite=true")
            if earlier_run_files(latest.parent):  # its log.jsonl: a run that stopped before its first checkpoint
                raise CheckpointError(f"--init_from=resume: {latest} does not exist: the run in {latest.parent} "
                                      "stopped before writing a checkpoint; start again with --overwrite=true")
            raise CheckpointError(f"--init_from=resume: {latest} does not exist (is run.out_dir right?)")
        checkpoint = ckpt_io.load(latest)
        saved = checkpoint["config"]
        base = {"model": saved["model"], **saved["train"]}
        try:  # the checkpoint's own config first, so that its errors name the checkpoint
            saved_cfg, _ = load_config(None, [], defaults=defaults, base=base)
        except ConfigError as e:
            why = str(e).replace("<checkpoint config>: ", "").replace("<checkpoint config>", "its config")
            raise CheckpointError(f"{latest}: its config is not valid: {why}") from None
        if task and saved_cfg.run.task != task:  # (another task's run, or its latest.pt copied here)
            raise CheckpointError(
                f"--init_from=resume: {latest} is a checkpoint of task {saved_cfg.run.task!r}, and this command "
                f"trains {task!r}: resume it with `python -m {TASK_COMMANDS[saved_cfg.run.task]}`, or give "
                "this run another --out_dir")
        cfg, explicit = load_config(path, overrides, defaults=defaults, base=base)
        cfg.run.init_from = "resume"
    if task and cfg.run.task != task:
        raise ConfigError(f"this command trains task {task!r} but the config says run.task = {cfg.run.task!r}")
    return cfg, explicit, checkpoint


def resume_hint(out_dir) -> str:
    """The command-line settings that continue the run in out_dir (its config is in the checkpoint)."""
    return f"continue with --init_from=resume --out_dir={shlex.quote(str(out_dir))}"


def stopped_hint(out_dir, first: str = "") -> str:
    """Where a run that stopped on an error or Ctrl-C can go on from: the latest.pt in
    out_dir (and its step) and the command that resumes it, or, with none written, starting
    again (with --overwrite=true when the stopped run left its log there, which a new run
    would otherwise refuse to replace). out_dir None: not known yet. first: what to do
    before that ("once space is freed, ")."""
    if out_dir is None:
        return f"latest.pt, if any, holds the last checkpoint written: {first}continue with --init_from=resume"
    def at_step(path: Path) -> str:
        step = ckpt_io.recorded_step(path)
        return f" (step {step})" if step is not None else ""

    latest = Path(out_dir) / LATEST
    if latest.is_file():
        return f"{latest}{at_step(latest)} holds the last checkpoint written: {first}{resume_hint(out_dir)}"
    again = " with --overwrite=true" if earlier_run_files(Path(out_dir)) else ""
    best = Path(out_dir) / BEST
    if best.is_file():  # (written just before latest.pt: a full disk can stop the run between the two)
        return (f"no latest.pt was written, only {best}{at_step(best)}, the best evaluation's weights, which a new run with "
                f"--overwrite=true deletes (move it away first to keep it): {first}start again{again}")
    return f"no checkpoint was written: {first}start again{again}"


def setting_typo(argv: list[str]) -> str | None:
    """What is wrong with a setting typed in another form than --key=value, and the form to
    write, or None: `--max_iters 5` (the 5 would be read as a config file's name, even when
    it names an existing file, such as --dataset's folder), a bare `--compile` (a true/false
    key), `max_iters=5` or `-max_iters=5` (read as a file's name)."""
    for i, a in enumerate(argv):
        after = argv[i + 1] if i + 1 < len(argv) else None
        if a.split("=", 1)[0] in ("--print_config", "--print-config") and "=" in a:
            return f"{short_repr(a, 80)}: --print_config takes no value; write --print_config"
        if a.startswith("--") and "=" not in a:
            tp = key_type(a[2:])
            if tp is None and after is not None and os.path.isdir(after):  # a config is a file: a misspelled key
                return f"{a}: unknown key {a[2:]!r}{unknown_key_hint(a[2:].replace('-', '_'))}"
            if tp is bool:
                return f"{a}: settings take --key=value; write {a}=true (or {a}=false)"
            if after is not None and not after.startswith("--") and (tp is not None or not os.path.exists(after)):
                return (f"{short_repr(f'{a} {after}', 300)}: settings take --key=value; write "
                        f"{short_repr(f'{a}={after}', 300)}")
        elif not a.startswith("--") and "=" in a and not os.path.exists(a):
            name, value = a.split("=", 1)
            if key_type(name.lstrip("-")) is not None:
                return (f"{short_repr(a, 300)}: settings take --key=value; write "
                        f"{short_repr('--' + name.lstrip('-') + '=' + value, 300)}")
    return None


def main(task: str | None = None, argv: list[str] | None = None) -> int:
    standard_streams()
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        return print_output(__doc__.strip() + "\n\nconfig keys (JSON sections, or --key=value):\n" + help_text())
    print_config = "--print_config" in argv or "--print-config" in argv
    argv = [a for a in argv if a not in ("--print_config", "--print-config")]
    paths = [a for a in argv if not a.startswith("--")]
    overrides = [a for a in argv if a.startswith("--")]
    if hint := setting_typo(argv):
        return startup_error(hint, 2)
    if len(paths) > 1:
        return startup_error(f"one config file at most, got {paths}", 2)
    cfg = out_dir = None  # the run's config and out_dir, once known (for what to do after an error)
    try:
        cfg, explicit, checkpoint = resolve_config(task, paths[0] if paths else None, overrides)
        out_dir = cfg.run.out_dir
        if print_config:
            if cfg.run.init_from not in ("scratch", "resume"):  # the run trains the base's architecture
                base_config, _, _, base_source = base_model(cfg, explicit)
                cfg.model = resolve_model_config(cfg, set(explicit), None, base_config.to_dict(), base_source)
            return print_output(json.dumps(cfg.to_dict(), indent=2, ensure_ascii=False))
        check_new_run(cfg)
        result = train(cfg, explicit, checkpoint)
    except (ConfigError, DataError, CheckpointError) as e:
        return startup_error(str(e), 2)
    except BrokenPipeError:  # the progress lines' reader went away (`| head`)
        discard_stdout()
        print("error: standard output was closed (its reader went away); the run stopped "
              f"({stopped_hint(out_dir)})", file=sys.stderr)
        return 1
    except OutputFailed as e:  # a terminal that hung up, a full disk under `> file`
        discard_stdout()
        print(f"error: standard output could not be written: {e.strerror}; the run stopped "
              f"({stopped_hint(out_dir)})", file=sys.stderr)
        return 1
    except (TrainingDiverged, LostContact, OutOfMemory) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a file that cannot be written (a full disk), or an out_dir that cannot be used
        if e.filename is None or not e.strerror:  # (not_writable: before the run began)
            print(f"error: {e}", file=sys.stderr)
        else:
            first = "once space is freed, " if e.errno in NO_ROOM else ""
            print(f"error: {e.filename}: {e.strerror}; {stopped_hint(out_dir, first)}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        inherited = cfg is not None and cfg.run.init_from != "scratch"
        print(f"error: {out_of_memory_text(e, inherited)}; {stopped_hint(out_dir)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C outside the training loop, or a second one inside it
        if launch_rank() == 0 or grouped():  # (before the group, torchrun stopping every rank: rank 0 says it)
            print(f"\nerror: interrupted; the run stopped at once ({stopped_hint(out_dir)})", file=sys.stderr,
                  flush=True)
        return 130
    return 130 if result.interrupted or result.samples_interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
