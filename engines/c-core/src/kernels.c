/*
 * kernels.c - the numeric kernels: matmul (F32, Q8_0), RMSNorm, RoPE, softmax,
 * SwiGLU, and their selection (portable C or AVX2+FMA chosen at run time).
 *
 * Determinism: every output element of a matmul is one dot product computed by
 * one thread with a fixed order of operations that depends neither on the
 * number of threads nor on how many tokens are in the batch (the tiles below
 * only share loads, never partial sums). So prefill == decode and
 * 1 thread == N threads, bit for bit, within one build and kernel choice.
 *
 * Per-element order (both kernel families):
 *   F32:  8 lane partial sums over the first cols - cols % 8 values (lane j
 *         takes k = j mod 8), reduced as ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)),
 *         then the tail added one value at a time.
 *   Q8_0: per group g, the group sum s_g = sum_j (float)q_j * x_j (8 lanes when
 *         the group size is a multiple of 8, else sequential), accumulated as
 *         acc += s_g * scale_g (lane-wise), reduced like F32 at the end.
 */
#include <math.h>
#include <string.h>

#include "internal.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#if !defined(NANO_NO_SIMD) && (defined(__x86_64__) || defined(__i386__)) && \
    (defined(__GNUC__) || defined(__clang__))
#define NANO_HAVE_AVX2_KERNELS 1
#include <immintrin.h>
#define NANO_AVX2 __attribute__((target("avx2,fma")))
#else
#define NANO_HAVE_AVX2_KERNELS 0
#endif

/* Below this many multiply-adds a matmul runs on one thread: starting a team
 * costs more than it saves. (The result is the same either way.) */
#define NANO_PARALLEL_MIN_WORK (1 << 18)

