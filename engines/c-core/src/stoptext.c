/*
 * stoptext.c - stop texts: ending a generation where a text appears in its
 * output, as nano_train.sampling does with stop strings (_resolve_stops,
 * _held_back and the loop of _generate). `nano run --stop` and nano-wss's
 * "stop" both use it. Texts are compared as UTF-8 bytes: every token's text is
 * whole characters, so a byte match is a character match.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct nano_stop_texts {
    const nano_tokenizer *tok;
    char *copy;          /* the texts matched on the output, each NUL-terminated, one after another */
    const char **texts;  /* [n_texts] into copy */
    size_t *lens;        /* [n_texts] */
    uint32_t n_texts;
    int32_t *ids;        /* [n_ids] the special tokens among the texts */
    uint32_t n_ids;
    uint32_t longest;    /* the longest matched text's length in characters */
    char *window;        /* [window_cap] the text of the last `longest` tokens (check's scratch) */
    size_t window_cap;
};

/* The offset of the first needle[nn] (nn > 0) in hay[hn], or SIZE_MAX. */
static size_t find_text(const char *hay, size_t hn, const char *needle, size_t nn) {
    size_t i;
    for (i = 0; i + nn <= hn; i++)
        if (memcmp(hay + i, needle, nn) == 0) return i;
    return SIZE_MAX;
}

/* The bytes of the character at s[0] (s[n], n > 0): 1 for a byte that starts no
 * well-formed character, which the tokenizer reads as a character of its own. */
static size_t char_bytes(const char *s, size_t n) {
    size_t k = nano_utf8_char_bytes(s, n);
    return k ? k : 1;
}

/* Whether the characters of s[n] hold the character c[k] (whole characters compared:
 * a lone byte 0x80 is not found inside the 4 bytes of an emoji). */
static int holds_char(const char *s, size_t n, const char *c, size_t k) {
    size_t i, m;
    for (i = 0; i < n; i += m) {
        m = char_bytes(s + i, n - i);
        if (m == k && memcmp(s + i, c, k) == 0) return 1;
    }
    return 0;
}

/* Whether the vocabulary gives text[n] back as it is, encoded (special-token text read
 * as those tokens when `special`) and decoded: not when a character has no token (it
 * becomes <|unknown|>, or fails without one). -1 when out of memory. */
static int round_trips(const nano_tokenizer *tok, const char *text, size_t n, int special) {
    size_t n_ids = 0, len = 0;
    int32_t *ids;
    char *back;
    int same;
    nano_status st = nano_tokenizer_encode(tok, text, n, special, NULL, 0, &n_ids);
    if (st != NANO_OK && st != NANO_ERR_BUFFER_TOO_SMALL) return 0;
    if (!(ids = (int32_t *)malloc((n_ids + 1) * sizeof *ids))) return -1;
    nano_tokenizer_encode(tok, text, n, special, ids, n_ids, &n_ids);
    nano_tokenizer_decode(tok, ids, n_ids, NULL, 0, &len);
    if (!(back = (char *)malloc(len + 1))) {
        free(ids);
        return -1;
    }
    nano_tokenizer_decode(tok, ids, n_ids, back, len + 1, &len);
    same = len == n && memcmp(back, text, n) == 0;
    free(back);
    free(ids);
    return same;
}

nano_status nano_stop_texts_missing(const nano_tokenizer *tok, const char *text, size_t len, char *buf,
                                    size_t cap, size_t *len_out) {
    char *missing;
    size_t n = 0, i, k;
    if (!tok || (!text && len) || (!buf && cap) || !len_out) return NANO_ERR_BAD_ARGUMENT;
    if (!(missing = (char *)malloc(len + 1))) return NANO_ERR_OUT_OF_MEMORY;
    for (i = 0; i < len; i += k) {
        int ok;
        k = char_bytes(text + i, len - i);
        if ((ok = round_trips(tok, text + i, k, 0)) < 0) {
            free(missing);
            return NANO_ERR_OUT_OF_MEMORY;
        }
        if (!ok && !holds_char(missing, n, text + i, k)) {
            memcpy(missing + n, text + i, k);
            n += k;
        }
    }
    *len_out = n;
    if (cap > n) {
        memcpy(buf, missing, n);
        buf[n] = '\0';
    } else if (cap) {
        memcpy(buf, missing, cap);
    }
    free(missing);
    return cap > n ? NANO_OK : NANO_ERR_BUFFER_TOO_SMALL;
}

void nano_stop_texts_free(nano_stop_texts *stops) {
    if (!stops) return;
    free(stops->copy);
    free(stops->texts);
    free(stops->lens);
    free(stops->ids);
    free(stops->window);
    free(stops);
}

/* The longest token text of tok in bytes. */
static size_t longest_token_bytes(const nano_tokenizer *tok) {
    uint32_t v = nano_tokenizer_vocab_size(tok), id;
    size_t most = 0, len;
    const char *text;
    for (id = 0; id < v; id++)
        if (nano_tokenizer_token_text(tok, (int32_t)id, &text, &len) == NANO_OK && len > most) most = len;
    return most;
}

