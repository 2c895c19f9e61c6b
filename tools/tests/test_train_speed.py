"""tools/bench/train_speed.py's own loop, without its peer (transformers lives in
the bench environment only): ours steps the same with the blocked and the plain
loss (auto: blocked on a CPU, as the trainer), and the compile mode reaches
torch.compile."""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--shape", "custom", "--layers", "1", "--embd", "32", "--heads", "2", "--kv-heads", "1",
        "--hidden", "64", "--vocab", "96", "--batch", "2", "--seq", "16"]


@pytest.fixture(scope="module")
def train_speed(load_tool):
    return load_tool("bench/train_speed.py")


def trainee(ts, argv):
    """ours as train_speed's main sets it up from these options."""
    args = ts.parse_args(TINY + argv)
    cfg, batch, seq = ts.model_config(args)
    device = torch.device("cpu")
    torch.manual_seed(0)
    t = ts.ours_trainee(args, ts.build_ours(cfg, device), device, "float32")
    ids = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=torch.Generator().manual_seed(1))
    return t, ids[:, :-1], ids[:, 1:]


def test_blocked_and_plain_loss_train_alike(train_speed):
    runs = {}
    for name in ("blocked", "plain", "auto"):
        t, x, y = trainee(train_speed, ["--ours-loss", name])
        expected = {"blocked": train_speed.ours_loss, "plain": train_speed.ours_plain_loss,
                    "auto": train_speed.ours_loss}[name]  # auto on a CPU: blocked, as the trainer
        assert t.loss_fn is expected
        runs[name] = [t.step(x, y).item() for _ in range(4)]
    assert runs["blocked"][0] > runs["blocked"][-1]  # it learns the batch
    assert runs["blocked"] == pytest.approx(runs["plain"], rel=1e-5)
    assert runs["blocked"] == runs["auto"]


def test_compile_mode_is_passed_on(train_speed, monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, mode: seen.append(mode) or model)
    for mode, marks in (("default", False), ("reduce-overhead", True), ("max-autotune-no-cudagraphs", False)):
        t, _, _ = trainee(train_speed, ["--compile", "ours", "--compile-mode", mode])
        assert seen[-1] == mode and t.mark_step is marks
    for argv in (["--compile-mode", "reduce-overhead"], ["--compile", "peer", "--compile-mode", "reduce-overhead"]):
        t, _, _ = trainee(train_speed, argv)
        assert t.mark_step is False and len(seen) == 3  # ours not compiled: no torch.compile, no marks


def test_unknown_options_are_refused(train_speed, capsys):
    for argv in (["--compile-mode", "fastest"], ["--ours-loss", "fused"]):
        with pytest.raises(SystemExit):
            train_speed.parse_args(TINY + argv)
        assert "invalid choice" in capsys.readouterr().err


def test_run_turn_counts_page_faults(train_speed):
    if train_speed.resource is None:
        pytest.skip("no page-fault counts on this OS")

    class Toucher:  # a step that maps 16 MiB of fresh memory and writes to every page of it
        def step(self, x, y):
            with mmap.mmap(-1, 16 << 20) as m:
                if hasattr(mmap, "MADV_NOHUGEPAGE"):
                    m.madvise(mmap.MADV_NOHUGEPAGE)  # 4 KiB pages even where huge pages are the default
                for offset in range(0, len(m), mmap.PAGESIZE):
                    m[offset] = 1
            return torch.zeros(())

    _, _, faults = train_speed.run_turn(Toucher(), [(None, None)], 3, 0, torch.device("cpu"))
    assert faults >= (16 << 20) // mmap.PAGESIZE, faults  # one fault per page, each step


def test_56m_shape_is_the_gpu_config(train_speed):
    from nano_train.config import load_config

    cfg, _ = load_config(ROOT / "packages" / "nano-train" / "configs" / "gpu_56m.json")
    shape = dict(train_speed.SHAPES["56m"])
    assert shape.pop("batch") == cfg.data.batch_size and shape.pop("seq") == cfg.model.block_size
    assert shape == {key: getattr(cfg.model, key) for key in shape}
    assert set(shape) >= {"vocab_size", "n_layer", "n_embd", "n_head", "n_kv_head", "n_hidden"}


