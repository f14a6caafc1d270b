"""What made each output: one JSON line per written file in `.srgan-manifest.jsonl` beside it, so
that a rerun skips an output only when it was made from the same input by the same model, scale
and options (not merely because a file of that name exists)."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MANIFEST = ".srgan-manifest.jsonl"
_LOCK = threading.Lock()  # writer threads of one process append one line at a time


@dataclass(frozen=True)
class Producer:
    """What decides an output's pixels and encoding (not how fast it was made: tile, device)."""

    model: str  # the weights' name (or the .onnx file's stem)
    scale: float  # the result's factor: the model's scale, or --outscale
    quality: int = 95  # JPEG/WebP quality (compared only for those formats)
    self_ensemble: int = 1

    def describe(self, lossy: bool = True) -> str:
        text = f"{self.model} at x{self.scale:g}"
        if lossy:
            text += f", quality {self.quality}"
        return text + (f", {self.self_ensemble}-pass self-ensemble" if self.self_ensemble > 1 else "")

    def same_result(self, other: Producer, lossy: bool) -> bool:
        """Whether both make the same file (quality counts only for a lossy format)."""
        mine, theirs = asdict(self), asdict(other)
        if not lossy:
            mine.pop("quality"), theirs.pop("quality")
        return bool(mine == theirs)


def _identity(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def record(dst: Path, src: Path, made_by: Producer) -> None:
    """Note that `dst` was just made from `src` by `made_by` (best effort: a folder that takes no
    extra file only loses the record, and a rerun then says it cannot tell)."""
    try:
        line = {
            "output": dst.name,
            "input": str(src.resolve()),
            "input_file": _identity(src),
            "output_file": _identity(dst),
            "made_by": asdict(made_by),
        }
        data = (json.dumps(line, sort_keys=True) + "\n").encode()
        with _LOCK:  # O_APPEND writes of one short line do not interleave between processes
            fd = os.open(dst.parent / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
    except OSError:
        pass


_CACHE: dict[Path, tuple[tuple[int, int], dict[str, dict[str, Any]]]] = {}


def _records(folder: Path) -> dict[str, dict[str, Any]]:
    """The latest record of each output name in `folder` (read again only when the file changed)."""
    path = folder / MANIFEST
    try:
        st = path.stat()
        key = (st.st_size, st.st_mtime_ns)
        cached = _CACHE.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    found: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        try:
            entry = json.loads(line)
            found[str(entry["output"])] = entry
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill: ignored
    with _LOCK:
        _CACHE[path] = (key, found)
    return found


def mismatch(dst: Path, src: Path, made_by: Producer) -> str | None:
    """None when the existing `dst` was made from `src` (as it is now) by `made_by`; otherwise why
    it does not count as this run's result."""
    entry = _records(dst.parent).get(dst.name)
    try:
        if entry is None or entry.get("output_file") != _identity(dst):
            return "no record of what made it (not this tool, or replaced since)"
        if entry.get("input") != str(src.resolve()):
            return f"made from another input ({entry.get('input')})"
        if entry.get("input_file") != _identity(src):
            return "made from an earlier version of this input"
        theirs = Producer(**entry["made_by"])
    except (OSError, TypeError, KeyError):
        return "no record of what made it (not this tool, or replaced since)"
    lossy = dst.suffix.lower() in (".jpg", ".jpeg", ".webp")
    if not theirs.same_result(made_by, lossy):
        return f"made by {theirs.describe(lossy)}; this run is {made_by.describe(lossy)}"
    return None


def is_output(path: Path) -> bool:
    """Whether `path` is recorded (as it is now) as an output in its folder's manifest."""
    entry = _records(path.parent).get(path.name)
    try:
        return entry is not None and entry.get("output_file") == _identity(path)
    except OSError:
        return False
