"""`nano run --stop TEXT`: the semantics of `python -m nano_train.sample --stop TEXT`.

A special token's text stops at that token; any other text is matched on the
generated text. Tokens wait while the text from some character on could still
become a stop text; when one appears, the tokens whose text starts before it are
printed whole (even where a token's text runs into it) and the rest dropped. The
stop texts here are picked from each model's own output without --stop (so that
they occur where the test needs them), and every run is compared with what
nano_train.sample prints for the same file, prompt, settings and stops, and with
what those semantics give from the unstopped run's tokens.
"""

from __future__ import annotations

import itertools
import os
import re

import pytest

PROMPT = "人的心理"
SPECIALS = ["<|padding|>", "<|unknown|>", "<|bos|>", "<|eos|>", "<|instruct_mark|>", "<|response_mark|>"]
# a vocabulary of one- and two-letter tokens, longer CJK ones and a 4-byte character
MULTI_TEXTS = SPECIALS + list("abcdefgh") + ["".join(p) for p in itertools.product("abcdefgh", repeat=2)][:40] + \
    ["世界", "你好吗", "\U0001F600a"] + list("世界你好吗\U0001F600 ,.")
SETTINGS = {"greedy": ["-t", "0"], "sampled": ["-t", "0.8", "-k", "40", "-s", "3"]}


def samples(h, arg_lists: list[list]) -> list[str]:
    """What `python -m nano_train.sample ARGS --threads 1` prints for each ARGS (each must
    succeed; the runs side by side: h.run_samples)."""
    runs = h.run_samples([[*args, "--threads", "1"] for args in arg_lists])
    for args, r in zip(arg_lists, runs):
        assert r.returncode == 0, (args, r.stderr)
    return [r.stdout for r in runs]


def sample(h, *args) -> str:
    return samples(h, [list(args)])[0]


def run_ids(cli, *args) -> list[int]:
    r = cli("run", *args, "--ids")
    assert r.returncode == 0, r.stderr
    return [int(x) for x in r.stdout.split(",")]


def first_end(text: str, stop: str) -> bool:
    """Whether the first occurrence of stop in text ends where text ends."""
    return text.find(stop) == len(text) - len(stop)


def kept(texts: list[str], at: int) -> str:
    """The text of the tokens (their texts: texts) that start before character `at`."""
    out, length = [], 0
    for t in texts:
        if length >= at:
            break
        out.append(t)
        length += len(t)
    return "".join(out)


@pytest.fixture(scope="module")
def multi_path(h, tmp_path_factory):
    """A random model (fixed seed) whose vocabulary has multi-character tokens, which it
    generates, special tokens among them."""
    import nano_format as nf

    tokens = [nf.TokenEntry(id=i, text=t, is_special=t in SPECIALS) for i, t in enumerate(MULTI_TEXTS)]
    path = tmp_path_factory.mktemp("stop") / "multi.bin"
    path.write_bytes(h.model_bytes(seed=2, vocab=tokens, block_size=64, n_embd=32))
    return path


@pytest.mark.outer_only  # many runs of nano_train.sample (the tests below run --stop under the sanitizers)
@pytest.mark.parametrize("settings", sorted(SETTINGS))
def test_stop_texts_print_what_sample_prints(cli, h, psycho_path, settings):
    """psycho's tokens are single characters: a stop text of two or more spans token
    boundaries, and the output is the text before its first occurrence."""
    args = ["-m", psycho_path, "-p", PROMPT, "-n", "48", *SETTINGS[settings]]
    full = sample(h, *args)
    assert cli("run", *args).stdout == full
    text = full[:-1]  # without the final line break
    tail = next(text[i:i + 2] + c for i in range(5, 40) for c in text if text[i:i + 2] + c not in text)
    cases = [
        [text[10:12]],                  # two characters
        [text[20:23]],                  # three
        [text[15]],                     # one
        [text[30:32], text[12:14]],     # the earlier of two
        [tail],                         # its first two characters occur, it does not: they wait, then print
        ["<|eos|>"],                    # a special token (it always stops)
        ["自我意识与心理学家"],           # never occurs (all of it in the vocabulary)
    ]
    stop_args = [[a for s in stops for a in ("--stop", s)] for stops in cases]
    for stops, stop_arg, printed in zip(cases, stop_args, samples(h, [args + a for a in stop_args])):
        got = cli("run", *args, *stop_arg)
        assert got.returncode == 0, got.stderr
        assert got.stdout == printed, stops
        at = min((text.find(s) for s in stops if s in text), default=len(text))
        assert got.stdout == text[:at] + "\n", stops
        assert "nano: note" not in got.stderr


