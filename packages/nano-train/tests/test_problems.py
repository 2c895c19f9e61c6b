"""nano_train.problems: the generators and their answers, held-out cases kept out
of training, vocabularies, the seq2seq rows the training loop reads, a short
real training of sort (seq2seq) and holes (autoregressive) scored in PyTorch
and in the C engine case by case, reuse of a finished run, and the command's
errors. The full targets (99% and more) are shown by running the command; see
the README's Problems section."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nano_tokenizer import DEFAULT_SPECIALS

from nano_train.data import Batcher, DataError, Dataset, write_rows
from nano_train.model import ModelConfig, Transformer
from nano_train.problems import PROBLEMS, make
from nano_train.problems.base import case_hash, encode_many
from nano_train.problems.boolean import depth_of, evaluate, random_expr
from nano_train.problems.evaluate import EngineError, find_nano, predict_c, predict_torch, repo_root, unescape_answer
from nano_train.problems.holes import count_holes
from nano_train.problems.runner import Options, claim_out_dir, prepare_data, run, train_model

REPO = Path(__file__).resolve().parents[3]


# ---------------------------------------------------------------------------
# Generators and answers


def test_holes_counts_loops():
    assert count_holes("2024") == 1 and count_holes("888") == 6
    assert [count_holes(d) for d in "0123456789"] == [1, 0, 0, 0, 0, 0, 1, 0, 2, 1]
    assert count_holes("1234567890") == 5 and count_holes("8080") == 6
    p = make("holes")
    assert p.solve("202400") == "3" and p.solve("888888") == "12" and p.solve("111111") == "0"
    rng = random.Random(0)
    for _ in range(200):
        q = p.draw(rng)
        assert len(q) == 6 and q[0] != "0" and q.isdigit()
    with pytest.raises(ValueError):
        count_holes("12a")


def _python_value(expr: str) -> int:
    """The same expression evaluated by Python itself: prefix -> infix `and`/`or`."""
    tokens = expr.replace("(", " ( ").replace(")", " ) ").split()

    def walk(i):
        if tokens[i] in ("0", "1"):
            return tokens[i], i + 1
        assert tokens[i] == "("
        op = {"*": "and", "+": "or"}[tokens[i + 1]]
        a, i = walk(i + 2)
        b, i = walk(i)
        assert tokens[i] == ")"
        return f"({a} {op} {b})", i + 1

    infix, end = walk(0)
    assert end == len(tokens)
    return int(bool(eval(infix)))


def test_boolean_evaluator_against_python():
    assert evaluate("(+ (* 0 1) (* 1 1))") == 1
    assert make("boolean").solve("(+ (* 0 1) (* 1 1)) =") == "1"
    assert evaluate("(* (+ 0 0) 1)") == 0 and evaluate("1") == 1
    rng = random.Random(1)
    depths = set()
    for _ in range(2000):
        depth = rng.randint(1, 4)
        expr = random_expr(rng, depth, exact=True)
        assert depth_of(expr) == depth
        assert evaluate(expr) == _python_value(expr), expr
        depths.add(depth)
    assert depths == {1, 2, 3, 4}
    for bad in ("(+ 0 1", "(- 0 1)", "(+ 0 1))", "(+0 1)", "", "2"):
        with pytest.raises(ValueError):
            evaluate(bad)
    p = make("boolean")
    values = [p.solve(p.draw(rng)) for _ in range(2000)]
    assert 0.35 < values.count("1") / len(values) < 0.65  # both answers are common
    with pytest.raises(ValueError):
        make("boolean", depth=9)


def test_sort_and_reverse():
    assert make("sort").solve("114515") == "111455" and make("sort").solve("251212") == "112225"
    assert make("reverse").solve("123456") == "654321"
    assert len(make("sort", digits=9).draw(random.Random(0))) == 9
    with pytest.raises(ValueError, match="unknown setting"):
        make("sort", depth=3)
    with pytest.raises(ValueError, match="unknown problem"):
        make("sorting")


# the settings each problem takes: (smallest, largest)
BOUNDS = {"sort": ("digits", 2, 64), "reverse": ("digits", 2, 64), "holes": ("digits", 3, 40),
          "boolean": ("depth", 2, 6)}


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_settings_are_bounded(name, monkeypatch):
    """Every problem refuses settings outside its bounds. Below the smallest, no question
    is held out for the test or for validation (sort --digits 1 scored 0 of 0 and passed);
    above the largest, sort and reverse generated rows of any length (--digits 100000
    ground for minutes, then ran out of memory). At the smallest, both held-out splits
    hold questions, and the listed questions are every question `draw` gives."""
    key, low, high = BOUNDS[name]
    for bad, words in ((low - 1, f"at least {low}"), (high + 1, f"at most {high}")):
        with pytest.raises(ValueError, match=f"--{key} must be {words}"):
            make(name, **{key: bad})
    make(name, **{key: high})
    p = make(name, **{key: low})
    listed = list(p.all_questions())
    assert len(listed) == len(set(listed)) == p.question_count()
    rng = random.Random(0)
    assert {p.draw(rng) for _ in range(3000)} <= set(listed)
    assert p.split_questions("test") and p.split_questions("val")
    # the bound is where a split first holds questions: one below it, one of them is empty
    monkeypatch.setattr(PROBLEMS[name], "check", lambda self: None)
    below = make(name, **{key: low - 1})
    assert not below.split_questions("test") or not below.split_questions("val")


def test_question_counts():
    assert make("sort").question_count() == 10**6 and make("holes", digits=7).question_count() == 9 * 10**6
    # expressions of depth <= d: 2 + 2 * (those of depth < d)^2, less the two digits
    assert [make("boolean", depth=d).question_count() for d in (2, 3, 4)] == [200, 81_608, 13_320_384_200]


def test_eval_cases_cannot_exceed_the_test_split():
    """The test split is listed (exactly) for up to ENUMERATE_MAX questions, else estimated;
    more cases than it holds are refused, naming the most (before: drawing went on for
    up to 200 x n questions, hours for a large --eval_cases, and scored fewer silently).
    All the split can be taken, and the cases are distinct test questions."""
    p = make("sort", digits=4)
    split = p.split_questions("test")
    assert p.most_test_cases() == (len(split), True) and 200 < len(split) < 260
    p.check_eval_cases(len(split))
    with pytest.raises(ValueError, match=f"has {len(split)} held-out test questions; at most {len(split)}"):
        p.check_eval_cases(len(split) + 1)
    whole = [c.question for c in p.test_cases(len(split))]
    assert sorted(whole) == sorted(split)
    most = [c.question for c in p.test_cases(len(split) * 3 // 4)]  # more than half: the rest from the list
    assert len(set(most)) == len(most) == len(split) * 3 // 4 and set(most) <= set(split)
    few = [c.question for c in p.test_cases(20)]  # drawn; the first of a larger draw
    assert few == [c.question for c in p.test_cases(40)][:20] and set(few) <= set(split)
    assert make("sort").most_test_cases() == (25_214, True)
    with pytest.raises(ValueError, match="at most 25,214"):
        make("sort").check_eval_cases(10**9)
    # too many to list: half the expected size, which random draws still find quickly
    assert make("sort", digits=7).most_test_cases() == (125_000, False)
    with pytest.raises(ValueError, match="about 250,000 held-out test questions.*at most half, 125,000"):
        make("sort", digits=7).check_eval_cases(125_001)


def test_eval_count_and_too_few_cases():
    """runner.eval_count: the default is 2000, or the whole test split when it holds fewer;
    an asked number beyond the split is a ConfigError. runner.pick_test_cases: none is an error
    (before: 0 / 0 reported as a success), fewer than asked is said."""
    from nano_train.config import ConfigError
    from nano_train.problems.runner import eval_count, pick_test_cases

    assert eval_count(make("sort"), None) == 2000 and eval_count(make("sort"), 7) == 7
    small = make("sort", digits=3)
    assert eval_count(small, None) == len(small.split_questions("test")) == 23
    for bad, words in ((24, "at most 23"), (0, "at least 1")):
        with pytest.raises(ConfigError, match=words):
            eval_count(small, bad)
    lines = []
    small.test_cases = lambda n: []
    with pytest.raises(ConfigError, match="no held-out test question"):
        pick_test_cases(small, 5, say=lines.append)
    small.test_cases = lambda n: [small.case("123")]
    assert len(pick_test_cases(small, 5, say=lines.append)) == 1
    assert lines == ["note       only 1 distinct held-out test question found of the 5 asked; scoring those"]


def test_run_checks_before_training(tmp_path, monkeypatch):
    """run() refuses --eval_cases beyond the test split and an empty evaluation before
    anything is trained (before: sort --eval_cases 10^9 drew test questions for hours
    after training)."""
    from nano_train.config import ConfigError
    from nano_train.problems import runner

    def no_training(*a, **k):
        raise AssertionError("trained before the options were checked")

    monkeypatch.setattr(runner, "train_model", no_training)
    opts = Options(out_dir=tmp_path / "out", eval_cases=10**9, use_c=False, progress=False)
    with pytest.raises(ConfigError, match="at most 25,214"):
        run(make("sort"), opts, say=lambda m: None)
    p = make("sort", digits=3)
    p.test_cases = lambda n: []
    with pytest.raises(ConfigError, match="no held-out test question"):
        run(p, Options(out_dir=tmp_path / "out", eval_cases=5, use_c=False, progress=False), say=lambda m: None)


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_vocabulary_covers_every_character_and_rows_fit(name):
    p = make(name)
    tok = p.tokenizer()
    assert tok.itos[:7] == DEFAULT_SPECIALS  # the reference's special tokens, in its order
    rng = random.Random(2)
    cases = [p.case(p.draw(rng)) for _ in range(500)]
    for c in cases:
        for text in (c.question, c.answer):
            ids = tok.encode(text)
            assert tok.unk_id not in ids and tok.decode(ids) == text
    # the longest question possible fits the block size
    if name == "boolean":
        full = "(+ (* (+ (* 1 1) (* 1 1)) (+ (* 1 1) (* 1 1))) (+ (* (* 1 1) (* 1 1)) (+ (* 1 1) (* 1 1)))) ="
        cases.append(p.case(full))
    rows = p.encode_rows(tok, cases)  # raises if a row does not fit
    assert rows[0].shape[1] == p.block_size() + (p.kind == "instruct")
    assert encode_many(tok, [c.question for c in cases]) == [tok.encode(c.question) for c in cases]


def test_held_out_questions_are_never_trained_on(tmp_path):
    p = make("sort")
    p.train_rows, p.val_rows = 20_000, 500
    tok = prepare_data(p, tmp_path / "data", seed=3, say=lambda m: None)
    ds = Dataset(tmp_path / "data")
    assert ds.kind == "seq2seq" and ds.tokenizer == tok
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert meta["info"]["seed"] == 3 and meta["counts"]["rows"] == {"train": 20_000, "val": 500}
    train_x = {tok.decode(r) for r in np.asarray(ds.splits["train"][0][0])}
    val_x = {tok.decode(r) for r in np.asarray(ds.splits["val"][0][0])}
    test = {c.question for c in p.test_cases(2000)}
    assert len(test) == 2000 and len(val_x) == 500 and len(train_x) > 10_000
    assert not train_x & test and not train_x & val_x and not val_x & test
    assert all(p.split_of(q) == "test" for q in test) and all(p.split_of(q) == "train" for q in train_x)
    # the split is a property of the question: fixed, and about held_out of all questions
    assert case_hash("sort", "123456") == case_hash("sort", "123456") != case_hash("reverse", "123456")
    share = np.mean([p.split_of(f"{i:06d}") != "train" for i in range(20_000)])
    assert abs(share - p.held_out) < 0.01
    # targets are the answers, aligned with the inputs
    x, y, m = (np.asarray(a) for a in ds.splits["train"][0])
    for i in range(0, 20_000, 1999):
        assert tok.decode(y[i]) == "".join(sorted(tok.decode(x[i]))) and m[i].all()
    # generated again with the same settings: reused, not rewritten
    stamp = (tmp_path / "data" / "meta.json").stat().st_mtime_ns
    prepare_data(p, tmp_path / "data", seed=3, say=lambda m: None)
    assert (tmp_path / "data" / "meta.json").stat().st_mtime_ns == stamp


def test_seq2seq_rows_reach_the_loss_aligned(tmp_path):
    p = make("reverse", digits=4)
    tok = p.tokenizer()
    cases = [p.case(q) for q in ("1234", "9870", "5555")]
    x, y, m = p.encode_rows(tok, cases)
    m[2, 2:] = 0
    write_rows(tmp_path / "d", tok, "seq2seq", {"train": (x, y, m)})
    src = Dataset(tmp_path / "d").source("train", 4)
    bx, by, bm = Batcher(src, 3, seed=0).next()
    order = np.argsort([tok.decode(r) for r in bx])
    assert [tok.decode(r) for r in by[order]] == ["4321", "5555", "0789"]
    model = Transformer(ModelConfig(block_size=4, vocab_size=tok.vocab_size, n_layer=1, n_embd=16, n_head=2,
                                    n_kv_head=2, is_causal=False))
    logits, loss = model(torch.from_numpy(bx), torch.from_numpy(by), torch.from_numpy(bm))
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.from_numpy(by).flatten(), reduction="none")
    w = torch.from_numpy(bm).flatten()
    assert torch.allclose(loss, (ce * w).sum() / w.sum()) and w.sum() == 10
    with pytest.raises(DataError, match="block_size is 3"):
        Dataset(tmp_path / "d").source("train", 3)
    with pytest.raises(DataError, match="already holds a prepared dataset"):
        write_rows(tmp_path / "d", tok, "seq2seq", {"train": (x, y, m)})
    with pytest.raises(DataError, match="outside the vocabulary"):
        write_rows(tmp_path / "e", tok, "seq2seq", {"train": (x + 100, y, m)})
    with pytest.raises(DataError, match="one shape"):
        write_rows(tmp_path / "e", tok, "seq2seq", {"train": (x, y[:, :2], m)})


# ---------------------------------------------------------------------------
# Training, PyTorch and the C engine


@pytest.fixture(scope="module")
def nano_bin():
    """engines/c-core/build/nano, brought up to date with make (a missing toolchain fails)."""
    return find_nano(say=lambda m: None)


def _short(problem, out_dir, steps, nano=None, **kw):
    """A short run bounded by steps, not by the clock: a slow or busy machine takes longer but
    trains the same model (a time budget gave 59% on holes where an idle machine gets 99%)."""
    p = make(problem)
    p.train_rows, p.val_rows = 40_000, 500
    opts = Options(out_dir=out_dir, time_budget=0, max_iters=steps, eval_cases=1000, nano=nano, progress=False,
                   use_c=nano is not None, **kw)
    return p, opts


@pytest.mark.slow
@pytest.mark.parametrize("name,steps,threshold", [("sort", 250, 0.9), ("holes", 250, 0.8)])
def test_short_training_scores_alike_in_pytorch_and_c(tmp_path, nano_bin, name, steps, threshold):
    p, opts = _short(name, tmp_path / name, steps, nano=str(nano_bin))
    lines = []
    result = run(p, opts, say=lines.append)
    text = "\n".join(lines)
    print(text)
    assert result["cases"] == 1000 and result["train"]["steps"] == steps and not result["train"]["out_of_time"]
    for key in ("torch_f32", "c_f32", "torch_q8_0", "c_q8_0"):
        assert result[key]["accuracy"] >= threshold, (key, result[key])
    # F32: the C engine gives PyTorch's answer on every case; Q8_0: the emulated PyTorch model's
    assert result["c_f32"]["disagree"] == 0 and result["c_f32"]["correct"] == result["torch_f32"]["correct"]
    assert result["c_q8_0"]["disagree"] == 0
    for quant, path in result["files"].items():
        assert Path(path).is_file()
    assert "C engine F32" in text and "agrees with PyTorch" in text
    assert json.loads((tmp_path / name / "result.json").read_text())["c_f32"]["disagree"] == 0
    # the C engine answers what PyTorch answers, question by question, on the showcase questions too
    from nano_train.convert import load_checkpoint_model

    model, tok = load_checkpoint_model(tmp_path / name / result["train"]["checkpoint"])
    shown = list(p.examples)
    assert predict_c(p, nano_bin, Path(result["files"]["f32"]), shown) == predict_torch(p, model, tok, shown)
    if name == "sort":
        # a second run with the same config and seed reuses the checkpoint; another seed retrains
        with claim_out_dir(p, opts.out_dir):
            again = train_model(p, opts, say=lambda m: None)
        assert again["reused"] and again["steps"] == result["train"]["steps"]
        other = Options(**{**opts.__dict__, "seed": 7, "time_budget": 1.0})
        with claim_out_dir(p, other.out_dir):
            assert not train_model(p, other, say=lambda m: None)["reused"]


def test_unescape_answer():
    """nano's one-answer-per-line escapes (engines/c-core/README.md): \\n, \\r, \\\\; nothing else."""
    assert unescape_answer("112225") == "112225"
    assert unescape_answer("a\\nb\\rc\\\\d\\\\n") == "a\nb\rc\\d\\n"
    for bad in ("a\\", "\\t", "x\\0"):
        with pytest.raises(EngineError, match="bad escape"):
            unescape_answer(bad)


