"""Prepared datasets: writing token shards and drawing batches from them.

A prepared dataset is a directory:

    meta.json            what is in it (see below); written last, atomically
    tokenizer.json       the vocabulary the ids belong to (its fingerprint is in meta.json)
    pretraining:  train_000.bin, train_001.bin, ..., val_000.bin
                  flat little-endian token ids (uint16, or uint32 for vocabularies
                  over 65,536 tokens), read with np.memmap
    SFT:          sft_train.bin [N, block_size] ids, sft_train_mask.bin [N, block_size] uint8,
                  and the same for val
    seq2seq:      s2s_train_x.bin [N, T] input ids, s2s_train_y.bin [N, T] target ids,
                  s2s_train_mask.bin [N, T] uint8, and the same for val: x and y are
                  aligned (y[t] is the answer at position t), for full-attention models

SFT and seq2seq rows made in memory (nano_train.problems generates its data)
are written with `write_rows`, in the same layout.

Every file meta.json names is a plain file name in the directory, and no file is
named twice (a validation split is never a training split's file). A dataset is
built in a hidden directory inside out_dir and moved in when complete; it replaces
the old dataset's own files (those its meta.json lists) and no other: a file of
the same name as one of the new dataset's that is no dataset's is an error.

Pretraining preparation streams: the text is read in bounded pieces, encoded
with `Tokenizer.encode_stream`, and appended to a temporary file, so memory
does not grow with the corpus. The token stream is then cut into chunks of
`chunk_tokens`; each chunk goes to the validation split when
`split_hash(seed, chunk_index) < val_fraction`, a rule recorded in meta.json
together with the chosen chunk indices (plus a full chunk when the draw gives
none: see prepare_pretrain). A validation chunk is never copied
into a training shard. Each split's chunks are written in a seeded random
order (block-level shuffle), copying one chunk at a time from the temporary
file, which is then removed.

meta.json's "content" holds one sha256 over the bytes of every shard file it
lists (`shards_digest`), so that a resumed run can tell a dataset prepared again
with other text or options from the one it was trained on, even when every
count is the same.

Batches: a `Batcher` walks a seeded permutation of rows per epoch (a row is a
window of block_size + 1 tokens, or one SFT sample) and is resumable at any
row in O(1): its state is a single row counter, and the rows of step k are
computed from (seed, k), never by replaying steps 0..k-1. A pretraining row
never crosses a seam, where two chunks meet in a shard that were not adjacent
in the corpus (every chunk boundary of shuffled shards; with --no_shuffle,
where the other split's chunks were taken out): see `chunk_seams`.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import stat
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from nano_format import ZIP_MAGIC, JSONTextError, file_kind, folder_files, parse_json, spec, write_atomically
from nano_tokenizer import BOS, EOS, INSTRUCT, PADDING, RESPONSE, Tokenizer, other_unicode

from nano_train import DEFAULT_SEED, dirlock, interrupts
from nano_train.metrics import bar_line, human, short_repr as _short, terminal_columns

META = "meta.json"
TOKENIZER_FILE = "tokenizer.json"
FORMAT = "nano-train-dataset"
FORMAT_VERSION = 1
DOC_MODES = ("blank", "line", "file")
_MAX_BLANK_LINE = 1 << 20  # characters of whitespace held while deciding whether a line is blank
TOO_LONG = ("skip", "truncate", "error")
# The longest SFT line read: a longer one is a bad line (read in pieces, never held whole)
MAX_LINE_BYTES = 64 << 20
# Values a dataset's check of its shards reads at a time (16 M: 32-64 MB of ids)
CHECK_PIECE = 1 << 24
# prepare sft --skip_bad names this many of the lines it skips, then says how many more it did
SKIPPED_SHOWN = 10
# A model's default block_size (ModelConfig): a validation split shorter than this + 1 tokens gets a warning
TYPICAL_BLOCK = 512
# The default chunk of the split and the shuffle: a row stays inside a chunk, so a chunk of C tokens gives
# (C - 1) // block_size rows an epoch, 94% of its tokens at block_size 512 (a held-out split needs several chunks)
CHUNK_TOKENS = 8192


class DataError(ValueError):
    """A dataset that cannot be prepared or used; the message names the file and the fix."""


# ---------------------------------------------------------------------------
# Small shared pieces


class Progress:
    """A one-line progress bar on stderr, redrawn at most 5 times a second.

    Written here rather than taken from a package so that nano-train needs no
    extra dependency. On a non-terminal stderr (a log file) it prints a line at the
    first update, then at the first update past a further 10% mark once LINE_EVERY_S
    seconds have passed since the last line, and at the end: a phase of a few seconds
    is two lines, a long one a line every 10% at most.
    """

    LINE_EVERY_S = 10.0

    def __init__(self, total: int, label: str, unit: str = "B", enabled: bool = True):
        self.total = max(int(total), 1)
        self.label = label
        self.unit = unit
        self.enabled = enabled and sys.stderr is not None  # (started with stderr closed: no bar)
        self.done = 0
        self.t0 = time.monotonic()
        self.last_draw = 0.0
        self.last_decile = -1
        self.last_line = None  # when the last line was written (not a terminal)
        self.tty = sys.stderr is not None and sys.stderr.isatty()
        self.drawn = 0  # characters of the bar on the terminal's line (0: the line is free)

    def update(self, done: int) -> None:
        self.done = done
        if not self.enabled:
            return
        now = time.monotonic()
        frac = min(self.done / self.total, 1.0)
        if self.tty:
            if now - self.last_draw < 0.2 and frac < 1.0:
                return
            self.last_draw = now
            self._draw(frac, now, end="\r")
        else:
            decile = int(frac * 10)
            due = self.last_line is None or now - self.last_line >= self.LINE_EVERY_S or frac >= 1.0
            if decile > self.last_decile and due:
                self.last_decile, self.last_line = decile, now
                self._draw(frac, now, end="\n")

    def _draw(self, frac: float, now: float, end: str) -> None:
        rate = self.done / max(now - self.t0, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        after = f"{frac * 100:5.1f}% {human(self.done, self.unit)} {human(rate, self.unit)}/s eta {eta:4.0f}s"
        if end == "\r":  # on the terminal's width, over all of the last one drawn
            text = bar_line(self.label, frac, after, terminal_columns(sys.stderr))
            drawn = self._put(text.ljust(self.drawn) + end)
        else:
            text = bar_line(self.label, frac, after, 10**6)
            drawn = self._put(text + end)
        self.drawn = len(text) if end == "\r" and drawn else 0

    def _put(self, text: str) -> bool:
        """Write text to stderr; where that fails (stderr a file on a full disk), the bar is
        no longer drawn and the work goes on: a progress bar is not worth stopping it for."""
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
            return True
        except OSError:
            self.enabled = self.tty = False
            self.drawn = 0
            return False

    def note(self, text: str) -> None:
        """Print text as a line of its own on stderr: on a terminal, over the bar, which is
        drawn again at the next update."""
        if sys.stderr is None:  # (started with stderr closed: print would write to stdout)
            return
        if self.drawn:
            self._put("\r" + " " * self.drawn + "\r")
            self.drawn, self.last_draw = 0, 0.0
        with contextlib.suppress(OSError):  # (stderr on a full disk: the note is lost, the work goes on)
            print(text, file=sys.stderr, flush=True)

    def end(self) -> None:
        """Leave the bar as it stands (a run that stops early): what stderr gets next
        starts on a line of its own, not over the bar. Nothing to do after close."""
        if self.drawn:
            self._put("\n")
            self.drawn = 0

    def close(self) -> None:
        if self.enabled:
            self.update(self.total)
            if self.tty:
                self._put("\n")
                self.drawn = 0


@contextlib.contextmanager
def _ending(bar: Progress):
    """On an error inside, end the bar's line first, so that the error is not printed over it
    (an interrupt is left alone: its message starts with a line break of its own)."""
    try:
        yield
    except Exception:
        bar.end()
        raise


def split_hash(seed: int, index: np.ndarray) -> np.ndarray:
    """A uniform number in [0, 1) per index: splitmix64 of (seed << 32) ^ index.

    Used for the held-out split: a chunk (or SFT sample) is validation when its
    value is below val_fraction, so the choice depends only on the seed and the
    index (a chunk's position; an SFT sample's row_key, a digest of its content),
    and can be recomputed by anyone reading meta.json.
    """
    z = (np.uint64((seed & 0xFFFFFFFF) << 32) ^ np.asarray(index, dtype=np.uint64)).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def row_key(row: np.ndarray) -> int:
    """The index split_hash takes for an SFT row: the first 8 bytes (little-endian) of
    its BLAKE2b digest, so identical samples always land in the same split."""
    return int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little")


def quantity(n: int, noun: str) -> str:
    """n and the noun, singular for 1: "1 document", "2,048 documents"."""
    return f"{n:,} {noun if n == 1 else noun + 's'}"


def _loads(text: str, where: str, unique_keys: bool = False):
    """The JSON value of text, or a DataError "WHERE: not valid JSON (why)", whatever the text
    (with unique_keys, a key given twice in one object is such an error: see parse_json)."""
    try:
        return parse_json(text, unique_keys=unique_keys)
    except JSONTextError as e:
        raise DataError(f"{where}: not valid JSON ({e})") from None


def _read_meta(meta_path: Path) -> dict:
    """meta.json as a dict, or a DataError naming the file."""
    try:
        meta = _loads(meta_path.read_text(encoding="utf-8"), str(meta_path))
    except UnicodeDecodeError as e:
        raise DataError(f"{meta_path}: not UTF-8 text ({e.reason}); prepare the data again") from None
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: not a JSON object; prepare the data again")
    return meta


# split_hash takes 32 bits of the seed: a larger one would share its split with another
MAX_SEED = 2**32 - 1


def _check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:  # (numpy's generators take no negative seed)
        raise DataError(f"the seed must be an integer from 0 to {MAX_SEED} (2^32 - 1), got {seed}")


def path_text(path) -> str:
    """path as text for meta.json: a file name that is not UTF-8 (its bytes arrive as
    lone surrogates, which no UTF-8 file can hold) keeps its other bytes as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


# The keys of a shards entry that name files, in the order shards_digest reads them
SHARD_FILE_KEYS = ("file", "target", "mask")
CONTENT_RULE = ("sha256 of the bytes of every file the shards entry names: split by split as listed, each entry's "
                "file, then target, then mask")


def shards_digest(directory: Path, shards: dict) -> str:
    """sha256 (hex) over the bytes of every file `shards` (meta.json's entry) names,
    in CONTENT_RULE's order. Written into meta.json's "content" by every writer."""
    h = hashlib.sha256()
    buffer = memoryview(bytearray(1 << 18))  # one buffer for every read: memory stays flat
    for entries in shards.values():
        for entry in entries:
            for key in SHARD_FILE_KEYS:
                if key in entry:
                    with open(directory / entry[key], "rb") as f:
                        while n := f.readinto(buffer):
                            h.update(buffer[:n])
    return h.hexdigest()


def write_json_atomic(path: Path, obj) -> None:
    """obj as JSON in path, replaced atomically (nano_format.write_atomically): a crash
    leaves the old file or the new one, never half of one."""
    write_atomically(path, [(json.dumps(obj, ensure_ascii=False, indent=1) + "\n").encode("utf-8")])


# Failed writes that mean "no room": a full disk, a full quota, a file-size limit
NO_ROOM = {errno.ENOSPC, errno.EFBIG, *((errno.EDQUOT,) if hasattr(errno, "EDQUOT") else ())}


@contextlib.contextmanager
def _writing(out_dir: Path, what: str) -> Iterator[None]:
    """A write in the block that fails for want of room (an OSError that names no file)
    names out_dir and what was being written: "OUT: cannot write train_000.bin: No space ..."."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno not in NO_ROOM:
            raise
        raise OSError(e.errno, f"cannot write {what}: {e.strerror}", str(out_dir)) from None


# The names of the shard files each kind of dataset is written with
_PRETRAIN_SHARDS = re.compile(r"(train|val)_[0-9]{3,}\.bin")
_SFT_SHARDS = re.compile(r"sft_(train|val)(_mask)?\.bin")
_SEQ2SEQ_SHARDS = re.compile(r"s2s_(train|val)_(x|y|mask)\.bin")


# While a finished dataset's files move into out_dir, this file there lists every name the
# moves touch (the old dataset's and the new one's). A prepare killed meanwhile leaves it
# behind with no meta.json; the next prepare then takes those files for a dataset's own.
MOVING_FILE = ".prepare.moving.json"


def _is_dataset_name(name) -> bool:
    """Whether name is one a dataset's file can have: meta.json, tokenizer.json, or a shard name of any kind."""
    return isinstance(name, str) and (name in (META, TOKENIZER_FILE) or any(
        pattern.fullmatch(name) for pattern in (_PRETRAIN_SHARDS, _SFT_SHARDS, _SEQ2SEQ_SHARDS)))


def _moved_files(out_dir: Path) -> set[str]:
    """The names out_dir's MOVING_FILE lists, or none. Only names a dataset's file can have
    count (_is_dataset_name): prepare removes what the list names, and any other name
    there (notes.txt) is not one it wrote."""
    try:
        listed = json.loads((out_dir / MOVING_FILE).read_text(encoding="utf-8"))["files"]
        return {name for name in listed if _is_dataset_name(name)}
    except (OSError, ValueError, KeyError, TypeError):  # none there, or damaged: it lists nothing
        return set()


