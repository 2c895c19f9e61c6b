"""Training configuration: one dataclass per concern, read from JSON plus
`--key=value` overrides.

A config file is a JSON object with one object per section:

    {"model":  {...ModelConfig fields...},
     "run":    {"task": "pretrain", "out_dir": "runs/psycho", "init_from": "scratch", ...},
     "data":   {"dataset": "data/psycho", "batch_size": 32},
     "optim":  {"learning_rate": 1e-3, "max_iters": 2000, ...},
     "eval":   {"eval_interval": 200, ...},
     "system": {"device": "auto", "dtype": "auto", ...},
     "lora":   {"lora_rank": 8, ...}}

Field names follow the reference trainer where it has one (batch_size,
learning_rate, warmup_iters, ...). Every section and every key is optional;
unknown sections or keys are an error, and every value is type-checked.

Overrides on the command line are `--section.key=value`, or `--key=value` when
the key names exactly one field across all sections (true of every field
today). Values are parsed by the field's type: `--compile=true`,
`--n_hidden=none`, `--sample_prompts='["你是谁"]'` (JSON for lists).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import stat
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nano_format import JSONTextError, file_kind, open_without_waiting, parse_json, spec

from nano_train import DEFAULT_SEED, FLOAT_TEXT, INT_TEXT
from nano_train.matmul import MATMULS
from nano_train.metrics import short_repr
from nano_train.model import ModelConfig

TASKS = ("pretrain", "sft", "lora")
MAX_DIST_TIMEOUT = 1e9  # seconds, about 31 years: datetime.timedelta holds no more than 1e14
DTYPES = ("auto", "float32", "bfloat16", "float16")
# The devices a run names (system.device, and sample --device): torch also takes "cpu:1"
# or "mps:0", which are the one CPU or GPU again, and other backends the runs are not made for
DEVICE_NAMES = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
DEVICES_TEXT = "auto, cpu, cuda, cuda:N or mps"
# dtype auto on a CPU with bfloat16 instructions: bfloat16 from this width (n_embd) up,
# float32 below it, where the products are too small for bfloat16's speed to pay for the
# casts around them (tokens/s bfloat16 / float32, Intel Xeon with AMX: width 64 0.6x,
# 128 0.9x, 144 1.0x, 160 1.04x, 256 1.5x; tools/bench/README.md, "bfloat16 on a CPU, by width")
CPU_BF16_MIN_EMBD = 160
ATTENTION_BACKENDS = ("auto", "math", "flash", "efficient", "cudnn")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
LOSSES = ("auto", "blocked", "plain")
DIST_BACKENDS = ("auto", "nccl", "gloo")
MAX_THREADS = 1024  # torch.set_num_threads(99999) crashes the process
# Every other integer setting (sizes, counts, intervals) must fit a signed 32-bit
# int: nothing sensible is larger, and larger values would otherwise reach numpy or
# torch (a batch of 10^20 sequences) and fail there with a traceback, or run for ever.
# The model's sizes have tighter bounds, those of the .bin format (nano_format.spec).
MAX_INT = 2**31 - 1
# The LoRA file (layout 2024.10) stores alpha as a uint32, so `export --lora-out`
# can write only a whole alpha in [1, MAX_LORA_ALPHA] (a float such as 16.0 is fine).
MAX_LORA_ALPHA = 2**32 - 1


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says which key and why."""


@dataclass
class RunConfig:
    """What to train and where it goes."""

    task: str = "pretrain"  # pretrain | sft | lora (the command sets it)
    out_dir: str = "runs/nano"  # checkpoints, log.jsonl, report.md
    # "scratch", "resume" (out_dir/latest.pt), or a base model: a .pt checkpoint or a .bin file
    init_from: str = field(default="scratch", metadata={"help": "scratch, resume, or a .pt or .bin base model"})
    checkpoint_interval: int = 0  # steps between latest.pt writes; 0 = every eval_interval
    keep_checkpoints: bool = False  # also keep ckpt_<step>.pt (ckpt_000200.pt) at each checkpoint
    keep_last: int = 0  # with keep_checkpoints: keep only the newest N ckpt_<step>.pt (0 = all)
    log_interval: int = 10  # steps between progress lines / log records
    # Start a new run (scratch or a base model) in an out_dir that holds an earlier
    # run's checkpoints or log: delete them first. Without it the commands refuse.
    overwrite: bool = False


