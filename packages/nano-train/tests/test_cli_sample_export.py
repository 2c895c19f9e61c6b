"""The `sample` and `export` commands: real fixtures, options, and clean errors."""

import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nano_train import export as export_cmd
from nano_train import sample as sample_cmd
from nano_train.convert import emulate_q8_0, load_bin, load_lora_bin
from nano_train.lora import attach_lora

PSYCHO_GREEDY_16 = [272, 113, 217, 190, 398, 381, 187, 228, 360, 293, 343, 187, 228, 195, 303, 586]


pytestmark = pytest.mark.usefixtures("one_thread")


def run(cmd, argv, capsys):
    rc = cmd.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ---------------------------------------------------------------------------
# sample


def test_sample_help(capsys):
    with pytest.raises(SystemExit) as e:
        sample_cmd.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--model", "--lora", "--prompt", "--instruct", "--temperature", "--top-k", "--top-p",
                "--min-p", "--repetition-penalty", "--max-tokens", "--seed", "--stop", "--seq2seq",
                "--profile", "--device"):
        assert opt in out
    assert sample_cmd.__doc__.lstrip().startswith("Generate text")


def test_sample_sort6_seq2seq(shared_file, capsys):
    rc, out, _ = run(sample_cmd, ["-m", shared_file("fixtures/sort6_f32.bin"), "--seq2seq", "-p", "251212"], capsys)
    assert rc == 0 and out == "112225\n"


def test_sort6_without_seq2seq_is_told_how_it_runs(shared_file, capsys, monkeypatch):
    """sort6 (layout 2025.12, trained with full attention) reads as causal: a prompt that
    fills its block gets the way to run it, as nano run says (was: the block size alone)."""
    hint = ("a full-attention model runs with --seq2seq (layout 2025.12 cannot record the attention kind: it reads "
            "as causal)")
    sort6 = ["-m", str(shared_file("fixtures/sort6_f32.bin"))]
    rc, out, err = run(sample_cmd, [*sort6, "-p", "251212"], capsys)
    assert rc == 1 and err == ("error: the prompt has 6 tokens; the model's block size is 6 (a prompt must leave room "
                               f"for at least one new token); {hint}\n")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"2512\n")))  # the chat: 6 with the marks
    rc, out, err = run(sample_cmd, sort6, capsys)
    assert rc == 1 and err.startswith("error: line 1: the prompt has 6 tokens") and err.endswith(f"; {hint}\n")
    rc, out, err = run(sample_cmd, [*sort6, "-p", "2512121"], capsys)  # over the block: no seq2seq takes it
    assert rc == 1 and "--seq2seq" not in err
    # a question that fits the block, with the instruct marks over it (as nano run counts)
    rc, out, err = run(sample_cmd, [*sort6, "--instruct", "-p", "251212"], capsys)
    assert rc == 1 and err.startswith("error: the prompt has 8 tokens") and err.endswith(f"; {hint}\n")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"251212\n")))
    rc, out, err = run(sample_cmd, sort6, capsys)
    assert rc == 1 and err.startswith("error: line 1: the prompt has 8 tokens") and err.endswith(f"; {hint}\n")
    rc, out, err = run(sample_cmd, [*sort6, "--instruct", "-p", "2512121"], capsys)
    assert rc == 1 and "--seq2seq" not in err


def test_sample_notes_characters_the_vocabulary_lacks(shared_file, capsys):
    """The model is given <|unknown|> for each character its vocabulary lacks: a note says so
    (the tokens drawn are the same as for the prompt with those characters already unknown)."""
    psycho = ["-m", str(shared_file("fixtures/psycho_230k_1214_q80.bin")), "-t", "0", "-n", "4"]
    rc, out, err = run(sample_cmd, psycho + ["-p", "人的心理\U0001F600\U0001F601"], capsys)
    assert rc == 0 and out
    assert err == "note: 2 characters of the prompt are not in the vocabulary and became <|unknown|>\n"
    rc, _, err = run(sample_cmd, psycho + ["--instruct", "--system", "\U0001F600", "-p", "你是谁"], capsys)
    assert rc == 0 and err == "note: 1 character of the prompt is not in the vocabulary and became <|unknown|>\n"
    rc, _, err = run(sample_cmd, psycho + ["-p", "人的心理"], capsys)
    assert rc == 0 and err == ""
    rc, out, err = run(sample_cmd, ["-m", shared_file("fixtures/sort6_f32.bin"), "--seq2seq", "-p", "25人212"], capsys)
    assert rc == 0 and err == "note: 1 character of the prompt is not in the vocabulary and became <|unknown|>\n"


def test_sample_seq2seq_names_the_options_it_does_not_use(shared_file, capsys):
    """As `nano run` does for a full-attention model: one note naming the sampling
    options given that a seq2seq forward ignores; a plain --seq2seq run is quiet."""
    sort6 = ["-m", str(shared_file("fixtures/sort6_f32.bin")), "--seq2seq", "-p", "251212"]
    rc, out, err = run(sample_cmd, sort6, capsys)
    assert rc == 0 and out == "112225\n" and err == ""
    rc, out, err = run(sample_cmd, sort6 + ["-t", "0.5", "-n", "3", "--instruct", "--profile"], capsys)
    assert rc == 0 and out == "112225\n"
    note, profile = err.splitlines()
    assert note == ("note: seq2seq was asked for: one forward, the argmax at every position; "
                    "not used for it: --temperature, --max-tokens, --instruct")
    assert profile.startswith("[profile] seq2seq forward over 6 tokens")


def test_sample_psycho_greedy_streams_the_pinned_ids(shared_file, capsys):
    _, tok = load_bin(shared_file("fixtures/psycho_230k_1214_q80.bin"))
    rc, out, err = run(sample_cmd, ["-m", shared_file("fixtures/psycho_230k_1214_q80.bin"), "-p", "人的心理",
                                    "-t", "0", "-n", "16", "--profile"], capsys)
    assert rc == 0
    assert out == tok.decode(PSYCHO_GREEDY_16) + "\n"
    assert "time to first token" in err and "tokens/s" in err