int nano_thread_index(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

int nano_default_threads(void) {
#ifdef _OPENMP
    int n = omp_get_max_threads();
    return n > 0 ? n : 1;
#else
    return 1;
#endif
}

// ---------------------------------------------------------------------------
// Portable kernels

static float reduce8(const float l[8]) {
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

static float dot_portable(const float *a, const float *b, uint32_t n) {
    float l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    uint32_t n8 = n - n % 8, k, j;
    for (k = 0; k < n8; k += 8)
        for (j = 0; j < 8; j++) l[j] += a[k + j] * b[k + j];
    float s = reduce8(l);
    for (k = n8; k < n; k++) s += a[k] * b[k];
    return s;
}

static void scores_portable(float *out, const float *q, const float *k, size_t kstride, uint32_t n,
                            uint32_t d, float scale) {
    uint32_t s;
    for (s = 0; s < n; s++) out[s] = dot_portable(q, k + (size_t)s * kstride, d) * scale;
}

static void weighted_sum_portable(float *out, const float *p, const float *v, size_t vstride, uint32_t n,
                                  uint32_t d) {
    uint32_t s, j;
    for (j = 0; j < d; j++) out[j] = 0.0f;
    for (s = 0; s < n; s++) {
        const float w = p[s];
        const float *vs = v + (size_t)s * vstride;
        for (j = 0; j < d; j++) out[j] += w * vs[j];
    }
}

static void matmul_f32_portable(float *y, const float *x, const float *w, uint32_t n,
                                uint32_t rows, uint32_t cols, int nt) {
    long r;
    const double work = (double)n * rows * cols;
    NANO_PARALLEL_FOR(nt > 1 && work >= NANO_PARALLEL_MIN_WORK, r, (long)rows, {
        const float *wr = w + (size_t)r * cols;
        uint32_t t;
        for (t = 0; t < n; t++) y[(size_t)t * rows + r] = dot_portable(wr, x + (size_t)t * cols, cols);
    });
}

static float dot_q8_portable(const int8_t *q, const float *s, const float *x, uint32_t cols,
                             uint32_t group) {
    uint32_t g, j, k, n_groups = cols / group;
    if (group % 8 == 0) {
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (g = 0; g < n_groups; g++) {
            float gs[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            const int8_t *qg = q + (size_t)g * group;
            const float *xg = x + (size_t)g * group;
            const float scale = s[g];
            for (k = 0; k < group; k += 8)
                for (j = 0; j < 8; j++) gs[j] += (float)qg[k + j] * xg[k + j];
            for (j = 0; j < 8; j++) acc[j] += gs[j] * scale;
        }
        return reduce8(acc);
    } else {
        float acc = 0.0f;
        for (g = 0; g < n_groups; g++) {
            float gs = 0.0f;
            const int8_t *qg = q + (size_t)g * group;
            const float *xg = x + (size_t)g * group;
            for (k = 0; k < group; k++) gs += (float)qg[k] * xg[k];
            acc += gs * s[g];
        }
        return acc;
    }
}

static void matmul_q8_portable(float *y, const float *x, const int8_t *q, const float *s,
                               uint32_t n, uint32_t rows, uint32_t cols, uint32_t group, int nt) {
    long r;
    const double work = (double)n * rows * cols;
    const uint32_t spr = cols / group; /* scales per row */
    NANO_PARALLEL_FOR(nt > 1 && work >= NANO_PARALLEL_MIN_WORK, r, (long)rows, {
        const int8_t *qr = q + (size_t)r * cols;
        const float *sr = s + (size_t)r * spr;
        uint32_t t;
        for (t = 0; t < n; t++)
            y[(size_t)t * rows + r] = dot_q8_portable(qr, sr, x + (size_t)t * cols, cols, group);
    });
}

// ---------------------------------------------------------------------------
// AVX2 + FMA kernels (compiled for x86 with GCC/Clang, used when the CPU has them)

#if NANO_HAVE_AVX2_KERNELS

NANO_AVX2 static inline float hsum8(__m256 v) {
    /* ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), the order of reduce8 */
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_shuffle_ps(a, a, 1));
    return _mm_cvtss_f32(a);
}

NANO_AVX2 static float dot_avx2(const float *a, const float *b, uint32_t n) {
    __m256 acc = _mm256_setzero_ps();
    uint32_t n8 = n - n % 8, k;
    for (k = 0; k < n8; k += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc);
    float s = hsum8(acc);
    for (k = n8; k < n; k++) s += a[k] * b[k];
    return s;
}

/* The horizontal sums of 8 vectors at once, each with hsum8's association
 * ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)): out[r] = hsum8(v[r]) exactly. */
NANO_AVX2 static inline __m256 hsum8x8(const __m256 v[8]) {
    /* b = lo + hi of each vector, two vectors per register */
    const __m256 s01 = _mm256_add_ps(_mm256_permute2f128_ps(v[0], v[1], 0x20), _mm256_permute2f128_ps(v[0], v[1], 0x31));
    const __m256 s23 = _mm256_add_ps(_mm256_permute2f128_ps(v[2], v[3], 0x20), _mm256_permute2f128_ps(v[2], v[3], 0x31));
    const __m256 s45 = _mm256_add_ps(_mm256_permute2f128_ps(v[4], v[5], 0x20), _mm256_permute2f128_ps(v[4], v[5], 0x31));
    const __m256 s67 = _mm256_add_ps(_mm256_permute2f128_ps(v[6], v[7], 0x20), _mm256_permute2f128_ps(v[6], v[7], 0x31));
    /* c = (b0+b2, b1+b3) */
    const __m256 c0123 = _mm256_add_ps(_mm256_shuffle_ps(s01, s23, _MM_SHUFFLE(1, 0, 1, 0)),
                                       _mm256_shuffle_ps(s01, s23, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m256 c4567 = _mm256_add_ps(_mm256_shuffle_ps(s45, s67, _MM_SHUFFLE(1, 0, 1, 0)),
                                       _mm256_shuffle_ps(s45, s67, _MM_SHUFFLE(3, 2, 3, 2)));
    /* c0 + c1: lanes hold vectors 0 2 4 6 | 1 3 5 7 */
    const __m256 sum = _mm256_add_ps(_mm256_shuffle_ps(c0123, c4567, _MM_SHUFFLE(2, 0, 2, 0)),
                                     _mm256_shuffle_ps(c0123, c4567, _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm256_permutevar8x32_ps(sum, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

NANO_AVX2 static void scores_avx2(float *out, const float *q, const float *k, size_t kstride, uint32_t n,
                                 uint32_t d, float scale) {
    uint32_t s = 0, j, i;
    if (d % 8 == 0) { /* eight keys at a time, one transposed reduction */
        const __m256 vs = _mm256_set1_ps(scale);
        for (; s + 8 <= n; s += 8) {
            __m256 p[8];
            for (i = 0; i < 8; i++) {
                const float *ks = k + (size_t)(s + i) * kstride;
                __m256 acc = _mm256_mul_ps(_mm256_loadu_ps(q), _mm256_loadu_ps(ks));
                for (j = 8; j < d; j += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), _mm256_loadu_ps(ks + j), acc);
                p[i] = acc;
            }
            _mm256_storeu_ps(out + s, _mm256_mul_ps(hsum8x8(p), vs));
        }
        for (; s < n; s++) {
            const float *ks = k + (size_t)s * kstride;
            __m256 acc = _mm256_mul_ps(_mm256_loadu_ps(q), _mm256_loadu_ps(ks));
            for (j = 8; j < d; j += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), _mm256_loadu_ps(ks + j), acc);
            out[s] = hsum8(acc) * scale;
        }
        return;
    }
    for (; s < n; s++) out[s] = dot_avx2(q, k + (size_t)s * kstride, d) * scale;
}

NANO_AVX2 static void weighted_sum_avx2(float *out, const float *p, const float *v, size_t vstride, uint32_t n,
                                        uint32_t d) {
    /* four partial sums over the keys (s mod 4), so that the FMAs do not wait on each other */
    uint32_t s, j, d8 = d - d % 8;
    for (j = 0; j < d8; j += 8) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        const float *vj = v + j;
        for (s = 0; s + 4 <= n; s += 4) {
            a0 = _mm256_fmadd_ps(_mm256_set1_ps(p[s]), _mm256_loadu_ps(vj + (size_t)s * vstride), a0);
            a1 = _mm256_fmadd_ps(_mm256_set1_ps(p[s + 1]), _mm256_loadu_ps(vj + (size_t)(s + 1) * vstride), a1);
            a2 = _mm256_fmadd_ps(_mm256_set1_ps(p[s + 2]), _mm256_loadu_ps(vj + (size_t)(s + 2) * vstride), a2);
            a3 = _mm256_fmadd_ps(_mm256_set1_ps(p[s + 3]), _mm256_loadu_ps(vj + (size_t)(s + 3) * vstride), a3);
        }
        for (; s < n; s++) a0 = _mm256_fmadd_ps(_mm256_set1_ps(p[s]), _mm256_loadu_ps(vj + (size_t)s * vstride), a0);
        _mm256_storeu_ps(out + j, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    }
    for (j = d8; j < d; j++) {
        float acc = 0.0f;
        for (s = 0; s < n; s++) acc += p[s] * v[(size_t)s * vstride + j];
        out[j] = acc;
    }
}

/* exp on 8 floats: n = round(x log2 e), r = x - n ln 2 (in two parts), a
 * degree-6 polynomial for e^r on [-ln2/2, ln2/2] (the Cephes expf
 * coefficients), times 2^n built in the exponent bits. Relative error about
 * 2 ulp; inputs below -87.3 give 0 (softmax feeds x - max <= 0). */
NANO_AVX2 static inline __m256 exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.3f);
    const __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    __m256 n, r, p, r2;
    __m256i e;
    x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    r2 = _mm256_mul_ps(r, r);
    p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    p = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    return _mm256_andnot_ps(underflow, p);
}

NANO_AVX2 static void softmax_avx2(float *x, uint32_t n) {
    uint32_t i, n8 = n - n % 8;
    float mx = x[0], inv, tail[8];
    double sum, lanes[4];
    __m256 vmax, e;
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    if (n8) {
        __m256 m = _mm256_loadu_ps(x);
        float l[8];
        for (i = 8; i < n8; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
        _mm256_storeu_ps(l, m);
        for (i = 0; i < 8; i++)
            if (l[i] > mx) mx = l[i];
    }
    for (i = n8; i < n; i++)
        if (x[i] > mx) mx = x[i];
    vmax = _mm256_set1_ps(mx);
    for (i = 0; i < n8; i += 8) {
        e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax));
        _mm256_storeu_ps(x + i, e);
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    if (n8 < n) { /* the tail in one padded vector (the padding's exp is 0) */
        for (i = 0; i < 8; i++) tail[i] = n8 + i < n ? x[n8 + i] - mx : -INFINITY;
        e = exp8(_mm256_loadu_ps(tail));
        _mm256_storeu_ps(tail, e);
        for (i = n8; i < n; i++) x[i] = tail[i - n8];
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    _mm256_storeu_pd(lanes, _mm256_add_pd(s0, s1));
    sum = (lanes[0] + lanes[2]) + (lanes[1] + lanes[3]);
    inv = (float)(1.0 / sum);
    for (i = 0; i < n8; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), _mm256_set1_ps(inv)));
    for (i = n8; i < n; i++) x[i] *= inv;
}

/* R rows x T tokens of F32 dot products; R, T compile-time constants after inlining. */
#define F32_TILE(R, T)                                                                         \
    NANO_AVX2 static void f32_tile_##R##x##T(float *y, uint32_t ystride, const float *x,        \
                                              const float *w, uint32_t cols) {                  \
        __m256 acc[R][T];                                                                       \
        uint32_t n8 = cols - cols % 8, k;                                                       \
        int i, t;                                                                               \
        for (i = 0; i < R; i++)                                                                 \
            for (t = 0; t < T; t++) acc[i][t] = _mm256_setzero_ps();                            \
        for (k = 0; k < n8; k += 8) {                                                           \
            __m256 xv[T];                                                                       \
            for (t = 0; t < T; t++) xv[t] = _mm256_loadu_ps(x + (size_t)t * cols + k);          \
            for (i = 0; i < R; i++) {                                                           \
                __m256 wv = _mm256_loadu_ps(w + (size_t)i * cols + k);                          \
                for (t = 0; t < T; t++) acc[i][t] = _mm256_fmadd_ps(wv, xv[t], acc[i][t]);      \
            }                                                                                   \
        }                                                                                       \
        for (i = 0; i < R; i++)                                                                 \
            for (t = 0; t < T; t++) {                                                           \
                const float *wr = w + (size_t)i * cols, *xr = x + (size_t)t * cols;             \
                float s = hsum8(acc[i][t]);                                                     \
                for (k = n8; k < cols; k++) s += wr[k] * xr[k];                                 \
                y[(size_t)t * ystride + i] = s;                                                 \
            }                                                                                   \
    }

F32_TILE(4, 3)
F32_TILE(4, 1)
F32_TILE(1, 1)

NANO_AVX2 static void f32_rows(float *y, const float *x, const float *w, uint32_t n, uint32_t rows,
                               uint32_t cols, uint32_t r0, uint32_t nr) {
    uint32_t t;
    if (nr == 4) {
        for (t = 0; t + 3 <= n; t += 3)
            f32_tile_4x3(y + (size_t)t * rows + r0, rows, x + (size_t)t * cols, w + (size_t)r0 * cols, cols);
        for (; t < n; t++)
            f32_tile_4x1(y + (size_t)t * rows + r0, rows, x + (size_t)t * cols, w + (size_t)r0 * cols, cols);
    } else {
        uint32_t r;
        for (r = r0; r < r0 + nr; r++)
            for (t = 0; t < n; t++)
                f32_tile_1x1(y + (size_t)t * rows + r, rows, x + (size_t)t * cols, w + (size_t)r * cols, cols);
    }
}

static void matmul_f32_avx2(float *y, const float *x, const float *w, uint32_t n, uint32_t rows,
                            uint32_t cols, int nt) {
    long tile;
    const long n_tiles = ((long)rows + 3) / 4;
    const double work = (double)n * rows * cols;
    NANO_PARALLEL_FOR(nt > 1 && work >= NANO_PARALLEL_MIN_WORK, tile, n_tiles, {
        uint32_t r0 = (uint32_t)tile * 4;
        uint32_t nr = rows - r0 < 4 ? rows - r0 : 4;
        f32_rows(y, x, w, n, rows, cols, r0, nr);
    });
}

/* Eight int8 -> eight floats */
NANO_AVX2 static inline __m256 load_q8x8(const int8_t *q) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)q)));
}

