/*
 * nano-wss - the Nano engine behind a WebSocket: streaming generation with a
 * JSON protocol (engines/c-core/README.md, "WebSocket protocol").
 *
 * Usage:
 *   nano-wss -m MODEL [-l LORA] [--host ADDR] [--port N] [--threads N] [--ctx N]
 *            [--max-connections N] [--max-message BYTES] [--idle-timeout SECONDS]
 *            [--max-tokens-cap N]
 *   nano-wss --help | --version
 *
 * Design. One libwebsockets event loop on one thread. Every connection owns
 * its nano_context (KV cache) and nano_session; the model (and LoRA) is loaded
 * once and only read, so connections share nothing mutable (reference defect
 * 13 was one global session that concurrent clients overwrote). Generation is
 * cooperative: each SERVER_WRITEABLE callback of a generating connection runs
 * ONE session step and sends that one token, then asks for another callback.
 * The loop therefore interleaves all generating connections a token at a
 * time, reads requests (such as cancel) between tokens, and a client that
 * does not read stops getting steps (backpressure) instead of buffering its
 * whole answer in the server. The first step of a generation runs the prompt
 * (at most --ctx tokens), which is the longest the loop is ever held. A
 * seq2seq request runs the same way: from the connection's next writeable
 * callback, its input paused until the answer is queued, so a client that
 * pipelines many of them gets one evaluation per loop turn like everyone else.
 * --threads is the OpenMP team of each evaluation; since one evaluation runs
 * at a time, N threads never oversubscribe the machine.
 *
 * Connections not yet upgraded (handshakes in progress, idle TCP connects)
 * are counted from accept to close and capped, and so are all TCP
 * connections together, from the file-descriptor limit (raised to what the
 * caps need at startup) and --max-connections: one over a cap is closed as
 * soon as it is accepted, so accept() never meets EMFILE (libwebsockets 4.1
 * would spin on it). A handshake must complete within HANDSHAKE_TIMEOUT_S.
 *
 * Replies other than tokens (errors, info, seq2seq results) wait in a small
 * per-connection queue and are sent before the next token, one frame per
 * writeable callback as libwebsockets requires; a client that floods
 * requests without reading has its input paused until the queue drains.
 *
 * SIGINT/SIGTERM are taken by a sigwait() thread (so no global flag is
 * needed), started before the model loads: once the loop runs it asks the
 * loop to stop, connections are closed with 1001 "server shutting down"
 * (waiting at most a second for slow readers), and everything is freed.
 * Before that (a big model still loading: nothing can interrupt the load, and
 * there is nothing to close) the thread ends the process at once.
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <ctype.h>
#include <netdb.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libwebsockets.h>

#include "../cli/load_report.h" /* the same explanations as nano's for a file that cannot be used */
#include "json.h"
#include "nano.h"
#include "protocol.h"

#define WSS_PROTOCOL_NAME "nano"
#define OUT_QUEUE_PAUSE 16            /* queued replies at which a connection's input is paused */
#define CLOSE_GRACE_S 5               /* seconds a closing connection gets to take its close frame */
#define SHUTDOWN_GRACE_US 1000000     /* how long shutdown waits for clients to take their close */
#define DEFAULT_MAX_TOKENS 256        /* like `nano run` */
#define CLOSE_TRY_AGAIN_LATER 1013    /* RFC 6455 registry; libwebsockets has no name for it */
#define HANDSHAKE_TIMEOUT_S 10        /* a TCP connection has this long to finish the upgrade */
#define MAX_HEADER_BYTES 16384        /* upgrade request headers (a browser's cookies included) */
#define FD_RESERVE 16                 /* descriptors kept back for stdio, the listener, lws' pipe */
#define LOG_REPEAT_WINDOW_NS 1000000000LL /* an identical log line within this is counted, not printed */
#define LOG_LINE_MAX 256

static const char *USAGE =
    "usage: nano-wss -m MODEL [options]\n"
    "\n"
    "Serve a Nano model over WebSocket (JSON protocol: engines/c-core/README.md).\n"
    "\n"
    "  -m, --model PATH          model file (.bin)\n"
    "  -l, --lora PATH           LoRA module attached to every connection's context\n"
    "  --host ADDR               IPv4 or IPv6 address to bind (default 127.0.0.1)\n"
    "  --port N                  TCP port, 0 = any free port (default 8080); the bound\n"
    "                            address is printed as 'listening on HOST:PORT'\n"
    "  --threads N               threads per evaluation (default 1)\n"
    "  --ctx N                   context length per connection (default: the model's block size)\n"
    "  --max-connections N       connections served at once; more are refused with an\n"
    "                            error message and close code 1013 (default 16)\n"
    "  --max-message BYTES       largest request accepted (default 65536)\n"
    "  --idle-timeout SECONDS    close connections idle this long, 0 = never (default 300)\n"
    "  --max-tokens-cap N        largest max_tokens a request may ask for, 0 = no cap (default 0)\n"
    "  -h, --help                this text\n"
    "  --version                 the engine's build\n"
    "\n"
    "example:\n"
    "  nano-wss -m psycho.bin --port 0 --max-tokens-cap 512\n";

// ---------------------------------------------------------------------------
// Server and connection state

typedef struct wss_options {
    const char *model_path, *lora_path, *host;
    int port;
    int32_t threads;
    uint32_t n_ctx;            /* 0 = the model's block size */
    uint32_t max_connections;
    size_t max_message;
    double idle_timeout_s;     /* 0 = never */
    uint32_t max_tokens_cap;   /* 0 = none */
} wss_options;

typedef struct wss_server {
    wss_options opt;
    nano_model *model;         /* shared, read-only */
    nano_lora *lora;           /* shared, read-only; NULL without -l */
    nano_model_info model_info, lora_info;
    wss_info info;             /* what info requests report */
    uint32_t n_ctx;            /* the resolved context length */
    uint32_t default_max_tokens;
    const struct lws_protocols *protocol;
    struct lws_context *lws;
    uint32_t n_admitted;       /* connections holding a slot (<= max_connections) */
    uint32_t n_open;           /* every open WebSocket, refused ones included */
    uint32_t n_tcp;            /* every accepted TCP connection, upgraded or not */
    uint32_t tcp_cap;          /* most TCP connections at once (file-descriptor budget) */
    uint32_t pending_cap;      /* most of them not (yet) upgraded to a WebSocket */
    int shutting_down;
    int shutdown_expired;
    lws_sorted_usec_list_t shutdown_timer;
    pthread_mutex_t lock;      /* guards the three fields below, shared with the signal thread */
    int stop_signal;           /* the signal that asked to stop, or 0 */
    struct lws_context *serving; /* lws while the signal thread may wake it; NULL before and after */
    int finished;              /* main is done: the signal thread's wake-up is not a stop request */
} wss_server;

/* A queued reply: LWS_PRE bytes of headroom, then the text. */
typedef struct out_msg {
    struct out_msg *next;
    size_t len;
    unsigned char data[];      /* [LWS_PRE + len] */
} out_msg;

