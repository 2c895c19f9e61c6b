"""SFT data: the template, a loss mask built from token ids (defect 2), multi-turn
records, bad lines and too-long samples."""

import json
import os
import tracemalloc

import numpy as np
import pytest

from nano_tokenizer import Tokenizer

from nano_train import prepare as prepare_cmd
from nano_format import spec

from nano_train.data import (Batcher, DataError, Dataset, prepare_sft, row_key, sft_encode, sft_turn, sft_turns,
                             split_hash, write_rows)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def rows(out):
    ds = Dataset(out)
    (tokens, mask), = ds.splits["train"]
    return ds, np.asarray(tokens), np.asarray(mask)


def test_mask_is_built_from_token_ids_with_multi_character_tokens(tmp_path, shared_file):
    """tokenizer_16384_v2 has many multi-character tokens ("ability", "Nano"...):
    a mask built from character counts (the reference) is misaligned there."""
    tok_path = shared_file("data/tokenizer_16384_v2.json")
    tok = Tokenizer.load(tok_path)
    q, a = "What is the ability of Nano?", "Nano's ability: answering questions about amateur radio."
    q_ids, a_ids = tok.encode(q), tok.encode(a)
    assert len(q_ids) < len(q) and len(a_ids) < len(a)  # the case where character counting goes wrong
    src = write_jsonl(tmp_path / "x.jsonl", [{"question": q, "answer": a}])
    prepare_sft([src], tok_path, tmp_path / "d", block_size=64, progress=False)
    _, t, m = rows(tmp_path / "d")
    ids, mask = t[0], m[0]
    n = 1 + len(q_ids) + 1 + len(a_ids) + 1
    assert ids[:n].tolist() == [tok.instruct_id, *q_ids, tok.response_id, *a_ids, tok.eos_id]
    assert (ids[n:] == tok.pad_id).all()
    # The mask covers exactly the answer's tokens and the closing eos.
    assert mask.tolist() == [0] * (len(q_ids) + 2) + [1] * (len(a_ids) + 1) + [0] * (64 - n)
    assert tok.decode(ids[mask == 1]) == a + "<|eos|>"
    # What a character-count mask would have given differs: the defect is observable here.
    char_mask_start = 1 + len(q) + 1
    assert char_mask_start != len(q_ids) + 2


def test_self_id_answers_are_exactly_the_masked_tokens(shared_file, self_id_sft):
    tok = Tokenizer.load(shared_file("data/tokenizer_16384_v2.json"))
    records = [json.loads(l) for l in shared_file("data/sft_self_id.jsonl").read_text(encoding="utf-8").splitlines()]
    ds = Dataset(self_id_sft)
    got = []
    for tokens, mask in ds.splits["train"] + ds.splits["val"]:
        for t, m in zip(np.asarray(tokens), np.asarray(mask)):
            got.append((tok.decode(t[(t != tok.pad_id)][1:list(t).index(tok.response_id)]),
                        tok.decode(t[m == 1])))
    assert sorted(got) == sorted((r["question"], r["answer"] + "<|eos|>") for r in records)
    assert ds.meta["counts"]["samples"] == 99


def test_a_sample_given_twice_is_never_in_both_splits(tmp_path, shared_file):
    """sft_self_id.jsonl holds 24 repeated lines: held out by position, 8 of the 19
    validation rows were copies of training rows (seed 1337, 20%). By content, none is."""
    out = tmp_path / "d"
    prepare_sft([shared_file("data/sft_self_id.jsonl")], shared_file("data/tokenizer_16384_v2.json"), out,
                block_size=64, val_fraction=0.2, progress=False)
    ds = Dataset(out)
    (train, _), = ds.splits["train"]
    (val, _), = ds.splits["val"]
    assert len(val) > 0
    assert not {bytes(r) for r in np.asarray(train)} & {bytes(r) for r in np.asarray(val)}
    # The rule in meta.json reproduces the split
    for rows_, held_out in ((train, False), (val, True)):
        keys = np.array([row_key(r) for r in np.asarray(rows_)], dtype=np.uint64)
        assert ((split_hash(1337, keys) < 0.2) == held_out).all()


