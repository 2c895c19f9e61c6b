/*
 * format.c - loading model files: validate every field and size, then point
 * the weight structs into the bytes (zero copy).
 *
 * The checks run in the same order as nano_format's reader, so that both give
 * the same verdict on every file (tests/test_loader.py compares them):
 *   magic -> header length -> version -> model type -> config length -> quant
 *   code -> reserved bytes -> config words -> group size -> tokenizer section
 *   -> parameter sizes (overflow, larger than the file, truncated, trailing)
 *   -> finite weights (what `nano-format validate` adds to the reader: every
 *      Q8_0 scale, then every F32 value; NANO_ERR_NON_FINITE for either).
 */
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* st, after writing what is wrong and where into m->detail (handed to a caller
 * that asked for it: nano_model_params.error_detail). */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static nano_status fail(nano_model *m, nano_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->detail, sizeof m->detail, fmt, ap);
    va_end(ap);
    return st;
}

static unsigned long long ull(uint64_t v) { return (unsigned long long)v; }

// ---------------------------------------------------------------------------
// Little-endian reads (the file's byte order on any host)

static uint32_t rd_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static int32_t rd_i32(const uint8_t *p) {
    uint32_t u = rd_u32(p);
    int32_t v;
    memcpy(&v, &u, sizeof v);
    return v;
}

static float rd_f32(const uint8_t *p) {
    uint32_t u = rd_u32(p);
    float v;
    memcpy(&v, &u, sizeof v);
    return v;
}

// ---------------------------------------------------------------------------
// Layouts (spec.LAYOUTS and spec.QUANT_CODES)

typedef struct layout_desc {
    const char *name;
    int32_t major, minor;
    uint32_t config_len;
    int extension;
    uint32_t model_types; /* bit per nano_model_type */
    /* the quant codes the layout may store: code -> nano_quant_type */
    uint32_t n_codes;
    uint32_t codes[3];
    uint32_t quants[3];
} layout_desc;

#define MT_BIT(t) (1u << (t))

static const layout_desc LAYOUTS[] = {
    {"2024.10", NANO_LAYOUT_2024_10_MAJOR, NANO_LAYOUT_2024_10_MINOR, NANO_LAYOUT_2024_10_CONFIG_LEN, 0,
     MT_BIT(NANO_MODEL_TYPE_LORA), 1, {0x00, 0, 0}, {NANO_QUANT_TYPE_F32, 0, 0}},
    {"2025.12", NANO_LAYOUT_2025_12_MAJOR, NANO_LAYOUT_2025_12_MINOR, NANO_LAYOUT_2025_12_CONFIG_LEN, 0,
     MT_BIT(NANO_MODEL_TYPE_NANO), 3, {0x00, NANO_LEGACY_Q8_0_2025, 0x42},
     {NANO_QUANT_TYPE_F32, NANO_QUANT_TYPE_Q8_0, NANO_QUANT_TYPE_Q4K}},
    {"2026.1", NANO_LAYOUT_2026_1_MAJOR, NANO_LAYOUT_2026_1_MINOR, NANO_LAYOUT_2026_1_CONFIG_LEN, 0,
     MT_BIT(NANO_MODEL_TYPE_NANO) | MT_BIT(NANO_MODEL_TYPE_QWEN2) | MT_BIT(NANO_MODEL_TYPE_QWEN3), 3,
     {0x00, 0x80, 0x42}, {NANO_QUANT_TYPE_F32, NANO_QUANT_TYPE_Q8_0, NANO_QUANT_TYPE_Q4K}},
    {"2026.101", NANO_LAYOUT_NANO_EXT_1_MAJOR, NANO_LAYOUT_NANO_EXT_1_MINOR,
     NANO_LAYOUT_NANO_EXT_1_CONFIG_LEN, 1, MT_BIT(NANO_MODEL_TYPE_NANO), 2, {0x00, 0x80, 0},
     {NANO_QUANT_TYPE_F32, NANO_QUANT_TYPE_Q8_0, 0}},
};
#define N_LAYOUTS (sizeof(LAYOUTS) / sizeof(LAYOUTS[0]))

static int known_model_type(uint32_t t) {
    return t == NANO_MODEL_TYPE_NANO || t == NANO_MODEL_TYPE_QWEN2 || t == NANO_MODEL_TYPE_QWEN3 ||
           t == NANO_MODEL_TYPE_LORA;
}

// ---------------------------------------------------------------------------
// The parameter plan (nano_format.plan): names, shapes and sizes in file order

typedef struct plan_param {
    const char *name;
    uint32_t n_dims;
    uint64_t dims[3];
    int quantizable;
    int per_layer;
} plan_param;

#define MAX_PLAN 24

static void plan_add(plan_param *p, uint32_t *n, const char *name, uint32_t nd, uint64_t d0, uint64_t d1,
                     uint64_t d2, int quantizable, int per_layer) {
    plan_param *q = &p[(*n)++];
    q->name = name;
    q->n_dims = nd;
    q->dims[0] = d0;
    q->dims[1] = d1;
    q->dims[2] = d2;
    q->quantizable = quantizable;
    q->per_layer = per_layer;
}

static uint32_t plan_model(const nano_model_info *c, plan_param *p) {
    uint32_t n = 0;
    uint64_t L = c->n_layer, E = c->n_embd, V = c->vocab_size, F = c->n_hidden, D = c->head_dim,
             B = c->block_size;
    uint64_t HD = (uint64_t)c->n_head * D, KD = (uint64_t)c->n_kv_head * D;
    plan_add(p, &n, "norm_attn", 2, L, E, 0, 0, 0);
    plan_add(p, &n, "norm_ffn", 2, L, E, 0, 0, 0);
    plan_add(p, &n, "norm_final", 1, E, 0, 0, 0, 0);
    plan_add(p, &n, "tok_embd", 2, V, E, 0, 1, 0);
    plan_add(p, &n, "wq", 3, L, HD, E, 1, 1);
    plan_add(p, &n, "wk", 3, L, KD, E, 1, 1);
    plan_add(p, &n, "wv", 3, L, KD, E, 1, 1);
    plan_add(p, &n, "wo", 3, L, E, HD, 1, 1);
    plan_add(p, &n, "w1", 3, L, F, E, 1, 1);
    plan_add(p, &n, "w2", 3, L, E, F, 1, 1);
    plan_add(p, &n, "w3", 3, L, F, E, 1, 1);
    if (c->model_type == NANO_MODEL_TYPE_QWEN2) {
        plan_add(p, &n, "bq", 2, L, HD, 0, 0, 0);
        plan_add(p, &n, "bk", 2, L, KD, 0, 0, 0);
        plan_add(p, &n, "bv", 2, L, KD, 0, 0, 0);
    }
    if (c->model_type == NANO_MODEL_TYPE_QWEN3) {
        plan_add(p, &n, "q_norm", 2, L, D, 0, 0, 0);
        plan_add(p, &n, "k_norm", 2, L, D, 0, 0, 0);
    }
    if (c->position == NANO_POSITION_ROPE) {
        plan_add(p, &n, "rope_cos", 2, B, D / 2, 0, 0, 0);
        plan_add(p, &n, "rope_sin", 2, B, D / 2, 0, 0, 0);
    } else {
        plan_add(p, &n, "pos_embd", 2, B, E, 0, 0, 0);
    }
    if (!c->tied) plan_add(p, &n, "lm_head", 2, V, E, 0, 1, 0);
    return n;
}

