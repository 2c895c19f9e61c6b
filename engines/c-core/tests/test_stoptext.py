"""The library's stop texts (nano_stop_texts_*, src/stoptext.c) against nano_train.sampling's
stop strings (_resolve_stops, _held_back, _starting_before and the loop of _generate), on
token streams drawn at random from a vocabulary of one- and several-character tokens."""

from __future__ import annotations

import itertools
import random

import pytest

SPECIALS = ["<|padding|>", "<|unknown|>", "<|bos|>", "<|eos|>", "<|instruct_mark|>", "<|response_mark|>"]
TEXTS = SPECIALS + list("abcd") + ["".join(p) for p in itertools.product("abcd", repeat=2)] + \
    ["世界", "你好", "\U0001F600a"] + list("世界你好\U0001F600")


@pytest.fixture(scope="module")
def vocab(nano):
    import nano_format as nf
    from nano_tokenizer import Tokenizer

    tokens = [nf.TokenEntry(id=i, text=t, is_special=t in SPECIALS) for i, t in enumerate(TEXTS)]
    return nano.tokenizer_from_section(nf.encode_tokenizer_section(tokens)), Tokenizer.from_tokens(tokens)


def init(nano, tok, texts: list[str]):
    """nano_stop_texts_init: (status name, the index it names, the handle or None)."""
    ffi, lib = nano.ffi, nano.lib
    keep = [ffi.new("char[]", t.encode()) for t in texts]
    arr = ffi.new("char *[]", keep or [ffi.NULL])
    out, bad = ffi.new("nano_stop_texts **"), ffi.new("uint32_t *")
    st = lib.nano_stop_texts_init(tok.handle if tok else ffi.NULL, arr, len(texts), out, bad)
    handle = ffi.gc(out[0], lib.nano_stop_texts_free) if st == lib.NANO_OK else None
    return nano.status_name(st), bad[0], handle


def check(nano, handle, gen: list[int]) -> tuple[int, bool]:
    ffi = nano.ffi
    upto, stopped = ffi.new("uint32_t *"), ffi.new("int *")
    nano.check(nano.lib.nano_stop_texts_check(handle, ffi.new("int32_t[]", gen or [0]), len(gen), upto, stopped))
    return upto[0], bool(stopped[0])


def reference(py_tok, stop_texts: list[str], stream: list[int]) -> tuple[list[tuple[int, bool]], int]:
    """nano_train's generate loop over `stream` as the sampled tokens: after each token, how
    many tokens are out and whether a stop string ended it; and the stop ids it resolved."""
    from nano_train import sampling

    stop_ids, texts = sampling._resolve_stops(stop_texts, py_tok)
    longest = max(map(len, texts), default=0)
    generated, out = [], []
    for tok in stream:
        generated.append(tok)
        start = max(0, len(generated) - longest)
        text = py_tok.decode(generated[start:])
        at = min((i for i in map(text.find, texts) if i >= 0), default=-1)
        if texts and at >= 0:
            out.append((start + sampling._starting_before(py_tok, generated[start:], at), True))
            break
        keep = sampling._held_back(py_tok, generated[start:], texts) if texts else 0
        out.append((len(generated) - keep, False))
    return out, stop_ids


def refused(py_tok, text: str) -> bool:
    from nano_train.sampling import StopError, _resolve_stops

    try:
        _resolve_stops([text], py_tok)
    except StopError:
        return True
    return False


def test_check_agrees_with_nano_train_token_by_token(nano, vocab):
    from nano_train.sampling import StopError

    tok, py_tok = vocab
    rng = random.Random(5)
    plain = [i for i, t in enumerate(TEXTS) if t not in SPECIALS]
    pieces = [t for t in TEXTS if t not in SPECIALS] + ["<|bos|>"]
    stopped_runs = checked = 0
    for trial in range(300):
        stream = [rng.choice(plain + [2]) for _ in range(40)]  # 2: <|bos|>, whose text is matched too
        # stop texts: pieces of the stream's own text (across and inside tokens) and made-up ones
        text = py_tok.decode(stream)
        stops = []
        for _ in range(rng.randint(1, 4)):
            if rng.random() < 0.6:
                i = rng.randrange(len(text))
                stops.append(text[i:i + rng.randint(1, 5)])
            else:
                stops.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 3))))
        if rng.random() < 0.2:
            stops.append("<|eos|>")
        status, bad, handle = init(nano, tok, stops)
        try:
            want, stop_ids = reference(py_tok, stops, stream)
        except StopError:  # a piece of <|bos|>'s text: "<", "|" and ">" have no token
            assert (status, bad) == ("NANO_ERR_NO_TOKENIZER", next(i for i, s in enumerate(stops)
                                                                   if refused(py_tok, s))), stops
            continue
        assert status == "NANO_OK", stops
        got = [check(nano, handle, stream[:k + 1]) for k in range(len(want))]
        assert got == want, (stops, stream)
        n = nano.ffi.new("uint32_t *")
        ids = nano.lib.nano_stop_texts_ids(handle, n)
        assert {ids[i] for i in range(n[0])} | {3} == stop_ids | {3}  # <|eos|> (3) is the session's own stop
        assert nano.lib.nano_stop_texts_count(handle) == sum(s not in SPECIALS for s in stops)
        stopped_runs += want[-1][1]
        checked += 1
    assert checked > 200 and 100 < stopped_runs < checked - 10  # both ends are tested


def test_bad_texts_name_the_first_and_the_missing_characters(nano, vocab):
    tok, _ = vocab
    ffi, lib = nano.ffi, nano.lib
    assert init(nano, tok, ["ab", "", "x"])[:2] == ("NANO_ERR_BAD_ARGUMENT", 1)
    assert init(nano, tok, ["ab", "a世x界y", ""])[:2] == ("NANO_ERR_NO_TOKENIZER", 1)
    assert init(nano, None, ["ab"])[:2] == ("NANO_ERR_NO_TOKENIZER", 0)
    assert init(nano, None, [])[0] == "NANO_OK"  # no texts need no vocabulary
    text = "a世x界yx\U0001F601".encode()
    buf, n = ffi.new("char[]", 64), ffi.new("size_t *")
    assert lib.nano_stop_texts_missing(tok.handle, text, len(text), buf, 64, n) == lib.NANO_OK
    assert ffi.string(buf).decode() == "xy\U0001F601" and n[0] == 6
    assert lib.nano_stop_texts_missing(tok.handle, text, len(text), buf, 3, n) == lib.NANO_ERR_BUFFER_TOO_SMALL
    assert n[0] == 6
    # no texts matched on the output: every token may go out at once
    _, _, handle = init(nano, tok, ["<|bos|>"])
    assert check(nano, handle, [6, 7, 8]) == (3, False)
    assert nano.lib.nano_stop_texts_count(handle) == 0
