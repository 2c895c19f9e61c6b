"""The training loop: the SFT mask in the loss path (defect 1), loss scaling only
for float16 (defect 3), the schedule, accumulation, checkpoints, SFT and LoRA
from a base model, logs, report card, plot, and helpful errors."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from nano_tokenizer import Tokenizer

from nano_train import checkpoint as ckpt_io
from nano_train import plot as plot_cmd
from nano_train import train as train_module
from nano_train.config import ConfigError, OptimConfig
from nano_train.convert import export_bin, load_checkpoint_model
from nano_train.data import Batcher, DataError, Dataset, prepare_sft, write_rows
from nano_train.metrics import read_log
from nano_train.model import ModelConfig, Transformer
from nano_train.train import batch_to_device, cosine_lr, main, make_grad_scaler, train


pytestmark = pytest.mark.usefixtures("one_thread")


def train_losses(out_dir):
    return {r["step"]: r["loss"] for r in read_log(out_dir / "log.jsonl") if r["kind"] == "train"}


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------
# Defect 1: masked positions contribute nothing


def test_masked_positions_get_zero_gradient(self_id_sft):
    ds = Dataset(self_id_sft)
    x, y, m = batch_to_device(Batcher(ds.source("train", 64), 4, seed=0).next(), torch.device("cpu"))
    assert 0 < m.sum() < m.numel()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=ds.tokenizer.vocab_size, block_size=64, n_layer=1, n_embd=32,
                                    n_head=2, n_kv_head=2))
    logits, loss = model(x, y, m)  # the loop calls it with return_logits=False: the same loss and
    # gradients without the logits (test_losses.py)
    logits.retain_grad()
    loss.backward()
    g = logits.grad.abs().sum(-1)  # [B, T]
    assert (g[m == 0] == 0).all()
    assert (g[m == 1] > 0).all()
    per_token = torch.nn.functional.cross_entropy(logits.detach().flatten(0, 1), y.flatten(), reduction="none")
    assert torch.allclose(loss, (per_token * m.flatten()).sum() / m.sum())


def test_training_ignores_padding_targets_end_to_end(tmp_path, self_id_sft, tiny_config):
    """Scrambling the tokens after each sample's <|eos|> (all masked targets) leaves
    every loss and every trained weight unchanged; with the mask ignored
    (the reference's bug) they would change."""
    scrambled = tmp_path / "scrambled"
    shutil.copytree(self_id_sft, scrambled)
    meta = json.loads((scrambled / "meta.json").read_text())
    shard = meta["shards"]["train"][0]
    tokens = np.memmap(scrambled / shard["file"], dtype=np.uint16, mode="r+", shape=(shard["rows"], 64))
    mask = np.fromfile(scrambled / shard["mask"], dtype=np.uint8).reshape(shard["rows"], 64)
    rng = np.random.default_rng(0)
    changed = 0
    for i in range(shard["rows"]):
        end = int(np.flatnonzero(mask[i])[-1]) + 1  # just past the last <|eos|>
        tokens[i, end:] = rng.integers(7, 1000, 64 - end)
        changed += 64 - end
    tokens.flush()
    del tokens
    assert changed > 1000
    runs = []
    for name, data in (("a", self_id_sft), ("b", scrambled)):
        cfg = tiny_config(data, task="sft", out_dir=tmp_path / name, block_size=64, max_iters=3, eval_iters=0,
                          sample_tokens=0)
        train(cfg)
        runs.append((train_losses(tmp_path / name), load(tmp_path / name / "latest.pt")["model"]))
    (la, wa), (lb, wb) = runs
    assert la == lb
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


# ---------------------------------------------------------------------------
# Defect 3: loss scaling for float16 only


def test_grad_scaler_is_enabled_for_float16_only():
    cpu = torch.device("cpu")
    assert make_grad_scaler("float16", cpu).is_enabled()
    assert not make_grad_scaler("bfloat16", cpu).is_enabled()
    assert not make_grad_scaler("float32", cpu).is_enabled()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_mixed_precision_runs_and_saves_the_scaler_only_for_float16(small_pretrain, tiny_config, dtype):
    cfg = tiny_config(small_pretrain, max_iters=2, dtype=dtype, eval_iters=1)
    result = train(cfg)
    assert math.isfinite(result.train_loss)
    ck = load(cfg.run.out_dir + "/latest.pt")
    if dtype == "float16":
        assert ck["scaler"]["scale"] > 1
    else:
        assert ck["scaler"] is None


# ---------------------------------------------------------------------------
# The loop


def test_lr_schedule_warmup_then_cosine(small_pretrain, tiny_config):
    cfg = tiny_config(small_pretrain, max_iters=12, warmup_iters=3, lr_decay_iters=10, learning_rate=1e-3,
                      min_lr=1e-4, eval_interval=100)
    train(cfg)
    lrs = {r["step"]: r["lr"] for r in read_log(cfg.run.out_dir + "/log.jsonl") if r["kind"] == "train"}
    # the record of step s+1 carries the lr used for update s
    for it in range(12):
        if it < 3:
            want = 1e-3 * (it + 1) / 4
        elif it >= 10:
            want = 1e-4
        else:
            want = 1e-4 + 0.5 * (1 + math.cos(math.pi * (it - 3) / 7)) * 9e-4
        assert lrs[it + 1] == pytest.approx(want, rel=1e-12)
    assert max(lrs.values()) == pytest.approx(1e-3)  # reached when warmup ends


def test_cosine_lr_with_a_time_budget_follows_steps_or_the_clock_whichever_is_further():
    o = OptimConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=2, max_iters=1002, time_budget=12.0)
    cosine = lambda done: 1e-4 + 0.5 * (1 + math.cos(math.pi * done)) * 9e-4  # noqa: E731
    assert cosine_lr(o, 0, 5.0, None) == pytest.approx(1e-3 / 3)  # warmup ignores the clock
    assert cosine_lr(o, 1, 5.0, None) == pytest.approx(2e-3 / 3)
    # warmup ended at 2 s: the clock's share runs from there to the budget's 12 s
    assert cosine_lr(o, 2, 2.0, 2.0) == pytest.approx(1e-3)
    assert cosine_lr(o, 102, 4.5, 2.0) == pytest.approx(cosine(0.25))  # 2.5 of 10 s: the clock is ahead
    assert cosine_lr(o, 752, 4.5, 2.0) == pytest.approx(cosine(0.75))  # 750 of 1000 steps: the steps are
    assert cosine_lr(o, 102, 12.0, 2.0) == 1e-4  # the budget spent: min_lr
    assert cosine_lr(o, 3, 1.0, None) == pytest.approx(cosine(0.001))  # (no warm_s yet: the clock starts now)
    # a checkpoint's decay end (the resume note compares with it)
    o.time_budget = 0.0
    assert cosine_lr(o, 502, 0.0, None) == pytest.approx(cosine(0.5))
    assert cosine_lr(o, 502, 0.0, None, decay_end=1002 // 2 + 1) == 1e-4


def test_time_budget_stops_training_and_the_decay_follows_the_clock(small_pretrain, tiny_config, capsys):
    cfg = tiny_config(small_pretrain, max_iters=10**6, time_budget=2.0, warmup_iters=2, eval_interval=10**6,
                      learning_rate=1e-3, min_lr=1e-4, threads=1)
    records = []
    result = train(cfg, progress=records.append)  # a caller's progress: records, nothing printed
    assert capsys.readouterr().out == ""
    assert result.out_of_time and not result.interrupted and 5 < result.step < 10**6
    assert 2.0 <= result.seconds < 20
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "start" and kinds[-1] == "end" and records[-1]["out_of_time"]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, result.step]  # a final evaluation
    lrs = [r["lr"] for r in records if r["kind"] == "train" and r["step"] > 3]  # after the warmup
    assert all(a >= b for a, b in zip(lrs, lrs[1:])) and lrs[0] > 5e-4 and lrs[-1] < 2e-4
    # the decay's clock starts when warmup ends, not at start-up: the first update after
    # warmup (the record of step 3) still uses the peak learning rate
    assert [r["lr"] for r in records if r["kind"] == "train" and r["step"] == 3] == [pytest.approx(1e-3, rel=1e-12)]
    ck = load(cfg.run.out_dir + "/latest.pt")
    assert ck["step"] == result.step and 0 < ck["warmup_end_s"] < ck["elapsed_s"]
    report = open(cfg.run.out_dir + "/report.md", encoding="utf-8").read()
    assert "stopped by the time budget (2 s)" in report