enum { CLOSE_NONE = 0, CLOSE_REFUSED, CLOSE_IDLE, CLOSE_SHUTDOWN };

/* Per-connection state: libwebsockets allocates it (zeroed) with each
 * connection and hands it to every callback as `user`. */
typedef struct wss_conn {
    int open;                  /* ESTABLISHED seen; what follows must be freed at CLOSED */
    int admitted;              /* holds one of the --max-connections slots */
    int closing;               /* CLOSE_*: close once the queued replies are sent */
    struct lws *wsi;
    /* the message being received (it may arrive in fragments and chunks) */
    char *rx;                  /* [rx_cap] */
    size_t rx_len, rx_cap;
    int rx_active, rx_oversized, rx_binary, rx_paused;
    nj_utf8 utf8;              /* a text message's UTF-8 check, across chunks */
    /* replies waiting for a writeable callback, oldest first */
    out_msg *out_head, *out_tail;
    unsigned n_out;
    nj_writer w;               /* scratch for building frames (LWS_PRE headroom) */
    /* generation */
    nano_context *ctx;         /* created on the first generate or seq2seq */
    nano_session *session;     /* re-created for every generate (sampler settings live in it) */
    int running;
    wss_id run_id;
    nano_stop_texts *stops;    /* the generation's "stop" texts (re-created for every generate), or NULL */
    uint32_t shown;            /* its generated tokens sent so far (the others wait for a stop text) */
    int32_t *ids;              /* [2 * n_ctx] seq2seq input and output */
    int s2s_pending;           /* a seq2seq waits for the next writeable callback (input paused) */
    uint32_t s2s_n;            /* its input: ids[0 .. s2s_n) */
    wss_id s2s_id;
} wss_conn;

// ---------------------------------------------------------------------------
// Sending

static void arm_idle(const wss_server *srv, wss_conn *c) {
    if (srv->opt.idle_timeout_s > 0.0)
        lws_set_timer_usecs(c->wsi, (lws_usec_t)(srv->opt.idle_timeout_s * (double)LWS_USEC_PER_SEC));
}

/* Input is paused while a seq2seq waits to run (so requests are answered in
 * order) and while too many replies are queued; resumed when neither holds. */
static void pause_rx(wss_conn *c) {
    if (c->rx_paused) return;
    lws_rx_flow_control(c->wsi, 0);
    c->rx_paused = 1;
}

static void resume_rx(wss_conn *c) {
    if (!c->rx_paused || c->s2s_pending || c->n_out > OUT_QUEUE_PAUSE / 2) return;
    lws_rx_flow_control(c->wsi, 1);
    c->rx_paused = 0;
}

/* Queue the writer's text as the next reply. Returns -1 when out of memory
 * (the callback then closes the connection: it cannot be answered). */
static int queue_reply(wss_conn *c) {
    size_t len = nj_writer_length(&c->w);
    out_msg *m;
    if (c->w.failed) return -1;
    m = (out_msg *)malloc(sizeof(out_msg) + LWS_PRE + len);
    if (!m) return -1;
    m->next = NULL;
    m->len = len;
    memcpy(m->data + LWS_PRE, nj_writer_text(&c->w), len);
    if (c->out_tail) c->out_tail->next = m;
    else c->out_head = m;
    c->out_tail = m;
    c->n_out++;
    if (c->n_out >= OUT_QUEUE_PAUSE) pause_rx(c);
    lws_callback_on_writable(c->wsi);
    return 0;
}

static int queue_error(wss_conn *c, const wss_id *id, const char *code, const char *message) {
    nj_writer_reset(&c->w);
    wss_reply_error(&c->w, id, code, message);
    return queue_reply(c);
}

static int write_frame(wss_conn *c, unsigned char *text, size_t len) {
    /* libwebsockets buffers what the socket does not take and holds back the
     * next writeable callback until it is sent, so a short count is an error */
    int n = lws_write(c->wsi, text, len, LWS_WRITE_TEXT);
    return n < 0 || (size_t)n < len ? -1 : 0;
}

// ---------------------------------------------------------------------------
// Requests

static nano_status ensure_context(const wss_server *srv, wss_conn *c) {
    nano_context_params cp;
    nano_status st;
    if (c->ctx) return NANO_OK;
    cp = nano_context_default_params();
    cp.n_ctx = srv->n_ctx;
    cp.n_threads = srv->opt.threads;
    cp.attention = NANO_ATTENTION_MODE_FILE;
    st = nano_context_init(srv->model, &cp, &c->ctx);
    if (st == NANO_OK && srv->lora) st = nano_context_set_lora(c->ctx, srv->lora);
    if (st != NANO_OK) {
        nano_context_free(c->ctx);
        c->ctx = NULL;
    }
    return st;
}

static int library_error(wss_conn *c, const wss_id *id, const char *what, nano_status st) {
    char msg[160];
    snprintf(msg, sizeof msg, "%s: %s (%s)", what, nano_status_string(st), nano_status_name(st));
    return queue_error(c, id, WSS_E_INTERNAL, msg);
}

/* The request's text holds a character no token of the vocabulary stands for
 * (NANO_ERR_NO_TOKENIZER from encoding: the vocabulary has no <|unknown|>). */
static int unencodable_error(wss_conn *c, const wss_id *id) {
    return queue_error(c, id, WSS_E_UNSUPPORTED,
                       "the text holds a character that is not in the model's vocabulary, which has no "
                       NANO_SPECIAL_UNKNOWN " token to stand for it");
}

static int busy_error(wss_conn *c, const wss_id *id) {
    return queue_error(c, id, WSS_E_BUSY,
                       "a generation is running on this connection; cancel it or wait for its done message");
}

/* The request's "stop" texts against the vocabulary (nano_stop_texts_init, as
 * `nano run --stop`): a special token's text becomes a stop id, the others are
 * matched on the generated text. Returns 0 with c->stops set; else 1 after
 * queueing the error (a text the vocabulary cannot write could never occur),
 * or -1 when that failed. */
static int resolve_stops(const wss_server *srv, wss_conn *c, const wss_request *req) {
    uint32_t bad = 0;
    size_t len = 0;
    char missing[WSS_STOP_BYTES + 1], msg[3 * WSS_STOP_BYTES];
    nano_status st = nano_stop_texts_init(srv->info.tokenizer, (const char *const *)req->stop, req->n_stop,
                                          &c->stops, &bad);
    if (st == NANO_OK) return 0;
    if (st == NANO_ERR_NO_TOKENIZER) {
        const char *text = req->stop[bad];
        st = nano_stop_texts_missing(srv->info.tokenizer, text, strlen(text), missing, sizeof missing, &len);
        if (st == NANO_OK && len)
            snprintf(msg, sizeof msg, "stop[%u] '%s': can never occur: the vocabulary has no token for '%s'", bad,
                     text, missing);
        else if (st == NANO_OK)
            snprintf(msg, sizeof msg, "stop[%u] '%s': can never occur: the vocabulary cannot write it", bad, text);
        if (st == NANO_OK) return queue_error(c, &req->id, WSS_E_BAD_FIELD, msg) ? -1 : 1;
    }
    return library_error(c, &req->id, "stop", st) ? -1 : 1;
}

