"""Very large vocabularies (hundreds of thousands of tokens): the first encode
must not compile a regex from the whole trie (once 15 s and 384 MB for a
400,000-token vocabulary), and the array trie that takes over matches greedy
longest match exactly. The array trie is also forced onto the shared
vocabularies, where it must agree with the regex (and onto small random ones in
test_encode.py's property test)."""

import io
import json
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from nano_tokenizer import DEFAULT_SPECIALS, Tokenizer, matcher

HUGE = 400_000
# Letters make a dense trie (a first character leads to some 15,000 tokens);
# the others are a CJK run, an astral character that is no token by itself, a
# CR and the characters of the specials.
_ALPHABET = "abcdefghijklmnopqrstuvwxyz中文字\U0001f600\r<|>"
_SINGLES = [ch for ch in _ALPHABET if ch != "\U0001f600"]


@pytest.fixture(scope="module")
def huge_itos():
    """The specials, the single characters and HUGE distinct tokens of 2 to 12 code points."""
    rng = np.random.default_rng(2024)
    letters = np.array(list(_ALPHABET))
    words: dict = {}
    while len(words) < HUGE:
        lengths = rng.integers(2, 13, size=HUGE)
        flat = "".join(letters[rng.integers(0, len(letters), size=int(lengths.sum()))])
        ends = np.cumsum(lengths).tolist()
        words.update(dict.fromkeys(flat[e - n : e] for e, n in zip(ends, lengths.tolist())))
    words = [w for w in words if w not in DEFAULT_SPECIALS][:HUGE]
    return list(DEFAULT_SPECIALS) + _SINGLES + words


def _tokenizer(itos) -> Tokenizer:
    return Tokenizer(itos, {t: i for i, t in enumerate(DEFAULT_SPECIALS)})


@pytest.fixture(scope="module")
def huge(huge_itos):
    return _tokenizer(huge_itos)


def reference_encoder(tok: Tokenizer, allow_special: bool = False):
    """Greedy longest match without a trie: at each position try every length,
    longest first, against the vocabulary as a dict."""
    stoi = {t: i for t, i in tok.stoi.items() if allow_special or t not in tok.special_tokens}
    longest = max(map(len, stoi))

    def encode(text: str) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            for n in range(min(longest, len(text) - i), 0, -1):
                if text[i : i + n] in stoi:
                    ids.append(stoi[text[i : i + n]])
                    i += n
                    break
            else:
                ids.append(tok.unk_id)
                i += 1
        return ids

    return encode


def _random_text(tok, rng, length):
    """Pieces of tokens (whole, cut short, glued together), single characters,
    specials and characters no token has."""
    parts, size = [], 0
    while size < length:
        r = rng.random()
        if r < 0.5:
            token = tok.itos[rng.integers(len(tok))]
            part = token[: rng.integers(1, len(token) + 1)]
        elif r < 0.8:
            part = _ALPHABET[rng.integers(len(_ALPHABET))]
        elif r < 0.9:
            part = DEFAULT_SPECIALS[rng.integers(len(DEFAULT_SPECIALS))]
        else:
            part = "Zé\U00020000"[rng.integers(3)]
        parts.append(part)
        size += len(part)
    return "".join(parts)


def test_first_encode_of_a_huge_vocabulary_compiles_no_giant_pattern(huge_itos, monkeypatch):
    # Counted, not timed: the size of every pattern compiled for the first
    # encode, and the memory that encode allocates (tracemalloc sees numpy's).
    # Before, the first encode compiled one pattern of hundreds of MB.
    tok = _tokenizer(huge_itos)
    compiled = []
    real_compile = re.compile

    def spy(pattern, flags=0):
        compiled.append(len(pattern))
        assert sum(compiled) < 1 << 20, f"the first encode compiles {sum(compiled):,} characters of regex"
        return real_compile(pattern, flags)

    monkeypatch.setattr(re, "compile", spy)
    tracemalloc.start()
    try:
        ids = tok.encode("ab")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    monkeypatch.undo()
    assert ids == reference_encoder(tok)("ab")
    # About 90 MB here now (a third of it the dict of the non-special tokens);
    # the regex took 708 MB.
    assert peak < 160 * 2**20, f"the first encode allocated {peak / 2**20:.0f} MB at its peak"


