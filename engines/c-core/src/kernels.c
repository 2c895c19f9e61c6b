/*
 * kernels.c - the numeric kernels: matmul (F32, Q8_0), RMSNorm, RoPE, softmax,
 * SwiGLU, attention's scores and weighted sums, and their selection (portable
 * C or AVX2+FMA chosen at run time).
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
 *
 * Speed (AVX2; README "Performance" has the measurements). Decode reads every
 * weight once per token and is bound by memory: F32 goes eight rows at a time
 * (eight load streams; short rows one at a time with a software prefetch),
 * Q8_0 four rows with a software prefetch running ahead of them. A batch is bound by the FMAs: F32 in 4 rows x 3 tokens tiles (12
 * accumulators) from weights held in L1 while the next strip is prefetched,
 * Q8_0 in 2 x 3 tiles over rows converted to floats once per batch. Matmuls
 * that share an input run in one parallel region (nano_matmul_jobs).
 */
#include <float.h>
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
 * costs a microsecond or two, about what 64K multiply-adds take. (The result
 * is the same either way.) */
#define NANO_PARALLEL_MIN_WORK (1 << 16)

int nano_thread_index(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

int nano_default_threads(void) {
#ifdef _OPENMP
    int n = omp_get_max_threads(); /* OMP_NUM_THREADS may ask for more than contexts allow */
    return n < 1 ? 1 : n > NANO_MAX_THREADS ? NANO_MAX_THREADS : n;
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

/* Rows [r0, r0 + nr) of y[n, w->rows] = x[n, w->cols] W^T: one dot product per element. */
static void rows_portable(float *y, const float *x, const nano_mat *w, uint32_t n, uint32_t r0, uint32_t nr) {
    const uint32_t rows = w->rows, cols = w->cols;
    uint32_t r, t;
    for (r = r0; r < r0 + nr; r++) {
        if (w->f) {
            const float *wr = w->f + (size_t)r * cols;
            for (t = 0; t < n; t++) y[(size_t)t * rows + r] = dot_portable(wr, x + (size_t)t * cols, cols);
        } else {
            const int8_t *qr = w->q + (size_t)r * cols;
            const float *sr = w->s + (size_t)r * (cols / w->group);
            for (t = 0; t < n; t++)
                y[(size_t)t * rows + r] = dot_q8_portable(qr, sr, x + (size_t)t * cols, cols, w->group);
        }
    }
}

static uint32_t tile_portable(const nano_mat *w, uint32_t n) {
    (void)w;
    (void)n;
    return 4;
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

/* One pass over the values: every value row is loaded once and all D / 8
 * column blocks (up to eight) accumulate together; four or fewer blocks get
 * two accumulator sets (even and odd s, added at the end) so that the FMAs
 * do not wait on each other. Per element: that fixed order over s. (A pass
 * per column block read the cached values D / 8 times.) nb is a constant
 * wherever this is inlined, so the accumulators stay in registers. */
NANO_AVX2 static inline __attribute__((always_inline)) void wsum_blocks(float *out, const float *p, const float *v,
                                                                        size_t vstride, uint32_t n,
                                                                        const uint32_t nb) {
    __m256 a[8], e[4];
    uint32_t s, b;
    for (b = 0; b < nb; b++) a[b] = _mm256_setzero_ps();
    if (nb <= 4) {
        for (b = 0; b < nb; b++) e[b] = _mm256_setzero_ps();
        for (s = 0; s + 2 <= n; s += 2) {
            const __m256 w0 = _mm256_set1_ps(p[s]), w1 = _mm256_set1_ps(p[s + 1]);
            const float *v0 = v + (size_t)s * vstride, *v1 = v0 + vstride;
            for (b = 0; b < nb; b++) {
                a[b] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(v0 + 8 * b), a[b]);
                e[b] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(v1 + 8 * b), e[b]);
            }
        }
        if (s < n) {
            const __m256 w0 = _mm256_set1_ps(p[s]);
            for (b = 0; b < nb; b++) a[b] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(v + (size_t)s * vstride + 8 * b), a[b]);
        }
        for (b = 0; b < nb; b++) _mm256_storeu_ps(out + 8 * b, _mm256_add_ps(a[b], e[b]));
    } else {
        for (s = 0; s < n; s++) {
            const __m256 w0 = _mm256_set1_ps(p[s]);
            const float *v0 = v + (size_t)s * vstride;
            for (b = 0; b < nb; b++) a[b] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(v0 + 8 * b), a[b]);
        }
        for (b = 0; b < nb; b++) _mm256_storeu_ps(out + 8 * b, a[b]);
    }
}

