/*
 * nano.h - the Nano engine: load a Nano `.bin` model, tokenize, run, sample.
 * Portable C99 (libc + libm; OpenMP optional). One header, opaque handles.
 *
 * Lifecycle (error checks shortened; every fallible call returns nano_status):
 *
 *     nano_model *model = NULL;
 *     nano_model_params mp = nano_model_default_params();
 *     nano_status st = nano_model_load_file("model.bin", &mp, &model);
 *     if (st != NANO_OK) { fprintf(stderr, "%s\n", nano_status_string(st)); return 1; }
 *
 *     nano_context_params cp = nano_context_default_params();
 *     cp.n_ctx = 256;                     // KV cache length (<= the model's block size)
 *     cp.n_threads = 2;
 *     nano_context *ctx = NULL;
 *     st = nano_context_init(model, &cp, &ctx);
 *
 *     nano_session_params sp = nano_session_default_params();
 *     sp.sampler.temperature = 0.8f;
 *     sp.max_tokens = 100;
 *     nano_session *s = NULL;
 *     st = nano_session_init(ctx, &sp, &s);
 *     st = nano_session_start(s, "今天天气", NANO_MODE_CONTINUE);
 *     nano_token_event ev;
 *     while ((st = nano_session_step(s, &ev)) == NANO_OK && !ev.done)
 *         fwrite(ev.text, 1, ev.text_len, stdout);     // whole UTF-8 characters
 *
 *     nano_session_free(s);
 *     nano_context_free(ctx);
 *     nano_model_free(model);
 *
 * Rules every function follows: no global or static mutable state (two models
 * or contexts never interfere; different contexts may run on different
 * threads; one handle is used by one thread at a time, except
 * nano_session_cancel); no exit(); all memory is allocated by the *_init /
 * *_load / attach calls, never by nano_eval, the sampler or nano_session_step;
 * every public name starts with nano_ / NANO_.
 *
 * Numerics (the PyTorch reference emulates exactly this):
 *   - everything in float32; RMSNorm x * 1/sqrt(mean(x^2) + eps) * w;
 *   - Q8_0 weights are NOT dequantized up front and activations are NOT
 *     quantized: a Q8_0 matmul computes, per output and per group g of the row,
 *     scale_g * sum_j (float)q_j * x_j with float activations x. This equals a
 *     float32 matmul with the dequantized weights q * scale up to float rounding
 *     (nano_train.convert.emulate_q8_0 is the matching PyTorch side);
 *   - results are bit-identical for any thread count: every output element is
 *     reduced by one thread in a fixed order. A batched prefill gives the same
 *     bits as feeding the tokens one at a time.
 */
#ifndef NANO_H
#define NANO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef NANO_API
#if defined(_WIN32) && defined(NANO_BUILD_SHARED)
#define NANO_API __declspec(dllexport)
#elif defined(__GNUC__) || defined(__clang__)
#define NANO_API __attribute__((visibility("default")))
#else
#define NANO_API
#endif
#endif

/* ABI version: bumped whenever a public struct or signature changes. */
#define NANO_ABI_VERSION 1

/* ------------------------------------------------------------------------
 * The file format, mirrored from packages/nano-format/src/nano_format/spec.py
 * (tests/test_spec_constants.py checks every value below against it).
 *
 * Byte layout (all integers little-endian, no padding between parts):
 *
 *  1. Header, NANO_HEADER_SIZE = 256 bytes
 *     0x00  u32  magic0 = NANO_MAGIC0 (0x42443453)   first 8 bytes read "S4DBMLRU"
 *     0x04  u32  magic1 = NANO_MAGIC1 (0x55524C4D)
 *     0x08  i32  major version  (NANO_LAYOUT_*)
 *     0x0C  i32  minor version
 *     0x10  u32  model type     (nano_model_type)
 *     0x14  u32  config length in bytes (36; 32 in 2025.12 and LoRA files)
 *     0x18  u32 x 9  config words: block_size, vocab_size, n_layer, n_embd,
 *                    n_head, n_kv_head, n_hidden, is_shared_classifier, head_dim
 *                    (LoRA: rank, alpha, n_layer, n_embd, n_head, n_kv_head,
 *                    n_hidden, reserved)
 *     0x3C  u32  quant type     (nano_quant_type; 10 means Q8_0 in 2025.12 files)
 *     0x40  u32  group size     (Q8_0 values per scale; 0 for F32)
 *     -- Nano extension, only in layout 2026.101; zero elsewhere --
 *     0x44  u32  attention      (nano_attention: 0 causal, 1 full)
 *     0x48  u32  position       (nano_position: 0 RoPE, 1 learned)
 *     0x4C  f32  norm epsilon
 *     0x50  f32  RoPE theta
 *     0x54  u32  tokenizer kind (nano_tokenizer_kind)
 *     0x58  ...  zero to 0x100
 *
 *  2. Tokenizer section (absent in LoRA files and when the kind is NONE)
 *     trie (Nano): u32 section length (counting these two words), u32 vocab size,
 *        per token: u8 code points, u8 is_special, u8 0xFF, u8 0xFF, u32 id,
 *        u32 x length code points
 *     BPE (Qwen):  u32 section length, u32 max token length in bytes,
 *        per token: f32 score, u32 byte length, bytes
 *
 *  3. Parameters (L layers, E n_embd, V vocab, F n_hidden, H n_head,
 *     K n_kv_head, D head_dim, B block_size), in this order:
 *       norm_attn [L,E], norm_ffn [L,E], norm_final [E]            F32
 *       tok_embd [V,E]                                             quantized
 *       wq [L,H*D,E], wk [L,K*D,E], wv [L,K*D,E], wo [L,E,H*D],
 *       w1 [L,F,E], w2 [L,E,F], w3 [L,F,E]                         quantized
 *       Qwen2: bq [L,H*D], bk [L,K*D], bv [L,K*D]; Qwen3: q_norm [L,D], k_norm [L,D]   F32
 *       rope_cos [B,D/2], rope_sin [B,D/2]  (pos_embd [B,E] when learned)          F32
 *       lm_head [V,E] only when not tied                           quantized
 *     Q8_0 matrices are stored one layer at a time: int8 values, then f32 scales
 *     (one per group of `group size` consecutive values of a row).
 *
 *  LoRA (model type 10, 2024.10): header, then F32 wq_A [L,R,E], wq_B [L,H*D,R],
 *     wk_A [L,R,E], wk_B [L,K*D,R], wv_A [L,R,E], wv_B [L,K*D,R],
 *     wo_A [L,R,H*D], wo_B [L,E,R]; the update is (alpha / R) * B @ A.
 *
 *  Q8_0 to the bit: per group, amax = max|x| (f32), scale = amax / 127.0f,
 *  q = roundf(x / scale) clamped to [-127, 127] (0 when scale is 0).
 * ------------------------------------------------------------------------ */

