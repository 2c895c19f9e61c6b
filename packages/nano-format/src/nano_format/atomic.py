"""Writing a file atomically: the one implementation the Nano packages share.

    write_atomically(path, chunks) -> int
    check_writable(path)                 refuses before any work what write_atomically would
    kept_mode(path) -> int | None        the mode a replacement of `path` keeps; refuses non-regular files
    folder_files(folder, skip) -> list   the files an input folder stands for (corpora, SFT data)

The data goes to a temporary file beside `path` (same folder, so the final
rename stays on one file system), is fsynced, and is renamed over `path` only
once everything is written: a failure or a crash leaves the old file whole.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat

from .errors import WriteError

__all__ = ["write_atomically", "check_writable", "kept_mode", "folder_files"]

_NAME_MAX = 255  # bytes in one file name, where the file system does not say


def write_atomically(path, chunks) -> int:
    """Write the bytes-like `chunks` to `path` atomically; return the size.

    The folder must exist (it is not created). A new file gets the mode a plain
    open() would give (0o666 less the umask); a replaced file keeps its mode.
    Something other than a regular file (a folder, a device, a FIFO, a symbolic
    link) is never replaced: that raises WriteError before anything is written.
    OSErrors name `path`, never the temporary file.
    """
    path = _target(path)
    directory = os.path.dirname(path) or "."
    named = _naming(path)
    mode = _kept_mode(path, named)
    tmp, fd = named(_create_beside, directory, os.path.basename(path))
    size = 0
    f = None
    try:
        f = os.fdopen(fd, "wb")
        if mode is not None:
            named(os.chmod, tmp, mode)
        for chunk in chunks:
            data = memoryview(chunk)
            named(f.write, data)
            size += data.nbytes
        named(f.flush)
        named(os.fsync, f.fileno())
        named(f.close)
        named(os.replace, tmp, path)
    except BaseException:
        # Closed here, not by a `with`: after a failed write (a full disk) closing flushes
        # the rest of the buffer again, and that second, unnamed error would replace the first
        with contextlib.suppress(OSError):  # the error that brought us here is the one to report
            if f is not None:
                f.close()
            else:
                os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable; not possible on every platform
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return size


def open_without_waiting(path) -> tuple[int, int]:
    """A read-only descriptor of `path` and its stat mode. Opened without blocking, so
    that a FIFO does not wait for a writer, and typed from the open descriptor, so that
    the type cannot change between the check and the read; the caller decides what it
    takes and closes the descriptor. An empty name (an unset variable) and OSErrors name
    the path."""
    path = os.fspath(path)
    if not path:
        raise FileNotFoundError(errno.ENOENT, "the file name is empty", path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None
    try:
        return fd, os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise


def folder_files(folder, skip=()) -> list[str]:
    """The files in `folder` and its subfolders, in path order (the order a seeded split
    sees must not depend on the file system), as paths that start with `folder` as
    typed. Names that start with "." (.git, .DS_Store) are left out, and so is any
    entry that is one of the paths in `skip` (an output inside the folder is not read
    as input the next time); links to folders are not followed. Nothing is opened:
    the caller checks each file. An OSError names a folder that cannot be listed, so
    that no part of a corpus is left out without a word."""
    def refuse(e: OSError) -> None:
        raise OSError(e.errno, e.strerror, e.filename)

    skipped = set()
    for path in skip:
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            continue
        skipped.add((st.st_dev, st.st_ino))

    def kept(path: str) -> bool:
        try:
            st = os.stat(path)
        except OSError:  # (a broken link: the caller names it)
            return True
        return (st.st_dev, st.st_ino) not in skipped

    found = []
    for where, folders, names in os.walk(os.fspath(folder), onerror=refuse):
        folders[:] = [name for name in folders if not name.startswith(".") and kept(os.path.join(where, name))]
        for name in names:
            path = os.path.join(where, name)
            if not name.startswith(".") and kept(path):
                found.append((os.path.relpath(path, folder).split(os.sep), path))
    return [path for _, path in sorted(found)]


def file_kind(mode: int) -> str:
    """What a stat mode that is not a regular file's is, for messages: "a directory",
    "a FIFO", "a character device", ... ("a regular file" for one)."""
    for test, kind in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO (a pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return kind
    return "not a regular file"


def check_writable(path) -> None:
    """Raise, before any work, what write_atomically(path, ...) would raise before
    writing: WriteError when something other than a regular file is at `path`,
    an OSError naming `path` when no file can be made beside it (no such
    folder, no permission). Makes and removes one empty temporary file; changes
    nothing else. write_atomically checks again, as things may change meanwhile."""
    path = _target(path)
    named = _naming(path)
    _kept_mode(path, named)
    tmp, fd = named(_create_beside, os.path.dirname(path) or ".", os.path.basename(path))
    os.close(fd)
    os.unlink(tmp)


def kept_mode(path) -> int | None:
    """The permission bits of the regular file at `path`, which a file moved over it
    should keep (write_atomically's own rule, for callers that rename a file into
    place themselves); None when nothing is there. WriteError when something other
    than a regular file is there (a folder, a device, a FIFO, a symbolic link,
    which is not followed); other OSErrors name `path`."""
    path = _target(path)
    return _kept_mode(path, _naming(path))


def _target(path) -> str:
    """`path` as a string; an empty one (an unset variable) is refused, not taken as a file in "."."""
    path = os.fspath(path)
    if not path:
        raise WriteError("the file name is empty")
    return path


def _naming(path: str):
    """A caller of OS functions whose OSErrors name `path`, never the temporary file."""

    def named(op, *args):
        try:
            return op(*args)
        except OSError as e:
            raise OSError(e.errno, e.strerror, path) from None

    return named


def _kept_mode(path: str, named) -> int | None:
    """The mode of the regular file at `path`, which its replacement keeps; None
    when there is none. WriteError for anything else there."""
    try:
        st = named(os.lstat, path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise WriteError("exists and is not a regular file; not replacing it", path=path)
    return stat.S_IMODE(st.st_mode)


def _create_beside(directory: str, name: str) -> tuple[str, int]:
    """A new empty file in `directory`, opened for writing: (its path, fd)."""
    try:
        limit = os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no such folder (os.open says so), or no pathconf
        limit = _NAME_MAX
    while True:
        tag = secrets.token_hex(4)
        tmp = f".{name}.{tag}.tmp"
        if len(os.fsencode(tmp)) > limit:  # a name near the limit: the target's name must still fit
            tmp = f".{tag}.tmp"
        tmp = os.path.join(directory, tmp)
        try:
            # Not tempfile.mkstemp: it creates files 0600 whatever the umask says.
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
