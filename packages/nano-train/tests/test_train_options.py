"""Training options that change how a step is computed, checked in the loop itself:
the attention kernel system.attention_backend asks for, gradient clipping (on the
unscaled gradients, its norm logged before clipping), dropout in training only, the
held-out loss over eval_iters batches of the validation split, the fused AdamW, and
an exact resume of a compiled run with dropout."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from nano_train.config import OptimConfig
from nano_train.convert import load_checkpoint_model
from nano_train.data import Batcher, Dataset
from nano_train.metrics import read_log
from nano_train.train import EVAL_SEED, batch_to_device, make_adamw, train


pytestmark = pytest.mark.usefixtures("one_thread")


def logged(out_dir, kind, field):
    return {r["step"]: r[field] for r in read_log(out_dir / "log.jsonl") if r["kind"] == kind}


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


class KernelNames(TorchDispatchMode):
    """The ATen operators run under it (below autograd: the kernels themselves)."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend, flash", [("auto", True), ("math", False), ("flash", True)])
def test_the_attention_backend_is_the_kernel_that_runs(small_pretrain, tiny_config, monkeypatch, backend, flash):
    """Every attention call of the run (training steps, with gradients, and evaluations,
    without) runs the kernel asked for: on a CPU auto picks the fused flash kernel
    (without dropout), math the unfused composite (softmax of the scores)."""
    real = F.scaled_dot_product_attention
    calls = []

    def spy(*args, **kwargs):
        with KernelNames() as seen:
            out = real(*args, **kwargs)
        calls.append((torch.is_grad_enabled(), any("flash_attention" in name for name in seen.names)))
        return out

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    train(tiny_config(small_pretrain, max_iters=2, eval_interval=2, eval_iters=1, sample_tokens=0,
                      attention_backend=backend))
    assert {grad for grad, _ in calls} == {True, False}  # training and evaluation both seen
    assert {used for _, used in calls} == {flash}, calls


def test_gradients_are_clipped_and_their_norm_is_logged_before_clipping(tmp_path, small_pretrain, tiny_config):
    """A clip far below the gradient norm shrinks the first AdamW update to almost nothing
    (the gradient becomes small against AdamW's eps); the logged norm is the one before
    clipping. Under float16 the norm is that of the unscaled gradients, not of the
    gradients times the loss scale (65536)."""
    common = dict(max_iters=1, warmup_iters=0, eval_iters=0, sample_tokens=0, weight_decay=0.0)
    runs = {}
    for name, clip, dtype in (("free", 0.0, "float32"), ("clipped", 1e-9, "float32"),
                              ("clipped16", 1e-9, "float16")):
        train(tiny_config(small_pretrain, out_dir=tmp_path / name, grad_clip=clip, dtype=dtype, **common))
        runs[name] = (logged(tmp_path / name, "train", "grad_norm")[1], load(tmp_path / name / "latest.pt")["model"])
    train(tiny_config(small_pretrain, out_dir=tmp_path / "start", **{**common, "max_iters": 0}))
    start = load(tmp_path / "start" / "latest.pt")["model"]  # the weights every run started from

    def moved(weights):
        return max((weights[k] - start[k]).abs().max().item() for k in weights)

    (norm_free, free), (norm_clipped, clipped), (norm16, clipped16) = runs["free"], runs["clipped"], runs["clipped16"]
    print(f"grad norms {norm_free} {norm_clipped} {norm16}; largest update {moved(free):.2e} free, "
          f"{moved(clipped):.2e} clipped, {moved(clipped16):.2e} clipped in float16")
    assert norm_free == norm_clipped > 1e-3
    assert norm16 == pytest.approx(norm_free, rel=0.05)
    assert moved(free) > 1e-3  # the learning rate, 3e-3, per weight: AdamW's first step
    assert moved(clipped) < 1e-4 and moved(clipped16) < 1e-4


def test_dropout_acts_in_training_steps_only(tmp_path, small_pretrain, tiny_config):
    """With the same initial weights, dropout changes the training loss of the first step
    but not the validation loss before it (evaluation runs the model in eval mode)."""
    runs = {}
    for name, dropout in (("none", 0.0), ("half", 0.5)):
        train(tiny_config(small_pretrain, out_dir=tmp_path / name, dropout=dropout, max_iters=1, eval_interval=1,
                          eval_iters=2, sample_tokens=0))
        runs[name] = (logged(tmp_path / name, "eval", "val_loss")[0], logged(tmp_path / name, "train", "loss")[1])
    (val_none, train_none), (val_half, train_half) = runs["none"], runs["half"]
    assert val_none == val_half
    assert abs(train_none - train_half) > 1e-3