static uint32_t plan_lora(const nano_model_info *c, plan_param *p) {
    uint32_t n = 0;
    uint64_t L = c->n_layer, R = c->lora_rank, E = c->n_embd, D = c->n_embd / c->n_head;
    uint64_t HD = (uint64_t)c->n_head * D, KD = (uint64_t)c->n_kv_head * D;
    plan_add(p, &n, "wq_A", 3, L, R, E, 0, 0);
    plan_add(p, &n, "wq_B", 3, L, HD, R, 0, 0);
    plan_add(p, &n, "wk_A", 3, L, R, E, 0, 0);
    plan_add(p, &n, "wk_B", 3, L, KD, R, 0, 0);
    plan_add(p, &n, "wv_A", 3, L, R, E, 0, 0);
    plan_add(p, &n, "wv_B", 3, L, KD, R, 0, 0);
    plan_add(p, &n, "wo_A", 3, L, R, HD, 0, 0);
    plan_add(p, &n, "wo_B", 3, L, E, R, 0, 0);
    return n;
}

/* Elements of a param; 0 on overflow (dims are nonzero after validation). */
static int param_count(const plan_param *p, uint64_t *out) {
    uint64_t n = 1;
    uint32_t i;
    for (i = 0; i < p->n_dims; i++)
        if (!nano_mul_u64(n, p->dims[i], &n)) return 0;
    *out = n;
    return 1;
}

static int stored_q8(const plan_param *p, uint32_t quant) {
    return p->quantizable && quant == NANO_QUANT_TYPE_Q8_0;
}

/* Bytes on disk of one Q8_0 matrix [rows, cols]. */
static int q8_nbytes(uint64_t rows, uint64_t cols, uint64_t group, uint64_t *out) {
    uint64_t n, scales;
    if (!nano_mul_u64(rows, cols, &n)) return 0;
    if (!nano_mul_u64(n / group, 4, &scales)) return 0;
    return nano_add_u64(n, scales, out);
}

static int param_nbytes(const plan_param *p, uint32_t quant, uint32_t group, uint64_t *out) {
    uint64_t count;
    if (!param_count(p, &count)) return 0;
    if (!stored_q8(p, quant)) return nano_mul_u64(count, 4, out);
    {
        uint64_t rows = p->dims[p->n_dims - 2], cols = p->dims[p->n_dims - 1];
        uint64_t layers = p->per_layer ? p->dims[0] : 1, one;
        if (!q8_nbytes(rows, cols, group, &one)) return 0;
        return nano_mul_u64(layers, one, out);
    }
}

// ---------------------------------------------------------------------------
// Header validation

static int in_range(uint32_t v, uint32_t lo, uint32_t hi) { return v >= lo && v <= hi; }

/* nano_format.config._as_positive_float on a stored f32 */
static int positive_f32(float v) { return isfinite(v) && v > 0.0f && v < 3.4e38f; }

/* NANO_ERR_BAD_CONFIG, naming the field, when v is not in [lo, hi] */
static nano_status check_range(nano_model *m, const char *field, uint32_t v, uint32_t lo, uint32_t hi) {
    if (in_range(v, lo, hi)) return NANO_OK;
    return fail(m, NANO_ERR_BAD_CONFIG, "config: %s is %u, must be in [%u, %u]", field, v, lo, hi);
}

#define CHECK(expr)                          \
    do {                                     \
        nano_status st_ = (expr);            \
        if (st_ != NANO_OK) return st_;      \
    } while (0)

static nano_status check_lora_config(nano_model *m, const uint32_t *w) {
    uint32_t rank = w[NANO_LORA_CONFIG_RANK], n_layer = w[NANO_LORA_CONFIG_N_LAYER],
             n_embd = w[NANO_LORA_CONFIG_N_EMBD], n_head = w[NANO_LORA_CONFIG_N_HEAD],
             n_kv = w[NANO_LORA_CONFIG_N_KV_HEAD], n_hidden = w[NANO_LORA_CONFIG_N_HIDDEN];
    if (w[NANO_LORA_CONFIG_RESERVED] != 0)
        return fail(m, NANO_ERR_BAD_CONFIG, "config: the reserved LoRA word is %u, must be 0",
                    w[NANO_LORA_CONFIG_RESERVED]);
    CHECK(check_range(m, "lora_rank", rank, 1, NANO_MAX_DIM));
    CHECK(check_range(m, "n_layer", n_layer, 1, NANO_MAX_LAYERS));
    CHECK(check_range(m, "n_embd", n_embd, 1, NANO_MAX_DIM));
    CHECK(check_range(m, "n_head", n_head, 1, NANO_MAX_HEADS));
    CHECK(check_range(m, "n_kv_head", n_kv, 1, NANO_MAX_HEADS));
    CHECK(check_range(m, "n_hidden", n_hidden, 1, NANO_MAX_DIM));
    if (n_embd % n_head)
        return fail(m, NANO_ERR_BAD_CONFIG, "config: n_embd %u is not a multiple of n_head %u", n_embd, n_head);
    if (n_head % n_kv)
        return fail(m, NANO_ERR_BAD_CONFIG, "config: n_head %u is not a multiple of n_kv_head %u", n_head, n_kv);
    return NANO_OK;
}