def test_time_budget_spent_in_warmup_is_named(small_pretrain, tiny_config, capsys):
    cfg = tiny_config(small_pretrain, max_iters=10**6, time_budget=0.5, warmup_iters=10**5, eval_interval=10**6,
                      eval_iters=1, sample_tokens=0, threads=1)
    result = train(cfg)
    assert result.out_of_time and result.step < 10**5
    assert (f"note: the time budget ran out during warmup (step {result.step} of optim.warmup_iters 100000)"
            in capsys.readouterr().err)


def test_a_decay_that_ends_within_warmup_is_named(small_pretrain, tiny_config, capsys):
    cfg = tiny_config(small_pretrain, max_iters=6, warmup_iters=3, lr_decay_iters=2, learning_rate=1e-3,
                      min_lr=1e-4, eval_interval=100, sample_tokens=0)
    train(cfg)
    assert "note: optim.lr_decay_iters 2 <= optim.warmup_iters 3: the learning rate warms up, then drops at " \
           "once to optim.min_lr 0.0001" in capsys.readouterr().err
    lrs = {r["step"]: r["lr"] for r in read_log(cfg.run.out_dir + "/log.jsonl") if r["kind"] == "train"}
    assert lrs[3] == pytest.approx(7.5e-4) and lrs[4] == lrs[6] == pytest.approx(1e-4)


