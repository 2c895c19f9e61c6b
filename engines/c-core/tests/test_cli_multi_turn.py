"""`nano run --multi-turn`: the chat keeps the conversation, each question asked after
the earlier turns as `prepare sft` lays out a multi-turn record. Every answer is
compared with nano_train's generate on nano_train.sampling.chat_prompt's ids for the
same weights (psycho, an SFT model, dequantized by load_bin), greedy."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

SYSTEM = "你是心理学家"
LINES = ["你是谁", "", "心理是什么", "人的心理", "为什么"]
N = 16  # tokens per answer: prompt (at most half the context) + answer fit every --ctx below
CTX = 80  # small enough that turns are dropped


@pytest.fixture(scope="module")
def psycho(psycho_path):
    from nano_train.convert import load_bin

    return load_bin(psycho_path)


def _escaped(text: str) -> str:
    """An answer as the chat writes it to a pipe (one line: README "One answer per line")."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def reference(psycho, lines, n_ctx, system=None, fail=()):
    """What the conversation gives in PyTorch: per line (prompt ids, answer ids, turns
    dropped), None for an empty line or one in `fail` (not a turn)."""
    from nano_train.sampling import SamplerConfig, chat_prompt, generate

    model, tok = psycho
    turns, out = [], []
    for q in lines:
        if not q or q in fail:
            out.append(None)
            continue
        ids, dropped = chat_prompt(tok, turns, q, system=system, n_ctx=n_ctx)
        gen = list(generate(model, ids, SamplerConfig(temperature=0.0, max_new_tokens=N), tok))
        turns = turns[dropped:] + [(q, gen)]  # the answer as written: its special tokens stay (answer_ids)
        out.append((ids, gen, dropped))
    return out


def chat(cli, psycho_path, lines, *args):
    return cli("run", "-m", psycho_path, "--multi-turn", "-t", "0", "-n", str(N), *args,
               input="".join(q + "\n" for q in lines))


def notes(stderr: str) -> dict[int, int]:
    """line -> turns dropped, from the chat's notes."""
    found = {}
    for m in re.finditer(r"^nano: note: line (\d+): dropped the (\d+ )?oldest turns? of the conversation: "
                         r"with (it|them) the prompt would be \d+ tokens, more than half of the context "
                         r"\((\d+) tokens\), which the answer needs$", stderr, re.M):
        found[int(m.group(1))] = int(m.group(2) or 1)
    return found


@pytest.mark.parametrize("system", [None, SYSTEM])
@pytest.mark.parametrize("ctx", [None, CTX])
def test_each_answer_is_generate_on_chat_prompt(cli, psycho, psycho_path, system, ctx):
    """One escaped answer per line, each nano_train's greedy answer to chat_prompt's ids
    (the earlier answers encoded again); with a small --ctx the oldest turns go, each
    time with a note naming the line and the count; the system text goes before the
    earliest question kept."""
    _, tok = psycho
    n_ctx = ctx or 512  # the block size
    want = reference(psycho, LINES, n_ctx, system)
    args = [*(["--ctx", str(ctx)] if ctx else []), *(["--system", system] if system else [])]
    r = chat(cli, psycho_path, LINES, *args)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:-1] == ["" if w is None else _escaped(tok.decode(w[1])) for w in want]
    dropped = {k + 1: w[2] for k, w in enumerate(want) if w and w[2]}
    assert notes(r.stderr) == dropped and r.stderr.count("note:") == len(dropped), r.stderr
    if ctx:
        assert dropped, "the context is meant to be small enough to drop turns"
    # --ids: each line is the whole prompt, then the answer
    r = chat(cli, psycho_path, LINES, *args, "--ids")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:-1] == ["" if w is None else ",".join(map(str, w[0] + w[1])) for w in want]


