/*
 * json.h - a small, strict JSON reader and writer for nano-wss's protocol.
 *
 * Reader: the server's requests are flat objects of scalars, so the reader
 * validates a whole document (RFC 8259 grammar, UTF-8 in strings, a depth
 * limit so hostile nesting cannot exhaust the stack) and records only the
 * top-level object's members, as views into the caller's text. Nothing is
 * allocated.
 *
 *     nj_object obj;
 *     size_t at;
 *     if (nj_parse_object(text, len, &obj, &at) == NJ_OK) {
 *         const nj_value *v = nj_get(&obj, "prompt");
 *         ...
 *     }
 *
 * Writer: appends to one growable buffer that keeps `headroom` bytes free in
 * front of the text (libwebsockets needs LWS_PRE bytes there). Strings are
 * escaped; bytes that are not valid UTF-8 are written as U+FFFD so a frame is
 * always valid UTF-8 text. A failed allocation sets `failed` and turns later
 * calls into no-ops, so a message is built first and checked once.
 */
#ifndef NANO_WSS_JSON_H
#define NANO_WSS_JSON_H

#include <stddef.h>
#include <stdint.h>

#define NJ_MAX_DEPTH 32   /* nesting levels accepted anywhere in a document */
#define NJ_MAX_MEMBERS 32 /* members of the top-level object */
#define NJ_KEY_MAX 32     /* decoded key bytes kept (longer keys are only flagged) */

/* UTF-8 checked as it arrives (RFC 3629: no overlong forms, no surrogates,
 * nothing above U+10FFFF), the one rule of the reader, the writer and the
 * server's text frames. The state carries a character split across chunks;
 * start from {0}. nj_utf8_feed returns 0 while s[0..n) goes on well-formed,
 * -1 at a bad byte; `need` > 0 afterwards: a character is unfinished. */
typedef struct nj_utf8 {
    unsigned char need, lo, hi; /* continuation bytes still due, the next one's range */
} nj_utf8;

int nj_utf8_feed(nj_utf8 *u, const unsigned char *s, size_t n);

typedef enum nj_type {
    NJ_NULL = 0,
    NJ_FALSE,
    NJ_TRUE,
    NJ_NUMBER,
    NJ_STRING,
    NJ_ARRAY,
    NJ_OBJECT
} nj_type;

typedef enum nj_status {
    NJ_OK = 0,
    NJ_ERR_SYNTAX,          /* not JSON */
    NJ_ERR_UTF8,            /* a string holds bytes that are not UTF-8 */
    NJ_ERR_DEPTH,           /* nested deeper than NJ_MAX_DEPTH */
    NJ_ERR_NOT_OBJECT,      /* valid JSON whose top level is not an object */
    NJ_ERR_TOO_MANY_MEMBERS,/* more than NJ_MAX_MEMBERS top-level members */
    NJ_ERR_DUPLICATE_KEY,   /* a top-level key appears twice */
    NJ_ERR_TYPE,            /* conversions: the value has another type */
    NJ_ERR_NOT_INTEGER,     /* conversions: a fraction or exponent in an integer field */
    NJ_ERR_RANGE            /* conversions: outside the target type */
} nj_status;

/* A view of one value in the parsed text. For strings, raw/len is the
 * escaped text between the quotes; for numbers, the literal; otherwise the
 * whole value. */
typedef struct nj_value {
    nj_type type;
    const char *raw;
    size_t len;
} nj_value;

typedef struct nj_member {
    char key[NJ_KEY_MAX + 1]; /* decoded and NUL-terminated; empty when too long */
    size_t key_len;           /* decoded length (also when too long) */
    int key_too_long;
    nj_value value;
} nj_member;

typedef struct nj_object {
    nj_member members[NJ_MAX_MEMBERS];
    size_t n;
} nj_object;

/* Parse a complete document that must be one object. *err_at (may be NULL)
 * receives the byte offset of a syntax or UTF-8 error. */
nj_status nj_parse_object(const char *text, size_t len, nj_object *out, size_t *err_at);

/* The member named key, or NULL. */
const nj_value *nj_get(const nj_object *obj, const char *key);

/* The elements of an array value of a parsed document, one per call: start
 * with *pos 0; returns 1 with the next element in *out (a view, as nj_get's),
 * 0 after the last one (or for a value that is not an array). */
int nj_array_next(const nj_value *array, size_t *pos, nj_value *out);

/* Decoded length in bytes of a string value (NJ_STRING only). */
size_t nj_string_length(const nj_value *v);
/* Decode a string value into out, which has room for nj_string_length(v) + 1
 * bytes; the result is NUL-terminated (and may itself contain NUL bytes from
 * \u0000 escapes). Returns the decoded length. */
size_t nj_string_decode(const nj_value *v, char *out);

/* Number conversions. Integers must be written without fraction or exponent. */
nj_status nj_number_double(const nj_value *v, double *out);
nj_status nj_number_u64(const nj_value *v, uint64_t *out);

/* ---- writer ---- */

typedef struct nj_writer {
    char *buf;       /* [cap]: headroom bytes, then the text */
    size_t len;      /* bytes used, headroom included */
    size_t cap;
    size_t headroom;
    int failed;      /* an allocation failed; the text is incomplete */
} nj_writer;

void nj_writer_init(nj_writer *w, size_t headroom);
void nj_writer_free(nj_writer *w);
/* Start a new text (keeps the buffer). */
void nj_writer_reset(nj_writer *w);
/* The text (after the headroom) and its length. */
char *nj_writer_text(const nj_writer *w);
size_t nj_writer_length(const nj_writer *w);

/* Append literal JSON (the caller writes punctuation and keys this way). */
void nj_raw(nj_writer *w, const char *s);
/* Append a quoted, escaped string of n bytes. */
void nj_str(nj_writer *w, const char *s, size_t n);
void nj_cstr(nj_writer *w, const char *s);
void nj_u64(nj_writer *w, uint64_t v);
void nj_i64(nj_writer *w, int64_t v);
void nj_bool(nj_writer *w, int v);
/* A finite double: decimals >= 0 digits after the point ("%.*f"), or
 * -decimals significant digits when decimals < 0 ("%.*g", e.g. -7 for a
 * float32 value; 17 when fewer would round past DBL_MAX, which reads back as
 * infinity); non-finite values are written as null (JSON has no NaN). */
void nj_double(nj_writer *w, double v, int decimals);

#endif /* NANO_WSS_JSON_H */