@dataclass
class DataConfig:
    """The prepared dataset (`python -m nano_train.prepare`) and how it is batched."""

    dataset: str = ""  # directory holding meta.json and the shards
    batch_size: int = 16  # sequences per micro-batch per process


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule (linear warmup, cosine decay to min_lr)."""

    learning_rate: float = 6e-4
    min_lr: float = 6e-5
    warmup_iters: int = 100
    lr_decay_iters: int = 0  # step where the cosine reaches min_lr; 0 = max_iters
    max_iters: int = 2000  # optimizer steps
    # Seconds of training after which the run stops (at a step boundary, then the
    # final evaluation and checkpoint), 0 = no limit. The learning-rate decay then
    # follows whichever of steps and time is further along, so it completes.
    time_budget: float = 0.0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    # Micro-batches per optimizer step over ALL processes: each of W DDP ranks
    # runs gradient_accumulation_steps / W of them, so the global batch is
    # batch_size * gradient_accumulation_steps whatever W is.
    gradient_accumulation_steps: int = 1


@dataclass
class EvalConfig:
    """Held-out evaluation and the report card's samples."""

    eval_interval: int = 200  # steps between validation passes (and best.pt checks)
    eval_iters: int = 20  # validation micro-batches per pass, over all processes; 0 = no validation
    sample_prompts: list = field(default_factory=list)  # report card: texts (pretrain) or questions (sft/lora)
    sample_tokens: int = 64  # new tokens per report-card sample
    sample_temperature: float = 0.0  # 0 = greedy


def auto_device() -> str:
    """The device "auto" names: cuda, then mps, then cpu, the first this machine has."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@dataclass
class SystemConfig:
    """Where and how the arithmetic runs."""

    device: str = field(default="auto", metadata={"help": "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps"})
    # auto: train.resolve_dtype, bfloat16 where the device computes it natively (CUDA with
    # bf16, CPUs with AVX512-BF16 or AMX for a model at least CPU_BF16_MIN_EMBD wide),
    # float16 on older CUDA, else float32
    dtype: str = field(default="auto", metadata={"help": ", ".join(DTYPES)
                                                  + "; auto = bfloat16 where the device computes it natively (on a "
                                                  f"CPU, for a model at least {CPU_BF16_MIN_EMBD} wide), float16 on "
                                                  "older GPUs, else float32"})
    compile: bool = False  # torch.compile the model
    compile_mode: str = field(default="default", metadata={"help": "torch.compile's mode: " + ", ".join(COMPILE_MODES)})
    # auto (blocked on a CPU, plain on a GPU) | blocked (classifier + loss a block of rows at a
    # time, no [B, T, V] logits, outside a compiled graph) | plain (the logits, inside it)
    loss: str = field(default="auto", metadata={"help": ", ".join(LOSSES) + "; auto = blocked on a CPU, plain on a GPU"})
    # the projections' float32 products on a CPU (nano_train.matmul): auto = oneDNN on an
    # AMD x86-64 CPU when the run is float32, else torch's F.linear
    matmul: str = field(default="auto", metadata={"help": ", ".join(MATMULS) + "; auto = oneDNN for float32 on an "
                                                   "AMD x86-64 CPU, else torch"})
    # torch.nn.attention.sdpa_kernel's backend; auto = let SDPA choose
    attention_backend: str = field(default="auto", metadata={"help": ", ".join(ATTENTION_BACKENDS)})
    seed: int = DEFAULT_SEED
    threads: int = 0  # CPU threads for PyTorch's intra-op parallelism; 0 = PyTorch's default
    peak_flops: float = 0.0  # per-device peak FLOP/s for MFU; 0 = built-in GPU table or a CPU matmul probe
    dist_backend: str = field(default="auto", metadata={"help": "torchrun only: auto (nccl on CUDA, else gloo), "
                                                          "nccl, gloo"})
    # how long a collective waits for the other ranks before this rank stops with an error (a rank
    # that hangs, or a node cut off without its connections closing); it must exceed the longest
    # time one rank can wait for another (rank 0 saving a checkpoint, the first step's compilation)
    dist_timeout: float = field(default=0.0, metadata={"help": "torchrun only: seconds a rank waits for the others "
                                                       "in a collective; 0 = torch's default (30 min with gloo, "
                                                       "10 min with nccl)"})


@dataclass
class LoraConfig:
    """Low-rank adapters (task lora only)."""

    lora_rank: int = 8
    lora_alpha: float = field(default=16.0, metadata={"help": f"a whole number in [1, {MAX_LORA_ALPHA}]"})
    lora_dropout: float = 0.0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    system: SystemConfig = field(default_factory=SystemConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)

    def train_dict(self) -> dict:
        """Every section but the model: the checkpoint's config["train"]."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS if name != "model"}

    def to_dict(self) -> dict:
        return {"model": self.model.to_dict(), **self.train_dict()}


