/*
 * machine_probe.c - this machine's streaming-read memory bandwidth and peak
 * float32 FMA rate, for tools/bench/engine_speed.py (which compiles it with
 * the system C compiler, -O3 -march=native -fopenmp, and loads it with ctypes).
 *
 * Decode reads every weight once per token, so its speed limit is the rate at
 * which a core (or two) can stream a buffer much larger than the last-level
 * cache. The probe does exactly that and nothing else: an integer sum over
 * the buffer (integer addition is associative, so the compiler vectorises it
 * without any fast-math flag, and the loop is bound by the loads alone),
 * split over `threads` OpenMP threads with a static schedule.
 *
 * The buffer is anonymous memory in 4 KiB pages or, where Linux allows it,
 * in transparent huge pages (MADV_HUGEPAGE): the two stream at different
 * rates (TLB misses, and hardware prefetchers stop at page boundaries), and a
 * memory-mapped model file gets 4 KiB pages.
 *
 * The two compute probes bound prefill, which is matrix-matrix work: float32
 * FMAs (what the engine computes with), and 8-bit integer dot products (what
 * an engine that also quantizes its activations to int8, as llama.cpp does,
 * would compute with on AVX2: vpmaddubsw + vpmaddwd + vpaddd).
 */
#define _DEFAULT_SOURCE
#include <stddef.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

uint64_t nano_bench_probe_sum(const uint64_t *buf, size_t n, int threads, double *seconds);
void *nano_bench_probe_alloc(size_t bytes, int huge);
void nano_bench_probe_free(void *buf, size_t bytes);
double nano_bench_fma_peak(long iters, int threads, double *seconds);
double nano_bench_int8_peak(long iters, int threads, double *seconds);

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Sum buf[0..n) on `threads` threads; the elapsed seconds go to *seconds. The
 * sum is returned so that the compiler cannot drop the reads. */
uint64_t nano_bench_probe_sum(const uint64_t *buf, size_t n, int threads, double *seconds) {
    uint64_t total = 0;
    long i;
    const long len = (long)n;
    double t0 = now_s();
    (void)threads;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : total)
    for (i = 0; i < len; i++) total += buf[i];
    *seconds = now_s() - t0;
    return total;
}

/* `bytes` of anonymous memory (a multiple of 2 MiB), filled, so that every
 * page exists; huge: ask for transparent huge pages. NULL on failure. */
