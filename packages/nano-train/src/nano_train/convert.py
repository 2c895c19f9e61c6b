"""Between the PyTorch model and `.bin` files (through nano-format), and checkpoints.

    load_bin(path)                  any model file nano-format reads -> (Transformer, Tokenizer | None)
    export_bin(model, path, ...)    Transformer -> model file (F32 or Q8_0, layout 2026.1 or 2026.101)
    export_lora(model, path)        the attached LoRA -> LoRA file (layout 2024.10)
    load_lora_bin(model, path)      attach a LoRA file's adapters to a model
    emulate_q8_0(model, group)      weights -> their Q8_0 round trip, to compute what a Q8_0 file holds
    load_checkpoint_model(path)     training checkpoint (.pt) -> (Transformer, Tokenizer | None)
    load_model(path)                either of the two, told apart by the file's first bytes

Everything loaded is checked before use: sizes against nano-format's bounds and the
stored tensors' shapes before anything is allocated, the vocabulary against the
model, and every weight for NaN or inf.

The model's parameter names are the file's tensor names (see model.py), so the
mapping is a stack over layers: file "wq" [L, H*D, E] <-> layers.{i}.wq.weight [H*D, E].
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

import nano_format
from nano_format import ZIP_MAGIC, spec
from nano_format.quant import check_group_size

from . import checkpoint as ckpt_io
from .checkpoint import CheckpointError, check_state_dict, load_failure, load_mapped, non_finite, one_line
from .lora import LORA_TARGETS, LoRALinear, attach_lora, has_lora, has_unmerged_lora, load_lora_state_dict
from .model import ModelConfig, Transformer

__all__ = [
    "ConvertError",
    "ExportInfo",
    "load_bin",
    "export_bin",
    "export_lora",
    "load_lora_bin",
    "emulate_q8_0",
    "load_checkpoint_model",
    "load_model",
    "model_config_from_file",
    "file_config_from_model",
]

# Per-layer tensors: file name -> parameter name inside layers.{i}
LAYER_MATRICES = spec.MATRIX_TENSORS  # wq wk wv wo w1 w2 w3
LAYER_NORMS = ("norm_attn", "norm_ffn")


class ConvertError(ValueError):
    """A file or checkpoint that cannot become (or come from) this model. nano-format's
    own errors (bad files, impossible writes) arrive wrapped in it, the original as
    its __cause__, so callers catch one ValueError."""


@contextlib.contextmanager
def _format_errors():
    try:
        yield
    except nano_format.FormatError as e:
        raise ConvertError(str(e)) from e


# ---------------------------------------------------------------------------
# Configs


def model_config_from_file(fc, *, is_causal: bool | None = None) -> ModelConfig:
    """nano_format.Config -> ModelConfig. is_causal overrides the file's attention
    kind (old layouts cannot record full attention, e.g. the sort6 fixture)."""
    if fc.model_type != spec.ModelType.NANO:
        raise ConvertError(
            f"model type {fc.model_type.name} is not a Nano model; the PyTorch reference runs Nano models only"
        )
    if fc.head_dim * fc.n_head != fc.n_embd:
        raise ConvertError(f"head_dim {fc.head_dim} * n_head {fc.n_head} != n_embd {fc.n_embd}")
    return ModelConfig(
        block_size=fc.block_size,
        vocab_size=fc.vocab_size,
        n_layer=fc.n_layer,
        n_head=fc.n_head,
        n_kv_head=fc.n_kv_head,
        n_embd=fc.n_embd,
        n_hidden=fc.n_hidden,
        use_rope=fc.position == spec.Position.ROPE,
        norm_eps=float(fc.norm_eps),
        is_causal=(fc.attention == spec.Attention.CAUSAL) if is_causal is None else bool(is_causal),
        rope_theta=float(fc.rope_theta),
        tie_embeddings=bool(fc.tie_embeddings),
    )


def file_config_from_model(c: ModelConfig):
    """ModelConfig -> nano_format.Config (dropout is a training setting, not stored)."""
    return nano_format.Config(
        model_type=spec.ModelType.NANO,
        block_size=c.block_size,
        vocab_size=c.vocab_size,
        n_layer=c.n_layer,
        n_embd=c.n_embd,
        n_head=c.n_head,
        n_kv_head=c.n_kv_head,
        n_hidden=c.n_hidden,
        head_dim=c.head_dim,
        tie_embeddings=c.tie_embeddings,
        attention=spec.Attention.CAUSAL if c.is_causal else spec.Attention.FULL,
        position=spec.Position.ROPE if c.use_rope else spec.Position.LEARNED,
        norm_eps=c.norm_eps,
        rope_theta=c.rope_theta,
    )


def _needs_extension(c: ModelConfig) -> list[str]:
    """What layout 2026.1 cannot say about this model (it implies causal, RoPE,
    eps 1e-5 and theta 10000): each item is a reason to write 2026.101. Used to
    choose the layout and explain the choice; the writer enforces the rule."""
    why = []
    if not c.is_causal:
        why.append("full attention")
    if not c.use_rope:
        why.append("learned positions")
    # compared as float32, which is how the file would store them
    if np.float32(c.norm_eps) != np.float32(spec.DEFAULT_NORM_EPS):
        why.append(f"norm_eps {c.norm_eps:g}")
    if c.use_rope and np.float32(c.rope_theta) != np.float32(spec.DEFAULT_ROPE_THETA):
        why.append(f"rope_theta {c.rope_theta:g}")
    return why


# ---------------------------------------------------------------------------
# Model files


def _tensors_from_model(model: Transformer) -> dict[str, np.ndarray]:
    """The file's tensors (float32, logical shapes) from the model's current weights.
    A merged LoRA is part of the weights (export_bin refuses an unmerged one)."""
    c = model.config

    def arr(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float32).numpy().copy()

    def stack(name: str) -> np.ndarray:
        return np.stack([arr(getattr(layer, name).weight) for layer in model.layers])  # [L, ...]

    out = {name: stack(name) for name in LAYER_NORMS + LAYER_MATRICES}
    out["norm_final"] = arr(model.norm_final.weight)  # [E]
    out[spec.EMBEDDING] = arr(model.tok_embd.weight)  # [V, E]
    if c.use_rope:
        out["rope_cos"] = arr(model.rope_cos)  # [B, D/2]
        out["rope_sin"] = arr(model.rope_sin)
    else:
        out[spec.POS_EMBEDDING] = arr(model.pos_embd.weight)  # [B, E]
    if not c.tie_embeddings:
        out[spec.CLASSIFIER] = arr(model.lm_head.weight)  # [V, E]
    return out


@torch.no_grad()
def _load_tensors(model: Transformer, get) -> None:
    """Copy file tensors (get(name) -> float32 array) into the model's parameters."""
    c = model.config

    def put(param: torch.Tensor, value: np.ndarray, name: str) -> None:
        value = np.asarray(value, dtype=np.float32)
        if tuple(value.shape) != tuple(param.shape):
            raise ConvertError(f"tensor {name}: shape {value.shape} does not fit {tuple(param.shape)}")
        param.copy_(torch.from_numpy(np.array(value)))

    for name in LAYER_NORMS + LAYER_MATRICES:
        stacked = get(name)  # [L, ...]
        for i, layer in enumerate(model.layers):
            put(getattr(layer, name).weight, stacked[i], f"{name}[{i}]")
    put(model.norm_final.weight, get("norm_final"), "norm_final")
    put(model.tok_embd.weight, get(spec.EMBEDDING), spec.EMBEDDING)
    if c.use_rope:
        # The file carries the RoPE tables the engines will use: take them as they
        # are, so PyTorch rotates by exactly the same numbers.
        put(model.rope_cos, get("rope_cos"), "rope_cos")
        put(model.rope_sin, get("rope_sin"), "rope_sin")
    else:
        put(model.pos_embd.weight, get(spec.POS_EMBEDDING), spec.POS_EMBEDDING)
    if not c.tie_embeddings:
        put(model.lm_head.weight, get(spec.CLASSIFIER), spec.CLASSIFIER)


