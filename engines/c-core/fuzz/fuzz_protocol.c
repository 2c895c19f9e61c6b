/*
 * fuzz_protocol.c - libFuzzer target for nano-wss's request handling
 * (server/protocol.c on server/json.c): the input is one WebSocket text
 * message as the server hands it to wss_parse_request (a private heap copy
 * of exactly `size` bytes, so ASan sees any read past the end). Then:
 *
 * - an accepted request is in range: a known kind, an id of at most
 *   WSS_ID_MAX bytes, generate and seq2seq text that is valid UTF-8 with no
 *   NUL inside and a NUL after it, a mode the library knows, and sampler
 *   settings that nano_sampler_init itself accepts (the server checks them
 *   first so it can name the field; the two checks must agree);
 * - a generate's text is its prompt, or with a "system" (instruct mode
 *   only) that is not empty, the system text, "\n", then the prompt (read
 *   again here from the message);
 * - a generate's "stop" texts are the message's, each non-empty, at most
 *   WSS_STOP_BYTES bytes of UTF-8 without NUL, at most WSS_STOP_MAX of them
 *   (none for other requests); resolved against a small vocabulary
 *   (nano_stop_texts_init), they are refused only for a character it lacks,
 *   and nano_stop_texts_check over a token stream taken from the input says
 *   what a plain search of the whole generated text says: where the first stop
 *   text starts, or else from which character the text could still become one;
 * - a refused request has one of the protocol's error codes and a message;
 * - the replies the server would send (the error, a token and a seq2seq
 *   answer echoing the request's id and text, a done message and an info
 *   message with settings taken from the input) are each one valid JSON
 *   object (nj_parse_object) whose id and text read back as sent.
 *
 * Any broken invariant aborts, which libFuzzer reports as a crash.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "nano.h"
#include "protocol.h"

#define FUZZ_NAME "fuzz_protocol"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const CODES[] = {WSS_E_BAD_JSON, WSS_E_BAD_MESSAGE, WSS_E_MESSAGE_TOO_LARGE,
                                    WSS_E_MISSING_FIELD, WSS_E_UNKNOWN_TYPE, WSS_E_UNKNOWN_FIELD,
                                    WSS_E_BAD_FIELD, WSS_E_INTERNAL, NULL};

static int known_code(const char *code) {
    size_t i;
    for (i = 0; code && CODES[i]; i++)
        if (strcmp(code, CODES[i]) == 0) return 1;
    return 0;
}

/* The writer's text is one JSON object of this type whose id reads back as
 * `id`; returns the parsed object for further checks. */
static void check_reply(const nj_writer *w, const char *type, const wss_id *id, nj_object *obj) {
    const nj_value *v;
    char *s;
    size_t n;
    CHECK(!w->failed);
    CHECK(valid_utf8((const uint8_t *)nj_writer_text(w), nj_writer_length(w)));
    CHECK(nj_parse_object(nj_writer_text(w), nj_writer_length(w), obj, NULL) == NJ_OK);
    v = nj_get(obj, "type");
    CHECK(v && v->type == NJ_STRING && v->len == strlen(type) && memcmp(v->raw, type, v->len) == 0);
    v = nj_get(obj, "id");
    CHECK(v != NULL);
    if (!id || !id->present) {
        CHECK(v->type == NJ_NULL);
        return;
    }
    CHECK(v->type == NJ_STRING);
    n = nj_string_length(v);
    s = (char *)malloc(n + 1);
    CHECK(s != NULL);
    CHECK(nj_string_decode(v, s) == n);
    CHECK(n == id->len && memcmp(s, id->bytes, n) == 0); /* ids are decoded from valid JSON: valid UTF-8 */
    free(s);
}

/* A string member of obj, decoded into a new buffer of *len bytes. */
static char *decoded(const nj_object *obj, const char *key, size_t *len) {
    const nj_value *v = nj_get(obj, key);
    char *s;
    CHECK(v && v->type == NJ_STRING);
    s = (char *)malloc(nj_string_length(v) + 1);
    CHECK(s != NULL);
    *len = nj_string_decode(v, s);
    return s;
}

