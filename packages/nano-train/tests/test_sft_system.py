"""SFT records with a system message: the --system policies of prepare sft, where a
system message may be, the summary and meta.json, and the sampler's --system, which
must build the question the way prepare does."""

import json

import numpy as np
import pytest

from nano_tokenizer import Tokenizer

from nano_train import prepare as prepare_cmd
from nano_train import sample as sample_cmd
from nano_train import sampling
from nano_train.data import DataError, Dataset, prepare_sft, sft_messages, sft_turns, with_system

SYSTEM = "请简短回答"
CHAT = {"messages": [{"role": "system", "content": SYSTEM},
                     {"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好呀"},
                     {"role": "user", "content": "你是谁"}, {"role": "assistant", "content": "答"}]}
PLAIN = {"messages": CHAT["messages"][1:]}


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in records), encoding="utf-8")
    return path


def train_rows(out):
    (tokens, mask), = Dataset(out).splits["train"]
    return np.asarray(tokens), np.asarray(mask)


@pytest.fixture
def tok_path(shared_file):
    return shared_file("data/tokenizer_4096.json")


# ---------------------------------------------------------------------------
# records


def test_with_system_puts_the_system_text_and_a_line_break_before_the_question():
    assert with_system(SYSTEM, "你好") == SYSTEM + "\n你好"
    assert with_system(SYSTEM, "") == SYSTEM + "\n"
    assert with_system("", "你好") == "你好"  # an empty system text adds nothing
    assert with_system(None, "你好") == "你好"


def test_each_policy_on_a_record():
    plain = [("你好", "你好呀"), ("你是谁", "答")]
    assert sft_messages(CHAT, "x") == (SYSTEM, plain)
    assert sft_messages(PLAIN, "x") == (None, plain)
    assert sft_turns(CHAT, "x") == [(SYSTEM + "\n你好", "你好呀"), ("你是谁", "答")]  # prepend is the default
    assert sft_turns(CHAT, "x", "prepend") == [(SYSTEM + "\n你好", "你好呀"), ("你是谁", "答")]
    assert sft_turns(CHAT, "x", "drop") == plain
    with pytest.raises(DataError, match=r"^f.jsonl:3: messages\[0\] is a system message, which --system error "
                                        r"refuses; --system prepend .*--system drop"):
        sft_turns(CHAT, "f.jsonl:3", "error")
    # a record without a system message is the same under every policy
    for policy in ("prepend", "drop", "error"):
        assert sft_turns(PLAIN, "x", policy) == plain
    empty = {"messages": [{"role": "system", "content": ""}] + PLAIN["messages"]}
    assert sft_turns(empty, "x", "prepend") == plain


@pytest.mark.parametrize("messages, index", [
    ([("user", "q"), ("system", "s"), ("assistant", "a")], 1),
    ([("user", "q"), ("assistant", "a"), ("system", "s"), ("user", "q"), ("assistant", "a")], 2),
    ([("user", "q"), ("assistant", "a"), ("system", "s")], 2),
    ([("system", "s"), ("system", "t"), ("user", "q"), ("assistant", "a")], 1),  # only one
])
def test_a_system_message_anywhere_but_first_is_an_error_naming_its_index(messages, index):
    rec = {"messages": [{"role": r, "content": c} for r, c in messages]}
    for policy in ("prepend", "drop", "error"):
        with pytest.raises(DataError, match=rf"^f.jsonl:7: messages\[{index}\] is a system message; a record may "
                                            r"have one, only as messages\[0\]$"):
            sft_turns(rec, "f.jsonl:7", policy)


@pytest.mark.parametrize("system, message", [
    ({"role": "system", "content": 5}, r"messages\[0\] must be an object with string 'role' and 'content'"),
    ({"role": "system"}, r"messages\[0\] must be an object with string 'role' and 'content'"),
    ({"role": "system", "content": "a\udc80"}, r"messages\[0\]\.content holds a lone surrogate \(U\+DC80 at character 1\)"),
])
def test_a_system_content_is_checked_as_any_other(system, message):
    with pytest.raises(DataError, match=message):
        sft_turns({"messages": [system] + PLAIN["messages"]}, "x", "drop")


def test_a_system_message_alone_is_no_conversation():
    with pytest.raises(DataError, match="'messages' holds a system message and no user message"):
        sft_turns({"messages": [{"role": "system", "content": "s"}]}, "x")


# ---------------------------------------------------------------------------
# prepare_sft