SECTIONS = {
    "model": ModelConfig,
    "run": RunConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "eval": EvalConfig,
    "system": SystemConfig,
    "lora": LoraConfig,
}


# ---------------------------------------------------------------------------
# Typing: one checker per annotation kind, shared by JSON values and CLI strings


def _field_types(cls) -> dict[str, object]:
    # get_type_hints resolves string annotations (modules using `from __future__ import annotations`)
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _describe(tp) -> str:
    if tp is list or typing.get_origin(tp) is list:
        return "a list of strings"
    args = typing.get_args(tp)
    if args and type(None) in args:
        inner = [a for a in args if a is not type(None)][0]
        return f"{_describe(inner)} or null"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _check_value(tp, value):
    """Return value converted to tp (int -> float only), or raise TypeError."""
    args = typing.get_args(tp)
    if args and type(None) in args:  # Optional[X] / X | None
        if value is None:
            return None
        return _check_value([a for a in args if a is not type(None)][0], value)
    # numpy's numbers and os.PathLike paths (a notebook's np.int64(8), Path("runs/x")) are
    # kept as Python's, so that the config prints as JSON and a checkpoint loads with
    # weights_only=True
    if tp is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
    elif tp is int:
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
            try:
                return _finite(float(value))
            except OverflowError:  # a JSON integer of hundreds of digits
                raise TypeError("expected a finite number, got an integer too large for a float") from None
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike) and isinstance(os.fspath(value), str):
            return os.fspath(value)
    elif tp is list or typing.get_origin(tp) is list:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    raise TypeError(f"expected {_describe(tp)}, got {_show(value)}")