NANO_AVX2 static void weighted_sum_avx2(float *out, const float *p, const float *v, size_t vstride, uint32_t n,
                                        uint32_t d) {
    uint32_t s, j, d8 = d - d % 8;
    for (j = 0; j < d8; j += 64) {
        switch ((d8 - j) / 8 < 8 ? (d8 - j) / 8 : 8) {
        case 1: wsum_blocks(out + j, p, v + j, vstride, n, 1); break;
        case 2: wsum_blocks(out + j, p, v + j, vstride, n, 2); break;
        case 3: wsum_blocks(out + j, p, v + j, vstride, n, 3); break;
        case 4: wsum_blocks(out + j, p, v + j, vstride, n, 4); break;
        case 5: wsum_blocks(out + j, p, v + j, vstride, n, 5); break;
        case 6: wsum_blocks(out + j, p, v + j, vstride, n, 6); break;
        case 7: wsum_blocks(out + j, p, v + j, vstride, n, 7); break;
        default: wsum_blocks(out + j, p, v + j, vstride, n, 8); break;
        }
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
 * 2 ulp; inputs below -87.3 give 0 (softmax feeds x - max <= 0). NaN stays
 * NaN, as expf's does: maxps/minps return their SECOND operand when either is
 * NaN, so the clamp puts x second (clamp(x, lo, hi) would turn a NaN into
 * e^-87.3 and a broken model's softmax into plausible numbers). */
NANO_AVX2 static inline __m256 exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.3f);
    const __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ); /* false for NaN */
    __m256 n, r, p, r2;
    __m256i e;
    x = _mm256_min_ps(hi, _mm256_max_ps(lo, x));
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
    /* The max need not see a NaN (maxps may drop one, like `>` below): a NaN
     * input stays NaN through exp8, makes the sum NaN and so every output,
     * exactly as in nano_softmax. */
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
F32_TILE(4, 2)
F32_TILE(8, 1)
F32_TILE(4, 1)
F32_TILE(1, 1)

/* A batch reuses a strip of weight rows from L1 across all its tokens, but the
 * first pass over a strip waits for it to arrive from memory. So while one
 * strip is in use, the next one ([next, next + bytes)) is prefetched a slice
 * per tile step (step i of n_steps): it is in cache when its turn comes. */
NANO_AVX2 static inline void prefetch_slice(const void *next, size_t bytes, uint32_t i, uint32_t n_steps) {
    const size_t lines = (bytes + 63) / 64, per = (lines + n_steps - 1) / n_steps;
    size_t l;
    for (l = (size_t)i * per; l < (size_t)(i + 1) * per && l < lines; l++)
        _mm_prefetch((const char *)next + 64 * l, _MM_HINT_T0);
}

/* the bytes of rows [r, r + 4) of a matrix of `rows` rows of `row_bytes` (0 past the end) */
static size_t strip_bytes(uint32_t r, uint32_t rows, size_t row_bytes) {
    return r >= rows ? 0 : (size_t)(rows - r < 4 ? rows - r : 4) * row_bytes;
}

/* Rows of at most this many floats (1.5 KiB) decode one at a time. */
#define F32_SHORT_ROW 384

NANO_AVX2 static void f32_rows(float *y, const float *x, const float *w, uint32_t n, uint32_t rows,
                               uint32_t cols, uint32_t r0, uint32_t nr) {
    uint32_t t;
    if (n == 1 && nr == 8 && cols <= F32_SHORT_ROW) {
        /* Short rows: eight of them at once are eight streams of a few cache
         * lines, too short for the hardware prefetcher; one row after the
         * other is one stream, prefetched 4 KiB ahead (12% faster at 384). */
        const char *base = (const char *)(w + (size_t)r0 * cols);
        const size_t row_bytes = (size_t)cols * sizeof(float), left = (size_t)(rows - r0) * row_bytes;
        uint32_t i;
        for (i = 0; i < 8; i++) {
            size_t o;
            for (o = i * row_bytes + 4096; o < (i + 1) * row_bytes + 4096 && o < left; o += 64)
                _mm_prefetch(base + o, _MM_HINT_T0);
            f32_tile_1x1(y + r0 + i, rows, x, w + (size_t)(r0 + i) * cols, cols);
        }
    } else if (n == 1 && nr == 8) {
        f32_tile_8x1(y + r0, rows, x, w + (size_t)r0 * cols, cols);
    } else if (n == 1 && nr > 4) {
        f32_tile_4x1(y + r0, rows, x, w + (size_t)r0 * cols, cols);
        f32_rows(y, x, w, n, rows, cols, r0 + 4, nr - 4);
    } else if (nr == 4) {
        const float *next = w + (size_t)(r0 + 4) * cols;
        const size_t next_bytes = strip_bytes(r0 + 4, rows, (size_t)cols * sizeof(float));
        const uint32_t steps = (n + 2) / 3;
        for (t = 0; t + 3 <= n; t += 3) {
            prefetch_slice(next, next_bytes, t / 3, steps);
            f32_tile_4x3(y + (size_t)t * rows + r0, rows, x + (size_t)t * cols, w + (size_t)r0 * cols, cols);
        }
        if (t < n) prefetch_slice(next, next_bytes, t / 3, steps);
        if (n - t == 2) {
            f32_tile_4x2(y + (size_t)t * rows + r0, rows, x + (size_t)t * cols, w + (size_t)r0 * cols, cols);
            t += 2;
        }
        for (; t < n; t++)
            f32_tile_4x1(y + (size_t)t * rows + r0, rows, x + (size_t)t * cols, w + (size_t)r0 * cols, cols);
    } else {
        uint32_t r;
        for (r = r0; r < r0 + nr; r++)
            for (t = 0; t < n; t++)
                f32_tile_1x1(y + (size_t)t * rows + r, rows, x + (size_t)t * cols, w + (size_t)r * cols, cols);
    }
}

/* Eight int8 -> eight floats */
NANO_AVX2 static inline __m256 load_q8x8(const int8_t *q) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)q)));
}