/* nano_format.Config's checks, in its order */
static nano_status check_model_config(nano_model *m) {
    const nano_model_info *c = &m->info;
    int derived = c->model_type != NANO_MODEL_TYPE_QWEN3;
    CHECK(check_range(m, "block_size", c->block_size, 1, NANO_MAX_DIM));
    CHECK(check_range(m, "vocab_size", c->vocab_size, 1, NANO_MAX_VOCAB));
    CHECK(check_range(m, "n_layer", c->n_layer, 1, NANO_MAX_LAYERS));
    CHECK(check_range(m, "n_embd", c->n_embd, 1, NANO_MAX_DIM));
    CHECK(check_range(m, "n_head", c->n_head, 1, NANO_MAX_HEADS));
    CHECK(check_range(m, "n_kv_head", c->n_kv_head, 1, NANO_MAX_HEADS));
    CHECK(check_range(m, "n_hidden", c->n_hidden, 1, NANO_MAX_DIM));
    if (c->n_head % c->n_kv_head)
        return fail(m, NANO_ERR_BAD_CONFIG, "config: n_head %u is not a multiple of n_kv_head %u", c->n_head,
                    c->n_kv_head);
    if (derived && c->n_embd % c->n_head)
        return fail(m, NANO_ERR_BAD_CONFIG, "config: n_embd %u is not a multiple of n_head %u", c->n_embd,
                    c->n_head);
    CHECK(check_range(m, "head_dim", c->head_dim, 1, NANO_MAX_DIM));
    if (derived && c->head_dim != c->n_embd / c->n_head)
        return fail(m, NANO_ERR_BAD_CONFIG, "config: head_dim is %u, must be n_embd / n_head = %u", c->head_dim,
                    c->n_embd / c->n_head);
    if (c->attention > NANO_ATTENTION_FULL)
        return fail(m, NANO_ERR_BAD_CONFIG, "header: attention code %u at byte %u is not 0 (causal) or 1 (full)",
                    c->attention, (unsigned)NANO_OFF_EXT_ATTENTION);
    if (c->position > NANO_POSITION_LEARNED)
        return fail(m, NANO_ERR_BAD_CONFIG, "header: position code %u at byte %u is not 0 (RoPE) or 1 (learned)",
                    c->position, (unsigned)NANO_OFF_EXT_POSITION);
    if (c->position == NANO_POSITION_ROPE && c->head_dim % 2)
        return fail(m, NANO_ERR_BAD_CONFIG, "config: head_dim %u is odd, RoPE needs it even", c->head_dim);
    if (!positive_f32(c->norm_eps))
        return fail(m, NANO_ERR_BAD_CONFIG, "header: norm_eps %g at byte %u is not a positive finite number",
                    (double)c->norm_eps, (unsigned)NANO_OFF_EXT_NORM_EPS);
    if (!positive_f32(c->rope_theta))
        return fail(m, NANO_ERR_BAD_CONFIG, "header: rope_theta %g at byte %u is not a positive finite number",
                    (double)c->rope_theta, (unsigned)NANO_OFF_EXT_ROPE_THETA);
    return NANO_OK;
}

