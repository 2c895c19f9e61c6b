"""The PyTorch reference model: config, KV cache, attention variants, loss masking."""

import math

import pytest
import torch

from nano_train.model import ModelConfig, Transformer, derive_n_hidden


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> ModelConfig:
    base = dict(block_size=16, vocab_size=37, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    base.update(kw)
    return ModelConfig(**base)


def make(seed=0, **kw) -> Transformer:
    torch.manual_seed(seed)
    m = Transformer(tiny(**kw)).eval()
    # norm weights start at one; perturb them so a wrong norm wiring would show
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return m


VARIANTS = {
    "gqa-tied": dict(),
    "mha-untied": dict(n_kv_head=4, tie_embeddings=False),
    "mqa": dict(n_kv_head=1),
    "learned-pos": dict(use_rope=False),
    "full-attention": dict(is_causal=False),
}


def test_n_hidden_derivation():
    assert derive_n_hidden(32) == 96  # the psycho fixture
    assert ModelConfig(n_embd=32, n_head=4).n_hidden == 96
    assert ModelConfig(n_embd=256).n_hidden == 704  # int(2*1024/3) = 682 -> 704
    assert ModelConfig(n_embd=32, n_hidden=16).n_hidden == 16


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(n_embd=30, n_head=4), "n_head"),
        (dict(n_head=4, n_kv_head=3), "n_kv_head"),
        (dict(n_layer=0), "n_layer"),
        (dict(dropout=1.0), "dropout"),
        (dict(n_embd=12, n_head=4), "even head_dim"),
        (dict(norm_eps=0.0), "norm_eps"),
        # float32 holds them in a .bin file: a run that trains with one beyond it could
        # be neither sampled nor exported (a reviewer trained with 1e-46 and 1e300)
        (dict(norm_eps=1e-46), "norm_eps must be a positive number that float32 can hold"),
        (dict(rope_theta=1e300), "rope_theta must be a positive number that float32 can hold"),
        (dict(rope_theta=float("nan")), "rope_theta"),
        (dict(bias=True), "bias"),
    ],
)
def test_config_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ModelConfig(**kw)


def test_config_dict_round_trip_and_unknown_keys():
    c = tiny(use_rope=False, is_causal=False, tie_embeddings=False, norm_eps=1e-6)
    d = c.to_dict()
    assert ModelConfig.from_dict(d) == c
    with pytest.raises(ValueError, match="unknown key"):
        ModelConfig.from_dict({**d, "n_heads": 4})


def test_parameter_names_follow_the_file_format():
    names = set(dict(make(tie_embeddings=False, use_rope=False).named_parameters()))
    for n in ("tok_embd.weight", "pos_embd.weight", "norm_final.weight", "lm_head.weight"):
        assert n in names
    for t in ("norm_attn", "norm_ffn", "wq", "wk", "wv", "wo", "w1", "w2", "w3"):
        assert f"layers.1.{t}.weight" in names
    tied = make()
    assert "lm_head.weight" not in dict(tied.named_parameters())
    assert "pos_embd.weight" not in dict(tied.named_parameters())
    # RoPE tables are derived from the config, not saved
    assert not any("rope" in k for k in tied.state_dict())


