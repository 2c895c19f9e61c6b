"""The `nano` program: every command, the chat through a pipe, every bad-argument path.

Reference defects: 6 (every shipped binary has a test that runs it) and 17
(full command-line options; every sampler setting works).
"""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest


def test_help_and_version(cli):
    r = cli("--help")
    assert r.returncode == 0 and "nano run -m MODEL" in r.stdout and "seq2seq" in r.stdout
    # every option there is, named (--version and bench's long names once were not)
    for option in ("--version", "--prompt-tokens", "--tokens", "--causal", "--ids", "--portable"):
        assert option in r.stdout, option
    r = cli("bench", "-m", "nowhere.bin", "--prompt-tokens", "2", "--tokens", "2")  # the long names work
    assert r.returncode == 1 and "nowhere.bin" in r.stderr, r
    for sub in ("run", "info", "seq2seq", "bench"):
        r = cli(sub, "--help")
        assert r.returncode == 0 and "usage: nano" in r.stdout, sub
    r = cli("--version")
    assert r.returncode == 0 and "abi" in r.stdout
    r = cli()
    assert r.returncode == 2 and "usage: nano" in r.stderr


def test_seq2seq_sorts(cli, sort6_path):
    r = cli("seq2seq", "-m", sort6_path, "251212")
    assert (r.returncode, r.stdout) == (0, "112225\n"), r.stderr
    r = cli("seq2seq", "-m", sort6_path, "--threads", "2", "987654")
    assert r.stdout == "456789\n"


def test_seq2seq_batch_from_stdin(cli, sort6_path):
    """INPUT '-': one input per line, one answer per line, each as its own run."""
    inputs = ["251212", "987654", "", "000111", "135790"]
    r = cli("seq2seq", "-m", sort6_path, "-", input="\n".join(inputs[:3]) + "\r\n" + "\n".join(inputs[3:]))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[-1] == "" and len(lines) == len(inputs) + 1  # an empty line answers an empty line
    for text, got in zip(inputs, lines):
        want = cli("seq2seq", "-m", sort6_path, text).stdout.rstrip("\n") if text else ""
        assert got == want, (text, got)
    assert lines[:2] == ["112225", "456789"]
    assert cli("seq2seq", "-m", sort6_path, "-", input="").stdout == ""  # no input, no output
    # a long line (longer than the line buffer starts) is read whole and refused by its number;
    # it gets an empty answer line and the batch goes on, then the status says something failed
    r = cli("seq2seq", "-m", sort6_path, "-", input="123456\n" + "7" * 1000 + "\n987654\n")
    assert r.returncode == 1 and r.stdout == "123456\n\n456789\n"
    assert r.stderr.startswith("nano: error: line 2: 1000 tokens; the context holds at most 6"), r.stderr


def test_info(cli, psycho_path, sort6_path):
    r = cli("info", psycho_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for needle in ("2025.12", "q8_0 (code 0x0A), group size 16", "block_size 512", "vocab_size 4096",
                   "n_layer 8", "n_kv_head 2", "n_hidden 96", "tied classifier", "trie, 4096 tokens",
                   "<|unknown|>", "tok_embd", "wq.7", "rope_cos", "runnable      yes"):
        assert needle in out, needle
    r = cli("info", sort6_path)
    assert r.returncode == 0 and "causal (implied" in r.stdout and "f32" in r.stdout


def test_info_on_other_kinds(cli, h, tmp_path):
    import nano_format as nf
    from nano_format.plan import lora_params

    lc = nf.LoraConfig(rank=2, alpha=4, n_layer=2, n_embd=16, n_head=4, n_kv_head=2, n_hidden=32)
    path = tmp_path / "lora.bin"
    nf.write_lora(path, lc, {p.name: np.zeros(p.shape, np.float32) for p in lora_params(lc)})
    r = cli("info", path)
    assert r.returncode == 0 and "rank 2, alpha 4" in r.stdout and "wo_B" in r.stdout and "tokenizer     none" in r.stdout
    ext = tmp_path / "ext.bin"
    ext.write_bytes(h.model_bytes(layout="2026.101", attention=1, position=1))
    r = cli("info", ext)
    assert r.returncode == 0 and "full" in r.stdout and "learned" in r.stdout and "pos_embd" in r.stdout


def test_run_greedy_ids_match_the_api(cli, nano, psycho_path):
    r = cli("run", "-m", psycho_path, "-p", "人的心理", "-t", "0", "-n", "32", "--ids", "--threads", "1")
    assert r.returncode == 0, r.stderr
    ids = [int(x) for x in r.stdout.strip().split(",")]
    m = nano.load(psycho_path)
    prompt = m.tokenizer.encode("人的心理")
    assert ids[:len(prompt)] == prompt
    assert ids[len(prompt):] == m.context().greedy(prompt, 32)
    assert "4 prompt tokens, 32 generated" in r.stderr


def test_run_text_and_profile(cli, psycho_path):
    r = cli("run", "-m", psycho_path, "-p", "人的心理", "-t", "0.8", "-k", "40", "--top-p", "0.9",
            "--min-p", "0.01", "-r", "1.1", "-s", "7", "-n", "24", "--profile", "--threads", "2", "--ctx", "128")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip()) > 0
    assert "tokens/s" in r.stderr and "peak memory" in r.stderr
    again = cli("run", "-m", psycho_path, "-p", "人的心理", "-t", "0.8", "-k", "40", "--top-p", "0.9",
                "--min-p", "0.01", "-r", "1.1", "-s", "7", "-n", "24", "--threads", "1", "--ctx", "128")
    assert again.stdout == r.stdout  # seeded, and thread-count independent
    other = cli("run", "-m", psycho_path, "-p", "人的心理", "-t", "0.8", "-k", "40", "-s", "8", "-n", "24")
    assert other.stdout != r.stdout


def test_profile_counts_threads_and_tokens_in_words(cli, psycho_path):
    for threads, said in (("1", ", 1 thread, "), ("2", ", 2 threads, ")):
        r = cli("run", "-m", psycho_path, "-p", "人的心理", "-t", "0", "-n", "4", "--profile", "--threads", threads)
        assert r.returncode == 0, r.stderr
        assert said in r.stderr and ", 4 tokens generated, " in r.stderr, r.stderr
    r = cli("run", "-m", psycho_path, "-p", "人", "-t", "0", "-n", "1", "--profile")  # (was "1 tokens")
    assert "nano: prompt 1 token in " in r.stderr and ", 1 token generated, " in r.stderr, r.stderr


def test_run_top_k_one_is_greedy(cli, psycho_path):
    """Defect 17: top_k is applied (k = 1 at any temperature is the argmax)."""
    a = cli("run", "-m", psycho_path, "-p", "意识", "-t", "5", "-k", "1", "-n", "20", "--ids", "-s", "3")
    b = cli("run", "-m", psycho_path, "-p", "意识", "-t", "0", "-n", "20", "--ids")
    assert a.returncode == 0 and a.stdout == b.stdout


def test_prompt_from_stdin_and_instruct(cli, psycho_path):
    a = cli("run", "-m", psycho_path, "-p", "-", "-t", "0", "-n", "16", "--ids", input="人的心理")
    b = cli("run", "-m", psycho_path, "-p", "人的心理", "-t", "0", "-n", "16", "--ids")
    assert a.returncode == 0 and a.stdout == b.stdout
    r = cli("run", "-m", psycho_path, "-p", "你是谁", "--instruct", "-t", "0", "-n", "16", "--ids")
    ids = [int(x) for x in r.stdout.strip().split(",")]
    assert r.returncode == 0 and ids[0] == 4 and 5 in ids  # <|instruct_mark|> ... <|response_mark|>


