"""The forward pass: fixtures, determinism (threads, batching, kernels), limits, LoRA plumbing.

Parity with the PyTorch reference is in test_parity.py; this file checks the
engine's own promises: a batched prefill gives the same bits as feeding tokens
one at a time, any thread count gives the same bits, errors are statuses.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import nano_format as nf
from nano_format import spec


def test_sort6_sorts(nano, sort6_path):
    """The reference fixture is a full-attention model its header cannot describe."""
    m = nano.load(sort6_path)
    tok = m.tokenizer
    ctx = m.context()
    for text, want in (("251212", "112225"), ("987654", "456789"), ("531246", "123456")):
        ids = tok.encode(text)
        assert len(ids) == 6
        assert tok.decode(ctx.seq2seq(ids)) == want
    # run causally (what its header implies) it does not sort: full attention matters
    causal = m.context(attention=1)
    assert tok.decode(causal.seq2seq(tok.encode("251212"))) != "112225"


def test_psycho_greedy_is_deterministic(nano, psycho_path):
    m = nano.load(psycho_path)
    tok = m.tokenizer
    prompt = tok.encode("人的心理")
    a = m.context(threads=1).greedy(prompt, 64)
    b = m.context(threads=2, n_batch=1).greedy(prompt, 64)
    c = m.context(kernels=1).greedy(prompt, 64)
    assert a == b
    assert len(set(a)) > 5
    assert sum(x == y for x, y in zip(a, c)) >= 32  # portable kernels: same math, other rounding
    text = tok.decode(a)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text), text


CONFIGS = {
    "f32_gqa": dict(quant="f32"),
    "q8_gqa": dict(quant="q8_0", group_size=8),
    "q8_odd_group": dict(quant="q8_0", group_size=5, n_embd=20, n_head=2, n_kv_head=1, n_hidden=30),
    "f32_mha_untied": dict(quant="f32", n_kv_head=4, tie_embeddings=False),
    "ext_full_learned": dict(layout="2026.101", attention=spec.Attention.FULL, position=spec.Position.LEARNED),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model(request, nano, h):
    kw = dict(CONFIGS[request.param])
    data = h.model_bytes(seed=7, block_size=40, **kw)
    m = nano.load(data)
    m._data = data
    return m


def test_batched_prefill_equals_one_token_at_a_time(model):
    toks = np.random.default_rng(1).integers(0, model.info["vocab_size"], 37)
    causal = model.info["attention"] == 0
    for kernels in (0, 1):
        whole = model.context(kernels=kernels).eval(toks, all_logits=True)
        for n_batch in (1, 4, 64):
            ctx = model.context(kernels=kernels, n_batch=n_batch)
            assert np.array_equal(ctx.eval(toks, all_logits=True), whole), n_batch
        if causal:
            ctx = model.context(kernels=kernels)
            steps = np.stack([ctx.eval([t]) for t in toks])
            assert np.array_equal(steps, whole)
            # the last-position call agrees with the all-positions call
            assert np.array_equal(model.context(kernels=kernels).eval(toks), whole[-1])


def test_thread_count_does_not_change_bits(nano, h):
    """Big enough that matmuls and attention are really split over threads."""
    kw = dict(seed=3, block_size=128, n_embd=64, n_head=8, n_kv_head=2, n_hidden=256)
    for quant_data in (h.model_bytes(**kw), h.model_bytes(quant="q8_0", group_size=16, **kw)):
        m = nano.load(quant_data)
        toks = np.random.default_rng(2).integers(0, m.info["vocab_size"], 120)
        ref = m.context(threads=1).eval(toks, all_logits=True)
        for threads in (2, 3, 4):
            ctx = m.context(threads=threads)
            assert np.array_equal(ctx.eval(toks, all_logits=True), ref), threads
        ctx = m.context(threads=1)
        ctx.set_threads(4)
        assert np.array_equal(ctx.eval(toks, all_logits=True), ref)


def test_kernels_agree_within_tolerance(model):
    toks = np.random.default_rng(5).integers(0, model.info["vocab_size"], 20)
    a = model.context(kernels=0).eval(toks, all_logits=True)
    b = model.context(kernels=1).eval(toks, all_logits=True)
    assert np.abs(a - b).max() <= 1e-4 * max(1.0, np.abs(a).max())


def test_full_attention_sees_later_tokens(nano, h):
    causal = nano.load(h.model_bytes(seed=1))
    full = nano.load(h.model_bytes(seed=1, layout="2026.101", attention=spec.Attention.FULL))
    toks = [7, 8, 9, 10]
    other = [7, 8, 9, 11]
    for m, sees in ((causal, False), (full, True)):
        a = m.context().eval(toks, all_logits=True)
        b = m.context().eval(other, all_logits=True)
        assert (not np.array_equal(a[0], b[0])) == sees
    # the context's attention mode overrides what the file says
    # (same seed, same weights: only the recorded attention differs between the two files)
    forced = causal.context(attention=2).eval(toks, all_logits=True)
    assert np.array_equal(forced, full.context().eval(toks, all_logits=True))


def test_context_limits_and_errors(nano, h):
    m = nano.load(h.model_bytes(block_size=16))
    ctx = m.context(n_ctx=8)
    ctx.eval([1, 2, 3, 4, 5])
    assert ctx.pos == 5
    assert ctx.eval_status([1, 2, 3, 4]) == "NANO_ERR_CONTEXT_FULL"
    assert ctx.pos == 5
    assert ctx.eval_status([1, 2, 3]) == "NANO_OK" and ctx.pos == 8
    assert ctx.eval_status([1]) == "NANO_ERR_CONTEXT_FULL"
    ctx.reset()
    assert ctx.pos == 0
    assert ctx.eval_status([48]) == "NANO_ERR_BAD_TOKEN"
    assert ctx.eval_status([-1]) == "NANO_ERR_BAD_TOKEN"
    assert ctx.eval_status([]) == "NANO_ERR_BAD_ARGUMENT"
    with pytest.raises(Exception, match="NANO_ERR_BAD_ARGUMENT"):
        m.context(n_ctx=17)
    with pytest.raises(Exception, match="NANO_ERR_BAD_ARGUMENT"):
        m.context(threads=-1)
    with pytest.raises(Exception, match="NANO_ERR_BAD_ARGUMENT"):
        m.context(attention=3)
    assert nano.lib.nano_context_logits(m.context().handle) == nano.ffi.NULL  # before any eval


def test_seq2seq_resets_and_matches_eval(nano, h):
    m = nano.load(h.model_bytes(seed=4, layout="2026.101", attention=spec.Attention.FULL))
    ctx = m.context()
    toks = [3, 9, 27, 31, 2]
    logits = ctx.eval(toks, all_logits=True)
    ctx.eval([5])
    assert ctx.seq2seq(toks) == np.argmax(logits, axis=-1).tolist()
    assert ctx.pos == len(toks)


@pytest.mark.parametrize("layout,attention", [("2026.101", 0), ("2026.101", 2), ("2026.1", 0), ("2026.1", 1)],
                         ids=["full-file", "full-asked", "reference-layout", "causal-asked"])
def test_seq2seq_refuses_nan_logits(nano, h, layout, attention):
    """Finite weights can still overflow: when a position's logits hold NaN, nano_seq2seq is
    NANO_ERR_NON_FINITE (as the sampler, and nano_train.sampling, refuse NaN logits) in
    every kernel family and attention, instead of an argmax read off NaN (id 0, or
    whatever the first comparison kept). nano_eval still hands the logits out as they are."""
    m = nano.load(h.overflowing_model_bytes(layout=layout))
    toks = m.tokenizer.encode("abcab")
    for kernels in (0, 1):
        ctx = m.context(attention=attention, kernels=kernels)
        assert np.isnan(ctx.eval(toks, all_logits=True)).any(axis=-1).all()
        with pytest.raises(Exception, match="NANO_ERR_NON_FINITE"):
            ctx.seq2seq(toks)
        assert nano.lib.nano_context_logits(ctx.handle) == nano.ffi.NULL  # nothing usable is left
        # and again on the same context (no stale state makes a second call pass)
        with pytest.raises(Exception, match="NANO_ERR_NON_FINITE"):
            ctx.seq2seq(toks[:1])
    # the same shapes with a sane norm_final: answers as before
    ok = nano.load(h.model_bytes(layout=layout, **({"attention": 1} if layout == "2026.101" else {})))
    assert len(ok.context(attention=attention).seq2seq(toks)) == len(toks)


def _lora_bytes(rank=2, alpha=4, seed=0, **kw):
    from nano_format.plan import lora_params

    c = dict(n_layer=2, n_embd=16, n_head=4, n_kv_head=2, n_hidden=32)
    c.update(kw)
    lc = nf.LoraConfig(rank=rank, alpha=alpha, **c)
    rng = np.random.default_rng(seed)
    return nf.to_bytes(lc, {p.name: (0.3 * rng.standard_normal(p.shape)).astype(np.float32)
                            for p in lora_params(lc)})


def test_lora_attach_detach(nano, h):
    m = nano.load(h.model_bytes(seed=2))
    toks = [4, 5, 6, 7, 8]
    ctx = m.context()
    base = ctx.eval(toks, all_logits=True)
    lora = nano.load_lora(_lora_bytes())
    ctx.set_lora(lora)
    assert ctx.pos == 0
    with_lora = ctx.eval(toks, all_logits=True)
    assert not np.allclose(with_lora, base)
    ctx.set_lora(None)
    assert np.array_equal(ctx.eval(toks, all_logits=True), base)
    # n_hidden is not something the adapters touch
    ctx.set_lora(nano.load_lora(_lora_bytes(n_hidden=64)))
    for bad in (dict(n_layer=3), dict(n_embd=32), dict(n_head=2, n_kv_head=1), dict(n_kv_head=4)):
        with pytest.raises(Exception, match="NANO_ERR_LORA_MISMATCH"):
            ctx.set_lora(nano.load_lora(_lora_bytes(**bad)))
    # a bigger rank after a smaller one (the scratch grows at attach time)
    ctx.set_lora(nano.load_lora(_lora_bytes(rank=1)))
    ctx.set_lora(nano.load_lora(_lora_bytes(rank=6, alpha=3)))
    ctx.eval(toks)


def test_contexts_on_the_threads_of_an_openmp_team(nano, psycho_path):
    """"Different contexts may run on different threads": here the threads of one OpenMP
    team, each with its own single-threaded context. Attention once took its scratch row
    from the caller's OpenMP thread number, past the rows of a one-thread context (a heap
    overflow that the sanitizer run reports). Every thread gets the serial logits."""
    m = nano.load(psycho_path)
    ids = np.array(m.tokenizer.encode("人的心理学是研究"), dtype=np.int32)
    want = m.context().eval(ids)
    V = len(want)
    team = 4
    out = np.full((team, V), np.nan, dtype=np.float32)
    ran = nano.ffi.new("int32_t *")
    st = nano.lib.nano_test_eval_in_omp_team(m.handle, team, nano.ffi.cast("int32_t *", ids.ctypes.data), len(ids),
                                             nano.ffi.cast("float *", out.ctypes.data), ran)
    assert nano.status_name(st) == "NANO_OK"
    if "openmp" in nano.ffi.string(nano.lib.nano_build_info()).decode():
        limit = os.environ.get("OMP_THREAD_LIMIT", "")  # the one setting that may shrink the team
        assert ran[0] == (min(team, int(limit)) if limit.isdigit() else team)
    else:
        assert ran[0] == 1
    for i in range(ran[0]):
        assert np.array_equal(out[i], want), i


def test_thread_count_is_bounded(nano, h):
    """n_threads above NANO_MAX_THREADS (1024, the CLI's and the server's cap) is
    refused: the OpenMP runtime may exit the process when it cannot make a team."""
    ffi, lib = nano.ffi, nano.lib
    assert lib.NANO_MAX_THREADS == 1024
    m = nano.load(h.model_bytes())
    p = lib.nano_context_default_params()
    out = ffi.new("nano_context **")
    for n in (lib.NANO_MAX_THREADS + 1, 2**31 - 1):
        p.n_threads = n
        st = lib.nano_context_init(m.handle, ffi.new("nano_context_params *", p), out)
        assert nano.status_name(st) == "NANO_ERR_BAD_ARGUMENT", n
        assert out[0] == ffi.NULL
    ctx = m.context(threads=1)
    for n in (lib.NANO_MAX_THREADS + 1, 2**31 - 1):
        assert nano.status_name(lib.nano_context_set_threads(ctx.handle, n)) == "NANO_ERR_BAD_ARGUMENT", n
    assert lib.nano_context_threads(ctx.handle) == 1


def mapped_files() -> list[str]:
    """The files mapped into this process, from /proc/self/maps: the path is the sixth
    field and runs to the end of the line, so it may hold spaces (a checkout such as
    "~/my projects/nano" puts torch's libgomp there)."""
    files = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            files.append(fields[5].removesuffix(" (deleted)"))
    return files


def test_the_openmp_default_is_bounded_too(nano, h):
    """n_threads 0 takes OpenMP's default, which OMP_NUM_THREADS may set above
    NANO_MAX_THREADS: the context runs NANO_MAX_THREADS then.

    PyTorch (imported by the parity tests) brings its own libgomp, and which runtime's
    omp_get_max_threads libnano binds to depends on load order and scope, so the
    default is set on every OpenMP runtime in the process."""
    import cffi

    paths = sorted({p for p in mapped_files() if Path(p).name.startswith(("libgomp", "libomp", "libiomp"))})
    assert paths, "libnano.so is built with OpenMP here, so its runtime is loaded"
    ffi = cffi.FFI()
    ffi.cdef("int omp_get_max_threads(void); void omp_set_num_threads(int);")
    runtimes = [ffi.dlopen(p) for p in paths]
    before = [rt.omp_get_max_threads() for rt in runtimes]

    def set_default(n):  # this thread's default, as OMP_NUM_THREADS sets it
        for rt in runtimes:
            rt.omp_set_num_threads(n)

    m = nano.load(h.model_bytes())
    try:
        set_default(nano.lib.NANO_MAX_THREADS + 500)
        assert nano.lib.nano_context_threads(m.context(threads=0).handle) == nano.lib.NANO_MAX_THREADS
        set_default(3)
        assert nano.lib.nano_context_threads(m.context(threads=0).handle) == 3
    finally:
        for rt, n in zip(runtimes, before):
            rt.omp_set_num_threads(n)