#define NANO_MAGIC0 0x42443453u
#define NANO_MAGIC1 0x55524C4Du
#define NANO_MAGIC_BYTES "S4DBMLRU"
#define NANO_HEADER_SIZE 256

#define NANO_OFF_MAGIC0 0x00
#define NANO_OFF_MAGIC1 0x04
#define NANO_OFF_MAJOR 0x08
#define NANO_OFF_MINOR 0x0C
#define NANO_OFF_MODEL_TYPE 0x10
#define NANO_OFF_CONFIG_LEN 0x14
#define NANO_OFF_CONFIG 0x18
#define NANO_OFF_QUANT 0x3C
#define NANO_OFF_GROUP_SIZE 0x40
#define NANO_OFF_EXT_ATTENTION 0x44
#define NANO_OFF_EXT_POSITION 0x48
#define NANO_OFF_EXT_NORM_EPS 0x4C
#define NANO_OFF_EXT_ROPE_THETA 0x50
#define NANO_OFF_EXT_TOKENIZER 0x54
#define NANO_EXT_END 0x58

#define NANO_CONFIG_WORDS 9
#define NANO_LORA_CONFIG_WORDS 8
#define NANO_TOKEN_RECORD_HEADER 8
#define NANO_TOKEN_RESERVED_BYTE 0xFF
#define NANO_TOKEN_MAX_CODEPOINTS 255
#define NANO_TOKENIZER_SECTION_HEADER 8
#define NANO_BPE_RECORD_HEADER 8

#define NANO_DEFAULT_NORM_EPS 1e-5f
#define NANO_DEFAULT_ROPE_THETA 10000.0f
#define NANO_QWEN3_ROPE_THETA 1000000.0f

#define NANO_Q8_MAX 127
#define NANO_DEFAULT_GROUP_SIZE 128
#define NANO_LEGACY_Q8_0_2025 10

/* The special tokens of Nano vocabularies (spec.SPECIAL_*); their lengths are
 * sizeof(NANO_SPECIAL_...) - 1. */
#define NANO_SPECIAL_PADDING "<|padding|>"
#define NANO_SPECIAL_UNKNOWN "<|unknown|>"
#define NANO_SPECIAL_BOS "<|bos|>"
#define NANO_SPECIAL_EOS "<|eos|>"
#define NANO_SPECIAL_INSTRUCT "<|instruct_mark|>"
#define NANO_SPECIAL_RESPONSE "<|response_mark|>"

/* Sanity limits: anything above is a corrupt file, not a model. */
#define NANO_MAX_DIM (1u << 20)
#define NANO_MAX_VOCAB (1u << 22)
#define NANO_MAX_LAYERS 1024
#define NANO_MAX_HEADS 4096

/* Known layouts (major, minor) and their config length field. */
#define NANO_LAYOUT_2024_10_MAJOR 2024
#define NANO_LAYOUT_2024_10_MINOR 10
#define NANO_LAYOUT_2024_10_CONFIG_LEN 32
#define NANO_LAYOUT_2025_12_MAJOR 2025
#define NANO_LAYOUT_2025_12_MINOR 12
#define NANO_LAYOUT_2025_12_CONFIG_LEN 32
#define NANO_LAYOUT_2026_1_MAJOR 2026
#define NANO_LAYOUT_2026_1_MINOR 1
#define NANO_LAYOUT_2026_1_CONFIG_LEN 36
#define NANO_LAYOUT_NANO_EXT_1_MAJOR 2026
#define NANO_LAYOUT_NANO_EXT_1_MINOR 101
#define NANO_LAYOUT_NANO_EXT_1_CONFIG_LEN 36

