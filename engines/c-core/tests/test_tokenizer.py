"""The C tokenizer is nano_tokenizer's: shared vectors, whole corpora, edge cases.

Reference defect 9: unknown characters become <|unknown|> (never padding), and
multi-character matches work for every id (the reference C rejected ids >= 16384).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import nano_format as nf

VOCABS = ("tokenizer_4096.json", "tokenizer_16384_v2.json", "nano_80.json")


@pytest.fixture(scope="module")
def py_tokenizers(h):
    from nano_tokenizer import Tokenizer

    return {name: Tokenizer.load(h.shared_file(f"data/{name}")) for name in VOCABS}


@pytest.fixture(scope="module")
def c_tokenizers(nano, py_tokenizers):
    return {name: nano.tokenizer_from_section(nf.encode_tokenizer_section(tok.to_tokens()))
            for name, tok in py_tokenizers.items()}


@pytest.fixture(scope="module")
def vectors(h):
    path = h.REPO / "tests" / "vectors" / "tokenizer.json"
    if not path.is_file():
        pytest.fail(f"the shared tokenizer vectors are missing: {path}", pytrace=False)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["schema"] == 1
    return data["cases"]


def test_shared_vectors(c_tokenizers, vectors):
    failures = []
    for case in vectors:
        tok = c_tokenizers[case["vocab"]]
        ids = tok.encode(case["text"], case["allow_special"])
        if ids != case["ids"]:
            failures.append(f"{case['name']}: ids differ")
            continue
        if tok.decode(ids) != case["decoded"]:
            failures.append(f"{case['name']}: decoded text differs")
    assert not failures, "\n".join(failures)
    assert len(vectors) >= 20


@pytest.mark.parametrize("corpus", ["pretrain_psycho.txt", "pretrain_amateur_radio.txt", "sft_self_id.jsonl"])
def test_corpora_like_nano_tokenizer(h, py_tokenizers, c_tokenizers, corpus):
    text = h.shared_file(f"data/{corpus}").read_text(encoding="utf-8")[:60000]
    for name in VOCABS:
        for allow in (False, True):
            assert c_tokenizers[name].encode(text, allow) == py_tokenizers[name].encode(text, allow), (name, allow)


def test_fixture_vocabularies(nano, psycho_path, sort6_path, h):
    """The tokenizers inside the fixtures encode like nano_tokenizer on them."""
    from nano_tokenizer import Tokenizer

    text = h.shared_file("data/pretrain_psycho.txt").read_text(encoding="utf-8")[:20000] + "<|eos|> 251212 ☃"
    for path in (psycho_path, sort6_path):
        py = Tokenizer.from_tokens(nf.read(path).tokens)
        c = nano.load(path).tokenizer
        for allow in (False, True):
            assert c.encode(text, allow) == py.encode(text, allow), path.name
        # every token's text is whole UTF-8 (streamed text never splits a character)
        for i in range(c.vocab_size):
            assert c.token_text(i).decode("utf-8") == py.decode_piece(i)
            assert c.is_special(i) == (py.decode_piece(i) in py.special_tokens)


def test_unknown_is_unknown_not_padding(nano, psycho_path):
    """Defect 9: the reference C mapped unknown characters to padding (a stop token)."""
    tok = nano.load(psycho_path).tokenizer
    unk, pad = tok.find("<|unknown|>"), tok.find("<|padding|>")
    assert (unk, pad) == (1, 0)
    ids = tok.encode("☃\U0001F9FF")
    assert ids == [unk, unk]


def test_invalid_utf8_each_byte_is_unknown(c_tokenizers):
    tok = c_tokenizers["tokenizer_4096.json"]
    unk = tok.find("<|unknown|>")
    a, b = tok.encode("a")[0], tok.encode("b")[0]
    cases = {
        b"\xff": [unk],
        b"a\xe4\xb8": [a, unk, unk],            # truncated 3-byte sequence
        b"\xc0\xafb": [unk, unk, b],            # overlong '/'
        b"\xed\xa0\x80": [unk] * 3,             # a surrogate
        b"\xf4\x90\x80\x80": [unk] * 4,         # past U+10FFFF
        b"\x80a": [unk, a],                     # lone continuation byte
        b"\xe4\xb8\xad": tok.encode("中"),       # valid stays valid
        b"\xe4a": [unk, a],
    }
    for data, want in cases.items():
        assert tok.encode(data) == want, data


def test_multi_character_tokens_with_high_ids(nano):
    """Defect 9 (second half): multi-character tokens with ids >= 16384 still match."""
    texts = ["<|padding|>", "<|unknown|>"] + [chr(0x4E00 + i) for i in range(20000)] + ["ab", "abc", "一丁"]
    tokens = [nf.TokenEntry(id=i, text=t, is_special=i < 2) for i, t in enumerate(texts)]
    tok = nano.tokenizer_from_section(nf.encode_tokenizer_section(tokens))
    n = len(texts)
    assert tok.encode("abcab一丁一x") == [n - 2, n - 3, n - 1, 2, 1]


def test_specials_by_shape_when_no_flag_is_set(nano):
    """Old files do not set is_special: then <|name|> tokens are the special ones."""
    texts = ["<|padding|>", "<|unknown|>", "<|eos|>", "<", "|", "e", "o", "s", ">", "<|x"]
    tokens = [nf.TokenEntry(id=i, text=t, is_special=False) for i, t in enumerate(texts)]
    tok = nano.tokenizer_from_section(nf.encode_tokenizer_section(tokens))
    assert tok.is_special(2) and not tok.is_special(9)
    assert tok.encode("<|eos|>", allow_special=True) == [2]
    assert tok.encode("<|eos|>") == [3, 4, 5, 6, 7, 4, 8]
    assert tok.encode("<|x<|eos|>") == [9, 3, 4, 5, 6, 7, 4, 8]
    from nano_tokenizer import Tokenizer

    py = Tokenizer.from_tokens(tokens)
    for text in ("<|eos|>", "<|x<|eos|>|", "<<|unknown|>>"):
        for allow in (False, True):
            assert tok.encode(text, allow) == py.encode(text, allow)


def test_no_unknown_token(nano):
    tokens = [nf.TokenEntry(id=i, text=t) for i, t in enumerate(["a", "b"])]
    tok = nano.tokenizer_from_section(nf.encode_tokenizer_section(tokens))
    assert tok.encode("abba") == [0, 1, 1, 0]
    with pytest.raises(Exception, match="NANO_ERR_NO_TOKENIZER"):  # the vocabulary lacks a needed special token
        tok.encode("abc")


def test_decode_errors_and_buffers(nano, c_tokenizers):
    tok = c_tokenizers["nano_80.json"]
    ffi, lib = nano.ffi, nano.lib
    ids = ffi.new("int32_t[]", [20, 80])
    n = ffi.new("size_t *")
    assert nano.status_name(lib.nano_tokenizer_decode(tok.handle, ids, 2, ffi.NULL, 0, n)) == "NANO_ERR_BAD_TOKEN"
    ids = ffi.new("int32_t[]", [20, 21, 22])
    buf = ffi.new("char[]", 2)
    st = lib.nano_tokenizer_decode(tok.handle, ids, 3, buf, 2, n)
    assert nano.status_name(st) == "NANO_ERR_BUFFER_TOO_SMALL" and n[0] == 3
    out = ffi.new("int32_t[]", 2)
    st = lib.nano_tokenizer_encode(tok.handle, b"123", 3, 0, out, 2, n)
    assert nano.status_name(st) == "NANO_ERR_BUFFER_TOO_SMALL" and n[0] == 3
    assert tok.find("<|eos|>") == 3 and tok.find("nope") == -1 and tok.find("") == -1


def test_section_verdicts_match_nano_format(nano, py_tokenizers):
    section = nf.encode_tokenizer_section(py_tokenizers["nano_80.json"].to_tokens())
    out = nano.ffi.new("nano_tokenizer **")

    def status(data, vocab=0):
        st = nano.lib.nano_tokenizer_init_section(nano.ffi.from_buffer(data), len(data), vocab, out)
        if st == 0:
            nano.lib.nano_tokenizer_free(out[0])
        return nano.status_name(st)

    def py(data, vocab=None):
        try:
            nf.decode_tokenizer_section(data, vocab_size=vocab)
        except nf.FormatError as e:
            return type(e).__name__
        return None

    mapping = {None: "NANO_OK", "Truncated": "NANO_ERR_TRUNCATED", "BadTokenRecord": "NANO_ERR_BAD_TOKEN_RECORD",
               "TrailingBytes": "NANO_ERR_TRAILING_BYTES"}
    cases = [section, section[:5], section[:-1], section + b"\0", section[:8] + b"\x05" + section[9:],
             bytearray(section[:12]) + b"\x02" + section[13:]]
    for data in cases:
        data = bytes(data)
        assert status(data) == mapping[py(data)]
    assert status(section, 81) == mapping[py(section, 81)] == "NANO_ERR_BAD_TOKEN_RECORD"
    assert status(section, 80) == "NANO_OK"


def _qwen2_with_tokens(tokens) -> bytes:
    from nano_format.plan import model_params
    from nano_format import spec

    config = nf.Config(model_type=spec.ModelType.QWEN2, block_size=8, vocab_size=len(tokens), n_layer=1,
                       n_embd=16, n_head=2, n_kv_head=1, n_hidden=32, tie_embeddings=False)
    rng = np.random.default_rng(0)
    tensors = {p.name: rng.standard_normal(p.shape).astype(np.float32) for p in model_params(config)
               if p.name not in ("rope_cos", "rope_sin")}
    return nf.to_bytes(config, tensors, [nf.BpeToken(float(i), t) for i, t in enumerate(tokens)])


def test_find_of_empty_text_is_minus_one_for_both_kinds(nano, h):
    """len 0 finds nothing, trie or BPE: the BPE scan used to memcmp against NULL
    (undefined) and return the id of an empty token the vocabulary holds."""
    ffi, lib = nano.ffi, nano.lib
    trie = nano.load(h.model_bytes()).tokenizer
    bpe_model = nano.load(_qwen2_with_tokens([b"a", b"", b"bc", b"<|eos|>"]))
    bpe = bpe_model.tokenizer
    assert lib.nano_tokenizer_get_kind(bpe.handle) == lib.NANO_TOKENIZER_KIND_BPE
    assert lib.nano_tokenizer_get_kind(trie.handle) == lib.NANO_TOKENIZER_KIND_TRIE
    for tok in (trie, bpe):
        assert lib.nano_tokenizer_find(tok.handle, ffi.NULL, 0) == -1
        assert lib.nano_tokenizer_find(tok.handle, b"", 0) == -1
        assert lib.nano_tokenizer_find(tok.handle, b"a", 0) == -1
    assert bpe.find("bc") == 2 and bpe.find("<|eos|>") == 3 and trie.find("<|eos|>") == 3


def test_utf8_char_bytes_is_pythons_strict_utf8(nano):
    """nano_utf8_char_bytes: the well-formed character's bytes at the start, 0 where none
    (surrogates, overlong forms, past U+10FFFF, cut short, a lone continuation byte), as
    Python's strict decoder reads them: the stop-text errors name characters by it."""
    import random

    def want(b: bytes) -> int:
        for k in range(1, min(4, len(b)) + 1):
            try:
                return k if len(b[:k].decode("utf-8")) == 1 else 0
            except UnicodeDecodeError as e:
                if e.reason != "unexpected end of data":
                    return 0
        return 0

    rng = random.Random(5)
    cases = [bytes([a, b]) + bytes(rng.randrange(256) for _ in range(2)) for a in range(256) for b in range(0x70, 0xd0)]
    cases += [bytes(rng.randrange(0xc0, 0x100) for _ in range(1)) + bytes(rng.randrange(0x70, 0xd0) for _ in range(3))
              for _ in range(20000)]
    cases += [b"\xe4\xb8", b"\xf0\x9f\x98", b"a", "😀".encode(), b"\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80"]
    got = [nano.lib.nano_utf8_char_bytes(c, len(c)) for c in cases]
    assert got == [want(c) for c in cases]
    assert nano.lib.nano_utf8_char_bytes(b"a", 0) == 0 and nano.lib.nano_utf8_char_bytes(nano.ffi.NULL, 3) == 0
