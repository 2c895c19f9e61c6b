"""Greedy longest-match scanning over Unicode code points.

The rule (the same in every Nano implementation): at each position take the
longest token of the vocabulary that the remaining text starts with; if no
token matches, take one code point and give it the unknown id. Positions then
move past the match, so the output concatenates back to the input (with each
unknown code point replaced by the unknown token's text).

Walking a trie one character at a time in Python runs at a fraction of a
megabyte per second, so the work is split between numpy and `re`, both of
which loop in C:

* A character that starts no multi-character token (in Chinese text, nearly
  every character) is a one-code-point decision: its own id, or the unknown
  id. Those come from a numpy table indexed by code point.
* Characters that do start longer tokens ("branch" characters) go through one
  regular expression compiled from the trie with nested groups. A group is
  optional where the path so far is itself a token and required where it is
  not, so the regex engine's greedy backtracking stops at the longest prefix
  that is a token. The alternatives at a trie node start with different
  characters, so at most one can proceed: there is nothing ambiguous to
  resolve and the work per position is bounded by the longest token. A final
  `.` alternative takes one code point (the unknown token) when nothing fits.
  The regex's first alternative swallows whole runs of non-branch characters
  in one match, which the table then splits into one id per code point.

A window `text[pos:end]` is scanned at a time. A match that starts fewer than
`max_len` code points before the end of a window that is not the end of the
input might still grow when more text arrives, so it is held back for the next
window; that is what makes chunked and whole encodings identical.
"""

from __future__ import annotations

import re
from itertools import compress

import numpy as np

_END = ""  # key marking "the path to this trie node is a token"; tokens are never empty


def _escape(ch: str) -> str:
    # \U escapes work inside and outside character classes and make NUL, line
    # breaks, regex metacharacters and astral code points all look the same.
    return "\\U%08x" % ord(ch)


def _build_trie(tokens) -> dict:
    root: dict = {}
    for token in tokens:
        node = root
        for ch in token:
            node = node.setdefault(ch, {})
        node[_END] = True
    return root


def _node_pattern(node: dict) -> str:
    """The regex for whatever may follow the path that leads to `node`."""
    children = sorted((ch, child) for ch, child in node.items() if ch != _END)
    if not children:
        return ""
    if len(children) == 1 and _END not in node:
        # A straight run through non-token nodes needs no group: it must match
        # as a whole or not at all. This keeps nesting shallow for long tokens.
        ch, child = children[0]
        return _escape(ch) + _node_pattern(child)
    body = "(?:" + "|".join(_escape(ch) + _node_pattern(child) for ch, child in children) + ")"
    # Optional only when stopping here yields a token: greedy `?` tries to go
    # deeper first and falls back to stopping here.
    return body + "?" if _END in node else body


def compile_trie_regex(root: dict, branches: list[str]) -> re.Pattern:
    """One pattern whose every match is either a run of non-branch characters
    or the greedy longest-match token (or one unknown code point) at a branch
    character."""
    alternatives = ["[^" + "".join(map(_escape, branches)) + "]+"]
    alternatives += [_escape(ch) + _node_pattern(root[ch]) for ch in branches]
    alternatives.append(".")
    return re.compile("|".join(alternatives), re.DOTALL)


class _UnknownDefault(dict):
    """token text -> id, answering the unknown id for anything else."""

    __slots__ = ("unk_id",)

    def __init__(self, mapping, unk_id: int):
        super().__init__(mapping)
        self.unk_id = unk_id

    def __missing__(self, key):
        return self.unk_id


class Matcher:
    """Greedy longest match over a fixed set of tokens (text -> id)."""

    def __init__(self, token_ids: dict[str, int], unk_id: int):
        self.max_len = max(map(len, token_ids), default=1)
        singles = {token: i for token, i in token_ids.items() if len(token) == 1}
        top = max(map(ord, singles), default=0)
        # Per code point: its id as a one-character token, else unknown. One
        # spare entry past the largest stands for every code point beyond it,
        # so lookups clip instead of branching.
        self._table = np.full(top + 2, unk_id, dtype=np.uint32)
        for ch, token_id in singles.items():
            self._table[ord(ch)] = token_id
        root = _build_trie(token_ids)
        branches = sorted(ch for ch, child in root.items() if list(child) != [_END])
        if branches:
            self._regex = compile_trie_regex(root, branches)
            self._lookup = _UnknownDefault(token_ids, unk_id)
            self._is_branch = np.zeros(max(top, max(map(ord, branches))) + 2, dtype=bool)
            self._is_branch[[ord(ch) for ch in branches]] = True
        else:
            self._regex = None  # every token is one code point: the table is the whole story

    def _code_points(self, text: str, table_size: int) -> np.ndarray:
        # surrogatepass: a lone surrogate in a Python string is just an unknown code point.
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        return np.minimum(cps, table_size - 1)

    def scan(self, text: str, pos: int, end: int, final: bool) -> tuple[np.ndarray, int]:
        """Ids (uint32) for the matches of `text[pos:end]` that are final, and
        where they stop. `final` says no text follows `end`."""
        if self._regex is None:
            return self._table[self._code_points(text[pos:end], len(self._table))], end

        pieces = self._regex.findall(text, pos, end)
        stop = end
        if not final:
            # Hold back the last matches that start within max_len of the end
            # (at most max_len - 1 code points): more text could extend them.
            keep = len(pieces)
            while keep and end - stop + len(pieces[keep - 1]) < self.max_len:
                keep -= 1
                stop -= len(pieces[keep])
            del pieces[keep:]
        if not pieces:
            return np.zeros(0, dtype=np.uint32), stop

        cps = self._code_points(text[pos:stop], len(self._is_branch))
        lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        starts = np.cumsum(lengths) - lengths
        # A piece starting with a branch character is one token (or one unknown);
        # any other piece is a run of one-code-point decisions.
        is_token = self._is_branch[cps[starts]]
        ids = self._table[np.minimum(cps, len(self._table) - 1)]
        emit = ~np.repeat(is_token, lengths)
        token_starts = starts[is_token]
        emit[token_starts] = True
        ids[token_starts] = np.fromiter(
            map(self._lookup.__getitem__, compress(pieces, is_token)), dtype=np.uint32, count=len(token_starts)
        )
        return ids[emit], stop
