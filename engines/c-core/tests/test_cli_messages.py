"""What `nano` says when a newcomer gives it the wrong file: a training checkpoint
(or another file that is not a model) instead of an exported model, a LoRA module
as the model, a LoRA module for another shape, a path that is missing or a folder.

Each error is one line on standard error, exit status 1 and nothing on standard
output; the line says what the file is and what to do instead.

Also the other places a newcomer gets stuck: a prompt that fills the context (how
long it is, how long the context is, and for a reference-layout file such as sort6,
which cannot record full attention, that `nano seq2seq` runs it), and a model given
without its -m (a usage error, exit status 2, that asks "did you mean -m FILE?").
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


def test_a_model_as_the_lora_says_where_it_goes(cli, psycho_path, sort6_path):
    """The mirror of the above: a model file given with -l. The line names what the file is
    (the status text "unknown model type" would not: its type is known, it is a model's)."""
    for args, stdin in ((("run", "-m", psycho_path, "-l", sort6_path, "-p", "人"), None),
                        (("run", "-m", psycho_path, "-l", psycho_path), "ab\n"),
                        (("seq2seq", "-m", sort6_path, "-l", sort6_path, "12"), None)):
        r = cli(*args, input=stdin)
        lora = args[args.index("-l") + 1]
        assert _only_error(r) + "\n" == r.stderr, (args, r.stderr)
        assert r.stderr == (f"nano: error: {lora}: a model file, not a LoRA module (NANO_ERR_UNKNOWN_MODEL_TYPE): "
                            "give it with -m; -l takes a LoRA module (python -m nano_train.export ... --lora-out "
                            "FILE writes one)\n"), (args, r.stderr)
    # and the option it names exists
    from nano_train.export import build_parser

    assert build_parser().parse_args(["--ckpt", "c.pt", "--out", "m.bin", "--lora-out", "l.bin"]).lora_out == "l.bin"


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


def test_a_lora_with_alpha_0_is_refused_as_nano_train_refuses_it(cli, h, tmp_path):
    """alpha / rank scales every update: with alpha 0 the adapters change nothing. The format
    can hold it; nano_train.sample refuses it ("LoRA alpha must be a number > 0, got 0"). Was:
    the engine ran it as if no LoRA were given, exit 0."""
    model = tmp_path / "model.bin"
    model.write_bytes(h.model_bytes(seed=3))
    assert cli("run", "-m", model, "-l", _lora_file(tmp_path / "ok.bin"), "-p", "ab", "-n", "2").returncode == 0
    lora = _lora_file(tmp_path / "alpha0.bin", alpha=0)
    assert _only_error(cli("run", "-m", model, "-l", lora, "-p", "ab")) == (
        f"nano: error: {lora}: bad model config (zero, absurd or inconsistent dimensions) (NANO_ERR_BAD_CONFIG): "
        "LoRA alpha must be > 0, got 0 (alpha / rank scales every update to zero)")


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


# ---------------------------------------------------------------------------
# A prompt that leaves no room for a new token

FULL = "nano: error: {what}: context full (NANO_ERR_CONTEXT_FULL): "


def _n_tokens(path, text: str) -> int:
    """The prompt's length as nano_tokenizer (the reference) counts it."""
    import nano_format as nf
    from nano_tokenizer import Tokenizer

    with nf.read(path) as f:
        return len(Tokenizer.from_tokens(f.tokens).encode(text))


def test_a_prompt_that_fills_sort6s_block_names_the_lengths_and_seq2seq(cli, sort6_path):
    """The README's own fixture, a seq2seq model in layout 2025.12 (which reads as causal), given
    to `nano run`: its 6-token input fills its 6-token block."""
    assert _n_tokens(sort6_path, "251212") == 6
    hint = (f"(a shorter prompt: a context holds at most the model's block size, 6); a full-attention model runs "
            f"with nano seq2seq -m {sort6_path} INPUT (layout 2025.12 cannot record the attention kind: it reads "
            "as causal)")
    r = cli("run", "-m", sort6_path, "-p", "251212", "-t", "0.5")
    assert _only_error(r) == (FULL.format(what="prompt") + "the prompt is 6 tokens and the context holds 6: no "
                              "room for a new token " + hint)
    # the chat is instruct mode: the template's two marks count too
    r = cli("run", "-m", sort6_path, "-t", "0", input="251212\n")
    assert r.returncode == 1 and r.stdout == "\n", r
    assert r.stderr == (FULL.format(what="line 1") + "the prompt is 8 tokens with the instruct marks and the "
                        "context holds 6: no room for a new token " + hint + "\n")
    # and what it names works
    r = cli("seq2seq", "-m", sort6_path, "251212")
    assert (r.returncode, r.stdout) == (0, "112225\n"), r


def test_a_prompt_longer_than_the_context_says_by_how_much(cli, psycho_path):
    text = "心理学家" * 5
    n = _n_tokens(psycho_path, text)
    assert 16 < n < 512
    r = cli("run", "-m", psycho_path, "--ctx", "16", "-p", text, "-n", "1")
    # a longer --ctx would do: no word of seq2seq
    assert _only_error(r) == (FULL.format(what="prompt") + f"the prompt is {n} tokens and the context holds 16: "
                              "no room for a new token (a longer --ctx, up to the block size 512, or a shorter "
                              "prompt)")
    r = cli("run", "-m", psycho_path, "--ctx", "16", "--system", "你是谁", input=text + "\n")
    n_joined = _n_tokens(psycho_path, "你是谁\n" + text) + 2
    assert r.stderr == (FULL.format(what="line 1") + f"the prompt is {n_joined} tokens with the --system text and "
                        "the instruct marks and the context holds 16: no room for a new token (a longer --ctx, up "
                        "to the block size 512, or a shorter prompt)\n"), r.stderr
    # longer than the block: only a shorter prompt helps, and seq2seq would not take it either
    text = "心" * 600
    n = _n_tokens(psycho_path, text)
    assert n > 512
    r = cli("run", "-m", psycho_path, "-p", text, "-n", "1")
    assert _only_error(r) == (FULL.format(what="prompt") + f"the prompt is {n} tokens and the context holds 512: "
                              "no room for a new token (a shorter prompt: a context holds at most the model's block "
                              "size, 512)")


def test_a_generation_cut_short_by_the_context_says_so(cli, psycho_path):
    """-n asks for more tokens than the context has room for: the text comes as far as it
    goes (exit status 0), then a note says where it stopped and whether --ctx helps. No
    note when -n was reached, or when -n 0 asked to run until the context is full."""
    prompt = "今天"
    n_prompt = _n_tokens(psycho_path, prompt)
    left = 16 - n_prompt + 1  # the last token sampled needs no room of its own
    r = cli("run", "-m", psycho_path, "--ctx", "16", "-p", prompt, "-t", "0", "-n", "100")
    assert r.returncode == 0 and r.stdout.strip(), r
    assert r.stderr == (f"nano: note: prompt: the context (16 tokens) filled after {left} generated tokens, short "
                        "of -n 100; a longer --ctx, up to the block size 512, leaves more room\n"), r.stderr
    ids = cli("run", "-m", psycho_path, "--ctx", "16", "-p", prompt, "-t", "0", "-n", "100", "--ids")
    assert len(ids.stdout.strip().split(",")) == n_prompt + left, ids
    for n in ("0", str(left)):
        r = cli("run", "-m", psycho_path, "--ctx", "16", "-p", prompt, "-t", "0", "-n", n)
        assert (r.returncode, r.stderr) == (0, ""), (n, r)
    # at the block size, no --ctx is longer
    r = cli("run", "-m", psycho_path, "-p", prompt, "-t", "0", "-n", "600")
    assert r.returncode == 0 and r.stderr == (
        f"nano: note: prompt: the context (512 tokens) filled after {512 - n_prompt + 1} generated tokens, short of "
        "-n 600; no context holds more than the model's block size, 512\n"), r.stderr
    # the chat: one note per question cut short, after its answer line
    r = cli("run", "-m", psycho_path, "--ctx", "16", "-t", "0", "-n", "100", input="你\n")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1, r
    assert r.stderr.startswith("nano: note: line 1: the context (16 tokens) filled after "), r.stderr


def test_only_a_file_that_cannot_record_attention_gets_the_seq2seq_hint(cli, h, tmp_path):
    """The same weights in layout 2026.1 (attention not recorded) and in 2026.101 (causal
    recorded): only the first may be a full-attention model that reads as causal."""
    text = "abcdefgh"
    probe = tmp_path / "probe.bin"
    probe.write_bytes(h.model_bytes(seed=4))
    n = _n_tokens(probe, text)
    for layout, kw, hint in (("2026.1", {}, f"; a full-attention model runs with nano seq2seq -m {{path}} INPUT "
                                               "(layout 2026.1 cannot record the attention kind: it reads as causal)"),
                             ("2026.101", dict(attention=0), "")):
        path = tmp_path / f"{layout}.bin"
        path.write_bytes(h.model_bytes(seed=4, layout=layout, block_size=n, **kw))
        r = cli("run", "-m", path, "-p", text, "-n", "1")
        assert _only_error(r) == (FULL.format(what="prompt") + f"the prompt is {n} tokens and the context holds "
                                  f"{n}: no room for a new token (a shorter prompt: a context holds at most the "
                                  f"model's block size, {n})" + hint.format(path=path)), layout


# ---------------------------------------------------------------------------
# A model given without its -m


def _usage_error(r) -> str:
    assert (r.returncode, r.stdout) == (2, ""), r
    first, rest = r.stderr.split("\n", 1)
    assert rest == "(run 'nano --help' for usage)\n", r.stderr
    return first


def test_a_model_without_its_m_asks_did_you_mean(cli, psycho_path, sort6_path):
    for args, want in (
            (("run", psycho_path, "-p", "x"), f"run: unknown option '{psycho_path}'"),
            (("seq2seq", sort6_path, "251212"), f"seq2seq: one INPUT only (got '{sort6_path}' and '251212')"),
            (("seq2seq", "251212", sort6_path), f"seq2seq: one INPUT only (got '251212' and '{sort6_path}')"),
            (("seq2seq", sort6_path), "seq2seq: -m MODEL is required"),
            (("bench", psycho_path), f"bench: unknown option '{psycho_path}'")):
        path = sort6_path if args[0] == "seq2seq" else psycho_path
        assert _usage_error(cli(*args)) == f"nano: error: {want} (did you mean -m {path}?)", args


def test_a_stray_argument_that_is_no_model_file_gets_no_hint(cli, psycho_path, sort6_path, tmp_path):
    missing = tmp_path / "nope.bin"
    for args, want in (
            (("run", missing, "-p", "x"), f"run: unknown option '{missing}'"),
            (("run", tmp_path, "-p", "x"), f"run: unknown option '{tmp_path}'"),  # a folder
            (("run", psycho_path, "-m", psycho_path, "-p", "x"), f"run: unknown option '{psycho_path}'"),
            (("seq2seq", "12", "34"), "seq2seq: one INPUT only (got '12' and '34')"),
            (("seq2seq", sort6_path, "251212", "--model", sort6_path),
             f"seq2seq: one INPUT only (got '{sort6_path}' and '251212')"),
            (("seq2seq", "12"), "seq2seq: -m MODEL is required")):
        assert _usage_error(cli(*args)) == f"nano: error: {want}", args