static nano_status parse_header(nano_model *m) {
    const uint8_t *d = m->data;
    const uint64_t size = m->size;
    nano_model_info *c = &m->info;
    const layout_desc *layout = NULL;
    uint32_t i, words[NANO_CONFIG_WORDS], quant_code, quant = 0, found = 0;
    uint64_t k, prefix = size < 8 ? size : 8;

    if (memcmp(d, NANO_MAGIC_BYTES, (size_t)prefix) != 0) {
        char got[3 * 8 + 1] = "";
        for (k = 0; k < prefix; k++) snprintf(got + 3 * k, sizeof got - 3 * k, " %02x", d[k]);
        return fail(m, NANO_ERR_BAD_MAGIC, "the file starts with%s", got); /* an empty file is TRUNCATED */
    }
    if (size < NANO_HEADER_SIZE)
        return fail(m, NANO_ERR_TRUNCATED, "the file is %llu bytes, shorter than the %u-byte header", ull(size),
                    (unsigned)NANO_HEADER_SIZE);

    c->major = rd_i32(d + NANO_OFF_MAJOR);
    c->minor = rd_i32(d + NANO_OFF_MINOR);
    for (i = 0; i < N_LAYOUTS; i++)
        if (LAYOUTS[i].major == c->major && LAYOUTS[i].minor == c->minor) layout = &LAYOUTS[i];
    if (!layout) {
        char known[64] = "";
        size_t len = 0;
        for (i = 0; i < N_LAYOUTS && len < sizeof known; i++)
            len += (size_t)snprintf(known + len, sizeof known - len, "%s%s", i ? ", " : "", LAYOUTS[i].name);
        return fail(m, NANO_ERR_UNSUPPORTED_VERSION, "header: layout version %d.%d is not one this engine reads (%s)",
                    (int)c->major, (int)c->minor, known);
    }
    c->layout = layout->name;
    c->has_extension = (uint32_t)layout->extension;

    c->model_type = rd_u32(d + NANO_OFF_MODEL_TYPE);
    if (!known_model_type(c->model_type) || !(layout->model_types & MT_BIT(c->model_type)))
        return fail(m, NANO_ERR_UNKNOWN_MODEL_TYPE, "header: model type %u at byte %u is not one layout %s holds",
                    c->model_type, (unsigned)NANO_OFF_MODEL_TYPE, layout->name);
    if (rd_u32(d + NANO_OFF_CONFIG_LEN) != layout->config_len)
        return fail(m, NANO_ERR_BAD_HEADER, "header: config length %u at byte %u, layout %s has %u",
                    rd_u32(d + NANO_OFF_CONFIG_LEN), (unsigned)NANO_OFF_CONFIG_LEN, layout->name,
                    layout->config_len);

    quant_code = rd_u32(d + NANO_OFF_QUANT);
    for (i = 0; i < layout->n_codes; i++)
        if (layout->codes[i] == quant_code) {
            quant = layout->quants[i];
            found = 1;
        }
    if (!found)
        return fail(m, NANO_ERR_UNKNOWN_QUANT_TYPE, "header: quantization code %u at byte %u is not one layout %s "
                    "stores", quant_code, (unsigned)NANO_OFF_QUANT, layout->name);
    c->quant_code = quant_code;
    c->quant_type = quant;
    c->group_size = rd_u32(d + NANO_OFF_GROUP_SIZE);

    /* reserved bytes */
    for (k = layout->extension ? NANO_EXT_END : NANO_OFF_EXT_ATTENTION; k < NANO_HEADER_SIZE; k++)
        if (d[k]) return fail(m, NANO_ERR_BAD_HEADER, "header: reserved byte %llu is %u, must be 0", ull(k), d[k]);
    if (c->model_type == NANO_MODEL_TYPE_LORA)
        for (k = NANO_OFF_CONFIG + 4 * NANO_LORA_CONFIG_WORDS; k < NANO_OFF_QUANT; k++)
            if (d[k])
                return fail(m, NANO_ERR_BAD_HEADER, "header: unused config byte %llu is %u, must be 0", ull(k),
                            d[k]);

    for (i = 0; i < NANO_CONFIG_WORDS; i++) words[i] = rd_u32(d + NANO_OFF_CONFIG + 4 * i);

    if (c->model_type == NANO_MODEL_TYPE_LORA) {
        nano_status st = check_lora_config(m, words);
        if (st != NANO_OK) return st;
        c->lora_rank = words[NANO_LORA_CONFIG_RANK];
        c->lora_alpha = words[NANO_LORA_CONFIG_ALPHA];
        c->n_layer = words[NANO_LORA_CONFIG_N_LAYER];
        c->n_embd = words[NANO_LORA_CONFIG_N_EMBD];
        c->n_head = words[NANO_LORA_CONFIG_N_HEAD];
        c->n_kv_head = words[NANO_LORA_CONFIG_N_KV_HEAD];
        c->n_hidden = words[NANO_LORA_CONFIG_N_HIDDEN];
        c->head_dim = c->n_embd / c->n_head;
        c->tokenizer_kind = NANO_TOKENIZER_KIND_NONE;
        c->norm_eps = NANO_DEFAULT_NORM_EPS;
        c->rope_theta = NANO_DEFAULT_ROPE_THETA;
    } else {
        nano_status st;
        uint32_t shared = words[NANO_CONFIG_IS_SHARED_CLASSIFIER];
        if (shared > 1)
            return fail(m, NANO_ERR_BAD_CONFIG, "config: is_shared_classifier is %u, must be 0 or 1", shared);
        c->block_size = words[NANO_CONFIG_BLOCK_SIZE];
        c->vocab_size = words[NANO_CONFIG_VOCAB_SIZE];
        c->n_layer = words[NANO_CONFIG_N_LAYER];
        c->n_embd = words[NANO_CONFIG_N_EMBD];
        c->n_head = words[NANO_CONFIG_N_HEAD];
        c->n_kv_head = words[NANO_CONFIG_N_KV_HEAD];
        c->n_hidden = words[NANO_CONFIG_N_HIDDEN];
        c->head_dim = words[NANO_CONFIG_HEAD_DIM];
        c->tied = shared;
        c->attention = NANO_ATTENTION_CAUSAL;
        c->position = NANO_POSITION_ROPE;
        c->norm_eps = NANO_DEFAULT_NORM_EPS;
        c->rope_theta = c->model_type == NANO_MODEL_TYPE_QWEN3 ? NANO_QWEN3_ROPE_THETA
                                                               : NANO_DEFAULT_ROPE_THETA;
        c->tokenizer_kind = (c->model_type == NANO_MODEL_TYPE_QWEN2 || c->model_type == NANO_MODEL_TYPE_QWEN3)
                                ? NANO_TOKENIZER_KIND_BPE
                                : NANO_TOKENIZER_KIND_TRIE;
        if (layout->extension) {
            c->attention = rd_u32(d + NANO_OFF_EXT_ATTENTION);
            c->position = rd_u32(d + NANO_OFF_EXT_POSITION);
            c->norm_eps = rd_f32(d + NANO_OFF_EXT_NORM_EPS);
            c->rope_theta = rd_f32(d + NANO_OFF_EXT_ROPE_THETA);
            c->tokenizer_kind = rd_u32(d + NANO_OFF_EXT_TOKENIZER);
            if (c->tokenizer_kind > NANO_TOKENIZER_KIND_BPE)
                return fail(m, NANO_ERR_BAD_HEADER, "header: tokenizer kind %u at byte %u is not 0, 1 or 2",
                            c->tokenizer_kind, (unsigned)NANO_OFF_EXT_TOKENIZER);
        }
        st = check_model_config(m);
        if (st != NANO_OK) return st;
    }

    if (quant == NANO_QUANT_TYPE_F32 && c->group_size != 0)
        return fail(m, NANO_ERR_BAD_GROUP_SIZE, "header: group size %u at byte %u, F32 files store 0",
                    c->group_size, (unsigned)NANO_OFF_GROUP_SIZE);
    if (quant == NANO_QUANT_TYPE_Q8_0) {
        uint32_t g = c->group_size;
        if (g < 1 || c->n_embd % g || ((uint64_t)c->n_head * c->head_dim) % g || c->n_hidden % g)
            return fail(m, NANO_ERR_BAD_GROUP_SIZE,
                        "header: Q8_0 group size %u at byte %u does not divide n_embd %u, n_head x head_dim %llu "
                        "and n_hidden %u", g, (unsigned)NANO_OFF_GROUP_SIZE, c->n_embd,
                        ull((uint64_t)c->n_head * c->head_dim), c->n_hidden);
    }
    return NANO_OK;
}

// ---------------------------------------------------------------------------
// Aligned float views

static nano_status float_view(nano_model *m, uint64_t offset, uint64_t count, const float **out) {
    const uint8_t *p = m->data + offset;
    float *copy;
    if (((uintptr_t)p & (sizeof(float) - 1)) == 0) {
        *out = (const float *)(const void *)p;
        return NANO_OK;
    }
    copy = (float *)malloc(count ? (size_t)count * sizeof(float) : 1);
    if (!copy) return NANO_ERR_OUT_OF_MEMORY;
    memcpy(copy, p, (size_t)count * sizeof(float));
    m->owned[m->n_owned++] = copy;
    *out = copy;
    return NANO_OK;
}

