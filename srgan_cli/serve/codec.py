"""Uploads to images and images to response bytes, through srgan_cli.imageio only: the bytes go to a
file of a random name in the server's temp folder (never a name the client gave), are read or
written there, and the file is removed."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import ArgumentError, ImageReadError, ImageWriteError
from ..imageio import DEFAULT_MAX_PIXELS, ImageData, read_image, write_image

# what a client may ask for, and the media type of each
OUTPUT_FORMATS = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}
_ALIASES = {"jpeg": "jpg"}
UPLOAD_NAME = "upload"  # how an uploaded image is named in error sentences (never a server path)


def check_format(fmt: str) -> str:
    """The canonical output format ("png", "jpg", "webp"), or an ArgumentError that lists them."""
    name = _ALIASES.get(fmt.strip().lower().lstrip("."), fmt.strip().lower().lstrip("."))
    if name not in OUTPUT_FORMATS:
        raise ArgumentError(f"format is one of {', '.join(OUTPUT_FORMATS)}, not {fmt!r}")
    return name


def check_quality(quality: int) -> int:
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ArgumentError(f"quality is a whole number from 1 to 100, got {quality!r}")
    return quality


@contextlib.contextmanager
def _scratch(folder: Path | None, suffix: str = "") -> Iterator[Path]:
    fd, name = tempfile.mkstemp(prefix="srgan-serve-", suffix=suffix, dir=folder)
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def decode(data: bytes, *, folder: Path | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageData:
    """An uploaded image's bytes decoded by read_image (EXIF orientation, alpha, 16-bit, the
    decompression-bomb guard at `max_pixels`). Errors name the image "upload", not the temp file."""
    with _scratch(folder) as path:
        path.write_bytes(data)
        try:
            return read_image(path, max_pixels=max_pixels)
        except ImageReadError as exc:
            raise ImageReadError(UPLOAD_NAME, exc.reason, hint=exc.hint) from None


def encode(image: ImageData, fmt: str, quality: int, *, folder: Path | None = None) -> bytes:
    """`image` encoded by write_image as `fmt` (png, jpg or webp)."""
    fmt = check_format(fmt)
    with _scratch(folder, f".{fmt}") as path:
        try:
            write_image(path, image, fmt=fmt, quality=check_quality(quality), overwrite=True)
        except ImageWriteError as exc:
            raise ImageWriteError(f"result.{fmt}", exc.reason, hint=exc.hint) from None
        return path.read_bytes()
