/*
 * protocol.c - reading requests and writing replies (see protocol.h).
 *
 * Validation is strict on purpose: an unknown field is an error rather than
 * ignored, so a misspelt "temprature" is reported instead of silently
 * sampling at the default. Sampler ranges are the library's own
 * (nano_sampler_init), checked here first so the client learns which field
 * is wrong.
 */
#include "protocol.h"

#include <float.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------
// Requests

static int set_error(wss_error *err, const char *code, const char *fmt, ...) {
    va_list ap;
    err->code = code;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return -1;
}

static const char *const GENERATE_FIELDS[] = {"type", "id", "prompt", "mode", "system", "temperature", "top_k",
                                              "top_p", "min_p", "repetition_penalty", "seed", "max_tokens", "stop",
                                              NULL};
static const char *const SEQ2SEQ_FIELDS[] = {"type", "id", "input", NULL};
static const char *const PLAIN_FIELDS[] = {"type", "id", NULL};
static const char *const KIND_NAMES[] = {"generate", "cancel", "info", "seq2seq"};

/* Whether a string value decodes to exactly `word` (escaped spellings too). */
static int string_is(const nj_value *v, const char *word) {
    char buf[NJ_KEY_MAX + 1];
    size_t n;
    if (v->type != NJ_STRING || v->len > NJ_KEY_MAX * 6) return 0; /* 6: the longest escape, \uXXXX */
    n = nj_string_length(v);
    if (n != strlen(word) || n > NJ_KEY_MAX) return 0;
    nj_string_decode(v, buf);
    return memcmp(buf, word, n) == 0;
}

static int allowed(const char *const *fields, const nj_member *m) {
    size_t i;
    if (m->key_too_long) return 0;
    for (i = 0; fields[i]; i++)
        if (strlen(fields[i]) == m->key_len && memcmp(fields[i], m->key, m->key_len) == 0) return 1;
    return 0;
}

/* How much of a raw (escaped, valid UTF-8) JSON string fits in `max` bytes
 * without cutting a character or an escape in two. */
static size_t hint_length(const char *raw, size_t len, size_t max) {
    size_t n = 0, step;
    while (n < len) {
        unsigned char b = (unsigned char)raw[n];
        if (b == '\\') step = n + 1 < len && raw[n + 1] == 'u' ? 6 : 2;
        else step = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
        if (n + step > max || n + step > len) break;
        n += step;
    }
    return n;
}

/* A decoded key for a message: every byte, control characters (U+0000
 * included) written as \u00XX. `out` holds NJ_KEY_MAX * 6 + 1 bytes. */
static void escape_key(const nj_member *m, char *out) {
    static const char hex[] = "0123456789abcdef";
    size_t i, o = 0;
    for (i = 0; i < m->key_len && i < NJ_KEY_MAX; i++) {
        unsigned char b = (unsigned char)m->key[i];
        if (b < 0x20 || b == 0x7F) {
            memcpy(out + o, "\\u00", 4);
            out[o + 4] = hex[b >> 4];
            out[o + 5] = hex[b & 15];
            o += 6;
        } else {
            out[o++] = (char)b;
        }
    }
    out[o] = '\0';
}

/* A float setting as the sampler stores it (float32), checked by `ok`. */
static int read_float(const nj_object *obj, const char *name, float *out, int (*ok)(float), const char *range,
                      wss_error *err) {
    const nj_value *v = nj_get(obj, name);
    double d;
    if (!v) return 0;
    if (nj_number_double(v, &d) != NJ_OK || d > FLT_MAX || d < -FLT_MAX || !ok((float)d))
        return set_error(err, WSS_E_BAD_FIELD, "%s must be a number %s", name, range);
    *out = (float)d;
    return 0;
}

#define FLT_MAX_TEXT "3.4028234e38" /* FLT_MAX, rounded down */

static int ok_temperature(float x) { return x >= 0.0f; }
static int ok_top_p(float x) { return x > 0.0f && x <= 1.0f; }
static int ok_min_p(float x) { return x >= 0.0f && x <= 1.0f; }
static int ok_penalty(float x) { return x > 0.0f; }

static int read_uint(const nj_object *obj, const char *name, uint64_t max, uint64_t *out, int *present,
                     wss_error *err) {
    const nj_value *v = nj_get(obj, name);
    uint64_t x;
    if (present) *present = v != NULL;
    if (!v) return 0;
    if (nj_number_u64(v, &x) != NJ_OK || x > max)
        return set_error(err, WSS_E_BAD_FIELD, "%s must be an integer in [0, %llu]", name,
                         (unsigned long long)max);
    *out = x;
    return 0;
}