static nano_status mat_view(nano_model *m, uint64_t offset, uint32_t rows, uint32_t cols, uint32_t quant,
                            uint32_t group, nano_mat *out) {
    out->rows = rows;
    out->cols = cols;
    out->f = NULL;
    out->q = NULL;
    out->s = NULL;
    out->group = 0;
    if (quant == NANO_QUANT_TYPE_Q8_0) {
        uint64_t n = (uint64_t)rows * cols;
        out->group = group;
        out->q = (const int8_t *)(m->data + offset);
        return float_view(m, offset + n, n / group, &out->s);
    }
    return float_view(m, offset, (uint64_t)rows * cols, &out->f);
}

// ---------------------------------------------------------------------------
// The whole file

static nano_status place_tensors(nano_model *m, const plan_param *plan, uint32_t n_plan) {
    nano_model_info *c = &m->info;
    uint64_t offset = c->params_offset, sizes[MAX_PLAN], count = 0, n_params = 0;
    uint32_t i, n_rows = 0, row = 0;

    for (i = 0; i < n_plan; i++) {
        param_nbytes(&plan[i], c->quant_type, c->group_size, &sizes[i]); /* checked by the caller */
        n_rows += stored_q8(&plan[i], c->quant_type) && plan[i].per_layer ? (uint32_t)plan[i].dims[0] : 1;
    }
    m->tensors = (nano_tensor_entry *)calloc(n_rows, sizeof(nano_tensor_entry));
    if (!m->tensors) return NANO_ERR_OUT_OF_MEMORY;
    for (i = 0; i < n_plan; i++) {
        const plan_param *p = &plan[i];
        param_count(p, &count);
        n_params += count;
        if (stored_q8(p, c->quant_type) && p->per_layer) {
            uint64_t one = sizes[i] / p->dims[0], l;
            for (l = 0; l < p->dims[0]; l++) {
                nano_tensor_entry *e = &m->tensors[row++];
                e->name = p->name;
                e->layer = (int32_t)l;
                e->quant_type = NANO_QUANT_TYPE_Q8_0;
                e->n_dims = 2;
                e->dims[0] = (uint32_t)p->dims[1];
                e->dims[1] = (uint32_t)p->dims[2];
                e->offset = offset + l * one;
                e->size = one;
            }
        } else {
            nano_tensor_entry *e = &m->tensors[row++];
            uint32_t d;
            e->name = p->name;
            e->layer = -1;
            e->quant_type = stored_q8(p, c->quant_type) ? NANO_QUANT_TYPE_Q8_0 : NANO_QUANT_TYPE_F32;
            e->n_dims = p->n_dims;
            for (d = 0; d < p->n_dims; d++) e->dims[d] = (uint32_t)p->dims[d];
            e->offset = offset;
            e->size = sizes[i];
        }
        offset += sizes[i];
    }
    c->n_tensors = n_rows;
    c->n_params = n_params;
    return NANO_OK;
}

// ---------------------------------------------------------------------------
// Finite weights (nano_format's NanoFile.check_scales and check_finite)

/* 1 when none of the n little-endian floats at p is NaN or infinite. No branch
 * in the loop, so it vectorizes (a linear pass at memory speed): adding one
 * exponent step to the exponent bits carries into bit 31 exactly when the
 * exponent is all ones. */
static int floats_finite(const uint8_t *p, uint64_t n) {
    uint32_t acc = 0, w;
    uint64_t i;
    for (i = 0; i < n; i++) {
        memcpy(&w, p + 4 * i, sizeof w);
        acc |= (w & 0x7F800000u) + 0x00800000u;
    }
    return (acc & 0x80000000u) == 0;
}

/* The index of the first scale of a Q8_0 tensor (values q [n_scales * group],
 * then its scales) for which some q * scale is not a finite float, n_scales
 * when none: nano_format.first_bad_scale's rule. A scale up to FLT_MAX / 128 is
 * fine whatever q is; above it the scale must be finite with scale * 127
 * finite, and scale * 128 too (that is, it is refused) when its group holds a
 * -128, which the quantizer never writes. */
static uint64_t first_bad_scale(const uint8_t *q, const uint8_t *s, uint64_t n_scales, uint32_t group) {
    const float near = FLT_MAX / 128.0f; /* exact */
    uint64_t k;
    uint32_t j;
    for (k = 0; k < n_scales; k++) {
        float v, t;
        memcpy(&v, s + 4 * k, sizeof v);
        if (fabsf(v) <= near) continue; /* NaN fails the comparison */
        t = v * 127.0f;
        if (!isfinite(t)) return k;
        for (j = 0; j < group; j++)
            if (q[k * group + j] == 0x80) return k; /* int8 -128 */
    }
    return n_scales;
}

/* "layers.2.wq[5][64]" or "wq[2][5][64]": where element i of tensor e is */
static void element_name(const nano_tensor_entry *e, uint64_t i, char *buf, size_t n) {
    uint64_t idx[3], rest = i;
    uint32_t d;
    int len;
    for (d = e->n_dims; d-- > 0;) {
        idx[d] = e->dims[d] ? rest % e->dims[d] : 0;
        rest = e->dims[d] ? rest / e->dims[d] : 0;
    }
    len = e->layer >= 0 ? snprintf(buf, n, "layers.%d.%s", (int)e->layer, e->name) : snprintf(buf, n, "%s", e->name);
    for (d = 0; d < e->n_dims && len >= 0 && (size_t)len < n; d++)
        len += snprintf(buf + len, n - (size_t)len, "[%llu]", ull(idx[d]));
}

/* NANO_ERR_NON_FINITE when a Q8_0 scale, then an F32 value, of the tensor
 * table is not finite (nano_format checks scales before values; both map to
 * one status). Q4K parameters are opaque and not read. */
