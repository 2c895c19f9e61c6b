/*
 * test_api.c - thin entry points over the internal kernels, exported for the
 * kernel-table tests (tests/test_kernels.py). The kernels are the library's
 * own: nothing is duplicated for the tests.
 */
#include "internal.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

void nano_test_matmul(uint32_t kernels, float *y, const float *x, const float *w, uint32_t n, uint32_t rows,
                      uint32_t cols, int nt) {
    nano_kernels_table k;
    nano_kernels_select(&k, kernels);
    nano_matmul_f32(&k, y, x, w, n, rows, cols, nt < 1 ? 1 : nt);
}

void nano_test_matmul_q8(uint32_t kernels, float *y, const float *x, const int8_t *q, const float *s,
                         uint32_t n, uint32_t rows, uint32_t cols, uint32_t group, int nt) {
    nano_kernels_table k;
    nano_kernels_select(&k, kernels);
    nano_matmul_q8(&k, y, x, q, s, n, rows, cols, group, nt < 1 ? 1 : nt);
}

void nano_test_rmsnorm(float *y, const float *x, const float *w, uint32_t n, float eps) {
    nano_rmsnorm(y, x, w, n, eps);
}

void nano_test_rope(float *x, uint32_t n_heads, uint32_t head_dim, const float *cos_row, const float *sin_row) {
    nano_rope(x, n_heads, head_dim, cos_row, sin_row);
}

void nano_test_softmax(uint32_t kernels, float *x, uint32_t n) {
    nano_kernels_table k;
    nano_kernels_select(&k, kernels);
    k.softmax(x, n);
}

void nano_test_swiglu(float *y, const float *a, const float *b, uint32_t n) { nano_swiglu(y, a, b, n); }

const char *nano_test_kernels_name(uint32_t kernels) {
    nano_kernels_table k;
    nano_kernels_select(&k, kernels);
    return k.name;
}

/* An application that parallelises over its own requests: the `team` threads of
 * one OpenMP team each make a context (n_threads 1) on m and run ids[0..n) in it;
 * thread i's last-position logits go to logits[i * V ..), and *ran says how many
 * threads the team had (OMP_THREAD_LIMIT may cap it; dynamic adjustment is off
 * here, so OMP_DYNAMIC does not). Without OpenMP, one thread. Returns the first
 * error any thread met. */
nano_status nano_test_eval_in_omp_team(const nano_model *m, int team, const int32_t *ids, uint32_t n,
                                       float *logits, int32_t *ran) {
    const size_t V = m->info.vocab_size;
    nano_status result = NANO_OK;
    *ran = 1;
#if defined(_OPENMP)
    const int dynamic = omp_get_dynamic();
    omp_set_dynamic(0);
#pragma omp parallel num_threads(team)
#else
    (void)team;
#endif
    {
        nano_context_params cp = nano_context_default_params();
        nano_context *c = NULL;
        nano_status st;
#if defined(_OPENMP)
        if (omp_get_thread_num() == 0) *ran = omp_get_num_threads();
#endif
        cp.n_threads = 1;
        st = nano_context_init(m, &cp, &c);
        if (st == NANO_OK) st = nano_eval(c, ids, n, logits + (size_t)nano_thread_index() * V, 0);
        nano_context_free(c);
        if (st != NANO_OK) {
#if defined(_OPENMP)
#pragma omp critical
#endif
            result = st;
        }
    }
#if defined(_OPENMP)
    omp_set_dynamic(dynamic);
#endif
    return result;
}
