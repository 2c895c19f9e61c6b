"""Training speed: nano-train's Transformer against Hugging Face's LlamaForCausalLM, in one run.

Usage:
  python tools/bench/train_speed.py [--shape small|56m|custom] [--device cpu|cuda]
         [--dtype auto|float32|bfloat16|float16] [--batch N] [--seq T] [--steps N]
         [--rounds N] [--warmup N] [--threads N] [--compile [both|ours|peer]] [--compile-mode MODE]
         [--ours-loss auto|blocked|plain] [--ours-matmul auto|torch|onednn]
         [--peer-matmul torch|onednn] [--seed S] [--json OUT]
         [--layers L] [--embd E] [--heads H] [--kv-heads K] [--hidden F] [--vocab V]

  (hatch run bench:train [ARGS] runs the same in the bench environment.)

  python tools/bench/train_speed.py                          # CPU, small shape, the trainer's dtype
  python tools/bench/train_speed.py --dtype float32          # CPU, small shape, float32
  python tools/bench/train_speed.py --shape 56m --device cuda --dtype bfloat16 --compile

Two models of one shape are trained by the same plain loop (forward, loss,
backward, clip the gradient norm to 1, AdamW step, zero_grad(set_to_none)):

  ours   nano_train.model.Transformer, set up the way nano-train's training loop
         sets it up: its forward and loss, its parameter groups, AdamW from
         nano_train.train.make_adamw (fused where this torch has it) with the
         default OptimConfig, the loop's autocast context (none for float32) and
         its GradScaler (active for float16 only).
  peer   transformers.LlamaForCausalLM built from a LlamaConfig of the same shape
         (sdpa attention, tied embeddings, same norm eps and RoPE theta, no KV
         cache in training), the same parameter-group rule, optimizer, autocast and
         scaler. Its loss is F.cross_entropy on its float32 logits against the
         same targets (what transformers' own loss computes, minus its shift).

--ours-loss picks ours' loss as the trainer's system.loss does: blocked (the
classifier and cross-entropy a block of rows at a time, no [N, V] logits) or
plain (the [N, V] logits, then F.cross_entropy, the way the peer does); auto,
the default, is the trainer's: blocked on a CPU, plain on a GPU.
--ours-matmul picks ours' float32 CPU products as the trainer's system.matmul
does (nano_train.matmul): torch (F.linear, MKL in the x86 wheels) or oneDNN
(torch's other matrix library, much faster in float32 on some CPUs); auto, the
default, is the trainer's: oneDNN for float32 on an AMD x86-64 CPU, compiled
or not. --peer-matmul onednn gives the peer's nn.Linear products the same
oneDNN path (its users would run torch's), to show what the rest of ours is
worth. --compile-mode passes torch.compile's mode
(reduce-overhead and max-autotune replay CUDA graphs on a GPU; each step then
starts with torch.compiler.cudagraph_mark_step_begin()). These two exist to
find where the GPU time goes; the defaults are what the trainer runs.

Both keep float32 weights; --dtype bfloat16/float16 runs the forward under
autocast, as nano-train does. The two must have the same parameter count (the
run stops if not). Data: random token ids from a fixed seed (--seed), a pool of
four batches of [batch, seq + 1] reused in turn; speed does not depend on the
values.

Timing: after --warmup steps each, the models take turns (ours, peer, ours,
peer, ...) for --rounds rounds of --steps optimizer steps; each turn is timed
from a synchronised start to a synchronised end. Reported: median tokens/s of
each (batch * seq * steps / seconds per turn), the median of the per-round
ratios ours/peer (the headline: a round runs the two back to back, so a busy
moment slows both of its turns), the ratio of the medians and the ratio of the
best turns (other processes only ever slow a turn down, so on a shared machine
the best turns are the least disturbed), with a warning where a model's turns
spread over more than 1.5x (the machine was busy), and MFU = model FLOPs per token
(Transformer.flops_per_token(seq): 6 x matmul weights + 12 x layers x heads x
head_dim x seq, the same for both models) x tokens/s / peak. The peak is, on a
GPU, the datasheet dense bfloat16 tensor-core figure of nano_train.metrics
(H100 SXM / H200 989 TFLOP/s, A100 312; halved for float32 when TF32 is on,
else measured as on a CPU); on a CPU it
is measured in this run: the best of several one-second probes of 1024 x 1024
matmuls in the run's dtype (bfloat16 products for a bfloat16 run), interleaved
with the rounds (for float32 each probe times torch's products and oneDNN's and
keeps the better), so CPU MFU says how close training gets to this machine's own
matmul speed in the precision the products run in.

On a CPU it also reports each model's minor page faults per step (median over
the turns; POSIX only). Both share one process and so one memory allocator:
memory that glibc's malloc hands back to the OS between steps is faulted in
again, page by page, on the next, and a model that makes fewer large temporary
tensors (ours' blocked loss never makes the [N, V] logits) pays less of that.
On this machine that is much of the CPU ratio (see tools/bench/README.md).

The CPU is often shared; timings are noisy, hence the interleaving and medians.
The load average before and after is printed. This is a benchmark, not a test:
it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import statistics
import sys
import time
from typing import NamedTuple

try:
    import resource  # POSIX: page-fault counts
except ImportError:  # Windows
    resource = None

import torch
import torch.nn.functional as F

from nano_train.config import (COMPILE_MODES, CPU_BF16_MIN_EMBD, DTYPES, LOSSES, MAX_INT, MAX_THREADS,
                               OptimConfig)
from nano_train.matmul import MATMULS, linear, onednn_blocker, resolve_matmul
from nano_train.metrics import cpu_aware_probe, peak_flops, synchronize
from nano_train.model import ModelConfig, Transformer, decay_groups
from nano_train.train import (CUDA_GRAPH_MODES, blocked_loss, forward_context_factory, make_adamw, make_grad_scaler,
                              resolve_dtype)

from machine import check_output, cpu_model, fail, load_average, write_json
from shapes import shape_56m

# Shapes: model keys of ModelConfig plus the default batch and sequence length.
SHAPES = {
    "small": dict(block_size=256, vocab_size=4096, n_layer=4, n_embd=256, n_head=4, n_kv_head=2,
                  n_hidden=704, batch=8, seq=256),
    "56m": dict(shape_56m(), seq=512),  # configs/gpu_56m.json's model and batch
}
SHAPES["custom"] = SHAPES["small"]  # the small shape with --layers/--embd/... applied

N_BATCHES = 4  # distinct random batches, reused in turn
PROBE_N = 1024  # CPU peak probe: PROBE_N x PROBE_N matmuls in the run's dtype
PROBE_SECONDS = 1.0


# ---------------------------------------------------------------------------
# Setup


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="auto: the trainer's choice (nano_train.train.resolve_dtype): bfloat16 (or "
                        "float16) on a GPU, bfloat16 on a CPU with AVX512-BF16 or AMX for a model at "
                        f"least {CPU_BF16_MIN_EMBD} wide, else float32")
    p.add_argument("--batch", type=int, help="sequences per step (shape default)")
    p.add_argument("--seq", type=int, help="tokens per sequence (shape default; raises block_size if larger)")
    p.add_argument("--steps", type=int, help="optimizer steps per timed turn (default 2 on CPU, 20 on GPU)")
    p.add_argument("--rounds", type=int, help="timed turns per model (default 10 on CPU, 5 on GPU)")
    p.add_argument("--warmup", type=int, help="untimed steps per model first (default 2, 5 on GPU or compiled)")
    p.add_argument("--threads", type=int, help=f"torch CPU threads (default: torch's, here {torch.get_num_threads()})")
    p.add_argument("--compile", nargs="?", const="both", default="none", choices=("none", "both", "ours", "peer"),
                   help="torch.compile both models (bare --compile), only ours or only the peer")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default="default",
                   help="torch.compile's mode for the compiled models (default: default)")
    p.add_argument("--ours-loss", choices=LOSSES, default="auto",
                   help="ours: the blocked loss, or the plain logits + cross-entropy; "
                        "auto (default): as the trainer, blocked on a CPU, plain on a GPU")
    p.add_argument("--ours-matmul", choices=MATMULS, default="auto",
                   help="ours: the projections' float32 CPU products (the trainer's system.matmul); auto "
                        "(default): as the trainer, oneDNN for float32 on an AMD x86-64 CPU")
    p.add_argument("--peer-matmul", choices=("torch", "onednn"), default="torch",
                   help="the peer's nn.Linear products: torch (default, as its users run it) or oneDNN "
                        "like ours (to see what the rest of ours is worth)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT (checked before the run, "
                                                 "written atomically; its folder must exist)")
    for flag, key in (("--layers", "n_layer"), ("--embd", "n_embd"), ("--heads", "n_head"),
                      ("--kv-heads", "n_kv_head"), ("--hidden", "n_hidden"), ("--vocab", "vocab_size")):
        p.add_argument(flag, type=int, dest=key, help=f"override the shape's {key}")
    args = p.parse_args(argv)
    for name in ("batch", "seq", "steps", "rounds", "warmup", "threads"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            fail(f"--{name} must be {'>= 0' if name == 'warmup' else 'positive'}, got {value}")
        most = MAX_THREADS if name == "threads" else MAX_INT  # the trainer's bounds (torch crashes on more threads)
        if value is not None and value > most:
            fail(f"--{name} must be at most {most}, got {value}")
    if not 0 <= args.seed < 2**63:
        fail(f"--seed must be in [0, 2^63), got {args.seed}")
    if args.json:
        check_output(args.json)  # before the run, not after it
    return args


def model_config(args: argparse.Namespace) -> tuple[ModelConfig, int, int]:
    """(ModelConfig, batch, seq) from the shape and the overrides."""
    shape = dict(SHAPES[args.shape])
    batch, seq = shape.pop("batch"), shape.pop("seq")
    batch, seq = args.batch or batch, args.seq or seq
    for key in ("n_layer", "n_embd", "n_head", "n_kv_head", "n_hidden", "vocab_size"):
        if getattr(args, key) is not None:
            shape[key] = getattr(args, key)
    if args.n_embd is not None and args.n_hidden is None:
        shape["n_hidden"] = None  # derive it from the new width
    if batch * seq > MAX_INT:
        raise ValueError(f"--batch x --seq ({batch} x {seq} tokens per step) must be at most {MAX_INT}")
    shape["block_size"] = max(shape["block_size"], seq)
    return ModelConfig(**shape), batch, seq


def build_ours(cfg: ModelConfig, device: torch.device) -> torch.nn.Module:
    return Transformer(cfg).to(device).train()


def build_peer(cfg: ModelConfig, device: torch.device) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.n_embd,
        intermediate_size=cfg.n_hidden,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_kv_head,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.block_size,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=cfg.dropout,
        use_cache=False,  # no KV cache while training
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(hf).to(device=device, dtype=torch.float32).train()
    if model.config._attn_implementation != "sdpa":
        raise SystemExit(f"error: the peer uses {model.config._attn_implementation!r} attention, not sdpa")
    return model


# ---------------------------------------------------------------------------
# The plain loop

SPREAD_WARN = 1.5  # a model's fastest turn over its slowest beyond which the run says the machine was busy
OPTIM = OptimConfig()  # nano-train's defaults: lr 6e-4, betas (0.9, 0.95), weight decay 0.1, clip 1.0


class Trainee:
    """A model with its optimizer, scaler and loss, stepped by the same loop."""

    def __init__(self, name: str, model: torch.nn.Module, groups: list[dict], loss_fn, device, dtype,
                 compile_: bool, compile_mode: str = "default"):
        self.name = name
        self.model = torch.compile(model, mode=compile_mode) if compile_ else model
        # CUDA graphs reuse their output memory: mark where each step begins
        self.mark_step = compile_ and compile_mode in CUDA_GRAPH_MODES
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer = make_adamw(groups, OPTIM)
        self.scaler = make_grad_scaler(dtype, device)
        self.context = forward_context_factory(device, dtype, "auto")
        self.loss_fn = loss_fn
        self.rates: list[float] = []
        self.losses: list[float] = []
        self.faults: list[float] = []  # minor page faults per step, per turn

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.mark_step:
            torch.compiler.cudagraph_mark_step_begin()
        with self.context():
            loss = self.loss_fn(self.model, x, y)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, OPTIM.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def ours_loss(model, x, y):
    return model(x, y, return_logits=False)[1]  # the training loop's call, with the blocked loss


def ours_plain_loss(model, x, y):
    return model(x, y, return_logits=False, blocked_loss=False)[1]  # ... with [B, T, V] logits and F.cross_entropy


def ours_trainee(args: argparse.Namespace, model: Transformer, device, dtype: str) -> Trainee:
    """Our model set up as the options say: its loss, its products, whether and how it is
    compiled. ValueError: --ours-matmul onednn where it cannot apply."""
    if args.ours_matmul == "onednn" and (why := onednn_blocker(device, dtype)):
        raise ValueError(f"--ours-matmul onednn cannot apply: {why}")
    model.use_onednn(resolve_matmul(args.ours_matmul, device, dtype)[0])
    groups = [g for g in model.param_groups(OPTIM.weight_decay) if g["params"]]
    loss_fn = ours_loss if blocked_loss(args.ours_loss, device) else ours_plain_loss
    return Trainee("ours", model, groups, loss_fn, device, dtype, args.compile in ("both", "ours"),
                   args.compile_mode)


def peer_onednn(model: torch.nn.Module, device, dtype: str) -> None:
    """--peer-matmul onednn: every bias-free nn.Linear of the peer computes through
    nano_train.matmul.linear, as ours does (ValueError where that cannot apply)."""
    if why := onednn_blocker(device, dtype):
        raise ValueError(f"--peer-matmul onednn cannot apply: {why}")
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m.bias is None:
            m.forward = lambda x, m=m: linear(x, m.weight, True)


class PeerWithLoss(torch.nn.Module):
    """The peer as a Hugging Face user trains it: one module whose forward gives the loss
    (as `model(input_ids=x, labels=...).loss` does: float32 logits, cross-entropy), so that
    --compile takes the loss into the peer's graph as it takes ours' (ours' loss is inside
    its forward). Compiling the model alone, called for .logits, left the peer's loss
    eager: the both-compiled bfloat16 ratio read 1.25x where it was 1.08x."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=x).logits
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


