"""Fixtures for the training tests: where ../shared lives, small prepared datasets,
and a builder for tiny training configs.

The shared material is found at $NANO_SHARED, else at <repo root>/../shared.
Missing shared data is a failure, never a skip.
"""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
SHARED = Path(os.environ.get("NANO_SHARED", REPO_ROOT.parent / "shared"))


def _shared(rel: str) -> Path:
    path = SHARED / rel
    if not path.is_file():
        pytest.fail(f"shared test data missing: {path} (set NANO_SHARED to the shared folder, "
                    "normally <repo>/../shared)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def shared():
    """shared("data/x") -> Path, failing the test when the file is missing."""
    return _shared


@pytest.fixture
def one_thread():
    """Run the test on one torch thread (modules opt in with pytestmark): tiny
    models gain nothing from a thread team, and the test machines are shared."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def psycho_slice(tmp_path_factory) -> Path:
    """The first 200,000 characters of pretrain_psycho.txt (fast to prepare and train on)."""
    text = _shared("data/pretrain_psycho.txt").read_text(encoding="utf-8")[:200_000]
    path = tmp_path_factory.mktemp("text") / "psycho_slice.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def small_pretrain(tmp_path_factory, psycho_slice) -> Path:
    """A prepared pretraining dataset of psycho_slice with tokenizer_4096 (5% held out)."""
    from nano_train.data import prepare_pretrain

    out = tmp_path_factory.mktemp("data") / "psycho_small"
    prepare_pretrain([psycho_slice], _shared("data/tokenizer_4096.json"), out, chunk_tokens=512, progress=False)
    return out


@pytest.fixture(scope="session")
def self_id_sft(tmp_path_factory) -> Path:
    """sft_self_id.jsonl prepared with tokenizer_16384_v2 (no token is lost to <|unknown|>)."""
    from nano_train.data import prepare_sft

    out = tmp_path_factory.mktemp("data") / "self_id"
    prepare_sft([_shared("data/sft_self_id.jsonl")], _shared("data/tokenizer_16384_v2.json"), out,
                block_size=64, val_fraction=0.1, progress=False)
    return out


TINY_MODEL = dict(n_layer=1, n_embd=32, n_head=2, n_kv_head=1, block_size=32)


@pytest.fixture
def tiny_config(tmp_path):
    """tiny_config(dataset, **overrides) -> Config of a seconds-long run writing into tmp_path/run.

    Overrides are bare field names (as on the command line): max_iters=4, dropout=0.1, ...
    """
    from nano_train.config import load_config

    def make(dataset, task="pretrain", out_dir=None, **overrides):
        values = dict(TINY_MODEL, batch_size=4, max_iters=4, warmup_iters=2, learning_rate=3e-3, min_lr=3e-4,
                      eval_interval=2, eval_iters=2, log_interval=1, sample_tokens=4, device="cpu",
                      peak_flops=1e10, dataset=str(dataset), out_dir=str(out_dir or tmp_path / "run"), task=task)
        values.update(overrides)
        cfg, _ = load_config(None, [f"--{k}={_cli(v)}" for k, v in values.items()])
        return cfg

    return make


def _cli(value) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