def _mapping_model(path: Path, follow: dict, extra: str, **config) -> Path:
    """A model whose output at each position (seq2seq) or next token (causal) is follow[its
    token]: one-hot embeddings, attention and FFN outputs zero (wo, w2), the classifier a
    mapping. Tokens without an entry give id 0, "\\n"."""
    import nano_format as nf
    from nano_format.plan import model_params

    texts = ["\n", "<|unknown|>", "<|eos|>", "<|instruct_mark|>", "<|response_mark|>", "\\", "\r", *extra]
    vocab = [nf.TokenEntry(id=i, text=t, is_special=t.startswith("<|")) for i, t in enumerate(texts)]
    ids = {t: i for i, t in enumerate(texts)}
    cfg = nf.Config(vocab_size=len(texts), block_size=32, n_layer=1, n_embd=20, n_head=2, n_kv_head=2,
                    n_hidden=8, tie_embeddings=False, **config)
    w = {p.name: np.zeros(p.shape, np.float32) for p in model_params(cfg) if p.name not in ("rope_cos", "rope_sin")}
    for name in ("norm_attn", "norm_ffn", "norm_final"):
        w[name][:] = 1
    w["tok_embd"][:, :len(texts)] = np.eye(len(texts), dtype=np.float32)
    for a, b in follow.items():
        w["lm_head"][ids[b], ids[a]] = 1
    nf.write(path, cfg, w, vocab, layout="2026.101")
    return path