static int handle_generate(const wss_server *srv, wss_conn *c, const wss_request *req) {
    nano_session_params sp;
    nano_status st;
    char msg[160];
    int rc;
    uint32_t max_tokens = req->has_max_tokens ? req->max_tokens : srv->default_max_tokens;
    if (c->running) return busy_error(c, &req->id);
    if (!srv->info.tokenizer) return queue_error(c, &req->id, WSS_E_UNSUPPORTED, "the model has no tokenizer");
    if (srv->info.model->attention == NANO_ATTENTION_FULL)
        return queue_error(c, &req->id, WSS_E_UNSUPPORTED,
                           "the model has full attention: send a seq2seq request, not generate");
    if (req->mode == NANO_MODE_INSTRUCT && !srv->info.has_instruct)
        return queue_error(c, &req->id, WSS_E_UNSUPPORTED,
                           "the model's vocabulary has no " NANO_SPECIAL_INSTRUCT " and " NANO_SPECIAL_RESPONSE
                           " tokens");
    if (srv->opt.max_tokens_cap && (max_tokens == 0 || max_tokens > srv->opt.max_tokens_cap)) {
        snprintf(msg, sizeof msg, "max_tokens must be in [1, %u] on this server", srv->opt.max_tokens_cap);
        return queue_error(c, &req->id, WSS_E_BAD_FIELD, msg);
    }
    if (req->mode == NANO_MODE_CONTINUE && req->text_len == 0)
        return queue_error(c, &req->id, WSS_E_BAD_FIELD, "prompt is empty (continue mode needs text)");
    nano_stop_texts_free(c->stops);
    c->stops = NULL;
    if (req->n_stop && (rc = resolve_stops(srv, c, req))) return rc < 0 ? -1 : 0;
    st = ensure_context(srv, c);
    if (st != NANO_OK) return library_error(c, &req->id, "context", st);

    sp = nano_session_default_params();
    sp.sampler = req->sampler;
    sp.max_tokens = max_tokens;
    sp.stop_tokens = nano_stop_texts_ids(c->stops, &sp.n_stop_tokens);
    nano_session_free(c->session);
    c->session = NULL;
    st = nano_session_init(c->ctx, &sp, &c->session);
    if (st == NANO_ERR_BAD_ARGUMENT)
        return queue_error(c, &req->id, WSS_E_BAD_FIELD, "sampler settings out of range");
    if (st != NANO_OK) return library_error(c, &req->id, "session", st);
    st = nano_session_start(c->session, req->text, req->mode);
    if (st == NANO_ERR_CONTEXT_FULL) {
        snprintf(msg, sizeof msg, "the prompt does not fit the context of %u tokens (with room for one more)",
                 srv->n_ctx);
        return queue_error(c, &req->id, WSS_E_PROMPT_TOO_LONG, msg);
    }
    if (st == NANO_ERR_NO_TOKENIZER) return unencodable_error(c, &req->id); /* instruct marks: checked above */
    if (st != NANO_OK) return library_error(c, &req->id, "start", st);
    c->running = 1;
    c->run_id = req->id;
    c->shown = 0;
    lws_callback_on_writable(c->wsi);
    return 0;
}

static int same_id(const wss_id *a, const wss_id *b) {
    return a->present == b->present && a->len == b->len && memcmp(a->bytes, b->bytes, a->len) == 0;
}

static int handle_cancel(wss_conn *c, const wss_request *req) {
    if (!c->running) return queue_error(c, &req->id, WSS_E_NOT_RUNNING, "nothing is running on this connection");
    if (req->id.present && !same_id(&req->id, &c->run_id))
        return queue_error(c, &req->id, WSS_E_NOT_RUNNING, "no generation with this id is running");
    /* no reply of its own: the generation's done message (reason "cancelled") answers it */
    nano_session_cancel(c->session);
    lws_callback_on_writable(c->wsi);
    return 0;
}

static int handle_info(const wss_server *srv, wss_conn *c, const wss_request *req) {
    nj_writer_reset(&c->w);
    wss_reply_info(&c->w, &req->id, &srv->info);
    return queue_reply(c);
}

/* One forward over the input and the argmax at every position (the sort6
 * demo and other seq2seq models); answered in one message, not streamed.
 * Checked and tokenized here; the forward runs from the next writeable
 * callback (run_seq2seq), with the connection's input paused until then. */
static int handle_seq2seq(const wss_server *srv, wss_conn *c, const wss_request *req) {
    const nano_tokenizer *tok = srv->info.tokenizer;
    size_t n = 0;
    char msg[160];
    nano_status st;
    if (c->running) return busy_error(c, &req->id);
    if (!tok) return queue_error(c, &req->id, WSS_E_UNSUPPORTED, "the model has no tokenizer");
    st = ensure_context(srv, c);
    if (st != NANO_OK) return library_error(c, &req->id, "context", st);
    if (!c->ids) {
        c->ids = (int32_t *)malloc(2 * (size_t)srv->n_ctx * sizeof(int32_t));
        if (!c->ids) return library_error(c, &req->id, "seq2seq", NANO_ERR_OUT_OF_MEMORY);
    }
    st = nano_tokenizer_encode(tok, req->text, req->text_len, 0, c->ids, srv->n_ctx, &n);
    if (st == NANO_ERR_BUFFER_TOO_SMALL) {
        snprintf(msg, sizeof msg, "the input is %zu tokens; the context holds %u", n, srv->n_ctx);
        return queue_error(c, &req->id, WSS_E_PROMPT_TOO_LONG, msg);
    }
    if (st == NANO_ERR_NO_TOKENIZER) return unencodable_error(c, &req->id);
    if (st != NANO_OK) return library_error(c, &req->id, "tokenize", st);
    if (n == 0) return queue_error(c, &req->id, WSS_E_BAD_FIELD, "input is empty");
    c->s2s_pending = 1;
    c->s2s_n = (uint32_t)n;
    c->s2s_id = req->id;
    pause_rx(c);
    lws_callback_on_writable(c->wsi);
    return 0;
}

