"""Plot a run's loss curves from its log.jsonl.

usage: python -m nano_train.plot RUN_DIR_OR_LOG.jsonl [more ...] [-o loss.png] [--lr]

Draws train loss (per logged step) and validation loss (per evaluation) for
each run given, one colour per run; --lr adds the learning rate on a second
axis. Needs matplotlib (`pip install matplotlib`; in the workspace it is installed).

The picture (PNG, or any format matplotlib writes, chosen by the extension) is
written atomically: to a temporary file beside the output, then renamed over it
(a replaced file keeps its mode). A folder, FIFO, device or symbolic link at the
output path is refused before anything is drawn, never written through or replaced.
A log or an output that cannot be used is one `error: ...` line, exit status 1;
a command line argparse cannot parse gets the usage and exit status 2. Ctrl-C is
one line, `error: interrupted; ...`, and exit status 130.
"""

from __future__ import annotations

import argparse
import io
import math
import stat
import sys
from pathlib import Path

from nano_format import WriteError, check_writable, file_kind, write_atomically

from nano_train import either_spelling, standard_streams, file_stamp, print_output
from nano_train.metrics import read_log


def _log_path(p: str) -> Path:
    path = Path(p)
    return path / "log.jsonl" if path.is_dir() else path


def _log_file(name: str) -> Path:
    """The log file an argument names (a log, or a run directory holding log.jsonl);
    SystemExit saying what is there instead when that is not a regular file."""
    path = _log_path(name)
    try:
        st = path.stat()
    except FileNotFoundError:
        if path != Path(name):
            raise SystemExit(f"error: {name} is a directory with no log.jsonl in it") from None
        raise SystemExit(f"error: {path} does not exist") from None
    except OSError as e:
        raise SystemExit(f"error: cannot read {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SystemExit(f"error: {path} is {file_kind(st.st_mode)}, not a log file")
    return path


def _cannot_write(out: Path, e: Exception) -> SystemExit:
    """The one error line for an output that check_writable or write_atomically refused."""
    why = e.message if isinstance(e, WriteError) else (e.strerror or e)
    return SystemExit(f"error: cannot write {out}: {why}")


# Values of larger magnitude are skipped: matplotlib cannot lay out an axis from
# -1e308 to 1e308 (its length overflows to inf), and no loss or learning rate that
# large is worth a point on a curve.
MAX_MAGNITUDE = 1e300


def _number(value) -> float | None:
    """value as a float when it is a finite number of a plottable magnitude (not a bool,
    a string, an object or null), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        x = float(value)
    except OverflowError:  # an int beyond a float's range
        return None
    return x if math.isfinite(x) and abs(x) <= MAX_MAGNITUDE else None


def _curves(records: list[dict]) -> tuple[dict[str, tuple[list[int], list[float]]], int]:
    """curves(records) and the number of values skipped because they were not
    plottable numbers (a hand-edited or foreign log). A null value is not counted:
    RunLog writes a nan or inf as null, and such a point is simply not drawn."""
    out: dict[str, dict[int, float]] = {"train": {}, "val": {}, "lr": {}}
    bad = 0

    def put(curve: str, step: int, value) -> None:
        nonlocal bad
        if value is None:
            return
        x = _number(value)
        if x is None:
            bad += 1
        else:
            out[curve][step] = x

    for r in records:
        if not isinstance(r, dict) or r.get("kind") not in ("train", "eval"):
            continue  # not a record of ours (a hand-edited or foreign line)
        step = r.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or _number(step) is None:
            bad += 1
            continue
        if r["kind"] == "train":
            put("train", step, r.get("loss"))
            put("lr", step, r.get("lr"))
        else:
            put("val", step, r.get("val_loss"))
    return {k: (sorted(v), [v[s] for s in sorted(v)]) for k, v in out.items()}, bad


def _lone(curve: tuple[list[int], list[float]]) -> str | None:
    """The marker of a curve: none, unless it has a single point, which a line alone does not draw."""
    return "o" if len(curve[0]) == 1 else None


def curves(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """{"train": (steps, losses), "val": (...), "lr": (...)}; a step logged twice
    (a resumed run repeating steps) keeps its last value. Only finite numbers are
    kept: a step that is not an integer, or a value that is not a number (a string,
    an object, a bool, null) or is too large to draw, is skipped."""
    return _curves(records)[0]


def run_labels(paths: list[Path]) -> list[str]:
    """The legend's name of each run: its folder's name (a log file's stem where the file is
    not named log.jsonl), with as many parent folders as it takes to tell runs apart
    (a/run and b/run), and a real name for `.`."""
    parts = [list((p.resolve().parent if p.name == "log.jsonl" else p.resolve().with_suffix("")).parts)
             for p in paths]
    depth = 1
    while True:
        labels = ["/".join(x[-depth:]) or "/" for x in parts]
        if len(set(labels)) == len(labels) or depth >= max(map(len, parts)):
            return labels
        depth += 1


def _undrawable(text: str, font_file: str) -> set[str]:
    """The characters of text that the font in font_file has no glyph for."""
    from matplotlib.ft2font import FT2Font

    try:
        charmap = FT2Font(font_file).get_charmap()
    except (OSError, RuntimeError, ValueError):  # a font file that cannot be read draws nothing
        return {c for c in text if not c.isspace()}
    return {c for c in text if not c.isspace() and ord(c) not in charmap}


def legend_fonts(labels: list[str]) -> tuple[list[str], set[str]]:
    """(installed font families that draw the characters of labels which matplotlib's default
    font lacks, in the order found; the characters that none of them draws). Run folders may
    be named in Chinese, which DejaVu Sans cannot draw; matplotlib takes each glyph from the
    first family on its list that has it, so one name may need several fonts."""
    from matplotlib import font_manager

    lacking = _undrawable("".join(labels), font_manager.findfont(font_manager.FontProperties()))
    families: list[str] = []
    tried, known = set(), set()
    for entry in font_manager.fontManager.ttflist:  # (each family once, in its upright style)
        known.add(entry.fname)
        if not lacking or entry.name in tried or entry.style != "normal" or entry.name.startswith("Last Resort"):
            continue  # (Last Resort, which matplotlib ships, has a box with the code point for every character)
        tried.add(entry.name)
        drawn = lacking - _undrawable("".join(lacking), entry.fname)
        if drawn:
            families.append(entry.name)
            lacking -= drawn
    # matplotlib lists the fonts installed when it made its cache: one installed since is not on it
    for font_file in font_manager.findSystemFonts() if lacking else ():
        if font_file in known:
            continue
        drawn = lacking - _undrawable("".join(lacking), font_file)
        if drawn:
            font_manager.fontManager.addfont(font_file)
            families.append(font_manager.fontManager.ttflist[-1].name)
            lacking -= drawn
            if not lacking:
                break
    return families, lacking


def plot(logs: list[str], output: str, show_lr: bool = False) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("error: plotting needs matplotlib: pip install matplotlib") from None
    out = Path(output)
    formats = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    if out.suffix.lstrip(".").lower() not in formats:
        raise SystemExit(f"error: -o {out}: matplotlib cannot write {out.suffix or 'a file without an extension'}; "
                         f"use one of: {', '.join('.' + f for f in sorted(formats))}")
    try:  # before anything is read or drawn (a symbolic link is never written through)
        check_writable(out)
    except (WriteError, OSError) as e:
        raise _cannot_write(out, e) from None
    runs = []
    for name in logs:
        path = _log_file(name)
        c, bad = _curves(read_log(path))
        if not (c["train"][0] or c["val"][0]):
            why = f" ({bad} values skipped: not finite numbers of a plottable size)" if bad else ""
            raise SystemExit(f"error: {path} has no train or eval records to plot{why}")
        if bad:
            print(f"note: {path}: skipped {bad} values that are not finite numbers of a plottable size "
                  f"(|x| <= {MAX_MAGNITUDE:g})", file=sys.stderr)
        runs.append((path, c))
    labels = run_labels([path for path, _ in runs])
    families, lacking = legend_fonts(labels)
    for i, (path, _) in enumerate(runs):
        if missing := "".join(sorted(lacking & set(labels[i]))):  # boxes would not tell the runs apart
            shown = f"run {i + 1}"
            print(f"note: the legend calls {path} {shown!r}: no installed font draws {missing!r} of its name "
                  f"{labels[i]!r} (install a font with those characters, e.g. fonts-noto-cjk for Chinese)",
                  file=sys.stderr)
            labels[i] = shown
    fig, ax = plt.subplots(figsize=(9, 5))
    ax2 = ax.twinx() if show_lr else None
    for i, ((path, c), label) in enumerate(zip(runs, labels)):
        color = f"C{i}"
        if c["train"][0]:
            ax.plot(*c["train"], color=color, alpha=0.6, linewidth=1, marker=_lone(c["train"]), markersize=3,
                    label=f"{label} train")
        if c["val"][0]:
            ax.plot(*c["val"], color=color, marker="o", markersize=3, linewidth=2, label=f"{label} val")
        if ax2 is not None and c["lr"][0]:
            ax2.plot(*c["lr"], color=color, linestyle=":", linewidth=1, marker=_lone(c["lr"]), markersize=3,
                     label=f"{label} lr")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    if ax2 is not None:
        ax2.set_ylabel("learning rate")
    # one legend for both axes, on the upper one (the learning rate's lines would cover one on the lower)
    lines = ax.get_lines() + (ax2.get_lines() if ax2 is not None else [])
    # (a font for the characters of run names the default lacks: matplotlib takes a glyph from
    # the first family on the list that has it)
    font = {"family": [*matplotlib.rcParams["font.family"], *families]} if families else None
    (ax if ax2 is None else ax2).legend(handles=lines, loc="upper right", prop=font)
    fig.tight_layout()
    picture = io.BytesIO()
    try:
        fig.savefig(picture, format=out.suffix.lstrip(".").lower(), dpi=120)
    finally:
        plt.close(fig)
    try:  # checked again: things may have changed while the logs were read
        write_atomically(out, [picture.getbuffer()])
    except (WriteError, OSError) as e:
        raise _cannot_write(out, e) from None
    return out


def main(argv: list[str] | None = None) -> int:
    standard_streams()
    parser = argparse.ArgumentParser(prog="python -m nano_train.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+", help="run directories or log.jsonl files")
    parser.add_argument("-o", "--output", default=None, help="PNG to write (default: loss.png beside the first log)")
    parser.add_argument("--lr", action="store_true", help="also plot the learning rate")
    args = parser.parse_args(either_spelling(parser, argv))
    # an empty argument (an unset shell variable) would read as "." (or -o as not given)
    if args.output == "":
        raise SystemExit("error: -o: the path is empty")
    if "" in args.logs:
        raise SystemExit("error: a log path is empty")
    output = str(_log_path(args.logs[0]).parent / "loss.png") if args.output is None else args.output
    before = file_stamp(output)
    try:
        written = plot(args.logs, output, args.lr)
    except KeyboardInterrupt:  # (write_atomically leaves the old file, or none, whole)
        done = "the plot was complete: " if file_stamp(output) != before else "nothing was written to "
        print(f"\nerror: interrupted; {done}{output}", file=sys.stderr)
        return 130
    return print_output(str(written), done=f"the plot itself succeeded: {written} written")


if __name__ == "__main__":
    sys.exit(main())
