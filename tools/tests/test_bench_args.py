"""The benchmarks' options are checked before any work: a bad one is one `error: ...` line
and exit status 2, a failure of the system one line and 1, never a traceback. These run
without the peers (transformers, llama-cpp-python live in the bench environment only):
the checks come before the peer is imported, or the peer is stood in for."""

from __future__ import annotations

import json
import sys
import types

import pytest


def status(call, capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of call(), whether it returns or exits; never a traceback."""
    try:
        code = call()
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def one_error_line(err: str, start: str) -> None:
    assert err.startswith(start) and err.count("\n") == 1, err


# ---------------------------------------------------------------------------
# tokenizer_speed.py


@pytest.fixture(scope="module")
def tokenizer_speed(load_tool):
    return load_tool("bench/tokenizer_speed.py")


@pytest.fixture
def files(tmp_path, shared_file):
    """name -> path: a real vocabulary, a small text, a file that is not UTF-8, one that
    is not a vocabulary, an empty one."""
    (tmp_path / "small.txt").write_text("hello, tokenizer\n", encoding="utf-8")
    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe not UTF-8\n")
    (tmp_path / "empty.txt").write_bytes(b"")
    return {"vocab": shared_file("data/tokenizer_4096.json"), "small": tmp_path / "small.txt",
            "bad": tmp_path / "bad.txt", "empty": tmp_path / "empty.txt", "dir": tmp_path,
            "missing": tmp_path / "missing.txt"}


@pytest.mark.parametrize("argv, start", [
    (["--runs", "0"], "error: --runs must be at least 1, got 0"),  # was StatisticsError
    (["--peer-runs", "-1"], "error: --peer-runs must be at least 1, got -1"),
    (["--chunk-chars", "0"], "error: --chunk-chars must be at least 1, got 0"),  # was CalledProcessError in a child
    (["--stream-mb", "-1"], "error: --stream-mb must be a number >= 0"),
    (["--stream-mb", "nan"], "error: --stream-mb must be a number >= 0"),
    (["--text", "{bad}"], "error: --text {bad}: not UTF-8 text (invalid start byte at byte 3)"),
    (["--text", "{empty}"], "error: --text {empty}: empty; nothing to encode"),
    (["--text", "{missing}"], "error: --text {missing}: not found"),  # was `tokenizer_speed: ...`, exit 1
    (["--text", "{dir}"], "error: --text {dir}: a directory, not a file"),  # was "not found"
    (["--vocab", "{small}"], "error: --vocab {small}: not a tokenizer JSON file"),  # was TokenizerError
    (["--vocab", "{missing}"], "error: --vocab {missing}: not found"),
])
def test_tokenizer_speed_refuses_bad_options(tokenizer_speed, files, monkeypatch, capsys, argv, start):
    base = ["--vocab", str(files["vocab"]), "--text", str(files["small"]), "--stream-mb", "0"]
    argv = [a.format(**files) for a in argv]
    monkeypatch.setattr(tokenizer_speed, "compare", lambda *a: pytest.fail("the timing started"))
    monkeypatch.setattr(sys, "argv", ["tokenizer_speed.py", *base, *argv])  # main() read sys.argv before
    code, out, err = status(tokenizer_speed.main, capsys)
    assert code == 2 and out == ""
    one_error_line(err, start.format(**files))


def test_a_failing_stream_child_is_one_line(tokenizer_speed, files, capsys):
    code, _, err = status(lambda: tokenizer_speed.run_stream_child(files["vocab"], files["small"], 0.01, 0), capsys)
    assert code == 1
    one_error_line(err, "error: the streaming child (0.01 MB, chunk_chars=0) failed: ValueError: chunk_chars")


# ---------------------------------------------------------------------------
# engine_speed.py


@pytest.fixture
def engine_speed(load_tool, monkeypatch):
    module = load_tool("bench/engine_speed.py")
    monkeypatch.setattr(module, "build_nano", lambda: pytest.fail("the engine was built before the checks"))
    return module


@pytest.fixture
def no_llama(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError


@pytest.fixture
def fake_llama(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", types.ModuleType("llama_cpp"))


@pytest.mark.parametrize("argv, start", [
    (["--threads", "1,x"], "error: --threads '1,x': 'x' is not a whole number"),  # was ValueError
    (["--threads", ","], "error: --threads ',' names nothing"),
    (["--threads", "0"], "error: --threads must be at least 1, got 0"),
    (["--threads", "1,99999"], "error: --threads must be at most 1024, got 99999"),  # was a segfault
    (["--shapes", ","], "error: --shapes ',' names nothing"),  # was ValueError from min()
    (["--shapes", "7b"], "error: --shapes: unknown shape '7b'"),
    (["--quants", ","], "error: --quants ',' names nothing"),
    (["--rounds", "0"], "error: --rounds must be at least 1, got 0"),
    (["--warmup", "-1"], "error: --warmup must be at least 0, got -1"),
    (["--prompt", "500", "--decode", "100"], "error: --prompt + --decode (500 + 100) must fit the block size (512)"),
    (["--group", "5"], "error: --group 5: 5 does not divide n_embd = 512"),
    (["--nano-lib", "{tmp}/missing.so"], "error: --nano-lib {tmp}/missing.so: not found"),  # was OSError
    (["--nano-lib", "{tmp}"], "error: --nano-lib {tmp}: a directory"),
    (["--json", "{tmp}/no/out.json"], "error: --json {tmp}/no/out.json: cannot write there"),
    (["--json", "{tmp}"], "error: --json {tmp}: exists and is not a regular file"),
])
def test_engine_speed_refuses_bad_options(engine_speed, no_llama, tmp_path, capsys, argv, start):
    argv = [a.format(tmp=tmp_path) for a in argv]
    code, out, err = status(lambda: engine_speed.main(argv), capsys)
    assert code == 2 and out == ""
    one_error_line(err, start.format(tmp=tmp_path))


def test_engine_speed_without_llama_cpp_says_how_to_get_it(engine_speed, no_llama, capsys):
    code, _, err = status(lambda: engine_speed.main([]), capsys)  # nothing built first
    assert code == 2
    one_error_line(err, "error: the peer needs llama-cpp-python")
    assert "hatch env create bench" in err


def test_engine_speed_without_a_c_compiler(engine_speed, fake_llama, tmp_path, monkeypatch, capsys):
    lib = tmp_path / "libnano.so"
    lib.write_bytes(b"")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    code, _, err = status(lambda: engine_speed.main(["--nano-lib", str(lib)]), capsys)  # was TypeError
    assert code == 1
    one_error_line(err, "error: no C compiler (cc, gcc or clang) on PATH; install one "
                        "(python tools/setup/system_deps.py build)")


def test_engine_speed_a_nano_lib_that_is_no_library(engine_speed, fake_llama, tmp_path, capsys):
    lib = tmp_path / "libnano.so"
    lib.write_text("not a shared library\n")
    code, _, err = status(lambda: engine_speed.main(["--nano-lib", str(lib)]), capsys)  # was OSError
    assert code == 2
    one_error_line(err, f"error: --nano-lib {lib}: cannot load it")


def test_engine_speed_a_failing_build_shows_its_output_then_one_line(load_tool, tmp_path, monkeypatch, capfd):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    make = bin_dir / "make"
    make.write_text("#!/bin/sh\necho 'src/x.c:1: error: expected ;' >&2\necho 'make: *** [lib] Error 1' >&2\nexit 2\n")
    make.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(SystemExit) as exit_:
        load_tool("bench/engine_speed.py").build_nano()  # was: sys.exit with make's output and no `error:` line
    assert exit_.value.code == 1
    err = capfd.readouterr().err
    assert err.endswith("src/x.c:1: error: expected ;\nmake: *** [lib] Error 1\n"
                        "error: make -C engines/c-core lib failed (exit status 2); its output is above\n"), err
    make.unlink()
    with pytest.raises(SystemExit) as exit_:
        load_tool("bench/engine_speed.py").build_nano()  # no make at all: was FileNotFoundError
    assert exit_.value.code == 1
    assert capfd.readouterr().err == ("error: make -C engines/c-core lib: cannot run make: No such file or directory "
                                      "(python tools/setup/system_deps.py build installs the build tools)\n")


# ---------------------------------------------------------------------------
# prepare_memory.py: a small real run (both children, their token counts, the JSON record),
# its option checks before any work, a failing child as one line


@pytest.fixture
def prepare_memory(load_tool):
    return load_tool("bench/prepare_memory.py")


@pytest.mark.parametrize("text, vocab", [("pretrain_psycho.txt", "tokenizer_4096.json"),  # one line
                                         ("pretrain_amateur_radio.txt", "tokenizer_16384_v2.json")])  # paragraphs
def test_prepare_memory_a_small_run_prepares_the_corpus_both_ways_and_agrees(prepare_memory, tmp_path, shared_file,
                                                                           capsys, text, vocab):
    out_json = tmp_path / "r.json"
    source = shared_file(f"data/{text}")
    argv = ["--size-mb", "4", "--work", str(tmp_path), "--json", str(out_json), "--text", str(source),
            "--vocab", str(shared_file(f"data/{vocab}"))]
    code, out, err = status(lambda: prepare_memory.main(argv), capsys)
    assert code == 0, out + err
    record = json.loads(out_json.read_text(encoding="utf-8"))
    # the text (2-3 MB) twice; both prepared all of it, blank lines included: the same count
    assert record["corpus_mb"] == pytest.approx(2 * source.stat().st_size / 1e6)
    assert record["ours_tokens"] == record["peer_tokens"] > 1_000_000
    assert record["ours_peak_rss_mb"] > 0 and record["peer_peak_rss_mb"] > 0
    assert "same token count: yes" in out
    assert list(tmp_path.iterdir()) == [out_json]  # the work folder it made is gone


@pytest.mark.parametrize("argv, start", [
    (["--size-mb", "0"], "error: --size-mb must be a number > 0, got 0.0"),
    (["--size-mb", "nan"], "error: --size-mb must be a number > 0, got nan"),
    (["--work", "{tmp}/missing"], "error: --work {tmp}/missing: not an existing folder"),
    (["--text", "{tmp}/missing.txt"], "error: --text {tmp}/missing.txt: not found"),
    (["--vocab", "{tmp}/text.txt"], "error: --vocab {tmp}/text.txt: not a tokenizer JSON file"),
    (["--json", "{tmp}/no/out.json"], "error: --json {tmp}/no/out.json: cannot write there"),
])
def test_prepare_memory_refuses_bad_options_before_any_work(prepare_memory, tmp_path, monkeypatch, capsys, argv, start):
    (tmp_path / "text.txt").write_text("不是词表\n", encoding="utf-8")
    monkeypatch.setattr(prepare_memory, "write_corpus", lambda *a: pytest.fail("the work started"))
    code, out, err = status(lambda: prepare_memory.main([a.format(tmp=tmp_path) for a in argv]), capsys)
    assert code == 2 and out == ""
    one_error_line(err, start.format(tmp=tmp_path))


def test_prepare_memory_a_failing_child_is_one_line_and_status_1(prepare_memory, tmp_path, capsys):
    code, _, err = status(lambda: prepare_memory.measured("the peer (whole text)", [
        sys.executable, "-c", "raise MemoryError('cannot allocate 8 GB')"], tmp_path / "log"), capsys)
    assert code == 1
    assert err == "error: the peer (whole text) failed (exit status 1): MemoryError: cannot allocate 8 GB\n"


def test_a_tool_script_may_define_a_dataclass(tmp_path, load_tool):
    """The loader runs a script as `python SCRIPT` would, registered under its name while it
    runs: a dataclass with postponed annotations looks its module up there (was: an error on
    import, so tool scripts had to avoid dataclasses)."""
    script = tmp_path / "with_dataclass.py"
    script.write_text("from __future__ import annotations\nfrom dataclasses import dataclass\n\n\n"
                      "@dataclass\nclass Point:\n    x: int = 1\n", encoding="utf-8")
    assert load_tool(str(script)).Point().x == 1