/* The waiting seq2seq: one forward, its reply queued, input resumed. */
static int run_seq2seq(const wss_server *srv, wss_conn *c) {
    const nano_tokenizer *tok = srv->info.tokenizer;
    const wss_id *id = &c->s2s_id;
    size_t n = c->s2s_n, len = 0;
    char *text;
    int rc;
    nano_status st;
    c->s2s_pending = 0;
    st = nano_seq2seq(c->ctx, c->ids, (uint32_t)n, c->ids + srv->n_ctx);
    if (st != NANO_OK) {
        rc = library_error(c, id, "seq2seq", st);
    } else {
        nano_tokenizer_decode(tok, c->ids + srv->n_ctx, n, NULL, 0, &len);
        text = (char *)malloc(len + 1);
        if (!text) {
            rc = library_error(c, id, "seq2seq", NANO_ERR_OUT_OF_MEMORY);
        } else {
            st = nano_tokenizer_decode(tok, c->ids + srv->n_ctx, n, text, len + 1, &len);
            if (st != NANO_OK) {
                rc = library_error(c, id, "decode", st);
            } else {
                nj_writer_reset(&c->w);
                wss_reply_seq2seq(&c->w, id, text, len, c->ids + srv->n_ctx, n);
                rc = queue_reply(c);
            }
            free(text);
        }
    }
    resume_rx(c);
    return rc;
}

static int handle_message(const wss_server *srv, wss_conn *c) {
    wss_request req;
    wss_error err;
    char msg[128];
    int rc;
    if (c->rx_oversized) {
        snprintf(msg, sizeof msg, "a message may be at most %zu bytes", srv->opt.max_message);
        return queue_error(c, NULL, WSS_E_MESSAGE_TOO_LARGE, msg);
    }
    if (c->rx_binary)
        return queue_error(c, NULL, WSS_E_BAD_MESSAGE, "binary messages are not supported; send JSON text");
    if (wss_parse_request(c->rx, c->rx_len, &req, &err) != 0) {
        rc = queue_error(c, &req.id, err.code, err.message);
    } else {
        switch (req.kind) {
        case WSS_GENERATE: rc = handle_generate(srv, c, &req); break;
        case WSS_CANCEL: rc = handle_cancel(c, &req); break;
        case WSS_INFO: rc = handle_info(srv, c, &req); break;
        case WSS_SEQ2SEQ: rc = handle_seq2seq(srv, c, &req); break;
        default: rc = queue_error(c, &req.id, WSS_E_INTERNAL, "unhandled request"); break;
        }
    }
    wss_request_clear(&req);
    return rc;
}

// ---------------------------------------------------------------------------
// Connection events

static int conn_open(wss_server *srv, wss_conn *c, struct lws *wsi) {
    char msg[128];
    memset(c, 0, sizeof *c);
    c->open = 1;
    c->wsi = wsi;
    nj_writer_init(&c->w, LWS_PRE);
    srv->n_open++;
    if (srv->shutting_down) {
        c->closing = CLOSE_SHUTDOWN;
        lws_callback_on_writable(wsi);
        return 0;
    }
    if (srv->n_admitted >= srv->opt.max_connections) {
        /* accepted only to say why: cheap, as nothing is allocated for it */
        c->closing = CLOSE_REFUSED;
        snprintf(msg, sizeof msg, "the server takes at most %u connections; try again later",
                 srv->opt.max_connections);
        lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, CLOSE_GRACE_S);
        return queue_error(c, NULL, WSS_E_TOO_MANY_CONNECTIONS, msg);
    }
    c->admitted = 1;
    srv->n_admitted++;
    arm_idle(srv, c);
    return 0;
}

/* RFC 6455 section 8.1: a text message that is not UTF-8 fails the connection. */
static int fail_utf8(wss_conn *c) {
    static const char why[] = "invalid UTF-8";
    lws_close_reason(c->wsi, LWS_CLOSE_STATUS_INVALID_PAYLOAD, (unsigned char *)why, sizeof why - 1);
    return -1;
}

static int conn_receive(const wss_server *srv, wss_conn *c, const char *in, size_t len) {
    if (!c->open) return -1;
    if (c->closing) return 0; /* input after the decision to close is dropped */
    arm_idle(srv, c);
    if (!c->rx_active) {
        c->rx_active = 1;
        c->rx_len = 0;
        c->rx_oversized = 0;
        c->rx_binary = lws_frame_is_binary(c->wsi);
        c->utf8.need = 0;
    }
    if (!c->rx_binary && nj_utf8_feed(&c->utf8, (const unsigned char *)in, len)) return fail_utf8(c);
    if (!c->rx_oversized) {
        if (len > srv->opt.max_message - c->rx_len) {
            c->rx_oversized = 1; /* the rest is read and dropped; the error follows at the end */
        } else if (len) {
            if (c->rx_len + len > c->rx_cap) {
                size_t cap = c->rx_cap ? c->rx_cap : 1024;
                char *nb;
                while (cap < c->rx_len + len) cap *= 2;
                if (cap > srv->opt.max_message) cap = srv->opt.max_message;
                nb = (char *)realloc(c->rx, cap);
                if (!nb) return -1;
                c->rx = nb;
                c->rx_cap = cap;
            }
            memcpy(c->rx + c->rx_len, in, len);
            c->rx_len += len;
        }
    }
    if (!lws_is_final_fragment(c->wsi) || lws_remaining_packet_payload(c->wsi) > 0) return 0;
    c->rx_active = 0;
    if (!c->rx_binary && c->utf8.need) return fail_utf8(c); /* the message ends inside a character */
    /* input is paused while a seq2seq waits; should libwebsockets still hand
     * over a message, the seq2seq runs first so that replies keep their order */
    if (c->s2s_pending && run_seq2seq(srv, c)) return -1;
    return handle_message(srv, c);
}

/* A reply built in c->w: the callback's one frame when it has not written yet
 * (*wrote), else queued behind it (sent from the next callbacks, before the next step). */
static int send_or_queue(wss_conn *c, int *wrote) {
    if (c->w.failed) return -1;
    if (*wrote) return queue_reply(c);
    *wrote = 1;
    return write_frame(c, (unsigned char *)nj_writer_text(&c->w), nj_writer_length(&c->w));
}

/* The generation's tokens gen[c->shown .. upto), one token message each. */
static int send_tokens(const wss_server *srv, wss_conn *c, const int32_t *gen, uint32_t upto, int *wrote) {
    const char *text;
    size_t len;
    for (; c->shown < upto; c->shown++) {
        if (nano_tokenizer_token_text(srv->info.tokenizer, gen[c->shown], &text, &len) != NANO_OK) {
            text = "";
            len = 0;
        }
        nj_writer_reset(&c->w);
        wss_reply_token(&c->w, &c->run_id, gen[c->shown], text, len);
        if (send_or_queue(c, wrote)) return -1;
    }
    return 0;
}

/* One generation step. The new token is sent as this callback's frame, unless
 * it could begin a stop text: then it waits (nano_stop_texts_check), and goes
 * out with the tokens after it once that is decided (the first as this
 * callback's frame, the others queued). A stop text ends the generation there
 * (reason "stop"); the tokens still waiting at any other end are sent before
 * the done message. generated_tokens counts the tokens sent. */
