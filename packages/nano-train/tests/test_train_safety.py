"""What the training commands do with a run directory, a diverging loss and a bad
checkpoint: refuse or stop with one `error:` line, and never lose or spoil the last
good checkpoint. Also the report card of a model with no room for a prompt."""

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nano_train import report
from nano_train.model import ModelConfig, Transformer
from nano_train.train import main, train


pytestmark = pytest.mark.usefixtures("one_thread")


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def args(dataset, out_dir, **extra):
    """--key=value arguments of a seconds-long CPU run (as tests/conftest.py's tiny_config)."""
    values = dict(n_layer=1, n_embd=32, n_head=2, n_kv_head=1, block_size=32, batch_size=4, max_iters=4,
                  warmup_iters=2, learning_rate=3e-3, min_lr=3e-4, eval_interval=2, eval_iters=2, log_interval=1,
                  sample_tokens=0, device="cpu", peak_flops=1e10, dataset=dataset, out_dir=out_dir)
    values.update(extra)
    return [f"--{k}={v}" for k, v in values.items()]


# ---------------------------------------------------------------------------
# A new run into a directory that holds another run


def test_a_new_run_refuses_an_out_dir_holding_a_run(tmp_path, small_pretrain, capsys, error_line):
    out = tmp_path / "run"
    assert main("pretrain", args(small_pretrain, out, keep_checkpoints="true")) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"latest.pt", "best.pt", "ckpt_000002.pt", "ckpt_000004.pt", "log.jsonl", "report.md"} <= set(before)

    # from scratch again (here a worse run): refused, nothing touched
    assert main("pretrain", args(small_pretrain, out, learning_rate=1e-5, min_lr=1e-6)) == 2
    msg = error_line(capsys)
    for needle in (str(out), "--init_from=resume", "--out_dir", "--overwrite=true"):
        assert needle in msg, (needle, msg)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    # so is a fine-tuning run from a base model, even the one in this directory
    sft_args = args(small_pretrain, out, init_from=out / "best.pt")
    assert main("pretrain", sft_args) == 2
    assert "--overwrite=true" in error_line(capsys)
    # ... and with --overwrite its base would be deleted: refused too, with another way out
    assert main("pretrain", sft_args + ["--overwrite=true"]) == 2
    assert "another --out_dir" in error_line(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    # resuming it is what the directory is for
    assert main("pretrain", args(small_pretrain, out, init_from="resume", max_iters=6, keep_checkpoints="true")) == 0
    assert load(out / "latest.pt")["step"] == 6

    # --overwrite=true: the old run's checkpoints, log and report go first, so nothing mixes
    assert main("pretrain", args(small_pretrain, out, max_iters=2, overwrite="true")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "latest.pt", "log.jsonl", "report.md"]
    assert load(out / "latest.pt")["step"] == 2 and load(out / "best.pt")["step"] == 2
    log = (out / "log.jsonl").read_text(encoding="utf-8")
    assert log.count('"kind": "start"') == 1


def test_only_rank_0_looks_for_an_earlier_run(tmp_path, monkeypatch):
    """Under torchrun, rank 1 could see the log.jsonl that rank 0 has just started and
    refuse a new run; only rank 0, the one that writes, decides."""
    from nano_train.config import Config, ConfigError
    from nano_train.train import check_new_run

    (tmp_path / "log.jsonl").write_text("{}\n", encoding="utf-8")
    cfg = Config()
    cfg.run.out_dir = str(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    check_new_run(cfg)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="holds a run that stopped before writing a checkpoint"):
        check_new_run(cfg)


def test_an_out_dir_without_a_run_is_fine(tmp_path, small_pretrain):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    assert main("pretrain", args(small_pretrain, out, max_iters=2)) == 0
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"


# ---------------------------------------------------------------------------
# One run at a time per out_dir


def _train_in_a_child(dataset, out_dir):
    """A pretraining process that runs until it is stopped, once it has logged 2 steps."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "nano_train.pretrain",
                             *args(dataset, out_dir, max_iters=100_000, checkpoint_interval=1)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    log = out_dir / "log.jsonl"
    while not log.exists() or log.read_text(encoding="utf-8").count('"kind": "train"') < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < 120, "the child did not start training"
        time.sleep(0.05)
    return proc


def files(out_dir, writer_pid):
    """The names in out_dir, less the temporary files of the writer's checkpoint writes."""
    return {p.name for p in out_dir.iterdir() if not p.name.endswith(f".{writer_pid}.tmp")}


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="no fcntl: runs are not locked there")
def test_a_second_run_into_an_out_dir_in_use_fails_at_once_and_touches_nothing(tmp_path, small_pretrain, capsys,
                                                                               error_line):
    out = tmp_path / "run"
    first = _train_in_a_child(small_pretrain, out)
    try:
        assert (out / ".run.lock").read_text(encoding="ascii") == f"{first.pid}\n"
        stale = out / ".latest.pt.1.tmp"  # pid 1 (init) is alive: a stale-looking name that must stay too
        for extra in ({"overwrite": "true"}, {"init_from": "resume"}, {"init_from": "resume", "overwrite": "true"}):
            stale.write_bytes(b"x")
            names = files(out, first.pid)
            assert main("pretrain", args(small_pretrain, out, **extra)) == 2
            assert error_line(capsys) == (f"error: another run is writing {out} (pid {first.pid}); wait for it to "
                                          "finish or choose another --out_dir")
            assert names <= files(out, first.pid) and first.poll() is None
        assert load(out / "latest.pt")["step"] >= 1
    finally:
        first.send_signal(signal.SIGINT)
        stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, (stdout, stderr)
    step = load(out / "latest.pt")["step"]
    log = (out / "log.jsonl").read_text(encoding="utf-8")
    assert log.count('"kind": "start"') == 1 and not (out / ".run.lock").exists()
    # the first run is over: resuming it now works
    assert main("pretrain", args(small_pretrain, out, init_from="resume", max_iters=step + 1)) == 0
    assert load(out / "latest.pt")["step"] == step + 1 and not (out / ".run.lock").exists()