def peer_loss(model, x, y):
    return model(x, y)  # model: PeerWithLoss, compiled or not


def minor_faults() -> int:
    """Minor page faults of this process so far (0 where the OS does not say)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def run_turn(t: Trainee, batches, steps: int, start: int, device) -> tuple[float, float, float]:
    """(seconds, last loss, minor page faults per step) for `steps` optimizer steps."""
    gc.collect()
    synchronize(device)
    faults = minor_faults()
    t0 = time.perf_counter()
    for i in range(steps):
        x, y = batches[(start + i) % len(batches)]
        loss = t.step(x, y)
    last = loss.item()  # waits for the device
    synchronize(device)
    return time.perf_counter() - t0, last, (minor_faults() - faults) / steps


# ---------------------------------------------------------------------------
# Environment


def measure_cpu_peak(device: torch.device, dtype: str) -> tuple[float, str]:
    """(FLOP/s, source): for float32 the better of torch's and oneDNN's products."""
    with torch.random.fork_rng(devices=[]):
        return cpu_aware_probe(device, dtype, seconds=PROBE_SECONDS, n=PROBE_N)


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def fmt_flops(x: float) -> str:
    for unit, scale in (("TFLOP/s", 1e12), ("GFLOP/s", 1e9), ("MFLOP/s", 1e6)):
        if x >= scale:
            return f"{x / scale:.1f} {unit}"
    return f"{x:.0f} FLOP/s"


# ---------------------------------------------------------------------------
# Main


class Settings(NamedTuple):
    """One run's settings: the options, with the shape's and the device's defaults filled in."""
    args: argparse.Namespace
    device: torch.device
    dtype: str
    cfg: ModelConfig
    batch: int
    seq: int
    steps: int  # optimizer steps per timed turn
    rounds: int
    warmup: int

    @property
    def on_gpu(self) -> bool:
        """Whether the run is on a GPU."""
        return self.device.type == "cuda"

    @property
    def tokens_per_turn(self) -> int:
        """Tokens one model trains on in a timed turn."""
        return self.batch * self.seq * self.steps

    @property
    def ours_loss(self) -> str:
        """Ours' loss as --ours-loss resolves here: blocked or plain."""
        return "blocked" if blocked_loss(self.args.ours_loss, self.device) else "plain"


