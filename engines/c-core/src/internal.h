/*
 * internal.h - structures and functions shared by the library's sources.
 * Nothing here is public API; everything is hidden from the shared library's
 * symbol table except the nano_test_* entry points (see test_api.c).
 */
#ifndef NANO_INTERNAL_H
#define NANO_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "nano.h"

#if defined(__GNUC__) || defined(__clang__)
#define NANO_HIDDEN __attribute__((visibility("hidden")))
#else
#define NANO_HIDDEN
#endif

/* ------------------------------------------------------------------------
 * Platform layer (platform_posix.c or platform_stdio.c; the build picks one)
 * ------------------------------------------------------------------------ */

typedef struct nano_file_map {
    const uint8_t *data; /* the file's bytes */
    size_t size;
    void *impl;          /* owned by the platform layer */
} nano_file_map;

/* Map (or read) a whole file. NANO_ERR_IO when it cannot be opened or read. */
NANO_HIDDEN nano_status nano_platform_map(const char *path, int use_mmap, nano_file_map *out);
NANO_HIDDEN void nano_platform_unmap(nano_file_map *map);
/* A monotonic clock in milliseconds. */
NANO_HIDDEN double nano_platform_now_ms(void);
NANO_HIDDEN const char *nano_platform_name(void);

/* ------------------------------------------------------------------------
 * Overflow-safe size arithmetic
 * ------------------------------------------------------------------------ */

static inline int nano_mul_u64(uint64_t a, uint64_t b, uint64_t *out) {
    if (a != 0 && b > UINT64_MAX / a) return 0;
    *out = a * b;
    return 1;
}
static inline int nano_add_u64(uint64_t a, uint64_t b, uint64_t *out) {
    if (b > UINT64_MAX - a) return 0;
    *out = a + b;
    return 1;
}

/* ------------------------------------------------------------------------
 * Kernels (kernels.c)
 * ------------------------------------------------------------------------ */

/* A weight matrix [rows, cols], row-major: F32 (f) or Q8_0 (q + s). */
typedef struct nano_mat {
    uint32_t rows, cols;
    uint32_t group;     /* Q8_0 group size; 0 for F32 */
    const float *f;     /* [rows, cols] F32 weights, or NULL */
    const int8_t *q;    /* [rows, cols] Q8_0 values, or NULL */
    const float *s;     /* [rows, cols / group] Q8_0 scales */
} nano_mat;

typedef struct nano_kernels_table {
    const char *name;
    /* rows [r0, r0 + nr) of y[n, w->rows] = x[n, w->cols] W^T, on the calling thread */
    void (*rows)(float *y, const float *x, const nano_mat *w, uint32_t n, uint32_t r0, uint32_t nr);
    /* the rows of one work item of a matmul of n tokens over w */
    uint32_t (*tile)(const nano_mat *w, uint32_t n);
    /* out[s] = dot(q, k + s * kstride, d) * scale for s < n */
    void (*scores)(float *out, const float *q, const float *k, size_t kstride, uint32_t n, uint32_t d,
                   float scale);
    /* in-place softmax over n values (max subtracted, the sum in double) */
    void (*softmax)(float *x, uint32_t n);
    /* out[0..d) = sum_s p[s] * v[s * vstride + 0..d), s ascending */
    void (*weighted_sum)(float *out, const float *p, const float *v, size_t vstride, uint32_t n, uint32_t d);
} nano_kernels_table;

/* The table for a nano_kernels choice (AUTO picks AVX2+FMA when the CPU has it). */
NANO_HIDDEN void nano_kernels_select(nano_kernels_table *table, uint32_t kind);
/* y[n, w->rows] = x[n, w->cols] W^T, split over rows on nt threads */
NANO_HIDDEN void nano_matmul(const nano_kernels_table *k, float *y, const float *x,
                             const nano_mat *w, uint32_t n, int nt);
/* Several matmuls in one parallel region (e.g. q, k, v of the same input). */
#define NANO_MAX_JOBS 4
typedef struct nano_matmul_job {
    float *y;           /* [n, w->rows] */
    const float *x;     /* [n, w->cols] */
    const nano_mat *w;
} nano_matmul_job;
NANO_HIDDEN void nano_matmul_jobs(const nano_kernels_table *k, const nano_matmul_job *jobs, uint32_t n_jobs,
                                  uint32_t n, int nt);
/* h = silu(x W1^T) * (x W3^T) ([n, w1->rows]), h2 = x W3^T; one parallel region. */
NANO_HIDDEN void nano_matmul_swiglu(const nano_kernels_table *k, float *h, float *h2, const float *x,
                                    const nano_mat *w1, const nano_mat *w3, uint32_t n, int nt);
