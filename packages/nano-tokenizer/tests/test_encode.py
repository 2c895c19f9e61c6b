"""Encoding semantics: greedy longest match, unknowns, specials, streaming."""

import io
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nano_tokenizer import DEFAULT_SPECIALS, Tokenizer, TokenizerError, matcher

V4096, V16384, V80 = "tokenizer_4096.json", "tokenizer_16384_v2.json", "nano_80.json"


def make(tokens, extra_specials=()):
    specials = list(DEFAULT_SPECIALS) + list(extra_specials)
    return Tokenizer(specials + list(tokens), {t: i for i, t in enumerate(specials)})


# ---------------------------------------------------------------------------
# unknowns (defect 9: the unknown id, never padding)


def test_unknown_characters_become_unknown_id(vocab):
    tok = vocab(V16384)
    ids = tok.encode("a😀b\U00020000c")
    assert ids[1] == tok.unk_id == 1 and ids[3] == tok.unk_id
    assert tok.pad_id not in ids
    assert tok.decode(ids) == "a<|unknown|>b<|unknown|>c"


def test_each_unknown_code_point_is_one_token(vocab):
    tok = vocab(V4096)
    # A family emoji is five code points (three people, two zero-width joiners).
    family = "👨\u200d👩\u200d👧"
    assert tok.encode(family) == [tok.unk_id] * 5


def test_unknown_in_a_vocabulary_with_multichar_tokens(vocab):
    tok = vocab(V16384)
    assert tok.encode("🚀") == [tok.unk_id]
    assert tok.encode("ability🚀able") == [tok.stoi["ability"], tok.unk_id, tok.stoi["able"]]


def test_lone_surrogate_is_an_unknown(vocab):
    # Python strings can carry one (e.g. from surrogateescape); it is not in any vocabulary.
    for name in (V4096, V16384):
        tok = vocab(name)
        assert tok.encode("a\udc80b") == [tok.stoi["a"], tok.unk_id, tok.stoi["b"]]


# ---------------------------------------------------------------------------
# special tokens


@pytest.mark.parametrize("name", [V4096, V16384])
def test_special_strings_in_user_text_stay_characters(vocab, name):
    tok = vocab(name)
    ids = tok.encode("hi<|eos|>")
    assert tok.eos_id not in ids
    assert tok.decode(ids) == "hi<|eos|>"
    assert all(i not in tok.special_tokens.values() for i in ids)


@pytest.mark.parametrize("name", [V4096, V16384])
def test_specials_match_whole_when_allowed(vocab, name):
    tok = vocab(name)
    text = "<|instruct_mark|>你好<|response_mark|>好<|eos|>"
    ids = tok.encode(text, allow_special=True)
    assert ids[0] == tok.instruct_id and ids[-1] == tok.eos_id
    assert tok.response_id in ids
    assert len(ids) == 6
    assert tok.decode(ids) == text
    # A half-written special is ordinary text even when specials are allowed.
    assert tok.eos_id not in tok.encode("<|eos|", allow_special=True)


def test_special_properties(vocab):
    tok = vocab(V4096)
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.instruct_id, tok.response_id) == (0, 1, 2, 3, 4, 5)


def test_missing_special_property_raises():
    tok = Tokenizer(["<|unknown|>", "a"], {"<|unknown|>": 0})
    assert tok.unk_id == 0
    with pytest.raises(TokenizerError, match="no <\\|eos\\|> token"):
        tok.eos_id


def test_single_character_special_needs_allow():
    tok = make("ab", extra_specials=["§"])
    assert tok.encode("a§") == [tok.stoi["a"], tok.unk_id]
    assert tok.encode("a§", allow_special=True) == [tok.stoi["a"], tok.stoi["§"]]


# ---------------------------------------------------------------------------
# greedy longest match


def test_empty_input(vocab):
    for name in (V4096, V16384, V80):
        tok = vocab(name)
        assert tok.encode("") == [] and tok.encode("", allow_special=True) == []
        arr = tok.encode_array("")
        assert arr.shape == (0,) and arr.dtype == np.uint16
        assert list(tok.encode_stream(io.StringIO(""))) == []
        assert tok.decode([]) == ""


