/*
 * forward.c - contexts (KV cache + scratch) and the Transformer forward pass.
 *
 * One pre-norm Llama-style layer, per token (E n_embd, H heads, K KV heads,
 * D head_dim, F n_hidden):
 *     h = rmsnorm(x) * norm_attn
 *     q = wq h [H*D], k = wk h [K*D], v = wv h [K*D]      (+ LoRA (alpha/r) B A h)
 *     q, k rotated by RoPE on interleaved pairs (x[2i], x[2i+1])
 *     query head j attends to KV head j / (H/K); causal or full; scale 1/sqrt(D)
 *     x += wo att                                        (+ LoRA)
 *     h = rmsnorm(x) * norm_ffn
 *     x += w2 (silu(w1 h) * w3 h)
 * then logits = lm_head rmsnorm(x) * norm_final.
 *
 * Tokens go through in blocks of n_batch, so every weight matrix is read once
 * per block (matrix-matrix products). Within a run each layer first writes
 * the keys and values of all the run's tokens, then computes attention and
 * the FFN: with full attention every token of the run sees every other one.
 * Nothing here allocates: all buffers are sized in nano_context_init.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define DEFAULT_N_BATCH 64
/* Attention runs over (token, KV head) pairs on the threads from this many
 * multiply-adds on: a decode step's heads are worth splitting from a few
 * dozen cached positions on. */
#define ATTN_PARALLEL_MIN_WORK (1 << 14)

// ---------------------------------------------------------------------------
// Contexts

nano_context_params nano_context_default_params(void) {
    nano_context_params p;
    p.n_ctx = 0;
    p.n_batch = 0;
    p.n_threads = 0;
    p.attention = NANO_ATTENTION_MODE_FILE;
    p.kernels = NANO_KERNELS_AUTO;
    return p;
}

static uint32_t max3(uint32_t a, uint32_t b, uint32_t c) {
    uint32_t m = a > b ? a : b;
    return m > c ? m : c;
}

/* calloc of a * b floats with overflow check */
static float *alloc_floats(uint64_t a, uint64_t b) {
    uint64_t n;
    if (!nano_mul_u64(a, b, &n) || n > SIZE_MAX / sizeof(float)) return NULL;
    return (float *)calloc(n ? (size_t)n : 1, sizeof(float));
}

void nano_context_free(nano_context *ctx) {
    if (!ctx) return;
    free(ctx->key_cache);
    free(ctx->value_cache);
    free(ctx->x);
    free(ctx->xb);
    free(ctx->q);
    free(ctx->att);
    free(ctx->proj);
    free(ctx->hb);
    free(ctx->hb2);
    free(ctx->scores);
    free(ctx->logits);
    free(ctx->lora_tmp);
    free(ctx->lora_out);
    free(ctx);
}

static int file_full_attention(const nano_model *m) { return m->info.attention == NANO_ATTENTION_FULL; }

nano_status nano_context_init(const nano_model *model, const nano_context_params *params, nano_context **out) {
    nano_context_params p = params ? *params : nano_context_default_params();
    const nano_model_info *c;
    nano_context *ctx;
    uint64_t kv;
    if (!out) return NANO_ERR_BAD_ARGUMENT;
    *out = NULL;
    if (!model) return NANO_ERR_BAD_ARGUMENT;
    c = &model->info;
    if (!c->runnable) return NANO_ERR_UNSUPPORTED;
    if (p.n_ctx > c->block_size || p.n_threads < 0 || p.n_threads > NANO_MAX_THREADS || p.attention > NANO_ATTENTION_MODE_FULL ||
        p.kernels > NANO_KERNELS_PORTABLE)
        return NANO_ERR_BAD_ARGUMENT;
    ctx = (nano_context *)calloc(1, sizeof(*ctx));
    if (!ctx) return NANO_ERR_OUT_OF_MEMORY;
    ctx->model = model;
    ctx->n_ctx = p.n_ctx ? p.n_ctx : c->block_size;
    ctx->n_batch = p.n_batch ? p.n_batch : DEFAULT_N_BATCH;
    if (ctx->n_batch > ctx->n_ctx) ctx->n_batch = ctx->n_ctx;
    ctx->n_threads = p.n_threads > 0 ? p.n_threads : nano_default_threads();
    ctx->attention_mode = p.attention;
    ctx->full_attention = p.attention == NANO_ATTENTION_MODE_FILE ? file_full_attention(model)
                                                                  : p.attention == NANO_ATTENTION_MODE_FULL;
    nano_kernels_select(&ctx->kernels, p.kernels);
    {
        const uint32_t E = c->n_embd, HD = c->n_head * c->head_dim, KD = c->n_kv_head * c->head_dim,
                       F = c->n_hidden, nb = ctx->n_batch;
        kv = (uint64_t)c->n_layer * ctx->n_ctx;
        ctx->key_cache = alloc_floats(kv, KD);
        ctx->value_cache = alloc_floats(kv, KD);
        ctx->x = alloc_floats(ctx->n_ctx, E);
        ctx->xb = alloc_floats(nb, E);
        ctx->q = alloc_floats(nb, HD);
        ctx->att = alloc_floats(nb, HD);
        ctx->proj = alloc_floats(nb, max3(E, HD, KD));
        ctx->hb = alloc_floats(nb, F);
        ctx->hb2 = alloc_floats(nb, F);
        ctx->score_threads = ctx->n_threads;
        ctx->scores = alloc_floats((uint64_t)ctx->score_threads, ctx->n_ctx);
        ctx->logits = alloc_floats(c->vocab_size, 1);
    }
    if (!ctx->key_cache || !ctx->value_cache || !ctx->x || !ctx->xb || !ctx->q || !ctx->att || !ctx->proj ||
        !ctx->hb || !ctx->hb2 || !ctx->scores || !ctx->logits) {
        nano_context_free(ctx);
        return NANO_ERR_OUT_OF_MEMORY;
    }
    *out = ctx;
    return NANO_OK;
}