/* R rows x T tokens of Q8_0 dot products, group size a multiple of 8: NAME
 * takes the values as QTYPE (int8_t, or float: already converted) and LOADQ
 * turns eight of them into floats. Either way the same FMAs in the same order,
 * so the two give the same bits. */
#define Q8_TILE_OF(NAME, QTYPE, LOADQ, R, T)                                                   \
    NANO_AVX2 static void NAME(float *y, uint32_t ystride, const float *x, const QTYPE *q,       \
                               const float *s, uint32_t cols, uint32_t group) {                 \
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
                for (i = 0; i < R; i++) qv[i] = LOADQ(q + (size_t)i * cols + k);                \
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

#define Q8_TILE(R, T) Q8_TILE_OF(q8_tile_##R##x##T, int8_t, load_q8x8, R, T)
#define QF_TILE(R, T) Q8_TILE_OF(qf_tile_##R##x##T, float, _mm256_loadu_ps, R, T)

Q8_TILE(2, 3)
Q8_TILE(1, 1)
QF_TILE(2, 3)
QF_TILE(2, 2)
QF_TILE(2, 1)

/* A batch converts its rows of int8 values to floats once, on the stack, and
 * all its tokens reuse them. Converting on the fly cost a sign extension and
 * a conversion per eight values and token triple, and the sign extensions
 * compete with the FMAs for their pipes (Zen 3): the tiles ran at ~58% of the
 * FMA peak, from floats at ~64% (the rest of the gap is the per-group scale
 * FMA, 1 per group / 8 FMAs). Two rows (the tile height) at a time, while
 * they and three token rows fit in L1 next to each other (2 + 3 rows of
 * QF_MAX_COLS floats: 20 KiB); wider rows (w2 over a wide hidden layer)
 * convert on the fly, which keeps the L1 footprint at 5 rows of bytes. */
#define QF_MAX_COLS 1024

/* Decode streams each Q8_0 weight once, and a row is short (cols bytes, 512
 * for n_embd 512): four rows at a time are four streams of a few cache lines
 * each, too short for the hardware prefetcher to ramp up, so the core waited
 * on memory (about 7 GB/s of a 16 GB/s stream). The four rows of a tile and
 * the tiles after it are contiguous, though, so the kernel prefetches that one
 * linear stream Q8_PREFETCH bytes ahead of where the tile reads (and the
 * scales, which follow the same pattern at 4 / group bytes per value): this
 * doubled decode speed. 4-8 KB measured best; nearer is too late, further
 * evicts lines before they are used. Prefetches stay inside the matrix. */
#define Q8_PREFETCH 6144

/* y[0..4) of one token: the Q8_TILE(4, 1) arithmetic plus the prefetch. q, s:
 * the tile's first row; q_left / s_left: bytes of values / scales from there
 * to the end of the matrix. */
NANO_AVX2 static inline __attribute__((always_inline)) void q8_gemv_4_body(float *y, const float *x,
                                                                           const int8_t *q, const float *s,
                                                                           uint32_t cols, const uint32_t group,
                                                                           size_t q_left, size_t s_left) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    const uint32_t spr = cols / group;
    const size_t s_ahead = (size_t)Q8_PREFETCH * 4 / group; /* the same number of rows ahead */
    const int8_t *q1 = q + cols, *q2 = q1 + cols, *q3 = q2 + cols;
    uint32_t g, k, o;
    for (g = 0; g < spr; g++) {
        __m256 g0 = _mm256_setzero_ps(), g1 = g0, g2 = g0, g3 = g0;
        const uint32_t base = g * group;
        /* the tile has consumed 4 * base bytes of its 4 * cols */
        const size_t pq = (size_t)4 * base + Q8_PREFETCH, ps = (size_t)16 * g + s_ahead;
        for (o = 0; o < 4 * group; o += 64)
            if (pq + o < q_left) _mm_prefetch((const char *)q + pq + o, _MM_HINT_T0);
        if (ps < s_left) _mm_prefetch((const char *)s + ps, _MM_HINT_T0);
        for (k = base; k < base + group; k += 8) {
            const __m256 xv = _mm256_loadu_ps(x + k);
            g0 = _mm256_fmadd_ps(load_q8x8(q + k), xv, g0);
            g1 = _mm256_fmadd_ps(load_q8x8(q1 + k), xv, g1);
            g2 = _mm256_fmadd_ps(load_q8x8(q2 + k), xv, g2);
            g3 = _mm256_fmadd_ps(load_q8x8(q3 + k), xv, g3);
        }
        acc0 = _mm256_fmadd_ps(g0, _mm256_set1_ps(s[g]), acc0);
        acc1 = _mm256_fmadd_ps(g1, _mm256_set1_ps(s[spr + g]), acc1);
        acc2 = _mm256_fmadd_ps(g2, _mm256_set1_ps(s[2 * (size_t)spr + g]), acc2);
        acc3 = _mm256_fmadd_ps(g3, _mm256_set1_ps(s[3 * (size_t)spr + g]), acc3);
    }
    y[0] = hsum8(acc0);
    y[1] = hsum8(acc1);
    y[2] = hsum8(acc2);
    y[3] = hsum8(acc3);
}