static nano_status check_finite_weights(nano_model *m) {
    uint32_t i, d, g = m->info.group_size;
    char where[96];
    for (i = 0; i < m->info.n_tensors; i++) {
        const nano_tensor_entry *e = &m->tensors[i];
        uint64_t n = 1, k;
        float v;
        if (e->quant_type != NANO_QUANT_TYPE_Q8_0) continue;
        for (d = 0; d < e->n_dims; d++) n *= e->dims[d]; /* sizes checked by the caller */
        k = first_bad_scale(m->data + e->offset, m->data + e->offset + n, n / g, g);
        if (k == n / g) continue;
        memcpy(&v, m->data + e->offset + n + 4 * k, sizeof v);
        element_name(e, k * g, where, sizeof where);
        return fail(m, NANO_ERR_NON_FINITE, "%s: the Q8_0 scale of the %u values from here (byte %llu) is %g%s",
                    where, g, ull(e->offset + n + 4 * k), (double)v,
                    isfinite(v) ? ", so q * scale overflows a float" : "");
    }
    for (i = 0; i < m->info.n_tensors; i++) {
        const nano_tensor_entry *e = &m->tensors[i];
        uint64_t j;
        if (e->quant_type != NANO_QUANT_TYPE_F32 || floats_finite(m->data + e->offset, e->size / 4)) continue;
        for (j = 0; j + 1 < e->size / 4 && floats_finite(m->data + e->offset + 4 * j, 1); j++) {
        }
        element_name(e, j, where, sizeof where);
        return fail(m, NANO_ERR_NON_FINITE, "%s (byte %llu) is %s", where, ull(e->offset + 4 * j),
                    isnan(rd_f32(m->data + e->offset + 4 * j)) ? "NaN" : "infinite");
    }
    return NANO_OK;
}

static const nano_tensor_entry *find_tensor(const nano_model *m, const char *name, int32_t layer) {
    uint32_t i;
    for (i = 0; i < m->info.n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0 && (m->tensors[i].layer == layer || m->tensors[i].layer < 0))
            return &m->tensors[i];
    return NULL;
}

/* Per-layer matrix `name` of layer l: a slice of the F32 stack or its own Q8_0 entry. */
static nano_status layer_mat(nano_model *m, const char *name, uint32_t l, uint32_t rows, uint32_t cols,
                             nano_mat *out) {
    const nano_tensor_entry *e = find_tensor(m, name, (int32_t)l);
    uint64_t off;
    if (!e) return NANO_ERR_BAD_ARGUMENT;
    off = e->layer >= 0 ? e->offset : e->offset + (uint64_t)l * rows * cols * sizeof(float);
    return mat_view(m, off, rows, cols, e->quant_type, m->info.group_size, out);
}

static nano_status bind_model_weights(nano_model *m) {
    const nano_model_info *c = &m->info;
    const uint32_t L = c->n_layer, E = c->n_embd, F = c->n_hidden, HD = c->n_head * c->head_dim,
                   KD = c->n_kv_head * c->head_dim;
    const nano_tensor_entry *e;
    nano_status st;
    uint32_t l;

    m->layers = (nano_layer *)calloc(L, sizeof(nano_layer));
    if (!m->layers) return NANO_ERR_OUT_OF_MEMORY;
    for (l = 0; l < L; l++) {
        nano_layer *ly = &m->layers[l];
        const nano_tensor_entry *na = find_tensor(m, "norm_attn", -1), *nf = find_tensor(m, "norm_ffn", -1);
        if ((st = float_view(m, na->offset + (uint64_t)l * E * 4, E, &ly->norm_attn)) != NANO_OK) return st;
        if ((st = float_view(m, nf->offset + (uint64_t)l * E * 4, E, &ly->norm_ffn)) != NANO_OK) return st;
        if ((st = layer_mat(m, "wq", l, HD, E, &ly->wq)) != NANO_OK) return st;
        if ((st = layer_mat(m, "wk", l, KD, E, &ly->wk)) != NANO_OK) return st;
        if ((st = layer_mat(m, "wv", l, KD, E, &ly->wv)) != NANO_OK) return st;
        if ((st = layer_mat(m, "wo", l, E, HD, &ly->wo)) != NANO_OK) return st;
        if ((st = layer_mat(m, "w1", l, F, E, &ly->w1)) != NANO_OK) return st;
        if ((st = layer_mat(m, "w2", l, E, F, &ly->w2)) != NANO_OK) return st;
        if ((st = layer_mat(m, "w3", l, F, E, &ly->w3)) != NANO_OK) return st;
    }
    e = find_tensor(m, "norm_final", -1);
    if ((st = float_view(m, e->offset, E, &m->norm_final)) != NANO_OK) return st;
    e = find_tensor(m, "tok_embd", -1);
    if ((st = mat_view(m, e->offset, c->vocab_size, E, e->quant_type, c->group_size, &m->tok_embd)) != NANO_OK)
        return st;
    if (c->tied) {
        m->lm_head = m->tok_embd;
    } else {
        e = find_tensor(m, "lm_head", -1);
        if ((st = mat_view(m, e->offset, c->vocab_size, E, e->quant_type, c->group_size, &m->lm_head)) != NANO_OK)
            return st;
    }
    if (c->position == NANO_POSITION_ROPE) {
        uint64_t n = (uint64_t)c->block_size * (c->head_dim / 2);
        e = find_tensor(m, "rope_cos", -1);
        if ((st = float_view(m, e->offset, n, &m->rope_cos)) != NANO_OK) return st;
        e = find_tensor(m, "rope_sin", -1);
        if ((st = float_view(m, e->offset, n, &m->rope_sin)) != NANO_OK) return st;
    } else {
        e = find_tensor(m, "pos_embd", -1);
        if ((st = float_view(m, e->offset, (uint64_t)c->block_size * E, &m->pos_embd)) != NANO_OK) return st;
    }
    return NANO_OK;
}

static nano_status bind_lora_weights(nano_model *m) {
    static const char *const names[NANO_LORA_N][2] = {
        {"wq_A", "wq_B"}, {"wk_A", "wk_B"}, {"wv_A", "wv_B"}, {"wo_A", "wo_B"}};
    const nano_model_info *c = &m->info;
    const uint32_t L = c->n_layer, R = c->lora_rank, E = c->n_embd, HD = c->n_head * c->head_dim,
                   KD = c->n_kv_head * c->head_dim;
    const uint32_t in_dim[NANO_LORA_N] = {E, E, E, HD}, out_dim[NANO_LORA_N] = {HD, KD, KD, E};
    uint32_t l, t;
    nano_status st;
    m->lora_layers = (nano_lora_layer *)calloc(L, sizeof(nano_lora_layer));
    if (!m->lora_layers) return NANO_ERR_OUT_OF_MEMORY;
    for (t = 0; t < NANO_LORA_N; t++) {
        const nano_tensor_entry *a = find_tensor(m, names[t][0], -1), *b = find_tensor(m, names[t][1], -1);
        for (l = 0; l < L; l++) {
            uint64_t asz = (uint64_t)R * in_dim[t] * 4, bsz = (uint64_t)out_dim[t] * R * 4;
            if ((st = mat_view(m, a->offset + l * asz, R, in_dim[t], NANO_QUANT_TYPE_F32, 0,
                               &m->lora_layers[l].a[t])) != NANO_OK)
                return st;
            if ((st = mat_view(m, b->offset + l * bsz, out_dim[t], R, NANO_QUANT_TYPE_F32, 0,
                               &m->lora_layers[l].b[t])) != NANO_OK)
                return st;
        }
    }
    return NANO_OK;
}

