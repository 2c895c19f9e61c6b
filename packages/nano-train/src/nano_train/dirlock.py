"""One writer at a time per directory: an advisory lock (flock) on a file inside it.

prepare holds ".prepare.lock" in its --out_dir while it writes a dataset; a training
run holds ".run.lock" in its run.out_dir while it trains. A second writer fails at
once with the first one's pid. The kernel releases the lock however its holder ends
(Ctrl-C, an exception, SIGKILL); a holder that ends normally also removes the file.
Without fcntl (Windows), or on a file system that cannot lock (some network mounts),
nothing is locked: a note says so, and the caller carries on.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

# flock errors that mean "no locking on this file system", not "someone holds the lock"
NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}
# More than two rounds needs other writers ending at just the wrong moments (see _try_lock)
TRIES = 100


@dataclass
class Claim:
    locked: bool = False  # False without fcntl or where the file system cannot lock
    made: list[Path] = field(default_factory=list)  # the directories this call made, the top one first


class _ParentGone(Exception):
    """A parent directory was removed while we made its child: try again."""


def _make_dirs(directory: Path) -> list[Path]:
    """Make directory and its missing parents, top down: the ones this call made.

    One that exists already (made meanwhile by another writer) is not ours.
    _ParentGone when a parent was removed meanwhile (by a writer that failed and
    removed the directories it had made): the caller tries again. A parent that is
    there but refuses a child (/proc answers ENOENT) is the OSError it is.
    """
    missing = []
    p = directory
    while not p.exists() and p.parent != p:
        missing.append(p)
        p = p.parent
    made = []
    for p in reversed(missing):
        try:
            p.mkdir()
        except FileExistsError:
            continue
        except FileNotFoundError:
            if p.parent.is_dir():
                raise
            raise _ParentGone from None
        made.append(p)
    return made


def _try_lock(path: Path, who: str, error: type[Exception]) -> int | None:
    """Lock the file at path and write our pid in it: the open descriptor, or None to
    try again (the directory or the lock file went away meanwhile).

    error, naming the holder's pid, when another process holds the lock. The file
    we locked must still be the one at the path: a holder that ends removes it while
    holding its lock, so a process that opened it just before may lock a file no
    longer there, which would exclude no one.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except FileNotFoundError:  # the directory was removed by a writer that failed and left it empty
        return None
    except PermissionError:  # another user's lock file: of a writer at work, or one that was killed
        if pid := holder(path):
            raise error(_busy(path, who, pid)) from None
        try:  # no one holds it: stale (the directory is writable, or the open above would have said so)
            os.unlink(path)
        except FileNotFoundError:
            pass
        except PermissionError:  # (a sticky directory: only the file's owner may remove it)
            raise error(f"{path} was left by another user's {who} that was killed; it holds no lock, but "
                        "only its owner may remove it: remove it as that user, or choose another "
                        "--out_dir") from None
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        return fd
    except BlockingIOError:
        pid = os.read(fd, 32).decode("ascii", "replace").strip()
        os.close(fd)
        raise error(_busy(path, who, pid or "unknown")) from None
    except BaseException:  # flock failed for another reason (no locking here), or writing the pid did
        with contextlib.suppress(OSError):  # our file goes: none but us can hold a lock on it now
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                os.unlink(path)
        os.close(fd)
        raise


def _busy(path: Path, who: str, pid: str) -> str:
    return f"another {who} is writing {path.parent} (pid {pid}); wait for it to finish or choose another --out_dir"


def holder(path: Path) -> str | None:
    """The pid written in the lock file at path while some process holds its lock
    ("unknown" where it wrote none yet); None when no process does, when there is no such
    file, or where nothing can be locked. (It reads the file, and takes a shared lock
    for an instant: no write access is needed.)"""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def refuse_if_held(path: Path, who: str, error: type[Exception]) -> None:
    """error, as a second writer gets it, when a process holds the lock at path: what a
    command says before it calls a run in that directory stopped."""
    if pid := holder(path):
        raise error(_busy(path, who, pid))


def held_here(path: Path) -> bool:
    """Whether this process holds the lock at path (the file holds the pid _try_lock
    wrote; where nothing can be locked there is no such file)."""
    try:
        return path.read_text(encoding="ascii").strip() == str(os.getpid())
    except (OSError, UnicodeDecodeError):
        return False


@contextlib.contextmanager
def exclusive(directory: Path, lock_name: str, who: str, error: type[Exception]) -> Iterator[Claim]:
    """Create directory if needed and hold the lock directory/lock_name for the block.

    who names the writers in messages ("prepare", "run"); error is the exception's
    class when another process holds the lock. On exit the lock file is removed
    (before the lock is released, see _try_lock), and so is each directory this call
    made (the directory and its missing parents), leaf first, while it is empty.
    """
    claim = Claim()
    fd = None
    path = directory / lock_name
    try:
        for _ in range(TRIES):
            try:
                claim.made += _make_dirs(directory)
            except _ParentGone:
                continue
            if fcntl is None:
                break
            try:
                fd = _try_lock(path, who, error)
            except OSError as e:
                if e.errno not in NO_LOCKING:
                    raise
                print(f"note: {directory} cannot be locked ({e.strerror}); nothing stops another {who} "
                      "from writing into it at the same time", file=sys.stderr)
                break
            if fd is not None:
                claim.locked = True
                break
        else:
            raise error(f"could not lock {directory}: other {who}s keep starting and ending in it")
        yield claim
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                path.unlink()
        for made in reversed(claim.made):  # the leaf first: a parent is empty only once its child is gone
            try:
                made.rmdir()
            except FileNotFoundError:
                continue
            except OSError:  # not empty: the user's files, or the next writer's lock (so no parent is either)
                break
        if fd is not None:
            os.close(fd)  # releases the lock
