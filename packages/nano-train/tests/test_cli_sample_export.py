"""The `sample` and `export` commands: real fixtures, options, and clean errors."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nano_train import export as export_cmd
from nano_train import sample as sample_cmd
from nano_train.convert import emulate_q8_0, load_bin, load_lora_bin
from nano_train.lora import attach_lora
from nano_train.model import ModelConfig, Transformer

PSYCHO_GREEDY_16 = [272, 113, 217, 190, 398, 381, 187, 228, 360, 293, 343, 187, 228, 195, 303, 586]


pytestmark = pytest.mark.usefixtures("one_thread")


def run(cmd, argv, capsys):
    rc = cmd.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def tiny(seed=0, **kw):
    c = dict(block_size=16, vocab_size=80, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    c.update(kw)
    torch.manual_seed(seed)
    return Transformer(ModelConfig(**c)).eval()


def save_ckpt(path, model, nano80, lora=None):
    ck = {"model": model.state_dict(),
          "config": {"model": model.config.to_dict(), "train": {}},
          "tokenizer": nano80.to_json_dict()}
    if lora:
        ck["lora"] = lora
    torch.save(ck, path)


# ---------------------------------------------------------------------------
# sample


def test_sample_help(capsys):
    with pytest.raises(SystemExit) as e:
        sample_cmd.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--model", "--lora", "--prompt", "--instruct", "--temperature", "--top-k", "--top-p",
                "--min-p", "--repetition-penalty", "--max-tokens", "--seed", "--stop", "--seq2seq",
                "--profile", "--device"):
        assert opt in out
    assert sample_cmd.__doc__.lstrip().startswith("Generate text")


def test_sample_sort6_seq2seq(shared_file, capsys):
    rc, out, _ = run(sample_cmd, ["-m", shared_file("fixtures/sort6_f32.bin"), "--seq2seq", "-p", "251212"], capsys)
    assert rc == 0 and out == "112225\n"


def test_sample_psycho_greedy_streams_the_pinned_ids(shared_file, capsys):
    _, tok = load_bin(shared_file("fixtures/psycho_230k_1214_q80.bin"))
    rc, out, err = run(sample_cmd, ["-m", shared_file("fixtures/psycho_230k_1214_q80.bin"), "-p", "人的心理",
                                    "-t", "0", "-n", "16", "--profile"], capsys)
    assert rc == 0
    assert out == tok.decode(PSYCHO_GREEDY_16) + "\n"
    assert "time to first token" in err and "tokens/s" in err


def test_sample_prompt_from_stdin_and_sampling_options(shared_file, capsys, monkeypatch):
    model = shared_file("fixtures/psycho_230k_1214_q80.bin")
    args = ["-m", model, "-t", "0.8", "-k", "20", "--top-p", "0.9", "--min-p", "0.05",
            "-r", "1.3", "-n", "12", "-s", "7"]
    rc, a, _ = run(sample_cmd, args + ["-p", "心理学"], capsys)
    assert rc == 0 and len(a.strip()) > 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("心理学\n"))
    rc, b, _ = run(sample_cmd, args + ["-p", "-"], capsys)
    assert rc == 0 and b == a  # same prompt, same seed, same text
    rc, c, _ = run(sample_cmd, args[:-1] + ["8", "-p", "心理学"], capsys)
    assert rc == 0 and c != a


def eos_model(tmp_path, nano80) -> Path:
    """A model that always predicts <|eos|> (id 3): a constant residual stream
    (layers write nothing) read by a classifier whose only non-zero row is eos's."""
    m = tiny(tie_embeddings=False)
    with torch.no_grad():
        for layer in m.layers:
            layer.wo.weight.zero_()
            layer.w2.weight.zero_()
        m.tok_embd.weight.zero_()
        m.tok_embd.weight[:, 0] = 1.0
        m.lm_head.weight.zero_()
        m.lm_head.weight[3, 0] = 1.0
    save_ckpt(tmp_path / "eos.pt", m, nano80)
    return tmp_path / "eos.pt"