def test_instruct_takes_an_empty_prompt_as_nano_train_sample_does(cli, h, psycho_path):
    """SFT data may hold an empty question: with --instruct, -p '' and an empty standard
    input are the template around nothing, and print what nano_train.sample prints."""
    import subprocess
    import sys

    args = ["-m", psycho_path, "--instruct", "-p", "", "-t", "0", "-n", "24"]
    want = subprocess.run([sys.executable, "-m", "nano_train.sample", *args, "--threads", "1"], capture_output=True,
                          text=True, env=h.clean_env(), timeout=120)
    assert want.returncode == 0 and want.stdout, want.stderr
    got = cli("run", *args)
    assert got.returncode == 0 and got.stdout == want.stdout, got.stderr
    piped = cli("run", *args[:3], "-p", "-", *args[5:], input="\n")
    assert piped.returncode == 0 and piped.stdout == want.stdout, piped.stderr
    ids = cli("run", *args, "--ids")
    assert ids.stdout.split(",")[:2] == ["4", "5"]  # <|instruct_mark|> <|response_mark|>, nothing between


def test_characters_the_vocabulary_lacks_get_a_note(cli, psycho_path):
    """Each became <|unknown|>: a note on stderr counts them (as nano_train.sample's),
    for the prompt and for each chat line; the output is the same as without the note."""
    r = cli("run", "-m", psycho_path, "-p", "人的心理\U0001F600\U0001F601", "-t", "0", "-n", "8")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    assert "nano: note: prompt: 2 characters are not in the vocabulary and became <|unknown|>" in r.stderr
    r = cli("run", "-m", psycho_path, "-t", "0", "-n", "4", input="人的心理\n你\U0001F600\n")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["nano: note: line 2: 1 character is not in the vocabulary and became <|unknown|>"]
    r = cli("run", "-m", psycho_path, "-p", "人的心理", "-t", "0", "-n", "8")
    assert r.returncode == 0 and "note" not in r.stderr


def test_prompt_from_stdin_is_the_text_without_its_final_newline(cli, psycho_path):
    """As nano_train.sample: `echo TEXT | nano run -p -` is TEXT, not TEXT + a newline token."""
    a = cli("run", "-m", psycho_path, "-p", "-", "-t", "0", "-n", "8", "--ids", input="人的心理\n")
    b = cli("run", "-m", psycho_path, "-p", "人的心理", "-t", "0", "-n", "8", "--ids")
    assert a.returncode == 0 and a.stdout == b.stdout, a.stderr
    for text in ("", "\n\n"):
        r = cli("run", "-m", psycho_path, "-p", "-", input=text)
        assert r.returncode == 2 and "nano: error: -p -: the prompt is empty" in r.stderr, r.stderr
    r = cli("run", "-m", psycho_path, "-p", "-", input="ab\0cd")
    assert r.returncode == 2 and "NUL byte (at byte 2)" in r.stderr, r.stderr


def test_prompt_from_stdin_reads_windows_and_old_mac_line_breaks_as_sample_does(cli, psycho_path):
    """CRLF and a lone CR are line breaks, read as \\n, as nano_train.sample (and prepare)
    read them: the same prompt ids as the LF text, and the same greedy text as sample's.
    (A CR was kept as a character: another prompt, and a different answer, from C.)"""
    import subprocess
    import sys

    windows, unix = "人的\r\n心理\r还是\r\n\r\n", "人的\n心理\n还是"
    a = cli("run", "-m", psycho_path, "-p", "-", "-t", "0", "-n", "8", "--ids", input=windows)
    b = cli("run", "-m", psycho_path, "-p", unix, "-t", "0", "-n", "8", "--ids")
    assert a.returncode == 0 and a.stdout == b.stdout and a.stderr == b.stderr, (a, b)
    text = cli("run", "-m", psycho_path, "-p", "-", "-t", "0", "-n", "8", input=windows)
    ours = subprocess.run([sys.executable, "-m", "nano_train.sample", "-m", str(psycho_path), "-p", "-", "-t", "0",
                           "-n", "8"], input=windows.encode(), capture_output=True)
    assert ours.returncode == 0 and text.stdout == ours.stdout.decode(), (text, ours)


def test_allow_special_reads_special_token_text_in_the_prompt_as_sample_does(cli, psycho_path):
    """--allow-special: '<|bos|>' in a continuation prompt is the bos token (how to start a
    document with a model trained with --bos_eos), in nano run and nano_train.sample alike;
    without it, the text's characters. Not with --instruct, nor the chat (instruct mode)."""
    import subprocess
    import sys

    from nano_tokenizer import Tokenizer

    tok = Tokenizer.load(psycho_path)
    prompt = "<|bos|>人的"
    special = cli("run", "-m", psycho_path, "-p", prompt, "--allow-special", "-t", "0", "-n", "4", "--ids")
    plain = cli("run", "-m", psycho_path, "-p", prompt, "-t", "0", "-n", "4", "--ids")
    ids = [int(t) for t in special.stdout.split(",")]
    assert special.returncode == 0 and ids[:3] == tok.encode(prompt, allow_special=True) == [tok.bos_id, *tok.encode(
        "人的")], special
    assert [int(t) for t in plain.stdout.split(",")][:-4] == tok.encode(prompt) and tok.bos_id not in tok.encode(prompt)
    text = cli("run", "-m", psycho_path, "-p", prompt, "--allow-special", "-t", "0", "-n", "4")
    ours = subprocess.run([sys.executable, "-m", "nano_train.sample", "-m", str(psycho_path), "-p", prompt,
                           "--allow-special", "-t", "0", "-n", "4"], capture_output=True)
    assert text.returncode == 0 and text.stdout == ours.stdout.decode() == tok.decode(ids[3:]) + "\n", (text, ours)
    for args, stdin in ((("-p", "x", "--instruct"), None), ((), "x\n")):
        r = cli("run", "-m", psycho_path, "--allow-special", *args, input=stdin)
        assert r.returncode == 2 and "--allow-special is for a continuation prompt" in r.stderr, r
    r = subprocess.run([sys.executable, "-m", "nano_train.sample", "-m", str(psycho_path), "-p", "x", "--instruct",
                        "--allow-special"], capture_output=True, text=True)
    assert r.returncode == 2 and "--allow-special is for a continuation prompt" in r.stderr, r


def test_chat_line_longer_than_any_buffer_is_one_question(cli, h, tmp_path):
    """A line of 9,000 bytes is one question (a fixed 8 KiB buffer once made it two, and cut
    a UTF-8 character between them)."""
    model = tmp_path / "long.bin"
    model.write_bytes(h.model_bytes(seed=2, block_size=16384))
    r = cli("run", "-m", model, "-t", "0", "-n", "2", "--ids", input="a" * 8190 + "世" + "b" * 800 + "\nb\n")
    assert r.returncode == 0, r.stderr
    answers = r.stdout.splitlines()
    assert len(answers) == 2 and r.stderr.count("prompt tokens") == 2, r.stderr
    ids = [int(x) for x in answers[0].split(",")]
    assert 1 not in ids  # no <|unknown|>: the character was not split


