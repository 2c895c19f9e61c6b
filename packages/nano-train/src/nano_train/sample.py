"""Generate text with a Nano model, streamed to stdout.

usage: python -m nano_train.sample -m MODEL [-l LORA.bin] -p PROMPT [options]
       python -m nano_train.sample -m MODEL [-l LORA.bin] [--multi-turn] [options] < QUESTIONS
       (hatch run train:sample ...)

  -m, --model PATH            a .bin model file or a .pt training checkpoint (told apart
                              by their first bytes, whatever the name)
  -l, --lora PATH             a LoRA .bin to attach to the model
  -p, --prompt TEXT           the prompt (UTF-8); "-" reads it from stdin; without -p: a chat,
                              one instruct-mode question per line of stdin, one answer per
                              line of stdout (as `nano run` without -p)
  --multi-turn                the chat keeps the conversation: each question is asked after
                              the earlier turns (sampling.chat_prompt), as `nano run --multi-turn`
  --instruct                  wrap the prompt in the SFT template
                              (<|instruct_mark|> prompt <|response_mark|>)
  --system TEXT               with --instruct (or the chat): a system text, put before the
                              prompt as `prepare sft` puts a record's system message (TEXT, a
                              line break, the prompt)
  -t, --temperature T         0 = greedy (default 1.0)
  -k, --top-k K               keep the K most likely tokens (0 = off; at most 2^30)
  --top-p P                   keep the smallest set with probability >= P (1 = off)
  --min-p P                   drop tokens below P * the top probability (0 = off)
  -r, --repetition-penalty R  push seen tokens down (1 = off)
  -n, --max-tokens N          at most N new tokens (default 256; 0 = until the context
                              is full; at most 2^30)
  -s, --seed S                sampler seed in [0, 2^64) (default 0)
  --stop TEXT                 stop at this token or text (repeatable); <|eos|> always stops
  --seq2seq                   one full-attention forward, argmax per position
                              (automatic for full-attention models)
  --tokenizer JSON            a vocabulary for models whose file carries none (for one
                              that carries its own, it must be that one)
  --profile                   print time to first token and tokens/s to stderr, counted
                              as `nano run --profile` counts them (see the README)
  --device DEV                cpu (default), cuda, cuda:N, mps, or auto (cuda, then mps,
                              then cpu): the devices a training run takes
  --threads N                 CPU threads for torch, 1..1024 (default: torch's choice; 1
                              is often fastest for tiny models). The logits' rounding,
                              so at -t > 0 now and then the text, can depend on it

The chat answers as `nano run`'s does: an empty line gets an empty line, a line that
fails (not UTF-8, a NUL byte, too long for the context) gets its error on stderr
("error: line N: ...") and an empty line, and the lines after it are still answered
(exit status 1); an answer's line breaks, carriage returns and backslashes are written
\n, \r and \\ (at a terminal, answers are streamed as they are).

Generation stops after N tokens, when the context is full, at a --stop, or at <|eos|>
(in every mode, as the C engine's `nano run`). Numbers are read as `nano run` reads
them: integers (-k, -n, -s, --threads) as ASCII digits ('+5', ' 5' and '1_000' are
not integers; -k -1 is one out of range); the float settings
as decimal numbers (not hex floats, inf or nan), each checked as the float32 the
engine stores (--min-p 1.00000001 is 1, -t 1e-320 is 0: greedy). Options take their
value as the next argument or after '=' (--top-p=0.9), a short one attached (-t0.5);
no abbreviation is taken (--temp is not --temperature), as in nano run.

A usage error gets exit status 2, as in `nano run`, and one `error: ...` line on
stderr (or argparse's usage for a command line it cannot parse: an unknown option, no
-m): a bad option value (out of range, not a number, a --device a training run would
refuse, such as cpu:1), an empty prompt, a --stop text that is empty or that the
vocabulary cannot write, options that do not go together. The rest gets exit status 1:
a bad or missing file, a vocabulary that does not fit, a prompt that is not UTF-8 or
longer than the context, a device this machine cannot use (cuda without CUDA). A
reader that goes away (`| head`) ends it quietly with exit status 1; Ctrl-C with exit
status 130.

Examples:
  python -m nano_train.sample -m ../shared/fixtures/psycho_230k_1214_q80.bin -p "人的心理" -t 0 -n 32
  python -m nano_train.sample -m ../shared/fixtures/sort6_f32.bin --seq2seq -p 251212
  echo "什么是短波？" | python -m nano_train.sample -m sft.pt --instruct -p - -t 0.7 -k 20
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from nano_train import discard_stdout, either_spelling, standard_streams

__all__ = ["main", "build_parser"]


MAX_THREADS = 1024  # as the C CLI's --threads
MAX_COUNT = 1 << 30  # the largest -k and -n, as the C CLI's


class UsageError(Exception):
    """A usage error (a bad option value, options that do not go together): one line,
    exit status 2, as `nano run` gives it."""


class BadInput(Exception):
    """Bad input that is not a usage error (a bad file, a prompt that is not UTF-8):
    one line, exit status 1."""


# decimal numbers only, as `nano run` reads them: no hex float, inf, nan, spaces or '_'
_UNSIGNED = r"([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?"
_DECIMAL = re.compile(r"[+-]?" + _UNSIGNED)


def _number(text: str) -> float:
    if not _DECIMAL.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return float(text)


def _integer(text: str) -> int:
    """ASCII digits, a '-' allowed before them (int() would also take '+5', ' 5', '1_000')."""
    if not re.fullmatch(r"-?[0-9]+", text):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(text)


def _seed(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text):
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return int(text)


def _one_line(e: Exception) -> str:
    """A message on one line (torch's errors span many); torch is imported late, for --help."""
    from .checkpoint import one_line

    return one_line(e)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nano_train.sample",
        allow_abbrev=False,  # --temp is not --temperature, as in nano run (a typo must not pass)
        description="Generate text with a Nano model (.bin file or .pt checkpoint), streamed to stdout.",
        epilog="Exit status: 2 for a usage error (a bad option value, an empty prompt, a --stop text the "
               "vocabulary cannot write), 1 for bad input (a bad file, a prompt too long for the context), "
               "as nano run. Example: python -m nano_train.sample -m model.bin -p \"hello\" -t 0.8 -k 40",
    )
    # a value that starts with '-' is still the option's value when it is a decimal number
    # (-t -1e-46; argparse's own pattern takes no exponent): no option looks like one
    p._negative_number_matcher = re.compile("^-" + _UNSIGNED + "$")
    p.add_argument("-m", "--model", required=True, help="a .bin model file or a .pt training checkpoint")
    p.add_argument("-l", "--lora", help="a LoRA .bin file to attach")
    p.add_argument("-p", "--prompt", help='the prompt text; "-" reads stdin; without -p: a chat, one question '
                                          'per line of stdin, one answer per line')
    p.add_argument("--multi-turn", action="store_true",
                   help="the chat (no -p) keeps the conversation, as nano run --multi-turn")
    p.add_argument("--instruct", action="store_true", help="use the SFT template; <|eos|> stops")
    p.add_argument("--allow-special", action="store_true",
                   help="read special-token text in the prompt as those tokens (-p '<|bos|>' starts a document, "
                        "for a model trained with --bos_eos); not with --instruct")
    p.add_argument("--system", metavar="TEXT",
                   help="with --instruct (or the chat): a system text before the prompt, as prepare sft puts a "
                        "system message")
    p.add_argument("-t", "--temperature", type=_number, default=1.0, help="0 = greedy (default 1.0)")
    p.add_argument("-k", "--top-k", type=_integer, default=0, help="0 = off; at most 2^30")
    p.add_argument("--top-p", type=_number, default=1.0, help="1 = off")
    p.add_argument("--min-p", type=_number, default=0.0, help="0 = off")
    p.add_argument("-r", "--repetition-penalty", type=_number, default=1.0, help="1 = off")
    p.add_argument("-n", "--max-tokens", type=_integer, default=256,
                   help="most new tokens (default 256; 0 = until the context is full; at most 2^30)")
    p.add_argument("-s", "--seed", type=_seed, default=0, help="sampler seed in [0, 2^64) (default 0)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop at this token or text (repeatable); <|eos|> always stops")
    p.add_argument("--seq2seq", action="store_true",
                   help="full attention, one forward, argmax per position (automatic for full-attention models)")
    p.add_argument("--tokenizer", help="vocabulary JSON for a model file without one")
    p.add_argument("--profile", action="store_true", help="time to first token and tokens/s on stderr")
    p.add_argument("--device", default="cpu",
                   help="cpu (default), cuda, cuda:N, mps, or auto (cuda, then mps, then cpu), as in training")
    p.add_argument("--threads", type=_integer, default=None,
                   help=f"CPU threads for torch, 1..{MAX_THREADS} (default: torch's choice)")
    return p