def _dataset_files(out_dir: Path) -> set[str]:
    """The names of the files of the dataset in out_dir: meta.json, tokenizer.json, the listed shards;
    without a meta.json, those of a prepare killed while moving its files in (MOVING_FILE), if any:
    else none (the files there are then no dataset's)."""
    if not (out_dir / META).exists():
        return _moved_files(out_dir)
    names = {META, TOKENIZER_FILE}
    try:  # a damaged old meta.json lists nothing more: its shards are then left in place
        old = _read_meta(out_dir / META)
        for split in old["shards"].values():
            names.update(Path(s[key]).name for s in split for key in SHARD_FILE_KEYS if key in s)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # (DataError is a ValueError)
        pass
    return names


# One prepare at a time per directory: an advisory lock on this file inside it, held
# for the whole run (nano_train.dirlock).
LOCK_FILE = ".prepare.lock"
_BUILD_PREFIX, _BUILD_SUFFIX = ".prepare.", ".tmp"
# What tempfile.mkdtemp(prefix=_BUILD_PREFIX, suffix=_BUILD_SUFFIX) names a build directory
_BUILD_NAME = re.compile(re.escape(_BUILD_PREFIX) + r"[a-z0-9_]+" + re.escape(_BUILD_SUFFIX))


def _remove_stale_builds(out_dir: Path) -> None:
    """Remove the build directories of earlier prepares into out_dir that were killed
    (only called with the lock held: no live prepare is using any of them)."""
    stale = sorted(p for p in out_dir.iterdir()
                   if _BUILD_NAME.fullmatch(p.name) and p.is_dir() and not p.is_symlink())
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)  # as much of it as can go
    removed = [p.name for p in stale if not p.exists()]
    if removed:
        print(f"note: removed {', '.join(removed)} from {out_dir}: left by a prepare that was interrupted",
              file=sys.stderr)
    for p in stale:
        if p.exists():  # another user's, say: its space stays taken until it is removed
            try:
                shutil.rmtree(p)
                continue
            except OSError as e:
                why = f"{e.filename or p}: {e.strerror or e}"
            print(f"note: could not remove {p.name} from {out_dir}, left by a prepare that was interrupted "
                  f"({why}); remove it by hand", file=sys.stderr)


@contextlib.contextmanager
def _claim_out_dir(out_dir: Path) -> Iterator[None]:
    """Create out_dir if needed and hold the prepare lock on it for the block.

    With the lock held, the build directories of killed prepares are removed. A
    second prepare into out_dir meanwhile fails at once (DataError). On exit the
    lock file is removed, and so are out_dir and its parents, those this call made,
    while they are empty.
    Without a lock (Windows, or a file system that cannot lock) nothing is removed.
    """
    with dirlock.exclusive(out_dir, LOCK_FILE, "prepare", DataError) as claim:
        if claim.locked:
            _remove_stale_builds(out_dir)
        yield


def _refuse_others_files(out_dir: Path, names: Iterable[str]) -> None:
    """A DataError naming the first of names that is a file in out_dir but not one of
    the dataset's there (_dataset_files): prepare replaces only a dataset's own files."""
    ours = _dataset_files(out_dir)
    for name in sorted(names):
        if name not in ours and os.path.lexists(out_dir / name):
            if (out_dir / META).exists():
                why = f"its {META} does not list it"
            elif ours:
                why = f"there is no {META}, and {MOVING_FILE}, left by an interrupted prepare, does not list it"
            else:
                why = f"there is no {META}"
            raise DataError(f"{out_dir / name} is in the way: the new dataset has a file of that name, and it is "
                            f"not a file of a dataset in {out_dir} ({why}); move it away or choose another --out_dir")


@contextlib.contextmanager
def _new_dataset_dir(out_dir: Path, overwrite: bool, shard_names: re.Pattern) -> Iterator[Path]:
    """A hidden temporary directory inside out_dir to write a dataset into, meta.json last.

    When the block ends without an error, its files replace the dataset in out_dir
    (the old meta.json goes first and the new one comes last, so out_dir never
    looks complete in between; a Ctrl-C meanwhile is held until they are all in);
    when it raises, the directory is removed and an old dataset stays as it was.
    Files in out_dir that are no dataset's are kept, and never replaced: one named
    like a file the block may write (meta.json, tokenizer.json, or a name that
    shard_names matches) that is not the old dataset's is an error, before the
    block runs and again before the files move in. The whole run holds the
    prepare lock on out_dir (_claim_out_dir).

    A kill (SIGKILL, a power cut) while the files move in leaves out_dir with no
    meta.json, some old files and some new: MOVING_FILE, written before the first
    move and removed after the last, lists them all, so the next prepare replaces
    them (with --overwrite or without) instead of refusing them as someone else's.
    """
    def refuse_a_dataset() -> None:
        if (out_dir / META).exists() and not overwrite:
            raise DataError(f"{out_dir} already holds a prepared dataset ({META}); pass --overwrite to replace it")

    def refuse_others_files() -> None:
        if out_dir.is_dir():
            _refuse_others_files(out_dir, [META, TOKENIZER_FILE] + [
                p.name for p in out_dir.iterdir() if shard_names.fullmatch(p.name)])

    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir} is not a directory; choose another --out_dir")
    refuse_a_dataset()  # before touching anything
    refuse_others_files()
    with _claim_out_dir(out_dir):
        refuse_a_dataset()  # again: a prepare that held the lock may just have finished one
        refuse_others_files()
        if (out_dir / META).exists():  # (left by a kill just before the moves began, or just after they ended)
            (out_dir / MOVING_FILE).unlink(missing_ok=True)
        build = Path(tempfile.mkdtemp(prefix=_BUILD_PREFIX, suffix=_BUILD_SUFFIX, dir=out_dir))
        try:
            yield build
            with interrupts.held():
                old_files = _dataset_files(out_dir)
                new_files = {f.name for f in build.iterdir()}
                _refuse_others_files(out_dir, new_files)  # (the lock keeps other prepares out, not the user)
                # (written in the build directory, then renamed: a kill leaves no temporary file in out_dir)
                write_json_atomic(build / MOVING_FILE, {"files": sorted(old_files | new_files)})
                os.replace(build / MOVING_FILE, out_dir / MOVING_FILE)
                (out_dir / META).unlink(missing_ok=True)
                for name in new_files - {META}:
                    os.replace(build / name, out_dir / name)
                for name in old_files - new_files:
                    (out_dir / name).unlink(missing_ok=True)
                os.replace(build / META, out_dir / META)
                (out_dir / MOVING_FILE).unlink()
        finally:
            shutil.rmtree(build, ignore_errors=True)


def _save_tokenizer(tok: Tokenizer, out_dir: Path) -> None:
    """Copy the vocabulary to out_dir/tokenizer.json with the mode of the other files
    (Tokenizer.save writes through a temporary file, which is private: 0600)."""
    path = out_dir / TOKENIZER_FILE
    tok.save(path)
    umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _line_ends(data: bytes, after_cr: bool) -> int:
    """The line ends in data as the text reader counts them: \\n, \\r\\n and a lone \\r;
    after_cr when the bytes before data end with \\r (a \\n first completes that \\r\\n)."""
    n = data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")
    return n - 1 if after_cr and data.startswith(b"\n") else n


def _first_bad_utf8(path: Path) -> tuple[int, int, str] | None:
    """(line, byte offset, reason) of the first byte of path that is not UTF-8, or None.

    The text reader's error counts from the start of its buffer, not of the file,
    so the file is scanned again, a line (at most 64 KiB) at a time; lines are
    counted as prepare reads them (a lone \\r ends one too).
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line, after_cr = 0, 1, False  # of the start of the piece
    with open(path, "rb") as f:
        while True:
            piece = f.readline(1 << 16)
            held = len(decoder.getstate()[0])  # bytes of a character begun in the previous piece
            try:
                decoder.decode(piece, final=not piece)
            except UnicodeDecodeError as e:
                bad = offset - held + e.start
                return line + _line_ends(piece[:max(bad - offset, 0)], after_cr), bad, e.reason
            if not piece:
                return None
            offset += len(piece)
            line += _line_ends(piece, after_cr)
            after_cr = piece.endswith(b"\r")


# The most frequent characters of written Chinese: a quarter or more of the characters of
# ordinary text; few of those that Japanese or Korean bytes make when read as GB18030
COMMON_HANZI = frozenset("的一是不了在人有我他这个们中来上大为和国地到以说时要就出会可也你对生能而子那得于着下自"
                         "之年过发后作里用道行所然家种事成方多经么去法学如都同现当没动面起看定天分还进好小部其些"
                         "主样理心她本前开但因只从想实")


def _chinese(text: str) -> bool:
    """Whether text's characters beyond ASCII are Chinese characters and punctuation, common
    ones among them (bytes read in the wrong encoding make rare ones, or none)."""
    wide = [c for c in text if ord(c) > 0x7F]
    chinese = sum("\u4e00" <= c <= "\u9fff" or "\u3000" <= c <= "\u303f" or "\uff00" <= c <= "\uffef" for c in wide)
    common = sum(c in COMMON_HANZI for c in wide)
    return bool(wide) and chinese >= 0.9 * len(wide) and common >= max(2, 0.15 * len(wide))


def _reads_as_gb18030(data: bytes) -> bool:
    """Whether data, which is not UTF-8, is Chinese text in GB18030 (or GBK, its subset: what
    Windows in Chinese saves text as): many bytes that are not UTF-8 (a UTF-8 file with a
    damaged byte or two is not that), which read as GB18030 are Chinese characters and
    punctuation, common ones among them. Shift-JIS (Japanese) and EUC-KR (Korean) bytes read
    as GB18030 too, as rare characters: converted from GB18030 they would be nonsense."""
    if data.decode("utf-8", "replace").count("\ufffd") < 4:
        return False
    try:
        text = codecs.getincrementaldecoder("gb18030")().decode(data)  # (a character cut at the end waits)
    except UnicodeDecodeError:
        return False
    return _chinese(text)


def _reads_as_utf16(data: bytes) -> str | None:
    """"UTF-16LE" or "UTF-16BE" where data, which is not UTF-8, is Chinese text in it without
    a byte-order mark (few NULs then: only its ASCII characters have them), else None. data
    may start at either byte of a character."""
    for encoding in ("UTF-16LE", "UTF-16BE"):
        for start in (0, 1):
            try:
                text = codecs.getincrementaldecoder(encoding)().decode(data[start:])
            except UnicodeDecodeError:
                continue
            if _chinese(text):
                return encoding
    return None


def _iconv(path, encoding: str) -> str:
    """The command that converts the file at path from encoding into a UTF-8 copy beside it."""
    name = Path(path)
    converted = name.with_name(f"{name.stem}.utf8{name.suffix}")
    return f"iconv -f {encoding} -t UTF-8 {shlex.quote(str(path))} > {shlex.quote(str(converted))}"


def _convert_hint(path, data: bytes) -> str:
    """What to do about a file that is not UTF-8, seen from data (some of its bytes)."""
    if _reads_as_gb18030(data):
        encoding, what = "GB18030", "Chinese text in GB18030 (GBK), which Windows saves text in"
    elif encoding := _reads_as_utf16(data):
        what = f"Chinese text in {encoding} without a byte order mark"
    else:
        return "convert it to UTF-8 first"
    return f"it reads as {what}: convert it to UTF-8 (e.g. {_iconv(path, encoding)})"


def _changed_since(path: Path, f, before: os.stat_result) -> str | None:
    """How the input at path, open as f and as it was when opened (before), changed since:
    grown or shrunk, written to, or replaced by another file; None where it did not."""
    after = os.fstat(f.fileno())
    try:
        now = os.stat(path)
    except OSError:
        return "it was removed"
    if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
        return "it was replaced by another file"
    if after.st_size != before.st_size:
        return f"its size went from {before.st_size:,} to {after.st_size:,} bytes"
    if after.st_mtime_ns != before.st_mtime_ns:
        return "it was written to"
    return None


@contextlib.contextmanager
def _read_unchanged(path: Path, f) -> Iterator[int]:
    """Around the reading of one input (f, open at path): its size when opened, and a DataError
    when it changes before the reading ends (a file still being written, or replaced): the
    dataset would hold some other text than the file's, and meta.json another size."""
    before = os.fstat(f.fileno())

    def changed() -> DataError | None:
        how = _changed_since(path, f, before)
        return how and DataError(f"{path} changed while it was read ({how}): nothing was written; prepare again "
                                 "once it no longer changes (or copy it first, and prepare the copy)")

    try:
        yield before.st_size
    except (UnicodeDecodeError, DataError):  # (a file cut short in the middle of a character)
        if error := changed():
            raise error from None
        raise
    if error := changed():
        raise error


def _line_not_utf8(where: str, e: UnicodeDecodeError, raw: bytes, first: bool, path) -> str:
    """The message for a JSONL line that is not UTF-8 (the byte's offset in the line counts
    the byte-order mark that the first line's decoder drops)."""
    at = e.start + (len(codecs.BOM_UTF8) if first and raw.startswith(codecs.BOM_UTF8) else 0)
    return f"{where}: not UTF-8 ({e.reason} at byte {at} of the line); {_convert_hint(path, raw)}"


@contextlib.contextmanager
def _utf8_errors(path: Path):
    try:
        yield
    except UnicodeDecodeError:
        found = _first_bad_utf8(path)
        if found is None:  # (read again, it is UTF-8 throughout)
            raise DataError(f"{path} changed while it was read (it reads as UTF-8 now): nothing was written; "
                            "prepare again once it no longer changes") from None
        line, offset, reason = found
        data = b""  # (from the first bad byte on: what the text there is)
        with contextlib.suppress(OSError):
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(1 << 16)
        raise DataError(f"{path}:{line}: not UTF-8 text ({reason} at byte {offset}); {_convert_hint(path, data)}") from None


