"""The streaming session API (CLI, WebSocket server, WASM, ESP32 and Pod all use it).

Reference defect 6: the optional token callback is optional (the reference
called an unset hook and crashed).
"""

from __future__ import annotations

import numpy as np
import pytest


class Session:
    def __init__(self, nano, ctx, callback=None, stop_tokens=(), **kw):
        ffi, lib = nano.ffi, nano.lib
        self.nano, self.ctx = nano, ctx
        p = lib.nano_session_default_params()
        sampler = kw.pop("sampler", {})
        for k, v in sampler.items():
            setattr(p.sampler, k, v)
        for k, v in kw.items():
            setattr(p, k, v)
        self._stops = ffi.new("int32_t[]", list(stop_tokens) or [0])
        if stop_tokens:
            p.stop_tokens = self._stops
            p.n_stop_tokens = len(stop_tokens)
        self.events = []
        if callback:
            @ffi.callback("void(void *, const nano_token_event *)")
            def on_token(user, ev):
                self.events.append((ev.id, ev.done, ev.stop_reason))
            self._cb = on_token
            p.on_token = on_token
        out = ffi.new("nano_session **")
        nano.check(lib.nano_session_init(ctx.handle, ffi.new("nano_session_params *", p), out), "session")
        self.handle = ffi.gc(out[0], lib.nano_session_free)

    def start(self, prompt: str, instruct: bool = False) -> str:
        st = self.nano.lib.nano_session_start(self.handle, prompt.encode(), 1 if instruct else 0)
        return self.nano.status_name(st)

    def start_tokens(self, ids) -> str:
        arr = self.nano.ffi.new("int32_t[]", list(ids) or [0])
        return self.nano.status_name(self.nano.lib.nano_session_start_tokens(self.handle, arr, len(ids)))

    def step(self):
        ev = self.nano.ffi.new("nano_token_event *")
        st = self.nano.lib.nano_session_step(self.handle, ev)
        text = self.nano.ffi.unpack(ev.text, ev.text_len) if ev.text != self.nano.ffi.NULL else b""
        return self.nano.status_name(st), ev.id, text, ev.done, ev.stop_reason

    def run(self):
        ids, texts = [], []
        while True:
            st, i, text, done, reason = self.step()
            if st != "NANO_OK" or done:
                return ids, b"".join(texts), st, reason
            ids.append(i)
            texts.append(text)

    def tokens(self):
        n, n_prompt = self.nano.ffi.new("uint32_t *"), self.nano.ffi.new("uint32_t *")
        p = self.nano.lib.nano_session_tokens(self.handle, n, n_prompt)
        return list(p[0:n[0]]), n_prompt[0]

    def stats(self) -> dict:
        s = self.nano.ffi.new("nano_session_stats *")
        self.nano.check(self.nano.lib.nano_session_get_stats(self.handle, s))
        return {k: getattr(s, k) for k, _ in self.nano.ffi.typeof("nano_session_stats").fields}


STOP_TOKEN, STOP_MAX, STOP_FULL, STOP_CANCELLED = 1, 2, 3, 4


@pytest.fixture(scope="module")
def psycho(nano, psycho_path):
    return nano.load(psycho_path)


def test_continuation_greedy_matches_eval(nano, psycho):
    tok = psycho.tokenizer
    ctx = psycho.context(n_ctx=128)
    s = Session(nano, ctx, max_tokens=40, sampler=dict(temperature=0.0), stop_at_eos=0)
    assert s.start("人的心理") == "NANO_OK"
    ids, text, st, reason = s.run()
    assert st == "NANO_OK" and reason == STOP_MAX and len(ids) == 40
    assert text.decode("utf-8") == tok.decode(ids)  # whole characters per token
    ref = psycho.context(n_ctx=128).greedy(tok.encode("人的心理"), 40)
    assert ids == ref
    toks, n_prompt = s.tokens()
    assert toks == tok.encode("人的心理") + ids and n_prompt == 4
    stats = s.stats()
    assert stats["prompt_tokens"] == 4 and stats["generated_tokens"] == 40
    assert stats["ttft_ms"] >= stats["prefill_ms"] >= 0 and stats["decode_tokens_per_s"] > 0
    # after the end, steps repeat the end event
    assert s.step()[3] == 1


