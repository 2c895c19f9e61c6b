"""Score a model on held-out data: its mean loss per token, perplexity, and bits per character.

usage: python -m nano_train.evaluate -m MODEL --data DIR [--split val|train] [options]
       python -m nano_train.evaluate -m MODEL --text FILE [options]
       (hatch run train:eval ...)

  -m, --model PATH     a .bin model file (F32 or Q8_0, dequantized) or a .pt training
                       checkpoint, as `sample -m` reads them
  -l, --lora PATH      a LoRA .bin to attach to the model first
  --data DIR           a dataset made by `prepare` (pretrain, sft or seq2seq): every row of
                       one split is scored once, in order
  --split NAME         the split of --data to score (default val, the held-out one)
  --text FILE          a UTF-8 text file (not a pipe), read as `prepare pretrain` reads a corpus and
                       encoded with the model's vocabulary: every token but the first is
                       scored once, in windows that do not overlap: after 1 to block_size
                       tokens of context
  --tokenizer JSON     a vocabulary for a model file that carries none
  --seq2seq            read a model file that does not record its attention kind (layout
                       2026.1) as full attention, for a seq2seq dataset
  --max-rows N         score only the first N rows of the split (--data), or the first N
                       windows of block_size tokens (--text); 0 = all (default)
  --batch-size N       rows per forward (default 8)
  --dtype D            float32 (default) or bfloat16 (autocast, as training runs it)
  --device DEV         cpu (default), cuda, cuda:N, mps, or auto (cuda, then mps, then cpu)
  --threads N          CPU threads for torch (default: torch's choice)
  --json               print the figures as one JSON object instead of text
  --quiet              no progress bar

What is scored. A pretraining split is cut into rows of the model's block_size + 1 tokens,
laid end to end from the start of each run of adjacent text (as training lays them, with
no random offset; the up to block_size - 1 tokens at a run's end that fill no row are left
out). An SFT split scores its answers' tokens only, as training does (the loss mask); a
seq2seq split its targets. The result is the mean cross-entropy per scored token in nats (the number
training logs as its loss), its exponential (perplexity) and the same in bits. For
--text, bits per character divides the bits of every scored token by the characters of
the text: a figure that does not depend on the vocabulary, so models with different
vocabularies compare. A checkpoint scored here and its exported .bin give the same loss
to float32 rounding; the Q8_0 export shows what quantization costs.

Training's "val loss" is the mean over the first batch_size x eval_iters rows of one
fixed random order of the split; this command scores every row (or the first --max-rows
in file order), so the two agree only roughly on a small split.

Exit status: 0 with the figures printed; 1 for bad input (a bad or missing file, a
vocabulary that is not the model's, a split with nothing to score, text that is not UTF-8),
2 for a usage error; 130 for Ctrl-C. Errors are one `error: ...` line.

Examples:
  python -m nano_train.evaluate -m runs/psycho_small/best.pt --data data/psycho
  python -m nano_train.evaluate -m ../shared/fixtures/psycho_230k_1214_q80.bin --text ../shared/data/pretrain_psycho.txt
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from nano_train import discard_stdout, either_spelling, standard_streams, integer
from nano_train.sample import MAX_THREADS

__all__ = ["main", "build_parser", "Score", "score_dataset", "score_text"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nano_train.evaluate",
        allow_abbrev=False,
        description="Score a model (.bin or .pt) on a prepared dataset's split or on a text file: mean loss "
                    "per token, perplexity, bits per token and (for text) bits per character.",
        epilog="Exit status: 0 with the figures printed, 1 for bad input, 2 for a usage error, 130 for Ctrl-C. "
               "Example: python -m nano_train.evaluate -m runs/psycho_small/best.pt --data data/psycho",
    )
    p.add_argument("-m", "--model", required=True, help="a .bin model file or a .pt training checkpoint")
    p.add_argument("-l", "--lora", help="a LoRA .bin file to attach")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--data", metavar="DIR", help="a dataset made by prepare: score one split")
    what.add_argument("--text", metavar="FILE", help="a UTF-8 text file: score every token but the first")
    p.add_argument("--split", default="val", help="the split of --data to score (default val)")
    p.add_argument("--tokenizer", help="vocabulary JSON for a model file without one")
    p.add_argument("--seq2seq", action="store_true",
                   help="read a model file that does not record its attention (layout 2026.1) as full attention")
    p.add_argument("--max-rows", type=integer, default=0,
                   help="score the first N rows (--data) or windows (--text) only; 0 = all (default)")
    p.add_argument("--batch-size", type=integer, default=8, help="rows per forward (default 8)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="float32 (default), or bfloat16 under autocast as training runs it")
    p.add_argument("--device", default="cpu",
                   help="cpu (default), cuda, cuda:N, mps, or auto (cuda, then mps, then cpu), as in training")
    p.add_argument("--threads", type=integer, default=None,
                   help=f"CPU threads for torch, 1..{MAX_THREADS} (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


@dataclass
class Score:
    """What a scoring pass found: the summed cross-entropy (nats) of the tokens scored."""

    nats: float = 0.0
    tokens: int = 0
    rows: int = 0
    characters: int | None = None  # of the text (--text only)
    unknown: int | None = None  # <|unknown|> tokens in the text (--text only)

    @property
    def loss(self) -> float:
        return self.nats / self.tokens

    def figures(self) -> dict:
        """The summary, as --json prints it."""
        out = {"loss": self.loss, "perplexity": _exp(self.loss), "bits_per_token": self.loss / math.log(2),
               **asdict(self)}
        if self.characters:
            out["bits_per_character"] = self.nats / math.log(2) / self.characters
            out["tokens_per_character"] = (self.tokens + 1) / self.characters
        return {k: v for k, v in out.items() if v is not None}


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf


def _batches_of_rows(source, n_rows: int, batch_size: int, bar) -> Iterator[tuple]:
    """Rows 0..n_rows-1 of a row source (data.TokenWindows, SFTRows or Seq2SeqRows) in
    order, batch_size at a time; pretraining windows laid from offset 0 of each run."""
    layout = source.epoch_layout(np.random.default_rng(0))
    if layout is not None:
        layout = np.zeros_like(layout)
    for start in range(0, n_rows, batch_size):
        end = min(start + batch_size, n_rows)
        yield source.fetch(np.arange(start, end, dtype=np.int64), layout)
        bar.update(end)


def _score(model, batches, device, dtype: str, total: Score) -> Score:
    """Adds each batch's summed loss and counted tokens to total (in float64, on the host:
    a text may run to millions of tokens)."""
    from nano_train.train import forward_context_factory, loss_totals

    context = forward_context_factory(device, dtype, "auto")
    for batch in batches:
        nats, tokens = loss_totals(model, [batch], device, context).tolist()
        total.nats += nats
        total.tokens += int(tokens)
        total.rows += len(batch[0])
    return total


def score_dataset(model, dataset, split: str = "val", *, max_rows: int = 0, batch_size: int = 8,
                  device="cpu", dtype: str = "float32", progress: bool = False, fixed_by: str = "the model") -> Score:
    """Scores every row of a prepared dataset's split (a data.Dataset), or its first max_rows.
    The model must use the dataset's vocabulary (the caller checks what it can)."""
    import torch

    from nano_train.data import DataError, Progress

    if split not in dataset.splits:
        raise DataError(f"{dataset.path} has no split {split!r} (it has: {', '.join(sorted(dataset.splits))})")
    causal = model.config.is_causal
    if (dataset.kind == "seq2seq") == causal:
        raise DataError(f"{dataset.path} is a {dataset.kind} dataset and the model uses "
                        f"{'causal' if causal else 'full'} attention: "
                        + ("a seq2seq dataset is scored with a full-attention model (--seq2seq reads a .bin "
                           "that does not record its attention as one)" if causal else
                           "a full-attention model sees the tokens it is asked to predict; score it on seq2seq data"))
    source = dataset.source(split, model.config.block_size, fixed_by=fixed_by, scoring=True)
    if source is None:
        other = [s for s in dataset.splits if s != split and dataset.n_tokens(s) > 0]
        raise DataError(f"the {split} split of {dataset.path} is empty"
                        + (f"; score another (--split {other[0]})" if other else ""))
    n_rows = source.n_rows if max_rows <= 0 else min(max_rows, source.n_rows)
    device = torch.device(device)
    bar = Progress(n_rows, f"{split} rows", unit=" rows", enabled=progress)
    total = _score(model, _batches_of_rows(source, n_rows, batch_size, bar), device, dtype, Score())
    bar.close()
    if total.tokens == 0:
        raise DataError(f"the first {n_rows:,} rows of the {split} split of {dataset.path} hold no token to score "
                        "(their loss masks are all 0)")
    return total


