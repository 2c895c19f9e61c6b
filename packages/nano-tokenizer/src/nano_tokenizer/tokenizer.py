"""The `Tokenizer`: a validated Nano vocabulary with encode and decode.

A vocabulary is a dense list of token strings (`itos`, ids 0..n-1), the
inverse map (`stoi`) and the special tokens (text -> id), exactly the keys of
the reference's JSON files. The same vocabulary can live in a `.bin` model file
as nano-format's tokenizer section; `from_tokens`/`to_tokens` convert.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
import reprlib
import stat
import time
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO, Iterable, Iterator, Mapping

import numpy as np
import nano_format
from nano_format import JSONTextError, TokenEntry, file_kind, open_without_waiting, other_format, parse_json, spec

from .matcher import Matcher

SCHEMA_VERSION = 1  # the "nano_schema" we write; files without one are the reference's
SCHEMA_KEY = "nano_schema"
MAX_TOKEN_CODEPOINTS = 255  # the tokenizer section stores a token's length in one byte
DEFAULT_CHUNK_CHARS = 1 << 16  # code points per scan: bounds memory, barely affects speed
# The largest tokenizer JSON we read: about 150 times the 16384 vocabulary
# (0.4 MB), and a bound on memory for a file that is not a vocabulary at all.
MAX_JSON_BYTES = 64 << 20
READ_BYTES = 1 << 20  # bytes per read when decoding UTF-8 files in pieces

# The texts the file format names (nano_format.spec) and the C engines read from nano.h
PADDING = spec.SPECIAL_PADDING
UNKNOWN = spec.SPECIAL_UNKNOWN
BOS = spec.SPECIAL_BOS
EOS = spec.SPECIAL_EOS
INSTRUCT = spec.SPECIAL_INSTRUCT
RESPONSE = spec.SPECIAL_RESPONSE
BD4SUR = "<|BD4SUR|>"  # the reference's own mark, which no engine treats specially
# The reference's special tokens, in id order; every vocabulary it builds starts with them.
DEFAULT_SPECIALS = (PADDING, UNKNOWN, BOS, EOS, INSTRUCT, RESPONSE, BD4SUR)

_SPECIAL_SHAPE = re.compile(r"<\|[^|]+\|>\Z")


class TokenizerError(ValueError):
    """A vocabulary that cannot be used, or a request it cannot serve."""


_HEAD_BYTES = len(spec.MAGIC_BYTES)  # the first bytes that tell a binary file (nano_format.other_format's too)


def _binary_kind(head: bytes) -> str | None:
    """What a file starting with `head` is, if it starts as a binary format people
    mistake for a vocabulary or a text: a Nano model, or one nano_format names (a
    PyTorch checkpoint, a GGUF, a .npy, ...); else None."""
    if head.startswith(spec.MAGIC_BYTES):
        return "a Nano model file"
    return other_format(head)


def _is_surrogate(ch: str) -> bool:
    return 0xD800 <= ord(ch) <= 0xDFFF


class Tokenizer:
    """A Nano vocabulary. Immutable once made; build one with `load`,
    `from_json_dict`, `from_tokens` or `build_vocab`."""

    def __init__(self, itos: Iterable[str], special_tokens: Mapping[str, int], *, source: str = "<memory>"):
        itos = tuple(itos)
        specials = dict(special_tokens)
        _validate(itos, specials, source)
        self._itos = itos
        self._stoi = {token: i for i, token in enumerate(itos)}
        self._specials = specials
        self.source = source
        self._matchers: dict[bool, Matcher] = {}

    # -- construction -------------------------------------------------------

    @classmethod
    def load(cls, path) -> "Tokenizer":
        """Read a tokenizer JSON file or the tokenizer section of a `.bin` model."""
        path = Path(open_input_name(path))  # an empty name is refused, never read as "."
        try:
            with open_input(path) as f:
                head = f.read(len(spec.MAGIC_BYTES))
                if head != spec.MAGIC_BYTES:
                    # Never more than the cap, whatever the source (a pipe may never end).
                    data = _read_at_most(f, MAX_JSON_BYTES + 1, head)
        except OSError as e:
            raise TokenizerError(f"{path}: cannot read: {e.strerror or e}") from None
        if head == spec.MAGIC_BYTES:
            return cls._load_bin(path)
        if len(data) > MAX_JSON_BYTES:
            raise TokenizerError(
                f"{path}: larger than {MAX_JSON_BYTES >> 20} MiB, the most a tokenizer JSON file may be; "
                "not a vocabulary"
            )
        not_ours = f"{path}: not a tokenizer JSON file nor a .bin model"
        if what := _binary_kind(data):  # no JSON text starts so: name the format, not its first bad byte
            raise TokenizerError(f"{path}: {what}, not a tokenizer JSON file nor a .bin model")
        try:
            d = parse_json(data.decode("utf-8"), unique_keys=True)  # a token given twice is a broken vocabulary
        except UnicodeDecodeError as e:
            raise TokenizerError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except JSONTextError as e:
            raise TokenizerError(f"{not_ours} ({e})") from None
        return cls.from_json_dict(d, source=str(path))

    @classmethod
    def _load_bin(cls, path: Path) -> "Tokenizer":
        try:
            with nano_format.read(path) as nano_file:
                kind = spec.TokenizerKind(nano_file.tokenizer_kind)
                if kind == spec.TokenizerKind.NONE:
                    raise TokenizerError(f"{path}: has no tokenizer section")
                if kind != spec.TokenizerKind.TRIE:
                    raise TokenizerError(f"{path}: holds a {kind.name} tokenizer, not a Nano vocabulary")
                tokens = nano_file.tokens
        except nano_format.FormatError as e:
            # nano-format's messages already name the file and the offset.
            raise TokenizerError(str(e)) from None
        except OSError as e:
            raise TokenizerError(f"{path}: cannot read: {e.strerror or e}") from None
        return cls.from_tokens(tokens, source=str(path))

    @classmethod
    def from_json_dict(cls, d, *, source: str = "<dict>") -> "Tokenizer":
        """From the reference's JSON keys (`vocab_size`, `stoi`, `itos`,
        `special_tokens`), with or without our `nano_schema`."""
        if not isinstance(d, dict):
            raise TokenizerError(f"{source}: expected a JSON object, found {type(d).__name__}")
        schema = d.get(SCHEMA_KEY, 0)
        if type(schema) is not int or schema < 0:
            raise TokenizerError(f"{source}: {SCHEMA_KEY} must be a non-negative integer, found {_short(schema)}")
        if schema > SCHEMA_VERSION:
            raise TokenizerError(
                f"{source}: {SCHEMA_KEY} {_short(schema)} is newer than this nano-tokenizer reads "
                f"(up to {SCHEMA_VERSION}); upgrade nano-tokenizer"
            )
        missing = [k for k in ("vocab_size", "stoi", "itos", "special_tokens") if k not in d]
        if missing:
            raise TokenizerError(f"{source}: missing key(s) {', '.join(missing)}")
        itos, stoi, specials, size = d["itos"], d["stoi"], d["special_tokens"], d["vocab_size"]
        if not isinstance(itos, list):
            raise TokenizerError(f"{source}: itos must be a list of strings")
        if not isinstance(stoi, dict):
            raise TokenizerError(f"{source}: stoi must be an object mapping token to id")
        if not isinstance(specials, dict):
            raise TokenizerError(f"{source}: special_tokens must be an object mapping token to id")
        if type(size) is not int:  # "80", 80.0 and true are not 80
            raise TokenizerError(f"{source}: vocab_size is {_short(size)}, not an integer")
        if size != len(itos):
            raise TokenizerError(f"{source}: vocab_size is {_short(size)} but itos holds {len(itos)} tokens")
        # itos is the authority; stoi must say exactly the same thing.
        _validate_itos(itos, source)
        if len(stoi) != len(itos):
            raise TokenizerError(f"{source}: stoi holds {len(stoi)} tokens but itos holds {len(itos)}")
        for token, token_id in stoi.items():
            if type(token_id) is not int:
                raise TokenizerError(f"{source}: stoi[{_short(token)}] is {_short(token_id)}, not an integer id")
            if not 0 <= token_id < len(itos):
                raise TokenizerError(
                    f"{source}: ids are not dense: stoi[{_short(token)}] = {_short(token_id)} is outside 0..{len(itos) - 1}"
                )
            if itos[token_id] != token:
                raise TokenizerError(
                    f"{source}: stoi and itos disagree: stoi[{_short(token)}] = {token_id} "
                    f"but itos[{token_id}] = {_short(itos[token_id])}"
                )
        return cls(itos, specials, source=source)

    @classmethod
    def from_tokens(cls, tokens, *, source: str = "<tokens>") -> "Tokenizer":
        """From nano-format `TokenEntry` records (`id`, `text`, `is_special`),
        in any order. Old files do not always set `is_special`; when no record
        has it, tokens shaped like `<|name|>` are taken as the special tokens."""
        tokens = list(tokens)
        by_id: dict[int, object] = {}
        for entry in tokens:
            if entry.id in by_id:
                raise TokenizerError(f"{source}: token id {entry.id} appears twice")
            by_id[entry.id] = entry
        if sorted(by_id) != list(range(len(tokens))):
            gap = next(i for i in range(len(tokens) + 1) if i not in by_id)
            raise TokenizerError(f"{source}: token ids are not dense: id {gap} is missing")
        ordered = [by_id[i] for i in range(len(tokens))]
        itos = [entry.text for entry in ordered]
        _validate_itos(itos, source)
        if any(entry.is_special for entry in ordered):
            specials = {entry.text: entry.id for entry in ordered if entry.is_special}
        else:
            specials = {text: i for i, text in enumerate(itos) if _SPECIAL_SHAPE.match(text)}
        return cls(itos, specials, source=source)

    # -- conversion ---------------------------------------------------------

    def to_json_dict(self) -> dict:
        """The reference's keys plus our schema version, ready for `json.dump`."""
        return {
            SCHEMA_KEY: SCHEMA_VERSION,
            "vocab_size": self.vocab_size,
            "stoi": dict(self._stoi),
            "itos": list(self._itos),
            "special_tokens": dict(self._specials),
        }

    def save(self, path) -> None:
        """Write the JSON file (UTF-8, compact) with `write_atomically`: a crash
        leaves the old file, a replaced file keeps its mode."""
        data = json.dumps(self.to_json_dict(), ensure_ascii=False, separators=(", ", ": "))
        write_atomically(path, [data.encode("utf-8")])

    def to_tokens(self) -> list:
        """nano-format `TokenEntry` records, `is_special` set for special tokens."""
        return [TokenEntry(id=i, text=text, is_special=text in self._specials) for i, text in enumerate(self._itos)]

    # -- the vocabulary -----------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self._itos)

    def __len__(self) -> int:
        return len(self._itos)

    @property
    def itos(self) -> tuple[str, ...]:
        return self._itos

    @property
    def stoi(self) -> Mapping[str, int]:
        return MappingProxyType(self._stoi)

    @property
    def special_tokens(self) -> Mapping[str, int]:
        return MappingProxyType(self._specials)

    def _special_id(self, text: str) -> int:
        try:
            return self._specials[text]
        except KeyError:
            raise TokenizerError(f"{self.source}: the vocabulary has no {text} token") from None

    pad_id = property(lambda self: self._special_id(PADDING), doc="id of <|padding|>")
    unk_id = property(lambda self: self._special_id(UNKNOWN), doc="id of <|unknown|>")
    bos_id = property(lambda self: self._special_id(BOS), doc="id of <|bos|>")
    eos_id = property(lambda self: self._special_id(EOS), doc="id of <|eos|>")
    instruct_id = property(lambda self: self._special_id(INSTRUCT), doc="id of <|instruct_mark|>")
    response_id = property(lambda self: self._special_id(RESPONSE), doc="id of <|response_mark|>")

    @property
    def dtype(self) -> np.dtype:
        """The smallest unsigned type that holds every id: uint16 up to 65536 tokens."""
        return np.dtype(np.uint16 if self.vocab_size <= 1 << 16 else np.uint32)

    def fingerprint(self) -> str:
        """sha256 (hex) of the compact JSON `{"itos": [...], "specials": [sorted ids]}`:
        equal exactly when two vocabularies give the same ids, texts and specials."""
        canonical = json.dumps(
            {"itos": list(self._itos), "specials": sorted(self._specials.values())},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def __eq__(self, other) -> bool:
        if not isinstance(other, Tokenizer):
            return NotImplemented
        return self._itos == other._itos and self._specials == other._specials

    __hash__ = None  # mutable-looking value semantics; compare with fingerprint() instead

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, specials={len(self._specials)}, source={self.source!r})"

    # -- encoding -----------------------------------------------------------

    def _matcher(self, allow_special: bool):
        allow_special = bool(allow_special)
        matcher = self._matchers.get(allow_special)
        if matcher is None:
            if allow_special:
                tokens = self._stoi
            else:
                tokens = {t: i for t, i in self._stoi.items() if t not in self._specials}
            matcher = self._matchers[allow_special] = Matcher(tokens, self.unk_id)
        return matcher

    def _windows(self, text: str, allow_special: bool) -> Iterator[np.ndarray]:
        """Scan `text` window by window (uint32 ids) so that a big string never
        turns into one Python object per match all at once."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        matcher = self._matcher(allow_special)
        window = max(DEFAULT_CHUNK_CHARS, 4 * matcher.max_len)
        pos, n = 0, len(text)
        while pos < n:
            end = min(pos + window, n)
            ids, pos = matcher.scan(text, pos, end, end == n)
            yield ids

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids by greedy longest match. Characters the vocabulary lacks
        become `unk_id`, one per code point. Special-token strings in `text`
        are ordinary characters unless `allow_special` (chat templates)."""
        out: list[int] = []
        for ids in self._windows(text, allow_special):
            out += ids.tolist()
        return out

    def encode_array(self, text: str, allow_special: bool = False) -> np.ndarray:
        """`encode` as a numpy array of `self.dtype`."""
        parts = [ids.astype(self.dtype, copy=False) for ids in self._windows(text, allow_special)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)

    def encode_stream(self, source, chunk_chars: int = DEFAULT_CHUNK_CHARS, allow_special: bool = False) -> Iterator[np.ndarray]:
        """Encode a text file object (opened in text mode; use newline="" to keep
        CR) or an iterable of str, yielding arrays of `self.dtype` whose
        concatenation equals `encode_array` of the whole text. Memory stays
        proportional to `chunk_chars` whatever the input size."""
        if chunk_chars < 1:
            raise ValueError("chunk_chars must be at least 1")
        matcher = self._matcher(allow_special)
        window = int(chunk_chars)
        # Text read but not yet final: the tail that a later match may extend,
        # then whatever has arrived since. Joined once per window, so tiny
        # pieces cost no repeated copying. A window shorter than the longest
        # token may finalise nothing; the text then simply waits for more.
        pending: list[str] = []
        pending_len = 0
        for piece in _text_pieces(source, window):
            pending.append(piece)
            pending_len += len(piece)
            if pending_len < window:
                continue
            text = "".join(pending)
            ids, stop = matcher.scan(text, 0, len(text), False)
            pending, pending_len = [text[stop:]], len(text) - stop
            if len(ids):
                yield ids.astype(self.dtype, copy=False)
        text = "".join(pending)
        if text:
            ids, _ = matcher.scan(text, 0, len(text), True)
            yield ids.astype(self.dtype, copy=False)

    # -- decoding -----------------------------------------------------------

    def decode(self, ids) -> str:
        """Concatenate the tokens' texts. Raises on ids outside the vocabulary."""
        arr = self._ids_array(ids)
        if arr.size == 0:
            return ""
        self._check_range(int(arr.min()), int(arr.max()))
        return "".join(map(self._itos.__getitem__, arr.tolist()))

    def _check_range(self, low: int, high: int) -> None:
        """Raise unless ids from `low` to `high` are all in the vocabulary (the
        command line checks a file's ids piece by piece with it)."""
        if low < 0 or high >= self.vocab_size:
            bad = low if low < 0 else high
            raise TokenizerError(f"token id {bad} is outside the vocabulary (0..{self.vocab_size - 1})")

    def _ids_array(self, ids) -> np.ndarray:
        """`ids` as a flat integer array, or a TokenizerError that says what is wrong."""
        if isinstance(ids, (str, bytes, bytearray, memoryview)):  # bytes iterate as ints: b"12" read as [49, 50]
            raise TokenizerError(f"expected token ids, got {type(ids).__name__} {_short(ids)}")
        if not isinstance(ids, np.ndarray) and hasattr(ids, "tolist"):
            ids = ids.tolist()  # e.g. a torch tensor, wherever it lives
        try:
            arr = np.asarray(ids)
        except (ValueError, TypeError, OverflowError):
            arr = None  # e.g. nested lists of different lengths
        if arr is not None and (arr.size == 0 or (arr.ndim == 1 and arr.dtype.kind in "iu")):
            if not hasattr(ids, "__array__"):  # arrays and tensors: their dtype said what they hold
                _refuse_bools(ids)  # numpy makes [1, True] the integers [1, 1]
            return arr
        if isinstance(ids, np.ndarray):
            if arr.ndim == 1 and arr.dtype.kind == "b":
                raise TokenizerError(f"ids[0] is {_short(arr[0].item())}, not an integer token id (an array of bool)")
            raise TokenizerError(f"ids must be a flat sequence of integers, got {arr.dtype} of shape {arr.shape}")
        # A Python sequence numpy could not make integers of: find the element at fault.
        # (An iterator lands here too, as a 0-d object array, and is fine if its items are.)
        try:
            items = list(ids)
        except TypeError:
            raise TokenizerError(f"ids must be a flat sequence of integers, got {type(ids).__name__}") from None
        for i, x in enumerate(items):
            if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
                raise TokenizerError(f"ids[{i}] is {_short(x)}, not an integer token id")
            if not 0 <= x < self.vocab_size:
                raise TokenizerError(f"token id {_short(x)} is outside the vocabulary (0..{self.vocab_size - 1})")
        return np.array(items, dtype=np.int64)

    def decode_piece(self, token_id: int) -> str:
        """The text of one token."""
        if isinstance(token_id, (bool, np.bool_)) or not isinstance(token_id, (int, np.integer)):
            raise TokenizerError(f"token id must be an integer, got {_short(token_id)}")
        if not 0 <= token_id < self.vocab_size:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1})")
        return self._itos[token_id]


