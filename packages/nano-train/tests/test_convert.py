"""Import and export through nano-format: the reference fixtures, round trips, LoRA, checkpoints."""

import random
import unicodedata

import numpy as np
import pytest
import torch

import nano_format
from nano_format import spec

from nano_train.convert import (
    ConvertError,
    emulate_q8_0,
    export_bin,
    export_lora,
    file_config_from_model,
    load_bin,
    load_checkpoint_model,
    load_lora_bin,
)
from nano_train.lora import attach_lora, lora_config, lora_state_dict
from nano_train.model import ModelConfig, Transformer


# The first 16 greedy ids after "人的心理" with the psycho fixture (Q8_0 dequantized,
# the file's own RoPE tables): "学，而是通常的自己本身的自我意识。"
PSYCHO_PROMPT = "人的心理"
PSYCHO_GREEDY_16 = [272, 113, 217, 190, 398, 381, 187, 228, 360, 293, 343, 187, 228, 195, 303, 586]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(seed=0, **kw) -> Transformer:
    c = dict(block_size=12, vocab_size=80, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    c.update(kw)
    torch.manual_seed(seed)
    m = Transformer(ModelConfig(**c)).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))  # norms off one, so a swapped norm would show
    return m


IDX = torch.randint(0, 80, (2, 12), generator=torch.Generator().manual_seed(4))


def logits(m, idx=IDX):
    with torch.no_grad():
        return m(idx)[0]


# ---------------------------------------------------------------------------
# The reference fixtures


def test_sort6_sorts_with_full_attention(shared_file, nano80):
    model, tok = load_bin(shared_file("fixtures/sort6_f32.bin"), is_causal=False)
    c = model.config
    assert (c.block_size, c.vocab_size, c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.n_hidden) == (
        6, 80, 2, 32, 4, 2, 16)
    assert c.tie_embeddings and c.use_rope and not c.is_causal
    assert tok.itos == nano80.itos  # the file's own vocabulary is nano_80

    def run(s):
        ids = tok.encode(s)
        assert len(ids) == 6
        return tok.decode(logits(model, torch.tensor([ids]))[0].argmax(-1).tolist())

    assert run("251212") == "112225"
    # The RoPE convention (interleaved pairs) is what makes this work: with the
    # half-split convention this model sorts none of these.
    rng = random.Random(0)
    cases = ["".join(rng.choice("0123456789") for _ in range(6)) for _ in range(100)]
    assert sum(run(s) == "".join(sorted(s)) for s in cases) >= 95


def test_sort6_needs_full_attention(shared_file):
    # the 2025.12 header cannot say "full attention": read as causal, it fails
    model, tok = load_bin(shared_file("fixtures/sort6_f32.bin"))
    assert model.config.is_causal
    out = logits(model, torch.tensor([tok.encode("251212")]))[0].argmax(-1).tolist()
    assert tok.decode(out) != "112225"


def test_psycho_greedy_continues_in_chinese(shared_file):
    model, tok = load_bin(shared_file("fixtures/psycho_230k_1214_q80.bin"))
    c = model.config
    assert (c.block_size, c.vocab_size, c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.n_hidden) == (
        512, 4096, 8, 32, 4, 2, 96)
    assert c.tie_embeddings and c.is_causal
    from nano_train.sampling import SamplerConfig, generate

    ids = list(generate(model, tok.encode(PSYCHO_PROMPT), SamplerConfig(temperature=0, max_new_tokens=16)))
    assert ids == PSYCHO_GREEDY_16
    text = tok.decode(ids)
    cjk = [ch for ch in text if unicodedata.name(ch, "").startswith("CJK UNIFIED")]
    assert len(cjk) >= 12, text


def test_fixture_rope_tables_match_ours_and_are_used(shared_file):
    """Same convention as nano_format.rope_tables. The reference computed the
    angles t * freq in float32, so at t ~ 500 its tables differ from the float64
    ones by up to ~2.3e-6; a loaded model uses the file's tables, as the engines do."""
    path = shared_file("fixtures/psycho_230k_1214_q80.bin")
    with nano_format.read(path) as nf:
        cos, sin = np.array(nf.tensor("rope_cos")), np.array(nf.tensor("rope_sin"))
    ours = Transformer(ModelConfig(block_size=512, vocab_size=4096, n_layer=1, n_embd=32, n_head=4))
    assert np.abs(cos - ours.rope_cos.numpy()).max() < 5e-6
    assert np.abs(sin - ours.rope_sin.numpy()).max() < 5e-6
    model, _ = load_bin(path)
    assert np.array_equal(model.rope_cos.numpy(), cos) and np.array_equal(model.rope_sin.numpy(), sin)


