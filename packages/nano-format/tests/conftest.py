"""Shared test setup: the reference fixtures' bytes, and builders for small model files.

The shared material comes from the root conftest.py's fixtures (psycho_path,
sort6_path, shared_file): if it is missing the tests fail, never skip.
"""

from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import nano_format as nf
from nano_format import spec


@pytest.fixture(scope="session")
def psycho_bytes(psycho_path) -> bytes:
    return psycho_path.read_bytes()


@pytest.fixture(scope="session")
def sort6_bytes(sort6_path) -> bytes:
    return sort6_path.read_bytes()


@pytest.fixture(scope="session")
def shared_dir(shared_file) -> Path:
    return shared_file("data/tokenizer_4096.json").parents[1]


# ---------------------------------------------------------------------------
# Builders


def make_tokens(n: int, n_special: int = 2) -> list:
    """A Nano vocabulary of n tokens: a few specials, then single and multi-character tokens."""
    tokens = []
    for i in range(n):
        if i < n_special:
            text = f"<|s{i}|>"
        elif i % 3 == 0:
            text = chr(0x4E00 + i)  # CJK, beyond Latin-1
        elif i % 3 == 1:
            text = chr(0x61 + i % 26) * (1 + i % 4)
        else:
            text = "\U0001F600" + str(i)  # beyond the BMP
        tokens.append(nf.TokenEntry(id=i, text=text, is_special=i < n_special))
    return tokens


def random_tensors(config, seed: int = 0, with_rope: bool = True) -> dict:
    """Float tensors of the logical shapes for `config` (LoRA too), fixed seed."""
    from nano_format.plan import lora_params, model_params

    rng = np.random.default_rng(seed)
    params = lora_params(config) if isinstance(config, nf.LoraConfig) else model_params(config)
    out = {}
    for p in params:
        if p.name in spec.ROPE_TENSORS and not with_rope:
            continue
        out[p.name] = rng.standard_normal(p.shape).astype(np.float32) * np.float32(0.1)
    return out


def small_config(**changes) -> nf.Config:
    base = dict(block_size=16, vocab_size=24, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, n_hidden=48)
    base.update(changes)
    return nf.Config(**base)


def bpe_tokens(n: int) -> list:
    return [nf.BpeToken(score=float(-i) / 2, data=bytes([0x41 + i % 26]) * (1 + i % 5) + b"\xe4\xb8") for i in range(n)]


def qwen_file(model_type: spec.ModelType, quant: spec.QuantType = spec.QuantType.F32, tied: bool = False,
              seed: int = 0) -> SimpleNamespace:
    """A Qwen2/Qwen3 file written by hand with struct (not by nano_format's writer).

    Small dims; Qwen3 has head_dim 8 with n_embd 16 and 4 heads (so H*D != E).
    Returns the bytes and what went into them.
    """
    rng = np.random.default_rng(seed)
    qwen3 = model_type == spec.ModelType.QWEN3
    B, V, L, E, H, K, F = 8, 12, 2, 16, 4, 2, 24
    D = 8 if qwen3 else E // H
    G = 8
    words = [B, V, L, E, H, K, F, int(tied), D]
    header = bytearray(256)
    code = 0x80 if quant == spec.QuantType.Q8_0 else int(quant)
    struct.pack_into("<IIiiII9III", header, 0, spec.MAGIC0, spec.MAGIC1, 2026, 1, int(model_type), 36,
                     *words, code, G if quant == spec.QuantType.Q8_0 else 0)
    tokens = bpe_tokens(V)
    records = b"".join(struct.pack("<fI", t.score, len(t.data)) + t.data for t in tokens)
    max_len = max(len(t.data) for t in tokens)
    section = struct.pack("<II", 8 + len(records), max_len) + records

    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    arrays = {"norm_attn": f32(L, E), "norm_ffn": f32(L, E), "norm_final": f32(E), "tok_embd": f32(V, E),
              "wq": f32(L, H * D, E), "wk": f32(L, K * D, E), "wv": f32(L, K * D, E), "wo": f32(L, E, H * D),
              "w1": f32(L, F, E), "w2": f32(L, E, F), "w3": f32(L, F, E)}
    if qwen3:
        arrays.update(q_norm=f32(L, D), k_norm=f32(L, D))
    else:
        arrays.update(bq=f32(L, H * D), bk=f32(L, K * D), bv=f32(L, K * D))
    arrays.update(rope_cos=f32(B, D // 2), rope_sin=f32(B, D // 2))
    if not tied:
        arrays["lm_head"] = f32(V, E)

    quantized = {}
    body = []
    for name, arr in arrays.items():
        if quant == spec.QuantType.Q8_0 and name in spec.QUANTIZED_TENSORS:
            # Random int8 values and scales, written per layer: q then scales.
            q = rng.integers(-127, 128, size=arr.shape, dtype=np.int8)
            s = rng.random(arr.shape[:-1] + (arr.shape[-1] // G,), dtype=np.float32)
            quantized[name] = (q, s)
            layers = range(arr.shape[0]) if arr.ndim == 3 else [None]
            for i in layers:
                body.append((q if i is None else q[i]).tobytes())
                body.append((s if i is None else s[i]).astype("<f4").tobytes())
        else:
            body.append(arr.astype("<f4").tobytes())
    data = bytes(header) + section + b"".join(body)
    config = nf.Config(model_type=model_type, block_size=B, vocab_size=V, n_layer=L, n_embd=E, n_head=H,
                       n_kv_head=K, n_hidden=F, head_dim=D, tie_embeddings=tied)
    return SimpleNamespace(data=data, config=config, tokens=tokens, max_token_length=max_len,
                           arrays=arrays, quantized=quantized, group_size=G, section_len=len(section))


@pytest.fixture(scope="session")
def build():
    """The builders above, for tests (importlib mode cannot import conftest)."""
    return SimpleNamespace(make_tokens=make_tokens, random_tensors=random_tensors, small_config=small_config,
                           bpe_tokens=bpe_tokens, qwen_file=qwen_file)