def settings(args: argparse.Namespace, cfg: ModelConfig, batch: int, seq: int) -> Settings:
    """The run's settings: the turns' defaults are the device's (and compiling's), the dtype the trainer's."""
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    steps = args.steps or (20 if on_gpu else 2)
    rounds = args.rounds or (5 if on_gpu else 10)
    warmup = args.warmup if args.warmup is not None else (5 if on_gpu or args.compile != "none" else 2)
    dtype = resolve_dtype(args.dtype, device, cfg.n_embd)
    return Settings(args, device, dtype, cfg, batch, seq, steps, rounds, warmup)


def build_models(run: Settings) -> tuple[Transformer, torch.nn.Module]:
    """Ours and the peer, each built from the run's seed."""
    torch.manual_seed(run.args.seed)
    ours_model = build_ours(run.cfg, run.device)
    torch.manual_seed(run.args.seed)
    peer_model = build_peer(run.cfg, run.device)
    return ours_model, peer_model


def peer_trainee(args: argparse.Namespace, model: torch.nn.Module, device, dtype: str) -> Trainee:
    """The peer set up as its users train it (its loss inside the module), compiled as the options say."""
    return Trainee("peer", PeerWithLoss(model), decay_groups(model, OPTIM.weight_decay), peer_loss, device, dtype,
                   args.compile in ("both", "peer"), args.compile_mode)