def test_instruct_template_and_eos(nano, psycho):
    tok = psycho.tokenizer
    s = Session(nano, psycho.context(n_ctx=256), max_tokens=50, sampler=dict(temperature=0.0))
    assert s.start("你是谁", instruct=True) == "NANO_OK"
    ids, text, st, reason = s.run()
    toks, n_prompt = s.tokens()
    assert toks[:n_prompt] == [tok.find("<|instruct_mark|>")] + tok.encode("你是谁") + [tok.find("<|response_mark|>")]
    assert tok.find("<|eos|>") not in ids
    assert reason in (STOP_TOKEN, STOP_MAX)


def test_stop_tokens_are_not_emitted(nano, psycho):
    ref = Session(nano, psycho.context(n_ctx=128), max_tokens=30, sampler=dict(temperature=0.0), stop_at_eos=0)
    ref.start("人的心理")
    ids, *_ = ref.run()
    stop = ids[10]
    first = ids.index(stop)
    s = Session(nano, psycho.context(n_ctx=128), max_tokens=30, sampler=dict(temperature=0.0),
                stop_tokens=[stop])
    s.start("人的心理")
    got, _, st, reason = s.run()
    assert got == ids[:first] and reason == STOP_TOKEN and st == "NANO_OK"


def test_context_full_emits_the_last_unfed_token(nano, psycho):
    """Like nano_train.sampling.generate: a prompt of P tokens in a context of N gives N - P + 1 tokens."""
    s = Session(nano, psycho.context(n_ctx=12), sampler=dict(temperature=0.0), stop_at_eos=0)
    s.start_tokens([20, 21, 22, 23, 24])
    ids, _, st, reason = s.run()
    assert reason == STOP_FULL and len(ids) == 12 - 5 + 1
    assert s.start_tokens(list(range(20, 32))) == "NANO_ERR_CONTEXT_FULL"  # no room for a new token
    assert s.start_tokens([]) == "NANO_ERR_BAD_ARGUMENT"
    assert s.start_tokens([99999]) == "NANO_ERR_BAD_TOKEN"
    assert s.start("") == "NANO_ERR_BAD_ARGUMENT"
    assert s.start("心" * 50) == "NANO_ERR_CONTEXT_FULL"


def test_callbacks_optional_and_called(nano, psycho):
    """Defect 6: no callback set must not crash; a set one sees every event."""
    quiet = Session(nano, psycho.context(n_ctx=64), max_tokens=5, sampler=dict(temperature=0.0))
    quiet.start("心理")
    assert len(quiet.run()[0]) == 5
    loud = Session(nano, psycho.context(n_ctx=64), callback=True, max_tokens=5, sampler=dict(temperature=0.0))
    loud.start("心理")
    ids, *_ = loud.run()
    assert [e[0] for e in loud.events[:-1]] == ids
    assert loud.events[-1] == (-1, 1, STOP_MAX)


def test_cancel(nano, psycho):
    s = Session(nano, psycho.context(n_ctx=64), max_tokens=20, sampler=dict(temperature=0.0))
    s.start("心理")
    assert s.step()[0] == "NANO_OK"
    nano.lib.nano_session_cancel(s.handle)
    st, i, _, done, reason = s.step()
    assert (st, i, done, reason) == ("NANO_ERR_CANCELLED", -1, 1, STOP_CANCELLED)
    assert s.step()[0] == "NANO_ERR_CANCELLED"
    # cancelled before the prompt ran; a new start clears it
    s.start("心理")
    nano.lib.nano_session_cancel(s.handle)
    assert s.step()[0] == "NANO_ERR_CANCELLED"
    s.start("心理")
    assert s.step()[0] == "NANO_OK"