/* st for a vocabulary (tokenizer section) that the checks refused, saying where */
static nano_status vocab_error(nano_model *m, nano_status st, const nano_section_error *e) {
    if (e->token >= 0)
        return fail(m, st, "vocabulary, token %lld (byte %llu): %s", (long long)e->token,
                    ull(NANO_HEADER_SIZE + e->at), e->what);
    return fail(m, st, "vocabulary (from byte %u): %s", (unsigned)NANO_HEADER_SIZE, e->what);
}

nano_status nano_model_parse(nano_model *m) {
    nano_model_info *c = &m->info;
    nano_section_error serr = {"", 0, -1};
    plan_param plan[MAX_PLAN];
    uint32_t n_plan = 0, i;
    uint64_t total = 0, remaining, cut_at = 0;
    const char *cut = NULL; /* the first tensor that runs past the end of the file */
    nano_status st;

    c->file_size = m->size;
    if ((st = parse_header(m)) != NANO_OK) return st;
    {
        /* Tensors are used in place as little-endian floats: a big-endian host
         * would need a converting copy, which this engine does not make. */
        const uint32_t one = 1;
        uint8_t first;
        memcpy(&first, &one, 1);
        if (first != 1) return fail(m, NANO_ERR_UNSUPPORTED, "this engine reads weights in place and needs a "
                                    "little-endian host");
    }

    /* tokenizer section */
    c->tokenizer_offset = NANO_HEADER_SIZE;
    c->tokenizer_size = 0;
    if (c->tokenizer_kind == NANO_TOKENIZER_KIND_TRIE) {
        st = nano_check_trie_section(m->data + NANO_HEADER_SIZE, m->size - NANO_HEADER_SIZE, c->vocab_size,
                                     &c->tokenizer_size, &serr);
        if (st != NANO_OK) return vocab_error(m, st, &serr);
    } else if (c->tokenizer_kind == NANO_TOKENIZER_KIND_BPE) {
        uint32_t max_len;
        st = nano_check_bpe_section(m->data + NANO_HEADER_SIZE, m->size - NANO_HEADER_SIZE, c->vocab_size,
                                    &c->tokenizer_size, &max_len, &serr);
        if (st != NANO_OK) return vocab_error(m, st, &serr);
    }
    c->params_offset = NANO_HEADER_SIZE + c->tokenizer_size;
    remaining = m->size - c->params_offset;

    if (c->quant_type == NANO_QUANT_TYPE_Q4K) {
        /* parameters not understood: one opaque block, no size check (as nano_format) */
        m->tensors = (nano_tensor_entry *)calloc(1, sizeof(nano_tensor_entry));
        if (!m->tensors) return NANO_ERR_OUT_OF_MEMORY;
        m->tensors[0].name = "parameters";
        m->tensors[0].layer = -1;
        m->tensors[0].quant_type = NANO_QUANT_TYPE_Q4K;
        m->tensors[0].n_dims = 1;
        m->tensors[0].dims[0] = remaining > UINT32_MAX ? UINT32_MAX : (uint32_t)remaining;
        m->tensors[0].offset = c->params_offset;
        m->tensors[0].size = remaining;
        c->n_tensors = 1;
        c->params_size = remaining;
    } else {
        n_plan = c->model_type == NANO_MODEL_TYPE_LORA ? plan_lora(c, plan) : plan_model(c, plan);
        for (i = 0; i < n_plan; i++) {
            uint64_t nb;
            if (!param_nbytes(&plan[i], c->quant_type, c->group_size, &nb) || !nano_add_u64(total, nb, &total))
                return fail(m, NANO_ERR_SIZE_OVERFLOW, "the parameters' size overflows 64 bits at tensor %s",
                            plan[i].name);
            if (!cut && total > remaining) {
                cut = plan[i].name;
                cut_at = c->params_offset + total - nb;
            }
        }
        if (total > m->size)
            return fail(m, NANO_ERR_SIZE_OVERFLOW, "the parameters need %llu bytes, more than the whole file (%llu)",
                        ull(total), ull(m->size));
        if (total > remaining)
            return fail(m, NANO_ERR_TRUNCATED, "the file ends at byte %llu, inside tensor %s (from byte %llu); "
                        "the parameters need %llu bytes from byte %llu", ull(m->size), cut, ull(cut_at), ull(total),
                        ull(c->params_offset));
        if (total < remaining)
            return fail(m, NANO_ERR_TRAILING_BYTES, "%llu byte%s follow%s the last tensor, which ends at byte %llu",
                        ull(remaining - total), remaining - total == 1 ? "" : "s", remaining - total == 1 ? "s" : "",
                        ull(c->params_offset + total));
        c->params_size = total;
        if ((st = place_tensors(m, plan, n_plan)) != NANO_OK) return st;
        if ((st = check_finite_weights(m)) != NANO_OK) return st;
    }

    /* Everything is valid: build what the engine uses. */
    if (c->tokenizer_kind == NANO_TOKENIZER_KIND_TRIE)
        st = nano_tokenizer_build_trie(m->data + c->tokenizer_offset, c->tokenizer_size, &m->tokenizer);
    else if (c->tokenizer_kind == NANO_TOKENIZER_KIND_BPE)
        st = nano_tokenizer_build_bpe(m->data + c->tokenizer_offset, c->tokenizer_size, c->vocab_size,
                                      &m->tokenizer);
    if (st != NANO_OK) return st;
    if (c->tokenizer_kind == NANO_TOKENIZER_KIND_NONE) c->tokenizer_offset = 0;

    /* room for a copy of every float view bound below (each layer's slices included) */
    m->owned = (void **)calloc((size_t)c->n_layer * 10 + (size_t)c->n_tensors * 2 + 8, sizeof(void *));
    if (!m->owned) return NANO_ERR_OUT_OF_MEMORY;
    c->runnable = c->model_type == NANO_MODEL_TYPE_NANO &&
                  (c->quant_type == NANO_QUANT_TYPE_F32 || c->quant_type == NANO_QUANT_TYPE_Q8_0);
    if (c->runnable) return bind_model_weights(m);
    if (c->model_type == NANO_MODEL_TYPE_LORA) return bind_lora_weights(m);
    return NANO_OK;
}

