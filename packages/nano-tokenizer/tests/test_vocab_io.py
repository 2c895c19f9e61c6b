"""Loading, validating and saving the reference's vocabulary JSON."""

import json
import os
import stat

import pytest

import nano_tokenizer
from nano_tokenizer import SCHEMA_VERSION, Tokenizer, TokenizerError
from nano_tokenizer import tokenizer as tokenizer_module

NAMES = ["tokenizer_4096.json", "tokenizer_16384_v2.json", "nano_80.json"]


def test_version():
    assert nano_tokenizer.__version__ == "0.1.0"


@pytest.mark.parametrize("name", NAMES)
def test_load_matches_the_file(shared, name):
    raw = json.loads((shared / "data" / name).read_text(encoding="utf-8"))
    tok = Tokenizer.load(shared / "data" / name)
    assert "nano_schema" not in raw  # the reference's files carry no schema: accepted
    assert tok.vocab_size == raw["vocab_size"] == len(tok)
    assert list(tok.itos) == raw["itos"]
    assert dict(tok.stoi) == raw["stoi"]
    assert dict(tok.special_tokens) == raw["special_tokens"]


@pytest.mark.parametrize("name", NAMES)
def test_json_round_trip(shared, tmp_path, name):
    tok = Tokenizer.load(shared / "data" / name)
    out = tmp_path / name
    tok.save(out)
    saved = json.loads(out.read_text(encoding="utf-8"))
    raw = json.loads((shared / "data" / name).read_text(encoding="utf-8"))
    assert saved == {"nano_schema": SCHEMA_VERSION, **raw}
    again = Tokenizer.load(out)
    assert again == tok and again.fingerprint() == tok.fingerprint()
    # What we write, the reference reads: its four keys are all there, unchanged.
    assert {k: saved[k] for k in raw} == raw


def test_from_json_dict_and_to_json_dict(vocab):
    tok = vocab("nano_80.json")
    d = tok.to_json_dict()
    assert list(d) == ["nano_schema", "vocab_size", "stoi", "itos", "special_tokens"]
    assert Tokenizer.from_json_dict(d) == tok
    d.pop("nano_schema")
    assert Tokenizer.from_json_dict(d) == tok


def test_fingerprint(vocab):
    a, b = vocab("tokenizer_4096.json"), vocab("nano_80.json")
    assert len(a.fingerprint()) == 64 and a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == Tokenizer.from_json_dict(a.to_json_dict()).fingerprint()
    # Changing which tokens are special changes the fingerprint.
    d = b.to_json_dict()
    del d["special_tokens"]["<|BD4SUR|>"]
    assert Tokenizer.from_json_dict(d).fingerprint() != b.fingerprint()


def test_immutable_views(vocab):
    tok = vocab("nano_80.json")
    with pytest.raises(TypeError):
        tok.stoi["x"] = 1
    with pytest.raises(TypeError):
        tok.itos[0] = "x"
    with pytest.raises(TypeError):
        tok.special_tokens["x"] = 1


# ---------------------------------------------------------------------------
# validation: each kind of bad file gives its own message, naming the file


def small() -> dict:
    itos = ["<|padding|>", "<|unknown|>", "<|eos|>", "a", "b", "ab"]
    return {
        "vocab_size": len(itos),
        "stoi": {t: i for i, t in enumerate(itos)},
        "itos": itos,
        "special_tokens": {"<|padding|>": 0, "<|unknown|>": 1, "<|eos|>": 2},
    }


def broken(change):
    d = small()
    change(d)
    return d


