"""The command line, run as a user would: `python -m nano_format ...` in a subprocess."""

import json
import subprocess
import sys

import numpy as np

import nano_format as nf
from nano_format.spec import Attention, QuantType


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nano_format", *map(str, args)], capture_output=True,
                          text=True, encoding="utf-8", cwd=cwd, timeout=120)


def test_help():
    r = run("--help")
    assert r.returncode == 0 and "info" in r.stdout and "validate" in r.stdout and "convert" in r.stdout
    r = run("convert", "--help")
    assert r.returncode == 0 and "--attention" in r.stdout and "2026.101" in r.stdout
    r = run()
    assert r.returncode == 2 and "usage" in r.stderr


def test_info_text(psycho_path):
    r = run("info", psycho_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for fragment in ("layout      2025.12", "quant code 10 means Q8_0", "q8_0 (stored code 0x0A), group size 16",
                     "0x14  config length        32", "vocab_size 4096", "n_kv_head 2", "implied",
                     "trie, 4,096 tokens", "specials  12: '<|padding|>'=0", "longest",
                     "tok_embd     q8_0  4096 x 32            0xCBC4      163,840", "wq.7", "rope_sin",
                     "= 355,268 bytes"):
        assert fragment in out, fragment


def test_info_json(sort6_path):
    r = run("info", sort6_path, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["layout"]["name"] == "2025.12" and d["quant"] == "f32" and d["file_size"] == 49452
    assert d["config"]["vocab_size"] == 80 and d["config"]["attention"] == "causal"
    assert d["tokenizer"]["size"] == 80 and len(d["tokenizer"]["specials"]) == 7
    assert d["totals"]["file"] == 49452
    assert 256 + d["tokenizer"]["nbytes"] + sum(t["nbytes"] for t in d["tensors"]) == 49452
    assert d["tensors"][4] == {"name": "wq", "dtype": "f32", "shape": [2, 32, 32], "offset": 0x306C,
                               "nbytes": 8192}


def test_validate(psycho_path, sort6_path, sort6_bytes, tmp_path):
    r = run("validate", psycho_path, sort6_path)
    assert r.returncode == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("OK") for line in lines)
    assert "2025.12 nano q8_0 (group 16), 8 layers" in lines[0]

    bad = tmp_path / "bad.bin"
    bad.write_bytes(sort6_bytes[:-10])
    r = run("validate", sort6_path, bad, tmp_path / "missing.bin")
    assert r.returncode == 1
    assert r.stdout.count("OK") == 1
    assert f"FAIL {bad}: parameters at offset 0xC122: need 47936 bytes" in r.stderr
    assert "missing.bin: No such file" in r.stderr
    assert "Traceback" not in r.stderr


def test_info_on_a_bad_file_is_one_line(tmp_path):
    bad = tmp_path / "text.bin"
    bad.write_text("hello world, not a model" * 20)
    r = run("info", bad)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"nano-format: error: {bad}: magic at offset 0x0: expected b'S4DBMLRU', " \
                               f"found b'hello wo': not a Nano model file"


def test_convert_layouts_and_quantization(sort6_path, psycho_path, tmp_path):
    ext = tmp_path / "sort6_101.bin"
    r = run("convert", sort6_path, ext, "--layout", "2026.101", "--attention", "full")
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "2026.101" in r.stdout
    with nf.read(ext) as m:
        assert m.config.attention == Attention.FULL and m.layout.name == "2026.101"

    back = tmp_path / "sort6_2026.bin"
    r = run("convert", ext, back, "--layout", "2026.1")  # full attention cannot be said in 2026.1
    assert r.returncode == 1 and "2026.101" in r.stderr and "Traceback" not in r.stderr
    assert not back.exists()

    f32 = tmp_path / "psycho_f32.bin"
    assert run("convert", psycho_path, f32, "--quant", "f32").returncode == 0
    q8 = tmp_path / "psycho_q8.bin"
    assert run("convert", f32, q8, "--quant", "q8_0", "--group-size", "16").returncode == 0
    with nf.read(psycho_path) as a, nf.read(f32) as b, nf.read(q8) as c:
        assert b.quant == QuantType.F32 and b.layout.name == "2026.1"
        assert np.array_equal(b.tensor("w1"), a.tensor("w1"))  # dequantized exactly
        assert c.quant == QuantType.Q8_0 and c.group_size == 16
        assert q8.read_bytes()[256:] == psycho_path.read_bytes()[256:]

    r = run("convert", f32, tmp_path / "x.bin", "--quant", "q8_0", "--group-size", "12")
    assert r.returncode == 2 and "--group-size 12 does not divide n_embd = 32" in r.stderr

    theta = tmp_path / "theta.bin"
    r = run("convert", sort6_path, theta, "--layout", "2026.101", "--rope-theta", "500000", "--norm-eps", "1e-6")
    assert r.returncode == 0 and "recomputed" in r.stderr
    with nf.read(theta) as m:
        assert m.config.rope_theta == 500000.0 and m.config.norm_eps == 1e-6
        assert np.array_equal(m.tensor("rope_sin"), nf.rope_tables(6, 8, 500000.0)[1])

    r = run("convert", sort6_path, tmp_path / "y.bin", "--position", "learned")
    assert r.returncode == 1 and "RoPE tables" in r.stderr


def test_convert_lora(build, tmp_path):
    config = nf.LoraConfig(rank=2, alpha=4, n_layer=1, n_embd=8, n_head=2, n_hidden=8)
    src = tmp_path / "lora.bin"
    nf.write_lora(src, config, build.random_tensors(config))
    out = tmp_path / "lora2.bin"
    r = run("convert", src, out)
    assert r.returncode == 0 and out.read_bytes() == src.read_bytes()
    r = run("convert", src, out, "--quant", "q8_0")
    assert r.returncode == 2 and "LoRA" in r.stderr


def test_q4k_file_info_works_validate_fails(sort6_bytes, tmp_path):
    m = nf.read(sort6_bytes)
    data = bytearray(nf.to_bytes(m.config, m.weights(), m.tokens))
    data[0x3C] = 0x42  # the Q4K code: recognised, parameters not loadable
    path = tmp_path / "q4k.bin"
    path.write_bytes(bytes(data))
    r = run("info", path)
    assert r.returncode == 0 and "parameters cannot be loaded" in r.stdout and "q4k" in r.stdout
    r = run("validate", path)
    assert r.returncode == 1 and "Q4K parameters cannot be loaded" in r.stderr
    r = run("convert", path, tmp_path / "out.bin")
    assert r.returncode == 1 and "Q4K" in r.stderr and "Traceback" not in r.stderr


def test_convert_usage_errors(sort6_path, tmp_path):
    r = run("convert", sort6_path, tmp_path / "o.bin", "--quant", "f32", "--group-size", "8")
    assert r.returncode == 2 and "--group-size applies to q8_0" in r.stderr
    r = run("convert", sort6_path, tmp_path / "o.bin", "--quant", "q4")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = run("convert", sort6_path, tmp_path / "o.bin", "--norm-eps", "-1")
    assert r.returncode == 2 and "positive" in r.stderr