def _not_a_file(path) -> str | None:
    """What path is ("a FIFO (a pipe)", "a directory", ...) when it exists and is not a
    regular file; None for a regular file or nothing at all."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return None if stat.S_ISREG(mode) else file_kind(mode)


def _is_zip(path) -> bool:
    """Whether path is a regular file that starts as a zip archive (what torch.save writes)."""
    if _not_a_file(path) is not None:  # (never open a FIFO, which could wait forever)
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(ZIP_MAGIC)) == ZIP_MAGIC
    except OSError:
        return False


def _load_tokenizer(path, needs: tuple[str, ...] = (), why: str = "") -> Tokenizer:
    """The vocabulary at path; a DataError when it cannot be loaded or lacks one of
    the special tokens `needs` (checked before any work, as `why` needs them)."""
    if not str(path):  # (as a Path, "" would be ".", this directory)
        raise DataError("the tokenizer path is empty; give a tokenizer JSON file or a .bin model")
    try:  # (it refuses a folder or a device, and a FIFO that nothing writes to, without waiting forever)
        tok = Tokenizer.load(path)
    except (OSError, ValueError) as e:
        if _is_zip(path):
            raise DataError(f"cannot load the tokenizer: {path} is a zip archive, as a training checkpoint "
                            "(best.pt, latest.pt) is, not a vocabulary; give the tokenizer.json of the dataset "
                            f"the run trained on (beside its {META}), or a .bin model exported from the checkpoint "
                            "(python -m nano_train.export --ckpt CKPT.pt --out MODEL.bin)") from None
        raise DataError(f"cannot load the tokenizer: {e}") from None
    missing = [t for t in needs if t not in tok.special_tokens]
    if missing:
        raise DataError(f"{path}: the vocabulary has no {' or '.join(missing)} special token, which {why} needs; "
                        "use a vocabulary that has it")
    return tok


# ---------------------------------------------------------------------------
# Pretraining: text -> documents -> token stream -> chunks -> shards


def _doc_events(f, mode: str, piece_chars: int) -> Iterator[str | None]:
    """Text pieces of at most piece_chars characters, with None after each document.

    Documents: "blank" = runs of lines separated by one or more blank lines;
    "line" = every non-blank line; "file" = the whole file. The newline that ends
    a document's last line is not part of the document. Lines are read with
    readline(limit), so one huge line (a corpus without newlines) never has to
    fit in memory at once.
    """
    in_doc = False
    pending_nl = False  # a line break held back until we know the document goes on
    ws = ""  # whitespace read so far on a line that may still turn out blank; None once it has content
    while True:
        piece = f.readline(piece_chars)
        if not piece:
            break
        ends_line = piece.endswith("\n")
        if ws is not None and mode != "file" and not piece.strip():
            if ends_line:  # a blank line ends the document
                if in_doc:
                    yield None
                in_doc, pending_nl, ws = False, False, ""
                continue
            if len(ws) < _MAX_BLANK_LINE:  # (a huge whitespace-only line counts as content, to bound memory)
                ws += piece
                continue
        if ws:
            piece = ws + piece  # the whitespace started a line with content after all
        ws = "" if ends_line else None
        body = piece[:-1] if ends_line else piece
        if body or (ends_line and mode == "file"):
            if pending_nl and in_doc:
                yield "\n"
            pending_nl = False
            if body:
                yield body
                in_doc = True
        if ends_line:
            if mode == "line":
                if in_doc:
                    yield None
                in_doc = False
            else:
                pending_nl = pending_nl or in_doc
    if in_doc:
        yield None


def iter_documents(f, mode: str, piece_chars: int = 1 << 20) -> Iterator[Iterator[str]]:
    """Yield each document of a text file object (opened with encoding="utf-8";
    line endings are then normalised to \\n) as an iterator of its text pieces.

    Each document iterator must be consumed before the next is taken (it is
    drained automatically otherwise).
    """
    if mode not in DOC_MODES:
        raise DataError(f"document mode must be one of {DOC_MODES}, got {_short(mode)}")
    events = _doc_events(f, mode, piece_chars)

    def one_doc(first: str) -> Iterator[str]:
        yield first
        for event in events:
            if event is None:
                return
            yield event

    for event in events:
        if event is None:
            continue
        doc = one_doc(event)
        yield doc
        for _ in doc:  # drain whatever the consumer left
            pass


# The share of <|unknown|> above which prepare warns: among the text tokens (pretrain), among the
# tokens or the answer tokens trained on (sft)
UNKNOWN_WARNING = 0.1


@dataclass
class PretrainSummary:
    characters: int  # of the documents' text (not the separators between documents)
    documents: int
    tokens: int  # all tokens written: text tokens plus separators or <|bos|>/<|eos|>
    text_tokens: int  # tokens encoded from the documents' characters
    unknown_tokens: int
    train_tokens: int
    val_tokens: int
    # The longest piece of adjacent text in each split (a chunk; with --no_shuffle a run of chunks):
    # a row stays inside one, so a model's block_size must be below it
    longest_train_piece: int
    longest_val_piece: int
    chunk_tokens: int
    shuffled: bool
    val_fraction: float
    seconds: float

    def text(self) -> str:
        per_char = self.text_tokens / max(self.characters, 1)
        extra = self.tokens - self.text_tokens
        line = (f"{quantity(self.documents, 'document')}, {quantity(self.characters, 'character')} -> "
                f"{quantity(self.tokens, 'token')} ({extra:,} of them {'a separator' if extra == 1 else 'separators'} "
                f"or bos/eos; {per_char:.3f} text tokens per character, {self.unknown_tokens:,} unknown); "
                f"train {quantity(self.train_tokens, 'token')}, val {quantity(self.val_tokens, 'token')}; "
                f"{self.seconds:.1f} s")
        piece = "chunk" if self.shuffled else "run of adjacent chunks"
        if self.longest_train_piece <= TYPICAL_BLOCK:
            line += (f"\nwarning: the training split's longest {piece} holds "
                     f"{quantity(self.longest_train_piece, 'token')}: a model with block_size "
                     f"{self.longest_train_piece} or more cannot train on it (a row stays inside text that was "
                     f"adjacent in the corpus); pass a larger --chunk_tokens (default {CHUNK_TOKENS})")
        if 0 < self.longest_val_piece <= TYPICAL_BLOCK:
            # (shuffled, a piece is one chunk whatever the share held out: only larger chunks make it longer)
            larger = f"--chunk_tokens (default {CHUNK_TOKENS})" if self.shuffled else "--chunk_tokens or --val_fraction"
            line += (f"\nwarning: the validation split's longest {piece} holds "
                     f"{quantity(self.longest_val_piece, 'token')}: a model with block_size "
                     f"{self.longest_val_piece} or more cannot validate on it "
                     f"(pass a larger {larger}, or train with --eval_iters=0)")
        if self.unknown_tokens > UNKNOWN_WARNING * self.text_tokens:
            line += (f"\nwarning: {self.unknown_tokens / self.text_tokens:.0%} of the text tokens are <|unknown|>: the "
                     "vocabulary lacks many of the text's characters (a tokenizer made for other text?); a model "
                     "trained on this data learns little of it")
        if self.val_fraction > 0 and self.val_tokens > 2 * self.val_fraction * self.tokens:
            line += (f"\nnote: the validation split is {self.val_tokens / self.tokens:.0%} of the tokens "
                     f"(--val_fraction {self.val_fraction:g}): it takes whole chunks of "
                     f"{quantity(self.chunk_tokens, 'token')}, "
                     "and the corpus has few; a smaller --chunk_tokens splits it more finely")
        return line


def dataset_dir(out_dir: str | Path) -> Path:
    """out_dir as a Path; a DataError when it is empty (as a Path it would be ".", and the
    dataset would land in the current directory)."""
    if not str(out_dir):
        raise DataError("the output directory (--out_dir) is empty; name the directory for the dataset")
    return Path(out_dir)


def existing_files(inputs, out_dir: str | Path | None = None, tokenizer: str | Path | None = None) -> list[Path]:
    """The input paths as Paths, a folder replaced by the files in it (nano_format's
    folder_files, out_dir and the tokenizer file left out);
    DataError when there are none, one is not a regular file, or one file is given
    twice (by any path: its text would be used twice, and could land in both splits).
    Errors show the paths as given (a Path would make "./a.txt" "a.txt"), and a file
    found in a folder with the folder's argument: "corpus/b.txt (in folder corpus)"."""
    typed = [os.fspath(p) for p in inputs]
    if any(not t for t in typed):  # (as a Path, "" would be ".", this directory)
        raise DataError("an input file name is empty; give text files")
    if not typed:
        raise DataError("no input files given")
    home = Path(out_dir).resolve() if out_dir is not None and str(out_dir) else None
    files: list[tuple[str, str]] = []  # (path, how the arguments name it)
    for t in typed:
        where = Path(t).resolve()
        if home is not None and (where == home or home in where.parents):  # (a folder inside is left out)
            raise DataError(f"input {t} is {'the output folder' if where == home else 'inside the output folder'} "
                            f"--out_dir {out_dir}: what prepare writes there is no input; give the text files, or "
                            "another --out_dir")
        if os.path.isdir(t):
            files.extend((f, f"{f} (in folder {t})") for f in _input_folder_files(t, [out_dir, tokenizer]))
        else:
            files.append((t, t))
    seen: dict[tuple[int, int], str] = {}
    for t, shown in files:
        try:
            st = os.stat(t)
        except FileNotFoundError:
            raise DataError(f"input file {t} does not exist") from None
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"input {t} is {file_kind(st.st_mode)}; give text files")
        key = (st.st_dev, st.st_ino)
        if key in seen:
            raise DataError(f"inputs {seen[key]} and {shown} are the same file; give each file once")
        seen[key] = shown
        _refuse_utf16_or_utf32(t)
    return [Path(t) for t, _ in files]


def _input_folder_files(folder: str, skip: list) -> list[str]:
    """folder_files(folder), the paths in skip left out when they lie inside: the output
    directory (a dataset written into the corpus folder is not read as text the next
    time) and the vocabulary (kept beside the corpus it was built from); DataError when
    the folder cannot be listed or holds no file."""
    try:
        files = folder_files(folder, [p for p in skip if p is not None and str(p)])
    except OSError as e:
        raise DataError(f"cannot list the input folder {e.filename}: {e.strerror}") from None
    if not files:
        raise DataError(f"the input folder {folder} holds no files (names that start with '.' are skipped)")
    return files


# The first bytes of an input that are looked at for the NUL bytes of UTF-16 or UTF-32 text
_NUL_HEAD_BYTES = 1 << 16