def test_batches_shift_the_mask_with_the_targets(self_id_sft):
    src = Dataset(self_id_sft).source("train", 64)
    x, y, m = Batcher(src, 8, seed=0).next()
    assert x.shape == y.shape == m.shape == (8, 63)
    assert np.array_equal(x[:, 1:], y[:, :-1])
    tokens = np.asarray(src.tokens)
    masks = np.asarray(src.mask)
    for xi, yi, mi in zip(x, y, m):
        k = next(i for i in range(len(tokens)) if np.array_equal(tokens[i, :-1], xi))
        assert np.array_equal(mi, masks[k, 1:])  # mask of target position t = mask of token t+1


def test_multi_turn_records(tmp_path, shared_file):
    tok_path = shared_file("data/tokenizer_4096.json")
    tok = Tokenizer.load(tok_path)
    rec = {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好呀"},
                        {"role": "user", "content": "你是谁"}, {"role": "assistant", "content": "我是Nano"}]}
    src = write_jsonl(tmp_path / "m.jsonl", [rec, {"question": "问", "answer": "答"}])
    prepare_sft([src], tok_path, tmp_path / "d", block_size=32, progress=False)
    _, t, m = rows(tmp_path / "d")
    expected = "<|instruct_mark|>你好<|response_mark|>你好呀<|eos|><|instruct_mark|>你是谁<|response_mark|>我是Nano<|eos|>"
    assert tok.decode(t[0][t[0] != tok.pad_id]) == expected
    assert tok.decode(t[0][m[0] == 1]) == "你好呀<|eos|>我是Nano<|eos|>"
    assert sft_turns(rec, "x") == [("你好", "你好呀"), ("你是谁", "我是Nano")]
    ids, mask = sft_encode(tok, [("问", "答")])
    assert tok.decode(t[1][: len(ids)]) == tok.decode(ids) and m[1][: len(mask)].tolist() == mask


def test_the_template_is_one_layout_for_rows_and_prompts(shared_file):
    """data.sft_turn spells the template once: a training row (sft_encode) is the
    sampler's prompt (instruct_prompt) followed by the learned answer and <|eos|>,
    for a question given as text or as ids, an answer as text or as ids."""
    from nano_train.sampling import instruct_prompt

    tok = Tokenizer.load(shared_file("data/tokenizer_4096.json"))
    q, a = "问题", "答案"
    for question, answer in ((q, a), (tok.encode(q), a), (q, tok.encode(a))):
        ids, mask = sft_encode(tok, [(question, answer)])
        prompt = instruct_prompt(tok, question)
        assert ids == [*prompt, *tok.encode(a), tok.eos_id]
        assert mask == [0] * len(prompt) + [1] * (len(ids) - len(prompt))
        assert [m for _, m in sft_turn(tok, question, answer)] == [0, 0, 0, 1, 1]
        assert [t for part, _ in sft_turn(tok, question)[::2] for t in part] == [tok.instruct_id, tok.response_id]
    assert tok.decode(ids) == "<|instruct_mark|>问题<|response_mark|>答案<|eos|>"


