"""tools/bench/grad_check.py, the GPU gradient check, run here on the CPU: it passes
on the model as it is and fails when a gradient is wrong."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--device", "cpu", "--layers", "1", "--batch", "1", "--seq", "32", "--no-compile"]


def load_grad_check():
    spec = importlib.util.spec_from_file_location("grad_check", ROOT / "tools" / "bench" / "grad_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grad_check_passes_on_the_model(capsys):
    assert load_grad_check().main(ARGS) == 0
    out = capsys.readouterr().out
    for label in ("f32 plain", "f32 blocked", "bf16 plain", "bf16 blocked"):
        assert label in out


def test_grad_check_fails_when_the_classifier_gradient_is_lost(monkeypatch, capsys):
    """What compiling the blocked loss did on CUDA: the classifier's gradient is dropped."""
    from nano_train import losses

    backward = losses._LinearCrossEntropy.backward

    def lossy(ctx, grad_out):
        grads = backward(ctx, grad_out)
        return (grads[0], torch.zeros_like(grads[1]), *grads[2:])

    monkeypatch.setattr(losses._LinearCrossEntropy, "backward", staticmethod(lossy))
    assert load_grad_check().main(ARGS) == 1
    assert "tok_embd.weight" in capsys.readouterr().out
