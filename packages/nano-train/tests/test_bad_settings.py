"""Bad hyper-parameters and settings (numerical-robustness and command-line audits): a
run whose activations overflow stops with the reason, never writes such a model as its
best, and every mistyped or out-of-range setting is one error line."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nano_train.config import ConfigError
from nano_train.model import ModelConfig, Transformer
from nano_train.train import activations_overflow, init_distributed, main, total_norm

pytestmark = pytest.mark.usefixtures("one_thread")


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------
# Activations past float32: finite weights, a model that no longer reads its input


def test_overflowing_activations_stop_the_run_before_a_best_checkpoint(tmp_path, small_pretrain, tiny_args,
                                                                          capsys):
    # (was: "done: step 12, best val loss 8.3178", exit 0, and a best.pt that prints <|padding|>
    # whatever its prompt: RMSNorm's mean square was inf, every logit 0, every gradient 0)
    out = tmp_path / "run"
    code = main("pretrain", tiny_args(small_pretrain, out, learning_rate=100, min_lr=0, max_iters=12,
                                      warmup_iters=2, eval_interval=4, log_interval=4))
    out_err = capsys.readouterr()
    err = out_err.err
    assert code == 1, err
    assert "note: optim.learning_rate * optim.weight_decay is 10" in out_err.out + err
    line = [x for x in err.splitlines() if x.startswith("error: ")][0]
    assert "training diverged: the activations overflow float32" in line
    assert "optim.weight_decay (now 0.1" in line and "clip gradients" not in line  # clipping is on
    assert not (out / "best.pt").exists()


def test_a_step_whose_gradients_are_all_zero_stops_the_run(tmp_path, small_pretrain, tiny_args, capsys, error_line):
    # no evaluation or checkpoint before the log line that sees the dead step
    out = tmp_path / "run"
    code = main("pretrain", tiny_args(small_pretrain, out, learning_rate=100, min_lr=0, max_iters=30,
                                      warmup_iters=2, eval_interval=1000, checkpoint_interval=1000, log_interval=1))
    assert code == 1
    line = error_line(capsys)
    assert "training diverged: every gradient is zero, as the activations overflow float32" in line, line


def test_float16_gradients_that_underflow_to_zero_are_no_overflow(tmp_path, shared_file, tiny_args, capsys):
    # (review: a float16 run fitting one repeated character stopped as "diverged" at step 20:
    # its gradients were exactly 0, the activations fine)
    from nano_train.data import prepare_pretrain

    text = tmp_path / "one.txt"
    text.write_text("的" * 20000, encoding="utf-8")
    prepare_pretrain([text], shared_file("data/tokenizer_4096.json"), tmp_path / "data", chunk_tokens=256,
                     progress=False)
    out = tmp_path / "run"
    code = main("pretrain", tiny_args(tmp_path / "data", out, dtype="float16", loss="plain", block_size=16,
                                      learning_rate=3e-2, min_lr=3e-2, warmup_iters=0, weight_decay=0, max_iters=40,
                                      log_interval=20, eval_interval=40, eval_iters=1, sample_tokens=0))
    out_err = capsys.readouterr()
    assert code == 0, out_err.err
    assert "grad norm 0.000" in out_err.out  # the case: a zero norm at a log record
    assert (out / "best.pt").exists()


@pytest.mark.parametrize("lr, wd, what", [("1", "1", "by 1 - 1 = 0 at each step, which sets them to 0"),
                                          ("1.5", "1", "by 1 - 1.5 = -0.5 at each step, which flips their sign "
                                                       "whatever"),
                                          ("10", "0.5", "by 1 - 5 = -4 at each step, which flips their sign and "
                                                        "grows them")])
def test_the_weight_decay_note_says_what_the_factor_does(tmp_path, small_pretrain, tiny_args, capsys, lr, wd, what):
    assert main("pretrain", tiny_args(small_pretrain, tmp_path / "r", learning_rate=lr, min_lr=0, weight_decay=wd,
                                      max_iters=0, sample_tokens=0)) == 0
    assert f"AdamW multiplies every decayed weight {what}" in "".join(capsys.readouterr())


def test_the_overflow_probe_sees_it_and_draws_no_random_numbers():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.5))
    x = torch.randint(0, 16, (1, 8))
    state = torch.get_rng_state()
    assert not activations_overflow(model, x, torch.no_grad)
    with torch.no_grad():
        model.tok_embd.weight.mul_(4e20)
    assert activations_overflow(model, x, torch.no_grad)
    assert torch.equal(torch.get_rng_state(), state) and model.training  # dropout's stream untouched


def test_without_clipping_an_infinite_norm_leaves_the_gradients_alone():
    # (was: clip_grad_norm_(max_norm=inf) multiplied them by inf / inf = nan)
    p, q = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(3))
    p.grad, q.grad = torch.full((4,), 1e20), torch.full((3,), 2.0)
    assert total_norm([p, q]).item() == math.inf
    assert torch.equal(p.grad, torch.full((4,), 1e20)) and torch.equal(q.grad, torch.full((3,), 2.0))
    p.grad = torch.full((4,), 3.0)
    assert total_norm([p, q]).item() == pytest.approx(math.sqrt(4 * 9 + 3 * 4))


def test_resuming_from_non_finite_weights_is_refused(tmp_path, small_pretrain, tiny_args, capsys, error_line):
    # (was: a step of training, then "the last good checkpoint is .../latest.pt")
    out = tmp_path / "run"
    assert main("pretrain", tiny_args(small_pretrain, out, max_iters=2, sample_tokens=0)) == 0
    ck = load(out / "latest.pt")
    ck["model"]["layers.0.wq.weight"].view(-1)[0] = float("nan")
    torch.save(ck, out / "latest.pt")
    capsys.readouterr()
    assert main("pretrain", ["--init_from=resume", f"--out_dir={out}", "--max_iters=4"]) == 2
    line = error_line(capsys)
    assert str(out / "latest.pt") in line and "layers.0.wq.weight holds non-finite values" in line, line


def test_a_vocabulary_without_eos_gets_its_report(tmp_path, tiny_args, capsys):
    # (was: a traceback at the end of training, TokenizerError "the vocabulary has no <|eos|> token")
    from nano_train.data import prepare_pretrain

    itos = ["<|unknown|>", "a", "b"]
    vocab = tmp_path / "v.json"
    vocab.write_text(json.dumps({"vocab_size": 3, "stoi": {t: i for i, t in enumerate(itos)}, "itos": itos,
                                 "special_tokens": {"<|unknown|>": 0}}), encoding="utf-8")
    text = tmp_path / "ab.txt"
    text.write_text("ab" * 3000 + "ba" * 3000, encoding="utf-8")
    prepare_pretrain([text], vocab, tmp_path / "data", chunk_tokens=256, progress=False)
    out = tmp_path / "run"
    assert main("pretrain", tiny_args(tmp_path / "data", out, max_iters=2, sample_prompts='["ab", ""]')) == 0
    card = (out / "report.md").read_text(encoding="utf-8")
    assert "**ab**\n\n```text\nab" in card  # the prompt, then what the model wrote after it
    assert "an empty prompt starts a document with `<|bos|>`, which the vocabulary lacks" in card


def test_a_best_loss_without_best_pt_says_why(tmp_path):
    from nano_train import report

    (tmp_path / "best.pt").write_bytes(b"")
    assert report.no_best(tmp_path, 1.5) == "" and report.no_best(tmp_path, None) == ""
    (tmp_path / "best.pt").unlink()
    assert "no best.pt was written" in report.no_best(tmp_path, 1.5)
    assert report.no_best(tmp_path, math.inf) == ""


# ---------------------------------------------------------------------------
# Settings: one error line, before any work


@pytest.mark.parametrize("value, ok", [("1e300", False), ("0.0001", False), ("-1", False), ("0", True),
                                       ("1", True), ("1e9", True)])
def test_dist_timeout_range(tmp_path, small_pretrain, value, ok, capsys, error_line):
    # (was: OverflowError or a 0 ms timeout in every rank under torchrun)
    code = main("pretrain", [f"--dataset={small_pretrain}", f"--out_dir={tmp_path / 'r'}", f"--dist_timeout={value}",
                             "--print_config"])
    assert code == (0 if ok else 2)
    if not ok:
        assert "system.dist_timeout must be 0 (torch's default) or in [1, 1e+09] seconds" in error_line(capsys)


def test_nccl_without_nccl_or_gpu_is_a_config_error(monkeypatch):
    # (was: torch's RuntimeError "Distributed package doesn't have NCCL built in" in each rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    system = type("S", (), dict(dist_backend="nccl", device="cpu", dist_timeout=0.0))()
    with pytest.raises(ConfigError, match=r"^system\.dist_backend nccl: this (torch has no NCCL|machine has no "
                                          r"CUDA GPU); --dist_backend=gloo runs on CPUs$"):
        init_distributed(system)


@pytest.mark.parametrize("section, key", [("optim", "learning_rate"), ("model", "norm_eps")])
def test_a_float_setting_of_hundreds_of_digits(tmp_path, section, key, capsys, error_line):
    # (was: OverflowError: int too large to convert to float, with a traceback)
    path = tmp_path / "c.json"
    path.write_text('{"%s": {"%s": 1%s}}' % (section, key, "0" * 400), encoding="utf-8")
    assert main("pretrain", [str(path), "--print_config"]) == 2
    assert f"{section}.{key}: expected a finite number, got an integer too large for a float" in error_line(capsys)


@pytest.mark.parametrize("argv, message", [
    (["--lr=1e-3"], "unknown key 'lr' (did you mean learning_rate?)"),
    (["--optim.wd=0.1"], "unknown key optim.wd (did you mean weight_decay?)"),
    (["--print_config=true"], "--print_config takes no value; write --print_config"),
    (["--datset", "{data}"], "--datset: unknown key 'datset' (did you mean dataset?)"),
])
def test_mistyped_settings_name_the_setting_meant(small_pretrain, argv, message, capsys, error_line):
    argv = [a.replace("{data}", str(small_pretrain)) for a in argv]
    assert main("pretrain", argv) == 2
    assert message in error_line(capsys)


@pytest.mark.parametrize("arg", ["--max_iters=1_0", "--max_iters= 5", "--max_iters=\u0663", "--learning_rate=1_0",
                                 "--learning_rate=\u0663.5", "--max_iters=" + "9" * 5000])
def test_numbers_on_the_command_line_are_ascii_numbers(arg, capsys, error_line):
    # (was: Python's int() and float() read 1_0 as 10, ' 5' as 5 and Arabic-Indic digits,
    # and 5,000 digits were echoed twice in one line)
    assert main("pretrain", [arg, "--print_config"]) == 2
    line = error_line(capsys)
    assert "expected an integer, got " in line or "expected a number, got " in line
    assert len(line) < 300


@pytest.mark.parametrize("command, args", [
    ("prepare", ["pretrain", "--chunk_tokens", "1_024"]),
    ("prepare", ["pretrain", "--val_fraction", " 0.1"]),
    ("prepare", ["pretrain", "--shard_tokens", "\u0661\u0660\u0660\u0660"]),
    ("prepare", ["pretrain", "--seed", "1_3"]),
    ("prepare", ["sft", "--block_size", "6_4"]),
    ("export", ["--group-size", " 16"]),
    ("problems", ["sort", "--digits", "1_0"]),
    ("problems", ["sort", "--time_budget", "\u0663"]),
    ("demo", ["--eval_cases", "5_00"]),
])
def test_every_command_reads_ascii_numbers(tmp_path, command, args):
    # (was: prepare, export, problems and the demo read them with int() and float():
    # --chunk_tokens 1_024 made chunks of 1024 and --group-size ' 16' exported)
    if command == "prepare":
        args = [*args, "--tokenizer", "t.json", "--out_dir", "out", "in.txt"]
    elif command == "export":
        args = [*args, "--ckpt", "x.pt", "--out", "x.bin"]
    elif command == "problems":
        args = [*args, "--out_dir", "out", "--no-c"]
    else:
        args = [*args, "--out_dir", "out"]
    run = ([sys.executable, str(Path(__file__).parents[3] / "tools" / "demo.py")] if command == "demo"
           else [sys.executable, "-m", f"nano_train.{command}"])
    r = subprocess.run([*run, *args], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 2, r
    assert "Traceback" not in r.stderr
    assert re.search(r"error: argument --[a-z_-]+: (expected an integer|expected a finite number|invalid seed)",
                     r.stderr), r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arg, key, value", [("--max_iters=+5", "max_iters", 5), ("--max_iters=-0", "max_iters", 0),
                                             ("--learning_rate=.5", "learning_rate", 0.5),
                                             ("--learning_rate=5.", "learning_rate", 5.0),
                                             ("--learning_rate=1E-3", "learning_rate", 1e-3)])
def test_ascii_numbers_still_read(arg, key, value, capsys):  # guard
    assert main("pretrain", [arg, "--print_config"]) == 0
    assert f'"{key}": {value}' in capsys.readouterr().out


def test_lora_settings_outside_a_lora_run_get_a_note(tmp_path, small_pretrain, tiny_args, capsys):
    # (was: silently ignored, and recorded in the report's config)
    assert main("pretrain", tiny_args(small_pretrain, tmp_path / "r", max_iters=1, lora_rank=4, sample_tokens=0)) == 0
    assert ("note: lora.lora_rank set, but the lora section applies to LoRA runs only (lora_train); this pretrain "
            "run trains every weight") in capsys.readouterr().err


def test_lora_settings_at_their_defaults_get_no_note(tmp_path, small_pretrain, tiny_args, capsys):
    # (review: a --print_config dump fed back as a config named all three)
    assert main("pretrain", tiny_args(small_pretrain, tmp_path / "r", max_iters=1, lora_rank=8, lora_alpha=16.0,
                                      sample_tokens=0)) == 0
    assert "lora section" not in "".join(capsys.readouterr())


def test_a_problem_s_kv_heads_follow_its_heads(tmp_path):
    # (review: problems hard-coded n_kv_head 4, so --n_head=8 was grouped-query attention)
    from nano_train.problems import make
    from nano_train.problems.runner import Options, resolve_config

    cfg, _ = resolve_config(make("sort"), Options(out_dir=tmp_path, overrides=["--n_head=8"]))
    assert (cfg.model.n_head, cfg.model.n_kv_head) == (8, 8)
    assert resolve_config(make("sort"), Options(out_dir=tmp_path))[0].model.n_kv_head == 4


def test_python_m_nano_train_convert_says_what_to_run(tmp_path):
    # (was: nothing at all, exit status 0)
    res = subprocess.run([sys.executable, "-m", "nano_train.convert", "--ckpt", "x.pt", "--out", "y.bin"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and "python -m nano_train.export" in res.stderr and "nano-format convert" in res.stderr
    assert not (tmp_path / "y.bin").exists()