def test_ids_are_the_prompt_and_the_tokens_printed(cli, psycho_path):
    args = ["-m", psycho_path, "-p", PROMPT, "-n", "48", "-t", "0"]
    full = run_ids(cli, *args)
    text = cli("run", *args).stdout[:-1]
    stop = text[20:22]
    shown = text.find(stop)
    r = cli("run", *args, "--ids", "--stop", stop)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ",".join(map(str, full[:4 + shown])) + "\n"
    assert f"4 prompt tokens, {shown} generated" in r.stderr


@pytest.mark.parametrize("settings", sorted(SETTINGS))
def test_multi_character_tokens_print_whole(cli, h, multi_path, settings):
    """A token whose text starts before the stop text is printed whole, even where the
    stop text lies inside it; a stop text across two multi-character tokens drops the
    second; a special token that the model writes stops before it."""
    from nano_tokenizer import Tokenizer
    import nano_format as nf

    tok = Tokenizer.from_tokens([nf.TokenEntry(id=i, text=t, is_special=t in SPECIALS)
                                 for i, t in enumerate(MULTI_TEXTS)])
    args = ["-m", multi_path, "-p", "ab", "-n", "60", *SETTINGS[settings]]
    ids = run_ids(cli, *args)[1:]
    texts = [tok.decode([i]) for i in ids]
    full = "".join(texts)
    assert sample(h, *args) == full + "\n"
    starts = list(itertools.accumulate([0] + [len(t) for t in texts]))
    # inside one token: the rest of a multi-character token's text, first met inside it
    inside = next(t[1:] for j, t in enumerate(texts)
                  if len(t) > 1 and t not in SPECIALS and first_end(full[:starts[j + 1]], t[1:]))
    # across two tokens, the first one of several characters
    across = next(texts[j][-1] + texts[j + 1][0] for j in range(len(texts) - 1)
                  if len(texts[j]) > 1 and texts[j] not in SPECIALS and texts[j + 1] not in SPECIALS
                  and first_end(full[:starts[j + 1] + 1], texts[j][-1] + texts[j + 1][0]))
    special = next(t for t in texts if t in SPECIALS)
    printed = samples(h, [[*args, "--stop", stop] for stop in (inside, across, special)])
    for stop, want in zip((inside, across), printed):
        got = cli("run", *args, "--stop", stop)
        assert got.returncode == 0, got.stderr
        assert got.stdout == want, stop
        assert got.stdout == kept(texts, full.find(stop)) + "\n", stop
    assert kept(texts, full.find(inside)).endswith(inside)  # printed whole: the stop text shows
    got = cli("run", *args, "--stop", special)
    assert got.stdout == printed[2] == "".join(texts[:texts.index(special)]) + "\n"