def test_longest_match_backs_up_to_the_last_token():
    # "abcd" is a token but "abc" is not: "abce" must give "ab" then "c".
    tok = make(["a", "b", "c", "d", "e", "ab", "abcd", "abcde"])
    s = tok.stoi
    assert tok.encode("abce") == [s["ab"], s["c"], s["e"]]
    assert tok.encode("abcd") == [s["abcd"]]
    assert tok.encode("abcdef") == [s["abcde"], tok.unk_id]
    assert tok.encode("abc") == [s["ab"], s["c"]]
    # Not even "x" is a token, yet "xyz" is: "xy" alone is two unknowns.
    tok = make(["xyz", "y"])
    assert tok.encode("xyxyz") == [tok.unk_id, tok.stoi["y"], tok.stoi["xyz"]]


def test_tokens_up_to_the_section_limit():
    # Nested prefixes 255 deep: the compiled pattern must not hit recursion limits.
    tok = make(["a" * k for k in range(1, 256)])
    assert tok.encode("a" * 600) == [tok.stoi["a" * 255]] * 2 + [tok.stoi["a" * 90]]
    with pytest.raises(TokenizerError, match="256 code points"):
        make(["a" * 256])


def test_regex_metacharacters_and_controls_are_literal():
    tokens = [".", "*", "(?:", "\\", "[]", "^$", "\x00", "\n", "\r\n", "|", ".*", "a"]
    tok = make(tokens)
    text = ".*(?:\\[]^$\x00\r\n\n|a\r"
    ids = tok.encode(text)
    assert tok.decode(ids) == text[:-1] + "<|unknown|>"
    assert ids == [
        tok.stoi[".*"], tok.stoi["(?:"], tok.stoi["\\"], tok.stoi["[]"], tok.stoi["^$"],
        tok.stoi["\x00"], tok.stoi["\r\n"], tok.stoi["\n"], tok.stoi["|"], tok.stoi["a"], tok.unk_id,
    ]


@pytest.mark.parametrize("name", [V4096, V16384, V80])
@pytest.mark.parametrize("allow", [False, True])
def test_matches_plain_trie_on_real_text(vocab, corpus, naive, name, allow):
    tok = vocab(name)
    for source in ("pretrain_psycho.txt", "pretrain_amateur_radio.txt", "sft_self_id.jsonl"):
        text = corpus(source)[:60_000]
        assert tok.encode(text, allow_special=allow) == naive(tok, text, allow), source
    radio = corpus("pretrain_amateur_radio.txt")
    at = radio.index("Bravo Hotel")
    text = radio[at - 2000 : at + 2000]
    assert tok.encode(text, allow_special=allow) == naive(tok, text, allow)


def _random_texts(tok, rng, count, length):
    """Text built from pieces of real tokens (whole, cut short, glued), specials,
    and characters no vocabulary has: the places where longest match can go wrong."""
    multi = [t for t in tok.itos if len(t) > 1]
    singles = [t for t in tok.itos if len(t) == 1]
    strangers = ["😀", "\U00020000", "\u0301", "\x00", "\r", "<", "|", ">"]
    for _ in range(count):
        parts = []
        while sum(map(len, parts)) < length:
            r = rng.random()
            if r < 0.4 and multi:
                token = rng.choice(multi)
                parts.append(token[: rng.randint(1, len(token))])
            elif r < 0.75:
                parts.append(rng.choice(singles))
            else:
                parts.append(rng.choice(strangers))
        yield "".join(parts)


@pytest.mark.parametrize("name", [V4096, V16384, V80])
def test_matches_plain_trie_on_random_text(vocab, naive, name):
    tok = vocab(name)
    rng = random.Random(1234)
    for text in _random_texts(tok, rng, 150, 300):
        for allow in (False, True):
            assert tok.encode(text, allow_special=allow) == naive(tok, text, allow), repr(text)


def test_matches_plain_trie_on_a_small_random_vocabulary(naive):
    # A dense little vocabulary over few letters: many prefixes, many dead ends.
    rng = random.Random(99)
    for _ in range(30):
        words = {"".join(rng.choice("abc") for _ in range(rng.randint(1, 6))) for _ in range(25)}
        tok = make(sorted(words))
        for _ in range(20):
            text = "".join(rng.choice("abcd") for _ in range(rng.randint(0, 80)))
            assert tok.encode(text) == naive(tok, text), (sorted(words), text)


