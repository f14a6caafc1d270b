"""Folders of photos and pictures made of them: scanning a folder, decoding photos to uint8 RGB
(skipping the unusable ones with a reason), and image grids. Shared by the trainers, evaluation,
the gallery script and the CLI (the file formats themselves live in imageio/)."""

from __future__ import annotations

import errno
import math
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ImageError, TrainingError
from .imageio import READABLE_SUFFIXES, read_image


def path_problem(path: Path) -> str:
    """What `path` is, when it is not what was asked for: in words, for an error message."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "a link to nowhere (broken symlink)" if path.is_symlink() else "no such file or folder"
    except OSError as exc:
        return "a symlink loop" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISREG(mode):
        return "a file, not a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO), not a file or folder"
    return "not a regular file or folder"


def require_folder(folder: str | Path, what: str = "data folder", hint: str | None = None) -> Path:
    """`folder` as a Path, or a TrainingError saying what it is instead."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TrainingError(f"{what} {folder}: {path_problem(folder)}", hint=hint)
    return folder


def list_images(folder: str | Path, *, recursive: bool = True) -> list[Path]:
    """Image files below `folder`, sorted, by suffix (contents are checked when they are read)."""
    folder = require_folder(folder)
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in READABLE_SUFFIXES)


def load_rgb_uint8(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; grayscale is replicated, alpha dropped, 16-bit rounded to 8-bit."""
    img = read_image(path)
    pixels = img.pixels if not img.is_gray else np.repeat(img.pixels, 3, axis=2)
    return np.ascontiguousarray(np.rint(pixels * 255.0).astype(np.uint8))


def read_photos(
    files: list[Path],
    min_side: int,
    min_name: str,
    prepare: Callable[[np.ndarray], Any] = lambda img: img,
) -> tuple[list[Any], list[Path], list[tuple[Path, str]]]:
    """Decode training photos: (prepare(image) for each kept one, their paths, (path, reason) for
    each one skipped).

    Unreadable files and images smaller than `min_side` (the `min_name`, e.g. "crop") on either side
    are skipped with the reason, so a bad file never stops training. `prepare` runs on each photo
    as it is read (e.g. shrinking it), so only one full-size photo is held at a time."""
    images, kept, skipped = [], [], []
    for path in files:
        try:
            img = load_rgb_uint8(path)
        except (ImageError, OSError) as exc:
            skipped.append((path, str(exc)))
            continue
        h, w = img.shape[:2]
        if h < min_side or w < min_side:
            skipped.append((path, f"smaller than the {min_side}px {min_name} ({w}x{h})"))
            continue
        images.append(prepare(img))
        kept.append(path)
    return images, kept, skipped


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8."""
    return (x.detach().float().clamp(0, 1) * 255 + 0.5).byte().permute(0, 2, 3, 1).cpu().numpy()


def image_grid(images: torch.Tensor, columns: int, *, cell: int = 0, gap: int = 2) -> np.ndarray:
    """(N, 3, h, w) -> one uint8 picture, `columns` wide, each image enlarged (nearest) to `cell`."""
    n, _, h, w = images.shape
    if cell and cell != h:
        images = F.interpolate(images.float(), size=(cell, cell * w // h), mode="nearest")
        h, w = images.shape[-2:]
    rows = math.ceil(n / columns)
    canvas = np.full((rows * (h + gap) + gap, columns * (w + gap) + gap, 3), 255, np.uint8)
    for i, img in enumerate(_to_uint8(images)):
        r, c = divmod(i, columns)
        y, x = gap + r * (h + gap), gap + c * (w + gap)
        canvas[y : y + h, x : x + w] = img
    return canvas
