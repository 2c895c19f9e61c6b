"""The report card: a markdown summary written at the end of every run (report.md)."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np
from nano_format import WriteError, write_atomically
from nano_tokenizer import BOS, EOS, PADDING

from nano_train.checkpoint import BEST
from nano_train.metrics import duration, human, read_log
from nano_train.sampling import SamplerConfig, generate, instruct_prompt, seq2seq


class DataPrompt(str):
    """A prompt taken from the data: its text, and in .ids the token ids the data holds,
    which are what the model is given. Its text encoded again would be another prompt
    where the data holds <|unknown|> (a character the vocabulary lacks): the text
    "<|unknown|>" is 11 ordinary characters."""

    ids: list[int]

    def __new__(cls, tokenizer, ids):
        prompt = super().__new__(cls, tokenizer.decode(ids))
        prompt.ids = [int(i) for i in ids]
        return prompt


def default_prompts(task: str, tokenizer, source, n: int = 2) -> list[str]:
    """Prompts taken from the data when the config gives none (DataPrompt): the opening
    of a held-out window (pretraining), the question of an SFT sample or the input of a
    seq2seq row."""
    prompts = []
    for row in range(min(n, source.n_rows)):
        if task == "pretrain":
            x, _, _ = source.fetch(np.array([row * max(source.n_rows // n, 1)]), np.zeros(len(source.shards), np.int64))
            prompts.append(DataPrompt(tokenizer, x[0, :16]))
        elif hasattr(source, "targets"):  # seq2seq rows: the input, without the padding after it
            x, _, _ = source.fetch(np.array([row]), None)
            ids = x[0].tolist()
            pad = tokenizer.special_tokens.get(PADDING)
            while ids and ids[-1] == pad:
                ids.pop()
            prompts.append(DataPrompt(tokenizer, ids))
        else:
            ids = source.tokens[row].tolist()
            try:
                start = ids.index(tokenizer.instruct_id) + 1
                end = ids.index(tokenizer.response_id, start)
            except ValueError:
                continue
            prompts.append(DataPrompt(tokenizer, ids[start:end]))
    return prompts


def _typed_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt's ids: a DataPrompt's own, else its text encoded."""
    return list(prompt.ids) if isinstance(prompt, DataPrompt) else tokenizer.encode(prompt)


def fit_prompt(ids: list[int], room: int, instruct: bool) -> list[int] | None:
    """ids cut to at most `room` tokens, keeping their end; an instruct prompt
    (<|instruct_mark|> question <|response_mark|>) loses the start of its question,
    never a mark. None when not even one token besides the marks fits."""
    if room < (3 if instruct else 1):
        return None
    if len(ids) <= room:
        return ids
    if instruct:
        return ids[:1] + ids[len(ids) - room + 1:]
    return ids[len(ids) - room:]


def prompt_ids(tokenizer, task: str, prompt: str, block_size: int, rows: bool = False) -> list[int] | None:
    """The ids the model is given for prompt: with rows (a seq2seq dataset) its first
    block_size tokens, else (as instruct_prompt lays them out for SFT) cut by fit_prompt to leave a
    position for at least one new token. None when the block size leaves no room (or
    the prompt is empty and the vocabulary has no <|bos|>)."""
    typed = _typed_ids(tokenizer, prompt)
    if rows:
        return typed[:block_size]
    ids = instruct_prompt(tokenizer, typed) if task != "pretrain" else typed
    if not ids:  # an empty prompt starts a document, where the vocabulary has a mark for that
        ids = [tokenizer.special_tokens[BOS]] if BOS in tokenizer.special_tokens else []
    return fit_prompt(ids, block_size - 1, instruct=task != "pretrain") if ids else None


def samples(model, tokenizer, task: str, prompts: list[str], max_new_tokens: int, temperature: float,
            seed: int, rows: bool = False) -> list[tuple[str, str]]:
    """(prompt, completion) pairs from nano_train.sampling.generate, or with
    rows (a seq2seq dataset) the argmax outputs of nano_train.sampling.seq2seq.
    None for a prompt the block size leaves no room for (block size 1, say), or an
    empty pretraining prompt where the vocabulary has no <|bos|> to start from.
    The model is given prompt_ids(prompt), not always the prompt as typed (see given_prompt)."""
    out = []
    stops = (tokenizer.special_tokens[EOS],) if EOS in tokenizer.special_tokens else ()  # a vocabulary may lack it
    sampler = SamplerConfig(temperature=temperature, max_new_tokens=max_new_tokens, stop_tokens=stops, seed=seed)
    for prompt in prompts:
        ids = prompt_ids(tokenizer, task, prompt, model.config.block_size, rows)
        if rows:
            out.append((prompt, tokenizer.decode(seq2seq(model, ids)) if ids else ""))
            continue
        out.append((prompt, None if ids is None else tokenizer.decode(list(generate(model, ids, sampler)))))
    return out


