"""nano-tokenizer: inspect vocabularies, encode and decode text, build vocabularies.

Usage:
  nano-tokenizer info VOCAB
  nano-tokenizer encode VOCAB TEXTFILE [--out IDS.npy] [--allow-special]
  nano-tokenizer decode VOCAB [IDS... | IDS.npy | -]
  nano-tokenizer build CORPUS... --size N [--words FILE] [--special TOKEN]... -o OUT.json

VOCAB is a tokenizer JSON file or a .bin model file (its tokenizer section is
read). TEXTFILE is UTF-8 text, `-` for standard input; it is streamed, so any
size works. `encode` prints the ids separated by spaces, or writes them to a
.npy file of uint32 with --out. `decode` takes ids as arguments, from a .npy
file (known by its first bytes, whatever its name), or as whitespace/comma
separated text on standard input, and writes the text exactly (no newline
added); it works in pieces, so any number of ids fits, and writes nothing
unless every id is valid. Special-token strings in the text (such as <|eos|>)
stay ordinary characters unless --allow-special.

`build` reads the corpora as data preparation does (a leading byte-order mark
dropped, CRLF and lone CR as LF; a folder stands for every file in it and its
subfolders, in path order, names starting with ".", OUT.json and the --words
file left out) and notes on stderr how many of their characters did not fit in
--size.

Outputs are written atomically into an existing folder (none is created); an
output that is the same file as an input, or that could not be written (a
folder there, no such folder), is refused before any work is done. Named
inputs are regular files, or FIFOs that something writes to; a device, a
folder (except as build's CORPUS), a FIFO with no writer and an empty name are
refused.

Also runnable as `python -m nano_tokenizer`. Errors exit with status 1 and a
one-line message; a command line that is itself wrong, with status 2 after the
usage lines.
"""

from __future__ import annotations

import argparse
import io
import itertools
import math
import mmap
import os
import re
import struct
import sys
import tempfile
import tokenize
import unicodedata
from pathlib import Path
from typing import Iterator

import numpy as np
from nano_format import shown, spec

from . import __version__
from .build import BuildReport, build_vocab, corpus_files
from .tokenizer import (
    DEFAULT_CHUNK_CHARS,
    Tokenizer,
    TokenizerError,
    check_writable,
    open_input,
    read_utf8,
    write_atomically,
)

STDIN = "standard input"


class _Fail(Exception):
    """A user-facing error: printed as one line, exit status 1."""


class _Usage(_Fail):
    """A command line that is itself wrong (after the usage lines): exit status 2, as
    argparse, nano-format and the C tools give it."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        raise _Usage(message)


def _open_binary(path: str):
    if path == "-":
        if sys.stdin is None:  # started with standard input closed
            raise _Fail(f"{STDIN} is closed")
        return open(sys.stdin.fileno(), "rb", closefd=False)
    try:
        return open_input(path)  # not /dev/zero (it never ends), nor a FIFO that nothing writes to
    except OSError as e:
        raise _Fail(f"{path}: cannot read: {e.strerror or e}") from None


def _refuse_same_file(output: str, inputs) -> None:
    """Refuse to write over one of the command's own inputs (`-` is standard input)."""
    try:
        out_stat = os.stat(output)
    except OSError:
        return  # not there yet (or not reachable): it cannot be an input
    for name in inputs:
        try:
            in_stat = os.fstat(sys.stdin.fileno()) if name == "-" and sys.stdin else os.stat(name)
        except (OSError, ValueError):
            continue  # an unreadable input fails when it is read
        if os.path.samestat(out_stat, in_stat):
            shown = STDIN if name == "-" else f"the input {name}"
            raise _Fail(f"{output}: is the same file as {shown}; write the output elsewhere")


def _load_vocab(path: str, other: str | None, usage: str) -> Tokenizer:
    """Tokenizer.load(path). When that fails but `other`, the command's next
    argument, is a regular file that loads as a vocabulary, the two were
    swapped: the message says which comes first."""
    try:
        return Tokenizer.load(path)
    except TokenizerError as e:
        if other is not None and os.path.isfile(other):  # not a pipe: reading it would use it up
            try:
                Tokenizer.load(other)
            except TokenizerError:
                raise e from None
            raise _Fail(f"{e} ({other} is a vocabulary, and the vocabulary comes first: {usage})") from None
        raise


