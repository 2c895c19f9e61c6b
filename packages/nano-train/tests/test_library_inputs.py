"""The model, the loss and the sampler used from Python: bad arguments are one clear
error at the call, never a wrong answer or an exception from deep inside torch."""

import numpy as np
import pytest
import torch

from nano_train.losses import linear_cross_entropy
from nano_train.model import ModelConfig, Transformer
from nano_train.sampling import Rng, SamplerConfig, generate, sample_logits, seq2seq


pytestmark = pytest.mark.usefixtures("one_thread")

V = 11  # the tiny model's vocabulary


def tiny(**kw):
    torch.manual_seed(0)
    c = dict(block_size=8, vocab_size=V, n_layer=1, n_head=2, n_kv_head=1, n_embd=16)
    c.update(kw)
    return Transformer(ModelConfig(**c)).eval()


def ids(*shape, seed=0):
    return torch.randint(0, V, shape, generator=torch.Generator().manual_seed(seed))


# both loss paths: the plain one (logits, F.cross_entropy) and the blocked one (training's)
PATHS = {"plain": dict(), "blocked": dict(return_logits=False)}


# ---------------------------------------------------------------------------
# Transformer.forward / forward_cached


@pytest.mark.parametrize("path", PATHS)
def test_targets_of_another_shape_are_refused(path):
    """[3, 2] targets for [2, 3] ids have the same count: the loss came out, wrong."""
    idx = ids(2, 3)
    with pytest.raises(ValueError, match=r"^targets shape \(3, 2\) differs from idx shape \(2, 3\)$"):
        tiny()(idx, ids(3, 2, seed=1), **PATHS[path])


def test_a_loss_mask_without_targets_is_refused():
    with pytest.raises(ValueError, match="loss_mask was given without targets"):
        tiny()(ids(2, 3), None, torch.ones(2, 3))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bad", [-2, V])
def test_targets_outside_the_vocabulary_are_refused_on_both_paths(path, bad):
    """The blocked path read -2 as token 0; the plain one raised torch's IndexError."""
    targets = ids(2, 3, seed=1)
    targets[1, 2] = bad
    with pytest.raises(ValueError, match=rf"^target {bad} at targets\[1, 2\] is outside the vocabulary "
                                         rf"0\.\.{V - 1} \(or -1, ignored\)$"):
        tiny()(ids(2, 3), targets, **PATHS[path])


def test_linear_cross_entropy_refuses_targets_below_minus_one():
    x, w = torch.randn(5, 4), torch.randn(7, 4)
    targets = torch.tensor([0, 6, -1, -2, 3])
    with pytest.raises(ValueError, match=r"^target -2 at targets\[3\] is outside the vocabulary 0\.\.6"):
        linear_cross_entropy(x, w, targets, torch.ones(5))
    with pytest.raises(TypeError, match="targets must hold int32 or int64 token ids, got torch.float32"):
        linear_cross_entropy(x, w, targets.float(), torch.ones(5))


@pytest.mark.parametrize("bad", [-1, V])
def test_ids_outside_the_vocabulary_are_named_with_their_position(bad):
    idx = ids(2, 3)
    idx[1, 2] = bad
    m = tiny()
    want = rf"^token id {bad} at idx\[1, 2\] is outside the vocabulary 0\.\.{V - 1}$"
    with pytest.raises(ValueError, match=want):
        m(idx)
    with pytest.raises(ValueError, match=want):
        m(idx, ids(2, 3), return_logits=False)
    with pytest.raises(ValueError, match=want):
        m.forward_cached(idx, m.init_cache(2), 0)


@pytest.mark.parametrize("idx, why", [
    ([[1, 2]], "idx must be a torch tensor of token ids, got list"),
    (torch.ones(1, 2), "idx must hold int32 or int64 token ids, got torch.float32"),
    (torch.ones(1, 2, dtype=torch.uint8), "idx must hold int32 or int64 token ids, got torch.uint8"),
    (torch.ones(1, 2, dtype=torch.bool), "idx must hold int32 or int64 token ids, got torch.bool"),
])
def test_ids_of_the_wrong_type_are_refused(idx, why):
    with pytest.raises(TypeError, match=f"^{why}$"):
        tiny()(idx)


def test_int32_ids_and_targets_give_what_int64_ones_give_on_both_paths():
    """int32 targets failed in F.cross_entropy (plain path) with torch's 'expected ... Long'."""
    m, idx, targets = tiny(), ids(2, 3), ids(2, 3, seed=1)
    for kw in PATHS.values():
        want = m(idx, targets, **kw)[1]
        got = m(idx.int(), targets.int(), **kw)[1]
        assert torch.allclose(got, want, rtol=1e-6, atol=0), kw


def test_forward_cached_gives_forward_s_error_for_one_dimensional_ids():
    """forward_cached read idx.shape[1] first: IndexError: tuple index out of range."""
    m = tiny()
    with pytest.raises(ValueError, match=r"^idx must be \[batch, time\], got shape \(2,\)$"):
        m.forward_cached(torch.tensor([1, 2]), m.init_cache(1), 0)


def test_the_checks_add_no_graph_break_under_torch_compile():
    """The range checks read tensor values: under torch.compile they are left out,
    so the compiled forward stays one graph."""
    import torch._dynamo as dynamo

    m, idx, targets = tiny(), ids(2, 3), ids(2, 3, seed=1)
    dynamo.reset()
    try:
        found = dynamo.explain(m)(idx, targets, None, return_logits=False, blocked_loss=False)
    finally:
        dynamo.reset()
    assert (found.graph_count, found.graph_break_count) == (1, 0), found.break_reasons


