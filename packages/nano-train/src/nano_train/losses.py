"""The classifier and its cross-entropy in one pass, a block of rows at a time.

Training needs the loss and its gradients, never the [N, V] logits themselves.
Computing `F.cross_entropy(F.linear(x, w))` the plain way makes several
N x V float32 tensors (logits, log-probabilities, their gradient): 32 MB each
for 2,048 tokens and a 4,096-word vocabulary, new memory every step. Here the
logits of a block of rows (about 4 MB on a CPU) are made, turned into the
block's loss and, in place, into the gradient of the loss with respect to them,
then multiplied out into the gradients of x and w before the next block. The
arithmetic is the same (the same matrix products, in the same precision, except
that under float16 the gradient products run in float32, see below) and the
results agree with the plain way to float rounding; the gradients are computed
in the forward pass and scaled by the incoming gradient in backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .matmul import onednn_product

__all__ = ["linear_cross_entropy", "block_rows", "check_id_dtype", "check_id_range"]


def check_id_dtype(ids, name: str) -> None:
    """ids must be a torch tensor of int32 or int64 token ids (what the embedding
    and the loss index with; uint8 could not hold -1, a float or bool no id)."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor of token ids, got {type(ids).__name__}")
    if ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must hold int32 or int64 token ids, got {ids.dtype}")


def check_id_range(ids: torch.Tensor, name: str, what: str, low: int, high: int) -> None:
    """Every id must lie in [low, high): low 0 for inputs, -1 for targets (-1 = ignored).

    Checked only where it is free: on a CPU tensor and outside torch.compile. On an
    accelerator reading the answer would wait for the device every step, and under
    torch.compile it would break the graph; there a bad id is not caught here."""
    if torch.compiler.is_compiling() or ids.device.type != "cpu" or ids.numel() == 0:
        return
    lo, hi = torch.aminmax(ids)  # one pass over the ids
    if lo >= low and hi < high:
        return
    at = ((ids < low) | (ids >= high)).nonzero()[0].tolist()
    value = int(ids[tuple(at)])
    ignored = " (or -1, ignored)" if low == -1 else ""
    raise ValueError(f"{what} {value} at {name}[{', '.join(map(str, at))}] is outside the vocabulary "
                     f"0..{high - 1}{ignored}")


