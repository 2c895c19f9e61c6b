"""nano-tokenizer: Nano vocabularies, greedy longest-match encoding, decoding
and vocabulary building. See the package README for the exact semantics."""

__version__ = "0.1.0"

from .build import build_vocab
from .tokenizer import (
    BD4SUR,
    BOS,
    DEFAULT_SPECIALS,
    EOS,
    INSTRUCT,
    PADDING,
    RESPONSE,
    SCHEMA_VERSION,
    UNKNOWN,
    Tokenizer,
    TokenizerError,
    other_unicode,
)

__all__ = [
    "__version__",
    "Tokenizer",
    "TokenizerError",
    "build_vocab",
    "other_unicode",
    "DEFAULT_SPECIALS",
    "SCHEMA_VERSION",
    "PADDING",
    "UNKNOWN",
    "BOS",
    "EOS",
    "INSTRUCT",
    "RESPONSE",
    "BD4SUR",
]
