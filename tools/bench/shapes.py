"""The 56M shape, written down once: nano-train's `configs/gpu_56m.json`.

Every benchmark that runs "the 56M shape" (block 512, vocab 16384, 16 layers,
512 wide, 16 heads, 8 KV heads, hidden 1408) reads it from that config, so the
benchmarks and the GPU training run cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path

from nano_train.config import load_config

GPU_CONFIG = Path(__file__).resolve().parents[2] / "packages" / "nano-train" / "configs" / "gpu_56m.json"

# the ModelConfig fields that make a shape (dropout, RoPE and the like keep their defaults)
SHAPE_KEYS = ("block_size", "vocab_size", "n_layer", "n_embd", "n_head", "n_kv_head", "n_hidden")


def shape_56m(config: Path = GPU_CONFIG) -> dict:
    """The model keys of SHAPE_KEYS plus "batch" (the config's data.batch_size)."""
    cfg, _ = load_config(config)
    shape = {key: getattr(cfg.model, key) for key in SHAPE_KEYS}
    shape["batch"] = cfg.data.batch_size
    return shape