def test_predict_c_reads_answers_holding_line_breaks(tmp_path, nano_bin):
    """An answer holding a line break, a carriage return or a backslash is still one answer:
    nano escapes it on its output line and predict_c gives the text back exactly. (Before,
    such an answer took several lines and predict_c failed on the count.)"""
    sort = _mapping_model(tmp_path / "sort.bin", {"1": "\n", "2": "\\", "5": "\r", "9": "9", "0": "0"},
                          "0125 9", attention=1)
    questions = ["251212", "990", "5", "0\\9"]
    assert predict_c(make("sort"), nano_bin, sort, questions) == ["\\\r\n\\\n\\", "990", "\r", "0\n9"]
    # instruct: <|response_mark|> -> \n -> \\ -> \r -> <|eos|>; at most max_answer_tokens + 1 = 3 tokens
    holes = _mapping_model(tmp_path / "holes.bin", {"<|response_mark|>": "\n", "\n": "\\", "\\": "\r",
                                                    "\r": "<|eos|>"}, "0123456789")
    assert predict_c(make("holes"), nano_bin, holes, ["202400", "888888"]) == ["\n\\\r"] * 2


# ---------------------------------------------------------------------------
# The command


def problems_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nano_train.problems", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_command_help_and_list():
    r = problems_cli("--help")
    assert r.returncode == 0 and "--time_budget" in r.stdout and "--no-c" in r.stdout
    from nano_train import DEFAULT_SEED
    from nano_train.problems.runner import Options

    # the usage text states the seed the command and the library default to
    assert f"--seed S data and initial weights (default {DEFAULT_SEED})" in " ".join(r.stdout.split())
    assert Options(out_dir=Path("x")).seed == DEFAULT_SEED
    r = problems_cli("--list")
    assert r.returncode == 0 and all(name in r.stdout for name in PROBLEMS)


