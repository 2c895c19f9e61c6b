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

The regex grows with the trie (about ten bytes of pattern per trie node, and
`re` compiles it in Python: seconds and hundreds of MB for a vocabulary of
hundreds of thousands of tokens), so beyond `REGEX_LIMIT` code points of
multi-character tokens the multi-character matches come from an `_ArrayTrie`
instead: the same trie as sorted numpy arrays, built level by level with no
Python object per node, and walked from every branch position at once, one
trie level per numpy step. The greedy path through the longest matches found
at every position is then followed in Python, but only where multi-character
matches overlap.

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


# The regex path's limit, in code points of multi-character tokens (about the
# number of trie nodes). The 16384 vocabulary has 21,135; at 200,000 the regex
# takes about a second to compile, and it grows from there.
REGEX_LIMIT = 200_000

_CP_BITS = 21  # every code point is below 2**21: (node << 21) | code point is an edge's key


class _ArrayTrie:
    """The trie of the multi-character tokens as numpy arrays. Nodes are
    numbered level by level from the root (0), and edges sorted by their key
    `(parent << 21) | code point`; that order is the order the nodes were
    numbered in, so edge i leads to node i + 1."""

    def __init__(self, tokens: np.ndarray, lengths: np.ndarray, ids: np.ndarray):
        """`tokens` (an object array of distinct multi-character strings) with
        their `lengths` in code points and their `ids`."""
        order = np.argsort(-lengths, kind="stable")  # the tokens still going at a depth come first
        tokens, lengths, ids = tokens[order], lengths[order], ids[order]
        count = len(tokens)
        chars = np.frombuffer("".join(tokens).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        starts = np.cumsum(lengths) - lengths
        node = np.zeros(count, dtype=np.int64)  # how far down the trie each token's path has got
        levels, ends, next_node = [], [], 1
        for depth in range(int(lengths[0])):
            live = int(np.count_nonzero(lengths > depth))
            keys = node[:live] << _CP_BITS | chars[starts[:live] + depth]
            level, inverse = np.unique(keys, return_inverse=True)
            node[:live] = next_node + inverse.reshape(-1)
            next_node += len(level)
            levels.append(level)
            done = lengths[:live] == depth + 1
            ends.append((node[:live][done], ids[:live][done]))
        del chars, starts, node  # before the final arrays, to keep the peak down
        self.keys = np.concatenate(levels)
        self.has_children = np.zeros(next_node, dtype=bool)
        for level in levels:
            self.has_children[level >> _CP_BITS] = True
        del levels
        self.token = np.full(next_node, -1, dtype=np.int32)  # the token a node's path spells, or -1
        for nodes, token_ids_here in ends:
            self.token[nodes] = token_ids_here

    def walk(self, cps: np.ndarray, at: np.ndarray, ids: np.ndarray, lengths: np.ndarray) -> None:
        """From each position in `at` (all at once, one trie level per step),
        write the longest token that `cps` holds there into `ids` and its length
        into `lengths`; positions where none does keep what they have."""
        node = np.zeros(len(at), dtype=np.int64)
        n, last = len(cps), len(self.keys) - 1
        depth = 0
        while len(at):
            inside = at + depth < n
            at, node = at[inside], node[inside]
            keys = node << _CP_BITS | cps[at + depth]
            edge = np.searchsorted(self.keys, keys)
            found = self.keys[np.minimum(edge, last)] == keys
            at, node = at[found], edge[found] + 1
            token = self.token[node]
            hit = token >= 0
            ids[at[hit]] = token[hit]
            lengths[at[hit]] = depth + 1
            deeper = self.has_children[node]
            at, node = at[deeper], node[deeper]
            depth += 1


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
        # One pass in Python over the tokens, the rest in numpy: vocabularies
        # may have hundreds of thousands of tokens.
        tokens = np.array(list(token_ids), dtype=object)  # no Python int per token for the indexing below
        lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
        ids = np.fromiter(token_ids.values(), dtype=np.int64, count=len(tokens))
        self.max_len = int(lengths.max(initial=1))
        singles = tokens[lengths == 1]
        top = max(map(ord, singles), default=0)
        # Per code point: its id as a one-character token, else unknown. One
        # spare entry past the largest stands for every code point beyond it,
        # so lookups clip instead of branching.
        self._table = np.full(top + 2, unk_id, dtype=np.uint32)
        for ch in singles:
            self._table[ord(ch)] = token_ids[ch]
        multi = lengths > 1
        self._regex = self._trie = None  # neither: every token is one code point, the table is the whole story
        if not multi.any():
            return
        branches = sorted(set(token[0] for token in tokens[multi]))
        self._is_branch = np.zeros(max(top, ord(branches[-1])) + 2, dtype=bool)
        self._is_branch[[ord(ch) for ch in branches]] = True
        if int(lengths[multi].sum()) > REGEX_LIMIT:
            self._trie = _ArrayTrie(tokens[multi], lengths[multi], ids[multi])
        else:
            self._regex = compile_trie_regex(_build_trie(token_ids), branches)
            self._lookup = _UnknownDefault(token_ids, unk_id)

    def _code_points(self, text: str, table_size: int) -> np.ndarray:
        # surrogatepass: a lone surrogate in a Python string is just an unknown code point.
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        return np.minimum(cps, table_size - 1)

    def scan(self, text: str, pos: int, end: int, final: bool) -> tuple[np.ndarray, int]:
        """Ids (uint32) for the matches of `text[pos:end]` that are final, and
        where they stop. `final` says no text follows `end`."""
        if self._trie is not None:
            return self._scan_trie(text, pos, end, final)
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

    def _scan_trie(self, text: str, pos: int, end: int, final: bool) -> tuple[np.ndarray, int]:
        cps = self._code_points(text[pos:end], 1 << _CP_BITS)
        n = len(cps)
        # The longest match at every position, as if the encoder could start anywhere.
        ids = self._table[np.minimum(cps, len(self._table) - 1)]
        lengths = np.ones(n, dtype=np.int64)
        self._trie.walk(cps, np.flatnonzero(self._is_branch[np.minimum(cps, len(self._is_branch) - 1)]), ids, lengths)

        # Which of those the encoder actually takes, starting at 0. A position
        # that no multi-character match spans is always taken; only inside the
        # stretches those matches cover does it need to hop from match to match.
        taken = np.ones(n, dtype=bool)
        multi = np.flatnonzero(lengths > 1)
        if len(multi):
            spans = np.bincount(multi + 1, minlength=n + 1) - np.bincount(multi + lengths[multi], minlength=n + 1)
            covered = np.cumsum(spans[:n]) > 0
            taken[covered] = False
            edges = np.diff(covered.astype(np.int8), append=np.int8(0))
            step = lengths.tolist()
            hops = []
            # Each covered stretch [a, b) follows the taken position a - 1 and ends where a match ends.
            for a, b in zip((np.flatnonzero(edges == 1) + 1).tolist(), (np.flatnonzero(edges == -1) + 1).tolist()):
                i = a - 1 + step[a - 1]
                while i < b:
                    hops.append(i)
                    i += step[i]
            taken[hops] = True

        stop = n
        if not final:
            # Hold back the matches that start within max_len of the end: more text could extend them.
            late = max(n - self.max_len + 1, 0)
            held = np.flatnonzero(taken[late:])
            if len(held):
                stop = late + int(held[0])
        return ids[:stop][taken[:stop]], pos + stop
