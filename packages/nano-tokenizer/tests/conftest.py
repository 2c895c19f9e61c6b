"""Shared fixtures: where ../shared is, the reference vocabularies, and a
plain trie implementation of greedy longest match to check the fast one against."""

import os
from pathlib import Path

import pytest

from nano_tokenizer import Tokenizer

REPO_ROOT = Path(__file__).resolve().parents[3]
SHARED = Path(os.environ.get("NANO_SHARED", REPO_ROOT.parent / "shared"))
DATA = SHARED / "data"
FIXTURES = SHARED / "fixtures"

NEEDED = [
    DATA / "tokenizer_4096.json",
    DATA / "tokenizer_16384_v2.json",
    DATA / "nano_80.json",
    DATA / "pretrain_psycho.txt",
    DATA / "pretrain_amateur_radio.txt",
    DATA / "sft_self_id.jsonl",
    FIXTURES / "psycho_230k_1214_q80.bin",
    FIXTURES / "sort6_f32.bin",
]


@pytest.fixture(scope="session")
def shared() -> Path:
    missing = [str(p) for p in NEEDED if not p.is_file()]
    if missing:
        pytest.fail(
            "shared test data is missing (set NANO_SHARED to the folder holding data/ and fixtures/): "
            + ", ".join(missing),
            pytrace=False,
        )
    return SHARED


@pytest.fixture(scope="session")
def vocab(shared):
    """vocab(name) -> Tokenizer, loaded once per session (regexes compile once)."""
    cache = {}

    def get(name: str) -> Tokenizer:
        if name not in cache:
            cache[name] = Tokenizer.load(shared / "data" / name)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def corpus(shared):
    def read(name: str) -> str:
        with open(shared / "data" / name, encoding="utf-8", newline="") as f:
            return f.read()

    return read


_tries: dict = {}


def _trie(tok: Tokenizer, allow_special: bool) -> dict:
    key = (tok.fingerprint(), allow_special)
    if key not in _tries:
        root: dict = {}
        for token, token_id in tok.stoi.items():
            if token in tok.special_tokens and not allow_special:
                continue
            node = root
            for ch in token:
                node = node.setdefault(ch, {})
            node[None] = token_id  # None marks "a token ends here"
        _tries[key] = root
    return _tries[key]


def naive_encode(tok: Tokenizer, text: str, allow_special: bool = False) -> list[int]:
    """Greedy longest match the obvious way: walk a trie from each position,
    remember the last node that ends a token, jump past it."""
    root = _trie(tok, allow_special)
    ids, i = [], 0
    while i < len(text):
        node, best, best_end = root, tok.unk_id, i + 1
        j = i
        while j < len(text) and text[j] in node:
            node = node[text[j]]
            j += 1
            if None in node:
                best, best_end = node[None], j
        ids.append(best)
        i = best_end
    return ids


@pytest.fixture(scope="session")
def naive():
    return naive_encode
