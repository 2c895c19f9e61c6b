"""oneDNN float32 products (nano_train.matmul, system.matmul): the same results as
F.linear to float rounding, on the paths training takes (forward, both gradients,
the blocked loss, LoRA, torch.compile), and only where they apply: float32 on a CPU,
autocast off. The trainer's choice is checked in its log and its errors."""

import platform

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from nano_train import matmul
from nano_train.lora import attach_lora, detach_lora
from nano_train.losses import linear_cross_entropy
from nano_train.matmul import Linear, linear, onednn_unavailable, resolve_matmul
from nano_train.metrics import cpu_aware_probe, read_log
from nano_train.model import ModelConfig, Transformer
from nano_train.train import main, train

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def needs_onednn():
    # torch's x86-64 CPU wheels (the pinned one included) carry oneDNN; without it these
    # tests could not show anything, and under CI that is a failure, not a skip
    why = onednn_unavailable()
    assert why is None, why


class Ops(TorchDispatchMode):
    """The operators run under it (below autograd)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def onednn_ran(f) -> bool:
    """Whether f() multiplied through nano_train's oneDNN operator, and not through
    torch's own products (mm, addmm, linear)."""
    with Ops() as ops:
        f()
    names = set(ops.names)
    return "nano_train.onednn_linear" in names and not names & {"aten.mm", "aten.addmm", "aten.linear"}


def grads(f, *inputs):
    for t in inputs:
        t.grad = None
    out = f()
    (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
    return out.detach(), [t.grad.clone() for t in inputs]


def close(a, b, scale=None):
    scale = scale or b.abs().max().item()
    return (a - b).abs().max().item() <= 2e-6 * max(scale, 1.0)


@pytest.mark.parametrize("shape", [(7, 33), (2, 5, 33), (3, 1, 33)])
def test_linear_equals_f_linear_with_both_gradients(shape):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=gen, requires_grad=True)
    w = torch.randn(19, 33, generator=gen, requires_grad=True)
    y_ref, (gx_ref, gw_ref) = grads(lambda: F.linear(x, w), x, w)
    y, (gx, gw) = grads(lambda: linear(x, w, True), x, w)
    assert onednn_ran(lambda: linear(x, w, True))
    assert onednn_ran(lambda: linear(x, w, True).sum().backward())  # both gradients too
    assert y.shape == y_ref.shape and gx.shape == x.shape and gw.shape == w.shape
    assert close(y, y_ref) and close(gx, gx_ref) and close(gw, gw_ref)


def test_linear_takes_non_contiguous_inputs_and_frozen_weights():
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(4, 6, 16, generator=gen)
    x = base.transpose(0, 1).requires_grad_()  # [6, 4, 16], not contiguous
    w = torch.randn(8, 16, generator=gen)  # no gradient wanted (a frozen base weight)
    y_ref, (gx_ref,) = grads(lambda: F.linear(x, w), x)
    y, (gx,) = grads(lambda: linear(x, w, True), x)
    assert close(y, y_ref) and close(gx, gx_ref)
    assert w.grad is None


