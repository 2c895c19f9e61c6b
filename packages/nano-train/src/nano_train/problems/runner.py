"""One problem from start to finish: generate the data, train through the one
training loop (nano_train.train), score held-out cases in PyTorch, export F32
and Q8_0 files, score the same cases in the C engine, report.

Files in the output directory (default runs/problems/NAME):

    data/               the generated dataset (meta.json, tokenizer.json, rows)
    best.pt latest.pt   checkpoints; log.jsonl, report.md: the training loop's
    train.json          what was trained (config, data, steps, time): a rerun with
                        the same config and seed reuses the checkpoint; written
                        first (without a checkpoint) when training starts, so that
                        the folder says whose run it holds, and a rerun of a run
                        that did not finish (Ctrl-C) continues it from latest.pt
    NAME_f32.bin        the exported model, F32
    NAME_q80.bin        the exported model, Q8_0
    result.json         every number of the final report

A run holds the training loop's run lock in the folder from before it deletes or
writes anything until it ends (claim_out_dir), and replaces only an earlier run
of the same problem: a folder holding any other run is refused.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nano_train import DEFAULT_SEED, OutputFailed, discard_stdout
from nano_train.data import quantity, write_json_atomic
from nano_train.metrics import bar_line, duration, terminal_columns
from nano_train.problems.base import GENERATOR_VERSION, Case, Problem
from nano_train.problems.evaluate import disagreements, find_nano, predict_c, predict_torch, score

TRAIN_RECORD = "train.json"
RESULT = "result.json"
DATA = "data"
DEFAULT_EVAL_CASES = 2000
# The training config keys the command sets itself, and what to use instead: an
# override of one of them is refused in any spelling (--key=... or --section.key=...).
MANAGED_KEYS = {
    "run.task": "a problem trains task sft",
    "run.out_dir": "use --out_dir",
    "data.dataset": "the problem's data is generated into OUT_DIR/data",
    "run.init_from": "a problem trains from scratch; a rerun with the same settings reuses its checkpoint, "
                     "or continues an interrupted run from its latest.pt (--fresh trains again)",
    "run.overwrite": "a problem replaces its own earlier run in --out_dir, and refuses any other",
    "system.seed": "use --seed",
    "optim.max_iters": "use --max_iters",
    "optim.time_budget": "use --time_budget",
    "model.block_size": "it is the problem's (--digits, --depth)",
    "model.vocab_size": "it is the problem's vocabulary",
    "model.is_causal": "it is the problem's (seq2seq: full attention; instruct: causal)",
}


class Interrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C (or SIGTERM) after saving latest.pt at `step`: the same
    command again continues from there."""

    def __init__(self, latest: Path, step: int):
        super().__init__(f"interrupted: {continue_hint(latest, step)}")
        self.latest, self.step = latest, step


def continue_hint(latest: Path, step: int) -> str:
    return f"run the same command again to continue from {latest} (step {step:,}); --fresh starts over"


@dataclass
class Options:
    """run()'s settings, the command line's options by name (--nano is nano, --no-c is
    use_c=False, --key=value training overrides go in overrides)."""

    out_dir: Path
    seed: int = DEFAULT_SEED
    time_budget: float | None = None  # None: the problem's default
    max_iters: int | None = None  # None: the problem's default
    eval_cases: int | None = None  # None: DEFAULT_EVAL_CASES, or all the test split holds if fewer
    nano: str | None = None  # the nano program; None: the checkout's engines/c-core/build/nano
    use_c: bool = True
    fresh: bool = False  # retrain even if a matching checkpoint (or an interrupted run to continue) exists
    overrides: list[str] = field(default_factory=list)  # --key=value for the training config
    c_threads: int = 1
    progress: bool = True  # the training progress bar on stderr


# ---------------------------------------------------------------------------
# Checks before any work


def check_options(problem: Problem, opts: Options) -> int:
    """Refuse, before anything is made, built, generated or trained, what would fail
    later: the training config, a managed key overridden, a device or attention
    backend this machine lacks (ConfigError), --eval_cases the test split cannot
    give (ConfigError), a --nano that is not a program (ConfigError), an out_dir
    that is a file (OSError naming it). Returns the number of test cases to score.
    The out_dir itself is made and checked by claim_out_dir."""
    from nano_train.train import DistInfo, resolve_compute

    cfg, _ = resolve_config(problem, opts)
    resolve_compute(cfg, DistInfo())  # the device is there and runs the attention backend
    n = eval_count(problem, opts.eval_cases)
    if opts.use_c and opts.nano is not None:
        find_nano(opts.nano)
    out_dir = Path(opts.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(out_dir))
    return n