@contextlib.contextmanager
def _vocabulary_errors(path):
    """A vocabulary nano-tokenizer refuses (a duplicate token, no <|unknown|>, ...)
    is a bad file like any other: a ConvertError naming it, the original as its cause."""
    from nano_tokenizer import TokenizerError

    try:
        yield
    except TokenizerError as e:
        text = str(e)
        raise ConvertError(text if text.startswith(f"{path}:") else f"{path}: {text}") from e


def _tokenizer_from_entries(entries, path):
    if not entries:
        return None
    from nano_tokenizer import Tokenizer

    with _vocabulary_errors(path):
        return Tokenizer.from_tokens(entries, source=str(path))


def _attention(is_causal: bool) -> str:
    return "causal" if is_causal else "full"


def _check_attention(path, recorded: bool, asked: bool | None, checkpoint: bool = False) -> None:
    """An attention kind asked for (is_causal) is only for files that cannot record
    one (layouts 2025.12 and 2026.1); where the file (or a checkpoint) records it, it must agree."""
    if asked is not None and bool(asked) != recorded:
        why = ("a checkpoint keeps the attention its model was trained with" if checkpoint else
               "only a model file that cannot record it (layouts 2025.12 and 2026.1) takes the kind asked for")
        raise ConvertError(f"{path}: the {'checkpoint' if checkpoint else 'file'} records {_attention(recorded)} "
                           f"attention, not {_attention(asked)}: {why}")


