"""Build a vocabulary from text corpora.

Layout of the result (deterministic for the same inputs):
  1. the special tokens: the reference's seven (<|padding|> 0 ... <|BD4SUR|> 6),
     then any extra ones in the order given;
  2. single characters, most frequent first, ties by code point, as many as fit;
  3. the words of the optional words file, in file order.
`size` is the total; with fewer distinct characters than room the vocabulary
is smaller than `size`. Every word goes in, so words come before characters
when room is short: pass a BuildReport to learn which characters were left out.

Corpora are read as nano-train's data preparation reads them (a leading
byte-order mark dropped, CRLF and lone CR as LF; a folder stands for the files
in it and its subfolders), so that no slot goes to a character the model never
sees.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Iterator

from nano_format import folder_files

from .tokenizer import (
    DEFAULT_SPECIALS,
    MAX_JSON_BYTES,
    MAX_TOKEN_CODEPOINTS,
    READ_BYTES,
    Tokenizer,
    TokenizerError,
    _is_surrogate,
    _short,
    open_input,
    open_input_name,
    read_utf8,
)

# Every word of a words file goes into the vocabulary, and a vocabulary's JSON
# may be 64 MiB at most (MAX_JSON_BYTES): a bigger words file is not one, and
# the words read so far must not grow with it.
MAX_WORDS_BYTES = MAX_JSON_BYTES
# A piece of short lines splits into many small strings (1 MiB of "ab" lines
# into 20 MiB of them): words files are read in smaller pieces than corpora.
WORDS_READ_BYTES = 1 << 16

def _pieces(path, size: int = READ_BYTES, max_bytes: int | None = None, kind: str = "file") -> Iterator[str]:
    """The file's text in pieces, read as strict UTF-8, verbatim; errors name
    the file and byte."""
    try:
        with open_input(path) as f:  # not a device such as /dev/zero, nor a FIFO nothing writes to
            yield from read_utf8(f, path, size, max_bytes=max_bytes, kind=kind)
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read: {e.strerror or e}") from None


def corpus_files(corpora, skip=()) -> list[str]:
    """The corpus names with each folder replaced by its files, as data preparation
    takes them (nano_format.folder_files: path order, hidden names and the paths in
    `skip` left out); an empty name, or a folder that cannot be listed or holds no
    file, is a TokenizerError."""
    files = []
    for name in map(open_input_name, corpora):  # Path("") would be the current folder
        if not os.path.isdir(name):
            files.append(name)
            continue
        try:
            found = folder_files(name, skip)
        except OSError as e:
            raise TokenizerError(f"cannot list the corpus folder {e.filename}: {e.strerror}") from None
        if not found:
            raise TokenizerError(f"the corpus folder {name} holds no files (names that start with '.' are skipped)")
        files.extend(found)
    return files


def as_prepared(pieces) -> Iterator[str]:
    """The text of one file as nano-train's data preparation reads it
    (encoding="utf-8-sig", universal newlines): a byte-order mark at the very
    start dropped (one elsewhere is kept), CRLF and lone CR turned into LF. A
    CR at the end of a piece waits for the next one, which may start with its LF."""
    first = True
    cr_held = False
    for piece in pieces:
        if first and piece:
            first = False
            if piece[0] == "\ufeff":
                piece = piece[1:]
        if cr_held:
            piece = "\r" + piece
        cr_held = piece.endswith("\r")
        if cr_held:
            piece = piece[:-1]
        yield piece.replace("\r\n", "\n").replace("\r", "\n")
    if cr_held:
        yield "\n"


def count_characters(paths) -> Counter:
    """Code point frequencies over the files, read as data preparation reads
    them (see as_prepared) and in pieces, so any size fits."""
    counts: Counter = Counter()
    for path in paths:
        for piece in as_prepared(_pieces(path)):
            counts.update(piece)
    return counts


@dataclass
class BuildReport:
    """What build_vocab saw and did, for a summary: pass one in and it is filled."""

    counts: Counter = field(default_factory=Counter)  # code point frequencies of the corpora (count_characters)
    words: int = 0  # distinct words of the words file that went in
    room: int = 0  # slots left for single characters after the specials and the words
    # Corpus characters with no ordinary token of their own, most frequent first:
    # text outside the words encodes each of them as <|unknown|>.
    left_out: tuple[str, ...] = ()

    @property
    def left_out_count(self) -> int:
        """How many of the corpora's characters are left-out ones."""
        return sum(self.counts[ch] for ch in self.left_out)


