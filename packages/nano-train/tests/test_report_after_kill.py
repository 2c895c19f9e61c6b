"""A run killed after its final checkpoint, before (or while) it wrote its end record
and report.md: resuming it has nothing to train, but writes the report it lacks (and
the log's end record), with the figures latest.pt and log.jsonl hold; a report that
already describes the checkpoint stays untouched. report.md is written atomically."""

import json
import os
import signal

import pytest
import torch

from nano_train import report
from nano_train.metrics import read_log
from nano_train.train import main


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def run_args(tiny_args, small_pretrain):
    """run_args(out_dir, **extra) -> tiny_config's run on small_pretrain, its samples drawn from 人."""
    return lambda out_dir, **extra: tiny_args(small_pretrain, out_dir, sample_prompts='["人"]', **extra)


def rows(text: str) -> dict[str, str]:
    """The report's table, {name: value}."""
    out = {}
    for line in text.splitlines():
        parts = line.split(" | ")
        if line.startswith("| ") and len(parts) == 2 and parts[0] != "|":
            out[parts[0][2:]] = parts[1].rstrip(" |")
    return out


def samples_section(text: str) -> str:
    return text.split("## Samples", 1)[1].split("## Config", 1)[0]


def drop_end_records(out, step):
    """The log as a kill before the end record of `step` leaves it."""
    log = out / "log.jsonl"
    lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
    log.write_text("".join(x for x in lines if not (json.loads(x)["kind"] == "end" and json.loads(x)["step"] == step)),
                   encoding="utf-8")


def resume(run_args, out, capsys, **extra) -> str:
    capsys.readouterr()
    assert main("pretrain", run_args(out, init_from="resume", **extra)) == 0
    return capsys.readouterr().out


@pytest.fixture
def finished(tmp_path, run_args):
    out = tmp_path / "run"
    assert main("pretrain", run_args(out)) == 0
    return out


def check_written(out, original: str, said: str):
    """report.md is the finished run's again: step, figures and samples, a real throughput."""
    assert "nothing to do" in said and "at step 4" in said and "wrote the missing report.md" in said, said
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "pretrain, finished at step 4 of 4, " in text and "interrupted" not in text.split("## Config")[0], text
    assert report.ended_at(out / "report.md") == 4
    new, old = rows(text), rows(original)
    for name in ("parameters", "model", "dataset", "tokens seen", "final train loss", "final val loss",
                 "best val loss"):
        assert new[name] == old[name], (name, new[name], old[name])
    assert samples_section(text) == samples_section(original)  # drawn as at the end of the run
    assert not new["throughput"].startswith("0 "), new["throughput"]
    ends = [r for r in read_log(out / "log.jsonl") if r["kind"] == "end"]
    assert [e["step"] for e in ends if e["step"] == 4] == [4] and ends[-1]["interrupted"] is False
    assert ends[-1]["tokens_seen"] == torch.load(out / "latest.pt", weights_only=True)["tokens_seen"]
    return text, ends[-1]


def test_killed_before_its_end_record_and_report_it_gets_them_on_resume(finished, run_args, capsys):
    """Variant A: killed right after the final checkpoint. The report comes on the resume
    that has nothing to train; the next resume leaves it (and the log) as they are."""
    original = (finished / "report.md").read_text(encoding="utf-8")
    (finished / "report.md").unlink()
    drop_end_records(finished, 4)
    text, end = check_written(finished, original, resume(run_args, finished, capsys))
    # the throughput is the one the run logged, not this process's (which trained nothing)
    rate, _ = report.logged_throughput(finished / "log.jsonl")
    assert rate > 0 and end["tokens_per_s"] == pytest.approx(rate)
    assert "logged by the run's last training process" in rows(text)["throughput"]

    before = {p.name: p.read_bytes() for p in finished.iterdir()}
    said = resume(run_args, finished, capsys)
    assert "nothing to do" in said and "wrote" not in said, said
    assert {p.name: p.read_bytes() for p in finished.iterdir()} == before


def test_an_end_record_cut_short_by_the_kill_is_replaced(finished, run_args, capsys):
    original = (finished / "report.md").read_text(encoding="utf-8")
    (finished / "report.md").unlink()
    log = finished / "log.jsonl"
    data = log.read_bytes()
    log.write_bytes(data[:data.rindex(b'{"kind": "end"') + 20])  # the end record, half written
    check_written(finished, original, resume(run_args, finished, capsys))
    assert all(line.startswith("{") and line.endswith("}") for line in log.read_text().splitlines())


