"""The plot command on logs it cannot plot and outputs it cannot write: one error line, no traceback."""

from __future__ import annotations

import json

import pytest

from nano_train import plot as plot_cmd

pytest.importorskip("matplotlib")

RECORDS = [
    {"kind": "train", "step": 1, "loss": 8.3, "lr": 1e-4},
    {"kind": "train", "step": 2, "loss": 8.1, "lr": 2e-4},
    {"kind": "eval", "step": 2, "val_loss": 8.2},
]


def write_log(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def error_of(argv) -> str:
    with pytest.raises(SystemExit) as e:
        plot_cmd.main(argv)
    assert isinstance(e.value.code, str) and e.value.code.startswith("error: ")
    return e.value.code


def test_foreign_lines_are_skipped(tmp_path):
    log = write_log(tmp_path / "log.jsonl", [json.dumps(r) for r in RECORDS] + ["7", "[1, 2]", '{"kind": "train"}',
                                                                              '{"kind": "train", "step": "x", "loss": 1}'])
    png = tmp_path / "out.png"
    assert plot_cmd.main([str(log), "-o", str(png)]) == 0 and png.stat().st_size > 0
    assert plot_cmd.curves([7, [1], *RECORDS])["train"] == ([1, 2], [8.3, 8.1])


def test_nothing_to_plot_is_an_error(tmp_path):
    empty = write_log(tmp_path / "empty.jsonl", [])
    assert "has no train or eval records" in error_of([str(empty), "-o", str(tmp_path / "p.png")])
    start_only = write_log(tmp_path / "start.jsonl", ['{"kind": "start", "step": 0}'])
    assert "has no train or eval records" in error_of([str(start_only), "-o", str(tmp_path / "p.png")])
    assert not (tmp_path / "p.png").exists()


def test_unsupported_format_and_unwritable_output(tmp_path):
    log = write_log(tmp_path / "log.jsonl", [json.dumps(r) for r in RECORDS])
    msg = error_of([str(log), "-o", str(tmp_path / "p.txt")])
    assert "cannot write .txt" in msg and ".png" in msg
    assert "cannot write" in error_of([str(log), "-o", str(tmp_path / "no_such_dir" / "p.png")])