/* Config word indices (spec.CONFIG_FIELDS order). */
typedef enum nano_config_word {
    NANO_CONFIG_BLOCK_SIZE = 0,
    NANO_CONFIG_VOCAB_SIZE = 1,
    NANO_CONFIG_N_LAYER = 2,
    NANO_CONFIG_N_EMBD = 3,
    NANO_CONFIG_N_HEAD = 4,
    NANO_CONFIG_N_KV_HEAD = 5,
    NANO_CONFIG_N_HIDDEN = 6,
    NANO_CONFIG_IS_SHARED_CLASSIFIER = 7,
    NANO_CONFIG_HEAD_DIM = 8
} nano_config_word;

/* LoRA config word indices (spec.LORA_CONFIG_FIELDS order). */
typedef enum nano_lora_config_word {
    NANO_LORA_CONFIG_RANK = 0,
    NANO_LORA_CONFIG_ALPHA = 1,
    NANO_LORA_CONFIG_N_LAYER = 2,
    NANO_LORA_CONFIG_N_EMBD = 3,
    NANO_LORA_CONFIG_N_HEAD = 4,
    NANO_LORA_CONFIG_N_KV_HEAD = 5,
    NANO_LORA_CONFIG_N_HIDDEN = 6,
    NANO_LORA_CONFIG_RESERVED = 7
} nano_lora_config_word;

typedef enum nano_model_type {
    NANO_MODEL_TYPE_NANO = 0,
    NANO_MODEL_TYPE_QWEN2 = 2,
    NANO_MODEL_TYPE_QWEN3 = 3,
    NANO_MODEL_TYPE_LORA = 10
} nano_model_type;

typedef enum nano_quant_type {
    NANO_QUANT_TYPE_F32 = 0x00,
    NANO_QUANT_TYPE_Q8_0 = 0x80,
    NANO_QUANT_TYPE_Q4K = 0x42 /* recognised; parameters not supported */
} nano_quant_type;

typedef enum nano_attention {
    NANO_ATTENTION_CAUSAL = 0,
    NANO_ATTENTION_FULL = 1
} nano_attention;

typedef enum nano_position {
    NANO_POSITION_ROPE = 0,
    NANO_POSITION_LEARNED = 1
} nano_position;

typedef enum nano_tokenizer_kind {
    NANO_TOKENIZER_KIND_NONE = 0,
    NANO_TOKENIZER_KIND_TRIE = 1,
    NANO_TOKENIZER_KIND_BPE = 2
} nano_tokenizer_kind;

/* ------------------------------------------------------------------------
 * Status codes
 * ------------------------------------------------------------------------ */

typedef enum nano_status {
    NANO_OK = 0,
    /* The file (nano_format's error class in brackets) */
    NANO_ERR_BAD_MAGIC = 1,             /* BadMagic */
    NANO_ERR_UNSUPPORTED_VERSION = 2,   /* UnsupportedVersion */
    NANO_ERR_UNKNOWN_MODEL_TYPE = 3,    /* UnknownModelType */
    NANO_ERR_UNKNOWN_QUANT_TYPE = 4,    /* UnknownQuantType */
    NANO_ERR_BAD_HEADER = 5,            /* BadHeader: config length, reserved bytes */
    NANO_ERR_BAD_CONFIG = 6,            /* BadConfig */
    NANO_ERR_BAD_GROUP_SIZE = 7,        /* BadGroupSize */
    NANO_ERR_TRUNCATED = 8,             /* Truncated */
    NANO_ERR_BAD_TOKEN_RECORD = 9,      /* BadTokenRecord */
    NANO_ERR_TRAILING_BYTES = 10,       /* TrailingBytes */
    NANO_ERR_SIZE_OVERFLOW = 11,        /* SizeOverflow */
    NANO_ERR_UNSUPPORTED_QUANT = 12,    /* UnsupportedQuant: Q4K parameters */
    /* The environment */
    NANO_ERR_IO = 13,                   /* cannot open / read / map the file, or not a regular file */
    NANO_ERR_OUT_OF_MEMORY = 14,
    /* The caller */
    NANO_ERR_BAD_ARGUMENT = 15,         /* NULL pointer, out-of-range setting, ... */
    NANO_ERR_BAD_TOKEN = 16,            /* a token id outside the vocabulary */
    NANO_ERR_BUFFER_TOO_SMALL = 17,     /* the output buffer cannot hold the result */
    NANO_ERR_UNSUPPORTED = 18,          /* a valid file or request this engine does not run */
    NANO_ERR_LORA_MISMATCH = 19,        /* the LoRA's shapes do not fit the model */
    NANO_ERR_NO_TOKENIZER = 20,         /* the model has no (usable) tokenizer */
    NANO_ERR_CONTEXT_FULL = 21,         /* no room left in the KV cache */
    NANO_ERR_CANCELLED = 22,            /* nano_session_cancel was called */
    NANO_ERR_STATE = 23,                /* call out of order (e.g. step before start) */
    NANO_ERR_NON_FINITE = 24            /* NaN/inf weights (at load), or logits holding NaN */
} nano_status;