@pytest.mark.parametrize("line,message", [
    ("{not json", "not valid JSON"),
    ('{"question": "q"}', "expected string fields"),
    ('{"question": 1, "answer": "a"}', "expected string fields"),
    ('["q", "a"]', "expected a JSON object"),
    ('{"messages": [{"role": "assistant", "content": "a"}]}', "expected 'user'"),
    ('{"messages": [{"role": "user", "content": "q"}]}', "no assistant answer"),
    # json raises RecursionError / a plain ValueError on these, not JSONDecodeError
    ("[" * 100_000 + "]" * 100_000, r"not valid JSON \(arrays or objects nested too deeply\)"),
    ('{"question": ' + "1" * 5000 + ', "answer": "a"}', r"not valid JSON \(a number with too many digits\)"),
    # JSON escapes a lone surrogate, which is no character: once trained on as <|unknown|>
    ('{"question": "a\\ud800b", "answer": "a"}', r"question holds a lone surrogate \(U\+D800 at character 1\)"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\\udfff"}]}',
     r"messages\[1\]\.content holds a lone surrogate \(U\+DFFF at character 0\)"),
])
def test_bad_line_names_file_and_line(tmp_path, shared_file, line, message):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"question": "好", "answer": "好"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message) as err:
        prepare_sft([src], shared_file("data/tokenizer_4096.json"), tmp_path / "d", block_size=32, progress=False)
    assert f"{src}:3" in str(err.value)
    summary = prepare_sft([src], shared_file("data/tokenizer_4096.json"), tmp_path / "e", block_size=32,
                          skip_bad=True, progress=False)
    assert summary.bad_lines == 1 and summary.train_samples == 1


def test_a_line_over_the_byte_limit_is_a_bad_line(tmp_path, shared_file):
    tok_path = shared_file("data/tokenizer_4096.json")
    src = tmp_path / "big.jsonl"
    long_line = json.dumps({"question": "q", "answer": "长" * 5000}, ensure_ascii=False)
    src.write_text('{"question": "问", "answer": "答"}\n' + long_line + '\n{"question": "q", "answer": "a"}\n\n{',
                   encoding="utf-8")
    with pytest.raises(DataError, match=r"big.jsonl:2: the line is 15,\d{3} bytes, more than the 1,000"):
        prepare_sft([src], tok_path, tmp_path / "d", block_size=16, max_line_bytes=1000, progress=False)
    # skipped and counted; the lines after it keep their numbers
    with pytest.raises(DataError, match=r"big.jsonl:5: not valid JSON"):
        prepare_sft([src], tok_path, tmp_path / "d", block_size=16, max_line_bytes=20_000, progress=False)
    src.write_bytes(src.read_bytes()[:-1])
    s = prepare_sft([src], tok_path, tmp_path / "e", block_size=16, max_line_bytes=1000, skip_bad=True, progress=False)
    assert (s.records, s.bad_lines) == (2, 1)


