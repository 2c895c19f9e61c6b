"""The report card says what the model was given where that is not the prompt as
typed: characters the vocabulary lacks became <|unknown|>, or the block size cut it."""

import re

import pytest
import torch

from nano_train import report
from nano_train.data import Dataset
from nano_train.model import ModelConfig, Transformer
from nano_train.train import TrainResult

pytestmark = pytest.mark.usefixtures("one_thread")


def write(path, cfg, dataset_dir, model_prompts_seen=None, monkeypatch=None):
    """report.md for cfg's sample prompts, drawn from a tiny untrained model; the ids
    given to generate are appended to model_prompts_seen."""
    ds = Dataset(dataset_dir)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=ds.tokenizer.vocab_size, block_size=cfg.model.block_size, n_layer=1,
                                    n_embd=32, n_head=2, n_kv_head=1)).eval()
    if model_prompts_seen is not None:
        real_generate = report.generate

        def spy(model, ids, sampler):
            model_prompts_seen.append(list(ids))
            return real_generate(model, ids, sampler)

        monkeypatch.setattr(report, "generate", spy)
    result = TrainResult(4, 1.0, 2.0, 2.0, 4000, 123.0, 1.0, False, path.parent)
    report.write_report(path, cfg=cfg, result=result, model=model, tokenizer=ds.tokenizer, dataset=ds, device="cpu",
                        dtype="float32", world_size=1, n_params=10, n_trainable=10, peak=1e9, peak_source="test",
                        flops_per_token=60.0, val_source=None)
    return path.read_text(encoding="utf-8"), ds.tokenizer


def sample_of(text: str, prompt: str) -> str:
    """The part of the report between prompt's heading and the next heading (or the config)."""
    start = text.index(f"**{prompt}**\n")
    end = min(i for i in (text.find("\n**", start + 1), text.index("## Config")) if i > 0)
    return text[start:end]


def test_a_pretrain_prompt_with_a_character_the_vocabulary_lacks(tmp_path, small_pretrain, tiny_config, monkeypatch):
    cfg = tiny_config(small_pretrain, sample_prompts=["意识🦜是", "意识"], sample_tokens=3, sample_temperature=0.0)
    seen = []
    text, tok = write(tmp_path / "report.md", cfg, small_pretrain, seen, monkeypatch)
    assert tok.unk_id in seen[0]  # 🦜 is not in tokenizer_4096: the model saw <|unknown|>
    part = sample_of(text, "意识🦜是")
    assert "Not as typed: 1 of its characters is not in the vocabulary and became `<|unknown|>`. " \
           "The sample starts with what the model was given." in part
    block = re.search(r"```text\n(.*?)\n```", part, re.S).group(1)
    assert block.startswith("意识<|unknown|>是") and "🦜" not in block
    assert block.startswith(tok.decode(seen[0]))  # what the model was given, then its continuation
    # a prompt the vocabulary writes whole is shown as before: no note
    plain = sample_of(text, "意识")
    assert "Not as typed" not in plain and "```text\n意识" in plain


def test_an_sft_question_with_characters_the_vocabulary_lacks(tmp_path, self_id_sft, tiny_config, monkeypatch):
    cfg = tiny_config(self_id_sft, task="sft", sample_prompts=["你是🦜谁🦜"], sample_tokens=3, sample_temperature=0.0)
    seen = []
    text, tok = write(tmp_path / "report.md", cfg, self_id_sft, seen, monkeypatch)
    assert seen[0].count(tok.unk_id) == 2
    part = sample_of(text, "你是🦜谁🦜")
    assert ("Not as typed: 2 of its characters are not in the vocabulary and became `<|unknown|>`. "
            "The model was given:\n\n```text\n你是<|unknown|>谁<|unknown|>\n```\n\nIts answer:\n\n```text\n") in part