#define NANO_STATUS_COUNT 25

/* A short English description ("bad magic", ...); never NULL. */
NANO_API const char *nano_status_string(nano_status status);
/* The identifier ("NANO_ERR_BAD_MAGIC", ...); never NULL. */
NANO_API const char *nano_status_name(nano_status status);
/* NANO_ABI_VERSION of the library actually loaded. */
NANO_API int nano_abi_version(void);
/* A human-readable build description (compiler, OpenMP, SIMD kernels). */
NANO_API const char *nano_build_info(void);

/* ------------------------------------------------------------------------
 * Models
 * ------------------------------------------------------------------------ */

typedef struct nano_model nano_model;

typedef struct nano_model_params {
    int use_mmap; /* 1: map the file (where the platform can); 0: read it into memory */
    /* Optional: when a load fails, one line saying what is wrong and where (a
     * field and its value, a byte offset, a tensor and an element), written
     * NUL-terminated into error_detail[0..error_detail_size-1] and cut to fit;
     * "" when there is nothing to add to the status. NULL / 0: not written. */
    char *error_detail;
    size_t error_detail_size;
} nano_model_params;

NANO_API nano_model_params nano_model_default_params(void);

/* Load a file (model, Qwen model or LoRA module: any file nano_format reads).
 * Every header field and size is validated before any data is touched; then
 * one pass checks the weights as `nano-format validate` does: a NaN or an
 * infinity in an F32 tensor, or a Q8_0 scale that is not finite or makes
 * q * scale overflow, is NANO_ERR_NON_FINITE (Q4K parameters are not read). */
NANO_API nano_status nano_model_load_file(const char *path, const nano_model_params *params,
                                          nano_model **out);
/* Load from the caller's bytes: borrowed, not copied; they must outlive the
 * model. (Float tensors that are not 4-byte aligned in the buffer are copied.) */
NANO_API nano_status nano_model_load_buffer(const void *data, size_t size,
                                            const nano_model_params *params, nano_model **out);
NANO_API void nano_model_free(nano_model *model);

typedef struct nano_model_info {
    int32_t major, minor;         /* layout version */
    const char *layout;           /* "2024.10", "2025.12", "2026.1", "2026.101" */
    uint32_t model_type;          /* nano_model_type */
    uint32_t quant_type;          /* nano_quant_type (legacy code 10 reads as Q8_0) */
    uint32_t quant_code;          /* the code as stored */
    uint32_t group_size;          /* Q8_0 group; 0 for F32 */
    uint32_t block_size, vocab_size, n_layer, n_embd, n_head, n_kv_head, n_hidden, head_dim;
    uint32_t tied;                /* classifier shared with tok_embd */
    uint32_t has_extension;       /* the header records the fields below (2026.101) */
    uint32_t attention;           /* nano_attention (causal when not recorded) */
    uint32_t position;            /* nano_position (RoPE when not recorded) */
    float norm_eps, rope_theta;
    uint32_t tokenizer_kind;      /* nano_tokenizer_kind */
    uint32_t lora_rank, lora_alpha; /* LoRA files only */
    uint64_t file_size;
    uint64_t tokenizer_offset, tokenizer_size; /* 0 when absent */
    uint64_t params_offset, params_size;
    uint64_t n_params;            /* number of weights (a tied classifier counted once) */
    uint32_t n_tensors;           /* rows of the tensor table */
    uint32_t runnable;            /* nano_context_init can run it */
} nano_model_info;

NANO_API nano_status nano_model_get_info(const nano_model *model, nano_model_info *out);

typedef struct nano_tensor_info {
    const char *name;    /* spec name: "wq", "tok_embd", ...; LoRA "wq_A" ... */
    int32_t layer;       /* -1 for a tensor stored whole, else the layer of a per-layer Q8_0 matrix */
    uint32_t quant_type; /* NANO_QUANT_TYPE_F32 or _Q8_0 */
    uint32_t n_dims;
    uint32_t dims[3];    /* logical shape */
    uint64_t offset;     /* from the start of the file */
    uint64_t size;       /* bytes on disk (Q8_0: values and scales) */
} nano_tensor_info;

NANO_API nano_status nano_model_get_tensor(const nano_model *model, uint32_t index,
                                           nano_tensor_info *out);

/* ------------------------------------------------------------------------
 * Tokenizer (greedy longest match over Unicode code points)
 *
 * - The longest vocabulary token the remaining text starts with is taken; a
 *   code point no token starts with becomes <|unknown|> (one id per code point).
 * - Special tokens (is_special in the file; when no record sets it, tokens
 *   shaped <|name|>) are matched only when allow_special is set; otherwise
 *   their text is ordinary characters.
 * - Invalid UTF-8: each byte that does not begin a well-formed, shortest-form
 *   UTF-8 sequence of a scalar value (no surrogates, <= U+10FFFF) is consumed
 *   alone and encodes to <|unknown|>. Text that is valid UTF-8 encodes exactly
 *   like nano_tokenizer.Tokenizer.encode.
 * - Token texts are whole code points, so streamed token texts never split a
 *   UTF-8 character.
 * ------------------------------------------------------------------------ */

