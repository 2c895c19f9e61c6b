/*
 * tokenizer.c - the tokenizer section (validation and parsing) and Nano's
 * tokenizer: greedy longest match over Unicode code points, the same rule as
 * nano_tokenizer (see nano.h for the exact behaviour, invalid UTF-8 included).
 *
 * The trie is a node array plus one open-addressing hash table of edges keyed
 * by (parent node, code point): O(1) per character whatever the branching (the
 * root of a CJK vocabulary has thousands of children), built once at init.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct nano_tokenizer {
    uint32_t kind;        /* nano_tokenizer_kind */
    uint32_t vocab_size;
    char *text;           /* every token's UTF-8 text (BPE: raw bytes), back to back */
    uint32_t *text_off;   /* [V + 1] offsets into text */
    uint8_t *special;     /* [V] 1 for special tokens */
    uint32_t n_special;
    int32_t unknown_id;   /* <|unknown|>, or -1 */
    uint32_t max_len;     /* longest token: code points (trie), bytes (BPE) */
    /* trie, nodes in breadth-first order so that every node's children are
     * contiguous and sorted by code point (binary search); node 0 is the root */
    uint32_t n_nodes;
    uint32_t *node_cp;    /* [n_nodes] the code point on the edge into the node */
    int32_t *node_token;  /* [n_nodes] the token spelled by the path to the node, or -1 */
    uint32_t *first_child;/* [n_nodes] */
    uint32_t *n_children; /* [n_nodes] */
};

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

#define MAX_CODEPOINT 0x10FFFFu

// ---------------------------------------------------------------------------
// Section validation (nano_format.vocab, check for check)

/* st, after saying in *e (when not NULL) what is wrong where */
static nano_status bad(nano_section_error *e, nano_status st, const char *what, uint64_t at, int64_t token) {
    if (e) {
        e->what = what;
        e->at = at;
        e->token = token;
    }
    return st;
}

static nano_status section_length(const uint8_t *d, uint64_t avail, uint64_t *length, uint32_t *second,
                                  nano_section_error *e) {
    if (avail < NANO_TOKENIZER_SECTION_HEADER)
        return bad(e, NANO_ERR_TRUNCATED, "the file ends inside the section's header", avail, -1);
    *length = rd32(d);
    *second = rd32(d + 4);
    if (*length < NANO_TOKENIZER_SECTION_HEADER)
        return bad(e, NANO_ERR_BAD_TOKEN_RECORD, "the section's length is shorter than its header", 0, -1);
    if (*length > avail) return bad(e, NANO_ERR_TRUNCATED, "the section's length runs past the end of the file", 0, -1);
    return NANO_OK;
}

static nano_status trie_records(const uint8_t *d, uint64_t length, uint32_t n_tokens, nano_section_error *e) {
    uint64_t pos = NANO_TOKENIZER_SECTION_HEADER;
    uint32_t i, j;
    for (i = 0; i < n_tokens; i++) {
        uint32_t n;
        if (pos + NANO_TOKEN_RECORD_HEADER > length)
            return bad(e, NANO_ERR_BAD_TOKEN_RECORD, "the section ends before this record", pos, i);
        n = d[pos];
        if (n == 0) return bad(e, NANO_ERR_BAD_TOKEN_RECORD, "a token of 0 code points", pos, i);
        if (d[pos + 1] > 1) return bad(e, NANO_ERR_BAD_TOKEN_RECORD, "the special flag is not 0 or 1", pos + 1, i);
        if (d[pos + 2] != NANO_TOKEN_RESERVED_BYTE || d[pos + 3] != NANO_TOKEN_RESERVED_BYTE)
            return bad(e, NANO_ERR_BAD_TOKEN_RECORD, "a reserved byte is not the reserved value", pos + 2, i);
        if (rd32(d + pos + 4) != i)
            return bad(e, NANO_ERR_BAD_TOKEN_RECORD, "the record's token id is not its position", pos + 4, i);
        pos += NANO_TOKEN_RECORD_HEADER;
        if (pos + 4ull * n > length)
            return bad(e, NANO_ERR_BAD_TOKEN_RECORD, "the token's code points run past the section", pos, i);
        for (j = 0; j < n; j++) {
            uint32_t c = rd32(d + pos + 4ull * j);
            if (c > MAX_CODEPOINT || (c >= 0xD800 && c <= 0xDFFF))
                return bad(e, NANO_ERR_BAD_TOKEN_RECORD, "not a Unicode scalar value (a surrogate or past U+10FFFF)",
                           pos + 4ull * j, i);
        }
        pos += 4ull * n;
    }
    if (pos != length)
        return bad(e, NANO_ERR_BAD_TOKEN_RECORD, "the records end before the section's length", pos, -1);
    return NANO_OK;
}