def test_sample_prompt_from_stdin_and_sampling_options(shared_file, capsys, monkeypatch):
    model = shared_file("fixtures/psycho_230k_1214_q80.bin")
    args = ["-m", model, "-t", "0.8", "-k", "20", "--top-p", "0.9", "--min-p", "0.05",
            "-r", "1.3", "-n", "12", "-s", "7"]
    rc, a, _ = run(sample_cmd, args + ["-p", "心理学"], capsys)
    assert rc == 0 and len(a.strip()) > 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("心理学\n"))
    rc, b, _ = run(sample_cmd, args + ["-p", "-"], capsys)
    assert rc == 0 and b == a  # same prompt, same seed, same text
    rc, c, _ = run(sample_cmd, args[:-1] + ["8", "-p", "心理学"], capsys)
    assert rc == 0 and c != a


@pytest.mark.parametrize("extra", [[], ["--instruct"], ["--stop", "<|eos|>"], ["-t", "1", "-s", "5"]])
def test_sample_stops_at_eos_in_every_mode(tmp_path, nano80, capsys, predicting, extra, tiny, save_ckpt):
    """As the C engine (stop_at_eos is on in every mode): <|eos|> ends the output,
    in plain continuation too, and is not printed."""
    ck = tmp_path / "eos.pt"  # a model that always predicts <|eos|>
    save_ckpt(ck, predicting(tiny(tie_embeddings=False), [nano80.eos_id]), nano80)
    rc, out, _ = run(sample_cmd, ["-m", ck, "-p", "hi", "-t", "0", "-n", "3"] + extra, capsys)
    assert rc == 0 and out == "\n"


def test_an_empty_question_in_instruct_mode_is_answered(nano80, tmp_path, capsys, predicting, tiny, save_ckpt):
    """SFT data may hold an empty question; the instruct template still gives the model
    tokens to answer (nano-wss allows it too)."""
    ck = tmp_path / "eos.pt"
    save_ckpt(ck, predicting(tiny(tie_embeddings=False), [nano80.eos_id]), nano80)
    rc, out, err = run(sample_cmd, ["-m", ck, "-p", "", "--instruct", "-t", "0", "-n", "3"], capsys)
    assert rc == 0 and out == "\n", err
    rc, _, err = run(sample_cmd, ["-m", ck, "-p", "", "-t", "0", "-n", "3"], capsys)
    assert rc == 2 and "the prompt is empty" in err  # a usage error, as nano run's


def test_sample_with_lora(nano80, tmp_path, capsys, tiny):
    from nano_train.convert import export_bin, export_lora

    m = tiny()
    export_bin(m, tmp_path / "base.bin", tokenizer=nano80)
    attach_lora(m, rank=2, alpha=2)
    with torch.no_grad():
        for layer in m.layers:  # large enough to dominate the random base
            layer.wv.lora_B.normal_(0, 5.0)
            layer.wo.lora_B.normal_(0, 5.0)
    export_lora(m, tmp_path / "lora.bin")
    args = ["-m", tmp_path / "base.bin", "-p", "abc", "-t", "0", "-n", "8"]
    rc, plain, _ = run(sample_cmd, args, capsys)
    rc2, adapted, _ = run(sample_cmd, args + ["-l", tmp_path / "lora.bin"], capsys)
    assert rc == rc2 == 0
    assert plain != adapted


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["-m", "missing.bin", "-p", "x"], "missing.bin: not found"),
        (["-m", "{nano80}", "-p", "x"], "neither a Nano model file nor a training checkpoint"),
        (["-m", "{sort6}", "-p", "x", "--top-p", "2"], "top_p"),
        (["-m", "{sort6}", "-p", ""], "empty"),
        (["-m", "{sort6}", "-p", "", "--instruct", "--seq2seq"], "the input is empty"),  # no template there
        (["-m", "{sort6}", "-p", "x", "-l", "missing_lora.bin"], "not found"),
        (["-m", "{sort6}", "-p", "x", "-l", "{sort6}"], "not a LoRA"),
        (["-m", "{sort6}", "-p", "x", "--device", "nonsense"], "--device must be"),
        (["-m", "{sort6}", "-p", "1234567"], "block size"),
    ],
)
def test_sample_errors_are_one_line(shared_file, argv, msg, capsys):
    sub = {"{nano80}": str(shared_file("data/nano_80.json")), "{sort6}": str(shared_file("fixtures/sort6_f32.bin"))}
    rc, out, err = run(sample_cmd, [sub.get(a, a) for a in argv], capsys)
    assert rc == (2 if msg in ("top_p", "empty", "--device must be") else 1)  # usage errors, as nano run's
    assert err.startswith("error: ") and msg in err and "Traceback" not in err


