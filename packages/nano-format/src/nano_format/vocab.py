"""The tokenizer section: Nano's code-point trie vocabulary and Qwen's byte-level BPE.

Trie section (spec.TokenizerKind.TRIE), all little-endian:
    u32 section length (bytes, counting these two fields), u32 vocab size,
    then per token: u8 code-point count, u8 is_special, u8 0xFF, u8 0xFF,
    u32 id, u32 x count code points.
BPE section (spec.TokenizerKind.BPE, llama2.c style):
    u32 section length, u32 max token length (bytes),
    then vocab_size records: f32 score, u32 byte length, bytes.

The check functions walk a section and raise on the first bad record without
building any Python objects per token, so that validating a hostile file costs
no memory; the decode functions build the token lists afterwards.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import spec
from .errors import BadTokenRecord, SizeOverflow, TrailingBytes, Truncated

__all__ = [
    "TokenEntry",
    "BpeToken",
    "encode_tokenizer_section",
    "decode_tokenizer_section",
    "encode_bpe_section",
    "decode_bpe_section",
]

_SECTION_HEAD = struct.Struct("<II")
_TRIE_HEAD = struct.Struct("<BBBBI")
_BPE_HEAD = struct.Struct("<fI")
_HEAD = spec.TOKENIZER_SECTION_HEADER
_SECTION = "tokenizer section"
_MAX_CODEPOINT = 0x10FFFF


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One entry of a Nano vocabulary: id, its text, and whether it is a special token."""

    id: int
    text: str
    is_special: bool = False


@dataclass(frozen=True, slots=True)
class BpeToken:
    """One entry of a Qwen byte-level BPE vocabulary (its id is its index)."""

    score: float
    data: bytes


def _section_length(buf, base: int) -> tuple[int, int]:
    """(section length, second header word), the length checked against `buf`."""
    if len(buf) < _HEAD:
        raise Truncated(f"the file ends {len(buf)} bytes into the tokenizer section's "
                        f"{_HEAD}-byte header", section=_SECTION, offset=base)
    length, second = _SECTION_HEAD.unpack_from(buf, 0)
    if length < _HEAD:
        raise BadTokenRecord(f"section length {length} is smaller than its own {_HEAD}-byte header",
                             field="tokenizer section length", offset=base)
    if length > len(buf):
        raise Truncated(f"the tokenizer section claims {length} bytes but only {len(buf)} remain",
                        section=_SECTION, field="tokenizer section length", offset=base)
    return length, second


def _check_code_points(cps, i: int, offset: int) -> None:
    for c in cps:
        if c > _MAX_CODEPOINT or 0xD800 <= c <= 0xDFFF:
            kind = "a surrogate" if c <= _MAX_CODEPOINT else "beyond U+10FFFF"
            raise BadTokenRecord(f"code point 0x{c:X} is {kind}", field=f"token {i}", offset=offset)


def _trie_records(buf, length: int, vocab_size: int, base: int):
    """Walk and validate the records; yield (id, code points, is_special)."""
    pos = _HEAD
    for i in range(vocab_size):
        where = base + pos
        if pos + spec.TOKEN_RECORD_HEADER > length:
            raise BadTokenRecord(f"record {i} of {vocab_size} runs past the section end "
                                 f"0x{base + length:X}", field=f"token {i}", offset=where)
        n, special, r0, r1, tid = _TRIE_HEAD.unpack_from(buf, pos)
        if n == 0:
            raise BadTokenRecord("empty token (0 code points)", field=f"token {i}", offset=where)
        if special > 1:
            raise BadTokenRecord(f"is_special byte is {special}, not 0 or 1",
                                 field=f"token {i}", offset=where + 1)
        if r0 != spec.TOKEN_RESERVED_BYTE or r1 != spec.TOKEN_RESERVED_BYTE:
            raise BadTokenRecord(f"reserved bytes are 0x{r0:02X} 0x{r1:02X}, not 0xFF 0xFF",
                                 field=f"token {i}", offset=where + 2)
        if tid != i:
            raise BadTokenRecord(f"record {i} has id {tid}; ids must run 0..{vocab_size - 1} in order",
                                 field=f"token {i}", offset=where + 4)
        pos += spec.TOKEN_RECORD_HEADER
        if pos + 4 * n > length:
            raise BadTokenRecord(f"its {n} code points run past the section end 0x{base + length:X}",
                                 field=f"token {i}", offset=where)
        cps = struct.unpack_from(f"<{n}I", buf, pos)
        _check_code_points(cps, i, base + pos)
        pos += 4 * n
        yield tid, cps, special == 1
    if pos != length:
        raise BadTokenRecord(f"the section length says {length} bytes but its {vocab_size} records "
                             f"end after {pos}", field="tokenizer section length", offset=base)