@pytest.mark.parametrize("args,status,message", [
    ([], 2, "which problem?"),
    (["sorting"], 2, "unknown problem 'sorting'"),
    (["boolean", "--digits", "5"], 2, "unknown setting(s) digits"),
    (["sort", "--digits", "0"], 2, "--digits must be a positive integer"),
    (["sort", "--eval_cases", "0"], 2, "--eval_cases must be at least 1"),
    (["sort", "--time_budget", "-1"], 2, "--time_budget must be >= 0"),
    (["sort", "--seed", "x"], 2, "argument --seed: expected an integer, got 'x'"),
    (["sort", "--bogus"], 2, "unrecognized arguments: --bogus"),
    (["sort", "--n_layers=3", "--no-c"], 2, "unknown key 'n_layers'"),
    (["sort", "--nano", "{tmp}/no-such-nano"], 2, "--nano {tmp}/no-such-nano: not an executable file"),
    (["sort", "--init_from=resume"], 2, "error: --init_from is set by the problems command"),
    (["sort", "--data.dataset=elsewhere"], 2, "error: --data.dataset is set by the problems command"),
    pytest.param(["sort", "--device=cuda", "--no-c"], 2, "CUDA is not available here",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")),
    (["sort", "--digits", "1", "--no-c", "--max_iters", "3", "--eval_cases", "5"], 2, "--digits must be at least 2"),
    (["sort", "--digits", "100000", "--no-c", "--max_iters", "1"], 2, "--digits must be at most 64"),
    (["reverse", "--digits", "65", "--no-c", "--max_iters", "1"], 2, "--digits must be at most 64"),
    (["holes", "--digits", "2", "--no-c", "--max_iters", "1"], 2, "--digits must be at least 3"),
    (["boolean", "--depth", "1", "--no-c", "--max_iters", "1"], 2, "--depth must be at least 2"),
    (["sort", "--no-c", "--max_iters", "1", "--eval_cases", "1000000000"], 2,
     "--eval_cases 1,000,000,000: sort (digits 6) has 25,214 held-out test questions; at most 25,214"),
])
def test_command_errors(tmp_path, args, status, message):
    """Bad arguments: an `error: ...` line and exit status 2, before anything is made,
    built or generated (before: a bad --nano exited 1; --device=cuda without CUDA was
    refused after 200,000 rows were generated; --init_from=resume deleted the checkpoint
    it was to resume from)."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = problems_cli(*args, "--out_dir", str(tmp_path / "out"))
    assert r.returncode == status, r
    assert message.replace("{tmp}", str(tmp_path)) in r.stderr and r.stderr.startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


_LIMITED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
from nano_train.problems.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS limits every allocation on Linux only")
def test_command_a_model_too_large_for_memory_is_one_error_line(tmp_path):
    """As the pretrain command says it (was: a traceback ending in OutOfMemory), exit status 1."""
    r = subprocess.run([sys.executable, "-c", _LIMITED, "reverse", "--out_dir", str(tmp_path / "out"), "--no-c",
                        "--max_iters=2", "--threads=1", "--n_embd=65536", "--n_head=2", "--n_kv_head=2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("error: out of memory while building the model on cpu (n_layer 2, n_embd 65536"), r.stderr


@pytest.mark.parametrize("raised,message", [
    ("OutOfMemory", "out of memory while building"),
    ("LostContact", "process 1 of the run ended"),
    ("allocator", "out of memory: could not allocate 0.4 GiB; lower data.batch_size"),
])
def test_command_status_of_training_errors(raised, message, capsys, error_line):
    """What the training raises past the problems command and the demo: one line, exit status 1."""
    from nano_train import train
    from nano_train.problems.runner import command_status

    errors = {"OutOfMemory": train.OutOfMemory("out of memory while building the model"),
              "LostContact": train.LostContact("process 1 of the run ended"),
              "allocator": RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                                        "allocate memory: you tried to allocate 429496729 bytes. Error code 12")}

    def call():
        raise errors[raised]

    assert command_status(call) == 1
    assert message in error_line(capsys)


def test_command_status_leaves_other_runtime_errors_alone():
    from nano_train.problems.runner import command_status

    def call():
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        command_status(call)


@pytest.mark.parametrize("where", ["file", "under_file", "proc", "result_is_folder"])
def test_command_refuses_an_out_dir_it_cannot_write(tmp_path, where):
    """--out_dir a file, under a file, where no folder can be made, or holding a folder where
    a result file goes: one `error: PATH: reason` line, exit status 2, before any data is
    generated (before: a NotADirectoryError or FileNotFoundError traceback, or an
    IsADirectoryError after the whole training)."""
    (tmp_path / "afile").write_text("x")
    out, named, reason = {
        "file": (tmp_path / "afile", tmp_path / "afile", "exists and is not a folder"),
        "under_file": (tmp_path / "afile" / "out", tmp_path / "afile" / "out", "cannot make the folder"),
        "proc": (Path("/proc/no-such-nano-dir/out"), Path("/proc/no-such-nano-dir/out"), "cannot make the folder"),
        "result_is_folder": (tmp_path / "out", tmp_path / "out" / "result.json", "exists and is not a regular file"),
    }[where]
    if where == "proc" and not Path("/proc").is_dir():
        pytest.skip("no /proc")
    if where == "result_is_folder":
        (out / "result.json").mkdir(parents=True)
    r = problems_cli("sort", "--no-c", "--max_iters", "1", "--eval_cases", "5", "--out_dir", str(out))
    assert r.returncode == 2, r
    assert r.stderr.startswith(f"error: {named}: {reason}") and r.stderr.count("\n") == 1, r.stderr  # no traceback
    assert "data" not in r.stdout, r
    if where == "result_is_folder":
        assert not (out / "data").exists()


def test_check_out_dir(tmp_path, monkeypatch):
    """runner.check_out_dir: makes the folder, refuses what cannot be written with an
    OSError naming the path (the permission case, as root, only through a mock)."""
    import nano_format

    from nano_train.problems.runner import check_out_dir, os_error_text

    check_out_dir(tmp_path / "a" / "b", ["result.json"])
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(nano_format, "check_writable", denied)
    with pytest.raises(PermissionError) as e:
        check_out_dir(tmp_path / "a", ["result.json"])
    assert os_error_text(e.value) == f"{tmp_path / 'a'}: cannot write in this folder: Permission denied"
    assert os_error_text(OSError("run.out_dir x is not a writable directory")) == \
        "run.out_dir x is not a writable directory"


def test_nano_is_found_in_the_checkout():
    from nano_train.config import ConfigError

    assert repo_root() == REPO
    with pytest.raises(ConfigError, match="not an executable file"):  # a bad argument: exit status 2
        find_nano(REPO / "README.md")


def test_nano_given_as_a_relative_path(tmp_path, monkeypatch):
    """--nano ./prog runs ./prog (before: Path("./prog") became "prog", which the
    subprocess looked up on PATH: "No such file or directory")."""
    fake = tmp_path / "fake-nano"
    fake.write_text("#!/bin/sh\ncat\n")  # echoes each question as its answer
    fake.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    nano = find_nano("./fake-nano")
    assert nano == tmp_path / "fake-nano"
    assert predict_c(make("sort"), nano, tmp_path / "model.bin", ["251212", "114515"]) == ["251212", "114515"]


# ---------------------------------------------------------------------------
# The out_dir: whose run it holds, one writer at a time, no writing through links


def _tiny(out_dir, seed=1337, **kw):
    """A sort run of one step on 2,000 rows, scored on 5 questions in PyTorch only (seconds)."""
    p = make("sort")
    p.train_rows, p.val_rows = 2_000, 100
    opts = Options(out_dir=out_dir, seed=seed, time_budget=0, max_iters=1, eval_cases=5, use_c=False,
                   progress=False, **kw)
    return p, opts


def _files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_out_dir_holding_another_run_is_refused(tmp_path):
    """A folder holding a run that is not this problem's own is refused before anything
    in it is touched (before: its best.pt was deleted and the rest replaced, with no
    --overwrite asked for; `holes --out_dir runs/problems/sort` wiped the sort run).
    The problem's own earlier run is replaced as before."""
    from nano_train.config import ConfigError

    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("best.pt", "latest.pt", "log.jsonl", "report.md"):
        (mine / name).write_text(f"the user's {name}")
    before = _files(mine)
    with pytest.raises(ConfigError, match=r"mine holds a run that is not a problems run \(latest.pt, best.pt, "
                                          r".*choose another --out_dir"):
        run(*_tiny(mine), say=lambda m: None)
    assert _files(mine) == before and sorted(p.name for p in mine.iterdir()) == sorted(before)

    data_only = tmp_path / "with_data"  # a prepared dataset where the problem would generate its own
    (data_only / "data").mkdir(parents=True)
    (data_only / "data" / "meta.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a problems run \\(data\\)"):
        run(*_tiny(data_only), say=lambda m: None)
    assert (data_only / "data" / "meta.json").read_text() == "{}"

    sort_run = tmp_path / "sort"
    run(*_tiny(sort_run), say=lambda m: None)
    before = _files(sort_run)
    holes = make("holes")
    holes.train_rows, holes.val_rows = 2_000, 100
    with pytest.raises(ConfigError, match="holds a run of the problem sort"):
        run(holes, _tiny(sort_run)[1], say=lambda m: None)
    assert _files(sort_run) == before
    again = run(*_tiny(sort_run, seed=7), say=lambda m: None)  # its own earlier run: replaced
    assert not again["train"]["reused"] and again["seed"] == 7


def test_an_interrupted_run_is_still_its_problems_own(tmp_path, monkeypatch):
    """train.json is written as training starts: a run interrupted before it finished
    (here while its data is generated) leaves a folder that the same problem takes
    again, and that another problem refuses."""
    from nano_train.config import ConfigError
    from nano_train.problems import runner

    out = tmp_path / "out"
    real = runner.prepare_data

    def interrupted(problem, data_dir, seed, say=print):
        data_dir.mkdir(parents=True)
        (data_dir / "train_000.bin").write_bytes(b"half written")
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "prepare_data", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(*_tiny(out), say=lambda m: None)
    monkeypatch.setattr(runner, "prepare_data", real)
    holes = make("holes")
    with pytest.raises(ConfigError, match="holds a run of the problem sort"):
        run(holes, _tiny(out)[1], say=lambda m: None)
    assert not run(*_tiny(out), say=lambda m: None)["train"]["reused"]


def test_out_dir_links_are_not_written_through(tmp_path):
    """log.jsonl (or another run file) or data/ as a symbolic link is refused, and what it
    points to is untouched (before: the training log was written through the link)."""
    from nano_train.config import ConfigError

    out = tmp_path / "out"
    run(*_tiny(out), say=lambda m: None)
    outside = tmp_path / "outside.txt"
    outside.write_text("not a log")
    (out / "log.jsonl").unlink()
    (out / "log.jsonl").symlink_to(outside)
    with pytest.raises(OSError, match="exists and is not a regular file") as e:
        run(*_tiny(out, seed=7), say=lambda m: None)
    assert e.value.filename == str(out / "log.jsonl") and outside.read_text() == "not a log"
    (out / "log.jsonl").unlink()
    shutil.move(out / "data", tmp_path / "elsewhere")
    (out / "data").symlink_to(tmp_path / "elsewhere")
    stamp = (tmp_path / "elsewhere" / "meta.json").read_bytes()
    with pytest.raises(ConfigError, match="data is a symbolic link"):
        run(*_tiny(out, seed=7), say=lambda m: None)
    assert (tmp_path / "elsewhere" / "meta.json").read_bytes() == stamp


def test_second_run_stops_at_the_lock_before_deleting_anything(tmp_path):
    """While a run holds out_dir (the training loop's run lock), a second run into it stops
    at once: the first run's checkpoints and data stay (before: the second deleted
    best.pt and latest.pt and regenerated data/ with its own seed, then failed on the
    lock)."""
    from nano_train import dirlock
    from nano_train.config import ConfigError
    from nano_train.train import RUN_LOCK

    out = tmp_path / "out"
    run(*_tiny(out), say=lambda m: None)
    before = {**_files(out), **{f"data/{k}": v for k, v in _files(out / "data").items()}}
    with dirlock.exclusive(out, RUN_LOCK, "run", ConfigError):  # the first run, still training
        with pytest.raises(ConfigError, match=f"another run is writing {out} \\(pid {os.getpid()}\\)"):
            run(*_tiny(out, seed=7), say=lambda m: None)
    after = {**_files(out), **{f"data/{k}": v for k, v in _files(out / "data").items()}}
    assert after == before


def test_the_same_out_dir_spelled_differently_is_the_same_run(tmp_path, monkeypatch):
    """od, $PWD/od and . (from inside it) are one folder: the run is reused (before: the
    config's path strings differed, so it retrained and deleted the earlier model)."""
    monkeypatch.chdir(tmp_path)
    first = run(*_tiny(Path("od")), say=lambda m: None)
    assert not first["train"]["reused"]
    assert run(*_tiny(tmp_path / "od"), say=lambda m: None)["train"]["reused"]
    monkeypatch.chdir(tmp_path / "od")
    assert run(*_tiny(Path(".")), say=lambda m: None)["train"]["reused"]
    assert run(*_tiny(Path("../od/")), say=lambda m: None)["train"]["reused"]


def test_records_are_written_atomically(tmp_path, monkeypatch):
    """train.json and result.json are replaced whole (nano_format.write_atomically), never
    rewritten in place: a file hard-linked to the old one keeps the old text."""
    import nano_train.data as data

    written = []
    real = data.write_atomically  # what data.write_json_atomic writes with

    def spy(path, chunks):
        written.append(Path(path).name)
        return real(path, chunks)

    monkeypatch.setattr(data, "write_atomically", spy)
    out = tmp_path / "out"
    run(*_tiny(out), say=lambda m: None)
    assert {"train.json", "result.json"} <= set(written)
    os.link(out / "result.json", tmp_path / "old_result.json")
    old = (out / "result.json").read_text()
    assert run(*_tiny(out), say=lambda m: None)["train"]["reused"]
    assert (tmp_path / "old_result.json").read_text() == old != (out / "result.json").read_text()


@pytest.mark.parametrize("override,shown", [
    ("--init_from=resume", "--init_from"), ("--run.init_from=x.pt", "--run.init_from"),
    ("--out_dir=x", "--out_dir"), ("--run.out_dir=x", "--run.out_dir"), ("--dataset=x", "--dataset"),
    ("--task=pretrain", "--task"), ("--overwrite=true", "--overwrite"), ("--system.seed=3", "--system.seed"),
    ("--optim.max_iters=3", "--optim.max_iters"), ("--time_budget=3", "--time_budget"),
    ("--block_size=3", "--block_size"), ("--model.vocab_size=99", "--model.vocab_size"),
    ("--is_causal=true", "--is_causal"),
])
def test_keys_the_command_sets_are_refused(tmp_path, override, shown):
    """An override of a key the command sets itself is refused in any spelling, before
    anything is made (before: only the exact spellings of the command's options were
    kept out, so --dataset trained another problem's data and reported it as sort)."""
    from nano_train.config import ConfigError
    from nano_train.problems.runner import check_options

    p, opts = _tiny(tmp_path / "out", overrides=[override])
    with pytest.raises(ConfigError, match=f"^{shown} is set by the problems command: "):
        check_options(p, opts)
    assert not (tmp_path / "out").exists()
    check_options(p, Options(out_dir=tmp_path / "out", use_c=False, overrides=["--n_layer=3", "--batch_size=8"]))


# ---------------------------------------------------------------------------
# No C compiler


def test_missing_compiler_is_one_line_before_training(tmp_path, monkeypatch, checkout_without_a_compiler):
    """Without a C compiler the run stops before training with one line naming the cause
    and what installs a toolchain (before: the last 15 lines of make's output, stdout and
    stderr together), and the --out_dir it made is gone again."""
    from nano_train.problems import evaluate, runner

    def no_training(*a, **k):
        raise AssertionError("trained before the engine was built")

    monkeypatch.setattr(runner, "train_model", no_training)
    monkeypatch.setattr(evaluate, "repo_root", lambda: checkout_without_a_compiler)
    with pytest.raises(EngineError) as e:
        run(make("sort"), Options(out_dir=tmp_path / "new" / "out", eval_cases=5, progress=False),
            say=lambda m: None)
    message = str(e.value)
    assert "\n" not in message, message
    assert message.startswith(f"cannot build the C engine (make -C {checkout_without_a_compiler / 'engines' / 'c-core'} build/nano): "
                              "make: cc: No such file or directory; `python tools/setup/system_deps.py build` "
                              "installs a C toolchain, or --no-c skips the C engine"), message
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------------------
# What the audit found: recorded config, the order of test cases, counts, option spellings


def test_train_json_and_result_json_record_the_trained_vocabulary(tmp_path):
    """train.json and result.json record the config that was trained: the problem's
    vocabulary size (before: the config default 8192, where the model had 17 tokens)."""
    from nano_train.checkpoint import load
    from nano_train.problems.runner import resolve_config

    out = tmp_path / "out"
    result = run(*_tiny(out), say=lambda m: None)
    recorded = json.loads((out / "train.json").read_text())["config"]
    trained = load(out / result["train"]["checkpoint"])["config"]["model"]
    assert trained["vocab_size"] == 17
    assert recorded["model"] == trained and result["config"]["model"] == trained
    assert run(*_tiny(out), say=lambda m: None)["train"]["reused"]  # the recorded config is the one asked for
    cfg, _ = resolve_config(make("boolean"), Options(out_dir=tmp_path / "b", use_c=False))
    assert cfg.model.vocab_size == 22 == make("boolean").vocab_size()


@pytest.mark.parametrize("name,params,sizes", [
    ("sort", {"digits": 4}, [1, 50, 100, 125, 126, 200, 228]),  # past half of the 228 listed ones too
    ("sort", {"digits": 2}, [1]),
    ("holes", {"digits": 3}, [5, 10, 11, 20]),
    ("sort", {}, [10, 500, 2000]),
])
def test_the_cases_for_fewer_are_the_first_of_those_for_more(name, params, sizes):
    """test_cases(n) is test_cases(m)[:n] for n < m, as its docstring says (before: not
    past half of a listed split: sort --digits 4 gave other cases for 100 than the first
    100 of 200); every case is a distinct test question, and asking for more than the
    split holds gives all of it."""
    p = make(name, **params)
    cases = {n: p.test_cases(n) for n in [*sizes, 10**6 if p.question_count() <= 10**4 else sizes[-1]]}
    largest = cases[max(cases)]
    questions = [c.question for c in largest]
    assert len(set(questions)) == len(questions) and all(p.split_of(q) == "test" for q in questions)
    for n, got in cases.items():
        assert got == largest[:n], n
    if p.question_count() <= 10**4:
        assert sorted(questions) == sorted(p.split_questions("test"))


def test_one_held_out_question_is_singular(tmp_path):
    """sort --digits 2 holds one test question: "1 held-out test question", "1 held-out
    question" (before: "questions")."""
    from nano_train.problems.runner import report_lines

    p = make("sort", digits=2)
    with pytest.raises(ValueError, match=r"has 1 held-out test question; at most 1$"):
        p.check_eval_cases(5)
    p.train_rows, p.val_rows = 2_000, 100
    lines = []
    opts = Options(out_dir=tmp_path / "out", time_budget=0, max_iters=1, eval_cases=1, use_c=False, progress=False)
    result = run(p, opts, say=lines.append)
    assert result["cases"] == 1
    assert "cases      1 held-out question, not a training or validation question" in lines, lines
    result["cases"] = 2
    assert "cases      2 held-out questions, none of them a training or validation question" in \
        report_lines(p, result, tmp_path / "out")


def test_options_and_keys_in_either_spelling(tmp_path, monkeypatch):
    """- and _ between words are the same for the command's own options and for --key=value
    overrides (before: --out-dir, --eval-cases, --time-budget, --no_c and --n-layer=3 were
    "unrecognized arguments"); a managed key stays refused in either spelling."""
    from nano_train.problems import __main__ as command
    from nano_train.problems import runner

    seen = []
    monkeypatch.setattr(runner, "run", lambda problem, opts, say=print: seen.append((problem, opts)) or {})
    argv = ["sort", "--out-dir", str(tmp_path / "o"), "--eval-cases", "7", "--time-budget", "30", "--max-iters=9",
            "--no_c", "--n-layer=3", "--batch-size=64", "--digits", "5"]
    assert command.main(argv) == 0
    (problem, opts), = seen
    assert problem.digits == 5 and opts.out_dir == tmp_path / "o" and opts.eval_cases == 7
    assert opts.time_budget == 30 and opts.max_iters == 9 and opts.use_c is False
    assert opts.overrides == ["--n-layer=3", "--batch-size=64"]
    cfg, _ = runner.resolve_config(problem, opts)
    assert cfg.model.n_layer == 3 and cfg.data.batch_size == 64
    monkeypatch.undo()
    for key in ("--init-from=resume", "--run.out-dir=x", "--vocab-size=99"):
        r = problems_cli("sort", key, "--no-c", "--out-dir", str(tmp_path / "refused"))
        assert r.returncode == 2 and r.stderr.startswith(f"error: {key.split('=')[0]} is set by the problems "
                                                         "command: "), r.stderr
    assert not (tmp_path / "refused").exists()


def test_a_checkpoint_another_command_put_in_the_folder_is_not_reused(tmp_path, small_pretrain):
    """train.json still says "sort", but best.pt is now another run's (`pretrain
    --overwrite=true` into the folder deletes checkpoints, not train.json): train again
    (was: "reused", and the text model was scored and exported as sort_f32.bin)."""
    from nano_train.train import main as train_main

    out = tmp_path / "out"
    assert not run(*_tiny(out), say=lambda m: None)["train"]["reused"]
    assert train_main("pretrain", [f"--dataset={small_pretrain}", f"--out_dir={out}", "--overwrite=true",
                                   "--n_layer=1", "--n_embd=32", "--n_head=2", "--n_kv_head=2", "--block_size=16",
                                   "--batch_size=2", "--max_iters=1", "--eval_iters=1", "--sample_tokens=0"]) == 0
    again = run(*_tiny(out), say=lambda m: None)
    assert not again["train"]["reused"]
    assert torch.load(out / "best.pt", weights_only=True)["config"]["model"]["is_causal"] is False


@pytest.mark.skipif(sys.platform != "linux", reason="/dev/full is Linux's")
@pytest.mark.parametrize("args", [["--list"], ["--help"], ["sort", "--no-c", "--max_iters", "1", "--eval_cases", "5"]])
def test_command_output_that_cannot_be_written_is_one_line(tmp_path, args):
    """`> /dev/full`, as a full disk under `> file` (was: a traceback for --list and --help,
    and `error: No space left on device`, exit 2, as if the out_dir's disk were full)."""
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "nano_train.problems", *args, "--out_dir", str(tmp_path / "out")],
                           stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr == "error: writing standard output: No space left on device\n", r.stderr


def test_the_training_bar_draws_a_step_without_a_loss():
    """A train record whose loss is null (a step without a token to learn from) is drawn as
    n/a (was: a TypeError formatting None)."""
    import io

    from nano_train.problems.runner import TrainingBar

    stream = io.StringIO()
    bar = TrainingBar(stream=stream)
    bar({"kind": "start", "config": {"optim": {"max_iters": 2, "time_budget": 0}}})
    bar({"kind": "train", "step": 1, "loss": None, "elapsed_s": 0.5})
    bar({"kind": "train", "step": 2, "loss": 1.25, "elapsed_s": 1.0})
    lines = stream.getvalue().splitlines()
    assert "step 1  loss n/a " in lines[0] and "step 2  loss 1.2500 " in lines[1], lines