def _hold_lock(path: Path, pid: str) -> int:
    """Hold the lock at path as a run of pid would (a descriptor of its own: flock locks of two
    descriptors exclude each other, in one process too)."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{pid}\n".encode("ascii"))
    return fd


def _lock_file_of_another_user(monkeypatch, lock: Path, removable: bool = True) -> None:
    """Opening the lock file at lock (as it is now) for writing is refused, as another user's
    0644 file is; so is removing it where not removable (a sticky folder)."""
    from nano_train import dirlock

    foreign = lock.stat().st_ino
    real_open, real_unlink = os.open, os.unlink

    def is_foreign(path) -> bool:
        return Path(path) == lock and lock.exists() and lock.stat().st_ino == foreign

    def open_(path, flags, *rest):
        if flags & (os.O_WRONLY | os.O_RDWR) and is_foreign(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *rest)

    def unlink(path, *rest, **kw):
        if not removable and is_foreign(path):
            raise PermissionError(errno.EPERM, "Operation not permitted", str(path))
        return real_unlink(path, *rest, **kw)

    monkeypatch.setattr(dirlock.os, "open", open_)
    monkeypatch.setattr(dirlock.os, "unlink", unlink)


@pytest.mark.skipif(sys.platform == "win32", reason="no fcntl: runs are not locked there")
def test_another_users_lock_file_is_read_not_taken_for_an_unwritable_folder(tmp_path, small_pretrain, monkeypatch,
                                                                             capsys, error_line):
    """A run of another user at work, or killed, leaves a lock file this user cannot open to
    write (was: `error: run.out_dir DIR is not a writable directory: Permission denied`, for a
    writable folder; and a killed one's stale lock blocked every later run)."""
    out = tmp_path / "run"
    out.mkdir()
    lock = out / ".run.lock"
    held = _hold_lock(lock, "4242")
    try:
        _lock_file_of_another_user(monkeypatch, lock)
        assert main("pretrain", args(small_pretrain, out, max_iters=2)) == 2
        assert error_line(capsys) == (f"error: another run is writing {out} (pid 4242); wait for it to finish or "
                                      "choose another --out_dir")
    finally:
        os.close(held)
    assert main("pretrain", args(small_pretrain, out, max_iters=2)) == 0  # stale now: removed, and run
    assert not lock.exists() and load(out / "latest.pt")["step"] == 2


@pytest.mark.skipif(sys.platform == "win32", reason="no fcntl: runs are not locked there")
def test_a_stale_lock_only_its_owner_may_remove_is_named(tmp_path, small_pretrain, monkeypatch, capsys, error_line):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".run.lock").write_text("4242\n", encoding="ascii")
    _lock_file_of_another_user(monkeypatch, out / ".run.lock", removable=False)
    assert main("pretrain", args(small_pretrain, out, max_iters=2)) == 2
    assert error_line(capsys) == (f"error: {out / '.run.lock'} was left by another user's run that was killed; it "
                                  "holds no lock, but only its owner may remove it: remove it as that user, or "
                                  "choose another --out_dir")


