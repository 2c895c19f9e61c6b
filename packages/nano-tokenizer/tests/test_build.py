"""Building vocabularies from corpora."""

import tracemalloc

import pytest

import nano_tokenizer.build as build_module
from nano_tokenizer import DEFAULT_SPECIALS, Tokenizer, TokenizerError, build_vocab

REFERENCE_SPECIALS = {
    "<|padding|>": 0,
    "<|unknown|>": 1,
    "<|bos|>": 2,
    "<|eos|>": 3,
    "<|instruct_mark|>": 4,
    "<|response_mark|>": 5,
    "<|BD4SUR|>": 6,
}


def write(path, text):
    path.write_bytes(text.encode("utf-8"))
    return path


def test_specials_first_at_the_reference_ids(tmp_path):
    tok = build_vocab([write(tmp_path / "c.txt", "abc")], 100)
    assert dict(tok.special_tokens) == REFERENCE_SPECIALS
    assert list(tok.itos[:7]) == list(DEFAULT_SPECIALS)


def test_characters_by_frequency_ties_by_code_point(tmp_path):
    a = write(tmp_path / "a.txt", "ccc b a\r\n")
    b = write(tmp_path / "b.txt", "bb 中 c")
    tok = build_vocab([a, b], 100)
    # c:4, space:4, b:3, then a, 中, LF once each (ties by code point); the CR of CRLF is read as
    # data preparation reads it, as part of the line break.
    assert list(tok.itos[7:]) == [" ", "c", "b", "\n", "a", "中"]
    small = build_vocab([a, b], 7 + 3)
    assert list(small.itos[7:]) == [" ", "c", "b"]


def test_build_is_deterministic(shared, tmp_path):
    corpora = [shared / "data" / "pretrain_amateur_radio.txt", shared / "data" / "sft_self_id.jsonl"]
    first = build_vocab(corpora, 1500)
    second = build_vocab(list(reversed(corpora)), 1500)
    assert first == second and first.fingerprint() == second.fingerprint()
    assert first.vocab_size == 1500
    first.save(tmp_path / "one.json")
    second.save(tmp_path / "two.json")
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()


def test_vocabulary_smaller_than_size_when_few_characters(tmp_path):
    tok = build_vocab([write(tmp_path / "c.txt", "aab")], 4096)
    assert tok.vocab_size == 9


def test_words_file_and_extra_specials(tmp_path):
    corpus = write(tmp_path / "c.txt", "the cat sat on the mat")
    words = write(tmp_path / "w.txt", "the\ncat\n\nthe\n<|eos|>\n on\n")
    tok = build_vocab([corpus], 30, words_file=words, specials=["<|nano_meta_0|>", "<|eos|>"])
    assert tok.itos[7] == "<|nano_meta_0|>" and tok.special_tokens["<|nano_meta_0|>"] == 7
    # Words come last, in file order, duplicates and specials dropped, text verbatim.
    assert list(tok.itos[-3:]) == ["the", "cat", " on"]
    assert tok.vocab_size <= 30
    ids = tok.encode("the cat sat on")
    assert ids[0] == tok.stoi["the"] and tok.stoi["cat"] in ids and tok.stoi[" on"] in ids
    # Size counts everything: characters give way to words.
    tight = build_vocab([corpus], 8 + 3 + 2, words_file=words, specials=["<|nano_meta_0|>"])
    assert tight.vocab_size == 13 and list(tight.itos[8:10]) == [" ", "t"]


def test_build_errors(tmp_path):
    corpus = write(tmp_path / "c.txt", "abc")
    with pytest.raises(TokenizerError, match="too small"):
        build_vocab([corpus], 5)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff\xfe")
    with pytest.raises(TokenizerError, match="bad.txt: not UTF-8"):
        build_vocab([corpus, bad], 20)
    long_word = write(tmp_path / "long.txt", "ok\n" + "x" * 300 + "\n")
    with pytest.raises(TokenizerError, match="long.txt:2: word is 300 code points"):
        build_vocab([corpus], 20, words_file=long_word)
    with pytest.raises(TokenizerError, match="missing.txt: cannot read"):
        build_vocab([tmp_path / "missing.txt"], 20)
    with pytest.raises(TokenizerError, match="positive integer"):
        build_vocab([corpus], 0)
    with pytest.raises(TokenizerError, match="at least one corpus"):
        build_vocab([], 20)


