"""What the toolkit must show on real data, with the shipped configs, on a CPU:

1. A small model (4 layers, 128 wide, tokenizer_4096) pretrained on
   pretrain_psycho.txt for a couple of minutes drives the held-out loss well
   below the unigram entropy of the training tokens (the loss of the best
   model that ignores context), and its greedy and low-temperature samples are
   Chinese text in the corpus' style (varied characters whose adjacent pairs the
   corpus holds).
2. SFT on sft_self_id.jsonl (from scratch) makes "你是谁" in instruct mode
   return the trained answer, greedily, as the exact string.
"""

import time
from pathlib import Path

import numpy as np
import pytest

from nano_train.config import load_config
from nano_train.convert import load_checkpoint_model
from nano_train.data import Dataset, prepare_pretrain, prepare_sft
from nano_train.sampling import SamplerConfig, generate, instruct_prompt
from nano_train.train import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SELF_ID_ANSWER = "我是BD4SUR训练的实验性大语言模型Nano，是一只可爱的电子鹦鹉噢(●'v'●)"


def unigram_entropy(tokens: np.ndarray) -> float:
    """Entropy in nats of the token frequencies: the cross-entropy of the best context-free predictor."""
    counts = np.bincount(tokens)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def known_pair_share(text: str, corpus: str) -> float:
    """The share of the text's adjacent character pairs that occur somewhere in the corpus:
    about 1 for text in the corpus' style, 0.6-0.7 for characters drawn by frequency alone."""
    pairs = [text[i:i + 2] for i in range(len(text) - 1)]
    return sum(p in corpus for p in pairs) / max(len(pairs), 1)


def cjk_share(text: str) -> tuple[float, float]:
    """(share of CJK ideographs, share of ideographs + CJK/full-width punctuation) among non-space characters."""
    chars = [c for c in text if not c.isspace()]
    ideo = sum("\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf" for c in chars)
    punct = sum("\u3000" <= c <= "\u303f" or "\uff00" <= c <= "\uffef" or c in "“”‘’—…·" for c in chars)
    return ideo / max(len(chars), 1), (ideo + punct) / max(len(chars), 1)


@pytest.mark.slow
def test_pretrain_psycho_beats_unigram_entropy_and_writes_chinese(tmp_path, shared_file):
    data = tmp_path / "psycho_4096"
    prepare_pretrain([shared_file("data/pretrain_psycho.txt")], shared_file("data/tokenizer_4096.json"), data, progress=False)
    ds = Dataset(data)
    train_tokens = np.concatenate([np.asarray(s) for s in ds.splits["train"]])
    entropy = unigram_entropy(train_tokens)

    cfg, explicit = load_config(CONFIGS / "psycho_small.json",
                                [f"--dataset={data}", f"--out_dir={tmp_path / 'run'}", "--device=cpu"])
    assert (cfg.model.n_layer, cfg.model.n_embd) == (4, 128)
    t0 = time.monotonic()
    result = train(cfg, explicit)
    minutes = (time.monotonic() - t0) / 60

    model, tok = load_checkpoint_model(tmp_path / "run" / "best.pt")
    samples = {}
    for name, temperature in (("greedy", 0.0), ("T=0.7", 0.7)):
        sampler = SamplerConfig(temperature=temperature, max_new_tokens=64, seed=1, stop_tokens=(tok.eos_id,))
        samples[name] = tok.decode(list(generate(model, tok.encode("人的心理"), sampler)))
    print(f"\nunigram entropy of the training tokens: {entropy:.3f} nats; held-out loss: best "
          f"{result.best_val_loss:.3f}, final {result.val_loss:.3f} nats; {result.tokens_seen:,} tokens in "
          f"{minutes:.1f} min ({result.tokens_per_s:,.0f} tokens/s)")
    corpus = Path(shared_file("data/pretrain_psycho.txt")).read_text(encoding="utf-8")
    for name, text in samples.items():
        print(f"{name}: 人的心理{text} (pairs known to the corpus: {known_pair_share(text, corpus):.2f})")

    assert result.best_val_loss < entropy - 1.0, (result.best_val_loss, entropy)
    for name, text in samples.items():
        ideographs, chinese = cjk_share(text)
        assert len(text) >= 20, (name, text)
        assert ideographs >= 0.6 and chinese >= 0.8, (name, text, ideographs, chinese)
        # in the corpus' style, not a repeated character or a frequency-only draw
        assert len(set(text)) >= 8, (name, text)
        assert known_pair_share(text, corpus) >= 0.9, (name, text, known_pair_share(text, corpus))


@pytest.mark.slow
def test_sft_self_id_answers_who_are_you(tmp_path, shared_file):
    data = tmp_path / "self_id_16384"
    # tokenizer_16384_v2 covers every character of the answer (tokenizer_4096 lacks 鹦鹉); rows of the
    # model's block_size 64 + 1, as the README prepares them: every position of its context trains
    prepare_sft([shared_file("data/sft_self_id.jsonl")], shared_file("data/tokenizer_16384_v2.json"), data, block_size=65,
                val_fraction=0.0, progress=False)
    cfg, explicit = load_config(CONFIGS / "sft_self_id.json",
                                [f"--dataset={data}", f"--out_dir={tmp_path / 'run'}", "--device=cpu"])
    t0 = time.monotonic()
    result = train(cfg, explicit)
    model, tok = load_checkpoint_model(tmp_path / "run" / "latest.pt")
    sampler = SamplerConfig(temperature=0.0, max_new_tokens=64, stop_tokens=(tok.eos_id,))
    answers = {q: tok.decode(list(generate(model, instruct_prompt(tok, q), sampler)))
               for q in ("你是谁", "请问你是谁")}
    print(f"\nSFT: {result.step} steps, final train loss {result.train_loss:.4f}, "
          f"{time.monotonic() - t0:.0f} s; answers: {answers}")
    assert answers["你是谁"] == SELF_ID_ANSWER
