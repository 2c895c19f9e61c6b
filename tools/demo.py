"""The Nano demo: train a small Transformer, export it, run the same file in C.

usage: python tools/demo.py [--fresh] [--quick] [--out_dir runs/demo] [--time_budget SECONDS]
                            [--seed S] [--eval_cases N]
       (hatch run demo [...], which first installs the C toolchain)

It builds the C engine (make; first, so that a missing C compiler costs no
training run), trains the `sort` problem of nano_train.problems (a
full-attention Transformer that sorts six digits: 251212 -> 112225) for about
two minutes on the CPU, scores it on held-out questions in PyTorch, exports it
as F32 and Q8_0 `.bin` files, runs the files through the `nano` command and
shows that the C engine gives the same answers, then says where everything is
and what to try next. Nothing is downloaded; no data is needed. A second run
reuses the trained model (same config and seed) and the build, and takes
seconds; --fresh trains again.

The options (python tools/demo.py --help says what each does; "-" and "_" in
their names are the same: --out-dir is --out_dir) and --out_dir are
checked before anything else is done; a bad one is one `error: ...` line and
exit status 2. --out_dir/sort is refused if it holds a run other than the
demo's own (or `hatch run train:problem sort`'s). Exit status: 0 done, 1 the C
engine could not be built, failed or disagreed with PyTorch on F32 (one
`error: ...` line naming the cause), 2 bad options, config or data, or a file
or folder that cannot be read or written, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rel(path) -> str:
    """A path as the user would type it here: relative when it is near (../shared/...), else absolute."""
    p = Path(path).resolve()
    r = os.path.relpath(p)
    return str(p) if r.startswith(os.path.join("..", "..")) else r


def size(path) -> str:
    n = Path(path).stat().st_size
    return f"{n / 1024:.0f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    from nano_train import either_spelling, integer, number  # (no torch: the options are checked before the heavy imports)

    parser = argparse.ArgumentParser(prog="python tools/demo.py", description=__doc__.split("\n\n")[0],
                                     epilog="Run from the repository root: hatch run demo")
    parser.add_argument("--out_dir", default="runs/demo", metavar="DIR", help="where the files go (default runs/demo)")
    parser.add_argument("--time_budget", type=number, metavar="SECONDS",
                        help="training time (default: the sort problem's, 120; 0 = no limit)")
    parser.add_argument("--seed", type=integer, default=1337, metavar="S",
                        help="data and initial weights (default 1337)")
    parser.add_argument("--eval_cases", type=integer, metavar="N",
                        help="held-out questions to score (default 2000; at most the 25,214 the test split holds)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run (20 s of training, 500 questions) that shows every step; what the tests run")
    parser.add_argument("--fresh", action="store_true", help="train again even if a matching model exists")
    args = parser.parse_args(either_spelling(parser, argv))  # --out-dir is --out_dir
    if args.time_budget is not None and args.time_budget < 0:  # (inf and nan: argparse's error, number)
        print("error: --time_budget must be a number >= 0 (0 = no limit)", file=sys.stderr)
        return 2
    if args.eval_cases is not None and args.eval_cases < 1:
        print("error: --eval_cases must be at least 1", file=sys.stderr)
        return 2

    try:  # Ctrl-C anywhere, the imports included
        return checked(args)
    except KeyboardInterrupt as e:
        # in training (runner.Interrupted, latest.pt saved) its message says how to continue:
        # the same command again continues the training
        said = str(e) if str(e).startswith("interrupted: ") else "interrupted"
        print("\n" + said, file=sys.stderr)
        return 130


def checked(args) -> int:
    """demo(args), its errors as one `error: ...` line and an exit status."""
    from nano_train.problems.runner import command_status

    return command_status(lambda: demo(args))


def demo(args) -> int:
    """Check the options, then the five steps holding the out_dir (runner.claim_out_dir:
    made if needed, locked, refused if it holds another run); errors are checked()'s to
    print, Ctrl-C main's."""
    from nano_train.problems import make
    from nano_train.problems.runner import Options, check_options, claim_out_dir

    t_start = time.monotonic()
    out_dir = Path(args.out_dir) / "sort"
    problem = make("sort")
    budget = args.time_budget
    eval_cases = 2000 if args.eval_cases is None else args.eval_cases
    if args.quick:
        problem.train_rows = 40_000
        budget = 20.0 if budget is None else budget
        eval_cases = 500 if args.eval_cases is None else args.eval_cases
    opts = Options(out_dir=out_dir, seed=args.seed, time_budget=budget, eval_cases=eval_cases, fresh=args.fresh)
    eval_cases = check_options(problem, opts)  # the config, the device, --eval_cases and --out_dir, before any work
    with claim_out_dir(problem, out_dir):
        return five_steps(problem, opts, eval_cases, t_start)