/* The string field v (named `name`), decoded into a new NUL-terminated
 * buffer *out of *len bytes. */
static int decode_text(const nj_value *v, const char *name, char **out, size_t *len, wss_error *err) {
    if (v->type != NJ_STRING) return set_error(err, WSS_E_BAD_FIELD, "%s must be a string", name);
    *out = (char *)malloc(nj_string_length(v) + 1);
    if (!*out) return set_error(err, WSS_E_INTERNAL, "out of memory");
    *len = nj_string_decode(v, *out);
    /* the library takes NUL-terminated text: an embedded NUL would cut it short */
    if (memchr(*out, '\0', *len))
        return set_error(err, WSS_E_BAD_FIELD, "%s must not contain U+0000", name);
    return 0;
}

/* A required string field, decoded into req->text. */
static int read_text(const nj_object *obj, const char *name, wss_request *req, wss_error *err) {
    const nj_value *v = nj_get(obj, name);
    if (!v) return set_error(err, WSS_E_MISSING_FIELD, "\"%s\" is required", name);
    return decode_text(v, name, &req->text, &req->text_len, err);
}

/* An instruct request's "system" (v): req->text (the prompt) becomes the
 * system text, a line break, then the prompt, as nano_train's `prepare sft
 * --system prepend` trained the model on it (data.with_system; an empty
 * system text adds nothing), and the session's instruct template takes the
 * joined text. Both parts came in one message, so the joined text is within
 * --max-message too, and the session refuses it when it does not fit the
 * context (prompt_too_long), as it does a prompt. */
static int read_system(const nj_value *v, wss_request *req, wss_error *err) {
    char *system = NULL, *joined;
    size_t n = 0;
    if (v->type != NJ_STRING) return set_error(err, WSS_E_BAD_FIELD, "system must be a string");
    if (req->mode != NANO_MODE_INSTRUCT)
        return set_error(err, WSS_E_BAD_FIELD,
                         "system needs mode \"instruct\": the system text goes into the instruct template");
    if (decode_text(v, "system", &system, &n, err)) {
        free(system);
        return -1;
    }
    if (n == 0) {
        free(system);
        return 0;
    }
    joined = (char *)malloc(n + 1 + req->text_len + 1);
    if (!joined) {
        free(system);
        return set_error(err, WSS_E_INTERNAL, "out of memory");
    }
    memcpy(joined, system, n);
    joined[n] = '\n';
    memcpy(joined + n + 1, req->text, req->text_len + 1);
    free(system);
    free(req->text);
    req->text = joined;
    req->text_len += n + 1;
    return 0;
}

/* "stop": an array of at most WSS_STOP_MAX texts, each a non-empty string of at
 * most WSS_STOP_BYTES bytes without U+0000 (the library takes NUL-terminated
 * texts), copied into req->stop. Whether the vocabulary can write them is the
 * server's check, which has the model. */
static int read_stops(const nj_value *v, wss_request *req, wss_error *err) {
    nj_value e;
    size_t pos = 0, len;
    char name[32];
    if (v->type != NJ_ARRAY)
        return set_error(err, WSS_E_BAD_FIELD, "stop must be an array of at most %d strings", WSS_STOP_MAX);
    while (nj_array_next(v, &pos, &e)) {
        if (req->n_stop == WSS_STOP_MAX)
            return set_error(err, WSS_E_BAD_FIELD, "stop must be an array of at most %d strings", WSS_STOP_MAX);
        snprintf(name, sizeof name, "stop[%u]", req->n_stop);
        if (e.type != NJ_STRING) return set_error(err, WSS_E_BAD_FIELD, "%s must be a string", name);
        if (nj_string_length(&e) > WSS_STOP_BYTES)
            return set_error(err, WSS_E_BAD_FIELD, "%s must be at most %d bytes", name, WSS_STOP_BYTES);
        if (decode_text(&e, name, &req->stop[req->n_stop++], &len, err)) return -1;
        if (len == 0) return set_error(err, WSS_E_BAD_FIELD, "%s is empty: give the text to stop at", name);
    }
    return 0;
}

#define MAX_COUNT (UINT64_C(1) << 30)

