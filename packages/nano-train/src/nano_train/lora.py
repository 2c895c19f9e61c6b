"""LoRA on the attention projections wq, wk, wv, wo.

Each adapted projection W [out, in] gains A [rank, in] and B [out, rank]; its
output becomes W x + (alpha / rank) * B (A x). This is the `.bin` LoRA layout
(nano_format.spec: wq_A [L, R, E], wq_B [L, H*D, R], ... wo_A [L, R, H*D],
wo_B [L, E, R]), so export is a stack over layers.

The adapted module subclasses nn.Linear and keeps the base weight under the
same name, so state-dict keys are the base keys (`layers.{i}.wq.weight`) plus
`layers.{i}.wq.lora_A` / `lora_B`: a base checkpoint loads into an adapted
model and the adapter can be saved on its own. A state dict always holds the
unmerged base weight, whether the module is merged or not, so state_dict ->
load_state_dict round-trips between merged and unmerged models.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F

from .matmul import Linear, linear

__all__ = [
    "LORA_TARGETS",
    "LoRALinear",
    "attach_lora",
    "detach_lora",
    "merge_lora",
    "unmerge_lora",
    "lora_state_dict",
    "load_lora_state_dict",
    "mark_only_lora_trainable",
    "lora_config",
    "has_lora",
]

LORA_TARGETS = ("wq", "wk", "wv", "wo")


class LoRALinear(nn.Linear):
    """nn.Linear (bias-free) with a low-rank update that can be merged into the weight."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)
        if base.bias is not None:
            raise ValueError("LoRA targets are bias-free projections")
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.weight = base.weight  # shared with the base module: same tensor, same key
        self.register_parameter("bias", None)
        self.rank = rank
        self.alpha = alpha
        self.scale = alpha / rank
        dev, dt = base.weight.device, base.weight.dtype
        # A small and random, B zero: the update starts at exactly zero but its
        # gradient does not.
        bound = 1.0 / math.sqrt(self.in_features)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=dev, dtype=dt).uniform_(-bound, bound))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=dev, dtype=dt))
        self.lora_dropout = nn.Dropout(dropout)
        self.merged = False
        self.onednn = getattr(base, "onednn", False)  # the base product's kernel (matmul.linear)
        self.train(base.training)  # an adapter on a model in eval mode adds no dropout

    def delta(self) -> torch.Tensor:
        """(alpha / rank) * B @ A: [out, in]."""
        return self.scale * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = linear(x, self.weight, self.onednn)
        if self.merged:  # (merging froze the adapters: this path gives them no gradient)
            return y
        # x [.., in] -> A x [.., rank] -> B A x [.., out]
        return y + self.scale * F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.merged:  # the base weight, as an unmerged module holds it
            with torch.no_grad():
                destination[prefix + "weight"] = self.weight - self.delta()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        # A state dict holds the unmerged weight (see _save_to_state_dict): load it
        # unmerged, then merge again with the adapters loaded.
        was_merged = self.merged
        if was_merged:
            if local_metadata.get("assign_to_params_buffers", False):
                raise RuntimeError(f"{prefix}weight: load_state_dict(assign=True) cannot load into merged LoRA "
                                   f"adapters; unmerge_lora(model) first")
            _unmerge_one(self)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)
        if was_merged:
            _merge_one(self)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


def _targets(model):
    """(layer index, target name, module) for every LoRA target of the model."""
    for i, layer in enumerate(model.layers):
        for name in LORA_TARGETS:
            yield i, name, getattr(layer, name)


def has_lora(model) -> bool:
    """Whether attach_lora gave model adapters (merged or not)."""
    return any(isinstance(m, LoRALinear) for _, _, m in _targets(model))


def has_unmerged_lora(model) -> bool:
    return any(isinstance(m, LoRALinear) and not m.merged for _, _, m in _targets(model))


def lora_config(model) -> dict | None:
    """{"rank", "alpha", "dropout"} of the attached LoRA (the checkpoint's "lora"
    entry), or None when none is attached."""
    for _, _, m in _targets(model):
        if isinstance(m, LoRALinear):
            return {"rank": m.rank, "alpha": m.alpha, "dropout": m.lora_dropout.p}
    return None


def attach_lora(model, rank: int, alpha: float, dropout: float = 0.0):
    """Wrap wq, wk, wv, wo of every layer. The model computes the same logits
    until B is trained (B starts at zero). Returns the model."""
    if isinstance(rank, bool) or not (isinstance(rank, numbers.Integral) and rank > 0):
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    if isinstance(alpha, bool) or not (isinstance(alpha, numbers.Real) and alpha > 0):
        raise ValueError(f"LoRA alpha must be a number > 0, got {alpha!r}")
    if isinstance(dropout, bool) or not (isinstance(dropout, numbers.Real) and 0.0 <= dropout < 1.0):
        raise ValueError(f"LoRA dropout must be a number in [0, 1), got {dropout!r}")
    rank, alpha, dropout = int(rank), float(alpha), float(dropout)  # (numpy numbers included)
    if has_lora(model):
        raise ValueError("the model already has LoRA attached; detach_lora first")
    for i, name, m in _targets(model):
        setattr(model.layers[i], name, LoRALinear(m, rank, alpha, dropout))
    return model


