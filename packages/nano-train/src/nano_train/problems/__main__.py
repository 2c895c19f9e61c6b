"""Train, export and evaluate one of the problems (Transformers beyond text).

usage: python -m nano_train.problems NAME [--out_dir DIR] [--time_budget SECONDS]
           [--max_iters N] [--seed S] [--eval_cases N] [--nano PATH] [--no-c]
           [--fresh] [--digits N | --depth N] [--key=value ...]
       python -m nano_train.problems --list
       (hatch run train:problem NAME ...)

NAME: sort, reverse, boolean or holes. The problem's data is generated (seeded;
held-out questions are chosen by a hash of the question and never trained on),
its model is trained by the training loop of nano_train.train with the
problem's config, then scored by exact match on held-out questions in PyTorch
(F32, and Q8_0 emulated), exported as NAME_f32.bin and NAME_q80.bin, and
scored again in the C engine through the `nano` program, which must agree
with PyTorch case by case. A second run with the same config and seed reuses
the trained checkpoint, or, when the first was interrupted (Ctrl-C), continues
its training from latest.pt, within what is left of the time budget (--fresh
retrains).

  --out_dir DIR          where everything goes (default runs/problems/NAME)
  --time_budget SECONDS  stop training after this long (default: the problem's; 0 = none)
  --max_iters N          at most N optimizer steps (default: the problem's)
  --seed S               data and initial weights (default 1337)
  --eval_cases N         held-out questions to score (default 2000, or all the test split
                         holds if fewer); more than the test split holds is refused
  --nano PATH            the nano program (default: engines/c-core/build/nano of this
                         checkout, built with make before training when needed)
  --no-c                 skip the C engine
  --fresh                retrain even if a matching checkpoint (or interrupted run) exists
  --digits N             sort, reverse, holes: digits per question (default 6; sort and
                         reverse 2 to 64, holes 3 to 40)
  --depth N              boolean: the deepest nesting (default 4; 2 to 6)
  --key=value            a training config key (e.g. --n_layer=3 --batch_size=128
                         --device=cuda --threads=2); see python -m nano_train.sft --help.
                         The keys the command sets itself are refused, in any spelling:
                         task, out_dir, dataset, init_from, overwrite, seed, max_iters,
                         time_budget (use the options above), block_size, vocab_size,
                         is_causal (the problem's)

"-" and "_" between the words of an option or a key are the same (--out-dir is
--out_dir, --no_c is --no-c, --n-layer=3 is --n_layer=3).

Everything that can be checked is checked before any data is generated: the
settings, the training config and that its device is there, --eval_cases
against the test split, --nano, and that --out_dir is a folder that exists or
can be made, can be written in, and holds no other run. A run replaces only
its own problem's earlier run in --out_dir (its train.json says whose) and
refuses a folder holding anything else a run writes (checkpoints, log.jsonl,
report.md, data/, ...); one run at a time writes a folder (a second one stops
at once, before it deletes anything).

Exit status: 0 done, 1 the C engine could not be built, failed or disagreed
with PyTorch on F32, or the training diverged or ran out of memory, 2 bad arguments, config or data, or a file or folder that
cannot be read or written (`error: PATH: reason`), 130 interrupted.

Examples:
  python -m nano_train.problems sort
  python -m nano_train.problems boolean --time_budget 600 --eval_cases 5000
  python -m nano_train.problems reverse --digits 8 --no-c
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from nano_train import DEFAULT_SEED, either_spelling, standard_streams, integer, number, print_output


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"error: {message}\n(python -m nano_train.problems --help for usage)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m nano_train.problems", add_help=False)
    p.add_argument("name", nargs="?")
    p.add_argument("-h", "--help", action="store_true")
    p.add_argument("--list", action="store_true")
    p.add_argument("--out_dir")
    p.add_argument("--time_budget", type=number)
    p.add_argument("--max_iters", type=integer)
    p.add_argument("--seed", type=integer, default=DEFAULT_SEED)
    p.add_argument("--eval_cases", type=integer)
    p.add_argument("--nano")
    p.add_argument("--no-c", dest="use_c", action="store_false")
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--digits", type=integer)
    p.add_argument("--depth", type=integer)
    return p


def main(argv: list[str] | None = None) -> int:
    from nano_train.problems import PROBLEMS, make

    standard_streams()
    parser = build_parser()
    argv = either_spelling(parser, argv)  # --out-dir is --out_dir, --no_c is --no-c
    # --key=value for a training config key (--n-layer=3 is --n_layer=3); the command's own
    # options take --key VALUE or --key=VALUE
    own = {o for a in parser._actions for o in a.option_strings}
    overrides = [a for a in argv if re.fullmatch(r"--[A-Za-z_][\w.-]*=.*", a, flags=re.S) and a.split("=", 1)[0] not in own]
    args = parser.parse_args([a for a in argv if a not in overrides])
    if args.help:
        return print_output(__doc__.strip())
    if args.list:
        return print_output("\n".join(f"{name:<8} {cls.title}" for name, cls in PROBLEMS.items()))
    if not args.name:
        print("error: which problem? one of " + ", ".join(PROBLEMS) + "\n(python -m nano_train.problems --help "
              "for usage)", file=sys.stderr)
        return 2
    if args.eval_cases is not None and args.eval_cases < 1:
        print("error: --eval_cases must be at least 1", file=sys.stderr)
        return 2
    if args.time_budget is not None and args.time_budget < 0:
        print("error: --time_budget must be >= 0 (0 = no limit)", file=sys.stderr)
        return 2
    params = {k: v for k, v in (("digits", args.digits), ("depth", args.depth)) if v is not None}
    try:
        problem = make(args.name, **params)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from nano_train.problems.runner import Interrupted, Options, command_status, interrupted_hint, print_line, run

    opts = Options(out_dir=Path(args.out_dir or f"runs/problems/{problem.name}"), seed=args.seed,
                   time_budget=args.time_budget, max_iters=args.max_iters, eval_cases=args.eval_cases,
                   nano=args.nano, use_c=args.use_c, fresh=args.fresh, overrides=overrides)

    def run_and_check() -> int:
        result = run(problem, opts, say=print_line)
        if "c_f32" in result and result["c_f32"]["disagree"]:
            print(f"error: the C engine disagrees with PyTorch on {result['c_f32']['disagree']} F32 cases",
                  file=sys.stderr)
            return 1
        return 0

    try:
        return command_status(run_and_check)
    except Interrupted as e:  # Ctrl-C in training: latest.pt saved
        print(e, file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # elsewhere, or a second one in training
        hint = interrupted_hint(opts.out_dir)
        print("interrupted" + (f": {hint}" if hint else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