def _show(value) -> str:
    """A value for an error message: its JSON, cut short (a value can be megabytes or
    nested too deeply for json.dumps)."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (RecursionError, ValueError):
        text = f"a deeply nested {type(value).__name__}"
    except TypeError:  # not a JSON value at all: a Path, a numpy array, an object
        text = f"{type(value).__name__} {value!r}"
    return text if len(text) <= 80 else text[:77] + "..."


def _finite(x: float) -> float:
    """No setting means anything at inf or nan (JSON's Infinity and NaN, '--lr=inf', '1e999')."""
    if not math.isfinite(x):
        raise TypeError(f"expected a finite number, got {x}")
    return x


def _parse_text(tp, text: str):
    """A command-line string as a value of type tp."""
    args = typing.get_args(tp)
    if args and type(None) in args:
        if text.lower() in ("none", "null"):
            return None
        return _parse_text([a for a in args if a is not type(None)][0], text)
    if tp is bool:
        low = text.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise TypeError(f"expected true or false, got {text!r}")
    if tp is int:  # ASCII digits only (INT_TEXT, FLOAT_TEXT)
        if not INT_TEXT.fullmatch(text):
            raise TypeError(f"expected an integer, got {short_repr(text, 60)}")
        try:
            return int(text)
        except ValueError:  # more digits than Python converts
            raise TypeError(f"expected an integer, got {short_repr(text, 60)}") from None
    if tp is float:
        if not FLOAT_TEXT.fullmatch(text):
            raise TypeError(f"expected a number, got {short_repr(text, 60)}")
        return _finite(float(text))
    if tp is str:
        return text
    if tp is list or typing.get_origin(tp) is list:
        try:
            value = parse_json(text)
        except JSONTextError:
            raise TypeError(f"expected a JSON list of strings, got {_show(text)}") from None
        return _check_value(tp, value)
    raise TypeError(f"cannot parse {tp}")


def key_type(name: str):
    """The type of config key `name` ("max_iters", "optim.max_iters", hyphens allowed), or
    None when there is no such key (or a bare name is in several sections)."""
    name = name.replace("-", "_")
    section, _, key = name.rpartition(".")
    if section:
        return _field_types(SECTIONS[section]).get(key) if section in SECTIONS else None
    where = _key_index().get(key, [])
    return _field_types(SECTIONS[where[0]])[key] if len(where) == 1 else None


# short names other trainers use, too far from ours for a spelling match
ALIASES = {"lr": "learning_rate", "bs": "batch_size", "iters": "max_iters", "steps": "max_iters",
           "wd": "weight_decay", "clip": "grad_clip", "accum": "gradient_accumulation_steps",
           "grad_accum": "gradient_accumulation_steps", "warmup": "warmup_iters", "ctx": "block_size",
           "context_length": "block_size", "seq_len": "block_size", "layers": "n_layer", "n_layers": "n_layer",
           "heads": "n_head", "n_heads": "n_head", "dim": "n_embd", "d_model": "n_embd", "data": "dataset"}


def unknown_key_hint(key: str, section: str | None = None) -> str:
    """What to write instead of an unknown key: the section a key of that name is in (when it
    was put in another), else the closest key names (a misspelling), else nothing."""
    index = _key_index()
    if section is not None and key in index:
        return f" ({key} is a key of {' and '.join(index[key])}, not of {section})"
    names = list(_field_types(SECTIONS[section])) if section is not None else list(index)
    if ALIASES.get(key) in names:
        return f" (did you mean {ALIASES[key]}?)"
    close = difflib.get_close_matches(key, names, n=2, cutoff=0.75)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def _key_index() -> dict[str, list[str]]:
    """field name -> the sections that have it (to resolve bare --key overrides)."""
    index: dict[str, list[str]] = {}
    for section, cls in SECTIONS.items():
        for name in _field_types(cls):
            index.setdefault(name, []).append(section)
    return index


# ---------------------------------------------------------------------------
# Loading


def _sections_from_json(data, source: str) -> dict[str, dict]:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config is a JSON object of sections, got {type(data).__name__}")
    out: dict[str, dict] = {}
    for section, values in data.items():
        if section not in SECTIONS:
            where = _key_index().get(section)
            hint = (f" ({section} is a key of section {' and '.join(where)}: write {{\"{where[0]}\": "
                    f"{{\"{section}\": ...}}}})" if where else "")
            raise ConfigError(f"{source}: unknown section {section!r}{hint}; sections are {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {section!r} must be a JSON object")
        types = _field_types(SECTIONS[section])
        for key, value in values.items():
            if key not in types:
                raise ConfigError(f"{source}: unknown key {section}.{key}{unknown_key_hint(key, section)}; "
                                  f"{section} keys are {', '.join(types)}")
            try:
                value = _check_value(types[key], value)
            except TypeError as e:
                raise ConfigError(f"{source}: {section}.{key}: {e}") from None
            out.setdefault(section, {})[key] = value
    return out


def parse_overrides(overrides: list[str]) -> dict[str, dict]:
    """['--optim.learning_rate=1e-3', '--seed=1'] -> {"optim": {"learning_rate": 0.001}, "system": {"seed": 1}}."""
    index = _key_index()
    out: dict[str, dict] = {}
    for arg in overrides:
        m = re.fullmatch(r"--([A-Za-z_][\w.-]*)=(.*)", arg, flags=re.S)
        if not m:
            raise ConfigError(f"override {short_repr(arg, 80)}: expected --key=value or --section.key=value")
        name, text = m.group(1).replace("-", "_"), m.group(2)  # --max-iters is --max_iters
        if "." in name:
            section, key = name.split(".", 1)
            if section not in SECTIONS:
                raise ConfigError(f"override {short_repr(arg, 80)}: unknown section {section!r}; sections are {', '.join(SECTIONS)}")
            if key not in _field_types(SECTIONS[section]):
                raise ConfigError(f"override {short_repr(arg, 80)}: unknown key {name}{unknown_key_hint(key, section)}")
        else:
            key = name
            where = index.get(key)
            if not where:
                raise ConfigError(f"override {short_repr(arg, 80)}: unknown key {key!r}{unknown_key_hint(key)}")
            if len(where) > 1:
                raise ConfigError(f"override {short_repr(arg, 80)}: {key!r} is in several sections ({where}); write --section.{key}=...")
            section = where[0]
        try:
            value = _parse_text(_field_types(SECTIONS[section])[key], text)
        except TypeError as e:
            raise ConfigError(f"override {short_repr(arg, 80)}: {e}") from None
        out.setdefault(section, {})[key] = value
    return out


def _merge(base: dict[str, dict], top: dict[str, dict]) -> dict[str, dict]:
    out = {s: dict(v) for s, v in base.items()}
    for section, values in top.items():
        out.setdefault(section, {}).update(values)
    return out


def build_config(values: dict[str, dict]) -> Config:
    """Sections of checked values -> Config (defaults for what is missing), validated."""
    try:
        model = ModelConfig.from_dict(values.get("model", {}))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model: {e}") from None
    parts = {name: cls(**values.get(name, {})) for name, cls in SECTIONS.items() if name != "model"}
    cfg = Config(model=model, **parts)
    validate(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] = (), defaults: dict | None = None,
                base: dict | None = None) -> tuple[Config, set[str]]:
    """Resolve a config: defaults < base (e.g. a checkpoint's config) < file < overrides.

    Returns the Config and the set of "section.key" names the file or the
    overrides set explicitly (the trainer fills a few unset ones, such as
    model.vocab_size, from the data).
    """
    values: dict[str, dict] = {}
    if defaults:
        values = _merge(values, _sections_from_json(defaults, "<defaults>"))
    if base:
        values = _merge(values, _sections_from_json(base, "<checkpoint config>"))
    explicit: set[str] = set()
    if path is not None:
        path = Path(path)
        try:
            fd, mode = open_without_waiting(path)  # checked before reading: a FIFO would wait for a writer forever
            with open(fd, "rb") as f:
                if stat.S_ISFIFO(mode):
                    raise ConfigError(f"{path}: cannot read config: it is {file_kind(mode)}, not a file")
                raw = f.read(MAX_CONFIG_BYTES + 1)  # /dev/zero must not eat the memory
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config: {e.strerror or e}") from None
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; not a config file")
        try:
            text = raw.decode("utf-8").removeprefix("\ufeff")  # an editor's byte order mark is fine
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); a config is a UTF-8 JSON file") from None
        try:
            data = parse_json(text, unique_keys=True)  # {"n_layer": 2, "n_layer": 3} is a mistake, not 3
        except JSONTextError as e:
            raise ConfigError(f"{path}: not valid JSON: {e}") from None
        from_file = _sections_from_json(data, str(path))
        values = _merge(values, from_file)
        explicit |= {f"{s}.{k}" for s, v in from_file.items() for k in v}
    from_cli = parse_overrides(list(overrides))
    values = _merge(values, from_cli)
    explicit |= {f"{s}.{k}" for s, v in from_cli.items() for k in v}
    return build_config(values), explicit


