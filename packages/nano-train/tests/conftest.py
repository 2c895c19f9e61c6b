"""Fixtures for the training tests: small prepared datasets, the nano_80
vocabulary, a builder for tiny training configs, and builders of a tiny model and
of the minimal checkpoints that sample and export read.

The shared material comes from the root conftest.py's fixtures (shared_file,
psycho_path, sort6_path): missing shared data is a failure, never a skip.
"""

from pathlib import Path

import pytest


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
def error_line():
    """error_line(capsys) -> the one line a command wrote to standard error besides its
    `note:` lines: an `error: ` line, with no traceback."""

    def read(capsys) -> str:
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith("note:")]
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert "Traceback" not in err
        return lines[0]

    return read


@pytest.fixture(scope="session")
def nano80(shared_file):
    """The reference's 80-token vocabulary (sort6's)."""
    from nano_tokenizer import Tokenizer

    return Tokenizer.load(shared_file("data/nano_80.json"))


@pytest.fixture(scope="session")
def psycho_slice(tmp_path_factory, shared_file) -> Path:
    """The first 200,000 characters of pretrain_psycho.txt (fast to prepare and train on)."""
    text = shared_file("data/pretrain_psycho.txt").read_text(encoding="utf-8")[:200_000]
    path = tmp_path_factory.mktemp("text") / "psycho_slice.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def small_pretrain(tmp_path_factory, psycho_slice, shared_file) -> Path:
    """A prepared pretraining dataset of psycho_slice with tokenizer_4096 (5% held out)."""
    from nano_train.data import prepare_pretrain

    out = tmp_path_factory.mktemp("data") / "psycho_small"
    prepare_pretrain([psycho_slice], shared_file("data/tokenizer_4096.json"), out, chunk_tokens=512, progress=False)
    return out


@pytest.fixture(scope="session")
def self_id_sft(tmp_path_factory, shared_file) -> Path:
    """sft_self_id.jsonl prepared with tokenizer_16384_v2 (no token is lost to <|unknown|>)."""
    from nano_train.data import prepare_sft

    out = tmp_path_factory.mktemp("data") / "self_id"
    prepare_sft([shared_file("data/sft_self_id.jsonl")], shared_file("data/tokenizer_16384_v2.json"), out,
                block_size=64, val_fraction=0.1, progress=False)
    return out


@pytest.fixture(scope="session")
def uneven_sft(tmp_path_factory, shared_file) -> Path:
    """SFT data (tokenizer_4096, block 64, 20% held out) whose answers range from 2 to 31
    characters, so that rows, micro-batches and ranks hold different numbers of loss tokens."""
    import json

    from nano_train.data import prepare_sft

    answer = "我是BD4SUR训练的实验性大语言模型Nano，是一只可爱的电子鹦鹉噢"
    records = [{"question": f"你是谁{i}", "answer": answer[:2 + (i * 7) % 30]} for i in range(48)]
    folder = tmp_path_factory.mktemp("data")
    jsonl = folder / "uneven.jsonl"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    prepare_sft([jsonl], shared_file("data/tokenizer_4096.json"), folder / "uneven", block_size=64,
                val_fraction=0.2, progress=False)
    return folder / "uneven"


TINY_MODEL = dict(n_layer=1, n_embd=32, n_head=2, n_kv_head=1, block_size=32)


@pytest.fixture(scope="session")
def predicting():
    """predicting(model, ids) -> model, changed to give each token of ids the logit 1
    and every other token 0, at every step whatever the input: a constant residual
    stream (the layers write nothing) read by an untied classifier whose only
    non-zero rows are those of ids."""
    import torch

    def make(model, ids):
        with torch.no_grad():
            for layer in model.layers:
                layer.wo.weight.zero_()
                layer.w2.weight.zero_()
            model.tok_embd.weight.zero_()
            model.tok_embd.weight[:, 0] = 1.0
            model.lm_head.weight.zero_()
            model.lm_head.weight[list(ids), 0] = 1.0
        return model
    return make


@pytest.fixture
def tiny_config(tmp_path):
    """tiny_config(dataset, **overrides) -> Config of a seconds-long run writing into tmp_path/run.

    Overrides are bare field names (as on the command line): max_iters=4, dropout=0.1, ...
    dtype is float32 unless overridden, whatever this CPU's auto would pick: tests compare
    such runs with each other to float32 rounding.
    """
    from nano_train.config import load_config

    def make(dataset, task="pretrain", out_dir=None, **overrides):
        cfg, _ = load_config(None, _tiny_args(dataset, out_dir or tmp_path / "run", task=task, **overrides))
        return cfg

    return make


@pytest.fixture(scope="session")
def tiny_args():
    """tiny_args(dataset, out_dir, **overrides) -> the --key=value arguments of tiny_config's
    run, for train.main."""
    return _tiny_args


def _tiny_args(dataset, out_dir, **overrides) -> list[str]:
    values = dict(TINY_MODEL, batch_size=4, max_iters=4, warmup_iters=2, learning_rate=3e-3, min_lr=3e-4,
                  eval_interval=2, eval_iters=2, log_interval=1, sample_tokens=4, device="cpu",
                  dtype="float32", peak_flops=1e10, dataset=str(dataset), out_dir=str(out_dir))
    values.update(overrides)
    return [f"--{k}={_cli(v)}" for k, v in values.items()]


def _cli(value) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


# The tiny model of the sample/export tests: nano_80's vocabulary, two layers, grouped heads
TINY_CKPT_MODEL = dict(block_size=16, vocab_size=80, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)


@pytest.fixture(scope="session")
def tiny():
    """tiny(seed=0, **config) -> a seeded Transformer of TINY_CKPT_MODEL (fields overridden
    by config) in eval mode."""
    return _tiny


def _tiny(seed=0, **config):
    import torch

    from nano_train.model import ModelConfig, Transformer

    torch.manual_seed(seed)
    return Transformer(ModelConfig(**{**TINY_CKPT_MODEL, **config})).eval()


@pytest.fixture(scope="session")
def save_ckpt():
    """save_ckpt(path, model, tokenizer, lora=None) -> path: the least checkpoint
    load_checkpoint_model reads (weights, model config, vocabulary, the LoRA's settings)."""
    return _save_ckpt


def _save_ckpt(path, model, tokenizer, lora=None) -> Path:
    import torch

    ck = {"model": model.state_dict(), "config": {"model": model.config.to_dict(), "train": {}},
          "tokenizer": tokenizer.to_json_dict()}
    if lora:
        ck["lora"] = lora
    torch.save(ck, path)
    return path


@pytest.fixture(scope="session")
def lora_ckpt():
    """lora_ckpt(folder, tokenizer) -> folder/c.pt: a checkpoint of tiny() with LoRA
    adapters (rank 2, alpha 4) attached."""
    def make(folder, tokenizer) -> Path:
        from nano_train.lora import attach_lora

        return _save_ckpt(folder / "c.pt", attach_lora(_tiny(), rank=2, alpha=4), tokenizer,
                          lora={"rank": 2, "alpha": 4, "dropout": 0.0})

    return make
