"""Data preparation at scale: nano-train's streaming prepare against a whole-text peer, in one run.

Usage:
  python tools/bench/prepare_memory.py [--size-mb MB] [--vocab FILE] [--text FILE] [--work DIR]
                                       [--json OUT]

Writes a corpus of at least --size-mb megabytes (default 1024): --text (default
../shared/data/pretrain_psycho.txt; the shared folder is $NANO_SHARED, else ../shared next
to the repository) repeated whole, into --work (default: a temporary folder, removed at the
end). Then prepares it twice, each in a child process of its own, whose peak resident memory
(ru_maxrss, from wait4) and wall time are measured:

  ours   `python -m nano_train.prepare pretrain --docs file` (the file one document, as
         the peer takes it; otherwise its defaults): the text read in bounded pieces, encoded
         with Tokenizer.encode_stream into a temporary token file, then cut into 8,192-token
         chunks, 5% held out, each split shuffled chunk by chunk into shards.
  peer   what the reference's data preparation does, and what a user writes first: read
         the whole file, encode it in one call, cut the ids 95/5 and write two arrays. It
         encodes with nano-tokenizer's encode_array (our fastest encoder, ids in a numpy
         array rather than a list of Python ints), so it is not slowed or swollen by its
         tokenizer: its memory is that of holding the text and its ids whole.

Both must count the same number of text tokens (exit status 1 otherwise). Prints each one's
MB of text per second and peak RSS, and the ratios. It asserts nothing about speed or memory.
A bad option is one `error: ...` line and exit status 2, before any work; a child that fails
(out of memory, a full disk) one line and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import check_output, cpu_model, fail, load_average, write_json
from tokenizer_speed import check_file, read_text, shared_data

REPO_ROOT = Path(__file__).resolve().parents[2]

# The peer, run as `python -c PEER CORPUS VOCAB OUT_DIR`: whole text, one encode, a 95/5 cut.
PEER = """
import json, sys
import numpy as np
from nano_tokenizer import Tokenizer
corpus, vocab, out = sys.argv[1:4]
tok = Tokenizer.load(vocab)
with open(corpus, encoding="utf-8-sig") as f:
    text = f.read()
ids = tok.encode_array(text).astype(tok.dtype)
cut = int(len(ids) * 0.95)
ids[:cut].tofile(out + "/train.bin")
ids[cut:].tofile(out + "/val.bin")
print(json.dumps({"tokens": int(len(ids))}))
"""


def write_corpus(path: Path, text: str, megabytes: float) -> int:
    """`text` repeated whole into `path` until it holds at least `megabytes` MB; returns its size."""
    data = text.encode("utf-8")
    copies = max(1, math.ceil(megabytes * 1e6 / len(data)))
    with open(path, "wb") as f:
        for _ in range(copies):
            f.write(data)
    return copies * len(data)


def measured(name: str, cmd: list[str], log: Path) -> dict:
    """Run cmd as a child with stdout and stderr to `log`; its wall time and peak RSS."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text(encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        last = (text.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        fail(f"{name} failed (exit status {proc.returncode}): {last}", 1)
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss * unit / 1e6, "output": text}


def main(argv: list[str] | None = None) -> int:
    data = shared_data()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=1024.0, help="the corpus' size, at least (default 1024)")
    parser.add_argument("--vocab", type=Path, default=data / "tokenizer_4096.json")
    parser.add_argument("--text", type=Path, default=data / "pretrain_psycho.txt", help="the text to repeat")
    parser.add_argument("--work", type=Path, default=None,
                        help="an existing folder for the corpus and the two datasets (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="the results as JSON")
    args = parser.parse_args(argv)

    if not (math.isfinite(args.size_mb) and args.size_mb > 0):
        fail(f"--size-mb must be a number > 0, got {args.size_mb}")
    check_file("--vocab", args.vocab)
    check_file("--text", args.text)
    text = read_text(args.text)
    from nano_tokenizer import Tokenizer, TokenizerError

    try:
        Tokenizer.load(args.vocab)
    except TokenizerError as e:
        fail(f"--vocab {e}")
    if args.work is not None and not args.work.is_dir():
        fail(f"--work {args.work}: not an existing folder")
    if args.json is not None:
        check_output(args.json)

    work = Path(tempfile.mkdtemp(prefix="prepare_memory.", dir=args.work))
    try:
        corpus = work / "corpus.txt"
        try:
            size = write_corpus(corpus, text, args.size_mb)
        except OSError as e:
            fail(f"cannot write the corpus in {work}: {e.strerror or e}", 1)
        mb = size / 1e6
        print(f"corpus: {args.text.name} repeated, {mb:,.1f} MB; vocabulary {args.vocab.name}; "
              f"{cpu_model()}, load average {load_average()}", flush=True)
        (work / "peer").mkdir()
        ours = measured("ours (nano_train.prepare)", [
            sys.executable, "-m", "nano_train.prepare", "pretrain", "--tokenizer", str(args.vocab),
            "--out_dir", str(work / "ours"), "--docs", "file", "--quiet", str(corpus)], work / "ours.log")
        peer = measured("the peer (whole text)", [sys.executable, "-c", PEER, str(corpus), str(args.vocab),
                                                  str(work / "peer")], work / "peer.log")
        meta = json.loads((work / "ours" / "meta.json").read_text(encoding="utf-8"))
        ours["tokens"] = meta["counts"]["text_tokens"]
        peer["tokens"] = json.loads(peer["output"].strip().splitlines()[-1])["tokens"]
        for name, r in (("ours", ours), ("peer", peer)):
            print(f"  {name:<4} {r['seconds']:7.1f} s  {mb / r['seconds']:6.1f} MB/s  peak RSS "
                  f"{r['peak_rss_mb']:8.1f} MB ({r['peak_rss_mb'] / mb:.2f} x the corpus)  {r['tokens']:,} tokens")
        print(f"  ratio: peak RSS peer / ours {peer['peak_rss_mb'] / ours['peak_rss_mb']:.1f}x; "
              f"speed ours / peer {peer['seconds'] / ours['seconds']:.2f}x")
        same = ours["tokens"] == peer["tokens"]
        print(f"  same token count: {'yes' if same else 'NO: the two disagree'}")
        if args.json is not None:
            write_json(args.json, {
                "corpus_mb": mb, "text": args.text.name, "vocab": args.vocab.name, "cpu": cpu_model(),
                "load_average": load_average(),
                **{f"{name}_{key}": r[key] for name, r in (("ours", ours), ("peer", peer))
                   for key in ("seconds", "peak_rss_mb", "tokens")}})
        return 0 if same else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