def _clip(word: str, limit: int = 40) -> str:
    return word if len(word) <= limit else f"{word[:limit]}... ({len(word)} characters)"


# ---------------------------------------------------------------------------
# info


def _char_class(ch: str) -> str:
    cp = ord(ch)
    if 0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0xF900 <= cp <= 0xFAFF or 0x20000 <= cp <= 0x3FFFF:
        return "CJK ideographs"
    category = unicodedata.category(ch)
    if category == "Cc":
        return "control"
    if cp < 0x80:
        return "ASCII printable"
    return {
        "L": "other letters",
        "N": "other numbers",
        "P": "other punctuation",
        "S": "other symbols",
        "M": "combining marks",
        "Z": "other spaces",
    }.get(category[0], "other")


def cmd_info(args) -> None:
    tok = Tokenizer.load(args.vocab)
    specials = tok.special_tokens
    kind = "JSON"  # a pipe is read once, by load, and only as JSON (a .bin model must be a regular file)
    if os.path.isfile(args.vocab):
        with open(args.vocab, "rb") as f:
            kind = ".bin model" if f.read(len(spec.MAGIC_BYTES)) == spec.MAGIC_BYTES else "JSON"
    longest_id = max(range(tok.vocab_size), key=lambda i: (len(tok.itos[i]), -i))
    ordinary = [i for i, t in enumerate(tok.itos) if t not in specials]
    multi = [i for i in ordinary if len(tok.itos[i]) > 1]
    classes: dict[str, int] = {}
    for i in ordinary:
        if len(tok.itos[i]) == 1:
            name = _char_class(tok.itos[i])
            classes[name] = classes.get(name, 0) + 1
    lines = [
        f"vocabulary   {shown(str(args.vocab))} ({kind})",
        f"tokens       {tok.vocab_size}",
        f"specials     {len(specials)}: "
        + ", ".join(f"{i} {shown(t)}" for t, i in sorted(specials.items(), key=lambda x: x[1])),
        f"longest      {len(tok.itos[longest_id])} code points: {tok.itos[longest_id]!r} (id {longest_id})",
    ]
    if multi:
        longest_word = max(multi, key=lambda i: (len(tok.itos[i]), -i))
        lines.append(
            f"multi-char   {len(multi)} ordinary tokens of 2+ code points, longest {tok.itos[longest_word]!r} (id {longest_word})"
        )
    else:
        lines.append("multi-char   none: every ordinary token is one code point")
    lines.append(f"characters   {sum(classes.values())} single-code-point tokens:")
    for name, count in sorted(classes.items(), key=lambda x: (-x[1], x[0])):
        lines.append(f"  {count:>7}  {name}")
    lines.append(f"fingerprint  {tok.fingerprint()}")
    print("\n".join(lines))


# ---------------------------------------------------------------------------
# encode


def _write_npy(out: Path, parts) -> int:
    """Stream uint32 ids into a .npy file. The header needs the final length,
    so the ids go to an unnamed temporary file beside `out` first and are
    copied in after it."""
    count = 0
    try:
        raw = tempfile.TemporaryFile(dir=out.parent)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(out)) from None  # not the temporary file's name
    with raw:
        for ids in parts:
            try:
                raw.write(ids.astype("<u4", copy=False).tobytes())
            except OSError as e:
                raise OSError(e.errno, e.strerror, str(out)) from None
            count += len(ids)
        raw.seek(0)
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<u4", "fortran_order": False, "shape": (count,)})
        write_atomically(out, itertools.chain([header.getvalue()], iter(lambda: raw.read(1 << 22), b"")))
    return count


