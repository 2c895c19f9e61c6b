"""Reading model files: validate everything, then hand out zero-copy views.

`read()` checks the whole file before it returns: every header field, the
tokenizer section record by record, and the exact size of the parameters
(computed from the config, compared with the file length). Nothing it
allocates grows with a header field beyond what the file itself holds, so a
hostile header cannot make it allocate more than the file size. Token lists and
the tensor table are built on first use; tensors are read-only views into the
memory-mapped file (F32) or dequantized on request (Q8_0).

Accepted versions: spec.LAYOUTS (2024.10 LoRA, 2025.12, 2026.1, 2026.101).

Checks run in this order, and the first failure is reported (the C loader keeps
the same order so that both give the same verdict on any file): magic, header
length, version, model type, config length, quant code, reserved header bytes,
config words (LoRA reserved word; is_shared_classifier; extension tokenizer
kind; then Config's own checks: ranges in field order, n_head divides n_embd,
n_kv_head divides n_head, head_dim, attention, position, even head_dim for RoPE,
norm eps, RoPE theta), group size, tokenizer section, parameter sizes (64-bit
overflow, larger than the file, truncated, trailing bytes).
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import struct
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from . import spec
from .atomic import file_kind, open_without_waiting
from .config import Config, LoraConfig
from .errors import (
    BadConfig,
    BadScale,
    BadGroupSize,
    BadHeader,
    BadMagic,
    FormatError,
    NonFiniteValue,
    SizeOverflow,
    TrailingBytes,
    Truncated,
    UnknownModelType,
    UnknownQuantType,
    UnsupportedQuant,
    UnsupportedVersion,
)
from .plan import Param, lora_params, model_params, q8_0_nbytes
from .quant import QuantizedTensor, check_group_size, dequantize_q8_0, first_bad_scale, first_non_finite
from .spec import ModelType, QuantType, TokenizerKind
from .vocab import check_bpe_section, check_trie_section, decode_bpe_section, decode_tokenizer_section

__all__ = ["read", "load", "NanoFile", "TensorInfo", "other_format", "ZIP_MAGIC"]

_U64_LIMIT = 1 << 64
# Binary formats people hand over by mistake for a model file (or, to nano-tokenizer, for a
# vocabulary or a text), by their first bytes
ZIP_MAGIC = b"PK\x03\x04"  # a zip archive's first bytes: what torch.save writes (a training checkpoint)
_OTHER_MAGICS = {b"GGUF": "a GGUF file", ZIP_MAGIC: "a zip archive (a PyTorch checkpoint?)",
                 b"\x80\x02": "a Python pickle", np.lib.format.MAGIC_PREFIX: "a .npy file"}


def other_format(head: bytes) -> str | None:
    """What a file starting with `head` is, when it starts as one of the binary formats
    people mistake for a Nano model file ("a GGUF file", "a zip archive (a PyTorch
    checkpoint?)", ...); None otherwise (a Nano model file included)."""
    return next((what for magic, what in _OTHER_MAGICS.items() if head.startswith(magic)), None)


@dataclass(frozen=True)
class TensorInfo:
    """One row of the tensor table: where a stored tensor lies in the file."""

    name: str  # "wq" (F32, all layers), "wq.3" (Q8_0, one layer), "tok_embd", ...
    dtype: str  # "f32", "q8_0" or "q4k" (Q4K parameters: one opaque block)
    shape: tuple[int, ...]
    offset: int  # from the start of the file
    nbytes: int  # Q8_0: rows*cols int8 values, then rows*cols/G f32 scales


def read(source, *, name: str | None = None) -> "NanoFile":
    """Open and validate a model file.

    `source` is a path (memory-mapped) or a bytes-like buffer (used in place;
    `name` then labels error messages). Raises a FormatError subclass for a
    bad file, OSError (naming the file) when a path cannot be opened or mapped.

    A mapped file must not be truncated or rewritten in place while the model,
    or any array it returned, is in use: touching a page the file no longer
    has kills the process (SIGBUS), which Python cannot catch. tensor() and
    quantized() check the size first and raise FormatError if the file has
    shrunk, but arrays handed out earlier are not protected. Replacing the file
    by renaming a new one over it (as write() and `convert` do) is safe: the
    mapping keeps the old file's data.
    """
    mapping = None
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = np.frombuffer(memoryview(source).cast("B"), dtype=np.uint8)
        path = name
    else:
        path = os.fspath(source)
        data, mapping = _map(path)
    try:
        return NanoFile(data, path, mapping)
    except FormatError as err:
        if err.path is None:
            err.path = path
        raise