# The settings that name files
PATH_FIELDS = ("out_dir", "init_from", "dataset")
# A config file is a few KB; more than this is not one (and /dev/zero never ends)
MAX_CONFIG_BYTES = 16 << 20


def _not_utf8(value) -> bool:
    """A str (or a list of them) holding lone surrogates: JSON's "\\ud800", or bytes
    that are not UTF-8 on the command line, which Python passes as surrogate escapes.
    They cannot be written to log.jsonl, the checkpoint's config or a report."""
    for text in value if isinstance(value, list) else [value]:
        if isinstance(text, str):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


def _unnameable(path: str) -> str | None:
    """Why path cannot name a file here, where its characters are not in the file system's
    encoding (a Chinese name from a config file under a Latin-1 locale), else None."""
    try:
        os.fsencode(path)
    except UnicodeEncodeError as e:
        return (f"{path[e.start:e.end]!r} is not in its file names' encoding ({sys.getfilesystemencoding()}; "
                "a UTF-8 locale, e.g. LANG=C.UTF-8, has every character)")
    return None


def check(cfg: Config) -> None:
    """A Config built in code, as load_config builds one from text: every section
    present, every value of its field's type (an int where a float goes is fine), then
    validate(). nano_train.train.train() calls it first, so that a wrong value is a
    ConfigError naming the key, not an error deep in the run. Values are converted in
    place where a notebook's are of another type that means the same: a numpy number
    becomes Python's, a pathlib.Path its string."""
    if not isinstance(cfg, Config):
        raise ConfigError(f"expected a nano_train.config.Config, got {type(cfg).__name__}")
    for name, cls in SECTIONS.items():
        part = getattr(cfg, name)
        if not isinstance(part, cls):
            raise ConfigError(f"{name}: expected {cls.__name__}, got {type(part).__name__}")
        if name == "model":  # ModelConfig checks its own values when it is made
            continue
        for key, tp in _field_types(cls).items():
            try:
                setattr(part, key, _check_value(tp, getattr(part, key)))
            except TypeError as e:
                raise ConfigError(f"{name}.{key}: {e}") from None
    validate(cfg)


