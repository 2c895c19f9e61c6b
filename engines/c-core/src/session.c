/*
 * session.c - streaming generation over a context: prompt (continuation or
 * instruct template), prefill, then one token per step, with stop tokens,
 * limits, cancellation and timing. The rules follow nano_train.sampling.generate:
 * a sampled stop token ends the stream and is not emitted; after max_tokens
 * tokens, or when the cache is full, the stream ends (the token sampled from
 * the last cached position is still emitted, unfed).
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

// ---------------------------------------------------------------------------
// State

enum { STATE_IDLE = 0, STATE_READY = 1, STATE_RUNNING = 2, STATE_DONE = 3 };

/* The cancel flag is written by nano_session_cancel, from another thread or a
 * signal handler, while the session's thread reads it: an atomic int (lock-free
 * wherever this runs, so also async-signal-safe) in C11, GCC's and clang's
 * atomic builtins in C99 builds with those compilers, else the C99 signal type. */
#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L && !defined(__STDC_NO_ATOMICS__)
#include <stdatomic.h>
typedef atomic_int cancel_flag;
#define CANCEL_STORE(f, v) atomic_store_explicit(&(f), (v), memory_order_relaxed)
#define CANCEL_LOAD(f) atomic_load_explicit(&(f), memory_order_relaxed)
#elif defined(__GNUC__) || defined(__clang__)
typedef int cancel_flag;
#define CANCEL_STORE(f, v) __atomic_store_n(&(f), (v), __ATOMIC_RELAXED)
#define CANCEL_LOAD(f) __atomic_load_n(&(f), __ATOMIC_RELAXED)
#else
typedef volatile sig_atomic_t cancel_flag;
#define CANCEL_STORE(f, v) ((f) = (v))
#define CANCEL_LOAD(f) (f)
#endif

struct nano_session {
    nano_context *ctx;
    nano_sampler *sampler;
    nano_session_params params;
    int32_t *stops;           /* [n_stops] */
    uint32_t n_stops;
    int32_t *tokens;          /* [n_ctx + 1] prompt, then generated */
    uint32_t n_tokens, n_prompt;
    uint64_t resets;          /* ctx->resets when this generation began */
    int32_t eos_id, instruct_id, response_id;
    int state;
    uint32_t mode;
    cancel_flag cancel;
    nano_token_event end;
    double t_start, t_prefill_end, t_first, t_last;
};

nano_session_params nano_session_default_params(void) {
    nano_session_params p;
    memset(&p, 0, sizeof p);
    p.sampler = nano_sampler_default_params();
    p.max_tokens = 0;
    p.allow_special = 0;
    p.stop_at_eos = 1;
    p.stop_tokens = NULL;
    p.n_stop_tokens = 0;
    p.on_token = NULL;
    p.user = NULL;
    return p;
}

void nano_session_free(nano_session *s) {
    if (!s) return;
    nano_sampler_free(s->sampler);
    free(s->stops);
    free(s->tokens);
    free(s);
}

static int32_t special_id(const nano_tokenizer *tok, const char *text, size_t len) {
    int32_t id = nano_tokenizer_find(tok, text, len);
    return id >= 0 && nano_tokenizer_is_special(tok, id) ? id : -1;
}

nano_status nano_session_init(nano_context *ctx, const nano_session_params *params, nano_session **out) {
    nano_session *s;
    nano_status st;
    const nano_tokenizer *tok;
    nano_session_params p = params ? *params : nano_session_default_params();
    if (!out) return NANO_ERR_BAD_ARGUMENT;
    *out = NULL;
    if (!ctx || (p.n_stop_tokens && !p.stop_tokens)) return NANO_ERR_BAD_ARGUMENT;
    /* Generation is autoregressive: under full attention every prompt position
     * sees the later ones, so a prompt run in n_batch blocks would depend on
     * n_batch, and a token fed after the prompt has no meaning. A full-attention
     * model is a seq2seq model (nano_seq2seq), as in the CLI and the server. */
    if (ctx->full_attention) return NANO_ERR_UNSUPPORTED;
    s = (nano_session *)calloc(1, sizeof(*s));
    if (!s) return NANO_ERR_OUT_OF_MEMORY;
    s->ctx = ctx;
    s->params = p;
    st = nano_sampler_init(&p.sampler, ctx->model->info.vocab_size, &s->sampler);
    if (st != NANO_OK) {
        nano_session_free(s);
        return st;
    }
    s->tokens = (int32_t *)malloc(((size_t)ctx->n_ctx + 1) * sizeof(int32_t));
    s->stops = (int32_t *)malloc(((size_t)p.n_stop_tokens + 1) * sizeof(int32_t));
    if (!s->tokens || !s->stops) {
        nano_session_free(s);
        return NANO_ERR_OUT_OF_MEMORY;
    }
    if (p.n_stop_tokens) memcpy(s->stops, p.stop_tokens, (size_t)p.n_stop_tokens * sizeof(int32_t));
    s->n_stops = p.n_stop_tokens;
    s->params.stop_tokens = s->stops;
    tok = ctx->model->tokenizer;
    s->eos_id = s->instruct_id = s->response_id = -1;
    if (tok && nano_tokenizer_get_kind(tok) == NANO_TOKENIZER_KIND_TRIE) {
        s->eos_id = special_id(tok, NANO_SPECIAL_EOS, sizeof(NANO_SPECIAL_EOS) - 1);
        s->instruct_id = special_id(tok, NANO_SPECIAL_INSTRUCT, sizeof(NANO_SPECIAL_INSTRUCT) - 1);
        s->response_id = special_id(tok, NANO_SPECIAL_RESPONSE, sizeof(NANO_SPECIAL_RESPONSE) - 1);
    }
    *out = s;
    return NANO_OK;
}