def test_chat_goes_on_after_a_question_that_fails(cli, psycho_path):
    """A question too long for the context gets its error and an empty answer line; the
    questions after it are still answered, and the exit status reports the failure."""
    r = cli("run", "-m", psycho_path, "--ctx", "16", "-t", "0", "-n", "4", input="心" * 40 + "\n你是谁\n")
    assert r.returncode == 1
    assert "nano: error: line 1:" in r.stderr and "NANO_ERR_CONTEXT_FULL" in r.stderr, r.stderr
    lines = r.stdout.split("\n")
    assert len(lines) == 3 and lines[0] == "" and lines[1] != "", r.stdout


def test_output_that_cannot_be_written_fails(nano_bin, psycho_path, sort6_path):
    """Every command exits 1 when standard output cannot be written (here: a full disk)."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    for args in (("--help",), ("--version",), ("run", "--help"), ("seq2seq", "--help"),
                 ("run", "-m", psycho_path, "-p", "人", "-n", "4"),
                 ("run", "-m", psycho_path, "-p", "人", "-n", "4", "--ids"),
                 ("run", "-m", psycho_path, "-n", "4"),
                 ("info", psycho_path),
                 ("seq2seq", "-m", sort6_path, "251212"),
                 ("bench", "-m", psycho_path, "-p", "4", "-n", "4")):
        with open("/dev/full", "w") as full:
            r = subprocess.run([str(nano_bin), *map(str, args)], stdout=full, stderr=subprocess.PIPE,
                               input="你是谁\n", text=True, timeout=120,
                               env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})
        assert r.returncode == 1, args
        assert "nano: error: writing standard output" in r.stderr, (args, r.stderr)


def test_run_on_a_full_attention_model_is_seq2seq(cli, h, tmp_path):
    """As nano_train.sample: a file that records full attention runs one seq2seq forward
    (not token-by-token generation); in a chat, one per line."""
    model = tmp_path / "full.bin"
    model.write_bytes(h.model_bytes(seed=4, layout="2026.101", attention=1))
    want = cli("seq2seq", "-m", model, "abcab")
    assert want.returncode == 0, want.stderr
    r = cli("run", "-m", model, "-p", "abcab", "-t", "0.7", "-n", "3")
    assert (r.returncode, r.stdout) == (0, want.stdout) and "full attention" in r.stderr, r.stderr
    r = cli("run", "-m", model, input="abcab\n\nba\n")
    assert r.returncode == 0 and r.stdout == want.stdout + "\n" + cli("seq2seq", "-m", model, "ba").stdout
    # the options it has no use for are named, whichever spelling was given; the others apply
    r = cli("run", "-m", model, "-p", "abcab", "-t", "0.7", "--ids", "--max-tokens", "3", "--instruct", "-s", "1",
            "--portable", "--threads", "1")
    assert (r.returncode, r.stdout) == (0, want.stdout), r
    assert r.stderr.endswith("not used for it: --temperature, --max-tokens, --seed, --instruct, --ids\n"), r.stderr
    assert "not used" not in cli("run", "-m", model, "-p", "abcab", "--portable").stderr
    r = cli("run", "-m", model, "-p", "abcab", "--ctx", "999")
    assert r.returncode == 2 and "--ctx: 999 is larger than the model's block size 16" in r.stderr, r
    r = cli("run", "-m", model, "-p", "0123456", "--ctx", "4")
    assert r.returncode == 1 and "7 tokens; the context holds at most 4" in r.stderr, r


def test_chat_through_a_pipe(cli, psycho_path):
    r = cli("run", "-m", psycho_path, "-t", "0", "-n", "12", input="你是谁\n\n心理是什么\n")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    # one output line per input line, as `nano seq2seq -`: the empty line gets an empty line
    assert len(lines) == 4 and lines[1] == "" and lines[3] == "" and lines[0] and lines[2], r.stdout
    single = cli("run", "-m", psycho_path, "-p", "你是谁", "--instruct", "-t", "0", "-n", "12")
    assert lines[0] == single.stdout.rstrip("\n")
    assert cli("run", "-m", psycho_path, input="").returncode == 0  # end of input: done


# ---------------------------------------------------------------------------
# --system: a system text before the instruct-mode question (nano_train's data.with_system)

SYSTEM = "你是心理学家"


def _escaped(text: str) -> str:
    """An answer as the chat writes it to a pipe (one line: README "One answer per line")."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def test_system_text_goes_before_the_question(cli, psycho_path):
    """`--instruct --system T -p P` asks the instruct template TEXT "\n" PROMPT, as
    `prepare sft --system prepend` trained the model; an empty TEXT adds nothing."""
    run = ("run", "-m", psycho_path, "-t", "0", "-n", "16")
    joined = cli(*run, "--instruct", "-p", SYSTEM + "\n你是谁", "--ids")
    got = cli(*run, "--instruct", "--system", SYSTEM, "-p", "你是谁", "--ids")
    assert got.returncode == 0 and joined.returncode == 0, got.stderr
    assert got.stdout == joined.stdout and got.stderr == joined.stderr
    plain = cli(*run, "--instruct", "-p", "你是谁", "--ids")
    n_plain = int(plain.stderr.split()[1])
    assert int(got.stderr.split()[1]) > n_plain  # "nano: N prompt tokens, ...": the system text's are there
    # the prompt from standard input gets it too; printed text and ids alike
    assert cli(*run, "--instruct", "--system", SYSTEM, "-p", "-", "--ids", input="你是谁\n").stdout == joined.stdout
    text = cli(*run, "--instruct", "--system", SYSTEM, "-p", "你是谁")
    assert text.returncode == 0 and text.stdout == cli(*run, "--instruct", "-p", SYSTEM + "\n你是谁").stdout
    # an empty system text adds nothing (not even the line break)
    assert cli(*run, "--instruct", "--system", "", "-p", "你是谁", "--ids").stdout == plain.stdout


def test_text_that_is_not_utf8_is_refused(cli, psycho_path, sort6_path):
    """A prompt, --system text, chat line or seq2seq input that is not UTF-8 is bad input, as
    nano_train.sample has it (was: each such byte given to the model as <|unknown|>, with a
    note): the error names the byte and its offset; the chat and the batch go on."""
    bad = "\udcff"  # the byte 0xFF as an argument (os.fsencode)
    run = ("run", "-m", psycho_path, "-t", "0", "-n", "4")
    for args, line in [(("-p", "心" + bad), "-p: the prompt is not UTF-8: byte 0xff at offset 3"),
                       (("--instruct", "--system", "心" + bad, "-p", "你"), "--system: the text is not UTF-8: byte 0xff "
                                                                          "at offset 3")]:
        r = cli(*run, *args)
        assert (r.returncode, r.stdout, r.stderr) == (1, "", f"nano: error: {line}\n"), args
    r = cli(*run, "-p", "-", input=b"\xe4\xbd\xa0\xc0\x80")
    assert (r.returncode, r.stdout) == (1, "") and r.stderr == ("nano: error: -p -: standard input is not UTF-8: "
                                                               "byte 0xc0 at offset 3\n")
    r = cli(*run, input=b"\xe4\xbd\xa0\xed\xa0\x80\n\xe4\xbd\xa0\n")  # a surrogate's bytes, then a good line
    lines = r.stdout.split("\n")
    assert r.returncode == 1 and lines[0] == "" and lines[1] and len(lines) == 3
    assert r.stderr == "nano: error: line 1: the line is not UTF-8: byte 0xed at offset 3\n"
    r = cli("seq2seq", "-m", sort6_path, "25" + bad)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", "nano: error: INPUT is not UTF-8: byte 0xff at offset 2\n")
    r = cli("seq2seq", "-m", sort6_path, "-", input=b"25\xff\n251212\n")
    assert (r.returncode, r.stdout) == (1, "\n112225\n")
    assert r.stderr == "nano: error: line 1: the line is not UTF-8: byte 0xff at offset 2\n"


