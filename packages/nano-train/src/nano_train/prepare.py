"""Prepare training data: text -> token shards, or SFT JSONL -> padded rows with loss masks.

usage:
  python -m nano_train.prepare pretrain --tokenizer VOCAB.json --out_dir DIR [options] TEXT_FILE|FOLDER...
  python -m nano_train.prepare sft --tokenizer VOCAB.json --out_dir DIR --block_size N [options] JSONL_FILE|FOLDER...

pretrain options:
  --docs blank|line|file   what a document is: separated by blank lines (default), one per line, whole files
  --bos_eos                wrap every document in <|bos|> ... <|eos|> (else documents are joined by
                           "\\n" in line mode, "\\n\\n" otherwise)
  --val_fraction F         share of chunks held out for validation (default 0.05)
  --chunk_tokens N         the unit of the split and of the shuffle (default 8192); a training row
                           stays inside a chunk, so it must exceed the model's block_size
                           (an epoch reads at least 1 - block_size / N of the tokens)
  --no_shuffle             keep chunks in corpus order (rows then cross chunk boundaries, except
                           where the other split's chunks were taken out)
  --shard_tokens N         tokens per shard file at most, whole chunks: at least --chunk_tokens
                           (default 100,000,000)
sft options:
  --block_size N           row length; a sample holds up to N tokens, and training reads the first
                           N - 1 of a row as inputs (x = row[:-1], y = row[1:]): pass the model's
                           block_size + 1 to train every position of its context (the model's
                           block_size also works, and trains one position less; at most 1,048,576)
  --too_long skip|truncate|error   samples longer than block_size (default skip, counted; truncate
                           also skips, and counts, a sample whose answer would be cut off entirely)
  --skip_bad               skip (and count) lines that are not valid records (or are over 64 MiB);
                           the first 10 are named on stderr (note: FILE:LINE: why)
                           instead of stopping
  --system prepend|drop|error   a record's system message ({"role": "system"} as messages[0]):
                           prepend (default) joins it and the first question into one question,
                           system text + "\\n" + question (sample --instruct --system makes the
                           same); drop ignores it; error makes the record a bad line
  --val_fraction F         share of samples held out (default 0)
common:
  --seed N (0 to 2^32 - 1, default 1337), --overwrite (replace an existing dataset in DIR), --quiet (no progress bar)

Other files in DIR are never replaced, --overwrite or not: one named like a file of
the new dataset (tokenizer.json, train_000.bin, ...) that the old meta.json does not
list (or with no meta.json there) is an error naming it.

The tokenizer is copied into DIR (tokenizer.json) and its fingerprint recorded
in DIR/meta.json, with the counts, the split and the shard list. The dataset is
built in a hidden temporary directory inside DIR (.prepare.*.tmp) and moved into
place when it is complete: a failed run leaves an existing dataset as it was (a
kill -9 while the files move in leaves neither: the next prepare into DIR replaces
what is left, --overwrite or not). A UTF-8 byte-order mark at the start of an input
file is dropped; a file that starts with a UTF-16 or UTF-32 one, or shows their NUL
bytes without one, is an error saying so (convert it with iconv). Each
input is a regular file given once (the same file by two paths is an error),
or a folder: its files and its subfolders' files, in path order (names that start
with "." are skipped, and so are --out_dir and the --tokenizer file when they lie
inside; links to folders are not followed). The summary's tokens per character
counts the documents' tokens only, not separators or <|bos|>/<|eos|>; it ends
with a warning when the training or the validation split is too short for a model
of the default block_size (512), or when over 10% of the text tokens are
<|unknown|> (a vocabulary made for other text; for sft, over 10% of the tokens or
of the answer tokens trained on), and a note when whole chunks make the validation
split much larger than --val_fraction.

--tokenizer takes a vocabulary: a tokenizer JSON file (a dataset's tokenizer.json
is one) or a .bin model that carries one; a training checkpoint (.pt) is not one.

One prepare at a time per DIR: the run holds a lock on DIR/.prepare.lock (removed
at the end), and a second prepare into DIR meanwhile stops at once with an error
naming the first one's pid. With the lock held, temporary directories left by a
prepare that was killed are removed, with a note. (Not on Windows: no lock there.)

Exit status: 0 done, 1 a file could not be read or written (standard output
included: the dataset is complete then, and the error line says so), 2 bad
arguments or data, 130 interrupted by Ctrl-C, SIGTERM or SIGHUP (one line says what DIR holds:
nothing new, or the complete dataset when it came too late to stop it; while
prepare is still starting, that nothing was written).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import sys
from pathlib import Path

from nano_train import (INT_TEXT, discard_stdout, either_spelling, standard_streams, file_stamp, integer,
                        interrupts, number)

# nano_train.data (numpy) is imported where it is used, inside main's handling of
# Ctrl-C: that import takes a moment, and a Ctrl-C meanwhile is one line, not a traceback.


def seed_int(text: str) -> int:
    from nano_train.data import MAX_SEED

    if not INT_TEXT.fullmatch(text):
        raise ValueError(text)
    value = int(text)
    if not 0 <= value <= MAX_SEED:
        raise ValueError(text)
    return value


seed_int.__name__ = "seed (an integer from 0 to 2^32 - 1)"  # what argparse calls the type in its error


def keyword_defaults(function) -> dict:
    """A function's keyword arguments' defaults: the options' defaults are the library's."""
    return {name: p.default for name, p in inspect.signature(function).parameters.items() if p.default is not p.empty}


def build_parser() -> argparse.ArgumentParser:
    from nano_train.data import DOC_MODES, SYSTEM_POLICIES, TOO_LONG, prepare_pretrain, prepare_sft

    pre_default, sft_default = keyword_defaults(prepare_pretrain), keyword_defaults(prepare_sft)
    assert pre_default["seed"] == sft_default["seed"]  # (one --seed option for both)

    parser = argparse.ArgumentParser(prog="python -m nano_train.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tokenizer", required=True,
                        help="vocabulary: a tokenizer JSON file (a dataset's tokenizer.json) or a .bin model "
                             "(a checkpoint .pt is not one)")
    common.add_argument("--out_dir", required=True, help="directory for meta.json, tokenizer.json and the shards")
    common.add_argument("--seed", type=seed_int, default=pre_default["seed"],
                        help=f"the held-out split's and the shuffle's seed, 0 to 2^32 - 1 (default {pre_default['seed']})")
    common.add_argument("--overwrite", action="store_true", help="replace the dataset already in --out_dir")
    common.add_argument("--quiet", action="store_true", help="no progress bar")
    pre = sub.add_parser("pretrain", parents=[common], help="text files -> token shards")
    pre.add_argument("inputs", nargs="+", metavar="TEXT",
                     help="text files, or folders of them (every file inside, in path order)")
    pre.add_argument("--docs", choices=DOC_MODES, default=pre_default["doc_mode"],
                     help="what a document is: paragraphs between blank lines (default), lines, or files")
    pre.add_argument("--bos_eos", action="store_true", help="wrap each document in <|bos|> ... <|eos|>")
    pre.add_argument("--val_fraction", type=number, default=pre_default["val_fraction"],
                     help=f"share of chunks held out (default {pre_default['val_fraction']})")
    pre.add_argument("--chunk_tokens", type=integer, default=pre_default["chunk_tokens"],
                     help=f"tokens per chunk, the unit of the split and the shuffle (default {pre_default['chunk_tokens']})")
    pre.add_argument("--no_shuffle", action="store_true", help="keep the chunks in corpus order")
    pre.add_argument("--shard_tokens", type=integer, default=pre_default["shard_tokens"],
                     help=f"tokens per shard file at most, whole chunks: at least --chunk_tokens "
                          f"(default {pre_default['shard_tokens']:,})")
    sft = sub.add_parser("sft", parents=[common], help="JSONL question/answer files -> padded rows + masks")
    sft.add_argument("inputs", nargs="+", metavar="JSONL",
                     help="JSONL files, or folders of them (every file inside, in path order)")
    sft.add_argument("--block_size", type=integer, required=True, metavar="N",
                     help="tokens per row; training reads N - 1 of them as inputs: the model's block_size + 1 "
                          "trains its whole context (its block_size also works, one position less)")
    sft.add_argument("--too_long", choices=TOO_LONG, default=sft_default["too_long"],
                     help="a sample longer than a row: skip it (default), truncate it, or stop with an error")
    sft.add_argument("--skip_bad", action="store_true", help="skip and count bad lines instead of stopping (the first 10 named on stderr)")
    sft.add_argument("--system", choices=SYSTEM_POLICIES, default=sft_default["system"],
                     help="a record's system message: joined to the first question (default), dropped, or an error")
    sft.add_argument("--val_fraction", type=number, default=sft_default["val_fraction"],
                     help=f"share of samples held out (default {sft_default['val_fraction']:g}"
                          + (": " if sft_default["val_fraction"] == 0 else "; 0: ") + "no validation loss, no best.pt)")
    return parser


def _meta_stamp(out_dir: Path) -> tuple[int, int, int] | None:
    """What tells one meta.json in out_dir from another: a new one is a new file (written
    aside, then moved in), so its inode differs; None when there is none."""
    from nano_train.data import META

    return file_stamp(out_dir / META)


def _prepare(args: argparse.Namespace):
    from nano_train.data import prepare_pretrain, prepare_sft

    if args.kind == "pretrain":
        return prepare_pretrain(
            args.inputs, args.tokenizer, args.out_dir, doc_mode=args.docs, bos_eos=args.bos_eos,
            val_fraction=args.val_fraction, chunk_tokens=args.chunk_tokens, seed=args.seed,
            shuffle=not args.no_shuffle, shard_tokens=args.shard_tokens, overwrite=args.overwrite,
            progress=not args.quiet)
    return prepare_sft(
        args.inputs, args.tokenizer, args.out_dir, block_size=args.block_size,
        val_fraction=args.val_fraction, seed=args.seed, too_long=args.too_long, skip_bad=args.skip_bad,
        system=args.system, overwrite=args.overwrite, progress=not args.quiet)


def main(argv: list[str] | None = None) -> int:
    standard_streams()
    interrupts.as_ctrl_c()  # SIGTERM and SIGHUP remove what was staged, as Ctrl-C does
    try:  # the first thing imports numpy
        from nano_train.data import DataError, path_text

        parser = build_parser()
        args = parser.parse_args(either_spelling(parser, argv))
        out_dir = Path(args.out_dir)
        shown = path_text(out_dir)  # standard output may not take a name that is not UTF-8 as it is
        before = _meta_stamp(out_dir)
    except KeyboardInterrupt:
        print("\nerror: interrupted while starting; nothing was written", file=sys.stderr, flush=True)
        return 130
    try:
        try:
            summary = _prepare(args)
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except OSError as e:  # an unreadable input, an unwritable --out_dir, a full disk
            print(f"error: {e.filename}: {e.strerror}" if e.filename and e.strerror else f"error: {e}",
                  file=sys.stderr)
            return 1
        head, *notes = summary.text().split("\n")
        status = 0
        try:
            print(f"{shown}: {head}", flush=True)
        except OSError as e:  # a closed pipe, a full disk
            discard_stdout()
            print(f"error: writing standard output: {e.strerror or e}; the dataset in {shown} is complete",
                  file=sys.stderr)
            status = 1
        with contextlib.suppress(OSError):  # its warnings and notes: on standard error, as every command's
            for line in notes:
                print(line, file=sys.stderr, flush=True)
        return status
    except KeyboardInterrupt:
        # (prepare holds Ctrl-C back while the files move in: the dataset is then there whole, or not at all)
        after = _meta_stamp(out_dir)
        what = (f"the dataset in {shown} is complete" if after is not None and after != before else
                f"nothing was written to {shown}" + (" (its dataset is as it was)" if before else ""))
        print(f"\nerror: interrupted; {what}", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
