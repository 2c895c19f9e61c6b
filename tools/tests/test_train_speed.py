"""tools/bench/train_speed.py's own loop, without its peer (transformers lives in
the bench environment only): ours steps the same with the blocked and the plain
loss (auto: blocked on a CPU, as the trainer), and the compile mode reaches
torch.compile."""

from __future__ import annotations

import importlib.util
import mmap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--shape", "custom", "--layers", "1", "--embd", "32", "--heads", "2", "--kv-heads", "1",
        "--hidden", "64", "--vocab", "96", "--batch", "2", "--seq", "16"]


@pytest.fixture(scope="module")
def train_speed():
    spec = importlib.util.spec_from_file_location("train_speed", ROOT / "tools" / "bench" / "train_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def trainee(ts, argv):
    """ours as train_speed's main sets it up from these options."""
    args = ts.parse_args(TINY + argv)
    cfg, batch, seq = ts.model_config(args)
    device = torch.device("cpu")
    torch.manual_seed(0)
    t = ts.ours_trainee(args, ts.build_ours(cfg, device), device, "float32")
    ids = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=torch.Generator().manual_seed(1))
    return t, ids[:, :-1], ids[:, 1:]


def test_blocked_and_plain_loss_train_alike(train_speed):
    runs = {}
    for name in ("blocked", "plain", "auto"):
        t, x, y = trainee(train_speed, ["--ours-loss", name])
        expected = {"blocked": train_speed.ours_loss, "plain": train_speed.ours_plain_loss,
                    "auto": train_speed.ours_loss}[name]  # auto on a CPU: blocked, as the trainer
        assert t.loss_fn is expected
        runs[name] = [t.step(x, y).item() for _ in range(4)]
    assert runs["blocked"][0] > runs["blocked"][-1]  # it learns the batch
    assert runs["blocked"] == pytest.approx(runs["plain"], rel=1e-5)
    assert runs["blocked"] == runs["auto"]


def test_compile_mode_is_passed_on(train_speed, monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, mode: seen.append(mode) or model)
    for mode, marks in (("default", False), ("reduce-overhead", True), ("max-autotune-no-cudagraphs", False)):
        t, _, _ = trainee(train_speed, ["--compile", "ours", "--compile-mode", mode])
        assert seen[-1] == mode and t.mark_step is marks
    for argv in (["--compile-mode", "reduce-overhead"], ["--compile", "peer", "--compile-mode", "reduce-overhead"]):
        t, _, _ = trainee(train_speed, argv)
        assert t.mark_step is False and len(seen) == 3  # ours not compiled: no torch.compile, no marks


def test_unknown_options_are_refused(train_speed, capsys):
    for argv in (["--compile-mode", "fastest"], ["--ours-loss", "fused"]):
        with pytest.raises(SystemExit):
            train_speed.parse_args(TINY + argv)
        assert "invalid choice" in capsys.readouterr().err


def test_run_turn_counts_page_faults(train_speed):
    if train_speed.resource is None:
        pytest.skip("no page-fault counts on this OS")

    class Toucher:  # a step that maps 16 MiB of fresh memory and writes to every page of it
        def step(self, x, y):
            with mmap.mmap(-1, 16 << 20) as m:
                if hasattr(mmap, "MADV_NOHUGEPAGE"):
                    m.madvise(mmap.MADV_NOHUGEPAGE)  # 4 KiB pages even where huge pages are the default
                for offset in range(0, len(m), mmap.PAGESIZE):
                    m[offset] = 1
            return torch.zeros(())

    _, _, faults = train_speed.run_turn(Toucher(), [(None, None)], 3, 0, torch.device("cpu"))
    assert faults >= (16 << 20) // mmap.PAGESIZE, faults  # one fault per page, each step


def test_56m_shape_is_the_gpu_config(train_speed):
    from nano_train.config import load_config

    cfg, _ = load_config(ROOT / "packages" / "nano-train" / "configs" / "gpu_56m.json")
    shape = dict(train_speed.SHAPES["56m"])
    assert shape.pop("batch") == cfg.data.batch_size and shape.pop("seq") == cfg.model.block_size
    assert shape == {key: getattr(cfg.model, key) for key in shape}
    assert set(shape) >= {"vocab_size", "n_layer", "n_embd", "n_head", "n_kv_head", "n_hidden"}