typedef struct nano_tokenizer nano_tokenizer;

/* A tokenizer from a trie section's bytes (exactly nano_format.encode_tokenizer_section's
 * output). The bytes are copied; vocab_size 0 accepts the section's own count. */
NANO_API nano_status nano_tokenizer_init_section(const void *data, size_t size, uint32_t vocab_size,
                                                 nano_tokenizer **out);
NANO_API void nano_tokenizer_free(nano_tokenizer *tok);
/* The model's tokenizer (owned by the model), or NULL when it has none. */
NANO_API const nano_tokenizer *nano_model_tokenizer(const nano_model *model);

NANO_API uint32_t nano_tokenizer_vocab_size(const nano_tokenizer *tok);
NANO_API uint32_t nano_tokenizer_get_kind(const nano_tokenizer *tok);
/* The id of an exact token text (e.g. "<|eos|>"), or -1 (always for len 0,
 * also when a BPE vocabulary holds an empty token). */
NANO_API int32_t nano_tokenizer_find(const nano_tokenizer *tok, const char *text, size_t len);
NANO_API int nano_tokenizer_is_special(const nano_tokenizer *tok, int32_t id);
/* The id <|unknown|> encodes to, or -1 when the vocabulary has none (encoding an
 * unknown character then fails with NANO_ERR_NO_TOKENIZER). */
NANO_API int32_t nano_tokenizer_unknown_id(const nano_tokenizer *tok);
NANO_API uint32_t nano_tokenizer_n_special(const nano_tokenizer *tok);
NANO_API uint32_t nano_tokenizer_max_token_length(const nano_tokenizer *tok); /* code points (trie) or bytes (BPE) */

/* Encode len bytes of UTF-8. Writes up to cap ids; *n_ids receives the number
 * of ids the whole text needs, also when that exceeds cap (then the result is
 * NANO_ERR_BUFFER_TOO_SMALL). ids may be NULL when cap is 0. */
NANO_API nano_status nano_tokenizer_encode(const nano_tokenizer *tok, const char *text, size_t len,
                                           int allow_special, int32_t *ids, size_t cap,
                                           size_t *n_ids);
/* The bytes (1-4) of the well-formed, shortest-form UTF-8 character of a scalar value
 * (no surrogates, <= U+10FFFF) at s[0] of s[n]; 0 where s starts none (such a byte is a
 * character of its own to the tokenizer, as above). */
NANO_API size_t nano_utf8_char_bytes(const char *s, size_t n);
/* The UTF-8 text of one token (owned by the tokenizer, not NUL-terminated; *len bytes). */
NANO_API nano_status nano_tokenizer_token_text(const nano_tokenizer *tok, int32_t id,
                                               const char **text, size_t *len);
/* Concatenate the tokens' texts into buf (NUL-terminated when it fits);
 * *len receives the byte count needed (without the NUL). */
NANO_API nano_status nano_tokenizer_decode(const nano_tokenizer *tok, const int32_t *ids, size_t n,
                                           char *buf, size_t cap, size_t *len);

/* ------------------------------------------------------------------------
 * LoRA modules (attached to a context at run time)
 * ------------------------------------------------------------------------ */

typedef struct nano_lora nano_lora;

NANO_API nano_status nano_lora_load_file(const char *path, const nano_model_params *params,
                                         nano_lora **out);
NANO_API nano_status nano_lora_load_buffer(const void *data, size_t size,
                                           const nano_model_params *params, nano_lora **out);
NANO_API void nano_lora_free(nano_lora *lora);
/* rank, alpha, n_layer, ... of the module (a model_info with model_type LORA). */
NANO_API nano_status nano_lora_get_info(const nano_lora *lora, nano_model_info *out);

/* ------------------------------------------------------------------------
 * Contexts: a KV cache, scratch buffers and settings for one sequence
 * ------------------------------------------------------------------------ */

typedef struct nano_context nano_context;

typedef enum nano_attention_mode {
    NANO_ATTENTION_MODE_FILE = 0,   /* what the file records (causal when it cannot say) */
    NANO_ATTENTION_MODE_CAUSAL = 1,
    NANO_ATTENTION_MODE_FULL = 2    /* bidirectional, for seq2seq models in reference layouts */
} nano_attention_mode;

typedef enum nano_kernels {
    NANO_KERNELS_AUTO = 0,      /* the fastest the CPU supports (AVX2+FMA where present) */
    NANO_KERNELS_PORTABLE = 1   /* plain C loops everywhere */
} nano_kernels;

/* The most threads a context runs (n_threads above it is NANO_ERR_BAD_ARGUMENT:
 * the OpenMP runtime may end the process when it cannot create a team). */
#define NANO_MAX_THREADS 1024

