"""export writes its files all or none: when moving a later file into place fails
(an OSError, not a Ctrl-C), the files already moved are taken back, and every
destination is as it was before the export."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nano_train import export as export_cmd
from nano_train.convert import load_bin, load_lora_bin

pytestmark = pytest.mark.usefixtures("one_thread")


def fail_moving_onto(monkeypatch, target: Path) -> list:
    """os.replace fails (EACCES) when it moves a staged export file onto target; every
    other rename (the staged writes, backups, undoing) works. The calls are recorded."""
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if str(src).endswith(".export.tmp") and Path(dst) == target:
            raise PermissionError(13, "Permission denied", str(src), None, str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return calls


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
@pytest.mark.parametrize("before", ["new", "older-files"])
def test_a_failed_second_move_leaves_every_destination_as_it_was(nano80, tmp_path, capsys, monkeypatch,
                                                                  before, links, lora_ckpt):
    ckpt = lora_ckpt(tmp_path, nano80)
    base, lora = tmp_path / "b.bin", tmp_path / "la.bin"
    if before == "older-files":
        base.write_bytes(b"an older base")
        lora.write_bytes(b"an older LoRA")
        lora.chmod(0o600)
    if not links:  # a file system without hard links: the old files are renamed aside instead
        def no_link(src, dst, **kwargs):
            raise PermissionError(1, "Operation not permitted", str(src), None, str(dst))
        monkeypatch.setattr(os, "link", no_link)
    calls = fail_moving_onto(monkeypatch, base)  # the LoRA is moved first, the base second
    rc = export_cmd.main(["--ckpt", str(ckpt), "--out", str(base), "--lora-out", str(lora)])
    out, err = capsys.readouterr()
    monkeypatch.undo()
    assert any(dst == "la.bin" for _, dst in calls), calls  # the LoRA was moved in before the failure
    if before == "new":
        assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    else:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "c.pt", "la.bin"]  # no backup left
        assert base.read_bytes() == b"an older base" and lora.read_bytes() == b"an older LoRA"
        assert lora.stat().st_mode & 0o777 == 0o600
    assert rc == 1 and out == ""
    assert err == (f"error: --out {base}: cannot move the export into place (Permission denied); "
                   "nothing was written\n"), err
    # and the same export, with nothing failing, writes both
    rc = export_cmd.main(["--ckpt", str(ckpt), "--out", str(base), "--lora-out", str(lora)])
    assert rc == 0, capsys.readouterr().err
    load_lora_bin(load_bin(base)[0], lora)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "c.pt", "la.bin"]


def test_a_replaced_file_is_never_missing_where_hard_links_work(nano80, tmp_path, capsys, monkeypatch, lora_ckpt):
    """The old file stays at its name until the new one takes it (a backup is a second link)."""
    ckpt = lora_ckpt(tmp_path, nano80)
    base = tmp_path / "b.bin"
    base.write_bytes(b"an older base")
    real_replace = os.replace
    seen = []

    def replace(src, dst):
        if Path(dst) == base:
            seen.append(base.read_bytes())  # what a reader finds there just before the move
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert export_cmd.main(["--ckpt", str(ckpt), "--out", str(base)]) == 0
    monkeypatch.undo()
    assert seen == [b"an older base"]
    load_bin(base)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "c.pt"]


def test_undoing_that_fails_says_where_the_old_file_is(nano80, tmp_path, capsys, monkeypatch, lora_ckpt):
    """Should putting an old file back fail too, the error says so and where it is kept."""
    ckpt = lora_ckpt(tmp_path, nano80)
    base, lora = tmp_path / "b.bin", tmp_path / "la.bin"
    lora.write_bytes(b"an older LoRA")
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == base or str(src).endswith(".export.bak"):
            raise PermissionError(13, "Permission denied", str(src), None, str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    rc = export_cmd.main(["--ckpt", str(ckpt), "--out", str(base), "--lora-out", str(lora)])
    monkeypatch.undo()
    err = capsys.readouterr().err
    backup = tmp_path / f".la.bin.{os.getpid()}.export.bak"
    assert rc == 1 and err.count("\n") == 1, err
    assert err.startswith(f"error: --out {base}: cannot move the export into place (Permission denied); "
                          "nothing was written; but ")
    assert f"--lora-out {lora} could not be put back (Permission denied), its old file is {backup}" in err
    assert backup.read_bytes() == b"an older LoRA"


@pytest.mark.skipif(sys.platform == "win32", reason="no pid probe there: nothing is removed")
def test_a_backup_left_by_a_killed_export_is_removed_by_the_next(nano80, tmp_path, capsys, lora_ckpt):
    ckpt = lora_ckpt(tmp_path, nano80)
    child = subprocess.Popen([sys.executable, "-c", "pass"])  # a pid that no longer runs
    child.wait()
    pid = child.pid
    stale = tmp_path / f".b.bin.{pid}.export.bak"
    stale.write_bytes(b"an older base")
    assert export_cmd.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "b.bin")]) == 0
    assert f"note: removed {stale}: left by an export that was interrupted (pid {pid})" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "c.pt"]