def test_an_evaluation_that_rereads_the_validation_split_is_named(small_pretrain, tiny_config, capsys):
    from nano_train.data import Dataset

    rows = Dataset(small_pretrain).source("val", 32).n_rows
    cfg = tiny_config(small_pretrain, max_iters=1, eval_iters=rows, sample_tokens=0)  # batch 4: 4 reads a row
    train(cfg)
    err = capsys.readouterr().err
    assert (f"note: an evaluation reads {4 * rows:,} rows (eval_iters {rows} x batch_size 4) from a validation split "
            f"of {rows:,}: each is read about 4 times" in err and f"--eval_iters={-(-rows // 4)} reads each" in err)
    train(tiny_config(small_pretrain, max_iters=1, eval_iters=rows // 4, sample_tokens=0, overwrite=True))
    assert "note: an evaluation reads" not in capsys.readouterr().err
    # a batch larger than the split: eval_iters 1 is the least there is (and gets no note)
    train(tiny_config(small_pretrain, max_iters=1, eval_iters=2, batch_size=rows + 1, sample_tokens=0, overwrite=True))
    assert (f"each is read about 2 times (more time, no better estimate); --eval_iters=1 reads the fewest (one batch "
            f"of {rows + 1} rows is more than the split holds)") in capsys.readouterr().err
    train(tiny_config(small_pretrain, max_iters=1, eval_iters=1, batch_size=rows + 1, sample_tokens=0, overwrite=True))
    assert "note: an evaluation reads" not in capsys.readouterr().err


def test_sft_sizes_are_named_as_rows_with_their_padding(uneven_sft, tiny_config, capsys):
    """An SFT dataset's rows are padded to one width: its "tokens" were rows x width, and
    tokens seen counts those positions (4,245 real tokens read as 6,435 before)."""
    from nano_train.data import Dataset

    ds = Dataset(uneven_sft)
    rows = {k: ds.source(k, 64).n_rows for k in ("train", "val")}
    cfg = tiny_config(uneven_sft, task="sft", block_size=64, max_iters=2, sample_tokens=0)
    train(cfg)
    sizes = f"train {rows['train']:,} / val {rows['val']:,} rows of 64 tokens (padding included)"  # block_size 64
    assert sizes in capsys.readouterr().out
    report = open(cfg.run.out_dir + "/report.md", encoding="utf-8").read()
    assert f"(sft; {sizes}) |" in report
    assert f"| tokens seen | {2 * 4 * 63:,} (every input position of the rows: prompts and padding included) |" in report  # 63 inputs


def test_gradient_accumulation_matches_one_big_batch(tmp_path, small_pretrain, tiny_config):
    a = tiny_config(small_pretrain, out_dir=tmp_path / "a", batch_size=4, gradient_accumulation_steps=1, max_iters=2)
    b = tiny_config(small_pretrain, out_dir=tmp_path / "b", batch_size=2, gradient_accumulation_steps=2, max_iters=2)
    train(a)
    train(b)
    la, lb = train_losses(tmp_path / "a"), train_losses(tmp_path / "b")
    assert la.keys() == lb.keys() and all(abs(la[k] - lb[k]) < 1e-5 for k in la)
    wa, wb = load(tmp_path / "a" / "latest.pt")["model"], load(tmp_path / "b" / "latest.pt")["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-5)


def test_sft_accumulation_weighs_micro_batches_by_their_loss_tokens(tmp_path, uneven_sft, tiny_config):
    """SFT rows count their answer tokens only, so micro-batches of the same rows hold
    different numbers of loss tokens: 8 rows x 1 micro-batch and 4 rows x 2 still give
    the same losses and weights (each micro-batch weighs by its tokens, not 1/accum)."""
    cfg = tiny_config(uneven_sft, task="sft", block_size=64)
    first = Batcher(Dataset(uneven_sft).source("train", 64), 8, cfg.system.seed).next()[2]  # mask [8, 63]
    assert first[:4].sum() != first[4:].sum()  # the first step's two micro-batches differ
    runs = {}
    for name, batch_size, accum in (("big", 8, 1), ("accum", 4, 2)):
        cfg = tiny_config(uneven_sft, task="sft", out_dir=tmp_path / name, block_size=64, batch_size=batch_size,
                          gradient_accumulation_steps=accum, max_iters=3, warmup_iters=0, learning_rate=1e-3,
                          eval_iters=0, sample_tokens=0)
        train(cfg)
        runs[name] = (train_losses(tmp_path / name), load(tmp_path / name / "latest.pt")["model"])
    (la, wa), (lb, wb) = runs["big"], runs["accum"]
    assert la.keys() == lb.keys() and len(la) == 3
    diffs = [abs(la[k] - lb[k]) for k in la]
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    print(f"max |loss difference| {max(diffs):.2e}, max |weight difference| {worst:.2e}")
    assert max(diffs) < 5e-6  # float32 rounding (the old 1/accum weighting: 3e-4)
    assert worst < 5e-6


def test_evaluate_weighs_batches_by_their_loss_tokens(uneven_sft, small_pretrain, tiny_config):
    """evaluate() over 2 batches of 4 SFT rows is the loss per answer token of the 8
    rows as one batch, not the mean of the 2 batch means; with every token counted
    (pretraining) the two are the same."""
    from nano_train.train import EVAL_SEED, DistInfo, evaluate, forward_context_factory

    cpu = torch.device("cpu")
    context = forward_context_factory(cpu, "float32", "auto")
    for data, block_size, uneven in ((uneven_sft, 64, True), (small_pretrain, 32, False)):
        cfg = tiny_config(data, task="sft" if uneven else "pretrain", block_size=block_size, batch_size=4,
                          eval_iters=2)
        ds = Dataset(data)
        source = ds.source("val", block_size)
        torch.manual_seed(0)
        model = Transformer(ModelConfig(vocab_size=ds.tokenizer.vocab_size, block_size=block_size, n_layer=1,
                                        n_embd=32, n_head=2, n_kv_head=2))
        x, y, m = batch_to_device(Batcher(source, 8, EVAL_SEED).next(), cpu)  # the rows evaluate reads
        with torch.no_grad():
            _, whole = model(x, y, m)  # the 8 rows as one batch
            means = [model(x[i:i + 4], y[i:i + 4], None if m is None else m[i:i + 4])[1] for i in (0, 4)]
        assert (m is not None and m[:4].sum() != m[4:].sum()) == uneven
        got = evaluate(model, source, cfg, DistInfo(), cpu, context)
        print(f"evaluate {got:.6f}, one batch {whole.item():.6f}, mean of batch means {sum(means).item() / 2:.6f}")
        assert abs(got - whole.item()) < 1e-6
        if not uneven:
            assert abs(got - sum(means).item() / 2) < 1e-6


def test_loss_choice_auto_is_blocked_on_a_cpu_only():
    from nano_train.train import blocked_loss

    assert blocked_loss("auto", torch.device("cpu"))
    assert not blocked_loss("auto", torch.device("cuda"))
    assert not blocked_loss("auto", torch.device("mps"))
    for device in ("cpu", "cuda"):
        assert blocked_loss("blocked", torch.device(device))
        assert not blocked_loss("plain", torch.device(device))


@pytest.mark.parametrize("avx512_bf16, amx, expected", [
    (True, False, "bfloat16"), (False, True, "bfloat16"), (False, False, "float32")])
def test_dtype_auto_on_a_cpu_is_bfloat16_only_where_it_is_native(monkeypatch, avx512_bf16, amx, expected):
    """bfloat16 products run in hardware with AVX512-BF16 or AMX (about twice float32's
    speed); without them they are emulated, slower than float32."""
    from nano_train.train import resolve_dtype

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu, 256) == expected
    assert resolve_dtype("auto", torch.device("mps"), 256) == "float32"
    for name in ("float32", "bfloat16", "float16"):
        assert resolve_dtype(name, cpu, 256) == name
        assert resolve_dtype(name, cpu, 32) == name  # asked for: whatever the width


def test_dtype_auto_on_a_cpu_keeps_float32_for_a_narrow_model(monkeypatch):
    """Under CPU_BF16_MIN_EMBD (160) wide, float32 trains faster than bfloat16 even with
    the instructions (Intel Xeon, AMX: width 128 0.9x, 64 0.6x). Was: bfloat16 for every
    width, and the shipped psycho_small config (128 wide) trained at 0.9x its float32 speed."""
    from nano_train.config import CPU_BF16_MIN_EMBD
    from nano_train.train import resolve_dtype

    assert CPU_BF16_MIN_EMBD == 160
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    cpu = torch.device("cpu")
    for width, expected in ((32, "float32"), (128, "float32"), (159, "float32"), (160, "bfloat16"),
                            (256, "bfloat16"), (1024, "bfloat16")):
        assert resolve_dtype("auto", cpu, width) == expected, width


@pytest.mark.parametrize("variable", ["ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"])
def test_dtype_auto_keeps_float32_where_onednn_is_held_below_its_bfloat16_kernels(monkeypatch, variable):
    """ONEDNN_MAX_CPU_ISA=AVX2 on a CPU with AMX: oneDNN emulates bfloat16 products (the
    auditor's runs: 3-14x slower than float32), whatever the CPU's flags say. Was: auto
    picked bfloat16 from the flags, with a note that it multiplies bfloat16 in hardware."""
    from nano_train.train import resolve_dtype

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    for other in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(other, raising=False)
    for limit, expected in (("AVX2", "float32"), ("avx512_core", "float32"), ("SSE41", "float32"),
                            ("AVX512_CORE_BF16", "bfloat16"), ("AVX512_CORE_AMX", "bfloat16"), ("ALL", "bfloat16"),
                            ("", "bfloat16")):
        monkeypatch.setenv(variable, limit)
        assert resolve_dtype("auto", torch.device("cpu"), 256) == expected, limit


@pytest.mark.parametrize("native, wide", [(True, True), (True, False), (False, True)],
                         ids=["bf16 CPU, wide model", "bf16 CPU, narrow model", "no bf16"])
def test_a_run_says_what_dtype_auto_chose_on_a_cpu(monkeypatch, small_pretrain, tiny_config, capsys, native, wide):
    """bfloat16 (a note says so), or float32 with a note where the CPU has bfloat16
    instructions but the model is too narrow for them to pay; no note without them."""
    import platform

    from nano_train import matmul

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(matmul, "cpu_vendor", lambda: "AuthenticAMD")  # (where float32 gets oneDNN's products)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    if wide:  # (the tiny model, 32 wide, counts as wide enough)
        monkeypatch.setattr(train_module, "CPU_BF16_MIN_EMBD", 32)
    train(tiny_config(small_pretrain, max_iters=1, eval_iters=0, dtype="auto"))
    out, err = capsys.readouterr()
    bf16 = native and wide
    assert (" x cpu bfloat16," in out) == bf16 and (" x cpu float32 (oneDNN products)," in out) != bf16
    assert ("note: dtype auto is bfloat16 on this CPU" in err) == bf16
    narrow = ("note: dtype auto is float32: this CPU multiplies bfloat16 in hardware, but a model 32 wide "
              "(under 160) trains faster in float32 here; --dtype=bfloat16 uses it anyway")
    assert (narrow in err) == (native and not wide), err


@pytest.fixture
def base_32_wide(small_pretrain, tiny_config, tmp_path, monkeypatch) -> str:
    """The latest.pt of a one-step run of the tiny model (32 wide), on a CPU said to multiply
    bfloat16 in hardware from here on: a base for runs whose dtype auto it decides."""
    base = tmp_path / "base"
    train(tiny_config(small_pretrain, out_dir=base, max_iters=1, eval_iters=0, sample_tokens=0))
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    return str(base / "latest.pt")


@pytest.mark.parametrize("config_embd, limit, expected", [(256, 64, "float32"), (16, 32, "bfloat16")],
                         ids=["narrow base, wide config", "wide enough base, narrow config"])
def test_dtype_auto_reads_the_width_of_the_base_model(monkeypatch, small_pretrain, tiny_config, base_32_wide, capsys,
                                                      config_embd, limit, expected):
    """A run from a base model (SFT, LoRA, further pretraining) trains the base's model, so
    dtype auto goes by the base's width. Was: by the config's, the default 256 where the config
    names no model (configs/lora_example.json): a 128-wide base trained in bfloat16, with a
    note that bfloat16 was much faster, where float32 is here."""
    monkeypatch.setattr(train_module, "CPU_BF16_MIN_EMBD", limit)
    capsys.readouterr()
    cfg = tiny_config(small_pretrain, max_iters=1, eval_iters=0, sample_tokens=0, dtype="auto",
                      init_from=base_32_wide, n_embd=config_embd)
    train(cfg)  # (no key named explicitly: the model is the base's)
    out, err = capsys.readouterr()
    assert cfg.model.n_embd == 32 and f" x cpu {expected}" in out, out
    if expected == "float32":
        assert f"a model 32 wide (under {limit}) trains faster in float32 here" in err, err
    else:
        assert "note: dtype auto is bfloat16 on this CPU" in err, err


def test_onednn_products_from_a_narrow_base_are_judged_by_its_precision(monkeypatch, small_pretrain, tiny_config,
                                                                         base_32_wide, capsys):
    """--matmul=onednn (float32 products) from a base too narrow for bfloat16: dtype auto is
    float32 for it, so the products apply. Was: refused at startup ("it is for float32 runs,
    and this one is bfloat16"), judged by the config's default model, before the base was read."""
    monkeypatch.setattr(train_module, "CPU_BF16_MIN_EMBD", 64)
    capsys.readouterr()
    train(tiny_config(small_pretrain, max_iters=1, eval_iters=0, sample_tokens=0, dtype="auto", matmul="onednn",
                      init_from=base_32_wide, n_embd=256))
    assert " x cpu float32 (oneDNN products)," in capsys.readouterr().out


@pytest.mark.parametrize("recorded", [True, False])
def test_a_resume_says_when_dtype_auto_picks_another_precision(monkeypatch, small_pretrain, tiny_config, capsys,
                                                                recorded):
    """A run that trained in float32 resumes where dtype auto now picks bfloat16 (a run from
    before auto meant bfloat16 on such a CPU, or moved to one): the note names the switch and
    how to keep the precision. Was: the generic note only. recorded: the checkpoint has its
    dtype; else (older checkpoints) the log's start record says it."""
    train(tiny_config(small_pretrain, max_iters=2, eval_iters=0, sample_tokens=0))  # (float32)
    latest = tiny_config(small_pretrain).run.out_dir + "/latest.pt"
    ck = ckpt_io.load(latest)
    assert ck["dtype"] == "float32" and set(ck["versions"]) == {"torch", "nano_train"}
    if not recorded:
        del ck["dtype"]
        ckpt_io.save_atomic(ck, latest)
        # a resume in bfloat16 that died before its first checkpoint: its start record, at the
        # checkpoint's step, is of a process that trained none of the checkpoint's steps
        with open(tiny_config(small_pretrain).run.out_dir + "/log.jsonl", "a", encoding="utf-8") as log:
            log.write(json.dumps({"kind": "start", "step": 2, "dtype": "bfloat16"}) + "\n")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(train_module, "CPU_BF16_MIN_EMBD", 32)  # (the tiny model counts as wide enough: resolve_dtype reads it here)
    capsys.readouterr()
    train(tiny_config(small_pretrain, max_iters=3, eval_iters=0, sample_tokens=0, dtype="auto", init_from="resume"))
    err = capsys.readouterr().err
    assert ("note: this run trained in float32 up to step 2; dtype auto picks bfloat16 here: --dtype=float32 keeps "
            "it") in err and "dtype auto is bfloat16 on this CPU" not in err
    # the same precision again: no such note
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    train(tiny_config(small_pretrain, max_iters=4, eval_iters=0, sample_tokens=0, dtype="float32",
                      init_from="resume"))
    train(tiny_config(small_pretrain, max_iters=5, eval_iters=0, sample_tokens=0, dtype="auto", init_from="resume"))
    assert "this run trained in" not in capsys.readouterr().err


def test_a_resume_that_trains_no_step_keeps_the_checkpoints_precision(monkeypatch, small_pretrain, tiny_config):
    """A run stopped (Ctrl-C) at its last step resumes only to end it (evaluation, final
    checkpoint): that process trained nothing, so the checkpoint it writes keeps the precision
    the steps were trained in, not the one dtype auto picks for it."""
    import os
    import signal

    def stop_at_2(record):
        if record["kind"] == "train" and record["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # (the loop saves latest.pt after the step and stops)

    result = train(tiny_config(small_pretrain, max_iters=4, eval_iters=0, sample_tokens=0), progress=stop_at_2)
    latest = tiny_config(small_pretrain).run.out_dir + "/latest.pt"
    assert result.interrupted and ckpt_io.load(latest)["step"] == 2 and ckpt_io.load(latest)["final"] is False
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(train_module, "CPU_BF16_MIN_EMBD", 32)  # (the tiny model counts as wide enough: resolve_dtype reads it here)
    train(tiny_config(small_pretrain, max_iters=2, eval_iters=0, sample_tokens=0, dtype="auto", init_from="resume"))
    ck = ckpt_io.load(latest)
    assert ck["final"] is True and ck["step"] == 2 and ck["dtype"] == "float32"


def test_cuda_graphs_only_for_one_process_and_one_micro_batch(tiny_config, small_pretrain):
    from nano_train.config import ConfigError
    from nano_train.train import uses_cuda_graphs

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for mode in ("reduce-overhead", "max-autotune"):
        cfg = tiny_config(small_pretrain, compile=True, compile_mode=mode)
        assert uses_cuda_graphs(cfg, cuda, 1, 1)
        assert not uses_cuda_graphs(cfg, cpu, 4, 2)  # no CUDA graphs on a CPU: nothing to refuse
        for accum, world in ((2, 1), (1, 2)):
            with pytest.raises(ConfigError, match=rf"compile_mode {mode} \(CUDA graphs\) is for one process.*"
                                                  rf"{world} process\(es\) and {accum} micro-batch"):
                uses_cuda_graphs(cfg, cuda, accum, world)
    for compiled, mode in ((True, "default"), (True, "max-autotune-no-cudagraphs"), (False, "reduce-overhead")):
        cfg = tiny_config(small_pretrain, compile=compiled, compile_mode=mode)
        assert not uses_cuda_graphs(cfg, cuda, 2, 2)


def test_compiled_training_matches_eager(tmp_path, small_pretrain, tiny_config):
    """compile=true runs the same training through torch.compile (inductor,
    which generates C++ with the system compiler): the same losses up to
    float rounding, and checkpoints whose keys carry no compile wrapper. So do
    the plain loss (compiled inside the graph) and another compile mode (on a
    CPU reduce-overhead has no CUDA graphs to make: the same code runs)."""
    from torch._dynamo.utils import counters

    runs = {}
    for name, compiled, extra in (("eager", False, {}), ("compiled", True, {}),
                                  ("plain", True, {"loss": "plain", "eval_iters": 2, "eval_interval": 2}),
                                  ("overhead", True, {"compile_mode": "reduce-overhead"})):
        cfg = tiny_config(small_pretrain, out_dir=tmp_path / name, compile=compiled, max_iters=3,
                          **{"eval_iters": 0, "sample_tokens": 0, **extra})
        counters.clear()
        train(cfg)
        runs[name] = train_losses(tmp_path / name)
        assert (counters["stats"]["unique_graphs"] > 0) == compiled  # the compiler really ran, or not
        if compiled:  # the blocked loss breaks the graph, the plain loss is inside it
            broken = any("linear_cross_entropy" in str(reason) for reason in counters["graph_break"])
            assert broken == (name != "plain"), (name, dict(counters["graph_break"]))
    for name in ("compiled", "plain", "overhead"):
        assert runs["eager"].keys() == runs[name].keys() and len(runs["eager"]) == 3
        for step, loss in runs["eager"].items():
            assert abs(runs[name][step] - loss) < 1e-4, (name, step, loss, runs[name][step])
    state = load(tmp_path / "compiled" / "latest.pt")["model"]
    assert not any(k.startswith("_orig_mod") for k in state)


def test_loss_goes_down_and_best_checkpoint_follows_val_loss(small_pretrain, tiny_config):
    cfg = tiny_config(small_pretrain, max_iters=30, eval_interval=10, eval_iters=4, log_interval=5,
                      learning_rate=1e-2, min_lr=1e-3)
    result = train(cfg)
    evals = [r for r in read_log(cfg.run.out_dir + "/log.jsonl") if r["kind"] == "eval"]
    assert [e["step"] for e in evals] == [0, 10, 20, 30]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0
    best = load(cfg.run.out_dir + "/best.pt")
    assert best["best_val_loss"] == min(e["val_loss"] for e in evals[1:]) == result.best_val_loss
    assert best["step"] == min(evals[1:], key=lambda e: e["val_loss"])["step"]


def test_checkpoint_contract(small_pretrain, tiny_config):
    cfg = tiny_config(small_pretrain, max_iters=2, dropout=0.1, keep_checkpoints=True, attention_backend="math")
    train(cfg)
    ck = load(cfg.run.out_dir + "/latest.pt")  # weights_only: plain tensors and containers only
    assert ck["format"] == "nano-train-checkpoint" and ck["task"] == "pretrain" and ck["step"] == 2
    assert ck["config"]["model"]["vocab_size"] == 4096  # filled from the data's vocabulary
    assert ck["config"]["model"]["dropout"] == 0.1
    assert ck["config"]["train"]["optim"]["max_iters"] == 2
    assert ck["config"]["train"]["system"]["attention_backend"] == "math"
    tok = Tokenizer.from_json_dict(ck["tokenizer"])
    assert tok.fingerprint() == Dataset(small_pretrain).tokenizer.fingerprint()
    assert set(ck["rng"]["ranks"][0]) == {"torch", "cuda", "numpy", "python"}
    assert ck["data_state"]["row"] == 2 * 4 and ck["tokens_seen"] == 2 * 4 * 32
    assert "lora" not in ck and "optimizer" in ck and math.isfinite(ck["best_val_loss"])
    assert (cfg.run.out_dir + "/ckpt_000002.pt").endswith(".pt") and load(cfg.run.out_dir + "/ckpt_000002.pt")["step"] == 2
    # the model engineer's loader reads it and computes the same logits
    model, tok2 = load_checkpoint_model(cfg.run.out_dir + "/latest.pt")
    mine = Transformer(ModelConfig.from_dict(ck["config"]["model"])).eval()
    mine.load_state_dict(ck["model"])
    x = torch.randint(0, 4096, (1, 16))
    assert torch.equal(model(x)[0], mine(x)[0]) and tok2 == tok


# ---------------------------------------------------------------------------
# Fine-tuning from a base model: SFT, LoRA (from .pt and from .bin)


@pytest.fixture
def base_and_sft(tmp_path, small_pretrain, tiny_config, shared_file):
    """A tiny pretrained base (tokenizer_4096) and SFT data in the same vocabulary."""
    base_cfg = tiny_config(small_pretrain, out_dir=tmp_path / "base", max_iters=2, block_size=64)
    train(base_cfg)
    sft = tmp_path / "sft"
    prepare_sft([shared_file("data/sft_self_id.jsonl")], shared_file("data/tokenizer_4096.json"), sft, block_size=64,
                val_fraction=0.2, progress=False)
    return tmp_path / "base" / "latest.pt", sft


def test_sft_from_a_pretrained_checkpoint(tmp_path, base_and_sft, tiny_config):
    base, sft = base_and_sft
    cfg = tiny_config(sft, task="sft", out_dir=tmp_path / "sft_run", init_from=str(base), max_iters=3,
                      block_size=32, dropout=0.05, sample_prompts=["你是谁"])
    # block_size=32 is not explicit here, so the base's architecture (block 64) wins
    train(cfg, explicit={"model.dropout"})
    ck = load(tmp_path / "sft_run" / "latest.pt")
    assert ck["task"] == "sft" and ck["base"] == str(base)
    assert ck["config"]["model"]["block_size"] == 64 and ck["config"]["model"]["dropout"] == 0.05
    base_w = load(base)["model"]
    assert not torch.equal(ck["model"]["layers.0.wq.weight"], base_w["layers.0.wq.weight"])
    report = (tmp_path / "sft_run" / "report.md").read_text(encoding="utf-8")
    assert "**你是谁**" in report
    with pytest.raises(ConfigError, match=r"model.n_layer 3 \(its: 1\) conflicts with the base model"):
        train(tiny_config(sft, task="sft", out_dir=tmp_path / "x", init_from=str(base), n_layer=3),
              explicit={"model.n_layer"})


def test_lora_from_pt_and_from_bin(tmp_path, base_and_sft, tiny_config):
    base, sft = base_and_sft
    bin_path = tmp_path / "base.bin"
    model, tok = load_checkpoint_model(base)
    export_bin(model, bin_path, tokenizer=tok)
    for name, init in (("lora_pt", base), ("lora_bin", bin_path)):
        cfg = tiny_config(sft, task="lora", out_dir=tmp_path / name, init_from=str(init), max_iters=3,
                          lora_rank=4, lora_alpha=8.0, learning_rate=1e-2)
        train(cfg)
        ck = load(tmp_path / name / "latest.pt")
        assert ck["task"] == "lora" and ck["lora"] == {"rank": 4, "alpha": 8.0, "dropout": 0.0}
        base_w = load(base)["model"]
        for k, v in base_w.items():  # the base is frozen...
            assert torch.equal(ck["model"][k], v), k
        assert ck["model"]["layers.0.wq.lora_B"].abs().sum() > 0  # ...the adapters trained
        opt_params = sum(len(g["params"]) for g in ck["optimizer"]["param_groups"])
        assert opt_params == 2 * 4 * cfg.model.n_layer  # A and B of wq wk wv wo per layer
        adapted, _ = load_checkpoint_model(tmp_path / name / "latest.pt")  # the export path reads it
        assert adapted.config.n_layer == 1
    # resume a LoRA run
    cfg = tiny_config(sft, task="lora", out_dir=tmp_path / "lora_pt", init_from="resume", max_iters=5,
                      lora_rank=4, lora_alpha=8.0, learning_rate=1e-2)
    assert train(cfg).step == 5


# ---------------------------------------------------------------------------
# Errors that say what is wrong


def test_helpful_errors(tmp_path, small_pretrain, self_id_sft, base_and_sft, tiny_config, capsys):
    base, _ = base_and_sft
    with pytest.raises(DataError, match="does not exist"):
        train(tiny_config(tmp_path / "no_data"))
    with pytest.raises(DataError, match="is a sft dataset but task pretrain"):
        train(tiny_config(self_id_sft))
    with pytest.raises(DataError, match="vocabulary mismatch"):  # base: tokenizer_4096, data: tokenizer_16384_v2
        train(tiny_config(self_id_sft, task="sft", init_from=str(base)))
    with pytest.raises(DataError, match="larger than the data"):
        train(tiny_config(small_pretrain, block_size=200_000))
    with pytest.raises(ConfigError, match="task lora needs run.init_from"):
        train(tiny_config(self_id_sft, task="lora", block_size=64))
    # through the command line: exit status 2 and one line on stderr
    assert main("pretrain", [f"--dataset={tmp_path / 'no_data'}", f"--out_dir={tmp_path / 'o'}"]) == 2
    assert "error:" in capsys.readouterr().err
    assert main("pretrain", [f"--out_dir={tmp_path / 'o'}", "--init_from=resume"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main("pretrain", ["--max_iter=3"]) == 2
    assert "unknown key 'max_iter'" in capsys.readouterr().err
    assert main("sft", ["--task=pretrain"]) == 2
    assert "this command trains task 'sft'" in capsys.readouterr().err
    assert main("pretrain", ["--help"]) == 0
    assert "gradient_accumulation_steps" in capsys.readouterr().out
    assert main("pretrain", ["--print_config", "--n_layer=7"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["n_layer"] == 7


def test_a_config_built_in_code_is_checked_before_the_run_writes_anything(tmp_path, small_pretrain, tiny_config):
    """A Config changed in code after load_config (as a notebook does) was used unchecked:
    batch_size 0 ended in numpy's "need at least one array to concatenate", log_interval 0
    in a ZeroDivisionError, each after the run directory and its log were made."""
    import dataclasses

    for section, change, message in (("data", dict(batch_size=0), "data.batch_size must be >= 1"),
                                      ("run", dict(log_interval=0), "run.log_interval must be >= 1"),
                                      ("eval", dict(eval_interval=0), "eval.eval_interval must be >= 1"),
                                      ("system", dict(dtype="fp32"), "system.dtype must be one of")):
        cfg = tiny_config(small_pretrain, out_dir=tmp_path / section)
        setattr(cfg, section, dataclasses.replace(getattr(cfg, section), **change))
        with pytest.raises(ConfigError, match=message):
            train(cfg)
        assert not (tmp_path / section).exists()


def test_a_run_from_python_gives_back_the_callers_thread_count(small_pretrain, tiny_config):
    """system.threads is the run's: a notebook that trains with --threads=1 keeps its own count."""
    before = torch.get_num_threads()
    target = 2 if before == 1 else 1
    train(tiny_config(small_pretrain, max_iters=1, threads=target, sample_tokens=0))
    assert torch.get_num_threads() == before


# ---------------------------------------------------------------------------
# Log, report card, plot


def test_log_report_and_plot(small_pretrain, tiny_config, tmp_path):
    cfg = tiny_config(small_pretrain, max_iters=4, sample_prompts=["意识"], sample_tokens=8)
    train(cfg)
    out = tmp_path / "run"
    records = read_log(out / "log.jsonl")
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("train") == 4
    t = [r for r in records if r["kind"] == "train"][-1]
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "tokens_seen", "elapsed_s"} <= set(t)
    assert t["tokens_per_s"] > 0 and 0 < t["mfu"]
    report = (out / "report.md").read_text(encoding="utf-8")
    for needle in ("# Nano training report", "parameters", "tokens seen", "final val loss", "throughput",
                   "MFU", "## Samples", "**意识**", "## Config", '"max_iters": 4'):
        assert needle in report, needle
    png = tmp_path / "loss.png"
    assert plot_cmd.main([str(out), "-o", str(png), "--lr"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = plot_cmd.curves(records)
    assert curves["train"][0] == [1, 2, 3, 4] and curves["val"][0] == [0, 2, 4]


def test_a_lora_resume_with_another_rank_is_a_conflict_not_a_damaged_checkpoint(tmp_path, base_and_sft, tiny_config,
                                                                                   capsys):
    base, sft = base_and_sft
    out = tmp_path / "lora"
    common = [f"--dataset={sft}", f"--out_dir={out}", "--device=cpu", "--sample_tokens=0", "--eval_iters=1",
              "--batch_size=2"]
    assert main("lora", common + [f"--init_from={base}", "--max_iters=2", "--lora_rank=4"]) == 0
    capsys.readouterr()
    assert main("lora", common + ["--init_from=resume", "--max_iters=4", "--lora_rank=8"]) == 2
    err = capsys.readouterr().err
    assert "lora.lora_rank 8 (the checkpoint's: 4) conflicts with the checkpoint" in err, err
    assert "do not fit" not in err and "Traceback" not in err


def test_the_sort6_fixture_fine_tunes_with_the_full_attention_it_was_trained_with(tmp_path, shared_file, capsys):
    """sort6 (layout 2025.12) cannot record its full attention and reads as causal: a run from
    it on seq2seq rows says how to train it as it was trained (--is_causal=false, which was
    refused as a conflict with the base model), and with that it starts out sorting. The report
    shows each row's whole input (not only its scored positions) and says how the samples were
    made (one forward pass, not the temperature and new tokens of generation)."""
    from nano_train.convert import load_model

    sort6 = shared_file("fixtures/sort6_f32.bin")
    _, tok = load_model(sort6)
    questions = ["".join(map(str, d)) for d in np.random.default_rng(0).integers(0, 10, (64, 6))]
    x = np.array([tok.encode(q) for q in questions])
    y = np.array([tok.encode("".join(sorted(q))) for q in questions])
    mask = np.ones_like(x)
    mask[:, :2] = 0  # the loss on the last four positions only
    write_rows(tmp_path / "rows", tok, "seq2seq", {"train": (x, y, mask), "val": (x, y, mask)})
    args = [f"--dataset={tmp_path / 'rows'}", f"--init_from={sort6}", "--max_iters=0", "--eval_iters=1",
            "--batch_size=16", "--dtype=float32", "--threads=1"]
    assert main("sft", [*args, f"--out_dir={tmp_path / 'causal'}"]) == 0
    assert ("its model file (layout 2025.12) cannot record the attention kind and reads as causal: "
            "--is_causal=false trains it with full attention") in capsys.readouterr().err
    assert main("sft", [*args, f"--out_dir={tmp_path / 'full'}", "--is_causal=false"]) == 0
    losses = {run: [r["val_loss"] for r in read_log(tmp_path / run / "log.jsonl") if r["kind"] == "eval"][0]
              for run in ("causal", "full")}
    assert losses["full"] < 0.2 < 2.0 < losses["causal"]
    assert torch.load(tmp_path / "full" / "latest.pt", weights_only=True)["config"]["model"]["is_causal"] is False
    report = (tmp_path / "full" / "report.md").read_text()
    assert ("One forward pass over each input, the most likely token at every position (seq2seq rows: no "
            "sampling, no new tokens).") in report
    assert f"**{questions[0]}**\n\n```text\n{''.join(sorted(questions[0]))}\n```" in report