def given_prompt(tokenizer, task: str, prompt: str, block_size: int, rows: bool = False) -> tuple[str, str] | None:
    """(the prompt as the model was given it, decoded, and why that is not the prompt as
    typed) where it is not: characters the vocabulary lacks became <|unknown|>, or the
    block size cut the prompt. None where the model was given the prompt as typed (or
    no room at all). For SFT the text is the question, without the marks around it."""
    ids = prompt_ids(tokenizer, task, prompt, block_size, rows)
    if ids is None:
        return None
    if task != "pretrain" and not rows:
        ids = ids[1:-1]  # <|instruct_mark|> question <|response_mark|>
    typed = _typed_ids(tokenizer, prompt)
    unknown = typed.count(tokenizer.unk_id)
    why = []
    if unknown:
        why.append(f"{unknown} of its characters {'is' if unknown == 1 else 'are'} not in the vocabulary "
                   f"and became `<|unknown|>`")
    if len(ids) < len(typed):
        why.append(f"the block size ({block_size}) leaves room for the {'first' if rows else 'last'} "
                   f"{len(ids)} of its {len(typed)} tokens")
    return (tokenizer.decode(ids), "; ".join(why)) if why else None


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.4f}"


def no_best(out_dir: Path, best_val_loss: float | None) -> str:
    """Why a best validation loss has no best.pt, or "": step 0's evaluation, of the model
    before training, is never saved, and no later one did better (a diverging run, or a
    fine-tuning run that never improved on its base)."""
    if best_val_loss is None or not math.isfinite(best_val_loss) or (out_dir / BEST).exists():
        return ""
    return " (step 0's, before training: no later evaluation did better, so no best.pt was written)"


def write_report(path: Path, *, cfg, result, model, tokenizer, dataset, device, dtype, world_size, n_params,
                 n_trainable, peak, peak_source, flops_per_token, val_source, no_samples: str | None = None,
                 late: bool = False) -> None:
    """The report card at path, written atomically (a kill while it is written leaves the
    old report whole). no_samples: the reason to leave the samples out. late: written when
    a finished run was resumed (its process ended before its report did): result.seconds
    is the run's training time from latest.pt, result.tokens_per_s the rate logged by its
    last training process (None: unknown)."""
    if no_samples is None and cfg.eval.sample_tokens <= 0:
        no_samples = "eval.sample_tokens is 0"
    pairs = []
    if no_samples is None:
        prompts = list(cfg.eval.sample_prompts) or default_prompts(cfg.run.task, tokenizer, val_source)
        pairs = samples(model, tokenizer, cfg.run.task, prompts, cfg.eval.sample_tokens, cfg.eval.sample_temperature,
                        cfg.system.seed, rows=dataset.kind == "seq2seq")
    mfu = flops_per_token * result.tokens_per_s / (peak * world_size) if peak > 0 and result.tokens_per_s else None
    throughput = ("unknown (log.jsonl holds no train records)" if result.tokens_per_s is None else
                  "n/a (no training step was run)" if not result.tokens_per_s else
                  f"{human(result.tokens_per_s)} tokens/s on {world_size} x {device} ({dtype})"
                  + (", logged by the run's last training process" if late else ""))
    status = ("interrupted (latest.pt saved)" if result.interrupted else
              f"stopped by the time budget ({cfg.optim.time_budget:g} s)" if result.out_of_time else "finished")
    shown = str(cfg.run.out_dir)
    if "\n" in shown or "\r" in shown:  # the status line must stay the third (ended_at reads it)
        shown = repr(shown)
    lines = [
        f"# Nano training report: {shown}",
        "",
        f"{cfg.run.task}, {status} at step {result.step} of {cfg.optim.max_iters}, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}.",
        "",
        *(["Written when the finished run was resumed: its process ended after the last checkpoint, before "
           "this report.", ""] if late else []),
        "| | |",
        "|---|---|",
        f"| parameters | {n_params:,} ({n_trainable:,} trained) |",
        f"| model | {cfg.model.n_layer} layers, {cfg.model.n_embd} wide, {cfg.model.n_head} heads "
        f"({cfg.model.n_kv_head} KV), block {cfg.model.block_size}, vocabulary {cfg.model.vocab_size} |",
        f"| dataset | {dataset.path} ({dataset.kind}; {dataset.size_text()}) |",
        f"| tokens seen | {result.tokens_seen:,}"
        + ("" if dataset.kind == "pretrain" else " (every input position of the rows: prompts and padding included)") + " |",
        f"| final train loss | {_fmt(result.train_loss)} |",
        f"| final val loss | {_fmt(result.val_loss)}"
        + (f" (evaluated at step {result.val_step})" if result.val_loss is not None and result.val_step is not None
           and result.val_step != result.step else "") + " |",
        f"| best val loss | {_fmt(result.best_val_loss)}{no_best(path.parent, result.best_val_loss)} |",
        f"| time ({'training, from latest.pt' if late else 'this process'}) | {duration(result.seconds)} |",
        f"| throughput | {throughput} |",
        f"| MFU (estimate) | {'n/a' if mfu is None else f'{100 * mfu:.2f}%'} "
        f"(peak {human(peak, 'FLOP/s')} per device: {peak_source}) |",
        "",
        "## Samples",
        "",
        f"No samples: {no_samples}." if no_samples else
        "One forward pass over each input, the most likely token at every position (seq2seq rows: no sampling, "
        "no new tokens)." if dataset.kind == "seq2seq" else
        f"temperature {cfg.eval.sample_temperature}, up to {cfg.eval.sample_tokens} new tokens.",
        "",
    ]
    for prompt, text in pairs:
        if text is None:
            why = (f"the block size ({cfg.model.block_size}) leaves no room for this prompt and a new token"
                   if prompt or cfg.run.task != "pretrain" or BOS in tokenizer.special_tokens else
                   "an empty prompt starts a document with `<|bos|>`, which the vocabulary lacks")
            lines += [*_heading(prompt, f": no sample, {why}."), ""]
            continue
        lines += [*_heading(prompt), ""]
        given = given_prompt(tokenizer, cfg.run.task, prompt, model.config.block_size,
                             rows=dataset.kind == "seq2seq")
        if cfg.run.task == "pretrain":
            if given:
                lines += [f"Not as typed: {given[1]}. The sample starts with what the model was given.", ""]
            text = (given[0] if given else prompt) + text
        elif given:
            lines += [f"Not as typed: {given[1]}. The model was given:", "", *_fenced(given[0]), "",
                      "Its answer:", ""]
        lines += [*_fenced(text), ""]
    lines += ["## Config", "", "```json", json.dumps(cfg.to_dict(), indent=2, ensure_ascii=False), "```", ""]
    try:
        write_atomically(path, ["\n".join(lines).encode("utf-8")])
    except WriteError as e:  # report.md is a folder, a link, ...: an OSError, as a failed write is
        raise OSError(f"cannot write the report: {e}") from None