/* Group 32 (GGML's, and the usual choice) gets its own unrolled copy: 30%
 * faster when the weights are in cache. (The same for the batch tiles made
 * them slower.) */
NANO_AVX2 static void q8_gemv_4(float *y, const float *x, const int8_t *q, const float *s, uint32_t cols,
                                uint32_t group, size_t q_left, size_t s_left) {
    if (group == 32)
        q8_gemv_4_body(y, x, q, s, cols, 32, q_left, s_left);
    else
        q8_gemv_4_body(y, x, q, s, cols, group, q_left, s_left);
}

NANO_AVX2 static void q8_rows(float *y, const float *x, const int8_t *q, const float *s, uint32_t n,
                              uint32_t rows, uint32_t cols, uint32_t group, uint32_t r0,
                              uint32_t nr) {
    const uint32_t spr = cols / group;
    uint32_t t, r = r0;
    if (nr == 4) {
        if (n == 1) {
            const size_t qo = (size_t)r0 * cols, so = (size_t)r0 * spr;
            q8_gemv_4(y + r0, x, q + qo, s + so, cols, group, (size_t)rows * cols - qo,
                      ((size_t)rows * spr - so) * sizeof(float));
            return;
        }
        const int8_t *next = q + (size_t)(r0 + 4) * cols;
        const float *next_s = s + (size_t)(r0 + 4) * spr;
        const size_t next_bytes = strip_bytes(r0 + 4, rows, cols);
        const size_t next_s_bytes = strip_bytes(r0 + 4, rows, (size_t)spr * sizeof(float));
        const uint32_t steps = 2 * ((n + 2) / 3);
        uint32_t step = 0;
        if (cols <= QF_MAX_COLS) {
            float qf[2 * QF_MAX_COLS]; /* two rows as floats, [2, cols] */
            uint32_t k;
            for (r = 0; r < 4; r += 2) {
                const float *qr = qf, *sr = s + (size_t)(r0 + r) * spr;
                float *yr = y + r0 + r;
                for (k = 0; k < 2 * cols; k += 8)
                    _mm256_storeu_ps(qf + k, load_q8x8(q + (size_t)(r0 + r) * cols + k));
                for (t = 0; t + 3 <= n; t += 3, step++) {
                    prefetch_slice(next, next_bytes, step, steps);
                    prefetch_slice(next_s, next_s_bytes, step, steps);
                    qf_tile_2x3(yr + (size_t)t * rows, rows, x + (size_t)t * cols, qr, sr, cols, group);
                }
                if (n - t == 2)
                    qf_tile_2x2(yr + (size_t)t * rows, rows, x + (size_t)t * cols, qr, sr, cols, group);
                else if (n - t == 1)
                    qf_tile_2x1(yr + (size_t)t * rows, rows, x + (size_t)t * cols, qr, sr, cols, group);
            }
            return;
        }
        for (r = r0; r < r0 + 4; r += 2) {
            for (t = 0; t + 3 <= n; t += 3, step++) {
                prefetch_slice(next, next_bytes, step, steps);
                prefetch_slice(next_s, next_s_bytes, step, steps);
                q8_tile_2x3(y + (size_t)t * rows + r, rows, x + (size_t)t * cols, q + (size_t)r * cols,
                            s + (size_t)r * spr, cols, group);
            }
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

NANO_AVX2 static void rows_avx2(float *y, const float *x, const nano_mat *w, uint32_t n, uint32_t r0,
                                uint32_t nr) {
    if (w->f)
        f32_rows(y, x, w->f, n, w->rows, w->cols, r0, nr);
    else if (w->group % 8 != 0) /* groups that do not fill a vector: the portable order */
        rows_portable(y, x, w, n, r0, nr);
    else
        q8_rows(y, x, w->q, w->s, n, w->rows, w->cols, w->group, r0, nr);
}

static uint32_t tile_avx2(const nano_mat *w, uint32_t n) {
    /* One token (decode) reads each weight once and is bound by memory: eight
     * F32 rows at a time keep eight load streams in flight, which measured
     * ~15% faster than four on a Zen 3 core (Q8_0 rows prefetch instead, see
     * q8_gemv_4). Batches use 4-row tiles: the weights are reused from L1
     * across tokens. */
    return w->f && n == 1 ? 8 : 4;
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
    t->rows = rows_portable;
    t->tile = tile_portable;
    t->scores = scores_portable;
    t->softmax = nano_softmax;
    t->weighted_sum = weighted_sum_portable;
#if NANO_HAVE_AVX2_KERNELS
    if (kind == NANO_KERNELS_AUTO && cpu_has_avx2_fma()) {
        t->name = "avx2";
        t->rows = rows_avx2;
        t->tile = tile_avx2;
        t->scores = scores_avx2;
        t->softmax = softmax_avx2;
        t->weighted_sum = weighted_sum_avx2;
    }
#else
    (void)kind;
#endif
}

/* The work items of a set of matmuls: tiles of k->tile rows of each job in
 * turn, split over the threads in contiguous chunks (static schedule), so each
 * thread streams one stretch of memory. One parallel region for several
 * matrices with the same input (q, k, v; w1 and w3) saves a fork and join
 * each: microseconds, which add up over the layers of a decode step. Every
 * output element is still one thread's dot product in the kernel's fixed
 * order, so neither the grouping nor the thread count changes a bit.
 * swiglu: jobs[0] and jobs[1] have the same rows and are computed tile by
 * tile together, then jobs[0].y = silu(jobs[0].y) * jobs[1].y on the tile. */
static void run_jobs(const nano_kernels_table *k, const nano_matmul_job *jobs, uint32_t n_jobs, uint32_t n,
                     int nt, int swiglu) {
    long first[NANO_MAX_JOBS + 1], item;
    uint32_t j, tr[NANO_MAX_JOBS];
    double work = 0.0;
    first[0] = 0;
    for (j = 0; j < n_jobs; j++) {
        tr[j] = k->tile(jobs[j].w, n);
        first[j + 1] = first[j] + ((long)jobs[j].w->rows + tr[j] - 1) / tr[j];
        work += (double)n * jobs[j].w->rows * jobs[j].w->cols;
    }
    if (swiglu) { /* the items of job 0 carry job 1 along */
        tr[1] = tr[0];
        first[2] = first[1];
        n_jobs = 1;
    }
    NANO_PARALLEL_FOR(nt > 1 && work >= NANO_PARALLEL_MIN_WORK, item, first[n_jobs], {
        uint32_t jj = 0, r0, nr;
        while (item >= first[jj + 1]) jj++;
        r0 = (uint32_t)(item - first[jj]) * tr[jj];
        nr = jobs[jj].w->rows - r0 < tr[jj] ? jobs[jj].w->rows - r0 : tr[jj];
        k->rows(jobs[jj].y, jobs[jj].x, jobs[jj].w, n, r0, nr);
        if (swiglu) {
            const uint32_t rows = jobs[0].w->rows;
            uint32_t t;
            k->rows(jobs[1].y, jobs[1].x, jobs[1].w, n, r0, nr);
            for (t = 0; t < n; t++)
                nano_swiglu(jobs[0].y + (size_t)t * rows + r0, jobs[0].y + (size_t)t * rows + r0,
                            jobs[1].y + (size_t)t * rows + r0, nr);
        }
    });
}

void nano_matmul(const nano_kernels_table *k, float *y, const float *x, const nano_mat *w, uint32_t n,
                 int nt) {
    nano_matmul_job job;
    job.y = y;
    job.x = x;
    job.w = w;
    run_jobs(k, &job, 1, n, nt, 0);
}

void nano_matmul_jobs(const nano_kernels_table *k, const nano_matmul_job *jobs, uint32_t n_jobs, uint32_t n,
                      int nt) {
    run_jobs(k, jobs, n_jobs, n, nt, 0);
}

void nano_matmul_swiglu(const nano_kernels_table *k, float *h, float *h2, const float *x, const nano_mat *w1,
                        const nano_mat *w3, uint32_t n, int nt) {
    nano_matmul_job jobs[2];
    jobs[0].y = h;
    jobs[0].x = x;
    jobs[0].w = w1;
    jobs[1].y = h2;
    jobs[1].x = x;
    jobs[1].w = w3;
    run_jobs(k, jobs, 2, n, nt, 1);
}

void nano_matmul_f32(const nano_kernels_table *k, float *y, const float *x, const float *w, uint32_t n,
                     uint32_t rows, uint32_t cols, int nt) {
    nano_mat m;
    memset(&m, 0, sizeof(m));
    m.rows = rows;
    m.cols = cols;
    m.f = w;
    nano_matmul(k, y, x, &m, n, nt);
}

void nano_matmul_q8(const nano_kernels_table *k, float *y, const float *x, const int8_t *q, const float *s,
                    uint32_t n, uint32_t rows, uint32_t cols, uint32_t group, int nt) {
    nano_mat m;
    memset(&m, 0, sizeof(m));
    m.rows = rows;
    m.cols = cols;
    m.group = group;
    m.q = q;
    m.s = s;
    nano_matmul(k, y, x, &m, n, nt);
}

void nano_rmsnorm(float *y, const float *x, const float *w, uint32_t n, float eps) {
    /* The sum of squares in double: closer to PyTorch's pairwise float sum than
     * a running float sum, and cheap next to the matmuls. */
    double ss = 0.0;
    uint32_t i;
    for (i = 0; i < n; i++) ss += (double)x[i] * (double)x[i];
    float mean = (float)(ss / (double)n);
    /* PyTorch's float sum of squares overflows past FLT_MAX: its mean square is
     * inf and its output 0 (a diverged model's activations). The same here, so
     * that both engines give such a model the same (constant) logits. */
    float inv = ss > (double)FLT_MAX ? 0.0f : 1.0f / sqrtf(mean + eps);
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
    if ((!x || !q || !scales) && rows != 0 && cols != 0) return NANO_ERR_BAD_ARGUMENT; /* rows * cols may wrap */
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
            /* amax = FLT_MAX: the scale rounds up and 127 * scale is inf, a scale the
             * reader refuses (nano_format.quantize_q8_0 raises there too) */
            if (!isfinite(scale * 127.0f)) return NANO_ERR_BAD_ARGUMENT;
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