static int read_generate(const nj_object *obj, wss_request *req, wss_error *err) {
    const nj_value *mode = nj_get(obj, "mode"), *system = nj_get(obj, "system"), *stop = nj_get(obj, "stop");
    uint64_t x = 0;
    int present = 0;
    if (read_text(obj, "prompt", req, err)) return -1;
    req->mode = NANO_MODE_CONTINUE;
    if (mode) {
        if (string_is(mode, "continue")) req->mode = NANO_MODE_CONTINUE;
        else if (string_is(mode, "instruct")) req->mode = NANO_MODE_INSTRUCT;
        else
            return set_error(err, WSS_E_BAD_FIELD, "mode must be \"continue\" or \"instruct\"");
    }
    if (system && read_system(system, req, err)) return -1;
    /* FLT_MAX_TEXT: the settings are float32, so the largest float32 is the bound */
    if (read_float(obj, "temperature", &req->sampler.temperature, ok_temperature,
                   "in [0, " FLT_MAX_TEXT "] (0 = greedy)", err) ||
        read_float(obj, "top_p", &req->sampler.top_p, ok_top_p, "in (0, 1]", err) ||
        read_float(obj, "min_p", &req->sampler.min_p, ok_min_p, "in [0, 1]", err) ||
        read_float(obj, "repetition_penalty", &req->sampler.repetition_penalty, ok_penalty,
                   "in (0, " FLT_MAX_TEXT "] (1 = off)", err))
        return -1;
    /* top_k and max_tokens: at most 2^30, as `nano run -k/-n` and nano_train.sample take them */
    if (read_uint(obj, "top_k", MAX_COUNT, &x, &present, err)) return -1;
    if (present) req->sampler.top_k = (int32_t)x;
    if (read_uint(obj, "seed", UINT64_MAX, &x, &present, err)) return -1;
    if (present) req->sampler.seed = x;
    if (read_uint(obj, "max_tokens", MAX_COUNT, &x, &req->has_max_tokens, err)) return -1;
    if (req->has_max_tokens) req->max_tokens = (uint32_t)x;
    if (stop && read_stops(stop, req, err)) return -1;
    return 0;
}

int wss_parse_request(const char *text, size_t len, wss_request *req, wss_error *err) {
    nj_object obj;
    const nj_value *type, *id;
    const char *const *fields;
    size_t at = 0, i;
    nj_status st;

    memset(req, 0, sizeof *req);
    req->sampler = nano_sampler_default_params();
    err->code = NULL;
    err->message[0] = '\0';

    st = nj_parse_object(text, len, &obj, &at);
    switch (st) {
    case NJ_OK: break;
    case NJ_ERR_UTF8: return set_error(err, WSS_E_BAD_JSON, "invalid UTF-8 in a string at byte %zu", at);
    case NJ_ERR_DEPTH: return set_error(err, WSS_E_BAD_JSON, "nested deeper than %d levels", NJ_MAX_DEPTH);
    case NJ_ERR_NOT_OBJECT: return set_error(err, WSS_E_BAD_MESSAGE, "a request is a JSON object");
    case NJ_ERR_TOO_MANY_MEMBERS:
        return set_error(err, WSS_E_BAD_MESSAGE, "more than %d fields", NJ_MAX_MEMBERS);
    case NJ_ERR_DUPLICATE_KEY: return set_error(err, WSS_E_BAD_MESSAGE, "a field appears twice");
    default: return set_error(err, WSS_E_BAD_JSON, "not valid JSON (at byte %zu)", at);
    }

    /* the id first, so that every later error can carry it */
    id = nj_get(&obj, "id");
    if (id && id->type != NJ_NULL) {
        size_t n = nj_string_length(id);
        char buf[WSS_ID_MAX + 1];
        if (id->type != NJ_STRING || n > WSS_ID_MAX)
            return set_error(err, WSS_E_BAD_FIELD, "id must be a string of at most %d bytes", WSS_ID_MAX);
        nj_string_decode(id, buf);
        memcpy(req->id.bytes, buf, n);
        req->id.len = n;
        req->id.present = 1;
    }

    type = nj_get(&obj, "type");
    if (!type) return set_error(err, WSS_E_MISSING_FIELD, "\"type\" is required");
    if (type->type != NJ_STRING) return set_error(err, WSS_E_BAD_FIELD, "type must be a string");
    if (string_is(type, "generate")) {
        req->kind = WSS_GENERATE;
        fields = GENERATE_FIELDS;
    } else if (string_is(type, "cancel")) {
        req->kind = WSS_CANCEL;
        fields = PLAIN_FIELDS;
    } else if (string_is(type, "info")) {
        req->kind = WSS_INFO;
        fields = PLAIN_FIELDS;
    } else if (string_is(type, "seq2seq")) {
        req->kind = WSS_SEQ2SEQ;
        fields = SEQ2SEQ_FIELDS;
    } else {
        /* the raw (escaped) text is quoted back, cut short at a character
         * boundary (the parser checked it is UTF-8): it is only a hint */
        size_t n = hint_length(type->raw, type->len, 32);
        return set_error(err, WSS_E_UNKNOWN_TYPE, "unknown type \"%.*s\"%s (known: generate, cancel, info, seq2seq)",
                         (int)n, type->raw, n < type->len ? "..." : "");
    }
    for (i = 0; i < obj.n; i++)
        if (!allowed(fields, &obj.members[i])) {
            char name[NJ_KEY_MAX * 6 + 1];
            if (obj.members[i].key_too_long) snprintf(name, sizeof name, "(a long name)");
            else escape_key(&obj.members[i], name);
            return set_error(err, WSS_E_UNKNOWN_FIELD, "unknown field \"%s\" for type %s", name,
                             KIND_NAMES[req->kind]);
        }

    if (req->kind == WSS_GENERATE) return read_generate(&obj, req, err);
    if (req->kind == WSS_SEQ2SEQ) return read_text(&obj, "input", req, err);
    return 0;
}