# ---------------------------------------------------------------------------
# Helpers


def _refuse_bools(ids) -> None:
    """A bool is not a token id, though numpy and Python treat True as 1."""
    try:
        types = set(map(type, ids))  # at C speed; bool cannot be subclassed
    except TypeError:
        return  # numpy read it through the array protocol: its dtype says what it holds
    if bool in types or np.bool_ in types:
        i, x = next((i, x) for i, x in enumerate(ids) if isinstance(x, (bool, np.bool_)))
        raise TokenizerError(f"ids[{i}] is {x}, not an integer token id")


def _text_pieces(source, size: int) -> Iterator[str]:
    if isinstance(source, str):
        for i in range(0, len(source), size):
            yield source[i : i + size]
        return
    if hasattr(source, "read"):
        while True:
            piece = source.read(size)
            if not isinstance(piece, str):
                raise TypeError("encode_stream needs a file opened in text mode (encoding='utf-8')")
            if not piece:
                return
            yield piece
    for piece in source:
        if not isinstance(piece, str):
            raise TypeError(f"encode_stream needs str pieces, got {type(piece).__name__}")
        yield piece


# Byte order marks of the Unicode encodings other than UTF-8; UTF-32's first, as
# FF FE starts both little-endian ones. None of them is ever valid UTF-8.
_OTHER_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
               (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))