def random_batches(run: Settings) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """N_BATCHES (inputs, targets) pairs of random token ids from the run's seed, on its device."""
    gen = torch.Generator().manual_seed(run.args.seed)
    batches = []
    for _ in range(N_BATCHES):
        ids = torch.randint(0, run.cfg.vocab_size, (run.batch, run.seq + 1), generator=gen).to(run.device)
        batches.append((ids[:, :-1], ids[:, 1:]))
    return batches


def print_setup(run: Settings, trainees: list[Trainee], ours_model: Transformer, peer_model: torch.nn.Module,
                params: dict[str, int], flops_per_token: float, device_name: str, threads: int, load_before,
                transformers_version: str) -> None:
    """The lines that open the report: the shape, the machine, the models and the turns."""
    args, cfg = run.args, run.cfg
    print(f"train_speed: {args.shape} shape: {cfg.n_layer} layers, {cfg.n_embd} wide, {cfg.n_head} heads, "
          f"{cfg.n_kv_head} KV heads, hidden {cfg.n_hidden}, vocab {cfg.vocab_size}, block {cfg.block_size}")
    print(f"  batch {run.batch} x seq {run.seq}, {run.dtype}, {run.device} ({device_name}), {threads} "
          f"thread{'s' * (threads != 1)}"
          f"{'' if args.compile == 'none' else f', compiled: {args.compile} (mode {args.compile_mode})'}"
          f", ours with the {run.ours_loss} loss"
          f", products: ours {'oneDNN' if ours_model.onednn else 'torch'}, peer {args.peer_matmul}; "
          f"torch {torch.__version__}, transformers {transformers_version}")
    print(f"  parameters: ours {params['ours']:,}, peer {params['peer']:,} (equal); "
          f"{flops_per_token / 1e6:.2f} MFLOP per token")
    print(f"  AdamW fused: ours {trainees[0].optimizer.defaults.get('fused')}, "
          f"peer {trainees[1].optimizer.defaults.get('fused')}; "
          f"peer attention: {peer_model.config._attn_implementation}")
    print(f"  warm-up {run.warmup} steps each, then {run.rounds} rounds of {run.steps} steps each "
          f"({run.tokens_per_turn:,} tokens per turn); load average {load_before}", flush=True)