void wss_request_clear(wss_request *req) {
    uint32_t i;
    free(req->text);
    req->text = NULL;
    req->text_len = 0;
    for (i = 0; i < req->n_stop; i++) {
        free(req->stop[i]);
        req->stop[i] = NULL;
    }
    req->n_stop = 0;
}

// ---------------------------------------------------------------------------
// Replies

static void write_head(nj_writer *w, const char *type, const wss_id *id) {
    nj_raw(w, "{\"type\":");
    nj_cstr(w, type);
    nj_raw(w, ",\"id\":");
    if (id && id->present) nj_str(w, id->bytes, id->len);
    else nj_raw(w, "null");
}

void wss_reply_error(nj_writer *w, const wss_id *id, const char *code, const char *message) {
    write_head(w, "error", id);
    nj_raw(w, ",\"code\":");
    nj_cstr(w, code);
    nj_raw(w, ",\"message\":");
    nj_cstr(w, message);
    nj_raw(w, "}");
}

void wss_reply_token(nj_writer *w, const wss_id *id, int32_t token, const char *text, size_t len) {
    write_head(w, "token", id);
    nj_raw(w, ",\"token\":");
    nj_i64(w, token);
    nj_raw(w, ",\"text\":");
    nj_str(w, text ? text : "", text ? len : 0);
    nj_raw(w, "}");
}

static const char *reason_name(uint32_t reason) {
    switch (reason) {
    case NANO_STOP_TOKEN: return "stop";
    case NANO_STOP_MAX_TOKENS: return "max_tokens";
    case NANO_STOP_CONTEXT_FULL: return "context_full";
    case NANO_STOP_CANCELLED: return "cancelled";
    default: return "unknown";
    }
}

void wss_reply_done(nj_writer *w, const wss_id *id, uint32_t stop_reason, const nano_session_stats *s) {
    write_head(w, "done", id);
    nj_raw(w, ",\"reason\":");
    nj_cstr(w, reason_name(stop_reason));
    nj_raw(w, ",\"stats\":{\"prompt_tokens\":");
    nj_u64(w, s->prompt_tokens);
    nj_raw(w, ",\"unknown_tokens\":");
    nj_u64(w, s->unknown_tokens);
    nj_raw(w, ",\"generated_tokens\":");
    nj_u64(w, s->generated_tokens);
    nj_raw(w, ",\"ttft_ms\":");
    nj_double(w, s->ttft_ms, 3);
    nj_raw(w, ",\"prefill_ms\":");
    nj_double(w, s->prefill_ms, 3);
    nj_raw(w, ",\"decode_ms\":");
    nj_double(w, s->decode_ms, 3);
    nj_raw(w, ",\"tokens_per_s\":");
    nj_double(w, s->decode_tokens_per_s, 1);
    nj_raw(w, "}}");
}

void wss_reply_seq2seq(nj_writer *w, const wss_id *id, const char *text, size_t len, const int32_t *ids,
                       size_t n) {
    size_t i;
    write_head(w, "seq2seq", id);
    nj_raw(w, ",\"output\":");
    nj_str(w, text, len);
    nj_raw(w, ",\"tokens\":[");
    for (i = 0; i < n; i++) {
        if (i) nj_raw(w, ",");
        nj_i64(w, ids[i]);
    }
    nj_raw(w, "]}");
}

static const char *model_type_name(uint32_t t) {
    switch (t) {
    case NANO_MODEL_TYPE_NANO: return "nano";
    case NANO_MODEL_TYPE_QWEN2: return "qwen2";
    case NANO_MODEL_TYPE_QWEN3: return "qwen3";
    case NANO_MODEL_TYPE_LORA: return "lora";
    default: return "unknown";
    }
}