# SamplerConfig's fields as the options that set them, for its errors
SAMPLER_OPTIONS = {"temperature": "-t", "top_k": "-k", "top_p": "--top-p", "min_p": "--min-p",
                   "repetition_penalty": "-r", "max_new_tokens": "-n", "seed": "-s"}

# The options a seq2seq forward has no use for (argparse dest, as typed); given
# for a full-attention model, they are named in a note, as `nano run` does.
NOT_SEQ2SEQ = (("temperature", "--temperature"), ("top_k", "--top-k"), ("top_p", "--top-p"),
               ("min_p", "--min-p"), ("repetition_penalty", "--repetition-penalty"),
               ("max_tokens", "--max-tokens"), ("seed", "--seed"), ("stop", "--stop"), ("instruct", "--instruct"),
               ("system", "--system"), ("allow_special", "--allow-special"), ("multi_turn", "--multi-turn"))


def _seq2seq_note(args) -> str | None:
    """The note for a seq2seq run: what it does, and the options given that it ignores
    (those set to something other than their default); None for a plain `--seq2seq` run."""
    parser = build_parser()
    unused = [flag for dest, flag in NOT_SEQ2SEQ if getattr(args, dest) != parser.get_default(dest)]
    if args.seq2seq and not unused:
        return None
    what = "seq2seq was asked for" if args.seq2seq else f"{args.model} has full attention"
    note = f"note: {what}: one forward, the argmax at every position"
    return note + ("; not used for it: " + ", ".join(unused) if unused else "")