def test_chat_with_system_answers_each_line_as_a_prompt_with_system(cli, psycho_path):
    """The chat (instruct mode) puts the system text before every question; an empty line
    stays an empty line, and a line with a NUL byte is still that line's error."""
    lines = ["你是谁", "", "心理是什么", "人的心理"]
    r = cli("run", "-m", psycho_path, "--system", SYSTEM, "-t", "0", "-n", "12", input="\n".join(lines) + "\n")
    assert r.returncode == 0, r.stderr
    answers = r.stdout.split("\n")
    assert len(answers) == len(lines) + 1 and answers[-1] == ""
    for line, answer in zip(lines, answers):
        if not line:
            assert answer == ""
            continue
        single = cli("run", "-m", psycho_path, "--instruct", "--system", SYSTEM, "-p", line, "-t", "0", "-n", "12")
        assert single.returncode == 0 and answer == _escaped(single.stdout[:-1]), line
    without = cli("run", "-m", psycho_path, "-t", "0", "-n", "12", input="\n".join(lines) + "\n")
    assert without.stdout != r.stdout  # the system text changed the answers
    r = cli("run", "-m", psycho_path, "--system", SYSTEM, "-t", "0", "-n", "4", input=b"a\x00b\n\xe4\xbd\xa0\n")
    assert r.returncode == 1 and "nano: error: line 1: the line holds a NUL byte (at byte 1)" in r.stderr, r.stderr
    single = cli("run", "-m", psycho_path, "--instruct", "--system", SYSTEM, "-p", "你", "-t", "0", "-n", "4")
    assert r.stdout == "\n" + _escaped(single.stdout[:-1]) + "\n"


def test_system_needs_instruct_mode(cli, h, psycho_path, tmp_path):
    """--system in a -p run without --instruct is a usage error (no template to put it in),
    on a full-attention model too; a full-attention model names it as not used."""
    full = tmp_path / "full.bin"
    full.write_bytes(h.model_bytes(seed=4, layout="2026.101", attention=1))
    for model in (psycho_path, full):
        r = cli("run", "-m", model, "--system", SYSTEM, "-p", "abc")
        assert r.returncode == 2 and r.stdout == "", r
        assert r.stderr == ("nano: error: --system needs instruct mode (--instruct with -p, or the chat without "
                            "-p): the system text goes into the instruct template\n(run 'nano --help' for usage)\n")
    r = cli("run", "-m", psycho_path, "-p", "abc", "--instruct", "--system")
    assert r.returncode == 2 and r.stderr.startswith("nano: error: --system: missing value"), r.stderr
    want = cli("seq2seq", "-m", full, "abcab")
    r = cli("run", "-m", full, "--instruct", "--system", "ba", "-p", "abcab")
    assert (r.returncode, r.stdout) == (0, want.stdout), r
    assert r.stderr.endswith("not used for it: --instruct, --system\n"), r.stderr
    r = cli("run", "-m", full, "--system", "ba", input="abcab\n")
    assert (r.returncode, r.stdout) == (0, want.stdout) and r.stderr.endswith("not used for it: --system\n"), r
    assert "--system TEXT" in cli("run", "--help").stdout


def _lora_file(path, seed=0, **kw):
    import nano_format as nf
    from nano_format.plan import lora_params

    lc = nf.LoraConfig(**{**dict(rank=2, alpha=4, n_layer=2, n_embd=16, n_head=4, n_kv_head=2, n_hidden=32), **kw})
    rng = np.random.default_rng(seed)
    nf.write_lora(path, lc, {p.name: rng.standard_normal(p.shape).astype(np.float32) for p in lora_params(lc)})
    return path


def test_run_on_a_full_attention_model_attaches_the_lora(cli, nano, h, tmp_path):
    """`nano run -l LORA` on a full-attention model (seq2seq) attaches the module, as a
    causal model's generation, nano-wss and nano_train.sample do; before, -l was ignored
    there (a missing path even exited 0)."""
    model = tmp_path / "full.bin"
    model.write_bytes(h.model_bytes(seed=4, layout="2026.101", attention=1))
    lora = _lora_file(tmp_path / "l.bin", seed=1)
    m = nano.load(model)
    toks = m.tokenizer.encode("abcab")
    ctx = m.context()
    plain = m.tokenizer.decode(ctx.seq2seq(toks))
    ctx.set_lora(nano.load_lora(lora))
    adapted = m.tokenizer.decode(ctx.seq2seq(toks))
    assert adapted != plain
    r = cli("run", "-m", model, "-l", lora, "-p", "abcab")
    assert (r.returncode, r.stdout) == (0, adapted + "\n"), r.stderr
    r = cli("run", "-m", model, "-l", lora, input="abcab\n")  # the chat's lines too
    assert (r.returncode, r.stdout) == (0, adapted + "\n"), r.stderr
    assert cli("run", "-m", model, "-p", "abcab").stdout == plain + "\n"
    r = cli("run", "-m", model, "-l", tmp_path / "missing.bin", "-p", "abcab")
    assert r.returncode == 1 and "NANO_ERR_IO" in r.stderr and "missing.bin" in r.stderr and r.stdout == ""
    wrong = _lora_file(tmp_path / "wrong.bin", n_layer=3)
    r = cli("run", "-m", model, "-l", wrong, "-p", "abcab")
    assert r.returncode == 1 and "NANO_ERR_LORA_MISMATCH" in r.stderr and str(wrong) in r.stderr


def test_seq2seq_on_a_file_that_does_not_run_is_unsupported(cli, tmp_path):
    """A LoRA module given as the model is NANO_ERR_UNSUPPORTED (what `nano run` and nano-wss
    say), not NANO_ERR_NO_TOKENIZER: what the file is matters before what it lacks."""
    lora = _lora_file(tmp_path / "l.bin")
    for args in (("seq2seq", "-m", lora, "12"), ("seq2seq", "-m", lora, "-"), ("run", "-m", lora, "-p", "x")):
        r = cli(*args, input="12\n")
        assert r.returncode == 1 and "NANO_ERR_UNSUPPORTED" in r.stderr and str(lora) in r.stderr, (args, r.stderr)


def test_run_with_lora(cli, h, tmp_path):
    import nano_format as nf
    from nano_format.plan import lora_params

    model = tmp_path / "m.bin"
    model.write_bytes(h.model_bytes(seed=5, block_size=32))
    lc = nf.LoraConfig(rank=2, alpha=4, n_layer=2, n_embd=16, n_head=4, n_kv_head=2, n_hidden=32)
    rng = np.random.default_rng(0)
    lora = tmp_path / "l.bin"
    nf.write_lora(lora, lc, {p.name: rng.standard_normal(p.shape).astype(np.float32) for p in lora_params(lc)})
    base = cli("run", "-m", model, "-p", "abc", "-t", "0", "-n", "10", "--ids")
    with_lora = cli("run", "-m", model, "-l", lora, "-p", "abc", "-t", "0", "-n", "10", "--ids")
    assert base.returncode == 0 and with_lora.returncode == 0, with_lora.stderr
    assert base.stdout != with_lora.stdout
    bad = tmp_path / "bad_lora.bin"
    nf.write_lora(bad, nf.LoraConfig(rank=2, alpha=4, n_layer=3, n_embd=16, n_head=4, n_kv_head=2, n_hidden=32),
                  {p.name: np.zeros(p.shape, np.float32) for p in lora_params(
                      nf.LoraConfig(rank=2, alpha=4, n_layer=3, n_embd=16, n_head=4, n_kv_head=2, n_hidden=32))})
    r = cli("run", "-m", model, "-l", bad, "-p", "abc", "-n", "3")
    assert r.returncode == 1 and "NANO_ERR_LORA_MISMATCH" in r.stderr and str(bad) in r.stderr