def test_built_vocabulary_round_trips(tmp_path, corpus):
    path = write(tmp_path / "c.txt", corpus("pretrain_psycho.txt")[:50_000])
    tok = build_vocab(path, 2048)
    tok.save(tmp_path / "v.json")
    assert Tokenizer.load(tmp_path / "v.json") == tok
    text = corpus("pretrain_psycho.txt")[:5_000]
    assert tok.decode(tok.encode(text)).count("<|unknown|>") == tok.encode(text).count(tok.unk_id)


def test_words_file_splits_on_line_feed_only(tmp_path):
    # str.splitlines() also broke lines at these; the README says "verbatim but for the line break".
    odd = ["a\u2028b", "c\x0cd", "e\x0bf", "g\x1ch", "i\x1dj", "k\x1el", "m\x85n", "o\u2029p", "q\rr"]
    words = write(tmp_path / "w.txt", "\n".join(odd) + "\n")
    tok = build_vocab([write(tmp_path / "c.txt", "x")], 100, words_file=words)
    assert list(tok.itos[-len(odd):]) == odd
    # A CR right before the LF is part of the line break (CRLF files); elsewhere it is kept.
    crlf = write(tmp_path / "crlf.txt", "one\r\ntwo\r\r\n\r\nthree\r")
    tok = build_vocab([write(tmp_path / "c.txt", "x")], 100, words_file=crlf)
    assert list(tok.itos[-3:]) == ["one", "two\r", "three\r"]


def test_words_file_line_without_end_is_not_read_whole(tmp_path):
    words = tmp_path / "w.txt"
    words.write_bytes(b"ok\n" + b"x" * 3_000_000)
    with pytest.raises(TokenizerError, match=r"w.txt:2: word is longer than 255 code points"):
        build_vocab([write(tmp_path / "c.txt", "x")], 100, words_file=words)


def test_words_file_size_is_capped(tmp_path, monkeypatch):
    assert build_module.MAX_WORDS_BYTES == 64 << 20  # as a tokenizer JSON file
    corpus = write(tmp_path / "c.txt", "x")
    words = tmp_path / "w.txt"
    words.write_bytes(b"ab\n" * 349_525 + b"c")  # 1 MiB exactly
    # The cap is on the bytes read, so an endless file stops there too.
    monkeypatch.setattr(build_module, "MAX_WORDS_BYTES", 1 << 20)
    assert build_vocab([corpus], 100, words_file=words).itos[-2:] == ("ab", "c")
    with open(words, "ab") as f:
        f.write(b"d")
    with pytest.raises(TokenizerError, match=r"w.txt: larger than 1 MiB, the most a words file may be"):
        build_vocab([corpus], 100, words_file=words)


def test_words_held_grow_with_the_distinct_words_not_the_file(tmp_path):
    words = write(tmp_path / "w.txt", "ab\ncd\n" * 200_000)  # 1.2 MB, two words
    tracemalloc.start()
    try:
        tok = build_vocab([write(tmp_path / "c.txt", "x")], 100, words_file=words)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert tok.itos[-2:] == ("ab", "cd")
    # Once a list of every line: 26 MiB here, 180 MiB for 9 MB. Now what one 64 KiB piece splits into: 3 MiB.
    assert peak < 8 << 20, peak


def test_utf8_errors_give_the_byte_offset_in_the_file(tmp_path):
    # The error lies beyond the first read; the offset once counted from the decoder's chunk (1951425).
    bad = tmp_path / "bad.txt"
    bad.write_bytes("中".encode() * 1_000_000 + b"\xff")
    with pytest.raises(TokenizerError, match=r"bad.txt: not UTF-8 text \(invalid start byte at byte 3000000\)"):
        build_vocab([bad], 100)
    bad_words = tmp_path / "bad_words.txt"
    bad_words.write_bytes("中\n".encode() * 1_000_000 + b"\xff")
    with pytest.raises(TokenizerError, match=r"bad_words.txt: not UTF-8 text \(invalid start byte at byte 4000000\)"):
        build_vocab([write(tmp_path / "c.txt", "x")], 100, words_file=bad_words)
    cut = tmp_path / "cut.txt"
    cut.write_bytes(b"a" * (1 << 20) + "中".encode()[:2])  # a character cut off by the end of the file
    with pytest.raises(TokenizerError, match=r"at byte 1048576\)"):
        build_vocab([cut], 100)


def test_specials_must_be_a_list_not_a_string(tmp_path):
    with pytest.raises(TokenizerError, match="specials must be a list of tokens, not the string"):
        build_vocab([write(tmp_path / "c.txt", "x")], 100, specials="<|x|>")
