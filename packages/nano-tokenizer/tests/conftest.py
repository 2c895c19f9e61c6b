"""Shared fixtures: the shared folder (checked for every file these tests read),
the reference vocabularies, and a plain trie implementation of greedy longest
match to check the fast one against."""

from pathlib import Path

import pytest

from nano_tokenizer import Tokenizer

NEEDED = [
    "data/tokenizer_4096.json",
    "data/tokenizer_16384_v2.json",
    "data/nano_80.json",
    "data/pretrain_psycho.txt",
    "data/pretrain_amateur_radio.txt",
    "data/sft_self_id.jsonl",
    "fixtures/psycho_230k_1214_q80.bin",
    "fixtures/sort6_f32.bin",
]


@pytest.fixture(scope="session")
def shared(shared_file) -> Path:
    """The shared folder, once every file these tests read is there (root conftest.py's shared_file)."""
    for rel in NEEDED:
        shared_file(rel)
    return shared_file(NEEDED[0]).parents[1]


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