def test_bench(cli, psycho_path, sort6_path):
    r = cli("bench", "-m", psycho_path, "-p", "16", "-n", "16", "--threads", "1")
    assert r.returncode == 0 and "prefill" in r.stdout and "decode" in r.stdout
    # the defaults (128 + 128) shrink to a small model's context; explicit counts do not
    r = cli("bench", "-m", sort6_path)
    assert r.returncode == 0 and "prefill  3 tokens" in r.stdout and "decode   3 tokens" in r.stdout, r.stderr
    assert "the context holds 6 tokens" in r.stderr
    r = cli("bench", "-m", sort6_path, "-p", "2")
    assert r.returncode == 0 and "prefill  2 tokens" in r.stdout and "decode   4 tokens" in r.stdout
    r = cli("bench", "-m", sort6_path, "-n", "10")
    assert r.returncode == 2 and "exceed the context (6)" in r.stderr
    r = cli("bench", "-m", sort6_path, "--ctx", "1")  # the defaults cannot shrink into one token
    assert r.returncode == 2 and "the context holds 1 token, too few to time a prompt and decoding" in r.stderr, r


def _patched(data: bytes, name: str, where: str, value: float) -> bytes:
    """A valid file with one weight made non-finite (the writer refuses them): the first
    value of F32 tensor `name`, or the first scale of Q8_0 tensor `name`."""
    import struct

    import nano_format as nf

    t = next(t for t in nf.read(data).tensors if t.name == name)
    offset = t.offset if where == "value" else t.offset + t.shape[0] * t.shape[1]
    out = bytearray(data)
    struct.pack_into("<f", out, offset, value)
    return bytes(out)


def test_non_finite_weights_are_refused(cli, h, tmp_path, psycho_path):
    """A NaN or an infinity in the weights fails the load (as `nano-format validate` and
    nano_train.convert.load_bin refuse the file): every command reports NANO_ERR_NON_FINITE
    with the file's name; before, `nano info` said nothing and seq2seq printed garbage."""
    files = {
        "f32_nan.bin": _patched(h.model_bytes(seed=6), "norm_final", "value", float("nan")),
        "f32_inf.bin": _patched(h.model_bytes(seed=6, layout="2026.101", attention=1), "wq", "value", float("inf")),
        "q8_nan_scale.bin": _patched(h.model_bytes(seed=6, quant="q8_0"), "wq.1", "scale", float("nan")),
        "psycho_inf_scale.bin": _patched(psycho_path.read_bytes(), "w2.7", "scale", float("-inf")),
    }
    # the loader names the tensor and the element (the first of a Q8_0 scale's group)
    where = {"f32_nan.bin": "norm_final[0] (byte ", "f32_inf.bin": "wq[0][0][0] (byte ",
             "q8_nan_scale.bin": "layers.1.wq[0][0]: the Q8_0 scale of the ",
             "psycho_inf_scale.bin": "layers.7.w2[0][0]: the Q8_0 scale of the 16 values from here"}
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        for args in (("info", path), ("run", "-m", path, "-p", "x"), ("run", "-m", path),
                     ("seq2seq", "-m", path, "ab"), ("bench", "-m", path)):
            r = cli(*args, input="ab\n")
            assert r.returncode == 1 and r.stdout == "", (args, r)
            assert f"nano: error: {path}: " in r.stderr and "(NANO_ERR_NON_FINITE)" in r.stderr, (args, r.stderr)
            assert f"(NANO_ERR_NON_FINITE): {where[name]}" in r.stderr, (args, r.stderr)
    nan_lora = tmp_path / "nan_lora.bin"
    nan_lora.write_bytes(_patched(_lora_file(tmp_path / "l.bin").read_bytes(), "wk_B", "value", float("nan")))
    model = tmp_path / "m.bin"
    model.write_bytes(h.model_bytes(seed=6))
    r = cli("run", "-m", model, "-l", nan_lora, "-p", "ab", "-n", "2")
    assert r.returncode == 1 and f"{nan_lora}: " in r.stderr and "NANO_ERR_NON_FINITE" in r.stderr, r.stderr
    assert "(NANO_ERR_NON_FINITE): wk_B[" in r.stderr, r.stderr


def test_nan_logits_are_each_lines_error(cli, h, tmp_path):
    """Finite weights whose logits overflow to NaN: seq2seq (and `nano run` on such a
    full-attention model) reports NANO_ERR_NON_FINITE instead of printing an argmax read
    off NaN; in a batch each line gets its error and an empty line, like the chat."""
    full = tmp_path / "full.bin"
    full.write_bytes(h.overflowing_model_bytes())
    causal = tmp_path / "causal.bin"
    causal.write_bytes(h.overflowing_model_bytes(layout="2026.1"))
    for args in (("seq2seq", "-m", full, "abcab"), ("run", "-m", full, "-p", "abcab"),
                 ("seq2seq", "-m", causal, "abcab"), ("seq2seq", "-m", full, "--causal", "abcab")):
        r = cli(*args)
        assert r.returncode == 1 and r.stdout == "", (args, r)
        assert "nano: error: seq2seq: " in r.stderr and "(NANO_ERR_NON_FINITE)" in r.stderr, (args, r.stderr)
    for args in (("seq2seq", "-m", full, "-"), ("run", "-m", full), ("run", "-m", causal, "-t", "0", "-n", "3")):
        r = cli(*args, input="abc\n\nba\n")
        assert r.returncode == 1 and r.stdout == "\n\n\n", (args, r)
        assert r.stderr.count("NANO_ERR_NON_FINITE") == 2 and "line 3" in r.stderr, (args, r.stderr)


def test_a_chat_answer_that_fails_halfway_is_still_an_empty_line(cli, h, tmp_path):
    """Logits that turn NaN only from position 4 on (learned positions that overflow
    there): the first new token of an answer is fine, the second fails. Streamed, that
    first token was already written when the error came; a program reading one answer
    per line took it for the answer. Each answer is now written once it has ended well."""
    import nano_format as nf

    config = nf.Config(block_size=32, n_layer=2, n_embd=16, n_head=4, n_kv_head=2, n_hidden=32, vocab_size=48,
                       position=1)
    weights = h.random_weights(config, 0)
    weights["tok_embd"][:] = 2e38
    weights["pos_embd"][:4] = -2e38  # token + position = 0 before position 4, +inf after
    weights["pos_embd"][4:] = 2e38
    model = tmp_path / "late_nan.bin"
    model.write_bytes(nf.to_bytes(config, weights, h.make_vocab(48), layout="2026.101"))
    r = cli("run", "-m", model, "-p", "a", "--instruct", "-t", "0", "-n", "1")  # instruct, a, response: 3 positions
    assert r.returncode == 0 and r.stdout not in ("", "\n"), r  # one token is fine
    r = cli("run", "-m", model, "-t", "0", "-n", "10", input="a\n\nb\n")
    assert r.returncode == 1 and r.stdout == "\n\n\n", r
    assert r.stderr.count("NANO_ERR_NON_FINITE") == 2 and "line 3" in r.stderr, r.stderr