def test_instruct_mode(cli, h, multi_path, psycho_path):
    for path, prompt in ((psycho_path, "什么是心理学"), (multi_path, "abc")):
        args = ["-m", path, "--instruct", "-p", prompt, "-n", "40", "-t", "0"]
        text = cli("run", *args).stdout[:-1]
        # two characters from the middle of the answer's longest run without special tokens
        plain = max(re.split("|".join(map(re.escape, SPECIALS)), text), key=len)
        stop = plain[len(plain) // 2:len(plain) // 2 + 2]
        assert len(stop) == 2, text
        got = cli("run", *args, "--stop", stop)
        assert got.returncode == 0, got.stderr
        assert got.stdout == sample(h, *args, "--stop", stop)
        assert len(got.stdout) - 1 < len(text)


def test_the_chat_stops_every_answer(cli, h, psycho_path):
    """One answer per line, each cut at the stop texts as `sample --instruct` cuts it;
    an empty line still gets an empty line."""
    questions = ["你是谁", "什么是心理学"]
    args = ["-m", psycho_path, "-n", "40", "-t", "0"]
    lines = "".join(q + "\n" for q in questions) + "\n"
    answers = cli("run", *args, input=lines).stdout.split("\n")
    stops = [answers[0][4:6], answers[1][10:12]]
    stop_args = [a for s in stops for a in ("--stop", s)]
    r = cli("run", *args, *stop_args, input=lines)
    assert r.returncode == 0, r.stderr
    want = [text[:-1] for text in samples(h, [[*args, "--instruct", "-p", q, *stop_args] for q in questions])]
    assert r.stdout.split("\n") == [*want, "", ""]
    assert all(len(w) < len(a) for w, a in zip(want, answers))


def test_a_stop_at_the_context_end_gives_no_context_note(cli, psycho_path):
    """A generation that a stop text ended did not fill the context, even when the
    stop text ends in the token that fills it."""
    args = ["-m", psycho_path, "-p", PROMPT, "-t", "0", "--ctx", "16"]
    full = cli("run", *args)
    assert "the context (16 tokens) filled" in full.stderr
    text = full.stdout[:-1]
    stop = next(text[-k:] for k in range(1, len(text)) if first_end(text, text[-k:]))
    r = cli("run", *args, "--stop", stop)
    assert (r.returncode, r.stdout, r.stderr) == (0, text[:-len(stop)] + "\n", "")


@pytest.mark.parametrize("chat", [False, True])
def test_bad_stop_texts_are_one_line_usage_errors(cli, psycho_path, chat):
    prompt = [] if chat else ["-p", PROMPT]
    cases = [
        ([""], "nano: error: --stop '': the text is empty: give the text to stop at"),
        (["心", "心理\U0001F600学\U0001F600Ж"],
         "nano: error: --stop '心理\U0001F600学\U0001F600Ж': can never occur: the vocabulary has no token for "
         "'\U0001F600Ж'"),
        ([os.fsdecode(b"a\xffb")], "nano: error: --stop 'a\\xffb': can never occur: the vocabulary has no token "
                                   "for '\\xff'"),
        # a lone byte is a character of its own, found or not by whole characters (0x80 is not
        # inside the emoji's bytes), and a surrogate or an overlong form is no character: \xNN
        ([os.fsdecode("\U0001F600".encode() + b"\x80")], "nano: error: --stop '\U0001F600\\x80': can never occur: "
                                                        "the vocabulary has no token for '\U0001F600\\x80'"),
        ([os.fsdecode(b"\xed\xa0\x80x\xc0\x80")], "nano: error: --stop '\\xed\\xa0\\x80x\\xc0\\x80': can never occur: "
                                              "the vocabulary has no token for '\\xed\\xa0\\x80\\xc0'"),
    ]
    for stops, line in cases:
        r = cli("run", "-m", psycho_path, *prompt, *[a for s in stops for a in ("--stop", s)], input="你是谁\n")
        assert (r.returncode, r.stdout, r.stderr) == (2, "", line + "\n"), stops


def test_a_seq2seq_run_names_stop_as_unused(cli, h, tmp_path):
    path = tmp_path / "full.bin"
    path.write_bytes(h.model_bytes(layout="2026.101", attention=1))
    r = cli("run", "-m", path, "-p", "ab", "--stop", "x")
    assert r.returncode == 0 and "not used for it: --stop" in r.stderr, r
