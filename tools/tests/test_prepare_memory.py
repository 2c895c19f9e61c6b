"""tools/bench/prepare_memory.py: a small real run (both children, their token counts, the JSON
record), its option checks before any work, and a failing child as one line."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def bench(load_tool):
    return load_tool("bench/prepare_memory.py")


def outcome(call, capsys) -> tuple[int, str, str]:
    try:
        code = call()
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.mark.parametrize("text, vocab", [("pretrain_psycho.txt", "tokenizer_4096.json"),  # one line
                                         ("pretrain_amateur_radio.txt", "tokenizer_16384_v2.json")])  # paragraphs
def test_a_small_run_prepares_the_corpus_both_ways_and_agrees(bench, tmp_path, shared_file, capsys, text, vocab):
    out_json = tmp_path / "r.json"
    source = shared_file(f"data/{text}")
    code, out, err = outcome(lambda: bench.main(["--size-mb", "4", "--work", str(tmp_path), "--json", str(out_json),
                                                 "--text", str(source),
                                                 "--vocab", str(shared_file(f"data/{vocab}"))]), capsys)
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
def test_bad_options_are_one_line_before_any_work(bench, tmp_path, monkeypatch, capsys, argv, start):
    (tmp_path / "text.txt").write_text("不是词表\n", encoding="utf-8")
    monkeypatch.setattr(bench, "write_corpus", lambda *a: pytest.fail("the work started"))
    code, out, err = outcome(lambda: bench.main([a.format(tmp=tmp_path) for a in argv]), capsys)
    assert code == 2 and out == ""
    assert err.startswith(start.format(tmp=tmp_path)) and err.count("\n") == 1, err


def test_a_failing_child_is_one_line_and_status_1(bench, tmp_path, capsys):
    import sys

    code, _, err = outcome(lambda: bench.measured("the peer (whole text)", [
        sys.executable, "-c", "raise MemoryError('cannot allocate 8 GB')"], tmp_path / "log"), capsys)
    assert code == 1
    assert err == "error: the peer (whole text) failed (exit status 1): MemoryError: cannot allocate 8 GB\n"