def unrecorded_attention(path) -> str | None:
    """The layout of a model file that cannot record its attention kind (2025.12, 2026.1:
    it reads as causal, as the sort6 fixture, trained with full attention, does); None for
    any other file, a checkpoint included (it records the kind)."""
    try:
        with nano_format.read(path) as nf:
            return None if nf.layout.extension else nf.layout.name
    except Exception:  # (not a model file: a checkpoint, or one that load_model reports on)
        return None


def _check_vocabulary(path, tokenizer, config: ModelConfig) -> None:
    """A vocabulary of another size than the model's would index past the embedding
    (bigger) or fail on the first token beyond its end (smaller)."""
    if tokenizer is not None and tokenizer.vocab_size != config.vocab_size:
        raise ConvertError(
            f"{path}: the vocabulary has {tokenizer.vocab_size} tokens, the model {config.vocab_size}"
        )


def load_bin(path, *, is_causal: bool | None = None, device: str | torch.device = "cpu"):
    """Read a Nano model file into a Transformer (eval mode) and its Tokenizer
    (None when the file has no vocabulary). Q8_0 weights are dequantized, so the
    model computes what the file holds. is_causal sets the attention kind for
    layouts that cannot record it (2025.12 / 2026.1); for 2026.101, which records
    it, a different value is an error. Non-finite weights are refused."""
    if isinstance(path, (str, os.PathLike)):  # (nano-format also reads a bytes-like buffer)
        _check_regular(Path(path), "a model file")
    with _format_errors(), nano_format.read(path) as nf:
        if nf.model_type == spec.ModelType.LORA:
            raise ConvertError(f"{path}: this is a LoRA module, not a model: pass it with -l "
                               f"(load_lora_bin) on top of its base model")
        if nf.layout.extension:
            _check_attention(path, nf.config.attention == spec.Attention.CAUSAL, is_causal)
            is_causal = None
        config = model_config_from_file(nf.config, is_causal=is_causal)
        model = Transformer(config)
        _load_tensors(model, nf.tensor)  # copies: nothing refers to the mapping afterwards
        tokenizer = _tokenizer_from_entries(nf.tokens, path)
    _check_vocabulary(path, tokenizer, config)
    _check_finite([*model.named_parameters(), *model.named_buffers()], path)  # buffers: the file's RoPE tables
    return model.to(device).eval(), tokenizer


@dataclass
class ExportInfo:
    """What export_bin / export_lora wrote."""

    path: str
    bytes: int
    layout: str
    quant: str
    group_size: int
    note: str = ""  # e.g. why the layout was chosen

    def __str__(self) -> str:
        g = f", group size {self.group_size}" if self.quant == "q8_0" else ""
        s = f"wrote {self.path}: {self.bytes:,} bytes, layout {self.layout}, {self.quant}{g}"
        return s + (f" ({self.note})" if self.note else "")


_QUANTS = {"f32": spec.QuantType.F32, "q8_0": spec.QuantType.Q8_0}


def _check_finite(named_tensors, path=None) -> None:
    """Refuse NaN or inf weights (a run that diverged), on export and on load (path
    given): such a model loads and runs, and prints garbage."""
    bad = non_finite(named_tensors)
    if bad:
        where = f"{path}: " if path is not None else ""
        raise ConvertError(f"{where}{bad[0]} holds non-finite values (NaN or inf): the training run diverged; "
                           f"use an earlier checkpoint")