/* R rows x T tokens of Q8_0 dot products, group size a multiple of 8. */
#define Q8_TILE(R, T)                                                                          \
    NANO_AVX2 static void q8_tile_##R##x##T(float *y, uint32_t ystride, const float *x,         \
                                             const int8_t *q, const float *s, uint32_t cols,    \
                                             uint32_t group) {                                  \
        __m256 acc[R][T];                                                                       \
        const uint32_t spr = cols / group;                                                      \
        uint32_t g, k;                                                                          \
        int i, t;                                                                               \
        for (i = 0; i < R; i++)                                                                 \
            for (t = 0; t < T; t++) acc[i][t] = _mm256_setzero_ps();                            \
        for (g = 0; g < spr; g++) {                                                             \
            __m256 gs[R][T];                                                                    \
            const uint32_t base = g * group;                                                    \
            for (i = 0; i < R; i++)                                                             \
                for (t = 0; t < T; t++) gs[i][t] = _mm256_setzero_ps();                         \
            for (k = base; k < base + group; k += 8) {                                          \
                __m256 qv[R];                                                                   \
                for (i = 0; i < R; i++) qv[i] = load_q8x8(q + (size_t)i * cols + k);            \
                for (t = 0; t < T; t++) {                                                       \
                    __m256 xv = _mm256_loadu_ps(x + (size_t)t * cols + k);                      \
                    for (i = 0; i < R; i++) gs[i][t] = _mm256_fmadd_ps(qv[i], xv, gs[i][t]);    \
                }                                                                               \
            }                                                                                   \
            for (i = 0; i < R; i++) {                                                           \
                __m256 sc = _mm256_set1_ps(s[(size_t)i * spr + g]);                             \
                for (t = 0; t < T; t++) acc[i][t] = _mm256_fmadd_ps(gs[i][t], sc, acc[i][t]);   \
            }                                                                                   \
        }                                                                                       \
        for (i = 0; i < R; i++)                                                                 \
            for (t = 0; t < T; t++) y[(size_t)t * ystride + i] = hsum8(acc[i][t]);              \
    }