def five_steps(problem, opts, eval_cases: int, t_start: float) -> int:
    """Build, train, score, export, run in C; the exit status."""
    from nano_train.metrics import duration
    from nano_train.problems.evaluate import EngineError, build_nano, disagreements, predict_c, predict_torch, score
    from nano_train.problems.runner import export_models, load_model, pick_test_cases, q8_0_model, train_model

    out_dir = Path(opts.out_dir)

    def step(n: int, title: str) -> None:
        print(f"\n[{n}/5] {title}", flush=True)

    print("Nano demo: a Transformer learns to sort digits (251212 -> 112225); the same model file then")
    print("runs in PyTorch and in the C engine, and both give the same answers.")

    # 1 -------------------------------------------------------------------------------
    step(1, "Build the C engine (make -C engines/c-core build/nano)")
    t0 = time.monotonic()
    nano = build_nano(ROOT, say=lambda msg: None)  # first: a missing C compiler should not cost a training run
    print(f"      {rel(nano)} ready ({time.monotonic() - t0:.1f} s; make only rebuilds what changed)")

    # 2 -------------------------------------------------------------------------------
    step(2, "Train the model (PyTorch, the training loop of nano_train.train)")
    m = problem.model_config()["model"]
    print(f"      {problem.title}")
    print(f"      {m['n_layer']} layers x {m['n_embd']} wide, full attention; data generated here, "
          f"{int(100 * problem.held_out)}% of all questions held out")
    rec = train_model(problem, opts, say=lambda msg: print("      " + msg, flush=True))
    if rec["reused"]:
        print(f"      reused the model trained earlier with the same settings: {rel(out_dir / rec['checkpoint'])}")
        print(f"      ({rec['steps']:,} steps in {duration(rec['seconds'])}; --fresh trains again)")
    else:
        print(f"      {rec['steps']:,} steps in {duration(rec['seconds'])}, validation loss {rec['best_val_loss']:.2g}")
    model, tok = load_model(out_dir, rec)

    # 3 -------------------------------------------------------------------------------
    step(3, "Score it on held-out questions (never seen in training)")
    cases = pick_test_cases(problem, eval_cases, say=lambda msg: print("      " + msg, flush=True))
    questions = [c.question for c in cases]
    torch_f32 = predict_torch(problem, model, tok, questions)
    s = score(cases, torch_f32)
    print(f"      PyTorch: {s['correct']:,} of {s['total']:,} sorted exactly right ({100 * s['accuracy']:.2f}%)")

    # 4 -------------------------------------------------------------------------------
    step(4, "Export the model as .bin files (nano_train.convert.export_bin)")
    exports = export_models(model, tok, out_dir, problem.name)
    f32, q80 = Path(exports["f32"].path), Path(exports["q8_0"].path)
    print(f"      {rel(f32):<40} F32, {size(f32)}")
    print(f"      {rel(q80):<40} Q8_0 (8-bit weights), {size(q80)}")

    # 5 -------------------------------------------------------------------------------
    step(5, "Run the model file in the C engine")
    differ = []  # the questions on which the C engine's F32 answer is not PyTorch's
    shown = list(problem.examples[:4])
    want = predict_torch(problem, model, tok, shown)
    for q, torch_answer in zip(shown, want):
        cmd = [str(nano), "seq2seq", "-m", str(f32), q]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise EngineError(f"{' '.join(cmd)} failed (exit {res.returncode}): {res.stderr.strip()}")
        answer = res.stdout.strip()
        if answer != torch_answer:
            differ.append(q)
        same = "same as PyTorch" if answer == torch_answer else f"PyTorch says {torch_answer}!"
        right = "correct" if answer == problem.solve(q) else "wrong"
        print(f"      $ {rel(nano)} seq2seq -m {rel(f32)} {q}")
        print(f"      {answer}        ({right}, {same})")
    torch_q80 = predict_torch(problem, q8_0_model(model, exports["q8_0"].group_size), tok, questions)
    print(f"      all {len(cases):,} held-out questions through `nano seq2seq -m FILE -` (one per line):")
    for label, path, reference in (("F32 ", f32, torch_f32), ("Q8_0", q80, torch_q80)):
        got = predict_c(problem, nano, path, questions)
        sc = score(cases, got)
        diff = disagreements(reference, got)
        agree = "the same answer as PyTorch on every question" if not diff else \
            f"DIFFERENT from PyTorch on {len(diff)} questions"
        print(f"      C engine {label}: {sc['correct']:,} of {sc['total']:,} right ({100 * sc['accuracy']:.2f}%), {agree}")
        if label.strip() == "F32":
            differ += [questions[i] for i in diff]

    # what next -----------------------------------------------------------------------------
    nano_rel, f32_rel = rel(nano), rel(f32)
    print(f"\nDone in {duration(time.monotonic() - t_start)}. The files are in {rel(out_dir)}/:")
    for name, what in ((rec["checkpoint"], "the trained PyTorch checkpoint"), (f32.name, "the model file, F32"),
                       (q80.name, "the model file, Q8_0"), ("log.jsonl", "the training log (plot it with "
                       f"`hatch run train:plot {rel(out_dir)}`)"), ("report.md", "the training report")):
        print(f"      {name:<14} {what}")
    print("\nTry next:")
    print("  your own digits, in C:")
    print(f"      {nano_rel} seq2seq -m {f32_rel} 314159")
    print("  the other problems (reverse, holes, boolean), trained and checked the same way:")
    print("      hatch run train:problem reverse")
    psycho = ROOT.parent / "shared" / "fixtures" / "psycho_230k_1214_q80.bin"
    if psycho.is_file():
        print("  chat with a text model (the reference's psycho model, from ../shared):")
        print(f"      {nano_rel} run -m {rel(psycho)} -p 人的心理 -t 0.8 -n 64")
    print("  train a text model on your own corpus, then run it in C:")
    print("      hatch run nano-tokenizer build corpus.txt --size 4096 -o runs/vocab.json")
    print("      hatch run train:prepare pretrain --tokenizer runs/vocab.json --out_dir runs/data/mine corpus.txt")
    print("      hatch run train:pretrain packages/nano-train/configs/psycho_small.json "
          "--dataset=runs/data/mine --out_dir=runs/mine")
    print("      hatch run train:export --ckpt runs/mine/best.pt --out runs/mine/model.bin")
    print(f"      {nano_rel} run -m runs/mine/model.bin -p 'Once upon a time' -n 64")
    print("  the browser, the ESP32-P4 and the Pod (engines/wasm, engines/esp32p4, engines/pod):")
    print("      not built yet; their READMEs say what is planned.")
    if differ:
        print(f"error: the C engine disagrees with PyTorch on the F32 file: {len(differ)} question(s), "
              f"the first {differ[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