static int send_step(const wss_server *srv, wss_conn *c) {
    nano_token_event ev;
    nano_session_stats stats;
    nano_status st;
    const int32_t *gen;
    uint32_t n, n_prompt, upto;
    int stopped = 0, wrote = 0;
    memset(&ev, 0, sizeof ev);
    st = nano_session_step(c->session, &ev);
    gen = nano_session_tokens(c->session, &n, &n_prompt) + n_prompt;
    n -= n_prompt;
    upto = n;
    if (st == NANO_OK && !ev.done && c->stops)
        st = nano_stop_texts_check(c->stops, gen, n, &upto, &stopped);
    if (st == NANO_OK && !ev.done && !stopped) return send_tokens(srv, c, gen, upto, &wrote);
    if (st == NANO_OK || (ev.done && st == NANO_ERR_CANCELLED)) {
        /* the end: a stop text, or the session's (the tokens held back never became one) */
        c->running = 0;
        if (send_tokens(srv, c, gen, upto, &wrote)) return -1;
        nano_session_get_stats(c->session, &stats);
        stats.generated_tokens = c->shown;
        nj_writer_reset(&c->w);
        wss_reply_done(&c->w, &c->run_id, stopped ? NANO_STOP_TOKEN : ev.stop_reason, &stats);
        return send_or_queue(c, &wrote);
    } else {
        char msg[160];
        c->running = 0;
        snprintf(msg, sizeof msg, "generation failed: %s (%s)", nano_status_string(st), nano_status_name(st));
        nj_writer_reset(&c->w);
        wss_reply_error(&c->w, &c->run_id, WSS_E_INTERNAL, msg);
        return send_or_queue(c, &wrote);
    }
}

static int close_now(wss_conn *c) {
    const char *why = "server shutting down";
    int code = LWS_CLOSE_STATUS_GOINGAWAY;
    if (c->closing == CLOSE_REFUSED) {
        why = "too many connections";
        code = CLOSE_TRY_AGAIN_LATER;
    } else if (c->closing == CLOSE_IDLE) {
        why = "idle timeout";
    }
    lws_close_reason(c->wsi, (enum lws_close_status)code, (unsigned char *)why, strlen(why));
    return -1; /* libwebsockets sends the close frame and closes */
}

static int conn_writeable(const wss_server *srv, wss_conn *c) {
    if (!c->open) return 0;
    if (srv->shutting_down && !c->closing) c->closing = CLOSE_SHUTDOWN;
    /* one evaluation per writeable callback: a waiting seq2seq (after the
     * replies of earlier requests), whose reply then goes out in this one */
    if (!c->out_head && !c->closing && c->s2s_pending && run_seq2seq(srv, c)) return -1;
    if (c->out_head) {
        out_msg *m = c->out_head;
        int rc;
        c->out_head = m->next;
        if (!c->out_head) c->out_tail = NULL;
        c->n_out--;
        rc = write_frame(c, m->data + LWS_PRE, m->len);
        free(m);
        if (rc) return -1;
        resume_rx(c);
    } else if (c->closing) {
        return close_now(c);
    } else if (c->running) {
        if (send_step(srv, c)) return -1;
    } else {
        return 0;
    }
    if (!c->closing) arm_idle(srv, c);
    if (c->out_head || c->running || c->closing || c->s2s_pending) lws_callback_on_writable(c->wsi);
    return 0;
}

static void conn_idle(wss_conn *c) {
    if (!c->open || c->closing) return;
    c->closing = CLOSE_IDLE;
    /* if the client does not read, the close frame never goes out: drop it then */
    lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, CLOSE_GRACE_S);
    lws_callback_on_writable(c->wsi);
}

static void conn_close(wss_server *srv, wss_conn *c) {
    if (!c || !c->open) return;
    while (c->out_head) {
        out_msg *next = c->out_head->next;
        free(c->out_head);
        c->out_head = next;
    }
    c->out_tail = NULL;
    free(c->rx);
    free(c->ids);
    nj_writer_free(&c->w);
    nano_session_free(c->session);
    nano_stop_texts_free(c->stops);
    nano_context_free(c->ctx);
    if (c->admitted) srv->n_admitted--;
    srv->n_open--;
    memset(c, 0, sizeof *c);
}

/* TCP connections, counted from accept to destroy: a new one over a cap is
 * closed at once (nonzero from the filter callback), so descriptors never
 * run out. The mark in the wsi's opaque pointer says it was counted (the
 * listener and libwebsockets' own pipe are destroyed too, uncounted). */
static int tcp_filter(wss_server *srv) {
    uint32_t pending = srv->n_tcp > srv->n_open ? srv->n_tcp - srv->n_open : 0;
    return srv->n_tcp >= srv->tcp_cap || pending >= srv->pending_cap || srv->shutting_down;
}

static void tcp_counted(wss_server *srv, struct lws *wsi) {
    srv->n_tcp++;
    lws_set_opaque_user_data(wsi, srv);
}

static void tcp_closed(wss_server *srv, struct lws *wsi) {
    if (lws_get_opaque_user_data(wsi) != srv) return;
    lws_set_opaque_user_data(wsi, NULL);
    if (srv->n_tcp) srv->n_tcp--;
}

/* A plain HTTP request (a browser or curl at the server's address): 426 Upgrade
 * Required, with "Upgrade: websocket" as RFC 7231 asks, and a line of text saying
 * what the server is and how to talk to it. */
static int http_request(struct lws *wsi) {
    static const char text[] = "nano-wss is a WebSocket server: connect a WebSocket client (ws://, subprotocol "
                               "nano or none) and send JSON requests such as {\"type\":\"info\"}; "
                               "engines/c-core/README.md describes them\n";
    unsigned char buf[LWS_PRE + 512 + sizeof text], *start = buf + LWS_PRE, *p = start, *end = buf + sizeof buf;
    if (lws_add_http_common_headers(wsi, 426, "text/plain; charset=utf-8", sizeof text - 1, &p, end) ||
        lws_add_http_header_by_name(wsi, (const unsigned char *)"upgrade:", (const unsigned char *)"websocket", 9,
                                    &p, end) ||
        lws_finalize_write_http_header(wsi, start, &p, end))
        return -1;
    memcpy(start, text, sizeof text - 1); /* the headers are written: the buffer is free again */
    if (lws_write(wsi, start, sizeof text - 1, LWS_WRITE_HTTP_FINAL) != (int)(sizeof text - 1)) return -1;
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static int callback_nano(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len) {
    struct lws_context *lc = lws_get_context(wsi);
    wss_server *srv = lc ? (wss_server *)lws_context_user(lc) : NULL;
    wss_conn *c = (wss_conn *)user;
    if (srv) {
        switch (reason) {
        /* `user` is not a connection's state in these two */
        case LWS_CALLBACK_FILTER_NETWORK_CONNECTION: return tcp_filter(srv);
        case LWS_CALLBACK_SERVER_NEW_CLIENT_INSTANTIATED: tcp_counted(srv, wsi); return 0;
        case LWS_CALLBACK_WSI_DESTROY: tcp_closed(srv, wsi); break; /* and the connection's state below */
        default: break;
        }
    }
    if (srv && c) {
        switch (reason) {
        case LWS_CALLBACK_ESTABLISHED: return conn_open(srv, c, wsi);
        case LWS_CALLBACK_RECEIVE: return conn_receive(srv, c, (const char *)in, len);
        case LWS_CALLBACK_SERVER_WRITEABLE: return conn_writeable(srv, c);
        case LWS_CALLBACK_TIMER: conn_idle(c); return 0;
        case LWS_CALLBACK_CLOSED:
        case LWS_CALLBACK_WSI_DESTROY: conn_close(srv, c); return 0; /* whichever comes first */
        default: break;
        }
    }
    if (reason == LWS_CALLBACK_HTTP) return http_request(wsi);
    return lws_callback_http_dummy(wsi, reason, user, in, len); /* housekeeping */
}

// ---------------------------------------------------------------------------
// Signals

static void block_stop_signals(sigset_t *set) {
    sigemptyset(set);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, set, NULL); /* inherited by every thread started later */
}