nano_status nano_check_trie_section(const uint8_t *d, uint64_t avail, uint32_t vocab_size,
                                    uint64_t *section_len, nano_section_error *err) {
    uint64_t length;
    uint32_t stored;
    nano_status st = section_length(d, avail, &length, &stored, err);
    if (st != NANO_OK) return st;
    if (vocab_size && stored != vocab_size)
        return bad(err, NANO_ERR_BAD_TOKEN_RECORD, "its token count differs from the config's vocab_size", 4, -1);
    st = trie_records(d, length, stored, err);
    if (st != NANO_OK) return st;
    *section_len = length;
    return NANO_OK;
}

static nano_status bpe_records(const uint8_t *d, uint64_t length, uint32_t vocab_size, uint32_t max_len,
                               nano_section_error *e) {
    uint64_t pos = NANO_TOKENIZER_SECTION_HEADER;
    uint32_t i;
    for (i = 0; i < vocab_size; i++) {
        uint32_t n;
        if (pos + NANO_BPE_RECORD_HEADER > length)
            return bad(e, NANO_ERR_BAD_TOKEN_RECORD, "the section ends before this record", pos, i);
        n = rd32(d + pos + 4);
        if (n > max_len)
            return bad(e, NANO_ERR_BAD_TOKEN_RECORD, "a token longer than the section's maximum", pos + 4, i);
        pos += NANO_BPE_RECORD_HEADER;
        if (pos + n > length)
            return bad(e, NANO_ERR_BAD_TOKEN_RECORD, "the token's bytes run past the section", pos, i);
        pos += n;
    }
    if (pos != length)
        return bad(e, NANO_ERR_BAD_TOKEN_RECORD, "the records end before the section's length", pos, -1);
    return NANO_OK;
}

nano_status nano_check_bpe_section(const uint8_t *d, uint64_t avail, uint32_t vocab_size,
                                   uint64_t *section_len, uint32_t *max_len, nano_section_error *err) {
    uint64_t length;
    uint32_t ml;
    nano_status st = section_length(d, avail, &length, &ml, err);
    if (st != NANO_OK) return st;
    if (ml > length) return bad(err, NANO_ERR_BAD_TOKEN_RECORD, "its maximum token length exceeds the section", 4, -1);
    st = bpe_records(d, length, vocab_size, ml, err);
    if (st != NANO_OK) return st;
    *section_len = length;
    *max_len = ml;
    return NANO_OK;
}

// ---------------------------------------------------------------------------
// UTF-8

