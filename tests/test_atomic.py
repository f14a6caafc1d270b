"""atomic.atomic_open, the one atomic write: whole file or nothing, no clobbering, usual permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from srgan_cli.atomic import atomic_open


def test_a_clean_block_writes_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.bin"  # missing folders are made
    with atomic_open(target) as fh:
        fh.write(b"new")
        assert not target.exists()  # nothing under the name until the block ends
    assert target.read_bytes() == b"new" and sorted(os.listdir(target.parent)) == ["out.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_a_failing_block_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="encoder"), atomic_open(target) as fh:
        fh.write(b"half")
        raise RuntimeError("encoder failed")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]


def test_without_overwrite_a_file_that_appeared_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(FileExistsError), atomic_open(target, overwrite=False) as fh:
        fh.write(b"mine")
        target.write_bytes(b"theirs")  # another process got there first
    assert target.read_bytes() == b"theirs" and os.listdir(tmp_path) == ["out.bin"]
    with atomic_open(target) as fh:  # overwrite (the default) replaces it
        fh.write(b"mine")
    assert target.read_bytes() == b"mine"
