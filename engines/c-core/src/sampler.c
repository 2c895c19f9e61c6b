/*
 * sampler.c - the per-step sampler and its RNG, step for step the algorithm
 * of nano_train.sampling.sample_logits (see nano.h). Every sum is a running
 * float32 sum in candidate order, like the numpy reference's cumsum.
 *
 * Candidates are ordered with a stable LSD radix sort on the probability's
 * bits (probabilities are >= 0, so their IEEE bits order like the values):
 * descending probability, ties by ascending id, in O(V) with buffers sized at
 * init, so sampling never allocates.
 *
 * The softmax's exponential is exp32 (below), not the C library's expf:
 * libraries round some results differently in the last bit, which is enough to
 * swap two near-equal candidates. exp32 is nano_train.sampling.exp32 operation
 * for operation (the build's -ffp-contract=off keeps every product rounded by
 * itself), so both give the same bits.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct nano_sampler {
    nano_sampler_params p;
    uint32_t V;
    nano_rng rng;
    float *x;         /* [V] working logits, then probabilities */
    uint32_t *key;    /* [V] sort keys */
    uint32_t *key2;   /* [V] */
    int32_t *ids;     /* [V] candidate ids in order */
    int32_t *ids2;    /* [V] */
    uint32_t *seen;   /* [V] stamp of the last step that penalised the id */
    uint32_t stamp;
};

// ---------------------------------------------------------------------------
// exp32: e^z for z <= 0 (the sampler's only use), as nano_train.sampling.exp32

static float exp32(float z) {
    const float log2e = 0x1.715476p+0f, ln2_hi = 0x1.63p-1f, ln2_lo = -0x1.bd0106p-13f;
    float y, k, r, p, out;
    int32_t zb, ki, bits, keep;
    /* keep: z >= -87, as an all-ones mask made from z's bits (z <= 0 here) with integer
     * operations only, so that the softmax's loop vectorizes (a float comparison with
     * a select would be a branch); below -87 (-inf too) the result would be subnormal,
     * and it is 0 */
    memcpy(&zb, &z, sizeof zb);
    keep = -(int32_t)((zb & 0x7fffffff) <= 0x42ae0000); /* 87.0f */
    zb &= keep;                                          /* z, or 0 */
    memcpy(&z, &zb, sizeof z);
    y = z * log2e + 0.5f;
    ki = (int32_t)y; /* toward 0: floor(y) is one less for a negative y with a fraction */
    ki -= (float)ki > y;
    k = (float)ki;
    r = (z - k * ln2_hi) - k * ln2_lo;
    p = 1.0f / 5040.0f;
    p = 1.0f / 720.0f + r * p;
    p = 1.0f / 120.0f + r * p;
    p = 1.0f / 24.0f + r * p;
    p = 1.0f / 6.0f + r * p;
    p = 1.0f / 2.0f + r * p;
    p = 1.0f + r * (1.0f + r * p);
    bits = (ki + 127) << 23; /* 2^k, exact: -126 <= k <= 0 */
    memcpy(&out, &bits, sizeof out);
    out = p * out;
    memcpy(&bits, &out, sizeof bits);
    bits &= keep;
    memcpy(&out, &bits, sizeof out);
    return out;
}

/* x[i] = exp32((x[i] - mx) / t) for every i, in a loop of its own (apart from the
 * running sum, whose order is fixed) so that it vectorizes: it then takes less time
 * than the C library's expf did. */
static void exp32_all(float *restrict x, uint32_t n, float mx, float t) {
    uint32_t i;
    for (i = 0; i < n; i++) x[i] = exp32((x[i] - mx) / t);
}

// ---------------------------------------------------------------------------
// RNG: xorshift64* seeded through splitmix64

void nano_rng_seed(nano_rng *rng, uint64_t seed) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    rng->state = z ? z : 1;
}

