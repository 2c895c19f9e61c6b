"""The Nano reference model in PyTorch: a small Llama-style Transformer.

This module holds the model only (training settings live with training). Its
parameter names follow the `.bin` tensor names of `nano_format.spec`, so that
import and export are a rename-free mapping:

    tok_embd.weight                 [V, E]        token embedding
    pos_embd.weight                 [B, E]        learned positions (use_rope=False only)
    layers.{i}.norm_attn.weight     [E]           pre-attention RMSNorm
    layers.{i}.wq.weight            [H*D, E]
    layers.{i}.wk.weight            [K*D, E]
    layers.{i}.wv.weight            [K*D, E]
    layers.{i}.wo.weight            [E, H*D]
    layers.{i}.norm_ffn.weight      [E]           pre-FFN RMSNorm
    layers.{i}.w1.weight            [F, E]        gate
    layers.{i}.w3.weight            [F, E]        up
    layers.{i}.w2.weight            [E, F]        down
    norm_final.weight               [E]
    lm_head.weight                  [V, E]        only when the classifier is not tied

(V vocab, E n_embd, H n_head, K n_kv_head, D head_dim = E / H, F n_hidden,
B block_size.) The RoPE tables are buffers, not parameters: a new model takes
them from `nano_format.rope_tables` (what the writer stores); a model loaded
from a file takes the file's own tables, which the engines use too.

Conventions every engine must reproduce:
  - RMSNorm in float32: x * rsqrt(mean(x^2) + eps) * w.
  - RoPE rotates interleaved pairs (x[2i], x[2i+1]) by angle t * theta^(-2i/D).
  - Grouped-query attention: query head h reads KV head h // (H / K).
  - FFN: w2(silu(w1 x) * w3 x).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from numbers import Real

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from nano_format import rope_tables, spec
from torch.torch_version import TorchVersion

from .losses import check_id_dtype, check_id_range, linear_cross_entropy
from .matmul import Linear, linear

F32_MAX = float(np.finfo(np.float32).max)

__all__ = ["ModelConfig", "Transformer", "KVCache", "decay_groups", "derive_n_hidden", "apply_rope"]

# Newer torch has these; older torch (>= 2.3) takes the equivalent longer way.
_HAS_RMS_NORM = hasattr(F, "rms_norm")  # torch 2.4
_SDPA_GQA = TorchVersion(torch.__version__) >= "2.5"  # scaled_dot_product_attention(enable_gqa=)


def derive_n_hidden(n_embd: int, multiple_of: int = 32) -> int:
    """The SwiGLU width used when none is given: 2/3 of 4*E, rounded up to `multiple_of`.

    For n_embd 32: 4*32 = 128 -> int(2*128/3) = 85 -> 96 (the psycho fixture's value).
    """
    hidden = int(2 * (4 * n_embd) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


# ModelConfig's integer sizes and the most a .bin header may hold of each
_SIZE_LIMITS = (("block_size", spec.MAX_DIM), ("vocab_size", spec.MAX_VOCAB), ("n_layer", spec.MAX_LAYERS),
                ("n_head", spec.MAX_HEADS), ("n_kv_head", spec.MAX_HEADS), ("n_embd", spec.MAX_DIM),
                ("n_hidden", spec.MAX_DIM))


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyperparameters; everything a `.bin` header (2026.101) can record.

    Frozen: a model copies some of these into its modules when it is built (the norms'
    eps, the attention's causality, the RoPE tables), so a config changed afterwards
    would describe another model than the one export writes. Make a changed copy with
    dataclasses.replace(config, norm_eps=...) and build a new model from it."""

    block_size: int = 512
    vocab_size: int = 8192
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # None -> n_head (no grouped-query attention); an int after init
    n_embd: int = 256
    n_hidden: int | None = None  # None -> derive_n_hidden(n_embd); always an int after init
    dropout: float = 0.0
    bias: bool = False
    use_rope: bool = True  # False -> learned absolute position embeddings
    norm_eps: float = 1e-5
    is_causal: bool = True  # False -> full (bidirectional) attention, e.g. sort6
    rope_theta: float = 10000.0
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        # true/false settings are bools ("false" would be true) and numbers are numbers;
        # numpy's are kept as Python's, so that a checkpoint loads with weights_only=True
        for name in ("bias", "use_rope", "is_causal", "tie_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"ModelConfig.{name} must be True or False, got {value!r}")
            object.__setattr__(self, name, bool(value))
        for name in ("dropout", "norm_eps", "rope_theta"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real):
                raise TypeError(f"ModelConfig.{name} must be a number, got {value!r}")
            try:
                object.__setattr__(self, name, float(value))
            except OverflowError:  # an integer of hundreds of digits
                raise ValueError(f"ModelConfig.{name} must be a finite number, got an integer too large "
                                 "for a float") from None
        for name, _ in _SIZE_LIMITS:
            value = getattr(self, name)
            if isinstance(value, np.integer) and not isinstance(value, np.bool_):
                object.__setattr__(self, name, int(value))
        if self.n_kv_head is None and isinstance(self.n_head, int):
            object.__setattr__(self, "n_kv_head", self.n_head)
        if self.n_hidden is None and isinstance(self.n_embd, int):
            object.__setattr__(self, "n_hidden", derive_n_hidden(self.n_embd))
        # Upper bounds: what a .bin header may hold (nano_format.spec), so that a model
        # that trains can be exported, and an absurd size fails here, before anything
        # is allocated, not after hours of building layers.
        for name, limit in _SIZE_LIMITS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
            if value > limit:
                raise ValueError(f"ModelConfig.{name} must be at most {limit} (the .bin format's limit), "
                                 f"got {value}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"ModelConfig: n_head ({self.n_head}) must divide n_embd ({self.n_embd})"
            )
        if self.n_head % self.n_kv_head != 0:
            raise ValueError(
                f"ModelConfig: n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head})"
            )
        if self.use_rope and self.head_dim % 2 != 0:
            raise ValueError(
                f"ModelConfig: RoPE needs an even head_dim, got n_embd / n_head = {self.head_dim}"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout!r}")
        for name in ("norm_eps", "rope_theta"):  # stored as float32 in a .bin file
            value = float(getattr(self, name))
            if not (math.isfinite(value) and 0.0 < value <= F32_MAX and np.float32(value) > 0):
                raise ValueError(f"ModelConfig.{name} must be a positive number that float32 can hold "
                                 f"(about 1.4e-45 to 3.4e38; the .bin format stores it so), got {value!r}")
        if self.bias:
            # The file format has no bias tensors for Nano models, so a biased model
            # could be trained but never exported; refuse it early.
            raise ValueError("ModelConfig.bias=True is not supported: the .bin format has no bias tensors")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"ModelConfig: unknown key(s) {unknown}; known keys are {sorted(known)}")
        return cls(**d)


# ---------------------------------------------------------------------------
# Building blocks


class _RMSNormFunction(torch.autograd.Function):
    """x * rsqrt(mean(x^2) + eps) * w, the same arithmetic as F.rms_norm's forward, with
    its backward written out: dw = sum(dy * y), dx = rstd * (g - y * mean(g * y)) for
    g = dy * w and y = x * rstd. Autograd through the composite kernels makes more passes
    over [N, E] and keeps x as well as y: training on a CPU made 4-6% fewer tokens/s
    (tools/bench/README.md, "RMSNorm's backward written out")."""

    @staticmethod
    def forward(ctx, x, w, eps):
        rstd = torch.rsqrt(x.square().mean(dim=-1, keepdim=True).add_(eps))
        y = x * rstd
        ctx.save_for_backward(y, rstd, w)
        return y * w

    @staticmethod
    def backward(ctx, dy):
        y, rstd, w = ctx.saved_tensors
        dx = dw = None
        if ctx.needs_input_grad[0]:
            g = dy * w
            dx = torch.addcmul(g, y, (g * y).mean(dim=-1, keepdim=True), value=-1).mul_(rstd)
        if ctx.needs_input_grad[1]:
            dw = (dy * y).reshape(-1, y.shape[-1]).sum(dim=0)
        return dx, dw, None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Always float32, whatever the activation dtype, so that every engine
        # (which normalises in float32) sees the same numbers.
        xf = x.float()
        training_on_cpu = (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
                           and x.device.type == "cpu" and not torch.compiler.is_compiling())
        if _HAS_RMS_NORM and not training_on_cpu:
            # the same x * rsqrt(mean(x^2) + eps) * w, in fewer kernels (compiled, the compiler
            # fuses them; on other devices the written-out backward was not measured)
            return F.rms_norm(xf, (xf.shape[-1],), self.weight.float(), self.eps).type_as(x)
        # training on a CPU, eager, and torch < 2.4 (no F.rms_norm): the written-out backward
        return _RMSNormFunction.apply(xf, self.weight.float(), self.eps).type_as(x)


def rope_pair_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., D/2] cos, sin -> float32 [..., D] tables: cos repeated for both members
    of a pair (c0, c0, c1, c1, ...), sin signed (-s0, s0, -s1, s1, ...)."""
    cos, sin = cos.float(), sin.float()
    return cos.repeat_interleave(2, dim=-1), torch.stack((-sin, sin), dim=-1).flatten(-2)


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of float32 x [..., D] by the angles whose cos and sin
    are [..., D/2] (broadcast against x):
    out[2i] = x[2i] c - x[2i+1] s, out[2i+1] = x[2i+1] c + x[2i] s.

    Run eagerly on a CPU or a CUDA device, the pairs are complex numbers and the
    rotation one complex product (one kernel forward and one backward; the same
    products and sums as the formula, equal to one rounding). Under
    torch.compile, which has no complex kernels, and on other devices (MPS's
    complex support is partial), the formula itself on whole tensors, which the
    compiler fuses.
    """
    if torch.compiler.is_compiling() or x.device.type not in ("cpu", "cuda"):
        cos2, sin2 = rope_pair_tables(cos, sin)
        swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x1, x0, x3, x2, ...)
        return x * cos2 + swapped * sin2
    if x.stride(-1) != 1 or any(st % 2 for st in x.stride()[:-1]) or x.storage_offset() % 2:
        x = x.contiguous()  # view_as_complex needs whole pairs in place
    turn = torch.complex(cos.float(), sin.float())
    return torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * turn).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of every head, in float32.

    x: [B, n_heads, T, D]; cos, sin: [T, D/2] for the positions of x's T tokens.
    """
    return rotate_pairs(x.float(), cos, sin).type_as(x)


class KVCache:
    """Keys and values of the tokens seen so far, per layer.

    k[i], v[i]: [batch, n_kv_head, max_len, head_dim]; positions >= the current
    length hold stale or zero values and are never read.
    """

    def __init__(self, config: ModelConfig, batch: int, max_len: int, device, dtype):
        if batch <= 0:
            raise ValueError(f"KV cache batch must be positive, got {batch}")
        if not 0 < max_len <= config.block_size:
            raise ValueError(
                f"KV cache max_len must be in 1..block_size ({config.block_size}), got {max_len}"
            )
        self.batch = batch
        self.max_len = max_len
        shape = (batch, config.n_kv_head, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]


class Block(nn.Module):
    """One pre-norm layer. Its submodules sit directly on the block (no `attn.`
    prefix) so that state-dict keys read `layers.{i}.wq.weight`, like the file."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        e, f = config.n_embd, config.n_hidden
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.head_dim
        self.is_causal = config.is_causal
        self.use_rope = config.use_rope
        self.dropout = config.dropout
        self.norm_attn = RMSNorm(e, config.norm_eps)
        self.wq = Linear(e, config.n_head * config.head_dim)
        self.wk = Linear(e, config.n_kv_head * config.head_dim)
        self.wv = Linear(e, config.n_kv_head * config.head_dim)
        self.wo = Linear(config.n_head * config.head_dim, e)
        self.norm_ffn = RMSNorm(e, config.norm_eps)
        self.w1 = Linear(e, f)  # gate
        self.w2 = Linear(f, e)  # down
        self.w3 = Linear(e, f)  # up
        self.resid_dropout = nn.Dropout(config.dropout)

    def attention(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: KVCache | None,
        layer: int,
        start_pos: int,
    ) -> torch.Tensor:
        # x: [B, T, E] (normalised); rope: cos, sin of positions
        # start_pos..start_pos+T-1, shaped [T, 1, D/2] to broadcast over the heads
        bsz, t, _ = x.shape
        q = self.wq(x).view(bsz, t, self.n_head, self.head_dim)  # [B, T, H, D]
        k = self.wk(x).view(bsz, t, self.n_kv_head, self.head_dim)  # [B, T, K, D]
        v = self.wv(x).view(bsz, t, self.n_kv_head, self.head_dim).transpose(1, 2)  # [B, K, T, D]
        if self.use_rope:
            # rotated while each token's heads are contiguous, then viewed head-major
            q = rotate_pairs(q.float(), *rope).type_as(q)
            k = rotate_pairs(k.float(), *rope).type_as(k)
        q = q.transpose(1, 2)  # [B, H, T, D]
        k = k.transpose(1, 2)  # [B, K, T, D]

        mask = None
        causal = self.is_causal
        if cache is not None:
            end = start_pos + t
            cache.k[layer][:bsz, :, start_pos:end] = k
            cache.v[layer][:bsz, :, start_pos:end] = v
            k = cache.k[layer][:bsz, :, :end]  # [B, K, S, D], S = start_pos + T
            v = cache.v[layer][:bsz, :, :end]
            causal = False
            if self.is_causal and t > 1:
                # new query i sits at position start_pos + i and sees keys 0..start_pos+i
                qpos = torch.arange(start_pos, end, device=x.device)[:, None]
                kpos = torch.arange(end, device=x.device)[None, :]
                mask = kpos <= qpos  # [T, S], True = attend

        # grouped-query attention: query head h reads KV head h // rep
        rep = self.n_head // self.n_kv_head
        gqa = {}
        if rep > 1 and _SDPA_GQA:
            gqa = {"enable_gqa": True}  # SDPA reads the shared KV heads in place
        elif rep > 1:
            k = k.repeat_interleave(rep, dim=1)  # [B, H, S, D]
            v = v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal,
            **gqa,
        )  # [B, H, T, D]
        y = y.transpose(1, 2).reshape(bsz, t, self.n_head * self.head_dim)
        return self.resid_dropout(self.wo(y))

    def forward(self, x, rope, cache=None, layer=0, start_pos=0):
        x = x + self.attention(self.norm_attn(x), rope, cache, layer, start_pos)
        h = self.norm_ffn(x)
        return x + self.resid_dropout(self.w2(F.silu(self.w1(h)) * self.w3(h)))