def test_sample_instruct_stops_at_eos(tmp_path, nano80, capsys):
    ck = eos_model(tmp_path, nano80)
    rc, out, _ = run(sample_cmd, ["-m", ck, "-p", "hi", "-t", "0", "-n", "3"], capsys)
    assert rc == 0 and out == "<|eos|>" * 3 + "\n"  # plain mode: eos is just a token
    rc, out, _ = run(sample_cmd, ["-m", ck, "-p", "hi", "-t", "0", "-n", "3", "--instruct"], capsys)
    assert rc == 0 and out == "\n"
    rc, out, _ = run(sample_cmd, ["-m", ck, "-p", "hi", "-t", "0", "-n", "3", "--stop", "<|eos|>"], capsys)
    assert rc == 0 and out == "\n"


def test_sample_with_lora(nano80, tmp_path, capsys):
    from nano_train.convert import export_bin, export_lora

    m = tiny()
    export_bin(m, tmp_path / "base.bin", tokenizer=nano80)
    attach_lora(m, rank=2, alpha=2)
    with torch.no_grad():
        for layer in m.layers:  # large enough to dominate the random base
            layer.wv.lora_B.normal_(0, 5.0)
            layer.wo.lora_B.normal_(0, 5.0)
    export_lora(m, tmp_path / "lora.bin")
    args = ["-m", tmp_path / "base.bin", "-p", "abc", "-t", "0", "-n", "8"]
    rc, plain, _ = run(sample_cmd, args, capsys)
    rc2, adapted, _ = run(sample_cmd, args + ["-l", tmp_path / "lora.bin"], capsys)
    assert rc == rc2 == 0
    assert plain != adapted


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["-m", "missing.bin", "-p", "x"], "not found"),
        (["-m", "{nano80}", "-p", "x"], "not a Nano model file"),
        (["-m", "{sort6}", "-p", "x", "--top-p", "2"], "top_p"),
        (["-m", "{sort6}", "-p", ""], "empty"),
        (["-m", "{sort6}", "-p", "x", "-l", "missing_lora.bin"], "not found"),
        (["-m", "{sort6}", "-p", "x", "-l", "{sort6}"], "not a LoRA"),
        (["-m", "{sort6}", "-p", "x", "--device", "nonsense"], "device"),
        (["-m", "{sort6}", "-p", "1234567"], "block size"),
    ],
)
def test_sample_errors_are_one_line(shared_file, argv, msg, capsys):
    sub = {"{nano80}": str(shared_file("data/nano_80.json")), "{sort6}": str(shared_file("fixtures/sort6_f32.bin"))}
    rc, out, err = run(sample_cmd, [sub.get(a, a) for a in argv], capsys)
    assert rc == 1
    assert err.startswith("error: ") and msg in err and "Traceback" not in err