BAD = {
    "stoi_disagrees": (lambda d: d["stoi"].update({"a": 4, "b": 3}), "stoi and itos disagree"),
    "not_dense": (lambda d: d["stoi"].update({"ab": 9}), "not dense"),
    "stoi_missing": (lambda d: d["stoi"].pop("ab"), "stoi holds 5 tokens but itos holds 6"),
    "vocab_size": (lambda d: d.update(vocab_size=7), "vocab_size is 7"),
    "duplicate_itos": (lambda d: d["itos"].__setitem__(5, "a"), "duplicate token 'a' at ids 3 and 5"),
    "special_absent": (lambda d: d["special_tokens"].update({"<|bos|>": 2}), "special token '<|bos|>' is not in the vocabulary"),
    "special_wrong_id": (lambda d: d["special_tokens"].update({"<|eos|>": 3}), "says id 3"),
    "no_unknown": (lambda d: d["special_tokens"].pop("<|unknown|>"), "no <|unknown|>"),
    "empty_token": (lambda d: (d["itos"].__setitem__(4, ""), d["stoi"].pop("b"), d["stoi"].update({"": 4})), "empty string"),
    "not_a_string": (lambda d: d["itos"].__setitem__(4, 7), "not a string"),
    "id_not_int": (lambda d: d["stoi"].update({"b": "4"}), "not an integer id"),
    "missing_key": (lambda d: d.pop("stoi"), "missing key"),
    "schema_newer": (lambda d: d.update(nano_schema=SCHEMA_VERSION + 1), "newer than this nano-tokenizer"),
    "schema_bad": (lambda d: d.update(nano_schema="1"), "nano_schema must be"),
    "surrogate": (lambda d: (d["itos"].__setitem__(4, "\ud800"), d["stoi"].pop("b"), d["stoi"].update({"\ud800": 4})), "surrogate"),
    "too_long": (lambda d: (d["itos"].__setitem__(4, "x" * 300), d["stoi"].pop("b"), d["stoi"].update({"x" * 300: 4})), "300 code points"),
    "empty_vocab": (lambda d: d.update(itos=[], stoi={}, vocab_size=0, special_tokens={}), "empty"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_vocabulary_files(tmp_path, kind):
    change, message = BAD[kind]
    path = tmp_path / f"{kind}.json"
    path.write_text(json.dumps(broken(change)), encoding="utf-8")
    with pytest.raises(TokenizerError) as info:
        Tokenizer.load(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_duplicate_json_keys(tmp_path):
    text = json.dumps(small()).replace('"b": 4', '"b": 4, "b": 4')
    path = tmp_path / "dup.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TokenizerError, match="duplicate key 'b'"):
        Tokenizer.load(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"{not json", "not a tokenizer JSON file"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[1, 2]", "expected a JSON object"),
    ],
)
def test_unreadable_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(TokenizerError, match=message):
        Tokenizer.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(TokenizerError, match="nope.json: cannot read"):
        Tokenizer.load(tmp_path / "nope.json")


def test_save_is_atomic_and_leaves_no_temporary_files(vocab, tmp_path):
    vocab("nano_80.json").save(tmp_path / "v.json")
    vocab("nano_80.json").save(tmp_path / "v.json")
    assert [p.name for p in tmp_path.iterdir()] == ["v.json"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),  # once a RecursionError
        ('{"vocab_size": ' + "9" * 5000 + "}", "a number with too many digits"),  # once int()'s ValueError
        ('{"itos": [' + "[" * 900 + "]" * 900 + '], "stoi": {}, "vocab_size": 1, "special_tokens": {}}', "itos[0] is"),
    ],
)
def test_hostile_json_is_a_tokenizer_error(tmp_path, content, message):
    path = tmp_path / "hostile.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TokenizerError) as info:
        Tokenizer.load(path)
    assert message in str(info.value) and str(path) in str(info.value)
    assert len(str(info.value)) < 300


def test_vocabulary_file_size_is_capped(tmp_path, monkeypatch):
    # Sparse: just over the cap without writing 64 MiB. Once read whole, so /dev/zero ate memory.
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:
        f.truncate(tokenizer_module.MAX_JSON_BYTES + 1)
    with pytest.raises(TokenizerError, match="huge.json: larger than 64 MiB"):
        Tokenizer.load(huge)
    # The cap is on the bytes actually read, so an endless file stops there too.
    path = tmp_path / "v.json"
    path.write_text(json.dumps(small()), encoding="utf-8")
    monkeypatch.setattr(tokenizer_module, "MAX_JSON_BYTES", path.stat().st_size)
    assert Tokenizer.load(path).vocab_size == 6
    monkeypatch.setattr(tokenizer_module, "MAX_JSON_BYTES", path.stat().st_size - 1)
    with pytest.raises(TokenizerError, match="larger than"):
        Tokenizer.load(path)


def test_save_gives_new_files_the_umask_mode_and_keeps_a_replaced_files_mode(vocab, tmp_path):
    tok = vocab("nano_80.json")
    old_umask = os.umask(0o027)
    try:
        tok.save(tmp_path / "new.json")  # mkstemp made it 0600
        assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o640
        kept = tmp_path / "kept.json"
        kept.write_text("old", encoding="utf-8")
        kept.chmod(0o604)
        tok.save(kept)
        assert stat.S_IMODE(kept.stat().st_mode) == 0o604 and Tokenizer.load(kept) == tok
    finally:
        os.umask(old_umask)


def test_save_errors_name_the_file_asked_for(vocab, tmp_path):
    tok = vocab("nano_80.json")
    target = tmp_path / "missing" / "v.json"
    with pytest.raises(FileNotFoundError) as info:
        tok.save(target)  # once named the temporary file, v.json.<random>.tmp
    assert info.value.filename == str(target) and ".tmp" not in str(info.value)
    assert not (tmp_path / "missing").exists()  # folders are not created
    with pytest.raises(TokenizerError, match="not a regular file; not replacing it"):
        tok.save(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_loading_a_small_file_reserves_no_memory_for_the_cap(shared):
    import tracemalloc

    tracemalloc.start()
    try:
        Tokenizer.load(shared / "data" / "nano_80.json")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # a read of up to the 64 MiB cap once set it all aside
