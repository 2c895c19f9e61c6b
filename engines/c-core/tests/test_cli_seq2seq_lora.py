"""`nano seq2seq -l LORA`: a LoRA module attached to the seq2seq forward, as `nano run -l`
attaches one.

A random full-attention model and a LoRA module for it are made in nano_train and
exported with nano_train.convert (export_bin, export_lora); `nano seq2seq -l` must
print what nano_train's seq2seq gives with the adapter attached, which is not what
it gives without it. A LoRA file that cannot be attached (missing, not a LoRA
module, truncated, the wrong shape) is one error line with `nano run -l`'s wording
and exit status, before any input is read.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SPECIALS = ["<|padding|>", "<|unknown|>", "<|bos|>", "<|eos|>", "<|instruct_mark|>", "<|response_mark|>"]
CONFIG = dict(block_size=24, vocab_size=40, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, is_causal=False)
RANK = 2
ALPHA = 2 * RANK  # conftest.attach_random_lora's


@pytest.fixture(scope="module")
def files(tmp_path_factory, h):
    """The exported model and LoRA, and nano_train's model without and with the adapter."""
    from nano_train.convert import export_bin, export_lora

    base = h.build_model(CONFIG, 11)
    tok = h.vocabulary(CONFIG["vocab_size"])
    d = tmp_path_factory.mktemp("seq2seq_lora")
    export_bin(base, d / "model.bin", tokenizer=tok, layout="2026.101")
    adapted = h.attach_random_lora(copy.deepcopy(base), RANK, seed=11, scale=0.5)
    export_lora(adapted, d / "lora.bin")
    return dict(dir=d, model=d / "model.bin", lora=d / "lora.bin", base=base, adapted=adapted.eval(), tok=tok)


@pytest.fixture
def nano_cli(cli, h):
    """`nano` as the cli fixture runs it; in the sanitizer re-run (build-san/), with
    LeakSanitizer on: the re-run turns it off for Python, not for these programs, whose
    error paths free a loaded LoRA module."""
    env = {"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=1"} if h.SAN else None
    return lambda *args, **kw: cli(*args, env=env, **kw)


def _inputs(tok) -> list[str]:
    rng = np.random.default_rng(3)
    return [tok.decode(rng.integers(len(SPECIALS), CONFIG["vocab_size"], n).tolist()) for n in (9, 4, 16, 24)]


def _reference(model, tok, text: str) -> str:
    from nano_train.sampling import seq2seq

    return tok.decode(seq2seq(model, tok.encode(text)))


def test_seq2seq_with_lora_equals_nano_train(files, nano_cli):
    """`nano seq2seq -l` (one INPUT and the line batch) prints nano_train's seq2seq of the
    model with the adapter attached; without -l, that of the model alone."""
    tok = files["tok"]
    inputs = _inputs(tok)
    adapted = [_reference(files["adapted"], tok, t) for t in inputs]
    plain = [_reference(files["base"], tok, t) for t in inputs]
    assert adapted != plain  # the adapter changes the answers: the comparison below can fail
    for text, want, without in zip(inputs, adapted, plain):
        r = nano_cli("seq2seq", "-m", files["model"], "-l", files["lora"], text)
        assert (r.returncode, r.stdout, r.stderr) == (0, want + "\n", ""), r
        r = nano_cli("seq2seq", "--lora", files["lora"], "--threads", "2", "-m", files["model"], text)
        assert (r.returncode, r.stdout) == (0, want + "\n"), r.stderr
        assert nano_cli("seq2seq", "-m", files["model"], text).stdout == without + "\n"
    # the line batch: one answer per line, the module attached for every line
    r = nano_cli("seq2seq", "-m", files["model"], "-l", files["lora"], "-", input="".join(t + "\n" for t in inputs))
    assert (r.returncode, r.stdout.splitlines()) == (0, adapted), r.stderr
    # and what `nano run -l` prints for the same model and module
    r = nano_cli("run", "-m", files["model"], "-l", files["lora"], "-p", inputs[0])
    assert (r.returncode, r.stdout) == (0, adapted[0] + "\n"), r.stderr