def check_trie_section(buf, vocab_size: int | None = None, base_offset: int = 0) -> int:
    """Validate the trie section at the start of `buf` (which may run on past it);
    return its length. Builds nothing per token."""
    length, stored_vocab = _section_length(buf, base_offset)
    _check_vocab_size(stored_vocab, vocab_size, base_offset)
    for _ in _trie_records(buf, length, stored_vocab, base_offset):
        pass
    return length


def _check_vocab_size(stored: int, expected: int | None, base: int) -> None:
    if expected is not None and stored != expected:
        raise BadTokenRecord(f"the section holds {stored} tokens but config vocab_size is {expected}",
                             field="tokenizer vocab size", offset=base + 4)


def _exact(buf, length: int, base: int) -> None:
    if len(buf) > length:
        raise TrailingBytes(f"{len(buf) - length} bytes after the {length}-byte tokenizer section",
                            offset=base + length)


def decode_tokenizer_section(buf, *, vocab_size: int | None = None, base_offset: int = 0) -> list[TokenEntry]:
    """Parse a whole trie section (exactly its bytes) into TokenEntry records.

    `vocab_size`, when given, must match the section's own count. `base_offset`
    is added to the offsets in error messages (the section's place in a file).
    """
    buf = memoryview(buf).cast("B")
    length, stored_vocab = _section_length(buf, base_offset)
    _exact(buf, length, base_offset)
    _check_vocab_size(stored_vocab, vocab_size, base_offset)
    return [TokenEntry(tid, "".join(map(chr, cps)), special)
            for tid, cps, special in _trie_records(buf, length, stored_vocab, base_offset)]


def encode_tokenizer_section(tokens) -> bytes:
    """The trie section for `tokens` (TokenEntry with ids 0..V-1 in order)."""
    parts = []
    n_tokens = 0
    for i, tok in enumerate(tokens):
        n_tokens += 1
        if not isinstance(tok, TokenEntry):
            raise BadTokenRecord(f"expected a TokenEntry, got {type(tok).__name__}", field=f"token {i}")
        if tok.id != i:
            raise BadTokenRecord(f"token at position {i} has id {tok.id}; ids must run 0..V-1 in order",
                                 field=f"token {i}")
        if not isinstance(tok.text, str):
            raise BadTokenRecord(f"text must be a str, not {type(tok.text).__name__}", field=f"token {i}")
        cps = [ord(ch) for ch in tok.text]
        if not 1 <= len(cps) <= spec.TOKEN_MAX_CODEPOINTS:
            raise BadTokenRecord(f"{tok.text!r} has {len(cps)} code points; a token has 1 to "
                                 f"{spec.TOKEN_MAX_CODEPOINTS}", field=f"token {i}")
        _check_code_points(cps, i, None)
        parts.append(_TRIE_HEAD.pack(len(cps), 1 if tok.is_special else 0,
                                     spec.TOKEN_RESERVED_BYTE, spec.TOKEN_RESERVED_BYTE, i))
        parts.append(struct.pack(f"<{len(cps)}I", *cps))
    body = b"".join(parts)
    length = _HEAD + len(body)
    if length > 0xFFFFFFFF:
        raise SizeOverflow(f"the tokenizer section would be {length} bytes, more than a u32 can say")
    return _SECTION_HEAD.pack(length, n_tokens) + body


# ---------------------------------------------------------------------------
# Qwen byte-level BPE


