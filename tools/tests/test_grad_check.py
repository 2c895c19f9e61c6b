"""tools/bench/grad_check.py, the GPU gradient check, run here on the CPU: it passes
on the model as it is and fails when a gradient is wrong."""

from __future__ import annotations

import pytest
import torch

ARGS = ["--device", "cpu", "--layers", "1", "--batch", "1", "--seq", "32", "--no-compile"]


def test_grad_check_passes_on_the_model(load_tool, capsys):
    assert load_tool("bench/grad_check.py").main(ARGS) == 0
    out = capsys.readouterr().out
    for label in ("f32 plain", "f32 blocked", "bf16 plain", "bf16 blocked"):
        assert label in out


def test_grad_check_fails_when_the_classifier_gradient_is_lost(load_tool, monkeypatch, capsys):
    """What compiling the blocked loss did on CUDA: the classifier's gradient is dropped."""
    from nano_train import losses

    backward = losses._LinearCrossEntropy.backward

    def lossy(ctx, grad_out):
        grads = backward(ctx, grad_out)
        return (grads[0], torch.zeros_like(grads[1]), *grads[2:])

    monkeypatch.setattr(losses._LinearCrossEntropy, "backward", staticmethod(lossy))
    assert load_tool("bench/grad_check.py").main(ARGS) == 1
    assert "tok_embd.weight" in capsys.readouterr().out


def test_grad_check_fails_on_a_nan_gradient(load_tool, monkeypatch, capsys):
    """A gradient of NaNs is the worst error there is, never a pass."""
    from nano_train import losses

    backward = losses._LinearCrossEntropy.backward

    def nan(ctx, grad_out):
        grads = backward(ctx, grad_out)
        return (grads[0], torch.full_like(grads[1], float("nan")), *grads[2:])

    monkeypatch.setattr(losses._LinearCrossEntropy, "backward", staticmethod(nan))
    assert load_tool("bench/grad_check.py").main(ARGS) == 1
    assert "nan  tok_embd.weight" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--device", "foo"], "error: --device 'foo' is not a device; use cpu, cuda or cuda:N"),
    (["--device", "cuda"], "error: --device cuda: CUDA is not available here"),
    (["--device", "meta"], "error: --device 'meta': this check runs on cpu or cuda only"),
    (["--layers", "0"], "error: --layers must be at least 1, got 0"),
    (["--batch", "0"], "error: --batch must be at least 1, got 0"),  # was a pass with loss 0 and error 0
    (["--batch", "-2"], "error: --batch must be at least 1, got -2"),
    (["--seq", "0"], "error: --seq must be at least 2, got 0"),
    (["--seq", "1"], "error: --seq must be at least 2, got 1 (one position gives wq and wk no gradient"),
])
def test_bad_options_are_one_line_before_any_work(load_tool, monkeypatch, capsys, argv, message):
    grad_check = load_tool("bench/grad_check.py")
    monkeypatch.setattr(grad_check.torch.cuda, "is_available", lambda: False)  # as on a machine without CUDA
    monkeypatch.setattr(grad_check, "Transformer", lambda *a: pytest.fail("a model was built"))
    with pytest.raises(SystemExit) as exit_:
        grad_check.main(ARGS + argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