def run_main(module, argv, capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of module.main(argv), whether it returns or exits."""
    try:
        code = module.main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def fake_transformers():
    """A stand-in for transformers whose LlamaForCausalLM is our own model of the same
    shape: enough for train_speed's main to run through, without the bench environment."""
    import types

    from nano_train.model import ModelConfig, Transformer

    class FakeLlama(torch.nn.Module):
        def __init__(self, hf):
            super().__init__()
            self.config = types.SimpleNamespace(_attn_implementation=hf.attn_implementation)
            self.inner = Transformer(ModelConfig(
                block_size=hf.max_position_embeddings, vocab_size=hf.vocab_size, n_layer=hf.num_hidden_layers,
                n_embd=hf.hidden_size, n_head=hf.num_attention_heads, n_kv_head=hf.num_key_value_heads,
                n_hidden=hf.intermediate_size))

        def forward(self, input_ids):
            return types.SimpleNamespace(logits=self.inner(input_ids)[0])

    return types.SimpleNamespace(__version__="fake", LlamaConfig=types.SimpleNamespace, LlamaForCausalLM=FakeLlama)


QUICK = TINY + ["--steps", "1", "--rounds", "1", "--warmup", "0", "--dtype", "float32", "--threads", "1"]


def test_numbers_out_of_range_are_refused(train_speed, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", fake_transformers())
    monkeypatch.setattr(train_speed, "build_ours", lambda *a: pytest.fail("the run started"))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: pytest.fail(f"set_num_threads({n}) before the checks"))
    for argv, message in (
            (["--threads", "99999"], "--threads must be at most 1024, got 99999"),  # was a segmentation fault
            (["--batch", str(10**20)], f"--batch must be at most 2147483647, got {10**20}"),  # was a traceback
            (["--seed", str(2**70)], f"--seed must be in [0, 2^63), got {2**70}"),  # was a traceback
            (["--seed", "-1"], "--seed must be in [0, 2^63), got -1"),
            (["--batch", "65536", "--seq", "65536"],
             "--batch x --seq (65536 x 65536 tokens per step) must be at most 2147483647")):
        code, out, err = run_main(train_speed, QUICK[:-2] + argv, capsys)  # QUICK without its --threads
        assert (code, out, err) == (2, "", f"error: {message}\n"), argv


def test_an_unwritable_json_is_refused_before_the_run(train_speed, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "transformers", fake_transformers())
    monkeypatch.setattr(train_speed, "build_ours", lambda *a: pytest.fail("the run started"))
    for out, why in ((tmp_path / "no" / "x.json", "No such file or directory"),
                     (tmp_path, "not a regular file")):
        code, _, err = run_main(train_speed, QUICK + ["--json", str(out)], capsys)
        assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: --json {out}") and why in err


def test_the_json_is_written_atomically(train_speed, monkeypatch, tmp_path, capsys):
    import errno
    import json
    import os

    monkeypatch.setitem(sys.modules, "transformers", fake_transformers())
    monkeypatch.setattr(train_speed, "PROBE_SECONDS", 0.01)
    out = tmp_path / "out.json"
    code, stdout, _ = run_main(train_speed, QUICK + ["--json", str(out)], capsys)
    assert code == 0 and f"wrote {out}" in stdout
    record = json.loads(out.read_text())
    assert record["params"]["ours"] == record["params"]["peer"] and record["results"]["ours"]["tokens_per_s_median"] > 0

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # the disk fills while the record is written
    code, stdout, err = run_main(train_speed, QUICK + ["--json", str(out)], capsys)
    assert code == 1 and "ratio ours/peer" in stdout  # the results were printed before
    assert err == f"error: cannot write {out}: No space left on device (the results above were not saved)\n"
    assert json.loads(out.read_text()) == record  # the old file whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temporary file left


@pytest.mark.parametrize("machine, vendor", [("x86_64", "AuthenticAMD"), ("x86_64", "GenuineIntel"),
                                             ("aarch64", "")])
def test_ours_products_follow_the_trainers_rule(train_speed, monkeypatch, machine, vendor):
    """--ours-matmul: auto is the trainer's system.matmul (oneDNN for float32 on an AMD
    x86-64 CPU, compiled or not), torch keeps F.linear."""
    import platform

    from nano_train import matmul

    monkeypatch.setattr(platform, "machine", lambda: machine)
    monkeypatch.setattr(matmul, "cpu_vendor", lambda: vendor)
    x86 = vendor == "AuthenticAMD"
    for argv, expected in (([], x86), (["--ours-matmul", "torch"], False), (["--ours-matmul", "onednn"], True),
                           (["--compile", "ours"], x86), (["--compile", "ours", "--ours-matmul", "torch"], False)):
        t, _, _ = trainee(train_speed, argv)
        assert getattr(t.model, "_orig_mod", t.model).onednn == expected, argv


def test_the_peers_products_and_the_peak_are_reported(train_speed, monkeypatch, tmp_path, capsys):
    import json

    monkeypatch.setitem(sys.modules, "transformers", fake_transformers())
    monkeypatch.setattr(train_speed, "PROBE_SECONDS", 0.01)
    out = tmp_path / "out.json"
    code, stdout, _ = run_main(train_speed, QUICK + ["--peer-matmul", "onednn", "--ours-matmul", "onednn",
                                                     "--json", str(out)], capsys)
    assert code == 0
    assert "products: ours oneDNN, peer onednn" in stdout
    assert "the better of torch's and oneDNN's products" in stdout  # float32: both kernels probed
    record = json.loads(out.read_text())
    assert (record["ours_matmul"], record["peer_matmul"]) == ("onednn", "onednn")
    code, stdout, err = run_main(train_speed, QUICK[:-4] + ["--dtype", "bfloat16", "--peer-matmul", "onednn"], capsys)
    assert code == 2 and stdout == "" and err.count("\n") == 1
    assert err.startswith("error: --peer-matmul onednn cannot apply: it is for float32 runs, and this one is bfloat16")


def test_compiled_the_peers_loss_is_inside_its_graph(train_speed, monkeypatch, capsys):
    """--compile compiles the peer with its loss, as ours' loss is inside its forward (and as
    a user compiling a model called with labels= gets it): compiling the model alone, for
    .logits, left the peer's cross-entropy eager and read 1.25x where it was 1.08x."""
    monkeypatch.setitem(sys.modules, "transformers", fake_transformers())
    monkeypatch.setattr(train_speed, "PROBE_SECONDS", 0.01)
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(model) or model)
    code, _, _ = run_main(train_speed, QUICK + ["--compile"], capsys)
    assert code == 0 and len(compiled) == 2
    peer = next(m for m in compiled if not isinstance(m, train_speed.Transformer))
    assert isinstance(peer, train_speed.PeerWithLoss)
    x, y = torch.randint(0, 96, (2, 16)), torch.randint(0, 96, (2, 16))  # TINY's vocabulary and seq
    logits = peer.model(input_ids=x).logits
    assert peer(x, y).item() == pytest.approx(torch.nn.functional.cross_entropy(logits.reshape(-1, 96),
                                                                                y.reshape(-1)).item())