def _fenced(text: str) -> list[str]:
    """text as a fenced block that shows it as it is: the fence is longer than any run of
    backticks in it (a sample that writes ``` would otherwise end the block early)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + "text", text, fence]


def _heading(prompt: str, after: str = "") -> list[str]:
    """A sample's heading: the prompt in bold where markdown shows it so (one line, no
    space at either end, none of * _ ` \\ [ < # that markdown would read), else
    "Prompt" and the prompt as a block of its own."""
    if prompt and prompt == prompt.strip() and not re.search(r"[\n\r*_`\\\[<#]", prompt):
        return [f"**{prompt}**{after}"]
    if not prompt:
        return [f"**(empty prompt)**{after}"]
    return [f"**Prompt**{after}", "", *_fenced(prompt)]


# The status line of a run that ended: "<task>, finished at step N of M, <date>." (or stopped
# by its time budget). An interrupted run's says "interrupted (latest.pt saved) at step N".
_ENDED = re.compile(r"\w+, (?:finished|stopped by the time budget \([^)\n]*\)) at step (\d+) of \d+, ")


def ended_at(path: Path) -> int | None:
    """The step at which the report at path says its run ended (finished, or stopped by
    its time budget); None when there is no report, it is an interrupted run's, or it is
    not whole (a report ends with its config block)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError):
        return None
    whole = len(lines) > 3 and "## Config" in lines and lines[-2:] == ["```", ""]
    m = _ENDED.match(lines[2]) if whole else None
    return int(m.group(1)) if m else None


def logged_throughput(log_path: Path) -> tuple[float, dict] | None:
    """(tokens/s, its start record) of the run's last training process that logged train
    records, from log.jsonl: each record's rate weighed by the tokens of the steps it
    covers (the first record includes warm-up). None when there are none."""
    try:
        records = read_log(log_path)
    except OSError:
        return None
    found, start, prev, tokens, seconds = None, None, None, 0.0, 0.0
    for rec in records + [{"kind": "start"}]:  # the sentinel closes the last process
        if rec.get("kind") == "start":
            if seconds > 0:
                found = (tokens / seconds, start)
            start, prev, tokens, seconds = rec, rec.get("step"), 0.0, 0.0
            continue
        step, rate = rec.get("step"), rec.get("tokens_per_s")
        per_step = start.get("tokens_per_step") if start else None
        if rec.get("kind") != "train" or not all(isinstance(v, (int, float)) for v in (step, rate, per_step, prev)):
            continue
        if step > prev and rate > 0:
            tokens += (step - prev) * per_step
            seconds += (step - prev) * per_step / rate
        prev = step
    return found