/* An accepted generate's text is its prompt, after the system text and a
 * line break when the message has a non-empty "system" (with mode instruct). */
static void check_generate_text(const uint8_t *data, size_t size, const wss_request *req) {
    nj_object obj;
    char *prompt, *system = NULL;
    size_t prompt_len, system_len = 0;
    CHECK(nj_parse_object((const char *)data, size, &obj, NULL) == NJ_OK);
    prompt = decoded(&obj, "prompt", &prompt_len);
    if (nj_get(&obj, "system")) {
        CHECK(req->mode == NANO_MODE_INSTRUCT);
        system = decoded(&obj, "system", &system_len);
    }
    if (system_len == 0) {
        CHECK(req->text_len == prompt_len && memcmp(req->text, prompt, prompt_len) == 0);
    } else {
        CHECK(req->text_len == system_len + 1 + prompt_len);
        CHECK(memcmp(req->text, system, system_len) == 0 && req->text[system_len] == '\n');
        CHECK(memcmp(req->text + system_len + 1, prompt, prompt_len) == 0);
    }
    free(prompt);
    free(system);
}

/* A string member of obj decodes to exactly text[0..len). */
static void check_text(const nj_object *obj, const char *key, const char *text, size_t len) {
    const nj_value *v = nj_get(obj, key);
    char *s;
    size_t n;
    CHECK(v && v->type == NJ_STRING);
    n = nj_string_length(v);
    s = (char *)malloc(n + 1);
    CHECK(s != NULL);
    nj_string_decode(v, s);
    CHECK(n == len && memcmp(s, text, n) == 0);
    free(s);
}

static uint64_t take(const uint8_t *data, size_t size, size_t *at) {
    uint64_t x = 0;
    size_t k;
    for (k = 0; k < 8; k++, (*at)++) x = (x << 8) | (*at < size ? data[*at] : 0);
    return x;
}

