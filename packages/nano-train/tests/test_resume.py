"""Resume (defect 14): N steps + resume + N steps equals 2N steps exactly, with
dropout so that the RNG matters; the data position is restored without
re-reading; checkpoints survive kill -9 at any moment; Ctrl-C saves and exits."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from nano_train import checkpoint as ckpt_io, train as train_module
from nano_train.data import Batcher
from nano_train.metrics import RunLog, read_log
from nano_train.train import train


pytestmark = pytest.mark.usefixtures("one_thread")


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def logged(out_dir, kind, field):
    return {r["step"]: r[field] for r in read_log(out_dir / "log.jsonl") if r["kind"] == kind}


@pytest.mark.parametrize("mode", ["pretrain", "sft", "lora", "float16"])
def test_resume_is_exact(tmp_path, small_pretrain, self_id_sft, uneven_sft, tiny_config, monkeypatch, mode):
    """lora: the adapters of a pretrained base train, with LoRA dropout. float16: a loss
    scale that grows every step overflows every other one, so that the skipped steps
    and the scaler's state must come back too."""
    N = 4
    task = "pretrain" if mode == "float16" else mode
    data = {"pretrain": small_pretrain, "sft": self_id_sft, "lora": uneven_sft}[task]
    common = dict(task=task, dropout=0.2, max_iters=2 * N, lr_decay_iters=2 * N, warmup_iters=2,
                  eval_interval=2, eval_iters=2, gradient_accumulation_steps=2, batch_size=3,
                  block_size=32 if task == "pretrain" else 64, sample_tokens=0)
    if mode == "lora":
        train(tiny_config(small_pretrain, out_dir=tmp_path / "base", max_iters=2, block_size=64))
        common.update(init_from=str(tmp_path / "base" / "latest.pt"), lora_dropout=0.2)
    if mode == "float16":
        common.update(dtype="float16")
        monkeypatch.setattr(train_module, "make_grad_scaler", lambda dtype, device: torch.amp.GradScaler(
            device.type, init_scale=2.0**20, growth_interval=1, enabled=dtype == "float16"))
    straight = tmp_path / "straight"
    train(tiny_config(data, out_dir=straight, **common))

    split = tmp_path / "split"
    first = train(tiny_config(data, out_dir=split, **{**common, "max_iters": N}))
    assert first.step == N

    # Record which rows the resumed run's training batcher reads.
    reads = []
    real_next, real_load = Batcher.next, Batcher.load_state_dict

    def spy_load(self, state):
        self.spied = True
        real_load(self, state)

    def spy_next(self):
        if getattr(self, "spied", False):
            reads.append(self.row)
        return real_next(self)

    monkeypatch.setattr(Batcher, "load_state_dict", spy_load)
    monkeypatch.setattr(Batcher, "next", spy_next)
    second = train(tiny_config(data, out_dir=split, **{**common, "init_from": "resume"}))
    monkeypatch.undo()

    # The resumed run continued from row N * accum * batch and read only new rows.
    assert reads == [N * 2 * 3 + 3 * i for i in range(N * 2)]  # N steps x 2 micro-batches of 3 rows
    # Identical losses (exact float equality) and identical final weights and optimizer state.
    a_loss, b_loss = logged(straight, "train", "loss"), logged(split, "train", "loss")
    assert a_loss == b_loss and len(a_loss) == 2 * N
    assert logged(straight, "eval", "val_loss") == logged(split, "eval", "val_loss")
    a, b = load(straight / "latest.pt"), load(split / "latest.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert a["best_val_loss"] == b["best_val_loss"] == second.best_val_loss
    assert a["data_state"] == b["data_state"] and a["tokens_seen"] == b["tokens_seen"]
    assert torch.equal(a["rng"]["ranks"][0]["torch"], b["rng"]["ranks"][0]["torch"])
    assert a["scaler"] == b["scaler"]
    if mode == "float16":  # steps skipped for overflow (no grad norm logged) in both halves
        skipped = [s for s, norm in logged(straight, "train", "grad_norm").items() if norm is None]
        assert any(s <= N for s in skipped) and any(s > N for s in skipped), skipped


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    import numpy as np

    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    ckpt_io.save_atomic({"rng": ckpt_io.rng_state()}, tmp_path / "r.pt")
    want = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    ckpt_io.set_rng_state(load(tmp_path / "r.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(want[0], got[0]) and (want[1] == got[1]).all() and want[2] == got[2]


def test_rng_state_of_more_gpus_than_this_machine_has_restores_those_it_has(monkeypatch):
    """A checkpoint holds one CUDA RNG state per GPU of the machine that wrote it; a resume on
    a machine with fewer restores the ones it has (a process trains on one of them). Was:
    torch.cuda.set_rng_state_all went past the last GPU (an IndexError, reported as a checkpoint
    that cannot be restored). No GPU here: torch.cuda's calls are stood in for."""
    state = {**ckpt_io.rng_state(), "cuda": [torch.ones(8, dtype=torch.uint8), torch.zeros(8, dtype=torch.uint8)]}
    given = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: given.append(list(states)))
    ckpt_io.set_rng_state(state)
    assert len(given) == 1 and len(given[0]) == 1 and torch.equal(given[0][0], state["cuda"][0])


def test_resume_drops_a_log_line_cut_inside_a_utf8_character(tmp_path):
    """What a kill during a write leaves: the last line ends inside a multi-byte character."""
    log = tmp_path / "log.jsonl"
    good = ['{"kind": "start", "step": 0, "note": "意识"}', '{"kind": "train", "step": 1, "loss": 8.0}',
            '{"kind": "train", "step": 3, "loss": 7.0}', "7", '[1, 2]', '{"kind": "eval", "step": "x"}']
    cut = '{"kind": "train", "step": 4, "note": "意'.encode("utf-8")[:-1]
    log.write_bytes("".join(line + "\n" for line in good).encode("utf-8") + cut)
    RunLog(log, True, resume_step=2)
    assert log.read_text(encoding="utf-8").splitlines() == [good[0], good[1], good[5]]  # step 3 is run again


def test_read_log_skips_what_is_not_a_json_object(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_bytes(b'{"kind": "train", "step": 1}\n\xff\xfe not utf-8\n7\n[1]\n"text"\nnull\n{"kind": "end"}\n'
                    + '{"kind": "train", "note": "意'.encode("utf-8")[:-1])
    assert read_log(log) == [{"kind": "train", "step": 1}, {"kind": "end"}]


@pytest.mark.skipif(sys.platform == "win32", reason="no pid probe there: nothing is removed")
def test_a_run_removes_only_the_temporaries_of_dead_checkpoint_writers(tmp_path, capsys):
    from nano_train.train import prepare_out_dir

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that no process has now
    out = tmp_path / "run"
    out.mkdir()
    stale = [f".latest.pt.{child.pid}.tmp", f".ckpt_000010.pt.{child.pid}.tmp"]
    kept = [f".latest.pt.{os.getppid()}.tmp",  # a live writer's (the test's parent process)
            f".latest.pt.x{child.pid}.tmp", f".latest.pt.{child.pid}.tmp.bak", f"latest.pt.{child.pid}.tmp",
            f".notes.txt.{child.pid}.tmp"]  # not names save_atomic makes for a checkpoint
    for name in stale + kept:
        (out / name).write_bytes(b"half a checkpoint")
    prepare_out_dir(out, overwrite=False, init_from="scratch")  # what train() does first
    assert sorted(p.name for p in out.iterdir()) == sorted(kept)
    err = capsys.readouterr().err
    assert err == f"note: removed {', '.join(sorted(stale))} from {out}: left by a checkpoint write that was " \
                  "interrupted\n"
    assert ckpt_io.remove_stale_temporaries(out) == [] and capsys.readouterr().err == ""


def _start(args, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "nano_train.pretrain", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)


def _wait_for(path, proc, timeout=120):
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, f"{path} did not appear"
        time.sleep(0.05)


def _run_args(small_pretrain, out, **extra):
    args = {"dataset": small_pretrain, "out_dir": out, "n_layer": 2, "n_embd": 64, "n_head": 2, "n_kv_head": 2,
            "block_size": 32, "batch_size": 4, "max_iters": 100_000, "checkpoint_interval": 1, "eval_interval": 5,
            "eval_iters": 1, "log_interval": 1, "device": "cpu", "peak_flops": 1e10, "sample_tokens": 0}
    args.update(extra)
    return [f"--{k}={v}" for k, v in args.items()]


@pytest.mark.slow
def test_kill_9_at_random_moments_leaves_a_loadable_checkpoint(tmp_path, small_pretrain):
    """Checkpoints are written every step, so a random kill often lands inside a write.
    Each round resumes from what the previous kill left."""
    out = tmp_path / "run"
    rng = random.Random(1234)
    last_step = 0
    for round_ in range(4):
        extra = {"init_from": "resume"} if round_ else {}
        proc = _start(_run_args(small_pretrain, out, **extra), tmp_path)
        if round_ == 0:
            _wait_for(out / "latest.pt", proc)
        else:  # wait until this process has written a checkpoint of its own
            t0 = time.monotonic()
            while load_step(out / "latest.pt") <= last_step:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() - t0 < 120
                time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        ck = load(out / "latest.pt")  # must load, whatever the moment of the kill
        assert ck["step"] >= last_step and ck["step"] > 0
        model_keys = {k for k in ck["model"]}
        assert "tok_embd.weight" in model_keys
        last_step = ck["step"]
    print(f"after 4 kills: latest.pt at step {last_step}")


def load_step(path):
    try:
        return load(path)["step"]
    except Exception:
        return -1


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_saves_latest_and_exits_cleanly(tmp_path, small_pretrain, sig):
    out = tmp_path / "run"
    proc = _start(_run_args(small_pretrain, out, checkpoint_interval=1000), tmp_path)
    _wait_for_steps(out, proc)  # training under way (a few steps logged)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr
    assert f"interrupt ({sig.name}): saving latest.pt" in stderr
    # the hint names the run's folder: --init_from=resume alone would resume the default out_dir's run
    assert "interrupted at step" in stdout and f"continue with --init_from=resume --out_dir={out}\n" in stdout
    ck = load(out / "latest.pt")
    steps = logged(out, "train", "loss")
    assert ck["step"] == max(steps) >= 3
    end = [r for r in read_log(out / "log.jsonl") if r["kind"] == "end"]
    assert end and end[-1]["interrupted"] is True


def _wait_for_steps(out, proc, n=3):
    """Until the run into out has logged n training steps (its process must live meanwhile)."""
    t0 = time.monotonic()
    while not (out / "log.jsonl").exists() or sum(1 for r in read_log(out / "log.jsonl") if r["kind"] == "train") < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < 120
        time.sleep(0.05)


def _default_sighup():  # (a child of `nohup pytest` would inherit its ignored SIGHUP)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on Windows")
@pytest.mark.parametrize("sighups", [2, 0], ids=["sighup_twice", "write_fails_first"])
def test_a_terminal_that_closes_saves_latest_as_ctrl_c_does(tmp_path, small_pretrain, sighups):
    """The terminal the run prints to closes: it hangs up first, then the shell and the
    kernel each send SIGHUP (sighup_twice), or a progress line fails with EIO before any
    SIGHUP came (write_fails_first). Either way latest.pt is saved at the step, exit 130
    (was: killed at once, the steps since the last checkpoint lost; with SIGHUP handled
    alone, the second SIGHUP aborted as a second Ctrl-C, and a line to the hung-up
    terminal ended the run with EIO, before the save)."""
    import pty

    out = tmp_path / "run"
    main_fd, terminal = pty.openpty()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "nano_train.pretrain",
                             *_run_args(small_pretrain, out, checkpoint_interval=1000)],
                            env=env, stdout=terminal, stderr=terminal, cwd=tmp_path, preexec_fn=_default_sighup)
    os.close(terminal)
    try:
        _wait_for_steps(out, proc)
    finally:
        os.close(main_fd)  # the terminal hangs up: a write to it is an error from now on
    for _ in range(sighups):
        time.sleep(0.05)
        proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=120) == 130
    ck = load(out / "latest.pt")
    assert ck["step"] == max(logged(out, "train", "loss")) >= 3
    end = [r for r in read_log(out / "log.jsonl") if r["kind"] == "end"]
    assert end and end[-1]["interrupted"] is True