def test_a_prompt_from_standard_input_that_cannot_be_read_is_an_error(nano_bin, h, psycho_path, tmp_path):
    """Not an empty prompt: a read error says so (exit 1), as in the chat."""
    fd = os.open(tmp_path, os.O_RDONLY)  # read() on it fails with EISDIR
    try:
        r = subprocess.run([str(nano_bin), "run", "-m", str(psycho_path), "-p", "-"], stdin=fd, capture_output=True,
                           text=True, timeout=60, env=h.clean_env())
    finally:
        os.close(fd)
    assert r.returncode == 1 and r.stderr == "nano: error: reading standard input: Is a directory\n", r


def test_a_vocabulary_without_unknown_says_what_a_prompt_lacks(cli, h, tmp_path):
    """A character the vocabulary lacks, with no <|unknown|> to stand for it: said as
    such (it was "not supported by this engine"); so is instruct mode without its marks."""
    import nano_format as nf

    def without(texts, **kw):
        kept = [e for e in h.make_vocab(48) if e.text not in texts]
        vocab = [nf.TokenEntry(id=i, text=e.text, is_special=e.is_special) for i, e in enumerate(kept)]
        path = tmp_path / f"without_{len(texts)}_{len(kw)}.bin"
        path.write_bytes(h.model_bytes(seed=5, vocab=vocab, **kw))
        return path

    lacks = "a character of it is not in the vocabulary, which has no <|unknown|> token to stand for it " \
            "(NANO_ERR_NO_TOKENIZER)\n"
    causal = without({"<|unknown|>"})
    r = cli("run", "-m", causal, "-p", "ab~", "-n", "2")
    assert r.returncode == 1 and r.stderr == "nano: error: prompt: " + lacks, r
    assert cli("run", "-m", causal, "-p", "ab", "-n", "2", "-t", "0").returncode == 0  # known characters are fine
    r = cli("run", "-m", causal, "-t", "0", "-n", "2", input="a~\nab\n")  # the chat: that line only
    assert r.returncode == 1 and r.stderr == "nano: error: line 1: " + lacks and r.stdout.startswith("\n"), r
    r = cli("seq2seq", "-m", causal, "~")
    assert r.returncode == 1 and r.stderr == "nano: error: INPUT: " + lacks, r
    full = without({"<|unknown|>"}, layout="2026.101", attention=1)
    r = cli("run", "-m", full, "-p", "~")
    assert r.returncode == 1 and r.stderr.endswith("nano: error: prompt: " + lacks), r
    r = cli("run", "-m", without({"<|instruct_mark|>", "<|response_mark|>"}), "-p", "ab", "--instruct")
    assert r.returncode == 1 and r.stderr == ("nano: error: prompt: instruct mode needs the special tokens "
                                              "<|instruct_mark|> and <|response_mark|>, which the vocabulary lacks "
                                              "(NANO_ERR_NO_TOKENIZER)\n"), r


def test_a_file_without_a_vocabulary_says_so_and_what_to_do(cli, h, tmp_path):
    """(was: "the model has no usable tokenizer (or lacks a needed special token)", which
    does not say that the file holds no vocabulary at all, nor what to run instead)"""
    import nano_format as nf

    config = nf.Config(block_size=16, vocab_size=48, n_layer=1, n_embd=16, n_head=4, n_kv_head=2, n_hidden=32)
    causal = tmp_path / "novocab.bin"
    causal.write_bytes(nf.to_bytes(config, h.random_weights(config, 3), layout="2026.101"))
    full = tmp_path / "novocab_full.bin"
    config = nf.Config(block_size=16, vocab_size=48, n_layer=1, n_embd=16, n_head=4, n_kv_head=2, n_hidden=32,
                       attention=1)
    full.write_bytes(nf.to_bytes(config, h.random_weights(config, 3), layout="2026.101"))
    lacks = ("the model file carries no vocabulary, so no text can be encoded: export it with one (python -m "
             "nano_train.export writes its checkpoint's), or run it with python -m nano_train.sample --tokenizer "
             "VOCAB.json (NANO_ERR_NO_TOKENIZER)\n")
    r = cli("run", "-m", causal, "-p", "ab", "-n", "2")
    assert r.returncode == 1 and r.stderr == "nano: error: prompt: " + lacks, r
    r = cli("seq2seq", "-m", full, "ab")
    assert r.returncode == 1 and r.stderr == f"nano: error: {full}: " + lacks, r


def test_a_seq2seq_input_notes_the_characters_the_vocabulary_lacks(cli, h, tmp_path):
    """As nano run notes them for a causal model and nano_train.sample for both. (was:
    a full-attention model answered a mistyped input without a word)"""
    full = tmp_path / "full.bin"
    full.write_bytes(h.model_bytes(seed=5, layout="2026.101", attention=1))
    r = cli("seq2seq", "-m", full, "ab~")
    assert r.returncode == 0 and r.stderr == ("nano: note: INPUT: 1 character is not in the vocabulary and became "
                                              "<|unknown|>\n"), r
    r = cli("seq2seq", "-m", full, "-", input="ab\n~a~\n")
    assert r.returncode == 0 and r.stderr == ("nano: note: line 2: 2 characters are not in the vocabulary and "
                                              "became <|unknown|>\n"), r
    assert len(r.stdout.splitlines()) == 2
    r = cli("run", "-m", full, "-p", "~b")
    assert r.returncode == 0 and r.stderr.endswith("nano: note: prompt: 1 character is not in the vocabulary and "
                                                   "became <|unknown|>\n"), r
    assert cli("seq2seq", "-m", full, "ab").stderr == ""


def test_a_fifo_is_refused_at_once(cli, tmp_path, psycho_path):
    """A model path that is a FIFO (or a device) is NANO_ERR_IO at once; the blocking open
    used to wait forever for a writer."""
    fifo = tmp_path / "model.fifo"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/null"):
        for args in (("info", path), ("run", "-m", path, "-p", "x"), ("seq2seq", "-m", path, "12"),
                     ("run", "-m", psycho_path, "-l", path, "-p", "x")):
            r = cli(*args, timeout=20)
            assert r.returncode == 1 and "NANO_ERR_IO" in r.stderr and str(path) in r.stderr, (args, r.stderr)


def test_a_line_with_a_nul_byte_is_that_lines_error(cli, sort6_path, psycho_path):
    """A NUL byte does not end the line (fgets + strlen once dropped its rest and the next
    line with it): the line gets its error and an empty answer line, the others answers."""
    r = cli("seq2seq", "-m", sort6_path, "-", input=b"251212\n98\x007654\n123456\n")
    assert (r.returncode, r.stdout) == (1, "112225\n\n123456\n"), r
    assert "nano: error: line 2: the line holds a NUL byte (at byte 2)" in r.stderr, r.stderr
    r = cli("run", "-m", psycho_path, "-t", "0", "-n", "4", input="你是谁\n心\0理\n你是谁\n".encode())
    lines = r.stdout.split("\n")
    assert r.returncode == 1 and len(lines) == 4 and lines[1] == "" and lines[0] == lines[2] != "", r
    assert "nano: error: line 2: the line holds a NUL byte (at byte 3)" in r.stderr, r.stderr