def cmd_encode(args) -> None:
    tok = _load_vocab(args.vocab, args.textfile, "encode VOCAB TEXTFILE")
    if args.out is not None:
        _refuse_same_file(args.out, [args.vocab, args.textfile])
        check_writable(args.out)
    name = STDIN if args.textfile == "-" else args.textfile
    unknown = 0

    def counted(pieces):  # the <|unknown|> ids: characters the vocabulary lacks (noted at the end)
        nonlocal unknown
        for ids in pieces:
            unknown += int(np.count_nonzero(ids == tok.unk_id))
            yield ids

    with _open_binary(args.textfile) as f:
        parts = counted(tok.encode_stream(read_utf8(f, name), chunk_chars=args.chunk_chars,
                                          allow_special=args.allow_special))
        if args.out is not None:
            count = _write_npy(Path(args.out), parts)
            print(f"{count} ids -> {args.out}", file=sys.stderr)
        else:
            out = sys.stdout
            first = True
            for ids in parts:
                if len(ids):
                    out.write(("" if first else " ") + " ".join(map(str, ids.tolist())))
                    first = False
            out.write("\n")
    if unknown:
        print(f"note: {unknown} character{'s are' if unknown != 1 else ' is'} not in the vocabulary and became "
              f"<|unknown|> (as nano run and nano_train.sample note)", file=sys.stderr)


# ---------------------------------------------------------------------------
# decode
#
# The ids go through in pieces, so memory stays flat whatever their number: a
# .npy file is memory-mapped, ids on standard input are parsed as they arrive
# and kept in an unnamed temporary file. Every id is checked before any text is
# written, so a bad id anywhere leaves the output empty, as a whole decode does.

DECODE_CHUNK_IDS = 1 << 14  # ids per piece: at most 4 Mi code points even if every token has 255
MAX_CHUNK = 1 << 24  # the most --chunk-ids and --chunk-chars take: a piece is allocated whole
MAX_WORD_CHARS = 1 << 12  # the longest word held while standard input is read (an id needs 20)
_SEPARATORS = re.compile(r"[\s,\[\]]+")
_ID = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: int() would also take '١٠٠' (Arabic-Indic 100)


_NPY_LENGTH = {(1, 0): "<H", (2, 0): "<I", (3, 0): "<I"}  # the header length's field, by format version


def _check_header_length(f, path: str, version) -> None:
    """Refuse an unknown format version, and a header length that runs past the
    file's end, before numpy reads that many bytes (the field may say 4 GiB)."""
    if version not in _NPY_LENGTH:
        raise _Fail(f"{path}: not a .npy file (format version {version[0]}.{version[1]} is unknown)")
    start = f.tell()
    field = f.read(struct.calcsize(_NPY_LENGTH[version]))
    if len(field) == struct.calcsize(_NPY_LENGTH[version]):  # else numpy says the file ends early
        (length,) = struct.unpack(_NPY_LENGTH[version], field)
        left = os.fstat(f.fileno()).st_size - f.tell()
        if length > left:
            raise _Fail(f"{path}: not a .npy file (its header length says {length} bytes, {left} follow)")
    f.seek(start)