static void *signal_main(void *arg) {
    wss_server *srv = (wss_server *)arg;
    sigset_t set;
    int sig = 0, finished, serving;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    if (sigwait(&set, &sig) != 0) sig = SIGTERM;
    pthread_mutex_lock(&srv->lock);
    finished = srv->finished;
    serving = srv->serving != NULL;
    if (!finished) srv->stop_signal = sig;
    /* under the lock: main clears `serving` before it destroys the context */
    if (serving) lws_cancel_service(srv->serving); /* documented as safe from another thread */
    pthread_mutex_unlock(&srv->lock);
    if (!finished && !serving) {
        /* still starting (loading the model, say): a load cannot be interrupted
         * and no client is connected yet, so stop here */
        fprintf(stderr, "nano-wss: %s while starting, stopped\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
        _exit(0);
    }
    return NULL;
}

/* The loop's context, now open to the signal thread's wake-up (or NULL: no more). */
static void set_serving(wss_server *srv, struct lws_context *lws) {
    pthread_mutex_lock(&srv->lock);
    srv->serving = lws;
    pthread_mutex_unlock(&srv->lock);
}

/* Started before the model loads (signals are blocked in every other thread). */
static int start_signal_thread(wss_server *srv, pthread_t *waiter) {
    if (pthread_create(waiter, NULL, signal_main, srv) == 0) return 0;
    fprintf(stderr, "nano-wss: error: cannot start the signal thread\n");
    return 1;
}

/* Join the signal thread: it has returned after a stop signal; otherwise it is
 * woken with a SIGTERM that, `finished` being set, it does not take as one. */
static void stop_signal_thread(wss_server *srv, pthread_t waiter) {
    int signalled;
    pthread_mutex_lock(&srv->lock);
    srv->finished = 1;
    srv->serving = NULL;
    signalled = srv->stop_signal != 0;
    pthread_mutex_unlock(&srv->lock);
    if (!signalled) pthread_kill(waiter, SIGTERM);
    pthread_join(waiter, NULL);
}

static int stop_requested(wss_server *srv) {
    int sig;
    pthread_mutex_lock(&srv->lock);
    sig = srv->stop_signal;
    pthread_mutex_unlock(&srv->lock);
    return sig;
}

static void shutdown_expired(lws_sorted_usec_list_t *sul) {
    wss_server *srv = (wss_server *)(void *)((char *)sul - offsetof(wss_server, shutdown_timer));
    srv->shutdown_expired = 1;
}

// ---------------------------------------------------------------------------
// Command line

static int usage_error(const char *fmt, const char *a, const char *b) {
    fprintf(stderr, "nano-wss: error: ");
    fprintf(stderr, fmt, a, b);
    fprintf(stderr, "\n(run 'nano-wss --help' for usage)\n");
    return 2;
}

static int parse_long(const char *opt, const char *v, long lo, long hi, long *out) {
    char *end = NULL;
    long x;
    errno = 0;
    x = strtol(v, &end, 10);
    /* strtol would also take leading spaces and a '+' (as nano's options, these are refused) */
    if (!(isdigit((unsigned char)v[0]) || (v[0] == '-' && isdigit((unsigned char)v[1]))) || errno || !end ||
        *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "nano-wss: error: %s: expected an integer in [%ld, %ld], got '%s'\n"
                        "(run 'nano-wss --help' for usage)\n", opt, lo, hi, v);
        return 2;
    }
    *out = x;
    return 0;
}

/* 0: options read; 1: help or version printed (exit 0); 2: a usage error (printed). */
static int parse_args(int argc, char **argv, wss_options *o) {
    int i;
    long x;
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1";
    o->port = 8080;
    o->threads = 1;
    o->max_connections = 16;
    o->max_message = 65536;
    o->idle_timeout_s = 300.0;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        int takes_value = strcmp(a, "-m") == 0 || strcmp(a, "--model") == 0 || strcmp(a, "-l") == 0 ||
                          strcmp(a, "--lora") == 0 || strcmp(a, "--host") == 0 || strcmp(a, "--port") == 0 ||
                          strcmp(a, "--threads") == 0 || strcmp(a, "--ctx") == 0 ||
                          strcmp(a, "--max-connections") == 0 || strcmp(a, "--max-message") == 0 ||
                          strcmp(a, "--idle-timeout") == 0 || strcmp(a, "--max-tokens-cap") == 0;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(USAGE, stdout);
            return 1;
        }
        if (strcmp(a, "--version") == 0) {
            printf("nano-wss (%s; libwebsockets %s)\n", nano_build_info(), lws_get_library_version());
            return 1;
        }
        if (!takes_value) return usage_error("unknown option '%s'%s", a, "");
        if (i + 1 >= argc) return usage_error("%s: missing value%s", a, "");
        v = argv[++i];
        if (strcmp(a, "-m") == 0 || strcmp(a, "--model") == 0) {
            o->model_path = v;
        } else if (strcmp(a, "-l") == 0 || strcmp(a, "--lora") == 0) {
            o->lora_path = v;
        } else if (strcmp(a, "--host") == 0) {
            unsigned char addr[16];
            if (inet_pton(AF_INET, v, addr) != 1 && inet_pton(AF_INET6, v, addr) != 1)
                return usage_error("--host: expected an IPv4 or IPv6 address, got '%s'%s", v, "");
            o->host = v;
        } else if (strcmp(a, "--port") == 0) {
            if (parse_long(a, v, 0, 65535, &x)) return 2;
            o->port = (int)x;
        } else if (strcmp(a, "--threads") == 0) {
            if (parse_long(a, v, 1, NANO_MAX_THREADS, &x)) return 2;
            o->threads = (int32_t)x;
        } else if (strcmp(a, "--ctx") == 0) {
            if (parse_long(a, v, 1, 1L << 30, &x)) return 2;
            o->n_ctx = (uint32_t)x;
        } else if (strcmp(a, "--max-connections") == 0) {
            if (parse_long(a, v, 1, 100000, &x)) return 2;
            o->max_connections = (uint32_t)x;
        } else if (strcmp(a, "--max-message") == 0) {
            if (parse_long(a, v, 64, 1L << 26, &x)) return 2;
            o->max_message = (size_t)x;
        } else if (strcmp(a, "--max-tokens-cap") == 0) {
            if (parse_long(a, v, 0, 1L << 30, &x)) return 2; /* a request's max_tokens is at most 2^30 */
            o->max_tokens_cap = (uint32_t)x;
        } else { /* --idle-timeout: seconds, fractions allowed */
            char *end = NULL;
            double d;
            errno = 0;
            d = strtod(v, &end);
            /* decimal only: strtod would also take leading spaces, a sign and hexadecimal (0x10) */
            if (!(isdigit((unsigned char)v[0]) || v[0] == '.') || strpbrk(v, "xX") || errno || !end || *end ||
                end == v || !(d >= 0.0 && d <= 86400.0))
                return usage_error("--idle-timeout: expected seconds in [0, 86400], got '%s'%s", v, "");
            o->idle_timeout_s = d;
        }
    }
    if (!o->model_path) return usage_error("-m MODEL is required%s%s", "", "");
    return 0;
}

