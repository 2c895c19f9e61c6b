"""Build a vocabulary from text corpora.

Layout of the result (deterministic for the same inputs):
  1. the special tokens: the reference's seven (<|padding|> 0 ... <|BD4SUR|> 6),
     then any extra ones in the order given;
  2. single characters, most frequent first, ties by code point, as many as fit;
  3. the words of the optional words file, in file order.
`size` is the total; with fewer distinct characters than room the vocabulary
is smaller than `size`.
"""

from __future__ import annotations

from collections import Counter
from os import PathLike
from pathlib import Path

from .tokenizer import DEFAULT_SPECIALS, MAX_TOKEN_CODEPOINTS, Tokenizer, TokenizerError

_READ_CHARS = 1 << 20


def count_characters(paths) -> Counter:
    """Code point frequencies over the files, read in pieces so any size fits."""
    counts: Counter = Counter()
    for path in paths:
        try:
            # newline="": a CR in the corpus is a character like any other.
            with open(path, encoding="utf-8", newline="") as f:
                while piece := f.read(_READ_CHARS):
                    counts.update(piece)
        except UnicodeDecodeError as e:
            raise TokenizerError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except OSError as e:
            raise TokenizerError(f"{path}: cannot read: {e.strerror or e}") from None
    return counts


def read_words(path) -> list[str]:
    """One token per line, verbatim except for the line break; empty lines skipped."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read: {e.strerror or e}") from None
    words = []
    for number, word in enumerate(lines, 1):
        if not word:
            continue
        if len(word) > MAX_TOKEN_CODEPOINTS:
            raise TokenizerError(f"{path}:{number}: word is {len(word)} code points long (at most {MAX_TOKEN_CODEPOINTS})")
        words.append(word)
    return words


def build_vocab(corpora, size: int, words_file=None, specials=None) -> Tokenizer:
    """A vocabulary of at most `size` tokens from the corpus files.

    `specials` are extra special tokens placed after the reference's seven.
    """
    if isinstance(corpora, (str, PathLike)):
        corpora = [corpora]
    corpora = [Path(p) for p in corpora]
    if not corpora:
        raise TokenizerError("build_vocab needs at least one corpus file")
    if type(size) is not int or size < 1:
        raise TokenizerError(f"size must be a positive integer, got {size!r}")

    special_list = list(DEFAULT_SPECIALS)
    for token in specials or ():
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CODEPOINTS:
            raise TokenizerError(f"invalid special token {token!r}")
        if token not in special_list:
            special_list.append(token)

    taken = set(special_list)
    words = []
    if words_file is not None:
        for word in read_words(words_file):
            if word not in taken:
                taken.add(word)
                words.append(word)

    room = size - len(special_list) - len(words)
    if room < 0:
        raise TokenizerError(
            f"size {size} is too small: {len(special_list)} special tokens and {len(words)} words need "
            f"{len(special_list) + len(words)}"
        )
    counts = count_characters(corpora)
    ranked = sorted((ch for ch in counts if ch not in taken), key=lambda ch: (-counts[ch], ord(ch)))
    # Surrogates cannot come from strict UTF-8 decoding; nothing else is excluded.
    chars = ranked[:room]
    itos = special_list + chars + words
    source = "built from " + ", ".join(p.name for p in corpora)
    return Tokenizer(itos, {token: i for i, token in enumerate(special_list)}, source=source)
