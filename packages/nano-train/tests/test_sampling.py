"""The portable sampler: each option on hand-made logits, the RNG pinned for C."""

import numpy as np
import pytest
import torch

from nano_train.model import ModelConfig, Transformer
from nano_train.sampling import Rng, SamplerConfig, generate, sample_logits, seq2seq, splitmix64


pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(**kw) -> SamplerConfig:
    return SamplerConfig(**kw)


class FixedRng:
    """Returns the given uniforms, to steer step 5 of the sampler."""

    def __init__(self, *u):
        self.u = list(u)

    def uniform(self):
        return self.u.pop(0)


# ---------------------------------------------------------------------------
# RNG: these numbers are the contract with the C engine (it pins the same ones)


def test_rng_pinned_outputs():
    assert splitmix64(0) == 0xE220A8397B1DCDAF
    r = Rng(0)
    assert r.state == 0xE220A8397B1DCDAF
    assert [r.next_u64() for _ in range(4)] == [
        0x7BBCB40D550682D0, 0xDE7FE413D00CC9FD, 0xB3C638353C668C91, 0xE073AFC0949195FC,
    ]
    r = Rng(42)
    assert r.state == 0xBDD732262FEB6E95
    assert [r.next_u64() for _ in range(4)] == [
        0x31B0ECE7C4F697A2, 0x9008A3B1CB686F03, 0x7C7173ABD97BE16F, 0x45672C8C8D6B8C4F,
    ]
    r = Rng(0)
    u = [r.uniform() for _ in range(2)]
    assert u == [0x7BBCB4 / 2**24, 0xDE7FE4 / 2**24]  # top 24 bits of the outputs
    assert all(np.float32(x) == x for x in u)  # exact in float32


def test_rng_uniform_range_and_determinism():
    a, b = Rng(7), Rng(7)
    xs = [a.uniform() for _ in range(2000)]
    assert xs == [b.uniform() for _ in range(2000)]
    assert min(xs) >= 0.0 and max(xs) < 1.0
    assert 0.45 < sum(xs) / len(xs) < 0.55
    assert Rng(1).uniform() != Rng(2).uniform()


# ---------------------------------------------------------------------------
# Each step of the algorithm


def test_greedy_and_tie_break():
    logits = np.array([0.5, 2.0, -1.0, 2.0, 1.0], dtype=np.float32)
    assert sample_logits(logits, [], cfg(temperature=0), FixedRng()) == 1  # lowest of the tied ids
    # greedy draws nothing from the RNG
    r = Rng(5)
    sample_logits(logits, [], cfg(temperature=0), r)
    assert r.state == Rng(5).state


def test_repetition_penalty_lowers_positive_and_negative_logits():
    """Reference defect 8: dividing a negative logit would raise it."""
    logits = np.array([2.0, -2.0, 1.9, -2.5, -3.0], dtype=np.float32)
    c = cfg(temperature=0, repetition_penalty=2.0)
    # id 0 seen: 2.0 -> 1.0, so id 2 (1.9) wins
    assert sample_logits(logits, [0, 0], c, FixedRng()) == 2
    # ids 0, 2, 1 seen: 1.0, 0.95, -4.0 -> id 0 is on top again
    assert sample_logits(logits, [0, 2, 1], c, FixedRng()) == 0
    # only negatives in play: -2 (id 1) seen becomes -4, below -2.5 (id 3)
    neg = np.array([-2.0, -2.5, -9.0], dtype=np.float32)
    assert sample_logits(neg, [0], c, FixedRng()) == 1
    # the reference's rule (-2 / 2 = -1) would have kept id 0 on top; penalty 1 changes nothing
    assert sample_logits(neg, [0], cfg(temperature=0), FixedRng()) == 0
    # distinct ids: a token seen many times is penalised once
    two = np.array([4.0, 1.5], dtype=np.float32)
    assert sample_logits(two, [0] * 5, c, FixedRng()) == 0  # 4 / 2 = 2 > 1.5, not 4 / 32
    # the input array is left untouched
    assert logits[0] == 2.0


def probs(logits, t=1.0):
    x = np.asarray(logits, dtype=np.float64) / t
    e = np.exp(x - x.max())
    return e / e.sum()