def read_words(path) -> Iterator[str]:
    """The words of a words file, one token per line, verbatim except for the
    line break and a byte order mark at the start of the file (dropped): lines
    end at LF, and a CR right before the LF belongs to the line break (CRLF
    files work); any other character, CR elsewhere included,
    is part of the word. Empty lines are skipped. Read in pieces and yielded
    as they come, so no line is held beyond a token's length, and a file over
    MAX_WORDS_BYTES is refused."""
    number = 0  # of the last complete line

    def checked(word: str) -> str:
        if len(word) > MAX_TOKEN_CODEPOINTS:
            raise TokenizerError(f"{path}:{number}: word is {len(word)} code points long (at most {MAX_TOKEN_CODEPOINTS})")
        return word

    tail = ""  # the line read so far, its LF not yet seen
    first = True
    for piece in _pieces(path, WORDS_READ_BYTES, MAX_WORDS_BYTES, "words file"):
        if first and piece:  # a byte order mark (Notepad's UTF-8) is not part of the first word
            first = False
            piece = piece.removeprefix("\ufeff")
        lines = (tail + piece).split("\n")
        tail = lines.pop()
        for line in lines:
            number += 1
            if word := checked(line[:-1] if line.endswith("\r") else line):
                yield word
        if len(tail) > MAX_TOKEN_CODEPOINTS + 1:  # + 1 for the CR of a CRLF still to come
            raise TokenizerError(f"{path}:{number + 1}: word is longer than {MAX_TOKEN_CODEPOINTS} code points")
    number += 1
    if word := checked(tail):  # the last line, if the file does not end with a line break
        yield word


def build_vocab(corpora, size: int, words_file=None, specials=None, report: BuildReport | None = None) -> Tokenizer:
    """A vocabulary of at most `size` tokens from the corpus files.

    `specials` are extra special tokens placed after the reference's seven.
    `report`, if given, is filled with the character counts and with the
    characters that did not fit (see BuildReport).
    """
    if isinstance(corpora, (str, PathLike)):
        corpora = [corpora]
    corpora = [Path(p) for p in corpus_files(corpora)]
    if not corpora:
        raise TokenizerError("build_vocab needs at least one corpus file")
    if type(size) is not int or size < 1:
        raise TokenizerError(f"size must be a positive integer, got {size!r}")

    if isinstance(specials, str):
        raise TokenizerError(f"specials must be a list of tokens, not the string {specials!r}")
    special_list = list(DEFAULT_SPECIALS)
    for token in specials or ():
        if not isinstance(token, str):
            raise TokenizerError(f"invalid special token {_short(token)}: not a string")
        if not token:
            raise TokenizerError("invalid special token '': empty")
        if len(token) > MAX_TOKEN_CODEPOINTS:
            raise TokenizerError(
                f"invalid special token {_short(token)}: {len(token)} code points long (at most {MAX_TOKEN_CODEPOINTS})"
            )
        if any(map(_is_surrogate, token)):  # e.g. bytes of a command line that are not UTF-8
            raise TokenizerError(f"invalid special token {_short(token)}: not UTF-8 text (a surrogate code point)")
        if token not in special_list:
            special_list.append(token)

    taken = set(special_list)
    words = []  # in file order, each once: memory grows with the distinct words, not the file
    if words_file is not None:
        open_input_name(words_file)
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
    tok = Tokenizer(itos, {token: i for i, token in enumerate(special_list)}, source=source)
    if report is not None:
        # ranked[room:], and any character that is itself a special token (never matched in plain text)
        ordinary = set(chars) | set(words)
        report.counts, report.words, report.room = counts, len(words), room
        report.left_out = tuple(
            sorted((ch for ch in counts if ch not in ordinary), key=lambda ch: (-counts[ch], ord(ch)))
        )
    return tok