def warm_up(run: Settings, trainees: list[Trainee], batches) -> None:
    """--warmup untimed steps of each model (their losses kept)."""
    for t in trainees:
        for i in range(run.warmup):
            t.losses.append(t.step(*batches[i % N_BATCHES]).item())
    synchronize(run.device)


def time_rounds(run: Settings, trainees: list[Trainee], batches) -> list[tuple[float, str]]:
    """The timed rounds, a line each: every model takes a turn of --steps steps; on a CPU a
    peak probe follows each round (the probes, returned)."""
    probes = []
    print(f"\n{'round':>5}  {'ours tok/s':>12}  {'peer tok/s':>12}  {'ratio':>6}", flush=True)
    for r in range(run.rounds):
        for t in trainees:
            dt, last, faults = run_turn(t, batches, run.steps, run.warmup + r * run.steps, run.device)
            t.rates.append(run.tokens_per_turn / dt)
            t.losses.append(last)
            t.faults.append(faults)
        a, b = trainees[0].rates[-1], trainees[1].rates[-1]
        print(f"{r + 1:>5}  {fmt_rate(a):>12}  {fmt_rate(b):>12}  {a / b:>5.2f}x", flush=True)
        if not run.on_gpu:
            probes.append(measure_cpu_peak(run.device, run.dtype))
    return probes