def test_inverse_cdf_draw_over_sorted_candidates():
    logits = np.log(np.array([0.1, 0.2, 0.4, 0.3], dtype=np.float32))
    # order: id 2 (0.4), id 3 (0.3), id 1 (0.2), id 0 (0.1); cumulative 0.4 0.7 0.9 1.0
    c = cfg()
    assert sample_logits(logits, [], c, FixedRng(0.0)) == 2
    assert sample_logits(logits, [], c, FixedRng(0.39)) == 2
    assert sample_logits(logits, [], c, FixedRng(0.41)) == 3
    assert sample_logits(logits, [], c, FixedRng(0.69)) == 3
    assert sample_logits(logits, [], c, FixedRng(0.71)) == 1
    assert sample_logits(logits, [], c, FixedRng(0.95)) == 0
    # rounding leaving nothing above u returns the last kept candidate
    assert sample_logits(logits, [], c, FixedRng(1.0)) == 0


def test_equal_probabilities_order_by_id():
    logits = np.zeros(4, dtype=np.float32)
    assert [sample_logits(logits, [], cfg(), FixedRng(u)) for u in (0.1, 0.3, 0.6, 0.9)] == [0, 1, 2, 3]
    assert sample_logits(logits, [], cfg(top_k=1), FixedRng(0.9)) == 0


def test_temperature():
    logits = np.log(np.array([0.1, 0.2, 0.4, 0.3], dtype=np.float32))
    # at u = 0.55: temperature 1 -> id 3 (0.4 < 0.55 < 0.7); a low temperature
    # sharpens id 2 past 0.55; a high one flattens all to ~0.25, so u falls on the third
    assert sample_logits(logits, [], cfg(temperature=1.0), FixedRng(0.55)) == 3
    assert probs(logits, 0.4)[2] > 0.55
    assert sample_logits(logits, [], cfg(temperature=0.4), FixedRng(0.55)) == 2
    assert sample_logits(logits, [], cfg(temperature=100.0), FixedRng(0.55)) == 1


def test_top_k():
    logits = np.log(np.array([0.1, 0.2, 0.4, 0.3], dtype=np.float32))
    # keep ids 2, 3 -> renormalised 4/7, 3/7
    assert sample_logits(logits, [], cfg(top_k=2), FixedRng(0.56)) == 2
    assert sample_logits(logits, [], cfg(top_k=2), FixedRng(0.58)) == 3
    assert sample_logits(logits, [], cfg(top_k=2), FixedRng(0.99)) == 3
    assert sample_logits(logits, [], cfg(top_k=1), FixedRng(0.99)) == 2
    assert sample_logits(logits, [], cfg(top_k=10), FixedRng(0.99)) == 0  # k > V keeps all


def test_top_k_on_ties_keeps_the_lowest_ids_as_a_whole_sort_would():
    """Top-k sorts only the k most probable (not the vocabulary, each token): its candidates
    and their order are a stable sort's first k, ties at the k-th probability going to the
    lowest ids. Checked against the whole sort, draw by draw, on logits full of ties."""
    def whole_sort(logits, k, top_p, u):  # step 4 as it was: the whole vocabulary sorted
        x = logits.astype(np.float32)
        e = np.exp((x - x.max()).astype(np.float32)).astype(np.float32)
        p = e / np.cumsum(e, dtype=np.float32)[-1]
        order = np.argsort(-p, kind="stable")[:k]
        ps = p[order]
        reached = np.nonzero(np.cumsum(ps, dtype=np.float32) >= np.float32(top_p))[0]
        n = int(reached[0]) + 1 if top_p < 1 and reached.size else len(order)
        kept = ps[:n]
        cdf = np.cumsum(kept / np.cumsum(kept, dtype=np.float32)[-1], dtype=np.float32)
        above = np.nonzero(cdf > np.float32(u))[0]
        return int(order[above[0]]) if above.size else int(order[n - 1])

    rng = np.random.default_rng(7)
    for _ in range(600):
        v = int(rng.integers(2, 300))
        logits = rng.integers(-3, 3, v).astype(np.float32)  # a handful of values: many ties
        k = int(rng.integers(1, v + 3))
        top_p = float(rng.choice([1.0, 0.5, 0.9]))
        u = float(rng.random())
        assert sample_logits(logits, [], cfg(top_k=k, top_p=top_p), FixedRng(u)) == whole_sort(logits, k, top_p, u)