def test_fixture_re_exported_as_q8_0_keeps_its_weights(shared_file):
    """Dequantized psycho weights quantize back to the same values (group 16)."""
    model, tok = load_bin(shared_file("fixtures/psycho_230k_1214_q80.bin"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    emulate_q8_0(model, 16)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# ---------------------------------------------------------------------------
# Export -> import round trips


ROUND_TRIPS = {
    "gqa-tied-2026.1": (dict(), None, "2026.1"),
    "mha-untied-2026.1": (dict(n_kv_head=4, tie_embeddings=False), None, "2026.1"),
    "rope-2026.101": (dict(), "2026.101", "2026.101"),
    "learned-pos-auto": (dict(use_rope=False), None, "2026.101"),
    "full-attention-auto": (dict(is_causal=False, tie_embeddings=False), None, "2026.101"),
    "eps-theta-auto": (dict(norm_eps=1e-6, rope_theta=500.0), None, "2026.101"),
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIPS))
def test_f32_round_trip_is_exact(nano80, tmp_path, name):
    kw, layout, want_layout = ROUND_TRIPS[name]
    m = tiny(**kw)
    path = tmp_path / "m.bin"
    info = export_bin(m, path, layout=layout, tokenizer=nano80)
    assert info.layout == want_layout and info.quant == "f32" and info.bytes == path.stat().st_size
    if layout is None and want_layout == "2026.101":
        assert "2026.1 cannot record" in info.note
    back, tok = load_bin(path)
    assert back.config == m.config
    assert tok.itos == nano80.itos
    assert torch.equal(logits(back), logits(m))
    with nano_format.read(path) as nf:
        assert nf.layout.name == want_layout


@pytest.mark.parametrize(
    "kw, group",
    [
        (dict(), None),  # n_embd 32, n_hidden 96 -> 32
        (dict(n_embd=48, n_head=4, n_kv_head=2, tie_embeddings=False), None),  # not a multiple of 32
        (dict(), 16),
        (dict(is_causal=False), 8),
    ],
)
def test_q8_0_round_trip_equals_emulation(nano80, tmp_path, kw, group):
    m = tiny(**kw)
    path = tmp_path / "q.bin"
    info = export_bin(m, path, quant="q8_0", group_size=group, tokenizer=nano80)
    assert info.group_size == (group or nano_format.choose_group_size(file_config_from_model(m.config)))
    back, _ = load_bin(path)
    with nano_format.read(path) as nf:
        assert nf.quant == spec.QuantType.Q8_0 and nf.group_size == info.group_size
    emu = emulate_q8_0(tiny(**kw), group)
    assert torch.equal(logits(back), logits(emu))
    # and quantization did change something
    assert not torch.equal(logits(back), logits(m))


def test_export_errors(nano80, tmp_path):
    with pytest.raises(ConvertError, match="2026.101"):
        export_bin(tiny(is_causal=False), tmp_path / "a.bin", layout="2026.1", tokenizer=nano80)
    with pytest.raises(ConvertError, match="does not divide"):
        export_bin(tiny(), tmp_path / "b.bin", quant="q8_0", group_size=7, tokenizer=nano80)
    with pytest.raises(ConvertError, match="read only"):
        export_bin(tiny(), tmp_path / "e.bin", layout="2025.12", tokenizer=nano80)
    with pytest.raises(ConvertError, match="quantization"):
        export_bin(tiny(), tmp_path / "c.bin", quant="q4")
    with pytest.raises(ConvertError, match="tokens"):
        export_bin(tiny(vocab_size=81), tmp_path / "d.bin", tokenizer=nano80)
    diverged = tiny(tie_embeddings=False)
    with torch.no_grad():
        diverged.lm_head.weight[7, 1] = float("inf")
    for quant in ("f32", "q8_0"):
        with pytest.raises(ConvertError, match=r"^lm_head\.weight holds non-finite values"):
            export_bin(diverged, tmp_path / "f.bin", quant=quant, tokenizer=nano80)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_export_without_vocabulary_uses_the_extension(tmp_path):
    m = tiny()
    info = export_bin(m, tmp_path / "m.bin")
    assert info.layout == "2026.101" and "vocabulary" in info.note
    back, tok = load_bin(tmp_path / "m.bin")
    assert tok is None and torch.equal(logits(back), logits(m))
    # a spec.Layout works as well as its name
    assert export_bin(m, tmp_path / "n.bin", layout=spec.LAYOUT_NANO_EXT_1).layout == "2026.101"


# ---------------------------------------------------------------------------
# LoRA files


def randomize_lora(m, seed=2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if ".lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("kw", [dict(), dict(n_kv_head=4, tie_embeddings=False)])
def test_lora_file_round_trip(nano80, tmp_path, kw):
    m = tiny(**kw)
    export_bin(m, tmp_path / "base.bin", tokenizer=nano80)
    attach_lora(m, rank=4, alpha=8)
    randomize_lora(m)
    want = logits(m)
    info = export_lora(m, tmp_path / "lora.bin")
    assert info.layout == "2024.10"
    with nano_format.read(tmp_path / "lora.bin") as nf:
        assert nf.model_type == spec.ModelType.LORA
        assert (nf.config.rank, nf.config.alpha) == (4, 8)
        c = m.config
        assert nf.tensor("wq_A").shape == (c.n_layer, 4, c.n_embd)
        assert nf.tensor("wk_B").shape == (c.n_layer, c.n_kv_head * c.head_dim, 4)
        assert nf.tensor("wo_A").shape == (c.n_layer, 4, c.n_head * c.head_dim)
    base, _ = load_bin(tmp_path / "base.bin")
    assert not torch.allclose(logits(base), want, atol=1e-4)
    load_lora_bin(base, tmp_path / "lora.bin")
    assert lora_config(base) == {"rank": 4, "alpha": 8, "dropout": 0.0}
    assert torch.equal(logits(base), want)


def test_lora_file_errors(nano80, tmp_path):
    m = tiny()
    with pytest.raises(ConvertError, match="no LoRA"):
        export_lora(m, tmp_path / "x.bin")
    attach_lora(m, rank=2, alpha=1.5)
    with pytest.raises(ConvertError, match="whole number"):
        export_lora(m, tmp_path / "x.bin")
    m = attach_lora(tiny(), rank=2, alpha=2)
    with torch.no_grad():
        m.layers[1].wv.lora_B[0, 0] = float("nan")
    with pytest.raises(ConvertError, match=r"^layers\.1\.wv\.lora_B holds non-finite values"):
        export_lora(m, tmp_path / "x.bin")
    assert not (tmp_path / "x.bin").exists()
    m = attach_lora(tiny(), rank=2, alpha=2)
    export_lora(m, tmp_path / "lora.bin")
    export_bin(tiny(), tmp_path / "base.bin", tokenizer=nano80)
    with pytest.raises(ConvertError, match="LoRA module"):
        load_bin(tmp_path / "lora.bin")
    with pytest.raises(ConvertError, match="not a LoRA"):
        load_lora_bin(tiny(), tmp_path / "base.bin")
    with pytest.raises(ConvertError, match="n_layer"):
        load_lora_bin(tiny(n_layer=3), tmp_path / "lora.bin")


# ---------------------------------------------------------------------------
# Checkpoints (the contract with the training code)


def make_checkpoint(path, model, nano80, lora=None, prefix=""):
    ck = {
        "format": "nano-train-checkpoint",
        "version": 1,
        "model": {prefix + k: v for k, v in model.state_dict().items()},
        "config": {"model": model.config.to_dict(), "train": {"lr": 1e-3}},
        "tokenizer": nano80.to_json_dict(),
        "step": 10,
    }
    if lora:
        ck["lora"] = lora
    torch.save(ck, path)


def test_checkpoint_loads(nano80, tmp_path):
    m = tiny(n_kv_head=4, tie_embeddings=False)
    make_checkpoint(tmp_path / "c.pt", m, nano80, prefix="_orig_mod.")
    back, tok = load_checkpoint_model(tmp_path / "c.pt")
    assert back.config == m.config and tok.itos == nano80.itos
    assert torch.equal(logits(back), logits(m))


def test_lora_checkpoint_loads(nano80, tmp_path):
    m = attach_lora(tiny(), rank=2, alpha=4, dropout=0.1)
    randomize_lora(m)
    make_checkpoint(tmp_path / "c.pt", m, nano80, lora={"rank": 2, "alpha": 4, "dropout": 0.1})
    back, _ = load_checkpoint_model(tmp_path / "c.pt")
    assert lora_config(back) == {"rank": 2, "alpha": 4, "dropout": 0.1}
    for k, v in lora_state_dict(m).items():
        assert torch.equal(lora_state_dict(back)[k], v)
    assert torch.equal(logits(back), logits(m.eval()))


def test_bad_checkpoints(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConvertError, match="not a readable checkpoint") as e:
        load_checkpoint_model(tmp_path / "junk.pt")
    # one line, without PyTorch's advice to retry with weights_only=False (which runs the file's code)
    assert "\n" not in str(e.value) and "weights_only" not in str(e.value) and "Unsupported operand" in str(e.value)
    import argparse

    torch.save({"model": {}, "config": argparse.Namespace(model={})}, tmp_path / "pickled.pt")
    with pytest.raises(ConvertError, match="not a readable checkpoint") as e:
        load_checkpoint_model(tmp_path / "pickled.pt")
    assert "\n" not in str(e.value) and "argparse.Namespace" in str(e.value) and "Please" not in str(e.value)
    # a model file is not a checkpoint: it is what export makes
    export_bin(tiny(), tmp_path / "m.bin", tokenizer=None)
    with pytest.raises(ConvertError, match="not a training checkpoint but a nano .bin file, which is already exported"):
        load_checkpoint_model(tmp_path / "m.bin")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(ConvertError, match="not a Nano checkpoint"):
        load_checkpoint_model(tmp_path / "other.pt")
    m = tiny()
    ck = {"model": m.state_dict(), "config": {"model": tiny(n_layer=3).config.to_dict()}}
    torch.save(ck, tmp_path / "mismatch.pt")
    with pytest.raises(ConvertError, match="do not fit"):
        load_checkpoint_model(tmp_path / "mismatch.pt")
    # the same keys with other shapes (a wider model's config): one line, not torch's RuntimeError
    torch.save({"model": m.state_dict(), "config": {"model": tiny(n_embd=48).config.to_dict()}}, tmp_path / "wide.pt")
    with pytest.raises(ConvertError, match="do not fit") as e:
        load_checkpoint_model(tmp_path / "wide.pt")
    assert "\n" not in str(e.value) and "wrong shape" in str(e.value)
    torch.save({**ck, "format": "something-else"}, tmp_path / "foreign.pt")
    with pytest.raises(ConvertError, match="format"):
        load_checkpoint_model(tmp_path / "foreign.pt")
    # sample, export and --init_from read checkpoints here: one a later nano-train wrote (its
    # version raised, as a field's meaning changed) is refused as resume refuses it (was: read)
    m_ck = {"model": m.state_dict(), "config": {"model": m.config.to_dict()}, "format": "nano-train-checkpoint"}
    for version, msg in ((2, "checkpoint version 2 is newer than this nano-train reads (1): a later nano-train "
                             "wrote it; upgrade nano-train to read it"),
                         ("1", "checkpoint version '1' is not 1"), (True, "checkpoint version True is not 1")):
        torch.save({**m_ck, "version": version}, tmp_path / "later.pt")
        with pytest.raises(ConvertError) as e:
            load_checkpoint_model(tmp_path / "later.pt")
        assert str(e.value) == f"{tmp_path / 'later.pt'}: {msg}"
    torch.save({**m_ck, "version": 1}, tmp_path / "v1.pt")
    torch.save(m_ck, tmp_path / "unversioned.pt")  # (another trainer's, with our names)
    assert all(load_checkpoint_model(tmp_path / n)[0].config == m.config for n in ("v1.pt", "unversioned.pt"))
    # a bad model file arrives as a ConvertError too, with nano-format's message
    (tmp_path / "bad.bin").write_bytes(b"S4DBMLRU" + bytes(100))
    with pytest.raises(ConvertError, match="header") as e:
        load_bin(tmp_path / "bad.bin")
    assert isinstance(e.value.__cause__, nano_format.FormatError)


# ---------------------------------------------------------------------------
# Loading checks everything before use (review defects of the sample command)


def one_line_naming(e, path) -> bool:
    return str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)


@pytest.mark.parametrize("model_vocab", [70, 90])
def test_checkpoint_vocabulary_must_fit_the_model(nano80, tmp_path, model_vocab):
    """A bigger vocabulary would index past the embedding, a smaller one fail on the
    first token beyond its end: both are refused at load, naming the file."""
    make_checkpoint(tmp_path / "c.pt", tiny(vocab_size=model_vocab), nano80)
    with pytest.raises(ConvertError, match=f"the vocabulary has 80 tokens, the model {model_vocab}") as e:
        load_checkpoint_model(tmp_path / "c.pt")
    assert one_line_naming(e, tmp_path / "c.pt")


def bad_vocabulary(nano80, kind):
    """nano80's tokens (itos) and special tokens, spoilt so nano-tokenizer refuses them."""
    itos, specials = list(nano80.itos), dict(nano80.to_json_dict()["special_tokens"])
    if kind == "duplicate":
        itos[40] = itos[41]
    else:  # no <|unknown|>: unknown characters would have nowhere to go
        itos[specials.pop("<|unknown|>")] = "§"
    return itos, specials


@pytest.mark.parametrize("kind, msg", [("duplicate", "duplicate token"), ("no unknown", "no <|unknown|>")])
def test_a_bad_vocabulary_is_a_convert_error_naming_the_file(nano80, tmp_path, kind, msg):
    """A model file or checkpoint whose vocabulary nano-tokenizer refuses is a bad
    file like any other: ConvertError, nano-tokenizer's error as its cause."""
    from nano_tokenizer import TokenizerError

    itos, specials = bad_vocabulary(nano80, kind)
    export_bin(tiny(), tmp_path / "ok.bin", tokenizer=nano80)
    with nano_format.read(tmp_path / "ok.bin") as nf:
        tensors = {name: np.array(nf.tensor(name)) for name in nf.tensor_names()}
        config, layout = nf.config, nf.layout
    tokens = [nano_format.TokenEntry(i, text, text in specials) for i, text in enumerate(itos)]
    nano_format.write(tmp_path / "m.bin", config, tensors, tokens, layout=layout)
    with pytest.raises(ConvertError, match=msg) as e:
        load_bin(tmp_path / "m.bin")
    assert one_line_naming(e, tmp_path / "m.bin") and isinstance(e.value.__cause__, TokenizerError)

    make_checkpoint(tmp_path / "c.pt", tiny(), nano80)
    ck = torch.load(tmp_path / "c.pt", weights_only=True)
    ck["tokenizer"] = {"vocab_size": len(itos), "itos": itos, "special_tokens": specials,
                       "stoi": {text: i for i, text in enumerate(itos)}}
    torch.save(ck, tmp_path / "c.pt")
    with pytest.raises(ConvertError, match=msg) as e:
        load_checkpoint_model(tmp_path / "c.pt")
    assert one_line_naming(e, tmp_path / "c.pt") and isinstance(e.value.__cause__, TokenizerError)


def _set(key, value):
    return lambda ck: ck["config"]["model"].__setitem__(key, value)


MALFORMED = {
    "norm_eps None": (_set("norm_eps", None), "config['model']['norm_eps'] must be a finite number"),
    "rope_theta str": (_set("rope_theta", "abc"), "config['model']['rope_theta'] must be a finite number"),
    "dropout nan": (_set("dropout", float("nan")), "config['model']['dropout'] must be a finite number"),
    "is_causal str": (_set("is_causal", "no"), "config['model']['is_causal'] must be true or false"),
    "block_size float": (_set("block_size", 12.0), "block_size must be a positive integer"),
    "n_embd negative": (_set("n_embd", -3), "n_embd must be a positive integer"),
    "unknown key": (_set("n_experts", 8), "unknown key"),
    "norm_eps beyond float32": (_set("norm_eps", 1e39),
                                "config['model']: ModelConfig.norm_eps must be a positive number that float32 can hold"),
    "lora without rank": (lambda ck: ck.__setitem__("lora", {"alpha": 2}), "lora['rank'] must be a positive integer"),
    "lora rank float": (lambda ck: ck.__setitem__("lora", {"rank": 2.5, "alpha": 2}), "lora['rank']"),
    "lora list": (lambda ck: ck.__setitem__("lora", [1, 2]), "'lora' must be a dict"),
    "lora alpha str": (lambda ck: ck.__setitem__("lora", {"rank": 2, "alpha": "x"}), "lora['alpha'] must be"),
    "lora dropout 1": (lambda ck: ck.__setitem__("lora", {"rank": 2, "alpha": 2, "dropout": 1.0}), "lora['dropout']"),
    "model list": (lambda ck: ck.__setitem__("model", [1, 2]), "'model' must be a state dict, not list"),
    "weight not a tensor": (lambda ck: ck["model"].__setitem__("tok_embd.weight", 5),
                            "wrong shape: tok_embd.weight ()"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_checkpoint_fields_are_one_line_errors(nano80, tmp_path, name):
    change, msg = MALFORMED[name]
    make_checkpoint(tmp_path / "c.pt", tiny(), nano80)
    ck = torch.load(tmp_path / "c.pt", weights_only=True)
    change(ck)
    torch.save(ck, tmp_path / "c.pt")
    with pytest.raises(ConvertError) as e:
        load_checkpoint_model(tmp_path / "c.pt")
    assert msg in str(e.value) and one_line_naming(e, tmp_path / "c.pt")


@pytest.mark.parametrize("change, msg", [
    (dict(block_size=10**9), ("block_size", "1048576")),
    (dict(block_size=2**40), ("block_size", "1048576")),
    (dict(vocab_size=10**10), ("vocab_size", "4194304")),
    (dict(n_layer=2000), ("n_layer", "1024")),
    (dict(vocab_size=4_000_000), ("wrong shape: tok_embd.weight",)),  # within bounds: the shapes tell
    (dict(n_embd=1 << 20, n_head=1, n_kv_head=1), ("wrong shape",)),
    (dict(use_rope=False, block_size=1 << 20), ("wrong shape: pos_embd.weight",)),
])
def test_checkpoint_sizes_are_checked_before_anything_is_allocated(nano80, tmp_path, monkeypatch, change, msg):
    """nano-format's bounds (those of the .bin reader), then the stored tensors'
    shapes, before the model is built: no real model is allocated for a bad config."""
    from nano_train import convert

    m = tiny(use_rope=change.get("use_rope", True))
    make_checkpoint(tmp_path / "c.pt", m, nano80)
    ck = torch.load(tmp_path / "c.pt", weights_only=True)
    ck["config"]["model"].update(change)
    del ck["tokenizer"]  # the vocabulary's size is checked against the config too
    torch.save(ck, tmp_path / "c.pt")
    built = []

    def spy(config):
        model = Transformer(config)
        built.append(model.tok_embd.weight.device.type)
        return model

    monkeypatch.setattr(convert, "Transformer", spy)
    with pytest.raises(ConvertError) as e:
        load_checkpoint_model(tmp_path / "c.pt")
    assert all(m in str(e.value) for m in msg) and one_line_naming(e, tmp_path / "c.pt")
    assert "cpu" not in built  # at most a "meta" model, which has no storage


def poke_nan(path, tensor, value=float("nan")):
    """Overwrite the first float32 of a tensor of an F32 file (nano-format's writer refuses NaN)."""
    with nano_format.read(path) as nf:
        offset = next(t.offset for t in nf.tensors if t.name == tensor)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(np.array([value], dtype="<f4").tobytes())


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_load(nano80, tmp_path, value):
    # a checkpoint
    m = tiny()
    with torch.no_grad():
        m.layers[1].wq.weight[2, 3] = value
    make_checkpoint(tmp_path / "c.pt", m, nano80)
    with pytest.raises(ConvertError, match=r"layers\.1\.wq\.weight holds non-finite values") as e:
        load_checkpoint_model(tmp_path / "c.pt")
    assert one_line_naming(e, tmp_path / "c.pt")
    # a model file
    export_bin(tiny(), tmp_path / "m.bin", tokenizer=nano80)
    load_bin(tmp_path / "m.bin")
    poke_nan(tmp_path / "m.bin", "w2", value)
    with pytest.raises(ConvertError, match=r"layers\.0\.w2\.weight holds non-finite values") as e:
        load_bin(tmp_path / "m.bin")
    assert one_line_naming(e, tmp_path / "m.bin")
    # a LoRA file: refused before anything is attached
    export_lora(attach_lora(tiny(), rank=2, alpha=2), tmp_path / "l.bin")
    poke_nan(tmp_path / "l.bin", "wv_B", value)
    base = tiny()
    with pytest.raises(ConvertError, match="wv_B holds non-finite values") as e:
        load_lora_bin(base, tmp_path / "l.bin")
    assert one_line_naming(e, tmp_path / "l.bin") and lora_config(base) is None


def test_an_attention_kind_is_only_asked_of_files_that_cannot_record_it(nano80, tmp_path):
    """is_causal sets the attention of 2025.12 / 2026.1 files (which imply causal);
    a 2026.101 file or a checkpoint records it, and a different value is refused."""
    from nano_train.convert import load_model

    m = tiny()
    export_bin(m, tmp_path / "old.bin", layout="2026.1", tokenizer=nano80)
    export_bin(m, tmp_path / "ext.bin", layout="2026.101", tokenizer=nano80)
    make_checkpoint(tmp_path / "c.pt", m, nano80)
    assert load_bin(tmp_path / "old.bin", is_causal=False)[0].config.is_causal is False
    why = {"ext.bin": "the file records causal attention, not full: only a model file that cannot record it "
                      "(layouts 2025.12 and 2026.1) takes the kind asked for",
           "c.pt": "the checkpoint records causal attention, not full: a checkpoint keeps the attention its model "
                   "was trained with"}
    for name in ("ext.bin", "c.pt"):
        assert load_model(tmp_path / name, is_causal=True)[0].config.is_causal is True
        with pytest.raises(ConvertError) as e:
            load_model(tmp_path / name, is_causal=False)
        assert one_line_naming(e, tmp_path / name) and str(e.value) == f"{tmp_path / name}: {why[name]}"
    full = tiny(is_causal=False)
    export_bin(full, tmp_path / "full.bin", layout="2026.101", tokenizer=nano80)
    with pytest.raises(ConvertError, match=r"full\.bin: the file records full attention, not causal: only a model"):
        load_model(tmp_path / "full.bin", is_causal=True)  # (was: "causal attention (--seq2seq)", backwards)


def test_load_model_tells_files_apart_by_their_first_bytes(nano80, tmp_path):
    from nano_train.convert import load_model

    m = tiny()
    make_checkpoint(tmp_path / "best.ckpt", m, nano80)
    export_bin(m, tmp_path / "model.pt", tokenizer=nano80)  # a model file, whatever its name
    for name in ("best.ckpt", "model.pt"):
        back, tok = load_model(tmp_path / name)
        assert tok.itos == nano80.itos and torch.allclose(logits(back), logits(m), atol=1e-6)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConvertError, match="neither a Nano model file nor a training checkpoint") as e:
        load_model(tmp_path / "notes.txt")
    assert one_line_naming(e, tmp_path / "notes.txt")
    # a vocabulary or a GGUF file given as the model is named for what it is
    (tmp_path / "vocab.json").write_text(' {"vocab": []}')
    with pytest.raises(ConvertError, match=r"vocab.json: a JSON file, a vocabulary perhaps: neither a Nano model file "
                                           r"nor a training checkpoint \(each holds its own vocabulary\)"):
        load_model(tmp_path / "vocab.json")
    (tmp_path / "m.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(8))
    with pytest.raises(ConvertError, match=r"nor a training checkpoint \(a GGUF file\)"):
        load_model(tmp_path / "m.gguf")
    export_lora(attach_lora(tiny(), rank=2, alpha=2), tmp_path / "lora.bin")
    with pytest.raises(ConvertError, match="LoRA module, not a model: pass it with -l"):
        load_model(tmp_path / "lora.bin")


def test_a_small_automatic_q8_0_group_is_explained(tmp_path):
    """n_hidden 37 leaves group size 1: the Q8_0 file came out 1.24x the F32 one, silently."""
    model = Transformer(ModelConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_kv_head=2, n_embd=24, n_hidden=37))
    info = export_bin(model, tmp_path / "q.bin", quant="q8_0")
    assert info.group_size == 1
    assert "group size 1, the largest that divides every quantized row (n_embd 24, n_head * head_dim 24, " \
           "n_hidden 37)" in info.note and "5 bytes each, larger than F32's 4" in info.note
    wide = Transformer(ModelConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_kv_head=2, n_embd=64, n_hidden=128))
    assert "group size" not in export_bin(wide, tmp_path / "w.bin", quant="q8_0").note  # group 64: nothing to say


def test_group_size_with_f32_is_refused(tmp_path):
    model = Transformer(ModelConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_kv_head=2, n_embd=8))
    with pytest.raises(ConvertError, match="group_size applies to quant 'q8_0' only, not 'f32'"):
        export_bin(model, tmp_path / "f.bin", group_size=7)
    assert not (tmp_path / "f.bin").exists()