# ---------------------------------------------------------------------------
# The model


def _rope_tables(config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin: float32 [block_size, head_dim / 2], the same tables the file stores."""
    cos, sin = rope_tables(config.block_size, config.head_dim, config.rope_theta)
    return torch.from_numpy(cos.copy()).float(), torch.from_numpy(sin.copy()).float()


def decay_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer groups: matrices (dim >= 2) decay, vectors (norm weights) do not.
    Frozen parameters (requires_grad False, e.g. a base under LoRA) are left out; both
    groups are there even where one is empty, as a checkpoint's optimizer state has two."""
    decay, no_decay = [], []
    for p in module.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class Transformer(nn.Module):
    """The reference decoder (or, with is_causal=False, encoder) of a ModelConfig:
    token embedding, n_layer blocks of RMSNorm, attention with RoPE and grouped KV
    heads (learned positions with use_rope=False), RMSNorm and a SwiGLU feed-forward,
    then a final RMSNorm and the classifier.

    forward(idx, targets=None, loss_mask=None) gives (logits, loss); forward_cached
    decodes with a KVCache; every engine computes the same numbers (ARCHITECTURE.md's
    parity contract). Weights start as reset_parameters(seed) makes them."""

    onednn = False  # see use_onednn

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_embd = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_embd = None if config.use_rope else nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_final = RMSNorm(config.n_embd, config.norm_eps)
        # Tied: the classifier is tok_embd.weight itself, so there is no lm_head
        # module (and no duplicate key in the state dict).
        self.lm_head = None if config.tie_embeddings else Linear(config.n_embd, config.vocab_size)
        if config.use_rope:
            cos, sin = _rope_tables(config)
            # Derived from the config, so not saved in checkpoints.
            self.register_buffer("rope_cos", cos, persistent=False)  # [B, D/2]
            self.register_buffer("rope_sin", sin, persistent=False)  # [B, D/2]
        else:
            self.rope_cos = None
            self.rope_sin = None
        self.reset_parameters()

    def reset_parameters(self, seed: int | None = None) -> None:
        """Normal(0, 0.02) weights; the two projections that write into the residual
        stream (wo, w2) get 0.02 / sqrt(2 * n_layer) so its variance does not grow
        with depth. Norm weights start at one."""
        gen = None
        if seed is not None:
            gen = torch.Generator().manual_seed(seed)
        std_out = 0.02 / math.sqrt(2 * self.config.n_layer)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 1:  # the RMSNorm weights are the only vectors
                    p.fill_(1.0)
                elif name.endswith("wo.weight") or name.endswith("w2.weight"):
                    p.copy_(torch.randn(p.shape, generator=gen) * std_out)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)

    # -- sizes ---------------------------------------------------------------

    def num_params(self, exclude_embedding: bool = False) -> int:
        """Parameter count (a tied classifier counted once). exclude_embedding
        leaves out tok_embd and pos_embd."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embedding:
            n -= self.tok_embd.weight.numel()
            if self.pos_embd is not None:
                n -= self.pos_embd.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), for MFU estimates.

        6 * N for every weight used in a matmul (embedding lookups are not
        matmuls, a tied classifier is) plus 12 * L * H * D * T for the attention
        scores and weighted sum over a context of T tokens.
        """
        c = self.config
        t = c.block_size if seq_len is None else seq_len
        n = sum(p.numel() for p in self.parameters() if p.dim() >= 2)  # not the norms' weights
        if self.pos_embd is not None:
            n -= self.pos_embd.weight.numel()
        if self.lm_head is not None:
            n -= self.tok_embd.weight.numel()  # lookup only; lm_head does the matmul
        return 6.0 * n + 12.0 * c.n_layer * c.n_head * c.head_dim * t

    def param_groups(self, weight_decay: float) -> list[dict]:
        """The optimizer's groups (decay_groups)."""
        return decay_groups(self, weight_decay)

    # -- forward ---------------------------------------------------------------

    def use_onednn(self, on: bool = True) -> "Transformer":
        """Run the float32 CPU products of every projection (and of the classifier in
        `_logits`) through oneDNN, or not (`matmul.linear`; the trainer's
        system.matmul). LoRA adapters attached later take the setting of the
        projection they wrap. Returns the model."""
        self.onednn = bool(on)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.onednn = self.onednn
        return self

    def classifier_weight(self) -> torch.Tensor:
        """[V, E]: tok_embd.weight when tied, lm_head.weight otherwise."""
        return self.tok_embd.weight if self.lm_head is None else self.lm_head.weight

    def _check_idx(self, idx: torch.Tensor) -> None:
        """idx must be a [batch, time] int32 or int64 tensor of ids in the vocabulary
        (the ids checked where that is free: on a CPU, outside torch.compile)."""
        check_id_dtype(idx, "idx")
        if idx.dim() != 2:
            raise ValueError(f"idx must be [batch, time], got shape {tuple(idx.shape)}")
        check_id_range(idx, "idx", "token id", 0, self.config.vocab_size)

    def _trunk(self, idx: torch.Tensor, start_pos: int, cache: KVCache | None) -> torch.Tensor:
        """idx [B, T] (checked by the caller: _check_idx) at positions start_pos.. ->
        final hidden states [B, T, E] (after the last norm, before the classifier)."""
        t = idx.shape[1]
        if start_pos < 0 or start_pos + t > self.config.block_size:
            raise ValueError(
                f"positions {start_pos}..{start_pos + t - 1} exceed block_size {self.config.block_size}"
            )
        x = self.tok_embd(idx)  # [B, T, E]
        rope = None
        if self.rope_cos is not None:  # [T, 1, D/2]: one row per token, for all heads
            rope = (self.rope_cos[start_pos:start_pos + t].unsqueeze(1),
                    self.rope_sin[start_pos:start_pos + t].unsqueeze(1))
        else:
            pos = torch.arange(start_pos, start_pos + t, device=idx.device)
            x = x + self.pos_embd(pos)  # [T, E] broadcast over the batch
        x = self.drop(x)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, cache, i, start_pos)
        return self.norm_final(x)

    def _logits(self, idx: torch.Tensor, start_pos: int, cache: KVCache | None) -> torch.Tensor:
        """idx [B, T] at positions start_pos.. -> logits [B, T, V] in float32."""
        return linear(self._trunk(idx, start_pos, cache), self.classifier_weight(), self.onednn).float()

    @staticmethod
    def loss_weight(targets: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        """targets [B, T] (and loss_mask [B, T]) -> each token's weight in the loss, [B, T]
        float32: 0 where the target is -1, else the mask (1 without one). The loss is
        the weighted mean; the trainer sums these weights to weigh micro-batches."""
        weight = (targets != -1).float()
        if loss_mask is not None:
            if loss_mask.shape != targets.shape:
                raise ValueError(
                    f"loss_mask shape {tuple(loss_mask.shape)} differs from targets {tuple(targets.shape)}"
                )
            weight = weight * loss_mask.float()
        return weight

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        *,
        return_logits: bool = True,
        blocked_loss: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx [B, T] -> (logits [B, T, V] float32 at every position, loss or None).

        The loss is the per-token cross-entropy averaged over the tokens that
        count: targets of -1 and positions where loss_mask is 0 contribute
        nothing (not even gradient). The mask is applied to each token's loss
        before averaging; averaging first would make it a no-op scale.

        With targets and return_logits=False (what training does) the first
        element is None and, with blocked_loss (the default), the logits are
        never made: the classifier and the loss run a block of rows at a time
        (`losses.linear_cross_entropy`, which torch.compile leaves out of its
        graph). blocked_loss=False makes the [B, T, V] logits and calls
        F.cross_entropy, which a compiled model keeps inside its graph.

        idx: int32 or int64 ids in [0, V); targets: the same shape and dtypes,
        ids in [-1, V). The ids' range is checked on a CPU outside torch.compile
        only (elsewhere it would cost a device sync or a graph break).
        """
        self._check_idx(idx)
        if targets is None:
            if loss_mask is not None:
                raise ValueError("loss_mask was given without targets: it weighs the loss, which needs targets")
            return self._logits(idx, 0, None), None
        check_id_dtype(targets, "targets")
        if targets.shape != idx.shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} differs from idx shape {tuple(idx.shape)}")
        check_id_range(targets, "targets", "target", -1, self.config.vocab_size)
        weight = self.loss_weight(targets, loss_mask)
        weight = weight / weight.sum().clamp_min(1.0)  # the mean over the tokens that count
        if not return_logits and blocked_loss:
            h = self._trunk(idx, 0, None)
            loss = linear_cross_entropy(h.flatten(0, 1), self.classifier_weight(), targets.flatten(),
                                        weight.flatten(), onednn=self.onednn)
            return None, loss
        logits = self._logits(idx, 0, None)
        if targets.dtype != torch.int64:
            targets = targets.long()  # F.cross_entropy indexes with int64 only
        per_token = F.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction="none"
        )  # [B*T]; 0 where the target is -1
        return (logits if return_logits else None), (per_token * weight.flatten()).sum()

    # -- incremental decoding ---------------------------------------------------

    def init_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for `batch` sequences of up to max_len (<= block_size) tokens."""
        p = self.tok_embd.weight
        return KVCache(self.config, batch, self.config.block_size if max_len is None else max_len,
                       p.device, p.dtype)

    @torch.no_grad()
    def forward_cached(self, idx: torch.Tensor, cache: KVCache, start_pos: int) -> torch.Tensor:
        """Process idx [B, T] at positions start_pos..start_pos+T-1, attending to the
        cached keys/values of positions < start_pos, and store the new ones.
        Returns logits [B, T, V] float32."""
        self._check_idx(idx)
        t = idx.shape[1]
        if idx.shape[0] > cache.batch:
            raise ValueError(f"batch {idx.shape[0]} exceeds the cache's {cache.batch}")
        if start_pos < 0 or start_pos + t > cache.max_len:
            raise ValueError(
                f"positions {start_pos}..{start_pos + t - 1} exceed the cache length {cache.max_len}"
            )
        return self._logits(idx, start_pos, cache)