/* nano_matmul on bare arrays (the kernel tests) */
NANO_HIDDEN void nano_matmul_f32(const nano_kernels_table *k, float *y, const float *x, const float *w,
                                 uint32_t n, uint32_t rows, uint32_t cols, int nt);
NANO_HIDDEN void nano_matmul_q8(const nano_kernels_table *k, float *y, const float *x, const int8_t *q,
                                const float *s, uint32_t n, uint32_t rows, uint32_t cols, uint32_t group,
                                int nt);
/* y = x * 1/sqrt(mean(x^2) + eps) * w over n values */
NANO_HIDDEN void nano_rmsnorm(float *y, const float *x, const float *w, uint32_t n, float eps);
/* Rotate interleaved pairs (x[2i], x[2i+1]) of n_heads heads of size head_dim
 * by cos/sin[i] (the table row of one position, [head_dim / 2]). */
NANO_HIDDEN void nano_rope(float *x, uint32_t n_heads, uint32_t head_dim, const float *cos_row,
                           const float *sin_row);
/* In-place softmax over n values (max subtracted). */
NANO_HIDDEN void nano_softmax(float *x, uint32_t n);
/* One row of an embedding matrix as floats. */
NANO_HIDDEN void nano_mat_row(const nano_mat *m, uint32_t row, float *out);
/* y[i] = silu(a[i]) * b[i] */
NANO_HIDDEN void nano_swiglu(float *y, const float *a, const float *b, uint32_t n);

/* for (var = 0; var < n; var++) body, split over nt threads (static schedule)
 * when `cond`; otherwise a plain loop: entering an OpenMP region costs
 * microseconds even when it runs on one thread, which tiny models notice. */
#define NANO_PARALLEL_FOR(cond, var, n, ...)                                  \
    do {                                                                      \
        if (cond) {                                                           \
            _Pragma("omp parallel for schedule(static) num_threads(nt)")      \
            for (var = 0; var < (n); var++) { __VA_ARGS__; }                       \
        } else {                                                              \
            for (var = 0; var < (n); var++) { __VA_ARGS__; }                       \
        }                                                                     \
    } while (0)

/* Thread index inside an OpenMP region (0 without OpenMP). */
NANO_HIDDEN int nano_thread_index(void);
NANO_HIDDEN int nano_default_threads(void);

/* ------------------------------------------------------------------------
 * Tokenizer (tokenizer.c)
 * ------------------------------------------------------------------------ */

/* Where a tokenizer section is wrong: what, at which byte of the section, and
 * in which token record (-1: the section's own header or length). */
typedef struct nano_section_error {
    const char *what;
    uint64_t at;
    int64_t token;
} nano_section_error;

/* Validate a trie section at data[0..avail) (it may run on past its end) and
 * return its length in *section_len. vocab_size must match when nonzero. On
 * an error, *err (when not NULL) says where. */
NANO_HIDDEN nano_status nano_check_trie_section(const uint8_t *data, uint64_t avail,
                                                uint32_t vocab_size, uint64_t *section_len,
                                                nano_section_error *err);
NANO_HIDDEN nano_status nano_check_bpe_section(const uint8_t *data, uint64_t avail,
                                               uint32_t vocab_size, uint64_t *section_len,
                                               uint32_t *max_len, nano_section_error *err);
/* Build a tokenizer from a validated section (bytes are not kept). */
NANO_HIDDEN nano_status nano_tokenizer_build_trie(const uint8_t *data, uint64_t len,
                                                  nano_tokenizer **out);
NANO_HIDDEN nano_status nano_tokenizer_build_bpe(const uint8_t *data, uint64_t len,
                                                 uint32_t vocab_size, nano_tokenizer **out);

/* ------------------------------------------------------------------------
 * Models (format.c)
 * ------------------------------------------------------------------------ */

typedef struct nano_layer {
    const float *norm_attn; /* [E] */
    const float *norm_ffn;  /* [E] */
    nano_mat wq;            /* [H*D, E] */
    nano_mat wk;            /* [K*D, E] */
    nano_mat wv;            /* [K*D, E] */
    nano_mat wo;            /* [E, H*D] */
    nano_mat w1;            /* [F, E] gate */
    nano_mat w2;            /* [E, F] down */
    nano_mat w3;            /* [F, E] up */
} nano_layer;

typedef struct nano_tensor_entry {
    const char *name;
    int32_t layer;
    uint32_t quant_type;
    uint32_t n_dims;
    uint32_t dims[3];
    uint64_t offset;
    uint64_t size;
} nano_tensor_entry;

/* LoRA target indices */
enum { NANO_LORA_WQ = 0, NANO_LORA_WK = 1, NANO_LORA_WV = 2, NANO_LORA_WO = 3, NANO_LORA_N = 4 };

