/*
 * json.c - the strict JSON reader and the escaping writer of json.h.
 */
#include "json.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------
// UTF-8

int nj_utf8_feed(nj_utf8 *u, const unsigned char *s, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char b = s[i];
        if (u->need) {
            if (b < u->lo || b > u->hi) return -1;
            u->need--;
            u->lo = 0x80;
            u->hi = 0xBF;
            continue;
        }
        if (b < 0x80) continue;
        u->lo = 0x80;
        u->hi = 0xBF;
        if (b >= 0xC2 && b <= 0xDF) u->need = 1;
        else if (b >= 0xE0 && b <= 0xEF) u->need = 2;
        else if (b >= 0xF0 && b <= 0xF4) u->need = 3;
        else return -1;
        if (b == 0xE0) u->lo = 0xA0;      /* overlong */
        else if (b == 0xED) u->hi = 0x9F; /* surrogates */
        else if (b == 0xF0) u->lo = 0x90; /* overlong */
        else if (b == 0xF4) u->hi = 0x8F; /* over U+10FFFF */
    }
    return 0;
}

/* The length of the well-formed UTF-8 sequence at s[i] (s[i] >= 0x80), or 0
 * when it is not one (nj_utf8_feed's rule). */
static size_t utf8_sequence(const unsigned char *s, size_t n, size_t i) {
    nj_utf8 u = {0, 0, 0};
    size_t k = i;
    do {
        if (k == n || nj_utf8_feed(&u, s + k, 1)) return 0;
        k++;
    } while (u.need);
    return k - i;
}

static size_t utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

// ---------------------------------------------------------------------------
// Reader

typedef struct parser {
    const char *s;
    size_t n, i;
    size_t err_at;
    nj_status deferred; /* a member-level problem, reported if the syntax is fine */
} parser;

static nj_status fail(parser *p, nj_status st) {
    p->err_at = p->i;
    return st;
}