def _read_npy(path: str):
    """The ids of a .npy file as an array over a read-only memory map (pages
    are read as they are used), and a function that raises if the file has
    shrunk since: touching a page it no longer has would kill the process
    (SIGBUS). The header is checked against the file's size first (a header
    can claim any shape)."""
    fmt = np.lib.format
    try:
        with open_input(path, regular_only="an ids file is memory-mapped") as f:
            version = fmt.read_magic(f)
            _check_header_length(f, path, version)
            if version == (1, 0):
                shape, fortran_order, dtype = fmt.read_array_header_1_0(f)
            else:
                shape, fortran_order, dtype = fmt.read_array_header_2_0(f)
            if dtype.kind not in "iu":
                raise _Fail(f"{path}: holds {dtype}, not integer ids")
            # numpy's header parser takes any tuple: (-2, -2) and (True,) would reach reshape
            if not all(type(d) is int and d >= 0 for d in shape):
                raise _Fail(f"{path}: not a .npy file (its shape {_clip(repr(shape))} is not of sizes >= 0)")
            count = math.prod(shape)
            data_start = f.tell()
            data_size = os.fstat(f.fileno()).st_size - data_start
            if data_size != count * dtype.itemsize:
                raise _Fail(
                    f"{path}: the header promises {count} ids ({count * dtype.itemsize} bytes from byte "
                    f"{data_start}) but the file holds {data_size} bytes there"
                )
            if count == 0:
                return np.zeros(shape, dtype), lambda: None
            mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise _Fail(f"{path}: cannot read ids: {e.strerror or e}") from None
    except TokenizerError:
        raise  # open_input's refusal, which names the file already
    except tokenize.TokenError:  # numpy parses the header as Python; an unclosed bracket ends up here
        raise _Fail(f"{path}: not a .npy file (its header is cut short)") from None
    except (ValueError, SyntaxError, TypeError) as e:  # numpy's words for a broken header
        reason = "its header holds more than literals" if "malformed node" in str(e) else str(e)  # not ast's repr
        raise _Fail(f"{path}: not a .npy file ({reason})") from None
    arr = np.frombuffer(mapping, dtype=dtype, count=count, offset=data_start)
    end = data_start + data_size

    def check() -> None:
        if mapping.size() < end:
            raise _Fail(f"{path}: shrank to {mapping.size()} bytes while being read (from {end}); read it again")

    return arr.reshape(shape, order="F" if fortran_order else "C"), check


def _parse_ids(words) -> np.ndarray:
    ids = []
    for w in words:
        if not w:
            continue  # before a leading or after a trailing separator
        if not _ID.fullmatch(w):
            raise _Fail(f"not a token id: {_clip(repr(w))}")
        # Past 19 digits it is out of range anyway; do not make int() parse thousands.
        if len(w.lstrip("+-").lstrip("0")) > 19 or not -(2**63) <= int(w) < 2**63:
            raise _Fail(f"token id out of range: {_clip(w)}")
        ids.append(int(w))
    return np.array(ids, dtype=np.int64)


def _text_ids(pieces) -> Iterator[np.ndarray]:
    """Ids from text that arrives in pieces; a word cut between two pieces is
    joined up first, so any cut gives the ids of the whole text."""
    tail = ""  # a word that the next piece may go on with
    for piece in pieces:
        words = _SEPARATORS.split(tail + piece)
        tail = words.pop()
        if len(tail) > MAX_WORD_CHARS:
            raise _Fail(f"{STDIN}: a word over {MAX_WORD_CHARS} characters long is not a token id: {tail[:40]!r}...")
        yield _parse_ids(words)
    yield _parse_ids([tail])


def _spool(parts) -> np.ndarray:
    """The ids of `parts` in an unnamed temporary file, mapped back as one array."""
    count = 0
    try:
        with tempfile.TemporaryFile() as f:
            for ids in parts:
                f.write(ids.tobytes())
                count += len(ids)
            if count == 0:
                return np.zeros(0, np.int64)
            f.flush()
            return np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), dtype=np.int64)
    except OSError as e:
        raise _Fail(f"cannot keep the ids of {STDIN} in a temporary file: {e.strerror or e}") from None


_IDS_COME_AS = "token ids come as numbers, a .npy file, or - for standard input"
_NPY_MAGIC = np.lib.format.MAGIC_PREFIX  # b"\x93NUMPY"


def _only_ids(item: str) -> bool:
    return all(_ID.fullmatch(word) for word in _SEPARATORS.split(item) if word)


def _is_npy(item: str) -> bool:
    """Whether a non-numeric IDS argument names a .npy file: by its name, or
    else by its magic, as `encode --out ids.txt` writes a .npy whatever the name."""
    if item.endswith(".npy"):
        return True  # _read_npy says what is wrong with it, if anything
    if not os.path.isfile(item):  # a FIFO is not opened: that could wait for a writer
        return False
    try:
        with open(item, "rb") as f:
            return f.read(len(_NPY_MAGIC)) == _NPY_MAGIC
    except OSError as e:
        raise _Fail(f"{item}: cannot read ids: {e.strerror or e}") from None


