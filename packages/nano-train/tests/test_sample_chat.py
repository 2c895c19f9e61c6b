"""`python -m nano_train.sample` without -p: the chat, as `nano run`'s (one question per
line of stdin, one escaped answer per line), and --multi-turn, each answer generate's on
sampling.chat_prompt's ids (the oldest turns dropped over half the block size)."""

import io
import re
import sys

import pytest

from nano_train import sample as sample_cmd
from nano_train.sampling import SamplerConfig, chat_prompt, generate, instruct_prompt

N = 8  # tokens per answer
BLOCK = 48  # small enough that a conversation of a few turns drops the oldest
LINES = ["who are you?", "", "why is it so?", "and then what?", "tell me 1 2 3"]
SYSTEM = "Answer briefly."


@pytest.fixture(scope="module")
def model(tiny):
    return tiny(seed=3, block_size=BLOCK, n_layer=1, n_head=2, n_kv_head=1, n_embd=16)


@pytest.fixture
def ckpt(tmp_path, model, nano80, save_ckpt):
    return save_ckpt(tmp_path / "m.pt", model, nano80)


def chat(monkeypatch, capsys, ckpt, data: bytes, *args):
    """sample -m CKPT -t 0 -n N ARGS with data on standard input: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    rc = sample_cmd.main(["-m", str(ckpt), "-t", "0", "-n", str(N), *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def answer_tokens(model, tok, ids) -> list[int]:
    return list(generate(model, ids, SamplerConfig(temperature=0.0, max_new_tokens=N), tok))


def answer(model, tok, ids) -> str:
    return tok.decode(answer_tokens(model, tok, ids))


def conversation(model, tok, lines, system=None, fail=()):
    """Per line: (answer, turns dropped), None for an empty line or one in `fail`."""
    turns, out = [], []
    for q in lines:
        if not q or q in fail:
            out.append(None)
            continue
        ids, dropped = chat_prompt(tok, turns, q, system=system, n_ctx=BLOCK)
        a = answer_tokens(model, tok, ids)
        turns = turns[dropped:] + [(q, a)]
        out.append((tok.decode(a), dropped))
    return out


def unknown_writer(tok):
    """A 1-layer model whose greedy answer to any question is A <|unknown|> B <|eos|>."""
    import torch

    from nano_train.model import ModelConfig, Transformer

    a, b = tok.encode("1")[0], tok.encode("2")[0]
    chain = [tok.response_id, a, tok.unk_id, b]
    model = Transformer(ModelConfig(block_size=64, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_kv_head=2,
                                    n_embd=16, tie_embeddings=False)).eval()
    sd = model.state_dict()
    for k in sd:
        if k.endswith(("wo.weight", "w2.weight")) or k in ("tok_embd.weight", "lm_head.weight"):
            sd[k].zero_()
    for d, (now, after) in enumerate(zip(chain, [*chain[1:], tok.eos_id])):
        sd["tok_embd.weight"][now, d] = 1.0
        sd["lm_head.weight"][after, d] = 10.0
    model.load_state_dict(sd)
    return model, [a, tok.unk_id, b]


def test_a_generated_special_token_stays_one_token_in_the_next_prompt(monkeypatch, capsys, tmp_path, nano80,
                                                                      save_ckpt):
    # (was: the answer's text encoded again, "<|unknown|>" as 11 tokens, a layout training never made)
    from nano_train import sampling
    from nano_train.data import sft_encode

    model, written = unknown_writer(nano80)
    ckpt = save_ckpt(tmp_path / "unk.pt", model, nano80)
    prompts = []
    real = sampling.generate
    monkeypatch.setattr(sampling, "generate", lambda m, ids, *a, **k: prompts.append(list(ids)) or real(m, ids, *a, **k))
    rc, out, err = chat(monkeypatch, capsys, ckpt, b"12\n34\n", "--multi-turn")
    assert rc == 0 and out == "1<|unknown|>2\n" * 2, (out, err)
    assert prompts[1] == sft_encode(nano80, [("12", written)])[0] + instruct_prompt(nano80, "34")
    assert prompts[1].count(nano80.unk_id) == 1
    assert chat_prompt(nano80, [("12", written)], "34")[0] == prompts[1]


def test_the_chat_asks_each_line_alone(monkeypatch, capsys, ckpt, model, nano80):
    rc, out, err = chat(monkeypatch, capsys, ckpt, "".join(q + "\n" for q in LINES).encode(), "--system", SYSTEM)
    assert rc == 0 and err == ""
    want = [escaped(answer(model, nano80, instruct_prompt(nano80, q, SYSTEM))) if q else "" for q in LINES]
    assert out.split("\n")[:-1] == want and any(want)


@pytest.mark.parametrize("system", [None, SYSTEM])
def test_multi_turn_is_generate_on_chat_prompt(monkeypatch, capsys, ckpt, model, nano80, system):
    extra = ["--system", system] if system else []
    rc, out, err = chat(monkeypatch, capsys, ckpt, "".join(q + "\n" for q in LINES).encode(), "--multi-turn", *extra)
    assert rc == 0, err
    want = conversation(model, nano80, LINES, system)
    assert out.split("\n")[:-1] == ["" if w is None else escaped(w[0]) for w in want]
    dropped = {k + 1: w[1] for k, w in enumerate(want) if w and w[1]}
    assert dropped and any(w and w[0] for w in want)  # the block is small enough; not all answers empty
    said = {int(line): int(count or 1) for line, count in re.findall(
        r"^note: line (\d+): dropped the (\d+ )?oldest turns? of the conversation: with (?:it|them) the prompt "
        rf"would be \d+ tokens, more than half of the context \({BLOCK} tokens\), which the answer needs$", err, re.M)}
    assert said == dropped and err.count("\n") == len(dropped), err


def test_a_line_that_fails_gets_its_error_and_an_empty_line(monkeypatch, capsys, ckpt, model, nano80):
    """A NUL byte, bytes that are not UTF-8, a question too long for the block: that
    line's error and an empty line; the other lines are answered, and a failed question
    is no turn of the conversation."""
    long = "a" * BLOCK
    data = b"who are you?\na\x00b\n\xff\n" + long.encode() + b"\nwhy is it so?\n"
    rc, out, err = chat(monkeypatch, capsys, ckpt, data, "--multi-turn")
    want = conversation(model, nano80, ["who are you?", "", "", long, "why is it so?"], fail=(long,))
    assert rc == 1
    assert out.split("\n")[:-1] == ["" if w is None else escaped(w[0]) for w in want]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors[0] == "error: line 2: the line holds a NUL byte (at byte 1)"
    assert errors[1] == "error: line 3: the line is not UTF-8: byte 0xff at offset 0 (invalid start byte)"
    assert errors[2].startswith(f"error: line 4: the prompt has {BLOCK + 2} tokens; the model's block size is "
                                f"{BLOCK}") and len(errors) == 3


@pytest.mark.parametrize("args,said", [
    (["--multi-turn", "-p", "hi"], "error: --multi-turn is for the chat (no -p): it keeps the conversation from "
                                   "line to line, and -p asks one prompt\n"),
    (["--allow-special"], "error: --allow-special is for a continuation prompt (-p without --instruct): instruct "
                          "mode never reads the text as special tokens; the chat (no -p) is instruct mode\n"),
    (["--stop", ""], "error: --stop: stop string '' is empty: give the text to stop at\n"),
])
def test_chat_usage_errors(monkeypatch, capsys, ckpt, args, said):
    rc, out, err = chat(monkeypatch, capsys, ckpt, b"who are you?\n", *args)
    assert (rc, out, err) == (2, "", said)
