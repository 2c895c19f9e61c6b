"""The classifier + cross-entropy in blocks (nano_train.losses) against the plain way."""

import pytest
import torch
import torch.nn.functional as F

from nano_train.losses import block_rows, linear_cross_entropy
from nano_train.model import ModelConfig, Transformer


pytestmark = pytest.mark.usefixtures("one_thread")


def plain(x, w, targets, weight):
    ce = F.cross_entropy(F.linear(x, w).float(), targets, ignore_index=-1, reduction="none")
    return (ce * weight).sum()


def case(n=37, e=16, v=53, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, e, generator=g)
    w = 0.3 * torch.randn(v, e, generator=g)
    targets = torch.randint(0, v, (n,), generator=g)
    targets[::5] = -1  # ignored rows
    weight = (targets != -1).float() * torch.rand(n, generator=g)  # a loss mask with uneven weights
    return x, w, targets, weight


def grads(fn, x, w, *rest):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    loss = fn(x, w, *rest)
    (2.5 * loss).backward()  # a non-unit incoming gradient
    return loss.detach(), x.grad, w.grad


@pytest.mark.parametrize("rows", [1, 4, 36, 37, 1000])
def test_blocked_loss_and_gradients_equal_the_plain_way(rows):
    x, w, targets, weight = case()
    want = grads(plain, x, w, targets, weight)
    got = grads(lambda a, b, t, m: linear_cross_entropy(a, b, t, m, rows=rows), x, w, targets, weight)
    for a, b in zip(want, got):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a - b).abs().max()
    # ignored and zero-weight rows get no gradient at all
    assert torch.all(got[1][weight == 0] == 0)
    assert torch.all(got[1][weight > 0].abs().sum(-1) > 0)


def test_without_gradients_and_with_a_frozen_classifier():
    x, w, targets, weight = case(seed=1)
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy(x, w, targets, weight, rows=8), plain(x, w, targets, weight))
    xg = x.clone().requires_grad_()
    linear_cross_entropy(xg, w, targets, weight, rows=8).backward()  # w frozen (as under LoRA)
    xr = x.clone().requires_grad_()
    plain(xr, w, targets, weight).backward()
    assert torch.allclose(xg.grad, xr.grad, rtol=1e-5, atol=1e-6) and w.grad is None


def test_an_evaluation_computes_no_gradient_terms(monkeypatch):
    """Under no_grad (evaluate) a Function still sees the classifier's requires_grad:
    it computed the [V, E] weight gradient of every validation batch and dropped it."""
    from nano_train import losses

    asked = []
    forward = losses._LinearCrossEntropy.forward

    def spy(ctx, *args):
        asked.append(tuple(ctx.needs_input_grad[:2]))
        return forward(ctx, *args)

    monkeypatch.setattr(losses._LinearCrossEntropy, "forward", staticmethod(spy))
    x, w, targets, weight = case(seed=4)
    w = torch.nn.Parameter(w)
    with torch.no_grad():
        value = linear_cross_entropy(x, w, targets, weight, rows=8)
    assert asked == [(False, False)] and not value.requires_grad
    assert torch.allclose(value, plain(x, w.detach(), targets, weight))
    linear_cross_entropy(x, w, targets, weight, rows=8).backward()  # training still gets its gradient
    assert asked[1] == (False, True) and w.grad is not None


