"""RunLog and the log reader: foreign lines are skipped, and a resume's rewrite of
log.jsonl never loses the log (it is written atomically)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nano_train.metrics import RunLog, read_log

RECORDS = [{"kind": "start", "step": 0}] + [{"kind": "train", "step": s, "loss": 9.0 - s} for s in range(1, 41)]


def write_log(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_deeply_nested_line_is_skipped(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    obj = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
    log = write_log(tmp_path / "log.jsonl", [json.dumps(RECORDS[1]), deep, obj, json.dumps(RECORDS[2])])
    assert read_log(log) == RECORDS[1:3]
    RunLog(log, True, resume_step=1)  # resume reads the same lines: no RecursionError either
    assert read_log(log) == RECORDS[1:2]


def test_resume_drops_later_steps_and_keeps_the_rest(tmp_path):
    log = write_log(tmp_path / "log.jsonl", [json.dumps(r) for r in RECORDS] + ['{"kind": "train", "step": 4'])
    RunLog(log, True, resume_step=10)
    assert read_log(log) == RECORDS[:11]
    assert not [p.name for p in tmp_path.iterdir() if p.name != "log.jsonl"]  # no temporary file left behind


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
def test_resume_rewrite_that_fails_midway_keeps_the_old_log(tmp_path):
    # A write that fails partway (here: a file-size limit, as a full disk would) must
    # leave the old log whole. Rewriting in place (truncate, then write) lost it.
    log = write_log(tmp_path / "log.jsonl", [json.dumps(r) for r in RECORDS])
    before = log.read_bytes()
    limit = len(before) // 4  # the rewritten log (steps <= 30) is larger than this
    script = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from nano_train.metrics import RunLog\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"  # an oversized write then fails with EFBIG
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "try:\n"
        "    RunLog(Path(sys.argv[1]), True, resume_step=30)\n"
        "except OSError:\n"
        "    sys.exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(log)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert log.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["log.jsonl"]
