"""Tokenizer speed: nano-tokenizer against a plain-Python trie walk, in one run.

Usage:
  python tools/bench/tokenizer_speed.py [--runs N] [--peer-runs N] [--stream-mb MB] [--chunk-chars N]
                                      [--vocab FILE] [--text FILE]

Encodes ../shared/data/pretrain_psycho.txt (the shared folder is $NANO_SHARED,
else ../shared next to the repository) with tokenizer_16384_v2.json and prints
MB/s (megabytes of UTF-8 input per second, median of several runs) for:

  ours   nano_tokenizer: Tokenizer.encode_array and Tokenizer.encode
  peer   the reference's approach, written out plainly here in pure Python: at
         each position try the longest possible length first and walk a
         dict-of-dicts trie character by character to see whether that prefix
         is a token, then one shorter, down to a single character. The
         reference also cuts the consumed prefix off the remaining string at
         every token, which copies the rest of the text each time (quadratic
         on long inputs); the peer keeps an index instead, so it is if
         anything faster than the reference and the ratio is conservative.
  walk   a stronger naive baseline: one trie walk per position, remembering
         the last token seen (what a careful pure-Python port would do).

and checks that all give the same ids. Then it streams a synthesized input of
--stream-mb megabytes (the corpus repeated) through Tokenizer.encode_stream in
child processes and reports peak resident memory for a small and a large
stream (flat memory: the two agree) and the streaming working set measured by
tracemalloc on the small one.

The options are checked before any timing: --runs and --peer-runs at least 1,
--chunk-chars at least 1, --stream-mb a number >= 0 (0: no streaming), --vocab
a vocabulary nano_tokenizer can load, --text a non-empty UTF-8 text file. A bad
one is one `error: ...` line and exit status 2; a streaming child that fails,
one line and 1. Exit status 1 also when the implementations disagree.

This is a benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

from nano_format import file_kind
from nano_tokenizer import Tokenizer, TokenizerError
from nano_tokenizer.vectors import ENGLISH

from machine import fail

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_data() -> Path:
    shared = Path(os.environ["NANO_SHARED"]) if os.environ.get("NANO_SHARED") else REPO_ROOT.parent / "shared"
    return shared / "data"


# ---------------------------------------------------------------------------
# The peers: greedy longest match in pure Python through a trie of dicts.


class PlainTrie:
    def __init__(self, stoi: dict[str, int], specials, unk_id: int):
        self.root: dict = {}
        self.stoi = {t: i for t, i in stoi.items() if t not in specials}
        self.unk_id = unk_id
        self.max_len = max(map(len, self.stoi))
        for token, token_id in self.stoi.items():  # user text: special-token strings are not matched
            node = self.root
            for ch in token:
                node = node.setdefault(ch, {})
            node[None] = token_id

    def is_token(self, candidate: str) -> bool:
        node = self.root
        for ch in candidate:
            node = node.get(ch)
            if node is None:
                return False
        return None in node

    def encode_reference_style(self, text: str) -> list[int]:
        """Longest length first, a trie check per candidate length."""
        ids = []
        n, i = len(text), 0
        while i < n:
            for length in range(min(self.max_len, n - i), 0, -1):
                candidate = text[i : i + length]
                if length == 1 or self.is_token(candidate):
                    ids.append(self.stoi.get(candidate, self.unk_id))
                    i += length
                    break
        return ids

    def encode(self, text: str) -> list[int]:
        """One walk per position, remembering the last token passed."""
        ids = []
        root, n, i = self.root, len(text), 0
        while i < n:
            node, best, end, j = root, self.unk_id, i + 1, i
            while j < n:
                node = node.get(text[j])
                if node is None:
                    break
                j += 1
                token_id = node.get(None)
                if token_id is not None:
                    best, end = token_id, j
            ids.append(best)
            i = end
        return ids


# ---------------------------------------------------------------------------


def timed(fn, runs: int) -> tuple[float, object]:
    """Median seconds over `runs` calls, and the last result."""
    times, result = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def stream_child(vocab: str, text_path: str, megabytes: float, chunk_chars: int, trace: bool) -> None:
    """Runs in a fresh process: stream `megabytes` of the corpus, repeated,
    through encode_stream; print JSON with peak RSS before and after (and,
    with `trace`, the peak of memory allocated while streaming)."""
    tok = Tokenizer.load(vocab)
    with open(text_path, encoding="utf-8", newline="") as f:
        seed = f.read(1 << 20)  # 1M code points of corpus to repeat
    list(tok.encode_stream(iter([seed[:10_000]]), chunk_chars=chunk_chars))  # compile the matcher
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    seed_bytes = len(seed.encode("utf-8"))
    repeats = max(1, int(megabytes * 1e6 / seed_bytes))

    def pieces():
        # Hand the text over in 4096-code-point pieces, as a file reader would.
        for _ in range(repeats):
            for i in range(0, len(seed), 4096):
                yield seed[i : i + 4096]

    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    count = 0
    for ids in tok.encode_stream(pieces(), chunk_chars=chunk_chars):
        count += len(ids)
    seconds = time.perf_counter() - t0
    traced_peak = tracemalloc.get_traced_memory()[1] if trace else None
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is KiB on Linux, bytes on macOS.
    unit = 1 if sys.platform == "darwin" else 1024
    print(json.dumps({
        "input_mb": repeats * seed_bytes / 1e6,
        "ids": count,
        "seconds": seconds,
        "rss_before_mb": before * unit / 1e6,
        "rss_peak_mb": after * unit / 1e6,
        "traced_peak_mb": None if traced_peak is None else traced_peak / 1e6,
    }))


def run_stream_child(vocab: Path, text: Path, megabytes: float, chunk_chars: int, trace: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child-stream", str(megabytes), "--chunk-chars", str(chunk_chars),
           "--vocab", str(vocab), "--text", str(text)] + (["--trace"] if trace else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        fail(f"the streaming child ({megabytes:g} MB, chunk_chars={chunk_chars}) failed: {last}", 1)
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(label: str, tok: Tokenizer, text: str, runs: int, peer_runs: int) -> bool:
    """Time ours and both peers on `text`; print one block; True when all agree."""
    mb = len(text.encode("utf-8")) / 1e6
    array_s, ours = timed(lambda: tok.encode_array(text), runs)
    list_s, ours_list = timed(lambda: tok.encode(text), runs)
    plain = PlainTrie(dict(tok.stoi), tok.special_tokens, tok.unk_id)
    peer_s, peer_ids = timed(lambda: plain.encode_reference_style(text), peer_runs)
    walk_s, walk_ids = timed(lambda: plain.encode(text), peer_runs)
    same = ours.tolist() == peer_ids == walk_ids == ours_list
    multi = sum(len(tok.itos[i]) > 1 for i in ours_list)

    print(f"{label}: {mb:.2f} MB, {len(text):,} code points -> {len(ours):,} ids ({multi:,} multi-character)")
    print(f"  ours  encode_array     {mb / array_s:8.2f} MB/s  (median of {runs}: {array_s:.3f} s)")
    print(f"  ours  encode (list)    {mb / list_s:8.2f} MB/s  (median of {runs}: {list_s:.3f} s)")
    print(f"  peer  reference-style  {mb / peer_s:8.2f} MB/s  (median of {peer_runs}: {peer_s:.3f} s)")
    print(f"  walk  one walk per pos {mb / walk_s:8.2f} MB/s  (median of {peer_runs}: {walk_s:.3f} s)")
    print(f"  ratio encode_array / peer {peer_s / array_s:.1f}x, encode / peer {peer_s / list_s:.1f}x; "
          f"encode_array / walk {walk_s / array_s:.1f}x")
    print(f"  same ids: {'yes' if same else 'NO: the implementations disagree'}")
    return same


def read_text(path: Path) -> str:
    """--text's contents; exit 2 when it is not a non-empty UTF-8 text file."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        fail(f"--text {path}: not UTF-8 text ({e.reason} at byte {e.start})")
    except OSError as e:
        fail(f"--text {path}: cannot read: {e.strerror or e}")
    if not text:
        fail(f"--text {path}: empty; nothing to encode")
    return text