def _group_size(config: ModelConfig, group_size: int | None) -> int:
    """The Q8_0 group size a file of this model gets (nano-format's rule): settled
    before anything is written (reference defect 5)."""
    fc = file_config_from_model(config)
    if group_size is None:
        return nano_format.choose_group_size(fc)
    check_group_size(fc, int(group_size))
    return int(group_size)


def export_bin(
    model: Transformer,
    path,
    quant: str = "f32",
    group_size: int | None = None,
    layout: str | spec.Layout | None = None,
    tokenizer=None,
) -> ExportInfo:
    """Write the model (and its vocabulary, if given) as a `.bin` file.

    quant "f32" or "q8_0"; group_size None lets nano-format choose the largest
    group (<= 128) that divides every row. layout None picks 2026.1, the layout
    the reference engine reads, unless the model needs what only 2026.101 can
    record (full attention, learned positions, non-default eps or theta); asking
    for 2026.1 for such a model is an error. A model with LoRA adapters attached
    must have them merged (merge_lora): the file has no place for them apart.
    """
    c = model.config
    if has_unmerged_lora(model):
        raise ConvertError("the model has LoRA adapters that are not merged into its weights: merge_lora(model) "
                           "first to export them baked in, or export_lora(model, path) to write them apart "
                           "(and detach_lora(model) to export the base alone)")
    if quant not in _QUANTS:
        raise ConvertError(f"unknown quantization {quant!r}; choose one of {sorted(_QUANTS)}")
    if group_size is not None and quant != "q8_0":
        raise ConvertError(f"group_size applies to quant 'q8_0' only, not {quant!r}")
    notes = []
    if layout is None:
        why = _needs_extension(c)
        if tokenizer is None:
            why.append("a model without a vocabulary")
        layout = spec.LAYOUT_NANO_EXT_1.name if why else spec.DEFAULT_LAYOUT.name
        if why:
            notes.append(f"layout {layout} chosen automatically: 2026.1 cannot record {', '.join(why)}")
    # An explicit layout that cannot hold this model is refused by the writer,
    # with the reason, before anything is written.
    if tokenizer is not None and tokenizer.vocab_size != c.vocab_size:
        # the file's vocabulary section holds exactly vocab_size tokens (nano_format.spec)
        raise ConvertError(f"the tokenizer has {tokenizer.vocab_size} tokens, the model {c.vocab_size}; "
                           f"a .bin file stores one token per vocabulary entry")
    _check_finite((n, p) for n, p in model.named_parameters() if ".lora_" not in n)  # the weights written
    with _format_errors():
        g = _group_size(c, group_size) if quant == "q8_0" else 0
        nano_format.write(
            path,
            file_config_from_model(c),
            _tensors_from_model(model),
            tokens=None if tokenizer is None else tokenizer.to_tokens(),
            quant=_QUANTS[quant],
            group_size=g if quant == "q8_0" else None,
            layout=layout,
        )
    if quant == "q8_0" and group_size is None and g < SMALL_GROUP:
        notes.append(_small_group_note(c, g))
    name = layout.name if isinstance(layout, spec.Layout) else str(layout)
    return ExportInfo(str(path), os.path.getsize(path), name, quant, g, "; ".join(notes))


SMALL_GROUP = 8  # below this, a Q8_0 file's scales take half a byte per weight or more


def _small_group_note(c: ModelConfig, g: int) -> str:
    """Why an automatic Q8_0 group is small, and what it costs: each group of g weights
    carries a 4-byte scale."""
    size = "larger than" if 1 + 4 / g > 4 else f"{(1 + 4 / g) / 4:.0%} of"
    return (f"group size {g}, the largest that divides every quantized row (n_embd {c.n_embd}, "
            f"n_head * head_dim {c.n_head * c.head_dim}, n_hidden {c.n_hidden}): with a 4-byte scale per "
            f"group the weights take {1 + 4 / g:g} bytes each, {size} F32's 4; rows that are multiples "
            f"of 32 allow groups of 32")


