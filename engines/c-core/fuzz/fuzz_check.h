/* What the nano-wss fuzz targets share: an invariant check that aborts (libFuzzer
 * reports the abort as a crash, with the input), and a UTF-8 validator written
 * independently of server/json.c, to check its output against.
 *
 * Define FUZZ_NAME (the program's name, a string) before including this. */
#ifndef NANO_FUZZ_CHECK_H
#define NANO_FUZZ_CHECK_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, FUZZ_NAME ": invariant failed at line %d: %s\n", __LINE__, #cond); \
            abort();                                                                         \
        }                                                                                    \
    } while (0)

/* Length of the well-formed UTF-8 sequence at s[i] (RFC 3629: no overlong forms,
 * no surrogates, nothing above U+10FFFF), or 0; written from the table of
 * well-formed byte sequences (Unicode 15, table 3-7) rather than by decoding. */
static inline size_t wf_length(const uint8_t *s, size_t n, size_t i) {
    uint8_t a = s[i], lo = 0x80, hi = 0xBF;
    size_t len, k;
    if (a < 0x80) return 1;
    if (a >= 0xC2 && a <= 0xDF) len = 2;
    else if (a >= 0xE0 && a <= 0xEF) len = 3;
    else if (a >= 0xF0 && a <= 0xF4) len = 4;
    else return 0;
    if (a == 0xE0) lo = 0xA0;
    if (a == 0xED) hi = 0x9F;
    if (a == 0xF0) lo = 0x90;
    if (a == 0xF4) hi = 0x8F;
    if (n - i < len) return 0;
    if (s[i + 1] < lo || s[i + 1] > hi) return 0;
    for (k = 2; k < len; k++)
        if (s[i + k] < 0x80 || s[i + k] > 0xBF) return 0;
    return len;
}

/* Whether s[0..n) is well-formed UTF-8. */
static inline int valid_utf8(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        size_t k = wf_length(s, n, i);
        if (!k) return 0;
        i += k;
    }
    return 1;
}

#endif /* NANO_FUZZ_CHECK_H */