def test_step_before_start_and_bad_params(nano, psycho):
    s = Session(nano, psycho.context(n_ctx=64))
    assert s.step()[0] == "NANO_ERR_STATE"
    with pytest.raises(Exception, match="NANO_ERR_BAD_ARGUMENT"):
        Session(nano, psycho.context(n_ctx=64), sampler=dict(top_p=0.0))


def test_seeded_sampling_is_reproducible(nano, psycho):
    def run(seed):
        s = Session(nano, psycho.context(n_ctx=128), max_tokens=30, stop_at_eos=0,
                    sampler=dict(temperature=1.0, top_k=40, top_p=0.95, seed=seed))
        s.start("心理")
        return s.run()[0]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_sampling_matches_nano_train_generate(nano, psycho_path, psycho, torch_one_thread):
    """The whole loop (prefill, sample with history, feed) against nano_train.sampling.generate."""
    from nano_train.convert import load_bin
    from nano_train.sampling import SamplerConfig, generate

    model, tok = load_bin(psycho_path)
    prompt = tok.encode("我们的意识")
    for kw in (dict(temperature=0.0), dict(temperature=0.9, top_k=40, top_p=0.9, repetition_penalty=1.2, seed=11),
               dict(temperature=1.1, min_p=0.05, seed=5)):
        cfg = SamplerConfig(max_new_tokens=48, **kw)
        want = list(generate(model, prompt, cfg))
        sampler = {k: v for k, v in kw.items()}
        s = Session(nano, psycho.context(), max_tokens=48, stop_at_eos=0, sampler=sampler)
        assert s.start_tokens(prompt) == "NANO_OK"
        got, *_ = s.run()
        assert got == want, kw


def test_long_prompt_prefills_in_blocks(nano, psycho, h):
    """A prompt longer than the prefill block goes through in several blocks (with cancel
    checks between them) and gives the same tokens as one batched eval."""
    tok = psycho.tokenizer
    text = h.shared_file("data/pretrain_psycho.txt").read_text(encoding="utf-8")[:90]
    prompt = tok.encode(text)
    assert len(prompt) > 40
    s = Session(nano, psycho.context(n_ctx=256, n_batch=16), max_tokens=20, sampler=dict(temperature=0.0),
                stop_at_eos=0)
    assert s.start(text) == "NANO_OK"
    ids, *_ = s.run()
    assert ids == psycho.context(n_ctx=256).greedy(prompt, 20)
    assert s.stats()["prompt_tokens"] == len(prompt)


def test_stats_count_the_prompts_unknown_tokens(nano, psycho):
    """unknown_tokens: the prompt's <|unknown|> tokens, what `nano run` notes and nano-wss's done
    reports: characters the vocabulary lacks in a text prompt, the token itself among given ids."""
    tok = psycho.tokenizer
    unk = tok.encode("\U0001F600")
    assert len(unk) == 1
    s = Session(nano, psycho.context(n_ctx=64), max_tokens=2, sampler=dict(temperature=0.0))
    for text, unknown in (("人的心理", 0), ("人\U0001F600的\U0001F601心理\U0001F602", 3)):
        assert s.start(text) == "NANO_OK"
        s.run()
        assert s.stats()["unknown_tokens"] == unknown, text
    assert s.start_tokens(tok.encode("人的") + unk * 2) == "NANO_OK"
    assert s.stats()["unknown_tokens"] == 2