def test_linear_falls_back_where_onednn_does_not_apply():
    x = torch.randn(4, 16, requires_grad=True)
    w = torch.randn(8, 16, requires_grad=True)
    assert not onednn_ran(lambda: linear(x, w, False))
    assert not onednn_ran(lambda: linear(x.double(), w.double(), True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(x, w, True).dtype == torch.bfloat16
        assert not onednn_ran(lambda: linear(x, w, True))  # autocast's own (bfloat16) product
    assert linear(x[:0], w, True).shape == (0, 8)


def test_resolve_matmul_rules(monkeypatch):
    assert resolve_matmul("torch", CPU, "float32")[0] is False
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(matmul, "cpu_vendor", lambda: "AuthenticAMD")
    assert resolve_matmul("auto", CPU, "float32") == (True, "oneDNN float32 products")
    # on Intel's x86-64 CPUs torch's (MKL's) products are as fast: auto keeps them (was: oneDNN,
    # float32 training at 0.8x); on a CPU whose vendor is unknown too
    for vendor, named in (("GenuineIntel", "this one is GenuineIntel"), ("", "this one is of an unknown vendor")):
        monkeypatch.setattr(matmul, "cpu_vendor", lambda: vendor)
        used, why = resolve_matmul("auto", CPU, "float32")
        assert not used and why == (f"torch (auto picks it on AMD x86-64 CPUs only, where it was measured faster "
                                    f"({named}; on Intel's, torch's MKL products are as fast); ask for it with "
                                    "--matmul=onednn)")
        assert resolve_matmul("onednn", CPU, "float32")[0] is True
    used, why = resolve_matmul("auto", CPU, "bfloat16")
    assert not used and "float32" in why
    with pytest.raises(ValueError, match="system.matmul=onednn cannot apply: it is for float32 runs"):
        resolve_matmul("onednn", CPU, "bfloat16")
    with pytest.raises(ValueError, match="cannot apply: it is for CPUs"):
        resolve_matmul("onednn", torch.device("cuda"), "float32")
    with pytest.raises(ValueError, match="must be one of"):
        resolve_matmul("mkl", CPU, "float32")
    # auto stays with torch on other CPUs (not measured there); asked for, oneDNN still runs
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    used, why = resolve_matmul("auto", CPU, "float32")
    assert not used and "x86-64" in why
    assert resolve_matmul("onednn", CPU, "float32")[0] is True
    monkeypatch.setattr(matmul, "_onednn_linear", None)  # torch < 2.4
    with pytest.raises(ValueError, match=r"no torch.library.custom_op \(torch >= 2.4\)"):
        resolve_matmul("onednn", CPU, "float32")
    assert not onednn_ran(lambda: linear(torch.randn(2, 3), torch.randn(4, 3), True))
    monkeypatch.setattr(matmul, "_op", lambda: None)
    with pytest.raises(ValueError, match="no torch.ops.mkldnn._linear_pointwise"):
        resolve_matmul("onednn", CPU, "float32")


def small_model(**kw):
    cfg = ModelConfig(vocab_size=96, block_size=16, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, **kw)
    torch.manual_seed(0)
    return Transformer(cfg)


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": False}])
@pytest.mark.parametrize("blocked", [True, False])
def test_the_model_trains_to_the_same_loss_and_gradients(kw, blocked):
    """A training step's loss and every gradient, oneDNN against torch's products, and
    the oneDNN path really taken by every projection and the blocked loss."""
    idx = torch.randint(0, 96, (3, 16), generator=torch.Generator().manual_seed(3))
    results = []
    for on in (False, True):
        model = small_model(**kw).use_onednn(on)

        def step():
            _, loss = model(idx[:, :-1], idx[:, 1:], return_logits=False, blocked_loss=blocked)
            loss.backward()
            return loss

        with Ops() as ops:
            loss = step()
        ours = ops.names.count("nano_train.onednn_linear")
        direct = ops.names.count("mkldnn._linear_pointwise")  # the blocked loss calls oneDNN's operator itself
        torchs = ops.names.count("aten.mm") + ops.names.count("aten.addmm")
        if on:  # every projection's three products, and the classifier's, run in oneDNN
            assert ours == 3 * 7 * model.config.n_layer + (0 if blocked else 3)
            assert torchs == 0 and (direct == 3 if blocked else direct == 0)
        else:
            assert ours == direct == 0 and torchs > 0
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss0, g0), (loss1, g1) = results
    assert loss1 == pytest.approx(loss0, rel=1e-6)
    for name in g0:
        assert close(g1[name], g0[name]), name


def test_blocked_loss_through_onednn_equals_torchs():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(600, 24, generator=gen, requires_grad=True)  # 3 blocks of 256, the last short
    w = torch.randn(50, 24, generator=gen, requires_grad=True)
    t = torch.randint(0, 50, (600,), generator=gen)
    t[7] = -1
    weight = torch.rand(600, generator=gen)
    weight[7] = 0
    out = []
    for on in (False, True):
        x.grad = w.grad = None
        loss = linear_cross_entropy(x, w, t, weight, rows=256, onednn=on)
        loss.backward()
        out.append((loss.item(), x.grad.clone(), w.grad.clone()))
    assert out[1][0] == pytest.approx(out[0][0], rel=1e-6)
    assert close(out[1][1], out[0][1]) and close(out[1][2], out[0][2])


def test_lora_adapters_take_the_setting_and_detach_keeps_it():
    model = small_model().use_onednn(True)
    attach_lora(model, rank=2, alpha=4.0)
    assert model.layers[0].wq.onednn is True
    idx = torch.randint(0, 96, (2, 8))
    with Ops() as ops:
        model.layers[0].wq(model.tok_embd(idx))
    assert "nano_train.onednn_linear" in ops.names  # the base product; the adapter's own stay small
    detach_lora(model)
    assert type(model.layers[0].wq) is Linear and model.layers[0].wq.onednn is True
    assert onednn_ran(lambda: model.layers[0].wq(model.tok_embd(idx)))


@pytest.mark.parametrize("blocked", [True, False])
def test_a_compiled_model_runs_the_operator_with_the_same_loss_and_gradients(blocked):
    """torch.compile keeps nano_train::onednn_linear as a call in its graph (the
    graph's code calls it), forward and backward, and computes what eager does."""
    from torch._inductor.utils import run_and_get_code

    idx = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(5))
    runs = []
    for compiled in (False, True):
        model = small_model(tie_embeddings=False).use_onednn(True)
        torch._dynamo.reset()
        run = torch.compile(model) if compiled else model

        def step():
            loss = run(idx[:, :-1], idx[:, 1:], return_logits=False, blocked_loss=blocked)[1]
            loss.backward()
            return loss

        if compiled:
            loss, code = run_and_get_code(step)
            calls = "\n".join(code)
            assert calls.count("nano_train.onednn_linear") >= 2  # in the forward graph and the backward
            assert "extern_kernels.mm(" not in calls and "extern_kernels.addmm(" not in calls
        else:
            loss = step()
        runs.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (eager, g0), (compiled, g1) = runs
    assert compiled == pytest.approx(eager, rel=1e-5)
    for name in g0:
        assert close(g1[name], g0[name], scale=1.0 + g0[name].abs().max().item()), name


