"""write_atomically (shared with nano-tokenizer), through the API and `convert`; folder_files."""

import errno
import io
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

import nano_format as nf


def run(*args):
    return subprocess.run([sys.executable, "-m", "nano_format", *map(str, args)], capture_output=True,
                          text=True, encoding="utf-8", timeout=120)


def test_returns_the_size_and_takes_bytes_and_arrays(tmp_path):
    out = tmp_path / "o.bin"
    assert nf.write_atomically(out, [b"ab", bytearray(b"c"), np.arange(2, dtype="<u2")]) == 7
    assert out.read_bytes() == b"abc\x00\x00\x01\x00"
    assert os.listdir(tmp_path) == ["o.bin"]


def test_new_files_get_the_umask_mode_replaced_files_keep_theirs(tmp_path):
    old_umask = os.umask(0o027)
    try:
        new = tmp_path / "new.bin"
        nf.write_atomically(new, [b"x"])
        assert stat.S_IMODE(new.stat().st_mode) == 0o640
        kept = tmp_path / "kept.bin"
        kept.write_bytes(b"old")
        kept.chmod(0o600)
        nf.write_atomically(kept, [b"new"])  # was widened to 0644 (umask 022) or 0640
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and kept.read_bytes() == b"new"
    finally:
        os.umask(old_umask)


def test_never_replaces_a_fifo_a_symlink_or_a_folder(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    target = tmp_path / "target.bin"
    target.write_bytes(b"keep")
    link = tmp_path / "link.bin"
    link.symlink_to(target)
    folder = tmp_path / "folder"
    folder.mkdir()
    for path in (fifo, link, folder):
        with pytest.raises(nf.WriteError, match=f"^{path}: exists and is not a regular file; not replacing it"):
            nf.write_atomically(path, iter([b"x"]))
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and link.is_symlink() and target.read_bytes() == b"keep"
    assert sorted(os.listdir(tmp_path)) == ["fifo", "folder", "link.bin", "target.bin"]  # no temporary file


def test_errors_name_the_file_asked_for(tmp_path):
    missing = tmp_path / "nodir" / "out.bin"
    with pytest.raises(FileNotFoundError) as info:
        nf.write_atomically(missing, [b"x"])  # once named nodir/.out.bin.<pid>.<hex>.tmp
    assert info.value.filename == str(missing) and ".tmp" not in str(info.value)

    def failing():
        yield b"x"
        raise OSError(28, "No space left on device")

    out = tmp_path / "full.bin"
    with pytest.raises(OSError, match="No space left"):
        nf.write_atomically(out, failing())
    assert os.listdir(tmp_path) == []  # the temporary file is gone, nothing replaced


def test_a_name_at_the_length_limit_can_be_written(tmp_path):
    name = "a" * 251 + ".bin"  # 255 bytes: the temporary name cannot add to it
    assert nf.write_atomically(tmp_path / name, [b"x"]) == 1
    assert os.listdir(tmp_path) == [name]


def test_convert_refuses_special_outputs_and_keeps_modes(sort6_path, tmp_path):
    fifo = tmp_path / "fifo.bin"
    os.mkfifo(fifo)
    r = run("convert", sort6_path, fifo)  # as root, `convert x.bin /dev/null` replaced /dev/null
    assert r.returncode == 1 and "fifo.bin: exists and is not a regular file" in r.stderr
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    r = run("convert", sort6_path, tmp_path)  # wrote the whole model beside the folder, then failed
    assert r.returncode == 1 and f"{tmp_path}: exists and is not a regular file" in r.stderr
    assert os.listdir(tmp_path) == ["fifo.bin"]
    r = run("convert", sort6_path, tmp_path / "nodir" / "o.bin")
    assert r.returncode == 1 and f"{tmp_path / 'nodir' / 'o.bin'}: No such file or directory" in r.stderr
    assert ".tmp" not in r.stderr and "Traceback" not in r.stderr
    out = tmp_path / "private.bin"
    out.write_bytes(b"old")
    out.chmod(0o600)
    r = run("convert", sort6_path, out)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and nf.read(out).file_size == 49452


def test_check_writable_refuses_what_the_write_would_and_changes_nothing(tmp_path):
    target = tmp_path / "out.bin"
    nf.check_writable(target)  # a new file: fine, and nothing is left behind
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    nf.check_writable(target)
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]
    folder = tmp_path / "folder"
    folder.mkdir()
    for bad in (folder, tmp_path / "missing" / "out.bin"):
        with pytest.raises((nf.WriteError, OSError)) as early:
            nf.check_writable(bad)
        with pytest.raises(type(early.value)) as late:
            nf.write_atomically(bad, [b"x"])
        assert str(early.value) == str(late.value) and str(bad) in str(early.value)
    assert sorted(tmp_path.iterdir()) == [folder, target]