@torch.no_grad()
def emulate_q8_0(model: Transformer, group_size: int | None = None) -> Transformer:
    """Replace every weight a Q8_0 file quantizes (tok_embd, wq..w3, lm_head) by its
    dequantized Q8_0 value, in place, so the model computes exactly what a Q8_0
    file of it holds. Norms and position tables stay float32, as in the file.
    group_size None uses the same choice as export_bin. Returns the model."""
    with _format_errors():
        g = _group_size(model.config, group_size)

    def q(param: torch.Tensor) -> None:
        w = param.detach().to("cpu", torch.float32).numpy()
        deq = nano_format.dequantize_q8_0(nano_format.quantize_q8_0(w, g))
        param.copy_(torch.from_numpy(np.array(deq, dtype=np.float32)))

    q(model.tok_embd.weight)
    for layer in model.layers:
        for name in LAYER_MATRICES:
            q(getattr(layer, name).weight)
    if model.lm_head is not None:
        q(model.lm_head.weight)
    return model


# ---------------------------------------------------------------------------
# LoRA files


def export_lora(model: Transformer, path) -> ExportInfo:
    """Write the attached (unmerged) LoRA adapters as a LoRA file (2024.10, F32).
    The file stores alpha as an integer, so alpha must be a whole number."""
    if not has_lora(model):
        raise ConvertError("the model has no LoRA attached")
    c = model.config
    layer0 = model.layers[0].wq
    rank, alpha = layer0.rank, layer0.alpha
    if float(alpha) != int(alpha):
        raise ConvertError(f"LoRA alpha {alpha} is not a whole number; the LoRA file stores it as an integer")
    _check_finite((n, p) for n, p in model.named_parameters() if ".lora_" in n)
    tensors = {}
    for t in LORA_TARGETS:
        mods = [getattr(layer, t) for layer in model.layers]
        if any(not isinstance(m, LoRALinear) or m.rank != rank or m.alpha != alpha for m in mods):
            raise ConvertError("every layer's wq, wk, wv, wo must carry LoRA of the same rank and alpha")
        if any(m.merged for m in mods):
            raise ConvertError("the LoRA is merged into the weights; unmerge_lora before exporting it")
        tensors[f"{t}_A"] = np.stack([m.lora_A.detach().to("cpu", torch.float32).numpy() for m in mods])  # [L, R, in]
        tensors[f"{t}_B"] = np.stack([m.lora_B.detach().to("cpu", torch.float32).numpy() for m in mods])  # [L, out, R]
    with _format_errors():
        lc = nano_format.LoraConfig(
            rank=rank, alpha=int(alpha), n_layer=c.n_layer, n_embd=c.n_embd,
            n_head=c.n_head, n_kv_head=c.n_kv_head, n_hidden=c.n_hidden,
        )
        nano_format.write_lora(path, lc, tensors)
    return ExportInfo(str(path), os.path.getsize(path), spec.LAYOUT_2024_10.name, "f32", 0,
                      f"LoRA rank {rank}, alpha {int(alpha)}")


def load_lora_bin(model: Transformer, path) -> Transformer:
    """Attach a LoRA file's adapters to the model (unmerged). The file's shape must
    match the model's. Returns the model."""
    with _format_errors(), nano_format.read(path) as nf:
        if nf.model_type != spec.ModelType.LORA:
            raise ConvertError(f"{path}: not a LoRA module (model type {nf.model_type.name})")
        lc = nf.config
        tensors = {name: np.array(nf.tensor(name), dtype=np.float32) for name in spec.LORA_TENSORS}
    _check_finite(tensors.items(), path)
    c = model.config
    mine = (c.n_layer, c.n_embd, c.n_head, c.n_kv_head)
    theirs = (lc.n_layer, lc.n_embd, lc.n_head, lc.n_kv_head)
    if mine != theirs:
        raise ConvertError(
            f"{path}: the LoRA is for (n_layer, n_embd, n_head, n_kv_head) = {theirs}, the model is {mine}"
        )
    if has_lora(model):
        raise ConvertError(f"{path}: cannot attach this LoRA: the model already has LoRA adapters attached")
    try:
        attach_lora(model, lc.rank, lc.alpha)
    except ValueError as e:  # alpha 0: the file can hold it, an adapter cannot use it
        raise ConvertError(f"{path}: {e}") from None
    sd = {}
    for t in LORA_TARGETS:
        a, b = tensors[f"{t}_A"], tensors[f"{t}_B"]  # [L, R, in], [L, out, R]
        for i in range(c.n_layer):
            sd[f"layers.{i}.{t}.lora_A"] = torch.from_numpy(a[i])
            sd[f"layers.{i}.{t}.lora_B"] = torch.from_numpy(b[i])
    p = model.tok_embd.weight
    load_lora_state_dict(model, {k: v.to(p.device, p.dtype) for k, v in sd.items()})
    return model


