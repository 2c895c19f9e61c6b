"""Gradient check on one device: nano-train's Transformer against a float64 reference.

  python tools/bench/grad_check.py [--device cuda] [--layers 4] [--batch 4] [--seq 512]

The model (the 56M shape's width, heads and vocabulary, fewer layers) computes
the loss and gradients of one random batch in each configuration training can
use on the device: float32 and bfloat16 autocast, the plain loss (logits, then
cross-entropy) and the blocked one (losses.linear_cross_entropy), eager and
torch.compile, and each SDPA kernel forced. Each is compared with the same
weights in float64 on the same device (the math SDPA kernel): the loss, and
for the gradients the worst ||g - ref|| / ||ref|| over the parameters (with
the parameter's name). float32 lands near 1e-6, bfloat16 near 1e-2; a wrong
gradient shows up as O(1). Exit status 1 if any configuration is over 0.1 (or
not a number) or fails (a forced SDPA kernel with no kernel for this input is
reported, not counted); 2, before any work, for a bad option: a device that is
not cpu or cuda[:N] or is not here, or fewer than 1 layer, 1 sequence or 2
positions (with one position attention has nothing to weigh and wq/wk get no
gradient: nothing to check).
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from nano_train.model import ModelConfig, Transformer
from nano_train.train import forward_context_factory

from machine import fail
from shapes import shape_56m


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda or cuda:N (default: cuda where there is one)")
    p.add_argument("--layers", type=int, default=4, help="layers of the 56m shape (at least 1; default 4)")
    p.add_argument("--batch", type=int, default=4, help="sequences in the batch (at least 1; default 4)")
    p.add_argument("--seq", type=int, default=512, help="positions per sequence (at least 2; default 512)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile configurations")
    args = p.parse_args(argv)
    for name, least in (("layers", 1), ("batch", 1), ("seq", 2)):
        if getattr(args, name) < least:
            fail(f"--{name} must be at least {least}, got {getattr(args, name)}"
                 + (" (one position gives wq and wk no gradient to check)" if name == "seq" else ""))
    args.device = check_device(args.device)
    return args


def check_device(name: str) -> torch.device:
    """--device as a torch.device that is here; exit 2 otherwise."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        fail(f"--device {name!r} is not a device; use cpu, cuda or cuda:N")
    if device.type not in ("cpu", "cuda"):
        fail(f"--device {name!r}: this check runs on cpu or cuda only")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            fail(f"--device {name}: CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            fail(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices here")
    return device


def loss_and_grads(model, x, y, *, blocked: bool, dtype: str, backend: str = "auto", compiled=False):
    """Loss and float64 gradients of one batch, run in the training loop's forward
    context (autocast to `dtype` unless float32, the SDPA kernel `backend`)."""
    model.zero_grad(set_to_none=True)
    fn = torch.compile(model) if compiled else model
    with forward_context_factory(x.device, dtype, backend)():
        _, loss = fn(x, y, return_logits=not blocked)
    loss.backward()
    return loss.item(), {n: p.grad.detach().double().clone() for n, p in model.named_parameters()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device
    shape = shape_56m()  # configs/gpu_56m.json's width, heads and vocabulary
    del shape["batch"]
    cfg = ModelConfig(**dict(shape, block_size=args.seq, n_layer=args.layers))
    torch.manual_seed(0)
    model = Transformer(cfg).to(device)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), device=device)
    x, y = ids[:, :-1], ids[:, 1:]

    ref_model = Transformer(cfg).to(device=device, dtype=torch.float64)
    ref_model.load_state_dict(model.state_dict())
    ref_loss, ref = loss_and_grads(ref_model, x, y, blocked=False, dtype="float32", backend="math")
    del ref_model
    print(f"grad_check: {args.layers} layers of the 56m shape, batch {args.batch} x {args.seq}, {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"torch {torch.__version__}; float64 reference loss {ref_loss:.6f}")

    configs = [
        ("f32 plain", dict(blocked=False, dtype="float32")),
        ("f32 blocked", dict(blocked=True, dtype="float32")),
        ("bf16 plain", dict(blocked=False, dtype="bfloat16")),
        ("bf16 blocked", dict(blocked=True, dtype="bfloat16")),
    ]
    if device.type == "cuda":  # each SDPA kernel forced (one may have no kernel for this input)
        configs += [(f"bf16 blocked sdpa={b}", dict(blocked=True, dtype="bfloat16", backend=b))
                    for b in ("math", "flash", "efficient", "cudnn")]
    if not args.no_compile:
        configs += [
            ("compiled f32 blocked", dict(blocked=True, dtype="float32", compiled=True)),
            ("compiled bf16 plain", dict(blocked=False, dtype="bfloat16", compiled=True)),
            ("compiled bf16 blocked", dict(blocked=True, dtype="bfloat16", compiled=True)),
        ]

    bad = 0
    print(f"{'configuration':32s} {'loss':>10s} {'worst grad err':>15s}  parameter              {'seconds':>7s}")
    for label, kw in configs:
        t0 = time.perf_counter()
        try:
            loss, grads = loss_and_grads(model, x, y, **kw)
        except RuntimeError as e:
            # A forced SDPA kernel may have no kernel for this input: said, not counted.
            # Any other configuration failing is a failure of the check.
            print(f"{label:32s} failed: {type(e).__name__}: {str(e).splitlines()[0][:90]}")
            bad += kw.get("backend", "auto") == "auto"
            continue
        errs = {n: ((grads[n] - ref[n]).norm() / ref[n].norm().clamp_min(1e-30)).item() for n in ref}
        worst = max(errs, key=lambda n: (math.isnan(errs[n]), errs[n]))  # a NaN is the worst
        bad += not errs[worst] <= 0.1 or not abs(loss - ref_loss) < 0.05
        print(f"{label:32s} {loss:10.6f} {errs[worst]:15.3g}  {worst:22s} {time.perf_counter() - t0:7.1f}",
              flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