def test_at_a_terminal_the_streamed_answer_is_the_turn_kept(cli, nano_bin, h, psycho_path):
    """At a terminal the answers are streamed, not gathered for one line: the text printed
    is still what the conversation keeps, so the second answer is the pipe's."""
    import os
    import pty
    import select
    import subprocess
    import time

    questions = ["你是谁", "心理是什么"]
    piped = chat(cli, psycho_path, questions).stdout.split("\n")
    assert piped[1] != chat(cli, psycho_path, questions[1:]).stdout.split("\n")[0]  # it depends on turn 1
    master, slave = pty.openpty()
    proc = subprocess.Popen([str(nano_bin), "run", "-m", str(psycho_path), "--multi-turn", "-t", "0", "-n", str(N)],
                            stdin=slave, stdout=slave, stderr=subprocess.PIPE, close_fds=True, env=h.clean_env())
    os.close(slave)
    seen = b""
    try:
        for question, answer in zip(questions, piped):
            os.write(master, question.encode() + b"\n")
            want, deadline = (question + "\r\n" + answer + "\r\n").encode(), time.monotonic() + 60
            while want not in seen and time.monotonic() < deadline:  # the terminal's echo, then the answer
                if select.select([master], [], [], 1.0)[0]:
                    seen += os.read(master, 4096)
            assert want in seen, seen.decode(errors="replace")
        os.write(master, b"\x04")  # end of input (Ctrl-D)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_without_multi_turn_every_question_is_asked_alone(cli, psycho, psycho_path):
    """The plain chat is as it was: each answer the instruct prompt's alone, which for a
    later question differs from the conversation's."""
    from nano_train.sampling import SamplerConfig, generate, instruct_prompt

    model, tok = psycho
    r = cli("run", "-m", psycho_path, "-t", "0", "-n", str(N), input="".join(q + "\n" for q in LINES))
    assert r.returncode == 0 and "note:" not in r.stderr, r.stderr
    greedy = SamplerConfig(temperature=0.0, max_new_tokens=N)
    alone = [_escaped(tok.decode(list(generate(model, instruct_prompt(tok, q), greedy, tok)))) if q else ""
             for q in LINES]
    assert r.stdout.split("\n")[:-1] == alone
    multi = chat(cli, psycho_path, LINES).stdout.split("\n")
    assert multi[0] == alone[0] and multi[2:4] != alone[2:4]


def test_a_question_that_fails_is_not_a_turn(cli, psycho, psycho_path):
    """A question too long on its own is that line's context error and an empty line,
    as in the plain chat; the conversation goes on without it."""
    long = "心" * CTX
    lines = ["你是谁", long, "心理是什么"]
    want = reference(psycho, lines, CTX, fail=(long,))
    r = chat(cli, psycho_path, lines, "--ctx", str(CTX))
    assert r.returncode == 1
    assert r.stdout.split("\n")[:-1] == ["" if w is None else _escaped(psycho[1].decode(w[1])) for w in want]
    plain = cli("run", "-m", psycho_path, "-t", "0", "-n", str(N), "--ctx", str(CTX), input=long + "\n")
    error = next(line for line in plain.stderr.splitlines() if "error" in line)
    assert error.startswith("nano: error: line 1: ") and "NANO_ERR_CONTEXT_FULL" in error
    assert error.replace("line 1", "line 2") in r.stderr.splitlines(), r.stderr


def test_multi_turn_with_a_prompt_is_a_usage_error(cli, psycho_path):
    r = cli("run", "-m", psycho_path, "--multi-turn", "-p", "你是谁")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("nano: error: --multi-turn is for the chat (no -p): it keeps the conversation from line to "
                        "line, and -p asks one prompt\n(run 'nano --help' for usage)\n")
    assert "--multi-turn" in cli("run", "--help").stdout


def test_a_vocabulary_without_the_marks_is_refused_before_any_line(cli, h, tmp_path):
    import nano_format as nf

    texts = ["<|padding|>", "<|unknown|>", "<|bos|>", "<|instruct_mark|>", "<|response_mark|>"] + list("abcdefgh")
    vocab = [nf.TokenEntry(id=i, text=t, is_special=t.startswith("<|")) for i, t in enumerate(texts)]
    path = tmp_path / "no_eos.bin"
    path.write_bytes(h.model_bytes(seed=1, vocab=vocab))
    r = cli("run", "-m", path, "--multi-turn", "-n", "2", input="ab\n")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == (f"nano: error: --multi-turn: a conversation is laid out with the special tokens "
                        f"<|instruct_mark|>, <|response_mark|> and <|eos|>, and the vocabulary of {path} has no "
                        f"<|eos|> (NANO_ERR_NO_TOKENIZER)\n")
    assert cli("run", "-m", path, "-n", "2", input="ab\n").returncode == 0  # the plain chat needs no <|eos|>


