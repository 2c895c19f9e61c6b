"""Plot a run's loss curves from its log.jsonl.

usage: python -m nano_train.plot RUN_DIR_OR_LOG.jsonl [more ...] [-o loss.png] [--lr]

Draws train loss (per logged step) and validation loss (per evaluation) for
each run given, one colour per run; --lr adds the learning rate on a second
axis. Needs matplotlib (`pip install matplotlib`; in the workspace it is installed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nano_train.metrics import read_log


def _log_path(p: str) -> Path:
    path = Path(p)
    return path / "log.jsonl" if path.is_dir() else path


def curves(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """{"train": (steps, losses), "val": (...), "lr": (...)}; a step logged twice
    (a resumed run repeating steps) keeps its last value."""
    out: dict[str, dict[int, float]] = {"train": {}, "val": {}, "lr": {}}
    for r in records:
        if not isinstance(r, dict) or not isinstance(r.get("step"), int):
            continue  # not a record of ours (a hand-edited or foreign line)
        if r.get("kind") == "train" and r.get("loss") is not None:
            out["train"][r["step"]] = r["loss"]
            out["lr"][r["step"]] = r.get("lr")
        elif r.get("kind") == "eval" and r.get("val_loss") is not None:
            out["val"][r["step"]] = r["val_loss"]
    return {k: (sorted(v), [v[s] for s in sorted(v)]) for k, v in out.items()}


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
    runs = []
    for name in logs:
        path = _log_path(name)
        if not path.is_file():
            raise SystemExit(f"error: {path} does not exist")
        c = curves(read_log(path))
        if not (c["train"][0] or c["val"][0]):
            raise SystemExit(f"error: {path} has no train or eval records to plot")
        runs.append((path, c))
    fig, ax = plt.subplots(figsize=(9, 5))
    ax2 = ax.twinx() if show_lr else None
    for i, (path, c) in enumerate(runs):
        color = f"C{i}"
        label = path.parent.name if path.name == "log.jsonl" else path.stem
        if c["train"][0]:
            ax.plot(*c["train"], color=color, alpha=0.6, linewidth=1, label=f"{label} train")
        if c["val"][0]:
            ax.plot(*c["val"], color=color, marker="o", markersize=3, linewidth=2, label=f"{label} val")
        if ax2 is not None and c["lr"][0]:
            ax2.plot(*c["lr"], color=color, linestyle=":", linewidth=1, label=f"{label} lr")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    if ax2 is not None:
        ax2.set_ylabel("learning rate")
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=120)
    except OSError as e:
        raise SystemExit(f"error: cannot write {out}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nano_train.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+", help="run directories or log.jsonl files")
    parser.add_argument("-o", "--output", default=None, help="PNG to write (default: loss.png beside the first log)")
    parser.add_argument("--lr", action="store_true", help="also plot the learning rate")
    args = parser.parse_args(argv)
    output = args.output or str(_log_path(args.logs[0]).parent / "loss.png")
    print(plot(args.logs, output, args.lr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