def eval_count(problem: Problem, requested: int | None) -> int:
    """The number of test cases to score: `requested` (ConfigError when below 1 or more
    than the test split holds), or for None DEFAULT_EVAL_CASES, or all the split
    holds if fewer."""
    from nano_train.config import ConfigError

    n = DEFAULT_EVAL_CASES if requested is None else requested
    if n < 1:
        raise ConfigError("--eval_cases must be at least 1")
    try:
        problem.check_eval_cases(n)
    except ValueError as e:
        if requested is not None:
            raise ConfigError(str(e)) from None
        n = problem.most_test_cases()[0]
    if n < 1:
        raise ConfigError(f"{problem.describe()}: none of its questions is held out for the test")
    return n


def pick_test_cases(problem: Problem, n: int, say=print) -> list[Case]:
    """problem.test_cases(n): ConfigError when there are none; a note when fewer than n."""
    from nano_train.config import ConfigError

    cases = problem.test_cases(n)
    if not cases:
        raise ConfigError(f"{problem.describe()}: no held-out test question found; nothing to score")
    if len(cases) < n:
        say(f"note       only {quantity(len(cases), 'distinct held-out test question')} found of the {n:,} asked; "
            "scoring those")
    return cases


def check_out_dir(out_dir: Path, names=()) -> None:
    """Make out_dir (with its parents) if it is not there, and check that each of
    `names` can be written in it (nano_format.check_writable: a file can be made
    beside it, and nothing but a regular file is there). OSError naming the path."""
    from nano_format import WriteError, check_writable

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(out_dir))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(e.errno, f"cannot make the folder: {e.strerror or e}", str(out_dir)) from None
    for name in names:
        try:
            check_writable(out_dir / name)
        except WriteError as e:
            raise OSError(errno.EEXIST, e.message, str(out_dir / name)) from None
        except OSError as e:
            raise OSError(e.errno, f"cannot write in this folder: {e.strerror or e}", str(out_dir)) from None


def out_dir_files(problem: Problem) -> list[str]:
    """The files a run writes in its out_dir (the training loop's and this module's)."""
    from nano_train.train import RUN_FILES

    return [*(name for name in RUN_FILES if "*" not in name), TRAIN_RECORD, RESULT,
            *(f"{problem.name}_{s}.bin" for s in ("f32", "q80"))]


def recorded_problem(out_dir: Path) -> str | None:
    """The problem whose run out_dir holds, as its train.json records it; None when
    there is no train.json or it is not one this module wrote."""
    try:
        rec = json.loads((Path(out_dir) / TRAIN_RECORD).read_text(encoding="utf-8"))
        name = rec["data"]["problem"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return name if isinstance(name, str) else None


def check_own_out_dir(problem: Problem, out_dir: Path) -> None:
    """Refuse (ConfigError) an out_dir holding a run other than this problem's own earlier
    one, which run() would delete or overwrite: checkpoints, a log or report, a dataset,
    a result, without a train.json of this problem. A data/ that is a symbolic link
    would be written through: refused too (check_out_dir refuses the files)."""
    from nano_train.config import ConfigError
    from nano_train.train import earlier_run_files

    out_dir = Path(out_dir)
    data = out_dir / DATA
    if data.is_symlink():
        raise ConfigError(f"{data} is a symbolic link; the problem's data is generated there and nothing is "
                          "written through a link: remove it or choose another --out_dir")
    found = [p.name for p in earlier_run_files(out_dir)]
    found += [name for name in (DATA, TRAIN_RECORD, RESULT) if (out_dir / name).exists()]
    owner = recorded_problem(out_dir)
    if not found or owner == problem.name:
        return
    listed = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
    whose = f"a run of the problem {owner}" if owner else "a run that is not a problems run"
    raise ConfigError(f"{out_dir} holds {whose} ({listed}), which this run would replace: choose another "
                      f"--out_dir (a problem replaces only its own earlier run), or remove those files first")


@contextlib.contextmanager
def claim_out_dir(problem: Problem, out_dir: Path):
    """Hold out_dir for a run of this problem: make it if it is not there (and remove
    what this made again if it is still empty at the end), hold the training loop's
    run lock there (one writer at a time: a second run fails at once, before it
    deletes or writes anything), check that the run's files can be written
    (check_out_dir: no folder, link or device where one goes) and that the folder
    holds no other run (check_own_out_dir)."""
    from nano_train import dirlock
    from nano_train.config import ConfigError
    from nano_train.train import RUN_LOCK

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(out_dir))
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(dirlock.exclusive(out_dir, RUN_LOCK, "run", ConfigError))
        except OSError as e:
            what = "cannot write in this folder" if out_dir.is_dir() else "cannot make the folder"
            raise OSError(e.errno, f"{what}: {e.strerror or e}", str(out_dir)) from None
        check_out_dir(out_dir, out_dir_files(problem))
        check_own_out_dir(problem, out_dir)
        yield