def test_without_a_log_the_throughput_is_unknown_never_zero(finished, run_args, capsys):
    original = (finished / "report.md").read_text(encoding="utf-8")
    (finished / "report.md").unlink()
    (finished / "log.jsonl").unlink()
    text, end = check_written(finished, original, resume(run_args, finished, capsys))
    assert rows(text)["throughput"].startswith("unknown"), rows(text)["throughput"]
    assert rows(text)["MFU (estimate)"].startswith("n/a")
    assert end["tokens_per_s"] is None


def test_a_report_of_an_earlier_interruption_is_replaced(tmp_path, run_args, capsys, monkeypatch):
    """Variant B: Ctrl-C at step 2 (report: interrupted at step 2), resumed, killed after
    the final checkpoint: the next resume replaces the interrupted run's report."""
    real = torch.nn.utils.clip_grad_norm_
    calls = []

    def clip(*a, **k):  # Ctrl-C inside step 2: the run stops after it
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(torch.nn.utils, "clip_grad_norm_", clip)
        assert main("pretrain", run_args(out)) == 130
    interrupted = (out / "report.md").read_text(encoding="utf-8")
    assert "interrupted (latest.pt saved) at step 2 of 4" in interrupted
    assert main("pretrain", run_args(out, init_from="resume")) == 0
    original = (out / "report.md").read_text(encoding="utf-8")
    assert "finished at step 4 of 4" in original

    (out / "report.md").write_text(interrupted, encoding="utf-8")  # as the kill leaves them
    drop_end_records(out, 4)
    text, end = check_written(out, original, resume(run_args, out, capsys))
    # the throughput is that of the last training process (steps 3 and 4)
    trains = [r for r in read_log(out / "log.jsonl") if r["kind"] == "train" and r["step"] > 2]
    assert [r["step"] for r in trains] == [3, 4]
    assert end["tokens_per_s"] == pytest.approx(2 / sum(1 / r["tokens_per_s"] for r in trains))


def test_ended_at_reads_the_status_line_of_a_whole_report(tmp_path):
    path = tmp_path / "report.md"
    assert report.ended_at(path) is None  # none
    head = "# Nano training report: runs/x\n\n"
    tail = "\n\n## Config\n\n```json\n{}\n```\n"
    for status, step in (("finished at step 40 of 40", 40), ("stopped by the time budget (2.5 s) at step 7 of 100", 7),
                         ("interrupted (latest.pt saved) at step 11 of 40", None)):
        path.write_text(f"{head}pretrain, {status}, 2025-01-01 00:00:00.{tail}", encoding="utf-8")
        assert report.ended_at(path) == step, status
    text = f"{head}sft, finished at step 40 of 40, 2025-01-01 00:00:00.{tail}"
    path.write_text(text[:-10], encoding="utf-8")  # cut short
    assert report.ended_at(path) is None
    path.write_text(f"{head}sft, finished at step 40 of 40, 2025-01-01 00:00:00.\n\n```text\nhi\n```\n",
                    encoding="utf-8")  # cut short after a sample, before its config
    assert report.ended_at(path) is None
    path.write_bytes(b"\xff\xfe")
    assert report.ended_at(path) is None


def test_the_report_is_written_atomically(tmp_path, small_pretrain):
    """A write that fails part way (here: the file size limit, as a full disk) leaves
    the old report whole, and no temporary file beside it."""
    resource = pytest.importorskip("resource")
    from nano_train.config import load_config
    from nano_train.data import Dataset
    from nano_train.train import TrainResult

    path = tmp_path / "report.md"
    cfg, _ = load_config(None, [f"--out_dir={tmp_path}"], defaults={"run": {"task": "pretrain"}})

    def write(step):
        result = TrainResult(step, 1.0, 2.0, 2.0, 1000 * step, 123.0, 1.0, False, tmp_path)
        report.write_report(path, cfg=cfg, result=result, model=None, tokenizer=None,
                            dataset=Dataset(small_pretrain), device="cpu", dtype="float32", world_size=1,
                            n_params=10, n_trainable=10, peak=1e9, peak_source="test", flops_per_token=60.0,
                            val_source=None, no_samples="a test")

    cfg.run.out_dir = f"{tmp_path}/a\nb"  # a folder name with a newline keeps the status line third
    write(3)
    assert report.ended_at(path) == 3
    cfg.run.out_dir = str(tmp_path)
    write(1)
    old = path.read_bytes()
    assert len(old) > 1000 and b"finished at step 1 of" in old
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (500, hard))
    try:
        with pytest.raises(OSError):
            write(2)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]

    # something other than a regular file there: one OSError naming it, as a failed write is
    path.unlink()
    path.mkdir()
    with pytest.raises(OSError, match="report.md: exists and is not a regular file"):
        write(3)