def block_rows(vocab: int, device: torch.device) -> int:
    """Rows per block: logits of about 4 MB on a CPU (they stay in the cache), but
    never fewer than 256 rows there: thinner products cost more than the cache saves
    (vocabulary 50,257: 20 rows took 2.5x the time of 256; tools/bench/README.md);
    64 MB on an accelerator (fewer, larger launches)."""
    if device.type == "cpu":
        return max(256, (1 << 20) // max(1, vocab))
    return max(1, (1 << 24) // max(1, vocab))


def _compute_dtype(x: torch.Tensor, w: torch.Tensor) -> torch.dtype:
    """The dtype autocast would give F.linear(x, w) here."""
    dev = x.device.type
    try:
        enabled = torch.is_autocast_enabled(dev)
    except TypeError:  # torch < 2.4: CUDA autocast only
        enabled = dev == "cuda" and torch.is_autocast_enabled()
    if not enabled:
        return torch.promote_types(x.dtype, w.dtype)
    try:
        return torch.get_autocast_dtype(dev)
    except AttributeError:  # torch < 2.4
        return torch.get_autocast_gpu_dtype()


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, targets, weight, rows, onednn):
        cdt = _compute_dtype(x, w)
        # Under float16 the gradient products run in float32: the plain way has the
        # loss scale (GradScaler) in the gradient before casting it to float16, but
        # here the scale comes afterwards, so small gradients would underflow.
        gdt = torch.float32 if cdt == torch.float16 else cdt
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # oneDNN's float32 products (matmul.linear), when the caller asks and they apply. Its
        # operator has no out=, so each block's logits and weight-gradient term are new tensors
        # (the allocator reuses the freed ones); even so 1.6x faster here (tools/bench/README.md)
        dnn = onednn and cdt == torch.float32 and x.device.type == "cpu"
        with torch.autocast(x.device.type, enabled=False):
            wc = w.to(cdt)
            wg = wc if gdt == cdt else w.to(gdt)
            grad_x = torch.empty_like(x) if need_x else None
            grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if need_w else None
            total = torch.zeros((), dtype=torch.float32, device=x.device)
            safe = targets.clamp_min(0)  # ignored targets (-1) carry weight 0
            # float32: one logits buffer for every block, the products write straight into it
            buf = (torch.empty((min(rows, x.shape[0]), w.shape[0]), dtype=torch.float32, device=x.device)
                   if cdt == torch.float32 and not dnn else None)
            for s in range(0, x.shape[0], rows):
                xc = x[s:s + rows].to(cdt)
                tc = safe[s:s + rows, None]
                wt = weight[s:s + rows, None]
                if dnn:
                    logits = onednn_product(xc, wc)  # [rows, V]
                elif cdt == torch.float32:
                    logits = torch.mm(xc, wc.t(), out=buf[:xc.shape[0]])  # [rows, V]
                else:
                    logits = F.linear(xc, wc).float()
                picked = logits.gather(1, tc)  # the targets' logits
                top = logits.amax(dim=-1, keepdim=True)
                e = logits.sub_(top).exp_()  # in place: exp(logit - max)
                norm = e.sum(dim=-1, keepdim=True)
                total += ((top + norm.log() - picked) * wt).sum()  # log-sum-exp - target logit
                if not (need_x or need_w):
                    continue
                # d(sum wt * (lse - logit[t])) / d logits = wt * (softmax - onehot), in place
                g = e.mul_(wt / norm)
                g.scatter_add_(1, tc, -wt)
                gc, xg = g.to(gdt), xc.to(gdt)
                if need_x and dnn:
                    grad_x[s:s + rows] = onednn_product(gc, wg.t())
                elif need_x and grad_x.dtype == gdt:
                    torch.mm(gc, wg, out=grad_x[s:s + rows])
                elif need_x:
                    grad_x[s:s + rows] = gc @ wg
                if need_w:
                    if dnn:
                        grad_w += onednn_product(gc.t(), xg.t())
                    elif gdt == torch.float32:
                        grad_w.addmm_(gc.t(), xg)
                    else:
                        grad_w += (gc.t() @ xg).float()
        ctx.save_for_backward(grad_x, grad_w.to(w.dtype) if grad_w is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_x, grad_w = ctx.saved_tensors
        return (
            grad_x * grad_out.to(grad_x.dtype) if grad_x is not None else None,
            grad_w * grad_out.to(grad_w.dtype) if grad_w is not None else None,
            None,
            None,
            None,
            None,
        )


# torch.compile runs this function as written, in eager mode (a graph break in a
# compiled model). Compiled on CUDA (torch 2.11, an H200), the graph lost the
# gradient this Function computes in its forward: the tied embedding's gradient
# came out 100% wrong against float64 (tools/bench/grad_check.py), and training
# did not learn. Its work is a few large matrix products, which compiling would
# not speed up.
@torch.compiler.disable
def linear_cross_entropy(
    x: torch.Tensor,
    w: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    rows: int | None = None,
    onednn: bool = False,
) -> torch.Tensor:
    """sum over rows of weight[i] * cross_entropy(x[i] @ w.T, targets[i]).

    x [N, E], w [V, E], targets [N] (int32 or int64 in [-1, V), -1 for ignored
    rows, which must have weight 0; the range is checked on a CPU only, see
    check_id_range), weight [N] float. The same value and gradients as
    `(F.cross_entropy(F.linear(x, w).float(), targets, reduction="none") * weight).sum()`
    up to float rounding, without the [N, V] tensors. `rows` is the block
    height (default `block_rows`); onednn: float32 products on a CPU through
    oneDNN (`matmul.linear`; the model's use_onednn).
    """
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"x {tuple(x.shape)} and w {tuple(w.shape)} do not multiply as x @ w.T")
    check_id_dtype(targets, "targets")
    if targets.shape != x.shape[:1] or weight.shape != x.shape[:1]:
        raise ValueError(
            f"targets {tuple(targets.shape)} and weight {tuple(weight.shape)} must both be [{x.shape[0]}]"
        )
    check_id_range(targets, "targets", "target", -1, w.shape[0])
    if rows is None:
        rows = block_rows(w.shape[0], x.device)
    if not torch.is_grad_enabled():  # evaluation: a Function sees w's requires_grad even under no_grad,
        x, w = x.detach(), w.detach()  # and would compute the weight gradient it then drops
    return _LinearCrossEntropy.apply(x, w, targets, weight.float(), int(rows), bool(onednn))