static const char *quant_name(uint32_t q) {
    switch (q) {
    case NANO_QUANT_TYPE_F32: return "f32";
    case NANO_QUANT_TYPE_Q8_0: return "q8_0";
    case NANO_QUANT_TYPE_Q4K: return "q4k";
    default: return "unknown";
    }
}

static void key_u64(nj_writer *w, const char *key, uint64_t v) {
    nj_raw(w, ",\"");
    nj_raw(w, key);
    nj_raw(w, "\":");
    nj_u64(w, v);
}

void wss_reply_info(nj_writer *w, const wss_id *id, const wss_info *in) {
    const nano_model_info *m = in->model;
    write_head(w, "info", id);
    /* only fields every model kind has (reference defect 7: the reference
     * server read a vocabulary array that Nano models do not have) */
    nj_raw(w, ",\"model\":{\"layout\":");
    nj_cstr(w, m->layout ? m->layout : "");
    nj_raw(w, ",\"model_type\":");
    nj_cstr(w, model_type_name(m->model_type));
    nj_raw(w, ",\"quant\":");
    nj_cstr(w, quant_name(m->quant_type));
    key_u64(w, "group_size", m->group_size);
    key_u64(w, "block_size", m->block_size);
    key_u64(w, "vocab_size", m->vocab_size);
    key_u64(w, "n_layer", m->n_layer);
    key_u64(w, "n_embd", m->n_embd);
    key_u64(w, "n_head", m->n_head);
    key_u64(w, "n_kv_head", m->n_kv_head);
    key_u64(w, "n_hidden", m->n_hidden);
    key_u64(w, "head_dim", m->head_dim);
    nj_raw(w, ",\"tied\":");
    nj_bool(w, (int)m->tied);
    nj_raw(w, ",\"attention\":");
    nj_cstr(w, m->attention == NANO_ATTENTION_FULL ? "full" : "causal");
    nj_raw(w, ",\"attention_recorded\":");
    nj_bool(w, (int)m->has_extension);
    nj_raw(w, ",\"position\":");
    nj_cstr(w, m->position == NANO_POSITION_LEARNED ? "learned" : "rope");
    nj_raw(w, ",\"norm_eps\":");
    nj_double(w, m->norm_eps, -7);
    nj_raw(w, ",\"rope_theta\":");
    nj_double(w, m->rope_theta, -7);
    key_u64(w, "n_params", m->n_params);
    key_u64(w, "file_size", m->file_size);
    nj_raw(w, ",\"tokenizer\":");
    if (!in->tokenizer) {
        nj_raw(w, "null");
    } else {
        int trie = nano_tokenizer_get_kind(in->tokenizer) == NANO_TOKENIZER_KIND_TRIE;
        nj_raw(w, "{\"kind\":");
        nj_cstr(w, trie ? "trie" : "bpe");
        key_u64(w, "vocab_size", nano_tokenizer_vocab_size(in->tokenizer));
        key_u64(w, "n_special", trie ? nano_tokenizer_n_special(in->tokenizer) : 0);
        nj_raw(w, "}");
    }
    nj_raw(w, "},\"lora\":");
    if (!in->lora) {
        nj_raw(w, "null");
    } else {
        nj_raw(w, "{\"rank\":");
        nj_u64(w, in->lora->lora_rank);
        key_u64(w, "alpha", in->lora->lora_alpha);
        nj_raw(w, "}");
    }
    nj_raw(w, ",\"modes\":[");
    /* generate needs a tokenizer and causal attention (a full-attention model answers seq2seq only) */
    if (in->tokenizer && in->model->attention != NANO_ATTENTION_FULL)
        nj_raw(w, in->has_instruct ? "\"continue\",\"instruct\"" : "\"continue\"");
    nj_raw(w, "],\"seq2seq\":");
    nj_bool(w, in->tokenizer != NULL);
    nj_raw(w, ",\"server\":{\"n_ctx\":");
    nj_u64(w, in->n_ctx);
    key_u64(w, "max_tokens_cap", in->max_tokens_cap);
    key_u64(w, "default_max_tokens", in->default_max_tokens);
    key_u64(w, "max_message", in->max_message);
    key_u64(w, "max_connections", in->max_connections);
    nj_raw(w, ",\"idle_timeout\":");
    nj_double(w, in->idle_timeout_s, -6);
    key_u64(w, "threads", (uint64_t)in->threads);
    key_u64(w, "abi_version", (uint64_t)nano_abi_version());
    nj_raw(w, ",\"build\":");
    nj_cstr(w, nano_build_info());
    nj_raw(w, "}}");
}