def test_a_seq2seq_run_names_multi_turn_as_unused(cli, h, tmp_path):
    path = tmp_path / "full.bin"
    path.write_bytes(h.model_bytes(seed=3, layout="2026.101", attention=1))
    r = cli("run", "-m", path, "--multi-turn", input="abc\n")
    assert r.returncode == 0 and len(r.stdout.split("\n")) == 2
    assert "not used for it: --multi-turn" in r.stderr, r.stderr


@pytest.mark.outer_only  # runs nano_train.sample (the tests above run the chat under the sanitizers)
@pytest.mark.parametrize("which", ["psycho", "small block"])
def test_sample_chats_as_nano_run_does(cli, h, psycho_path, tmp_path, which):
    """`python -m nano_train.sample` without -p is the same chat: the same lines, notes
    and exit status, with --multi-turn and --system; on a model whose block is small
    enough that turns are dropped too."""
    if which == "psycho":
        path, lines = psycho_path, LINES
    else:
        path, lines = tmp_path / "small.bin", ["abc", "the cat", "", "ab ab", "xyz 12", "世界"]
        path.write_bytes(h.model_bytes(seed=4, block_size=40, n_embd=32))
    text = "".join(q + "\n" for q in lines)
    for args in ([], ["--multi-turn"], ["--multi-turn", "--system", "ab" if which != "psycho" else SYSTEM]):
        args = ["-m", path, "-t", "0", "-n", str(N), *args]
        want = cli("run", *args, input=text)
        got = subprocess.run([sys.executable, "-m", "nano_train.sample", *map(str, args), "--threads", "1"],
                             input=text.encode(), capture_output=True, env=h.clean_env(), timeout=300)
        assert got.returncode == want.returncode == 0, got.stderr
        assert got.stdout.decode() == want.stdout and any(want.stdout.split("\n")), args
        notes = [line.removeprefix("nano: ") for line in want.stderr.splitlines()]
        assert got.stderr.decode().splitlines() == notes, args
        if which != "psycho" and "--multi-turn" in args:
            assert "oldest turn" in want.stderr, want.stderr


def test_a_generated_special_token_stays_one_token_in_the_next_prompt(cli, h, tmp_path):
    """An earlier answer comes back as the training data holds an answer: a generated
    <|unknown|> is one token (was: its text encoded again, 11 tokens, a layout training
    never made). The same ids as nano_train's chat_prompt on the ids written."""
    import torch
    from nano_tokenizer import Tokenizer

    from nano_train.convert import export_bin
    from nano_train.data import sft_encode
    from nano_train.model import ModelConfig, Transformer
    from nano_train.sampling import chat_prompt, instruct_prompt

    tok = Tokenizer.load(h.shared_file("data/tokenizer_4096.json"))
    a, b = tok.encode("A")[0], tok.encode("B")[0]
    chain = [tok.response_id, a, tok.unk_id, b]  # the greedy answer to any question: A <|unknown|> B <|eos|>
    model = Transformer(ModelConfig(block_size=64, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_kv_head=2,
                                    n_embd=16, tie_embeddings=False)).eval()
    sd = model.state_dict()
    for k in sd:
        if k.endswith(("wo.weight", "w2.weight")) or k in ("tok_embd.weight", "lm_head.weight"):
            sd[k].zero_()
    for d, (now, after) in enumerate(zip(chain, [*chain[1:], tok.eos_id])):
        sd["tok_embd.weight"][now, d] = 1.0
        sd["lm_head.weight"][after, d] = 10.0
    with torch.no_grad():
        model.load_state_dict(sd)
    path = tmp_path / "unk.bin"
    export_bin(model, path, tokenizer=tok)
    r = cli("run", "-m", path, "--multi-turn", "-t", "0", "--ids", input="x\ny\n")
    assert r.returncode == 0, r.stderr
    first, second = [list(map(int, line.split(","))) for line in r.stdout.split("\n")[:-1]]
    written = [a, tok.unk_id, b]
    assert first == instruct_prompt(tok, "x") + written
    assert second == sft_encode(tok, [("x", written)])[0] + instruct_prompt(tok, "y") + written
    assert second[:-3] == chat_prompt(tok, [("x", written)], "y")[0] and second.count(tok.unk_id) == 2