# ---------------------------------------------------------------------------
# Checkpoints


_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile, DistributedDataParallel


def _strip_prefixes(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        changed = isinstance(k, str)  # any other key is not one of ours: check_state_dict names it
        while changed:
            changed = False
            for p in _WRAPPER_PREFIXES:
                if k.startswith(p):
                    k = k[len(p):]
                    changed = True
        out[k] = v
    return out


def _check_regular(path: Path, what: str) -> None:
    """Refuse what is not a regular file (a FIFO, a device, a folder), saying which, before
    it is opened: opening a FIFO would wait for a writer, and no loader reads a stream."""
    mode = path.stat().st_mode  # a missing file: the OSError names it
    if not stat.S_ISREG(mode):
        raise ConvertError(f"{path}: is {nano_format.file_kind(mode)}, not {what}")


def _first_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(len(spec.MAGIC_BYTES))


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _checkpoint_config(path, d: dict) -> ModelConfig:
    """config["model"] -> ModelConfig, its types and sizes checked: a field of the
    wrong type must be an error naming the file (not a TypeError later), and sizes
    get nano-format's bounds (block_size <= 2^20, vocab_size <= 2^22, ...), the
    ones the .bin reader applies, before anything is allocated."""
    for f in fields(ModelConfig):  # ModelConfig checks its integers itself
        if f.name not in d:
            continue
        value = d[f.name]
        if f.type == "float" and not _is_real(value):
            raise ConvertError(f"{path}: config['model']['{f.name}'] must be a finite number, not {value!r}")
        if f.type == "bool" and not isinstance(value, bool):
            raise ConvertError(f"{path}: config['model']['{f.name}'] must be true or false, not {value!r}")
    try:
        config = ModelConfig.from_dict(d)
        file_config_from_model(config)
    except nano_format.FormatError as e:
        raise ConvertError(f"{path}: config['model']['{e.field}']: {e.message}") from None
    except ValueError as e:
        raise ConvertError(f"{path}: config['model']: {e}") from None
    return config


def _lora_settings(path, lora) -> tuple[int, float, float]:
    """The checkpoint's "lora" entry -> (rank, alpha, dropout) for attach_lora."""
    if not isinstance(lora, dict):
        raise ConvertError(f"{path}: 'lora' must be a dict of rank, alpha and dropout, not {type(lora).__name__}")
    rank, alpha, dropout = lora.get("rank"), lora.get("alpha"), lora.get("dropout", 0.0)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConvertError(f"{path}: lora['rank'] must be a positive integer, not {rank!r}")
    if not (_is_real(alpha) and alpha > 0):
        raise ConvertError(f"{path}: lora['alpha'] must be a number > 0, not {alpha!r}")
    if not (_is_real(dropout) and 0 <= dropout < 1):
        raise ConvertError(f"{path}: lora['dropout'] must be a number in [0, 1), not {dropout!r}")
    return rank, alpha, float(dropout)


def _check_shapes(path, sd: dict, config: ModelConfig, lora) -> None:
    """The stored tensors against the names and shapes the config gives them, read
    off a model built on "meta" (no storage), before the real one is allocated. Its
    RoPE tables are computed all the same and are not stored: block size 1 there."""
    shape_config = replace(config, block_size=1) if config.use_rope else config
    with torch.device("meta"):
        expected = Transformer(shape_config)
        if lora:
            attach_lora(expected, *lora)
    try:
        check_state_dict(path, sd, expected)
    except CheckpointError as e:
        raise ConvertError(str(e)) from None


def load_checkpoint_model(path, device: str | torch.device = "cpu"):
    """A training checkpoint (.pt) -> (Transformer in eval mode, Tokenizer | None).

    The checkpoint is a dict loadable with torch.load(weights_only=True):
      "model": the model's state dict (LoRA adapter keys included when "lora" is set),
      "config": {"model": ModelConfig.to_dict(), "train": {...}},
      "tokenizer": the reference vocabulary JSON dict (vocab_size, stoi, itos, special_tokens),
      "lora": {"rank", "alpha", "dropout"} when a LoRA was attached (optional).
    Every entry is checked (types, sizes, shapes, vocabulary size, finite weights)
    before the model is built; what does not fit is a ConvertError naming the file.
    """
    path = Path(path)
    _check_regular(path, "a checkpoint file")
    head = _first_bytes(path)
    if not head:
        raise ConvertError(f"{path}: not a checkpoint: the file is empty")
    if head == spec.MAGIC_BYTES:
        raise ConvertError(f"{path}: not a training checkpoint but a nano .bin file, which is already "
                           f"exported (sample -m and the engines read it)")
    try:
        ck = load_mapped(path)
    except Exception as e:  # unpickling errors have many types
        raise ConvertError(f"{path}: not a readable checkpoint ({load_failure(e)})") from None
    if not isinstance(ck, dict) or "model" not in ck or "config" not in ck:
        raise ConvertError(f"{path}: not a Nano checkpoint (needs 'model' and 'config' entries)")
    # (both entries are optional: a checkpoint of another trainer with our names loads)
    if ck.get("format", ckpt_io.FORMAT) != ckpt_io.FORMAT:
        raise ConvertError(f"{path}: checkpoint format {ck['format']!r} is not {ckpt_io.FORMAT!r}")
    if "version" in ck and (why := ckpt_io.version_error(ck)):
        raise ConvertError(f"{path}: {why}")
    if not isinstance(ck["model"], dict):
        raise ConvertError(f"{path}: 'model' must be a state dict, not {type(ck['model']).__name__}")
    cfg = ck["config"]
    model_cfg = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(model_cfg, dict):
        raise ConvertError(f"{path}: the checkpoint has no config['model'] dict")
    config = _checkpoint_config(path, model_cfg)
    lora = _lora_settings(path, ck["lora"]) if ck.get("lora") else None
    tokenizer = None
    if ck.get("tokenizer"):
        from nano_tokenizer import Tokenizer

        with _vocabulary_errors(path):
            tokenizer = Tokenizer.from_json_dict(ck["tokenizer"], source=str(path))
    _check_vocabulary(path, tokenizer, config)
    sd = _strip_prefixes(ck["model"])
    _check_shapes(path, sd, config, lora)
    _check_finite(sd.items(), path)

    model = Transformer(config)
    if lora:
        attach_lora(model, *lora)
    try:
        model.load_state_dict(sd)  # names and shapes checked above
    except RuntimeError as e:  # e.g. a dtype torch cannot copy: torch lists each on a line of its own
        raise ConvertError(f"{path}: the weights do not fit the model config: {one_line(e)}") from None
    return model.to(device).eval(), tokenizer


def load_model(path, *, is_causal: bool | None = None, device: str | torch.device = "cpu"):
    """A model file or a training checkpoint -> (Transformer in eval mode, Tokenizer | None),
    told apart by their first bytes (nano-format's magic, or a zip archive: what
    torch.save writes), not by their names: a checkpoint may be called best.ckpt.
    is_causal as for load_bin: a checkpoint records its attention kind, so there it
    must agree."""
    path = Path(path)
    _check_regular(path, "a model file or checkpoint")
    head = _first_bytes(path)
    if head == spec.MAGIC_BYTES:
        return load_bin(path, is_causal=is_causal, device=device)
    if head.startswith(ZIP_MAGIC):
        model, tokenizer = load_checkpoint_model(path, device)
        _check_attention(path, model.config.is_causal, is_causal, checkpoint=True)
        return model, tokenizer
    if head.lstrip().startswith(b"{"):
        raise ConvertError(f"{path}: a JSON file, a vocabulary perhaps: neither a Nano model file nor a training "
                           "checkpoint (each holds its own vocabulary)")
    what = nano_format.other_format(head) or (f"it starts with {head!r}" if head else "it is empty")
    raise ConvertError(f"{path}: neither a Nano model file nor a training checkpoint ({what})")


if __name__ == "__main__":  # a library module: say which commands convert, rather than do nothing
    import sys

    print("error: nano_train.convert is a library: `python -m nano_train.export --ckpt CKPT.pt --out MODEL.bin` "
          "writes a model file, `nano-format convert` converts one", file=sys.stderr)
    sys.exit(2)