def test_the_headline_is_the_per_round_ratio_and_a_busy_run_says_so(train_speed, monkeypatch, capsys, tmp_path):
    """Turns slowed by other processes: the medians of all turns gave 0.15x where the rounds
    said 1.05x. The headline is the median of the per-round ratios; a spread of turns says so."""
    import json

    monkeypatch.setitem(sys.modules, "transformers", fake_transformers())
    monkeypatch.setattr(train_speed, "PROBE_SECONDS", 0.01)
    seconds = iter([1, 10, 1, 2, 10, 20])  # ours, peer per round: ratios 10, 2, 2
    real = train_speed.run_turn
    monkeypatch.setattr(train_speed, "run_turn", lambda *a: (next(seconds), *real(*a)[1:]))
    out = tmp_path / "r.json"
    code, stdout, err = run_main(train_speed, QUICK[:-6] + ["--rounds", "3", "--json", str(out), "--warmup", "0",
                                                             "--dtype", "float32", "--threads", "1"], capsys)
    assert code == 0, err
    assert "ratio ours/peer: 2.00x, the median of the per-round ratios (goal >= 1.2x); 10.00x of the medians" in stdout
    assert "warning: a model's turns ranged over 10.0x in tokens/s: the machine was busy" in err
    record = json.loads(out.read_text())
    assert (record["ratio"], record["ratio_of_medians"], record["spread"]) == (2.0, 10.0, 10.0)