# ---------------------------------------------------------------------------
# generate / seq2seq


def test_prompt_ids_outside_the_vocabulary_are_refused():
    with pytest.raises(ValueError, match=rf"^prompt id {V} at position 1 is outside the vocabulary 0\.\.{V - 1}$"):
        generate(tiny(), [3, V], SamplerConfig())
    with pytest.raises(ValueError, match=r"^prompt id -1 at position 0 is outside"):
        generate(tiny(), [-1], SamplerConfig())
    with pytest.raises(ValueError, match=rf"^input id {V + 5} at position 2 is outside the vocabulary 0\.\.{V - 1}$"):
        seq2seq(tiny(is_causal=False), [1, 2, V + 5])


def test_prompt_ids_must_be_integers_not_numbers_int_would_round():
    """int() made 2.7 the id 2 and "5" the id 5; numpy integers and 0-d integer tensors stay fine."""
    for bad in ([1, 2.7], ["5"], [torch.tensor(1.0)]):
        with pytest.raises(TypeError, match="^prompt ids must be integers: "):
            generate(tiny(), bad, SamplerConfig())
    with pytest.raises(TypeError, match="^input ids must be integers: "):
        seq2seq(tiny(is_causal=False), [1, 2.0])
    ok = list(generate(tiny(), [1, np.int64(2), torch.tensor(3)], SamplerConfig(temperature=0, max_new_tokens=2)))
    assert ok == list(generate(tiny(), [1, 2, 3], SamplerConfig(temperature=0, max_new_tokens=2)))


def test_generate_refuses_a_full_attention_model():
    with pytest.raises(ValueError, match=r"full attention \(config.is_causal False\): use seq2seq\(model, ids\)"):
        generate(tiny(is_causal=False), [1, 2], SamplerConfig())


def test_generate_checks_its_arguments_at_the_call():
    """generate was a generator function: its errors waited for the first next()."""
    m = tiny()
    with pytest.raises(ValueError, match="the prompt is empty"):
        generate(m, [], SamplerConfig())
    with pytest.raises(ValueError, match="needs a tokenizer"):
        generate(m, [1], SamplerConfig(stop_tokens=("ab",)))
    stream = generate(m, [1, 2], SamplerConfig(temperature=0, max_new_tokens=3))
    assert len(list(stream)) == 3 and m.training is False


# ---------------------------------------------------------------------------
# SamplerConfig, sample_logits


@pytest.mark.parametrize("stops", ["\n\n", b"ab"])
def test_stop_tokens_as_one_string_are_refused(stops):
    """tuple('\\n\\n') is ('\\n', '\\n'); tuple(b'ab') the ids (97, 98)."""
    with pytest.raises(TypeError, match="stop_tokens must be a sequence of ids or strings"):
        SamplerConfig(stop_tokens=stops)


def test_a_stop_string_is_told_how_to_be_written():
    with pytest.raises(TypeError, match=r"write \('\\n\\n',\) for one string"):
        SamplerConfig(stop_tokens="\n\n")


@pytest.mark.parametrize("stop", [True, 2.0, None])
def test_stop_tokens_hold_ids_and_strings_only(stop):
    with pytest.raises(TypeError, match=f"stop_tokens must hold token ids and strings, got {stop!r}"):
        SamplerConfig(stop_tokens=(1, stop))


@pytest.mark.parametrize("kw, why", [
    (dict(top_k=2.5), "top_k must be an integer, got 2.5"),
    (dict(top_k="3"), "top_k must be an integer, got '3'"),
    (dict(top_k=True), "top_k must be an integer, got True"),
    (dict(max_new_tokens=2.5), "max_new_tokens must be an integer, got 2.5"),
    (dict(temperature="0.5"), "temperature must be a number, got '0.5'"),
    (dict(top_p=None), "top_p must be a number, got None"),
    (dict(repetition_penalty=True), "repetition_penalty must be a number, got True"),
])
def test_sampler_settings_of_the_wrong_type_are_named(kw, why):
    with pytest.raises(TypeError, match=f"^{why}$"):
        SamplerConfig(**kw)


def test_numpy_numbers_are_settings_too():
    c = SamplerConfig(top_k=np.int64(3), max_new_tokens=np.int32(4), temperature=np.float32(0.5), top_p=1)
    assert (c.top_k, c.max_new_tokens, c.temperature) == (3, 4, 0.5)


def test_sample_logits_takes_one_vector():
    """[2, V] logits were flattened: the draw could be an id >= V."""
    logits = np.array([[0.0, 1.0, 3.0], [9.0, 0.0, 0.0]], dtype=np.float32)
    greedy = SamplerConfig(temperature=0)
    with pytest.raises(ValueError, match=r"^logits must be one vector \[V\] \(or \[1, V\]\), got shape \(2, 3\)$"):
        sample_logits(logits, [], greedy, Rng(0))
    assert sample_logits(logits[:1], [], greedy, Rng(0)) == sample_logits(logits[0], [], greedy, Rng(0)) == 2


def test_a_prompt_of_one_token_that_fills_the_block_is_one_token():
    # (was: "the prompt has 1 tokens")
    with pytest.raises(ValueError, match=r"^the prompt has 1 token; the model's block size is 1 "):
        list(generate(tiny(block_size=1), [3], SamplerConfig(temperature=0)))