def test_prepend_trains_on_the_question_the_sampler_asks(tmp_path, tok_path):
    tok = Tokenizer.load(tok_path)
    src = write_jsonl(tmp_path / "c.jsonl", [CHAT, {"question": "问", "answer": "答"}])
    s = prepare_sft([src], tok_path, tmp_path / "d", block_size=40, progress=False)
    assert (s.records, s.system_messages, s.bad_lines) == (2, 1, 0)
    assert "system messages: 1 (prepended to the first question)" in s.text()
    t, m = train_rows(tmp_path / "d")
    row = t[0].tolist()
    first = [tok.instruct_id, *tok.encode(SYSTEM + "\n你好"), tok.response_id]
    assert row[:len(first)] == first
    assert first == sampling.instruct_prompt(tok, "你好", SYSTEM)  # the sampler's --system prompt
    expected = (first + tok.encode("你好呀") + [tok.eos_id, tok.instruct_id] + tok.encode("你是谁")
                + [tok.response_id] + tok.encode("答") + [tok.eos_id])
    assert row[:len(expected)] == expected and set(row[len(expected):]) == {tok.pad_id}
    assert tok.decode(t[0][m[0] == 1]) == "你好呀<|eos|>答<|eos|>"  # the system text is not trained on
    meta = Dataset(tmp_path / "d").meta
    assert meta["system"]["policy"] == "prepend" and meta["counts"]["system_messages"] == 1


def test_drop_gives_the_rows_of_the_record_without_it(tmp_path, tok_path):
    with_sys = write_jsonl(tmp_path / "c.jsonl", [CHAT])
    without = write_jsonl(tmp_path / "p.jsonl", [PLAIN])
    s = prepare_sft([with_sys], tok_path, tmp_path / "d", block_size=40, system="drop", progress=False)
    assert s.system_messages == 1 and "system messages: 1 (dropped)" in s.text()
    prepare_sft([without], tok_path, tmp_path / "e", block_size=40, system="drop", progress=False)
    for a, b in zip(train_rows(tmp_path / "d"), train_rows(tmp_path / "e")):
        assert np.array_equal(a, b)
    prepare_sft([with_sys], tok_path, tmp_path / "f", block_size=40, progress=False)
    assert not np.array_equal(train_rows(tmp_path / "f")[0], train_rows(tmp_path / "e")[0])
    assert Dataset(tmp_path / "d").meta["system"]["policy"] == "drop"


def test_error_stops_at_the_record_or_skips_it_with_skip_bad(tmp_path, tok_path):
    src = write_jsonl(tmp_path / "c.jsonl", [{"question": "问", "answer": "答"}, CHAT, "{not json", PLAIN])
    with pytest.raises(DataError, match=r"c.jsonl:2: messages\[0\] is a system message, which --system error "
                                        r"refuses.*\(pass --skip_bad to skip bad lines\)$"):
        prepare_sft([src], tok_path, tmp_path / "d", block_size=40, system="error", progress=False)
    assert not (tmp_path / "d" / "meta.json").exists()
    s = prepare_sft([src], tok_path, tmp_path / "d", block_size=40, system="error", skip_bad=True, progress=False)
    assert (s.records, s.samples, s.bad_lines, s.system_messages) == (2, 2, 2, 1)
    assert "skipped: 2 bad lines" in s.text() and "system messages: 1 (refused, skipped as bad lines)" in s.text()
    meta = Dataset(tmp_path / "d").meta
    assert meta["system"]["policy"] == "error"
    assert (meta["counts"]["bad_lines"], meta["counts"]["system_messages"]) == (2, 1)


def test_the_summary_says_none_without_system_messages(tmp_path, tok_path):
    src = write_jsonl(tmp_path / "p.jsonl", [PLAIN, PLAIN])
    s = prepare_sft([src], tok_path, tmp_path / "d", block_size=40, progress=False)
    assert s.system_messages == 0 and "system messages: none" in s.text()
    assert Dataset(tmp_path / "d").meta["counts"]["system_messages"] == 0


def test_an_unknown_policy_is_refused_before_any_work(tmp_path, tok_path):
    src = write_jsonl(tmp_path / "p.jsonl", [PLAIN])
    with pytest.raises(DataError, match=r"system must be one of \('prepend', 'drop', 'error'\), got 'keep'"):
        prepare_sft([src], tok_path, tmp_path / "d", block_size=40, system="keep", progress=False)
    assert not (tmp_path / "d").exists()


def test_a_meta_json_without_the_system_entry_still_loads(tmp_path, tok_path):
    """Datasets prepared before system messages were read have neither entry."""
    src = write_jsonl(tmp_path / "p.jsonl", [PLAIN])
    prepare_sft([src], tok_path, tmp_path / "d", block_size=40, progress=False)
    rows = train_rows(tmp_path / "d")
    path = tmp_path / "d" / "meta.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    del meta["system"], meta["counts"]["system_messages"]
    path.write_text(json.dumps(meta), encoding="utf-8")
    ds = Dataset(tmp_path / "d")
    assert "system" not in ds.meta
    for a, b in zip(train_rows(tmp_path / "d"), rows):
        assert np.array_equal(a, b)
    assert ds.source("train", 40).tokens.shape == (1, 40)


# ---------------------------------------------------------------------------
# the prepare command


