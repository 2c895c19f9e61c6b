"""prepare with a user's own corpus: <|unknown|> tokens in SFT data, the SFT block size,
UTF-16 files, one file given twice, a checkpoint given as --tokenizer, and summaries
that count one thing in the singular."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from nano_tokenizer import Tokenizer

from nano_train import prepare as prepare_cmd
from nano_train.data import DataError, Dataset, prepare_pretrain, prepare_sft
from nano_train.train import dataset_identity

README = Path(__file__).resolve().parents[1] / "README.md"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def run(capsys, *argv):
    rc = prepare_cmd.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# nano_80 has ASCII letters, digits and some punctuation, no Chinese: these answers are
# mostly <|unknown|>, the questions mostly not
MIXED = [{"question": f"What is word {i}?", "answer": "你好" * (i + 1) + " hello"} for i in range(6)]


def test_prepare_sft_counts_unknown_tokens_and_warns(tmp_path, shared_file, capsys):
    """(was: counted by prepare pretrain only; prepare sft said nothing of 42% of the
    trained answer tokens being <|unknown|>)"""
    tok_path = shared_file("data/nano_80.json")
    tok = Tokenizer.load(tok_path)
    src = write_jsonl(tmp_path / "mixed.jsonl", MIXED)
    out = tmp_path / "d"
    rc, text, err = run(capsys, "sft", "--tokenizer", tok_path, "--out_dir", out, "--block_size", 64, "--quiet", src)
    assert rc == 0, err

    def unknown(s):
        return sum(i == tok.unk_id for i in tok.encode(s))

    want_answer = sum(unknown(r["answer"]) for r in MIXED)
    want_all = want_answer + sum(unknown(r["question"]) for r in MIXED)
    assert want_answer > 0
    counts = json.loads((out / "meta.json").read_text(encoding="utf-8"))["counts"]
    assert (counts["unknown_tokens"], counts["unknown_answer_tokens"]) == (want_all, want_answer)
    # the rows agree: padding is not <|unknown|>, and the answer tokens are those the mask trains
    (ids, mask), = Dataset(out).splits["train"]
    ids, mask = np.asarray(ids), np.asarray(mask)
    assert np.count_nonzero(ids == tok.unk_id) == want_all
    assert np.count_nonzero((ids == tok.unk_id) & (mask == 1)) == want_answer
    share = want_answer / counts["answer_tokens"]
    assert share > 0.1
    assert f"({want_all:,} unknown, {want_answer:,} of them trained on)" in text
    # the warning on standard error (the summary on standard output)
    assert (f"warning: {share:.0%} of the answer tokens trained on ({want_answer:,} of "
            f"{counts['answer_tokens']:,})") in err.splitlines()[0] and "warning" not in text
    assert "are <|unknown|>: the vocabulary lacks many of the text's characters" in err


def test_prepare_sft_warns_when_only_the_questions_are_unknown(tmp_path, shared_file):
    src = write_jsonl(tmp_path / "q.jsonl", [{"question": "你好你好你好你好", "answer": "hi"}] * 3)
    s = prepare_sft([src], shared_file("data/nano_80.json"), tmp_path / "d", block_size=32, progress=False)
    assert (s.unknown_tokens, s.unknown_answer_tokens) == (3 * 8, 0)  # (one <|unknown|> a character)
    assert f"\nwarning: {24 / s.tokens:.0%} of the tokens (24 of {s.tokens}) is <|unknown|>: " in s.text()


def test_no_unknown_tokens_no_warning(self_id_sft, tmp_path, shared_file):
    src = write_jsonl(tmp_path / "a.jsonl", [{"question": "What is 42?", "answer": "a number"}])
    s = prepare_sft([src], shared_file("data/nano_80.json"), tmp_path / "d", block_size=32, progress=False)
    assert (s.unknown_tokens, s.unknown_answer_tokens) == (0, 0) and "warning" not in s.text()
    counts = Dataset(self_id_sft).meta["counts"]  # tokenizer_16384_v2 covers all of sft_self_id.jsonl
    assert (counts["unknown_tokens"], counts["unknown_answer_tokens"]) == (0, 0)


def test_a_dataset_prepared_before_the_unknown_counts_loads_and_keeps_its_identity(tmp_path, shared_file):
    """A guard: meta.json of an earlier prepare has no unknown counts; it loads, and a run
    resumed on it sees the same dataset (the counts are no part of its identity)."""
    src = write_jsonl(tmp_path / "mixed.jsonl", MIXED)
    out = tmp_path / "d"
    prepare_sft([src], shared_file("data/nano_80.json"), out, block_size=64, progress=False)
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    before = dataset_identity(meta)
    del meta["counts"]["unknown_tokens"], meta["counts"]["unknown_answer_tokens"]
    (out / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    ds = Dataset(out)
    assert dataset_identity(ds.meta) == before and ds.source("train", 63).n_rows == len(MIXED)


def test_sft_help_says_to_pass_the_models_block_size_plus_one(capsys):
    """(was: "tokens per row: the model's block_size", which leaves the last position
    of the context untrained: training reads inputs of block_size - 1)"""
    with pytest.raises(SystemExit):
        prepare_cmd.main(["sft", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--block_size N tokens per row; training reads N - 1 of them as inputs: the model's block_size + 1 " \
           "trains its whole context (its block_size also works, one position less)" in help_text
    assert "pass the model's block_size + 1 to train every position of its context" in " ".join(
        prepare_cmd.__doc__.split())


def test_prepare_options_default_to_the_librarys_defaults_and_say_so(capsys):
    """One place for each default: the options take prepare_pretrain's and prepare_sft's (was:
    written out again in the parser), and the usage text (the module docstring, --help's
    description) and the options' help state those."""
    pre, sft = prepare_cmd.keyword_defaults(prepare_pretrain), prepare_cmd.keyword_defaults(prepare_sft)
    parser = prepare_cmd.build_parser()
    a = parser.parse_args(["pretrain", "--tokenizer", "v.json", "--out_dir", "d", "x.txt"])
    assert (a.docs, a.bos_eos, a.val_fraction, a.chunk_tokens, not a.no_shuffle, a.shard_tokens, a.seed) == (
        pre["doc_mode"], pre["bos_eos"], pre["val_fraction"], pre["chunk_tokens"], pre["shuffle"],
        pre["shard_tokens"], pre["seed"])
    a = parser.parse_args(["sft", "--tokenizer", "v.json", "--out_dir", "d", "--block_size", "9", "x.jsonl"])
    assert (a.too_long, a.skip_bad, a.system, a.val_fraction, a.seed) == (
        sft["too_long"], sft["skip_bad"], sft["system"], sft["val_fraction"], sft["seed"])
    doc = " ".join(prepare_cmd.__doc__.split())
    pre_doc, sft_doc = doc.split(" sft options: ")
    assert pre["doc_mode"] == "blank" and "separated by blank lines (default)" in pre_doc
    assert f"share of chunks held out for validation (default {pre['val_fraction']:g})" in pre_doc
    assert f"the unit of the split and of the shuffle (default {pre['chunk_tokens']})" in pre_doc
    assert f"at least --chunk_tokens (default {pre['shard_tokens']:,})" in pre_doc
    assert f"(default {sft['too_long']}, counted;" in sft_doc and f"{sft['system']} (default) joins" in sft_doc
    assert f"share of samples held out (default {sft['val_fraction']:g})" in sft_doc
    assert f"--seed N (0 to 2^32 - 1, default {sft['seed']})" in sft_doc
    for kind, numbers in (("pretrain", (pre["val_fraction"], pre["chunk_tokens"], f"{pre['shard_tokens']:,}",
                                        pre["seed"])), ("sft", (f"{sft['val_fraction']:g}", sft["seed"]))):
        with pytest.raises(SystemExit):
            prepare_cmd.main([kind, "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert all(f"(default {n}" in help_text for n in numbers), help_text


def test_what_the_block_size_help_says_is_what_training_reads(tmp_path, shared_file):
    src = write_jsonl(tmp_path / "a.jsonl", [{"question": "q", "answer": "a"}])
    for n, model_block, inputs in ((65, 64, 64), (64, 64, 63)):
        prepare_sft([src], shared_file("data/nano_80.json"), tmp_path / str(n), block_size=n, progress=False)
        assert Dataset(tmp_path / str(n)).source("train", model_block).T == inputs
    prepare_sft([src], shared_file("data/nano_80.json"), tmp_path / "66", block_size=66, progress=False)
    with pytest.raises(DataError, match="prepare with --block_size 65 or less"):
        Dataset(tmp_path / "66").source("train", 64)


def test_the_readme_prepares_sft_data_for_the_whole_context():
    """The README's prepare sft commands give the block_size + 1 of the config they feed
    (was: 64 for sft_self_id.json's block_size 64, 128 for psycho_small's 128)."""
    text = README.read_text(encoding="utf-8")
    for dataset, config in (("self_id_16384", "sft_self_id.json"), ("amateur_radio_sft_4096", "psycho_small.json")):
        command = re.search(r"prepare sft (?:(?!prepare sft)[^`])*?runs/data/" + dataset + r"[^`\n]*", text)
        assert command, dataset
        block = int(re.search(r"--block_size (\d+)", command.group(0)).group(1))
        model = json.loads((CONFIGS / config).read_text(encoding="utf-8"))["model"]["block_size"]
        assert block == model + 1, (dataset, block, model)


UTF16 = [("utf-16-le", b"\xff\xfe", "FF FE"), ("utf-16-be", b"\xfe\xff", "FE FF")]


@pytest.mark.parametrize("encoding, bom, shown", UTF16)
def test_a_utf16_text_file_is_named_as_such(tmp_path, shared_file, capsys, monkeypatch, encoding, bom, shown):
    """(was: "not UTF-8 text (invalid start byte at byte 0)")"""
    monkeypatch.chdir(tmp_path)
    Path("notes.txt").write_bytes(bom + "hello there\n\nsecond one\n".encode(encoding))
    rc, _, err = run(capsys, "pretrain", "--tokenizer", shared_file("data/nano_80.json"), "--out_dir", "d",
                     "--quiet", "notes.txt")
    assert rc == 2
    assert err == (f"error: notes.txt: not UTF-8 text: it starts with a UTF-16 byte order mark ({shown}): a UTF-16 "
                   "file; convert it to UTF-8 (e.g. iconv -f UTF-16 -t UTF-8 notes.txt > notes.utf8.txt)\n")
    assert not Path("d").exists()


@pytest.mark.parametrize("skip_bad", [False, True])
@pytest.mark.parametrize("encoding, bom, shown", UTF16)
def test_a_utf16_jsonl_file_is_named_as_such(tmp_path, shared_file, capsys, encoding, bom, shown, skip_bad):
    """Also with --skip_bad: the file is not a run of bad lines, it is in another encoding."""
    src = tmp_path / "chat.jsonl"
    src.write_bytes(bom + '{"question": "q", "answer": "a"}\n'.encode(encoding))
    rc, _, err = run(capsys, "sft", "--tokenizer", shared_file("data/nano_80.json"), "--out_dir", tmp_path / "d",
                     "--block_size", 16, "--quiet", *(["--skip_bad"] if skip_bad else []), src)
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {src}: not UTF-8 text: it starts with a UTF-16 byte order mark ({shown}): a "
                          "UTF-16 file; convert it to UTF-8 (e.g. iconv -f UTF-16 -t UTF-8 ")


def test_a_utf32_file_is_not_called_utf16(tmp_path, shared_file):
    src = tmp_path / "t.txt"
    src.write_bytes("hello\n".encode("utf-32"))  # (with its byte-order mark, FF FE 00 00 here)
    with pytest.raises(DataError, match=r"UTF-32 byte order mark \(FF FE 00 00\): a UTF-32 file; .*iconv -f UTF-32"):
        prepare_pretrain([src], shared_file("data/nano_80.json"), tmp_path / "d", progress=False)


def test_a_file_given_twice_is_named_as_typed(tmp_path, shared_file, capsys, monkeypatch):
    """(was: "inputs e_parts/p000.txt and e_parts/p000.txt are the same file" for
    e_parts/p000.txt and ./e_parts/p000.txt)"""
    monkeypatch.chdir(tmp_path)
    Path("e_parts").mkdir()
    Path("e_parts/p000.txt").write_text("hello\n", encoding="utf-8")
    tok = shared_file("data/nano_80.json")
    rc, _, err = run(capsys, "pretrain", "--tokenizer", tok, "--out_dir", "d", "--quiet",
                     "e_parts/p000.txt", "./e_parts/p000.txt")
    assert (rc, err) == (2, "error: inputs e_parts/p000.txt and ./e_parts/p000.txt are the same file; "
                            "give each file once\n")
    rc, _, err = run(capsys, "pretrain", "--tokenizer", tok, "--out_dir", "d", "--quiet",
                     "e_parts/p000.txt", "e_parts/p000.txt")
    assert (rc, err) == (2, "error: inputs e_parts/p000.txt and e_parts/p000.txt are the same file; "
                            "give each file once\n")
    rc, _, err = run(capsys, "pretrain", "--tokenizer", tok, "--out_dir", "d", "--quiet", "./e_parts/nope.txt")
    assert (rc, err) == (2, "error: input file ./e_parts/nope.txt does not exist\n")


def test_a_checkpoint_as_tokenizer_says_where_a_vocabulary_is(tmp_path, shared_file, capsys):
    """(was: "best.pt: a zip archive (a PyTorch checkpoint?), not a tokenizer JSON file
    nor a .bin model", with no word of where to find one)"""
    import torch

    ckpt = tmp_path / "best.pt"
    torch.save({"model": {}, "tokenizer": None}, ckpt)
    src = write_jsonl(tmp_path / "a.jsonl", [{"question": "q", "answer": "a"}])
    rc, _, err = run(capsys, "sft", "--tokenizer", ckpt, "--out_dir", tmp_path / "d", "--block_size", 16,
                     "--quiet", src)
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith(f"error: cannot load the tokenizer: {ckpt} is a zip archive, as a training checkpoint "
                          "(best.pt, latest.pt) is, not a vocabulary; give the tokenizer.json of the dataset the run "
                          "trained on (beside its meta.json), or a .bin model exported from the checkpoint")
    # both of which prepare takes
    rc, _, err = run(capsys, "sft", "--tokenizer", shared_file("fixtures/psycho_230k_1214_q80.bin"), "--out_dir",
                     tmp_path / "d", "--block_size", 16, "--quiet", src)
    assert rc == 0, err
    rc, _, err = run(capsys, "sft", "--tokenizer", tmp_path / "d" / "tokenizer.json", "--out_dir", tmp_path / "e",
                     "--block_size", 16, "--quiet", src)
    assert rc == 0, err


def test_pretrain_summary_counts_one_in_the_singular(tmp_path, shared_file, capsys):
    """(was: "1 documents, 1 characters -> 1 tokens", "holds 1 tokens")"""
    src = tmp_path / "one.txt"
    src.write_text("a", encoding="utf-8")
    rc, out, err = run(capsys, "pretrain", "--tokenizer", shared_file("data/nano_80.json"), "--out_dir",
                       tmp_path / "d", "--val_fraction", 0, "--quiet", src)
    assert rc == 0, err
    assert ": 1 document, 1 character -> 1 token (0 of them separators or bos/eos; " in out
    assert "; train 1 token, val 0 tokens; " in out
    assert "warning: the training split's longest chunk holds 1 token: a model with block_size 1 or more" in err
    src.write_text("ab\ncd\n", encoding="utf-8")  # two documents, one "\n" between them
    rc, out, err = run(capsys, "pretrain", "--tokenizer", shared_file("data/nano_80.json"), "--out_dir",
                       tmp_path / "e", "--docs", "line", "--val_fraction", 0, "--quiet", src)
    assert rc == 0, err
    assert ": 2 documents, 4 characters -> 5 tokens (1 of them a separator or bos/eos; " in out


def test_sft_summary_counts_one_in_the_singular(tmp_path, shared_file):
    """(was: "1 records -> 1 samples", "skipped: 1 bad lines")"""
    src = tmp_path / "one.jsonl"
    src.write_text('{"question": "q", "answer": "a"}\nnot json\n', encoding="utf-8")
    s = prepare_sft([src], shared_file("data/nano_80.json"), tmp_path / "d", block_size=16, skip_bad=True,
                    progress=False)
    assert s.text().startswith("1 record -> 1 sample (train 1, val 0), 5 tokens of which 2 trained on "
                               "(0 unknown, 0 of them trained on); skipped: 1 bad line, 0 too long; ")
