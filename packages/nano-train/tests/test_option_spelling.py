"""The commands' long options may be typed with "-" or "_" between words, whichever style a
command was written in (prepare: --out_dir; sample and export: --top-p, --lora-out), as the
training keys may (--max-iters=100)."""

import argparse
import json

import pytest

from nano_train import either_spelling, prepare, sample


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("--out_dir")
    p.add_argument("--top-p", type=float)
    sub = p.add_subparsers(dest="kind")
    sub.add_parser("go").add_argument("--chunk_tokens", type=int)
    return p


@pytest.mark.parametrize("argv, want", [
    (["--out-dir", "d", "--top_p=0.5"], ["--out_dir", "d", "--top-p=0.5"]),
    (["go", "--chunk-tokens", "4"], ["go", "--chunk_tokens", "4"]),  # a subcommand's option
    (["--out", "d"], ["--out", "d"]),  # an abbreviation: argparse's to resolve, unambiguous as before
    (["--top-p", "1", "--", "--out-dir"], ["--top-p", "1", "--", "--out-dir"]),  # after "--": not options
    (["--nope-x", "-p", "--x_y"], ["--nope-x", "-p", "--x_y"]),  # unknown either way: argparse says so
])
def test_the_other_spelling_becomes_the_commands_own(argv, want):
    assert either_spelling(parser(), argv) == want


def test_parsing_after_it_reads_both_spellings_and_abbreviations():
    p = parser()
    args = p.parse_args(either_spelling(p, ["--out", "d", "--top_p", "0.5", "go", "--chunk-tokens", "4"]))
    assert (args.out_dir, args.top_p, args.chunk_tokens) == ("d", 0.5, 4)


def test_prepare_and_sample_take_the_other_spelling(tmp_path, shared_file, capsys):
    text = tmp_path / "t.txt"
    text.write_text("人的心理学。\n\n意识是什么。\n" * 50, encoding="utf-8")
    out = tmp_path / "d"
    assert prepare.main(["pretrain", "--tokenizer", str(shared_file("data/tokenizer_4096.json")), "--out-dir",
                         str(out), "--val-fraction", "0", "--chunk-tokens=64", "--quiet", str(text)]) == 0
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["split"]["val_fraction"] == 0 and meta["split"]["chunk_tokens"] == 64
    capsys.readouterr()
    fixture = str(shared_file("fixtures/psycho_230k_1214_q80.bin"))
    assert sample.main(["-m", fixture, "-p", "人的", "-t", "0", "--max_tokens", "5"]) == 0
    five = capsys.readouterr().out
    assert sample.main(["-m", fixture, "-p", "人的", "-t", "0", "--max-tokens", "5"]) == 0
    assert capsys.readouterr().out == five and five.strip()