def _mapping_model(path, layout="2026.1", **kw):
    """A model whose next token (causal) or output (seq2seq) at each position is a fixed
    function of that position's token: one-hot embeddings, no attention or FFN output (wo
    and w2 are zero), the classifier a permutation. Its answers hold line breaks,
    carriage returns and backslashes."""
    import nano_format as nf

    texts = ["<|padding|>", "<|unknown|>", "<|bos|>", "<|eos|>", "<|instruct_mark|>", "<|response_mark|>",
             "\n", "\\", "\r", "x", "a", "b", "c", "d"]
    vocab = [nf.TokenEntry(id=i, text=t, is_special=t.startswith("<|")) for i, t in enumerate(texts)]
    ids = {t: i for i, t in enumerate(texts)}
    # <|response_mark|> -> \n -> \\ -> \r -> x -> <|eos|>; a -> \n, b -> \\, c -> \r, d -> d
    follow = {"<|response_mark|>": "\n", "\n": "\\", "\\": "\r", "\r": "x", "x": "<|eos|>",
              "a": "\n", "b": "\\", "c": "\r", "d": "d"}
    config = nf.Config(block_size=32, vocab_size=len(texts), n_layer=1, n_embd=16, n_head=2, n_kv_head=2,
                       n_hidden=16, tie_embeddings=False, **kw)
    from nano_format.plan import model_params

    w = {p.name: np.zeros(p.shape, np.float32) for p in model_params(config) if p.name not in ("rope_cos", "rope_sin")}
    for name in ("norm_attn", "norm_ffn", "norm_final"):
        w[name][:] = 1
    w["tok_embd"][:, :len(texts)] = np.eye(len(texts), dtype=np.float32)
    for a, b in follow.items():
        w["lm_head"][ids[b], ids[a]] = 1
    nf.write(path, config, w, vocab, layout=layout)
    return path


def test_answers_with_line_breaks_stay_on_their_line(cli, tmp_path):
    """In the line batches every answer is one line: a line break, a carriage return and a
    backslash in it are written \\n, \\r and \\\\ (README "One answer per line"), so a
    consumer reading one answer per line (nano_train.problems) gets every answer, exactly;
    before, such an answer spilled over several lines. A single prompt prints raw text."""
    chat_model = _mapping_model(tmp_path / "chat.bin")
    raw = "\n\\\rx"
    escaped = "\\n\\\\\\rx"
    r = cli("run", "-m", chat_model, "-t", "0", "-n", "8", input="a\n\nbc\n")
    assert (r.returncode, r.stdout) == (0, escaped + "\n\n" + escaped + "\n"), r
    r = cli("run", "-m", chat_model, "-t", "0", "-n", "8", "--instruct", "-p", "a")
    assert (r.returncode, r.stdout) == (0, raw + "\n"), r
    seq_model = _mapping_model(tmp_path / "seq.bin", layout="2026.101", attention=1)
    r = cli("seq2seq", "-m", seq_model, "abcd")
    assert (r.returncode, r.stdout) == (0, "\n\\\rd\n"), r
    r = cli("seq2seq", "-m", seq_model, "-", input="abcd\nd\n\nba\n")
    assert (r.returncode, r.stdout) == (0, "\\n\\\\\\rd\nd\n\n\\\\\\n\n"), r
    r = cli("run", "-m", seq_model, input="abcd\n")  # `nano run` on it: the chat's seq2seq batch
    assert (r.returncode, r.stdout) == (0, "\\n\\\\\\rd\n"), r



def test_a_chat_at_a_terminal_prints_answers_as_they_are(nano_bin, h, tmp_path):
    """Escaping is for programs reading one answer per line: with standard input and output
    both a terminal, a person reads the answer's line breaks as line breaks (the terminal
    writes each as CR LF), not as a backslash and an n."""
    import pty
    import select
    import time

    model = _mapping_model(tmp_path / "chat.bin")
    master, slave = pty.openpty()
    proc = subprocess.Popen([str(nano_bin), "run", "-m", str(model), "-t", "0", "-n", "8"], stdin=slave,
                            stdout=slave, stderr=subprocess.PIPE, close_fds=True, env=h.clean_env())
    os.close(slave)
    try:
        os.write(master, b"a\n")
        seen, deadline = b"", time.monotonic() + 60
        while b"x\r\n" not in seen and time.monotonic() < deadline:  # the answer's end
            if select.select([master], [], [], 1.0)[0]:
                seen += os.read(master, 4096)
        os.write(master, b"\x04")  # end of input (Ctrl-D)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert rc == 0, proc.stderr.read()
    answer = seen.split(b"a\r\n", 1)[1]  # after the terminal's echo of the question
    assert answer.startswith(b"\r\n\\\rx\r\n"), seen  # "\n\\\rx" and the end of the answer
    assert b"\\n" not in seen, seen

def bad_files(tmp_path, h, psycho_path):
    trunc = tmp_path / "trunc.bin"
    trunc.write_bytes(psycho_path.read_bytes()[:-7])
    magic = tmp_path / "magic.bin"
    magic.write_bytes(b"GGUF" + bytes(400))
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    return {trunc: "NANO_ERR_TRUNCATED", magic: "NANO_ERR_BAD_MAGIC", empty: "NANO_ERR_TRUNCATED",
            tmp_path / "missing.bin": "NANO_ERR_IO", tmp_path: "NANO_ERR_IO"}


def test_bad_files(cli, tmp_path, h, psycho_path):
    # what the loader adds to the status: what is wrong and where
    where = {"trunc.bin": ": the file ends at byte 355261, inside tensor rope_sin (from byte 347076)",
             "magic.bin": ": the file starts with 47 47 55 46 00 00 00 00",
             "empty.bin": ": the file is 0 bytes, shorter than the 256-byte header"}
    for path, status in bad_files(tmp_path, h, psycho_path).items():
        for args in (("info", path), ("run", "-m", path, "-p", "x"), ("seq2seq", "-m", path, "12"),
                     ("bench", "-m", path)):
            r = cli(*args)
            assert r.returncode == 1, (args, r)
            assert status in r.stderr and str(path) in r.stderr, (args, r.stderr)
            assert f"({status}){where.get(path.name, '')}" in r.stderr, (args, r.stderr)
            assert r.stdout == ""