static uint32_t utf8_put(uint32_t c, char *out) {
    if (c < 0x80) {
        out[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = (char)(0xC0 | (c >> 6));
        out[1] = (char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        out[0] = (char)(0xE0 | (c >> 12));
        out[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        out[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (c >> 18));
    out[1] = (char)(0x80 | ((c >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((c >> 6) & 0x3F));
    out[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

/* Decode one well-formed UTF-8 sequence at s[0..n) (n >= 1). Returns its
 * length, or 0 when s[0] does not start one (overlong forms, surrogates,
 * values past U+10FFFF, truncated or broken sequences). */
static uint32_t utf8_get(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned char b = s[0];
    unsigned char lo = 0x80, hi = 0xBF;
    uint32_t len, c, i;
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    if (b >= 0xC2 && b <= 0xDF) {
        len = 2;
        c = b & 0x1F;
    } else if (b >= 0xE0 && b <= 0xEF) {
        len = 3;
        c = b & 0x0F;
        if (b == 0xE0) lo = 0xA0;
        if (b == 0xED) hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        len = 4;
        c = b & 0x07;
        if (b == 0xF0) lo = 0x90;
        if (b == 0xF4) hi = 0x8F;
    } else {
        return 0;
    }
    if (n < len) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    c = (c << 6) | (s[1] & 0x3F);
    for (i = 2; i < len; i++) {
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    *cp = c;
    return len;
}

size_t nano_utf8_char_bytes(const char *s, size_t n) {
    uint32_t cp;
    return s && n ? utf8_get((const unsigned char *)s, n, &cp) : 0;
}

// ---------------------------------------------------------------------------
// The trie

/* The child of node along cp, or 0 (the root is never a child). */
static uint32_t child_of(const nano_tokenizer *t, uint32_t node, uint32_t cp) {
    uint32_t lo = t->first_child[node], hi = lo + t->n_children[node];
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (t->node_cp[mid] < cp) lo = mid + 1;
        else hi = mid;
    }
    return lo < t->first_child[node] + t->n_children[node] && t->node_cp[lo] == cp ? lo : 0;
}

/* <|name|> with a nonempty name without '|' (nano_tokenizer's _SPECIAL_SHAPE) */
static int special_shape(const char *s, uint64_t n) {
    uint64_t i;
    if (n < 5 || s[0] != '<' || s[1] != '|' || s[n - 2] != '|' || s[n - 1] != '>') return 0;
    for (i = 2; i < n - 2; i++)
        if (s[i] == '|') return 0;
    return 1;
}

void nano_tokenizer_free(nano_tokenizer *t) {
    if (!t) return;
    free(t->text);
    free(t->text_off);
    free(t->special);
    free(t->node_cp);
    free(t->node_token);
    free(t->first_child);
    free(t->n_children);
    free(t);
}

/* Sorting token records by their code points (qsort has no context pointer:
 * each element carries what the comparison needs). */
typedef struct rec_ref {
    const uint8_t *cps; /* the record's code points (little-endian u32) */
    uint32_t len;
    uint32_t id;
} rec_ref;

static int cmp_rec(const void *pa, const void *pb) {
    const rec_ref *a = (const rec_ref *)pa, *b = (const rec_ref *)pb;
    uint32_t i, n = a->len < b->len ? a->len : b->len;
    for (i = 0; i < n; i++) {
        uint32_t x = rd32(a->cps + 4 * i), y = rd32(b->cps + 4 * i);
        if (x != y) return x < y ? -1 : 1;
    }
    if (a->len != b->len) return a->len < b->len ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id; /* duplicates: lowest id first */
}

nano_status nano_tokenizer_build_trie(const uint8_t *d, uint64_t len, nano_tokenizer **out) {
    nano_tokenizer *t;
    uint32_t V = rd32(d + 4), i, j, depth, any_flag = 0, *cur = NULL;
    uint64_t pos, total_cps = 0, text_bytes = 0;
    rec_ref *recs = NULL;
    (void)len;
    *out = NULL;
    t = (nano_tokenizer *)calloc(1, sizeof(*t));
    recs = (rec_ref *)malloc(((size_t)V + 1) * sizeof(rec_ref));
    cur = (uint32_t *)malloc(((size_t)V + 1) * sizeof(uint32_t));
    if (!t || !recs || !cur) goto oom;
    t->kind = NANO_TOKENIZER_KIND_TRIE;
    t->vocab_size = V;
    t->unknown_id = -1;
    /* first pass: where each record's code points are, and the sizes */
    pos = NANO_TOKENIZER_SECTION_HEADER;
    for (i = 0; i < V; i++) {
        uint32_t n = d[pos];
        recs[i].len = n;
        recs[i].id = i;
        recs[i].cps = d + pos + NANO_TOKEN_RECORD_HEADER;
        for (j = 0; j < n; j++) {
            uint32_t c = rd32(recs[i].cps + 4 * j);
            text_bytes += c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
        }
        total_cps += n;
        if (n > t->max_len) t->max_len = n;
        pos += NANO_TOKEN_RECORD_HEADER + 4ull * n;
    }
    t->text = (char *)malloc((size_t)text_bytes + 1);
    t->text_off = (uint32_t *)malloc(((size_t)V + 1) * sizeof(uint32_t));
    t->special = (uint8_t *)calloc((size_t)V + 1, 1);
    t->node_cp = (uint32_t *)malloc(((size_t)total_cps + 1) * sizeof(uint32_t));
    t->node_token = (int32_t *)malloc(((size_t)total_cps + 1) * sizeof(int32_t));
    t->first_child = (uint32_t *)calloc((size_t)total_cps + 1, sizeof(uint32_t));
    t->n_children = (uint32_t *)calloc((size_t)total_cps + 1, sizeof(uint32_t));
    if (!t->text || !t->text_off || !t->special || !t->node_cp || !t->node_token || !t->first_child ||
        !t->n_children)
        goto oom;
    /* texts and flags, in id order */
    text_bytes = 0;
    pos = NANO_TOKENIZER_SECTION_HEADER;
    for (i = 0; i < V; i++) {
        t->special[i] = d[pos + 1];
        any_flag |= d[pos + 1];
        t->text_off[i] = (uint32_t)text_bytes;
        for (j = 0; j < recs[i].len; j++) text_bytes += utf8_put(rd32(recs[i].cps + 4 * j), t->text + text_bytes);
        pos += NANO_TOKEN_RECORD_HEADER + 4ull * recs[i].len;
    }
    t->text_off[V] = (uint32_t)text_bytes;
    /* The trie, breadth first: the nodes of depth k are the distinct k-prefixes
     * in sorted order, so each parent's children come out contiguous and sorted. */
    qsort(recs, V, sizeof(rec_ref), cmp_rec);
    t->n_nodes = 1;
    t->node_cp[0] = 0;
    t->node_token[0] = -1;
    for (i = 0; i < V; i++) cur[i] = 0;
    for (depth = 1; depth <= t->max_len; depth++) {
        int have_prev = 0;
        uint32_t node = 0, prev_parent = 0, prev_cp = 0;
        for (i = 0; i < V; i++) {
            uint32_t parent, cp;
            if (recs[i].len < depth) continue;
            parent = cur[i]; /* the node of this record's (depth-1)-prefix */
            cp = rd32(recs[i].cps + 4 * (depth - 1));
            if (!have_prev || parent != prev_parent || cp != prev_cp) {
                node = t->n_nodes++;
                t->node_cp[node] = cp;
                t->node_token[node] = -1;
                if (t->n_children[parent]++ == 0) t->first_child[parent] = node;
            }
            /* duplicate texts (nano_tokenizer refuses them): the lowest id wins */
            if (recs[i].len == depth && t->node_token[node] < 0) t->node_token[node] = (int32_t)recs[i].id;
            prev_parent = parent;
            prev_cp = cp;
            have_prev = 1;
            cur[i] = node;
        }
    }
    free(recs);
    free(cur);
    recs = NULL;
    cur = NULL;
    /* Old files do not always set is_special: then tokens shaped <|name|> are special. */
    for (i = 0; i < V; i++) {
        const char *s = t->text + t->text_off[i];
        uint64_t n = t->text_off[i + 1] - t->text_off[i];
        if (!any_flag) t->special[i] = (uint8_t)special_shape(s, n);
        t->n_special += t->special[i];
        if (t->special[i] && t->unknown_id < 0 && n == sizeof(NANO_SPECIAL_UNKNOWN) - 1 &&
            memcmp(s, NANO_SPECIAL_UNKNOWN, sizeof(NANO_SPECIAL_UNKNOWN) - 1) == 0)
            t->unknown_id = (int32_t)i;
    }
    *out = t;
    return NANO_OK;
oom:
    free(recs);
    free(cur);
    nano_tokenizer_free(t);
    return NANO_ERR_OUT_OF_MEMORY;
}

nano_status nano_tokenizer_build_bpe(const uint8_t *d, uint64_t len, uint32_t V, nano_tokenizer **out) {
    nano_tokenizer *t;
    uint64_t pos = NANO_TOKENIZER_SECTION_HEADER, bytes = 0;
    uint32_t i;
    *out = NULL;
    t = (nano_tokenizer *)calloc(1, sizeof(*t));
    if (!t) return NANO_ERR_OUT_OF_MEMORY;
    t->kind = NANO_TOKENIZER_KIND_BPE;
    t->vocab_size = V;
    t->unknown_id = -1;
    t->max_len = rd32(d + 4);
    t->text = (char *)malloc((size_t)len + 1);
    t->text_off = (uint32_t *)malloc(((size_t)V + 1) * sizeof(uint32_t));
    t->special = (uint8_t *)calloc((size_t)V + 1, 1);
    if (!t->text || !t->text_off || !t->special) {
        nano_tokenizer_free(t);
        return NANO_ERR_OUT_OF_MEMORY;
    }
    for (i = 0; i < V; i++) {
        uint32_t n = rd32(d + pos + 4);
        pos += NANO_BPE_RECORD_HEADER;
        t->text_off[i] = (uint32_t)bytes;
        memcpy(t->text + bytes, d + pos, n);
        bytes += n;
        pos += n;
    }
    t->text_off[V] = (uint32_t)bytes;
    *out = t;
    return NANO_OK;
}

// ---------------------------------------------------------------------------
// Public API

nano_status nano_tokenizer_init_section(const void *data, size_t size, uint32_t vocab_size,
                                        nano_tokenizer **out) {
    const uint8_t *d = (const uint8_t *)data;
    uint64_t length;
    uint32_t stored;
    nano_status st;
    if (!out) return NANO_ERR_BAD_ARGUMENT;
    *out = NULL;
    if (!d && size) return NANO_ERR_BAD_ARGUMENT;
    if (!d) d = (const uint8_t *)"";
    /* nano_format.decode_tokenizer_section's order: length, exactness, count, records */
    st = section_length(d, size, &length, &stored, NULL);
    if (st != NANO_OK) return st;
    if (size > length) return NANO_ERR_TRAILING_BYTES;
    if (vocab_size && stored != vocab_size) return NANO_ERR_BAD_TOKEN_RECORD;
    st = trie_records(d, length, stored, NULL);
    if (st != NANO_OK) return st;
    return nano_tokenizer_build_trie(d, length, out);
}

uint32_t nano_tokenizer_vocab_size(const nano_tokenizer *t) { return t ? t->vocab_size : 0; }
uint32_t nano_tokenizer_get_kind(const nano_tokenizer *t) { return t ? t->kind : NANO_TOKENIZER_KIND_NONE; }
int32_t nano_tokenizer_unknown_id(const nano_tokenizer *t) { return t ? t->unknown_id : -1; }
uint32_t nano_tokenizer_n_special(const nano_tokenizer *t) { return t ? t->n_special : 0; }
uint32_t nano_tokenizer_max_token_length(const nano_tokenizer *t) { return t ? t->max_len : 0; }

int nano_tokenizer_is_special(const nano_tokenizer *t, int32_t id) {
    if (!t || id < 0 || (uint32_t)id >= t->vocab_size) return 0;
    return t->special[id];
}

int32_t nano_tokenizer_find(const nano_tokenizer *t, const char *text, size_t len) {
    uint32_t i;
    if (!t || !text || len == 0) return -1; /* no token is the empty text, whatever the kind */
    if (t->kind == NANO_TOKENIZER_KIND_TRIE) {
        const unsigned char *s = (const unsigned char *)text;
        size_t pos = 0;
        uint32_t node = 0;
        while (pos < len) {
            uint32_t cp, n = utf8_get(s + pos, len - pos, &cp);
            if (!n || !(node = child_of(t, node, cp))) return -1;
            pos += n;
        }
        return t->node_token[node];
    }
    for (i = 0; i < t->vocab_size; i++)
        if (t->text_off[i + 1] - t->text_off[i] == len && memcmp(t->text + t->text_off[i], text, len) == 0)
            return (int32_t)i;
    return -1;
}

nano_status nano_tokenizer_encode(const nano_tokenizer *t, const char *text, size_t len, int allow_special,
                                  int32_t *ids, size_t cap, size_t *n_ids) {
    const unsigned char *s = (const unsigned char *)text;
    size_t pos = 0, count = 0;
    if (n_ids) *n_ids = 0;
    if (!t || (!text && len) || (!ids && cap)) return NANO_ERR_BAD_ARGUMENT;
    if (t->kind != NANO_TOKENIZER_KIND_TRIE) return NANO_ERR_UNSUPPORTED;
    while (pos < len) {
        uint32_t cp, first = utf8_get(s + pos, len - pos, &cp);
        int32_t best = -1;
        size_t best_end = pos + (first ? first : 1);
        if (first) {
            size_t p = pos;
            uint32_t node = 0, n = first;
            for (;;) {
                int32_t tok;
                node = child_of(t, node, cp);
                if (!node) break;
                p += n;
                tok = t->node_token[node];
                if (tok >= 0 && (allow_special || !t->special[tok])) {
                    best = tok;
                    best_end = p;
                }
                if (p >= len) break;
                n = utf8_get(s + p, len - p, &cp);
                if (!n) break;
            }
        }
        if (best < 0) {
            if (t->unknown_id < 0) return NANO_ERR_NO_TOKENIZER; /* a character no token stands for */
            best = t->unknown_id;
        }
        if (count < cap) ids[count] = best;
        count++;
        pos = best_end;
    }
    if (n_ids) *n_ids = count;
    return count > cap ? NANO_ERR_BUFFER_TOO_SMALL : NANO_OK;
}

nano_status nano_tokenizer_token_text(const nano_tokenizer *t, int32_t id, const char **text, size_t *len) {
    if (!t || !text || !len) return NANO_ERR_BAD_ARGUMENT;
    if (id < 0 || (uint32_t)id >= t->vocab_size) return NANO_ERR_BAD_TOKEN;
    *text = t->text + t->text_off[id];
    *len = (size_t)(t->text_off[id + 1] - t->text_off[id]);
    return NANO_OK;
}

nano_status nano_tokenizer_decode(const nano_tokenizer *t, const int32_t *ids, size_t n, char *buf, size_t cap,
                                  size_t *len) {
    size_t i, need = 0;
    if (len) *len = 0;
    if (!t || (!ids && n) || (!buf && cap)) return NANO_ERR_BAD_ARGUMENT;
    for (i = 0; i < n; i++)
        if (ids[i] < 0 || (uint32_t)ids[i] >= t->vocab_size) return NANO_ERR_BAD_TOKEN;
    for (i = 0; i < n; i++) {
        size_t k = (size_t)(t->text_off[ids[i] + 1] - t->text_off[ids[i]]);
        if (need + k < cap) memcpy(buf + need, t->text + t->text_off[ids[i]], k);
        need += k;
    }
    if (len) *len = need;
    if (need < cap) {
        buf[need] = '\0';
        return NANO_OK;
    }
    if (cap) buf[cap - 1] = '\0';
    return NANO_ERR_BUFFER_TOO_SMALL;
}
