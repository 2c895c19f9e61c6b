"""Where the GPU time of one training step goes, part by part (a CUDA GPU only).

    python3 tools/bench/gpu_parts.py [--config CONFIG.json] [--batch N] [--json OUT]
    python3 tools/bench/gpu_parts.py --device cpu --batch 1   # checks the script itself, slowly

with the Nano packages installed (`hatch run setup`), or from the repository's root with
PYTHONPATH=packages/nano-format/src:packages/nano-tokenizer/src:packages/nano-train/src,
as gpu_check.sh runs it on a machine where only torch is installed.

The model, batch size and optimizer of a nano-train config, by default
`configs/gpu_56m.json` (the 56M shape: 16 layers, 512 wide, 16 heads of 32, 8 KV
heads, hidden 1408, vocab 16384, block 512, batch 32), in bfloat16 autocast over
float32 weights, as the trainer runs it. Each part runs forward and backward on random
data (never zeros) and is timed with CUDA events: the median of 5 runs of
`reps` calls each, after warm-up. Parts:

- the layer's matrix products: each of wq, wk, wv, wo, w1, w2, w3 alone, and the
  two products that could be one (q|k|v 512 -> 1024, w1|w3 512 -> 2816);
- attention (SDPA, causal, grouped-query): each backend that accepts the shape,
  with the KV heads shared in place (enable_gqa) and repeated;
- the classifier and loss: nano-train's blocked loss, and the plain
  F.cross_entropy of [N, V] logits, eager and compiled;
- the optimizer: clip_grad_norm_ and fused AdamW over the model's parameters;
- whole training steps of nano-train's model, eager and compiled (mode default),
  with the trainer's default loss for the device, each with torch.profiler's GPU
  time per step by category (matrix products, attention, optimizer, the rest)
  and the kernels that took the most.

It prints one line per part: its wall time per call and, on a GPU, its kernels'
time per call (see `time_ms`), the time per step (x 16 for a layer's parts) and,
for the parts that are matrix products, their TFLOP/s. It is a map for
speed work, not a figure for the issue: `train_speed.py` and the trainer's own
log give those.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from nano_train.config import ConfigError, load_config
from nano_train.losses import linear_cross_entropy
from nano_train.model import Transformer
from nano_train.train import blocked_loss, make_adamw

from machine import check_output, fail, write_json
from shapes import GPU_CONFIG


def time_ms(fn, reps: int = 20) -> tuple[float, float | None]:
    """(wall, kernels) in milliseconds per call of fn, after 3 warm-up calls.

    wall: the median of 5 runs of reps calls, timed with CUDA events (a host clock
    on a CPU). It includes the host's time to launch each call's kernels, which
    bounds small parts: on an H200, any product of the model's shapes took 0.23 ms
    that way. kernels (GPU only): the summed durations of the kernels of reps more
    calls, from torch.profiler, divided by reps: the GPU's own time for the part.
    """
    for _ in range(3):
        fn()
    cuda = torch.cuda.is_available()
    runs = []
    for _ in range(5):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        if cuda:
            end.record()
            end.synchronize()
            runs.append(start.elapsed_time(end) / reps)
        else:
            runs.append((time.perf_counter() - t0) * 1e3 / reps)
    kernels = None
    if cuda:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                fn()
            torch.cuda.synchronize()
        kernels = sum(e.self_device_time_total for e in prof.key_averages()) / 1e3 / reps
    return statistics.median(runs), kernels


# kernel (or, on a CPU, operator) names -> what they compute; the first match wins
CATEGORIES = (("matrix products", ("gemm", "nvjet", "cutlass", "xmma", "aten::mm", "aten::addmm", "aten::bmm")),
              ("attention", ("sdpa", "flash", "fmha", "attention")),
              ("optimizer", ("adam", "multi_tensor")))


def kernel_breakdown(step, dev: torch.device, steps: int = 3) -> None:
    """Profile `steps` calls of step: the GPU time (CPU time without a GPU) per step
    by category, then the kernels that took the most."""
    cuda = dev.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()
    us = [(e.key, e.self_device_time_total if cuda else e.self_cpu_time_total) for e in events]
    total = sum(t for _, t in us) or 1.0
    groups: dict[str, float] = {}
    for key, t in us:
        cat = next((c for c, words in CATEGORIES if any(w in key.lower() for w in words)), "everything else")
        groups[cat] = groups.get(cat, 0.0) + t
    print(f"    profile of {steps} steps, {'kernel' if cuda else 'operator self'} time per step: "
          f"{total / steps / 1e3:.3f} ms")
    for cat, t in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"      {cat:24s} {t / steps / 1e3:8.3f} ms  {100 * t / total:5.1f}%")
    for key, t in sorted(us, key=lambda kv: -kv[1])[:15]:
        print(f"      {t / steps / 1e3:8.3f} ms  {key[:100]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=GPU_CONFIG,
                   help="the nano-train config whose model, batch and optimizer to time (default: gpu_56m.json)")
    p.add_argument("--batch", type=int, help="rows per step (default: the config's data.batch_size)")
    p.add_argument("--json", type=Path, metavar="OUT",
                   help="also write the rows as JSON to OUT (checked before the run, written atomically)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = p.parse_args(argv)
    if args.batch is not None and args.batch < 1:
        fail(f"--batch must be at least 1, got {args.batch}")
    try:
        train_cfg, _ = load_config(args.config)
    except ConfigError as e:
        fail(f"--config {e}")
    if args.json:
        check_output(args.json)
    if args.device == "cuda" and not torch.cuda.is_available():
        fail("no CUDA GPU here (--device cpu checks the script, without the GPU-only kernels)")
    torch.manual_seed(0)
    dev = torch.device(args.device)
    device_name = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU"
    cfg, optim = train_cfg.model, train_cfg.optim
    if args.batch is None:
        args.batch = train_cfg.data.batch_size
    n = args.batch * cfg.block_size  # tokens per step
    e, f, hd = cfg.n_embd, cfg.n_hidden, cfg.head_dim
    rows: list[dict] = []

    def report(part: str, times: tuple[float, float | None], per_step: int = 1, flop: float = 0.0) -> None:
        wall, kernels = times
        ms = wall if kernels is None else kernels  # the GPU's own time where it was measured
        rate = flop / (ms / 1e3) / 1e12 if flop else 0.0
        rows.append({"part": part, "wall_ms": wall, "kernel_ms": kernels, "per_step": per_step,
                     "ms_per_step": ms * per_step, "tflops": rate})
        print(f"  {part:40s} {wall:8.3f} {'-' if kernels is None else f'{kernels:8.3f}':>8} ms x {per_step:2d} "
              f"= {ms * per_step:8.3f} ms/step" + (f"  {rate:6.1f} TFLOP/s" if rate else ""), flush=True)

    print(f"{device_name}, torch {torch.__version__}; batch {args.batch} x {cfg.block_size} "
          f"= {n} tokens, bf16 autocast")
    print(f"  {'part':40s} {'wall':>8} {'kernels':>8}    per step: kernels (wall without a GPU) x count")

    # ---- the layer's matrix products, forward + backward (input and weight gradients)
    print("matrix products (forward + backward, per layer):")
    x = torch.randn(n, e, device=dev, dtype=torch.bfloat16, requires_grad=True)
    xh = torch.randn(n, f, device=dev, dtype=torch.bfloat16, requires_grad=True)
    kv = cfg.n_kv_head * hd
    # name: (input, output width, how many such products a layer has)
    products = {f"wq {e}->{e}": (x, e, 1), f"wk or wv {e}->{kv}": (x, kv, 2), f"wo {e}->{e}": (x, e, 1),
                f"w1 or w3 {e}->{f}": (x, f, 2), f"w2 {f}->{e}": (xh, e, 1),
                f"q|k|v fused {e}->{e + 2 * kv}": (x, e + 2 * kv, 1), f"w1|w3 fused {e}->{2 * f}": (x, 2 * f, 1)}
    for name, (inp, out, count) in products.items():
        w = torch.randn(out, inp.shape[1], device=dev, requires_grad=True)
        g = torch.randn(n, out, device=dev, dtype=torch.bfloat16)

        def step(inp=inp, w=w, g=g):
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                y = F.linear(inp, w)
            torch.autograd.grad(y, (inp, w), g)  # both gradients, none accumulated

        report(name, time_ms(step), cfg.n_layer * count, 6.0 * n * inp.shape[1] * out)

    # ---- attention
    print("attention (SDPA causal, forward + backward, per layer):")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b, t = args.batch, cfg.block_size
    q = torch.randn(b, cfg.n_head, t, hd, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(b, cfg.n_kv_head, t, hd, device=dev, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(b, cfg.n_kv_head, t, hd, device=dev, dtype=torch.bfloat16, requires_grad=True)
    go = torch.randn(b, cfg.n_head, t, hd, device=dev, dtype=torch.bfloat16)
    attn_flop = 12.0 * n * cfg.n_head * hd * t  # the MFU formula's count (causal work is half of it)
    rep = cfg.n_head // cfg.n_kv_head
    for backend in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
        for gqa in (True, False):
            def step(backend=backend, gqa=gqa):
                with sdpa_kernel(getattr(SDPBackend, backend)):
                    kk, vv = (k, v) if gqa else (k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1))
                    y = F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=gqa)
                torch.autograd.grad(y, (q, k, v), go)

            name = f"{backend.lower()} {'enable_gqa' if gqa else 'repeated kv'}"
            try:
                with warnings.catch_warnings():  # a refused backend says why in one line below, not six warnings
                    warnings.simplefilter("ignore", UserWarning)
                    timed = time_ms(step, 10)
                report(name, timed, cfg.n_layer, attn_flop)
            except Exception as err:  # a backend that refuses the shape or this GPU
                print(f"  {name:40s} not available: {str(err).splitlines()[0][:90]}")

    # ---- classifier and loss
    print("classifier + loss (forward + backward):")
    h = torch.randn(n, e, device=dev, dtype=torch.bfloat16, requires_grad=True)
    wte = (torch.randn(cfg.vocab_size, e, device=dev) * 0.02).requires_grad_()
    tgt = torch.randint(0, cfg.vocab_size, (n,), device=dev)
    weight = torch.full((n,), 1.0 / n, device=dev)

    def blocked():
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = linear_cross_entropy(h, wte, tgt, weight)
        torch.autograd.grad(loss, (h, wte))

    def plain_loss(h, wte, tgt):
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            return F.cross_entropy(F.linear(h, wte).float(), tgt)

    compiled_loss = torch.compile(plain_loss)
    cls_flop = 6.0 * n * e * cfg.vocab_size
    report("blocked (nano-train, eager)", time_ms(blocked, 5), 1, cls_flop)
    for name, fn in (("plain F.cross_entropy, eager", plain_loss), ("plain F.cross_entropy, compiled", compiled_loss)):
        report(name, time_ms(lambda fn=fn: torch.autograd.grad(fn(h, wte, tgt), (h, wte)), 5), 1, cls_flop)

    # ---- optimizer, and whole steps (eager, compiled) with the profiler's breakdown
    print("optimizer and whole steps:")
    model = Transformer(cfg).to(dev)
    groups = [g for g in model.param_groups(optim.weight_decay) if g["params"]]
    params = [p for g in groups for p in g["params"]]
    opt = make_adamw(groups, optim)
    clip = optim.grad_clip if optim.grad_clip > 0 else math.inf  # as the trainer clips
    for p_ in params:
        p_.grad = torch.randn_like(p_) * 1e-3

    def optimizer_step():
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()

    report("clip_grad_norm_ + fused AdamW", time_ms(optimizer_step, 10))
    xs = torch.randint(0, cfg.vocab_size, (args.batch, t), device=dev)
    ys = torch.randint(0, cfg.vocab_size, (args.batch, t), device=dev)

    flop_step = model.flops_per_token(t) * n
    blocked = blocked_loss("auto", dev)  # the trainer's default loss on this device
    for label, m in (("eager", model), ("compiled", torch.compile(model))):
        def train_step(m=m):
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                _, loss = m(xs, ys, return_logits=False, blocked_loss=blocked)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            opt.zero_grad(set_to_none=True)

        report(f"whole step, {label}, {'blocked' if blocked else 'plain'} loss", time_ms(train_step, 3), 1, flop_step)
        kernel_breakdown(train_step, dev)
    if args.json:
        write_json(args.json, {"device": device_name, "torch": torch.__version__, "batch": args.batch,
                               "parts": rows}, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