// ---------------------------------------------------------------------------
// Starting a generation

static void begin(nano_session *s, uint32_t mode) {
    nano_context_reset(s->ctx);
    s->resets = s->ctx->resets;
    nano_sampler_reseed(s->sampler, s->params.sampler.seed);
    CANCEL_STORE(s->cancel, 0);
    s->mode = mode;
    s->state = STATE_READY;
    s->t_start = nano_platform_now_ms();
    s->t_prefill_end = s->t_first = s->t_last = 0.0;
}

nano_status nano_session_start_tokens(nano_session *s, const int32_t *ids, uint32_t n) {
    uint32_t i, V;
    if (!s || (!ids && n)) return NANO_ERR_BAD_ARGUMENT;
    s->state = STATE_IDLE;
    if (n == 0) return NANO_ERR_BAD_ARGUMENT;
    if (n >= s->ctx->n_ctx) return NANO_ERR_CONTEXT_FULL; /* leave room for one new token */
    V = s->ctx->model->info.vocab_size;
    for (i = 0; i < n; i++)
        if (ids[i] < 0 || (uint32_t)ids[i] >= V) return NANO_ERR_BAD_TOKEN;
    memcpy(s->tokens, ids, (size_t)n * sizeof(int32_t));
    s->n_tokens = s->n_prompt = n;
    begin(s, NANO_MODE_CONTINUE);
    return NANO_OK;
}

nano_status nano_session_start(nano_session *s, const char *prompt, uint32_t mode) {
    const nano_tokenizer *tok;
    size_t n = 0, cap, len;
    uint32_t first = 0;
    nano_status st;
    if (!s || !prompt || mode > NANO_MODE_INSTRUCT) return NANO_ERR_BAD_ARGUMENT;
    s->state = STATE_IDLE;
    tok = s->ctx->model->tokenizer;
    if (!tok) return NANO_ERR_NO_TOKENIZER;
    cap = s->ctx->n_ctx; /* a prompt must be shorter than the context */
    if (mode == NANO_MODE_INSTRUCT) {
        if (s->instruct_id < 0 || s->response_id < 0) return NANO_ERR_NO_TOKENIZER;
        s->tokens[0] = s->instruct_id;
        first = 1;
    }
    len = strlen(prompt);
    st = nano_tokenizer_encode(tok, prompt, len, mode == NANO_MODE_CONTINUE && s->params.allow_special,
                               s->tokens + first, cap - first, &n);
    if (st == NANO_ERR_BUFFER_TOO_SMALL) return NANO_ERR_CONTEXT_FULL;
    if (st != NANO_OK) return st;
    n += first;
    if (mode == NANO_MODE_INSTRUCT) {
        if (n >= cap) return NANO_ERR_CONTEXT_FULL;
        s->tokens[n++] = s->response_id;
    }
    if (n == 0) return NANO_ERR_BAD_ARGUMENT; /* an empty continuation prompt */
    if (n >= cap) return NANO_ERR_CONTEXT_FULL;
    s->n_tokens = s->n_prompt = (uint32_t)n;
    begin(s, mode);
    return NANO_OK;
}

// ---------------------------------------------------------------------------
// Steps

static void emit(nano_session *s, const nano_token_event *ev) {
    if (s->params.on_token) s->params.on_token(s->params.user, ev); /* optional (reference defect 6) */
}

static nano_status finish(nano_session *s, uint32_t reason, nano_token_event *ev) {
    s->state = STATE_DONE;
    s->end.id = -1;
    s->end.text = "";
    s->end.text_len = 0;
    s->end.done = 1;
    s->end.stop_reason = reason;
    *ev = s->end;
    emit(s, ev);
    return reason == NANO_STOP_CANCELLED ? NANO_ERR_CANCELLED : NANO_OK;
}

static int is_stop(const nano_session *s, int32_t id) {
    uint32_t i;
    if (id == s->eos_id && s->eos_id >= 0 && (s->mode == NANO_MODE_INSTRUCT || s->params.stop_at_eos)) return 1;
    for (i = 0; i < s->n_stops; i++)
        if (s->stops[i] == id) return 1;
    return 0;
}