def test_a_context_reset_under_a_session_is_a_state_error(nano, psycho):
    """A reset (nano_context_reset, or a LoRA attached or detached) or another session's
    start between two steps used to let the step go on: its history then ran past its
    n_ctx + 1 slots (a heap overflow under ASan). Now the step refuses; a new start works."""
    ctx = psycho.context(n_ctx=16)
    s = Session(nano, ctx, sampler=dict(temperature=0.0), stop_at_eos=0)
    assert s.start("心理") == "NANO_OK"
    for _ in range(3):
        assert s.step()[0] == "NANO_OK"
    ctx.reset()
    assert s.step()[0] == "NANO_ERR_STATE"
    assert s.step()[0] == "NANO_ERR_STATE"  # until started again
    assert s.start("心理") == "NANO_OK"
    ids, _, st, reason = s.run()
    tokens, n_prompt = s.tokens()
    assert st == "NANO_OK" and reason == STOP_FULL and len(tokens) == 16 + 1 and tokens[n_prompt:] == ids
    # two sessions on one context: the second one's start takes the context away from the first
    a = Session(nano, ctx, sampler=dict(temperature=0.0))
    b = Session(nano, ctx, sampler=dict(temperature=0.0))
    assert a.start("心理") == "NANO_OK" and a.step()[0] == "NANO_OK"
    assert b.start("意识") == "NANO_OK" and b.step()[0] == "NANO_OK"
    assert a.step()[0] == "NANO_ERR_STATE"
    assert b.step()[0] == "NANO_OK"
    # a reset between the start and the first step counts too (a LoRA attached there
    # would not be the one the caller started with)
    assert a.start("心理") == "NANO_OK"
    ctx.reset()
    assert a.step()[0] == "NANO_ERR_STATE"
    # an eval by the caller between two steps moves the position: refused as well
    assert a.start("心理") == "NANO_OK" and a.step()[0] == "NANO_OK"
    ctx.eval([5])
    assert a.step()[0] == "NANO_ERR_STATE"


def test_tokens_of_a_model_without_a_vocabulary_have_empty_text(nano, h):
    """Started from token ids, a model with no vocabulary still gives each event a text
    ("", length 0), not whatever the caller's event held before."""
    import nano_format as nf

    config = nf.Config(block_size=16, vocab_size=48, n_layer=2, n_embd=16, n_head=4, n_kv_head=2, n_hidden=32)
    m = nano.load(nf.to_bytes(config, h.random_weights(config, 1), None, layout="2026.101"))
    s = Session(nano, m.context(), max_tokens=3, sampler=dict(temperature=0.0))
    assert s.start_tokens([1, 2, 3]) == "NANO_OK"
    ev = nano.ffi.new("nano_token_event *")
    junk = nano.ffi.new("char[]", b"junk")
    for _ in range(3):
        ev.text, ev.text_len = junk, 12345
        assert nano.status_name(nano.lib.nano_session_step(s.handle, ev)) == "NANO_OK" and not ev.done
        assert ev.text_len == 0 and nano.ffi.string(ev.text) == b""


def _session_init_status(nano, ctx) -> str:
    out = nano.ffi.new("nano_session **")
    st = nano.lib.nano_session_init(ctx.handle, nano.ffi.NULL, out)
    if st == nano.lib.NANO_OK:
        nano.lib.nano_session_free(out[0])
    return nano.status_name(st)


@pytest.mark.parametrize("n_batch", [4, 64])
def test_session_refuses_full_attention_contexts(nano, h, n_batch):
    """A full-attention context is seq2seq, not generation: a session on it would
    run the prompt in n_batch blocks, each its own full-attention call, so its
    output would depend on n_batch. nano_session_init refuses it (as the server
    refuses generate and the CLI runs seq2seq); nano_seq2seq does not depend on n_batch."""
    full = nano.load(h.model_bytes(seed=4, layout="2026.101", attention=1, block_size=32))
    ctx = full.context(n_ctx=32, n_batch=n_batch)
    assert _session_init_status(nano, ctx) == "NANO_ERR_UNSUPPORTED"
    prompt = [(7 * i + 3) % 48 for i in range(20)]
    assert ctx.seq2seq(prompt) == full.context(n_ctx=32, n_batch=64 if n_batch == 4 else 4).seq2seq(prompt)
    # a causal file with full attention asked for by the context: refused too
    causal = nano.load(h.model_bytes(seed=4, layout="2026.101", attention=0, block_size=32))
    assert _session_init_status(nano, causal.context(n_ctx=32, n_batch=n_batch, attention=2)) == \
        "NANO_ERR_UNSUPPORTED"
    assert _session_init_status(nano, causal.context(n_ctx=32, n_batch=n_batch)) == "NANO_OK"
    assert _session_init_status(nano, causal.context(n_ctx=32, n_batch=n_batch, attention=1)) == "NANO_OK"