def test_shapes_and_counts():
    m = make()
    c = m.config
    logits, loss = m(torch.randint(0, c.vocab_size, (3, 7)))
    assert logits.shape == (3, 7, c.vocab_size) and logits.dtype == torch.float32 and loss is None
    e, f, kd = c.n_embd, c.n_hidden, c.n_kv_head * c.head_dim
    per_layer = 2 * e + e * e + 2 * kd * e + e * e + 3 * e * f
    assert m.num_params() == c.vocab_size * e + c.n_layer * per_layer + e
    assert m.num_params(exclude_embedding=True) == m.num_params() - c.vocab_size * e
    fl = m.flops_per_token(16)
    norms = (2 * c.n_layer + 1) * e  # vectors: no matmul
    assert fl == 6 * (m.num_params() - norms) + 12 * c.n_layer * c.n_head * c.head_dim * 16
    groups = m.param_groups(0.1)
    assert all(p.dim() >= 2 for p in groups[0]["params"]) and groups[0]["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0
    assert sum(p.numel() for g in groups for p in g["params"]) == m.num_params()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kv_cache_matches_uncached_forward(variant):
    m = make(**VARIANTS[variant])
    c = m.config
    torch.manual_seed(1)
    idx = torch.randint(0, c.vocab_size, (2, 11))
    full, _ = m(idx)
    if not c.is_causal:
        # full attention: every position sees every token, so a cache can only
        # reproduce the forward when it is filled in one call
        cache = m.init_cache(2, 11)
        got = m.forward_cached(idx, cache, 0)
        assert torch.allclose(got, full, atol=1e-5)
        return
    # prompt of 4, then one token at a time, then a chunk of 3 (multi-token with history)
    cache = m.init_cache(2, 12)  # max_len below block_size
    parts = [m.forward_cached(idx[:, :4], cache, 0)]
    for p in range(4, 8):
        parts.append(m.forward_cached(idx[:, p:p + 1], cache, p))
    parts.append(m.forward_cached(idx[:, 8:11], cache, 8))
    got = torch.cat(parts, dim=1)
    assert (got - full).abs().max().item() < 1e-5


def test_causality_and_full_attention():
    m = make()
    idx = torch.randint(0, 37, (1, 8))
    a, _ = m(idx)
    idx2 = idx.clone()
    idx2[0, -1] = (idx[0, -1] + 1) % 37
    b, _ = m(idx2)
    assert torch.equal(a[:, :-1], b[:, :-1])  # the future never leaks backwards
    f = make(is_causal=False)
    a, _ = f(idx)
    b, _ = f(idx2)
    assert not torch.allclose(a[:, 0], b[:, 0])  # full attention: it does


def test_gqa_equals_mha_with_repeated_kv_heads():
    # GQA with K kv heads == MHA whose kv head h is a copy of GQA kv head h // (H/K)
    g = make(n_kv_head=2)
    mha = Transformer(tiny(n_kv_head=4)).eval()
    sd = g.state_dict()
    d = g.config.head_dim
    for i in range(g.config.n_layer):
        for w in ("wk", "wv"):
            k = sd[f"layers.{i}.{w}.weight"].view(2, d, -1)
            sd[f"layers.{i}.{w}.weight"] = k.repeat_interleave(2, dim=0).reshape(4 * d, -1)
    mha.load_state_dict(sd)
    idx = torch.randint(0, 37, (2, 9))
    assert torch.allclose(g(idx)[0], mha(idx)[0], atol=1e-5)


def test_rope_rotates_interleaved_pairs():
    from nano_train.model import apply_rope

    d = 8
    x = torch.randn(1, 1, 3, d)
    ang = torch.arange(3.0)[:, None] * torch.tensor([1.0, 0.5, 0.25, 0.125])[None]  # [T, D/2]
    y = apply_rope(x, torch.cos(ang), torch.sin(ang))
    for t in range(3):
        for i in range(d // 2):
            c, s = math.cos(ang[t, i]), math.sin(ang[t, i])
            x0, x1 = x[0, 0, t, 2 * i].item(), x[0, 0, t, 2 * i + 1].item()
            assert y[0, 0, t, 2 * i].item() == pytest.approx(x0 * c - x1 * s, abs=1e-5)
            assert y[0, 0, t, 2 * i + 1].item() == pytest.approx(x0 * s + x1 * c, abs=1e-5)


@pytest.mark.parametrize("d", [2, 8, 16, 64])
def test_rope_complex_product_equals_the_pair_formula(d, monkeypatch):
    """Eager runs rotate the pairs as one complex product; under torch.compile the
    pair formula runs instead. Both give the same values and gradients (to one
    float rounding), on contiguous and on transposed inputs."""
    import torch.compiler

    from nano_train.model import rotate_pairs

    torch.manual_seed(d)
    x = torch.randn(2, 5, 3, d)
    cos, sin = torch.rand(5, 1, d // 2), torch.rand(5, 1, d // 2)
    g = torch.randn(2, 5, 3, d)

    def run(inp):
        inp = inp.clone().requires_grad_()
        y = rotate_pairs(inp, cos, sin)
        (y * g).sum().backward()
        return y.detach(), inp.grad

    eager = run(x)
    eager_t = run(x.transpose(0, 1).contiguous().transpose(0, 1))  # same values, other strides
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    formula = run(x)
    for a, b in zip(eager + eager_t, formula + formula):
        assert torch.allclose(a, b, rtol=0, atol=1e-6), (a - b).abs().max()
    x0, x1 = x[..., 0::2], x[..., 1::2]
    assert torch.allclose(formula[0][..., 0::2], x0 * cos - x1 * sin, atol=1e-6)
    assert torch.allclose(formula[0][..., 1::2], x1 * cos + x0 * sin, atol=1e-6)


def test_masked_positions_get_zero_gradient():
    """Reference defect 1: the mask must act per token, before averaging."""
    m = make()
    torch.manual_seed(3)
    idx = torch.randint(0, 37, (2, 6))
    targets = torch.randint(0, 37, (2, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 0, 1, 0, 0, 1]])
    logits, loss = m(idx, targets, mask)
    logits.retain_grad()
    loss.backward()
    g = logits.grad  # [B, T, V]
    assert torch.all(g[mask == 0] == 0)
    assert torch.all(g[mask == 1].abs().sum(-1) > 0)
    # the value is the mean over unmasked tokens only
    ce = torch.nn.functional.cross_entropy(logits.detach().reshape(-1, 37), targets.reshape(-1), reduction="none")
    assert loss.item() == pytest.approx(ce[mask.reshape(-1) == 1].mean().item(), rel=1e-6)
    # targets of -1 are ignored the same way
    t2 = targets.masked_fill(mask == 0, -1)
    _, loss2 = m(idx, t2)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)


def test_forward_errors():
    m = make()
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 17, dtype=torch.long))
    cache = m.init_cache(1, 4)
    with pytest.raises(ValueError, match="cache length"):
        m.forward_cached(torch.zeros(1, 5, dtype=torch.long), cache, 0)
    with pytest.raises(ValueError, match="max_len"):
        m.init_cache(1, 17)