def test_huge_vocabulary_matches_a_plain_longest_match(huge):
    rng = np.random.default_rng(7)
    for allow in (False, True):
        reference = reference_encoder(huge, allow)
        for _ in range(60):
            text = _random_text(huge, rng, 400)
            assert huge.encode(text, allow_special=allow) == reference(text), repr(text)
    # Several of the encoder's 65536-code-point windows, and streaming in pieces
    # that cut tokens anywhere.
    text = _random_text(huge, rng, 150_000)
    expected = reference(text)
    assert huge.encode(text, allow_special=True) == expected
    assert sum(len(huge.decode_piece(i)) > 1 for i in expected) > len(expected) // 3
    head = text[:20_000]
    for piece, chunk in ((head, 1), (head, 5), (head, 13), (text, 4096)):
        parts = list(huge.encode_stream(io.StringIO(piece), chunk, True))
        assert np.concatenate(parts).tolist() == (expected if piece is text else reference(piece)), chunk
        assert all(p.dtype == np.uint32 for p in parts)


# ---------------------------------------------------------------------------
# the array trie forced onto vocabularies that would use the regex


@pytest.fixture
def array_trie(monkeypatch):
    """Tokenizers made while this is active match through the array trie."""
    monkeypatch.setattr(matcher, "REGEX_LIMIT", 0)


@pytest.mark.parametrize("name", ["tokenizer_4096.json", "tokenizer_16384_v2.json", "nano_80.json"])
def test_array_trie_agrees_with_the_regex_on_the_shared_vocabularies(shared, vocab, corpus, name, monkeypatch):
    fast = vocab(name)
    monkeypatch.setattr(matcher, "REGEX_LIMIT", 0)
    forced = Tokenizer.load(shared / "data" / name)
    for source in ("pretrain_psycho.txt", "pretrain_amateur_radio.txt", "sft_self_id.jsonl"):
        text = corpus(source)
        for allow in (False, True):
            assert np.array_equal(forced.encode_array(text, allow), fast.encode_array(text, allow)), source
    assert forced._matcher(True)._trie is not None  # the path this test is about (all have multi-character specials)


def test_array_trie_passes_the_shared_vectors(shared, array_trie):
    vectors = json.loads((Path(__file__).resolve().parents[3] / "tests" / "vectors" / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizers = {name: Tokenizer.load(shared / "data" / name) for name in vectors["vocabs"]}
    for case in vectors["cases"]:
        tok = tokenizers[case["vocab"]]
        assert tok.encode(case["text"], allow_special=case["allow_special"]) == case["ids"], case["name"]
        for chunk in (1, 3, 64):
            parts = list(tok.encode_stream(io.StringIO(case["text"]), chunk, case["allow_special"]))
            assert (np.concatenate(parts).tolist() if parts else []) == case["ids"], (case["name"], chunk)


def test_array_trie_backs_up_to_the_last_token(array_trie):
    specials = list(DEFAULT_SPECIALS)
    tok = Tokenizer(specials + ["a", "b", "c", "d", "e", "ab", "abcd", "abcde", "xyz", "y"], {t: i for i, t in enumerate(specials)})
    s = tok.stoi
    assert tok.encode("abce") == [s["ab"], s["c"], s["e"]]
    assert tok.encode("abcdef") == [s["abcde"], tok.unk_id]
    assert tok.encode("xyxyz") == [tok.unk_id, s["y"], s["xyz"]]
    long = Tokenizer(specials + ["a" * k for k in range(1, 256)], {t: i for i, t in enumerate(specials)})
    assert long.encode("a" * 600) == [long.stoi["a" * 255]] * 2 + [long.stoi["a" * 90]]