def _bpe_records(buf, length: int, vocab_size: int, max_len: int, base: int):
    """Walk and validate BPE records; yield (score, start, end) of each token's bytes."""
    pos = _HEAD
    for i in range(vocab_size):
        where = base + pos
        if pos + spec.BPE_RECORD_HEADER > length:
            raise BadTokenRecord(f"record {i} of {vocab_size} runs past the section end "
                                 f"0x{base + length:X}", field=f"token {i}", offset=where)
        score, n = _BPE_HEAD.unpack_from(buf, pos)
        pos += spec.BPE_RECORD_HEADER
        if n > max_len:
            raise BadTokenRecord(f"{n} bytes long, more than the section's max token length {max_len}",
                                 field=f"token {i}", offset=where + 4)
        if pos + n > length:
            raise BadTokenRecord(f"its {n} bytes run past the section end 0x{base + length:X}",
                                 field=f"token {i}", offset=where)
        yield score, pos, pos + n
        pos += n
    if pos != length:
        raise BadTokenRecord(f"the section length says {length} bytes but its {vocab_size} records "
                             f"end after {pos}", field="tokenizer section length", offset=base)


def _bpe_header(buf, base: int) -> tuple[int, int]:
    length, max_len = _section_length(buf, base)
    if max_len > length:
        raise BadTokenRecord(f"max token length {max_len} is larger than the whole section ({length})",
                             field="max token length", offset=base + 4)
    return length, max_len


def check_bpe_section(buf, vocab_size: int, base_offset: int = 0) -> tuple[int, int]:
    """Validate the BPE section at the start of `buf`; return (length, max token length)."""
    length, max_len = _bpe_header(buf, base_offset)
    for _ in _bpe_records(buf, length, vocab_size, max_len, base_offset):
        pass
    return length, max_len


def decode_bpe_section(buf, vocab_size: int, *, base_offset: int = 0) -> tuple[list[BpeToken], int]:
    """Parse a whole BPE section (exactly its bytes): (tokens, max token length)."""
    buf = memoryview(buf).cast("B")
    length, max_len = _bpe_header(buf, base_offset)
    _exact(buf, length, base_offset)
    tokens = [BpeToken(score, bytes(buf[start:end]))
              for score, start, end in _bpe_records(buf, length, vocab_size, max_len, base_offset)]
    return tokens, max_len


def _bpe_bytes(data, i: int) -> bytes:
    """A BpeToken's data as bytes: bytes-like as is, str as UTF-8; nothing else
    (bytes(5) would be five NUL bytes)."""
    if isinstance(data, str):
        try:
            return data.encode("utf-8")
        except UnicodeEncodeError as e:
            raise BadTokenRecord(f"text {data!r} is not valid Unicode ({e.reason})", field=f"token {i}") from None
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise BadTokenRecord(f"data must be bytes (or str), not {type(data).__name__}", field=f"token {i}")


def encode_bpe_section(tokens, max_token_length: int | None = None) -> bytes:
    """The BPE section for `tokens` (BpeToken list). The max token length
    defaults to the longest token; a given one must not be shorter."""
    parts = []
    longest = 0
    for i, tok in enumerate(tokens):
        if not isinstance(tok, BpeToken):
            raise BadTokenRecord(f"expected a BpeToken, got {type(tok).__name__}", field=f"token {i}")
        data = _bpe_bytes(tok.data, i)
        longest = max(longest, len(data))
        try:
            parts.append(_BPE_HEAD.pack(float(tok.score), len(data)))
        except (TypeError, ValueError, OverflowError):  # 1e300 does not fit a float32
            raise BadTokenRecord(f"score {tok.score!r} is not a number a float32 can hold",
                                 field=f"token {i}") from None
        parts.append(data)
    if max_token_length is None:
        max_token_length = longest
    if max_token_length < longest:
        raise BadTokenRecord(f"max_token_length {max_token_length} is shorter than the longest token "
                             f"({longest} bytes)", field="max token length")
    body = b"".join(parts)
    length = _HEAD + len(body)
    if length > 0xFFFFFFFF:
        raise SizeOverflow(f"the tokenizer section would be {length} bytes, more than a u32 can say")
    if max_token_length > length:  # the reader refuses this (a C engine sizes a buffer by it)
        raise BadTokenRecord(f"max_token_length {max_token_length} is larger than the whole section "
                             f"({length})", field="max token length")
    return _SECTION_HEAD.pack(length, max_token_length) + body