// ---------------------------------------------------------------------------
// Startup and the loop

static int model_error(const char *path, const char *what, nano_status st) {
    fprintf(stderr, "nano-wss: error: %s: %s%s (%s)\n", path, what, nano_status_string(st), nano_status_name(st));
    return 1;
}


/* Load the model (and LoRA) and check, with one trial context, that the
 * engine runs it with these settings, so that no client finds out later. */
static int load(wss_server *srv) {
    const wss_options *o = &srv->opt;
    nano_model_params mp = nano_model_default_params();
    nano_context_params cp = nano_context_default_params();
    nano_context *trial = NULL;
    const nano_tokenizer *tok;
    char detail[256];
    nano_status st;
    mp.error_detail = detail;
    mp.error_detail_size = sizeof detail;
    st = nano_model_load_file(o->model_path, &mp, &srv->model);
    if (st != NANO_OK) return nano_report_load("nano-wss", st, o->model_path, detail, 0);
    nano_model_get_info(srv->model, &srv->model_info);
    if (srv->model_info.model_type == NANO_MODEL_TYPE_LORA)
        return nano_report_lora_as_model("nano-wss", o->model_path, 1);
    if (!srv->model_info.runnable)
        return model_error(o->model_path, "this engine does not run this file: ", NANO_ERR_UNSUPPORTED);
    if (o->n_ctx > srv->model_info.block_size) {
        fprintf(stderr, "nano-wss: error: --ctx %u exceeds the model's block size %u\n", o->n_ctx,
                srv->model_info.block_size);
        return 2;
    }
    if (o->lora_path) {
        st = nano_lora_load_file(o->lora_path, &mp, &srv->lora);
        if (st != NANO_OK) return nano_report_load("nano-wss", st, o->lora_path, detail, 1);
        nano_lora_get_info(srv->lora, &srv->lora_info);
    }
    cp.n_ctx = o->n_ctx;
    cp.n_threads = o->threads;
    st = nano_context_init(srv->model, &cp, &trial);
    if (st != NANO_OK) return model_error(o->model_path, "", st);
    if (srv->lora) st = nano_context_set_lora(trial, srv->lora);
    srv->n_ctx = nano_context_n_ctx(trial);
    nano_context_free(trial);
    if (st == NANO_ERR_LORA_MISMATCH) return nano_report_lora_mismatch("nano-wss", o->lora_path, srv->model, srv->lora);
    if (st != NANO_OK) return model_error(o->lora_path, "", st);

    tok = nano_model_tokenizer(srv->model);
    srv->info.model = &srv->model_info;
    srv->info.lora = srv->lora ? &srv->lora_info : NULL;
    srv->info.tokenizer = tok;
    if (tok && nano_tokenizer_get_kind(tok) == NANO_TOKENIZER_KIND_TRIE) {
        int32_t a = nano_tokenizer_find(tok, NANO_SPECIAL_INSTRUCT, sizeof(NANO_SPECIAL_INSTRUCT) - 1);
        int32_t b = nano_tokenizer_find(tok, NANO_SPECIAL_RESPONSE, sizeof(NANO_SPECIAL_RESPONSE) - 1);
        srv->info.has_instruct = a >= 0 && b >= 0 && nano_tokenizer_is_special(tok, a) &&
                                 nano_tokenizer_is_special(tok, b);
    }
    srv->default_max_tokens = DEFAULT_MAX_TOKENS;
    if (o->max_tokens_cap && o->max_tokens_cap < srv->default_max_tokens)
        srv->default_max_tokens = o->max_tokens_cap;
    srv->info.n_ctx = srv->n_ctx;
    srv->info.max_tokens_cap = o->max_tokens_cap;
    srv->info.default_max_tokens = srv->default_max_tokens;
    srv->info.max_connections = o->max_connections;
    srv->info.max_message = o->max_message;
    srv->info.idle_timeout_s = o->idle_timeout_s;
    srv->info.threads = o->threads;
    return 0;
}

/* The one piece of process-wide state: libwebsockets 4.1's log callback
 * takes no user pointer, so the repeat counter of log_lws cannot live in
 * wss_server. Only the loop's thread logs through it. */
static struct {
    char last[LOG_LINE_MAX];   /* the last line printed */
    long long since_ns;        /* when it was printed */
    unsigned long repeats;     /* identical lines since then, not printed */
} log_state;

static long long monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void log_flush_repeats(void) {
    if (!log_state.repeats) return;
    fprintf(stderr, "nano-wss: libwebsockets: (the line above repeated %lu more times)\n", log_state.repeats);
    log_state.repeats = 0;
}

/* libwebsockets' own error lines (a failed bind says why), tagged as ours
 * and without its timestamp. A line identical to the last one within
 * LOG_REPEAT_WINDOW_NS is only counted (accept() failing in a loop would
 * otherwise write megabytes a second); the count is printed with the next
 * different line, or when the window has passed and the line comes again. */
static void log_lws(int level, const char *line) {
    const char *text = strstr(line, "] ");
    long long now = monotonic_ns();
    (void)level;
    text = text ? text + 2 : line;
    if (text[0] && text[1] == ':' && text[2] == ' ') text += 3; /* the level letter, "E: " */
    if (strncmp(text, log_state.last, sizeof log_state.last - 1) == 0 && log_state.last[0] &&
        now - log_state.since_ns < LOG_REPEAT_WINDOW_NS) {
        log_state.repeats++;
        return;
    }
    log_flush_repeats();
    snprintf(log_state.last, sizeof log_state.last, "%s", text);
    log_state.since_ns = now;
    fprintf(stderr, "nano-wss: libwebsockets: %s", text);
}

/* The descriptor budget: the soft RLIMIT_NOFILE is raised (up to the hard
 * limit, quietly; a failure leaves it as it was) to what the connection caps
 * want, and the caps then shrink to what the limit allows. */
