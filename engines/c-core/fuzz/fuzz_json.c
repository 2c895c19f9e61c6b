/*
 * fuzz_json.c - libFuzzer target for nano-wss's JSON reader and writer
 * (server/json.c): every input goes through all of
 *
 * - nj_parse_object on the bytes (a private heap copy of exactly `size`
 *   bytes, so ASan sees any read past the end). For a document that parses,
 *   the recorded members are checked: every view lies inside the input, every
 *   string decodes (nj_string_length / nj_string_decode agree) to valid UTF-8,
 *   integer conversions print back to their literal, an array's elements
 *   (nj_array_next) come in order inside it and pass the same checks, each value alone in
 *   {"a":VALUE} is a valid document again, the object written back with
 *   nj_writer parses to the same members, and the document less its last
 *   byte (trailing white space removed) does not parse;
 * - nj_str on the bytes as an arbitrary string: the text written is valid
 *   UTF-8 and parses back to the bytes with each byte of invalid UTF-8 as
 *   U+FFFD (checked against a UTF-8 validator written here, independently of
 *   json.c's);
 * - nj_u64 / nj_i64 / nj_double on numbers taken from the input's first
 *   bytes: the text is a JSON number (or null for NaN and infinities) that
 *   converts back to the value.
 *
 * Any broken invariant aborts, which libFuzzer reports as a crash.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

#define FUZZ_NAME "fuzz_json"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

// ---------------------------------------------------------------------------
// Helpers

static const nj_value *member_value(const nj_object *obj, size_t i) { return &obj->members[i].value; }

/* A string value decoded into a new buffer (NUL-terminated; *n its length). */
static char *decoded(const nj_value *v, size_t *n) {
    size_t len = nj_string_length(v);
    char *out = (char *)malloc(len + 1);
    CHECK(out != NULL);
    *n = nj_string_decode(v, out);
    CHECK(*n == len);
    CHECK(out[len] == '\0');
    return out;
}

/* Parse text (a heap copy of exactly len bytes) into obj. */
static nj_status parse_copy(const char *text, size_t len, nj_object *obj, size_t *err_at) {
    char *copy = (char *)malloc(len ? len : 1);
    nj_status st;
    CHECK(copy != NULL);
    if (len) memcpy(copy, text, len);
    st = nj_parse_object(copy, len, obj, err_at);
    free(copy); /* the views die with the copy: callers only look at statuses and decoded keys */
    return st;
}

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// ---------------------------------------------------------------------------
// The reader

static void check_value(const char *text, size_t size, const nj_value *v) {
    nj_object wrapped;
    nj_status st;
    CHECK(v->raw >= text && v->len <= size && (size_t)(v->raw - text) <= size - v->len);
    switch (v->type) {
    case NJ_STRING: {
        size_t n;
        char *s = decoded(v, &n);
        CHECK(v->raw > text && v->raw[-1] == '"' && (size_t)(v->raw - text) + v->len < size &&
              v->raw[v->len] == '"');
        CHECK(valid_utf8((const uint8_t *)s, n));
        CHECK(n <= v->len); /* no escape decodes to more bytes than it is written with */
        free(s);
        break;
    }
    case NJ_NUMBER: {
        uint64_t u;
        double d;
        st = nj_number_u64(v, &u);
        CHECK(st == NJ_OK || st == NJ_ERR_NOT_INTEGER || st == NJ_ERR_RANGE);
        if (st == NJ_OK && v->raw[0] != '-') {
            char buf[32];
            int k = snprintf(buf, sizeof buf, "%llu", (unsigned long long)u);
            CHECK(k > 0 && (size_t)k == v->len && memcmp(buf, v->raw, v->len) == 0);
        }
        if (st == NJ_OK && v->raw[0] == '-') CHECK(u == 0);
        st = nj_number_double(v, &d);
        CHECK(st == NJ_OK || st == NJ_ERR_RANGE);
        if (st == NJ_OK) CHECK(isfinite(d));
        break;
    }
    case NJ_NULL: CHECK(v->len == 4 && memcmp(v->raw, "null", 4) == 0); break;
    case NJ_TRUE: CHECK(v->len == 4 && memcmp(v->raw, "true", 4) == 0); break;
    case NJ_FALSE: CHECK(v->len == 5 && memcmp(v->raw, "false", 5) == 0); break;
    case NJ_ARRAY: {
        /* nj_array_next: the elements in order, each a value inside the array */
        nj_value e;
        size_t pos = 0;
        const char *after = v->raw + 1;
        CHECK(v->len >= 2 && v->raw[0] == '[' && v->raw[v->len - 1] == ']');
        while (nj_array_next(v, &pos, &e)) {
            CHECK(e.raw >= after && e.raw + e.len < v->raw + v->len);
            after = e.raw + e.len;
            check_value(text, size, &e);
        }
        break;
    }
    case NJ_OBJECT: CHECK(v->len >= 2 && v->raw[0] == '{' && v->raw[v->len - 1] == '}'); break;
    default: CHECK(0);
    }
    /* the view is a value on its own: {"a":VALUE} is one valid member (at the
     * same depth as in the input, so the depth limit cannot differ) */
    {
        /* a string's view is its body: the quotes around it go too */
        const char *raw = v->type == NJ_STRING ? v->raw - 1 : v->raw;
        size_t raw_len = v->type == NJ_STRING ? v->len + 2 : v->len;
        size_t len = 5 + raw_len + 1;
        char *doc = (char *)malloc(len);
        CHECK(doc != NULL);
        memcpy(doc, "{\"a\":", 5);
        memcpy(doc + 5, raw, raw_len);
        doc[len - 1] = '}';
        st = parse_copy(doc, len, &wrapped, NULL);
        CHECK(st == NJ_OK);
        CHECK(wrapped.n == 1 && wrapped.members[0].value.type == v->type);
        free(doc);
    }
}

