"""Which tensors a file holds, in which order, with which shapes and sizes.

One function turns a config into the parameter list of spec.PARAM_ORDER; the
reader uses it to compute where every tensor lies (and how big the file must
be) before it touches any data, the writer uses it to know what to write.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import spec
from .config import Config, LoraConfig
from .spec import ModelType, Position, QuantType

__all__ = ["Param", "model_params", "lora_params", "q8_0_nbytes"]


def q8_0_nbytes(rows: int, cols: int, group_size: int) -> int:
    """Bytes of one Q8_0 matrix: int8 values then one f32 scale per group."""
    return rows * cols + (rows * cols // group_size) * 4


@dataclass(frozen=True)
class Param:
    name: str
    shape: tuple[int, ...]  # logical shape, what NanoFile.tensor() returns
    dims: str  # the same in symbols, e.g. "[L, H*D, E]", for messages
    quantizable: bool  # stored as Q8_0 in a Q8_0 file (otherwise always F32)
    per_layer: bool  # a stack over layers; Q8_0 files store it one layer at a time

    @property
    def count(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def stored_as_q8_0(self, quant: QuantType) -> bool:
        return self.quantizable and quant == QuantType.Q8_0

    def nbytes(self, quant: QuantType, group_size: int) -> int:
        """Bytes on disk in a file of this quant type (F32 or Q8_0)."""
        if not self.stored_as_q8_0(quant):
            return 4 * self.count
        rows, cols = self.shape[-2:]
        layers = self.shape[0] if self.per_layer else 1
        return layers * q8_0_nbytes(rows, cols, group_size)


def model_params(config: Config) -> list[Param]:
    """The parameters of a Nano/Qwen model in file order (spec.PARAM_ORDER)."""
    c = config
    L, E, V, F, D, B = c.n_layer, c.n_embd, c.vocab_size, c.n_hidden, c.head_dim, c.block_size
    HD, KD = c.q_dim, c.kv_dim
    out = [
        Param("norm_attn", (L, E), "[L, E]", False, False),
        Param("norm_ffn", (L, E), "[L, E]", False, False),
        Param("norm_final", (E,), "[E]", False, False),
        Param(spec.EMBEDDING, (V, E), "[V, E]", True, False),
        Param("wq", (L, HD, E), "[L, H*D, E]", True, True),
        Param("wk", (L, KD, E), "[L, K*D, E]", True, True),
        Param("wv", (L, KD, E), "[L, K*D, E]", True, True),
        Param("wo", (L, E, HD), "[L, E, H*D]", True, True),
        Param("w1", (L, F, E), "[L, F, E]", True, True),
        Param("w2", (L, E, F), "[L, E, F]", True, True),
        Param("w3", (L, F, E), "[L, F, E]", True, True),
    ]
    if c.model_type == ModelType.QWEN2:
        out += [
            Param("bq", (L, HD), "[L, H*D]", False, False),
            Param("bk", (L, KD), "[L, K*D]", False, False),
            Param("bv", (L, KD), "[L, K*D]", False, False),
        ]
    if c.model_type == ModelType.QWEN3:
        out += [
            Param("q_norm", (L, D), "[L, D]", False, False),
            Param("k_norm", (L, D), "[L, D]", False, False),
        ]
    if c.position == Position.ROPE:
        out += [
            Param("rope_cos", (B, D // 2), "[B, D/2]", False, False),
            Param("rope_sin", (B, D // 2), "[B, D/2]", False, False),
        ]
    else:
        out.append(Param(spec.POS_EMBEDDING, (B, E), "[B, E]", False, False))
    if not c.tie_embeddings:
        out.append(Param(spec.CLASSIFIER, (V, E), "[V, E]", True, False))
    return out


def lora_params(config: LoraConfig) -> list[Param]:
    """The parameters of a LoRA module (always F32), in file order."""
    c = config
    L, R, E = c.n_layer, c.rank, c.n_embd
    sizes = {"wq": (E, c.q_dim, "H*D"), "wk": (E, c.kv_dim, "K*D"), "wv": (E, c.kv_dim, "K*D"),
             "wo": (c.q_dim, E, "E")}
    out = []
    for target in spec.LORA_TARGETS:
        n_in, n_out, out_sym = sizes[target]
        in_sym = "H*D" if target == "wo" else "E"
        out.append(Param(f"{target}_A", (L, R, n_in), f"[L, R, {in_sym}]", False, False))
        out.append(Param(f"{target}_B", (L, n_out, R), f"[L, {out_sym}, R]", False, False))
    return out