nano_status nano_stop_texts_init(const nano_tokenizer *tok, const char *const *texts, uint32_t n,
                                 nano_stop_texts **out, uint32_t *bad) {
    nano_stop_texts *s;
    size_t total = 0, used = 0, len;
    uint64_t cap;
    uint32_t i;
    if (bad) *bad = 0;
    if (!out || (!texts && n)) return NANO_ERR_BAD_ARGUMENT;
    *out = NULL;
    /* the checks, in order: the first bad text is the one named */
    for (i = 0; i < n; i++) {
        int ok;
        if (bad) *bad = i;
        if (!texts[i] || !texts[i][0]) return NANO_ERR_BAD_ARGUMENT;
        if (!tok) return NANO_ERR_NO_TOKENIZER;
        len = strlen(texts[i]);
        if ((ok = round_trips(tok, texts[i], len, 1)) < 0) return NANO_ERR_OUT_OF_MEMORY;
        if (!ok) return NANO_ERR_NO_TOKENIZER;
        total += len + 1;
    }
    if (bad) *bad = 0;
    if (!(s = (nano_stop_texts *)calloc(1, sizeof *s))) return NANO_ERR_OUT_OF_MEMORY;
    s->tok = tok;
    if (n && (!(s->copy = (char *)malloc(total)) || !(s->texts = (const char **)malloc(n * sizeof *s->texts)) ||
              !(s->lens = (size_t *)malloc(n * sizeof *s->lens)) ||
              !(s->ids = (int32_t *)malloc(n * sizeof *s->ids)))) {
        nano_stop_texts_free(s);
        return NANO_ERR_OUT_OF_MEMORY;
    }
    for (i = 0; i < n; i++) {
        int32_t special;
        len = strlen(texts[i]);
        special = nano_tokenizer_find(tok, texts[i], len);
        if (special >= 0 && nano_tokenizer_is_special(tok, special)) {
            s->ids[s->n_ids++] = special;
        } else {
            uint32_t chars = 0;
            size_t b;
            for (b = 0; b < len; b++) chars += ((unsigned char)texts[i][b] & 0xC0) != 0x80;
            memcpy(s->copy + used, texts[i], len + 1);
            s->texts[s->n_texts] = s->copy + used;
            s->lens[s->n_texts++] = len;
            used += len + 1;
            if (chars > s->longest) s->longest = chars;
        }
    }
    /* the window holds at most `longest` tokens' texts: sized once, here */
    if (s->n_texts) {
        if (!nano_mul_u64(s->longest, longest_token_bytes(tok), &cap) || cap > SIZE_MAX - 1 ||
            !(s->window = (char *)malloc((size_t)cap + 1))) {
            nano_stop_texts_free(s);
            return NANO_ERR_OUT_OF_MEMORY;
        }
        s->window_cap = (size_t)cap;
    }
    *out = s;
    return NANO_OK;
}

const int32_t *nano_stop_texts_ids(const nano_stop_texts *stops, uint32_t *n) {
    if (n) *n = stops ? stops->n_ids : 0;
    return stops ? stops->ids : NULL;
}

uint32_t nano_stop_texts_count(const nano_stop_texts *stops) { return stops ? stops->n_texts : 0; }

/* How many of ids[n] have a text that starts before byte `at` of their joined text. */
static uint32_t starting_before(const nano_tokenizer *tok, const int32_t *ids, uint32_t n, size_t at) {
    size_t length = 0, len;
    const char *text;
    uint32_t k;
    for (k = 0; k < n; k++) {
        if (length >= at) return k;
        nano_tokenizer_token_text(tok, ids[k], &text, &len);
        length += len;
    }
    return n;
}

/* A stop text ends in the newest token and no token's text is empty, so the last
 * `longest` tokens hold all there is to see (earlier checks saw no stop text). */
nano_status nano_stop_texts_check(nano_stop_texts *stops, const int32_t *gen, uint32_t n, uint32_t *upto,
                                  int *stopped) {
    uint32_t first, k;
    size_t at = SIZE_MAX, c, i, used = 0, len;
    const char *text;
    if (!stops || (!gen && n) || !upto || !stopped) return NANO_ERR_BAD_ARGUMENT;
    if (!stops->n_texts) {
        *upto = n;
        *stopped = 0;
        return NANO_OK;
    }
    first = n > stops->longest ? n - stops->longest : 0;
    for (k = first; k < n; k++) {
        if (nano_tokenizer_token_text(stops->tok, gen[k], &text, &len) != NANO_OK) return NANO_ERR_BAD_TOKEN;
        if (len > stops->window_cap - used) return NANO_ERR_BUFFER_TOO_SMALL; /* cannot happen: sized at init */
        memcpy(stops->window + used, text, len);
        used += len;
    }
    for (i = 0; i < stops->n_texts; i++) {
        size_t where = find_text(stops->window, used, stops->texts[i], stops->lens[i]);
        if (where < at) at = where;
    }
    if (at != SIZE_MAX) {
        *upto = first + starting_before(stops->tok, gen + first, n - first, at);
        *stopped = 1;
        return NANO_OK;
    }
    /* the earliest character from which the text could still become a stop text */
    for (c = 0; c < used; c++) {
        int could = 0;
        if (((unsigned char)stops->window[c] & 0xC0) == 0x80) continue; /* inside a character */
        for (i = 0; i < stops->n_texts && !could; i++)
            could = used - c <= stops->lens[i] && memcmp(stops->window + c, stops->texts[i], used - c) == 0;
        if (could) break;
    }
    *upto = first + starting_before(stops->tok, gen + first, n - first, c);
    *stopped = 0;
    return NANO_OK;
}