def _nul_pattern(head: bytes) -> str | None:
    """The encoding ("UTF-16LE", "UTF-16BE", "UTF-32LE", "UTF-32BE") whose pattern of
    NUL bytes head shows, or None. Such text without a byte-order mark (what iconv -t
    UTF-16LE writes) is often valid UTF-8, one NUL per character; real text has a few
    NULs at most, and a run of them (a damaged file) falls on every position alike.

    What the encodings put in the bytes: every UTF-32LE code unit is b0 b1 b2 00 with
    b2 at most 0x10 (code points end at U+10FFFF), UTF-32BE mirrored; UTF-16 text of
    ASCII has the 00 high byte of each character at every other offset, so at both
    1 and 3 of every 4 (LE) or both 0 and 2 (BE), where records of "123\\0" in UTF-8
    have it at one of them only.
    """
    if head.count(0) < 8:
        return None
    units = head[:len(head) // 4 * 4]  # whole 4-byte code units from the start
    byte = [units[r::4] for r in range(4)]
    share = [b.count(0) / max(len(b), 1) for b in byte]
    # (a character's low byte is 00 in few of them: a head all NULs is no encoding's)
    if share[3] == 1 and max(byte[2]) <= 0x10 and share[0] < 0.125:
        return "UTF-32LE"
    if share[0] == 1 and max(byte[1]) <= 0x10 and share[3] < 0.125:
        return "UTF-32BE"
    odd, even = min(share[1], share[3]), min(share[0], share[2])
    if odd >= 1 / 32 and (share[0] + share[2]) / 2 <= odd / 8:
        return "UTF-16LE"
    if even >= 1 / 32 and (share[1] + share[3]) / 2 <= even / 8:
        return "UTF-16BE"
    return None


def _refuse_utf16_or_utf32(path: str) -> None:
    """A DataError when the file starts with a UTF-16 or UTF-32 byte-order mark (as
    Notepad's "Unicode" does), or without one has their pattern of NUL bytes in its
    first 64 KiB: such a file is not UTF-8 text, and saying what it is beats pointing
    at its first byte (or, where it decodes, training on NULs)."""
    with open(path, "rb") as f:
        head = f.read(_NUL_HEAD_BYTES)
    other = other_unicode(head[:4])
    if other:
        bom, encoding = other
        raise DataError(f"{path}: not UTF-8 text: it starts with a {encoding} byte order mark "
                        f"({bom.hex(' ').upper()}): a {encoding} file; convert it to UTF-8 (e.g. "
                        f"{_iconv(path, encoding)})")
    encoding = _nul_pattern(head)
    if encoding in ("UTF-16LE", "UTF-16BE"):
        # Chinese characters of the form U+XX00 (一 is U+4E00) put their NUL at the other
        # byte: such text reads as Chinese in one order only, which names it
        encoding = _reads_as_utf16(head) or encoding
    if encoding:
        raise DataError(f"{path}: not UTF-8 text: {head.count(0):,} of its first {len(head):,} bytes are NUL, "
                        f"as in a {encoding} file without a byte order mark (or a binary file); if it is "
                        f"{encoding} text, convert it to UTF-8 (e.g. {_iconv(path, encoding)})")


@dataclass
class _TokenStream:
    """What pass 1 of prepare_pretrain wrote to its temporary token file, counted."""
    characters: int = 0  # of the documents' text
    documents: int = 0
    tokens: int = 0  # all tokens written: text tokens plus separators or <|bos|>/<|eos|>
    text_tokens: int = 0
    unknown_tokens: int = 0
    sizes: list[int] = field(default_factory=list)  # of the inputs, as read


def prepare_pretrain(
    inputs: list[str | Path],
    tokenizer_path: str | Path,
    out_dir: str | Path,
    *,
    doc_mode: str = "blank",
    bos_eos: bool = False,
    val_fraction: float = 0.05,
    chunk_tokens: int = CHUNK_TOKENS,
    seed: int = DEFAULT_SEED,
    shuffle: bool = True,
    shard_tokens: int = 100_000_000,
    piece_chars: int = 1 << 20,
    overwrite: bool = False,
    progress: bool = True,
) -> PretrainSummary:
    """Text files -> token shards + meta.json in out_dir (see the module docstring).

    Memory is bounded by piece_chars (text held at once), the tokenizer's
    window, and 8 bytes per chunk for the split/shuffle indices.
    """
    t0 = time.monotonic()
    out_dir = dataset_dir(out_dir)
    inputs = existing_files(inputs, out_dir, tokenizer_path)
    _check_pretrain_options(doc_mode, val_fraction, chunk_tokens, shard_tokens, seed)
    tok = _load_tokenizer(tokenizer_path, (BOS, EOS) if bos_eos else (), "--bos_eos")
    with _new_dataset_dir(out_dir, overwrite, _PRETRAIN_SHARDS) as build:
        stream_path = build / ".tokens.tmp"
        try:
            stream = _encode_documents(inputs, tok, stream_path, out_dir, doc_mode, bos_eos, piece_chars, progress)
            if stream.tokens == 0:
                raise DataError(f"the input files hold no text: {', '.join(map(str, inputs))}")
            n_chunks = math.ceil(stream.tokens / chunk_tokens)
            is_val = _held_out_chunks(n_chunks, stream.tokens, chunk_tokens, val_fraction, seed)
            chunks = {"train": np.flatnonzero(~is_val), "val": np.flatnonzero(is_val)}
            shards = _write_pretrain_shards(stream_path, build, out_dir, tok.dtype, stream.tokens, chunks,
                                            chunk_tokens, shard_tokens, seed, shuffle, progress)
        finally:
            stream_path.unlink(missing_ok=True)

        _save_tokenizer(tok, build)
        split_tokens = {split: sum(s["tokens"] for s in shards[split]) for split in shards}
        longest = _longest_pieces(shards, chunks, chunk_tokens, shuffle)
        summary = PretrainSummary(stream.characters, stream.documents, stream.tokens, stream.text_tokens,
                                  stream.unknown_tokens, split_tokens["train"], split_tokens["val"], longest["train"],
                                  longest["val"], chunk_tokens, shuffle, val_fraction, time.monotonic() - t0)
        meta = _pretrain_meta(build, tok, tokenizer_path, inputs, stream, doc_mode=doc_mode, bos_eos=bos_eos,
                              chunk_tokens=chunk_tokens, val_fraction=val_fraction, seed=seed, n_chunks=n_chunks,
                              val_chunks=chunks["val"], shuffle=shuffle, shards=shards)
        write_json_atomic(build / META, meta)
    return summary


def _check_pretrain_options(doc_mode: str, val_fraction: float, chunk_tokens: int, shard_tokens: int,
                            seed: int) -> None:
    """A DataError for an option of prepare_pretrain out of its range."""
    if doc_mode not in DOC_MODES:
        raise DataError(f"document mode must be one of {DOC_MODES}, got {_short(doc_mode)}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if chunk_tokens < 1 or shard_tokens < 1:
        raise DataError("chunk_tokens and shard_tokens must be positive")
    if shard_tokens < chunk_tokens:  # a shard holds whole chunks: at most shard_tokens, at least one chunk
        raise DataError(f"shard_tokens ({shard_tokens}) must be at least chunk_tokens ({chunk_tokens})")
    _check_seed(seed)


def _encode_documents(inputs: list[Path], tok: Tokenizer, stream_path: Path, out_dir: Path, doc_mode: str,
                      bos_eos: bool, piece_chars: int, progress: bool) -> _TokenStream:
    """Pass 1: stream every document through the tokenizer into one flat temporary file.

    Documents are wrapped as <|bos|> doc <|eos|>, or else joined by a separator
    that keeps their boundary visible in the text ("\\n" per line, "\\n\\n" otherwise).
    """
    dtype = tok.dtype
    sep = np.asarray(tok.encode("\n" if doc_mode == "line" else "\n\n"), dtype=dtype)
    bos = np.asarray([tok.bos_id], dtype=dtype) if bos_eos else None
    eos = np.asarray([tok.eos_id], dtype=dtype) if bos_eos else None
    unk = tok.unk_id
    stream = _TokenStream()
    bar = Progress(sum(p.stat().st_size for p in inputs), "encode", enabled=progress)
    done_bytes = 0
    with _writing(out_dir, "the token stream"), open(stream_path, "wb") as out, _ending(bar):

        def emit(ids: np.ndarray) -> None:
            out.write(ids.astype(dtype, copy=False).tobytes())
            stream.tokens += len(ids)
            stream.unknown_tokens += int(np.count_nonzero(ids == unk))

        for path in inputs:
            # utf-8-sig: a byte-order mark at the start of a file is dropped, not encoded as text
            with open(path, encoding="utf-8-sig") as f, _utf8_errors(path), _read_unchanged(path, f) as size:
                for doc in iter_documents(f, doc_mode, piece_chars):

                    def counted(pieces: Iterable[str]) -> Iterator[str]:
                        for piece in pieces:
                            stream.characters += len(piece)
                            bar.update(done_bytes + f.buffer.tell())  # bytes read so far (cheap; drawn 5x/s)
                            yield piece

                    if bos_eos:
                        emit(bos)
                    elif stream.documents > 0:
                        emit(sep)
                    for ids in tok.encode_stream(counted(doc), chunk_chars=min(piece_chars, 1 << 16)):
                        emit(ids)
                        stream.text_tokens += len(ids)
                    if bos_eos:
                        emit(eos)
                    stream.documents += 1
            stream.sizes.append(size)
            done_bytes += size
    bar.close()
    return stream


def _held_out_chunks(n_chunks: int, n_tokens: int, chunk_tokens: int, val_fraction: float, seed: int) -> np.ndarray:
    """Which chunk_tokens-long chunks of the stream go to validation (a bool per chunk), by their seeded hash."""
    u = split_hash(seed, np.arange(n_chunks))
    is_val = u < val_fraction
    # Validation needs a full chunk: the short last one may be too short for any row. When the
    # draw gave none (a tiny corpus, or only the last chunk), the full chunk with the smallest
    # hash is held out too, as long as training keeps a full chunk.
    n_full = n_tokens // chunk_tokens
    if val_fraction > 0 and not is_val[:n_full].any():
        if n_full >= 2:
            is_val[int(np.argmin(u[:n_full]))] = True
        elif not is_val.any():
            if n_chunks < 2:
                raise DataError(
                    f"the corpus is {quantity(n_tokens, 'token')}, one chunk of {chunk_tokens}: too small "
                    "to hold out a validation chunk; lower --chunk_tokens or pass --val_fraction 0")
            is_val[-1] = True  # one full chunk, kept for training, and the short last one
    if is_val.all():
        raise DataError(f"every chunk went to validation; lower --val_fraction (now {val_fraction})")
    return is_val


def _chunk_order(chunks: np.ndarray, n_chunks: int, seed: int, salt: int, shuffle: bool) -> np.ndarray:
    """The order a split's chunks are written in: the stream's, or with shuffle their own seeded one."""
    if not shuffle:
        return chunks
    # The last chunk of the stream may be short; it stays last so that every
    # other chunk starts at a multiple of chunk_tokens in its shard.
    full = chunks[chunks != n_chunks - 1]
    order = np.random.default_rng([seed, salt]).permutation(full)
    if len(full) < len(chunks):
        order = np.append(order, n_chunks - 1)
    return order


def _write_pretrain_shards(stream_path: Path, build: Path, out_dir: Path, dtype: np.dtype, n_tokens: int,
                           chunks: dict[str, np.ndarray], chunk_tokens: int, shard_tokens: int, seed: int,
                           shuffle: bool, progress: bool) -> dict[str, list[dict]]:
    """Pass 2: copy chunks into shards, each split in its own seeded order; the shard list of each split."""
    n_chunks = math.ceil(n_tokens / chunk_tokens)
    shard_chunks = shard_tokens // chunk_tokens
    item = dtype.itemsize
    shards: dict[str, list[dict]] = {"train": [], "val": []}
    bar = Progress(n_chunks, "shards", unit=" chunks", enabled=progress)
    copied = 0
    with open(stream_path, "rb") as src, _ending(bar):
        for split, salt in (("train", 1), ("val", 2)):
            order = _chunk_order(chunks[split], n_chunks, seed, salt, shuffle)
            for first in range(0, len(order), shard_chunks):
                name = f"{split}_{len(shards[split]):03d}.bin"
                count = 0
                with _writing(out_dir, name), open(build / name, "wb") as dst:
                    for c in order[first:first + shard_chunks]:
                        start = int(c) * chunk_tokens
                        length = min(chunk_tokens, n_tokens - start)
                        src.seek(start * item)
                        dst.write(src.read(length * item))
                        count += length
                        copied += 1
                        bar.update(copied)
                    dst.flush()
                    os.fsync(dst.fileno())
                shards[split].append({"file": name, "tokens": count})
    bar.close()
    return shards


def _longest_pieces(shards: dict[str, list[dict]], chunks: dict[str, np.ndarray], chunk_tokens: int,
                    shuffle: bool) -> dict[str, int]:
    """The longest piece of adjacent text in each split's shards (see PretrainSummary)."""
    longest = {}
    for split in ("train", "val"):
        lengths = [s["tokens"] for s in shards[split]]
        cuts = chunk_seams(lengths, chunk_tokens, None if shuffle else chunks[split])
        longest[split] = max((int(np.diff([0, *c, n]).max()) for n, c in zip(lengths, cuts)), default=0)
    return longest


def _pretrain_meta(build: Path, tok: Tokenizer, tokenizer_path: str | Path, inputs: list[Path], stream: _TokenStream,
                   *, doc_mode: str, bos_eos: bool, chunk_tokens: int, val_fraction: float, seed: int, n_chunks: int,
                   val_chunks: np.ndarray, shuffle: bool, shards: dict[str, list[dict]]) -> dict:
    """meta.json of a pretrain dataset."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "kind": "pretrain",
        "dtype": tok.dtype.name,
        "tokenizer": {"file": TOKENIZER_FILE, "source": path_text(tokenizer_path),
                      "fingerprint": tok.fingerprint(), "vocab_size": tok.vocab_size},
        "inputs": [{"path": path_text(p), "bytes": size} for p, size in zip(inputs, stream.sizes)],
        "documents": {"mode": doc_mode, "bos_eos": bos_eos},
        # tokens: all, as in the shards; text_tokens: encoded from the documents' characters, without
        # the separators or <|bos|>/<|eos|> (whose characters are not counted either)
        "counts": {"characters": stream.characters, "documents": stream.documents, "tokens": stream.tokens,
                   "text_tokens": stream.text_tokens, "unknown_tokens": stream.unknown_tokens,
                   "tokens_per_character": stream.text_tokens / max(stream.characters, 1)},
        "split": {
            "unit": "chunk",
            "rule": "chunk i (tokens [i*chunk_tokens, (i+1)*chunk_tokens) of the stream) is validation "
                    "when split_hash(seed, i) < val_fraction; when val_fraction > 0 and no full chunk is, "
                    "so is the full chunk with the smallest split_hash if two or more chunks are full, "
                    "else the short last chunk",
            "chunk_tokens": chunk_tokens,
            "val_fraction": val_fraction,
            "seed": seed,
            "n_chunks": n_chunks,
            "val_chunks": val_chunks.tolist(),
        },
        "shuffle": {"enabled": shuffle, "unit": "chunk", "seed": seed},
        "shards": shards,
        "content": {"sha256": shards_digest(build, shards), "rule": CONTENT_RULE},
    }


# ---------------------------------------------------------------------------
# SFT: JSONL -> fixed-length rows with a loss mask over the answers


# What prepare sft does with a record's system message (messages[0] with role "system"):
# fold it into the first question, ignore it, or refuse the record
SYSTEM_POLICIES = ("prepend", "drop", "error")
# Between the system text and the first question when they are joined (with_system)
SYSTEM_SEPARATOR = "\n"
# What each policy did, as meta.json records it
SYSTEM_RULES = {"prepend": "the question of the first turn is the system text, \"\\n\", then the first question "
                           "(an empty system text adds nothing)",
                "drop": "system messages are ignored",
                "error": "a record with a system message is a bad line"}


def with_system(system: str | None, question: str) -> str:
    """The question the SFT template gets for a conversation with a system text: the
    template has no slot of its own for it, so the system text comes first, then a
    line break, then the question. No system text (None or "") leaves the question
    as it is. prepare sft (--system prepend) and the sampler (--system) both use this,
    so that a model is asked in the form it was trained on."""
    return f"{system}{SYSTEM_SEPARATOR}{question}" if system else question


def sft_messages(obj, where: str) -> tuple[str | None, list[tuple[str, str]]]:
    """The system text (None when there is none) and the (question, answer) pairs of
    one JSONL record.

    Accepts {"question": Q, "answer": A} (the reference's format) and
    {"messages": [{"role": "user"|"assistant", "content": ...}, ...]} with
    strictly alternating user/assistant turns starting with the user, optionally
    after one {"role": "system", ...} message as messages[0]. A record with a
    'messages' list and a 'question' or 'answer' is an error: one would be lost.
    """
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    system = None
    if "messages" in obj:
        both = [name for name in ("question", "answer") if name in obj]
        if both:
            raise DataError(f"{where}: the record gives 'messages' and also {', '.join(map(repr, both))}; "
                            "give one form, not both (one of them would be dropped)")
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise DataError(f"{where}: 'messages' must be a non-empty list")
        pairs, question = [], None
        for k, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise DataError(f"{where}: messages[{k}] must be an object with string 'role' and 'content'")
            if m["role"] == "system":
                if k != 0:
                    raise DataError(f"{where}: messages[{k}] is a system message; a record may have one, "
                                    "only as messages[0]")
                system = m["content"]
                continue
            want = "user" if question is None else "assistant"
            if m["role"] != want:
                raise DataError(f"{where}: messages[{k}] has role {_short(m['role'])}; expected {want!r} "
                                "(turns alternate user, assistant)")
            if question is None:
                question = m["content"]
            else:
                pairs.append((question, m["content"]))
                question = None
        if question is not None:
            raise DataError(f"{where}: the last user message has no assistant answer")
        if not pairs:
            raise DataError(f"{where}: 'messages' holds a system message and no user message")
        names = [f"messages[{k}].content" for k in range(len(msgs))]
        texts = [m["content"] for m in msgs]
    else:
        q, a = obj.get("question"), obj.get("answer")
        if not isinstance(q, str) or not isinstance(a, str):
            raise DataError(f"{where}: expected string fields 'question' and 'answer' (or a 'messages' list)")
        pairs, names, texts = [(q, a)], ["question", "answer"], [q, a]
    for name, text in zip(names, texts):
        _check_unicode(text, where, name)
    return system, pairs


def apply_system(system: str | None, pairs: list[tuple[str, str]], policy: str,
                 where: str) -> list[tuple[str, str]]:
    """The pairs to train on, given the record's system text and a SYSTEM_POLICIES policy."""
    if policy not in SYSTEM_POLICIES:
        raise DataError(f"system must be one of {SYSTEM_POLICIES}, got {_short(policy)}")
    if system is None or policy == "drop":
        return pairs
    if policy == "error":
        raise DataError(f"{where}: messages[0] is a system message, which --system error refuses; "
                        "--system prepend folds it into the first question, --system drop ignores it")
    (question, answer), *rest = pairs
    return [(with_system(system, question), answer), *rest]


def sft_turns(obj, where: str, system: str = "prepend") -> list[tuple[str, str]]:
    """The (question, answer) pairs of one JSONL record (see sft_messages), its
    system message, if any, treated as the SYSTEM_POLICIES policy `system` says."""
    text, pairs = sft_messages(obj, where)
    return apply_system(text, pairs, system, where)


def _check_unicode(text: str, where: str, name: str) -> None:
    """JSON's "\\ud800" escapes a lone surrogate, which is no character: the tokenizer
    would make <|unknown|> of it without a word. A DataError naming the field."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"{where}: {name} holds a lone surrogate (U+{ord(text[e.start]):04X} at character "
                        f"{e.start}), which is not text; write the character it was meant to be") from None


def sft_turn(tok: Tokenizer, question: str | Sequence[int],
             answer: str | Sequence[int] | None = None) -> list[tuple[str | list[int], int]]:
    """The SFT template, the one place it is spelled: the pieces of one turn,
    <|instruct_mark|> question <|response_mark|> answer <|eos|>, in order, each with
    its loss-mask value (1: the answer and its closing <|eos|>, what the model learns
    to write). A piece is a text to encode or a list of ids (a special token, or a
    question or answer given as ids). Without an answer: the prompt the model answers,
    the pieces before the answer (sampling.instruct_prompt)."""
    prompt = [([tok.instruct_id], 0), (question, 0), ([tok.response_id], 0)]
    return prompt if answer is None else [*prompt, (answer, 1), ([tok.eos_id], 1)]


def sft_encode(tok: Tokenizer, turns: list[tuple[str | list[int], str | list[int]]],
               max_tokens: int | None = None) -> tuple[list[int], list[int]]:
    """ids and loss mask of the SFT template (sft_turn) per turn (a question or an
    answer given as a list of ids, as sampling.chat_prompt passes a generated answer,
    is taken as it is).

    The mask is 1 on the answer's tokens and its closing <|eos|>, 0 elsewhere.
    It is built from the lengths of the encoded pieces, i.e. from token ids:
    the reference counted characters instead, which is wrong whenever one
    token covers several characters. With max_tokens, encoding stops there:
    the result is the first max_tokens ids and mask values of the sample (a
    huge text is encoded a window at a time, only as far as needed).
    """
    ids: list[int] = []
    mask: list[int] = []
    for question, answer in turns:
        for part, m in sft_turn(tok, question, answer):
            if not isinstance(part, str):
                new = list(part)
            elif max_tokens is None:
                new = tok.encode(part)
            else:
                new = []
                for window in tok.encode_stream(part, chunk_chars=1 << 16):  # (a str is read in windows)
                    new += window.tolist()
                    if len(ids) + len(new) >= max_tokens:
                        break
            ids += new
            mask += [m] * len(new)
            if max_tokens is not None and len(ids) >= max_tokens:
                return ids[:max_tokens], mask[:max_tokens]
    return ids, mask


_LINE_END = re.compile(rb"\r\n|\r|\n")


def _jsonl_lines(f, limit: int, piece_bytes: int = 1 << 20) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, bytes, bytes read) per line of a binary file, read piece_bytes at a time.

    Lines end as the text reader ends them (and prepare pretrain counts them): \\n,
    \\r\\n or a lone \\r. bytes is the line without its end, or None for a line over
    limit bytes, which is read past, never held whole; bytes read counts the line end too.
    """
    lineno = 0
    line = bytearray()  # the current line so far, while it is within limit
    size = 0  # bytes of the current line read so far (held or not)
    over = False
    while True:
        piece = f.read(piece_bytes)
        if not piece:
            if line or over:  # the last line, without a line end
                lineno += 1
                yield lineno, None if over else bytes(line), size
            return
        if piece.endswith(b"\r"):
            piece += f.read(1)  # (a \r\n is one line end: never split between two pieces)
        start = 0
        while start < len(piece):
            end = _LINE_END.search(piece, start)
            stop = end.start() if end else len(piece)
            if not over and len(line) + stop - start > limit:
                over, line = True, bytearray()
            elif not over:
                line += piece[start:stop]
            if end is None:
                size += stop - start
                break
            size += end.end() - start
            lineno += 1
            raw = None if over else bytes(line)
            line, over = bytearray(), False  # (freed before the caller reads the line)
            yield lineno, raw, size
            size, start = 0, end.end()


@dataclass
class SFTSummary:
    records: int  # valid records read (bad lines not counted)
    samples: int  # rows written (records minus skipped too-long ones)
    train_samples: int
    val_samples: int
    bad_lines: int
    too_long_skipped: int
    truncated: int
    tokens: int
    answer_tokens: int
    seconds: float
    system_messages: int = 0  # records with a system message (with policy "error": bad lines, skipped)
    system_policy: str = "prepend"
    unknown_tokens: int = 0  # <|unknown|> among the tokens written (padding not counted)
    unknown_answer_tokens: int = 0  # ... among the answer tokens trained on (mask 1)
    val_fraction: float = 0.0

    def text(self) -> str:
        done = {"prepend": "prepended to the first question", "drop": "dropped",
                "error": "refused, skipped as bad lines"}[self.system_policy]
        system = f"{self.system_messages:,} ({done})" if self.system_messages else "none"
        line = (f"{quantity(self.records, 'record')} -> {quantity(self.samples, 'sample')} "
                f"(train {self.train_samples:,}, val {self.val_samples:,}), "
                f"{quantity(self.tokens, 'token')} of which {self.answer_tokens:,} trained on "
                f"({self.unknown_tokens:,} unknown, {self.unknown_answer_tokens:,} of them trained on); "
                f"skipped: {quantity(self.bad_lines, 'bad line')}, {self.too_long_skipped:,} too long; "
                f"truncated: {self.truncated:,}; system messages: {system}; {self.seconds:.1f} s")
        over = [f"{n / total:.0%} of the {what} ({n:,} of {total:,})"
                for n, total, what in ((self.unknown_answer_tokens, self.answer_tokens, "answer tokens trained on"),
                                       (self.unknown_tokens, self.tokens, "tokens"))
                if n > UNKNOWN_WARNING * total]
        if over:
            line += (f"\nwarning: {' and '.join(over)} {'is' if len(over) == 1 else 'are'} <|unknown|>: the "
                     "vocabulary lacks many of the text's characters (a tokenizer made for other text?); a model "
                     "trained on this data cannot read or write those characters")
        if self.val_samples == 0 and self.val_fraction == 0:
            line += ("\nnote: no validation samples (--val_fraction 0 is the default for SFT): a run on this data "
                     "reports no validation loss and writes no best.pt; --val_fraction 0.05 holds some out")
        elif self.val_samples == 0:
            line += (f"\nnote: no validation samples: --val_fraction {self.val_fraction:g} drew no sample out of "
                     f"{self.samples:,} (each is held out by a hash of its content, so few samples "
                     "may give none): a run on this data reports no validation loss and writes no best.pt; a larger "
                     "--val_fraction or more samples hold some out")
        return line


@dataclass
class _SFTCounts:
    """What prepare_sft has read and written so far."""
    records: int = 0  # valid records read (bad lines not counted)
    samples: int = 0  # rows written
    bad_lines: int = 0
    too_long_skipped: int = 0
    truncated: int = 0
    tokens: int = 0
    answer_tokens: int = 0
    system_messages: int = 0
    unknown_tokens: int = 0
    unknown_answer_tokens: int = 0
    rows: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})  # rows written per split
    sizes: list[int] = field(default_factory=list)  # of the inputs, as read


def prepare_sft(
    inputs: list[str | Path],
    tokenizer_path: str | Path,
    out_dir: str | Path,
    *,
    block_size: int,
    val_fraction: float = 0.0,
    seed: int = DEFAULT_SEED,
    too_long: str = "skip",
    skip_bad: bool = False,
    system: str = "prepend",
    overwrite: bool = False,
    progress: bool = True,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> SFTSummary:
    """JSONL files -> rows of block_size ids padded with <|padding|>, plus masks.

    Training reads x = row[:-1], y = row[1:], loss_mask = mask[1:], so a sample
    may hold up to block_size tokens and a model reads block_size - 1 of them: a
    model's block_size + 1 trains its whole context. too_long: "skip" (count and drop),
    "truncate" (keep the first block_size tokens; the mask stays exact; a sample
    whose answer would be cut off entirely is skipped and counted), or
    "error". A record's system message (messages[0] with role "system") is, by
    system: "prepend" (with_system: folded into the first question), "drop"
    (ignored) or "error" (a bad line). A line that is not a valid record (or is
    longer than max_line_bytes) is an error naming the file and line, or with
    skip_bad is skipped and counted (the first SKIPPED_SHOWN named in notes on stderr).
    Lines end at \\n, \\r\\n or a lone \\r. A sample is held out when
    split_hash(seed, row_key(row)) < val_fraction: by its content, so a sample
    given twice is never in both splits.
    """
    t0 = time.monotonic()
    out_dir = dataset_dir(out_dir)
    inputs = existing_files(inputs, out_dir, tokenizer_path)
    _check_sft_options(block_size, too_long, system, val_fraction, seed)
    tok = _load_tokenizer(tokenizer_path, (INSTRUCT, RESPONSE, EOS, PADDING), "the SFT template")
    with _new_dataset_dir(out_dir, overwrite, _SFT_SHARDS) as build:
        files = {split: (f"sft_{split}.bin", f"sft_{split}_mask.bin") for split in ("train", "val")}
        n = _write_sft_rows(inputs, tok, build, out_dir, files, block_size=block_size, val_fraction=val_fraction,
                            seed=seed, too_long=too_long, skip_bad=skip_bad, system=system, progress=progress,
                            max_line_bytes=max_line_bytes)
        if n.bad_lines > SKIPPED_SHOWN:
            print(f"note: {quantity(n.bad_lines - SKIPPED_SHOWN, 'more bad line')} skipped", file=sys.stderr)
        if n.rows["train"] == 0:
            raise _no_training_samples(n, inputs, block_size, too_long, val_fraction)
        _save_tokenizer(tok, build)
        summary = SFTSummary(n.records, n.samples, n.rows["train"], n.rows["val"], n.bad_lines, n.too_long_skipped,
                             n.truncated, n.tokens, n.answer_tokens, time.monotonic() - t0, n.system_messages, system,
                             n.unknown_tokens, n.unknown_answer_tokens, val_fraction)
        shards = {split: [{"file": files[split][0], "mask": files[split][1], "rows": n.rows[split]}]
                  for split in ("train", "val")}
        meta = _sft_meta(build, tok, tokenizer_path, inputs, n, block_size=block_size, system=system,
                         val_fraction=val_fraction, seed=seed, shards=shards)
        write_json_atomic(build / META, meta)
    return summary


def _check_sft_options(block_size: int, too_long: str, system: str, val_fraction: float, seed: int) -> None:
    """A DataError for an option of prepare_sft out of its range."""
    if not 2 <= block_size <= spec.MAX_DIM:
        raise DataError(f"block_size must be from 2 to {spec.MAX_DIM:,} (the largest block_size a model may have), "
                        f"got {block_size:,}")
    if too_long not in TOO_LONG:
        raise DataError(f"too_long must be one of {TOO_LONG}, got {_short(too_long)}")
    if system not in SYSTEM_POLICIES:
        raise DataError(f"system must be one of {SYSTEM_POLICIES}, got {_short(system)}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    _check_seed(seed)


def _write_sft_rows(inputs: list[Path], tok: Tokenizer, build: Path, out_dir: Path, files: dict[str, tuple[str, str]],
                    *, block_size: int, val_fraction: float, seed: int, too_long: str, skip_bad: bool, system: str,
                    progress: bool, max_line_bytes: int) -> _SFTCounts:
    """Every record of the inputs as a row and a mask in its split's two files (see prepare_sft); the counts."""
    n = _SFTCounts()
    row = np.empty(block_size, dtype=tok.dtype)
    row_mask = np.empty(block_size, dtype=np.uint8)
    bar = Progress(sum(p.stat().st_size for p in inputs), "sft", enabled=progress)
    done = 0
    handles = {split: (open(build / a, "wb"), open(build / b, "wb")) for split, (a, b) in files.items()}
    with _writing(out_dir, "the rows"), contextlib.ExitStack() as closing, _ending(bar):
        for a, b in handles.values():
            closing.callback(b.close)
            closing.callback(a.close)
        for path in inputs:
            with open(path, "rb") as f, _read_unchanged(path, f) as file_size:
                n.sizes.append(file_size)
                for lineno, raw, size in _jsonl_lines(f, max_line_bytes):
                    done += size
                    bar.update(done)
                    where = f"{path}:{lineno}"
                    try:
                        sample = _sft_sample(tok, raw, size, lineno, where, block_size, system, max_line_bytes, n)
                    except (DataError, UnicodeDecodeError) as e:
                        _skip_bad_line(e, where, raw, lineno, path, skip_bad, bar, n)
                        continue
                    if sample is None:
                        continue  # blank lines are not records
                    n.records += 1
                    sample = _fit_block(*sample, block_size, too_long, where, n)
                    if sample is not None:
                        split = _fill_row(*sample, row, row_mask, tok, seed, val_fraction, n)
                        handles[split][0].write(row.tobytes())
                        handles[split][1].write(row_mask.tobytes())
    bar.close()
    return n


def _sft_sample(tok: Tokenizer, raw: bytes | None, size: int, lineno: int, where: str, block_size: int, system: str,
                max_line_bytes: int, n: _SFTCounts) -> tuple[list[int], list[int]] | None:
    """The ids and mask of one JSONL line's record, up to block_size + 1 of them; None for a
    blank line. A DataError or UnicodeDecodeError for a bad line."""
    if raw is None:
        raise DataError(f"{where}: the line is {size:,} bytes, more than the {max_line_bytes:,} a record may be")
    # (a byte-order mark may start a file: utf-8-sig drops it)
    text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").strip()
    if not text:
        return None
    # ({"answer": "a", "answer": "b"} is a mistake: JSON would keep "b" without a word)
    system_text, pairs = sft_messages(_loads(text, where, unique_keys=True), where)
    if system_text is not None:
        n.system_messages += 1  # (refused by "error": counted here and as a bad line)
    pairs = apply_system(system_text, pairs, system, where)
    # (block_size + 1 ids are enough to tell a sample that is too long)
    return sft_encode(tok, pairs, block_size + 1)


def _skip_bad_line(e: DataError | UnicodeDecodeError, where: str, raw: bytes | None, lineno: int, path: Path,
                   skip_bad: bool, bar: Progress, n: _SFTCounts) -> None:
    """A bad line: counted (the first SKIPPED_SHOWN named in a note) with skip_bad, else the DataError that says why."""
    why = str(e) if isinstance(e, DataError) else _line_not_utf8(where, e, raw, lineno == 1, path)
    if not skip_bad:
        raise DataError(why if isinstance(e, UnicodeDecodeError) else
                        f"{why} (pass --skip_bad to skip bad lines)") from None
    n.bad_lines += 1
    if n.bad_lines <= SKIPPED_SHOWN:
        bar.note(f"note: {why} (skipped)")


def _fit_block(ids: list[int], mask: list[int], block_size: int, too_long: str, where: str,
               n: _SFTCounts) -> tuple[list[int], list[int]] | None:
    """The sample as a row takes it: whole when it fits in block_size, else as too_long says
    (None when skipped; truncated; a DataError), counted."""
    if len(ids) <= block_size:
        return ids, mask
    if too_long == "error":
        raise DataError(f"{where}: the sample is more than block_size {block_size} tokens "
                        "(choose --too_long skip or truncate)")
    if too_long == "skip" or 1 not in mask[:block_size]:  # (truncated: no answer left)
        n.too_long_skipped += 1
        return None
    n.truncated += 1
    return ids[:block_size], mask[:block_size]


def _fill_row(ids: list[int], mask: list[int], row: np.ndarray, row_mask: np.ndarray, tok: Tokenizer, seed: int,
             val_fraction: float, n: _SFTCounts) -> str:
    """Pad the sample into row and row_mask, and count it; the split it goes to, by its content."""
    n.samples += 1
    k = len(ids)
    row[:k] = ids
    row[k:] = tok.pad_id
    row_mask[:k] = mask
    row_mask[k:] = 0
    split = "val" if split_hash(seed, np.array([row_key(row)]))[0] < val_fraction else "train"
    n.rows[split] += 1
    n.tokens += k
    n.answer_tokens += sum(mask)
    unknown = row[:k] == tok.unk_id
    n.unknown_tokens += int(np.count_nonzero(unknown))
    n.unknown_answer_tokens += int(np.count_nonzero(unknown & (row_mask[:k] == 1)))
    return split


def _no_training_samples(n: _SFTCounts, inputs: list[Path], block_size: int, too_long: str,
                         val_fraction: float) -> DataError:
    """The error for inputs that gave no training sample, saying where the records went."""
    names = ", ".join(map(str, inputs))
    if n.records + n.bad_lines == 0:
        return DataError(f"no training samples: {names} {'holds' if len(inputs) == 1 else 'hold'} no records "
                         "(empty, or blank lines only)")
    cut = " or left no answer token when truncated" if too_long == "truncate" else ""
    why = (f" ({n.too_long_skipped:,} too long for block_size {block_size}{cut}, {n.rows['val']:,} held out by "
           f"--val_fraction {val_fraction:g})") if n.records else ""
    return DataError(f"no training samples from {names}: {quantity(n.records, 'record')}{why} and "
                     f"{quantity(n.bad_lines, 'bad line')}")


def _sft_meta(build: Path, tok: Tokenizer, tokenizer_path: str | Path, inputs: list[Path], n: _SFTCounts, *,
              block_size: int, system: str, val_fraction: float, seed: int, shards: dict[str, list[dict]]) -> dict:
    """meta.json of an SFT dataset."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "kind": "sft",
        "dtype": tok.dtype.name,
        "block_size": block_size,
        "tokenizer": {"file": TOKENIZER_FILE, "source": path_text(tokenizer_path),
                      "fingerprint": tok.fingerprint(), "vocab_size": tok.vocab_size},
        "inputs": [{"path": path_text(p), "bytes": size} for p, size in zip(inputs, n.sizes)],
        "template": "<|instruct_mark|>question<|response_mark|>answer<|eos|> per turn, padded with <|padding|>; "
                    "mask 1 on answer tokens and their <|eos|>",
        "counts": {"records": n.records, "samples": n.samples, "bad_lines": n.bad_lines,
                   "too_long_skipped": n.too_long_skipped, "truncated": n.truncated, "tokens": n.tokens,
                   "answer_tokens": n.answer_tokens, "system_messages": n.system_messages,
                   # <|unknown|> among the tokens (padding not counted), and among the answer tokens
                   # trained on; a dataset prepared before these were counted has neither
                   "unknown_tokens": n.unknown_tokens, "unknown_answer_tokens": n.unknown_answer_tokens},
        # (a dataset prepared before system messages were read has no "system": none was taken)
        "system": {"policy": system, "rule": SYSTEM_RULES[system]},
        "split": {"unit": "sample", "rule": "a sample is validation when split_hash(seed, k) < val_fraction, "
                                            "k = the first 8 bytes (little-endian) of the BLAKE2b digest of "
                                            "its row as stored (row_key): identical samples share a split",
                  "val_fraction": val_fraction, "seed": seed},
        "shards": shards,
        "content": {"sha256": shards_digest(build, shards), "rule": CONTENT_RULE},
    }


# ---------------------------------------------------------------------------
# Rows made in memory


ROW_KINDS = ("sft", "seq2seq")


def _whole_numbers(a, what: str) -> np.ndarray:
    """a as an array of whole numbers (integers, bools, or floats or Python objects with whole
    values), else a DataError naming `what`: rows are stored as integers, and 7.5 would be
    stored as 7 without a word."""
    a = np.asarray(a)
    if a.dtype.kind == "O":  # (np.array(lists, dtype=object), a pandas column)
        try:
            a = a.astype(np.float64)
        except (TypeError, ValueError):
            raise DataError(f"{what} must be whole numbers, got values that are not numbers") from None
    if a.dtype.kind in "biu" or (a.dtype.kind == "f" and np.isfinite(a).all() and (a == np.round(a)).all()):
        return a
    got = ("fractions or values that are not finite" if a.dtype.kind in "fO" else
           "text" if a.dtype.kind in "US" else f"values of type {a.dtype}")
    raise DataError(f"{what} must be whole numbers, got {got}")


def write_rows(out_dir: str | Path, tokenizer: Tokenizer, kind: str, splits: dict[str, tuple[np.ndarray, ...]],
               *, source: str = "<memory>", info: dict | None = None, overwrite: bool = False) -> None:
    """Write generated rows as a prepared dataset (what `Dataset` reads).

    kind "sft": splits[name] = (tokens [N, L], mask [N, L]), the layout prepare_sft
    writes (training reads x = row[:-1], y = row[1:], loss_mask = mask[1:]).
    kind "seq2seq": splits[name] = (inputs [N, T], targets [N, T], mask [N, T]),
    aligned: the loss at position t compares the prediction there with targets[t].
    Names are "train" and "val" (either may be missing or empty). `source` and
    `info` are recorded in meta.json.
    """
    if kind not in ROW_KINDS:
        raise DataError(f"kind must be one of {ROW_KINDS}, got {_short(kind)}")
    unknown = set(splits) - {"train", "val"}
    if unknown:
        raise DataError(f"unknown split(s) {sorted(unknown)}; splits are train and val")
    width = None
    for name, arrays in splits.items():
        if len(arrays) != (2 if kind == "sft" else 3):
            raise DataError(f"{kind} rows of split {name}: expected {'(tokens, mask)' if kind == 'sft' else '(inputs, targets, mask)'}")
        shapes = {np.shape(a) for a in arrays}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise DataError(f"{kind} rows of split {name}: the arrays must be 2-D and of one shape, got {sorted(shapes)}")
        n, w = next(iter(shapes))
        if width not in (None, w):
            raise DataError(f"the splits have rows of different lengths ({width} and {w})")
        width = w
        if not n * w:
            continue  # (no values: nothing to check, nor to write)
        arrays = [_whole_numbers(a, f"{kind} rows of split {name}: the {what}")
                  for a, what in zip(arrays, ("tokens", "mask") if kind == "sft" else ("inputs", "targets", "mask"))]
        if any(a.min() < 0 or a.max() >= tokenizer.vocab_size for a in arrays[:-1]):
            raise DataError(f"{kind} rows of split {name}: token ids outside the vocabulary (0..{tokenizer.vocab_size - 1})")
        if not np.isin(arrays[-1], (0, 1)).all():
            row, col = (int(i[0]) for i in np.nonzero(~np.isin(arrays[-1], (0, 1))))
            raise DataError(f"{kind} rows of split {name}: the mask must be 0 (not scored) or 1 (scored), got "
                            f"{arrays[-1][row, col]} at row {row}, position {col}")
    if width is None or width < (2 if kind == "sft" else 1):
        raise DataError(f"no {kind} rows to write")
    out_dir = dataset_dir(out_dir)
    with _new_dataset_dir(out_dir, overwrite, _SFT_SHARDS if kind == "sft" else _SEQ2SEQ_SHARDS) as build:
        dtype = tokenizer.dtype
        prefix = "sft" if kind == "sft" else "s2s"
        parts = ("", "_mask") if kind == "sft" else ("_x", "_y", "_mask")
        keys = ("file", "mask") if kind == "sft" else ("file", "target", "mask")
        shards: dict[str, list] = {}
        counts = {}
        for name in ("train", "val"):
            arrays = splits.get(name) or tuple(np.zeros((0, width)) for _ in parts)
            entry = {"rows": int(np.shape(arrays[0])[0])}
            for part, key, a in zip(parts, keys, arrays):
                fname = f"{prefix}_{name}{part}.bin"
                with _writing(out_dir, fname):
                    np.ascontiguousarray(a, dtype=np.uint8 if key == "mask" else dtype).tofile(build / fname)
                entry[key] = fname
            shards[name] = [entry]
            counts[name] = entry["rows"]
        _save_tokenizer(tokenizer, build)
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "kind": kind,
            "dtype": dtype.name,
            "block_size": int(width),
            "tokenizer": {"file": TOKENIZER_FILE, "source": path_text(tokenizer.source),
                          "fingerprint": tokenizer.fingerprint(), "vocab_size": tokenizer.vocab_size},
            "inputs": [{"path": path_text(source)}],
            "template": ("rows of ids with a loss mask (x = row[:-1], y = row[1:])" if kind == "sft" else
                         "inputs and targets aligned position by position, with a loss mask"),
            "counts": {"rows": counts},
            "info": info or {},
            "shards": shards,
            "content": {"sha256": shards_digest(build, shards), "rule": CONTENT_RULE},
        }
        write_json_atomic(build / META, meta)


# ---------------------------------------------------------------------------
# Reading a prepared dataset


def chunk_seams(shard_tokens: list[int], chunk_tokens: int, chunks=None) -> list[np.ndarray]:
    """Per shard of one split, the offsets of its seams: where two chunks meet that were
    not adjacent in the corpus, and which a row must therefore not cross.

    The shards hold whole chunks of chunk_tokens, at multiples of it (the short last
    chunk of the stream is written last). chunks: the split's chunk numbers in the
    order they were written, for shards in corpus order (--no_shuffle): a seam is then
    where a number is not the one before plus 1 (the other split's chunks were taken
    out there). None for shuffled shards: every chunk boundary is a seam.
    """
    seams = []
    taken = 0
    for n in shard_tokens:
        bounds = np.arange(chunk_tokens, n, chunk_tokens, dtype=np.int64)
        if chunks is not None:
            count = -(-n // chunk_tokens)  # the chunks this shard holds
            held = np.asarray(chunks[taken:taken + count], dtype=np.int64)
            taken += count
            bounds = bounds[np.diff(held) != 1]
        seams.append(bounds)
    return seams


class _Pieces:
    """The pieces of some shards between their seams, as a sequence: pieces[k] is a view
    of its shard, made when asked for (a list of views would cost ~500 bytes a piece)."""

    def __init__(self, shards: list[np.ndarray], seams: list[np.ndarray]):
        self.shards = shards
        empty = np.zeros(0, dtype=np.int64)
        starts = [np.append(0, cuts) for cuts in seams]
        ends = [np.append(cuts, len(s)) for s, cuts in zip(shards, seams)]
        self.shard = np.repeat(np.arange(len(shards)), [len(a) for a in starts])
        self.start = np.concatenate([empty, *starts]).astype(np.int64)
        self.end = np.concatenate([empty, *ends]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.start)

    def __getitem__(self, k: int) -> np.ndarray:
        return self.shards[self.shard[k]][self.start[k]:self.end[k]]

    def lengths(self) -> np.ndarray:
        return self.end - self.start


class TokenWindows:
    """Pretraining rows: windows of T+1 tokens (x = w[:-1], y = w[1:], T = block_size),
    laid end to end with stride T inside each piece of adjacent text from a
    per-epoch random start offset, so that an epoch sees each piece's tokens once
    but for its slack ((length - 1) % T, fewer than T tokens, at its ends), with
    shifted window boundaries, and a few epochs every token. The pieces are the
    shards cut at their seams (chunk_seams): a window may end exactly at a seam,
    never cross it. Without seams (a dataset whose meta.json does not record its
    chunks), the pieces are the whole shards. Windows never cross shard ends.

    `shards` holds the pieces (views of the mapped shards); an epoch's layout has
    one offset per piece."""

    def __init__(self, shards: list[np.ndarray], block_size: int, seams: list[np.ndarray] | None = None):
        self.whole = shards
        self.windows = "shards" if seams is None else "chunks"  # what a window stays inside
        self.shards = shards if seams is None else _Pieces(shards, seams)
        self.T = block_size
        lengths = (np.array([len(s) for s in shards], dtype=np.int64) if seams is None else
                   self.shards.lengths())
        self.counts = np.maximum((lengths - 1) // block_size, 0)
        self.slack = lengths - 1 - self.counts * block_size
        self.first_row = np.concatenate([[0], np.cumsum(self.counts)])  # [n_pieces + 1]
        self.n_rows = int(self.first_row[-1])

    def across_seams(self) -> TokenWindows:
        """Windows laid through the whole shards, seams or not, as nano-train laid them
        before rows stayed inside chunks: to resume a run begun then exactly."""
        return TokenWindows(self.whole, self.T)

    def epoch_layout(self, rng: np.random.Generator) -> np.ndarray:
        """Start offset per piece for this epoch: [n_pieces] in 0..slack."""
        return rng.integers(0, np.maximum(self.slack, 0) + 1).astype(np.int64, copy=False)

    def fetch(self, rows: np.ndarray, layout: np.ndarray):
        T = self.T
        x = np.empty((len(rows), T), dtype=np.int64)
        y = np.empty((len(rows), T), dtype=np.int64)
        shard_of = np.searchsorted(self.first_row, rows, side="right") - 1
        for b, (r, s) in enumerate(zip(rows, shard_of)):
            start = int(layout[s] + (r - self.first_row[s]) * T)
            w = self.shards[s][start:start + T + 1]  # one memmap slice: [T+1]
            x[b] = w[:-1]
            y[b] = w[1:]
        return x, y, None


class SFTRows:
    """SFT rows: one sample each; x = row[:-1], y = row[1:], loss_mask = mask[1:]."""

    def __init__(self, tokens: np.ndarray, mask: np.ndarray):
        self.tokens = tokens  # [N, L]
        self.mask = mask  # [N, L]
        self.n_rows = int(tokens.shape[0])
        self.T = int(tokens.shape[1]) - 1

    def epoch_layout(self, rng: np.random.Generator) -> None:
        return None

    def fetch(self, rows: np.ndarray, layout):
        order = np.argsort(rows)  # memmap fancy indexing reads fastest in file order
        t = np.empty((len(rows), self.T + 1), dtype=np.int64)
        m = np.empty((len(rows), self.T + 1), dtype=np.float32)
        t[order] = self.tokens[rows[order]]
        m[order] = self.mask[rows[order]]
        return t[:, :-1], t[:, 1:], m[:, 1:]


class Seq2SeqRows:
    """Seq2seq rows: x = inputs[n], y = targets[n], loss_mask = mask[n], aligned
    (no shift): a full-attention model reads the whole input and is scored on
    targets[t] at each position t."""

    def __init__(self, inputs: np.ndarray, targets: np.ndarray, mask: np.ndarray):
        self.inputs = inputs  # [N, T]
        self.targets = targets  # [N, T]
        self.mask = mask  # [N, T]
        self.n_rows = int(inputs.shape[0])
        self.T = int(inputs.shape[1])

    def epoch_layout(self, rng: np.random.Generator) -> None:
        return None

    def fetch(self, rows: np.ndarray, layout):
        order = np.argsort(rows)
        x = np.empty((len(rows), self.T), dtype=np.int64)
        y = np.empty((len(rows), self.T), dtype=np.int64)
        m = np.empty((len(rows), self.T), dtype=np.float32)
        x[order] = self.inputs[rows[order]]
        y[order] = self.targets[rows[order]]
        m[order] = self.mask[rows[order]]
        return x, y, m


class Batcher:
    """Deterministic, resumable micro-batches from a row source.

    Rows are numbered globally: row n is row perm_e[n % R] of epoch e = n // R,
    where R is the number of rows per epoch and perm_e (plus the source's
    per-epoch layout) comes from np.random.default_rng([seed, e]). Each call to
    `next()` advances a counter by world_size * batch_size rows, of which rank
    r takes the r-th slice: together the ranks read exactly the rows a single
    process would read in world_size consecutive calls, so DDP sees the same
    data as one process with the same global batch. The state is the counter:
    loading it jumps straight to the position, nothing is re-read.
    """

    def __init__(self, source, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if source.n_rows <= 0:
            raise DataError("the split holds no complete row (block_size + 1 tokens)")
        for name, value, least in (("batch_size", batch_size, 1), ("seed", seed, 0), ("world_size", world_size, 1)):
            if not _is_int(value) or value < least:
                raise ValueError(f"Batcher: {name} must be an integer >= {least}, got {value!r}")
        if not _is_int(rank) or not 0 <= rank < world_size:
            raise ValueError(f"Batcher: rank must be an integer in [0, world_size = {world_size}), got {rank!r}")
        self.source = source
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.row = 0
        self._epochs: dict[int, tuple[np.ndarray, object]] = {}

    def _epoch(self, e: int):
        if e not in self._epochs:
            rng = np.random.default_rng([self.seed, e])
            layout = self.source.epoch_layout(rng)
            perm = rng.permutation(self.source.n_rows)
            if len(self._epochs) >= 2:  # a batch spans at most two epochs
                self._epochs.pop(min(self._epochs))
            self._epochs[e] = (perm, layout)
        return self._epochs[e]

    def rows(self, start: int, count: int) -> list[tuple[np.ndarray, object]]:
        """Source rows for global rows start..start+count-1, grouped by epoch."""
        n = np.arange(start, start + count, dtype=np.int64)
        epochs = n // self.source.n_rows
        out = []
        for e in np.unique(epochs):
            perm, layout = self._epoch(int(e))
            out.append((perm[n[epochs == e] % self.source.n_rows], layout))
        return out

    def next(self):
        """(x [B, T] int64, y [B, T] int64, loss_mask [B, T] float32 or None) as numpy arrays."""
        start = self.row + self.rank * self.batch_size
        self.row += self.world_size * self.batch_size
        parts = [self.source.fetch(rows, layout) for rows, layout in self.rows(start, self.batch_size)]
        if len(parts) == 1:
            return parts[0]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        m = None if parts[0][2] is None else np.concatenate([p[2] for p in parts])
        return x, y, m

    def state_dict(self) -> dict:
        state = {"row": self.row, "seed": self.seed, "n_rows": self.source.n_rows}
        if isinstance(self.source, TokenWindows):
            state["windows"] = self.source.windows
        return state

    def load_state_dict(self, state: dict) -> None:
        """A state from state_dict(): "row" (rows read before, an integer >= 0), "seed" and
        "n_rows" (which must be this batcher's) and, from runs since rows stay inside
        chunks, "windows"."""
        missing = [k for k in ("row", "seed", "n_rows") if not isinstance(state, dict) or k not in state]
        if missing:
            raise DataError(f"the data position holds no {' / '.join(missing)}: it is not one Batcher.state_dict() "
                            "wrote")
        if not _is_int(state["row"]) or state["row"] < 0:
            raise DataError(f"the data position's row must be an integer >= 0, got {state['row']!r}")
        if (getattr(self.source, "windows", None) == "chunks" and state.get("windows", "shards") == "shards"
                and state["seed"] == self.seed and state["n_rows"] == self.source.across_seams().n_rows):
            # Saved by a run whose rows ran through whole shards (before rows stayed inside chunks):
            # it goes on with those rows, so that it resumes exactly
            self.source = self.source.across_seams()
            if self.rank == 0:
                print("note: this run began when training rows could cross chunk seams (joining text that was "
                      "not adjacent in the corpus); it keeps those rows to resume exactly (validation rows stay "
                      "inside chunks); a new run's rows all do", file=sys.stderr)
        if state["n_rows"] != self.source.n_rows or state["seed"] != self.seed:
            raise DataError(
                f"the data position was saved for {state['n_rows']} rows (seed {state['seed']}) but the dataset "
                f"now has {self.source.n_rows} rows (seed {self.seed}): the dataset, block_size or seed changed")
        self.row = int(state["row"])


def _is_int(value) -> bool:
    """A Python or numpy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


_SHARD_FIELDS = {"pretrain": {"file": str, "tokens": int}, "sft": {"file": str, "mask": str, "rows": int},
                 "seq2seq": {"file": str, "target": str, "mask": str, "rows": int}}


def _is_plain_name(value) -> bool:
    """Whether value names a file inside the dataset directory: no folder, no drive, not . or .."""
    return (isinstance(value, str) and value not in ("", ".", "..")
            and not any(c in value for c in "/\\:\0"))


def _check_meta(meta: dict, meta_path: Path) -> None:
    """A DataError naming meta.json and the field, for each field Dataset reads
    that is missing or of the wrong type (a hand-edited or damaged file). Every
    file is a plain name in the dataset directory, and no file is listed twice
    (the validation split must not read the training split's files)."""

    def need(ok: bool, field: str, what: str) -> None:
        if not ok:
            raise DataError(f"{meta_path}: field {_short(field)} is missing or not {what}; prepare the data again")

    def is_count(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    plain = "a file name in the dataset directory (no folder or drive, not . or ..)"

    need(meta.get("kind") in _SHARD_FIELDS, "kind", f"one of {', '.join(_SHARD_FIELDS)}")
    need(meta.get("dtype") in ("uint16", "uint32"), "dtype", "uint16 or uint32")
    tokenizer = meta.get("tokenizer")
    need(isinstance(tokenizer, dict), "tokenizer", "an object")
    need(isinstance(tokenizer.get("fingerprint"), str), "tokenizer.fingerprint", "a string")
    need(_is_plain_name(tokenizer.get("file")), "tokenizer.file", plain)
    if meta["kind"] != "pretrain":
        need(is_count(meta.get("block_size")) and meta["block_size"] > 0, "block_size", "a positive integer")
    elif isinstance(meta.get("split"), dict) and "chunk_tokens" in meta["split"]:
        # the chunks, for the seams rows must not cross (without chunk_tokens: none known, as in old datasets)
        info = meta["split"]
        need(is_count(info["chunk_tokens"]) and info["chunk_tokens"] > 0, "split.chunk_tokens", "a positive integer")
        shuffle = meta.get("shuffle")
        need(isinstance(shuffle, dict) and isinstance(shuffle.get("enabled"), bool), "shuffle.enabled",
             "true or false")
        if not shuffle["enabled"]:
            need(is_count(info.get("n_chunks")), "split.n_chunks", "a count")
            need(isinstance(info.get("val_chunks"), list) and all(
                is_count(c) and c < info["n_chunks"] for c in info["val_chunks"]),
                "split.val_chunks", "a list of chunk numbers below split.n_chunks")
    shards = meta.get("shards")
    need(isinstance(shards, dict), "shards", "an object of splits")
    listed: dict[str, str] = {}  # file name -> the first field that names it
    for split, entries in shards.items():
        need(isinstance(entries, list), f"shards.{split}", "a list of shards")
        for i, entry in enumerate(entries):
            need(isinstance(entry, dict), f"shards.{split}[{i}]", "an object")
            for key, kind in _SHARD_FIELDS[meta["kind"]].items():
                field = f"shards.{split}[{i}].{key}"
                if kind is int:
                    need(is_count(entry.get(key)), field, "a count")
                    continue
                name = entry.get(key)
                need(_is_plain_name(name), field, plain)
                if name in listed:
                    raise DataError(f"{meta_path}: field {_short(field)} names {_short(name)}, as field "
                                    f"{_short(listed[name])} does: each file holds one split's data, once "
                                    "(the validation split must not be training data); prepare the data again")
                listed[name] = field


class Dataset:
    """A prepared dataset directory, validated, with its splits memory-mapped."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not str(path):
            raise DataError("no dataset given: set data.dataset to a directory made by `python -m nano_train.prepare`")
        if self.path.exists() and not self.path.is_dir():
            raise DataError(f"data.dataset {self.path} is {file_kind(self.path.stat().st_mode)}, not a dataset "
                            "directory; give the --out_dir of `python -m nano_train.prepare`")
        if not self.path.is_dir():
            raise DataError(f"dataset directory {self.path} does not exist; "
                            "make it with `python -m nano_train.prepare pretrain|sft ... --out_dir DIR`")
        meta_path = self.path / META
        kind = _not_a_file(meta_path)
        if kind:
            raise DataError(f"{meta_path} is {kind}, not a file; prepare the data again")
        if not meta_path.is_file():
            raise DataError(f"{self.path} has no {META}: not a prepared dataset (or its preparation did not finish)")
        meta = _read_meta(meta_path)
        if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
            raise DataError(f"{meta_path}: not a {FORMAT} v{FORMAT_VERSION} dataset "
                            f"(format {_short(meta.get('format'))}, version {_short(meta.get('version'))})")
        _check_meta(meta, meta_path)
        self.meta = meta
        self.kind = meta["kind"]
        self.dtype = np.dtype(meta["dtype"])
        self.tokenizer = _load_tokenizer(self.path / meta["tokenizer"]["file"])
        if self.tokenizer.fingerprint() != meta["tokenizer"]["fingerprint"]:
            raise DataError(f"{self.path}: {meta['tokenizer']['file']} does not match the vocabulary the shards "
                            "were encoded with (fingerprint differs from meta.json); prepare the data again")
        recorded = meta["tokenizer"].get("vocab_size")
        if recorded is not None and recorded != self.tokenizer.vocab_size:
            raise DataError(f"{meta_path}: field 'tokenizer.vocab_size' is {_short(recorded)}, but "
                            f"{meta['tokenizer']['file']} has {self.tokenizer.vocab_size} tokens; "
                            "prepare the data again")
        if self.dtype != self.tokenizer.dtype:  # the shards' sizes would be read with the wrong width
            raise DataError(f"{meta_path}: field 'dtype' is {meta['dtype']}, but the ids of a vocabulary of "
                            f"{self.tokenizer.vocab_size} tokens are stored as {self.tokenizer.dtype.name}; "
                            "prepare the data again")
        self.splits: dict[str, list] = {}
        for split, shards in meta["shards"].items():
            if self.kind == "pretrain":
                self.splits[split] = [self._ids(s["file"], (s["tokens"],)) for s in shards]
            elif self.kind == "seq2seq":
                T = meta["block_size"]
                self.splits[split] = [(self._ids(s["file"], (s["rows"], T)), self._ids(s["target"], (s["rows"], T)),
                                       self._mask(s["mask"], (s["rows"], T))) for s in shards]
            else:
                L = meta["block_size"]
                self.splits[split] = [(self._ids(s["file"], (s["rows"], L)),
                                       self._mask(s["mask"], (s["rows"], L))) for s in shards]

    def _ids(self, name: str, shape: tuple) -> np.ndarray:
        """A token file, mapped, after one pass that checks every id is in the vocabulary
        (a bad id would otherwise stop training deep inside the embedding lookup).
        The pass reads the file in pieces of 16 M ids: memory stays bounded."""
        ids = self._map(name, shape, self.dtype)
        vocab = self.tokenizer.vocab_size
        bad = self._first_above(name, self.dtype, vocab - 1)
        if bad is not None:
            at, value = bad
            raise DataError(f"{self.path / name}: token id {value} at position {at:,} is outside the "
                            f"vocabulary of {TOKENIZER_FILE} (0..{vocab - 1}): the file is damaged or was "
                            "written with another vocabulary; prepare the data again")
        return ids

    def _mask(self, name: str, shape: tuple) -> np.ndarray:
        """A loss-mask file, mapped, after one pass (in pieces, as _ids) that checks every
        value is 0 or 1: any other byte is damage, and would weigh its token in the loss."""
        mask = self._map(name, shape, np.uint8)
        bad = self._first_above(name, np.uint8, 1)
        if bad is not None:
            at, value = bad
            raise DataError(f"{self.path / name}: mask value {value} at position {at:,} is not 0 or 1: "
                            "the file is damaged; prepare the data again")
        return mask

    def _first_above(self, name: str, dtype, highest: int) -> tuple[int, int] | None:
        """(position, value) of the file's first value above highest, or None. Read in
        pieces of CHECK_PIECE values, not through the training map: pages of a map, once read,
        count in the process's resident memory for as long as the map is kept, so the
        whole dataset would look resident for the whole run."""
        with open(self.path / name, "rb") as f:
            start = 0
            while (piece := np.fromfile(f, dtype=dtype, count=CHECK_PIECE)).size:
                if int(piece.max()) > highest:
                    at = int(np.argmax(piece > highest))
                    return start + at, int(piece[at])
                start += piece.size
        return None

    def _map(self, name: str, shape: tuple, dtype) -> np.ndarray:
        path = self.path / name
        kind = _not_a_file(path)
        if kind:
            raise DataError(f"{path} is {kind}, not a data file; prepare the data again")
        if not path.is_file():
            raise DataError(f"{path} is missing (listed in {META})")
        expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
        size = path.stat().st_size
        if size != expected:
            raise DataError(f"{path} is {size} bytes, meta.json says {expected}: the file is truncated or stale")
        if expected == 0:
            return np.zeros(shape, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", shape=shape)

    def _seams(self, split: str) -> list[np.ndarray] | None:
        """The seams of each shard of a pretraining split (chunk_seams), or None when
        meta.json does not record the chunks (a dataset of an early version): the
        windows then run through whole shards."""
        info = self.meta.get("split")
        if not isinstance(info, dict) or "chunk_tokens" not in info:
            return None
        chunk = info["chunk_tokens"]
        lengths = [s["tokens"] for s in self.meta["shards"].get(split, [])]
        if self.meta["shuffle"]["enabled"] or split not in ("train", "val"):
            return chunk_seams(lengths, chunk)
        # corpus order: the split's chunks ascending, the other split's taken out
        n_chunks, val = info["n_chunks"], np.unique(np.asarray(info["val_chunks"], dtype=np.int64))
        total = sum(s["tokens"] for shards in self.meta["shards"].values() for s in shards)
        if n_chunks != -(-total // chunk):
            raise DataError(f"{self.path / META}: field 'split.n_chunks' is {n_chunks}, but the shards hold "
                            f"{-(-total // chunk)} chunks of {chunk} tokens; prepare the data again")
        chunks = val if split == "val" else np.setdiff1d(np.arange(n_chunks), val)
        if sum(-(-n // chunk) for n in lengths) != len(chunks):
            raise DataError(f"{self.path / META}: field 'split.val_chunks' does not match the {split} shards "
                            f"({len(chunks)} chunks listed, {sum(-(-n // chunk) for n in lengths)} held); "
                            "prepare the data again")
        return chunk_seams(lengths, chunk, chunks)

    def check_tokenizer(self, fingerprint: str, what: str) -> None:
        if fingerprint != self.tokenizer.fingerprint():
            raise DataError(f"vocabulary mismatch: {what} uses a different vocabulary than the dataset {self.path} "
                            f"(fingerprints {fingerprint[:12]} vs {self.tokenizer.fingerprint()[:12]}); "
                            "prepare the data with the model's tokenizer")

    def n_tokens(self, split: str) -> int:
        """The split's tokens; for row datasets (SFT, seq2seq) its positions, rows x width,
        padding included."""
        if self.kind == "pretrain":
            return sum(len(s) for s in self.splits.get(split, []))
        return sum(int(s[0].shape[0]) * int(s[0].shape[1]) for s in self.splits.get(split, []))

    def size_text(self) -> str:
        """The splits' sizes for the start line and the report: "train 1,234 / val 56 tokens",
        or for row datasets "train 99 / val 11 rows of 65 tokens (padding included)"."""
        if self.kind == "pretrain":
            return f"train {self.n_tokens('train'):,} / val {self.n_tokens('val'):,} tokens"
        rows = {k: sum(int(s[0].shape[0]) for s in self.splits.get(k, [])) for k in ("train", "val")}
        width = next((int(s[0].shape[1]) for k in ("train", "val") for s in self.splits.get(k, [])), 0)
        return f"train {rows['train']:,} / val {rows['val']:,} rows of {width} tokens (padding included)"

    def source(self, split: str, block_size: int, fixed_by: str | None = None, scoring: bool = False):
        """The row source of a split for a model of block_size, or None if the split is empty.
        fixed_by: what sets the model's block_size where the run cannot change it (a base model,
        the checkpoint a run resumes), for errors to offer what can be changed instead;
        scoring: for `evaluate`, whose remedy for a short split is another split, not a run
        without validation."""
        if not _is_int(block_size) or block_size < 1:
            raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
        fixed = f" (set by {fixed_by})" if fixed_by else ""
        if self.kind == "pretrain":
            kept = [k for k, s in enumerate(self.splits.get(split, [])) if len(s) > 0]
            if not kept:
                return None
            shards = [self.splits[split][k] for k in kept]

            def too_short(why: str, runs: bool) -> DataError:
                if split == "val":  # shuffled, each chunk is a piece of its own: more of them join none
                    more = "--chunk_tokens" if self.meta["shuffle"]["enabled"] else "--val_fraction or --chunk_tokens"
                    return DataError(f"the validation split is too short for block_size {block_size}{fixed}: "
                                     f"{why}; prepare the data with a larger {more}, "
                                     + ("" if fixed_by else "lower model.block_size, ")
                                     + ("or score the train split (--split train)" if scoring else
                                        "or train without validation (--eval_iters=0)"))
                return DataError(f"block_size {block_size}{fixed} is larger than the data: {why}; "
                                 + ("" if fixed_by else "lower model.block_size, or ")
                                 + ("prepare the data with a larger --chunk_tokens" if runs else "add data"))

            longest = max(len(s) for s in shards)
            if longest < block_size + 1:
                raise too_short(f"the {split} split's longest shard has {longest} tokens and a row needs "
                                "block_size + 1", False)
            chunk = self.meta["split"].get("chunk_tokens") if isinstance(self.meta.get("split"), dict) else None
            if chunk is not None and self.meta["shuffle"]["enabled"] and chunk < block_size + 1:
                raise DataError(
                    f"{self.path} was prepared in chunks of {chunk} tokens (--chunk_tokens), shuffled, and a row "
                    f"of block_size {block_size}{fixed} needs {block_size + 1} tokens of text that was adjacent in "
                    f"the corpus: every row would join two unrelated chunks; prepare the data again with "
                    f"--chunk_tokens {max(CHUNK_TOKENS, 16 * block_size)} (or at least {block_size + 1})"
                    + ("" if fixed_by else ", or lower model.block_size"))
            seams = self._seams(split)
            src = TokenWindows(shards, block_size, None if seams is None else [seams[k] for k in kept])
            if src.n_rows == 0:  # (only in corpus order: every run of adjacent chunks is too short)
                longest = int(src.shards.lengths().max())
                raise too_short(f"the {split} split's longest run of adjacent chunks has {longest} tokens and a row "
                                "needs block_size + 1 (a row never crosses a gap where the other split's chunks "
                                "were taken out)", True)
            return src
        if self.kind == "seq2seq":
            parts = [s for s in self.splits.get(split, []) if s[0].shape[0] > 0]
            if not parts:
                return None
            T = self.meta["block_size"]
            if T > block_size:
                raise DataError(f"the seq2seq rows of {self.path} are {T} tokens long but the model's block_size "
                                f"is {block_size}{fixed}; "
                                + (f"write rows of {block_size} tokens or fewer (data.write_rows)" if fixed_by else
                                   f"set model.block_size to {T} or more"))
            arrays = [parts[0][k] if len(parts) == 1 else np.concatenate([p[k] for p in parts]) for k in range(3)]
            self._check_counts(split, arrays[2])
            return Seq2SeqRows(*arrays)
        parts = [(t, m) for t, m in self.splits.get(split, []) if t.shape[0] > 0]
        if not parts:
            return None
        L = self.meta["block_size"]
        if L - 1 > block_size:
            raise DataError(f"the SFT rows were prepared for block_size {L} (inputs of {L - 1} tokens) but the "
                            f"model's block_size is {block_size}; prepare with --block_size {block_size + 1} "
                            "or less")
        tokens = parts[0][0] if len(parts) == 1 else np.concatenate([t for t, _ in parts])
        mask = parts[0][1] if len(parts) == 1 else np.concatenate([m for _, m in parts])
        self._check_counts(split, mask[:, 1:])  # (training reads loss_mask = mask[1:])
        return SFTRows(tokens, mask)

    def _check_counts(self, split: str, mask: np.ndarray) -> None:
        """A DataError when the loss counts no token of the split (its mask is all 0): a
        damaged mask file, as prepare gives every sample an answer token."""
        if not mask.any():
            files = ", ".join(s["mask"] for s in self.meta["shards"][split])
            raise DataError(f"{self.path}: the {split} split has no token the loss counts (its mask, {files}, "
                            "is 0 everywhere training reads it): the file is damaged; prepare the data again")