typedef struct nano_context_params {
    uint32_t n_ctx;      /* KV cache length in tokens; 0 = the model's block size (the maximum) */
    uint32_t n_batch;    /* prefill block: tokens pushed through each matrix at once; 0 = 64 */
    int32_t n_threads;   /* at most NANO_MAX_THREADS; 0 = the OpenMP default, capped there too; ignored without OpenMP */
    uint32_t attention;  /* nano_attention_mode */
    uint32_t kernels;    /* nano_kernels */
} nano_context_params;

NANO_API nano_context_params nano_context_default_params(void);
/* NANO_ERR_UNSUPPORTED for files that load but do not run here (Qwen, Q4K, LoRA). */
NANO_API nano_status nano_context_init(const nano_model *model, const nano_context_params *params,
                                       nano_context **out);
NANO_API void nano_context_free(nano_context *ctx);
NANO_API const nano_model *nano_context_model(const nano_context *ctx);
/* Forget every token (the cache is empty again). */
NANO_API void nano_context_reset(nano_context *ctx);
/* Tokens in the cache. */
NANO_API uint32_t nano_context_pos(const nano_context *ctx);
NANO_API uint32_t nano_context_n_ctx(const nano_context *ctx);
/* Threads for the next evaluations (results do not depend on it; 0 = the
 * OpenMP default; NANO_ERR_BAD_ARGUMENT above NANO_MAX_THREADS). May allocate. */
NANO_API nano_status nano_context_set_threads(nano_context *ctx, int32_t n_threads);
NANO_API int32_t nano_context_threads(const nano_context *ctx);
/* Attach a LoRA module (shape-checked; allocates its scratch) or detach it
 * (lora NULL). Both reset the context. The module must outlive the attachment. */
NANO_API nano_status nano_context_set_lora(nano_context *ctx, const nano_lora *lora);

/* Append n tokens at the current position and run them (the prompt goes
 * through in blocks of n_batch, as matrix-matrix products).
 * logits: NULL, or [V] (the last position's logits) when !all_logits, or
 * [n * V] (every position, row-major) when all_logits. The last position's
 * logits are also kept in the context (nano_context_logits).
 * NANO_ERR_CONTEXT_FULL when pos + n > n_ctx (nothing is run then).
 * A full-attention model (not causal) gives the one-pass answer only when the
 * whole input comes in one call from position 0: positions run earlier never
 * see the tokens appended later (nano_train's forward_cached is the same). */
NANO_API nano_status nano_eval(nano_context *ctx, const int32_t *tokens, uint32_t n, float *logits,
                               int all_logits);
/* [V] logits of the last evaluated position (valid after nano_eval). */
NANO_API const float *nano_context_logits(const nano_context *ctx);

/* One forward over `in` (n tokens, from an empty cache) and the argmax (lowest
 * id on ties) at every position into out[n]. Runs with full attention unless
 * the file records causal attention (layout 2026.101) or the context asks
 * for causal; reference layouts cannot record full attention, so like the
 * reference engine it runs them non-causally. Resets the context.
 * NANO_ERR_NON_FINITE when a position's logits hold NaN (finite weights can
 * still overflow): like the sampler, it does not read an argmax off them. */
NANO_API nano_status nano_seq2seq(nano_context *ctx, const int32_t *in, uint32_t n, int32_t *out);

/* ------------------------------------------------------------------------
 * Sampler (the same algorithm as nano_train.sampling.sample_logits):
 *  1. repetition penalty (!= 1): each DISTINCT id in the history: logit > 0 ->
 *     logit / penalty, else logit * penalty; then every logit is clamped to
 *     the finite float32 range (+-FLT_MAX);
 *  2. temperature 0: argmax, ties to the lowest id (no RNG draw);
 *  3. float32 softmax of (logit - max) / temperature (the max subtracted
 *     first, so no temperature > 0 makes inf - inf);
 *  4. candidates by probability descending (ties: lower id); top_k > 0 keeps
 *     the first k; top_p < 1 the shortest prefix with running sum >= top_p;
 *     min_p > 0 drops p < min_p * p_max; at least one kept; renormalised;
 *  5. u = uniform [0,1); the first candidate whose running sum exceeds u
 *     (the last kept one if none).
 * All sums are running float32 sums in candidate order.
 * RNG: xorshift64* seeded with splitmix64(seed) (state 1 if that is 0);
 * uniform = (next >> 40) * 2^-24.
 * ------------------------------------------------------------------------ */

typedef struct nano_rng {
    uint64_t state;
} nano_rng;

NANO_API void nano_rng_seed(nano_rng *rng, uint64_t seed);
NANO_API uint64_t nano_rng_next(nano_rng *rng);
NANO_API float nano_rng_uniform(nano_rng *rng);

typedef struct nano_sampler_params {
    float temperature;        /* 0 = greedy; default 1 */
    int32_t top_k;            /* 0 = off */
    float top_p;              /* 1 = off; in (0, 1] */
    float min_p;              /* 0 = off; in [0, 1] */
    float repetition_penalty; /* 1 = off; > 0 */
    uint64_t seed;
} nano_sampler_params;

NANO_API nano_sampler_params nano_sampler_default_params(void);