def check_file(option: str, path: Path) -> None:
    """Exit 2 unless `path` is a file (saying what it is instead)."""
    if path.is_file():
        return
    if not path.exists():
        fail(f"{option} {path}: not found (set NANO_SHARED to the shared folder, or give {option} a file)")
    fail(f"{option} {path}: {file_kind(path.stat().st_mode)}, not a file")


def main(argv: list[str] | None = None) -> int:
    data = shared_data()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed runs of ours (median)")
    parser.add_argument("--peer-runs", type=int, default=3, help="timed runs of the peers (median)")
    parser.add_argument("--stream-mb", type=float, default=300.0, help="size of the synthesized streaming input")
    parser.add_argument("--chunk-chars", type=int, default=1 << 16, help="encode_stream chunk size")
    parser.add_argument("--vocab", type=Path, default=data / "tokenizer_16384_v2.json")
    parser.add_argument("--text", type=Path, default=data / "pretrain_psycho.txt")
    parser.add_argument("--child-stream", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child_stream is not None:
        stream_child(str(args.vocab), str(args.text), args.child_stream, args.chunk_chars, args.trace)
        return 0
    for name in ("runs", "peer_runs", "chunk_chars"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not (math.isfinite(args.stream_mb) and args.stream_mb >= 0):
        fail(f"--stream-mb must be a number >= 0 (0: no streaming), got {args.stream_mb}")
    check_file("--vocab", args.vocab)
    check_file("--text", args.text)
    text = read_text(args.text)
    t0 = time.perf_counter()
    try:
        tok = Tokenizer.load(args.vocab)
    except TokenizerError as e:
        fail(f"--vocab {e}")
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tok.encode("warm up: compile the matcher")
    compile_s = time.perf_counter() - t0
    print(f"vocabulary {args.vocab.name}: {tok.vocab_size} tokens (load {load_s:.2f} s, matcher compile {compile_s:.2f} s)")

    same = compare(args.text.name, tok, text, args.runs, args.peer_runs)
    # Chinese text is nearly all one-character tokens; English exercises the
    # multi-character matching, which is where the regex does its real work.
    english = " ".join([ENGLISH] * (1_000_000 // len(ENGLISH)))
    same &= compare("English prose (1 MB, the vectors' paragraph repeated)", tok, english, args.runs, args.peer_runs)

    if args.stream_mb > 0:
        traced = run_stream_child(args.vocab, args.text, min(5.0, args.stream_mb), args.chunk_chars, trace=True)
        small = run_stream_child(args.vocab, args.text, min(5.0, args.stream_mb), args.chunk_chars)
        large = run_stream_child(args.vocab, args.text, args.stream_mb, args.chunk_chars)
        print(f"streaming {args.text.name} repeated, chunk_chars={args.chunk_chars}:")
        print(f"  working set while streaming (tracemalloc peak): {traced['traced_peak_mb']:.1f} MB")
        for r in (small, large):
            print(
                f"  {r['input_mb']:6.1f} MB in {r['seconds']:5.2f} s ({r['input_mb'] / r['seconds']:6.1f} MB/s): "
                f"peak RSS {r['rss_peak_mb']:.1f} MB (before streaming, with tokenizer and 1M-code-point seed "
                f"loaded: {r['rss_before_mb']:.1f} MB)"
            )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
