"""LoRA and model-file export used as a library: what export_bin does with attached
adapters, state dicts of merged and unmerged adapters, training a merged model,
detach after freezing, argument checks, and load_bin on what is not a file."""

import os
import re

import numpy as np
import pytest
import torch

from nano_train.convert import ConvertError, export_bin, export_lora, load_bin, load_checkpoint_model
from nano_train.lora import (
    attach_lora,
    detach_lora,
    lora_config,
    mark_only_lora_trainable,
    merge_lora,
    unmerge_lora,
)
from nano_train.model import ModelConfig, Transformer


pytestmark = pytest.mark.usefixtures("one_thread")

TARGETS = ("wq", "wk", "wv", "wo")


def tiny(seed=0) -> Transformer:
    torch.manual_seed(seed)
    c = ModelConfig(block_size=12, vocab_size=80, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    return Transformer(c).eval()


def adapted(seed=0, rank=2, alpha=4) -> Transformer:
    """tiny(seed) with LoRA attached and B made non-zero, so the adapters change the logits."""
    m = attach_lora(tiny(seed), rank=rank, alpha=alpha)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m


IDX = torch.randint(0, 80, (2, 12), generator=torch.Generator().manual_seed(4))


def logits(m):
    with torch.no_grad():
        return m(IDX)[0]


def base_weights(m) -> dict[str, torch.Tensor]:
    return {f"{i}.{t}": getattr(layer, t).weight.detach().clone() for i, layer in enumerate(m.layers) for t in TARGETS}


# ---------------------------------------------------------------------------
# export_bin and attached adapters


def test_export_bin_refuses_unmerged_adapters_and_exports_merged_ones(tmp_path, nano80):
    m = adapted()
    want = logits(m)
    with pytest.raises(ConvertError, match=r"not merged into its weights: merge_lora\(model\) first.*"
                                           r"export_lora\(model, path\)"):
        export_bin(m, tmp_path / "x.bin", tokenizer=nano80)
    assert not (tmp_path / "x.bin").exists()
    merge_lora(m)
    info = export_bin(m, tmp_path / "merged.bin", tokenizer=nano80)
    assert info.note == ""
    back, _ = load_bin(tmp_path / "merged.bin")
    assert torch.allclose(logits(back), want, atol=1e-5)  # the adapters are in the file's weights


def test_export_bin_refuses_a_lora_checkpoints_model_as_loaded(tmp_path, nano80, save_ckpt):
    """The audit's repro: load_checkpoint_model of a LoRA run gives an unmerged model."""
    m = adapted()
    ck = save_ckpt(tmp_path / "c.pt", m, nano80, lora={"rank": 2, "alpha": 4, "dropout": 0.0})
    loaded, tok = load_checkpoint_model(ck)
    with pytest.raises(ConvertError, match="merge_lora"):
        export_bin(loaded, tmp_path / "x.bin", tokenizer=tok)
    detach_lora(loaded)  # the base alone is a plain model again
    export_bin(loaded, tmp_path / "base.bin", tokenizer=tok)
    assert torch.allclose(logits(load_bin(tmp_path / "base.bin")[0]), logits(tiny()), atol=1e-6)


# ---------------------------------------------------------------------------
# State dicts and the merge state


@pytest.mark.parametrize("saved_merged", [False, True])
@pytest.mark.parametrize("loaded_merged", [False, True])
def test_state_dict_round_trips_whatever_the_merge_state(saved_merged, loaded_merged):
    src = adapted(seed=0)
    want, w0 = logits(src), base_weights(src)
    if saved_merged:
        merge_lora(src)
    sd = src.state_dict()
    for i, t in [(0, "wq"), (1, "wo")]:  # always the unmerged base weight
        assert torch.allclose(sd[f"layers.{i}.{t}.weight"], w0[f"{i}.{t}"], atol=1e-6)
    dst = adapted(seed=1)  # another base and other adapters, all overwritten
    if loaded_merged:
        merge_lora(dst)
    dst.load_state_dict(sd)
    assert dst.layers[0].wq.merged is loaded_merged  # the module keeps its own state
    assert torch.allclose(logits(dst), want, atol=1e-5)
    unmerge_lora(dst)
    for key, w in base_weights(dst).items():
        assert torch.allclose(w, w0[key], atol=1e-6), key


def test_a_checkpoint_of_a_merged_model_loads_with_the_adapters_counted_once(tmp_path, nano80, save_ckpt):
    m = adapted()
    want = logits(m)
    merge_lora(m)
    ck = save_ckpt(tmp_path / "c.pt", m, nano80, lora={"rank": 2, "alpha": 4, "dropout": 0.0})
    loaded, _ = load_checkpoint_model(ck)  # torch.load(weights_only=True), attached unmerged
    assert not loaded.layers[0].wq.merged
    assert torch.allclose(logits(loaded), want, atol=1e-5)


def test_assign_loading_into_merged_adapters_is_refused():
    sd = adapted().state_dict()
    merged = merge_lora(adapted(seed=1))
    with pytest.raises(RuntimeError, match=r"layers\.0\.wq\.weight: .*assign=True.*unmerge_lora\(model\) first"):
        merged.load_state_dict(sd, assign=True)
    unmerged = adapted(seed=1)
    unmerged.load_state_dict({k: v.clone() for k, v in sd.items()}, assign=True)
    assert torch.equal(logits(unmerged), logits(adapted()))


# ---------------------------------------------------------------------------
# Training and merging


def test_a_merged_model_runs_in_any_mode_and_its_adapters_are_frozen_until_unmerged():
    """A model is in training mode when made: merged, it must still run with gradients on (an
    earlier check refused that as "training"). Merging freezes the adapters, which the merged
    forward skips, and unmerging gives them back their requires_grad."""
    m = mark_only_lora_trainable(adapted()).train()
    merge_lora(m)
    assert not any(p.requires_grad for n, p in m.named_parameters() if ".lora_" in n)
    _, loss = m(IDX, IDX)  # train mode, grad enabled: runs
    assert loss is not None and not loss.requires_grad  # nothing of it trains: the base is frozen too
    for name, p in m.named_parameters():  # a trainable base trains, the adapters stay out
        p.requires_grad_(".lora_" not in name)
    m(IDX, IDX)[1].backward()
    assert m.layers[0].wq.weight.grad is not None and m.layers[0].wq.lora_A.grad is None
    m.zero_grad(set_to_none=True)
    unmerge_lora(m)
    assert m.layers[0].wq.lora_A.requires_grad  # back as they were before the merge
    m(IDX, IDX)[1].backward()
    assert m.layers[0].wq.lora_A.grad is not None


def test_an_unmerged_adapted_model_compiles_in_one_graph():
    """The merged check reads Python attributes only: no graph break in training."""
    m = mark_only_lora_trainable(adapted()).train()
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    _, loss = compiled(IDX, IDX)
    loss.backward()
    _, eager = m(IDX, IDX)
    assert torch.allclose(loss, eager)
    assert m.layers[1].wo.lora_B.grad is not None


def test_detach_makes_trainable_again_what_mark_only_lora_trainable_froze():
    m = tiny()
    m.tok_embd.weight.requires_grad_(False)  # frozen by the caller, before any LoRA
    attach_lora(m, rank=2, alpha=4)
    mark_only_lora_trainable(m)
    mark_only_lora_trainable(m)  # twice: the first call's record is kept
    detach_lora(m)
    frozen = sorted(n for n, p in m.named_parameters() if not p.requires_grad)
    assert frozen == ["tok_embd.weight"]
    # a model that was never frozen is left as it is
    m = detach_lora(attach_lora(tiny(), rank=2, alpha=4))
    assert all(p.requires_grad for p in m.parameters())


# ---------------------------------------------------------------------------
# Arguments and paths


@pytest.mark.parametrize("rank", [True, False, 2.0, 0])
def test_rank_must_be_a_positive_integer_not_a_bool(rank):
    with pytest.raises(ValueError, match=rf"^LoRA rank must be a positive integer, got {rank!r}$"):
        attach_lora(tiny(), rank, 8)


@pytest.mark.parametrize("alpha", [True, 0, -1.0, "4"])
def test_alpha_must_be_a_positive_number_not_a_bool(alpha):
    with pytest.raises(ValueError, match=rf"^LoRA alpha must be a number > 0, got {re.escape(repr(alpha))}$"):
        attach_lora(tiny(), 2, alpha)


def test_numpy_numbers_are_lora_settings_too():
    """Kept as Python numbers: a checkpoint's "lora" entry must load with weights_only=True."""
    m = attach_lora(tiny(), np.int64(2), np.float32(4.0), np.float64(0.0))
    cfg = lora_config(m)
    assert cfg == {"rank": 2, "alpha": 4.0, "dropout": 0.0} and type(cfg["rank"]) is int
    with pytest.raises(ValueError, match=r"^LoRA dropout must be a number in \[0, 1\), got '0.1'$"):
        attach_lora(tiny(), 2, 4, "0.1")


def test_load_bin_refuses_what_is_not_a_regular_file(tmp_path):
    (tmp_path / "d.bin").mkdir()
    with pytest.raises(ConvertError, match=rf"^{re.escape(str(tmp_path / 'd.bin'))}: is a directory, not a model file$"):
        load_bin(tmp_path / "d.bin")
    os.mkfifo(tmp_path / "f.bin")
    with pytest.raises(ConvertError, match=rf"^{re.escape(str(tmp_path / 'f.bin'))}: is a FIFO"):
        load_bin(str(tmp_path / "f.bin"))


def test_export_lora_then_detach_keeps_export_bin_working(tmp_path, nano80):
    """What `export --lora-out` does: the adapters apart, then the base."""
    m = adapted()
    export_lora(m, tmp_path / "lora.bin")
    detach_lora(m)
    export_bin(m, tmp_path / "base.bin", tokenizer=nano80)
    assert torch.allclose(logits(load_bin(tmp_path / "base.bin")[0]), logits(tiny()), atol=1e-6)