def os_error_text(e: OSError) -> str:
    """An OSError as the commands print it: PATH: reason."""
    reason = e.strerror or str(e)
    return reason if e.filename is None else f"{e.filename}: {reason}"


def print_line(text: str) -> None:
    """print, for the problem command's lines: a failure is an OutputFailed."""
    try:
        print(text, flush=True)
    except OSError as e:
        raise OutputFailed(e.errno, e.strerror or str(e)) from None


def command_status(call) -> int:
    """call()'s int, or the exit status of the error it raised, printed as one
    `error: ...` line on stderr: 2 for bad input (settings, data, checkpoints, an
    out dir that cannot be made or written in), 1 when the training diverged or
    the C engine failed, or memory ran out. What the problem command and the demo share."""
    from nano_train.checkpoint import CheckpointError
    from nano_train.config import ConfigError
    from nano_train.data import DataError
    from nano_train.problems.evaluate import EngineError
    from nano_train.train import LostContact, OutOfMemory, TrainingDiverged, is_out_of_memory, out_of_memory_text

    try:
        return call()
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (EngineError, TrainingDiverged, LostContact, OutOfMemory) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OutputFailed as e:
        discard_stdout()
        print(f"error: writing standard output: {e.strerror}", file=sys.stderr)
        return 1
    except OSError as e:  # an out_dir that cannot be made or written in, a full disk, ...
        print(f"error: {os_error_text(e)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:  # a batch too large for the machine
        if not is_out_of_memory(e):
            raise
        print(f"error: {out_of_memory_text(e)}", file=sys.stderr)
        return 1


# ---------------------------------------------------------------------------
# Config and data


def managed_key(override: str) -> str | None:
    """The "section.key" a --key=value or --section.key=value override sets, if the
    command manages that key itself (MANAGED_KEYS); None otherwise. A malformed,
    unknown or ambiguous override is a ConfigError (parse_overrides', as load_config's)."""
    from nano_train.config import parse_overrides

    (section, values), = parse_overrides([override]).items()
    name = f"{section}.{next(iter(values))}"
    return name if name in MANAGED_KEYS else None


def resolve_config(problem: Problem, opts: Options):
    """The training config: the problem's sections < the command's options < --key=value
    overrides, which may not set a key the command sets itself (MANAGED_KEYS). Its
    model.vocab_size is the problem's vocabulary, as the training loop would take it from
    the data: the config train.json records is the one trained."""
    from nano_train.config import ConfigError, load_config

    for arg in opts.overrides:
        key = managed_key(arg)
        if key is not None:
            raise ConfigError(f"{arg.split('=', 1)[0]} is set by the problems command: {MANAGED_KEYS[key]}")
    out_dir = Path(opts.out_dir)
    defaults = problem.model_config()
    defaults = {**defaults, "run": {**defaults.get("run", {}), "task": "sft", "out_dir": str(out_dir)},
                "data": {**defaults.get("data", {}), "dataset": str(out_dir / "data")},
                "model": {**defaults.get("model", {}), "vocab_size": problem.vocab_size()}}
    options = [f"--seed={opts.seed}"]
    if opts.time_budget is not None:
        options.append(f"--time_budget={opts.time_budget}")
    if opts.max_iters is not None:
        options.append(f"--max_iters={opts.max_iters}")
    return load_config(None, options + list(opts.overrides), defaults=defaults)


def data_info(problem: Problem, seed: int) -> dict:
    return {"problem": problem.name, "params": problem.params, "seed": seed, "train_rows": problem.train_rows,
            "val_rows": problem.val_rows, "held_out": problem.held_out, "generator": GENERATOR_VERSION,
            "block_size": problem.block_size()}


def prepare_data(problem: Problem, data_dir: Path, seed: int, say=print):
    """Generate the problem's dataset into data_dir, or reuse the one there if it was
    made with the same settings and seed. Returns its tokenizer."""
    from nano_train.data import META, Dataset, write_rows

    info = data_info(problem, seed)
    meta = data_dir / META
    if meta.is_file():
        try:
            if json.loads(meta.read_text(encoding="utf-8")).get("info") == info:
                return Dataset(data_dir).tokenizer
        except (OSError, ValueError):
            pass
    t0 = time.monotonic()
    data_dir.mkdir(parents=True, exist_ok=True)
    tok = problem.tokenizer(data_dir)
    rng = random.Random(f"{problem.describe()}/{seed}")
    train_q = problem.draw_split(rng, "train", problem.train_rows, distinct=False)
    val_q = problem.draw_split(rng, "val", problem.val_rows, distinct=True)
    splits = {}
    for name, questions in (("train", train_q), ("val", val_q)):
        splits[name] = problem.encode_rows(tok, [problem.case(q) for q in questions])
    write_rows(data_dir, tok, "seq2seq" if problem.kind == "seq2seq" else "sft", splits,
               source=f"nano_train.problems {problem.describe()}", info=info, overwrite=True)
    say(f"data       {len(train_q):,} training rows, {len(val_q):,} validation questions, vocabulary of "
        f"{tok.vocab_size} tokens ({time.monotonic() - t0:.1f} s) in {data_dir}")
    return tok


# ---------------------------------------------------------------------------
# Training


class TrainingBar:
    """A progress bar for nano_train.train's records: redrawn in place on a terminal,
    a line every 10% otherwise."""

    def __init__(self, enabled: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.max_iters, self.budget = 1, 0.0
        self.val = None
        self.last_decile = -1
        self.drawn = False

    def __call__(self, rec: dict) -> None:
        kind = rec.get("kind")
        if kind == "start":
            optim = rec["config"]["optim"]
            self.max_iters, self.budget = max(optim["max_iters"], 1), optim["time_budget"]
            self.t0 = time.monotonic()
        elif kind == "eval" and rec.get("step", 0) > 0:  # the step-0 loss says nothing yet
            self.val = rec.get("val_loss")
        elif kind == "train":
            self.draw(rec["step"], rec.get("loss"), rec.get("elapsed_s", 0.0))
        elif kind == "end" and self.enabled and self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()

    def draw(self, step: int, loss, elapsed: float) -> None:
        if not self.enabled:
            return
        frac = step / self.max_iters
        if self.budget > 0:
            frac = max(frac, elapsed / self.budget)
        frac = min(frac, 1.0)
        limit = f" of {duration(self.budget)}" if self.budget > 0 else ""
        shown = f"loss {loss:.4f}" if isinstance(loss, (int, float)) else "loss n/a"  # (null: no tokens to learn from)
        after = (f"{100 * frac:3.0f}%  step {step:,}  {shown}"
                 + (f"  val {self.val:.4f}" if self.val is not None else "") + f"  {duration(elapsed)}{limit}")
        text = bar_line("training", frac, after, terminal_columns(self.stream) if self.tty else 10**6, width=28)
        if self.tty:
            self.stream.write("\r" + text + "\033[K")
            self.drawn = True
        elif int(frac * 10) > self.last_decile:
            self.last_decile = int(frac * 10)
            self.stream.write(text + "\n")
        self.stream.flush()


def _without_paths(config) -> dict | None:
    """A config as train.json records it, less the paths that name the out_dir (run.out_dir,
    data.dataset): the same folder is the same run however it is spelled (od, ./od, $PWD/od)."""
    if not isinstance(config, dict):
        return None
    out = {section: dict(values) if isinstance(values, dict) else values for section, values in config.items()}
    for section, key in (("run", "out_dir"), ("data", "dataset")):
        if isinstance(out.get(section), dict):
            out[section].pop(key, None)
    return out


def _same_run(out_dir: Path, requested: dict, info: dict) -> dict | None:
    """The train.json of a finished run with this config and data, if its checkpoint is
    still there and is that run's (another command's run into the folder may have
    replaced it and left train.json)."""
    from nano_train import checkpoint as ckpt_io
    from nano_train.checkpoint import CheckpointError

    rec = _record(out_dir, requested, info)
    checkpoint = None if rec is None else rec.get("checkpoint")  # none in the record of a run that did not finish
    if not isinstance(checkpoint, str) or not (out_dir / checkpoint).is_file():
        return None
    try:
        if not _trained_as(ckpt_io.load(out_dir / checkpoint), requested):
            return None
    except (CheckpointError, KeyError, TypeError):  # not a checkpoint of this command's: train again
        return None
    return rec


def _trained_as(checkpoint: dict, requested: dict) -> bool:
    """Whether a checkpoint was trained with the requested config (paths and init_from aside:
    a resumed run's checkpoint says init_from "resume")."""
    def settings(config: dict) -> dict | None:
        out = _without_paths(config)
        if isinstance(out, dict) and isinstance(out.get("run"), dict):
            out["run"].pop("init_from", None)
        return out

    saved = checkpoint["config"]
    return settings({"model": saved["model"], **saved["train"]}) == settings(requested)


def _record(out_dir: Path, requested: dict, info: dict) -> dict | None:
    """out_dir's train.json, if it records this config and data."""
    try:
        rec = json.loads((out_dir / TRAIN_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or _without_paths(rec.get("config")) != _without_paths(requested) \
            or rec.get("data") != info:
        return None
    return rec


def _interrupted_run(out_dir: Path, requested: dict, info: dict) -> dict | None:
    """The latest.pt of a run with this config and data that did not finish (its train.json
    has no checkpoint entry), to continue from; None when there is none, or when its
    latest.pt is of another config. A latest.pt that cannot be read is a CheckpointError."""
    from nano_train import checkpoint as ckpt_io
    from nano_train.checkpoint import CheckpointError
    from nano_train.train import LATEST

    rec = _record(out_dir, requested, info)
    latest = out_dir / LATEST
    if rec is None or "checkpoint" in rec or not latest.is_file():
        return None
    try:
        checkpoint = ckpt_io.load(latest)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; it holds the interrupted run this command would continue: --fresh "
                              "starts over") from None
    return checkpoint if _trained_as(checkpoint, requested) else None


def train_model(problem: Problem, opts: Options, say=print) -> dict:
    """Train (or reuse a finished run with the same config, data and seed, or continue
    one that was interrupted from its latest.pt). Call it inside claim_out_dir(problem,
    opts.out_dir), held from before anything of an earlier run is deleted until the
    record is written (run() and the demo do). Returns the train.json record: config,
    data, checkpoint, steps, seconds, ...; raises Interrupted when Ctrl-C stopped the
    training (latest.pt saved)."""
    from nano_train.train import LATEST, earlier_run_files, train

    cfg, explicit = resolve_config(problem, opts)
    out_dir = Path(opts.out_dir)
    requested = cfg.to_dict()
    info = data_info(problem, opts.seed)
    resumed = None
    if not opts.fresh:
        rec = _same_run(out_dir, requested, info)
        if rec is not None:
            rec["reused"] = True
            return rec
        resumed = _interrupted_run(out_dir, requested, info)
    if resumed is None:
        for path in [*earlier_run_files(out_dir), out_dir / RESULT]:  # nothing of an older run may be taken for this one
            path.unlink(missing_ok=True)
        # the folder is this problem's from now on, even if this run is interrupted (check_own_out_dir)
        write_json_atomic(out_dir / TRAIN_RECORD, {"config": requested, "data": info,
                                                   "date": time.strftime("%Y-%m-%d %H:%M:%S")})
    before = 0.0  # seconds of training before this run: the interrupted run's
    if resumed is not None:
        before = resumed.get("elapsed_s", 0.0)
        budget = cfg.optim.time_budget
        say(f"training   continuing the interrupted run from {out_dir / LATEST} at step {resumed['step']:,} of "
            f"{cfg.optim.max_iters:,} ({duration(before)} trained"
            + (f" of its {duration(budget)} time budget, which counts across resumes" if budget > 0 else "")
            + "); --fresh starts over")
        cfg.run.init_from = "resume"
    prepare_data(problem, out_dir / DATA, opts.seed, say)
    m = cfg.model
    say(f"model      {m.n_layer} layers x {m.n_embd} wide, {m.n_head} heads, block {m.block_size}, "
        f"{'full attention' if not m.is_causal else 'causal'}, "
        f"{'learned positions' if not m.use_rope else 'RoPE'}; batch {cfg.data.batch_size}, "
        f"up to {cfg.optim.max_iters:,} steps"
        + (f" or {duration(cfg.optim.time_budget)}" if cfg.optim.time_budget > 0 else ""))
    bar = TrainingBar(opts.progress)
    result = train(cfg, explicit, resumed, bar, run_lock_held=True)  # claim_out_dir holds it
    if result.interrupted:
        raise Interrupted(out_dir / LATEST, result.step)
    checkpoint = "best.pt" if (out_dir / "best.pt").is_file() else "latest.pt"
    rec = {"config": requested, "data": info, "checkpoint": checkpoint, "steps": result.step,
           "seconds": round(before + result.seconds, 1), "out_of_time": result.out_of_time,
           "best_val_loss": result.best_val_loss, "tokens_per_s": round(result.tokens_per_s),
           "threads": cfg.system.threads, "load_average": _loadavg(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if resumed is not None:
        rec["resumed_from"] = resumed["step"]
    write_json_atomic(out_dir / TRAIN_RECORD, rec)
    rec["reused"] = False
    return rec


def interrupted_hint(out_dir: Path) -> str | None:
    """What continues a run in out_dir that was stopped (Ctrl-C) before it finished: the
    same command again, from its latest.pt at step N; None when there is no such run."""
    from nano_train import checkpoint as ckpt_io
    from nano_train.checkpoint import CheckpointError
    from nano_train.train import LATEST

    latest = Path(out_dir) / LATEST
    try:
        rec = json.loads((Path(out_dir) / TRAIN_RECORD).read_text(encoding="utf-8"))
        if not isinstance(rec, dict) or "checkpoint" in rec or not latest.is_file():
            return None
        return continue_hint(latest, ckpt_io.load(latest)["step"])
    except (OSError, ValueError, CheckpointError):
        return None


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# ---------------------------------------------------------------------------
# Evaluation and export


def load_model(out_dir: Path, rec: dict):
    from nano_train.convert import load_checkpoint_model

    return load_checkpoint_model(Path(out_dir) / rec["checkpoint"])


def export_models(model, tok, out_dir: Path, name: str) -> dict:
    """NAME_f32.bin and NAME_q80.bin; {"f32": ExportInfo, "q8_0": ExportInfo}."""
    from nano_train.convert import export_bin

    out = {}
    for quant, suffix in (("f32", "f32"), ("q8_0", "q80")):
        out[quant] = export_bin(model, Path(out_dir) / f"{name}_{suffix}.bin", quant=quant, tokenizer=tok)
    return out


def q8_0_model(model, group_size: int):
    """A copy of the model computing what its Q8_0 file holds (nano_train.convert.emulate_q8_0)."""
    from nano_train.convert import emulate_q8_0

    return emulate_q8_0(copy.deepcopy(model), group_size)


# ---------------------------------------------------------------------------
# The whole run


def run(problem: Problem, opts: Options, say=print) -> dict:
    """Data, training, PyTorch and C evaluation, export; prints the report and
    writes result.json. Returns the result dict."""
    out_dir = Path(opts.out_dir)
    t_start = time.monotonic()
    n_cases = check_options(problem, opts)
    say(f"{problem.name}: {problem.title}")
    with claim_out_dir(problem, out_dir):
        return _run(problem, opts, n_cases, t_start, say)


def _run(problem: Problem, opts: Options, n_cases: int, t_start: float, say) -> dict:
    out_dir = Path(opts.out_dir)
    nano = None
    if opts.use_c:  # find (or build) the engine first: a missing toolchain should not cost a training run
        nano = find_nano(opts.nano, say=lambda m: say(f"engine     {m}"))
    cases = pick_test_cases(problem, n_cases, say)  # before training too: they depend on the settings only
    rec = train_model(problem, opts, say)
    if rec["reused"]:
        say(f"training   reused {out_dir / rec['checkpoint']} ({rec['steps']:,} steps, {duration(rec['seconds'])}; "
            "--fresh retrains)")
    else:
        say(f"training   {rec['steps']:,} steps in {duration(rec['seconds'])}"
            + (" (time budget reached)" if rec["out_of_time"] else "") + f", best val loss {rec['best_val_loss']:.4g}")
    model, tok = load_model(out_dir, rec)
    questions = [c.question for c in cases]
    result = {"problem": problem.name, "params": problem.params, "title": problem.title, "seed": opts.seed,
              "train": {k: v for k, v in rec.items() if k != "config"}, "config": rec["config"],
              "cases": len(cases), "files": {}}
    t0 = time.monotonic()
    answers = {"torch_f32": predict_torch(problem, model, tok, questions)}
    result["torch_f32"] = score(cases, answers["torch_f32"], problem)
    exports = export_models(model, tok, out_dir, problem.name)
    result["files"] = {q: str(e.path) for q, e in exports.items()}
    answers["torch_q8_0"] = predict_torch(problem, q8_0_model(model, exports["q8_0"].group_size), tok, questions)
    result["torch_q8_0"] = score(cases, answers["torch_q8_0"], problem)
    if nano is not None:
        for quant in ("f32", "q8_0"):
            got = predict_c(problem, nano, Path(exports[quant].path), questions, threads=opts.c_threads)
            answers[f"c_{quant}"] = got
            result[f"c_{quant}"] = score(cases, got, problem)
            diff = disagreements(answers[f"torch_{quant}"], got)
            result[f"c_{quant}"]["disagree"] = len(diff)
            result[f"c_{quant}"]["disagree_examples"] = [
                {"question": questions[i], "torch": answers[f"torch_{quant}"][i], "c": got[i]} for i in diff[:5]]
    result["eval_seconds"] = round(time.monotonic() - t0, 1)
    result["examples"] = examples(cases, answers)
    result["seconds"] = round(time.monotonic() - t_start, 1)
    write_json_atomic(out_dir / RESULT, result)
    for line in report_lines(problem, result, out_dir):
        say(line)
    return result


def examples(cases: list[Case], answers: dict, n: int = 5) -> list[dict]:
    """The first n held-out cases with every engine's answer."""
    return [{"question": c.question, "answer": c.answer, **{k: v[i] for k, v in answers.items()}}
            for i, c in enumerate(cases[:n])]


def _pct(s: dict) -> str:
    return f"{s['correct']:,} / {s['total']:,}  {100 * s['accuracy']:6.2f}%"


def report_lines(problem: Problem, result: dict, out_dir: Path) -> list[str]:
    t = result["train"]
    m = result["config"]["model"]
    lines = [
        "",
        f"== {problem.describe()}: held-out exact match ==",
        f"model      {m['n_layer']} layers x {m['n_embd']}, "
        f"{'full-attention seq2seq' if not m['is_causal'] else 'autoregressive (causal)'}; "
        f"trained {t['steps']:,} steps in {duration(t['seconds'])} on {t.get('threads') or 'default'} thread(s)"
        + (f", load average {t['load_average'][0]:.2f}" if t.get("load_average") else ""),
        f"cases      {quantity(result['cases'], 'held-out question')}, "
        f"{'not' if result['cases'] == 1 else 'none of them'} a training or validation question",
        "",
        f"  {'':<24} {'exact match':<28} agrees with PyTorch",
    ]
    rows = [("PyTorch F32", "torch_f32"), ("C engine F32", "c_f32"), ("PyTorch Q8_0 (emulated)", "torch_q8_0"),
            ("C engine Q8_0", "c_q8_0")]
    for label, key in rows:
        s = result.get(key)
        if s is None:
            continue
        agree = f"{s['total'] - s['disagree']:,} / {s['total']:,}" if "disagree" in s else ""
        lines.append(f"  {label:<24} {_pct(s):<28} {agree}".rstrip())
    by = result["torch_f32"]["by"]
    if by:
        lines.append("  PyTorch F32 by " + ", ".join(f"{k}: {v[0]}/{v[1]}" for k, v in by.items()))
    if "c_f32" not in result:
        lines.append("  (C engine not run: --no-c)")
    lines += ["", "examples (held-out)"]
    engine = "c_f32" if "c_f32" in result else "torch_f32"
    for ex in result["examples"]:
        ok = "ok" if ex[engine] == ex["answer"] else f"WRONG (expected {ex['answer']})"
        lines.append(f"  {ex['question']} -> {ex[engine]}   {ok}")
    lines += ["", "files"]
    lines.append(f"  {out_dir / t['checkpoint']}   the PyTorch checkpoint")
    for quant, path in result["files"].items():
        lines.append(f"  {path}   the model file, {quant.upper()}")
    lines.append(f"  {out_dir / RESULT}   these numbers")
    return lines
