"""The plot command on logs it cannot plot and outputs it cannot write: one error line, no traceback."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from nano_train import plot as plot_cmd


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


def test_values_that_are_not_finite_numbers_are_skipped(tmp_path, capsys):
    lines = [
        '{"kind": "eval", "step": 3, "val_loss": {}}',
        '{"kind": "train", "step": 1, "loss": 1e308, "lr": "x"}',
        '{"kind": "train", "step": 2, "loss": -1e308, "lr": null}',
        '{"kind": "train", "step": 4, "loss": "abc", "lr": true}',
        '{"kind": "train", "step": true, "loss": 3.0}',
        '{"kind": "train", "step": 1e400, "loss": 3.0}',
        '{"kind": "train", "step": 5, "loss": 2.5, "lr": 0.1}',
        '{"kind": "train", "step": 6, "loss": 2.4, "lr": 0.2}',
        '{"kind": "eval", "step": 6, "val_loss": 2.6}',
    ]
    log = write_log(tmp_path / "log.jsonl", lines)
    png = tmp_path / "out.png"
    assert plot_cmd.main([str(log), "-o", str(png), "--lr"]) == 0 and png.stat().st_size > 0
    assert "skipped 8 values" in capsys.readouterr().err
    c = plot_cmd.curves([json.loads(line) for line in lines])
    assert c == {"train": ([5, 6], [2.5, 2.4]), "val": ([6], [2.6]), "lr": ([5, 6], [0.1, 0.2])}


def test_huge_losses_do_not_break_the_axis(tmp_path):
    log = write_log(tmp_path / "log.jsonl", [json.dumps({"kind": "train", "step": s, "loss": v, "lr": v})
                                             for s, v in enumerate([1e308, -1e308, 1e300, -1e300, 2.0])])
    png = tmp_path / "out.png"
    assert plot_cmd.main([str(log), "-o", str(png), "--lr"]) == 0 and png.stat().st_size > 0


def test_nothing_plottable_left_is_an_error(tmp_path):
    log = write_log(tmp_path / "log.jsonl", ['{"kind": "eval", "step": 3, "val_loss": {}}',
                                             '{"kind": "train", "step": 1, "loss": "abc"}'])
    msg = error_of([str(log), "-o", str(tmp_path / "p.png")])
    assert "has no train or eval records to plot" in msg and "2 values skipped" in msg
    assert not (tmp_path / "p.png").exists()


def test_deeply_nested_line_is_skipped(tmp_path):
    log = write_log(tmp_path / "log.jsonl", [json.dumps(r) for r in RECORDS] + ["[" * 100_000 + "]" * 100_000])
    png = tmp_path / "out.png"
    assert plot_cmd.main([str(log), "-o", str(png)]) == 0 and png.stat().st_size > 0


@pytest.mark.skipif(sys.platform == "win32", reason="no FIFOs or (unprivileged) symbolic links there")
def test_output_that_is_not_a_regular_file_is_refused(tmp_path):
    """A symbolic link at -o is never written through (it once turned a run's report.md
    into a PNG); a folder or a FIFO is refused too, and nothing is replaced."""
    log = write_log(tmp_path / "log.jsonl", [json.dumps(r) for r in RECORDS])
    (tmp_path / "report.md").write_text("# the run's report\n", encoding="utf-8")
    (tmp_path / "link.png").symlink_to("report.md")
    (tmp_path / "folder.png").mkdir()
    os.mkfifo(tmp_path / "fifo.png")
    for name in ("link.png", "folder.png", "fifo.png"):
        out = tmp_path / name
        msg = error_of([str(log), "-o", str(out)])
        assert msg == f"error: cannot write {out}: exists and is not a regular file; not replacing it", msg
    assert (tmp_path / "report.md").read_text(encoding="utf-8") == "# the run's report\n"
    assert (tmp_path / "link.png").is_symlink() and stat.S_ISFIFO((tmp_path / "fifo.png").lstat().st_mode)
    names = ["fifo.png", "folder.png", "link.png", "log.jsonl", "report.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names


def test_output_is_written_atomically(tmp_path, monkeypatch):
    """A failure while the picture is written (a full disk) leaves the old one whole and
    no temporary file; a replaced picture keeps its mode."""
    log = write_log(tmp_path / "log.jsonl", [json.dumps(r) for r in RECORDS])
    png = tmp_path / "loss.png"
    png.write_bytes(b"the previous plot")
    png.chmod(0o600)

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    assert error_of([str(log), "-o", str(png)]) == f"error: cannot write {png}: No space left on device"
    assert png.read_bytes() == b"the previous plot"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl", "loss.png"]  # no temporary file left
    monkeypatch.undo()
    assert plot_cmd.main([str(tmp_path)]) == 0  # the default output: loss.png beside the log
    assert png.read_bytes().startswith(b"\x89PNG") and stat.S_IMODE(png.stat().st_mode) == 0o600


@pytest.mark.skipif(sys.platform == "win32", reason="no FIFOs there")
def test_a_log_that_is_not_a_file_is_named_for_what_it_is(tmp_path):
    """Not "does not exist" for what exists: a directory named log.jsonl (given itself, or
    as a run directory's log), a run directory with no log, a FIFO."""
    (tmp_path / "a" / "log.jsonl").mkdir(parents=True)
    (tmp_path / "empty_run").mkdir()
    os.mkfifo(tmp_path / "fifo.jsonl")
    cases = {
        tmp_path / "a": f"{tmp_path / 'a' / 'log.jsonl'} is a directory, not a log file",
        tmp_path / "a" / "log.jsonl": f"{tmp_path / 'a' / 'log.jsonl'} is a directory with no log.jsonl in it",
        tmp_path / "empty_run": f"{tmp_path / 'empty_run'} is a directory with no log.jsonl in it",
        tmp_path / "fifo.jsonl": f"{tmp_path / 'fifo.jsonl'} is a FIFO (a pipe), not a log file",
        tmp_path / "nope.jsonl": f"{tmp_path / 'nope.jsonl'} does not exist",
    }
    for given, want in cases.items():
        assert error_of([str(given), "-o", str(tmp_path / "p.png")]) == f"error: {want}"
    assert not (tmp_path / "p.png").exists()


def test_a_curve_of_one_point_is_drawn(tmp_path):
    """A log with a single train record (max_iters 1, or one log_interval) drew nothing:
    a line needs two points. Its point is in the middle of the axes; nothing else there is blue."""
    import matplotlib.image

    log = write_log(tmp_path / "log.jsonl", ['{"kind": "train", "step": 1, "loss": 8.3, "lr": 0.001}'])
    png = tmp_path / "out.png"
    assert plot_cmd.main([str(log), "-o", str(png)]) == 0
    img = matplotlib.image.imread(png)
    h, w = img.shape[:2]
    middle = img[h // 3: 2 * h // 3, w // 3: 2 * w // 3]
    assert (middle[..., 2] - middle[..., 0] > 0.2).sum() > 0  # the train colour, C0 (blue)


def test_the_legend_names_the_learning_rate_curves(tmp_path, monkeypatch):
    """--lr's curves are labelled like the others; the legend showed only the loss axis's."""
    from matplotlib.figure import Figure

    saved = []
    savefig = Figure.savefig

    def keep(fig, *args, **kwargs):
        saved.append(fig)
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    log = write_log(tmp_path / "run.jsonl", [json.dumps(r) for r in RECORDS])
    assert plot_cmd.main([str(log), "-o", str(tmp_path / "out.png"), "--lr"]) == 0
    labels = [t.get_text() for ax in saved[0].axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert labels == ["run train", "run val", "run lr"]


def test_the_legend_tells_runs_apart(tmp_path, monkeypatch):
    # (was "run train" for both a/run and b/run, and " train" for a run given as `.`)
    from nano_train.plot import run_labels

    for name in ("a/run", "b/run", "c/d/run", "e/d/run", "solo"):
        (tmp_path / name).mkdir(parents=True)
    assert run_labels([tmp_path / "solo" / "log.jsonl"]) == ["solo"]
    assert run_labels([tmp_path / "a/run/log.jsonl", tmp_path / "b/run/log.jsonl", tmp_path / "solo/log.jsonl"]) == \
        ["a/run", "b/run", f"{tmp_path.name}/solo"]
    assert run_labels([tmp_path / "c/d/run/log.jsonl", tmp_path / "e/d/run/log.jsonl"]) == ["c/d/run", "e/d/run"]
    monkeypatch.chdir(tmp_path / "solo")
    assert run_labels([Path("log.jsonl"), Path("../a/run/log.jsonl")]) == ["solo", "run"]
    assert run_labels([Path("old.jsonl")]) == ["old"]


def test_a_run_name_the_default_font_cannot_draw_is_drawn_with_a_font_that_can(tmp_path, capsys):
    """Run folders may be named in Chinese, which matplotlib's DejaVu Sans lacks: the legend
    takes the characters from an installed font that has them (here a script g, which
    DejaVu Sans lacks and STIX, shipped with matplotlib, has), without a warning per glyph."""
    import warnings

    run = tmp_path / "run\u210a"
    run.mkdir()
    write_log(run / "log.jsonl", [json.dumps(r) for r in RECORDS])
    families, lacking = plot_cmd.legend_fonts(["run\u210a"])
    assert families and not lacking
    assert plot_cmd.legend_fonts(["run 1"]) == ([], set())  # the default font draws it: nothing added
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*[Gg]lyph.*missing")
        assert plot_cmd.main([str(run), "-o", str(tmp_path / "p.png")]) == 0
    assert capsys.readouterr().err == ""


def test_a_run_name_no_font_can_draw_is_replaced_in_the_legend_with_a_note(tmp_path, capsys):
    """A legend of empty boxes tells no run from another: a name no installed font draws
    (here an unassigned code point) becomes "run N", and a note says which run that is."""
    import warnings

    runs = []
    names = ("a\u0378", "b\u210a", "c\u0378\u210a")  # (U+210A, a script g: a font has it, see above)
    for name in names:
        (tmp_path / name).mkdir()
        runs.append(str(write_log(tmp_path / name / "log.jsonl", [json.dumps(r) for r in RECORDS])))
    families, lacking = plot_cmd.legend_fonts(list(names))
    assert families and lacking == {"\u0378"}  # one name's undrawable character leaves the others' fonts
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*[Gg]lyph.*missing")
        assert plot_cmd.main([*runs, "-o", str(tmp_path / "p.png")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"note: the legend calls {runs[i]} 'run {i + 1}': no installed font draws {chr(0x378)!r} of its name "
                   f"{names[i]!r} (install a font with those characters, e.g. fonts-noto-cjk for Chinese)" for i in (0, 2)]