def _lora_file(path, **kw):
    """A LoRA module of random values for CONFIG, with the settings in kw changed."""
    import nano_format as nf
    from nano_format.plan import lora_params
    from nano_train.model import ModelConfig

    c = dict(rank=RANK, alpha=ALPHA, n_layer=CONFIG["n_layer"], n_embd=CONFIG["n_embd"], n_head=CONFIG["n_head"],
             n_kv_head=CONFIG["n_kv_head"], n_hidden=ModelConfig(**CONFIG).n_hidden)
    c.update(kw)
    lc = nf.LoraConfig(**c)
    rng = np.random.default_rng(1)
    nf.write_lora(path, lc, {p.name: rng.standard_normal(p.shape).astype(np.float32) for p in lora_params(lc)})
    return path


def _bad_loras(files, tmp_path) -> dict:
    """name -> (path, the status name its error carries)."""
    d = tmp_path
    bad = {"missing": (d / "missing.bin", "NANO_ERR_IO"),
           "a directory": (d, "NANO_ERR_IO"),
           "a model file": (files["model"], "NANO_ERR_UNKNOWN_MODEL_TYPE")}
    for name, kw in (("n_layer", dict(n_layer=3)), ("n_embd", dict(n_embd=16)), ("n_head", dict(n_head=2)),
                     ("n_kv_head", dict(n_kv_head=1))):
        bad[f"wrong {name}"] = (_lora_file(d / f"wrong_{name}.bin", **kw), "NANO_ERR_LORA_MISMATCH")
    trunc = d / "truncated.bin"
    trunc.write_bytes(files["lora"].read_bytes()[:-10])
    bad["truncated"] = (trunc, "NANO_ERR_TRUNCATED")
    return bad


def _error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    errors = [line for line in lines if line.startswith("nano: error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_seq2seq_lora_errors_are_nano_runs(files, nano_cli, tmp_path):
    """Each LoRA that cannot be attached: exit status 1, nothing on standard output, one
    line on standard error naming the file and the status, the line `nano run -l` prints
    for it (`nano run` on this full-attention model adds only its seq2seq note); with
    INPUT '-', before a line of standard input is answered."""
    for name, (path, status) in _bad_loras(files, tmp_path).items():
        r = nano_cli("seq2seq", "-m", files["model"], "-l", path, "ab")
        assert (r.returncode, r.stdout) == (1, ""), (name, r)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"nano: error: {path}: "), (name, r.stderr)
        assert f"({status})" in r.stderr, (name, r.stderr)
        run = nano_cli("run", "-m", files["model"], "-l", path, "-p", "ab")
        assert run.returncode == 1 and _error_line(run.stderr) + "\n" == r.stderr, (name, run.stderr, r.stderr)
        r = nano_cli("seq2seq", "-m", files["model"], "-l", path, "-", input="ab\ncd\n")
        assert (r.returncode, r.stdout) == (1, "") and _error_line(r.stderr) + "\n" == r.stderr, (name, r)


def test_seq2seq_lora_usage_errors(files, nano_cli):
    r = nano_cli("seq2seq", "-m", files["model"], "ab", "-l")
    assert r.returncode == 2 and r.stderr.startswith("nano: error: -l: missing value"), r
    r = nano_cli("seq2seq", "-m", files["model"], "--lora")
    assert r.returncode == 2 and r.stderr.startswith("nano: error: --lora: missing value"), r
    # the model is loaded and checked first, as in `nano run`
    r = nano_cli("seq2seq", "-m", files["dir"] / "nowhere.bin", "-l", files["lora"], "ab")
    assert r.returncode == 1 and "nowhere.bin" in r.stderr and "NANO_ERR_IO" in r.stderr, r
    r = nano_cli("seq2seq", "--help")
    assert r.returncode == 0 and "nano seq2seq -m MODEL [-l LORA]" in r.stdout