load = read


def _map(path: str) -> tuple[np.ndarray, mmap.mmap | None]:
    """The file's bytes, memory-mapped read-only, and the mapping (None when empty)."""
    fd, mode = open_without_waiting(path)  # a FIFO must not wait for a writer (it is then refused)
    try:
        if not stat.S_ISREG(mode):  # a pipe reads as empty, a folder or device cannot be mapped
            if stat.S_ISDIR(mode):
                raise OSError(errno.EISDIR, f"{file_kind(mode)}, not a model file", path)
            raise OSError(errno.EINVAL, f"not a regular file but {file_kind(mode)}; a model file is memory-mapped, "
                                        "so save it to a file first", path)
        # mmap cannot map an empty file; an empty file is a truncated header anyway.
        if os.fstat(fd).st_size == 0:
            return np.zeros(0, dtype=np.uint8), None
        try:
            mapping = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except OSError as e:  # e.g. ENODEV for /sys files: say which file
            raise OSError(e.errno, f"cannot memory-map it: {e.strerror}", path) from None
    finally:
        os.close(fd)
    return np.frombuffer(mapping, dtype=np.uint8), mapping


def _f32_value(x: float) -> float:
    """A stored f32 as the shortest decimal that rounds back to it (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(x)))


class NanoFile:
    """A validated model file. Use `read()` to open one.

    Attributes: path, file_size, layout (spec.Layout), version, model_type,
    quant (normalised: a 2025.12 code 10 reads as Q8_0), quant_code (as stored),
    group_size, config (Config, or LoraConfig for LoRA files), tokenizer_kind,
    tokenizer_offset, tokenizer_nbytes, params_offset, max_token_length (BPE),
    header (the raw header fields). Lazily: tokens, tensors (the table).
    """

    def __init__(self, data: np.ndarray, path: str | None, mapping: mmap.mmap | None = None):
        self._data = data
        self._mapping = mapping  # to notice a mapped file that shrank (see read())
        self.path = path
        self.file_size = size = int(data.size)
        self._read_header(data, size)
        self._read_tokenizer(data, size)
        self._plan_params(size)

    # -- validation ---------------------------------------------------------

    def _read_header(self, data: np.ndarray, size: int) -> None:
        prefix = bytes(data[: min(size, len(spec.MAGIC_BYTES))])
        if prefix != spec.MAGIC_BYTES[: len(prefix)]:
            what = other_format(prefix) or ("a JSON file" if prefix.startswith(b"{") else None)
            hint = f" ({what})" if what else ""
            raise BadMagic(f"expected {spec.MAGIC_BYTES!r}, found {prefix!r}{hint}: not a Nano model file",
                           field="magic", offset=0)
        if size < spec.HEADER_SIZE:
            what = "the file is empty" if size == 0 else f"the file is only {size} bytes"
            raise Truncated(f"{what}; the header needs {spec.HEADER_SIZE}", section="header", offset=size)

        major, minor, mt_code, config_len = struct.unpack_from("<iiII", data, spec.OFF_MAJOR)
        layout = spec.LAYOUTS_BY_VERSION.get((major, minor))
        if layout is None:
            known = ", ".join(la.name for la in spec.LAYOUTS)
            raise UnsupportedVersion(f"version {major}.{minor} is not one this reader knows ({known})",
                                     field="version", offset=spec.OFF_MAJOR)
        try:
            model_type = ModelType(mt_code)
        except ValueError:
            known = ", ".join(f"{m.value} {m.name.lower()}" for m in ModelType)
            raise UnknownModelType(f"unknown model type {mt_code} (known: {known})",
                                   field="model type", offset=spec.OFF_MODEL_TYPE) from None
        if model_type not in layout.model_types:
            holds = ", ".join(m.name.lower() for m in layout.model_types)
            raise UnknownModelType(f"a {model_type.name.lower()} model cannot be stored in layout "
                                   f"{layout.name} (it holds: {holds})",
                                   field="model type", offset=spec.OFF_MODEL_TYPE)
        if config_len != layout.config_len:
            raise BadHeader(f"config length is {config_len}; layout {layout.name} stores {layout.config_len}",
                            field="config length", offset=spec.OFF_CONFIG_LEN)
        quant_code, group_size = struct.unpack_from("<II", data, spec.OFF_QUANT)
        quant = spec.quant_from_code(layout, quant_code)
        if quant is None:
            known = ", ".join(f"0x{c:02X} {q.name}" for c, q in spec.QUANT_CODES[layout.name].items())
            raise UnknownQuantType(f"quant code 0x{quant_code:02X} means nothing in layout {layout.name} "
                                   f"(known there: {known})", field="quant type", offset=spec.OFF_QUANT)
        self._check_reserved(data, layout, model_type)

        words = struct.unpack_from(f"<{spec.CONFIG_WORDS}I", data, spec.OFF_CONFIG)
        header = {
            "magic": spec.MAGIC_BYTES.decode("ascii"), "major": major, "minor": minor,
            "model_type": mt_code, "config_length": config_len,
            "quant_type": quant_code, "group_size": group_size,
        }
        if model_type == ModelType.LORA:
            fields = dict(zip(spec.LORA_CONFIG_FIELDS, words))
            header.update(fields)
            if fields["reserved"] != 0:
                raise BadConfig(f"reserved config word is {fields['reserved']}, must be 0",
                                field="reserved", offset=spec.config_offset("reserved"))
            config = LoraConfig(**{k: v for k, v in fields.items() if k != "reserved"})
            tokenizer_kind = TokenizerKind.NONE
        else:
            fields = dict(zip(spec.CONFIG_FIELDS, words))
            header.update(fields)
            shared = fields.pop("is_shared_classifier")
            if shared > 1:
                raise BadConfig(f"is {shared}, must be 0 or 1", field="is_shared_classifier",
                                offset=spec.config_offset("is_shared_classifier"))
            ext = {}
            tokenizer_kind = spec.default_tokenizer_kind(model_type)
            if layout.extension:
                attention, position, eps, theta, kind = struct.unpack_from("<IIffI", data, spec.OFF_EXT_ATTENTION)
                ext = dict(attention=attention, position=position,
                           norm_eps=_f32_value(eps), rope_theta=_f32_value(theta))
                header.update(ext, tokenizer_kind=kind)
                try:
                    tokenizer_kind = TokenizerKind(kind)
                except ValueError:
                    raise BadHeader(f"unknown tokenizer kind {kind} (known: 0 none, 1 trie, 2 bpe)",
                                    field="tokenizer kind", offset=spec.OFF_EXT_TOKENIZER) from None
            config = Config(model_type=model_type, tie_embeddings=bool(shared), **fields, **ext)

        if quant == QuantType.F32 and group_size != 0:
            raise BadGroupSize(f"is {group_size}; an F32 file stores 0", field="group size",
                               offset=spec.OFF_GROUP_SIZE)
        if quant == QuantType.Q8_0:
            check_group_size(config, group_size)

        self.layout = layout
        self.version = layout.version
        self.model_type = model_type
        self.quant = quant
        self.quant_code = quant_code
        self.group_size = group_size
        self.config = config
        self.tokenizer_kind = tokenizer_kind
        self.header = header

    @staticmethod
    def _check_reserved(data: np.ndarray, layout: spec.Layout, model_type: ModelType) -> None:
        """Bytes no field of this layout uses must be zero."""
        start = spec.EXT_END if layout.extension else spec.OFF_EXT_ATTENTION
        ranges = [(start, spec.HEADER_SIZE)]
        if model_type == ModelType.LORA:  # 8 config words: the ninth slot is unused
            ranges.append((spec.OFF_CONFIG + 4 * len(spec.LORA_CONFIG_FIELDS), spec.OFF_QUANT))
        for lo, hi in ranges:
            nonzero = np.flatnonzero(data[lo:hi])
            if nonzero.size:
                at = lo + int(nonzero[0])
                hint = ""
                if not layout.extension and at < spec.EXT_END:
                    hint = " (the extension fields at 0x44 belong to layout 2026.101 only)"
                raise BadHeader(f"reserved byte is 0x{int(data[at]):02X}, must be 0{hint}",
                                field="reserved", offset=at)

    def _read_tokenizer(self, data: np.ndarray, size: int) -> None:
        start = spec.HEADER_SIZE
        rest = data[start:]
        self.tokenizer_offset = start
        self.max_token_length = None
        if self.tokenizer_kind == TokenizerKind.TRIE:
            self.tokenizer_nbytes = check_trie_section(rest, self.config.vocab_size, start)
        elif self.tokenizer_kind == TokenizerKind.BPE:
            self.tokenizer_nbytes, self.max_token_length = check_bpe_section(rest, self.config.vocab_size, start)
        else:
            self.tokenizer_nbytes = 0
        self.params_offset = start + self.tokenizer_nbytes

    def _plan_params(self, size: int) -> None:
        """Place every tensor; the parameters must fill the rest of the file exactly."""
        remaining = size - self.params_offset
        self._entries: dict[str, tuple[Param, int]] = {}
        if self.quant == QuantType.Q4K:
            self._plan = []  # layout unknown to us: one opaque block
            return
        plan = lora_params(self.config) if self.model_type == ModelType.LORA else model_params(self.config)
        sizes = [p.nbytes(self.quant, self.group_size) for p in plan]
        total = sum(sizes)
        if total >= _U64_LIMIT:
            raise SizeOverflow(f"the parameters would need {total} bytes, which overflows 64 bits",
                               field="config", offset=spec.OFF_CONFIG)
        if total > size:
            biggest = max(range(len(plan)), key=sizes.__getitem__)
            p = plan[biggest]
            raise SizeOverflow(f"the config implies {total} bytes of parameters (largest: {p.name} "
                               f"{p.dims} = {p.shape}, {sizes[biggest]} bytes), more than the whole "
                               f"file ({size} bytes): a file cut short (a download or copy that did not finish?), "
                               "or a damaged config", field="config", offset=spec.OFF_CONFIG)
        if total > remaining:
            raise Truncated(f"need {total} bytes but the file ends {remaining} bytes after their "
                            f"start (0x{self.params_offset:X})", section="parameters", offset=size)
        if total < remaining:
            raise TrailingBytes(f"{remaining - total} bytes after the last tensor",
                                offset=self.params_offset + total)
        offset = self.params_offset
        for p, n in zip(plan, sizes):
            self._entries[p.name] = (p, offset)
            offset += n
        self._plan = plan

    # -- the vocabulary -----------------------------------------------------

    @cached_property
    def tokens(self):
        """list[TokenEntry] (trie), list[BpeToken] (BPE), or None (no tokenizer section)."""
        section = self._bytes(self.tokenizer_offset, self.tokenizer_nbytes)
        if self.tokenizer_kind == TokenizerKind.TRIE:
            return decode_tokenizer_section(section, vocab_size=self.config.vocab_size,
                                            base_offset=self.tokenizer_offset)
        if self.tokenizer_kind == TokenizerKind.BPE:
            return decode_bpe_section(section, self.config.vocab_size, base_offset=self.tokenizer_offset)[0]
        return None

    # -- tensors ------------------------------------------------------------

    @property
    def loadable(self) -> bool:
        """False for Q4K files: their header and tokenizer can be inspected, not their tensors."""
        return self.quant != QuantType.Q4K

    def ensure_loadable(self) -> None:
        """Raise UnsupportedQuant unless tensors can be loaded (not for Q4K files)."""
        if not self.loadable:
            raise UnsupportedQuant(f"{self.quant.name} parameters cannot be loaded by nano-format; "
                                   f"the header and tokenizer can be inspected", path=self.path,
                                   field="quant type", offset=spec.OFF_QUANT)

    @cached_property
    def tensors(self) -> list[TensorInfo]:
        """The tensor table in file order. header + tokenizer + sum(nbytes) == file_size."""
        if not self.loadable:
            n = self.file_size - self.params_offset
            return [TensorInfo("parameters", "q4k", (n,), self.params_offset, n)]
        table = []
        G = self.group_size
        for p, offset in self._entries.values():
            if not p.stored_as_q8_0(self.quant):
                table.append(TensorInfo(p.name, "f32", p.shape, offset, 4 * p.count))
            elif not p.per_layer:
                table.append(TensorInfo(p.name, "q8_0", p.shape, offset, q8_0_nbytes(*p.shape, G)))
            else:
                rows, cols = p.shape[1:]
                n = q8_0_nbytes(rows, cols, G)
                for layer in range(p.shape[0]):
                    table.append(TensorInfo(f"{p.name}.{layer}", "q8_0", (rows, cols), offset + layer * n, n))
        return table

    def tensor_names(self) -> list[str]:
        """Logical tensor names in file order (what tensor() takes; "wq.3" works too)."""
        return [p.name for p in self._plan]

    def tensor(self, name: str) -> np.ndarray:
        """float32 array in the logical shape: a read-only view (F32) or dequantized (Q8_0).

        "wq" is [L, H*D, E]; "wq.3" is layer 3's [H*D, E].
        """
        p, offset, layer = self._lookup(name)
        if p.stored_as_q8_0(self.quant):
            for info in self._q8_0_table(p, layer):
                self._check_scales(info)
            qt = self._quantized(p, offset)
            return dequantize_q8_0(qt if layer is None else qt[layer])
        arr = self._view("<f4", p.shape, offset)
        return arr if layer is None else arr[layer]

    def quantized(self, name: str) -> QuantizedTensor:
        """A Q8_0 tensor as stored: read-only int8 values and float32 scales (zero-copy)."""
        p, offset, layer = self._lookup(name)
        if not p.stored_as_q8_0(self.quant):
            why = "this file is F32" if self.quant == QuantType.F32 else "it is always stored as f32"
            raise ValueError(f"{name!r} is not quantized: {why}")
        qt = self._quantized(p, offset)
        return qt if layer is None else qt[layer]

    def weights(self) -> dict:
        """Every tensor as stored, by name: F32 views, QuantizedTensor for Q8_0
        matrices. Give it to write() with the same settings to reproduce the file."""
        out = {}
        for name in self.tensor_names():
            p, _ = self._entries[name]
            out[name] = self.quantized(name) if p.stored_as_q8_0(self.quant) else self.tensor(name)
        return out

    def check_scales(self) -> None:
        """Q8_0: raise BadScale for the first scale that is NaN, infinite, or so
        large that q * scale overflows float32 for a stored q (-128 included;
        the writer never makes one).
        Reads every scale (1/G of the parameters), which read() does not;
        tensor() checks those of the tensor it dequantizes."""
        if self.quant != QuantType.Q8_0:
            return
        self.ensure_loadable()
        self._check_size()
        for info in self.tensors:
            if info.dtype == "q8_0":
                self._check_scales(info)

    def check_finite(self) -> None:
        """Raise NonFiniteValue for the first NaN or infinity in an F32 tensor
        (in file order; the writer never stores one). Reads every F32 value, a
        chunk at a time, which read() does not; tensor() hands F32 values out
        as stored."""
        self.ensure_loadable()
        self._check_size()
        for info in self.tensors:
            if info.dtype != "f32":
                continue
            values = self._view("<f4", info.shape, info.offset)
            i = first_non_finite(values)
            if i is not None:
                index = [int(k) for k in np.unravel_index(i, info.shape)]
                raise NonFiniteValue(f"value {float(values.flat[i])} at index {index} is not a finite number",
                                     path=self.path, field=f"tensor {info.name!r}", offset=info.offset + 4 * i)

    def _q8_0_table(self, p: Param, layer: int | None) -> list[TensorInfo]:
        """The table rows of a Q8_0 tensor (one per layer for a stacked matrix)."""
        if not p.per_layer:
            return [t for t in self.tensors if t.name == p.name]
        layers = range(p.shape[0]) if layer is None else [layer]
        by_name = {t.name: t for t in self.tensors}
        return [by_name[f"{p.name}.{i}"] for i in layers]

    def _check_scales(self, info: TensorInfo) -> None:
        rows, cols = info.shape
        per_row = cols // self.group_size
        start = info.offset + rows * cols
        scales = self._view("<f4", (rows, per_row), start)
        found = first_bad_scale(self._view(np.int8, (rows, cols), info.offset), scales)
        if found is not None:
            i, what = found
            raise BadScale(f"scale {float(scales.flat[i]):g} (row {i // per_row}, group {i % per_row}) {what}",
                           path=self.path, field=f"tensor {info.name!r}", offset=start + 4 * i)

    def _lookup(self, name: str) -> tuple[Param, int, int | None]:
        if self._data is None:
            raise ValueError("the file is closed")
        self.ensure_loadable()
        self._check_size()
        if name in self._entries:
            p, offset = self._entries[name]
            return p, offset, None
        base, _, index = name.rpartition(".")
        if base in self._entries and index.isascii() and index.isdigit():
            p, offset = self._entries[base]
            if p.per_layer and int(index) < p.shape[0]:
                return p, offset, int(index)
        if name == spec.CLASSIFIER and getattr(self.config, "tie_embeddings", False):
            raise KeyError(f"{name!r} is not stored: the classifier is tied to {spec.EMBEDDING}")
        raise KeyError(f"no tensor {name!r}; this file has: {', '.join(self._entries)}")

    def _quantized(self, p: Param, offset: int) -> QuantizedTensor:
        G = self.group_size
        rows, cols = p.shape[-2:]
        if not p.per_layer:
            return QuantizedTensor(self._view(np.int8, (rows, cols), offset),
                                   self._view("<f4", (rows, cols // G), offset + rows * cols))
        # Each layer is its int8 block then its scales: strided views over all layers.
        stride = q8_0_nbytes(rows, cols, G)
        layers = p.shape[0]
        q = self._view(np.int8, (layers, rows, cols), offset, (stride, cols, 1))
        s = self._view("<f4", (layers, rows, cols // G), offset + rows * cols, (stride, (cols // G) * 4, 4))
        return QuantizedTensor(q, s)

    def _view(self, dtype, shape, offset, strides=None) -> np.ndarray:
        if self._data is None:  # np.ndarray(buffer=None) would hand out fresh, uninitialised memory
            raise ValueError("the file is closed")
        arr = np.ndarray(shape, dtype=dtype, buffer=self._data, offset=offset, strides=strides)
        arr.flags.writeable = False  # a caller's bytearray stays theirs; a mapped file is read-only
        return arr

    def _bytes(self, offset: int, n: int) -> memoryview:
        if self._data is None:
            raise ValueError("the file is closed")
        self._check_size()
        return memoryview(self._data[offset: offset + n])

    def _check_size(self) -> None:
        """A mapped file that shrank since read() would kill the process when
        the missing pages are touched (SIGBUS): refuse to hand out views."""
        if self._mapping is not None and self._mapping.size() < self.file_size:
            raise FormatError(f"the file shrank to {self._mapping.size()} bytes after it was read "
                              f"({self.file_size} bytes); read it again", path=self.path)

    # -- lifetime -----------------------------------------------------------

    def close(self) -> None:
        """Drop this object's hold on the mapping. Arrays already returned keep
        their own reference and stay valid; the OS unmaps when the last goes."""
        self._data = None
        self._mapping = None

    @property
    def closed(self) -> bool:
        return self._data is None

    def __enter__(self) -> "NanoFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        c = self.config
        return (f"<NanoFile {self.path or '<buffer>'}: {self.layout.name} {self.model_type.name.lower()} "
                f"{self.quant.name.lower()} n_layer={c.n_layer} n_embd={c.n_embd} {self.file_size} bytes>")