def test_kept_mode_is_write_atomically_s_rule_for_callers_that_rename(tmp_path):
    assert nf.kept_mode(tmp_path / "new.bin") is None
    kept = tmp_path / "kept.bin"
    kept.write_bytes(b"old")
    kept.chmod(0o640)
    assert nf.kept_mode(kept) == 0o640
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link.bin"
    link.symlink_to(kept)  # not followed: the rename would replace the link, not its target
    for path in (fifo, link, tmp_path):
        with pytest.raises(nf.WriteError, match=f"^{path}: exists and is not a regular file; not replacing it"):
            nf.kept_mode(path)
    with pytest.raises(NotADirectoryError) as e:
        nf.kept_mode(kept / "under-a-file.bin")
    assert e.value.filename == str(kept / "under-a-file.bin")


def test_folder_files_in_path_order_without_hidden_skipped_or_linked_folders(tmp_path):
    for name in ("b/c.txt", "a.txt", "d", "b/.x", ".git/y", "out/z", "b1/e"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("t")
    (tmp_path / "link").symlink_to(tmp_path / "b1")
    (tmp_path / "f.txt").symlink_to(tmp_path / "a.txt")  # a link to a file is a file
    found = nf.folder_files(str(tmp_path) + "/", skip=[tmp_path / "out", tmp_path / "missing"])
    assert found == [f"{tmp_path}/{name}" for name in ("a.txt", "b/c.txt", "b1/e", "d", "f.txt")]
    assert nf.folder_files(tmp_path / ".git") == [os.path.join(tmp_path, ".git", "y")]  # only names inside are hidden


class _DiskWithRoom(io.RawIOBase):
    """A file descriptor on a disk with `room` bytes left: writes beyond it fail as a full
    disk's do (the bytes that fit, then ENOSPC, an OSError that names no file)."""

    def __init__(self, fd, room):
        self.fd, self.room = fd, room

    def writable(self):
        return True

    def fileno(self):
        return self.fd

    def write(self, data):
        if self.room == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = os.write(self.fd, bytes(data[:self.room]))
        self.room -= n
        return n

    def close(self):
        if not self.closed:
            os.close(self.fd)
        super().close()


@pytest.mark.parametrize("chunks", [[b"x" * 200], [b"x" * 100] * 200],
                         ids=["in the buffer until the flush", "more than the buffer holds"])
def test_a_full_disk_names_the_file_and_leaves_the_old_one_whole(tmp_path, monkeypatch, chunks):
    out = tmp_path / "report.md"
    out.write_bytes(b"old")
    monkeypatch.setattr(os, "fdopen", lambda fd, mode: io.BufferedWriter(_DiskWithRoom(fd, 150)))
    with pytest.raises(OSError) as info:
        nf.write_atomically(out, iter(chunks))
    # closing flushes the buffer again and fails again: that unnamed error must not replace the first
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(out))
    assert out.read_bytes() == b"old" and os.listdir(tmp_path) == ["report.md"]  # no temporary file left