def other_unicode(head: bytes) -> tuple[bytes, str] | None:
    """(byte order mark, "UTF-16" or "UTF-32") when a file's first bytes are the byte
    order mark of a Unicode encoding other than UTF-8 (Notepad's "Unicode" is UTF-16);
    None otherwise. nano-train's data preparation names such files with it too."""
    for bom, encoding in _OTHER_BOMS:
        if head.startswith(bom):
            return bom, encoding
    return None


def read_utf8(f: BinaryIO, name, size: int = READ_BYTES, max_bytes: int | None = None, kind: str = "file") -> Iterator[str]:
    """Decode a binary file as strict UTF-8 piece by piece (no newline
    translation). A decoding error names `name` and the byte offset in the file
    (or what the file is: a binary format, UTF-16 or UTF-32 by its byte order mark).
    A file of more than `max_bytes` (if given) raises a TokenizerError that
    names it, the limit and what `kind` of file may be no larger, before
    anything past the limit is decoded."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes read before `block`
    head = b""  # the file's first bytes: a binary format is named rather than its first bad byte
    while True:
        block = f.read(size if max_bytes is None else min(size, max_bytes + 1 - offset))
        if len(head) < _HEAD_BYTES:
            head += block[: _HEAD_BYTES - len(head)]
        if max_bytes is not None and offset + len(block) > max_bytes:
            raise TokenizerError(f"{name}: larger than {max_bytes >> 20} MiB, the most a {kind} may be")
        held = len(decoder.getstate()[0])  # the start of a character cut by the last block
        try:
            text = decoder.decode(block, final=not block)
        except UnicodeDecodeError as e:
            if what := _binary_kind(head):
                raise TokenizerError(f"{name}: {what}, not UTF-8 text") from None
            if other := other_unicode(head):
                bom, encoding = other
                raise TokenizerError(f"{name}: starts with a {encoding} byte order mark ({bom.hex(' ').upper()}): a "
                                     f"{encoding} file, not UTF-8; convert it (e.g. iconv -f {encoding} -t UTF-8)"
                                     ) from None
            # e.start counts from the held bytes, not from the file's start.
            raise TokenizerError(f"{name}: not UTF-8 text ({e.reason} at byte {offset - held + e.start})") from None
        if text:
            yield text
        if not block:
            return
        offset += len(block)


def open_input_name(path) -> str:
    """`path` as a string; an empty one is refused (an unset shell variable is
    no file, and Path("") would read the current folder)."""
    name = os.fspath(path)
    if not name:
        raise TokenizerError("the file name is empty (an unset shell variable?)")
    return name


def open_input(path, *, regular_only: str | None = None) -> BinaryIO:
    """Open a named input for reading in binary, refusing what would hang or
    never end: anything but a regular file or a FIFO (a folder, a device such
    as /dev/zero, a socket) and a FIFO that nothing writes to (a plain open
    would wait for a writer forever). `regular_only`, when given, refuses a
    FIFO too and says why (e.g. "an ids file is memory-mapped"). The file is
    opened without blocking and its type taken from the open descriptor, so it
    cannot change between the check and the open. OSErrors and refusals name
    the file; refusals are TokenizerErrors."""
    name = open_input_name(path)
    fd, mode = open_without_waiting(name)
    try:
        if stat.S_ISFIFO(mode) and regular_only is None:
            head = _fifo_head(fd, name)
        elif stat.S_ISREG(mode):
            head = b""
        else:
            why = f"; {regular_only}" if regular_only else ""
            raise TokenizerError(f"{name}: cannot read: not a regular file but {file_kind(mode)}{why}")
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return _Peeked(f, head) if head else f


# How long a FIFO may have no writer before it is refused: a writer started just after
# the reader (`reader fifo & writer > fifo`) has this long to open it.
FIFO_WRITER_WAIT = 3.0


def _fifo_head(fd: int, name: str) -> bytes:
    """The first bytes of a FIFO opened without blocking: none yet when a
    writer is there but has written nothing. No writer reads as the end of the
    input at once; after FIFO_WRITER_WAIT seconds of that it is refused, as the
    writer the user meant to start has not started (or wrote nothing)."""
    deadline = time.monotonic() + FIFO_WRITER_WAIT
    while True:
        try:
            head = os.read(fd, READ_BYTES)
        except BlockingIOError:
            return b""  # a writer is there: wait for it as for any slow input
        if head:
            return head
        if time.monotonic() >= deadline:
            raise TokenizerError(f"{name}: cannot read: a FIFO (a pipe) that nothing wrote to in "
                                 f"{FIFO_WRITER_WAIT:g} s; start its writer first")
        time.sleep(0.02)


class _Peeked:
    """A binary file whose first bytes were read already (`head`): reads give
    them first, then go on with the file, as if nothing had been read."""

    def __init__(self, f: BinaryIO, head: bytes):
        self._f, self._head = f, head

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._f.read(size)
        if size is None or size < 0:
            data, self._head = self._head + self._f.read(), b""
            return data
        data, self._head = self._head[:size], self._head[size:]
        if len(data) < size:  # as a plain read of a pipe: wait for the rest, or its end
            data += self._f.read(size - len(data))
        return data

    def fileno(self) -> int:
        return self._f.fileno()

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_at_most(f: BinaryIO, limit: int, data: bytes = b"") -> bytes:
    """`data` followed by what `f` holds, `limit` bytes in all at most. In
    blocks: f.read(limit) would set aside `limit` bytes even for a small file."""
    parts, total = [data], len(data)
    while total < limit and (block := f.read(min(READ_BYTES, limit - total))):
        parts.append(block)
        total += len(block)
    return b"".join(parts)


def write_atomically(path, chunks: Iterable[bytes]) -> None:
    """`nano_format.write_atomically` (temporary file beside `path`, fsync,
    rename; a replaced file keeps its mode; only a regular file is replaced;
    errors name `path`), its refusal raised as a TokenizerError."""
    try:
        nano_format.write_atomically(path, chunks)
    except nano_format.FormatError as e:
        raise TokenizerError(str(e)) from None


def check_writable(path) -> None:
    """`nano_format.check_writable`: what write_atomically would refuse, refused
    before any work, as the same TokenizerError or OSError."""
    try:
        nano_format.check_writable(path)
    except nano_format.FormatError as e:
        raise TokenizerError(str(e)) from None


def _short(value) -> str:
    """repr() cut to a readable length: error messages stay one short line
    whatever a hostile file holds."""
    return _REPR.repr(value)


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 60




def _validate_itos(itos, source: str) -> None:
    if not itos:
        raise TokenizerError(f"{source}: the vocabulary is empty")
    seen: dict[str, int] = {}
    for i, token in enumerate(itos):
        if not isinstance(token, str):
            raise TokenizerError(f"{source}: itos[{i}] is {_short(token)}, not a string")
        if not token:
            raise TokenizerError(f"{source}: itos[{i}] is the empty string")
        if len(token) > MAX_TOKEN_CODEPOINTS:
            raise TokenizerError(
                f"{source}: itos[{i}] is {len(token)} code points long (at most {MAX_TOKEN_CODEPOINTS})"
            )
        if any(map(_is_surrogate, token)):
            raise TokenizerError(f"{source}: itos[{i}] = {_short(token)} contains a surrogate code point")
        if token in seen:
            raise TokenizerError(f"{source}: duplicate token {_short(token)} at ids {seen[token]} and {i}")
        seen[token] = i


def _validate(itos: tuple, specials: dict, source: str) -> None:
    _validate_itos(itos, source)
    index = {token: i for i, token in enumerate(itos)}
    for token, token_id in specials.items():
        if not isinstance(token, str) or token not in index:
            raise TokenizerError(f"{source}: special token {_short(token)} is not in the vocabulary")
        if type(token_id) is not int or index[token] != token_id:
            raise TokenizerError(
                f"{source}: special token {_short(token)} says id {_short(token_id)} but the vocabulary has it at {index[token]}"
            )
    if UNKNOWN not in specials:
        raise TokenizerError(f"{source}: no {UNKNOWN} special token (unknown characters encode to it)")