def test_dropout_only_in_training():
    m = make(dropout=0.5)
    idx = torch.randint(0, 37, (1, 8))
    assert torch.equal(m(idx)[0], m(idx)[0])  # eval: deterministic
    m.train()
    assert not torch.equal(m(idx)[0], m(idx)[0])


def test_a_config_cannot_change_under_its_model():
    """A model copies eps, causality and the RoPE tables into its modules when built:
    a config changed afterwards made export write a file that computes something else
    (logits off by 7.3 for norm_eps 1e-5 -> 0.5)."""
    import dataclasses

    cfg = ModelConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_kv_head=2, n_embd=8)
    model = Transformer(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.norm_eps = 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.config.is_causal = False
    changed = dataclasses.replace(cfg, norm_eps=0.5)  # the way to a changed copy
    assert (changed.norm_eps, Transformer(changed).norm_final.eps) == (0.5, 0.5)


@pytest.mark.parametrize("field,value", [
    ("tie_embeddings", "false"), ("use_rope", "false"), ("is_causal", 0), ("bias", None),
    ("rope_theta", "500"), ("norm_eps", "1e-5"), ("dropout", True),
])
def test_config_fields_of_the_wrong_type_are_refused(field, value):
    """'false' is a true string: it built a tied RoPE model, the opposite of what was asked."""
    with pytest.raises(TypeError, match=f"ModelConfig.{field} must be"):
        ModelConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_kv_head=2, n_embd=8, **{field: value})


def test_numpy_values_become_python_ones():
    import numpy as np

    cfg = ModelConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_kv_head=2, n_embd=8, use_rope=np.bool_(False),
                      rope_theta=np.float32(500.0), dropout=np.float64(0.1))
    assert [type(v) for v in (cfg.use_rope, cfg.rope_theta, cfg.dropout)] == [bool, float, float]


@pytest.mark.parametrize("fused, training", [(True, False), (True, True), (False, False)],
                         ids=["F.rms_norm", "written out (training)", "torch<2.4"])
def test_rmsnorm_uses_its_eps(monkeypatch, fused, training):
    """x * rsqrt(mean(x^2) + eps) * w with the model's eps, on each of forward's paths (a
    mutation audit: a forward that ignored eps passed every test)."""
    from nano_train import model

    monkeypatch.setattr(model, "_HAS_RMS_NORM", fused and hasattr(torch.nn.functional, "rms_norm"))
    torch.manual_seed(0)
    norm = model.RMSNorm(8, 0.5)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.randn(3, 8) * 0.3  # a mean square near eps: eps decides much of the scale
    want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 0.5) * norm.weight
    with torch.set_grad_enabled(training):
        got = norm(x)
    assert (type(got.grad_fn).__name__ == "_RMSNormFunctionBackward") == training
    torch.testing.assert_close(got, want)