static void skip_ws(parser *p) {
    while (p->i < p->n) {
        char c = p->s[p->i];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->i++;
    }
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Four hex digits at s[at]; -1 when there are not four. */
static long hex4(const char *s, size_t n, size_t at) {
    long v = 0;
    size_t k;
    if (n < 4 || at > n - 4) return -1;
    for (k = 0; k < 4; k++) {
        int d = hex_digit(s[at + k]);
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* p->s[p->i] is the opening quote. */
static nj_status parse_string(parser *p, nj_value *out) {
    const unsigned char *u = (const unsigned char *)p->s;
    size_t start = ++p->i;
    for (;;) {
        unsigned c;
        if (p->i >= p->n) return fail(p, NJ_ERR_SYNTAX);
        c = u[p->i];
        if (c == '"') {
            out->type = NJ_STRING;
            out->raw = p->s + start;
            out->len = p->i - start;
            p->i++;
            return NJ_OK;
        }
        if (c < 0x20) return fail(p, NJ_ERR_SYNTAX); /* control characters must be escaped */
        if (c == '\\') {
            if (++p->i >= p->n) return fail(p, NJ_ERR_SYNTAX);
            switch (p->s[p->i]) {
            case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
                p->i++;
                break;
            case 'u': {
                long hi = hex4(p->s, p->n, p->i + 1), lo;
                if (hi < 0) return fail(p, NJ_ERR_SYNTAX);
                p->i += 5;
                if (hi >= 0xDC00 && hi <= 0xDFFF) return fail(p, NJ_ERR_UTF8); /* a lone low surrogate */
                if (hi >= 0xD800 && hi <= 0xDBFF) {
                    /* a high surrogate must be followed by an escaped low one */
                    if (p->i + 1 >= p->n || p->s[p->i] != '\\' || p->s[p->i + 1] != 'u')
                        return fail(p, NJ_ERR_UTF8);
                    lo = hex4(p->s, p->n, p->i + 2);
                    if (lo < 0) return fail(p, NJ_ERR_SYNTAX);
                    if (lo < 0xDC00 || lo > 0xDFFF) return fail(p, NJ_ERR_UTF8);
                    p->i += 6;
                }
                break;
            }
            default:
                return fail(p, NJ_ERR_SYNTAX);
            }
            continue;
        }
        if (c >= 0x80) {
            size_t k = utf8_sequence(u, p->n, p->i);
            if (!k) return fail(p, NJ_ERR_UTF8);
            p->i += k;
            continue;
        }
        p->i++;
    }
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static nj_status parse_number(parser *p, nj_value *out) {
    size_t start = p->i;
    const char *s = p->s;
    if (p->i < p->n && s[p->i] == '-') p->i++;
    if (p->i >= p->n || !is_digit(s[p->i])) return fail(p, NJ_ERR_SYNTAX);
    if (s[p->i] == '0') p->i++;
    else
        while (p->i < p->n && is_digit(s[p->i])) p->i++;
    if (p->i < p->n && s[p->i] == '.') {
        p->i++;
        if (p->i >= p->n || !is_digit(s[p->i])) return fail(p, NJ_ERR_SYNTAX);
        while (p->i < p->n && is_digit(s[p->i])) p->i++;
    }
    if (p->i < p->n && (s[p->i] == 'e' || s[p->i] == 'E')) {
        p->i++;
        if (p->i < p->n && (s[p->i] == '+' || s[p->i] == '-')) p->i++;
        if (p->i >= p->n || !is_digit(s[p->i])) return fail(p, NJ_ERR_SYNTAX);
        while (p->i < p->n && is_digit(s[p->i])) p->i++;
    }
    out->type = NJ_NUMBER;
    out->raw = s + start;
    out->len = p->i - start;
    return NJ_OK;
}

static nj_status parse_literal(parser *p, const char *word, nj_type type, nj_value *out) {
    size_t k = strlen(word);
    if (p->n - p->i < k || memcmp(p->s + p->i, word, k) != 0) return fail(p, NJ_ERR_SYNTAX);
    out->type = type;
    out->raw = p->s + p->i;
    out->len = k;
    p->i += k;
    return NJ_OK;
}

/* Decode an already validated string body; out may be NULL to measure. */
static size_t decode_string(const char *raw, size_t len, char *out) {
    size_t i = 0, o = 0;
    char tmp[4];
    while (i < len) {
        char c = raw[i];
        if (c != '\\') {
            if (out) out[o] = c;
            o++;
            i++;
            continue;
        }
        c = raw[i + 1];
        i += 2;
        switch (c) {
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;
        case 'u': {
            uint32_t cp = (uint32_t)hex4(raw, len, i);
            size_t k;
            i += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                uint32_t lo = (uint32_t)hex4(raw, len, i + 2);
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                i += 6;
            }
            k = utf8_encode(cp, out ? out + o : tmp);
            o += k;
            continue;
        }
        default: break; /* '"', '\\', '/' stand for themselves */
        }
        if (out) out[o] = c;
        o++;
    }
    return o;
}

static void record_member(parser *p, nj_object *rec, const nj_value *key, const nj_value *val) {
    nj_member *m;
    size_t k;
    if (p->deferred != NJ_OK) return;
    if (rec->n >= NJ_MAX_MEMBERS) {
        p->deferred = NJ_ERR_TOO_MANY_MEMBERS;
        return;
    }
    m = &rec->members[rec->n];
    m->key_len = decode_string(key->raw, key->len, NULL);
    m->key_too_long = m->key_len > NJ_KEY_MAX;
    m->key[0] = '\0';
    if (!m->key_too_long) {
        decode_string(key->raw, key->len, m->key);
        m->key[m->key_len] = '\0';
        for (k = 0; k < rec->n; k++) {
            const nj_member *o = &rec->members[k];
            if (!o->key_too_long && o->key_len == m->key_len && memcmp(o->key, m->key, m->key_len) == 0) {
                p->deferred = NJ_ERR_DUPLICATE_KEY;
                return;
            }
        }
    }
    m->value = *val;
    rec->n++;
}

static nj_status parse_value(parser *p, int depth, nj_value *out, nj_object *rec);

/* p->s[p->i] is '{' or '['. rec, when set, receives an object's members. */
static nj_status parse_container(parser *p, int depth, nj_value *out, nj_object *rec) {
    size_t start = p->i;
    int is_object = p->s[p->i] == '{';
    char close = is_object ? '}' : ']';
    nj_status st;
    if (depth > NJ_MAX_DEPTH) return fail(p, NJ_ERR_DEPTH);
    p->i++;
    skip_ws(p);
    if (p->i < p->n && p->s[p->i] == close) {
        p->i++;
    } else {
        for (;;) {
            nj_value key, val;
            skip_ws(p);
            if (is_object) {
                if (p->i >= p->n || p->s[p->i] != '"') return fail(p, NJ_ERR_SYNTAX);
                st = parse_string(p, &key);
                if (st != NJ_OK) return st;
                skip_ws(p);
                if (p->i >= p->n || p->s[p->i] != ':') return fail(p, NJ_ERR_SYNTAX);
                p->i++;
            }
            st = parse_value(p, depth + 1, &val, NULL);
            if (st != NJ_OK) return st;
            if (is_object && rec) record_member(p, rec, &key, &val);
            skip_ws(p);
            if (p->i < p->n && p->s[p->i] == ',') {
                p->i++;
                continue;
            }
            if (p->i < p->n && p->s[p->i] == close) {
                p->i++;
                break;
            }
            return fail(p, NJ_ERR_SYNTAX);
        }
    }
    out->type = is_object ? NJ_OBJECT : NJ_ARRAY;
    out->raw = p->s + start;
    out->len = p->i - start;
    return NJ_OK;
}

static nj_status parse_value(parser *p, int depth, nj_value *out, nj_object *rec) {
    skip_ws(p);
    if (p->i >= p->n) return fail(p, NJ_ERR_SYNTAX);
    switch (p->s[p->i]) {
    case '{': return parse_container(p, depth, out, rec);
    case '[': return parse_container(p, depth, out, NULL);
    case '"': return parse_string(p, out);
    case 't': return parse_literal(p, "true", NJ_TRUE, out);
    case 'f': return parse_literal(p, "false", NJ_FALSE, out);
    case 'n': return parse_literal(p, "null", NJ_NULL, out);
    default: return parse_number(p, out);
    }
}

nj_status nj_parse_object(const char *text, size_t len, nj_object *out, size_t *err_at) {
    parser p;
    nj_value top;
    nj_status st;
    p.s = text ? text : "";
    p.n = text ? len : 0;
    p.i = 0;
    p.err_at = 0;
    p.deferred = NJ_OK;
    out->n = 0;
    st = parse_value(&p, 1, &top, out);
    if (st == NJ_OK) {
        skip_ws(&p);
        if (p.i != p.n) st = fail(&p, NJ_ERR_SYNTAX); /* text after the document */
    }
    if (err_at) *err_at = p.err_at;
    if (st != NJ_OK) return st;
    if (top.type != NJ_OBJECT) return NJ_ERR_NOT_OBJECT;
    return p.deferred;
}

const nj_value *nj_get(const nj_object *obj, const char *key) {
    size_t i, n = strlen(key);
    for (i = 0; i < obj->n; i++) {
        const nj_member *m = &obj->members[i];
        if (!m->key_too_long && m->key_len == n && memcmp(m->key, key, n) == 0) return &m->value;
    }
    return NULL;
}

int nj_array_next(const nj_value *array, size_t *pos, nj_value *out) {
    parser p;
    if (array->type != NJ_ARRAY) return 0;
    p.s = array->raw;
    p.n = array->len;
    p.i = *pos ? *pos : 1; /* past the '[' */
    p.err_at = 0;
    p.deferred = NJ_OK;
    skip_ws(&p);
    if (p.i < p.n && p.s[p.i] == ',') p.i++;
    skip_ws(&p);
    if (p.i >= p.n || p.s[p.i] == ']') return 0;
    /* the document was validated with its depth limit: depth 1 here cannot exceed it */
    if (parse_value(&p, 1, out, NULL) != NJ_OK) return 0;
    *pos = p.i;
    return 1;
}

size_t nj_string_length(const nj_value *v) {
    return v->type == NJ_STRING ? decode_string(v->raw, v->len, NULL) : 0;
}

size_t nj_string_decode(const nj_value *v, char *out) {
    size_t n = v->type == NJ_STRING ? decode_string(v->raw, v->len, out) : 0;
    out[n] = '\0';
    return n;
}

nj_status nj_number_double(const nj_value *v, double *out) {
    char buf[512];
    char *end = NULL;
    double x;
    if (v->type != NJ_NUMBER) return NJ_ERR_TYPE;
    if (v->len >= sizeof buf) return NJ_ERR_RANGE; /* no sensible setting is written that long */
    memcpy(buf, v->raw, v->len);
    buf[v->len] = '\0';
    errno = 0;
    x = strtod(buf, &end); /* the grammar was checked; the C locale's '.' is JSON's */
    if (end != buf + v->len || !isfinite(x)) return NJ_ERR_RANGE;
    *out = x;
    return NJ_OK;
}

nj_status nj_number_u64(const nj_value *v, uint64_t *out) {
    size_t i = 0;
    uint64_t x = 0;
    int negative = 0;
    if (v->type != NJ_NUMBER) return NJ_ERR_TYPE;
    if (memchr(v->raw, '.', v->len) || memchr(v->raw, 'e', v->len) || memchr(v->raw, 'E', v->len))
        return NJ_ERR_NOT_INTEGER;
    if (v->raw[0] == '-') {
        negative = 1;
        i = 1;
    }
    for (; i < v->len; i++) {
        unsigned d = (unsigned)(v->raw[i] - '0');
        if (x > (UINT64_MAX - d) / 10) return NJ_ERR_RANGE;
        x = x * 10 + d;
    }
    if (negative && x != 0) return NJ_ERR_RANGE;
    *out = x;
    return NJ_OK;
}

// ---------------------------------------------------------------------------
// Writer

void nj_writer_init(nj_writer *w, size_t headroom) {
    w->buf = NULL;
    w->cap = 0;
    w->headroom = headroom;
    w->len = headroom;
    w->failed = 0;
}

void nj_writer_free(nj_writer *w) {
    free(w->buf);
    nj_writer_init(w, w->headroom);
}

void nj_writer_reset(nj_writer *w) {
    w->len = w->headroom;
    w->failed = 0;
}

char *nj_writer_text(const nj_writer *w) { return w->buf ? w->buf + w->headroom : NULL; }

size_t nj_writer_length(const nj_writer *w) { return w->len - w->headroom; }

/* Room for `extra` more bytes (plus a NUL, so the text can be printed). */
static int reserve(nj_writer *w, size_t extra) {
    size_t need, cap;
    char *nb;
    if (w->failed) return 0;
    if (extra > SIZE_MAX / 2 - w->len) {
        w->failed = 1;
        return 0;
    }
    need = w->len + extra + 1;
    if (need <= w->cap) return 1;
    cap = w->cap ? w->cap : 256;
    while (cap < need) cap *= 2;
    nb = (char *)realloc(w->buf, cap);
    if (!nb) {
        w->failed = 1;
        return 0;
    }
    w->buf = nb;
    w->cap = cap;
    return 1;
}

static void append(nj_writer *w, const char *s, size_t n) {
    if (!reserve(w, n)) return;
    memcpy(w->buf + w->len, s, n);
    w->len += n;
    w->buf[w->len] = '\0';
}

void nj_raw(nj_writer *w, const char *s) { append(w, s, strlen(s)); }

void nj_str(nj_writer *w, const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0;
    append(w, "\"", 1);
    while (i < n) {
        unsigned c = u[i];
        const char *esc = NULL;
        char hex[8];
        size_t k;
        if (c >= 0x80) {
            k = utf8_sequence(u, n, i);
            if (k) {
                i += k;
                run += k;
                continue;
            }
            esc = "\\ufffd"; /* not UTF-8: a frame must stay valid text */
        } else if (c == '"') {
            esc = "\\\"";
        } else if (c == '\\') {
            esc = "\\\\";
        } else if (c == '\n') {
            esc = "\\n";
        } else if (c == '\r') {
            esc = "\\r";
        } else if (c == '\t') {
            esc = "\\t";
        } else if (c < 0x20) {
            snprintf(hex, sizeof hex, "\\u%04x", c);
            esc = hex;
        } else {
            i++;
            run++;
            continue;
        }
        append(w, s + i - run, run); /* the plain bytes before this one */
        run = 0;
        append(w, esc, strlen(esc));
        i++;
    }
    append(w, s + i - run, run);
    append(w, "\"", 1);
}

void nj_cstr(nj_writer *w, const char *s) { nj_str(w, s, strlen(s)); }

void nj_u64(nj_writer *w, uint64_t v) {
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRIu64, v);
    nj_raw(w, buf);
}

void nj_i64(nj_writer *w, int64_t v) {
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRId64, v);
    nj_raw(w, buf);
}

void nj_bool(nj_writer *w, int v) { nj_raw(w, v ? "true" : "false"); }

void nj_double(nj_writer *w, double v, int decimals) {
    char buf[400]; /* "%.17f" of the largest double needs 327 bytes */
    if (!isfinite(v)) {
        nj_raw(w, "null");
        return;
    }
    if (decimals >= 0) {
        snprintf(buf, sizeof buf, "%.*f", decimals > 17 ? 17 : decimals, v);
    } else {
        snprintf(buf, sizeof buf, "%.*g", -decimals > 17 ? 17 : -decimals, v);
        /* rounded to few digits, a value near DBL_MAX can round past it ("%.1g"
         * of 1.7e308 is "2e+308"), which a reader takes for infinity: all 17
         * digits then, which read back as the value itself */
        if (!isfinite(strtod(buf, NULL))) snprintf(buf, sizeof buf, "%.17g", v);
    }
    nj_raw(w, buf);
}