const nano_model *nano_context_model(const nano_context *ctx) { return ctx ? ctx->model : NULL; }

void nano_context_reset(nano_context *ctx) {
    if (!ctx) return;
    ctx->pos = 0;
    ctx->has_logits = 0;
    ctx->resets++;
}

uint32_t nano_context_pos(const nano_context *ctx) { return ctx ? ctx->pos : 0; }
uint32_t nano_context_n_ctx(const nano_context *ctx) { return ctx ? ctx->n_ctx : 0; }
int32_t nano_context_threads(const nano_context *ctx) { return ctx ? ctx->n_threads : 0; }

nano_status nano_context_set_threads(nano_context *ctx, int32_t n_threads) {
    if (!ctx || n_threads < 0 || n_threads > NANO_MAX_THREADS) return NANO_ERR_BAD_ARGUMENT;
    if (n_threads == 0) n_threads = nano_default_threads();
    if (n_threads > ctx->score_threads) {
        float *s = alloc_floats((uint64_t)n_threads, ctx->n_ctx);
        if (!s) return NANO_ERR_OUT_OF_MEMORY;
        free(ctx->scores);
        ctx->scores = s;
        ctx->score_threads = n_threads;
    }
    ctx->n_threads = n_threads;
    return NANO_OK;
}

nano_status nano_context_set_lora(nano_context *ctx, const nano_lora *lora) {
    const nano_model_info *c, *lc;
    if (!ctx) return NANO_ERR_BAD_ARGUMENT;
    nano_context_reset(ctx);
    if (!lora) {
        ctx->lora = NULL;
        return NANO_OK;
    }
    c = &ctx->model->info;
    lc = &lora->file->info;
    /* the shapes the adapters touch (as nano_train.convert.load_lora_bin checks;
     * n_hidden is recorded for reference only: there are no FFN adapters) */
    if (lc->n_layer != c->n_layer || lc->n_embd != c->n_embd || lc->n_head != c->n_head ||
        lc->n_kv_head != c->n_kv_head || lc->head_dim != c->head_dim)
        return NANO_ERR_LORA_MISMATCH;
    if (lc->lora_rank > ctx->lora_rank_alloc) {
        const uint32_t E = c->n_embd, HD = c->n_head * c->head_dim, KD = c->n_kv_head * c->head_dim;
        float *tmp = alloc_floats(ctx->n_batch, lc->lora_rank);
        float *o = alloc_floats(ctx->n_batch, max3(E, HD, KD));
        if (!tmp || !o) {
            free(tmp);
            free(o);
            return NANO_ERR_OUT_OF_MEMORY;
        }
        free(ctx->lora_tmp);
        free(ctx->lora_out);
        ctx->lora_tmp = tmp;
        ctx->lora_out = o;
        ctx->lora_rank_alloc = lc->lora_rank;
    }
    ctx->lora = lora;
    return NANO_OK;
}

const float *nano_context_logits(const nano_context *ctx) {
    return ctx && ctx->has_logits ? ctx->logits : NULL;
}

// ---------------------------------------------------------------------------
// The forward pass