def test_sample_module_runs_as_a_program(shared_file):
    p = subprocess.run(
        [sys.executable, "-m", "nano_train.sample", "-m", str(shared_file("fixtures/sort6_f32.bin")),
         "--seq2seq", "-p", "251212", "--threads", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout == "112225\n"


# ---------------------------------------------------------------------------
# export


def test_export_help(capsys):
    with pytest.raises(SystemExit) as e:
        export_cmd.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--ckpt", "--out", "--quant", "--group-size", "--layout", "--lora-out"):
        assert opt in out


def test_export_f32_and_q8_0(nano80, tmp_path, capsys):
    m = tiny()
    save_ckpt(tmp_path / "c.pt", m, nano80)
    rc, out, _ = run(export_cmd, ["--ckpt", tmp_path / "c.pt", "--out", tmp_path / "f.bin"], capsys)
    assert rc == 0 and "layout 2026.1" in out and "f32" in out and "bytes" in out
    back, tok = load_bin(tmp_path / "f.bin")
    idx = torch.randint(0, 80, (1, 10))
    assert torch.equal(back(idx)[0], m(idx)[0]) and tok.itos == nano80.itos
    rc, out, _ = run(export_cmd, ["--ckpt", tmp_path / "c.pt", "--out", tmp_path / "q.bin",
                                  "--quant", "q8_0", "--group-size", "16"], capsys)
    assert rc == 0 and "q8_0" in out and "group size 16" in out
    back, _ = load_bin(tmp_path / "q.bin")
    assert torch.equal(back(idx)[0], emulate_q8_0(m, 16)(idx)[0])


def test_export_full_attention_picks_the_extension(nano80, tmp_path, capsys):
    save_ckpt(tmp_path / "c.pt", tiny(is_causal=False), nano80)
    rc, out, _ = run(export_cmd, ["--ckpt", tmp_path / "c.pt", "--out", tmp_path / "f.bin"], capsys)
    assert rc == 0 and "layout 2026.101" in out and "full attention" in out
    assert not load_bin(tmp_path / "f.bin")[0].config.is_causal
    rc, _, err = run(export_cmd, ["--ckpt", tmp_path / "c.pt", "--out", tmp_path / "g.bin",
                                  "--layout", "2026.1"], capsys)
    assert rc == 1 and "2026.101" in err and not (tmp_path / "g.bin").exists()


def test_export_lora_checkpoint(nano80, tmp_path, capsys):
    m = attach_lora(tiny(), rank=2, alpha=4)
    with torch.no_grad():
        for layer in m.layers:
            layer.wk.lora_B.normal_(0, 0.3)
            layer.wo.lora_B.normal_(0, 0.3)
    save_ckpt(tmp_path / "c.pt", m, nano80, lora={"rank": 2, "alpha": 4, "dropout": 0.0})
    idx = torch.randint(0, 80, (1, 10))
    want = m(idx)[0]
    rc, out, _ = run(export_cmd, ["--ckpt", tmp_path / "c.pt", "--out", tmp_path / "base.bin",
                                  "--lora-out", tmp_path / "lora.bin"], capsys)
    assert rc == 0 and "2024.10" in out
    base, _ = load_bin(tmp_path / "base.bin")
    assert not torch.allclose(base(idx)[0], want, atol=1e-4)
    load_lora_bin(base, tmp_path / "lora.bin")
    assert torch.equal(base(idx)[0], want)
    # without --lora-out the adapters are merged into the weights
    rc, out, _ = run(export_cmd, ["--ckpt", tmp_path / "c.pt", "--out", tmp_path / "merged.bin"], capsys)
    assert rc == 0 and "merged" in out
    merged, _ = load_bin(tmp_path / "merged.bin")
    assert torch.allclose(merged(idx)[0], want, atol=1e-5)


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["--ckpt", "missing.pt"], "not found"),
        (["--ckpt", "{junk}"], "not a readable checkpoint"),
        (["--ckpt", "{ckpt}", "--group-size", "16"], "q8_0 only"),
        (["--ckpt", "{ckpt}", "--quant", "q8_0", "--group-size", "5"], "does not divide"),
        (["--ckpt", "{ckpt}", "--lora-out", "x.bin"], "no LoRA"),
        (["--ckpt", "{sort6}"], "already exported"),  # a .bin model given as the checkpoint
    ],
)
def test_export_errors_are_one_line(nano80, shared_file, tmp_path, capsys, extra, msg):
    save_ckpt(tmp_path / "c.pt", tiny(), nano80)
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 10)
    sub = {"{ckpt}": str(tmp_path / "c.pt"), "{junk}": str(tmp_path / "junk.pt"),
           "{sort6}": str(shared_file("fixtures/sort6_f32.bin"))}
    rc, _, err = run(export_cmd, [sub.get(a, a) for a in extra] + ["--out", tmp_path / "o.bin"], capsys)
    assert rc == 1 and err.startswith("error: ") and msg in err and "Traceback" not in err
    assert err.count("\n") == 1 and "weights_only" not in err  # not PyTorch's advice to load unsafely


def lora_ckpt(tmp_path, nano80) -> Path:
    m = attach_lora(tiny(), rank=2, alpha=4)
    save_ckpt(tmp_path / "c.pt", m, nano80, lora={"rank": 2, "alpha": 4, "dropout": 0.0})
    return tmp_path / "c.pt"


@pytest.mark.parametrize("opts", [["--out", "{ckpt}"], ["--out", "b.bin", "--lora-out", "{ckpt}"],
                                  ["--out", "{ckpt_other_spelling}"], ["--out", "{link}"],
                                  ["--out", "x.bin", "--lora-out", "x.bin"],
                                  ["--out", "x.bin", "--lora-out", "sub/../x.bin"]])
