"""Float32 matrix products of the model's projections on a CPU, through oneDNN.

On a CPU, torch computes a float32 `F.linear` with its BLAS (MKL in the x86 wheels).
The same wheels carry oneDNN, which torch already uses for bfloat16 products. On
some CPUs oneDNN's float32 kernels are much faster than the BLAS': on the AMD EPYC
with AVX-512 these benchmarks ran on, 2.3x for the products of a forward pass and of
the input gradients, and 1.1-1.8x for the weight gradients (tools/bench/README.md,
"oneDNN products in float32"). On an Intel Xeon (AVX-512, AMX) MKL is as fast, and
float32 training with oneDNN's products 0.8x as fast: `auto` picks oneDNN on AMD CPUs
only. The arithmetic is the same: float32 products with float32 accumulation, equal to
`F.linear` to float rounding.

`linear(x, w, onednn=True)` is `F.linear(x, w)` (no bias) computed that way when it
can be: float32 on a CPU, autocast off. Otherwise, and with `onednn=False`, it is
`F.linear` itself. The product is a custom operator (`nano_train::onednn_linear`,
torch.library, torch >= 2.4) with its own backward, so torch.compile keeps it whole
in its graph as a call, and fuses the work around it. The model carries the choice per Linear
(`Transformer.use_onednn`); the trainer sets it from `system.matmul`
(`resolve_matmul`). A fresh model, and so sampling, export and the parity tests, use
`F.linear`.
"""

from __future__ import annotations

import platform

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MATMULS", "Linear", "cpu_vendor", "linear", "onednn_blocker", "onednn_product", "onednn_unavailable",
           "resolve_matmul"]

MATMULS = ("auto", "torch", "onednn")


def _op():
    """torch's oneDNN linear on dense tensors (y = x @ w.T), or None."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    return getattr(mkldnn, "_linear_pointwise", None) if mkldnn is not None else None


def onednn_product(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ w.T for w [N, K] -> [M, N]; either may be a transposed view."""
    return _op()(x, w, None, "none", [], "")


def onednn_unavailable() -> str | None:
    """None when this torch can run float32 products through oneDNN on this CPU, else
    why not. A small product is run and checked against F.linear."""
    if not torch.backends.mkldnn.is_available():
        return "this torch was built without oneDNN (mkldnn)"
    if _op() is None:
        return "this torch has no torch.ops.mkldnn._linear_pointwise"
    if _onednn_linear is None:
        return f"this torch ({torch.__version__}) has no torch.library.custom_op (torch >= 2.4)"
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=gen)
    w = torch.randn(3, 7, generator=gen)
    try:
        y = onednn_product(x, w)  # [5, 3]
        g = onednn_product(x.t(), y.t())  # transposed views, as backward passes them: [7, 3]
    except (RuntimeError, NotImplementedError) as e:
        return f"torch's oneDNN linear failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    if not (torch.allclose(y, F.linear(x, w), rtol=1e-5, atol=1e-5)
            and torch.allclose(g, x.t() @ y, rtol=1e-5, atol=1e-5)):
        return "torch's oneDNN linear gave other results than F.linear"
    return None


def cpu_vendor() -> str:
    """The x86 CPU's vendor ("AuthenticAMD", "GenuineIntel", ...): from /proc/cpuinfo on
    Linux, else from platform.processor() (Windows names it there); "" where neither says."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return next((v for v in ("AuthenticAMD", "GenuineIntel") if v in platform.processor()), "")


def onednn_blocker(device: torch.device, dtype: str, auto: bool = False) -> str | None:
    """None when oneDNN products apply to a run on `device` in `dtype` (compiled or not),
    else why not. auto: also refuse CPUs other than AMD's x86-64 ones, where system.matmul
    auto keeps torch's products: as fast on Intel's (MKL), not measured on others."""
    if device.type != "cpu":
        return f"it is for CPUs, and this run is on {device.type}"
    if dtype != "float32":
        return f"it is for float32 runs, and this one is {dtype} (autocast already uses oneDNN)"
    if auto and platform.machine().lower() not in ("x86_64", "amd64"):
        return (f"auto picks it on AMD x86-64 CPUs only (this is {platform.machine() or 'unknown'}); "
                "ask for it with --matmul=onednn")
    if auto and (vendor := cpu_vendor()) != "AuthenticAMD":
        return (f"auto picks it on AMD x86-64 CPUs only, where it was measured faster (this one is "
                f"{vendor or 'of an unknown vendor'}; on Intel's, torch's MKL products are as fast); "
                "ask for it with --matmul=onednn")
    return onednn_unavailable()


def resolve_matmul(name: str, device: torch.device, dtype: str) -> tuple[bool, str]:
    """system.matmul -> (use oneDNN for the projections, why), or ValueError.

    auto: oneDNN for a float32 run on an AMD x86-64 CPU, compiled or not, when this torch has it
    (bfloat16 and float16 products already go through oneDNN under autocast);
    torch: F.linear always; onednn: as auto on any CPU, but an error where it cannot apply."""
    if name not in MATMULS:
        raise ValueError(f"system.matmul must be one of {MATMULS}, got {name!r}")
    if name == "torch":
        return False, "torch (system.matmul)"
    why = onednn_blocker(device, dtype, auto=name == "auto")
    if why is None:
        return True, "oneDNN float32 products"
    if name == "onednn":
        raise ValueError(f"system.matmul=onednn cannot apply: {why}; use --matmul=auto or torch")
    return False, f"torch ({why})"


def _define_op():
    """The custom operator nano_train::onednn_linear(x [M, K], w [N, K]) -> x @ w.T, with
    its backward in the same operator; None on torch < 2.4 (no torch.library.custom_op)."""
    if not hasattr(torch.library, "custom_op"):
        return None

    @torch.library.custom_op("nano_train::onednn_linear", mutates_args=())
    def onednn_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return onednn_product(x, w)

    @onednn_linear.register_fake
    def _(x, w):  # the output's shape, for torch.compile's tracing
        return x.new_empty((x.shape[0], w.shape[0]))

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        gx = onednn_linear(grad, w.t()) if ctx.needs_input_grad[0] else None  # [M, N] @ [N, K]
        gw = onednn_linear(grad.t(), x.t()) if ctx.needs_input_grad[1] else None  # [N, M] @ [M, K]
        return gx, gw

    onednn_linear.register_autograd(backward, setup_context=setup_context)
    return onednn_linear


_onednn_linear = _define_op()


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def linear(x: torch.Tensor, w: torch.Tensor, onednn: bool) -> torch.Tensor:
    """F.linear(x, w) (no bias); through oneDNN when `onednn` and it applies here."""
    if (onednn and _onednn_linear is not None and x.dtype == torch.float32 and w.dtype == torch.float32
            and x.device.type == "cpu" and x.numel() > 0 and not _cpu_autocast()):
        return _onednn_linear(x.reshape(-1, x.shape[-1]), w).view(*x.shape[:-1], w.shape[0])
    return F.linear(x, w)


class Linear(nn.Linear):
    """A bias-free projection whose float32 CPU product may run through oneDNN
    (`linear`); `onednn` is set by Transformer.use_onednn, off by default."""

    onednn = False

    def __init__(self, in_features: int, out_features: int, device=None):
        super().__init__(in_features, out_features, bias=False, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.onednn)