Q8_TILE(2, 3)
Q8_TILE(4, 1)
Q8_TILE(1, 1)

NANO_AVX2 static void q8_rows(float *y, const float *x, const int8_t *q, const float *s, uint32_t n,
                              uint32_t rows, uint32_t cols, uint32_t group, uint32_t r0,
                              uint32_t nr) {
    const uint32_t spr = cols / group;
    uint32_t t, r = r0;
    if (nr == 4) {
        if (n == 1) {
            q8_tile_4x1(y + r0, rows, x, q + (size_t)r0 * cols, s + (size_t)r0 * spr, cols, group);
            return;
        }
        for (r = r0; r < r0 + 4; r += 2) {
            for (t = 0; t + 3 <= n; t += 3)
                q8_tile_2x3(y + (size_t)t * rows + r, rows, x + (size_t)t * cols, q + (size_t)r * cols,
                            s + (size_t)r * spr, cols, group);
            for (; t < n; t++) {
                q8_tile_1x1(y + (size_t)t * rows + r, rows, x + (size_t)t * cols, q + (size_t)r * cols,
                            s + (size_t)r * spr, cols, group);
                q8_tile_1x1(y + (size_t)t * rows + r + 1, rows, x + (size_t)t * cols,
                            q + (size_t)(r + 1) * cols, s + (size_t)(r + 1) * spr, cols, group);
            }
        }
        return;
    }
    for (r = r0; r < r0 + nr; r++)
        for (t = 0; t < n; t++)
            q8_tile_1x1(y + (size_t)t * rows + r, rows, x + (size_t)t * cols, q + (size_t)r * cols,
                        s + (size_t)r * spr, cols, group);
}