def test_decode_concatenates(vocab, corpus):
    tok = vocab(V16384)
    text = corpus("pretrain_amateur_radio.txt")[:20_000]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode(np.array(ids, dtype=np.uint16)) == text
    assert "".join(tok.decode_piece(i) for i in ids) == text
    assert any(len(tok.decode_piece(i)) > 1 for i in ids)


def test_decode_rejects_bad_ids(vocab):
    tok = vocab(V80)
    for bad in ([80], [-1], [3, 1000]):
        with pytest.raises(TokenizerError, match="outside the vocabulary"):
            tok.decode(bad)
    with pytest.raises(TokenizerError, match="outside"):
        tok.decode_piece(80)
    with pytest.raises(TokenizerError):
        tok.decode(["a"])


@pytest.mark.parametrize(
    "ids, message",
    [
        ([[1], [2, 3]], r"ids\[0\] is \[1\], not an integer token id"),  # once numpy's own ValueError
        ([-1, 2**63], "token id -1 is outside the vocabulary"),  # once "got float64"
        ([3, 2**63], "token id 9223372036854775808 is outside the vocabulary"),
        ([2**64], "token id 18446744073709551616 is outside"),
        ([True], r"ids\[0\] is True, not an integer"),
        # Booleans among integers: numpy made them 1 and 0, so these once decoded.
        ([1, True], r"ids\[1\] is True, not an integer token id"),
        ((8, 9, False), r"ids\[2\] is False, not an integer token id"),
        ([np.int64(3), np.True_], r"ids\[1\] is True, not an integer token id"),
        (np.array([True, False]), r"ids\[0\] is True, not an integer token id \(an array of bool\)"),
        ([1, 2.0], r"ids\[1\] is 2.0, not an integer"),
        (5, "flat sequence of integers, got int"),
        (np.zeros((2, 2), dtype=np.int64), "flat sequence of integers, got int64 of shape"),
        # bytes iterate as integers: b"12" once decoded as the ids 49 and 50
        (b"12", r"expected token ids, got bytes b'12'"),
        (bytearray(b"\x08"), r"expected token ids, got bytearray"),
        ("89", r"expected token ids, got str '89'"),
    ],
)
def test_decode_says_what_is_wrong_with_the_ids(vocab, ids, message):
    with pytest.raises(TokenizerError, match=message):
        vocab(V80).decode(ids)


def test_decode_takes_any_iterable_of_ids(vocab):
    tok = vocab(V80)
    assert tok.decode(iter([8, 9])) == tok.decode((8, 9)) == tok.itos[8] + tok.itos[9]


# ---------------------------------------------------------------------------
# arrays, size, streaming


def test_encode_array_dtype(vocab):
    tok = vocab(V16384)
    arr = tok.encode_array("ability 能力")
    assert arr.dtype == np.uint16
    assert arr.tolist() == tok.encode("ability 能力")
    # Past 65536 tokens the ids need 32 bits.
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 70_000) if not 0xD800 <= c <= 0xDFFF]
    big = make(chars)
    arr = big.encode_array(chars[-1] + "a")
    assert arr.dtype == np.uint32
    assert arr.tolist() == [big.vocab_size - 1, big.unk_id]


