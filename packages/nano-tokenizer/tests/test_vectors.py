"""The shared test vectors (tests/vectors/tokenizer.json at the repository root):
up to date with the generator, passing, and covering what they promise."""

import json
from pathlib import Path

import pytest

from nano_tokenizer import Tokenizer, vectors

REPO_ROOT = Path(__file__).resolve().parents[3]
VECTORS = REPO_ROOT / "tests" / "vectors" / "tokenizer.json"


@pytest.fixture(scope="module")
def committed():
    if not VECTORS.is_file():
        pytest.fail(f"{VECTORS} is missing: run python -m nano_tokenizer.vectors", pytrace=False)
    return VECTORS.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def doc(committed):
    return json.loads(committed)


def test_committed_file_is_what_the_generator_writes(shared, committed):
    fresh = vectors.dumps(vectors.generate(shared))
    assert committed == fresh, "tests/vectors/tokenizer.json is out of date: run python -m nano_tokenizer.vectors"


def test_generator_check_mode(shared, tmp_path):
    out = tmp_path / "v.json"
    assert vectors.main(["--shared", str(shared), "-o", str(out)]) == 0
    assert vectors.main(["--shared", str(shared), "-o", str(out), "--check"]) == 0
    out.write_text(out.read_text(encoding="utf-8").replace('"schema": 1', '"schema": 2'), encoding="utf-8")
    assert vectors.main(["--shared", str(shared), "-o", str(out), "--check"]) == 1


def test_generator_refuses_an_unwritable_out_before_the_work(shared, tmp_path, monkeypatch, capsys):
    """-o naming a folder, or a path under a file: one error line and status 1, no
    traceback, refused before the vectors are generated (before: IsADirectoryError
    from a plain open() after all the work). A written file is written atomically."""
    def no_work(_shared):
        raise AssertionError("generated before the output was checked")

    monkeypatch.setattr(vectors, "generate", no_work)
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    for out, reason in ((tmp_path, "exists and is not a regular file"),
                        (tmp_path / "afile" / "v.json", "cannot make the folder")):
        assert vectors.main(["--shared", str(shared), "-o", str(out)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("vectors: error: ") and reason in err and err.count("\n") == 1, err
    monkeypatch.undo()

    import nano_format

    written = []
    real = nano_format.write_atomically
    monkeypatch.setattr(nano_format, "write_atomically",
                        lambda path, chunks: written.append(path) or real(path, chunks))
    out = tmp_path / "v.json"
    assert vectors.main(["--shared", str(shared), "-o", str(out)]) == 0
    assert written == [out] and out.read_text(encoding="utf-8") == vectors.dumps(vectors.generate(shared))


def test_format(doc, committed):
    assert doc["schema"] == 1
    assert doc["generator"] == "python -m nano_tokenizer.vectors"
    assert len(committed.encode("utf-8")) < 300_000
    names = [case["name"] for case in doc["cases"]]
    assert len(names) == len(set(names))
    for case in doc["cases"]:
        assert list(case) == ["name", "vocab", "text", "allow_special", "ids", "decoded"]
        assert isinstance(case["allow_special"], bool)


def test_every_case_passes(shared, doc, vocab):
    for case in doc["cases"]:
        tok = vocab(case["vocab"])
        assert tok.vocab_size == doc["vocabs"][case["vocab"]]["vocab_size"]
        assert tok.encode(case["text"], allow_special=case["allow_special"]) == case["ids"], case["name"]
        assert tok.decode(case["ids"]) == case["decoded"], case["name"]


def test_vectors_cover_what_they_promise(doc, vocab):
    cases = doc["cases"]

    def tok(case) -> Tokenizer:
        return vocab(case["vocab"])

    def multi_char_matches(case):
        return sum(len(tok(case).itos[i]) > 1 and i not in tok(case).special_tokens.values() for i in case["ids"])

    assert {c["vocab"] for c in cases} == {"tokenizer_4096.json", "tokenizer_16384_v2.json", "nano_80.json"}
    assert any(c["text"] == "" for c in cases)
    english = [c for c in cases if c["name"].startswith("english_words_16384")]
    assert english and multi_char_matches(english[0]) > 20
    assert any(tok(c).unk_id in c["ids"] and "😀" in c["text"] for c in cases)
    # Special-token strings both ways, and the allowed ones matched as single tokens.
    plain = [c for c in cases if "<|eos|>" in c["text"] and not c["allow_special"]]
    allowed = [c for c in cases if "<|eos|>" in c["text"] and c["allow_special"]]
    assert plain and allowed
    assert all(tok(c).eos_id not in c["ids"] for c in plain)
    assert all(tok(c).eos_id in c["ids"] for c in allowed)
    # Odd Unicode: combining marks, beyond the BMP, lone CR, NUL.
    texts = "".join(c["text"] for c in cases)
    assert "\u0301" in texts and "\U00020000" in texts and "\x00" in texts
    assert any("\r" in c["text"] and "\r\n" not in c["text"] for c in cases)
    # Long inputs of a few KB from the corpora, some with multi-character matches.
    long_cases = [c for c in cases if len(c["text"].encode("utf-8")) > 3000]
    assert len(long_cases) >= 3 and any(multi_char_matches(c) > 0 for c in long_cases)
    # Decoding is not always the identity: unknowns come back as <|unknown|>.
    assert any(c["decoded"] != c["text"] for c in cases)