void *nano_bench_probe_alloc(size_t bytes, int huge) {
    /* 2 MiB more than asked, trimmed to a 2 MiB-aligned range: huge pages
     * need aligned 2 MiB extents */
    const size_t align = (size_t)2 << 20;
    char *raw = (char *)mmap(NULL, bytes + align, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *p, *end;
    if ((void *)raw == MAP_FAILED) return NULL;
    p = (char *)(((uintptr_t)raw + align - 1) & ~(uintptr_t)(align - 1));
    end = raw + bytes + align;
    if (p > raw) munmap(raw, (size_t)(p - raw));
    if (end > p + bytes) munmap(p + bytes, (size_t)(end - (p + bytes)));
#if defined(MADV_HUGEPAGE) && defined(MADV_NOHUGEPAGE)
    madvise(p, bytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
#else
    (void)huge;
#endif
    memset(p, 1, bytes);
    return p;
}

void nano_bench_probe_free(void *buf, size_t bytes) {
    if (buf) munmap(buf, bytes);
}

/* Multiply-adds per second of float32 FMAs on `threads` threads: twelve
 * independent 8-lane chains (enough to cover the FMA latency on two pipes),
 * `iters` steps each. The compute ceiling of a matmul, which prefill is. */
double nano_bench_fma_peak(long iters, int threads, double *seconds) {
    double t0 = now_s(), sink = 0.0;
    (void)threads;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
        long k;
#if defined(__AVX2__) && defined(__FMA__)
        __m256 a[12];
        const __m256 b = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(0.001f);
        float out[8];
        int i;
        for (i = 0; i < 12; i++) a[i] = _mm256_set1_ps((float)i);
        for (k = 0; k < iters; k++) {
            a[0] = _mm256_fmadd_ps(a[0], b, c);
            a[1] = _mm256_fmadd_ps(a[1], b, c);
            a[2] = _mm256_fmadd_ps(a[2], b, c);
            a[3] = _mm256_fmadd_ps(a[3], b, c);
            a[4] = _mm256_fmadd_ps(a[4], b, c);
            a[5] = _mm256_fmadd_ps(a[5], b, c);
            a[6] = _mm256_fmadd_ps(a[6], b, c);
            a[7] = _mm256_fmadd_ps(a[7], b, c);
            a[8] = _mm256_fmadd_ps(a[8], b, c);
            a[9] = _mm256_fmadd_ps(a[9], b, c);
            a[10] = _mm256_fmadd_ps(a[10], b, c);
            a[11] = _mm256_fmadd_ps(a[11], b, c);
        }
        for (i = 1; i < 12; i++) a[0] = _mm256_add_ps(a[0], a[i]);
        _mm256_storeu_ps(out, a[0]);
        sink += out[0];
#else
        /* no AVX2+FMA here: scalar multiply-adds, 96 per step like the above */
        float a[96];
        int i;
        for (i = 0; i < 96; i++) a[i] = (float)i;
        for (k = 0; k < iters; k++)
            for (i = 0; i < 96; i++) a[i] = a[i] * 0.999f + 0.001f;
        for (i = 1; i < 96; i++) a[0] += a[i];
        sink += a[0];
#endif
    }
    *seconds = now_s() - t0;
    return sink; /* keeps the work */
}

/* Multiply-adds per second of 8-bit integer dot products on `threads` threads:
 * eight independent chains of vpmaddubsw (32 u8 x s8 products summed in pairs
 * to int16), vpmaddwd by ones (to int32) and vpaddd into an accumulator,
 * 256 multiply-adds per step. An empty asm statement marks the activations
 * as changed every step, so the compiler cannot hoist the products. */
double nano_bench_int8_peak(long iters, int threads, double *seconds) {
    double t0 = now_s();
    long sink = 0;
    (void)threads;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
        long k;
#if defined(__AVX2__) && defined(__GNUC__)
        __m256i acc[8], w[8];
        __m256i x = _mm256_set1_epi8(3);
        const __m256i ones = _mm256_set1_epi16(1);
        int i;
        for (i = 0; i < 8; i++) {
            acc[i] = _mm256_setzero_si256();
            w[i] = _mm256_set1_epi8((char)(2 * i - 7)); /* odd: none is zero */
        }
        for (k = 0; k < iters; k++) {
            acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(_mm256_maddubs_epi16(x, w[0]), ones));
            acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(_mm256_maddubs_epi16(x, w[1]), ones));
            acc[2] = _mm256_add_epi32(acc[2], _mm256_madd_epi16(_mm256_maddubs_epi16(x, w[2]), ones));
            acc[3] = _mm256_add_epi32(acc[3], _mm256_madd_epi16(_mm256_maddubs_epi16(x, w[3]), ones));
            acc[4] = _mm256_add_epi32(acc[4], _mm256_madd_epi16(_mm256_maddubs_epi16(x, w[4]), ones));
            acc[5] = _mm256_add_epi32(acc[5], _mm256_madd_epi16(_mm256_maddubs_epi16(x, w[5]), ones));
            acc[6] = _mm256_add_epi32(acc[6], _mm256_madd_epi16(_mm256_maddubs_epi16(x, w[6]), ones));
            acc[7] = _mm256_add_epi32(acc[7], _mm256_madd_epi16(_mm256_maddubs_epi16(x, w[7]), ones));
            __asm__ volatile("" : "+x"(x));
        }
        for (i = 1; i < 8; i++) acc[0] = _mm256_add_epi32(acc[0], acc[i]);
        sink += _mm256_extract_epi32(acc[0], 0);
#else
        /* no AVX2 here: scalar int8 multiply-adds into int32, 256 per step */
        int32_t acc[256];
        volatile int8_t x = 3;
        int i;
        for (i = 0; i < 256; i++) acc[i] = 0;
        for (k = 0; k < iters; k++) {
            const int32_t xv = x;
            for (i = 0; i < 256; i++) acc[i] += xv * (int8_t)(i - 128);
        }
        for (i = 1; i < 256; i++) acc[0] += acc[i];
        sink += acc[0];
#endif
    }
    *seconds = now_s() - t0;
    return (double)sink; /* keeps the work */
}