/* The object written back with the writer (members with over-long keys are
 * left out: their decoded keys are not kept) parses to the same members. */
static void check_rewrite(const nj_object *obj) {
    nj_writer w;
    nj_object again;
    size_t i, kept = 0, k;
    nj_status st;
    nj_writer_init(&w, 16);
    nj_raw(&w, "{");
    for (i = 0; i < obj->n; i++) {
        const nj_member *m = &obj->members[i];
        const nj_value *v = member_value(obj, i);
        if (m->key_too_long) continue;
        if (kept++) nj_raw(&w, ",");
        nj_str(&w, m->key, m->key_len);
        nj_raw(&w, ":");
        if (v->type == NJ_STRING) {
            size_t n;
            char *s = decoded(v, &n);
            nj_str(&w, s, n);
            free(s);
        } else {
            char *raw = (char *)malloc(v->len + 1);
            CHECK(raw != NULL);
            memcpy(raw, v->raw, v->len);
            raw[v->len] = '\0';
            /* containers may hold escaped NULs only inside strings, never raw ones */
            CHECK(strlen(raw) == v->len);
            nj_raw(&w, raw);
            free(raw);
        }
    }
    nj_raw(&w, "}");
    CHECK(!w.failed);
    CHECK(valid_utf8((const uint8_t *)nj_writer_text(&w), nj_writer_length(&w)));
    {
        /* parse in place: the writer's buffer outlives the comparison below */
        st = nj_parse_object(nj_writer_text(&w), nj_writer_length(&w), &again, NULL);
        CHECK(st == NJ_OK);
        CHECK(again.n == kept);
        for (i = 0, k = 0; i < obj->n; i++) {
            const nj_member *m = &obj->members[i], *a;
            const nj_value *v = member_value(obj, i);
            if (m->key_too_long) continue;
            a = &again.members[k++];
            CHECK(!a->key_too_long && a->key_len == m->key_len && memcmp(a->key, m->key, m->key_len) == 0);
            CHECK(a->value.type == v->type);
            if (v->type == NJ_STRING) {
                size_t n1, n2;
                char *s1 = decoded(v, &n1), *s2 = decoded(&a->value, &n2);
                CHECK(n1 == n2 && memcmp(s1, s2, n1) == 0);
                free(s1);
                free(s2);
            } else {
                CHECK(a->value.len == v->len && memcmp(a->value.raw, v->raw, v->len) == 0);
            }
        }
    }
    nj_writer_free(&w);
}

static void check_reader(const char *text, size_t size) {
    nj_object obj;
    size_t at = (size_t)-1, i;
    nj_status st = nj_parse_object(text, size, &obj, &at);
    CHECK(at <= size);
    CHECK(obj.n <= NJ_MAX_MEMBERS);
    if (st != NJ_OK && st != NJ_ERR_TOO_MANY_MEMBERS && st != NJ_ERR_DUPLICATE_KEY) {
        CHECK(st == NJ_ERR_SYNTAX || st == NJ_ERR_UTF8 || st == NJ_ERR_DEPTH || st == NJ_ERR_NOT_OBJECT);
        return;
    }
    /* valid JSON: a document is valid UTF-8 as a whole (outside strings only ASCII is allowed) */
    CHECK(valid_utf8((const uint8_t *)text, size));
    if (st == NJ_ERR_TOO_MANY_MEMBERS) CHECK(obj.n == NJ_MAX_MEMBERS);
    for (i = 0; i < obj.n; i++) {
        const nj_member *m = &obj.members[i];
        size_t k;
        CHECK(m->key_too_long == (m->key_len > NJ_KEY_MAX));
        if (m->key_too_long) {
            CHECK(m->key[0] == '\0');
        } else {
            CHECK(m->key[m->key_len] == '\0');
            CHECK(valid_utf8((const uint8_t *)m->key, m->key_len));
            if (st == NJ_OK)
                for (k = 0; k < i; k++) /* duplicates are reported, never recorded */
                    CHECK(obj.members[k].key_too_long || obj.members[k].key_len != m->key_len ||
                          memcmp(obj.members[k].key, m->key, m->key_len) != 0);
            /* nj_get finds the first member of that name */
            if (strlen(m->key) == m->key_len) {
                const nj_value *g = nj_get(&obj, m->key);
                CHECK(g != NULL);
                if (st == NJ_OK) CHECK(g == member_value(&obj, i));
            }
        }
        check_value(text, size, member_value(&obj, i));
    }
    if (st != NJ_OK) return;
    check_rewrite(&obj);
    /* a proper prefix of an object document (trailing white space aside) is not one */
    {
        size_t end = size;
        nj_object tmp;
        while (end > 0 && is_ws(text[end - 1])) end--;
        CHECK(end >= 2 && text[end - 1] == '}');
        CHECK(parse_copy(text, end - 1, &tmp, NULL) != NJ_OK);
    }
}