@pytest.mark.slow
def test_ctrl_c_saves_latest_when_the_output_pipe_goes_with_it(tmp_path, small_pretrain):
    """`pretrain ... | tee log`: Ctrl-C stops tee too, and the next progress line meets a
    closed pipe; the save the Ctrl-C asked for comes first (was: exit 1, "standard output
    was closed", no checkpoint)."""
    out = tmp_path / "run"
    proc = _start(_run_args(small_pretrain, out, checkpoint_interval=1000), tmp_path)
    _wait_for_steps(out, proc)
    proc.send_signal(signal.SIGINT)
    proc.stdout.close()  # as tee ends
    assert proc.wait(timeout=120) == 130, proc.stderr.read()
    proc.stderr.close()
    ck = load(out / "latest.pt")
    assert ck["step"] == max(logged(out, "train", "loss")) >= 3


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on Windows")
def test_a_run_under_nohup_goes_on_after_sighup(tmp_path, small_pretrain):  # guard
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "nano_train.pretrain",
                             *_run_args(small_pretrain, out, max_iters=40, checkpoint_interval=1000)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))  # what nohup does
    _wait_for_steps(out, proc)
    proc.send_signal(signal.SIGHUP)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert load(out / "latest.pt")["step"] == 40 and "interrupt" not in stderr


