/*
 * protocol.h - nano-wss's JSON messages: requests read and validated into
 * structs, replies written. No libwebsockets and no connection state here;
 * engines/c-core/README.md ("WebSocket protocol") documents every message.
 */
#ifndef NANO_WSS_PROTOCOL_H
#define NANO_WSS_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

#include "json.h"
#include "nano.h"

#define WSS_ID_MAX 128 /* bytes of a client's request id */
#define WSS_STOP_MAX 16    /* texts in a generate's "stop" */
#define WSS_STOP_BYTES 256 /* bytes of one of them */

/* Error codes sent in {"type":"error","code":...}. */
#define WSS_E_BAD_JSON "bad_json"                 /* not JSON, or strings that are not UTF-8 */
#define WSS_E_BAD_MESSAGE "bad_message"           /* JSON, but not a request object (or binary) */
#define WSS_E_MESSAGE_TOO_LARGE "message_too_large"
#define WSS_E_MISSING_FIELD "missing_field"
#define WSS_E_UNKNOWN_TYPE "unknown_type"
#define WSS_E_UNKNOWN_FIELD "unknown_field"
#define WSS_E_BAD_FIELD "bad_field"               /* wrong type or out of range */
#define WSS_E_BUSY "busy"                         /* a generation is running on this connection */
#define WSS_E_NOT_RUNNING "not_running"           /* cancel without a matching generation */
#define WSS_E_PROMPT_TOO_LONG "prompt_too_long"
#define WSS_E_UNSUPPORTED "unsupported"           /* the model cannot do it (no tokenizer, ...) */
#define WSS_E_TOO_MANY_CONNECTIONS "too_many_connections"
#define WSS_E_INTERNAL "internal"

typedef enum wss_kind {
    WSS_GENERATE = 0,
    WSS_CANCEL = 1,
    WSS_INFO = 2,
    WSS_SEQ2SEQ = 3
} wss_kind;

/* A client's request id, echoed in every reply to the request. */
typedef struct wss_id {
    int present;
    size_t len;
    char bytes[WSS_ID_MAX];
} wss_id;

typedef struct wss_request {
    wss_kind kind;
    wss_id id;
    char *text;                  /* generate: prompt (after a "system" text and "\n", if any), seq2seq:
                                    input (owned, NUL-terminated) */
    size_t text_len;
    uint32_t mode;               /* nano_mode */
    nano_sampler_params sampler; /* library defaults for absent fields */
    int has_max_tokens;
    uint32_t max_tokens;
    char *stop[WSS_STOP_MAX];    /* generate: the "stop" texts, each non-empty, without NUL (owned,
                                    NUL-terminated); the vocabulary checks them (nano_stop_texts_init) */
    uint32_t n_stop;
} wss_request;

typedef struct wss_error {
    const char *code;            /* WSS_E_* */
    char message[320];           /* one line; room for a 32-byte field name, every byte escaped */
} wss_error;

/* Read and validate one request. Returns 0, or -1 with *err set (req->id is
 * filled whenever the request carried a valid id, so the error can echo it).
 * Release with wss_request_clear either way. */
int wss_parse_request(const char *text, size_t len, wss_request *req, wss_error *err);
void wss_request_clear(wss_request *req);

/* What an info request reports. */
typedef struct wss_info {
    const nano_model_info *model;
    const nano_model_info *lora;  /* NULL without -l */
    const nano_tokenizer *tokenizer; /* NULL when the model has none */
    int has_instruct;             /* the vocabulary has the instruct template's tokens */
    uint32_t n_ctx, max_tokens_cap, default_max_tokens, max_connections;
    uint64_t max_message;
    double idle_timeout_s;
    int32_t threads;
} wss_info;

/* Replies (each one complete JSON object; check w->failed afterwards). */
void wss_reply_error(nj_writer *w, const wss_id *id, const char *code, const char *message);
void wss_reply_token(nj_writer *w, const wss_id *id, int32_t token, const char *text, size_t len);
void wss_reply_done(nj_writer *w, const wss_id *id, uint32_t stop_reason, const nano_session_stats *stats);
void wss_reply_seq2seq(nj_writer *w, const wss_id *id, const char *text, size_t len, const int32_t *ids,
                       size_t n);
void wss_reply_info(nj_writer *w, const wss_id *id, const wss_info *info);

#endif /* NANO_WSS_PROTOCOL_H */
