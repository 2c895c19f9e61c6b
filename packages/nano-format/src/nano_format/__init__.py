"""nano-format: the Nano `.bin` model file: spec, reader, writer, Q8_0 and a command line.

    import nano_format as nf
    with nf.read("model.bin") as m:         # validates the whole file first
        print(m.layout.name, m.config)
        wq = m.tensor("wq")                 # float32 [L, H*D, E], zero-copy for F32
    nf.write("out.bin", config, tensors, tokens, quant="q8_0")

The byte layout lives in `nano_format.spec`; see the package README.
"""

from . import spec
from .atomic import check_writable, file_kind, folder_files, kept_mode, open_without_waiting, write_atomically
from .jsontext import JSONTextError, parse_json
from .config import Config, LoraConfig
from .errors import (
    BadConfig,
    BadGroupSize,
    BadHeader,
    BadMagic,
    BadScale,
    BadTokenRecord,
    FormatError,
    NonFiniteValue,
    SizeOverflow,
    TrailingBytes,
    Truncated,
    UnknownModelType,
    UnknownQuantType,
    UnsupportedQuant,
    UnsupportedVersion,
    WriteError,
    shown,
)
from .quant import QuantizedTensor, choose_group_size, dequantize_q8_0, quantize_q8_0
from .reader import ZIP_MAGIC, NanoFile, TensorInfo, load, other_format, read
from .vocab import (
    BpeToken,
    TokenEntry,
    decode_bpe_section,
    decode_tokenizer_section,
    encode_bpe_section,
    encode_tokenizer_section,
)
from .writer import rope_tables, to_bytes, write, write_lora

__version__ = "0.1.0"

__all__ = [
    "spec",
    "read",
    "other_format",
    "ZIP_MAGIC",
    "load",
    "NanoFile",
    "Config",
    "LoraConfig",
    "TokenEntry",
    "BpeToken",
    "TensorInfo",
    "QuantizedTensor",
    "write",
    "to_bytes",
    "write_lora",
    "write_atomically",
    "check_writable",
    "file_kind",
    "folder_files",
    "open_without_waiting",
    "kept_mode",
    "parse_json",
    "JSONTextError",
    "rope_tables",
    "quantize_q8_0",
    "dequantize_q8_0",
    "choose_group_size",
    "encode_tokenizer_section",
    "decode_tokenizer_section",
    "encode_bpe_section",
    "decode_bpe_section",
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
    "shown",
    "__version__",
]