typedef struct nano_sampler nano_sampler;

/* NANO_ERR_BAD_ARGUMENT for settings outside the ranges above, and for a
 * vocab_size of 0 or above NANO_MAX_VOCAB. */
NANO_API nano_status nano_sampler_init(const nano_sampler_params *params, uint32_t vocab_size,
                                       nano_sampler **out);
NANO_API void nano_sampler_free(nano_sampler *s);
NANO_API void nano_sampler_reseed(nano_sampler *s, uint64_t seed);
NANO_API nano_rng *nano_sampler_rng(nano_sampler *s);
/* One step on logits[vocab_size] (left unchanged); history: the ids so far
 * (prompt + generated; only the repetition penalty reads it). No allocation.
 * NANO_ERR_NON_FINITE when a logit is NaN (infinities are clamped to +-FLT_MAX). */
NANO_API nano_status nano_sampler_sample(nano_sampler *s, const float *logits, const int32_t *history,
                                         size_t n_history, int32_t *out_id);

/* ------------------------------------------------------------------------
 * Sessions: streaming generation over a context (CLI, WebSocket server,
 * WASM, ESP32, Pod)
 * ------------------------------------------------------------------------ */

typedef struct nano_session nano_session;

typedef enum nano_mode {
    NANO_MODE_CONTINUE = 0, /* the prompt is text to continue */
    NANO_MODE_INSTRUCT = 1  /* <|instruct_mark|> prompt <|response_mark|>, stops at <|eos|> */
} nano_mode;

typedef enum nano_stop_reason {
    NANO_STOP_NONE = 0,
    NANO_STOP_TOKEN = 1,        /* a stop token was sampled (not emitted) */
    NANO_STOP_MAX_TOKENS = 2,
    NANO_STOP_CONTEXT_FULL = 3, /* the KV cache is full */
    NANO_STOP_CANCELLED = 4
} nano_stop_reason;

typedef struct nano_token_event {
    int32_t id;          /* the token, or -1 when done without one */
    const char *text;    /* its UTF-8 text (whole characters; owned by the model) */
    size_t text_len;
    int done;            /* 1: no token in this event; see stop_reason */
    uint32_t stop_reason;/* nano_stop_reason */
} nano_token_event;

typedef void (*nano_token_callback)(void *user, const nano_token_event *event);

typedef struct nano_session_params {
    nano_sampler_params sampler;
    uint32_t max_tokens;          /* 0 = until a stop token or the context is full */
    int allow_special;            /* special-token text in CONTINUE prompts is matched */
    int stop_at_eos;              /* stop on <|eos|> in CONTINUE mode too (INSTRUCT always does) */
    const int32_t *stop_tokens;   /* extra stop ids (copied by init); may be NULL */
    uint32_t n_stop_tokens;
    nano_token_callback on_token; /* optional: called for every event, NULL = none */
    void *user;
} nano_session_params;

typedef struct nano_session_stats {
    uint32_t prompt_tokens;
    uint32_t unknown_tokens;      /* prompt tokens that are <|unknown|>: characters of a text
                                     prompt the vocabulary lacks (0 without that token) */
    uint32_t generated_tokens;
    double prefill_ms;       /* running the prompt */
    double ttft_ms;          /* from start to the first token */
    double decode_ms;        /* from the first token to the last */
    double prefill_tokens_per_s;
    double decode_tokens_per_s; /* tokens after the first, per second of decode_ms */
} nano_session_stats;

NANO_API nano_session_params nano_session_default_params(void);
/* The session uses ctx (which must outlive it) and owns its sampler and history.
 * NANO_ERR_UNSUPPORTED when ctx runs full attention (the file records it, or
 * the context asks for NANO_ATTENTION_MODE_FULL): such a model is a seq2seq
 * model, run with nano_seq2seq, not generated from token by token. */
NANO_API nano_status nano_session_init(nano_context *ctx, const nano_session_params *params,
                                       nano_session **out);
NANO_API void nano_session_free(nano_session *s);
/* Begin a generation: resets the context, tokenizes the prompt (UTF-8,
 * NUL-terminated) and reseeds the sampler. The prompt runs on the first step. */
NANO_API nano_status nano_session_start(nano_session *s, const char *prompt, uint32_t mode);
/* The same with token ids (copied). */
NANO_API nano_status nano_session_start_tokens(nano_session *s, const int32_t *ids, uint32_t n);
/* Produce the next event: a token (done 0), or the end (done 1, with a reason).
 * After the end, further steps return the same end event. Returns
 * NANO_ERR_CANCELLED (event done, reason CANCELLED) after nano_session_cancel,
 * and NANO_ERR_STATE when the context was reset (nano_context_reset, a LoRA
 * attached or detached) or used by another session since the session's last
 * step: start again. A model without a vocabulary gives each token's text as
 * "" (length 0). */
NANO_API nano_status nano_session_step(nano_session *s, nano_token_event *event);
/* Ask a running generation to stop at the next step or prefill block. Safe to
 * call from another thread or a signal handler. */