def test_bfloat16_autocast_matches_autocast_linear():
    x, w, targets, weight = case(seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = grads(plain, x, w, targets, weight)
        got = grads(lambda a, b, t, m: linear_cross_entropy(a, b, t, m, rows=8), x, w, targets, weight)
    for a, b in zip(want, got):  # equal to bfloat16 rounding (a few units in the last place)
        assert a.dtype == b.dtype
        assert (a - b).abs().max() <= 2e-2 * a.abs().max(), (a - b).abs().max()


def test_bad_shapes_are_errors():
    x, w, targets, weight = case()
    with pytest.raises(ValueError, match="do not multiply"):
        linear_cross_entropy(x, w.t(), targets, weight)
    with pytest.raises(ValueError, match="must both be"):
        linear_cross_entropy(x, w, targets[:-1], weight)
    assert block_rows(4096, torch.device("cpu")) == 256
    # never thinner than 256 rows on a CPU: at 50,257 words, 20-row blocks took 2.5x the time
    assert block_rows(50257, torch.device("cpu")) == block_rows(16384, torch.device("cpu")) == 256
    assert block_rows(80, torch.device("cpu")) == (1 << 20) // 80


@pytest.mark.parametrize("tie,blocked", [(True, True), (False, True), (True, False)])
def test_training_call_equals_the_logits_call(tie, blocked):
    """model(x, y, mask, return_logits=False), the training loop's call, gives the
    loss and every parameter gradient of model(x, y, mask), and no logits, with the
    blocked loss or the plain one (blocked_loss=False)."""
    torch.manual_seed(0)
    cfg = ModelConfig(block_size=16, vocab_size=41, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                      tie_embeddings=tie)
    a, b = Transformer(cfg), Transformer(cfg)
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 41, (3, 16))
    targets = torch.randint(0, 41, (3, 16))
    targets[0, :4] = -1
    mask = (torch.rand(3, 16) > 0.3).long()
    logits, la = a(idx, targets, mask)
    none, lb = b(idx, targets, mask, return_logits=False, blocked_loss=blocked)
    assert logits.shape == (3, 16, 41) and none is None
    assert torch.allclose(la, lb, rtol=1e-6)
    la.backward()
    lb.backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7), name


def test_float16_gradients_do_not_underflow():
    """Under float16 autocast the plain way casts the loss-scaled gradient to float16;
    the blocked one scales afterwards, so it must not round tiny gradients (softmax
    probabilities near 1/4,096, times 1/4,096 rows, are float16 subnormals) in
    float16. Rounded that way the errors are 30-40x the plain way's."""
    g = torch.Generator().manual_seed(3)
    n, e, v = 4096, 16, 4096
    x, w = torch.randn(n, e, generator=g), 0.05 * torch.randn(v, e, generator=g)
    targets = torch.randint(0, v, (n,), generator=g)
    weight = torch.full((n,), 1.0 / n)
    scale = 2.0 ** 16  # what GradScaler starts with

    def scaled(fn):
        def run(a, b, t, m):
            return fn(a, b, t, m) * scale
        return run

    exact = grads(plain, x.double(), w.double(), targets, weight.double())
    with torch.autocast("cpu", dtype=torch.float16):
        half_plain = grads(scaled(plain), x, w, targets, weight)
        half_blocked = grads(scaled(lambda a, b, t, m: linear_cross_entropy(a, b, t, m)), x, w, targets, weight)

    def error(got, i):  # of a gradient (1: x, 2: w), relative to its largest entry
        return ((got[i].double() / (2.5 * scale) - exact[i] / 2.5).abs().max() / exact[i].abs().max()).item()

    for i in (1, 2):
        assert error(half_blocked, i) <= 2 * error(half_plain, i), (i, error(half_blocked, i), error(half_plain, i))


def test_torch_compile_runs_the_blocked_loss_eagerly(monkeypatch):
    """A compiled model leaves the blocked loss out of its graph: compiled on CUDA
    (torch 2.11, H200) the graph lost the gradients that the loss computes in its
    forward, so the tied embedding got a wrong gradient and training did not learn
    (tools/bench/grad_check.py finds it on a GPU). Here: the loss's forward runs
    outside the compiler, and the compiled gradients equal the eager ones."""
    from nano_train import losses

    seen = []
    original = losses._LinearCrossEntropy.forward

    def spy(ctx, *args):
        seen.append(torch.compiler.is_compiling())
        return original(ctx, *args)

    monkeypatch.setattr(losses._LinearCrossEntropy, "forward", staticmethod(spy))
    torch.manual_seed(0)
    model = Transformer(ModelConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_kv_head=1, n_embd=16))
    x, y = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16))
    grads = []
    for fn in (model, torch.compile(model, backend="aot_eager", fullgraph=False)):
        model.zero_grad(set_to_none=True)
        fn(x, y, return_logits=False)[1].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert seen == [False, False]  # once eager, once from the compiled model: never traced
    for eager, compiled in zip(*grads):
        torch.testing.assert_close(compiled, eager)