def _utf8(raw: bytes, where: str) -> str:
    """The prompt's bytes as text; a BadInput naming where they came from and the
    offset of the first byte that is not UTF-8 (it would be lost, not tokenized)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"{where} is not UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start} "
                         f"({e.reason})") from None


def _argument(arg: str, where: str) -> str:
    """A command-line argument as text; a BadInput naming `where` if it is not UTF-8."""
    # Bytes that are not UTF-8 reach Python as lone surrogates; os.fsencode gives them back.
    try:
        raw = os.fsencode(arg)
    except UnicodeEncodeError as e:  # a surrogate that stands for no byte (a caller's string)
        raise BadInput(f"{where} is not text: a lone surrogate at character {e.start}") from None
    return _utf8(raw, where)


def _prompt(arg: str) -> str:
    """The prompt -p gives: the argument itself, or standard input for "-" (a final
    line break dropped; line breaks read as \\n, as text-mode reading does)."""
    if arg != "-":
        return _argument(arg, "-p: the prompt argument")
    if sys.stdin is None:  # started with standard input closed
        raise BadInput("-p -: standard input is closed")
    if hasattr(sys.stdin, "buffer"):
        text = _utf8(sys.stdin.buffer.read(), "-p -: standard input")
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    else:  # a text stream without bytes beneath (an io.StringIO)
        text = sys.stdin.read()
    return text.rstrip("\n")


def _input_file(name: str, option: str) -> Path:
    if name == "":  # an unset shell variable: it would read as "." (or -l and --tokenizer as not given)
        raise BadInput(f"{option}: the path is empty")
    path = Path(name)
    if path.is_dir():
        raise BadInput(f"{path}: is a directory, not a file")
    if not path.exists():
        raise BadInput(f"{path}: not found")
    return path


def check_device_name(name: str) -> None:
    """A UsageError unless name is one a training run takes (system.device): auto, cpu,
    cuda, cuda:N, mps. Checked with the other options, before any file is read."""
    from .config import DEVICE_NAMES, DEVICES_TEXT

    if DEVICE_NAMES.fullmatch(name) is None:
        raise UsageError(f"--device must be {DEVICES_TEXT}, got {name!r}")


def _device(name: str):
    """The torch device (its name checked by check_device_name), checked before anything
    is loaded onto it: one this machine has."""
    import torch

    from .config import auto_device

    try:
        device = torch.device(auto_device() if name == "auto" else name)
    except (RuntimeError, ValueError) as e:  # an index past torch's range (cuda:99999999999999999999)
        raise BadInput(f"--device {name}: {_one_line(e)}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise BadInput(f"--device {name}: this machine has no CUDA device usable by torch")
        if device.index is not None and device.index >= count:
            raise BadInput(f"--device {name}: no such CUDA device (this machine has {count}: 0..{count - 1})")
    return device


def _load(args, need_tokenizer: bool = True):
    """(model, tokenizer) from the arguments (checked: check_device_name); everything the user
    can get wrong here is a BadInput.
    The tokenizer is None for a model file that carries none (and no --tokenizer) where
    need_tokenizer is False (evaluate's dataset brings its own)."""
    from .convert import load_lora_bin, load_model

    path = _input_file(args.model, "-m")
    lora = _input_file(args.lora, "-l") if args.lora is not None else None
    vocab = _input_file(args.tokenizer, "--tokenizer") if args.tokenizer is not None else None
    device = _device(args.device)
    # --seq2seq asks for full attention; a file that records causal attention refuses it
    model, tokenizer = load_model(path, is_causal=False if args.seq2seq else None)
    if lora:
        load_lora_bin(model, lora)
    if vocab:
        from nano_tokenizer import Tokenizer

        own, tokenizer = tokenizer, Tokenizer.load(vocab)
        if tokenizer.vocab_size != model.config.vocab_size:
            raise BadInput(
                f"{vocab}: the vocabulary has {tokenizer.vocab_size} tokens, the model {model.config.vocab_size}"
            )
        # a model that carries its vocabulary was trained with it: another one of the same size
        # would silently turn its ids into other text
        if own is not None and own.fingerprint() != tokenizer.fingerprint():
            raise BadInput(f"{vocab}: not the vocabulary {path} carries (another of the same size: its ids "
                             "would become other text); leave --tokenizer out, the model's own is used")
    if tokenizer is None and need_tokenizer:
        raise BadInput(f"{path}: carries no vocabulary; give one with --tokenizer")
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as e:
        raise BadInput(f"--device {args.device}: cannot use it: {_one_line(e)}") from None
    return model.eval(), tokenizer


def _too_long(e: ValueError, args, n_prompt: int, n_text: int, block: int) -> ValueError:
    """generate's error for a prompt (n_prompt tokens) that leaves no room, with the way to
    run a full-attention model where its text (n_text tokens, without the instruct marks)
    fits the block of a file that reads as causal, as nano run says it."""
    from .convert import unrecorded_attention

    fits = n_prompt >= block and n_text <= block and not args.seq2seq
    layout = unrecorded_attention(args.model) if fits else None
    if layout is None:
        return e
    return ValueError(f"{e}; a full-attention model runs with --seq2seq (layout {layout} cannot record the "
                      "attention kind: it reads as causal)")


def _unknown_note(tok, ids: list[int], where: str | None = None) -> None:
    """A note on stderr when characters of the prompt (or --system text), or of a chat's
    line (`where`), are not in the vocabulary: each became <|unknown|>, so the model is
    not given the text as typed."""
    n = ids.count(tok.unk_id)
    if not n:
        return
    chars = f"{n} character{'s' if n > 1 else ''}"
    said = f"{where}: {chars}" if where else f"{chars} of the prompt"  # the line's, as `nano run` words it
    print(f"note: {said} {'are' if n > 1 else 'is'} not in the vocabulary and became <|unknown|>", file=sys.stderr)


def _context_note(args, block: int, n_prompt: int, n: int, where: str = "") -> None:
    """The note for a generation that filled the context before -n tokens came."""
    from .data import quantity

    if args.max_tokens and n < args.max_tokens and n_prompt + n == block + 1:  # (the last token needs no room)
        print(f"note: {where}the context ({block} tokens, the model's block size) filled after "
              f"{quantity(n, 'generated token')}, short of -n {args.max_tokens}", file=sys.stderr)


def _escaped(text: str) -> str:
    """An answer on one line, as `nano run`'s chat writes it: \\n, \\r and \\\\ for a line
    break, a carriage return and a backslash."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def _chat(args, model, tok, sc: "SamplerConfig", system: str | None, out) -> int:
    """The chat (no -p), as `nano run`'s: one instruct-mode question per line of standard
    input, one answer per line (see the module docstring); with --multi-turn each question
    after the earlier turns (chat_prompt over the block size, the dropped ones left for
    good). A full-attention model gets a seq2seq forward per line. Returns the exit status."""
    from .data import quantity
    from .sampling import chat_prompt, generate, instruct_prompt, seq2seq

    if sys.stdin is None:
        raise BadInput("the chat reads its questions from standard input, which is closed")
    tty = sys.stdin.isatty() and out.isatty()
    block = model.config.block_size
    causal = model.config.is_causal and not args.seq2seq
    if not causal:
        note = _seq2seq_note(args)
        if note:
            print(note, file=sys.stderr)
    turns: list[tuple[str, list[int]]] = []
    status = lineno = 0
    while True:
        if tty:
            print("> ", end="", file=sys.stderr, flush=True)
        raw = sys.stdin.buffer.readline()
        if not raw:
            return status
        lineno += 1
        where = f"line {lineno}"
        raw = raw.rstrip(b"\r\n")
        nul = raw.find(b"\0")
        try:
            if nul >= 0:
                raise BadInput(f"the line holds a NUL byte (at byte {nul})")
            question = _utf8(raw, "the line")
            if not question:
                answer = ""
            elif not causal:
                ids = tok.encode(question)
                _unknown_note(tok, ids, where)
                answer = tok.decode(seq2seq(model, ids))
            else:
                dropped = 0
                if args.multi_turn:
                    ids, dropped = chat_prompt(tok, turns, question, system, n_ctx=block)
                else:
                    ids = instruct_prompt(tok, question, system)
                # the new question's ids (with the system text when it went there): from the last
                # <|instruct_mark|>, which no encoded text holds
                own = ids[len(ids) - 1 - ids[::-1].index(tok.instruct_id):]
                sampled: list[float] = []  # --profile, as for -p
                try:
                    stream = generate(model, ids, sc, tokenizer=tok,  # a prompt too long: its ValueError
                                      on_sample=lambda _: sampled.append(time.perf_counter()))
                except ValueError as e:
                    raise _too_long(e, args, len(ids), len(tok.encode(question)), block) from None
                if dropped:
                    n_all = len(chat_prompt(tok, turns, question, system)[0])
                    count = f"{dropped} " if dropped > 1 else ""
                    print(f"note: {where}: dropped the {count}oldest turn{'s' if dropped > 1 else ''} of the "
                          f"conversation: with {'them' if dropped > 1 else 'it'} the prompt would be {n_all} "
                          f"tokens, more than half of the context ({block} tokens), which the answer needs",
                          file=sys.stderr)
                    turns = turns[dropped:]
                _unknown_note(tok, own, where)
                pieces, printed = [], []
                t0 = time.perf_counter()  # (generate runs the prompt at the first next(): the notes are not timed)
                for token in stream:
                    printed.append(token)
                    pieces.append(tok.decode([token]))
                    if tty:
                        out.write(pieces[-1])
                        out.flush()
                answer = "".join(pieces)
                _context_note(args, block, len(ids), len(pieces), f"{where}: ")
                if args.profile:
                    print(f"[profile] {where}: prompt {quantity(len(ids), 'token')}; "
                          f"{_profile(len(pieces), t0, sampled)}", file=sys.stderr)
                if args.multi_turn:  # the answer as the model wrote it (a special token stays one)
                    turns.append((question, printed))
        except (BadInput, ValueError) as e:
            print(f"error: {where}: {e}", file=sys.stderr)
            status, answer = 1, ""
        out.write(("" if tty and causal else _escaped(answer)) + "\n")  # (at a terminal it was streamed)
        out.flush()


def _run(args, out) -> int:
    """The command, its arguments parsed; the exit status (0; 1 for a chat line that failed)."""
    from .data import quantity
    from .sampling import SamplerConfig, StopError, _resolve_stops, generate, instruct_prompt, seq2seq

    chat = args.prompt is None
    check_device_name(args.device)
    if args.multi_turn and not chat:
        raise UsageError("--multi-turn is for the chat (no -p): it keeps the conversation from line to line, and "
                         "-p asks one prompt")
    if args.system is not None and not args.instruct and not chat:
        raise UsageError("--system needs --instruct: the system text goes into the instruct template, "
                         "before the prompt")
    if args.allow_special and (args.instruct or chat):
        raise UsageError("--allow-special is for a continuation prompt (-p without --instruct): instruct mode never "
                         "reads the text as special tokens" + ("; the chat (no -p) is instruct mode" if chat else ""))
    system = _argument(args.system, "--system: the system argument") if args.system is not None else None
    prompt = "" if chat else _prompt(args.prompt)
    if not prompt and not args.instruct and not chat:  # the instruct template gives an empty question tokens
        raise UsageError("the prompt is empty (only --instruct takes an empty one, as SFT data may hold)")
    for value, option in ((args.top_k, "-k"), (args.max_tokens, "-n")):
        if value > MAX_COUNT:
            raise UsageError(f"{option}: expected an integer in [0, {MAX_COUNT}] (2^30), got {value}")
    try:
        sc = SamplerConfig(
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            min_p=args.min_p,
            repetition_penalty=args.repetition_penalty,
            max_new_tokens=args.max_tokens,
            stop_tokens=tuple(args.stop),
            seed=args.seed,
        )
    except ValueError as e:  # "FIELD must be ...": name the option that set it
        option = SAMPLER_OPTIONS.get(str(e).split(" ", 1)[0])
        raise UsageError(f"{option}: {e}" if option else str(e)) from None
    if args.threads is not None:
        if not 1 <= args.threads <= MAX_THREADS:
            raise UsageError(f"--threads must be in 1..{MAX_THREADS}, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    model, tok = _load(args)
    if chat:
        try:  # a --stop text that can never work is refused before a question is read
            _resolve_stops(sc.stop_tokens, tok)
        except StopError as e:
            raise UsageError(f"--stop: {e}") from None
        return _chat(args, model, tok, sc, system, out)

    if args.seq2seq or not model.config.is_causal:
        ids = tok.encode(prompt)
        if not ids:
            raise BadInput("the input is empty")
        _unknown_note(tok, ids)
        note = _seq2seq_note(args)
        if note:
            print(note, file=sys.stderr)
        t0 = time.perf_counter()
        result = seq2seq(model, ids)
        out.write(tok.decode(result) + "\n")
        out.flush()
        if args.profile:
            print(f"[profile] seq2seq forward over {len(ids)} tokens: {1e3 * (time.perf_counter() - t0):.1f} ms",
                  file=sys.stderr)
        return 0

    ids = instruct_prompt(tok, prompt, system) if args.instruct else tok.encode(prompt, allow_special=args.allow_special)
    _unknown_note(tok, ids)
    sampled: list[float] = []  # when each token was sampled, stop tokens included
    t0 = time.perf_counter()
    n = 0
    try:
        stream = generate(model, ids, sc, tokenizer=tok, on_sample=lambda _: sampled.append(time.perf_counter()))
    except StopError as e:  # a --stop text that is empty or that the vocabulary cannot write
        raise UsageError(f"--stop: {e}") from None
    except ValueError as e:
        n_text = len(tok.encode(prompt)) if args.instruct else len(ids)  # (the question, without the marks)
        raise _too_long(e, args, len(ids), n_text, model.config.block_size) from None
    for token in stream:
        n += 1
        out.write(tok.decode([token]))
        out.flush()
    out.write("\n")
    out.flush()
    _context_note(args, model.config.block_size, len(ids), n)
    if args.profile:
        print(f"[profile] prompt {quantity(len(ids), 'token')}; {_profile(n, t0, sampled)}",
              file=sys.stderr)
    return 0


def _profile(n: int, t0: float, sampled: list[float]) -> str:
    """What --profile says of a generation that printed n tokens, as `nano run --profile`
    does: the time from the start of the prompt's forward (t0) until the first token was
    sampled, and the rate from the first printed token to the last (the tokens printed
    are the first n sampled: a stop token, or the tokens of a stop text, come after)."""
    if n == 0:
        return "no token generated"
    first = f"time to first token {1e3 * (sampled[0] - t0):.2f} ms; "
    if n == 1:
        return first + "1 token generated, no decode rate (it needs 2 tokens)"
    return first + f"{n} tokens generated, decode {(n - 1) / (sampled[n - 1] - sampled[0]):.1f} tokens/s"


def _error_text(e: Exception) -> str:
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror or e}"
    return _one_line(e)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(either_spelling(parser, argv))
    standard_streams()  # a text the terminal cannot encode must not stop the output
    try:
        if sys.stdout is None:  # started with standard output closed
            raise BadInput("standard output is closed: nowhere to write the text")
        status = _run(args, sys.stdout)
    except BrokenPipeError:
        discard_stdout()  # the reader went away (e.g. `| head -c1`): not worth a message
        return 1
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (BadInput, ValueError, OSError) as e:
        # Bad files (ConvertError wraps nano-format's errors), bad vocabularies (ValueError)
        # and unreadable files are bad input, not bugs: one line, no traceback.
        print(f"error: {_error_text(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