def test_sample_module_runs_as_a_program(shared_file):
    p = subprocess.run(
        [sys.executable, "-m", "nano_train.sample", "-m", str(shared_file("fixtures/sort6_f32.bin")),
         "--seq2seq", "-p", "251212", "--threads", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout == "112225\n"


def one_error_line(rc, err, *texts, status=1) -> bool:
    return rc == status and err.startswith("error: ") and err.count("\n") == 1 and all(t in err for t in texts)


@pytest.mark.parametrize("name, change, msg", [
    ("big_vocab.pt", lambda ck: ck["config"]["model"].update(vocab_size=70),
     "the vocabulary has 80 tokens, the model 70"),
    ("eps.pt", lambda ck: ck["config"]["model"].update(norm_eps=None), "config['model']['norm_eps']"),
    ("lora.pt", lambda ck: ck.update(lora={"alpha": 2}), "lora['rank']"),
    ("huge.pt", lambda ck: ck["config"]["model"].update(block_size=10**9), "1048576"),
    ("nan.pt", lambda ck: ck["model"]["layers.1.w1.weight"].__setitem__((0, 0), float("nan")),
     "layers.1.w1.weight holds non-finite values"),
])
def test_sample_bad_checkpoints_are_one_line_naming_the_file(tmp_path, nano80, capsys, name, change, msg, tiny,
                                                             save_ckpt):
    save_ckpt(tmp_path / name, tiny(), nano80)
    ck = torch.load(tmp_path / name, weights_only=True)
    change(ck)
    torch.save(ck, tmp_path / name)
    rc, out, err = run(sample_cmd, ["-m", tmp_path / name, "-p", "hi", "-t", "0", "-n", "4"], capsys)
    assert out == "" and one_error_line(rc, err, f"error: {tmp_path / name}: ", msg)


def test_sample_seq2seq_is_refused_where_the_file_records_causal_attention(tmp_path, nano80, capsys, tiny, save_ckpt):
    """--seq2seq sets the attention of layouts that cannot record it (2026.1 here);
    a 2026.101 file that records causal attention refuses it, as a causal .pt does."""
    from nano_train.convert import export_bin

    m = tiny()
    export_bin(m, tmp_path / "old.bin", layout="2026.1", tokenizer=nano80)
    export_bin(m, tmp_path / "ext.bin", layout="2026.101", tokenizer=nano80)
    save_ckpt(tmp_path / "c.pt", m, nano80)
    rc, out, _ = run(sample_cmd, ["-m", tmp_path / "old.bin", "--seq2seq", "-p", "abc"], capsys)
    assert rc == 0 and len(out) == 4
    for name, what in (("ext.bin", "file"), ("c.pt", "checkpoint")):
        rc, out, err = run(sample_cmd, ["-m", tmp_path / name, "--seq2seq", "-p", "abc"], capsys)
        assert out == "" and one_error_line(rc, err, f"{tmp_path / name}: the {what} records causal attention, not full")


@pytest.mark.parametrize("argv, msg, status", [  # 2: a usage error, as nano run's
    (["--threads", "100000"], "--threads must be in 1..1024, got 100000", 2),
    (["--threads", "0"], "--threads must be in 1..1024, got 0", 2),
    (["-s", str(2**64)], "-s: seed must be an integer in [0, 2^64)", 2),
    (["-t", "-1"], "-t: temperature must be >= 0, got -1.0", 2),
    (["--top-p", "0"], "--top-p: top_p must be in (0, 1], got 0.0", 2),
    (["-n", "-2"], "-n: max_new_tokens must be >= 0", 2),
    # the devices a training run takes (system.device), no others: torch reads cpu:1 as the CPU
    (["--device", "meta"], "--device must be auto, cpu, cuda, cuda:N or mps, got 'meta'", 2),
    (["--device", "cpu:1"], "--device must be auto, cpu, cuda, cuda:N or mps, got 'cpu:1'", 2),
    (["--device", "cpu:0"], "--device must be auto, cpu, cuda, cuda:N or mps, got 'cpu:0'", 2),
    (["--device", "mps:0"], "--device must be auto, cpu, cuda, cuda:N or mps, got 'mps:0'", 2),
    (["--stop", "§"], "stop string '§' can never occur", 2),
])
def test_sample_bad_options_are_one_line(tmp_path, nano80, capsys, argv, msg, status, tiny, save_ckpt):
    save_ckpt(tmp_path / "c.pt", tiny(), nano80)
    rc, out, err = run(sample_cmd, ["-m", tmp_path / "c.pt", "-p", "hi"] + argv, capsys)
    assert out == "" and one_error_line(rc, err, msg, status=status)


def test_sample_checks_the_cuda_device_index(tmp_path, nano80, capsys, monkeypatch, tiny, save_ckpt):
    save_ckpt(tmp_path / "c.pt", tiny(), nano80)
    argv = ["-m", tmp_path / "c.pt", "-p", "hi", "--device"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc, _, err = run(sample_cmd, argv + ["cuda"], capsys)
    assert one_error_line(rc, err, "--device cuda: this machine has no CUDA device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    rc, _, err = run(sample_cmd, argv + ["cuda:7"], capsys)
    assert one_error_line(rc, err, "--device cuda:7: no such CUDA device (this machine has 2: 0..1)")


def test_sample_device_auto_is_the_one_training_picks(tmp_path, nano80, capsys, monkeypatch, tiny, save_ckpt):
    """--device auto, as system.device auto: cuda, then mps, then cpu (here, the CPU)."""
    save_ckpt(tmp_path / "c.pt", tiny(), nano80)
    argv = ["-m", tmp_path / "c.pt", "-p", "hi", "-t", "0", "-n", "4", "--device"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert run(sample_cmd, argv + ["auto"], capsys) == run(sample_cmd, argv + ["cpu"], capsys)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # auto went to cuda, which has no device here
    rc, _, err = run(sample_cmd, argv + ["auto"], capsys)
    assert one_error_line(rc, err, "--device auto: this machine has no CUDA device")


def test_sample_max_tokens_zero_fills_the_context(tmp_path, nano80, capsys, tiny, save_ckpt):
    """As `nano run -n 0`: no limit but the context (here 16 positions)."""
    save_ckpt(tmp_path / "c.pt", tiny(), nano80)
    args = ["-m", tmp_path / "c.pt", "-p", "hi", "-t", "1", "-s", "3"]
    rc, everything, _ = run(sample_cmd, args + ["-n", "0"], capsys)
    rc2, bounded, _ = run(sample_cmd, args + ["-n", "1000"], capsys)
    rc3, four, _ = run(sample_cmd, args + ["-n", "4"], capsys)
    assert rc == rc2 == rc3 == 0 and everything == bounded and len(everything) > len(four) > 1
    with pytest.raises(SystemExit):
        sample_cmd.main(["--help"])
    assert "0 = until the context is full" in " ".join(capsys.readouterr().out.split())


def test_sample_notes_a_generation_cut_short_by_the_context(shared_file, capsys):
    """As `nano run`: -n asks for more than the block leaves after the prompt; the text comes
    as far as it goes, then a note says so. No note at -n 0 (until the context is full) or
    when -n was reached."""
    model = shared_file("fixtures/psycho_230k_1214_q80.bin")
    args = ["-m", model, "-p", "今天", "-t", "0"]
    rc, out, err = run(sample_cmd, args + ["-n", "600"], capsys)
    assert rc == 0 and out.strip() and err == ("note: the context (512 tokens, the model's block size) filled after "
                                               "511 generated tokens, short of -n 600\n"), err
    for n in ("0", "511", "5"):
        rc, out, err = run(sample_cmd, args + ["-n", n], capsys)
        assert (rc, err) == (0, ""), (n, err)


def test_sample_profile_of_one_token_gives_no_nan(tmp_path, nano80, capsys, tiny, save_ckpt):
    save_ckpt(tmp_path / "c.pt", tiny(), nano80)
    rc, _, err = run(sample_cmd, ["-m", tmp_path / "c.pt", "-p", "hi", "-n", "1", "--profile"], capsys)
    assert rc == 0 and "1 token" in err and "nan" not in err


def test_sample_profile_times_the_tokens_when_sampled_and_counts_the_printed_ones(tmp_path, nano80, capsys,
                                                                                  monkeypatch, tiny, save_ckpt):
    """As `nano run --profile`: the time to first token runs to when it was sampled, and
    the rate from the first printed token's sampling to the last one's, held back for a
    stop text or not (a token held back came out at the end, 100 s later: it was timed
    then, "60 tokens, 147346.4 tokens/s"); the stop token and the forward that drew it
    are no token's."""
    from nano_train import sampling

    now = [0.0]  # a clock that the sampling below moves: a token every second, then 100 s to <|eos|>
    draws = iter([27, 28, 29, nano80.eos_id])

    def fake_sample_logits(logits, history, config, rng):
        token = next(draws)
        now[0] += 100.0 if token == nano80.eos_id else 1.0
        return token

    monkeypatch.setattr(sampling, "sample_logits", fake_sample_logits)
    monkeypatch.setattr(sample_cmd.time, "perf_counter", lambda: now[0])
    save_ckpt(tmp_path / "c.pt", tiny(), nano80)
    text = nano80.decode([27, 28, 29])
    # the last token is held back (it could begin the stop text) until <|eos|> ends the run
    rc, out, err = run(sample_cmd, ["-m", tmp_path / "c.pt", "-p", "hi", "--stop", text[-1] + text[0], "--profile"],
                       capsys)
    assert rc == 0 and out == text + "\n"
    assert "time to first token 1000.00 ms; 3 tokens generated, decode 1.0 tokens/s" in err, err


def test_sample_usage_errors_exit_2_and_bad_input_1(tmp_path, nano80, capsys, tiny, save_ckpt):
    """As `nano run`: a bad option value, an empty prompt or a --stop text the vocabulary
    cannot write is a usage error (exit status 2, one line); a bad file is exit status 1."""
    save_ckpt(tmp_path / "c.pt", tiny(), nano80)
    base = ["-m", tmp_path / "c.pt", "-p", "hi", "-n", "2"]
    for extra, said in ((["-t", "-1"], "error: -t: temperature must be >= 0"),
                        (["--top-p", "1.5"], "error: --top-p: top_p must be in (0, 1]"),
                        (["-k", str(2**30 + 1)], "error: -k: expected an integer in [0, 1073741824]"),
                        (["-p", ""], "error: the prompt is empty"),
                        (["--stop", ""], "error: --stop: stop string '' is empty"),
                        (["--system", "x"], "error: --system needs --instruct")):
        rc, _, err = run(sample_cmd, base + extra, capsys)
        assert rc == 2 and err.startswith(said) and err.count("\n") == 1, (extra, err)
    for extra in (["-s", "+5"], ["-t", "0x1p-3"], ["-t", "inf"], ["-k", "1_0"], ["--instruct=1"]):
        with pytest.raises(SystemExit) as e:  # argparse: the usage, then the error
            run(sample_cmd, base + extra, capsys)
        assert e.value.code == 2, extra
    rc, _, err = run(sample_cmd, ["-m", tmp_path / "none.pt", "-p", "hi"], capsys)
    assert rc == 1 and "not found" in err
    for extra in (["--min-p", "1.00000001"], ["-t", "-1e-46"], ["-t", "1e-400"], ["--top-p=0.9"]):
        rc, _, err = run(sample_cmd, base + extra, capsys)
        assert rc == 0, (extra, err)


def test_sample_picks_the_loader_by_the_first_bytes(tmp_path, nano80, capsys, tiny, save_ckpt):
    from nano_train.convert import export_bin, export_lora

    m = tiny()
    save_ckpt(tmp_path / "best.ckpt", m, nano80)
    export_bin(m, tmp_path / "model.pt", tokenizer=nano80)  # a model file despite its name
    export_lora(attach_lora(tiny(), rank=2, alpha=2), tmp_path / "lora.bin")
    (tmp_path / "dir").mkdir()
    args = ["-p", "hi", "-t", "0", "-n", "5"]
    rc, a, _ = run(sample_cmd, ["-m", tmp_path / "best.ckpt"] + args, capsys)
    rc2, b, _ = run(sample_cmd, ["-m", tmp_path / "model.pt"] + args, capsys)
    assert rc == rc2 == 0 and a == b != "\n"
    rc, _, err = run(sample_cmd, ["-m", tmp_path / "dir"] + args, capsys)
    assert one_error_line(rc, err, f"error: {tmp_path / 'dir'}: is a directory")
    rc, _, err = run(sample_cmd, ["-m", tmp_path / "best.ckpt", "-l", tmp_path / "dir"] + args, capsys)
    assert one_error_line(rc, err, f"error: {tmp_path / 'dir'}: is a directory")
    rc, _, err = run(sample_cmd, ["-m", tmp_path / "lora.bin"] + args, capsys)
    assert one_error_line(rc, err, f"error: {tmp_path / 'lora.bin'}: ", "pass it with -l")


class _BrokenPipe(io.TextIOWrapper):
    """Standard output whose reader went away (`| head -c1`)."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")


def test_sample_stops_quietly_on_a_broken_pipe(tmp_path, nano80, capsys, monkeypatch, tiny, save_ckpt):
    save_ckpt(tmp_path / "c.pt", tiny(), nano80)
    with open(tmp_path / "out", "wb") as f:
        monkeypatch.setattr(sys, "stdout", _BrokenPipe(f, encoding="utf-8"))
        rc = sample_cmd.main(["-m", str(tmp_path / "c.pt"), "-p", "hi"])
    assert rc == 1 and capsys.readouterr().err == ""  # as nano-format and nano-tokenizer: no message


def test_sample_writes_to_an_ascii_stdout(shared_file, capsys, monkeypatch):
    """A terminal that cannot encode the text gets backslash escapes, not an error."""
    argv = ["-m", str(shared_file("fixtures/psycho_230k_1214_q80.bin")), "-p", "人的心理", "-t", "0", "-n", "4"]
    rc, want, _ = run(sample_cmd, argv, capsys)
    assert rc == 0 and not want.isascii()
    buf = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(buf, encoding="ascii"))
    rc = sample_cmd.main(argv)
    sys.stdout.flush()
    assert rc == 0 and buf.getvalue() == want.encode("ascii", "backslashreplace")


def test_sample_with_closed_standard_streams(tmp_path, nano80, tiny, save_ckpt):
    """Started with `>&-` or `<&-` (Python then has no sys.stdout / sys.stdin): one line."""
    save_ckpt(tmp_path / "c.pt", tiny(), nano80)
    cmd = [sys.executable, "-m", "nano_train.sample", "-m", str(tmp_path / "c.pt"), "--threads", "1"]
    for fd, prompt, msg in ((1, "hi", "error: standard output is closed"),
                            (0, "-", "error: -p -: standard input is closed")):
        p = subprocess.run(cmd + ["-p", prompt], stderr=subprocess.PIPE, text=True, timeout=120,
                           preexec_fn=lambda fd=fd: os.close(fd))
        assert p.returncode == 1 and p.stderr.startswith(msg) and p.stderr.count("\n") == 1, p.stderr


def test_sample_options_default_to_the_samplers_defaults():
    """The command's defaults are SamplerConfig's (the library's, the C engine's): a value
    written out again in the parser must not drift from them."""
    from dataclasses import fields

    from nano_train.sampling import SamplerConfig

    parser, defaults = sample_cmd.build_parser(), SamplerConfig()
    options = {a.option_strings[0]: a.dest for a in parser._actions if a.option_strings}
    checked = []
    for f in fields(SamplerConfig):
        if f.name in sample_cmd.SAMPLER_OPTIONS:
            option = sample_cmd.SAMPLER_OPTIONS[f.name]
            assert parser.get_default(options[option]) == getattr(defaults, f.name), option
            checked.append(option)
    assert checked == ["-t", "-k", "--top-p", "--min-p", "-r", "-n", "-s"]


# ---------------------------------------------------------------------------
# export


def test_export_help(capsys):
    with pytest.raises(SystemExit) as e:
        export_cmd.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--ckpt", "--out", "--quant", "--group-size", "--layout", "--lora-out"):
        assert opt in out
    text = " ".join(out.split())  # argparse wraps the epilog to the terminal's width
    assert "Exit status: 0 once every file is in place and the summary printed; 1 for bad input or a failed " \
           "write (nothing written), or for a summary that could not be printed (the files are in place" in text
    assert "2 for a usage error; 130 for Ctrl-C (the line says whether files were written)" in text


def test_export_f32_and_q8_0(nano80, tmp_path, capsys, tiny, save_ckpt):
    m = tiny()
    save_ckpt(tmp_path / "c.pt", m, nano80)
    rc, out, _ = run(export_cmd, ["--ckpt", tmp_path / "c.pt", "--out", tmp_path / "f.bin"], capsys)
    assert rc == 0 and "layout 2026.1" in out and "f32" in out and "bytes" in out
    back, tok = load_bin(tmp_path / "f.bin")
    idx = torch.randint(0, 80, (1, 10))
    assert torch.equal(back(idx)[0], m(idx)[0]) and tok.itos == nano80.itos
    rc, out, _ = run(export_cmd, ["--ckpt", tmp_path / "c.pt", "--out", tmp_path / "q.bin",
                                  "--quant", "q8_0", "--group-size", "16"], capsys)
    assert rc == 0 and "q8_0" in out and "group size 16" in out
    back, _ = load_bin(tmp_path / "q.bin")
    assert torch.equal(back(idx)[0], emulate_q8_0(m, 16)(idx)[0])


def test_export_full_attention_picks_the_extension(nano80, tmp_path, capsys, tiny, save_ckpt):
    save_ckpt(tmp_path / "c.pt", tiny(is_causal=False), nano80)
    rc, out, _ = run(export_cmd, ["--ckpt", tmp_path / "c.pt", "--out", tmp_path / "f.bin"], capsys)
    assert rc == 0 and "layout 2026.101" in out and "full attention" in out
    assert not load_bin(tmp_path / "f.bin")[0].config.is_causal
    rc, _, err = run(export_cmd, ["--ckpt", tmp_path / "c.pt", "--out", tmp_path / "g.bin",
                                  "--layout", "2026.1"], capsys)
    assert rc == 1 and "2026.101" in err and not (tmp_path / "g.bin").exists()


def test_export_lora_checkpoint(nano80, tmp_path, capsys, tiny, save_ckpt):
    m = attach_lora(tiny(), rank=2, alpha=4)
    with torch.no_grad():
        for layer in m.layers:
            layer.wk.lora_B.normal_(0, 0.3)
            layer.wo.lora_B.normal_(0, 0.3)
    save_ckpt(tmp_path / "c.pt", m, nano80, lora={"rank": 2, "alpha": 4, "dropout": 0.0})
    idx = torch.randint(0, 80, (1, 10))
    want = m(idx)[0]
    rc, out, _ = run(export_cmd, ["--ckpt", tmp_path / "c.pt", "--out", tmp_path / "base.bin",
                                  "--lora-out", tmp_path / "lora.bin"], capsys)
    assert rc == 0 and "2024.10" in out
    base, _ = load_bin(tmp_path / "base.bin")
    assert not torch.allclose(base(idx)[0], want, atol=1e-4)
    load_lora_bin(base, tmp_path / "lora.bin")
    assert torch.equal(base(idx)[0], want)
    # without --lora-out the adapters are merged into the weights
    rc, out, _ = run(export_cmd, ["--ckpt", tmp_path / "c.pt", "--out", tmp_path / "merged.bin"], capsys)
    assert rc == 0 and "merged" in out
    merged, _ = load_bin(tmp_path / "merged.bin")
    assert torch.allclose(merged(idx)[0], want, atol=1e-5)


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["--ckpt", "missing.pt"], "not found"),
        (["--ckpt", "{junk}"], "not a readable checkpoint"),
        (["--ckpt", "{ckpt}", "--group-size", "16"], "q8_0 only"),
        (["--ckpt", "{ckpt}", "--quant", "q8_0", "--group-size", "5"], "does not divide"),
        (["--ckpt", "{ckpt}", "--lora-out", "x.bin"], "no LoRA"),
        (["--ckpt", "{sort6}"], "already exported"),  # a .bin model given as the checkpoint
    ],
)
def test_export_errors_are_one_line(nano80, shared_file, tmp_path, capsys, extra, msg, tiny, save_ckpt):
    save_ckpt(tmp_path / "c.pt", tiny(), nano80)
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 10)
    sub = {"{ckpt}": str(tmp_path / "c.pt"), "{junk}": str(tmp_path / "junk.pt"),
           "{sort6}": str(shared_file("fixtures/sort6_f32.bin"))}
    rc, _, err = run(export_cmd, [sub.get(a, a) for a in extra] + ["--out", tmp_path / "o.bin"], capsys)
    assert rc == 1 and err.startswith("error: ") and msg in err and "Traceback" not in err
    assert err.count("\n") == 1 and "weights_only" not in err  # not PyTorch's advice to load unsafely


@pytest.mark.parametrize("opts", [["--out", "{ckpt}"], ["--out", "b.bin", "--lora-out", "{ckpt}"],
                                  ["--out", "{ckpt_other_spelling}"], ["--out", "{link}"],
                                  ["--out", "x.bin", "--lora-out", "x.bin"],
                                  ["--out", "x.bin", "--lora-out", "sub/../x.bin"]])
def test_export_refuses_to_overwrite_its_input_or_itself(nano80, tmp_path, capsys, monkeypatch, opts, lora_ckpt):
    ckpt = lora_ckpt(tmp_path, nano80)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.pt").symlink_to(ckpt)
    before = ckpt.read_bytes()
    monkeypatch.chdir(tmp_path)
    sub = {"{ckpt}": ckpt, "{ckpt_other_spelling}": "sub/../c.pt", "{link}": "link.pt"}
    rc, out, err = run(export_cmd, ["--ckpt", ckpt] + [sub.get(a, a) for a in opts], capsys)
    assert rc == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "checkpoint itself" in err or "same file" in err
    assert ckpt.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "link.pt", "sub"]  # nothing written


@pytest.mark.parametrize(
    "opts, msg",
    [
        (["--quant", "q8_0", "--group-size", "7"], "does not divide"),  # found by the base export
        (["--layout", "2026.1"], "2026.101"),  # full attention: the base export refuses 2026.1
        (["--out", "{tmp}/nodir9/b.bin"], "does not exist"),
        (["--out", "{tmp}/sub"], "directory"),
        (["--lora-out", "{tmp}/nodir9/la.bin"], "does not exist"),
    ],
)
def test_export_failure_writes_nothing(nano80, tmp_path, capsys, opts, msg, tiny, save_ckpt):
    m = attach_lora(tiny(is_causal=False), rank=2, alpha=4)
    save_ckpt(tmp_path / "c.pt", m, nano80, lora={"rank": 2, "alpha": 4, "dropout": 0.0})
    (tmp_path / "sub").mkdir()
    (tmp_path / "la.bin").write_bytes(b"an older LoRA")  # an existing output stays as it was
    argv = ["--ckpt", tmp_path / "c.pt", "--out", tmp_path / "b.bin", "--lora-out", tmp_path / "la.bin"] + opts
    rc, out, err = run(export_cmd, [str(a).replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert rc == 1 and err.startswith("error: ") and msg in err and out == "", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "la.bin", "sub"]  # no temporary left
    assert (tmp_path / "la.bin").read_bytes() == b"an older LoRA" and not any((tmp_path / "sub").iterdir())


@pytest.mark.parametrize("lora_out", [False, True])
def test_export_refuses_non_finite_weights(nano80, tmp_path, capsys, lora_out, tiny, save_ckpt):
    m = attach_lora(tiny(), rank=2, alpha=4)
    with torch.no_grad():
        m.layers[1].w2.weight[3, 5] = float("nan")  # a run that diverged
    save_ckpt(tmp_path / "c.pt", m, nano80, lora={"rank": 2, "alpha": 4, "dropout": 0.0})
    extra = ["--lora-out", tmp_path / "la.bin"] if lora_out else []
    rc, _, err = run(export_cmd, ["--ckpt", tmp_path / "c.pt", "--out", tmp_path / "b.bin"] + extra, capsys)
    assert rc == 1 and err.startswith("error: ") and err.count("\n") == 1
    assert "layers.1.w2.weight" in err and "non-finite" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.skipif(sys.platform == "win32", reason="no pid probe there: nothing is removed")
def test_export_removes_what_a_killed_export_left(nano80, tmp_path, capsys, tiny, save_ckpt):
    save_ckpt(tmp_path / "c.pt", tiny(), nano80)
    dead = dead_pid()
    stale = tmp_path / f".f.bin.{dead}.export.tmp"
    kept = [f".f.bin.{os.getppid()}.export.tmp",  # a live export's (the test's parent process)
            f".g.bin.{dead}.export.tmp",  # another destination's
            f".f.bin.{dead}.export.tmp.bak", f".f.bin.x{dead}.export.tmp", f"f.bin.{dead}.export.tmp",
            f".f.bin.{dead}.tmp"]  # not names export makes
    for name in [stale.name] + kept:
        (tmp_path / name).write_bytes(b"half a model")
    rc, out, err = run(export_cmd, ["--ckpt", tmp_path / "c.pt", "--out", tmp_path / "f.bin"], capsys)
    # a note, so on standard error like every other note; standard output keeps the results
    assert rc == 0 and f"note: removed {stale}: left by an export that was interrupted (pid {dead})" in err
    assert "note:" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["c.pt", "f.bin"])
    load_bin(tmp_path / "f.bin")


def make_special(path: Path, kind: str) -> Path:
    """Something other than a regular file at path (or, for a device node where only root
    may make one, /dev/null itself): export must refuse it, never replace it. Returns it."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        path.with_name("target.bin").write_bytes(b"the link's target")
        path.symlink_to(path.with_name("target.bin"))
    elif kind == "dangling symlink":
        path.symlink_to(path.with_name("nowhere.bin"))
    else:  # /dev/null's device numbers: renamed over, the node is gone
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:  # (was: skipped)
            return Path("/dev/null")
    return path


def special_kind(path: Path) -> str:
    st = path.lstat()
    return ("fifo" if stat.S_ISFIFO(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode)
            else "device" if stat.S_ISCHR(st.st_mode) else "other")


@pytest.mark.skipif(sys.platform == "win32", reason="no FIFOs, device nodes or (unprivileged) symlinks there")
@pytest.mark.parametrize("opt", ["--out", "--lora-out"])
@pytest.mark.parametrize("kind", ["fifo", "symlink", "dangling symlink", "device"])
def test_export_refuses_to_replace_what_is_not_a_regular_file(nano80, tmp_path, capsys, opt, kind, lora_ckpt):
    ckpt = lora_ckpt(tmp_path, nano80)
    special = make_special(tmp_path / "special.bin", kind)
    before = sorted(p.name for p in tmp_path.iterdir())
    outs = {"--out": tmp_path / "b.bin", "--lora-out": tmp_path / "la.bin", opt: special}
    rc, out, err = run(export_cmd, ["--ckpt", ckpt, "--out", outs["--out"], "--lora-out", outs["--lora-out"]], capsys)
    assert rc == 1 and out == "" and err.count("\n") == 1, err
    assert err == f"error: {opt} {special}: exists and is not a regular file; not replacing it\n"
    assert special_kind(special) == kind.split()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temporary left
    if kind == "symlink":
        assert (tmp_path / "target.bin").read_bytes() == b"the link's target"


@pytest.mark.parametrize("lora_out", [False, True])
def test_export_keeps_the_mode_of_a_replaced_file(nano80, tmp_path, capsys, lora_out, lora_ckpt):
    ckpt = lora_ckpt(tmp_path, nano80)
    old_umask = os.umask(0o022)
    try:
        private = tmp_path / ("la.bin" if lora_out else "b.bin")
        private.write_bytes(b"an older export")
        private.chmod(0o600)
        argv = ["--ckpt", ckpt, "--out", tmp_path / "b.bin"] + (["--lora-out", tmp_path / "la.bin"] if lora_out else [])
        rc, _, err = run(export_cmd, argv, capsys)
        assert rc == 0, err
        assert stat.S_IMODE(private.stat().st_mode) == 0o600 and private.read_bytes() != b"an older export"
        if lora_out:  # a new file gets what a plain open() would give it
            assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o644
    finally:
        os.umask(old_umask)


KILL_MID_WRITE = """
import os, signal, sys
from pathlib import Path
from nano_format import write_atomically
from nano_train.export import _staged

def chunks():
    yield b"half a model"
    os.kill(os.getpid(), signal.SIGKILL)

write_atomically(_staged(Path(sys.argv[1])), chunks())
"""


@pytest.mark.skipif(sys.platform == "win32", reason="no pid probe there: nothing is removed")
@pytest.mark.parametrize("name", ["f.bin", "m" * 240 + ".bin"])
def test_export_removes_the_partial_file_of_an_export_killed_while_writing(nano80, tmp_path, capsys, name, tiny,
                                                                           save_ckpt):
    """An export writes its staged file through write_atomically, so a kill during the
    write leaves write_atomically's temporary file beside the staged name, not the
    staged file itself: that is what the next export must find and remove."""
    save_ckpt(tmp_path / "c.pt", tiny(), nano80)
    out = tmp_path / name
    child = subprocess.run([sys.executable, "-c", KILL_MID_WRITE, str(out)], timeout=120)
    assert child.returncode == -9
    left = [p for p in tmp_path.iterdir() if p.name != "c.pt"]
    assert len(left) == 1 and left[0].name.startswith("..") and left[0].name.endswith(".tmp"), left
    rc, stdout, err = run(export_cmd, ["--ckpt", tmp_path / "c.pt", "--out", out], capsys)
    assert rc == 0, err
    assert f"note: removed {left[0]}: left by an export that was interrupted (pid " in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["c.pt", name])
    load_bin(out)


@pytest.mark.parametrize("lengths", [(240, 250), (255, 255)])
def test_export_takes_output_names_up_to_the_length_limit(nano80, tmp_path, capsys, lengths, lora_ckpt):
    """The staged names must fit the file-name limit (255 bytes) whatever --out's length."""
    ckpt = lora_ckpt(tmp_path, nano80)
    base, lora = ("b" * (lengths[0] - 4) + ".bin"), ("l" * (lengths[1] - 4) + ".bin")
    rc, _, err = run(export_cmd, ["--ckpt", ckpt, "--out", tmp_path / base, "--lora-out", tmp_path / lora], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["c.pt", base, lora])
    load_lora_bin(load_bin(tmp_path / base)[0], tmp_path / lora)


def test_export_errors_name_the_output_not_the_temporary_file(nano80, tmp_path, capsys, monkeypatch, tiny, save_ckpt):
    save_ckpt(tmp_path / "c.pt", tiny(), nano80)
    out = tmp_path / "f.bin"

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # the staged write fails once the data is written
    rc, _, err = run(export_cmd, ["--ckpt", tmp_path / "c.pt", "--out", out], capsys)
    assert rc == 1 and err == f"error: [Errno 28] No space left on device: '{out}'\n", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    monkeypatch.undo()
    if Path("/proc/self").is_dir():  # a folder where no file can be made (as root too)
        rc, _, err = run(export_cmd, ["--ckpt", tmp_path / "c.pt", "--out", "/proc/x.bin"], capsys)
        assert rc == 1 and err.startswith("error: --out /proc/x.bin: ") and err.count("\n") == 1, err
        assert ".tmp" not in err and ".x.bin" not in err


# ---------------------------------------------------------------------------
# export: standard output, Ctrl-C and option messages


def test_export_says_what_is_wrong_with_its_options(nano80, tmp_path, capsys, tiny, save_ckpt):
    """--ckpt that exists but is not a file is not "not found"; a bad --group-size is
    told as the option it is, not as the file's header field."""
    save_ckpt(tmp_path / "c.pt", tiny(), nano80)
    (tmp_path / "d.pt").mkdir()
    q8 = ["--ckpt", tmp_path / "c.pt", "--quant", "q8_0", "--group-size"]
    cases = [
        (["--ckpt", tmp_path / "d.pt"], f"error: --ckpt {tmp_path / 'd.pt'}: is a directory, not a checkpoint file"),
        (q8 + ["0"], "error: --group-size: must be at least 1, got 0"),
        (q8 + ["-3"], "error: --group-size: must be at least 1, got -3"),
        (q8 + ["7"], "error: --group-size: 7 does not divide n_embd = 32, a quantized row length"),
        (["--ckpt", tmp_path / "missing.pt"], f"error: --ckpt {tmp_path / 'missing.pt'}: checkpoint not found"),
    ]
    if os.path.exists("/dev/zero"):
        cases.append((["--ckpt", "/dev/zero"], "error: --ckpt /dev/zero: is a character device, not a checkpoint file"))
    for argv, want in cases:
        rc, out, err = run(export_cmd, argv + ["--out", tmp_path / "o.bin"], capsys)
        assert rc == 1 and out == "" and err == want + "\n", (argv, err)
        assert "offset" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "d.pt"]


class _FullDisk(io.TextIOWrapper):
    """Standard output on a full disk (`> /dev/full`)."""

    def write(self, text):
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize("stdout, message", [(_BrokenPipe, ""), (_FullDisk, "No space left on device")])
def test_export_writes_every_file_even_when_standard_output_fails(nano80, tmp_path, capsys, monkeypatch,
                                                                  stdout, message, lora_ckpt):
    """The summary is printed once every file is in place: a reader that went away is
    quiet (as in sample), a full disk is one line saying the files were written."""
    ckpt = lora_ckpt(tmp_path, nano80)
    base, lora = tmp_path / "b.bin", tmp_path / "la.bin"
    with open(tmp_path / "stdout", "wb") as f:
        monkeypatch.setattr(sys, "stdout", stdout(f, encoding="utf-8"))
        rc = export_cmd.main([str(a) for a in ["--ckpt", ckpt, "--out", base, "--lora-out", lora]])
    err = capsys.readouterr().err
    assert rc == 1
    if message:
        assert err == (f"error: writing standard output: {message} "
                       f"(the export itself succeeded: {base} and {lora} written)\n")
    else:
        assert err == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "c.pt", "la.bin", "stdout"]
    load_lora_bin(load_bin(base)[0], lora)


def _closed_pipe() -> int:
    """The write end of a pipe whose reader has gone."""
    r, w = os.pipe()
    os.close(r)
    return w


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
@pytest.mark.parametrize("where", ["/dev/full", "closed pipe"])
def test_export_as_a_program_to_a_failing_standard_output(nano80, tmp_path, where, tiny, save_ckpt):
    """As above, in a real process: the interpreter's last flush stays quiet too."""
    save_ckpt(tmp_path / "c.pt", tiny(), nano80)
    out = tmp_path / "f.bin"
    stdout = open(where, "wb") if where == "/dev/full" else os.fdopen(_closed_pipe(), "wb")
    with stdout:
        p = subprocess.run([sys.executable, "-m", "nano_train.export", "--ckpt", str(tmp_path / "c.pt"),
                            "--out", str(out)], stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120)
    want = (f"error: writing standard output: No space left on device (the export itself succeeded: {out} written)\n"
            if where == "/dev/full" else "")
    assert p.returncode == 1 and p.stderr == want, p.stderr
    assert sorted(q.name for q in tmp_path.iterdir()) == ["c.pt", "f.bin"]
    load_bin(out)


INTERRUPT_EXPORT = """
import os, signal, sys, time
from nano_train import convert, export

where = sys.argv[1]

def interrupt():
    os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, delivered at once
    time.sleep(5)  # (not reached unless the signal is held back)

if where == "staged":  # once the LoRA and the base are both written to their staged files
    real_export_bin = convert.export_bin

    def export_bin(*args, **kwargs):
        info = real_export_bin(*args, **kwargs)
        interrupt()
        return info

    convert.export_bin = export_bin
else:  # between the renames that move the files into place
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        if not str(dst).endswith(".export.tmp"):  # not the writes to the staged files
            os.kill(os.getpid(), signal.SIGINT)

    os.replace = replace
sys.exit(export.main(sys.argv[2:]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="no SIGINT to send to a process there")
@pytest.mark.parametrize("where", ["staged", "renaming"])
def test_export_interrupted_by_ctrl_c(nano80, tmp_path, where, lora_ckpt):
    """Ctrl-C: one line, exit status 130, no traceback; every file or none (the staged
    files removed; held back while they are renamed into place)."""
    ckpt = lora_ckpt(tmp_path, nano80)
    base, lora = tmp_path / "b.bin", tmp_path / "la.bin"
    p = subprocess.run([sys.executable, "-c", INTERRUPT_EXPORT, where, "--ckpt", str(ckpt), "--out", str(base),
                        "--lora-out", str(lora)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 130 and "Traceback" not in p.stderr, p.stderr
    assert p.stdout == ""
    if where == "staged":
        assert p.stderr == "\nerror: interrupted; nothing was written\n"
        assert sorted(q.name for q in tmp_path.iterdir()) == ["c.pt"]
    else:
        assert p.stderr == f"\nerror: interrupted; the export was complete: {base} and {lora} written\n"
        assert sorted(q.name for q in tmp_path.iterdir()) == ["b.bin", "c.pt", "la.bin"]
        load_lora_bin(load_bin(base)[0], lora)


# ---------------------------------------------------------------------------
# sample: a prompt that is not UTF-8, exit statuses


def test_sample_refuses_a_prompt_that_is_not_utf8(shared_file, capsys, monkeypatch):
    """Its bytes would be lost, not tokenized: one line naming where and the offset.
    (Python hands bytes of an argument that are not UTF-8 over as lone surrogates, and
    reads standard input with surrogateescape in the C or POSIX locale.)"""
    sort6 = ["-m", str(shared_file("fixtures/sort6_f32.bin")), "--seq2seq"]
    rc, out, err = run(sample_cmd, sort6 + ["-p", "\udcff\udcfe"], capsys)  # -p $'\xff\xfe'
    assert out == "" and one_error_line(rc, err, "error: -p: the prompt argument is not UTF-8: byte 0xff at offset 0")
    rc, out, err = run(sample_cmd, sort6 + ["-p", "25\udcc3"], capsys)  # a character cut short
    assert out == "" and one_error_line(rc, err, "error: -p: the prompt argument is not UTF-8: byte 0xc3 at offset 2")
    for errors in ("strict", "surrogateescape"):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"2512\xfe12\n"), errors=errors))
        rc, out, err = run(sample_cmd, sort6 + ["-p", "-"], capsys)
        assert out == "" and one_error_line(rc, err, "error: -p -: standard input is not UTF-8: byte 0xfe at offset 4")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"251212\r\n")))  # read as text mode would
    rc, out, err = run(sample_cmd, sort6 + ["-p", "-"], capsys)
    assert rc == 0 and out == "112225\n", err


def test_sample_exit_statuses_are_as_documented(capsys):
    """Bad input is exit status 1 (above); a command line argparse cannot parse is
    argparse's usage and exit status 2, and the documentation says so."""
    for argv in (["-p", "x"], ["-m", "m.bin", "-p", "x", "--no-such-option"], ["-m", "m.bin", "-p", "x", "-n", "N"]):
        with pytest.raises(SystemExit) as e:
            sample_cmd.main(argv)
        assert e.value.code == 2 and "usage:" in capsys.readouterr().err
    for doc in (sample_cmd.__doc__, export_cmd.__doc__):
        assert "exit status 2" in " ".join(doc.split())
    readme = " ".join((Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8").split())
    assert "gets the usage and exit status 2" in readme