@pytest.mark.skipif(sys.platform == "win32", reason="no fcntl: runs are not locked there")
@pytest.mark.parametrize("extra", [{"init_from": "resume"}, {}], ids=["resume", "new run"])
def test_a_run_at_work_before_its_first_checkpoint_is_not_called_stopped(tmp_path, small_pretrain, capsys, error_line,
                                                                         extra):
    """Its folder holds log.jsonl and no checkpoint yet (was: "the run in DIR stopped before
    writing a checkpoint; start again with --overwrite=true")."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text('{"kind": "start"}\n', encoding="utf-8")
    held = _hold_lock(out / ".run.lock", "4242")
    try:
        assert main("pretrain", args(small_pretrain, out, max_iters=2, **extra)) == 2
        assert error_line(capsys) == (f"error: another run is writing {out} (pid 4242); wait for it to finish or "
                                      "choose another --out_dir")
    finally:
        os.close(held)


@pytest.mark.skipif(sys.platform == "win32", reason="no fcntl: runs are not locked there")
def test_a_killed_runs_lock_file_does_not_stop_the_next_run(tmp_path, small_pretrain, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".run.lock").write_text("999999\n", encoding="ascii")  # left by a SIGKILL: a file, but no lock
    assert main("pretrain", args(small_pretrain, out, max_iters=2)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "latest.pt", "log.jsonl", "report.md"]


# ---------------------------------------------------------------------------
# Hostile or mistyped command lines and config files: one line, exit 2


def test_odd_command_lines_and_config_files_are_one_error_line(tmp_path, small_pretrain, capsys, monkeypatch,
                                                               error_line):
    monkeypatch.chdir(tmp_path)
    # `--max_iters 5` once read 5 as a config file ("5: cannot read config")
    assert main("pretrain", args(small_pretrain, tmp_path / "run") + ["--max_iters", "5"]) == 2
    assert error_line(capsys) == "error: '--max_iters 5': settings take --key=value; write '--max_iters=5'"
    # an endless config file was read whole (MemoryError, or the machine's memory)
    assert main("pretrain", ["/dev/zero", "--print_config"]) == 2
    assert error_line(capsys) == "error: /dev/zero: larger than 16 MiB; not a config file"
    # a NUL in a file name once surfaced as "ValueError: embedded null byte" (exit 1)
    nul = tmp_path / "nul.json"
    nul.write_text('{"run": {"out_dir": "a\\u0000b"}}', encoding="utf-8")
    assert main("pretrain", [str(nul)]) == 2
    assert error_line(capsys) == "error: run.out_dir: 'a\\x00b' holds a NUL character, which no file name can"
    # an editor's byte order mark is no error (prepare takes one in its data too)
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"model": {"n_layer": 3}}).encode())
    assert main("pretrain", [str(bom), "--print_config"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["n_layer"] == 3


@pytest.mark.parametrize("flag", ["--help", "--print_config"])
def test_output_to_a_reader_that_went_away_is_quiet(flag):
    """`pretrain --help | head -1` once ended in a BrokenPipeError traceback (and
    --print_config in "error: [Errno 32] Broken pipe"), unlike the other commands."""
    r, w = os.pipe()
    child = subprocess.Popen([sys.executable, "-m", "nano_train.pretrain", flag], stdout=w, stderr=subprocess.PIPE)
    os.close(w)
    os.close(r)  # no reader at all: the child's first write fails with EPIPE
    _, err = child.communicate(timeout=120)
    assert child.returncode == 1 and err == b"", err


# ---------------------------------------------------------------------------
# The attention must fit the rows: shifted rows need causal attention


def test_full_attention_on_next_token_rows_is_refused(tmp_path, small_pretrain, self_id_sft, capsys, error_line):
    """With full attention every position of a pretraining or SFT row sees the token it
    is to predict: the loss fell (a reviewer's run: 2.33 against the causal 4.74) while
    the model learned nothing it could generate with, and the run ended with status 0."""
    for dataset, command in ((small_pretrain, "pretrain"), (self_id_sft, "sft")):
        out = tmp_path / command
        assert main(command, args(dataset, out, is_causal="false")) == 2
        msg = error_line(capsys)
        assert "the model has full attention (model.is_causal false, from the config)" in msg, msg
        assert f"{dataset} is a {command} dataset, whose targets are the next tokens" in msg, msg
        assert "--is_causal=true" in msg and not out.exists()


def test_a_causal_model_on_seq2seq_rows_trains_with_a_note(tmp_path, nano80, capsys):
    """Seq2seq rows are made for full attention; a causal model may still be fitted to
    them (the C engine's `nano seq2seq --causal` runs one): a note, not an error."""
    import numpy as np

    from nano_train.data import write_rows

    digits = np.array(nano80.encode("0123456789"))
    x = digits[np.random.default_rng(0).integers(0, 10, size=(16, 6))]
    write_rows(tmp_path / "s2s", nano80, "seq2seq", {"train": (x, np.sort(x, axis=1), np.ones_like(x))})
    argv = args(tmp_path / "s2s", tmp_path / "run", block_size=6, max_iters=2, eval_iters=0)
    assert main("sft", argv) == 0
    err = capsys.readouterr().err
    assert "holds seq2seq rows (made for full attention) and the model is causal" in err, err
    assert main("sft", args(tmp_path / "s2s", tmp_path / "run2", block_size=6, max_iters=2, eval_iters=0,
                            is_causal="false")) == 0
    assert "made for full attention" not in capsys.readouterr().err


def test_a_base_models_limits_get_remedies_the_run_can_take(tmp_path, nano80, capsys, error_line):
    """A run from a base model keeps its architecture (block_size, attention kind): an error
    about them offers what can change (the data, another base), not the model keys that would
    only conflict with the base. Was: "set model.block_size to 12 or more", then, done so,
    "model.block_size 12 (its: 6) conflicts with the base model"; and "set --is_causal=true"
    for a base that records full attention."""
    import numpy as np

    from nano_train.data import write_rows

    digits = np.array(nano80.encode("0123456789"))
    rng = np.random.default_rng(0)
    for name, width in (("s6", 6), ("s12", 12)):
        x = digits[rng.integers(0, 10, size=(16, width))]
        write_rows(tmp_path / name, nano80, "seq2seq", {"train": (x, np.sort(x, axis=1), np.ones_like(x))})
    x = digits[rng.integers(0, 10, size=(16, 7))]
    write_rows(tmp_path / "next", nano80, "sft", {"train": (x, np.ones_like(x))})  # next-token rows
    base = tmp_path / "base"
    assert main("sft", args(tmp_path / "s6", base, block_size=6, max_iters=1, eval_iters=0, is_causal="false")) == 0
    capsys.readouterr()
    from_base = [f"--dataset={tmp_path / 's12'}", f"--out_dir={tmp_path / 'run'}", f"--init_from={base / 'latest.pt'}",
                 "--max_iters=1", "--eval_iters=0", "--sample_tokens=0", "--device=cpu"]
    assert main("sft", from_base) == 2
    msg = error_line(capsys)
    assert f"are 12 tokens long but the model's block_size is 6 (set by the base model {base / 'latest.pt'}); " \
           "write rows of 6 tokens or fewer (data.write_rows)" in msg, msg
    assert "model.block_size" not in msg, msg
    # a base with full attention on next-token rows: no --is_causal=true to offer
    from_base[0] = f"--dataset={tmp_path / 'next'}"
    assert main("sft", from_base) == 2
    msg = error_line(capsys)
    assert f"or start from a causal model (the base model {base / 'latest.pt'} records full attention, which this " \
           "run keeps)" in msg and "--is_causal=true" not in msg, msg
    # from scratch the model keys are the remedy, as before
    assert main("sft", args(tmp_path / "s12", tmp_path / "run3", block_size=6, max_iters=1, eval_iters=0)) == 2
    assert "set model.block_size to 12 or more" in error_line(capsys)


def test_print_config_and_checks_see_the_base_models_architecture(tmp_path, small_pretrain, capsys, error_line):
    """--print_config prints the config the run resolves: from a base model, the base's
    architecture (only dropout may be set). Was: the config's default model (4 x 256, block
    512); and a batch too large was refused as "got 100000000 * 512", the default block_size."""
    base = tmp_path / "base"
    assert main("pretrain", args(small_pretrain, base, max_iters=1, eval_iters=0, tie_embeddings="false")) == 0
    capsys.readouterr()
    assert main("pretrain", [f"--dataset={small_pretrain}", f"--out_dir={tmp_path / 'run'}", "--dropout=0.1",
                             f"--init_from={base / 'latest.pt'}", "--print_config"]) == 0
    model = json.loads(capsys.readouterr().out)["model"]
    assert (model["n_layer"], model["n_embd"], model["n_head"], model["n_kv_head"], model["block_size"],
            model["tie_embeddings"], model["dropout"]) == (1, 32, 2, 1, 32, False, 0.1), model
    assert not (tmp_path / "run").exists()
    assert main("pretrain", [f"--dataset={small_pretrain}", f"--out_dir={tmp_path / 'run'}", "--batch_size=100000000",
                             f"--init_from={base / 'latest.pt'}"]) == 2
    msg = error_line(capsys)
    assert "data.batch_size 100,000,000 is more rows than the training split" in msg, msg


# ---------------------------------------------------------------------------
# An out_dir that cannot be written: found before any data is loaded


def test_an_unwritable_out_dir_is_one_error_line_before_anything_is_loaded(tmp_path, capsys, error_line):
    a_file = tmp_path / "a_file"
    a_file.write_text("", encoding="utf-8")
    # the dataset does not exist either: the out_dir is checked first (exit 1, not the data error's 2)
    assert main("pretrain", args(tmp_path / "no_data", a_file / "run")) == 1
    msg = error_line(capsys)
    assert "run.out_dir" in msg and str(a_file / "run") in msg and "not a writable directory" in msg


# ---------------------------------------------------------------------------
# Divergence: stop, and keep the last good checkpoint


@pytest.mark.parametrize("where", ["checkpoint", "log"])
def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, small_pretrain, capsys, where, error_line):
    """lr 1e3 without clipping: the step-1 model is sound, the step-2 one is not (its
    activations overflow float32, or its weights are not finite). Checked before each
    checkpoint write (here: every step, no log records before it) and at each log record
    (where the loss is read from the device anyway)."""
    out = tmp_path / "run"
    extra = (dict(checkpoint_interval=1, log_interval=1000) if where == "checkpoint"
             else dict(checkpoint_interval=1, log_interval=1))
    code = main("pretrain", args(small_pretrain, out, learning_rate=1e3, min_lr=0, grad_clip=0, max_iters=50,
                                 eval_interval=1000, **extra))
    assert code == 1
    msg = error_line(capsys)
    assert "training diverged" in msg and f"{out / 'latest.pt'} (step 1)" in msg, msg
    ck = load(out / "latest.pt")
    assert ck["step"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    assert ck["train_loss"] is None or math.isfinite(ck["train_loss"])


def test_divergence_before_any_checkpoint_says_so(tmp_path, small_pretrain, capsys, error_line):
    out = tmp_path / "run"
    assert main("pretrain", args(small_pretrain, out, learning_rate=1e6, min_lr=0, grad_clip=0, max_iters=50,
                                 eval_interval=1000, log_interval=1)) == 1
    assert "no checkpoint was written before it" in error_line(capsys)
    assert not (out / "latest.pt").exists()


# ---------------------------------------------------------------------------
# Checkpoints that cannot be resumed: one line naming the file and what is wrong


@pytest.fixture
def finished_run(tmp_path, small_pretrain):
    out = tmp_path / "run"
    assert main("pretrain", args(small_pretrain, out, max_iters=2)) == 0
    return out


@pytest.mark.parametrize("damage,message", [
    (lambda ck: [ck.pop("best_val_loss"), ck.pop("rng")], "an incomplete checkpoint, it has no rng, best_val_loss"),
    (lambda ck: ck.pop("optimizer"), "it has no optimizer"),
    (lambda ck: ck.pop("data_state"), "it has no data_state"),
    (lambda ck: ck.update(config={"model": ck["config"]["model"]}), "config needs 'model' and 'train'"),
    (lambda ck: ck["model"].update({"tok_embd.weight": torch.zeros(3, 32)}),
     "wrong shape: tok_embd.weight (3, 32) (the model's: (4096, 32))"),
    (lambda ck: [ck["model"].pop("norm_final.weight"), ck["model"].update(extra=torch.zeros(1))],
     "missing: norm_final.weight; unexpected: extra"),
    (lambda ck: ck.update(optimizer={"state": {}, "param_groups": []}), "cannot restore the run from it (ValueError"),
    (lambda ck: ck.update(rng={"world_size": 1, "ranks": [{}]}), "cannot restore the run from it (KeyError: 'torch')"),
    (lambda ck: ck.update(tokenizer={"nothing": 1}), "cannot restore the run from it"),
], ids=["no_rng", "no_optimizer", "no_data_state", "no_train_config", "shape", "keys", "optimizer", "rng",
        "tokenizer"])
def test_a_damaged_checkpoint_is_one_error_line(finished_run, small_pretrain, capsys, damage, message, error_line):
    ck = load(finished_run / "latest.pt")
    damage(ck)
    torch.save(ck, finished_run / "latest.pt")
    assert main("pretrain", args(small_pretrain, finished_run, init_from="resume", max_iters=4)) == 2
    msg = error_line(capsys)
    assert msg.startswith(f"error: {finished_run / 'latest.pt'}: ") and message in msg, msg


def test_a_checkpoint_cut_short_says_so_and_names_the_others(finished_run, small_pretrain, capsys, error_line):
    """latest.pt cut by something outside the trainer (a copy, a full disk): the line says the
    file is damaged or cut short and names the checkpoints beside it that may be intact."""
    latest = finished_run / "latest.pt"
    latest.write_bytes(latest.read_bytes()[:5000])
    assert main("pretrain", args(small_pretrain, finished_run, init_from="resume", max_iters=4)) == 2
    msg = error_line(capsys)
    assert msg.startswith(f"error: {latest}: not a readable checkpoint: damaged, cut short"), msg
    assert "other checkpoints in its folder: best.pt" in msg, msg


def test_a_base_model_whose_weights_do_not_fit_is_one_error_line(tmp_path, finished_run, small_pretrain, capsys,
                                                                 error_line):
    ck = load(finished_run / "latest.pt")
    ck["model"]["tok_embd.weight"] = torch.zeros(3, 32)
    torch.save(ck, tmp_path / "bad_base.pt")
    assert main("pretrain", args(small_pretrain, tmp_path / "ft", init_from=tmp_path / "bad_base.pt")) == 2
    msg = error_line(capsys)
    assert f"cannot load {tmp_path / 'bad_base.pt'}" in msg and "tok_embd.weight" in msg, msg


# ---------------------------------------------------------------------------
# The report card's samples


def test_block_size_1_trains_and_reports_without_samples(small_pretrain, tiny_config):
    cfg = tiny_config(small_pretrain, block_size=1, max_iters=1, sample_prompts=["意识"], sample_tokens=4)
    train(cfg)
    text = open(cfg.run.out_dir + "/report.md", encoding="utf-8").read()
    assert "**意识**: no sample, the block size (1) leaves no room" in text


def test_a_long_sft_prompt_keeps_its_marks(nano80, monkeypatch):
    """The question is cut from its start; <|instruct_mark|> and <|response_mark|> stay."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=80, block_size=8, n_layer=1, n_embd=16, n_head=2, n_kv_head=1))
    prompts = []

    def spy_generate(model, ids, sampler):
        prompts.append(list(ids))
        return iter([7])

    monkeypatch.setattr(report, "generate", spy_generate)
    question = "1234567890"
    pairs = report.samples(model, nano80, "sft", [question, "1"], 4, 0.0, seed=0)
    q_ids = nano80.encode(question)
    assert prompts[0] == [nano80.instruct_id, *q_ids[-5:], nano80.response_id]  # 7 = block size - 1
    assert prompts[1] == [nano80.instruct_id, *nano80.encode("1"), nano80.response_id]
    assert [p for p, _ in pairs] == [question, "1"]
    # pretraining keeps the end of the text; no room at all gives no sample, not an error
    report.samples(model, nano80, "pretrain", [question], 4, 0.0, seed=0)
    assert prompts[2] == q_ids[-7:]
    small = Transformer(ModelConfig(vocab_size=80, block_size=3, n_layer=1, n_embd=16, n_head=2, n_kv_head=1))
    assert report.samples(small, nano80, "sft", [question], 4, 0.0, seed=0) == [(question, None)]
    assert report.fit_prompt([1, 2, 3], 0, instruct=False) is None


@pytest.mark.parametrize("field,value,message", [
    ("step", "x", "field step is 'x', not an integer in [0, 2^63)"),
    ("step", 2.5, "field step is 2.5, not an integer"),
    ("step", -5, "field step is -5, not an integer in [0, 2^63)"),
    ("tokens_seen", -1, "field tokens_seen is -1"),
    ("best_val_loss", "abc", "field best_val_loss is 'abc', not a number"),
    ("best_val_loss", math.nan, "field best_val_loss is nan"),
    ("elapsed_s", "abc", "field elapsed_s is 'abc'"),
    ("data_state", None, "field data_state is None, not a dict"),
    ("data_state.row", -1, "field data_state.row is -1, not an integer in [0, 2^63)"),
    ("data_state.row", "7", "field data_state.row is '7'"),
    # once an OverflowError where the batches are drawn (int64)
    ("data_state.row", 10**30, "field data_state.row is 1000000000000000000000000000000, not an integer in [0, "),
    ("tokens_seen", 2**63, "field tokens_seen is 9223372036854775808"),
    ("warmup_end_s", "1.5", "field warmup_end_s is '1.5', not None or a finite number of seconds >= 0"),
    ("warmup_end_s", math.inf, "field warmup_end_s is inf"),
    ("final", "no", "field final is 'no', not true or false"),
    ("val_step", 99, "field val_step is 99, not None or an integer in [0, step]"),
], ids=["str_step", "float_step", "negative_step", "tokens", "str_best", "nan_best", "elapsed", "data_state",
        "negative_row", "str_row", "huge_row", "huge_tokens", "str_warmup_end", "inf_warmup_end", "str_final",
        "val_step_past_step"])
def test_a_checkpoint_field_of_the_wrong_type_or_range_is_one_error_line(finished_run, small_pretrain, capsys, field,
                                                                         value, message, error_line):
    ck = load(finished_run / "latest.pt")
    if field.startswith("data_state."):
        ck["data_state"][field.split(".")[1]] = value
    else:
        ck[field] = value
    torch.save(ck, finished_run / "latest.pt")
    assert main("pretrain", args(small_pretrain, finished_run, init_from="resume", max_iters=4)) == 2
    msg = error_line(capsys)
    assert msg.startswith(f"error: {finished_run / 'latest.pt'}: ") and message in msg, msg


def test_a_bad_value_in_the_checkpoints_config_names_the_checkpoint(finished_run, small_pretrain, capsys, error_line):
    ck = load(finished_run / "latest.pt")
    ck["config"]["train"]["optim"]["learning_rate"] = "x"
    torch.save(ck, finished_run / "latest.pt")
    assert main("pretrain", [f"--out_dir={finished_run}", "--init_from=resume", "--max_iters=4"]) == 2
    msg = error_line(capsys)
    assert msg.startswith(f"error: {finished_run / 'latest.pt'}: its config is not valid: optim.learning_rate"), msg
    assert "<checkpoint config>" not in msg


# ---------------------------------------------------------------------------
# Resuming refuses what it cannot continue exactly


def test_resume_refuses_another_dataset_with_the_same_rows(tmp_path, psycho_slice, shared_file, capsys, error_line):
    from nano_train.data import prepare_pretrain

    data_a, data_b = tmp_path / "a", tmp_path / "b"
    for out, seed in ((data_a, 1), (data_b, 2)):  # the same text, another validation split
        prepare_pretrain([psycho_slice], shared_file("data/tokenizer_4096.json"), out, chunk_tokens=512, seed=seed,
                         progress=False)
    out = tmp_path / "run"
    assert main("pretrain", args(data_a, out, max_iters=2)) == 0
    before = (out / "latest.pt").read_bytes()
    capsys.readouterr()
    assert main("pretrain", args(data_b, out, init_from="resume", max_iters=4)) == 2
    msg = error_line(capsys)
    assert str(data_b) in msg and "'split'" in msg and "not the dataset" in msg, msg
    assert (out / "latest.pt").read_bytes() == before
    # the same dataset resumes; so does a checkpoint written before the identity was recorded
    ck = load(out / "latest.pt")
    del ck["dataset_id"]
    torch.save(ck, out / "latest.pt")
    assert main("pretrain", args(data_a, out, init_from="resume", max_iters=4)) == 0
    assert load(out / "latest.pt")["step"] == 4


def test_resume_refuses_the_dataset_prepared_again_from_other_text_with_the_same_counts(
        tmp_path, psycho_slice, shared_file, capsys, error_line):
    from nano_train.data import prepare_pretrain

    text = psycho_slice.read_text(encoding="utf-8")
    changed = tmp_path / "changed.txt"
    changed.write_text(text.replace("心", "理", 1), encoding="utf-8")  # one character, both in the vocabulary
    data, out = tmp_path / "data", tmp_path / "run"
    vocab = shared_file("data/tokenizer_4096.json")
    prepare_pretrain([psycho_slice], vocab, data, chunk_tokens=512, progress=False)
    before_meta = json.loads((data / "meta.json").read_text(encoding="utf-8"))
    assert main("pretrain", args(data, out, max_iters=2)) == 0
    prepare_pretrain([changed], vocab, data, chunk_tokens=512, progress=False, overwrite=True)
    meta = json.loads((data / "meta.json").read_text(encoding="utf-8"))
    assert meta["shards"] == before_meta["shards"] and meta["split"] == before_meta["split"]  # every count the same
    capsys.readouterr()
    assert main("pretrain", args(data, out, init_from="resume", max_iters=4)) == 2
    msg = error_line(capsys)
    assert "not the dataset" in msg and "'content' differs" in msg, msg


def test_sft_datasets_prepared_with_another_system_policy_differ_only_in_content(tmp_path, shared_file):
    from nano_train.data import Dataset, prepare_sft
    from nano_train.train import DATASET_ID_ENTRIES, dataset_identity

    src = tmp_path / "chat.jsonl"
    src.write_text("".join(json.dumps({"messages": [{"role": "system", "content": "你是助手"},
                                                    {"role": "user", "content": f"问题{i}"},
                                                    {"role": "assistant", "content": f"回答{i}"}]},
                                      ensure_ascii=False) + "\n" for i in range(20)), encoding="utf-8")
    ids = {}
    for policy in ("prepend", "drop"):
        prepare_sft([src], shared_file("data/tokenizer_4096.json"), tmp_path / policy, block_size=48,
                    system=policy, progress=False)
        ids[policy] = dataset_identity(Dataset(tmp_path / policy).meta)
    assert [k for k in DATASET_ID_ENTRIES if ids["prepend"][k] != ids["drop"][k]] == ["content"]


@pytest.mark.parametrize("key,value", [("batch_size", 8), ("gradient_accumulation_steps", 2), ("seed", 5)])
def test_resume_refuses_another_batch_size_accumulation_or_seed(finished_run, small_pretrain, capsys, key, value,
                                                                error_line):
    before = (finished_run / "latest.pt").read_bytes()
    assert main("pretrain", args(small_pretrain, finished_run, init_from="resume", max_iters=4,
                                 **{key: value})) == 2
    msg = error_line(capsys)
    assert f"{key} {value} (the checkpoint's: " in msg and "conflicts with the checkpoint" in msg, msg
    # what changes is said as it is: the schedule follows the step alone, and one key is "it"
    why = "the data order" if key == "seed" else "the data position and the tokens per step"
    assert f": {why} would no longer be the run's; resume without setting it," in msg, msg
    assert (finished_run / "latest.pt").read_bytes() == before


def test_resume_trains_with_the_weight_decay_and_betas_it_is_given(finished_run, small_pretrain):
    """The optimizer's saved state carries its settings too; the resumed run's config wins,
    as it does for the learning rate, rather than being recorded but not used."""
    assert main("pretrain", args(small_pretrain, finished_run, init_from="resume", max_iters=3, weight_decay=0.5,
                                 beta1=0.5, beta2=0.6)) == 0
    ck = load(finished_run / "latest.pt")
    assert ck["config"]["train"]["optim"]["weight_decay"] == 0.5
    groups = ck["optimizer"]["param_groups"]  # the settings its last step ran with
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0]  # vectors never decay
    assert all(tuple(g["betas"]) == (0.5, 0.6) for g in groups)


# ---------------------------------------------------------------------------
# Startup checks


@pytest.mark.parametrize("backend", ["cudnn", "efficient"])
def test_an_attention_backend_the_device_lacks_is_a_config_error_before_out_dir(tmp_path, small_pretrain, capsys,
                                                                                   backend, error_line):
    out = tmp_path / "run"
    assert main("pretrain", args(small_pretrain, out, attention_backend=backend)) == 2
    msg = error_line(capsys)
    assert f"attention_backend '{backend}' is not available on this device (cpu" in msg, msg
    assert not out.exists()


def test_a_batch_larger_than_the_data_is_refused_at_startup(tmp_path, small_pretrain, capsys, error_line):
    import time

    t0 = time.monotonic()
    assert main("pretrain", args(small_pretrain, tmp_path / "run", batch_size=1_000_000)) == 2
    msg = error_line(capsys)
    assert "data.batch_size 1,000,000" in msg and "rows of 33 tokens" in msg, msg
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "run" / "latest.pt").exists()


def test_a_run_of_max_iters_0_can_be_resumed(tmp_path, small_pretrain, capsys):
    out = tmp_path / "run"
    assert main("pretrain", args(small_pretrain, out, max_iters=0)) == 0
    assert load(out / "latest.pt")["step"] == 0
    assert main("pretrain", args(small_pretrain, out, init_from="resume", max_iters=2)) == 0
    assert load(out / "latest.pt")["step"] == 2


# ---------------------------------------------------------------------------
# Ctrl-C outside the training loop: one line, status 130, and a report where there is a run


def test_ctrl_c_during_startup_is_one_line_and_130(tmp_path, small_pretrain, capsys, monkeypatch, error_line):
    from nano_train import train as train_mod

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "Dataset", interrupted)
    assert main("pretrain", args(small_pretrain, tmp_path / "run")) == 130
    assert "interrupted" in error_line(capsys)


def test_ctrl_c_while_sampling_for_the_report_still_writes_it(tmp_path, small_pretrain, capsys, monkeypatch):
    import os
    import signal

    def ctrl_c(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("the signal did not stop the sampling")

    monkeypatch.setattr(report, "samples", ctrl_c)
    previous = signal.getsignal(signal.SIGINT)
    out = tmp_path / "run"
    assert main("pretrain", args(small_pretrain, out, max_iters=2, sample_tokens=4)) == 130
    assert signal.getsignal(signal.SIGINT) is previous
    err = capsys.readouterr().err
    assert "Traceback" not in err and "training is complete; writing the report without samples" in err, err
    assert load(out / "latest.pt")["step"] == 2
    # the training finished: the report and the log say so, and why there are no samples
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "finished at step 2" in text and "interrupted (latest.pt saved)" not in text, text
    assert "No samples: interrupted while they were drawn." in text, text
    end = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][-1]
    assert end["kind"] == "end" and end["interrupted"] is False


# ---------------------------------------------------------------------------
# Resuming: best.pt newer than latest.pt, a finished run, the last steps' loss


def test_resume_never_replaces_best_pt_by_a_worse_model(tmp_path, small_pretrain, capsys):
    """best.pt is written at every new best, latest.pt only every checkpoint_interval: a
    run killed in between leaves a best.pt newer than latest.pt, whose loss is the one
    to beat after resuming."""
    out = tmp_path / "run"
    assert main("pretrain", args(small_pretrain, out, max_iters=4)) == 0
    best = torch.load(out / "best.pt", weights_only=True)
    best["val_loss"] = 0.5  # better than anything this run reaches
    torch.save(best, out / "best.pt")
    latest = load(out / "latest.pt")
    latest["best_val_loss"] = math.inf  # latest.pt saved before any evaluation
    torch.save(latest, out / "latest.pt")
    assert main("pretrain", args(small_pretrain, out, init_from="resume", max_iters=6)) == 0
    assert "best 0.5000" in capsys.readouterr().out
    kept = load(out / "best.pt")
    assert kept["val_loss"] == 0.5 and kept["step"] == best["step"]
    assert load(out / "latest.pt")["best_val_loss"] == 0.5


def test_resuming_a_finished_run_has_nothing_to_do_and_keeps_its_report(finished_run, small_pretrain, capsys):
    report, log = (finished_run / "report.md").read_bytes(), (finished_run / "log.jsonl").read_bytes()
    capsys.readouterr()
    assert main("pretrain", args(small_pretrain, finished_run, init_from="resume", max_iters=2)) == 0
    said = capsys.readouterr().out
    assert "nothing to do" in said and "at step 2" in said and "--max_iters=N" in said, said
    assert (finished_run / "report.md").read_bytes() == report
    assert (finished_run / "log.jsonl").read_bytes() == log


def test_nothing_to_do_names_the_limit_that_stopped_the_run(finished_run, small_pretrain, capsys):
    """Only raising what stopped the run trains on. Was: "raise it (--max_iters=N or
    --time_budget=S)" whichever it was, so a run at max_iters resumed with a time budget (or
    one out of time resumed with more steps) was told the same again."""
    capsys.readouterr()
    assert main("pretrain", args(small_pretrain, finished_run, init_from="resume", max_iters=2,
                                 time_budget=100)) == 0
    said = capsys.readouterr().out
    assert "is at step 2 and reached optim.max_iters (2); raise it (--max_iters=N) to train on" in said, said
    latest = finished_run / "latest.pt"
    ck = load(latest)
    ck["elapsed_s"] = 10.0  # (as if its 2 steps had spent a budget of 5 s)
    torch.save(ck, latest)
    assert main("pretrain", args(small_pretrain, finished_run, init_from="resume", max_iters=9, time_budget=5)) == 0
    said = capsys.readouterr().out
    assert "and has spent its time budget (5 s); raise it (--time_budget=S, 0 for none) to train on" in said, said
    assert main("pretrain", args(small_pretrain, finished_run, init_from="resume", max_iters=2, time_budget=5)) == 0
    said = capsys.readouterr().out
    assert ("reached optim.max_iters (2) and has spent its time budget (5 s); raise both (--max_iters=N; "
            "--time_budget=S, 0 for none)") in said, said


def test_a_resume_that_changes_the_time_budget_says_how_the_learning_rate_moves():
    """The checkpoint's run decayed by its time budget (2 s, spent: min_lr); the resume drops
    the budget and sets max_iters 220. Was: "6.14e-05 instead of 6.00e-04" (the checkpoint's rate
    computed without its budget) and "--lr_decay_iters=100000 keeps the checkpoint's schedule",
    which lifted the rate tenfold; a changed budget alone said nothing."""
    from nano_train.config import OptimConfig
    from nano_train.train import schedule_notes

    then = OptimConfig(learning_rate=6e-4, min_lr=6e-5, warmup_iters=2, max_iters=100000, time_budget=2.0)
    saved = {k: getattr(then, k) for k in ("learning_rate", "min_lr", "warmup_iters", "lr_decay_iters",
                                           "max_iters", "time_budget")}
    now = OptimConfig(learning_rate=6e-4, min_lr=6e-5, warmup_iters=2, max_iters=220, time_budget=0.0)
    notes = schedule_notes(now, 213, 2.5, 0.01, saved)
    assert notes == ["optim.time_budget is now none, 2 s in the checkpoint's run, and the cosine decay follows "
                     "the time budget where it is further along than the steps: the learning rate at step 213 is "
                     "6.14e-05 instead of 6.00e-05; --lr_decay_iters=213 keeps it at optim.min_lr"], notes
    notes = schedule_notes(OptimConfig(learning_rate=6e-4, min_lr=6e-5, warmup_iters=2, max_iters=100000,
                                       time_budget=3.0), 213, 2.5, 0.01, saved)
    assert len(notes) == 1 and "optim.time_budget is now 3 s, 2 s in the checkpoint's run" in notes[0] \
        and notes[0].endswith("is 9.64e-05 instead of 6.00e-05; --lr_decay_iters=213 keeps it at optim.min_lr"), notes
    # a checkpoint's run still decaying (1 s into a 5 s budget): no remedy to keep min_lr
    notes = schedule_notes(now, 213, 1.0, 0.01, dict(saved, time_budget=5.0))
    assert len(notes) == 1 and "now none, 5 s in the checkpoint's run" in notes[0] and "keeps" not in notes[0], notes
    # the same budget and steps: nothing to say
    assert schedule_notes(then, 213, 2.5, 0.01, saved) == []


def test_a_resume_with_other_eval_iters_starts_a_new_best(finished_run, small_pretrain, capsys):
    """The validation rows are the first batch_size x eval_iters of one order: with another
    eval_iters the checkpoint's best was taken on other rows. Was: kept as the loss to beat, so
    a better model did not replace best.pt (or a worse one did)."""
    capsys.readouterr()
    assert main("pretrain", args(small_pretrain, finished_run, init_from="resume", max_iters=4, eval_iters=1)) == 0
    err = capsys.readouterr().err
    assert ("note: the checkpoint's validation losses were taken on 2 batches (eval.eval_iters), this run's on 1: "
            "other rows, so its best ") in err, err
    evals = [r for r in map(json.loads, (finished_run / "log.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
    assert evals[-1]["step"] == 4 and evals[-1]["best_val_loss"] == min(e["val_loss"] for e in evals if e["step"] > 2)
    assert load(finished_run / "best.pt")["step"] in (3, 4)


def test_a_resumed_step_is_evaluated_where_its_run_had_not(tmp_path, small_pretrain, tiny_config):
    """Stopped (Ctrl-C) at step 3 with eval_interval 2, resumed with eval_interval 3: step 3 is
    evaluated. Was: skipped, as "a resumed step's evaluation was done before it was saved"."""
    def stop_at_3(record):
        if record["kind"] == "train" and record["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # (the loop saves latest.pt after the step and stops)

    out = tmp_path / "run"
    result = train(tiny_config(small_pretrain, out_dir=out, max_iters=6, eval_interval=2), progress=stop_at_3)
    ck = load(out / "latest.pt")
    assert result.interrupted and ck["step"] == 3 and ck["val_step"] == 2
    train(tiny_config(small_pretrain, out_dir=out, max_iters=6, eval_interval=3, init_from="resume"))
    evals = [r["step"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
    assert evals == [0, 2, 3, 6], evals
    # a resumed step its run did evaluate is not evaluated again
    train(tiny_config(small_pretrain, out_dir=out, max_iters=9, eval_interval=3, init_from="resume"))
    evals = [r["step"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
    assert evals == [0, 2, 3, 6, 9], evals


def test_the_last_steps_loss_is_logged_when_a_run_stops_between_log_lines(tmp_path, small_pretrain, capsys,
                                                                           monkeypatch):
    import os
    import signal

    real = torch.nn.utils.clip_grad_norm_
    calls = []

    def clip(*a, **k):  # Ctrl-C inside step 5 (lines are logged at 3 and 6): the run stops after it
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    out = tmp_path / "run"
    assert main("pretrain", args(small_pretrain, out, max_iters=20, log_interval=3)) == 130
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    trains = [r for r in records if r["kind"] == "train"]
    ck = load(out / "latest.pt")
    assert [r["step"] for r in trains] == [3, 5] and ck["step"] == 5
    assert ck["train_loss"] == trains[-1]["loss"] == records[-1]["train_loss"]
    assert f"| final train loss | {trains[-1]['loss']:.4f} |" in (out / "report.md").read_text(encoding="utf-8")


def interrupt_in_step(monkeypatch, n):
    """Ctrl-C inside step n (from its gradient clipping): the run stops after that step."""
    real = torch.nn.utils.clip_grad_norm_
    calls = []

    def clip(*a, **k):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)


@pytest.mark.parametrize("at", [3, 4])  # 3: the checkpoint's val loss is step 2's; 4: step 4 was evaluated
def test_an_interrupted_run_resumed_with_max_iters_at_its_step_ends_there(tmp_path, small_pretrain, capsys,
                                                                          monkeypatch, at):
    # (was: "nothing to do ...; wrote the missing report.md", a report "finished at step 3 of 3" with
    # step 2's val loss as the final one, and no evaluation at step 3)
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_in_step(m, at)
        assert main("pretrain", args(small_pretrain, out, max_iters=20, sample_tokens=4)) == 130
    assert load(out / "latest.pt")["step"] == at
    capsys.readouterr()
    assert main("pretrain", args(small_pretrain, out, init_from="resume", max_iters=at)) == 0
    said, err = capsys.readouterr()
    assert "nothing to do" not in said and f"done: step {at}," in said.splitlines()[-1], said
    assert "cosine decay now ends" not in err, err  # no step is trained: no learning rate changes
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval" and r["step"] == at]
    assert len(evals) == 1, records  # evaluated as the last step; an earlier record of the step goes
    ends = [r for r in records if r["kind"] == "end"]
    assert len(ends) == 1, records  # the interrupted run's end record at the step goes: one end, this one
    end = records[-1]
    assert end["kind"] == "end" and end["interrupted"] is False and end["step"] == at
    assert end["val_loss"] == evals[0]["val_loss"]
    text = (out / "report.md").read_text(encoding="utf-8")
    assert f"pretrain, finished at step {at} of {at}, " in text, text
    assert f"| final val loss | {evals[0]['val_loss']:.4f} |" in text, text
    ck = load(out / "latest.pt")
    assert ck["step"] == at and ck["val_loss"] == evals[0]["val_loss"] and ck["final"] is True
    assert load(out / "best.pt")["val_loss"] == ck["best_val_loss"] == evals[0]["best_val_loss"]
    # now it is a finished run: nothing to do, nothing rewritten
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main("pretrain", args(small_pretrain, out, init_from="resume", max_iters=at)) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_an_interrupted_runs_report_names_the_step_of_its_val_loss(tmp_path, small_pretrain, capsys, monkeypatch):
    # (was "| final val loss | 8.3452 |": after a Ctrl-C, the untrained model's loss of step 0, unnamed)
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_in_step(m, 3)
        assert main("pretrain", args(small_pretrain, out, max_iters=20, eval_interval=2)) == 130
    ck = load(out / "latest.pt")
    assert ck["step"] == 3 and ck["val_step"] == 2
    evals = [r for r in (json.loads(line) for line in (out / "log.jsonl").read_text().splitlines())
             if r["kind"] == "eval"]
    assert evals[-1]["step"] == 2
    text = (out / "report.md").read_text(encoding="utf-8")
    assert f"| final val loss | {evals[-1]['val_loss']:.4f} (evaluated at step 2) |" in text, text
    capsys.readouterr()
    assert main("pretrain", args(small_pretrain, out, init_from="resume", max_iters=4, eval_interval=2)) == 0
    assert load(out / "latest.pt")["val_step"] == 4
    assert "(evaluated at step" not in (out / "report.md").read_text(encoding="utf-8")


def test_an_interrupted_run_resumed_with_max_iters_below_its_step_is_refused(tmp_path, small_pretrain, capsys,
                                                                             monkeypatch, error_line):
    # (was: "nothing to do", and a report "finished at step 3 of 2")
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_in_step(m, 3)
        assert main("pretrain", args(small_pretrain, out, max_iters=20)) == 130
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main("pretrain", args(small_pretrain, out, init_from="resume", max_iters=2)) == 2
    assert error_line(capsys) == (f"error: --init_from=resume: {out / 'latest.pt'} is at step 3, past "
                                  "optim.max_iters (2): pass --max_iters=3 to end the run there (final evaluation "
                                  "and report), or a larger value to train on")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("when", ["the final checkpoint", "the end record"])
def test_ctrl_c_once_the_training_is_done_writes_the_report_without_samples(tmp_path, small_pretrain, capsys,
                                                                            monkeypatch, when):
    # (was, at the end record: "error: interrupted; the run stopped at once (...)" and no report.md;
    # during the final checkpoint: the signal was lost, the samples drawn and the exit status 0)
    from nano_train import checkpoint as ckpt_io
    from nano_train.metrics import RunLog

    save, write = ckpt_io.save_atomic, RunLog.write

    def save_then_ctrl_c(state, path):
        save(state, path)
        if path.name == "latest.pt" and state["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    def write_then_ctrl_c(self, **record):
        write(self, **record)
        if record["kind"] == "end":
            os.kill(os.getpid(), signal.SIGINT)

    if when == "the final checkpoint":
        monkeypatch.setattr(ckpt_io, "save_atomic", save_then_ctrl_c)
    else:
        monkeypatch.setattr(RunLog, "write", write_then_ctrl_c)
    previous = signal.getsignal(signal.SIGINT)
    out = tmp_path / "run"
    assert main("pretrain", args(small_pretrain, out, max_iters=2, sample_tokens=4)) == 130
    assert signal.getsignal(signal.SIGINT) is previous
    said, err = capsys.readouterr()
    assert "Traceback" not in err and "stopped at once" not in err, err
    assert "interrupted before sampling for the report: the training is complete; writing the report without " \
           "samples" in err, err
    assert said.splitlines()[-1].startswith("done: step 2,"), said
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "pretrain, finished at step 2 of 2, " in text and "No samples: interrupted before they were drawn." in text
    ends = [r for r in (json.loads(line) for line in (out / "log.jsonl").read_text().splitlines())
            if r["kind"] == "end"]
    assert len(ends) == 1 and ends[0]["interrupted"] is False
    assert load(out / "latest.pt")["step"] == 2


def test_a_resume_that_moves_the_end_of_the_cosine_says_so(finished_run, small_pretrain, capsys):
    # (was: silent, while the learning rate climbed back up the stretched curve)
    capsys.readouterr()
    assert main("pretrain", args(small_pretrain, finished_run, init_from="resume", max_iters=6)) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "cosine" in line]
    assert len(notes) == 1 and notes[0].startswith("note: the learning rate's cosine decay now ends at step 6 "
                                                   "(optim.max_iters, as optim.lr_decay_iters is 0), in the "
                                                   "checkpoint's run at step 2: the learning rate at step 2 is "), notes
    assert notes[0].endswith("instead of 3.00e-04; --lr_decay_iters=2 keeps the checkpoint's schedule"), notes
    lr = float(notes[0].split("at step 2 is ")[1].split(" ")[0])
    logged = [json.loads(line) for line in (finished_run / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in logged if r["kind"] == "train" and r["step"] == 3] == [pytest.approx(lr, rel=1e-2)]
    assert lr > 3e-4


def test_a_resume_that_keeps_the_end_of_the_cosine_has_no_note(finished_run, small_pretrain, capsys):
    capsys.readouterr()
    assert main("pretrain", args(small_pretrain, finished_run, init_from="resume", max_iters=6,
                                 lr_decay_iters=2)) == 0
    assert "cosine decay now ends" not in capsys.readouterr().err


def test_a_kill_inside_a_kept_checkpoint_never_loses_its_ckpt_file(tmp_path, small_pretrain, monkeypatch):
    # (was: latest.pt was written first: killed before ckpt_000004.pt, the resume started at
    # step 4 and never wrote it)
    from nano_train import checkpoint as ckpt_io

    class Killed(BaseException):
        pass

    save = ckpt_io.save_atomic

    def killed_after_the_first_file_of_step_4(state, path):
        save(state, path)
        if state["step"] == 4 and path.name != "best.pt":
            raise Killed  # as a SIGKILL right after that file: nothing more is written

    out = tmp_path / "run"
    run = args(small_pretrain, out, max_iters=6, checkpoint_interval=2, eval_interval=3, keep_checkpoints="true")
    with monkeypatch.context() as m:
        m.setattr(ckpt_io, "save_atomic", killed_after_the_first_file_of_step_4)
        with pytest.raises(Killed):
            main("pretrain", run)
    assert main("pretrain", [f"--out_dir={out}", "--init_from=resume"]) == 0
    assert sorted(p.name for p in out.glob("ckpt_*.pt")) == ["ckpt_000002.pt", "ckpt_000004.pt", "ckpt_000006.pt"]
    assert [load(out / f"ckpt_{s:06d}.pt")["step"] for s in (2, 4, 6)] == [2, 4, 6]


def test_a_kill_inside_the_first_kept_checkpoint_says_how_to_continue(tmp_path, small_pretrain, monkeypatch, capsys,
                                                                      error_line):
    """ckpt_<step>.pt comes before latest.pt: killed between the two at the first checkpoint,
    the run has a ckpt file and no latest.pt."""
    out = tmp_path / "run"
    (out).mkdir()
    assert main("pretrain", args(small_pretrain, out, max_iters=2, keep_checkpoints="true")) == 0
    (out / "latest.pt").unlink()
    capsys.readouterr()
    assert main("pretrain", [f"--out_dir={out}", "--init_from=resume"]) == 2
    assert error_line(capsys) == (f"error: --init_from=resume: {out / 'latest.pt'} does not exist: the run in {out} "
                                  "stopped while writing its first one, after ckpt_000002.pt: copy that file to "
                                  "latest.pt to continue from it, or start again with --overwrite=true")
    (out / "ckpt_1000000.pt").write_bytes(b"")  # by step, not by name: 7 digits come after 6
    (out / "ckpt_999999.pt").write_bytes(b"")
    assert main("pretrain", [f"--out_dir={out}", "--init_from=resume"]) == 2
    assert ", after ckpt_1000000.pt: copy" in error_line(capsys)
    for name in ("ckpt_1000000.pt", "ckpt_999999.pt"):
        (out / name).unlink()
    (out / "ckpt_000002.pt").rename(out / "latest.pt")
    assert main("pretrain", [f"--out_dir={out}", "--init_from=resume", "--max_iters=4"]) == 0


def test_a_checkpoint_cut_short_names_the_newest_others_first(finished_run, small_pretrain, capsys, error_line):
    # (was: the first four alphabetically, best.pt and ckpt_000004/6/8.pt, leaving out the newest ckpt_000012.pt)
    latest = finished_run / "latest.pt"
    for i, step in enumerate((4, 6, 8, 12)):
        path = finished_run / f"ckpt_{step:06d}.pt"
        path.write_bytes(latest.read_bytes())
        os.utime(path, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))
    os.utime(finished_run / "best.pt", ns=(10**17, 10**17))
    latest.write_bytes(latest.read_bytes()[:5000])
    assert main("pretrain", args(small_pretrain, finished_run, init_from="resume", max_iters=4)) == 2
    assert error_line(capsys).endswith("other checkpoints in its folder: ckpt_000012.pt, ckpt_000008.pt, "
                                       "ckpt_000006.pt, ckpt_000004.pt, ... (newest first)")


def test_a_vocab_size_other_than_the_datas_is_refused(tmp_path, small_pretrain, capsys, error_line):
    """A padded classifier would train, but no model file, sampler or fine-tuning run could use it."""
    assert main("pretrain", args(small_pretrain, tmp_path / "run", vocab_size=4160)) == 2
    assert "model.vocab_size 4160 differs from the data's vocabulary (4096 tokens)" in error_line(capsys)


def test_the_validation_rows_are_the_same_whatever_the_seed_and_split_of_batches(finished_run, small_pretrain, tmp_path):
    """Evaluation reads one fixed order of the validation split (not the run's seed), so
    the same weights score the same for any seed, and for any batch_size x eval_iters of
    the same product; a different product reads other rows."""
    def step0_val(name, **extra):
        out = tmp_path / name
        assert main("pretrain", args(small_pretrain, out, init_from=finished_run / "latest.pt", max_iters=1,
                                     warmup_iters=0, **extra)) == 0
        records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        return next(r["val_loss"] for r in records if r.get("kind") == "eval" and r["step"] == 0)

    by_seed = {seed: step0_val(f"seed{seed}", seed=seed, batch_size=4, eval_iters=4) for seed in (1, 2, 1337)}
    assert len(set(by_seed.values())) == 1, by_seed
    assert step0_val("b8", batch_size=8, eval_iters=2) == pytest.approx(by_seed[1], rel=1e-5)
    assert step0_val("b8x3", batch_size=8, eval_iters=3) != pytest.approx(by_seed[1], rel=1e-5)


def test_resuming_a_checkpoint_from_before_the_fixed_validation_rows_restarts_the_best(finished_run, small_pretrain,
                                                                                      capsys):
    """A checkpoint without eval_seed took its losses on the rows of the run's seed: its
    best is no number to beat on today's rows; a note says so and the next evaluation
    writes best.pt. One with it keeps its best."""
    def edit(name, **fields):
        ck = torch.load(finished_run / name, weights_only=True)
        ck.pop("eval_seed", None)
        ck.update(fields)
        torch.save(ck, finished_run / name)

    assert torch.load(finished_run / "latest.pt", weights_only=True)["eval_seed"] == 0
    edit("latest.pt", best_val_loss=0.001)  # a best that no evaluation beats
    edit("best.pt", val_loss=0.001, best_val_loss=0.001)
    capsys.readouterr()
    assert main("pretrain", args(small_pretrain, finished_run, init_from="resume", max_iters=4)) == 0
    err = capsys.readouterr().err
    assert "was written before validation read a fixed order of rows" in err and "best validation loss 0.0010" in err
    best = torch.load(finished_run / "best.pt", weights_only=True)
    assert best["step"] == 4 and best["eval_seed"] == 0 and best["best_val_loss"] > 0.001
    # a checkpoint of today keeps its best: nothing beats 0.001, best.pt stays at step 4
    edit("latest.pt", best_val_loss=0.001, eval_seed=0)
    assert main("pretrain", args(small_pretrain, finished_run, init_from="resume", max_iters=6)) == 0
    assert "fixed order of rows" not in capsys.readouterr().err
    assert torch.load(finished_run / "best.pt", weights_only=True)["step"] == 4