def test_the_logged_validation_loss_is_eval_iters_batches_of_the_held_out_split(small_pretrain, tiny_config):
    """The step-0 val_loss of a run is the initial model's mean loss over the first
    eval_iters micro-batches that a Batcher of the validation split reads, not over
    other batches or the training split."""
    cfg = tiny_config(small_pretrain, max_iters=0, eval_iters=3, batch_size=4, sample_tokens=0)
    train(cfg)
    got = logged(Path(cfg.run.out_dir), "eval", "val_loss")[0]
    model, _ = load_checkpoint_model(Path(cfg.run.out_dir) / "latest.pt")  # max_iters 0: the initial weights
    ds = Dataset(small_pretrain)

    def mean_loss(split, n_batches):
        seed = EVAL_SEED if split == "val" else cfg.system.seed  # evaluation's own order, training's
        batches = Batcher(ds.source(split, cfg.model.block_size), cfg.data.batch_size, seed)
        with torch.no_grad():
            losses = [model(*batch_to_device(batches.next(), torch.device("cpu")), return_logits=False)[1]
                      for _ in range(n_batches)]
        return torch.stack(losses).mean().item()  # pretraining: every batch counts as many tokens

    want = mean_loss("val", 3)
    others = {"val, 2 batches": mean_loss("val", 2), "val, 4 batches": mean_loss("val", 4),
              "train": mean_loss("train", 3)}
    print(f"logged {got:.6f}, expected {want:.6f}, others {others}")
    assert abs(got - want) < 1e-5
    assert all(abs(got - other) > 1e-4 for other in others.values())  # the check tells them apart


def test_adamw_is_fused_where_this_build_has_the_kernel():
    """The pinned torch (2.13) has the fused AdamW on CPUs (since 2.4): the trainer uses it."""
    params = [torch.nn.Parameter(torch.randn(4, 4))]
    optimizer = make_adamw([{"params": params, "weight_decay": 0.1}], OptimConfig())
    assert optimizer.defaults.get("fused") is True


@pytest.mark.slow
def test_a_compiled_run_with_dropout_resumes_exactly(tmp_path, small_pretrain, tiny_config):
    """compile=true, dropout (the compiled code draws its own random numbers from torch's
    generator, which the checkpoint restores), accumulation: N steps + resume + N steps
    equals 2N steps, losses and weights exactly."""
    N = 2
    common = dict(compile=True, dropout=0.2, max_iters=2 * N, lr_decay_iters=2 * N, eval_interval=N, eval_iters=1,
                  batch_size=2, gradient_accumulation_steps=2, sample_tokens=0)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_config(small_pretrain, out_dir=straight, **common))
    train(tiny_config(small_pretrain, out_dir=split, **{**common, "max_iters": N}))
    train(tiny_config(small_pretrain, out_dir=split, **{**common, "init_from": "resume"}))
    a_loss, b_loss = logged(straight, "train", "loss"), logged(split, "train", "loss")
    assert a_loss == b_loss and len(a_loss) == 2 * N
    assert logged(straight, "eval", "val_loss") == logged(split, "eval", "val_loss")
    a, b = load(straight / "latest.pt")["model"], load(split / "latest.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_a_compiled_run_uses_its_own_attention_backend(tmp_path, small_pretrain, tiny_config):
    """torch.compile's caches (in the process and on disk) do not key a graph on the SDPA
    kernel it was traced under: a compiled math run reused auto's flash graph."""
    from torch.profiler import profile

    used = {}
    for backend in ("auto", "math", "auto"):
        with profile() as prof:
            train(tiny_config(small_pretrain, out_dir=tmp_path / backend, overwrite=True, compile=True, max_iters=1,
                              eval_iters=1, eval_interval=1, sample_tokens=0, attention_backend=backend))
        used.setdefault(backend, []).append(any("flash_attention" in e.name for e in prof.events()))
    assert used == {"auto": [True, True], "math": [False]}, used


def test_flash_with_dropout_is_one_error_line_naming_the_dropout(tmp_path, small_pretrain, tiny_args):
    """torch's reason (no fused kernel takes dropout) came as four warnings, and the error
    line said only that no kernel was left."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "nano_train.pretrain",
                        *tiny_args(small_pretrain, tmp_path / "run", attention_backend="flash", dropout=0.1)],
                       capture_output=True, text=True)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "model.dropout 0.1" in lines[0] and "dropout" in lines[0].split("): ", 1)[1], lines[0]


def test_compile_mode_without_compile_is_named(small_pretrain, tiny_config, capsys):
    """compile_mode without compile trained uncompiled and said nothing."""
    train(tiny_config(small_pretrain, max_iters=1, sample_tokens=0, compile_mode="reduce-overhead"))
    assert "note: system.compile_mode 'reduce-overhead' has no effect without --compile=true" in capsys.readouterr().err


def test_notes_go_to_standard_error_whoever_reads_the_progress(small_pretrain, tiny_config, capsys):
    """A caller drawing its own progress (nano_train.problems) still gets the notes (was: the
    ones printed through the progress lines were dropped there, and went to standard output
    from the commands, while the others went to standard error)."""
    records = []
    train(tiny_config(small_pretrain, max_iters=1, sample_tokens=0, keep_last=2, compile_mode="reduce-overhead"),
          progress=records.append)
    out, err = capsys.readouterr()
    assert "note: run.keep_last 2 has no effect without --keep_checkpoints=true" in err
    assert "note: system.compile_mode 'reduce-overhead' has no effect" in err
    assert "note:" not in out and records