@pytest.mark.parametrize("name", [V4096, V16384])
def test_five_megabytes_encode_in_linear_time(vocab, corpus, name):
    # No timing assertion; a quadratic encoder would take minutes here.
    tok = vocab(name)
    text = corpus("pretrain_psycho.txt")
    text = (text * (5_000_000 // len(text.encode("utf-8")) + 1))[: 5_000_000 // 3 + 1]
    text = text + " ability " * 20_000  # plenty of multi-character matches too
    # Drop the characters this vocabulary lacks so that decoding gives the text back.
    text = text.translate({ord(c): None for c in set(text) if c not in tok.stoi})
    arr = tok.encode_array(text)
    assert len(arr) > len(text) // 2
    assert tok.decode(arr) == text


STREAM_SIZES = [1, 2, 3, 4, 5, 7, 8, 11, 16, 17, 33, 64, 100, 257, 1000, 4096, 65536]


@pytest.mark.parametrize("name", [V4096, V16384, V80])
def test_stream_equals_whole_for_many_chunk_sizes(vocab, corpus, name):
    tok = vocab(name)
    radio = corpus("pretrain_amateur_radio.txt")
    at = radio.index("Bravo Hotel")
    text = radio[at - 300 : at + 900] + "<|eos|>ability<|bos|>" + "abilitie" * 5 + "😀\r\n"
    for allow in (False, True):
        whole = tok.encode(text, allow_special=allow)
        for size in STREAM_SIZES:
            parts = list(tok.encode_stream(io.StringIO(text), chunk_chars=size, allow_special=allow))
            got = np.concatenate(parts).tolist() if parts else []
            assert got == whole, (size, allow)
            assert all(p.dtype == tok.dtype for p in parts)


def test_stream_from_iterable_pieces(vocab):
    tok = vocab(V16384)
    text = "abilities and ability<|eos|>" * 50 + "能力"
    whole = tok.encode(text, allow_special=True)
    rng = random.Random(5)
    for size in (1, 3, 50):
        # Pieces of random lengths cut tokens (and specials) at every possible place.
        pieces, i = [], 0
        while i < len(text):
            n = rng.randint(0, 9)
            pieces.append(text[i : i + n])
            i += n
        got = np.concatenate(list(tok.encode_stream(iter(pieces), chunk_chars=size, allow_special=True)))
        assert got.tolist() == whole
    # A plain str is one piece, not an iterable of characters to type-check.
    assert np.concatenate(list(tok.encode_stream(text, chunk_chars=7, allow_special=True))).tolist() == whole


def test_stream_rejects_bytes(vocab):
    tok = vocab(V80)
    with pytest.raises(TypeError, match="text mode"):
        list(tok.encode_stream(io.BytesIO(b"abc")))
    with pytest.raises(TypeError, match="str pieces"):
        list(tok.encode_stream([b"abc"]))
    with pytest.raises(ValueError):
        list(tok.encode_stream(io.StringIO("abc"), chunk_chars=0))


def test_stream_keeps_carriage_returns(vocab, tmp_path):
    tok = vocab(V4096)
    path = tmp_path / "crlf.txt"
    path.write_bytes("a\r\nb\rc\n".encode("utf-8"))
    with open(path, encoding="utf-8", newline="") as f:
        got = np.concatenate(list(tok.encode_stream(f, chunk_chars=2)))
    assert tok.decode(got) == "a\r\nb\rc\n"


def test_encode_rejects_non_text(vocab):
    with pytest.raises(TypeError):
        vocab(V80).encode(b"abc")


# ---------------------------------------------------------------------------
# property: any small vocabulary, any text, any chunking

_ALPHABET = "ab<|>中\r\x00😀"


@settings(max_examples=150, deadline=None)
@given(
    words=st.sets(st.text(_ALPHABET, min_size=1, max_size=6), max_size=12),
    text=st.text(_ALPHABET + "xé", max_size=60),
    chunk=st.integers(1, 12),
    allow=st.booleans(),
)
@pytest.mark.parametrize("regex_limit", [matcher.REGEX_LIMIT, 0], ids=["regex", "array_trie"])
def test_property_matches_plain_trie_and_streams(naive, words, text, chunk, allow, regex_limit):
    specials = list(DEFAULT_SPECIALS) + ["<|a|>"]
    words = sorted(w for w in words if w not in specials)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(matcher, "REGEX_LIMIT", regex_limit)  # 0: large vocabularies' matcher, forced
        tok = Tokenizer(specials + words, {t: i for i, t in enumerate(specials)})
        expected = naive(tok, text, allow)
        assert tok.encode(text, allow_special=allow) == expected
        parts = list(tok.encode_stream(io.StringIO(text), chunk_chars=chunk, allow_special=allow))
        assert (np.concatenate(parts).tolist() if parts else []) == expected


def test_tokenizer_pickles_for_worker_processes(vocab):
    import pickle

    tok = vocab(V16384)
    text = "ability 能力<|eos|>"
    copy = pickle.loads(pickle.dumps(tok))
    assert copy == tok
    assert copy.encode(text, allow_special=True) == tok.encode(text, allow_special=True)