def test_top_p():
    logits = np.log(np.array([0.1, 0.2, 0.4, 0.3], dtype=np.float32))
    # cumulative 0.4, 0.7, 0.9: top_p 0.65 keeps ids 2, 3; 0.75 keeps 2, 3, 1
    assert sample_logits(logits, [], cfg(top_p=0.65), FixedRng(0.99)) == 3
    assert sample_logits(logits, [], cfg(top_p=0.75), FixedRng(0.99)) == 1
    assert sample_logits(logits, [], cfg(top_p=0.75), FixedRng(0.4 / 0.9 + 0.01)) == 3
    assert sample_logits(logits, [], cfg(top_p=0.01), FixedRng(0.99)) == 2  # at least one
    # top_k then top_p, both on the softmax probabilities: k=3 caps p=0.95
    assert sample_logits(logits, [], cfg(top_k=3, top_p=0.95), FixedRng(0.99)) == 1


def test_top_p_stops_at_the_candidate_whose_running_sum_reaches_it():
    """Reaching top_p exactly is enough (>=, as in the C engine): no candidate past it.
    (A mutation audit found no test with a running sum landing on top_p.)"""
    assert sample_logits(np.zeros(2, np.float32), [], cfg(top_p=0.5), FixedRng(0.9)) == 0
    logits = np.log(np.array([0.5, 0.25, 0.25], dtype=np.float32))
    assert sample_logits(logits, [], cfg(top_p=0.75), FixedRng(0.99)) == 1


def test_top_p_is_read_in_float32_as_the_c_engine_stores_it():
    """1 - 1e-9 is 1.0 in float32: the filter is off (in C too), and the tail of tiny
    probabilities that a float32 running sum reaches 1.0 before stays a candidate."""
    logits = np.array([0.0] + [-12.75] * 200, dtype=np.float32)
    u = 1 - 2**-24  # the largest draw: it lands in the tail
    assert sample_logits(logits, [], cfg(top_p=1 - 1e-9), FixedRng(u)) == \
        sample_logits(logits, [], cfg(top_p=1.0), FixedRng(u)) == 200


def test_min_p():
    logits = np.log(np.array([0.1, 0.2, 0.4, 0.3], dtype=np.float32))
    # min_p 0.45: threshold 0.18 keeps 0.4, 0.3, 0.2; 0.6: threshold 0.24 keeps 0.4, 0.3
    assert sample_logits(logits, [], cfg(min_p=0.45), FixedRng(0.99)) == 1
    assert sample_logits(logits, [], cfg(min_p=0.6), FixedRng(0.99)) == 3
    assert sample_logits(logits, [], cfg(min_p=1.0), FixedRng(0.99)) == 2


def test_min_p_counts_only_what_top_k_and_top_p_kept():
    """min_p after top-k: threshold 0.1 x 0.4 keeps both of top-k's 0.4 and 0.3, not the
    ids top-k dropped (a mutation audit: only the C engine's tests caught that)."""
    logits = np.log(np.array([0.1, 0.2, 0.4, 0.3], dtype=np.float32))
    assert sample_logits(logits, [], cfg(top_k=2, min_p=0.1), FixedRng(0.99)) == 3
    assert sample_logits(logits, [], cfg(top_p=0.65, min_p=0.1), FixedRng(0.99)) == 3


def test_sampling_follows_the_distribution():
    logits = np.log(np.array([0.1, 0.2, 0.4, 0.3], dtype=np.float32))
    r = Rng(123)
    counts = np.bincount([sample_logits(logits, [], cfg(), r) for _ in range(4000)], minlength=4)
    assert np.allclose(counts / 4000, [0.1, 0.2, 0.4, 0.3], atol=0.03)


def test_pinned_draws_for_seed_42():
    """A whole draw sequence the C sampler must reproduce on the same logits."""
    logits = np.array([1.0, 0.5, 2.0, -1.0, 0.0, 1.5, 0.25, -0.5], dtype=np.float32)
    r = Rng(42)
    c = cfg(temperature=0.8, top_k=6, top_p=0.9)
    got = [sample_logits(logits, [], c, r) for _ in range(12)]
    assert got == PINNED_SEED42


PINNED_SEED42 = [2, 5, 5, 2, 0, 5, 2, 0, 1, 5, 2, 5]