static void matmul_q8_avx2(float *y, const float *x, const int8_t *q, const float *s, uint32_t n,
                           uint32_t rows, uint32_t cols, uint32_t group, int nt) {
    long tile;
    const long n_tiles = ((long)rows + 3) / 4;
    const double work = (double)n * rows * cols;
    if (group % 8 != 0) { /* groups that do not fill a vector: the portable order */
        matmul_q8_portable(y, x, q, s, n, rows, cols, group, nt);
        return;
    }
    NANO_PARALLEL_FOR(nt > 1 && work >= NANO_PARALLEL_MIN_WORK, tile, n_tiles, {
        uint32_t r0 = (uint32_t)tile * 4;
        uint32_t nr = rows - r0 < 4 ? rows - r0 : 4;
        q8_rows(y, x, q, s, n, rows, cols, group, r0, nr);
    });
}

static int cpu_has_avx2_fma(void) {
    /* (the CPU model is initialised by the compiler's runtime before main) */
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

#endif /* NANO_HAVE_AVX2_KERNELS */

// ---------------------------------------------------------------------------
// Selection and the shared helpers

void nano_kernels_select(nano_kernels_table *t, uint32_t kind) {
    t->name = "portable";
    t->matmul_f32 = matmul_f32_portable;
    t->matmul_q8 = matmul_q8_portable;
    t->dot = dot_portable;
    t->scores = scores_portable;
    t->softmax = nano_softmax;
    t->weighted_sum = weighted_sum_portable;
#if NANO_HAVE_AVX2_KERNELS
    if (kind == NANO_KERNELS_AUTO && cpu_has_avx2_fma()) {
        t->name = "avx2";
        t->matmul_f32 = matmul_f32_avx2;
        t->matmul_q8 = matmul_q8_avx2;
        t->dot = dot_avx2;
        t->scores = scores_avx2;
        t->softmax = softmax_avx2;
        t->weighted_sum = weighted_sum_avx2;
    }
#else
    (void)kind;
#endif
}

void nano_matmul(const nano_kernels_table *k, float *y, const float *x, const nano_mat *w, uint32_t n,
                 int nt) {
    if (w->f)
        k->matmul_f32(y, x, w->f, n, w->rows, w->cols, nt);
    else
        k->matmul_q8(y, x, w->q, w->s, n, w->rows, w->cols, w->group, nt);
}

void nano_rmsnorm(float *y, const float *x, const float *w, uint32_t n, float eps) {
    /* The sum of squares in double: closer to PyTorch's pairwise float sum than
     * a running float sum, and cheap next to the matmuls. */
    double ss = 0.0;
    uint32_t i;
    for (i = 0; i < n; i++) ss += (double)x[i] * (double)x[i];
    float mean = (float)(ss / (double)n);
    float inv = 1.0f / sqrtf(mean + eps);
    for (i = 0; i < n; i++) y[i] = (x[i] * inv) * w[i];
}

void nano_rope(float *x, uint32_t n_heads, uint32_t head_dim, const float *cos_row,
               const float *sin_row) {
    uint32_t h, i, half = head_dim / 2;
    for (h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * head_dim;
        for (i = 0; i < half; i++) {
            float x0 = v[2 * i], x1 = v[2 * i + 1];
            float c = cos_row[i], s = sin_row[i];
            v[2 * i] = x0 * c - x1 * s;
            v[2 * i + 1] = x0 * s + x1 * c;
        }
    }
}

void nano_softmax(float *x, uint32_t n) {
    /* The sum in double: a running float sum over thousands of keys would be
     * off by up to n ulp; this stays within a few ulp of the exact softmax. */
    uint32_t i;
    float mx = x[0], inv;
    double sum = 0.0;
    for (i = 1; i < n; i++)
        if (x[i] > mx) mx = x[i];
    for (i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    inv = (float)(1.0 / sum);
    for (i = 0; i < n; i++) x[i] *= inv;
}

void nano_swiglu(float *y, const float *a, const float *b, uint32_t n) {
    uint32_t i;
    for (i = 0; i < n; i++) {
        float g = a[i];
        y[i] = (g / (1.0f + expf(-g))) * b[i];
    }
}

void nano_mat_row(const nano_mat *m, uint32_t row, float *out) {
    uint32_t j;
    if (m->f) {
        memcpy(out, m->f + (size_t)row * m->cols, (size_t)m->cols * sizeof(float));
        return;
    }
    const int8_t *q = m->q + (size_t)row * m->cols;
    const float *s = m->s + (size_t)row * (m->cols / m->group);
    for (j = 0; j < m->cols; j++) out[j] = (float)q[j] * s[j / m->group];
}

// ---------------------------------------------------------------------------
// Q8_0 quantization (the spec.py rule, bit for bit)

nano_status nano_quantize_q8_0(const float *x, uint64_t rows, uint64_t cols, uint32_t group_size,
                               int8_t *q, float *scales) {
    uint64_t r, g, j, n_groups;
    if ((!x || !q || !scales) && rows * cols != 0) return NANO_ERR_BAD_ARGUMENT;
    if (group_size == 0 || cols % group_size != 0) return NANO_ERR_BAD_GROUP_SIZE;
    n_groups = cols / group_size;
    for (r = 0; r < rows; r++)
        for (j = 0; j < cols; j++)
            if (!isfinite(x[r * cols + j])) return NANO_ERR_BAD_ARGUMENT;
    for (r = 0; r < rows; r++) {
        for (g = 0; g < n_groups; g++) {
            const float *xg = x + r * cols + g * group_size;
            int8_t *qg = q + r * cols + g * group_size;
            float amax = 0.0f, scale;
            for (j = 0; j < group_size; j++) {
                float a = fabsf(xg[j]);
                if (a > amax) amax = a;
            }
            scale = amax / 127.0f;
            scales[r * n_groups + g] = scale;
            for (j = 0; j < group_size; j++) {
                if (scale == 0.0f) {
                    qg[j] = 0;
                } else {
                    float v = roundf(xg[j] / scale);
                    if (v > 127.0f) v = 127.0f;
                    if (v < -127.0f) v = -127.0f;
                    qg[j] = (int8_t)v;
                }
            }
        }
    }
    return NANO_OK;
}

void nano_dequantize_q8_0(const int8_t *q, const float *scales, uint64_t n, uint32_t group_size,
                          float *out) {
    uint64_t i;
    if (group_size == 0) return;
    for (i = 0; i < n; i++) out[i] = (float)q[i] * scales[i / group_size];
}