def peak_of(run: Settings, probes: list[tuple[float, str]], threads: int) -> tuple[float, str]:
    """(FLOP/s, source) that MFU is measured against: the datasheet's on a GPU, the best probe on a CPU."""
    if run.on_gpu:
        return peak_flops(run.device, run.dtype)
    peak, source = max(probes)
    both = source.split(", ", 1)[1] if ", " in source else ""  # float32: which kernels, which won
    return peak, (f"measured: best of {len(probes)} probes of {PROBE_SECONDS:g} s of "
                  f"{PROBE_N}x{PROBE_N} {run.dtype} matmuls on this CPU, {threads} thread{'s' * (threads != 1)}"
                  + (f"; {both}" if both else ""))


def model_results(trainees: list[Trainee], flops_per_token: float, peak: float) -> dict[str, dict]:
    """Each model's tokens/s (median, min, max, per round), MFU, first and last loss and page faults."""
    results = {}
    for t in trainees:
        med = statistics.median(t.rates)
        results[t.name] = {
            "tokens_per_s_median": med,
            "tokens_per_s_min": min(t.rates),
            "tokens_per_s_max": max(t.rates),
            "tokens_per_s_rounds": t.rates,
            "mfu": flops_per_token * med / peak if peak > 0 else None,
            "first_loss": t.losses[0],
            "last_loss": t.losses[-1],
            "minor_faults_per_step_median": statistics.median(t.faults) if resource else None,
        }
    return results


def comparison(trainees: list[Trainee], results: dict[str, dict]) -> dict[str, float]:
    """ours/peer: the median of the per-round ratios, the ratio of the medians and of the best
    turns; and the widest spread of a model's turns."""
    # the headline: each round runs the two back to back, so a busy moment slows both of its
    # turns; the medians of all turns are comparable only while the machine stays steady
    return {
        "ratio": statistics.median(a / b for a, b in zip(trainees[0].rates, trainees[1].rates)),
        "ratio_of_medians": results["ours"]["tokens_per_s_median"] / results["peer"]["tokens_per_s_median"],
        "ratio_best": results["ours"]["tokens_per_s_max"] / results["peer"]["tokens_per_s_max"],
        "spread": max(max(t.rates) / min(t.rates) for t in trainees),
    }


def print_report(run: Settings, results: dict[str, dict], compared: dict[str, float], peak: float,
                 peak_source: str, load: dict) -> None:
    """The results: a line per model, the ratios (a warning where the machine was busy), the peak, the page faults."""
    print(f"\n{'':6}{'tok/s median':>14}{'min':>10}{'max':>10}{'MFU':>8}   loss first -> last")
    for name, r in results.items():
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        print(f"{name:6}{fmt_rate(r['tokens_per_s_median']):>14}{fmt_rate(r['tokens_per_s_min']):>10}"
              f"{fmt_rate(r['tokens_per_s_max']):>10}{mfu:>8}   {r['first_loss']:.3f} -> {r['last_loss']:.3f}")
    print(f"\nratio ours/peer: {compared['ratio']:.2f}x, the median of the per-round ratios (goal >= 1.2x); "
          f"{compared['ratio_of_medians']:.2f}x of the medians; {compared['ratio_best']:.2f}x of the best turns")
    if compared["spread"] > SPREAD_WARN:
        print(f"warning: a model's turns ranged over {compared['spread']:.1f}x in tokens/s: the machine was busy "
              f"while it ran (load average before {load['before']}, after {load['after']}); only the per-round "
              f"ratio means anything, and a quieter moment or --threads 1 gives steadier figures", file=sys.stderr)
    print(f"peak: {fmt_flops(peak)} ({peak_source})")
    if resource and not run.on_gpu:
        print(f"minor page faults per step (median): ours {results['ours']['minor_faults_per_step_median']:,.0f}, "
              f"peer {results['peer']['minor_faults_per_step_median']:,.0f} (memory the allocator took back from "
              f"the OS and asked for again; each costs time in the kernel)")
    print(f"load average: before {load['before']}, after {load['after']}")


