"""Uploads to images and images to result files, through srgan_cli.imageio only. An upload's bytes go
to a file of a random name in the server's temporary folder (never a name the client gave), are
read there, and the file is removed; a result is written under a name the server makes (the job's
id). The client's file name only ever comes back as a download name (`download_name`)."""

from __future__ import annotations

import contextlib
import os
import re
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


def write_result(image: ImageData, fmt: str, quality: int, path: Path) -> Path:
    """`image` written by write_image as `fmt` to `path` (a name the server made), atomically."""
    fmt = check_format(fmt)
    try:
        write_image(path, image, fmt=fmt, quality=check_quality(quality), overwrite=True)
    except ImageWriteError as exc:
        raise ImageWriteError(f"result.{fmt}", exc.reason, hint=exc.hint) from None
    return path


def probe(data: bytes) -> tuple[int, int, str] | None:
    """(width, height, mode) as the upload's header states them, without decoding the pixels; None
    when Pillow cannot tell (the decode then says why). Only a hint for batching: never trusted."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.width, im.height, im.mode
    except Exception:  # noqa: BLE001 - any unreadable upload: no hint
        return None


_SAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def download_name(client_name: str | None, scale: float, fmt: str) -> str:
    """The name a result is offered under: the upload's stem (its last path part, in plain ASCII, at
    most 80 characters), `_x<scale>` as `srgan upscale` names it, and the format. Only ever sent
    back in a header or a JSON field, never used as a path on the server."""
    base = (client_name or "").replace("\\", "/").rsplit("/", 1)[-1]
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    stem = _SAFE.sub("_", stem).strip(" ._")[:80] or "image"
    return f"{stem}_x{scale:g}.{check_format(fmt)}"