def _read_ids(items: list[str], chunk: int):
    """(ids, check): an integer array, perhaps over a memory map, and a
    function to call before each piece of it is read (see _read_npy)."""
    if not items or items == ["-"]:
        if sys.stdin is None:  # started with standard input closed
            raise _Fail(f"{STDIN} is closed")
        return _spool(_text_ids(read_utf8(sys.stdin.buffer, STDIN, size=chunk))), lambda: None
    # An argument of ids only ("12", "1,2") is ids even if a file has that name.
    files = [item for item in items if not _only_ids(item) and (item.endswith(".npy") or os.path.lexists(item))]
    if len(items) == 1 and files and _is_npy(files[0]):
        return _read_npy(files[0])
    for item in files:
        if _is_npy(item):
            raise _Fail(f"{item}: a .npy file must be the only IDS argument ({_IDS_COME_AS})")
        raise _Fail(f"{item}: not a .npy file ({_IDS_COME_AS})")
    return _parse_ids(_SEPARATORS.split(" ".join(items))), lambda: None


def _pieces(ids: np.ndarray, size: int, check) -> Iterator[np.ndarray]:
    """`ids` in the order reshape(-1) gives them, `size` at a time; no more
    than a piece is read or copied at once."""
    flat = ids.reshape(-1) if ids.flags.c_contiguous else None  # a view
    for start in range(0, ids.size, size):
        check()
        if flat is not None:
            yield flat[start : start + size]
        else:  # a Fortran-order file: gather the piece
            stop = min(start + size, ids.size)
            yield ids[np.unravel_index(np.arange(start, stop), ids.shape)]


def cmd_decode(args) -> None:
    tok = _load_vocab(args.vocab, args.ids[0] if len(args.ids) == 1 else None, "decode VOCAB IDS")
    ids, check = _read_ids(args.ids, args.chunk_ids)
    low = high = 0  # a valid id: it changes neither the verdict nor the id named
    for piece in _pieces(ids, args.chunk_ids, check):
        low, high = min(low, int(piece.min())), max(high, int(piece.max()))
    tok._check_range(low, high)
    sys.stdout.flush()
    # A token is whole code points, so the pieces' UTF-8 joins up to the whole text's.
    for piece in _pieces(ids, args.chunk_ids, check):
        sys.stdout.buffer.write(tok.decode(piece).encode("utf-8"))
    sys.stdout.buffer.flush()


# ---------------------------------------------------------------------------
# build


def _share(part: int, whole: int) -> str:
    """part/whole as a percentage, never rounded to 0.0% or 100.0% when it is not."""
    if 0 < part < whole and part / whole < 0.001:
        return "under 0.1%"
    if 0 < part < whole and part / whole > 0.999:
        return "over 99.9%"
    return f"{part / whole:.1%}"


def _left_out_note(report: BuildReport, size: int, specials: int) -> str | None:
    """The note for corpus characters that got no token (the vocabulary is still written)."""
    if not report.left_out:
        return None
    share = _share(report.left_out_count, sum(report.counts.values()))
    if report.words:
        return (
            f"note: {len(report.left_out)} of the corpus' {len(report.counts)} characters did not fit "
            f"({share} of its characters, which encode as <|unknown|> wherever no word covers them): "
            f"--size {size} left room for {report.room} after {specials} special tokens and {report.words} "
            f"words; raise --size, or fewer --words"
        )
    return (
        f"note: {len(report.left_out)} of the corpus' {len(report.counts)} characters did not fit "
        f"({share} of its characters will encode as <|unknown|>): --size {size} left room for {report.room} "
        f"after {specials} special tokens; raise --size"
    )


def cmd_build(args) -> None:
    # a vocabulary built into the corpus folder, or a words file kept there, is no corpus text
    corpora = corpus_files(args.corpus, skip=[args.output, *([args.words] if args.words else [])])
    _refuse_same_file(args.output, [*corpora, *([args.words] if args.words else [])])
    check_writable(args.output)
    report = BuildReport()
    tok = build_vocab(corpora, args.size, words_file=args.words, specials=args.special, report=report)
    tok.save(args.output)
    print(f"{tok.vocab_size} tokens ({len(tok.special_tokens)} special) -> {args.output}", file=sys.stderr)
    if note := _left_out_note(report, args.size, len(tok.special_tokens)):
        print(note, file=sys.stderr)