int32_t nano_argmax(const float *x, uint32_t n) {
    uint32_t i, best = 0;
    for (i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return (int32_t)best;
}

/* y[n, W.rows] = x[n, W.cols] W^T, plus the LoRA update of `target` when one is attached. */
static void project(nano_context *ctx, float *y, const float *x, const nano_mat *w, uint32_t n,
                    uint32_t layer, int target) {
    nano_matmul(&ctx->kernels, y, x, w, n, ctx->n_threads);
    if (ctx->lora && target >= 0) {
        const nano_lora_layer *ll = &ctx->lora->file->lora_layers[layer];
        const float scale = ctx->lora->scale;
        const uint64_t total = (uint64_t)n * w->rows;
        uint64_t i;
        nano_matmul(&ctx->kernels, ctx->lora_tmp, x, &ll->a[target], n, ctx->n_threads);
        nano_matmul(&ctx->kernels, ctx->lora_out, ctx->lora_tmp, &ll->b[target], n, ctx->n_threads);
        for (i = 0; i < total; i++) y[i] += scale * ctx->lora_out[i];
    }
}

/* Attention of n queries (q [n, H*D], absolute positions pos0..) over the
 * cached keys/values of layer l; writes att [n, H*D]. The work items are
 * (token, KV head) pairs: the query heads that share a KV head run one after
 * the other on one thread, so the second one finds the keys and values the
 * first one pulled from memory in the cache. */
static void attention(nano_context *ctx, uint32_t l, uint32_t n, uint32_t pos0, uint32_t visible_all,
                      int full) {
    const nano_model_info *c = &ctx->model->info;
    const uint32_t H = c->n_head, K = c->n_kv_head, D = c->head_dim, HD = H * D;
    const uint32_t group = c->n_head / c->n_kv_head;
    const float scale = 1.0f / sqrtf((float)D);
    const size_t head_stride = (size_t)ctx->n_ctx * D; /* one KV head's cache */
    const float *kc = ctx->key_cache + (size_t)l * K * head_stride;
    const float *vc = ctx->value_cache + (size_t)l * K * head_stride;
    const long pairs = (long)n * K;
    const double work = (double)n * H * visible_all * D;
    const int nt = ctx->n_threads;
    const int parallel = nt > 1 && work >= ATTN_PARALLEL_MIN_WORK;
    long pair;
    NANO_PARALLEL_FOR(parallel, pair, pairs, {
        const uint32_t t = (uint32_t)(pair / K), g = (uint32_t)(pair % K);
        const uint32_t visible = full ? visible_all : pos0 + t + 1;
        /* one scores row per thread of our team; run serially, the caller may itself be
         * thread 3 of its own OpenMP team, yet this context has rows for n_threads only */
        float *sc = ctx->scores + (size_t)(parallel ? nano_thread_index() : 0) * ctx->n_ctx;
        uint32_t h;
        for (h = g * group; h < (g + 1) * group; h++) {
            const float *qv = ctx->q + (size_t)t * HD + (size_t)h * D;
            float *out = ctx->att + (size_t)t * HD + (size_t)h * D;
            ctx->kernels.scores(sc, qv, kc + (size_t)g * head_stride, D, visible, D, scale);
            ctx->kernels.softmax(sc, visible);
            ctx->kernels.weighted_sum(out, sc, vc + (size_t)g * head_stride, D, visible, D);
        }
    });
}

/* Copy the keys (or values) of tokens pos0.. ([n, K*D], token-major, as the
 * projection wrote them) into one layer's cache, which is head-major
 * [K, n_ctx, D]: attention then reads each head's keys as one contiguous
 * stream instead of D floats out of every K*D-float row. */
static void store_kv(float *cache, const float *src, uint32_t n, uint32_t pos0, uint32_t K, uint32_t D,
                     uint32_t n_ctx) {
    uint32_t t, g;
    for (t = 0; t < n; t++)
        for (g = 0; g < K; g++)
            memcpy(cache + ((size_t)g * n_ctx + pos0 + t) * D, src + ((size_t)t * K + g) * D,
                   (size_t)D * sizeof(float));
}

static void norm_rows(float *y, const float *x, const float *w, uint32_t n, uint32_t dim, float eps) {
    uint32_t t;
    for (t = 0; t < n; t++) nano_rmsnorm(y + (size_t)t * dim, x + (size_t)t * dim, w, dim, eps);
}

static void add_rows(float *x, const float *y, uint64_t n) {
    uint64_t i;
    for (i = 0; i < n; i++) x[i] += y[i];
}

/* 1 when one of x[0..n) is NaN (an argmax would read it as some id). */
static int any_nan(const float *x, uint32_t n) {
    uint32_t i;
    for (i = 0; i < n; i++)
        if (x[i] != x[i]) return 1;
    return 0;
}

/* Run n tokens at positions pos0.. through every layer (tokens already checked).
 * Causal runs are at most n_batch long; full runs may be up to n_ctx long.
 * NANO_ERR_NON_FINITE when `argmax` is asked for and a position's logits hold
 * NaN (as the sampler refuses them); otherwise NANO_OK. */
static nano_status run_tokens(nano_context *ctx, const int32_t *tokens, uint32_t n, uint32_t pos0, int full,
                              float *logits_out, int all_logits, int32_t *argmax, int classify) {
    const nano_model *m = ctx->model;
    const nano_model_info *c = &m->info;
    const uint32_t E = c->n_embd, D = c->head_dim, KD = c->n_kv_head * D, HD = c->n_head * D,
                   V = c->vocab_size, half = D / 2, nb = ctx->n_batch;
    const float eps = c->norm_eps;
    const int nt = ctx->n_threads;
    float *x = ctx->x;
    uint32_t t, l, b0;

    for (t = 0; t < n; t++) {
        float *xt = x + (size_t)t * E;
        nano_mat_row(&m->tok_embd, (uint32_t)tokens[t], xt);
        if (m->pos_embd) {
            const float *pe = m->pos_embd + (size_t)(pos0 + t) * E;
            uint32_t i;
            for (i = 0; i < E; i++) xt[i] += pe[i];
        }
    }

    for (l = 0; l < c->n_layer; l++) {
        const nano_layer *ly = &m->layers[l];
        float *kc = ctx->key_cache + (size_t)l * ctx->n_ctx * KD;
        float *vc = ctx->value_cache + (size_t)l * ctx->n_ctx * KD;
        /* keys and values of every token of the run; with one block and no
         * LoRA the queries too, in the same parallel region */
        const int fused_q = n <= nb && !ctx->lora;
        for (b0 = 0; b0 < n; b0 += nb) {
            const uint32_t bn = n - b0 < nb ? n - b0 : nb;
            /* staged token-major in proj and att (both free here, both >= K*D wide) */
            float *kb = ctx->proj, *vb = ctx->att;
            norm_rows(ctx->xb, x + (size_t)b0 * E, ly->norm_attn, bn, E, eps);
            if (fused_q) {
                nano_matmul_job jobs[3];
                jobs[0].y = ctx->q;
                jobs[0].w = &ly->wq;
                jobs[1].y = kb;
                jobs[1].w = &ly->wk;
                jobs[2].y = vb;
                jobs[2].w = &ly->wv;
                jobs[0].x = jobs[1].x = jobs[2].x = ctx->xb;
                nano_matmul_jobs(&ctx->kernels, jobs, 3, bn, nt);
            } else {
                project(ctx, kb, ctx->xb, &ly->wk, bn, l, NANO_LORA_WK);
                project(ctx, vb, ctx->xb, &ly->wv, bn, l, NANO_LORA_WV);
            }
            if (m->rope_cos)
                for (t = 0; t < bn; t++) {
                    const size_t row = (size_t)(pos0 + b0 + t) * half;
                    nano_rope(kb + (size_t)t * KD, c->n_kv_head, D, m->rope_cos + row, m->rope_sin + row);
                }
            store_kv(kc, kb, bn, pos0 + b0, c->n_kv_head, D, ctx->n_ctx);
            store_kv(vc, vb, bn, pos0 + b0, c->n_kv_head, D, ctx->n_ctx);
        }
        /* attention and FFN */
        for (b0 = 0; b0 < n; b0 += nb) {
            const uint32_t bn = n - b0 < nb ? n - b0 : nb;
            float *xr = x + (size_t)b0 * E;
            if (n > nb) norm_rows(ctx->xb, xr, ly->norm_attn, bn, E, eps); /* else xb still holds it */
            if (!fused_q) project(ctx, ctx->q, ctx->xb, &ly->wq, bn, l, NANO_LORA_WQ);
            if (m->rope_cos)
                for (t = 0; t < bn; t++) {
                    const size_t row = (size_t)(pos0 + b0 + t) * half;
                    nano_rope(ctx->q + (size_t)t * HD, c->n_head, D, m->rope_cos + row, m->rope_sin + row);
                }
            attention(ctx, l, bn, pos0 + b0, pos0 + n, full);
            project(ctx, ctx->proj, ctx->att, &ly->wo, bn, l, NANO_LORA_WO);
            add_rows(xr, ctx->proj, (uint64_t)bn * E);
            norm_rows(ctx->xb, xr, ly->norm_ffn, bn, E, eps);
            nano_matmul_swiglu(&ctx->kernels, ctx->hb, ctx->hb2, ctx->xb, &ly->w1, &ly->w3, bn, nt);
            nano_matmul(&ctx->kernels, ctx->proj, ctx->hb, &ly->w2, bn, nt);
            add_rows(xr, ctx->proj, (uint64_t)bn * E);
        }
    }

    /* classifier (a prompt block that is not the last one needs none) */
    if (!classify) return NANO_OK;
    if (all_logits && logits_out) {
        for (b0 = 0; b0 < n; b0 += nb) {
            const uint32_t bn = n - b0 < nb ? n - b0 : nb;
            norm_rows(ctx->xb, x + (size_t)b0 * E, m->norm_final, bn, E, eps);
            nano_matmul(&ctx->kernels, logits_out + (size_t)b0 * V, ctx->xb, &m->lm_head, bn, nt);
        }
        memcpy(ctx->logits, logits_out + (size_t)(n - 1) * V, (size_t)V * sizeof(float));
    } else if (argmax) {
        for (t = 0; t < n; t++) {
            nano_rmsnorm(ctx->xb, x + (size_t)t * E, m->norm_final, E, eps);
            nano_matmul(&ctx->kernels, ctx->logits, ctx->xb, &m->lm_head, 1, nt);
            if (any_nan(ctx->logits, V)) return NANO_ERR_NON_FINITE;
            argmax[t] = nano_argmax(ctx->logits, V);
        }
    } else {
        nano_rmsnorm(ctx->xb, x + (size_t)(n - 1) * E, m->norm_final, E, eps);
        nano_matmul(&ctx->kernels, ctx->logits, ctx->xb, &m->lm_head, 1, nt);
        if (logits_out) memcpy(logits_out, ctx->logits, (size_t)V * sizeof(float));
    }
    return NANO_OK;
}

nano_status nano_eval_ex(nano_context *ctx, const int32_t *tokens, uint32_t n, float *logits, int all_logits,
                         int full, int32_t *argmax, int classify) {
    uint32_t i, V;
    nano_status st = NANO_OK;
    if (!ctx || !tokens || n == 0) return NANO_ERR_BAD_ARGUMENT;
    V = ctx->model->info.vocab_size;
    for (i = 0; i < n; i++)
        if (tokens[i] < 0 || (uint32_t)tokens[i] >= V) return NANO_ERR_BAD_TOKEN;
    if (n > ctx->n_ctx - ctx->pos) return NANO_ERR_CONTEXT_FULL;
    if (full) {
        st = run_tokens(ctx, tokens, n, ctx->pos, 1, logits, all_logits, argmax, classify);
    } else {
        uint32_t c0;
        for (c0 = 0; c0 < n && st == NANO_OK; c0 += ctx->n_batch) {
            const uint32_t cn = n - c0 < ctx->n_batch ? n - c0 : ctx->n_batch;
            const int last = c0 + cn == n;
            float *lo = NULL;
            if (logits && all_logits) lo = logits + (size_t)c0 * V;
            else if (logits && last) lo = logits;
            st = run_tokens(ctx, tokens + c0, cn, ctx->pos + c0, 0, lo, all_logits, argmax ? argmax + c0 : NULL,
                            classify && (last || (logits && all_logits) || argmax));
        }
    }
    if (st != NANO_OK) { /* the argmax met NaN logits: nothing usable was computed */
        ctx->has_logits = 0;
        return st;
    }
    ctx->pos += n;
    ctx->has_logits = classify;
    return NANO_OK;
}

nano_status nano_eval(nano_context *ctx, const int32_t *tokens, uint32_t n, float *logits, int all_logits) {
    if (!ctx) return NANO_ERR_BAD_ARGUMENT;
    return nano_eval_ex(ctx, tokens, n, logits, all_logits, ctx->full_attention, NULL, 1);
}

nano_status nano_seq2seq(nano_context *ctx, const int32_t *in, uint32_t n, int32_t *out) {
    int full;
    if (!ctx || !in || !out || n == 0) return NANO_ERR_BAD_ARGUMENT;
    if (ctx->attention_mode == NANO_ATTENTION_MODE_FILE)
        full = ctx->model->info.has_extension ? file_full_attention(ctx->model) : 1;
    else
        full = ctx->attention_mode == NANO_ATTENTION_MODE_FULL;
    nano_context_reset(ctx);
    return nano_eval_ex(ctx, in, n, NULL, 0, full, out, 1);
}
