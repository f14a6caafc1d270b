"""Atomic file writes: a file appears whole under its name, or not at all (the one implementation
that images, weights, ONNX exports, checkpoints and data-set indexes are written through)."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write `path` through.

    Writes go to a hidden temporary file beside `path` (same folder, so the final move is a
    rename). When the block ends cleanly the data is fsynced and moved into place, then the folder
    is fsynced; if the block raises, or the process is killed, `path` keeps what it had (a kill
    leaves at most a hidden `.<name>.<random>.tmp`). With `overwrite=False` a file that appeared
    at `path` meanwhile is never replaced: FileExistsError. The file gets the usual umask
    permissions (0o666 & ~umask), not mkstemp's 0o600. Errors are the OS's (OSError): callers
    turn them into their own typed errors.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{temp_prefix(path.name)}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if the path appeared since the caller checked: no clobbering
            except FileExistsError:
                raise
            except OSError:
                os.replace(tmp, path)  # file systems without hard links (FAT, some network mounts)
    finally:
        tmp.unlink(missing_ok=True)  # after a link, or when the block failed
    fsync_dir(path.parent)


NAME_MAX = 255  # bytes in one file name on the usual file systems (ext4, XFS, btrfs, APFS, NTFS)
_TEMP_TAIL = len(".0123abcd.tmp")


def name_max(folder: Path) -> int:
    """The longest file name (bytes) the file system of `folder` (or its nearest existing parent)
    takes; NAME_MAX where it does not say."""
    for place in (folder, *folder.parents):
        try:
            return int(os.pathconf(place, "PC_NAME_MAX"))
        except (OSError, ValueError, AttributeError):  # missing folder, or no pathconf (Windows)
            if place.exists():
                break
    return NAME_MAX


def temp_prefix(name: str, limit: int = NAME_MAX) -> str:
    """The hidden temporary name's start for `name` (`.<name>`), cut so that the whole temporary
    name fits in `limit` bytes: a name that fits is never refused because of its temporary."""
    room = limit - 1 - _TEMP_TAIL
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= room:
        return f".{name}"
    return "." + raw[: room - 1].decode("utf-8", "ignore") + "~"


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether writing `b` would replace `a`: the same path once links are followed, or (when both
    exist) the same file through a hard link."""
    try:
        if Path(a).resolve() == Path(b).resolve():
            return True
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # one of them missing or unreadable: they cannot be one file
        return False


_STARTED = time.time()


def remove_stale_temps(folder: Path, names: set[str]) -> int:
    """Remove the hidden temporary files (`.<name>.<random>.tmp`) that writes of `names` in `folder`
    left behind when an earlier process was killed mid-write; files made since this process
    started are left alone (they may be another writer's, live). Returns how many went."""
    removed = 0
    for name in names:
        for stale in folder.glob(f"{glob_escape(temp_prefix(name))}.*.tmp"):
            try:
                if stale.stat().st_mtime < _STARTED:
                    stale.unlink()
                    removed += 1
            except OSError:
                pass  # gone already, or not ours to remove: leave it
    return removed


def glob_escape(name: str) -> str:
    """`name` with glob's special characters taken literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def fsync_dir(directory: Path) -> None:
    """Make a rename durable; best effort, since not every OS or file system allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
