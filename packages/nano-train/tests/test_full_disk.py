"""A full disk while training or preparing data, and what runs leave on disk: one `error:`
line naming the file and what to do next, the last checkpoint kept whole, no temporary
file left behind; the temporaries of a killed run's rewrites removed; run.keep_last.

A full disk is made by giving the writes a file object that takes `room` bytes and then
fails as a full disk's writes do: OSError(ENOSPC), naming no file."""

import errno
import os

import pytest
import torch

from nano_train import checkpoint as ckpt_io, metrics
from nano_train.train import main

pytestmark = pytest.mark.usefixtures("one_thread")

NO_SPACE = os.strerror(errno.ENOSPC)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture
def args(tiny_args):
    """--key=value arguments of a seconds-long CPU run (conftest's tiny_args, no samples)."""
    return lambda dataset, out_dir, **extra: tiny_args(dataset, out_dir, **{"sample_tokens": 0, **extra})


def temporaries(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


class FullDisk:
    """A writable file whose disk has `room` bytes left."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        n = len(data) if isinstance(data, str) else memoryview(data).nbytes
        if n > self.room:
            raise OSError(errno.ENOSPC, NO_SPACE)
        self.room -= n
        return self.f.write(data)

    def __getattr__(self, name):  # flush, fileno, close, ...
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def fill_the_disk_at(monkeypatch, step, name="latest.pt"):
    """torch.save, the way the trainer calls it, fails for want of room when it writes
    the checkpoint `name` of `step` (torch then raises its own RuntimeError)."""
    save = torch.save

    def save_on_a_full_disk(obj, f, *more, **kw):
        if obj.get("step") == step and os.path.basename(f.name) == f".{name}.{os.getpid()}.tmp":
            f = FullDisk(f, 1000)
        return save(obj, f, *more, **kw)

    monkeypatch.setattr(torch, "save", save_on_a_full_disk)


# ---------------------------------------------------------------------------
# Checkpoints


def test_save_atomic_on_a_full_disk_is_an_oserror_naming_the_checkpoint(tmp_path, monkeypatch):
    # (was: torch's "RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos ...")
    path = tmp_path / "latest.pt"
    ckpt_io.save_atomic({"step": 1, "w": torch.zeros(4000)}, path)
    fill_the_disk_at(monkeypatch, 2)
    with pytest.raises(OSError) as info:
        ckpt_io.save_atomic({"step": 2, "w": torch.ones(4000)}, path)
    e = info.value
    assert (e.errno, e.filename, e.strerror) == (errno.ENOSPC, str(path),
                                                 f"the checkpoint could not be written: {NO_SPACE}")
    assert load(path)["step"] == 1 and temporaries(tmp_path) == []


def test_a_torch_writer_failure_without_its_cause_is_a_full_disk_only_when_the_disk_is_full(tmp_path, monkeypatch):
    """Where torch's RuntimeError does not carry the OSError, the free space decides."""
    failure = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    class Room:
        f_frsize = 4096

        def __init__(self, blocks):
            self.f_bavail = blocks

    monkeypatch.setattr(os, "statvfs", lambda _: Room(3), raising=False)
    e = ckpt_io.write_failure(failure, tmp_path / "latest.pt")
    assert (e.errno, e.filename) == (errno.ENOSPC, str(tmp_path / "latest.pt")) and NO_SPACE in e.strerror
    monkeypatch.setattr(os, "statvfs", lambda _: Room(1 << 20), raising=False)
    e = ckpt_io.write_failure(failure, tmp_path / "latest.pt")
    assert e.errno == errno.EIO and "unexpected pos 704 vs 598" in e.strerror
    assert ckpt_io.write_failure(RuntimeError("some other failure"), tmp_path / "latest.pt") is None


@pytest.mark.parametrize("name", ["latest.pt", "ckpt_000004.pt"])
def test_a_full_disk_at_a_checkpoint_ends_the_run_with_one_line_and_how_to_continue(tmp_path, small_pretrain,
                                                                                    monkeypatch, capsys, name, args,
                                                                                    error_line):
    out = tmp_path / "run"
    latest = out / "latest.pt"
    with monkeypatch.context() as m:
        fill_the_disk_at(m, 4, name)
        assert main("pretrain", args(small_pretrain, out, keep_checkpoints="true")) == 1
    assert error_line(capsys) == (f"error: {out / name}: the checkpoint could not be written: {NO_SPACE}; {latest} "
                                  f"(step 2) holds the last checkpoint written: once space is freed, continue with "
                                  f"--init_from=resume --out_dir={out}")
    assert load(latest)["step"] == 2 and temporaries(out) == []
    assert main("pretrain", args(small_pretrain, out, init_from="resume")) == 0  # once space is freed
    assert load(latest)["step"] == 4


def test_a_full_disk_while_logging_names_the_log(tmp_path, small_pretrain, monkeypatch, capsys, args, error_line):
    # (was: "error: [Errno 28] No space left on device", naming no file, and no next step)
    out = tmp_path / "run"

    def open_on_a_full_disk(path, mode="r", *more, **kw):
        f = open(path, mode, *more, **kw)
        if mode == "a" and '"step": 3' in (out / "log.jsonl").read_text(encoding="utf-8"):
            return FullDisk(f, 0)  # the records after step 3's
        return f

    monkeypatch.setattr(metrics, "open", open_on_a_full_disk, raising=False)
    assert main("pretrain", args(small_pretrain, out)) == 1
    assert error_line(capsys) == (f"error: {out / 'log.jsonl'}: {NO_SPACE}; {out / 'latest.pt'} (step 2) holds the "
                                  f"last checkpoint written: once space is freed, continue with --init_from=resume "
                                  f"--out_dir={out}")


def test_a_full_disk_before_the_first_checkpoint_says_to_start_again(tmp_path, small_pretrain, monkeypatch, capsys,
                                                                      args, error_line):
    out = tmp_path / "run"
    fill_the_disk_at(monkeypatch, 2)
    assert main("pretrain", args(small_pretrain, out, eval_interval=100, checkpoint_interval=2)) == 1  # no best.pt
    assert error_line(capsys) == (f"error: {out / 'latest.pt'}: the checkpoint could not be written: {NO_SPACE}; no "
                                  "checkpoint was written: once space is freed, start again with --overwrite=true")


def test_a_full_disk_between_best_and_latest_names_the_best_and_what_overwrite_deletes(tmp_path, small_pretrain,
                                                                                      monkeypatch, capsys, args,
                                                                                      error_line):
    """best.pt is written just before latest.pt: a disk that fills between the two leaves
    the best evaluation's weights, which the advice must not delete unsaid."""
    out = tmp_path / "run"
    fill_the_disk_at(monkeypatch, 2)
    assert main("pretrain", args(small_pretrain, out)) == 1  # an evaluation at step 2 writes best.pt first
    assert error_line(capsys) == (f"error: {out / 'latest.pt'}: the checkpoint could not be written: {NO_SPACE}; no "
                                  f"latest.pt was written, only {out / 'best.pt'} (step 2), the best evaluation's "
                                  "weights, which a new run with --overwrite=true deletes (move it away first to "
                                  "keep it): once space is freed, start again with --overwrite=true")
    assert load(out / "best.pt")["step"] == 2


# ---------------------------------------------------------------------------
# prepare


@pytest.mark.parametrize("kind, full, named", [("pretrain", "train_000.bin", "train_000.bin"),
                                               ("pretrain", ".tokens.tmp", "the token stream"),
                                               ("sft", "sft_train.bin", "the rows")])
def test_prepare_on_a_full_disk_names_what_it_was_writing(tmp_path, psycho_slice, shared_file, monkeypatch, capsys,
                                                          kind, full, named, error_line):
    # (was: "error: [Errno 28] No space left on device")
    from nano_train import data
    from nano_train.prepare import main as prepare

    def open_on_a_full_disk(path, mode="r", *more, **kw):
        f = open(path, mode, *more, **kw)
        return FullDisk(f, 100) if os.path.basename(path) == full else f

    monkeypatch.setattr(data, "open", open_on_a_full_disk, raising=False)
    out = tmp_path / "data"
    inputs = [str(psycho_slice)] if kind == "pretrain" else [str(shared_file("data/sft_self_id.jsonl")),
                                                               "--block_size", "64"]
    assert prepare([kind, "--quiet", "--tokenizer", str(shared_file("data/tokenizer_4096.json")),
                    "--out_dir", str(out), *inputs]) == 1
    assert error_line(capsys) == f"error: {out}: cannot write {named}: {NO_SPACE}"
    assert not out.exists()  # the build folder is gone, and so is the folder prepare made for it


# ---------------------------------------------------------------------------
# What a killed run leaves of its rewrites of log.jsonl and report.md


def test_a_run_removes_what_a_killed_run_left_of_its_log_and_report_rewrites(tmp_path, small_pretrain, capsys, args):
    # (was: .log.jsonl.<hex>.tmp and .report.md.<hex>.tmp stayed for ever, through resumes and --overwrite)
    out = tmp_path / "run"
    assert main("pretrain", args(small_pretrain, out, max_iters=2)) == 0
    stale = [".log.jsonl.0123abcd.tmp", ".report.md.89abcdef.tmp"]
    mine = [".log.jsonl.0123abcd.tmp.bak", ".notes.md.0123abcd.tmp", ".report.md.0123ABCD.tmp",
            ".report.md.0123abc.tmp", "log.jsonl.0123abcd.tmp", ".log.jsonl.x0123abcd.tmp"]
    for name in stale + mine:
        (out / name).write_bytes(b"x")
    (out / ".report.md.feedface.tmp").symlink_to(out / mine[0])  # a link: not one of the run's files
    (out / ".log.jsonl.deadbeef.tmp").mkdir()  # a folder: neither
    capsys.readouterr()
    assert main("pretrain", args(small_pretrain, out, init_from="resume", max_iters=4)) == 0
    err = capsys.readouterr().err
    assert (f"note: removed {', '.join(stale)} from {out}: left by a rewrite of log.jsonl or report.md that was "
            "interrupted") in err.splitlines(), err
    assert temporaries(out) == sorted(mine[1:] + [".log.jsonl.deadbeef.tmp", ".report.md.feedface.tmp"])
    assert (out / mine[0]).read_bytes() == b"x"
    for name in stale:  # and so does a new run over it
        (out / name).write_bytes(b"x")
    assert main("pretrain", args(small_pretrain, out, overwrite="true", max_iters=2)) == 0
    assert not any((out / name).exists() for name in stale)


def test_stale_rewrites_stay_where_the_run_does_not_hold_the_lock(tmp_path):
    from nano_train.train import remove_stale_rewrites

    (tmp_path / ".log.jsonl.0123abcd.tmp").write_bytes(b"x")
    (tmp_path / ".run.lock").write_text("1\n", encoding="ascii")  # another process's lock
    assert remove_stale_rewrites(tmp_path) == [] and (tmp_path / ".log.jsonl.0123abcd.tmp").exists()
    (tmp_path / ".run.lock").write_text(f"{os.getpid()}\n", encoding="ascii")
    assert remove_stale_rewrites(tmp_path) == [tmp_path / ".log.jsonl.0123abcd.tmp"]


# ---------------------------------------------------------------------------
# run.keep_last


def kept(out):
    return sorted(p.name for p in out.glob("ckpt_*.pt"))


def test_keep_last_keeps_the_newest_checkpoints_through_a_resume(tmp_path, small_pretrain, capsys, args):
    out = tmp_path / "run"
    run = dict(keep_checkpoints="true", keep_last=2, checkpoint_interval=1, eval_interval=3)
    assert main("pretrain", args(small_pretrain, out, max_iters=5, **run)) == 0
    assert kept(out) == ["ckpt_000004.pt", "ckpt_000005.pt"]
    assert {"best.pt", "latest.pt"} <= {p.name for p in out.iterdir()}
    assert load(out / "latest.pt")["config"]["train"]["run"]["keep_last"] == 2  # the resolved config keeps it
    # files that only look like the run's, and one of a later step (the resume goes back to step 5)
    others = ["ckpt_12.pt", "ckpt_0000001.pt", "ckpt_000001.pt.bak", "ckpt_000009.pt"]
    for name in others:
        (out / name).write_bytes(b"x")
    (out / "ckpt_000002.pt").symlink_to(out / "ckpt_12.pt")
    assert main("pretrain", args(small_pretrain, out, init_from="resume", max_iters=7)) == 0  # keep_last from latest.pt
    assert kept(out) == sorted(["ckpt_000006.pt", "ckpt_000007.pt", "ckpt_000002.pt", *others[:2], others[3]])
    assert all((out / name).read_bytes() == b"x" for name in others)
    # a smaller bound on resume applies from the next checkpoint
    assert main("pretrain", args(small_pretrain, out, init_from="resume", max_iters=8, keep_last=1)) == 0
    assert [n for n in kept(out) if n not in others] == ["ckpt_000002.pt", "ckpt_000008.pt"]


def test_prune_checkpoints_deletes_only_the_run_s_older_files(tmp_path):
    from nano_train.train import prune_checkpoints

    for step in (1, 2, 3, 1_000_000):
        (tmp_path / f"ckpt_{step:06d}.pt").write_bytes(b"x")
    (tmp_path / "ckpt_000004.pt").mkdir()
    assert prune_checkpoints(tmp_path, 1_000_000, 2) == [tmp_path / "ckpt_000001.pt", tmp_path / "ckpt_000002.pt"]
    assert kept(tmp_path) == ["ckpt_000003.pt", "ckpt_000004.pt", "ckpt_1000000.pt"]


@pytest.mark.parametrize("value, message", [("-1", "run.keep_last must be >= 0 (0 = keep every ckpt_<step>.pt), got -1"),
                                            ("two", "override '--keep_last=two': expected an integer, got 'two'")])
def test_keep_last_is_checked(tmp_path, small_pretrain, capsys, value, message, args, error_line):
    assert main("pretrain", args(small_pretrain, tmp_path / "run", keep_last=value)) == 2
    assert error_line(capsys) == f"error: {message}" and not (tmp_path / "run").exists()


def test_keep_last_without_keep_checkpoints_gets_a_note(tmp_path, small_pretrain, capsys, args):
    assert main("pretrain", args(small_pretrain, tmp_path / "run", max_iters=2, keep_last=2)) == 0
    assert "note: run.keep_last 2 has no effect without --keep_checkpoints=true" in capsys.readouterr().err