def test_a_huge_sample_is_encoded_only_as_far_as_block_size(tmp_path, shared_file):
    """A 1M-character answer used to be encoded whole (a Python int per token) before
    the length check; now encoding stops past block_size tokens."""
    tok_path = shared_file("data/tokenizer_4096.json")
    tok = Tokenizer.load(tok_path)
    turns = [("问", "长" * 300 + "短" * 300)]
    assert sft_encode(tok, turns, 400) == tuple(part[:400] for part in sft_encode(tok, turns))
    assert sft_encode(tok, turns, 2) == ([tok.instruct_id, tok.encode("问")[0]], [0, 0])
    src = write_jsonl(tmp_path / "huge.jsonl", [{"question": "问", "answer": "长" * 1_000_000},
                                               {"question": "问", "answer": "答"}])
    tok.encode("预热")  # compile the matcher outside the measurement
    tracemalloc.start()
    try:
        s = prepare_sft([src], tok_path, tmp_path / "d", block_size=16, too_long="truncate", progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (s.samples, s.truncated) == (2, 1)
    assert peak < 20_000_000  # the line (3 MB) and its text, not 1M token ids (over 36 MB)
    _, t, m = rows(tmp_path / "d")
    assert t[0].tolist() == [tok.instruct_id, *tok.encode("问"), tok.response_id] + tok.encode("长") * 13
    assert m[0].tolist() == [0] * 3 + [1] * 13


def test_messages_do_not_echo_huge_values():
    with pytest.raises(DataError, match="has role 'xxx") as err:
        sft_turns({"messages": [{"role": "x" * 5_000_000, "content": "a"}]}, "f.jsonl:1")
    assert len(str(err.value)) < 300


def test_too_long_samples(tmp_path, shared_file):
    tok_path = shared_file("data/tokenizer_4096.json")
    src = write_jsonl(tmp_path / "l.jsonl", [{"question": "短", "answer": "短"},
                                             {"question": "长" * 10, "answer": "长" * 30}])
    s = prepare_sft([src], tok_path, tmp_path / "skip", block_size=16, progress=False)
    assert (s.train_samples, s.too_long_skipped, s.truncated) == (1, 1, 0)
    s = prepare_sft([src], tok_path, tmp_path / "trunc", block_size=16, too_long="truncate", progress=False)
    assert (s.train_samples, s.too_long_skipped, s.truncated) == (2, 0, 1)
    _, t, m = rows(tmp_path / "trunc")
    assert m[1].tolist() == [0] * 12 + [1] * 4 and t[1][11] == Tokenizer.load(tok_path).response_id
    with pytest.raises(DataError, match=r"l.jsonl:2.*more than block_size"):
        prepare_sft([src], tok_path, tmp_path / "err", block_size=16, too_long="error", progress=False)


def test_block_size_must_fit_the_model(self_id_sft):
    with pytest.raises(DataError, match="prepared for block_size 64"):
        Dataset(self_id_sft).source("train", 32)
    assert Dataset(self_id_sft).source("train", 128).T == 63


def test_sft_command(tmp_path, shared_file, capsys):
    out = tmp_path / "d"
    rc = prepare_cmd.main(["sft", "--tokenizer", str(shared_file("data/tokenizer_4096.json")), "--out_dir", str(out),
                           "--block_size", "128", "--val_fraction", "0.1", "--quiet",
                           str(shared_file("data/sft_amateur_radio.jsonl"))])
    assert rc == 0
    text = capsys.readouterr().out
    assert "4,907 records" in text
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "sft" and meta["counts"]["records"] == 4907
    assert meta["shards"]["val"][0]["rows"] > 0
    assert meta["shards"]["train"][0]["rows"] + meta["shards"]["val"][0]["rows"] == meta["counts"]["samples"] == 4907 - meta["counts"]["too_long_skipped"]


def test_truncation_that_leaves_no_answer_skips_the_sample(tmp_path, shared_file):
    tok_path = shared_file("data/tokenizer_4096.json")
    src = write_jsonl(tmp_path / "l.jsonl", [{"question": "短", "answer": "短"},
                                             {"question": "长" * 20, "answer": "长"}])
    s = prepare_sft([src], tok_path, tmp_path / "d", block_size=16, too_long="truncate", progress=False)
    assert (s.train_samples, s.too_long_skipped, s.truncated, s.answer_tokens) == (1, 1, 0, 2)
    with pytest.raises(DataError, match="no training samples.*block_size 3"):
        prepare_sft([shared_file("data/sft_self_id.jsonl")], tok_path, tmp_path / "e", block_size=3,
                    too_long="truncate", progress=False)


def test_a_byte_order_mark_starts_a_jsonl_file(tmp_path, shared_file):
    tok_path = shared_file("data/tokenizer_4096.json")
    src = tmp_path / "bom.jsonl"
    src.write_text('{"question": "问", "answer": "答"}\n', encoding="utf-8-sig")
    other = tmp_path / "bom2.jsonl"
    other.write_bytes(src.read_bytes())
    s = prepare_sft([src, other], tok_path, tmp_path / "d", block_size=16, progress=False)
    assert (s.records, s.bad_lines) == (2, 0)
    src.write_bytes(b'\n\xef\xbb\xbf{"question": "q", "answer": "a"}\n')  # only at the start of the file
    with pytest.raises(DataError, match="bom.jsonl:2"):
        prepare_sft([src], tok_path, tmp_path / "e", block_size=16, progress=False)


def test_a_failed_sft_overwrite_keeps_the_old_dataset(tmp_path, shared_file):
    tok_path = shared_file("data/tokenizer_4096.json")
    good = write_jsonl(tmp_path / "g.jsonl", [{"question": "问", "answer": "答"}])
    out = tmp_path / "d"
    prepare_sft([good], tok_path, out, block_size=16, progress=False)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    bad = tmp_path / "b.jsonl"
    bad.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON"):
        prepare_sft([good, bad], tok_path, out, block_size=16, overwrite=True, progress=False)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert Dataset(out).meta["counts"]["samples"] == 1


def test_block_size_is_at_most_a_models(tmp_path, shared_file, capsys):
    """A block_size no model may have (nano_format's MAX_DIM, 2**20) used to end in a
    numpy MemoryError traceback when the row buffer was allocated."""
    tok_path = shared_file("data/tokenizer_4096.json")
    src = write_jsonl(tmp_path / "q.jsonl", [{"question": "问", "answer": "答"}])
    with pytest.raises(DataError, match=r"block_size must be from 2 to 1,048,576 .*got 1,048,577"):
        prepare_sft([src], tok_path, tmp_path / "d", block_size=spec.MAX_DIM + 1, progress=False)
    rc = prepare_cmd.main(["sft", "--tokenizer", str(tok_path), "--out_dir", str(tmp_path / "d"), "--quiet",
                           "--block_size", "99999999999", str(src)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: block_size must be") and err.count("\n") == 1
    assert not (tmp_path / "d").exists()
    s = prepare_sft([src], tok_path, tmp_path / "d", block_size=spec.MAX_DIM, progress=False)  # the largest
    assert s.samples == 1 and Dataset(tmp_path / "d").meta["block_size"] == spec.MAX_DIM


def test_a_users_file_of_an_sft_name_is_never_replaced(tmp_path, shared_file):
    tok_path = shared_file("data/tokenizer_4096.json")
    src = write_jsonl(tmp_path / "q.jsonl", [{"question": "问", "answer": "答"}])
    out = tmp_path / "d"
    out.mkdir()
    (out / "sft_val_mask.bin").write_bytes(b"mine")
    for overwrite in (False, True):
        with pytest.raises(DataError, match=r"sft_val_mask.bin is in the way: .*there is no meta.json"):
            prepare_sft([src], tok_path, out, block_size=16, overwrite=overwrite, progress=False)
        assert [f.name for f in out.iterdir()] == ["sft_val_mask.bin"]
    tok = Tokenizer.load(tok_path)
    rows_ = np.full((2, 8), tok.pad_id)
    with pytest.raises(DataError, match="sft_val_mask.bin is in the way"):  # write_rows too
        write_rows(out, tok, "sft", {"train": (rows_, np.ones((2, 8), dtype=np.uint8))})
    (out / "sft_val_mask.bin").rename(out / "s2s_train_y.bin")
    with pytest.raises(DataError, match="s2s_train_y.bin is in the way"):
        write_rows(out, tok, "seq2seq", {"train": (rows_, rows_, np.ones((2, 8), dtype=np.uint8))})
    assert [f.name for f in out.iterdir()] == ["s2s_train_y.bin"]
    assert (out / "s2s_train_y.bin").read_bytes() == b"mine"


def test_a_jsonl_file_name_that_is_not_utf8(tmp_path, shared_file):
    """Its bytes arrive as lone surrogates, which meta.json (UTF-8) cannot hold: the
    json.dump used to fail after all the work. The name is recorded with \\xNN escapes."""
    src = write_jsonl(tmp_path / "q.jsonl", [{"question": "问", "answer": "答"}])
    try:
        named = src.rename(tmp_path / os.fsdecode(b"q\xfe.jsonl"))
    except (OSError, UnicodeError):
        pytest.skip("the file system takes only UTF-8 names")
    prepare_sft([named], shared_file("data/tokenizer_4096.json"), tmp_path / "d", block_size=16, progress=False)
    meta = json.loads((tmp_path / "d" / "meta.json").read_text(encoding="utf-8"))
    assert meta["inputs"][0]["path"] == str(tmp_path / "q") + "\\xfe.jsonl"