def test_a_prompt_the_block_size_cuts_says_so(tmp_path, small_pretrain, tiny_config, monkeypatch):
    cfg = tiny_config(small_pretrain, sample_prompts=["意识" * 20], sample_tokens=2, sample_temperature=0.0,
                      block_size=8)
    seen = []
    text, tok = write(tmp_path / "report.md", cfg, small_pretrain, seen, monkeypatch)
    assert len(seen[0]) == 7  # room for one new token
    part = sample_of(text, "意识" * 20)
    n = len(tok.encode("意识" * 20))
    assert f"Not as typed: the block size (8) leaves room for the last 7 of its {n} tokens." in part
    assert re.search(r"```text\n(.*?)\n```", part, re.S).group(1).startswith(tok.decode(seen[0]))


def test_sample_headings_and_blocks_render_whatever_the_prompt_and_sample_hold(tmp_path, small_pretrain, tiny_config,
                                                                               monkeypatch):
    """A prompt with a line break, a space at either end or markdown's own characters was a
    bold heading that markdown does not render as one (`** 意识**`, `**a\\nb**`); a sample
    holding ``` ended its block early. Such prompts get "**Prompt**" and a block of their
    own, and every fence is longer than any run of backticks inside it."""
    prompts = ["意识", " 意识", "意识\n是", "*意识*", "意识`是"]
    cfg = tiny_config(small_pretrain, sample_prompts=prompts, sample_tokens=2, sample_temperature=0.0)
    monkeypatch.setattr(report, "generate", lambda model, ids, sampler: iter([]))  # no new tokens: the text is known
    text, tok = write(tmp_path / "report.md", cfg, small_pretrain)
    samples = text[text.index("## Samples"):text.index("## Config")]
    assert "**意识**\n" in samples
    for prompt in prompts[1:]:
        assert f"**{prompt}**" not in samples, prompt
        assert f"**Prompt**\n\n```text\n{prompt}\n```\n\n```text\n{prompt}\n```" in samples, prompt
    assert report._fenced("a\n```\nb") == ["````text", "a\n```\nb", "````"]
    assert report._fenced("x") == ["```text", "x", "```"]


def test_the_default_sft_prompt_is_the_datas_question_as_its_ids_hold_it(tmp_path, shared_file, monkeypatch):
    """A question from the data with characters the vocabulary lacks holds <|unknown|>
    ids: the report asks the model exactly those ids. Decoded and encoded again, each
    became the 11 characters of the text "<|unknown|>", a question no row holds."""
    import json

    from nano_train.data import prepare_sft

    records = [{"question": "鹦鹉是谁", "answer": "我是" + "一二三四五六七八"[:k]} for k in range(1, 9)]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                      encoding="utf-8")
    prepare_sft([tmp_path / "q.jsonl"], shared_file("data/tokenizer_4096.json"), tmp_path / "data", block_size=16,
                val_fraction=0.5, progress=False)
    ds = Dataset(tmp_path / "data")
    tok = ds.tokenizer
    question = tok.encode("鹦鹉是谁")
    assert question.count(tok.unk_id) == 2  # 鹦鹉 are not in tokenizer_4096
    prompts = report.default_prompts("sft", tok, ds.source("val", 16))
    assert prompts == ["<|unknown|><|unknown|>是谁"] * 2 and prompts[0].ids == question
    seen = []
    real_generate = report.generate
    monkeypatch.setattr(report, "generate", lambda m, ids, s: seen.append(list(ids)) or real_generate(m, ids, s))
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_embd=32, n_head=2,
                                    n_kv_head=1)).eval()
    report.samples(model, tok, "sft", prompts, 2, 0.0, seed=0)
    assert seen == [[tok.instruct_id, *question, tok.response_id]] * 2
    given = report.given_prompt(tok, "sft", prompts[0], 16)
    assert given == ("<|unknown|><|unknown|>是谁", "2 of its characters are not in the vocabulary and became "
                                                    "`<|unknown|>`")
