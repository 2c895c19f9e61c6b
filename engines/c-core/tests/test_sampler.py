"""The C sampler is nano_train.sampling.sample_logits, draw for draw.

Reference defects: 8 (the repetition penalty must push negative logits down
too) and 17 (top_k must actually be applied).
"""

from __future__ import annotations

import numpy as np
import pytest

MASK = (1 << 64) - 1


def splitmix64(seed):
    """Written here from the spec, independently of both implementations."""
    z = (seed + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return (z ^ (z >> 31)) or 1


def xorshift_outputs(seed, n):
    x = splitmix64(seed)
    out = []
    for _ in range(n):
        x ^= x >> 12
        x = (x ^ (x << 25)) & MASK
        x ^= x >> 27
        out.append((x * 0x2545F4914F6CDD1D) & MASK)
    return out


@pytest.mark.parametrize("seed", [0, 42, 1, 2 ** 64 - 1])
def test_rng_first_outputs(nano, seed):
    rng = nano.ffi.new("nano_rng *")
    nano.lib.nano_rng_seed(rng, seed)
    assert rng.state == splitmix64(seed)
    assert [nano.lib.nano_rng_next(rng) for _ in range(6)] == xorshift_outputs(seed, 6)


def test_rng_pinned_numbers(nano):
    rng = nano.ffi.new("nano_rng *")
    nano.lib.nano_rng_seed(rng, 0)
    assert rng.state == 0xE220A8397B1DCDAF
    assert [nano.lib.nano_rng_next(rng) for _ in range(4)] == [
        0x7BBCB40D550682D0, 0xDE7FE413D00CC9FD, 0xB3C638353C668C91, 0xE073AFC0949195FC]
    nano.lib.nano_rng_seed(rng, 42)
    assert rng.state == 0xBDD732262FEB6E95
    assert [nano.lib.nano_rng_next(rng) for _ in range(4)] == [
        0x31B0ECE7C4F697A2, 0x9008A3B1CB686F03, 0x7C7173ABD97BE16F, 0x45672C8C8D6B8C4F]
    nano.lib.nano_rng_seed(rng, 0)
    assert [nano.lib.nano_rng_uniform(rng) for _ in range(2)] == [0x7BBCB4 / 2 ** 24, 0xDE7FE4 / 2 ** 24]


def test_pinned_draws_for_seed_42(nano):
    logits = np.array([1.0, 0.5, 2.0, -1.0, 0.0, 1.5, 0.25, -0.5], dtype=np.float32)
    s = nano.sampler(8, temperature=0.8, top_k=6, top_p=0.9, seed=42)
    assert [s.sample(logits) for _ in range(12)] == [2, 5, 5, 2, 0, 5, 2, 0, 1, 5, 2, 5]


def test_greedy_ties_lowest_and_no_draw(nano):
    logits = np.array([0.5, 2.0, -1.0, 2.0, 1.0], dtype=np.float32)
    s = nano.sampler(5, temperature=0.0, seed=5)
    state = nano.lib.nano_sampler_rng(s.handle).state
    assert s.sample(logits) == 1
    assert nano.lib.nano_sampler_rng(s.handle).state == state


def test_repetition_penalty_lowers_both_signs(nano):
    """Defect 8: dividing a negative logit by the penalty would raise it."""
    s = nano.sampler(5, temperature=0.0, repetition_penalty=2.0)
    logits = np.array([2.0, -2.0, 1.9, -2.5, -3.0], dtype=np.float32)
    assert s.sample(logits, [0, 0]) == 2
    assert s.sample(logits, [0, 2, 1]) == 0
    neg = np.array([-2.0, -2.5, -9.0], dtype=np.float32)
    s3 = nano.sampler(3, temperature=0.0, repetition_penalty=2.0)
    assert s3.sample(neg, [0]) == 1  # -2 * 2 = -4 < -2.5
    assert nano.sampler(3, temperature=0.0).sample(neg, [0]) == 0
    s2 = nano.sampler(2, temperature=0.0, repetition_penalty=2.0)
    assert s2.sample(np.array([4.0, 1.5], dtype=np.float32), [0] * 5) == 0  # distinct ids: once
    assert s2.sample(np.array([4.0, 1.5], dtype=np.float32), [7, -1, 99]) == 0  # out-of-range ids ignored


def test_top_k_is_applied(nano):
    """Defect 17: the reference C stored top_k and never used it."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(50).astype(np.float32)
    order = np.argsort(-logits, kind="stable")
    for k in (1, 2, 5):
        s = nano.sampler(50, temperature=1.5, top_k=k, seed=k)
        seen = {s.sample(logits) for _ in range(400)}
        assert seen <= set(order[:k].tolist()) and len(seen) == k


def test_bad_settings(nano):
    ffi, lib = nano.ffi, nano.lib
    for kw in (dict(temperature=-1.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5), dict(min_p=-0.1),
               dict(min_p=1.5), dict(repetition_penalty=0.0), dict(temperature=float("nan"))):
        p = lib.nano_sampler_default_params()
        for k, v in kw.items():
            setattr(p, k, v)
        out = ffi.new("nano_sampler **")
        assert nano.status_name(lib.nano_sampler_init(ffi.new("nano_sampler_params *", p), 10, out)) == \
            "NANO_ERR_BAD_ARGUMENT", kw
    out = ffi.new("nano_sampler **")
    p = lib.nano_sampler_default_params()
    assert nano.status_name(lib.nano_sampler_init(ffi.new("nano_sampler_params *", p), 0, out)) == \
        "NANO_ERR_BAD_ARGUMENT"


def test_nan_logits_are_an_error(nano):
    """A NaN logit (a model with broken weights) is NANO_ERR_NON_FINITE, greedy or not, as
    nano_train.sampling refuses it; before, argmax read it as some id and printed garbage."""
    logits = np.array([1.0, np.nan, 2.0, -1.0], dtype=np.float32)
    for kw in (dict(temperature=0.0), dict(temperature=1.0, top_k=2), dict(temperature=0.7, repetition_penalty=1.3)):
        s = nano.sampler(4, seed=1, **kw)
        with pytest.raises(Exception, match="NANO_ERR_NON_FINITE"):
            s.sample(logits, [1, 2])
        finite = logits.copy()
        finite[1] = np.inf  # an infinity is clamped, not refused: the sampler goes on
        assert s.sample(finite) == 1, kw


CONFIGS = [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=10),
    dict(temperature=1.3, top_p=0.8),
    dict(temperature=0.9, min_p=0.05),
    dict(temperature=1.0, top_k=40, top_p=0.95, min_p=0.02, repetition_penalty=1.3),
    dict(temperature=0.5, repetition_penalty=0.8),
    dict(temperature=2.0, top_k=3),
    dict(temperature=1.0, top_p=0.01),
    dict(temperature=1.0, min_p=1.0),
    dict(temperature=0.0, repetition_penalty=1.5),
    # extremes that overflowed float32 before the max was subtracted first (NaN probabilities)
    dict(temperature=1e-40),
    dict(temperature=1.0, repetition_penalty=1e-38),
    dict(temperature=3e38, top_k=5),
]


def test_extreme_settings_give_real_tokens(nano):
    """A tiny temperature is greedy; a tiny penalty makes the seen token with a positive
    logit the (clamped, finite) winner. Before, both gave NaN probabilities and the last id."""
    logits = np.array([1.0, 0.5, 2.0, -1.0, 0.0, 1.5, 0.25, -0.5], dtype=np.float32)
    s = nano.sampler(8, temperature=1e-40, seed=3)
    assert [s.sample(logits) for _ in range(20)] == [2] * 20
    s = nano.sampler(8, temperature=1.0, repetition_penalty=1e-38, seed=3)
    assert [s.sample(logits, [5, 3]) for _ in range(20)] == [5] * 20


@pytest.mark.parametrize("i", range(len(CONFIGS)))
def test_same_draws_as_nano_train(nano, i):
    """Random logits (with ties), histories and seeds: C and nano_train give the same ids."""
    from nano_train.sampling import Rng, SamplerConfig, sample_logits

    kw = CONFIGS[i]
    rng = np.random.default_rng(100 + i)
    for trial in range(4):
        V = int(rng.choice([2, 7, 80, 4096]))
        seed = int(rng.integers(0, 2 ** 63))
        s = nano.sampler(V, seed=seed, **kw)
        py_rng = Rng(seed)
        cfg = SamplerConfig(seed=seed, **kw)
        history = []
        for step in range(25):
            logits = (3 * rng.standard_normal(V)).astype(np.float32)
            if step % 5 == 0:
                logits[: V // 2] = np.round(logits[: V // 2])  # equal logits: ties by id
            got = s.sample(logits, history)
            want = sample_logits(logits, history, cfg, py_rng)
            assert got == want, (kw, V, trial, step)
            history.append(want)


def test_near_equal_probabilities_draw_the_same_token(nano):
    """Flat logits make many probabilities differ in the last bit only: with the C
    library's expf against numpy's exp, 5 in 1,500 such draws picked another token."""
    from nano_train.sampling import Rng, SamplerConfig, sample_logits

    rng = np.random.default_rng(7)
    for trial in range(1500):
        logits = rng.normal(0.0, 0.02, 4096).astype(np.float32)
        seed = int(rng.integers(0, 2 ** 63))
        s = nano.sampler(4096, temperature=1.0, seed=seed)
        assert s.sample(logits) == sample_logits(logits, [], SamplerConfig(seed=seed), Rng(seed)), (trial, seed)


def test_init_refuses_vocab_above_the_format_bound(nano):
    """V * sizeof(float) must not wrap on a 32-bit size_t (malloc(0), then a heap
    overflow on the first sample): vocab_size is bounded by NANO_MAX_VOCAB."""
    ffi, lib = nano.ffi, nano.lib
    p = ffi.new("nano_sampler_params *", lib.nano_sampler_default_params())
    out = ffi.new("nano_sampler **")
    for v in (lib.NANO_MAX_VOCAB + 1, 2**31, 2**32 - 1):
        assert nano.status_name(lib.nano_sampler_init(p, v, out)) == "NANO_ERR_BAD_ARGUMENT", v
        assert out[0] == ffi.NULL
    assert nano.status_name(lib.nano_sampler_init(p, 0, out)) == "NANO_ERR_BAD_ARGUMENT"
    assert nano.status_name(lib.nano_sampler_init(p, lib.NANO_MAX_VOCAB, out)) == "NANO_OK"
    lib.nano_sampler_free(out[0])
