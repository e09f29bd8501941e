"""lightning_amortized.atomic.write_atomic: all or nothing, usual permissions, no leftovers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lightning_amortized.atomic import write_atomic


def test_replaces_whole_file_with_umask_permissions(tmp_path: Path) -> None:
    p = tmp_path / "a" / "m.jsonl"
    old = os.umask(0o002)
    try:
        write_atomic(p, "one\n")
        write_atomic(p, b"two\n")
    finally:
        os.umask(old)
    assert p.read_text() == "two\n"
    assert p.stat().st_mode & 0o777 == 0o664
    assert [x.name for x in p.parent.iterdir()] == ["m.jsonl"]


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch) -> None:
    p = tmp_path / "m.jsonl"
    write_atomic(p, "old\n")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(p, "new\n")
    assert p.read_text() == "old\n"
    assert [x.name for x in tmp_path.iterdir()] == ["m.jsonl"]


def test_a_live_temporary_of_a_longer_name_is_left_alone(tmp_path: Path) -> None:
    """The temporary of "r.N" (".r.N.<pid>.X.tmp") read as one of "r" by a writer whose pid N was gone."""
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer exists
    live = tmp_path / f".r.{gone.pid}.{os.getpid()}.abcd1234.tmp"
    live.write_text("being written")
    dead = tmp_path / ".r.999999999.abcd1234.tmp"  # a writer of "r" that no longer exists
    dead.write_text("left by a killed writer")
    write_atomic(tmp_path / "r", "x")
    assert live.exists() and not dead.exists()
