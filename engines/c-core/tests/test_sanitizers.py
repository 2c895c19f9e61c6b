"""The whole C test suite under AddressSanitizer + UndefinedBehaviorSanitizer, LeakSanitizer
on the programs, and libFuzzer on the loader, the tokenizer and nano-wss's JSON
reader and request validator.

* The suite re-runs in a subprocess against build-san/libnano.so (clang,
  -fsanitize=address,undefined -fno-sanitize-recover=all, so any UBSan report
  aborts). Python itself is not instrumented, so the ASan runtime is preloaded
  (LD_PRELOAD) and leak detection is off there (CPython keeps memory until exit).
* Leaks are checked on the sanitizer-built `nano` program instead (LSan on by
  default): every command, the fixtures, the chat, bad files and bad arguments.
* Each libFuzzer target runs for NANO_FUZZ_SECONDS (default 20) seconds, seeded
  with the fixtures and with small files of every layout made by nano_format
  (fuzz_loader, fuzz_tokenizer), or with requests written here and the
  dictionary fuzz/wss.dict (fuzz_json, fuzz_protocol).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.outer_only

SAN_OPTIONS = {
    "ASAN_OPTIONS": "abort_on_error=0:halt_on_error=1:detect_leaks=1:strict_string_checks=1:"
                    "detect_stack_use_after_return=1:check_initialization_order=1",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
}
REPORT_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "SUMMARY: UndefinedBehavior")


def asan_runtime() -> str:
    res = subprocess.run(["clang", "-print-file-name=libclang_rt.asan-x86_64.so"], capture_output=True, text=True)
    path = res.stdout.strip()
    if res.returncode != 0 or not os.path.isfile(path):
        pytest.fail("the ASan runtime (libclang-rt-N-dev, N: clang's version) is missing: "
                    "python tools/setup/system_deps.py sanitize",
                    pytrace=False)
    return path


@pytest.fixture(scope="module")
def san_build(h):
    if shutil.which("clang") is None:
        pytest.fail("clang is missing: python tools/setup/system_deps.py sanitize", pytrace=False)
    h.make("test-programs", san=True)
    return h.CORE / "build-san"


def test_suite_under_asan_and_ubsan(san_build, h):
    env = dict(os.environ)
    env.update(SAN_OPTIONS)
    env["NANO_C_BUILD"] = "san"
    env["LD_PRELOAD"] = asan_runtime()
    # Python leaks by design at exit, and PyTorch's own allocators pair new/free differently.
    env["ASAN_OPTIONS"] = SAN_OPTIONS["ASAN_OPTIONS"].replace("detect_leaks=1", "detect_leaks=0") + \
        ":alloc_dealloc_mismatch=0:detect_stack_use_after_return=0"
    cmd = [sys.executable, "-m", "pytest", str(h.CORE / "tests"), "-q", "-x", "-p", "no:cacheprovider",
           "-m", "not outer_only", "-o", "addopts=--import-mode=importlib"]
    res = subprocess.run(cmd, cwd=h.REPO, env=env, capture_output=True, text=True, timeout=900)
    out = res.stdout + res.stderr
    tail = out[-6000:]
    assert res.returncode == 0, tail
    assert not any(m in out for m in REPORT_MARKERS), tail
    summary = [line for line in res.stdout.splitlines() if " passed" in line]
    print(f"under ASan+UBSan: {summary[-1] if summary else tail[-300:]}")
    assert summary and "failed" not in summary[-1]


def run_san(binary: Path, *args, input=None, expect=0):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env.update(SAN_OPTIONS)
    data = input.encode() if isinstance(input, str) else input
    res = subprocess.run([str(binary), *map(str, args)], input=data, capture_output=True, env=env, timeout=300)
    err = res.stderr.decode("utf-8", "replace")
    assert not any(m in err for m in REPORT_MARKERS), err[-4000:]
    assert res.returncode == expect, (args, res.returncode, err[-2000:])
    return res.stdout.decode("utf-8", "replace")


def test_programs_under_lsan(san_build, psycho_path, sort6_path, tmp_path, h):
    nano = san_build / "nano"
    assert run_san(nano, "seq2seq", "-m", sort6_path, "251212") == "112225\n"
    assert run_san(nano, "seq2seq", "-m", sort6_path, "-", input="251212\n\n" + "9" * 600 + "\n", expect=1) == "112225\n\n\n"
    run_san(nano, "info", psycho_path)
    run_san(nano, "run", "-m", psycho_path, "-p", "人的心理", "-n", "24", "-t", "0.8", "-k", "20", "--top-p", "0.9",
            "--min-p", "0.01", "-r", "1.2", "--threads", "2", "--profile")
    run_san(nano, "run", "-m", psycho_path, "-n", "8", "--ctx", "40", input="你是谁\n心理\n")
    run_san(nano, "run", "-m", psycho_path, "-p", "-", "--ids", "-n", "4", input="abc")
    # a system text joined to the prompt, and to each question of a chat
    run_san(nano, "run", "-m", psycho_path, "--instruct", "--system", "你是心理学家", "-p", "你是谁",
            "-n", "8")
    run_san(nano, "run", "-m", psycho_path, "--system", "你是心理学家", "-n", "4", "--ctx", "16",
            input="你是谁\n\n" + "心" * 20 + "\n心理\n", expect=1)
    run_san(nano, "bench", "-m", psycho_path, "-p", "8", "-n", "8")
    # a LoRA and an extended-layout model
    import nano_format as nf
    from nano_format.plan import lora_params

    model = tmp_path / "m.bin"
    model.write_bytes(h.model_bytes(seed=2, layout="2026.101", position=1, quant="q8_0", group_size=4))
    lc = nf.LoraConfig(rank=2, alpha=4, n_layer=2, n_embd=16, n_head=4, n_kv_head=2, n_hidden=32)
    lora = tmp_path / "l.bin"
    nf.write_lora(lora, lc, {p.name: np.ones(p.shape, np.float32) * 0.01 for p in lora_params(lc)})
    run_san(nano, "run", "-m", model, "-l", lora, "-p", "abc", "-n", "8")
    run_san(nano, "info", lora)
    # bad files and bad arguments take the error paths (exit 1 / 2) without leaking
    trunc = tmp_path / "t.bin"
    trunc.write_bytes(psycho_path.read_bytes()[:5000])
    for args in (("info", trunc), ("run", "-m", trunc, "-p", "x"), ("info", tmp_path / "missing.bin"),
                 ("run", "-m", psycho_path, "-l", trunc, "-p", "x")):
        run_san(nano, *args, expect=1)
    for args in (("run", "-m", psycho_path, "-t", "x"), ("bogus",), ("seq2seq", "-m", sort6_path),
                 ("run", "-m", psycho_path, "-p", ""),
                 ("run", "-m", psycho_path, "--system", "x", "-p", "y")):
        run_san(nano, *args, expect=2)
    # the prompt read from standard input, on its error paths (it once leaked there)
    run_san(nano, "run", "-m", psycho_path, "-p", "-", input="", expect=2)
    run_san(nano, "run", "-m", psycho_path, "-p", "-", "--ctx", "2", input="人的心理学是", expect=1)
    # a chat whose first question fails goes on; a full-attention model runs seq2seq
    run_san(nano, "run", "-m", psycho_path, "--ctx", "8", "-n", "2", input="心" * 20 + "\n你是谁\n", expect=1)
    full = tmp_path / "full.bin"
    full.write_bytes(h.model_bytes(seed=3, layout="2026.101", attention=1))
    run_san(nano, "run", "-m", full, "-p", "abc")
    run_san(nano, "run", "-m", full, input="abc\nba\n")
    # ... with a LoRA attached, or a missing one; a LoRA file as the seq2seq model
    run_san(nano, "run", "-m", full, "-l", lora, input="abc\n\nba\n")
    run_san(nano, "run", "-m", full, "-l", tmp_path / "missing.bin", "-p", "abc", expect=1)
    run_san(nano, "seq2seq", "-m", lora, "12", expect=1)
    # lines holding a NUL byte, NaN weights (refused at load), NaN logits (each line's error)
    assert run_san(nano, "seq2seq", "-m", sort6_path, "-", input=b"251212\n9\x0087\n", expect=1) == "112225\n\n"
    run_san(nano, "run", "-m", psycho_path, "-n", "2", input=b"\x00\n\n", expect=1)
    nan = bytearray(sort6_path.read_bytes())
    norm_final = next(t for t in nf.read(bytes(nan)).tensors if t.name == "norm_final")
    nan[norm_final.offset:norm_final.offset + 4] = np.array([np.nan], np.float32).tobytes()
    (tmp_path / "nan.bin").write_bytes(bytes(nan))
    run_san(nano, "seq2seq", "-m", tmp_path / "nan.bin", "12", expect=1)
    overflow = tmp_path / "overflow.bin"
    overflow.write_bytes(h.overflowing_model_bytes())
    run_san(nano, "seq2seq", "-m", overflow, "-", input="ab\n\nc\n", expect=1)


# ---------------------------------------------------------------------------
# libFuzzer


def loader_seeds(directory: Path, h, psycho_path, sort6_path) -> None:
    import nano_format as nf
    from nano_format.plan import lora_params

    directory.mkdir()
    (directory / "sort6.bin").write_bytes(sort6_path.read_bytes())
    (directory / "psycho_head.bin").write_bytes(psycho_path.read_bytes()[:60000])
    small = dict(block_size=4, n_layer=1, n_embd=8, n_head=2, n_kv_head=1, n_hidden=8, vocab=h.make_vocab(10))
    (directory / "f32.bin").write_bytes(h.model_bytes(**small))
    (directory / "q8.bin").write_bytes(h.model_bytes(quant="q8_0", group_size=4, tie_embeddings=False, **small))
    (directory / "ext.bin").write_bytes(h.model_bytes(layout="2026.101", attention=1, position=1, **small))
    lc = nf.LoraConfig(rank=1, alpha=2, n_layer=1, n_embd=8, n_head=2, n_kv_head=1, n_hidden=8)
    (directory / "lora.bin").write_bytes(nf.to_bytes(lc, {p.name: np.ones(p.shape, np.float32)
                                                          for p in lora_params(lc)}))


def tokenizer_seeds(directory: Path, h) -> None:
    import nano_format as nf

    directory.mkdir()
    section = nf.encode_tokenizer_section(h.make_vocab(24))
    (directory / "section").write_bytes(b"\x01" + section)
    (directory / "text").write_bytes(b"\x00" + "abc 世界 <|eos|> ab\xe9".encode())
    (directory / "bad_utf8").write_bytes(b"\x00a\xc0\xaf\xed\xa0\x80\xf4\x90\x80\x80b")


# nano-wss's requests: one per seed file, for fuzz_json and fuzz_protocol alike
# (both read one WebSocket text message). Valid requests of every type with
# every field, escapes of every kind, edge numbers, and the malformed shapes
# the server answers with each error code.
WSS_SEEDS = [
    '{"type":"generate","id":"q1","prompt":"人的心理","temperature":0,"max_tokens":4}',
    '{"type":"generate","id":"q3","prompt":"精神","mode":"instruct","temperature":0.8,"top_k":40,"top_p":0.9,'
    '"min_p":0.05,"repetition_penalty":1.3,"seed":18446744073709551615,"max_tokens":0}',
    '{"type":"generate","id":"y","prompt":"你是谁","mode":"instruct","system":"你是\\u4eba\\n","temperature":0}',
    '{"type":"generate","prompt":"","mode":"instruct","system":""}',
    '{"type":"generate","prompt":"x","system":"y"}',
    '{"type":"generate","prompt":"x","mode":"instruct","system":"a\\u0000b"}',
    '{"type":"cancel","id":"q3"}',
    '{"type":"cancel"}',
    '{"type":"info","id":null}',
    ' {"type" : "seq2seq" , "input" : "251212"}\r\n',
    '{"type":"\\u0069nfo","id":"\\ud83d\\ude00\\n\\t\\"\\\\\\/\\b\\f\\r \\u00e9"}',
    '{"type":"generate","prompt":"a\\u0000b"}',
    '{"type":"generate","prompt":"x","temperature":1e39,"top_p":1E-50,"min_p":-0.0,"seed":-1}',
    '{"type":"generate","prompt":"x","top_k":2147483648,"max_tokens":4294967296,"seed":1.0}',
    '{"type":"dance","id":"' + "x" * 129 + '"}',
    '{"type":"info","type":"info"}',
    "{" + ",".join(f'"k{i}":{i}' for i in range(40)) + "}",
    '{"a":' * 40 + "1" + "}" * 40,
    "[" * 33 + "]" * 33,
    '{"a":[1,-2.5e-3,true,false,null,{"b":[]},"c"],"" :{}}',
    '{"type":"info","id":"\\ud800"}',
    '{"type":"info"} x',
    "",
]


def wss_seeds(directory: Path) -> None:
    directory.mkdir()
    for i, text in enumerate(WSS_SEEDS):
        (directory / f"seed{i:02d}").write_bytes(text.encode())
    (directory / "bad_utf8").write_bytes(b'{"type":"info","id":"\xff\xc0\xaf\xed\xa0\x80\xf4\x90\x80\x80"}')
    # found by fuzz_json: its first 8 bytes are the double -1.79768e308, byte 8 asks nj_double
    # for 1 significant digit, and "-2e+308" read back as -infinity (json.c now keeps 17 digits then)
    (directory / "crash_double_rounds_to_infinity").write_bytes(b"\xff\xef\xff\xf0false\\b,")


def test_fuzzers(h, tmp_path, psycho_path, sort6_path):
    if shutil.which("clang") is None:
        pytest.fail("clang is missing: python tools/setup/system_deps.py sanitize", pytrace=False)
    h.make("fuzz")
    seconds = int(os.environ.get("NANO_FUZZ_SECONDS", "20"))
    loader_seeds(tmp_path / "loader", h, psycho_path, sort6_path)
    tokenizer_seeds(tmp_path / "tokenizer", h)
    wss_seeds(tmp_path / "wss")
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env.update(SAN_OPTIONS)
    runs = {}
    wss_dict = f"-dict={h.CORE / 'fuzz' / 'wss.dict'}"
    for name, corpus, max_len, extra in (("fuzz_loader", "loader", 65536, []),
                                         ("fuzz_tokenizer", "tokenizer", 4096, []),
                                         ("fuzz_json", "wss", 4096, [wss_dict]),
                                         ("fuzz_protocol", "wss", 4096, [wss_dict])):
        work = tmp_path / f"{name}_out"
        work.mkdir()
        cmd = [str(h.CORE / "build-fuzz" / name), f"-max_total_time={seconds}", f"-max_len={max_len}",
               "-rss_limit_mb=2048", "-timeout=10", f"-artifact_prefix={work}/", "-print_final_stats=1",
               *extra, str(work), str(tmp_path / corpus)]
        # output to a file, not a pipe: a pipe read only after the previous target has
        # finished fills up, and a fuzzer blocked writing its progress stops fuzzing
        log = open(tmp_path / f"{name}.log", "w+")
        runs[name] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    for name, (proc, log) in runs.items():
        proc.wait(timeout=seconds + 120)
        log.seek(0)
        out = log.read()
        log.close()
        crashes = list((tmp_path / f"{name}_out").glob("crash-*")) + list((tmp_path / f"{name}_out").glob("leak-*"))
        assert proc.returncode == 0 and not crashes, out[-4000:]
        execs = [line for line in out.splitlines() if "stat::number_of_executed_units" in line]
        print(f"{name}: {execs[-1].split(':')[-1].strip() if execs else '?'} runs in {seconds} s, no crash")
        assert execs and int(execs[-1].split(":")[-1]) > 100