uint64_t nano_rng_next(nano_rng *rng) {
    uint64_t x = rng->state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng->state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

float nano_rng_uniform(nano_rng *rng) { return (float)(nano_rng_next(rng) >> 40) * (1.0f / 16777216.0f); }

// ---------------------------------------------------------------------------
// Sampler

nano_sampler_params nano_sampler_default_params(void) {
    nano_sampler_params p;
    p.temperature = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.repetition_penalty = 1.0f;
    p.seed = 0;
    return p;
}

static int params_ok(const nano_sampler_params *p) {
    /* the same ranges as nano_train.sampling.SamplerConfig (NaN fails every test) */
    return p->temperature >= 0.0f && !isinf(p->temperature) && p->top_k >= 0 && p->top_p > 0.0f &&
           p->top_p <= 1.0f && p->min_p >= 0.0f && p->min_p <= 1.0f && p->repetition_penalty > 0.0f &&
           !isinf(p->repetition_penalty);
}

void nano_sampler_free(nano_sampler *s) {
    if (!s) return;
    free(s->x);
    free(s->key);
    free(s->key2);
    free(s->ids);
    free(s->ids2);
    free(s->seen);
    free(s);
}

nano_status nano_sampler_init(const nano_sampler_params *params, uint32_t vocab_size, nano_sampler **out) {
    nano_sampler *s;
    size_t V = vocab_size;
    if (!out) return NANO_ERR_BAD_ARGUMENT;
    *out = NULL;
    /* The format's vocabulary bound keeps V * sizeof(float) and the other
     * products below far from overflow, also with a 32-bit size_t. */
    if (!params || vocab_size == 0 || vocab_size > NANO_MAX_VOCAB || !params_ok(params))
        return NANO_ERR_BAD_ARGUMENT;
    s = (nano_sampler *)calloc(1, sizeof(*s));
    if (!s) return NANO_ERR_OUT_OF_MEMORY;
    s->p = *params;
    s->V = vocab_size;
    s->x = (float *)malloc(V * sizeof(float));
    s->key = (uint32_t *)malloc(V * sizeof(uint32_t));
    s->key2 = (uint32_t *)malloc(V * sizeof(uint32_t));
    s->ids = (int32_t *)malloc(V * sizeof(int32_t));
    s->ids2 = (int32_t *)malloc(V * sizeof(int32_t));
    s->seen = (uint32_t *)calloc(V, sizeof(uint32_t));
    if (!s->x || !s->key || !s->key2 || !s->ids || !s->ids2 || !s->seen) {
        nano_sampler_free(s);
        return NANO_ERR_OUT_OF_MEMORY;
    }
    nano_rng_seed(&s->rng, params->seed);
    *out = s;
    return NANO_OK;
}

void nano_sampler_reseed(nano_sampler *s, uint64_t seed) {
    if (s) nano_rng_seed(&s->rng, seed);
}

nano_rng *nano_sampler_rng(nano_sampler *s) { return s ? &s->rng : NULL; }

/* ids[0..n) ordered by key ascending, stable (keys are ~bits: descending p). */
static void radix_sort(nano_sampler *s, uint32_t n) {
    uint32_t shift, i;
    uint32_t *k = s->key, *k2 = s->key2;
    int32_t *id = s->ids, *id2 = s->ids2;
    for (shift = 0; shift < 32; shift += 8) {
        uint32_t count[257];
        memset(count, 0, sizeof count);
        for (i = 0; i < n; i++) count[((k[i] >> shift) & 0xFF) + 1]++;
        if (count[((k[0] >> shift) & 0xFF) + 1] == n) continue; /* every key has this byte */
        for (i = 0; i < 256; i++) count[i + 1] += count[i];
        for (i = 0; i < n; i++) {
            uint32_t b = (k[i] >> shift) & 0xFF, dst = count[b]++;
            k2[dst] = k[i];
            id2[dst] = id[i];
        }
        {
            uint32_t *tk = k;
            int32_t *ti = id;
            k = k2;
            k2 = tk;
            id = id2;
            id2 = ti;
        }
    }
    if (id != s->ids) memcpy(s->ids, id, (size_t)n * sizeof(int32_t));
}

nano_status nano_sampler_sample(nano_sampler *s, const float *logits, const int32_t *history, size_t n_history,
                                int32_t *out_id) {
    const uint32_t V = s ? s->V : 0;
    float *x;
    uint32_t i, n;
    if (!s || !logits || !out_id || (!history && n_history)) return NANO_ERR_BAD_ARGUMENT;
    x = s->x;
    memcpy(x, logits, (size_t)V * sizeof(float));

    /* 1. repetition penalty on each distinct id seen */
    if (s->p.repetition_penalty != 1.0f && n_history > 0) {
        const float pen = s->p.repetition_penalty;
        size_t j;
        if (++s->stamp == 0) { /* wrapped: forget old stamps */
            memset(s->seen, 0, (size_t)V * sizeof(uint32_t));
            s->stamp = 1;
        }
        for (j = 0; j < n_history; j++) {
            int32_t id = history[j];
            if (id < 0 || (uint32_t)id >= V || s->seen[id] == s->stamp) continue;
            s->seen[id] = s->stamp;
            x[id] = x[id] > 0.0f ? x[id] / pen : x[id] * pen;
        }
    }
    /* every logit into the finite float32 range: a tiny penalty (or a broken model)
     * that overflows to an infinity must not turn the softmax into NaN. A NaN logit is
     * an error, as in nano_train.sampling: there is nothing sensible to draw from. */
    for (i = 0; i < V; i++) {
        if (x[i] != x[i]) return NANO_ERR_NON_FINITE;
        x[i] = x[i] > FLT_MAX ? FLT_MAX : (x[i] < -FLT_MAX ? -FLT_MAX : x[i]);
    }

    /* 2. greedy */
    if (s->p.temperature == 0.0f) {
        *out_id = nano_argmax(x, V);
        return NANO_OK;
    }

    /* 3. tempered softmax: the max subtracted before dividing by the temperature,
     * so a tiny temperature gives 0 and -inf exponents, never inf - inf */
    {
        const float t = s->p.temperature;
        float mx = x[0], sum = 0.0f;
        for (i = 1; i < V; i++)
            if (x[i] > mx) mx = x[i];
        exp32_all(x, V, mx, t);
        for (i = 0; i < V; i++) sum += x[i];
        for (i = 0; i < V; i++) x[i] = x[i] / sum;
    }

    /* 4. candidates by probability descending, ties by lower id; the filters keep prefixes */
    for (i = 0; i < V; i++) {
        uint32_t bits;
        memcpy(&bits, &x[i], sizeof bits);
        s->key[i] = ~bits;
        s->ids[i] = (int32_t)i;
    }
    radix_sort(s, V);
    n = V;
    if (s->p.top_k > 0 && (uint32_t)s->p.top_k < n) n = (uint32_t)s->p.top_k;
    if (s->p.top_p < 1.0f) {
        float cum = 0.0f;
        for (i = 0; i < n; i++) {
            cum += x[s->ids[i]];
            if (cum >= s->p.top_p) {
                n = i + 1;
                break;
            }
        }
    }
    if (s->p.min_p > 0.0f) {
        const float threshold = s->p.min_p * x[s->ids[0]];
        uint32_t kept = 0;
        for (i = 0; i < n; i++) kept += x[s->ids[i]] >= threshold;
        n = kept > 0 ? kept : 1;
    }

    /* 5. renormalise and draw */
    {
        float total = 0.0f, cdf = 0.0f, u;
        for (i = 0; i < n; i++) total += x[s->ids[i]];
        u = nano_rng_uniform(&s->rng);
        for (i = 0; i < n; i++) {
            cdf += x[s->ids[i]] / total;
            if (cdf > u) {
                *out_id = s->ids[i];
                return NANO_OK;
            }
        }
        *out_id = s->ids[n - 1];
    }
    return NANO_OK;
}
