/*
 * fuzz_tokenizer.c - libFuzzer target for the tokenizer: the input's first
 * byte picks the part. Odd: the bytes are a tokenizer section
 * (nano_tokenizer_init_section), then encoded as text too. Even: the bytes are
 * text encoded with a fixed small vocabulary (multi-character, special and
 * CJK tokens), with and without special tokens, and decoded back.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "nano.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* A section with: <|unknown|> (special), <|eos|> (special), a, b, ab, abc, 世, 世界, é */
static size_t fixed_section(uint8_t *out) {
    static const uint32_t toks[][12] = {
        {11, 1, '<', '|', 'u', 'n', 'k', 'n', 'o', 'w', 'n', '|'},
        {7, 1, '<', '|', 'e', 'o', 's', '|', '>'},
        {1, 0, 'a'}, {1, 0, 'b'}, {2, 0, 'a', 'b'}, {3, 0, 'a', 'b', 'c'},
        {1, 0, 0x4E16}, {2, 0, 0x4E16, 0x754C}, {1, 0, 0xE9}, {1, 0, 0x1F600},
    };
    size_t pos = 8, i, j;
    for (i = 0; i < sizeof toks / sizeof toks[0]; i++) {
        uint32_t n = toks[i][0];
        out[pos] = (uint8_t)n;
        out[pos + 1] = (uint8_t)toks[i][1];
        out[pos + 2] = 0xFF;
        out[pos + 3] = 0xFF;
        put32(out + pos + 4, (uint32_t)i);
        pos += 8;
        for (j = 0; j < n; j++) {
            /* the unknown token's text ends with '>' past the 12-slot row */
            put32(out + pos, j + 2 < 12 ? toks[i][j + 2] : '>');
            pos += 4;
        }
    }
    put32(out, (uint32_t)pos);
    put32(out + 4, (uint32_t)(sizeof toks / sizeof toks[0]));
    return pos;
}

static void exercise(const nano_tokenizer *tok, const uint8_t *text, size_t len) {
    size_t n = 0, n2 = 0, out_len;
    int32_t *ids;
    char *buf;
    int allow;
    for (allow = 0; allow < 2; allow++) {
        nano_tokenizer_encode(tok, (const char *)text, len, allow, NULL, 0, &n);
        ids = (int32_t *)malloc((n ? n : 1) * sizeof(int32_t));
        if (!ids) return;
        if (nano_tokenizer_encode(tok, (const char *)text, len, allow, ids, n, &n2) == NANO_OK && n2 == n) {
            nano_tokenizer_decode(tok, ids, n, NULL, 0, &out_len);
            buf = (char *)malloc(out_len + 1);
            if (buf) {
                if (nano_tokenizer_decode(tok, ids, n, buf, out_len + 1, &out_len) != NANO_OK) abort();
                free(buf);
            }
        }
        free(ids);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    nano_tokenizer *tok = NULL;
    uint8_t *copy;
    if (size == 0) return 0;
    copy = (uint8_t *)malloc(size);
    if (!copy) return 0;
    memcpy(copy, data + 1, size - 1);
    if (data[0] & 1) {
        if (nano_tokenizer_init_section(copy, size - 1, 0, &tok) == NANO_OK) {
            exercise(tok, copy, size - 1);
            nano_tokenizer_free(tok);
        }
    } else {
        uint8_t section[1024];
        size_t len = fixed_section(section);
        if (nano_tokenizer_init_section(section, len, 0, &tok) != NANO_OK) abort();
        exercise(tok, copy, size - 1);
        nano_tokenizer_free(tok);
    }
    free(copy);
    return 0;
}
