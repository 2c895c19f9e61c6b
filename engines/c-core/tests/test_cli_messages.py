"""What `nano` says when a newcomer gives it the wrong file: a training checkpoint
(or another file that is not a model) instead of an exported model, a LoRA module
as the model, a LoRA module for another shape, a path that is missing or a folder.

Each error is one line on standard error, exit status 1 and nothing on standard
output; the line says what the file is and what to do instead.
"""

from __future__ import annotations

import errno
import os
import shlex

import numpy as np
import pytest

ZIP_HINT = "a zip archive, probably a PyTorch checkpoint (.pt): export it first with "


@pytest.fixture
def checkpoint(tmp_path):
    """A file as torch.save writes it (a zip archive), as nano-train's checkpoints are."""
    import torch

    path = tmp_path / "best.pt"
    torch.save({"x": torch.zeros(1)}, path)
    return path


def _starts_with(path) -> str:
    return " ".join(f"{b:02x}" for b in path.read_bytes()[:8])


def _only_error(r) -> str:
    """The one error line of a run that failed as a user mistake should."""
    assert (r.returncode, r.stdout) == (1, ""), r
    errors = [line for line in r.stderr.splitlines() if line.startswith("nano: error: ")]
    assert len(errors) == 1, r.stderr
    return errors[0]


def _lora_file(path, **kw):
    import nano_format as nf
    from nano_format.plan import lora_params

    lc = nf.LoraConfig(**{**dict(rank=2, alpha=4, n_layer=2, n_embd=16, n_head=4, n_kv_head=2, n_hidden=32), **kw})
    nf.write_lora(path, lc, {p.name: np.zeros(p.shape, np.float32) for p in lora_params(lc)})
    return path


def _export_args(line: str, path) -> object:
    """The export command a hint suggests, parsed by nano_train.export's own parser (so the
    hint cannot name options that tool does not have)."""
    from nano_train.export import build_parser

    cmd = shlex.split(line.split(ZIP_HINT, 1)[1])
    assert cmd[:3] == ["python", "-m", "nano_train.export"], line
    args = build_parser().parse_args(cmd[3:])
    assert args.ckpt == str(path), line
    return args


def test_a_training_checkpoint_as_the_model_says_how_to_export_it(cli, checkpoint):
    want = (f"nano: error: {checkpoint}: bad magic: not a Nano model file (NANO_ERR_BAD_MAGIC): the file starts "
            f"with {_starts_with(checkpoint)}: {ZIP_HINT}python -m nano_train.export --ckpt {checkpoint} "
            "--out MODEL.bin")
    assert _starts_with(checkpoint).startswith("50 4b 03 04")
    for args in (("run", "-m", checkpoint, "-p", "人", "-t", "0", "-n", "5"), ("info", checkpoint),
                 ("seq2seq", "-m", checkpoint, "12"), ("bench", "-m", checkpoint)):
        r = cli(*args)
        assert _only_error(r) + "\n" == r.stderr and r.stderr == want + "\n", (args, r.stderr)
    args = _export_args(want, checkpoint)
    assert (args.out, args.lora_out) == ("MODEL.bin", None)


def test_a_training_checkpoint_as_the_lora_says_how_to_export_it(cli, h, checkpoint, tmp_path, psycho_path):
    full = tmp_path / "full.bin"
    full.write_bytes(h.model_bytes(seed=2, layout="2026.101", attention=1))
    want = (f"nano: error: {checkpoint}: bad magic: not a Nano model file (NANO_ERR_BAD_MAGIC): the file starts "
            f"with {_starts_with(checkpoint)}: {ZIP_HINT}python -m nano_train.export --ckpt {checkpoint} "
            "--out BASE.bin --lora-out LORA.bin")
    for args in (("run", "-m", psycho_path, "-l", checkpoint, "-p", "人"), ("run", "-m", full, "-l", checkpoint,
                 "-p", "ab"), ("seq2seq", "-m", full, "-l", checkpoint, "ab")):
        assert _only_error(cli(*args)) == want, args
    args = _export_args(want, checkpoint)
    assert (args.out, args.lora_out) == ("BASE.bin", "LORA.bin")