typedef struct nano_lora_layer {
    nano_mat a[NANO_LORA_N]; /* [R, in] */
    nano_mat b[NANO_LORA_N]; /* [out, R] */
} nano_lora_layer;

struct nano_model {
    nano_file_map map;       /* when loaded from a path */
    int owns_map;
    const uint8_t *data;     /* the file's bytes (mapped, read or the caller's) */
    uint64_t size;
    nano_model_info info;
    nano_tensor_entry *tensors; /* [info.n_tensors] */
    nano_tokenizer *tokenizer;  /* NULL when the file has none */
    void **owned;               /* aligned copies of misaligned float tensors */
    uint32_t n_owned;

    /* Nano models (runnable) */
    const float *norm_final; /* [E] */
    nano_mat tok_embd;       /* [V, E] */
    nano_mat lm_head;        /* [V, E]; tok_embd when tied */
    const float *rope_cos;   /* [B, D/2] or NULL */
    const float *rope_sin;   /* [B, D/2] or NULL */
    const float *pos_embd;   /* [B, E] or NULL */
    nano_layer *layers;      /* [L] */

    /* LoRA files */
    nano_lora_layer *lora_layers; /* [L] */

    char detail[192]; /* while loading: what is wrong and where (nano_model_params.error_detail) */
};

struct nano_lora {
    nano_model *file;
    float scale; /* alpha / rank */
};

NANO_HIDDEN nano_status nano_model_parse(nano_model *m);

/* ------------------------------------------------------------------------
 * Contexts (forward.c)
 * ------------------------------------------------------------------------ */

struct nano_context {
    const nano_model *model;
    const nano_lora *lora;
    nano_kernels_table kernels;
    uint32_t n_ctx;     /* KV cache length */
    uint32_t n_batch;   /* prefill block */
    int n_threads;
    uint32_t attention_mode; /* nano_attention_mode asked for */
    int full_attention; /* this context's default attention */
    uint32_t pos;       /* tokens in the cache */
    uint64_t resets;    /* how many times the cache was emptied (a session notices one under it) */
    int has_logits;

    float *key_cache;   /* [L, K, n_ctx, D] (head-major: one head's keys are contiguous) */
    float *value_cache; /* [L, K, n_ctx, D] */
    float *x;           /* [n_ctx, E] residual stream of the tokens being run */
    float *xb;          /* [n_batch, E] normalised input of a block */
    float *q;           /* [n_batch, H*D] queries */
    float *att;         /* [n_batch, H*D] attention output */
    float *proj;        /* [n_batch, max(E, H*D, K*D)] a projection before it is added */
    float *hb;          /* [n_batch, F] */
    float *hb2;         /* [n_batch, F] */
    float *scores;      /* [score_threads, n_ctx] attention scores, one row per thread */
    int score_threads;
    float *logits;      /* [V] of the last evaluated position */
    float *lora_tmp;    /* [n_batch, R] A @ x */
    float *lora_out;    /* [n_batch, max(E, H*D)] B @ (A @ x) */
    uint32_t lora_rank_alloc;
};

/* Run tokens with a chosen attention; logits as nano_eval. argmax: NULL or [n]
 * (the argmax of every position, computed one position at a time). classify 0
 * skips the classifier (a prompt block before the last; no logits after it). */
NANO_HIDDEN nano_status nano_eval_ex(nano_context *ctx, const int32_t *tokens, uint32_t n,
                                     float *logits, int all_logits, int full_attention,
                                     int32_t *argmax, int classify);
NANO_HIDDEN int32_t nano_argmax(const float *x, uint32_t n);

/* ------------------------------------------------------------------------
 * Test entry points (test_api.c): exported for the cffi kernel tests only.
 * ------------------------------------------------------------------------ */

NANO_API void nano_test_matmul(uint32_t kernels, float *y, const float *x, const float *w,
                               uint32_t n, uint32_t rows, uint32_t cols, int nt);
NANO_API void nano_test_matmul_q8(uint32_t kernels, float *y, const float *x, const int8_t *q,
                                  const float *s, uint32_t n, uint32_t rows, uint32_t cols,
                                  uint32_t group, int nt);
NANO_API void nano_test_rmsnorm(float *y, const float *x, const float *w, uint32_t n, float eps);
NANO_API void nano_test_rope(float *x, uint32_t n_heads, uint32_t head_dim, const float *cos_row,
                             const float *sin_row);
NANO_API void nano_test_softmax(uint32_t kernels, float *x, uint32_t n);
NANO_API void nano_test_swiglu(float *y, const float *a, const float *b, uint32_t n);
NANO_API const char *nano_test_kernels_name(uint32_t kernels);
NANO_API nano_status nano_test_eval_in_omp_team(const nano_model *m, int team, const int32_t *ids, uint32_t n,
                                                float *logits, int32_t *ran);

#endif /* NANO_INTERNAL_H */