@pytest.mark.parametrize(
    "kw",
    [dict(temperature=-1), dict(top_k=-1), dict(top_p=0), dict(top_p=1.5), dict(min_p=-0.1),
     dict(repetition_penalty=0), dict(max_new_tokens=-1)],
)
def test_config_validation(kw):
    with pytest.raises(ValueError):
        SamplerConfig(**kw)


# ---------------------------------------------------------------------------
# generate / seq2seq on a tiny random model


def tiny_model(**kw):
    torch.manual_seed(0)
    c = dict(block_size=24, vocab_size=29, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    c.update(kw)
    return Transformer(ModelConfig(**c)).eval()


def test_generate_greedy_equals_uncached_argmax_loop():
    m = tiny_model()
    prompt = [3, 5, 7]
    got = list(generate(m, prompt, SamplerConfig(temperature=0, max_new_tokens=10)))
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(10):
            logits, _ = m(torch.tensor([ids]))
            ids.append(int(logits[0, -1].argmax()))
    assert got == ids[3:]


def test_generate_is_deterministic_for_a_seed_and_stops():
    m = tiny_model()
    c = SamplerConfig(temperature=1.0, top_k=10, max_new_tokens=15, seed=9)
    a = list(generate(m, [1, 2], c))
    assert a == list(generate(m, [1, 2], c)) and len(a) == 15
    assert a != list(generate(m, [1, 2], SamplerConfig(temperature=1.0, top_k=10, max_new_tokens=15, seed=10)))
    # a stop token ends the stream and is not yielded
    stop = a[4]
    first = a.index(stop)
    b = list(generate(m, [1, 2], SamplerConfig(temperature=1.0, top_k=10, max_new_tokens=15, seed=9, stop_tokens=(stop,))))
    assert b == a[:first]
    # the block size bounds the output: prompt 2 + 22 new positions, the last one unfed
    long = list(generate(m, [1, 2], SamplerConfig(temperature=1.0, max_new_tokens=100, seed=1)))
    assert len(long) == 24 - 2 + 1


def test_generate_rejects_bad_prompts():
    m = tiny_model()
    with pytest.raises(ValueError, match="empty"):
        list(generate(m, [], SamplerConfig()))
    with pytest.raises(ValueError, match="block size"):
        list(generate(m, list(range(24)), SamplerConfig()))


def test_seq2seq_is_argmax_of_one_forward():
    m = tiny_model(is_causal=False)
    ids = [4, 8, 15, 16, 23, 0]
    logits, _ = m(torch.tensor([ids]))
    assert seq2seq(m, ids) == logits[0].argmax(-1).tolist()


def test_seq2seq_refuses_nan_logits_as_the_c_engine_does():
    m = tiny_model(is_causal=False)
    with torch.no_grad():
        m.norm_final.weight[3] = float("nan")  # every position's logits turn NaN
    with pytest.raises(ValueError, match=r"logits hold NaN \(first at position 0\)"):
        seq2seq(m, [4, 8, 15])


def test_stop_strings_and_instruct_prompt(nano80):
    from nano_train.sampling import instruct_prompt

    tok = nano80
    m = tiny_model(vocab_size=80)
    c = dict(temperature=1.0, max_new_tokens=20, seed=3)
    a = list(generate(m, [27, 28], SamplerConfig(**c)))
    # a two-character string is two tokens here, so it is matched on the text
    text = tok.decode(a[5:7])
    assert len(tok.encode(text)) == 2
    full = tok.decode(a)
    got = list(generate(m, [27, 28], SamplerConfig(**c, stop_tokens=(text,)), tokenizer=tok))
    # nothing of the stop string is yielded, not even its first token
    assert got == a[:len(got)] and tok.decode(got) == full[:full.index(text)]
    # a string that could have begun at the last token but was not completed:
    # the held-back token comes out at the end
    last = tok.decode(a[-1:])
    tail = next(last + ch for ch in "abcdefghijklmnopqrstuvwxyz" if last + ch not in full)
    got = list(generate(m, [27, 28], SamplerConfig(**c, stop_tokens=(tail,)), tokenizer=tok))
    assert got == a
    # ... and before a stop token that ends the stream while it is held back
    k = next(k for k in range(1, len(a) - 1) if a[k + 1] not in a[:k + 1])
    held = tok.decode(a[k:k + 1])
    held = next(held + ch for ch in "abcdefghijklmnopqrstuvwxyz" if held + ch not in full)
    got = list(generate(m, [27, 28], SamplerConfig(**c, stop_tokens=(held, a[k + 1])), tokenizer=tok))
    assert got == a[:k + 1]
    # a one-character string is matched on the text (each character is one token here)
    got = list(generate(m, [27, 28], SamplerConfig(**c, stop_tokens=(tok.decode([a[3]]),)), tokenizer=tok))
    assert got == a[:a.index(a[3])]
    with pytest.raises(ValueError, match="tokenizer"):
        list(generate(m, [27, 28], SamplerConfig(**c, stop_tokens=("ab",))))
    ids = instruct_prompt(tok, "hi")
    assert ids == [tok.instruct_id, *tok.encode("hi"), tok.response_id]
    assert tok.decode(ids) == "<|instruct_mark|>hi<|response_mark|>"


def test_extreme_settings_give_real_tokens():
    """The max is subtracted before the temperature divides, and logits are clamped to
    float32's range after the penalty: tiny settings give tokens, never NaN."""
    import warnings

    logits = np.array([1.0, 0.5, 2.0, -1.0, 0.0, 1.5, 0.25, -0.5], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or invalid-value warnings either
        r = Rng(3)
        assert [sample_logits(logits, [], cfg(temperature=1e-40), r) for _ in range(20)] == [2] * 20
        r = Rng(3)
        assert [sample_logits(logits, [5, 3], cfg(temperature=1.0, repetition_penalty=1e-38), r)
                for _ in range(20)] == [5] * 20
        # below float32's smallest number the temperature is 0 there, as in the C engine: greedy
        assert sample_logits(logits, [], cfg(temperature=1e-50), Rng(3)) == 2


@pytest.mark.parametrize("kw", [dict(temperature=1e39), dict(temperature=float("inf")),
                                dict(repetition_penalty=1e-50), dict(repetition_penalty=1e39),
                                dict(top_p=1e-50)])
def test_settings_outside_float32_are_refused(kw):
    with pytest.raises(ValueError):
        SamplerConfig(**kw)


@pytest.mark.parametrize("seed", [2**64, -1, 2**70, True])
def test_seeds_outside_uint64_are_refused(seed):
    """As the C CLI: a seed is a uint64_t, so 2^64 or -1 is an error, not a wrap to 0 or 2^64 - 1."""
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\^64\)"):
        SamplerConfig(seed=seed)
    assert SamplerConfig(seed=2**64 - 1).seed == 2**64 - 1


@pytest.mark.parametrize("t", [0.0, 1.0])
def test_nan_logits_are_an_error(t):
    """NaN passes the clamp and argmax reads it as id 0: refuse it. Infinities are
    clamped to the float32 range (step 1), as in C."""
    logits = np.array([1.0, 2.0, np.nan, 0.5], dtype=np.float32)
    with pytest.raises(ValueError, match=r"the logits hold NaN \(at id 2\)"):
        sample_logits(logits, [], cfg(temperature=t), Rng(0))
    assert sample_logits(np.array([1.0, np.inf, 0.5], dtype=np.float32), [], cfg(temperature=t), Rng(0)) == 1


def test_max_new_tokens_zero_runs_until_the_context_is_full():
    """As the C engine's max_tokens 0: no limit but the context (the block size)."""
    m = tiny_model()
    c = dict(temperature=1.0, seed=4)
    got = list(generate(m, [1, 2], SamplerConfig(max_new_tokens=0, **c)))
    assert len(got) == 24 - 2 + 1
    assert got == list(generate(m, [1, 2], SamplerConfig(max_new_tokens=1000, **c)))


def test_generate_stops_at_eos_whenever_the_vocabulary_has_it(nano80, predicting):
    """The C engine's stop_at_eos (on in every mode): given a tokenizer with <|eos|>,
    generation ends there, in plain continuation too; without one nothing knows eos."""
    # <|eos|> or "b" (28) with about equal probability at every step
    m = predicting(tiny_model(vocab_size=80, tie_embeddings=False), [nano80.eos_id, 28])
    c = SamplerConfig(temperature=1.0, max_new_tokens=20, seed=0)  # a seed that draws "b" first
    free = list(generate(m, [27], c))
    eos = nano80.eos_id
    assert eos in free and free.index(eos) > 0
    assert list(generate(m, [27], c, tokenizer=nano80)) == free[:free.index(eos)]


def test_stop_strings_the_vocabulary_cannot_write_are_refused(nano80):
    """A character with no token encodes to <|unknown|>: such a stop could never be
    in the output, and must not turn into "stop at any unknown token"."""
    m = tiny_model(vocab_size=80)
    for stop in ("§", "a§", "é"):
        assert nano80.encode(stop)[-1] == nano80.unk_id
        with pytest.raises(ValueError, match="can never occur: the vocabulary has no token for"):
            list(generate(m, [27, 28], SamplerConfig(stop_tokens=(stop,)), tokenizer=nano80))
    # the unknown token's own text is a stop id like any other special token's
    c = dict(temperature=1.0, max_new_tokens=20, seed=3)
    want = list(generate(m, [27, 28], SamplerConfig(stop_tokens=(nano80.unk_id,), **c), tokenizer=nano80))
    assert list(generate(m, [27, 28], SamplerConfig(stop_tokens=("<|unknown|>",), **c), tokenizer=nano80)) == want


def words_vocabulary():
    """A vocabulary with words: "ab" is one token, and also "a" then "b"."""
    from nano_tokenizer import Tokenizer

    itos = ["<|padding|>", "<|unknown|>", "<|bos|>", "<|eos|>", "<|instruct_mark|>", "<|response_mark|>",
            "a", "b", "ab", "ba"]
    return Tokenizer(itos, {t: i for i, t in enumerate(itos[:6])})


def drawing(predicting, ids, want):
    """A model drawing the tokens ids with equal probability, and a seed whose first
    draws (temperature 1) are `want`."""
    m = predicting(tiny_model(vocab_size=10, tie_embeddings=False), ids)
    seed = next(s for s in range(1000)
                if list(generate(m, [7], SamplerConfig(max_new_tokens=len(want), seed=s))) == want)
    return m, seed


def test_a_stop_string_keeps_the_text_before_it(predicting):
    """The held-back tokens that come before the stop string are yielded, not dropped
    with it: "a" "a" "ab" with the stop "aab" gives "a" (the stop starts in the second)."""
    tok = words_vocabulary()
    m, seed = drawing(predicting, [6, 8], [6, 6, 8])
    got = list(generate(m, [7], SamplerConfig(max_new_tokens=10, seed=seed, stop_tokens=("aab",)), tokenizer=tok))
    assert got == [6]
    # a token whose text starts before the stop string is yielded, the text before it kept
    got = list(generate(m, [7], SamplerConfig(max_new_tokens=10, seed=seed, stop_tokens=("b",)), tokenizer=tok))
    assert got == [6, 6, 8]


def test_no_token_after_the_start_of_a_stop_string_is_shown(predicting):
    """The stop "abba" can start inside "ba", which is shown (it starts before it):
    the "b" after it is held back, and is never shown when "ba" completes the stop."""
    tok = words_vocabulary()
    m, seed = drawing(predicting, [7, 9], [9, 7, 9])
    got = list(generate(m, [7], SamplerConfig(max_new_tokens=10, seed=seed, stop_tokens=("abba",)), tokenizer=tok))
    assert got == [9]


def test_a_stop_string_that_is_one_token_is_matched_on_the_text(predicting):
    """"ab" is a token, but "a" then "b" writes it too: the output stops there."""
    tok = words_vocabulary()
    m, seed = drawing(predicting, [6, 7], [6, 7])
    got = list(generate(m, [7], SamplerConfig(max_new_tokens=10, seed=seed, stop_tokens=("ab",)), tokenizer=tok))
    assert got == []


def test_exp32_is_close_to_exp_and_exact_where_it_must_be():
    """The sampler's own float32 exponential (the C engine computes the same bits)."""
    from nano_train.sampling import exp32

    z = np.linspace(-87.0, 0.0, 200_001).astype(np.float32)
    got = exp32(z)
    assert got.dtype == np.float32
    true = np.exp(z.astype(np.float64))
    assert (np.abs(got - true) / np.spacing(true.astype(np.float32))).max() <= 2.0
    assert exp32(np.float32([0.0, -0.0, -np.inf, -87.5, -1e30])).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