def _windows(ids: np.ndarray, rows: int, T: int) -> tuple:
    """rows windows of T targets from ids: row r reads ids[r*T : r*T + T] and predicts the
    next token at each position; past the end of ids, x is 0 and the target -1 (nothing)."""
    x = np.zeros((rows, T), dtype=np.int64)
    y = np.full((rows, T), -1, dtype=np.int64)
    for r in range(rows):
        w = ids[r * T:r * T + T + 1]
        x[r, :len(w) - 1] = w[:-1]
        y[r, :len(w) - 1] = w[1:]
    return x, y, None


def _text_windows(path: Path, tokenizer, block_size: int, batch_size: int, max_rows: int,
                  total: Score, bar) -> Iterator[tuple]:
    """Batches of windows of the text's token ids (see _windows): every token but the first is
    a target once. The text is read as prepare pretrain reads a corpus (UTF-8, a BOM dropped,
    line ends as \\n), a piece at a time. Where max_rows stops it early, total's counts of
    characters and unknown tokens (which would cover text not scored) are None."""
    from nano_train.data import _refuse_utf16_or_utf32, _utf8_errors

    T = block_size
    _refuse_utf16_or_utf32(str(path))
    unk = tokenizer.unk_id
    total.characters = total.unknown = 0
    windows, pending = 0, np.zeros(0, dtype=np.int64)
    read = [0, 0]  # bytes and tokens read so far: the bar shows the bytes of the tokens scored

    def pieces(f) -> Iterator[str]:
        while text := f.read(1 << 20):
            total.characters += len(text)
            read[0] = f.buffer.tell()
            yield text

    def scored(rows: int) -> None:
        nonlocal windows, pending
        windows += rows
        pending = pending[rows * T:]
        bar.update(int(read[0] * min(1.0, windows * T / max(read[1], 1))))

    def room() -> int:
        return batch_size if max_rows <= 0 else min(batch_size, max_rows - windows)

    left_out = False  # text past the last window max_rows allows
    with open(path, encoding="utf-8-sig") as f, _utf8_errors(path):
        for ids in tokenizer.encode_stream(pieces(f)):
            if room() == 0:
                left_out = True
                break
            if unk is not None:
                total.unknown += int(np.count_nonzero(ids == unk))
            pending = np.concatenate([pending, ids.astype(np.int64)])
            read[1] += len(ids)
            while room() > 0 and len(pending) > room() * T:  # a full batch, and its last target
                rows = room()
                yield _windows(pending, rows, T)
                scored(rows)
    while len(pending) > 1 and room() > 0:  # the end of the text: windows of fewer targets
        rows = min(room(), -(-(len(pending) - 1) // T))
        yield _windows(pending, rows, T)
        scored(rows)
    if left_out or len(pending) > 1:
        total.characters = total.unknown = None


def score_text(model, tokenizer, path, *, max_rows: int = 0, batch_size: int = 8, device="cpu",
               dtype: str = "float32", progress: bool = False) -> Score:
    """Scores a UTF-8 text file (every token after the first, in windows of the model's
    block_size) with a causal model and its vocabulary."""
    import torch

    from nano_train.data import DataError, Progress

    if not model.config.is_causal:
        raise DataError("the model uses full attention: it sees the tokens it is asked to predict, so a text "
                        "scores nothing; score it on a seq2seq dataset (--data)")
    path = Path(path)
    bar = Progress(path.stat().st_size, "score", enabled=progress)
    total = Score()
    _score(model, _text_windows(path, tokenizer, model.config.block_size, batch_size, max_rows, total, bar),
           torch.device(device), dtype, total)
    if total.characters is None:  # (max_rows: the bar stands where the reading stopped)
        bar.end()
    else:
        bar.close()
    if total.tokens == 0:
        raise DataError(f"{path}: nothing to score: the text encodes to fewer than 2 tokens")
    return total


def _check_vocabulary(model, model_tok, dataset, args) -> None:
    """A dataset's vocabulary must be the model's (the same ids for the same text)."""
    from nano_train.sample import BadInput

    if model_tok is not None:  # (--tokenizer gives the vocabulary of a file without one)
        dataset.check_tokenizer(model_tok.fingerprint(), f"the vocabulary {args.tokenizer}" if args.tokenizer
                                else f"the model {args.model}")
    data_tok = dataset.tokenizer
    if data_tok.vocab_size != model.config.vocab_size:
        raise BadInput(f"{args.data}: its vocabulary has {data_tok.vocab_size} tokens, the model "
                       f"{model.config.vocab_size}")


def _describe(model, path) -> str:
    c = model.config
    kind = "causal" if c.is_causal else "full attention"
    return f"{path}: {c.n_layer} layers x {c.n_embd}, block {c.block_size}, vocabulary {c.vocab_size}, {kind}"


def _report(total: Score, model, args, what: str, out) -> None:
    fig = total.figures()
    if args.json:  # (a perplexity past float's range is null: JSON has no Infinity)
        fig = {k: None if v == math.inf else v for k, v in fig.items()}
        print(json.dumps({"model": args.model, "lora": args.lora, "data": what, **fig}, ensure_ascii=False,
                         allow_nan=False), file=out)
        return
    rows = ("row" if args.text is None else "window") + ("" if total.rows == 1 else "s")
    print(f"model: {_describe(model, args.model)}" + (f" + LoRA {args.lora}" if args.lora else ""), file=out)
    print(f"data: {what}: {total.rows:,} {rows}, {total.tokens:,} tokens scored", file=out)
    if total.characters is not None:
        print(f"text: {total.characters:,} characters, {fig['tokens_per_character']:.3f} tokens per character"
              + (f", {total.unknown:,} not in the vocabulary (<|unknown|>)" if total.unknown else ""), file=out)
    line = (f"loss {fig['loss']:.4f} nats/token | perplexity {fig['perplexity']:.2f} | "
            f"{fig['bits_per_token']:.3f} bits/token")
    if "bits_per_character" in fig:
        line += f" | {fig['bits_per_character']:.3f} bits/character"
    print(line, file=out)


def _run(args, out) -> int:
    from nano_train import sample
    from nano_train.sample import BadInput, UsageError

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_rows < 0:
        raise UsageError(f"--max-rows must be 0 (all) or more, got {args.max_rows}")
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        raise UsageError(f"--threads must be in 1..{MAX_THREADS}, got {args.threads}")
    if args.text is not None and args.split != "val":
        raise UsageError("--split goes with --data, not --text")
    sample.check_device_name(args.device)
    import torch

    from nano_train.data import Dataset, _not_a_file
    from nano_train.train import OutOfMemory, needs_memory

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dataset = None
    if args.data is not None:
        if args.data == "":
            raise BadInput("--data: the path is empty")
        if Path(args.data).exists() and not Path(args.data).is_dir():
            raise BadInput(f"--data {args.data}: is {_not_a_file(args.data) or 'a regular file'}, not a dataset folder; "
                           "give the --out_dir of `prepare`, or score a text with --text")
        dataset = Dataset(args.data)
    else:
        text = sample._input_file(args.text, "--text")
        if kind := _not_a_file(text):  # a pipe is read twice (its encoding sniffed first), and may wait forever
            raise BadInput(f"{text}: is {kind}, not a regular file; save the text to a file first")
    model, tok = sample._load(args, need_tokenizer=dataset is None)
    progress = not args.quiet
    if dataset is not None:
        _check_vocabulary(model, tok, dataset, args)
    try:
        with needs_memory(f"scoring {args.batch_size} rows at a time", "lower --batch-size"):
            if dataset is not None:
                total = score_dataset(model, dataset, args.split, max_rows=args.max_rows, batch_size=args.batch_size,
                                      device=model.tok_embd.weight.device, dtype=args.dtype, progress=progress,
                                      fixed_by=f"the model {args.model}")
            else:
                total = score_text(model, tok, text, max_rows=args.max_rows, batch_size=args.batch_size,
                                   device=model.tok_embd.weight.device, dtype=args.dtype, progress=progress)
    except OutOfMemory as e:
        raise BadInput(str(e)) from None
    if not math.isfinite(total.nats):  # (activations past float's range: no figure means anything)
        raise BadInput(f"{args.model}: the loss is not finite ({total.nats}): the model's activations overflow "
                       f"{args.dtype} on this data")
    what = str(args.text) if dataset is None else f"{args.data} ({dataset.kind}, {args.split} split)"
    try:
        _report(total, model, args, what, out)
        out.flush()
    except BrokenPipeError:
        raise
    except OSError as e:  # (a full disk under `> file`): not a bad input file
        discard_stdout()
        raise BadInput(f"writing standard output: {e.strerror or e}") from None
    return 0


def main(argv=None) -> int:
    from nano_train.sample import BadInput, UsageError, _error_text

    parser = build_parser()
    args = parser.parse_args(either_spelling(parser, argv))
    standard_streams()
    try:
        if sys.stdout is None:
            raise BadInput("standard output is closed: nowhere to write the figures")
        return _run(args, sys.stdout)
    except BrokenPipeError:
        discard_stdout()
        return 1
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (BadInput, ValueError, OSError) as e:  # bad files and data (DataError, ConvertError are ValueErrors)
        print(f"error: {_error_text(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nerror: interrupted; nothing was scored", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