@pytest.mark.skipif(sys.platform != "linux", reason="/dev/full is Linux's")
def test_standard_output_that_cannot_be_written_stops_the_run_with_what_failed(tmp_path, small_pretrain):
    """`> /dev/full` (as a full disk under `> file`): one line naming standard output and
    what to do next (was: `error: [Errno 28] No space left on device`, as if the run's
    own folder were full)."""
    out = tmp_path / "run"
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "nano_train.pretrain", *_run_args(small_pretrain, out, max_iters=4)],
                           stdout=full, stderr=subprocess.PIPE, text=True, cwd=tmp_path, timeout=300,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 1, r.stderr
    lines = [line for line in r.stderr.splitlines() if not line.startswith("note:")]
    assert lines == [f"error: standard output could not be written: No space left on device; the run stopped "
                     f"(no checkpoint was written: start again with --overwrite=true)"], r.stderr


def test_ctrl_c_inside_torchs_writer_stays_a_ctrl_c(tmp_path, monkeypatch):
    """torch's zip writer turns a KeyboardInterrupt inside it into a RuntimeError about an
    "unexpected pos": a second Ctrl-C during a checkpoint write was reported as a failed
    disk, exit status 1 (was, half the time)."""
    path = tmp_path / "latest.pt"
    ckpt_io.save_atomic({"step": 1}, path)
    before = path.read_bytes()

    def save(obj, f):
        f.write(b"PK half")
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 123670592 vs 123670480")

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(KeyboardInterrupt):
        ckpt_io.save_atomic({"step": 2}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]
