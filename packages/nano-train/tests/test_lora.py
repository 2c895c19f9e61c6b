"""LoRA on wq, wk, wv, wo: attach, detach, merge, unmerge, state dicts, freezing."""

import pytest
import torch

from nano_train.lora import (
    LoRALinear,
    attach_lora,
    detach_lora,
    load_lora_state_dict,
    lora_config,
    lora_state_dict,
    mark_only_lora_trainable,
    merge_lora,
    unmerge_lora,
)
from nano_train.matmul import Linear
from nano_train.model import ModelConfig, Transformer


pytestmark = pytest.mark.usefixtures("one_thread")


def base_model(**kw):
    torch.manual_seed(0)
    c = dict(block_size=16, vocab_size=31, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    c.update(kw)
    return Transformer(ModelConfig(**c)).eval()


def randomize_lora(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


IDX = torch.randint(0, 31, (2, 9), generator=torch.Generator().manual_seed(5))


def logits(m):
    with torch.no_grad():
        return m(IDX)[0]


def reference_logits(model, rank, alpha):
    """Logits of a plain model whose weights hold W + (alpha/rank) B A, built by hand."""
    plain = base_model()
    sd = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    for i in range(model.config.n_layer):
        for t in ("wq", "wk", "wv", "wo"):
            m = getattr(model.layers[i], t)
            sd[f"layers.{i}.{t}.weight"] += (alpha / rank) * m.lora_B.detach() @ m.lora_A.detach()
    plain.load_state_dict(sd)
    return logits(plain)


def test_attach_is_identity_until_trained_and_shapes_match_the_file_layout():
    m = base_model()
    before = logits(m)
    attach_lora(m, rank=4, alpha=8)
    assert torch.equal(logits(m), before)  # B starts at zero
    c = m.config
    hd, kd = c.n_head * c.head_dim, c.n_kv_head * c.head_dim
    shapes = {"wq": (hd, c.n_embd), "wk": (kd, c.n_embd), "wv": (kd, c.n_embd), "wo": (c.n_embd, hd)}
    for t, (out, inp) in shapes.items():
        mod = getattr(m.layers[1], t)
        assert isinstance(mod, LoRALinear)
        assert mod.lora_A.shape == (4, inp) and mod.lora_B.shape == (out, 4)
        assert mod.lora_A.abs().sum() > 0 and mod.lora_B.abs().sum() == 0
    # base keys unchanged, adapter keys added
    keys = set(m.state_dict())
    assert "layers.0.wq.weight" in keys and "layers.0.wq.lora_A" in keys and "layers.0.wo.lora_B" in keys
    assert lora_config(m) == {"rank": 4, "alpha": 8, "dropout": 0.0}
    with pytest.raises(ValueError, match="already"):
        attach_lora(m, rank=2, alpha=2)


def test_update_merge_unmerge_detach():
    m = base_model()
    base = logits(m)
    attach_lora(m, rank=4, alpha=8)
    randomize_lora(m)
    adapted = logits(m)
    assert not torch.allclose(adapted, base, atol=1e-3)
    assert torch.allclose(adapted, reference_logits(m, 4, 8), atol=1e-5)
    w0 = m.layers[0].wq.weight.detach().clone()
    merge_lora(m)
    merge_lora(m)  # idempotent
    assert not torch.equal(m.layers[0].wq.weight, w0)
    assert torch.allclose(logits(m), adapted, atol=1e-5)
    unmerge_lora(m)
    assert torch.allclose(m.layers[0].wq.weight, w0, atol=1e-6)
    assert torch.allclose(logits(m), adapted, atol=1e-5)
    merge_lora(m)
    detach_lora(m)  # a merged adapter is taken out of the weights first
    assert type(m.layers[0].wq) is Linear  # the model's own projection again
    assert torch.allclose(logits(m), base, atol=1e-5)
    assert lora_config(m) is None
    assert set(m.state_dict()) == set(base_model().state_dict())


def test_lora_dropout_only_in_training():
    """Adapters take the model's mode: attached to a model in eval mode they add no
    dropout (the logits are W + (alpha/rank) B A's, every time); train() turns it on."""
    m = base_model()  # in eval mode
    attach_lora(m, rank=4, alpha=8, dropout=0.5)
    randomize_lora(m)
    assert not any(mod.training for mod in m.modules())
    want = reference_logits(m, 4, 8)
    assert torch.allclose(logits(m), want, atol=1e-5)
    m.train()
    assert not torch.allclose(logits(m), want, atol=1e-3)
    m.eval()
    assert torch.allclose(logits(m), want, atol=1e-5)
    detach_lora(m)
    assert not any(mod.training for mod in m.modules())


def test_state_dict_round_trip():
    m = base_model()
    attach_lora(m, rank=2, alpha=4)
    randomize_lora(m, seed=3)
    sd = lora_state_dict(m)
    assert len(sd) == 2 * 4 * m.config.n_layer
    want = logits(m)
    other = attach_lora(base_model(), rank=2, alpha=4)
    load_lora_state_dict(other, sd)
    assert torch.equal(logits(other), want)
    merge_lora(other)
    load_lora_state_dict(other, sd)  # loading into a merged model keeps it consistent
    assert torch.allclose(logits(other), want, atol=1e-5)
    with pytest.raises(ValueError, match="missing"):
        load_lora_state_dict(other, {k: v for k, v in sd.items() if "wo" not in k})
    bad = dict(sd)
    bad["layers.0.wq.lora_A"] = torch.zeros(3, 32)
    with pytest.raises(ValueError, match="do not fit"):
        load_lora_state_dict(other, bad)
    with pytest.raises(ValueError, match="no LoRA"):
        lora_state_dict(base_model())


def test_only_lora_trains():
    m = base_model()
    attach_lora(m, rank=4, alpha=4)
    mark_only_lora_trainable(m)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert len(trainable) == 2 * 4 * m.config.n_layer
    # one optimizer step moves only adapters; the base stays bit-identical
    base_before = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
    m.train()
    opt = torch.optim.AdamW(m.param_groups(0.1), lr=1e-2)
    _, loss = m(IDX, IDX)
    loss.backward()
    opt.step()
    for n, p in m.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, base_before[n]), n
    assert m.layers[0].wq.lora_B.detach().abs().sum() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        attach_lora(base_model(), rank=0, alpha=1)
    with pytest.raises(ValueError, match="alpha"):
        attach_lora(base_model(), rank=2, alpha=0)
    with pytest.raises(ValueError, match="no LoRA"):
        merge_lora(base_model())