BAD_ARGS = [
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["run"], "-m MODEL is required"),
    (["run", "-m"], "-m: missing value"),
    (["run", "-m", "{psycho}", "--bogus"], "unknown option '--bogus'"),
    (["run", "-m", "{psycho}", "-t", "hot"], "-t: expected a finite number, got 'hot'"),
    (["run", "-m", "{psycho}", "-t", "inf"], "-t: expected a finite number, got 'inf'"),
    (["run", "-m", "{psycho}", "-t", "1e39"], "-t: expected a finite number, got '1e39'"),  # beyond float
    (["run", "-m", "{psycho}", "-r", "1e-50"], "-r: must be > 0"),  # 0 as a float
    (["run", "-m", "{psycho}", "-s", " -1"], "-s: expected a non-negative integer, got ' -1'"),
    (["run", "-m", "{psycho}", "-n", " 5"], "-n: expected an integer"),
    (["run", "-m", "{psycho}", "-t", "-1"], "-t: must be >= 0"),
    (["run", "-m", "{psycho}", "-k", "-1"], "-k: expected an integer"),
    (["run", "-m", "{psycho}", "-k", "1.5"], "-k: expected an integer"),
    (["run", "-m", "{psycho}", "--top-p", "0"], "--top-p: must be in (0, 1]"),
    (["run", "-m", "{psycho}", "--top-p", "1.5"], "--top-p: must be in (0, 1]"),
    (["run", "-m", "{psycho}", "--min-p", "2"], "--min-p: must be in [0, 1]"),
    (["run", "-m", "{psycho}", "-r", "0"], "-r: must be > 0"),
    (["run", "-m", "{psycho}", "-n", "-3"], "-n: expected an integer"),
    (["run", "-m", "{psycho}", "-s", "-3"], "-s: expected a non-negative integer"),
    (["run", "-m", "{psycho}", "-s", "x"], "-s: expected a non-negative integer"),
    (["run", "-m", "{psycho}", "--threads", "0"], "--threads: expected an integer in [1, 1024]"),
    (["run", "-m", "{psycho}", "--ctx", "100000", "-p", "x"], "--ctx: 100000 is larger than the model's block size 512"),
    (["run", "-m", "{psycho}", "--ctx", "0"], "--ctx: expected an integer"),
    (["run", "-m", "{psycho}", "--batch", "0"], "--batch: expected an integer"),
    (["run", "-m", "{psycho}", "-p", "心" * 600, "-n", "1"], "NANO_ERR_CONTEXT_FULL"),
    (["run", "-m", "{psycho}", "-p", "", "-n", "1"], "-p: the prompt is empty"),
    (["run", "-m", "{psycho}", "-l", "{missing}", "-p", "x"], "NANO_ERR_IO"),
    (["run", "-m", "{psycho}", "-l", "{psycho}", "-p", "x"], "a model file, not a LoRA module (NANO_ERR_UNKNOWN_MODEL_TYPE): give it with -m"),
    (["info"], "MODEL is required"),
    (["info", "{psycho}", "{sort6}"], "one MODEL only"),
    (["info", "--bogus"], "unknown option '--bogus'"),
    (["seq2seq", "-m", "{sort6}"], "INPUT is required"),
    (["seq2seq", "{sort6}"], "-m MODEL is required"),
    (["seq2seq", "-m", "{sort6}", "12", "34"], "one INPUT only"),
    (["seq2seq", "-m", "{sort6}", "1234567"], "nano: error: INPUT: 7 tokens; the context holds at most 6"),
    (["seq2seq", "-m", "{sort6}", ""], "INPUT is empty"),
    (["seq2seq", "-m", "{sort6}", "--threads", "x", "12"], "--threads: expected an integer"),
    (["bench", "-m", "{psycho}", "-p", "500", "-n", "500"], "exceed the context"),
    (["bench", "-m", "{psycho}", "-p", "0"], "-p: expected an integer"),
    (["run", "-m", "{psycho}", "-p", "x", "-t", " 1"], "-t: expected a finite number, got ' 1'"),
    (["run", "-m", "{psycho}", "-p", "x", "--top-p", "1e-320"], "--top-p: must be in (0, 1], got '1e-320'"),  # 0 as a float
    (["bench"], "-m MODEL is required"),
]


@pytest.mark.parametrize("args,message", BAD_ARGS, ids=[" ".join(a)[:40] for a, _ in BAD_ARGS])
def test_bad_arguments(cli, psycho_path, sort6_path, tmp_path, args, message):
    subst = {"{psycho}": str(psycho_path), "{sort6}": str(sort6_path), "{missing}": str(tmp_path / "nope.bin")}
    args = [subst.get(a, a) for a in args]
    message = message.replace("{missing}", subst["{missing}"])
    r = cli(*args)
    assert r.returncode in (1, 2), r
    assert message in r.stderr, r.stderr
    assert r.stderr.startswith("nano: error: ")


# ---------------------------------------------------------------------------
# Memory


def _activations(info: dict, n_ctx: int, n_batch: int, threads: int) -> int:
    """Bytes the context, sampler and session allocate besides the KV cache (from nano_context_init,
    nano_sampler_init, nano_session_init)."""
    E, F, V = info["n_embd"], info["n_hidden"], info["vocab_size"]
    HD, KD = info["n_head"] * info["head_dim"], info["n_kv_head"] * info["head_dim"]
    nb = min(n_batch, n_ctx)
    floats = n_ctx * E + nb * (E + 2 * HD + max(E, HD, KD) + 2 * F) + threads * n_ctx + V
    sampler = V * 24
    session = (n_ctx + 1) * 4
    return 4 * floats + sampler + session


@pytest.mark.outer_only
@pytest.mark.parametrize("threads,n_ctx", [(1, 512), (2, 512), (1, 64)])
def test_peak_memory_within_bound(cli, nano, psycho_path, threads, n_ctx):
    """Peak RSS (VmHWM) <= the file (mapped) + KV cache + activations + 2 MiB."""
    info = nano.load(psycho_path).info
    r = cli("run", "-m", psycho_path, "-p", "人的心理", "-n", str(n_ctx), "-t", "0.9", "--threads",
            str(threads), "--ctx", str(n_ctx), "--profile")
    assert r.returncode == 0, r.stderr
    peak_kib = int(r.stderr.split("peak memory ")[1].split(" KiB")[0])
    kv = 2 * info["n_layer"] * n_ctx * info["n_kv_head"] * info["head_dim"] * 4
    act = _activations(info, n_ctx, 64, threads)
    bound = info["file_size"] + kv + act + 2 * 1024 * 1024
    print(f"psycho, {threads} thread(s), ctx {n_ctx}: peak {peak_kib} KiB, bound {bound // 1024} KiB "
          f"(file {info['file_size'] // 1024}, KV {kv // 1024}, activations {act // 1024}, + 2048)")
    assert peak_kib * 1024 <= bound


@pytest.mark.outer_only
def test_memory_does_not_grow_with_file_copies(cli, h, tmp_path, nano):
    """A bigger model: peak memory tracks the mapped file, not copies of it."""
    path = tmp_path / "big.bin"
    path.write_bytes(h.model_bytes(seed=1, block_size=64, n_layer=4, n_embd=256, n_head=8, n_kv_head=4,
                                   n_hidden=768))
    info = nano.load(path).info
    r = cli("run", "-m", path, "-p", "abc", "-n", "40", "--threads", "1", "--ctx", "64", "--profile")
    assert r.returncode == 0, r.stderr
    peak_kib = int(r.stderr.split("peak memory ")[1].split(" KiB")[0])
    kv = 2 * info["n_layer"] * 64 * info["n_kv_head"] * info["head_dim"] * 4
    bound = info["file_size"] + kv + _activations(info, 64, 64, 1) + 2 * 1024 * 1024
    print(f"{info['file_size'] // 1024} KiB model: peak {peak_kib} KiB, bound {bound // 1024} KiB")
    assert peak_kib * 1024 <= bound


# ---------------------------------------------------------------------------
# No allocation after init


@pytest.mark.outer_only
@pytest.mark.parametrize("threads", ["1", "2"])
def test_no_allocation_in_decode(built, psycho_path, h, threads):
    """tests/alloc_check.c wraps malloc/calloc/realloc/free (ld --wrap) around eval,
    sampling, session steps and seq2seq after init, and counts."""
    r = h.run_cli(built / "tests" / "alloc_check", psycho_path, threads)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "allocations during decode: 0 (frees 0)" in r.stdout
