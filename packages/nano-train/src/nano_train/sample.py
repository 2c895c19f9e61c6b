"""Generate text with a Nano model, streamed to stdout.

usage: python -m nano_train.sample -m MODEL [-l LORA.bin] -p PROMPT [options]
       (hatch run train:sample ...)

  -m, --model PATH            a .bin model file or a .pt training checkpoint
  -l, --lora PATH             a LoRA .bin to attach to the model
  -p, --prompt TEXT           the prompt; "-" reads it from stdin
  --instruct                  wrap the prompt in the SFT template
                              (<|instruct_mark|> prompt <|response_mark|>); <|eos|> stops
  -t, --temperature T         0 = greedy (default 1.0)
  -k, --top-k K               keep the K most likely tokens (0 = off)
  --top-p P                   keep the smallest set with probability >= P (1 = off)
  --min-p P                   drop tokens below P * the top probability (0 = off)
  -r, --repetition-penalty R  push seen tokens down (1 = off)
  -n, --max-tokens N          at most N new tokens (default 256)
  -s, --seed S                sampler seed (default 0)
  --stop TEXT                 stop at this token or text (repeatable)
  --seq2seq                   one full-attention forward, argmax per position
                              (automatic for full-attention models)
  --tokenizer JSON            a vocabulary for models whose file carries none
  --profile                   print time to first token and tokens/s to stderr
  --device DEV                cpu (default), cuda, mps, ...
  --threads N                 CPU threads for torch (default: torch's choice; 1 is
                              often fastest for tiny models)

Examples:
  python -m nano_train.sample -m ../shared/fixtures/psycho_230k_1214_q80.bin -p "人的心理" -t 0 -n 32
  python -m nano_train.sample -m ../shared/fixtures/sort6_f32.bin --seq2seq -p 251212
  echo "什么是短波？" | python -m nano_train.sample -m sft.pt --instruct -p - -t 0.7 -k 20
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser"]


class UsageError(Exception):
    """Bad input from the user: reported in one line, exit code 1."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nano_train.sample",
        description="Generate text with a Nano model (.bin file or .pt checkpoint), streamed to stdout.",
        epilog="Example: python -m nano_train.sample -m model.bin -p \"hello\" -t 0.8 -k 40",
    )
    p.add_argument("-m", "--model", required=True, help="a .bin model file or a .pt training checkpoint")
    p.add_argument("-l", "--lora", help="a LoRA .bin file to attach")
    p.add_argument("-p", "--prompt", required=True, help='the prompt text; "-" reads stdin')
    p.add_argument("--instruct", action="store_true", help="use the SFT template; <|eos|> stops")
    p.add_argument("-t", "--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    p.add_argument("-k", "--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--min-p", type=float, default=0.0, help="0 = off")
    p.add_argument("-r", "--repetition-penalty", type=float, default=1.0, help="1 = off")
    p.add_argument("-n", "--max-tokens", type=int, default=256, help="most new tokens (default 256)")
    p.add_argument("-s", "--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop at this token or text (repeatable)")
    p.add_argument("--seq2seq", action="store_true",
                   help="full attention, one forward, argmax per position (automatic for full-attention models)")
    p.add_argument("--tokenizer", help="vocabulary JSON for a model file without one")
    p.add_argument("--profile", action="store_true", help="time to first token and tokens/s on stderr")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    return p


def _load(args):
    """(model, tokenizer) from the arguments; everything the user can get wrong is a UsageError."""
    import torch

    from .convert import load_bin, load_checkpoint_model, load_lora_bin

    path = Path(args.model)
    if not path.is_file():
        raise UsageError(f"model file not found: {path}")
    try:
        torch.device(args.device)
    except RuntimeError as e:
        raise UsageError(f"bad --device {args.device!r}: {e}") from None
    if path.suffix == ".pt":
        model, tokenizer = load_checkpoint_model(path)
        if args.seq2seq and model.config.is_causal:
            raise UsageError(f"{path}: --seq2seq needs a full-attention model; this checkpoint is causal")
    else:
        # Old layouts cannot record full attention: --seq2seq says so for them.
        model, tokenizer = load_bin(path, is_causal=False if args.seq2seq else None)
    if args.lora:
        if not Path(args.lora).is_file():
            raise UsageError(f"LoRA file not found: {args.lora}")
        load_lora_bin(model, args.lora)
    if args.tokenizer:
        from nano_tokenizer import Tokenizer

        tokenizer = Tokenizer.load(args.tokenizer)
        if tokenizer.vocab_size != model.config.vocab_size:
            raise UsageError(
                f"--tokenizer has {tokenizer.vocab_size} tokens, the model {model.config.vocab_size}"
            )
    if tokenizer is None:
        raise UsageError(f"{path} carries no vocabulary; give one with --tokenizer")
    try:
        model = model.to(args.device)
    except (RuntimeError, AssertionError) as e:
        raise UsageError(f"cannot use device {args.device!r}: {e}") from None
    return model.eval(), tokenizer


def _run(args, out) -> None:
    from .sampling import SamplerConfig, generate, instruct_prompt, seq2seq

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if args.prompt == "-":
        prompt = prompt.rstrip("\n")
    if not prompt:
        raise UsageError("the prompt is empty")
    try:
        sc = SamplerConfig(
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            min_p=args.min_p,
            repetition_penalty=args.repetition_penalty,
            max_new_tokens=args.max_tokens,
            stop_tokens=tuple(args.stop) + (("<|eos|>",) if args.instruct else ()),
            seed=args.seed,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    model, tok = _load(args)

    if args.seq2seq or not model.config.is_causal:
        ids = tok.encode(prompt)
        t0 = time.perf_counter()
        result = seq2seq(model, ids)
        out.write(tok.decode(result) + "\n")
        out.flush()
        if args.profile:
            print(f"[profile] seq2seq forward over {len(ids)} tokens: {1e3 * (time.perf_counter() - t0):.1f} ms",
                  file=sys.stderr)
        return

    ids = instruct_prompt(tok, prompt) if args.instruct else tok.encode(prompt)
    t0 = time.perf_counter()
    t_first = None
    n = 0
    for token in generate(model, ids, sc, tokenizer=tok):
        if t_first is None:
            t_first = time.perf_counter()
        n += 1
        out.write(tok.decode([token]))
        out.flush()
    out.write("\n")
    out.flush()
    if args.profile:
        t1 = time.perf_counter()
        if t_first is None:
            print(f"[profile] prompt {len(ids)} tokens, no token generated in {t1 - t0:.3f} s", file=sys.stderr)
        else:
            rate = (n - 1) / (t1 - t_first) if n > 1 and t1 > t_first else float("nan")
            print(
                f"[profile] prompt {len(ids)} tokens; time to first token {1e3 * (t_first - t0):.1f} ms; "
                f"{n} tokens, {rate:.1f} tokens/s after the first",
                file=sys.stderr,
            )


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _run(args, sys.stdout)
    except (UsageError, ValueError, OSError) as e:
        # Bad files (ConvertError wraps nano-format's errors), bad vocabularies and
        # settings (ValueError) and unreadable files are bad input, not bugs:
        # one line, no traceback.
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