NANO_API void nano_session_cancel(nano_session *s);
NANO_API nano_status nano_session_get_stats(const nano_session *s, nano_session_stats *out);
/* The prompt and generated ids so far; *n receives the count. */
NANO_API const int32_t *nano_session_tokens(const nano_session *s, uint32_t *n,
                                            uint32_t *n_prompt);

/* ------------------------------------------------------------------------
 * Stop texts: end a generation where a text appears in its output, as
 * nano_train.sampling.generate does with stop strings (`nano run --stop`,
 * nano-wss's "stop"). Texts are compared as UTF-8 bytes; token texts are
 * whole characters, so a byte match is a character match.
 *
 *     nano_stop_texts *stops = NULL;
 *     uint32_t bad, n_ids, upto, shown = 0;
 *     int stopped = 0;
 *     if (nano_stop_texts_init(tok, texts, n_texts, &stops, &bad) != NANO_OK) ... texts[bad] is wrong
 *     sp.stop_tokens = nano_stop_texts_ids(stops, &n_ids);   // before nano_session_init
 *     sp.n_stop_tokens = n_ids;
 *     ...
 *     while (!stopped && nano_session_step(s, &ev) == NANO_OK && !ev.done) {
 *         gen = nano_session_tokens(s, &n, &n_prompt) + n_prompt;
 *         nano_stop_texts_check(stops, gen, n - n_prompt, &upto, &stopped);
 *         put out gen[shown .. upto); shown = upto;
 *     }
 *     if (!stopped) put out gen[shown .. n - n_prompt);   // held back, never became a stop text
 * ------------------------------------------------------------------------ */
typedef struct nano_stop_texts nano_stop_texts;
/* Resolve n NUL-terminated texts against tok (copied; tok must outlive the
 * handle). A special token's text becomes a stop id (nano_stop_texts_ids: that
 * token ends the generation unemitted, as <|eos|> does); any other text is
 * matched on the generated text. The texts are checked in order and the first
 * bad one is named in *bad (may be NULL): NANO_ERR_BAD_ARGUMENT for a NULL or
 * empty text (it would match before any token), NANO_ERR_NO_TOKENIZER when tok
 * is NULL or the vocabulary cannot write the text (a character with no token:
 * it could never be generated; nano_stop_texts_missing says which). n may be 0.
 * All memory the check needs is allocated here. */
NANO_API nano_status nano_stop_texts_init(const nano_tokenizer *tok, const char *const *texts, uint32_t n,
                                          nano_stop_texts **out, uint32_t *bad);
NANO_API void nano_stop_texts_free(nano_stop_texts *stops);
/* The stop ids of the special tokens among the texts (*n of them; owned by the
 * handle): give them to nano_session_params.stop_tokens. */
NANO_API const int32_t *nano_stop_texts_ids(const nano_stop_texts *stops, uint32_t *n);
/* How many texts are matched on the generated text (0: check always lets every token out). */
NANO_API uint32_t nano_stop_texts_count(const nano_stop_texts *stops);
/* After each new token, gen[n]: the tokens generated so far (not the prompt).
 * *stopped 1: a stop text appeared; the tokens whose text starts before it
 * (*upto of them) are the output, whole even where a token's text runs into
 * the stop text, and gen[*upto .. n) are dropped: end the generation. Else
 * (*stopped 0) gen[0 .. *upto) may be put out now, and gen[*upto .. n) wait:
 * they start at or after the earliest character from which the text could
 * still become a stop text (it may lie inside a token already out). *upto
 * never decreases from one token to the next of a generation. No allocation.
 * NANO_ERR_BAD_TOKEN for an id outside the vocabulary among the tokens it reads:
 * the newest, as many as the longest stop text has characters (none when no text
 * is matched on the generated text). */
NANO_API nano_status nano_stop_texts_check(nano_stop_texts *stops, const int32_t *gen, uint32_t n, uint32_t *upto,
                                           int *stopped);
/* The characters of text[len] that tok has no token for, each once, in order
 * (each byte that starts no well-formed character is one), into buf
 * (NUL-terminated when it fits); *len_out receives the byte count. Empty when
 * every character has a token but the whole text still cannot be written. */
NANO_API nano_status nano_stop_texts_missing(const nano_tokenizer *tok, const char *text, size_t len, char *buf,
                                             size_t cap, size_t *len_out);

/* ------------------------------------------------------------------------
 * Q8_0 quantization (bit-identical to nano_format.quantize_q8_0)
 * ------------------------------------------------------------------------ */

/* x[rows * cols] -> q[rows * cols], scales[rows * cols / group_size].
 * NANO_ERR_BAD_GROUP_SIZE when group_size does not divide cols;
 * NANO_ERR_BAD_ARGUMENT for non-finite input, or a group whose scale would
 * overflow when dequantized (an amax of FLT_MAX). */
NANO_API nano_status nano_quantize_q8_0(const float *x, uint64_t rows, uint64_t cols,
                                        uint32_t group_size, int8_t *q, float *scales);
NANO_API void nano_dequantize_q8_0(const int8_t *q, const float *scales, uint64_t n,
                                   uint32_t group_size, float *out);

#ifdef __cplusplus
}
#endif

#endif /* NANO_H */
