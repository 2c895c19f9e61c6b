"""nano_train.problems: a run stopped by Ctrl-C during training is continued by the same
command from its latest.pt (the same steps and weights as a run never stopped), and the
command says so; --fresh, another seed or another config start over."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from nano_train.checkpoint import load
from nano_train.problems import make
from nano_train.problems.__main__ import main
from nano_train.problems.runner import Interrupted, Options, claim_out_dir, train_model
from nano_train.problems.sort import Sort


def _steps_run(out_dir, **kw):
    """A sort run of 8 steps (bounded by steps, not by the clock) on 2,000 rows."""
    p = make("sort")
    p.train_rows, p.val_rows = 2_000, 100
    return p, Options(out_dir=out_dir, time_budget=0, max_iters=8, eval_cases=5, use_c=False, progress=False, **kw)


def count_steps(monkeypatch, interrupt_at=None):
    """The training steps taken, counted in gradient clipping (once a step); with
    interrupt_at, a Ctrl-C (SIGINT) inside that step: the run stops after it."""
    real = torch.nn.utils.clip_grad_norm_
    calls = []

    def clip(*a, **k):
        calls.append(1)
        if len(calls) == interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    return calls


def _train(problem, opts, said=None):
    with claim_out_dir(problem, opts.out_dir):
        return train_model(problem, opts, say=(said.append if said is not None else lambda m: None))


def test_an_interrupted_run_continues_where_it_stopped(tmp_path, monkeypatch):
    """Ctrl-C at step 3, then the same settings again: training continues from latest.pt at
    step 3, takes the 5 steps left, and ends with the weights of a run never stopped
    (before: the rerun deleted latest.pt and trained all 8 steps from scratch)."""
    p, opts = _steps_run(tmp_path / "stopped")
    with monkeypatch.context() as m:
        count_steps(m, interrupt_at=3)
        with pytest.raises(Interrupted) as e:
            _train(p, opts)
    latest = tmp_path / "stopped" / "latest.pt"
    assert e.value.step == 3 and load(latest)["step"] == 3
    assert str(e.value) == (f"interrupted: run the same command again to continue from {latest} (step 3); "
                            "--fresh starts over")
    said = []
    with monkeypatch.context() as m:
        steps = count_steps(m)
        rec = _train(p, opts, said)
    assert len(steps) == 5 and rec["steps"] == 8 and rec["resumed_from"] == 3 and not rec["reused"]
    line = next(s for s in said if s.startswith("training   continuing"))
    assert line.startswith(f"training   continuing the interrupted run from {latest} at step 3 of 8 (") \
        and line.endswith(" trained); --fresh starts over"), line

    _, never_stopped = _steps_run(tmp_path / "whole")
    assert _train(p, never_stopped)["steps"] == 8
    resumed, whole = load(latest), load(tmp_path / "whole" / "latest.pt")
    assert resumed["step"] == whole["step"] == 8
    assert resumed["model"].keys() == whole["model"].keys()
    for name, tensor in whole["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
    # finished now: the next run reuses it
    assert _train(p, opts)["reused"]


@pytest.mark.parametrize("change", ["fresh", "seed", "config"])
def test_fresh_another_seed_or_config_start_over(tmp_path, monkeypatch, change):
    p, opts = _steps_run(tmp_path / "out")
    with monkeypatch.context() as m:
        count_steps(m, interrupt_at=3)
        with pytest.raises(Interrupted):
            _train(p, opts)
    again = {"fresh": dict(fresh=True), "seed": dict(seed=7), "config": dict(overrides=["--n_embd=32"])}[change]
    _, opts = _steps_run(tmp_path / "out", **again)
    said = []
    with monkeypatch.context() as m:
        steps = count_steps(m)
        rec = _train(p, opts, said)
    assert len(steps) == 8 and rec["steps"] == 8 and "resumed_from" not in rec
    assert not any("continuing" in s for s in said), said


def test_the_command_says_how_to_continue_and_continues(tmp_path, monkeypatch, capsys):
    """`python -m nano_train.problems` stopped by Ctrl-C names the command that continues the
    run (before: a bare "interrupted"); run again, it says that it continues, from which
    step, and finishes the run's steps; result.json records it."""
    monkeypatch.setattr(Sort, "train_rows", 2_000)
    monkeypatch.setattr(Sort, "val_rows", 100)
    out = tmp_path / "out"
    argv = ["sort", "--out_dir", str(out), "--no-c", "--max_iters", "6", "--time_budget", "600", "--eval_cases", "5"]
    with monkeypatch.context() as m:
        count_steps(m, interrupt_at=2)
        assert main(argv) == 130
    err = capsys.readouterr().err
    assert err.rstrip().splitlines()[-1] == (f"interrupted: run the same command again to continue from "
                                             f"{out / 'latest.pt'} (step 2); --fresh starts over"), err
    with monkeypatch.context() as m:
        steps = count_steps(m)
        assert main(argv) == 0
    said = capsys.readouterr().out
    line = next(s for s in said.splitlines() if s.startswith("training   continuing"))
    assert line.startswith(f"training   continuing the interrupted run from {out / 'latest.pt'} at step 2 of 6 (") \
        and line.endswith(" trained of its 10m00s time budget, which counts across resumes); --fresh starts over"), line
    assert len(steps) == 4
    result = json.loads((out / "result.json").read_text())
    assert result["train"]["steps"] == 6 and result["train"]["resumed_from"] == 2