# ---------------------------------------------------------------------------


def _file_name(text: str) -> str:
    """A file argument: an empty one is a mistake (an unset shell variable), never the current folder."""
    if not text:
        raise argparse.ArgumentTypeError("the file name is empty (an unset shell variable?)")
    return text


def _integer(low: int, high: int | None = None):
    """An integer option from `low` to `high`, in ASCII digits (int() would also
    take '١٠' and '1_0'); its range is checked here, so no later code sees it."""

    def parse(text: str) -> int:
        digits = text.strip()
        if not _ID.fullmatch(digits):
            raise argparse.ArgumentTypeError(f"not an integer: {_clip(repr(text))}")
        if len(digits.lstrip("+-").lstrip("0")) > 19:  # do not make int() parse thousands of digits
            raise argparse.ArgumentTypeError(f"out of range: {_clip(digits)}")
        value = int(digits)
        if value < low or (high is not None and value > high):
            span = f"at least {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"must be {span}, not {value}")
        return value

    return parse


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nano-tokenizer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"nano-tokenizer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("info", help="size, specials, longest token, character classes")
    p.add_argument("vocab", type=_file_name, metavar="VOCAB", help="tokenizer JSON or .bin model")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("encode", help="text file -> token ids")
    p.add_argument("vocab", type=_file_name, metavar="VOCAB", help="tokenizer JSON or .bin model")
    p.add_argument("textfile", type=_file_name, metavar="TEXTFILE", help="UTF-8 text, - for standard input")
    p.add_argument("--out", type=_file_name, metavar="IDS.npy", help="write a .npy of uint32 instead of printing")
    p.add_argument("--allow-special", action="store_true", help="match special-token strings as special tokens")
    p.add_argument("--chunk-chars", type=_integer(1, MAX_CHUNK), default=DEFAULT_CHUNK_CHARS, metavar="N", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="token ids -> text")
    p.add_argument("vocab", type=_file_name, metavar="VOCAB", help="tokenizer JSON or .bin model")
    p.add_argument("ids", nargs="*", metavar="IDS", help="ids, a .npy file, or - (default) for standard input")
    # Ids per piece, and bytes per read of standard input: tests make it small.
    p.add_argument("--chunk-ids", type=_integer(1, MAX_CHUNK), default=DECODE_CHUNK_IDS, metavar="N", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("build", help="build a vocabulary from corpora")
    p.add_argument("corpus", nargs="+", type=_file_name, metavar="CORPUS", help="UTF-8 text files, or folders of them (every file inside)")
    p.add_argument("--size", type=_integer(1), required=True, metavar="N", help="total vocabulary size (at most)")
    p.add_argument("--words", type=_file_name, metavar="FILE", help="multi-character tokens, one per line")
    p.add_argument("--special", action="append", default=[], metavar="TOKEN", help="an extra special token (repeatable)")
    p.add_argument("-o", "--output", type=_file_name, required=True, metavar="OUT.json", help="where to write the vocabulary")
    p.set_defaults(func=cmd_build)
    return parser


def main(argv=None) -> int:
    # Token texts are Unicode; do not let a non-UTF-8 locale turn them into a crash.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(encoding="utf-8", errors="backslashreplace")
    try:
        args = make_parser().parse_args(argv)
        args.func(args)
    except (_Fail, TokenizerError) as e:  # file names and token texts escaped, as nano-format does
        print(f"nano-tokenizer: error: {shown(str(e))}", file=sys.stderr)
        return 2 if isinstance(e, _Usage) else 1
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not worth a message. Point
        # stdout at /dev/null so the interpreter's final flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as e:
        name = f"{e.filename}: " if e.filename else ""
        print(f"nano-tokenizer: error: {shown(f'{name}{e.strerror or e}')}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