def test_other_files_that_are_not_models_are_named(cli, tmp_path):
    vocab = tmp_path / "vocab.json"
    vocab.write_text('{"<|padding|>": 0, "a": 1}\n')
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(400))
    other = tmp_path / "other.bin"
    other.write_bytes(b"hello" + bytes(400))
    said = {vocab: ": a JSON file (a vocabulary?), not a model: a Nano model file holds its own vocabulary",
            gguf: ": a GGUF file (llama.cpp's format), which this engine does not read",
            other: ""}  # nothing to add for a file its first bytes say nothing about
    for path, what in said.items():
        for args in (("run", "-m", path, "-p", "x"), ("info", path)):
            line = _only_error(cli(*args))
            assert line == (f"nano: error: {path}: bad magic: not a Nano model file (NANO_ERR_BAD_MAGIC): the file "
                            f"starts with {_starts_with(path)}{what}"), (args, line)


def test_a_lora_module_as_the_model_says_where_it_goes(cli, tmp_path):
    lora = _lora_file(tmp_path / "lora.bin")
    unsupported = f"nano: error: {lora}: not supported by this engine (NANO_ERR_UNSUPPORTED): "
    with_l = unsupported + "the file is a LoRA module, not a model: give the base model with -m and the LoRA with -l"
    for args, stdin in ((("run", "-m", lora, "-p", "人"), None), (("run", "-m", lora), "ab\n"),
                        (("run", "-m", lora, "-p", "-"), "ab"), (("seq2seq", "-m", lora, "12"), None),
                        (("seq2seq", "-m", lora, "-"), "12\n")):
        r = cli(*args, input=stdin)
        assert _only_error(r) + "\n" == r.stderr == with_l + "\n", (args, r.stderr)
    # bench has no -l
    r = cli("bench", "-m", lora)
    assert _only_error(r) == unsupported + "the file is a LoRA module, not a model: give the base model with -m"


def test_a_lora_for_another_shape_names_both_shapes(cli, h, tmp_path):
    causal = tmp_path / "causal.bin"
    causal.write_bytes(h.model_bytes(seed=3))
    full = tmp_path / "full.bin"
    full.write_bytes(h.model_bytes(seed=3, layout="2026.101", attention=1, n_embd=32, n_head=2, n_kv_head=1))
    import nano_format as nf

    def shape(path):
        with nf.read(path) as f:
            c = f.config
            return (c.n_layer, c.n_embd, c.n_head, c.n_kv_head)

    for model in (causal, full):
        for kw in (dict(n_layer=3), dict(n_embd=64), dict(n_head=2, n_kv_head=1), dict(n_kv_head=4)):
            lora = _lora_file(tmp_path / "wrong.bin", **kw)
            want = (f"nano: error: {lora}: LoRA shapes do not fit the model (NANO_ERR_LORA_MISMATCH): the LoRA is "
                    f"for (n_layer, n_embd, n_head, n_kv_head) = {shape(lora)}, the model is {shape(model)}")
            assert shape(lora) != shape(model)
            runs = [("run", "-m", model, "-l", lora, "-p", "ab")]
            if model == full:
                runs.append(("seq2seq", "-m", model, "-l", lora, "ab"))
            for args in runs:
                assert _only_error(cli(*args)) == want, (args, kw)


def test_a_file_that_cannot_be_opened_says_why(cli, tmp_path, psycho_path):
    missing = tmp_path / "out" / "nope.bin"
    not_dir = psycho_path / "model.bin"  # below a file, not a folder
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    said = {missing: os.strerror(errno.ENOENT), not_dir: os.strerror(errno.ENOTDIR),
            tmp_path: "a folder (a directory), not a model file", fifo: "a FIFO (a pipe), not a model file"}
    for path, why in said.items():
        for args in (("run", "-m", path, "-p", "人"), ("run", "-m", path), ("info", path),
                     ("seq2seq", "-m", path, "12"), ("bench", "-m", path)):
            r = cli(*args, input="ab\n", timeout=30)
            assert _only_error(r) + "\n" == r.stderr == f"nano: error: {path}: {why} (NANO_ERR_IO)\n", (args, r.stderr)
    # the same for the LoRA module, said as one
    said.update({tmp_path: "a folder (a directory), not a LoRA module", fifo: "a FIFO (a pipe), not a LoRA module"})
    for path, why in said.items():
        r = cli("run", "-m", psycho_path, "-l", path, "-p", "人", timeout=30)
        assert _only_error(r) == f"nano: error: {path}: {why} (NANO_ERR_IO)", r.stderr
