"""Errors: one class per way a model file can be wrong.

Every error carries the file (when known), the header field or section it is
about and the byte offset, so that a message reads like

    model.bin: n_head at offset 0x28: 3 does not divide n_embd 32

Catch `FormatError` to handle them all.
"""

from __future__ import annotations

__all__ = [
    "FormatError",
    "BadMagic",
    "UnsupportedVersion",
    "UnknownModelType",
    "UnknownQuantType",
    "BadHeader",
    "BadConfig",
    "BadGroupSize",
    "BadScale",
    "NonFiniteValue",
    "Truncated",
    "BadTokenRecord",
    "TrailingBytes",
    "SizeOverflow",
    "UnsupportedQuant",
    "WriteError",
]


class FormatError(Exception):
    """Base class: the bytes are not a model this package can read or write."""

    def __init__(self, message: str, *, path: str | None = None, field: str | None = None,
                 offset: int | None = None):
        super().__init__(message)
        self.message = message
        self.path = path  # set by the reader when the error escapes read()
        self.field = field
        self.offset = offset

    def __str__(self) -> str:
        where = []
        if self.field:
            where.append(self.field)
        if self.offset is not None:
            where.append(f"at offset 0x{self.offset:X}")
        text = f"{' '.join(where)}: {self.message}" if where else self.message
        return f"{self.path}: {text}" if self.path else text

    def __reduce__(self):  # keep the keyword arguments when pickled (multiprocessing)
        return (_rebuild, (type(self), self.message, self.__dict__))


def _rebuild(cls, message, state):
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class BadMagic(FormatError):
    """The first 8 bytes are not "S4DBMLRU": not a Nano model file."""


class UnsupportedVersion(FormatError):
    """The (major, minor) version is not one of spec.LAYOUTS."""


class UnknownModelType(FormatError):
    """The model type is unknown, or not one the file's layout can hold."""


class UnknownQuantType(FormatError):
    """The quant code means nothing in the file's layout."""


class BadHeader(FormatError):
    """A header field outside the config is wrong: config length, reserved bytes."""


class BadConfig(FormatError):
    """Zero, absurd or inconsistent model dimensions or settings."""


class BadGroupSize(FormatError):
    """The Q8_0 group size is zero or does not divide a quantized row length."""


class BadScale(FormatError):
    """A Q8_0 scale is NaN, infinite, or so large that dequantized values
    overflow float32, counting a stored q of -128 (found by
    NanoFile.check_scales() and tensor())."""


class NonFiniteValue(FormatError):
    """An F32 tensor holds a NaN or an infinity (found by NanoFile.check_finite());
    the writer never stores one."""


class Truncated(FormatError):
    """The file ends inside the header, the tokenizer section or the parameters."""

    def __init__(self, message: str, *, section: str, **kwargs):
        kwargs.setdefault("field", section)
        super().__init__(message, **kwargs)
        self.section = section  # "header", "tokenizer section" or "parameters"


class BadTokenRecord(FormatError):
    """A tokenizer record is malformed: runs past its section, bad reserved
    bytes, ids out of order, invalid code points, ..."""


class TrailingBytes(FormatError):
    """Bytes left over after the last tensor (or inside the tokenizer section)."""


class SizeOverflow(FormatError):
    """Sizes implied by the header overflow 64 bits or exceed the whole file."""


class UnsupportedQuant(FormatError):
    """A recognised quant type whose parameters this package cannot load (Q4K):
    the header and tokenizer can be inspected, the tensors cannot."""


class WriteError(FormatError, ValueError):
    """The writer was asked for something the chosen layout cannot hold:
    a missing or mis-shaped tensor, a feature the layout cannot record, ...;
    or write_atomically was asked to replace something that is not a regular file."""


def shown(text: str, backslash: bool = False) -> str:
    """`text` safe for a terminal: what is not printable is escaped as repr()
    would (\\n, \\x1b, \\u202e), without quotes; bytes that were not UTF-8 (a
    file name's, kept by Python as lone surrogates, or a BPE token's) show as
    \\xNN. `backslash` doubles backslashes too, so that the escapes read back."""
    out = []
    for ch in text:
        if 0xDC80 <= ord(ch) <= 0xDCFF:  # os.fsdecode's / surrogateescape's stand-in for a byte
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ch.isprintable() and not (backslash and ch == "\\"):
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])
    return "".join(out)