def json_record(run: Settings, *, device_name: str, threads: int, ours_onednn: bool, params: dict[str, int],
                flops_per_token: float, peak: float, peak_source: str, probes: list[tuple[float, str]],
                results: dict[str, dict], compared: dict[str, float], load: dict,
                transformers_version: str) -> dict:
    """The run as --json writes it (NaN and infinities as null)."""
    args = run.args
    record = {
        "benchmark": "train_speed",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "shape": args.shape, "model": run.cfg.to_dict(), "batch": run.batch, "seq": run.seq,
        "dtype": run.dtype, "device": str(run.device), "device_name": device_name, "threads": threads,
        "compile": args.compile, "compile_mode": args.compile_mode,
        "ours_loss": run.ours_loss,
        "ours_matmul": "onednn" if ours_onednn else "torch", "peer_matmul": args.peer_matmul,
        "steps": run.steps, "rounds": run.rounds, "warmup": run.warmup, "seed": args.seed,
        "data": f"random token ids, seed {args.seed}",
        "params": params, "flops_per_token": flops_per_token,
        "peak_flops": peak, "peak_source": peak_source, "cpu_probes": [rate for rate, _ in probes],
        "results": results, **compared,
        "load_average": load,
        "versions": {"torch": str(torch.__version__), "transformers": transformers_version,
                     "python": platform.python_version()},
    }
    return json.loads(json.dumps(record), parse_constant=lambda c: None)  # NaN/inf -> null


def main(argv: list[str] | None = None) -> int:
    """The benchmark, run and reported; the exit status: 0, or 2 for options refused, 1 for a failure."""
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available here", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg, batch, seq = model_config(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run = settings(args, cfg, batch, seq)
    try:
        import transformers
    except ImportError:
        print("error: the peer needs transformers: run in the bench environment "
              "(hatch env create bench; .venv-bench/bin/python tools/bench/train_speed.py)", file=sys.stderr)
        return 2
    load_before = load_average()

    ours_model, peer_model = build_models(run)
    # (a tied weight is counted once)
    params = {"ours": ours_model.num_params(), "peer": sum(p.numel() for p in peer_model.parameters())}
    if params["ours"] != params["peer"]:
        print(f"error: parameter counts differ: ours {params['ours']:,}, peer {params['peer']:,}", file=sys.stderr)
        return 1
    flops_per_token = ours_model.flops_per_token(seq)
    try:
        ours = ours_trainee(args, ours_model, run.device, run.dtype)
        if args.peer_matmul == "onednn":
            peer_onednn(peer_model, run.device, run.dtype)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    trainees = [ours, peer_trainee(args, peer_model, run.device, run.dtype)]
    batches = random_batches(run)
    device_name = torch.cuda.get_device_name(run.device) if run.on_gpu else cpu_model()
    threads = torch.get_num_threads()
    print_setup(run, trainees, ours_model, peer_model, params, flops_per_token, device_name, threads, load_before,
                transformers.__version__)

    probes = [] if run.on_gpu else [measure_cpu_peak(run.device, run.dtype)]
    warm_up(run, trainees, batches)
    probes += time_rounds(run, trainees, batches)
    peak, peak_source = peak_of(run, probes, threads)
    load = {"before": load_before, "after": load_average()}
    results = model_results(trainees, flops_per_token, peak)
    compared = comparison(trainees, results)
    print_report(run, results, compared, peak, peak_source, load)

    if args.json:
        record = json_record(run, device_name=device_name, threads=threads, ours_onednn=ours_model.onednn,
                             params=params, flops_per_token=flops_per_token, peak=peak, peak_source=peak_source,
                             probes=probes, results=results, compared=compared, load=load,
                             transformers_version=transformers.__version__)
        write_json(args.json, record)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
