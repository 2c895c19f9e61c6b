"""sampling.chat_prompt: the prompt for a question in a conversation, laid out as
`prepare sft` lays out a multi-turn record (what `nano run --multi-turn` asks)."""

import pytest

from nano_tokenizer import Tokenizer

from nano_train import sampling
from nano_train.data import sft_encode, with_system
from nano_train.sampling import chat_prompt, instruct_prompt

SYSTEM = "请简短回答"
TURNS = [("你好", "你好呀，我是一个模型。"), ("你是谁", "我是心理学家"), ("为什么", "")]
QUESTION = "人的心理是什么"


@pytest.fixture(scope="module")
def tok(shared_file):
    return Tokenizer.load(shared_file("data/tokenizer_4096.json"))


def test_it_is_exported():
    assert "chat_prompt" in sampling.__all__


def test_the_layout_is_the_sft_records(tok):
    """The earlier turns as sft_encode lays them out, then the instruct prompt: the ids of
    the training record up to where the answer to `question` starts."""
    ids, dropped = chat_prompt(tok, TURNS, QUESTION)
    record, _ = sft_encode(tok, [*TURNS, (QUESTION, "答")])
    assert dropped == 0
    assert ids == record[:len(ids)] and record[len(ids):] == [*tok.encode("答"), tok.eos_id]
    assert ids[-1] == tok.response_id and ids.count(tok.eos_id) == len(TURNS)
    # no earlier turn: the plain instruct prompt
    assert chat_prompt(tok, [], QUESTION) == (instruct_prompt(tok, QUESTION), 0)


def test_the_system_text_goes_before_the_earliest_question_only(tok):
    ids, dropped = chat_prompt(tok, TURNS, QUESTION, system=SYSTEM)
    record, _ = sft_encode(tok, [(with_system(SYSTEM, TURNS[0][0]), TURNS[0][1]), *TURNS[1:]])
    assert dropped == 0 and ids == record + instruct_prompt(tok, QUESTION)
    assert ids != chat_prompt(tok, TURNS, QUESTION)[0]
    assert chat_prompt(tok, [], QUESTION, system=SYSTEM) == (instruct_prompt(tok, QUESTION, SYSTEM), 0)
    assert chat_prompt(tok, TURNS, QUESTION, system="") == chat_prompt(tok, TURNS, QUESTION)  # adds nothing


def test_the_oldest_turns_are_dropped_while_the_prompt_is_over_half_the_context(tok):
    full, _ = chat_prompt(tok, TURNS, QUESTION)
    without_first, _ = chat_prompt(tok, TURNS[1:], QUESTION)
    alone = instruct_prompt(tok, QUESTION)
    # exactly half the context is room enough; one token less is not
    assert chat_prompt(tok, TURNS, QUESTION, n_ctx=2 * len(full)) == (full, 0)
    assert chat_prompt(tok, TURNS, QUESTION, n_ctx=2 * len(full) - 1) == (without_first, 1)
    assert chat_prompt(tok, TURNS, QUESTION, n_ctx=2 * len(without_first)) == (without_first, 1)
    # down to the question alone, even when that is over half (generate then says whether it fits)
    assert chat_prompt(tok, TURNS, QUESTION, n_ctx=2 * len(alone)) == (alone, 3)
    assert chat_prompt(tok, TURNS, QUESTION, n_ctx=len(alone)) == (alone, 3)


def test_a_dropped_turn_takes_the_system_text_to_the_next_earliest(tok):
    ids, dropped = chat_prompt(tok, TURNS, QUESTION, system=SYSTEM,
                               n_ctx=2 * len(chat_prompt(tok, TURNS, QUESTION, system=SYSTEM)[0]) - 1)
    record, _ = sft_encode(tok, [(with_system(SYSTEM, TURNS[1][0]), TURNS[1][1]), TURNS[2]])
    assert dropped == 1 and ids == record + instruct_prompt(tok, QUESTION)
    ids, dropped = chat_prompt(tok, TURNS, QUESTION, system=SYSTEM, n_ctx=1)
    assert (ids, dropped) == (instruct_prompt(tok, QUESTION, SYSTEM), 3)


def test_an_answer_given_as_the_models_ids_keeps_its_special_tokens(tok):
    """A generated <|unknown|> stays the one token prepare sft writes for a character the
    vocabulary lacks (its text would be 11 characters); runs of ordinary tokens are
    encoded again from their text, as the training data has them."""
    text = "我是🦜，你好"  # 🦜 is not in tokenizer_4096
    written = tok.encode(text)
    assert written.count(tok.unk_id) == 1
    assert sampling.answer_ids(tok, written) == written
    assert chat_prompt(tok, [("你是谁", written)], QUESTION) == chat_prompt(tok, [("你是谁", text)], QUESTION)
    # special tokens anywhere, several in a row, at both ends
    odd = [tok.unk_id, *tok.encode("我是"), tok.pad_id, tok.unk_id, *tok.encode("你")]
    assert sampling.answer_ids(tok, odd) == odd and sampling.answer_ids(tok, []) == []
    ids, _ = chat_prompt(tok, [("你是谁", odd)], QUESTION)
    assert ids == sft_encode(tok, [("你是谁", odd)])[0] + instruct_prompt(tok, QUESTION)
    assert ids.count(tok.unk_id) == 2
    # the ordinary runs: the text's tokenization, whatever ids wrote it
    assert sampling.answer_ids(tok, tok.encode("我") + tok.encode("是")) == tok.encode("我是")


@pytest.mark.parametrize("turns,question,n_ctx,error", [
    ([("q",)], "x", None, TypeError), ([("q", 1)], "x", None, TypeError), (["qa"], "x", None, TypeError),
    ([], 5, None, TypeError), ([], "x", 0, ValueError), ([], "x", 2.5, ValueError), ([], "x", True, ValueError),
    ([("q", [1, True])], "x", None, TypeError), ([("q", [1, 2.0])], "x", None, TypeError),
    ([("q", [4096])], "x", None, ValueError), ([("q", [-1])], "x", None, ValueError),
])
def test_bad_arguments_are_named(tok, turns, question, n_ctx, error):
    with pytest.raises(error, match="turns|question|n_ctx"):
        chat_prompt(tok, turns, question, n_ctx=n_ctx)