static double take_double(const uint8_t *data, size_t size, size_t *at) {
    uint64_t u = take(data, size, at);
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

static void put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* A two-token trie section ("a", and "<|eos|>" marked special) for the info
 * reply's tokenizer fields; out has room for 64 bytes. */
static size_t tiny_section(uint8_t *out) {
    static const char *const texts[2] = {"a", "<|eos|>"};
    size_t pos = 8, i, j;
    for (i = 0; i < 2; i++) {
        size_t n = strlen(texts[i]);
        out[pos] = (uint8_t)n;   /* code points */
        out[pos + 1] = (uint8_t)i; /* is_special */
        out[pos + 2] = 0xFF;
        out[pos + 3] = 0xFF;
        put_u32(out + pos + 4, (uint32_t)i); /* id */
        pos += 8;
        for (j = 0; j < n; j++, pos += 4) put_u32(out + pos, (uint32_t)(unsigned char)texts[i][j]);
    }
    put_u32(out, (uint32_t)pos);
    put_u32(out + 4, 2);
    return pos;
}

/* A trie section of the tokens below (code points; STOP_SPECIAL marked special);
 * out has room for 256 bytes. */
#define STOP_VOCAB 8
#define STOP_SPECIAL 7
static size_t stop_section(uint8_t *out) {
    static const uint32_t cps[STOP_VOCAB][8] = {
        {1, 'a'}, {1, 'b'}, {2, 'a', 'b'}, {2, 'b', 'a'}, {1, 0x4E16}, {2, 0x4E16, 0x754C}, {1, 0x1F600},
        {7, '<', '|', 'e', 'o', 's', '|', '>'}};
    size_t pos = 8, i, j;
    for (i = 0; i < STOP_VOCAB; i++) {
        out[pos] = (uint8_t)cps[i][0];
        out[pos + 1] = (uint8_t)(i == STOP_SPECIAL);
        out[pos + 2] = 0xFF;
        out[pos + 3] = 0xFF;
        put_u32(out + pos + 4, (uint32_t)i);
        pos += 8;
        for (j = 1; j <= cps[i][0]; j++, pos += 4) put_u32(out + pos, cps[i][j]);
    }
    put_u32(out, (uint32_t)pos);
    put_u32(out + 4, STOP_VOCAB);
    return pos;
}

/* The offset of the first needle[nn] in hay[hn], or hn + 1. */
static size_t search(const char *hay, size_t hn, const char *needle, size_t nn) {
    size_t i;
    for (i = 0; i + nn <= hn; i++)
        if (memcmp(hay + i, needle, nn) == 0) return i;
    return hn + 1;
}

/* The generate's stop texts: read again from the message, resolved against the
 * small vocabulary, and checked token by token against a search of the whole text. */
static void check_stops(const uint8_t *data, size_t size, const wss_request *req) {
    nj_object obj;
    const nj_value *v;
    nj_value e;
    size_t pos = 0, i;
    uint32_t k, bad = 0, upto_before = 0;
    uint8_t section[256];
    nano_tokenizer *tok = NULL;
    nano_stop_texts *stops = NULL;
    nano_status st;
    int32_t gen[64];
    char text[64 * 28];
    size_t starts[65];
    CHECK(req->n_stop <= WSS_STOP_MAX);
    for (k = 0; k < req->n_stop; k++) {
        size_t n = strlen(req->stop[k]);
        CHECK(n > 0 && n <= WSS_STOP_BYTES && valid_utf8((const uint8_t *)req->stop[k], n));
    }
    CHECK(nj_parse_object((const char *)data, size, &obj, NULL) == NJ_OK);
    v = nj_get(&obj, "stop");
    for (k = 0; v && nj_array_next(v, &pos, &e); k++) {
        char *d;
        CHECK(k < req->n_stop && e.type == NJ_STRING);
        d = (char *)malloc(nj_string_length(&e) + 1);
        CHECK(d != NULL);
        CHECK(nj_string_decode(&e, d) == strlen(req->stop[k]) && strcmp(d, req->stop[k]) == 0);
        free(d);
    }
    CHECK(k == req->n_stop);

    CHECK(nano_tokenizer_init_section(section, stop_section(section), 0, &tok) == NANO_OK);
    st = nano_stop_texts_init(tok, (const char *const *)req->stop, req->n_stop, &stops, &bad);
    if (st != NANO_OK) {
        char missing[WSS_STOP_BYTES + 1];
        size_t n_missing = 0;
        CHECK(st == NANO_ERR_NO_TOKENIZER && bad < req->n_stop && stops == NULL);
        CHECK(nano_stop_texts_missing(tok, req->stop[bad], strlen(req->stop[bad]), missing, sizeof missing,
                                      &n_missing) == NANO_OK);
        CHECK(n_missing <= strlen(req->stop[bad]) && missing[n_missing] == '\0');
        nano_tokenizer_free(tok);
        return;
    }
    /* a token stream from the input's bytes, checked after each token */
    starts[0] = 0;
    for (k = 0; k < 64; k++) {
        uint32_t upto = 0, want;
        int stopped = -1, want_stopped = 0;
        size_t first = SIZE_MAX, c, len;
        const char *t;
        gen[k] = (int32_t)(data[(k * 7u + 3u) % (size ? size : 1)] % STOP_VOCAB);
        if (!size) gen[k] = 0;
        CHECK(nano_tokenizer_token_text(tok, gen[k], &t, &len) == NANO_OK);
        memcpy(text + starts[k], t, len);
        starts[k + 1] = starts[k] + len;
        CHECK(nano_stop_texts_check(stops, gen, k + 1, &upto, &stopped) == NANO_OK);
        /* the reference: the first stop text anywhere in the text (a special token's text is a
         * stop id, which the session handles: not searched) */
        for (i = 0; i < req->n_stop; i++) {
            int32_t id = nano_tokenizer_find(tok, req->stop[i], strlen(req->stop[i]));
            size_t where;
            if (id >= 0 && nano_tokenizer_is_special(tok, id)) continue;
            where = search(text, starts[k + 1], req->stop[i], strlen(req->stop[i]));
            if (where < first) first = where;
        }
        if (first <= starts[k + 1]) {
            want_stopped = 1;
            c = first;
        } else {
            for (c = 0; c < starts[k + 1]; c++) {
                int could = 0;
                if (((unsigned char)text[c] & 0xC0) == 0x80) continue;
                for (i = 0; i < req->n_stop && !could; i++) {
                    int32_t id = nano_tokenizer_find(tok, req->stop[i], strlen(req->stop[i]));
                    if (id >= 0 && nano_tokenizer_is_special(tok, id)) continue;
                    could = starts[k + 1] - c <= strlen(req->stop[i]) &&
                            memcmp(text + c, req->stop[i], starts[k + 1] - c) == 0;
                }
                if (could) break;
            }
        }
        want = 0; /* the tokens that start before c */
        while (want <= k && starts[want] < c) want++;
        CHECK(stopped == want_stopped && upto == want);
        CHECK(upto >= upto_before || stopped);
        upto_before = upto;
        if (stopped) break;
    }
    nano_stop_texts_free(stops);
    nano_tokenizer_free(tok);
}

/* Replies that carry no request text, with numbers from the input. */
static void check_other_replies(const uint8_t *data, size_t size, const wss_id *id) {
    nj_writer w;
    nj_object obj;
    nano_session_stats st;
    static const uint32_t model_types[] = {NANO_MODEL_TYPE_NANO, NANO_MODEL_TYPE_QWEN2, NANO_MODEL_TYPE_QWEN3,
                                           NANO_MODEL_TYPE_LORA, 7};
    static const uint32_t quant_types[] = {NANO_QUANT_TYPE_F32, NANO_QUANT_TYPE_Q8_0, NANO_QUANT_TYPE_Q4K, 5};
    nano_model_info model, lora;
    nano_tokenizer *tok = NULL;
    uint8_t section[64];
    wss_info info;
    size_t at = 0;
    int32_t ids[4];
    uint64_t x = take(data, size, &at);

    nj_writer_init(&w, 16);
    memset(&st, 0, sizeof st);
    st.prompt_tokens = (uint32_t)x;
    st.generated_tokens = (uint32_t)(x >> 32);
    st.unknown_tokens = (uint32_t)(x >> 16);
    st.ttft_ms = take_double(data, size, &at);
    st.prefill_ms = take_double(data, size, &at);
    st.decode_ms = take_double(data, size, &at);
    st.decode_tokens_per_s = take_double(data, size, &at);
    wss_reply_done(&w, id, (uint32_t)(x % 7), &st);
    check_reply(&w, "done", id, &obj);

    memset(&model, 0, sizeof model);
    memset(&lora, 0, sizeof lora);
    memset(&info, 0, sizeof info);
    x = take(data, size, &at);
    model.layout = (x & 1) ? "2026.101" : NULL;
    model.model_type = model_types[(x >> 1) % 5];
    model.quant_type = quant_types[(x >> 4) % 4];
    model.attention = (uint32_t)(x >> 8) % 3;
    model.position = (uint32_t)(x >> 10) % 3;
    model.vocab_size = (uint32_t)(x >> 32);
    model.n_params = take(data, size, &at);
    {
        uint64_t f = take(data, size, &at);
        uint32_t a = (uint32_t)f, b = (uint32_t)(f >> 32);
        memcpy(&model.norm_eps, &a, sizeof a);
        memcpy(&model.rope_theta, &b, sizeof b);
    }
    lora.lora_rank = (uint32_t)x;
    info.model = &model;
    info.lora = (x & 2) ? &lora : NULL;
    /* the tokenizer only reports its kind and sizes here (its parsing is fuzz_tokenizer's) */
    if ((x >> 13) & 1) CHECK(nano_tokenizer_init_section(section, tiny_section(section), 0, &tok) == NANO_OK);
    info.tokenizer = tok;
    info.has_instruct = (int)((x >> 12) & 1);
    info.n_ctx = (uint32_t)take(data, size, &at);
    info.max_message = take(data, size, &at);
    info.idle_timeout_s = take_double(data, size, &at);
    info.threads = (int32_t)take(data, size, &at);
    nj_writer_reset(&w);
    wss_reply_info(&w, id, &info);
    check_reply(&w, "info", id, &obj);
    nano_tokenizer_free(tok);

    ids[0] = (int32_t)x;
    ids[1] = -1;
    ids[2] = INT32_MIN;
    ids[3] = INT32_MAX;
    nj_writer_reset(&w);
    wss_reply_seq2seq(&w, id, (const char *)data, size, ids, 4);
    check_reply(&w, "seq2seq", id, &obj); /* any bytes as output: invalid UTF-8 becomes U+FFFD */
    nj_writer_free(&w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *copy = (char *)malloc(size ? size : 1);
    wss_request req;
    wss_error err;
    nj_writer w;
    nj_object obj;
    int rc;
    if (!copy) return 0;
    if (size) memcpy(copy, data, size);
    rc = wss_parse_request(copy, size, &req, &err);
    /* the request owns what it keeps: nothing may point into the message */
    memset(copy, 0xAA, size);
    free(copy);

    CHECK(rc == 0 || rc == -1);
    CHECK(req.id.len <= WSS_ID_MAX);
    CHECK(req.id.present || req.id.len == 0);
    if (req.id.present) CHECK(valid_utf8((const uint8_t *)req.id.bytes, req.id.len));
    nj_writer_init(&w, 16);
    if (rc != 0) {
        CHECK(known_code(err.code));
        CHECK(memchr(err.message, '\0', sizeof err.message) != NULL && err.message[0] != '\0');
        wss_reply_error(&w, &req.id, err.code, err.message);
        check_reply(&w, "error", &req.id, &obj);
        check_text(&obj, "code", err.code, strlen(err.code));
        if (valid_utf8((const uint8_t *)err.message, strlen(err.message)))
            check_text(&obj, "message", err.message, strlen(err.message));
    } else {
        CHECK(err.code == NULL);
        CHECK(req.kind == WSS_GENERATE || req.kind == WSS_CANCEL || req.kind == WSS_INFO ||
              req.kind == WSS_SEQ2SEQ);
        if (req.kind == WSS_GENERATE || req.kind == WSS_SEQ2SEQ) {
            CHECK(req.text != NULL);
            CHECK(strlen(req.text) == req.text_len);
            CHECK(valid_utf8((const uint8_t *)req.text, req.text_len));
            wss_reply_token(&w, &req.id, 7, req.text, req.text_len);
            check_reply(&w, "token", &req.id, &obj);
            check_text(&obj, "text", req.text, req.text_len);
        } else {
            CHECK(req.text == NULL && req.text_len == 0);
        }
        if (req.kind == WSS_GENERATE) {
            nano_sampler *s = NULL;
            nano_status st = nano_sampler_init(&req.sampler, 8, &s);
            CHECK(req.mode == NANO_MODE_CONTINUE || req.mode == NANO_MODE_INSTRUCT);
            CHECK(st == NANO_OK);
            nano_sampler_free(s);
            check_generate_text(data, size, &req);
            check_stops(data, size, &req);
        } else {
            nano_sampler_params def = nano_sampler_default_params();
            /* field by field: the struct has padding */
            CHECK(req.sampler.temperature == def.temperature && req.sampler.top_k == def.top_k &&
                  req.sampler.top_p == def.top_p && req.sampler.min_p == def.min_p &&
                  req.sampler.repetition_penalty == def.repetition_penalty && req.sampler.seed == def.seed);
            CHECK(!req.has_max_tokens && req.n_stop == 0);
        }
    }
    nj_writer_free(&w);
    check_other_replies(data, size, &req.id);
    wss_request_clear(&req);
    CHECK(req.text == NULL && req.n_stop == 0);
    return 0;
}