static void set_connection_caps(wss_server *srv) {
    struct rlimit rl;
    uint64_t want_tcp = 2 * (uint64_t)srv->opt.max_connections + 32, fds = 1024;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rlim_t want = (rlim_t)(want_tcp + FD_RESERVE);
        if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
            struct rlimit raised = rl;
            raised.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
            if (setrlimit(RLIMIT_NOFILE, &raised) == 0) rl = raised;
        }
        fds = rl.rlim_cur == RLIM_INFINITY ? want_tcp + FD_RESERVE : (uint64_t)rl.rlim_cur;
    }
    srv->tcp_cap = (uint32_t)(fds > want_tcp + FD_RESERVE ? want_tcp : fds > FD_RESERVE + 2 ? fds - FD_RESERVE : 2);
    srv->pending_cap = srv->tcp_cap / 2;
}

/* Why host:port cannot be listened on, as the system says it for a socket of our own
 * bound there ("Address already in use", "Cannot assign requested address"); NULL
 * when that bind succeeds (the reason is then libwebsockets' own). */
static const char *bind_failure(const char *host, int port) {
    struct addrinfo hints, *ai = NULL;
    char service[16];
    const char *why = NULL;
    int fd, one = 1, gai;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(service, sizeof service, "%d", port);
    gai = getaddrinfo(host, service, &hints, &ai);
    if (gai != 0) return gai_strerror(gai);
    fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (fd < 0) why = strerror(errno);
    else {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one); /* as libwebsockets does */
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0) why = strerror(errno);
        close(fd);
    }
    freeaddrinfo(ai);
    return why;
}

static int listen_and_serve(wss_server *srv) {
    struct lws_protocols protocols[2];
    struct lws_context_creation_info ci;
    struct lws_vhost *vh;
    int ipv6 = strchr(srv->opt.host, ':') != NULL;
    int port, failed = 0;

    memset(protocols, 0, sizeof protocols);
    protocols[0].name = WSS_PROTOCOL_NAME;
    protocols[0].callback = callback_nano;
    protocols[0].per_session_data_size = sizeof(wss_conn);
    srv->protocol = &protocols[0];

    set_connection_caps(srv);
    lws_set_log_level(LLL_ERR, log_lws);
    memset(&ci, 0, sizeof ci);
    ci.options = LWS_SERVER_OPTION_EXPLICIT_VHOSTS;
    ci.max_http_header_data = MAX_HEADER_BYTES;
    ci.timeout_secs = HANDSHAKE_TIMEOUT_S;
    ci.timeout_secs_ah_idle = HANDSHAKE_TIMEOUT_S;
    ci.gid = -1;
    ci.uid = -1;
    ci.user = srv;
    srv->lws = lws_create_context(&ci);
    if (!srv->lws) {
        fprintf(stderr, "nano-wss: error: cannot create the libwebsockets context\n");
        return 1;
    }
    set_serving(srv, srv->lws);
    memset(&ci, 0, sizeof ci);
    /* not LWS_SERVER_OPTION_VALIDATE_UTF8: libwebsockets 4.1.6 then also
     * fails a connection over a ping or pong between two fragments of a text
     * message; conn_receive checks text messages itself */
    ci.options = LWS_SERVER_OPTION_FAIL_UPON_UNABLE_TO_BIND | (ipv6 ? 0 : LWS_SERVER_OPTION_DISABLE_IPV6);
    ci.timeout_secs = HANDSHAKE_TIMEOUT_S;
    ci.timeout_secs_ah_idle = HANDSHAKE_TIMEOUT_S;
    ci.port = srv->opt.port;
    ci.iface = srv->opt.host;
    ci.protocols = protocols;
    ci.vhost_name = "nano-wss";
    ci.gid = -1;
    ci.uid = -1;
    ci.user = srv;
    lws_set_log_level(0, log_lws); /* a failed bind is said below, once, not in libwebsockets' three lines */
    vh = lws_create_vhost(srv->lws, &ci);
    lws_set_log_level(LLL_ERR, log_lws);
    if (!vh) {
        const char *why = bind_failure(srv->opt.host, srv->opt.port);
        fprintf(stderr, "nano-wss: error: cannot listen on %s%s%s:%d (%s)\n", ipv6 ? "[" : "", srv->opt.host,
                ipv6 ? "]" : "", srv->opt.port, why ? why : "in use, or not an address of this machine");
        set_serving(srv, NULL);
        lws_context_destroy(srv->lws);
        srv->lws = NULL;
        return 1;
    }
    port = lws_get_vhost_listen_port(vh);
    printf("listening on %s%s%s:%d\n", ipv6 ? "[" : "", srv->opt.host, ipv6 ? "]" : "", port);
    fflush(stdout);

    while (!stop_requested(srv))
        if (lws_service(srv->lws, 0) < 0) {
            failed = 1;
            break;
        }

    /* close every connection with 1001, giving readers a moment to take it */
    srv->shutting_down = 1;
    if (srv->n_open) {
        lws_callback_on_writable_all_protocol(srv->lws, srv->protocol);
        lws_sul_schedule(srv->lws, 0, &srv->shutdown_timer, shutdown_expired, SHUTDOWN_GRACE_US);
        while (srv->n_open && !srv->shutdown_expired)
            if (lws_service(srv->lws, 0) < 0) break;
        lws_sul_cancel(&srv->shutdown_timer);
    }
    set_serving(srv, NULL);
    lws_context_destroy(srv->lws); /* closes what is left; CLOSED frees each connection */
    srv->lws = NULL;
    log_flush_repeats();
    if (failed) {
        fprintf(stderr, "nano-wss: error: the event loop failed\n");
        return 1;
    }
    fprintf(stderr, "nano-wss: %s, stopped\n", stop_requested(srv) == SIGINT ? "SIGINT" : "SIGTERM");
    return 0;
}

int main(int argc, char **argv) {
    wss_server srv;
    sigset_t stop_set;
    pthread_t waiter;
    int rc;
    memset(&srv, 0, sizeof srv);
    rc = parse_args(argc, argv, &srv.opt);
    if (rc == 1 && (fflush(stdout) != 0 || ferror(stdout))) { /* --help or --version not written */
        fprintf(stderr, "nano-wss: error: writing standard output: %s\n", errno ? strerror(errno) : "write error");
        return 1;
    }
    if (rc) return rc == 1 ? 0 : rc;
    /* before any thread exists (OpenMP's included), so only the waiter takes them */
    block_stop_signals(&stop_set);
    signal(SIGPIPE, SIG_IGN); /* a client gone mid-write is an error return, not a kill */
    pthread_mutex_init(&srv.lock, NULL);
    if (start_signal_thread(&srv, &waiter)) {
        pthread_mutex_destroy(&srv.lock);
        return 1;
    }
    rc = load(&srv);
    if (rc == 0) rc = listen_and_serve(&srv);
    stop_signal_thread(&srv, waiter);
    nano_lora_free(srv.lora);
    nano_model_free(srv.model);
    pthread_mutex_destroy(&srv.lock);
    return rc;
}