def test_export_refuses_to_overwrite_its_input_or_itself(nano80, tmp_path, capsys, monkeypatch, opts):
    ckpt = lora_ckpt(tmp_path, nano80)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.pt").symlink_to(ckpt)
    before = ckpt.read_bytes()
    monkeypatch.chdir(tmp_path)
    sub = {"{ckpt}": ckpt, "{ckpt_other_spelling}": "sub/../c.pt", "{link}": "link.pt"}
    rc, out, err = run(export_cmd, ["--ckpt", ckpt] + [sub.get(a, a) for a in opts], capsys)
    assert rc == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "checkpoint itself" in err or "same file" in err
    assert ckpt.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "link.pt", "sub"]  # nothing written


@pytest.mark.parametrize(
    "opts, msg",
    [
        (["--quant", "q8_0", "--group-size", "7"], "does not divide"),  # found by the base export
        (["--layout", "2026.1"], "2026.101"),  # full attention: the base export refuses 2026.1
        (["--out", "{tmp}/nodir9/b.bin"], "does not exist"),
        (["--out", "{tmp}/sub"], "directory"),
        (["--lora-out", "{tmp}/nodir9/la.bin"], "does not exist"),
    ],
)
def test_export_failure_writes_nothing(nano80, tmp_path, capsys, opts, msg):
    m = attach_lora(tiny(is_causal=False), rank=2, alpha=4)
    save_ckpt(tmp_path / "c.pt", m, nano80, lora={"rank": 2, "alpha": 4, "dropout": 0.0})
    (tmp_path / "sub").mkdir()
    (tmp_path / "la.bin").write_bytes(b"an older LoRA")  # an existing output stays as it was
    argv = ["--ckpt", tmp_path / "c.pt", "--out", tmp_path / "b.bin", "--lora-out", tmp_path / "la.bin"] + opts
    rc, out, err = run(export_cmd, [str(a).replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert rc == 1 and err.startswith("error: ") and msg in err and out == "", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "la.bin", "sub"]  # no temporary left
    assert (tmp_path / "la.bin").read_bytes() == b"an older LoRA" and not any((tmp_path / "sub").iterdir())


@pytest.mark.parametrize("lora_out", [False, True])
def test_export_refuses_non_finite_weights(nano80, tmp_path, capsys, lora_out):
    m = attach_lora(tiny(), rank=2, alpha=4)
    with torch.no_grad():
        m.layers[1].w2.weight[3, 5] = float("nan")  # a run that diverged
    save_ckpt(tmp_path / "c.pt", m, nano80, lora={"rank": 2, "alpha": 4, "dropout": 0.0})
    extra = ["--lora-out", tmp_path / "la.bin"] if lora_out else []
    rc, _, err = run(export_cmd, ["--ckpt", tmp_path / "c.pt", "--out", tmp_path / "b.bin"] + extra, capsys)
    assert rc == 1 and err.startswith("error: ") and err.count("\n") == 1
    assert "layers.1.w2.weight" in err and "non-finite" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.skipif(sys.platform == "win32", reason="no pid probe there: nothing is removed")
def test_export_removes_what_a_killed_export_left(nano80, tmp_path, capsys):
    save_ckpt(tmp_path / "c.pt", tiny(), nano80)
    dead = dead_pid()
    stale = tmp_path / f".f.bin.{dead}.export.tmp"
    kept = [f".f.bin.{os.getppid()}.export.tmp",  # a live export's (the test's parent process)
            f".g.bin.{dead}.export.tmp",  # another destination's
            f".f.bin.{dead}.export.tmp.bak", f".f.bin.x{dead}.export.tmp", f"f.bin.{dead}.export.tmp",
            f".f.bin.{dead}.tmp"]  # not names export makes
    for name in [stale.name] + kept:
        (tmp_path / name).write_bytes(b"half a model")
    rc, out, _ = run(export_cmd, ["--ckpt", tmp_path / "c.pt", "--out", tmp_path / "f.bin"], capsys)
    assert rc == 0 and f"note: removed {stale}: left by an export that was interrupted (pid {dead})" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["c.pt", "f.bin"])
    load_bin(tmp_path / "f.bin")
