"""The Nano model file (`.bin`): the one place where the layout is written down.

Every other module (reader, writer, the C core's `nano.h`) takes its numbers
from here; a test checks the C constants against this module.

Byte layout (all integers little-endian, no padding between parts):

  1. Header, HEADER_SIZE = 256 bytes
     0x00  u32  magic0 = MAGIC0 (0x42443453)   the first 8 bytes read "S4DBMLRU"
     0x04  u32  magic1 = MAGIC1 (0x55524C4D)
     0x08  i32  major version  (see VERSIONS)
     0x0C  i32  minor version
     0x10  u32  model type     (ModelType)
     0x14  u32  config length in bytes (36; 32 in 2025.12 and LoRA files)
     0x18  u32 x 9  config words, CONFIG_FIELDS (LoRA files: LORA_CONFIG_FIELDS, 8 words)
     0x3C  u32  quant type     (QuantType; 10 means Q8_0 in 2025.12 files)
     0x40  u32  group size     (Q8_0 values per scale; 0 for F32)
     -- Nano extension, only in layout NANO_EXT_1 (version 2026.101); zero elsewhere --
     0x44  u32  attention      (Attention: 0 causal, 1 full)
     0x48  u32  position       (Position: 0 RoPE, 1 learned)
     0x4C  f32  norm epsilon
     0x50  f32  RoPE theta
     0x54  u32  tokenizer kind (TokenizerKind)
     0x58  ...  zero to 0x100 (must be zero in NANO_EXT_1)

  2. Tokenizer section (absent in LoRA files and when the tokenizer kind is NONE)
     Nano (code-point trie, TokenizerKind.TRIE):
       u32 section length in bytes (counting these two u32 fields and all records)
       u32 vocab size
       per token: u8 length in code points, u8 is_special, u8 0xFF, u8 0xFF,
                  u32 token id, u32 x length code points
     Qwen (byte-level BPE, TokenizerKind.BPE, llama2.c style):
       u32 section length in bytes (counting these two u32 fields and all records)
       u32 max token length in bytes
       per token (vocab_size of them): f32 score, u32 byte length, bytes

  3. Parameters (L layers, E n_embd, V vocab, F n_hidden, H n_head,
     K n_kv_head, D head_dim, B block_size), in PARAM_ORDER:
       norm_attn [L, E], norm_ffn [L, E], norm_final [E]                       always F32
       tok_embd [V, E]                                                         quantized
       wq [L, H*D, E], wk [L, K*D, E], wv [L, K*D, E], wo [L, E, H*D],
       w1 [L, F, E], w2 [L, E, F], w3 [L, F, E]                                quantized
       Qwen2 only: bq [L, H*D], bk [L, K*D], bv [L, K*D]                       always F32
       Qwen3 only: q_norm [L, D], k_norm [L, D]                                always F32
       rope_cos [B, D/2], rope_sin [B, D/2]   (pos_embd [B, E] instead when the
                                              position is LEARNED)              always F32
       lm_head [V, E]  only when the classifier is not tied to tok_embd        quantized
     F32 files store each tensor whole. Q8_0 files store each quantized matrix
     one layer at a time as its int8 values immediately followed by its f32
     scales (one scale per `group size` consecutive values of a row).

  LoRA files (model type LORA, version 2024.10): header, then F32 parameters
     wq_A [L, R, E], wq_B [L, H*D, R], wk_A [L, R, E], wk_B [L, K*D, R],
     wv_A [L, R, E], wv_B [L, K*D, R], wo_A [L, R, H*D], wo_B [L, E, R]
     where R is the rank; the update to W is (alpha / R) * B @ A.

Q8_0, to the bit (shared by Python and C):
  For each group x[0..G) of G consecutive values within one row:
    amax  = max |x[i]|                       (float32)
    scale = amax / 127.0f                    (float32 division; 0 when amax is 0)
    q[i]  = roundf(x[i] / scale)             (float32 division, then round half
                                              away from zero; 0 when scale is 0)
            clamped to [-127, 127]
  Dequantized value: q[i] * scale (float32).
  "scale is 0" covers amax 0 and an amax so small (subnormal) that amax/127
  underflows to 0: the test is on the scale, not on amax. Groups never span two
  rows because the group size divides every quantized row length (n_embd,
  n_head*head_dim, n_hidden). Non-finite inputs are refused.

Validation notes (the reader enforces these; see nano_format.reader):
  - Header bytes after the last field a layout defines must be zero
    (0x44..0x100 in the reference layouts, 0x58..0x100 in NANO_EXT_1; in LoRA
    files also the unused ninth config word at 0x38).
  - The quant code must be one QUANT_CODES lists for the file's layout.
  - F32 files store group size 0.
  - Trie records: 1..255 code points, each a Unicode scalar value (no surrogates,
    <= 0x10FFFF); is_special 0 or 1; reserved bytes 0xFF 0xFF; id == record index;
    the records fill the section exactly and their count equals vocab_size.
  - BPE section: max token length >= the longest token and <= the section length;
    vocab_size records fill the section exactly.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# ---------------------------------------------------------------------------
# Header constants

MAGIC0 = 0x42443453
MAGIC1 = 0x55524C4D
MAGIC_BYTES = b"S4DBMLRU"
HEADER_SIZE = 256

OFF_MAGIC0 = 0x00
OFF_MAGIC1 = 0x04
OFF_MAJOR = 0x08
OFF_MINOR = 0x0C
OFF_MODEL_TYPE = 0x10
OFF_CONFIG_LEN = 0x14
OFF_CONFIG = 0x18
OFF_QUANT = 0x3C
OFF_GROUP_SIZE = 0x40
OFF_EXT_ATTENTION = 0x44
OFF_EXT_POSITION = 0x48
OFF_EXT_NORM_EPS = 0x4C
OFF_EXT_ROPE_THETA = 0x50
OFF_EXT_TOKENIZER = 0x54
EXT_END = 0x58

CONFIG_WORDS = 9
CONFIG_FIELDS = (
    "block_size",
    "vocab_size",
    "n_layer",
    "n_embd",
    "n_head",
    "n_kv_head",
    "n_hidden",
    "is_shared_classifier",
    "head_dim",
)
LORA_CONFIG_FIELDS = (
    "rank",
    "alpha",
    "n_layer",
    "n_embd",
    "n_head",
    "n_kv_head",
    "n_hidden",
    "reserved",
)

TOKEN_RECORD_HEADER = 8  # u8 length, u8 is_special, u8 0xFF, u8 0xFF, u32 id
TOKEN_RESERVED_BYTE = 0xFF
TOKEN_MAX_CODEPOINTS = 255  # the length field is a u8

# Defaults the reference engine assumes because its header cannot say otherwise.
DEFAULT_NORM_EPS = 1e-5
DEFAULT_ROPE_THETA = 10000.0
QWEN3_ROPE_THETA = 1000000.0

# Q8_0
Q8_MAX = 127
DEFAULT_GROUP_SIZE = 128

# Sanity limits: anything above is treated as a corrupt file, not a model.
MAX_DIM = 1 << 20        # block_size, n_embd, n_hidden, head_dim
MAX_VOCAB = 1 << 22
MAX_LAYERS = 1024
MAX_HEADS = 4096


# ---------------------------------------------------------------------------
# Enumerations


class ModelType(enum.IntEnum):
    NANO = 0
    QWEN2 = 2
    QWEN3 = 3
    LORA = 10


class QuantType(enum.IntEnum):
    F32 = 0x00
    Q8_0 = 0x80
    Q4K = 0x42  # recognised (header and tokenizer inspectable), parameters not supported


LEGACY_Q8_0_2025 = 10  # the quant code 2025.12 files use for Q8_0


class Attention(enum.IntEnum):
    CAUSAL = 0
    FULL = 1


class Position(enum.IntEnum):
    ROPE = 0
    LEARNED = 1


class TokenizerKind(enum.IntEnum):
    NONE = 0
    TRIE = 1  # Nano: greedy longest match over Unicode code points
    BPE = 2   # Qwen: byte-level BPE (llama2.c-style section)


# ---------------------------------------------------------------------------
# Versions


@dataclass(frozen=True)
class Layout:
    """One known (major, minor) version and what it means on disk."""

    name: str
    major: int
    minor: int
    writer: str  # who writes it: "reference", "nano" or "both"
    config_len: int  # the value stored at OFF_CONFIG_LEN
    extension: bool  # the Nano extension fields at 0x44.. are present
    model_types: tuple[ModelType, ...]
    note: str

    @property
    def version(self) -> tuple[int, int]:
        return (self.major, self.minor)


LAYOUT_2024_10 = Layout(
    "2024.10", 2024, 10, "both", 32, False, (ModelType.LORA,),
    "LoRA modules: 8 config words (rank, alpha, ...), F32 only, no tokenizer section.",
)
LAYOUT_2025_12 = Layout(
    "2025.12", 2025, 12, "reference", 32, False, (ModelType.NANO,),
    "Config length field says 32 but 9 words are stored; quant code 10 means Q8_0. Read only.",
)
LAYOUT_2026_1 = Layout(
    "2026.1", 2026, 1, "both", 36, False,
    (ModelType.NANO, ModelType.QWEN2, ModelType.QWEN3),
    "The reference's current layout; Nano's default output. Causal, RoPE, eps 1e-5 implied.",
)
LAYOUT_NANO_EXT_1 = Layout(
    "2026.101", 2026, 101, "nano", 36, True, (ModelType.NANO,),
    "2026.1 plus the Nano extension at 0x44: attention, position, norm eps, RoPE theta, "
    "tokenizer kind. The reference engine ignores the extension.",
)

LAYOUTS = (LAYOUT_2024_10, LAYOUT_2025_12, LAYOUT_2026_1, LAYOUT_NANO_EXT_1)
LAYOUTS_BY_VERSION = {layout.version: layout for layout in LAYOUTS}
LAYOUTS_BY_NAME = {layout.name: layout for layout in LAYOUTS}
DEFAULT_LAYOUT = LAYOUT_2026_1

# The quant codes each layout may store, and what they mean. The reference engine
# turned unknown codes into Q8_0 (reference defect 10); we refuse them instead.
QUANT_CODES: dict[str, dict[int, QuantType]] = {
    "2024.10": {0x00: QuantType.F32},
    "2025.12": {0x00: QuantType.F32, LEGACY_Q8_0_2025: QuantType.Q8_0, 0x42: QuantType.Q4K},
    "2026.1": {0x00: QuantType.F32, 0x80: QuantType.Q8_0, 0x42: QuantType.Q4K},
    "2026.101": {0x00: QuantType.F32, 0x80: QuantType.Q8_0},
}


def quant_from_code(layout: Layout, code: int) -> QuantType | None:
    """The quant type a stored code means in `layout`, or None if it means nothing there."""
    return QUANT_CODES[layout.name].get(code)


def quant_code(layout: Layout, quant: QuantType) -> int | None:
    """The code `layout` stores for `quant`, or None if the layout cannot store it."""
    for code, q in QUANT_CODES[layout.name].items():
        if q == quant:
            return code
    return None


def default_tokenizer_kind(model_type: ModelType) -> TokenizerKind:
    """What layouts without the extension imply: Nano a trie, Qwen BPE, LoRA none."""
    if model_type == ModelType.LORA:
        return TokenizerKind.NONE
    return TokenizerKind.BPE if model_type in (ModelType.QWEN2, ModelType.QWEN3) else TokenizerKind.TRIE


def default_rope_theta(model_type: ModelType) -> float:
    return QWEN3_ROPE_THETA if model_type == ModelType.QWEN3 else DEFAULT_ROPE_THETA


def config_offset(field: str) -> int:
    """Byte offset of a config word (CONFIG_FIELDS or LORA_CONFIG_FIELDS name)."""
    fields = CONFIG_FIELDS if field in CONFIG_FIELDS else LORA_CONFIG_FIELDS
    return OFF_CONFIG + 4 * fields.index(field)


# ---------------------------------------------------------------------------
# Parameter names, in file order (see the layout comment above)

NORM_TENSORS = ("norm_attn", "norm_ffn", "norm_final")
MATRIX_TENSORS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
QWEN2_BIAS_TENSORS = ("bq", "bk", "bv")
QWEN3_NORM_TENSORS = ("q_norm", "k_norm")
ROPE_TENSORS = ("rope_cos", "rope_sin")
EMBEDDING = "tok_embd"
POS_EMBEDDING = "pos_embd"
CLASSIFIER = "lm_head"
# Every parameter name in file order; pos_embd takes the RoPE tables' slot.
PARAM_ORDER = (
    NORM_TENSORS + (EMBEDDING,) + MATRIX_TENSORS + QWEN2_BIAS_TENSORS + QWEN3_NORM_TENSORS
    + ROPE_TENSORS + (POS_EMBEDDING, CLASSIFIER)
)
# The tensors a Q8_0 file stores quantized; everything else stays F32.
QUANTIZED_TENSORS = (EMBEDDING,) + MATRIX_TENSORS + (CLASSIFIER,)
TOKENIZER_SECTION_HEADER = 8  # u32 section length + u32 vocab size (trie) or max token length (BPE)
BPE_RECORD_HEADER = 8  # f32 score + u32 byte length
LORA_TARGETS = ("wq", "wk", "wv", "wo")
LORA_TENSORS = tuple(f"{t}_{ab}" for t in LORA_TARGETS for ab in ("A", "B"))

# The special tokens the reference vocabularies start with, by their usual ids.
SPECIAL_PADDING = "<|padding|>"
SPECIAL_UNKNOWN = "<|unknown|>"
SPECIAL_BOS = "<|bos|>"
SPECIAL_EOS = "<|eos|>"
SPECIAL_INSTRUCT = "<|instruct_mark|>"
SPECIAL_RESPONSE = "<|response_mark|>"