def test_prepare_command_end_to_end(tmp_path, tok_path, capsys):
    src = write_jsonl(tmp_path / "chat.jsonl", [CHAT, PLAIN, CHAT, {"question": "问", "answer": "答"}])

    def prepare(out, *extra):
        rc = prepare_cmd.main(["sft", "--tokenizer", str(tok_path), "--out_dir", str(tmp_path / out),
                               "--block_size", "40", "--quiet", *extra, str(src)])
        return (rc, *capsys.readouterr())

    rc, out, err = prepare("default")
    # standard error: the one note (no validation samples), on standard error as every note
    assert rc == 0 and err.startswith("note: no validation samples (--val_fraction 0") and err.count("\n") == 1
    assert "4 records -> 4 samples" in out and "system messages: 2 (prepended to the first question)" in out
    meta = json.loads((tmp_path / "default" / "meta.json").read_text(encoding="utf-8"))
    assert meta["system"]["policy"] == "prepend" and meta["counts"]["system_messages"] == 2
    tok = Tokenizer.load(tok_path)
    t, _ = train_rows(tmp_path / "default")
    prompt = sampling.instruct_prompt(tok, "你好", SYSTEM)
    assert sum(r[:len(prompt)].tolist() == prompt for r in t) == 2

    rc, out, err = prepare("drop", "--system", "drop")
    assert rc == 0 and "system messages: 2 (dropped)" in out
    assert json.loads((tmp_path / "drop" / "meta.json").read_text(encoding="utf-8"))["system"]["policy"] == "drop"

    rc, out, err = prepare("error", "--system", "error")
    assert rc == 2 and out == ""
    assert err == (f"error: {src}:1: messages[0] is a system message, which --system error refuses; --system "
                   "prepend folds it into the first question, --system drop ignores it "
                   "(pass --skip_bad to skip bad lines)\n")
    assert not (tmp_path / "error").exists()

    rc, out, err = prepare("error", "--system", "error", "--skip_bad")
    assert rc == 0 and "2 records -> 2 samples" in out and "skipped: 2 bad lines" in out
    assert "system messages: 2 (refused, skipped as bad lines)" in out

    with pytest.raises(SystemExit) as e:
        prepare("bad", "--system", "keep")
    assert e.value.code == 2 and "invalid choice: 'keep'" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# the sampler


@pytest.fixture
def tiny_ckpt(tmp_path, nano80, tiny, save_ckpt):
    return save_ckpt(tmp_path / "m.pt", tiny(block_size=64, n_layer=1, n_head=2, n_kv_head=1, n_embd=16), nano80)


@pytest.fixture
def prompts(monkeypatch):
    """The prompt ids the sample command hands to generate (which then makes no token)."""
    seen = []

    def fake_generate(model, ids, config, tokenizer=None, on_sample=None):
        seen.append(list(ids))
        return iter(())

    monkeypatch.setattr(sampling, "generate", fake_generate)
    return seen


def test_sample_system_builds_the_prepared_question(tiny_ckpt, nano80, capsys, prompts):
    text = "Answer briefly."
    rc = sample_cmd.main(["-m", str(tiny_ckpt), "--instruct", "--system", text, "-p", "who are you?", "-t", "0"])
    assert rc == 0, capsys.readouterr().err
    assert prompts[-1] == sampling.instruct_prompt(nano80, with_system(text, "who are you?"))
    assert prompts[-1] == [nano80.instruct_id, *nano80.encode("Answer briefly.\nwho are you?"), nano80.response_id]
    # without --system, the plain instruct prompt; an empty --system adds nothing
    assert sample_cmd.main(["-m", str(tiny_ckpt), "--instruct", "-p", "who are you?"]) == 0
    assert sample_cmd.main(["-m", str(tiny_ckpt), "--instruct", "--system", "", "-p", "who are you?"]) == 0
    assert prompts[-2] == prompts[-1] == sampling.instruct_prompt(nano80, "who are you?")
    assert prompts[-1] != prompts[0]
    # an empty question with a system text is still a question
    assert sample_cmd.main(["-m", str(tiny_ckpt), "--instruct", "--system", text, "-p", ""]) == 0
    assert prompts[-1] == [nano80.instruct_id, *nano80.encode(text + "\n"), nano80.response_id]


@pytest.mark.parametrize("argv, status, msg", [  # a usage error (2) and bad input (1), as in nano run
    (["--system", "Answer briefly.", "-p", "hi"], 2,
     "error: --system needs --instruct: the system text goes into the instruct template, before the prompt\n"),
    (["--instruct", "--system", "\udcff", "-p", "hi"], 1,
     "error: --system: the system argument is not UTF-8: byte 0xff at offset 0 (invalid start byte)\n"),
])
def test_sample_system_usage_errors(tiny_ckpt, capsys, prompts, argv, status, msg):
    rc = sample_cmd.main(["-m", str(tiny_ckpt), *argv])
    out, err = capsys.readouterr()
    assert (rc, out, err) == (status, "", msg)
    assert prompts == []  # nothing was generated