// ---------------------------------------------------------------------------
// The writer

/* nj_str of arbitrary bytes: what a client sends is echoed this way. */
static void check_string_writer(const uint8_t *data, size_t size) {
    nj_writer w;
    nj_object obj;
    const nj_value *v;
    size_t i, n, e = 0;
    char *got, *want = (char *)malloc(3 * size + 1);
    CHECK(want != NULL);
    for (i = 0; i < size;) { /* the expected text: invalid bytes become U+FFFD one by one */
        size_t k = wf_length(data, size, i);
        if (k) {
            memcpy(want + e, data + i, k);
            e += k;
            i += k;
        } else {
            memcpy(want + e, "\xEF\xBF\xBD", 3);
            e += 3;
            i++;
        }
    }
    nj_writer_init(&w, 4);
    nj_raw(&w, "{\"s\":");
    nj_str(&w, (const char *)data, size);
    nj_raw(&w, "}");
    CHECK(!w.failed);
    CHECK(valid_utf8((const uint8_t *)nj_writer_text(&w), nj_writer_length(&w)));
    for (i = 0; i < nj_writer_length(&w); i++) /* no raw control characters in the frame */
        CHECK((unsigned char)nj_writer_text(&w)[i] >= 0x20);
    CHECK(nj_parse_object(nj_writer_text(&w), nj_writer_length(&w), &obj, NULL) == NJ_OK);
    v = nj_get(&obj, "s");
    CHECK(v != NULL && v->type == NJ_STRING);
    got = decoded(v, &n);
    CHECK(n == e && memcmp(got, want, e) == 0);
    free(got);
    free(want);
    nj_writer_free(&w);
}

static uint64_t take_u64(const uint8_t *data, size_t size, size_t at) {
    uint64_t x = 0;
    size_t k;
    for (k = 0; k < 8; k++) x = (x << 8) | (at + k < size ? data[at + k] : 0);
    return x;
}

/* Close {"n":... and parse it back: the value of n. */
static const nj_value *single(nj_writer *w, nj_object *obj) {
    nj_raw(w, "}");
    CHECK(!w->failed);
    CHECK(nj_parse_object(nj_writer_text(w), nj_writer_length(w), obj, NULL) == NJ_OK);
    CHECK(obj->n == 1);
    return nj_get(obj, "n");
}

static void check_number_writers(const uint8_t *data, size_t size) {
    nj_writer w;
    nj_object obj;
    const nj_value *v;
    uint64_t u = take_u64(data, size, 0), back = 0;
    int64_t i;
    double d, parsed;
    int decimals;
    memcpy(&i, &u, sizeof i);
    memcpy(&d, &u, sizeof d);
    nj_writer_init(&w, 0);

    nj_raw(&w, "{\"n\":");
    nj_u64(&w, u);
    v = single(&w, &obj);
    CHECK(v && v->type == NJ_NUMBER && nj_number_u64(v, &back) == NJ_OK && back == u);

    nj_writer_reset(&w);
    nj_raw(&w, "{\"n\":");
    nj_i64(&w, i);
    v = single(&w, &obj);
    CHECK(v && v->type == NJ_NUMBER);
    if (i >= 0) CHECK(nj_number_u64(v, &back) == NJ_OK && back == (uint64_t)i);
    else CHECK(nj_number_u64(v, &back) == NJ_ERR_RANGE);

    /* every precision the writer takes, the float32 one (-7) and the exact one (-17) among them */
    decimals = size > 8 ? (int)(data[8] % 41) - 20 : -17;
    nj_writer_reset(&w);
    nj_raw(&w, "{\"n\":");
    nj_double(&w, d, decimals);
    v = single(&w, &obj);
    CHECK(v != NULL);
    if (!isfinite(d)) {
        CHECK(v->type == NJ_NULL);
    } else {
        CHECK(v->type == NJ_NUMBER);
        CHECK(nj_number_double(v, &parsed) == NJ_OK);
        if (decimals <= -17) CHECK(parsed == d); /* 17 significant digits round-trip a double */
        if (decimals < 0) CHECK(fabs(parsed - d) <= fabs(d) * 1e-6 || decimals > -7);
        else CHECK(fabs(parsed - d) <= 0.5 * pow(10.0, -(decimals > 17 ? 17 : decimals)) + fabs(d) * 1e-15);
    }
    nj_writer_free(&w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *copy = (char *)malloc(size ? size : 1);
    if (!copy) return 0;
    if (size) memcpy(copy, data, size);
    check_reader(copy, size);
    free(copy);
    check_string_writer(data, size);
    check_number_writers(data, size);
    return 0;
}
