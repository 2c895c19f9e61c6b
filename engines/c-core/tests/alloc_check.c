/*
 * alloc_check - proves that evaluation, sampling and session steps never
 * allocate. Linked with -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=free
 * against libnano.a, so every allocation the library makes goes through the
 * counters below. Usage: alloc_check MODEL [THREADS]
 * Prints "allocations during decode: N" and exits 1 when N > 0.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nano.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t m);
void *__wrap_realloc(void *p, size_t n);
void __wrap_free(void *p);

static int counting;
static long n_alloc, n_free;

void *__wrap_malloc(size_t n) {
    n_alloc += counting;
    return __real_malloc(n);
}
void *__wrap_calloc(size_t n, size_t m) {
    n_alloc += counting;
    return __real_calloc(n, m);
}
void *__wrap_realloc(void *p, size_t n) {
    n_alloc += counting;
    return __real_realloc(p, n);
}
void __wrap_free(void *p) {
    n_free += counting && p;
    __real_free(p);
}

static void check(nano_status st, const char *what) {
    if (st != NANO_OK) {
        fprintf(stderr, "alloc_check: %s: %s\n", what, nano_status_string(st));
        exit(2);
    }
}

int main(int argc, char **argv) {
    nano_model *m = NULL;
    nano_context *ctx = NULL;
    nano_sampler *smp = NULL;
    nano_session *ses = NULL;
    nano_context_params cp = nano_context_default_params();
    nano_sampler_params sp = nano_sampler_default_params();
    nano_session_params sep = nano_session_default_params();
    nano_model_info info;
    nano_token_event ev;
    int32_t hist[64];
    uint32_t i, n_hist = 0;
    long setup_allocs;
    if (argc < 2) {
        fprintf(stderr, "usage: alloc_check MODEL [THREADS]\n");
        return 2;
    }
    cp.n_ctx = 64;
    cp.n_batch = 8;
    cp.n_threads = argc > 2 ? atoi(argv[2]) : 1;
    counting = 1; /* setup allocates: counted only to show that the counters work */
    check(nano_model_load_file(argv[1], NULL, &m), "load");
    nano_model_get_info(m, &info);
    check(nano_context_init(m, &cp, &ctx), "context");
    sp.temperature = 0.9f;
    sp.top_k = 20;
    sp.top_p = 0.95f;
    sp.min_p = 0.01f;
    sp.repetition_penalty = 1.3f;
    sp.seed = 7;
    check(nano_sampler_init(&sp, info.vocab_size, &smp), "sampler");
    sep.sampler = sp;
    sep.max_tokens = 20;
    sep.stop_at_eos = 0;
    check(nano_session_init(ctx, &sep, &ses), "session");
    setup_allocs = n_alloc;
    n_alloc = n_free = 0;

    /* prompt (batched prefill), then decode steps with the sampler */
    for (i = 0; i < 20; i++) hist[n_hist++] = (int32_t)((i * 7 + 3) % info.vocab_size);
    check(nano_eval(ctx, hist, n_hist, NULL, 0), "prefill");
    for (i = 0; i < 30; i++) {
        int32_t id;
        check(nano_sampler_sample(smp, nano_context_logits(ctx), hist, n_hist, &id), "sample");
        hist[n_hist++] = id;
        check(nano_eval(ctx, &id, 1, NULL, 0), "decode");
    }
    /* the session API: start, steps to the end, and again */
    for (i = 0; i < 2; i++) {
        check(nano_session_start_tokens(ses, hist, 10), "session start");
        while (nano_session_step(ses, &ev) == NANO_OK && !ev.done) {
        }
    }
    check(nano_seq2seq(ctx, hist, 12, hist + 20), "seq2seq");
    counting = 0;
    printf("allocations during setup: %ld\n", setup_allocs);
    printf("allocations during decode: %ld (frees %ld)\n", n_alloc, n_free);
    nano_session_free(ses);
    nano_sampler_free(smp);
    nano_context_free(ctx);
    nano_model_free(m);
    return n_alloc || n_free || setup_allocs == 0 ? 1 : 0;
}
