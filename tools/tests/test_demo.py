"""tools/demo.py end to end in its --quick mode: it builds the C engine, trains,
scores, exports, runs the files through `nano` with the same answers as
PyTorch, and a second run reuses the trained model; without a C compiler it
stops before training with one line."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def demo(*args):
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "tools/demo.py", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    return r, time.monotonic() - t0


@pytest.mark.slow
def test_demo_quick_end_to_end_then_reuse(tmp_path):
    out = tmp_path / "demo"
    first, t_first = demo("--quick", "--out_dir", str(out))
    print(first.stdout)
    assert first.returncode == 0, first.stdout + first.stderr
    text = first.stdout
    for n in range(1, 6):
        assert f"[{n}/5]" in text
    assert text.index("[1/5] Build the C engine") < text.index("[2/5] Train the model")
    assert "training [" in first.stderr  # the progress bar
    m = re.search(r"PyTorch: (\d+) of (\d+) sorted exactly right", text)
    assert m and int(m.group(2)) == 500 and int(m.group(1)) >= 400, text
    for label in ("F32 ", "Q8_0"):
        line = next(l for l in text.splitlines() if f"C engine {label}:" in l)
        assert "the same answer as PyTorch on every question" in line, line
    assert "112225        (correct, same as PyTorch)" in text  # nano seq2seq on 251212
    for name in ("sort_f32.bin", "sort_q80.bin", "best.pt", "log.jsonl", "report.md"):
        assert (out / "sort" / name).is_file(), name
    assert "Try next:" in text and "not built yet" in text

    second, t_second = demo("--quick", "--out_dir", str(out))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "reused the model trained earlier" in second.stdout and "training [" not in second.stderr
    assert t_second < t_first
    # the same model, so the same held-out score
    assert re.search(r"PyTorch: (\d+) of (\d+) sorted", second.stdout).groups() == m.groups()


def test_demo_help():
    """Every option says what it does and its default (four of them once said nothing)."""
    r, _ = demo("--help")
    text = " ".join(r.stdout.split())  # argparse wraps to the terminal's width
    assert r.returncode == 0
    for needle in ("--out_dir DIR where the files go (default runs/demo)",
                   "--time_budget SECONDS training time (default: the sort problem's, 120",
                   "--seed S data and initial weights (default 1337)",
                   "--eval_cases N held-out questions to score (default 2000",
                   "--quick a short run (20 s of training, 500 questions)", "--fresh train again"):
        assert needle in text, (needle, r.stdout)


@pytest.fixture
def no_training(monkeypatch):
    """train_model replaced: a test of argument handling must not train."""
    from nano_train.problems import runner

    def refuse(*a, **k):
        raise AssertionError("trained before the options were checked")

    monkeypatch.setattr(runner, "train_model", refuse)


@pytest.mark.parametrize("args,message", [
    (["--out_dir", "{tmp}/afile"], "error: {tmp}/afile/sort: cannot make the folder: Not a directory"),
    (["--out_dir", "/proc/no-such-nano-dir"], "error: /proc/no-such-nano-dir/sort: cannot make the folder"),
    (["--time_budget", "-5"], "error: --time_budget must be a number >= 0"),
    (["--time_budget", "-0.5"], "error: --time_budget must be a number >= 0"),
    (["--seed", "-1"], "error: system.seed must be in [0, 2^63), got -1"),
    (["--eval_cases", "-3"], "error: --eval_cases must be at least 1"),
    (["--eval_cases", "0"], "error: --eval_cases must be at least 1"),
    (["--eval_cases", "30000"], "error: --eval_cases 30,000: sort (digits 6) has 25,214 held-out test questions; "
                                "at most 25,214"),
])
def test_demo_refuses_bad_options_in_one_line(load_tool, tmp_path, capsys, no_training, args, message):
    """Bad options and an out_dir that cannot be made are one `error: ...` line and exit
    status 2, before any training (before: tracebacks from the config or mkdir; --eval_cases
    -3 scored 0 of 0 and exited 0; 0 silently became 2000)."""
    (tmp_path / "afile").write_text("x")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out_dir" not in args:
        args += ["--out_dir", str(tmp_path / "demo")]
    assert load_tool("demo.py").main(["--quick", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message.replace("{tmp}", str(tmp_path))) and err.count("\n") == 1, err


def stub_steps(monkeypatch, tmp_path, c_answers=lambda qs: list(qs), c_status=0):
    """The demo's steps without training, PyTorch or C: PyTorch answers each question
    with the question itself, the C engine with c_answers(questions) (the one-question
    command exiting with c_status)."""
    from nano_train.problems import evaluate, runner

    monkeypatch.setattr(runner, "train_model", lambda *a, **k: {"reused": True, "checkpoint": "best.pt",
                                                                "steps": 1, "seconds": 1.0})
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: (None, None))
    monkeypatch.setattr(evaluate, "build_nano", lambda root, say: Path(sys.executable))
    monkeypatch.setattr(evaluate, "predict_torch", lambda problem, model, tok, qs: list(qs))
    monkeypatch.setattr(runner, "export_models", lambda model, tok, out_dir, name: {
        q: type("E", (), {"path": tmp_path / f"{q}.bin", "group_size": 32})() for q in ("f32", "q8_0")})
    for q in ("f32", "q8_0"):
        (tmp_path / f"{q}.bin").write_bytes(b"x")
    monkeypatch.setattr(runner, "q8_0_model", lambda model, group_size: None)
    monkeypatch.setattr(evaluate, "predict_c", lambda problem, nano, path, qs, **k: c_answers(qs))
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: subprocess.CompletedProcess(
        cmd, c_status, c_answers(cmd[-1:])[0] + "\n", "nano: error: it broke\n" if c_status else ""))


@pytest.mark.parametrize("where", ["score", "build", "engine"])
def test_demo_ctrl_c_after_training_says_interrupted(load_tool, tmp_path, capsys, monkeypatch, where):
    """Ctrl-C at any step is "interrupted" and exit status 130 (before: only step 1 was
    guarded; later a KeyboardInterrupt traceback)."""
    from nano_train.problems import evaluate

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    stub_steps(monkeypatch, tmp_path)
    monkeypatch.setattr(*{"score": (evaluate, "predict_torch"), "build": (evaluate, "build_nano"),
                          "engine": (evaluate, "predict_c")}[where], ctrl_c)
    try:
        status = load_tool("demo.py").main(["--quick", "--out_dir", str(tmp_path / "demo"), "--eval_cases", "20"])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C after step 1 escaped as a KeyboardInterrupt traceback")
    assert status == 130 and capsys.readouterr().err.strip().endswith("interrupted")


def test_demo_ctrl_c_in_training_says_how_to_continue(load_tool, tmp_path, capsys, monkeypatch):
    """Ctrl-C in training saves latest.pt, and the same command continues from it
    (runner.train_model): the demo says so, as `python -m nano_train.problems` does
    (was a bare "interrupted")."""
    from nano_train.problems import runner

    stub_steps(monkeypatch, tmp_path)
    latest = tmp_path / "demo" / "sort" / "latest.pt"

    def ctrl_c(*a, **k):
        raise runner.Interrupted(latest, 42)

    monkeypatch.setattr(runner, "train_model", ctrl_c)
    status = load_tool("demo.py").main(["--quick", "--out_dir", str(tmp_path / "demo"), "--eval_cases", "20"])
    assert status == 130
    assert capsys.readouterr().err.strip().endswith(
        f"interrupted: run the same command again to continue from {latest} (step 42); --fresh starts over")


@pytest.mark.parametrize("where,status,error", [
    ("shown", 1, "error: the C engine disagrees with PyTorch on the F32 file: 1 question(s), the first 251212"),
    ("held_out", 1, "error: the C engine disagrees with PyTorch on the F32 file: 20 question(s), the first "),
    ("fails", 1, "error: "),
    ("q8_0", 0, ""),
    ("nowhere", 0, ""),
])
def test_demo_exit_status_says_whether_c_gave_pytorchs_answers(load_tool, tmp_path, capsys, monkeypatch, where, status, error):
    """The C engine giving another answer than PyTorch on the F32 file, in the commands shown
    (nano seq2seq -m FILE 251212) or on the held-out questions, or failing, is exit status 1
    and one `error:` line (before: a different answer to a shown command was exit status 0, a
    failing one printed an empty answer and went on, and a held-out disagreement was exit
    status 1 with no error line). Q8_0 is reported, not an error (as the problems command)."""
    def c_answers(qs):
        if where == "shown" and qs == ["251212"] or where == "held_out" and len(qs) > 1:
            return [q[::-1] for q in qs]
        return list(qs)

    stub_steps(monkeypatch, tmp_path, c_answers, c_status=int(where == "fails"))
    if where == "q8_0":
        from nano_train.problems import evaluate

        monkeypatch.setattr(evaluate, "predict_c", lambda problem, nano, path, qs, **k: [
            q[::-1] if str(path).endswith("q8_0.bin") else q for q in qs])
    assert load_tool("demo.py").main(["--quick", "--out_dir", str(tmp_path / "demo"), "--eval_cases", "20"]) == status
    out, err = capsys.readouterr()
    assert err.startswith(error) and err.count("\n") == bool(error), err
    if where == "fails":
        assert "failed (exit 1): nano: error: it broke" in err and "Try next" not in out
    if where == "q8_0":
        assert "DIFFERENT from PyTorch on 20 questions" in next(l for l in out.splitlines() if "C engine Q8_0" in l)


def test_demo_without_a_compiler_stops_before_training(load_tool, tmp_path, capsys, monkeypatch, no_training,
                                                       checkout_without_a_compiler):
    """No C compiler: one `error:` line naming the cause and what installs a toolchain, exit
    status 1, before any training, and no out_dir left behind (before: two minutes of
    training, then five lines of make's output with the cause last)."""
    checkout = checkout_without_a_compiler
    module = load_tool("demo.py")
    monkeypatch.setattr(module, "ROOT", checkout)
    assert module.main(["--quick", "--out_dir", str(tmp_path / "demo")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"error: cannot build the C engine (make -C {checkout / 'engines' / 'c-core'} build/nano): "
                          "make: cc: No such file or directory; `python tools/setup/system_deps.py build` installs "
                          "a C toolchain\n"), err
    assert not (tmp_path / "demo").exists()


def test_demo_options_in_either_spelling(load_tool, tmp_path, capsys, monkeypatch):
    """--out-dir, --eval-cases and --time-budget are --out_dir, --eval_cases and --time_budget
    (before: "unrecognized arguments"), as in the nano_train commands."""
    from nano_train.problems import runner

    stub_steps(monkeypatch, tmp_path)
    seen = []
    real = runner.check_options
    monkeypatch.setattr(runner, "check_options", lambda problem, opts: seen.append(opts) or real(problem, opts))
    out = tmp_path / "demo"
    assert load_tool("demo.py").main(["--quick", "--out-dir", str(out), "--eval-cases", "20", "--time-budget", "7"]) == 0
    assert re.search(r"PyTorch: \d+ of 20 sorted exactly right", capsys.readouterr().out)
    assert seen[0].out_dir == out / "sort" and seen[0].time_budget == 7 and seen[0].eval_cases == 20