// ---------------------------------------------------------------------------
// Public loading API

nano_model_params nano_model_default_params(void) {
    nano_model_params p;
    p.use_mmap = 1;
    p.error_detail = NULL;
    p.error_detail_size = 0;
    return p;
}

static void model_release(nano_model *m) {
    uint32_t i;
    if (!m) return;
    nano_tokenizer_free(m->tokenizer);
    for (i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->tensors);
    free(m->layers);
    free(m->lora_layers);
    if (m->owns_map) nano_platform_unmap(&m->map);
    free(m);
}

void nano_model_free(nano_model *model) { model_release(model); }

/* The caller's error_detail, if it asked for one: detail, cut to fit. */
static void give_detail(const nano_model_params *params, const char *detail) {
    size_t n;
    if (!params || !params->error_detail || params->error_detail_size == 0) return;
    n = strlen(detail);
    if (n >= params->error_detail_size) n = params->error_detail_size - 1;
    memcpy(params->error_detail, detail, n);
    params->error_detail[n] = '\0';
}

static nano_status finish_load(nano_model *m, const nano_model_params *params, nano_model **out) {
    nano_status st = nano_model_parse(m);
    give_detail(params, st != NANO_OK ? m->detail : "");
    if (st != NANO_OK) {
        model_release(m);
        return st;
    }
    *out = m;
    return NANO_OK;
}

nano_status nano_model_load_buffer(const void *data, size_t size, const nano_model_params *params,
                                   nano_model **out) {
    nano_model *m;
    give_detail(params, "");
    if (!out) return NANO_ERR_BAD_ARGUMENT;
    *out = NULL;
    if (!data && size) return NANO_ERR_BAD_ARGUMENT;
    m = (nano_model *)calloc(1, sizeof(*m));
    if (!m) return NANO_ERR_OUT_OF_MEMORY;
    m->data = data ? (const uint8_t *)data : (const uint8_t *)"";
    m->size = size;
    return finish_load(m, params, out);
}

nano_status nano_model_load_file(const char *path, const nano_model_params *params, nano_model **out) {
    nano_model *m;
    nano_status st;
    nano_model_params p = params ? *params : nano_model_default_params();
    give_detail(params, "");
    if (!out) return NANO_ERR_BAD_ARGUMENT;
    *out = NULL;
    if (!path) return NANO_ERR_BAD_ARGUMENT;
    m = (nano_model *)calloc(1, sizeof(*m));
    if (!m) return NANO_ERR_OUT_OF_MEMORY;
    st = nano_platform_map(path, p.use_mmap, &m->map);
    if (st != NANO_OK) {
        free(m);
        return st;
    }
    m->owns_map = 1;
    m->data = m->map.data ? m->map.data : (const uint8_t *)"";
    m->size = m->map.size;
    return finish_load(m, params, out);
}

nano_status nano_model_get_info(const nano_model *model, nano_model_info *out) {
    if (!model || !out) return NANO_ERR_BAD_ARGUMENT;
    *out = model->info;
    return NANO_OK;
}

nano_status nano_model_get_tensor(const nano_model *model, uint32_t index, nano_tensor_info *out) {
    const nano_tensor_entry *e;
    if (!model || !out || index >= model->info.n_tensors) return NANO_ERR_BAD_ARGUMENT;
    e = &model->tensors[index];
    out->name = e->name;
    out->layer = e->layer;
    out->quant_type = e->quant_type;
    out->n_dims = e->n_dims;
    memcpy(out->dims, e->dims, sizeof out->dims);
    out->offset = e->offset;
    out->size = e->size;
    return NANO_OK;
}

const nano_tokenizer *nano_model_tokenizer(const nano_model *model) {
    return model ? model->tokenizer : NULL;
}

// ---------------------------------------------------------------------------
// LoRA modules

static nano_status lora_wrap(nano_model *file, nano_status st, const nano_model_params *params,
                             nano_lora **out) {
    nano_lora *l;
    if (st != NANO_OK) return st;
    if (file->info.model_type != NANO_MODEL_TYPE_LORA) {
        nano_model_free(file);
        give_detail(params, "a model file, not a LoRA module");
        return NANO_ERR_UNKNOWN_MODEL_TYPE;
    }
    if (file->info.lora_alpha == 0) {
        /* the format holds it, but its updates are all zero (alpha / rank scales them):
         * refused, as nano_train.convert.load_lora_bin refuses it */
        nano_model_free(file);
        give_detail(params, "LoRA alpha must be > 0, got 0 (alpha / rank scales every update to zero)");
        return NANO_ERR_BAD_CONFIG;
    }
    l = (nano_lora *)calloc(1, sizeof(*l));
    if (!l) {
        nano_model_free(file);
        return NANO_ERR_OUT_OF_MEMORY;
    }
    l->file = file;
    l->scale = (float)file->info.lora_alpha / (float)file->info.lora_rank;
    *out = l;
    return NANO_OK;
}

nano_status nano_lora_load_file(const char *path, const nano_model_params *params, nano_lora **out) {
    nano_model *file = NULL;
    nano_status st;
    give_detail(params, "");
    if (!out) return NANO_ERR_BAD_ARGUMENT;
    *out = NULL;
    st = nano_model_load_file(path, params, &file);
    return lora_wrap(file, st, params, out);
}

nano_status nano_lora_load_buffer(const void *data, size_t size, const nano_model_params *params,
                                  nano_lora **out) {
    nano_model *file = NULL;
    nano_status st;
    give_detail(params, "");
    if (!out) return NANO_ERR_BAD_ARGUMENT;
    *out = NULL;
    st = nano_model_load_buffer(data, size, params, &file);
    return lora_wrap(file, st, params, out);
}

void nano_lora_free(nano_lora *lora) {
    if (!lora) return;
    nano_model_free(lora->file);
    free(lora);
}

nano_status nano_lora_get_info(const nano_lora *lora, nano_model_info *out) {
    if (!lora || !out) return NANO_ERR_BAD_ARGUMENT;
    *out = lora->file->info;
    return NANO_OK;
}