def test_the_float32_cpu_peak_is_the_better_of_both_kernels():
    rate, source = cpu_aware_probe(CPU, "float32", seconds=0.05, n=128)
    assert rate > 0 and "the better of torch's and oneDNN's products" in source
    rate, source = cpu_aware_probe(CPU, "bfloat16", seconds=0.05, n=128)
    assert "oneDNN" not in source


def test_the_trainer_logs_its_products_and_refuses_impossible_ones(small_pretrain, tiny_config, tiny_args, tmp_path,
                                                                  capsys, monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(matmul, "cpu_vendor", lambda: "AuthenticAMD")  # where auto picks oneDNN
    train(tiny_config(small_pretrain, out_dir=tmp_path / "auto", max_iters=1, eval_iters=0, sample_tokens=0))
    start = read_log(tmp_path / "auto" / "log.jsonl")[0]
    assert start["matmul"] == "oneDNN float32 products"
    assert "1 x cpu float32 (oneDNN products), " in capsys.readouterr().out
    train(tiny_config(small_pretrain, out_dir=tmp_path / "torch", max_iters=1, eval_iters=0, sample_tokens=0,
                      matmul="torch"))
    assert read_log(tmp_path / "torch" / "log.jsonl")[0]["matmul"] == "torch (system.matmul)"
    capsys.readouterr()
    rc = main("pretrain", tiny_args(small_pretrain, tmp_path / "bf16", dtype="bfloat16", matmul="onednn"))
    err = capsys.readouterr().err
    assert rc == 2
    assert "system.matmul=onednn cannot apply: it is for float32 runs, and this one is bfloat16" in err
    assert not (tmp_path / "bf16" / "log.jsonl").exists()


@pytest.mark.parametrize("torch_faster", [True, False])
def test_a_run_says_when_torchs_products_measured_faster(small_pretrain, tiny_config, tmp_path, capsys, monkeypatch,
                                                         torch_faster):
    from nano_train import metrics

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")  # where auto picks oneDNN
    monkeypatch.setattr(matmul, "cpu_vendor", lambda: "AuthenticAMD")

    rates = {False: 2e11, True: 1e11 if torch_faster else 4e11}  # onednn -> FLOP/s
    monkeypatch.setattr(metrics, "matmul_probe", lambda device, dtype="float32", onednn=False, **kw: rates[onednn])
    train(tiny_config(small_pretrain, out_dir=tmp_path / "run", max_iters=1, eval_iters=0, sample_tokens=0,
                      peak_flops=0))
    err = capsys.readouterr().err
    assert ("note: torch's float32 products measured faster than oneDNN's on this CPU" in err) == torch_faster
    assert read_log(tmp_path / "run" / "log.jsonl")[0]["peak_flops"] == (2e11 if torch_faster else 4e11)