nano_status nano_session_step(nano_session *s, nano_token_event *ev) {
    nano_context *ctx;
    nano_status st;
    int32_t id;
    if (!s || !ev) return NANO_ERR_BAD_ARGUMENT;
    ctx = s->ctx;
    if (s->state == STATE_IDLE) return NANO_ERR_STATE;
    if (s->state == STATE_DONE) {
        *ev = s->end;
        return s->end.stop_reason == NANO_STOP_CANCELLED ? NANO_ERR_CANCELLED : NANO_OK;
    }
    if (CANCEL_LOAD(s->cancel)) return finish(s, NANO_STOP_CANCELLED, ev);
    /* The context holds this session's tokens but the last (none before the prompt
     * has run), and was not emptied since the start: a reset (nano_context_reset, a
     * LoRA attached or detached, another session's start) or an eval by someone else
     * in between would make the next token meaningless, and could run the history
     * past its n_ctx + 1 slots. */
    if (ctx->resets != s->resets || ctx->pos != (s->state == STATE_READY ? 0 : s->n_tokens - 1)) {
        s->state = STATE_IDLE;
        return NANO_ERR_STATE;
    }

    if (s->state == STATE_READY) {
        uint32_t c0;
        for (c0 = 0; c0 < s->n_prompt; c0 += ctx->n_batch) {
            uint32_t cn = s->n_prompt - c0 < ctx->n_batch ? s->n_prompt - c0 : ctx->n_batch;
            if (CANCEL_LOAD(s->cancel)) return finish(s, NANO_STOP_CANCELLED, ev);
            st = nano_eval_ex(ctx, s->tokens + c0, cn, NULL, 0, 0 /* causal: see init */, NULL,
                              c0 + cn == s->n_prompt);
            if (st != NANO_OK) {
                s->state = STATE_IDLE;
                return st;
            }
        }
        s->t_prefill_end = nano_platform_now_ms();
        s->state = STATE_RUNNING;
    } else {
        /* feed the last emitted token */
        uint32_t generated = s->n_tokens - s->n_prompt;
        if (s->params.max_tokens && generated >= s->params.max_tokens)
            return finish(s, NANO_STOP_MAX_TOKENS, ev);
        if (ctx->pos >= ctx->n_ctx) return finish(s, NANO_STOP_CONTEXT_FULL, ev);
        st = nano_eval(ctx, &s->tokens[s->n_tokens - 1], 1, NULL, 0);
        if (st != NANO_OK) {
            s->state = STATE_IDLE;
            return st;
        }
    }

    st = nano_sampler_sample(s->sampler, ctx->logits, s->tokens, s->n_tokens, &id);
    if (st != NANO_OK) {
        s->state = STATE_IDLE; /* as for a failed eval: start again (or not) */
        return st;
    }
    if (is_stop(s, id)) return finish(s, NANO_STOP_TOKEN, ev);
    s->tokens[s->n_tokens++] = id;
    s->t_last = nano_platform_now_ms();
    if (s->n_tokens - s->n_prompt == 1) s->t_first = s->t_last;
    ev->id = id;
    ev->done = 0;
    ev->stop_reason = NANO_STOP_NONE;
    if (nano_tokenizer_token_text(ctx->model->tokenizer, id, &ev->text, &ev->text_len) != NANO_OK) {
        ev->text = ""; /* a model without a vocabulary (started from token ids): ids only */
        ev->text_len = 0;
    }
    emit(s, ev);
    return NANO_OK;
}

// ---------------------------------------------------------------------------
// Cancel, statistics

void nano_session_cancel(nano_session *s) {
    if (s) CANCEL_STORE(s->cancel, 1);
}

nano_status nano_session_get_stats(const nano_session *s, nano_session_stats *out) {
    uint32_t gen, i;
    int32_t unknown;
    if (!s || !out) return NANO_ERR_BAD_ARGUMENT;
    memset(out, 0, sizeof *out);
    gen = s->n_tokens - s->n_prompt;
    out->prompt_tokens = s->n_prompt;
    unknown = nano_tokenizer_unknown_id(s->ctx->model->tokenizer);
    for (i = 0; unknown >= 0 && i < s->n_prompt; i++) out->unknown_tokens += s->tokens[i] == unknown;
    out->generated_tokens = gen;
    if (s->t_prefill_end > 0.0) {
        out->prefill_ms = s->t_prefill_end - s->t_start;
        if (out->prefill_ms > 0.0) out->prefill_tokens_per_s = s->n_prompt * 1e3 / out->prefill_ms;
    }
    if (gen > 0) {
        out->ttft_ms = s->t_first - s->t_start;
        out->decode_ms = s->t_last - s->t_first;
        if (gen > 1 && out->decode_ms > 0.0) out->decode_tokens_per_s = (gen - 1) * 1e3 / out->decode_ms;
    }
    return NANO_OK;
}

const int32_t *nano_session_tokens(const nano_session *s, uint32_t *n, uint32_t *n_prompt) {
    if (!s) return NULL;
    if (n) *n = s->n_tokens;
    if (n_prompt) *n_prompt = s->n_prompt;
    return s->tokens;
}