def _composite_rms_norm(x, w, eps):
    """RMSNorm as kernels autograd differentiates itself."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def test_rmsnorm_s_written_out_backward_is_the_derivative():
    """_RMSNormFunction's backward against finite differences, in float64, for x and w."""
    from nano_train.model import _RMSNormFunction

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    w = (torch.rand(5, dtype=torch.float64, generator=gen) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: _RMSNormFunction.apply(a, b, 0.1), (x, w))


@pytest.mark.parametrize("shape", [(7,), (4, 16), (2, 3, 16)], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("grads", ["x and w", "x only", "w only"])
def test_training_s_rmsnorm_gives_autograd_s_gradients(shape, grads):
    """In training on a CPU (gradients wanted, eager) RMSNorm runs _RMSNormFunction; its output
    equals the composite's and its gradients equal autograd's through the composite, for
    whichever of x and w want them (LoRA freezes w; a first layer's x may want none)."""
    from nano_train import model

    torch.manual_seed(0)
    norm = model.RMSNorm(shape[-1], 1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(shape[-1]) + 0.5)
    norm.weight.requires_grad_(grads != "x only")
    x = (torch.randn(shape) * 3).requires_grad_(grads != "w only")
    dy = torch.randn(shape)

    out = norm(x)
    assert type(out.grad_fn).__name__ == "_RMSNormFunctionBackward"
    wanted = [t for t in (x, norm.weight) if t.requires_grad]
    got = torch.autograd.grad(out, wanted, dy)
    want = torch.autograd.grad(_composite_rms_norm(x, norm.weight, 1e-5), wanted, dy)
    torch.testing.assert_close(out, _composite_rms_norm(x, norm.weight, 1e-5))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_rmsnorm_without_gradients_or_off_the_cpu_keeps_f_rms_norm():
    """Sampling, evaluation and export (no gradients) do not build the Function, and
    neither does training on another device (measured on CPUs only)."""
    from nano_train import model

    norm = model.RMSNorm(8, 1e-5)
    with torch.no_grad():
        assert norm(torch.randn(2, 8)).grad_fn is None
    norm.weight.requires_grad_(False)
    assert norm(torch.randn(2, 8)).grad_fn is None
    on_meta = model.RMSNorm(8, 1e-5).to("meta")(torch.randn(2, 8, device="meta", requires_grad=True))
    assert on_meta.grad_fn is not None and type(on_meta.grad_fn).__name__ != "_RMSNormFunctionBackward"


def test_an_overflowing_rmsnorm_gives_zero_gradients_as_the_composite_does():
    """A mean square of inf, finite x (the trainer's "activations overflow" check relies on
    it): output 0 and every gradient 0, not NaN, as through the composite kernels."""
    from nano_train import model

    norm = model.RMSNorm(4, 1e-5)
    x = torch.tensor([[1e20, -1e20, 1.0, 2.0]], requires_grad=True)  # x^2 is inf
    out = norm(x)
    gx, gw = torch.autograd.grad(out, (x, norm.weight), torch.ones_like(out))
    want = torch.autograd.grad(_composite_rms_norm(x, norm.weight, 1e-5), (x, norm.weight), torch.ones_like(out))
    assert not out.any()
    assert not gx.any() and not gw.any()
    torch.testing.assert_close((gx, gw), want)


def test_the_grouped_query_fallback_matches_sdpa_s_own(monkeypatch):
    """torch < 2.5 has no enable_gqa: the model repeats each KV head for its group of query
    heads (repeat_interleave: q heads 0, 1 read kv head 0). Same logits either way (a
    mutation audit: this path ran in no test on torch 2.13)."""
    from nano_train import model

    if not model._SDPA_GQA:
        pytest.skip("this torch has the fallback only; the comparison needs both paths")  # (torch < 2.5)
    torch.manual_seed(0)
    m = Transformer(tiny(n_head=4, n_kv_head=2)).eval()
    idx = torch.randint(0, m.config.vocab_size, (2, 12))
    with torch.no_grad():
        native, _ = m(idx)
        monkeypatch.setattr(model, "_SDPA_GQA", False)
        fallback, _ = m(idx)
    torch.testing.assert_close(fallback, native)