def validate(cfg: Config) -> None:
    """Range and choice checks that a type check cannot express."""

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    for section in SECTIONS:
        part = getattr(cfg, section)
        for f in dataclasses.fields(part):
            value = getattr(part, f.name)
            if _not_utf8(value):
                why = (" (a file name that is not UTF-8 is legal here, but the run's log and checkpoint "
                       "record it as JSON text; use a UTF-8 name)") if f.name in PATH_FIELDS else ""
                raise ConfigError(f"{section}.{f.name}: {ascii(value)[:80]} is not valid UTF-8 text{why}")
            if f.name in PATH_FIELDS and isinstance(value, str) and (lacks := _unnameable(value)):
                raise ConfigError(f"{section}.{f.name}: {value!r} cannot be a file name on this system: "
                                  f"{lacks}")
            if f.name in PATH_FIELDS and isinstance(value, str) and "\0" in value:
                raise ConfigError(f"{section}.{f.name}: {ascii(value)[:80]} holds a NUL character, which no file "
                                  "name can")
            if (section != "model" and f.name not in ("seed", "threads") and isinstance(value, int)
                    and not isinstance(value, bool)):
                need(value <= MAX_INT, f"{section}.{f.name} must be at most {MAX_INT}, got {value}")

    need(cfg.run.task in TASKS, f"run.task must be one of {TASKS}, got {cfg.run.task!r}")
    need(bool(cfg.run.out_dir), "run.out_dir must not be empty")
    need(bool(cfg.run.init_from), "run.init_from must be 'scratch', 'resume' or a model path")
    need(cfg.run.checkpoint_interval >= 0, "run.checkpoint_interval must be >= 0")
    need(cfg.run.log_interval >= 1, "run.log_interval must be >= 1")
    need(cfg.run.keep_last >= 0, f"run.keep_last must be >= 0 (0 = keep every ckpt_<step>.pt), got {cfg.run.keep_last}")
    need(cfg.data.batch_size >= 1, "data.batch_size must be >= 1")
    # (a base model's block_size is known once it is loaded: a batch too large for its data is refused then)
    need(cfg.run.init_from not in ("scratch", "resume") or cfg.data.batch_size * cfg.model.block_size <= MAX_INT,
         f"data.batch_size * model.block_size (tokens per micro-batch) must be at most {MAX_INT}, "
         f"got {cfg.data.batch_size} * {cfg.model.block_size}")
    o = cfg.optim
    need(o.learning_rate > 0, "optim.learning_rate must be > 0")
    need(0 <= o.min_lr <= o.learning_rate,
         f"optim.min_lr must be in [0, learning_rate = {o.learning_rate:g}], got {o.min_lr:g}")
    need(o.warmup_iters >= 0, "optim.warmup_iters must be >= 0")
    need(o.lr_decay_iters >= 0, "optim.lr_decay_iters must be >= 0 (0 = max_iters)")
    need(o.max_iters >= 0, "optim.max_iters must be >= 0")
    need(o.time_budget >= 0, "optim.time_budget must be >= 0 (0 = no limit)")
    need(o.weight_decay >= 0, "optim.weight_decay must be >= 0")
    need(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, "optim.beta1 and beta2 must be in [0, 1)")
    need(o.grad_clip >= 0, "optim.grad_clip must be >= 0 (0 = off)")
    need(o.gradient_accumulation_steps >= 1, "optim.gradient_accumulation_steps must be >= 1")
    e = cfg.eval
    need(e.eval_interval >= 1, "eval.eval_interval must be >= 1")
    need(e.eval_iters >= 0, "eval.eval_iters must be >= 0 (0 = no validation)")
    need(e.sample_tokens >= 0, "eval.sample_tokens must be >= 0")
    need(e.sample_temperature >= 0, "eval.sample_temperature must be >= 0")
    s = cfg.system
    need(DEVICE_NAMES.fullmatch(s.device) is not None, f"system.device must be {DEVICES_TEXT}, got {s.device!r}")
    need(s.dtype in DTYPES, f"system.dtype must be one of {DTYPES}, got {s.dtype!r}")
    need(s.attention_backend in ATTENTION_BACKENDS,
         f"system.attention_backend must be one of {ATTENTION_BACKENDS}, got {s.attention_backend!r}")
    need(s.compile_mode in COMPILE_MODES, f"system.compile_mode must be one of {COMPILE_MODES}, got {s.compile_mode!r}")
    need(s.loss in LOSSES, f"system.loss must be one of {LOSSES}, got {s.loss!r}")
    need(s.matmul in MATMULS, f"system.matmul must be one of {MATMULS}, got {s.matmul!r}")
    need(s.dist_backend in DIST_BACKENDS, f"system.dist_backend must be one of {DIST_BACKENDS}, got {s.dist_backend!r}")
    need(0 <= s.seed < 2**63, f"system.seed must be in [0, 2^63), got {s.seed}")
    need(s.threads >= 0, "system.threads must be >= 0 (0 = PyTorch's default)")
    need(s.threads <= MAX_THREADS, f"system.threads must be at most {MAX_THREADS} (the C engine's limit too), "
         f"got {s.threads}")
    need(s.peak_flops >= 0, "system.peak_flops must be >= 0 (0 = estimate)")
    need(s.dist_timeout == 0 or 1 <= s.dist_timeout <= MAX_DIST_TIMEOUT,
         f"system.dist_timeout must be 0 (torch's default) or in [1, {MAX_DIST_TIMEOUT:g}] seconds, "
         f"got {s.dist_timeout:g}")
    need(cfg.lora.lora_rank >= 1, "lora.lora_rank must be >= 1")
    need(cfg.lora.lora_rank <= spec.MAX_DIM, f"lora.lora_rank must be at most {spec.MAX_DIM} (the .bin format's "
         f"limit), got {cfg.lora.lora_rank}")
    alpha = cfg.lora.lora_alpha
    need(float(alpha).is_integer() and 1 <= alpha <= MAX_LORA_ALPHA,
         f"lora.lora_alpha must be a whole number in [1, {MAX_LORA_ALPHA}] (the LoRA file stores it as a "
         f"32-bit unsigned integer), got {alpha!r}")
    need(0 <= cfg.lora.lora_dropout < 1, "lora.lora_dropout must be in [0, 1)")


def help_text() -> str:
    """Every section and key with its type and default, for --help."""
    lines = []
    for section, cls in SECTIONS.items():
        lines.append(f"  [{section}]")
        types = _field_types(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            line = f"    {f.name:<28} {_describe(types[f.name]):<24} default {json.dumps(default, ensure_ascii=False)}"
            lines.append(f"{line}  ({f.metadata['help']})" if "help" in f.metadata else line)
    return "\n".join(lines)