def detach_lora(model):
    """Remove the adapters, leaving the base weights as they were before attach
    (a merged adapter is unmerged first); what mark_only_lora_trainable froze
    becomes trainable again. Returns the model."""
    for p in getattr(model, "_lora_frozen", ()):
        p.requires_grad_(True)
    model._lora_frozen = []
    for i, name, m in _targets(model):
        if isinstance(m, LoRALinear):
            if m.merged:
                _unmerge_one(m)
            # built on "meta" (no storage, no init), then given the shared weight
            base = Linear(m.in_features, m.out_features, device="meta").train(m.training)
            base.weight = m.weight
            base.onednn = m.onednn
            setattr(model.layers[i], name, base)
    return model


def _require_lora(model):
    mods = [m for _, _, m in _targets(model) if isinstance(m, LoRALinear)]
    if not mods:
        raise ValueError("the model has no LoRA attached")
    return mods


def merge_lora(model):
    """Fold the update into the base weights (W += scale * B @ A); the forward then
    skips the low-rank path, so the adapters are frozen until unmerge_lora (a merged
    model runs in any mode; training it trains the base weights alone, if they
    require grad). Idempotent. Returns the model."""
    for m in _require_lora(model):
        if not m.merged:
            _merge_one(m)
    return model


@torch.no_grad()
def _merge_one(m: LoRALinear) -> None:
    m.weight.add_(m.delta())
    m.merged = True
    m.adapters_required_grad = (m.lora_A.requires_grad, m.lora_B.requires_grad)  # for unmerge
    m.lora_A.requires_grad_(False)
    m.lora_B.requires_grad_(False)


@torch.no_grad()
def _unmerge_one(m: LoRALinear) -> None:
    m.weight.sub_(m.delta())
    m.merged = False
    m.lora_A.requires_grad_(m.adapters_required_grad[0])
    m.lora_B.requires_grad_(m.adapters_required_grad[1])


def unmerge_lora(model):
    """Undo merge_lora (W -= scale * B @ A, equal to the original up to rounding).
    Idempotent. Returns the model."""
    for m in _require_lora(model):
        if m.merged:
            _unmerge_one(m)
    return model


def lora_state_dict(model) -> dict[str, torch.Tensor]:
    """Only the adapter tensors: `layers.{i}.{wq|wk|wv|wo}.lora_{A|B}` -> tensor."""
    out = {}
    for i, name, m in _targets(model):
        if isinstance(m, LoRALinear):
            out[f"layers.{i}.{name}.lora_A"] = m.lora_A.detach().clone()
            out[f"layers.{i}.{name}.lora_B"] = m.lora_B.detach().clone()
    if not out:
        raise ValueError("the model has no LoRA attached")
    return out


@torch.no_grad()
def load_lora_state_dict(model, sd: dict[str, torch.Tensor]) -> None:
    """Load adapter tensors (as from lora_state_dict) into the attached LoRA.
    Every adapter tensor must be present with its shape; unknown keys are an error.
    A merged model is unmerged, loaded and merged again."""
    mods = {}
    for i, name, m in _targets(model):
        if isinstance(m, LoRALinear):
            mods[f"layers.{i}.{name}"] = m
    if not mods:
        raise ValueError("the model has no LoRA attached")
    expected = {f"{k}.lora_{ab}" for k in mods for ab in ("A", "B")}
    missing = sorted(expected - set(sd))
    unknown = sorted(set(sd) - expected)
    if missing or unknown:
        raise ValueError(f"LoRA state dict mismatch: missing {missing[:4]}, unknown {unknown[:4]}")
    for key, m in mods.items():
        a, b = sd[f"{key}.lora_A"], sd[f"{key}.lora_B"]
        if tuple(a.shape) != tuple(m.lora_A.shape) or tuple(b.shape) != tuple(m.lora_B.shape):
            raise ValueError(
                f"{key}: LoRA shapes A {tuple(a.shape)} B {tuple(b.shape)} do not fit "
                f"A {tuple(m.lora_A.shape)} B {tuple(m.lora_B.shape)}"
            )
        was_merged = m.merged
        if was_merged:
            _unmerge_one(m)
        m.lora_A.copy_(a)
        m.lora_B.copy_(b)
        if was_merged:
            _merge_one(m)


def mark_only_lora_trainable(model):
    """Freeze everything except the adapters (requires_grad True on lora_A/B only).
    The parameters it freezes are remembered: detach_lora makes them trainable
    again. Returns the model."""
    _require_lora(model)
    frozen = getattr(model, "_lora_frozen", [])
    model._lora_frozen = frozen
    for name, p in model.named_parameters():
        adapter = name.endswith(".lora_A") or name.endswith(".lora_B")
        if p.requires_grad and not adapter:
            frozen.append(p)
        p.requires_grad = adapter
    return model


if __name__ == "__main__":  # `python -m nano_train.lora` trains adapters, as nano_train.lora_train does
    import sys

    from nano_train import start

    sys.exit(start("lora"))
