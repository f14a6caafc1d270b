"""The formats srgan-cli reads and writes, ImageData (pixels plus what must survive a round trip),
and the wording of I/O errors shared by reading and writing."""

from __future__ import annotations

import dataclasses
import errno
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np
from PIL import features

DEFAULT_MAX_PIXELS = 64_000_000

# Suffix -> canonical format name. Only formats Pillow decodes without extra plugins are listed, so a
# folder scan never picks up files that are bound to fail.
_FORMAT_BY_SUFFIX: dict[str, str] = {
    ".png": "png",
    ".jpg": "jpg",
    ".jpeg": "jpg",
    ".jpe": "jpg",
    ".jfif": "jpg",
    ".webp": "webp",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".bmp": "bmp",
    ".dib": "bmp",
    ".gif": "gif",
    ".tga": "tga",
    ".ppm": "ppm",
    ".pgm": "ppm",
    ".pbm": "ppm",
    ".pnm": "ppm",
}
if features.check("avif"):  # Pillow >= 11.2 wheels ship libavif, older or custom builds may not
    _FORMAT_BY_SUFFIX[".avif"] = "avif"

READABLE_SUFFIXES: frozenset[str] = frozenset(_FORMAT_BY_SUFFIX)
WRITE_FORMATS = ("png", "jpg", "webp", "tiff")

_FORMAT_ALIASES = {"jpeg": "jpg", "jpe": "jpg", "jfif": "jpg", "tif": "tiff", "dib": "bmp", "pnm": "ppm"}
_SUFFIX_BY_FORMAT = {fmt: f".{fmt}" for fmt in set(_FORMAT_BY_SUFFIX.values())}
# Pillow's format names -> ours; MPO is the multi-picture JPEG many phone cameras write.
_PIL_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "TIFF": "tiff", "WEBP": "webp", "DIB": "bmp"}

_ORIENTATION_TAG = 0x0112
_EXIF_PREFIX = b"Exif\x00\x00"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GRAY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Formats whose extra frames are not an animation: MPO carries previews/depth maps after the main
# picture, multi-page TIFFs often carry thumbnails. Their first frame is the image.
_FIRST_FRAME_FORMATS = ("MPO", "TIFF")

# Sum of the 64 entries of the JPEG standard's example luminance quantization table (ITU T.81,
# Annex K.1), which libjpeg-style encoders scale by the quality setting (50 = the table itself)
_STANDARD_LUMA_SUM = 3688


def jpeg_quality(path: str | Path | BinaryIO) -> int | None:
    """The quality (1-100) a JPEG file (a path, or a binary file object) was saved at, estimated
    from its luminance quantization table as libjpeg scales it (exact for files saved by libjpeg,
    Pillow, OpenCV and most cameras; close for others); None for a file that is not a readable JPEG.
    Reads the header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            tables = getattr(im, "quantization", None)
            if im.format not in ("JPEG", "MPO") or not tables:
                return None
            luma = tables.get(0) or next(iter(tables.values()))
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    scale = 100.0 * sum(luma) / _STANDARD_LUMA_SUM  # libjpeg: 5000/q below 50, 200 - 2q above
    quality = 100.0 - scale / 2.0 if scale <= 100.0 else 5000.0 / scale
    return int(min(100, max(1, round(quality))))


_PIL_LIMIT_LOCK = threading.Lock()
_CV2_LOG_LOCK = threading.Lock()
_NOT_AN_IMAGE = "not an image (file content is not a recognised image format)"


def _normalise_format(fmt: str) -> str:
    name = fmt.strip().lower().lstrip(".")
    return _FORMAT_ALIASES.get(name, name)


def format_for_suffix(path: str | Path) -> str | None:
    """Canonical format name ("png", "jpg", "tiff", ...) for a path or a bare suffix like ".jpeg"."""
    name = Path(path).name
    # Path(".jpeg").suffix is "" (a dotfile), so a bare suffix is recognised by its leading dot.
    suffix = Path(name).suffix or (name if name.startswith(".") else "")
    return _FORMAT_BY_SUFFIX.get(suffix.lower())


def suffix_for_format(fmt: str) -> str:
    """File suffix for a format name: "jpg" -> ".jpg", "tiff" -> ".tiff" (aliases like "jpeg" accepted)."""
    name = _normalise_format(fmt)
    if name not in _SUFFIX_BY_FORMAT:
        raise ValueError(f"unknown image format {fmt!r}; known: {', '.join(sorted(_SUFFIX_BY_FORMAT))}")
    return _SUFFIX_BY_FORMAT[name]


@dataclass
class ImageData:
    """Decoded pixels plus what must survive a read -> upscale -> write round trip."""

    # float32 (H, W, C) in [0, 1], C == 3 (RGB) or C == 1 (grayscale); or, for 8-bit results made
    # on the device (runtime.upscaler), uint8 (H, W, C) in [0, 255], written as they are
    pixels: np.ndarray
    alpha: np.ndarray | None  # float32 (H, W) in [0, 1], or None
    bit_depth: int = 8  # 8 or 16: source precision, kept on output where the format allows
    source_format: str | None = None
    icc_profile: bytes | None = None
    exif: bytes | None = None  # orientation tag already reset to 1 (the pixels are upright)
    notes: tuple[str, ...] = ()  # what the user should know about the read (e.g. one page of several)

    def __post_init__(self) -> None:
        if self.pixels.ndim != 3 or self.pixels.shape[2] not in (1, 3):
            raise ValueError(f"pixels must be (H, W, 1) or (H, W, 3), got shape {self.pixels.shape}")
        if self.alpha is not None and self.alpha.shape != self.pixels.shape[:2]:
            raise ValueError(f"alpha must be {self.pixels.shape[:2]}, got shape {self.alpha.shape}")
        if self.bit_depth not in (8, 16):
            raise ValueError(f"bit_depth must be 8 or 16, got {self.bit_depth}")
        if self.pixels.dtype == np.uint8 and self.bit_depth != 8:
            raise ValueError("uint8 pixels are 8-bit: bit_depth must be 8")

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def is_gray(self) -> bool:
        return int(self.pixels.shape[2]) == 1

    @property
    def megapixels(self) -> float:
        return self.height * self.width / 1e6

    def replace(self, **changes: Any) -> ImageData:
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------------------------- errors


def os_reason(exc: OSError) -> str:
    """A short human reason for an OS-level failure (the path is already in the error message)."""
    reasons = {
        errno.ENOENT: "no such file",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EISDIR: "is a directory",
        errno.ENOTDIR: "a parent of the path is not a directory",
        errno.ENOSPC: "no space left on device",
        errno.EROFS: "read-only file system",
        errno.ENAMETOOLONG: "file name too long",
        errno.EDQUOT: "disk quota exceeded",
    }
    if exc.errno in reasons:
        return reasons[exc.errno]
    return exc.strerror or str(exc) or type(exc).__name__


def _megapixels(n: float) -> str:
    return f"{n / 1e6:.1f}"


def _bomb_reason(pixels: int, max_pixels: int, size: tuple[int, int] | None) -> str:
    dims = f"{size[0]}x{size[1]} = " if size else ""
    return (
        f"image is {dims}{_megapixels(pixels)} MP, over the limit of {max_pixels / 1e6:g} MP "
        "(decompression-bomb guard); raise it with --max-megapixels (max_pixels in Python)"
    )


# ----------------------------------------------------------------------- shared by read and write


def _icc_space(icc: bytes | None) -> bytes | None:
    """The ICC header's data colour space ("RGB ", "GRAY", "CMYK", ...), None if not a profile."""
    if not icc or len(icc) < 128 or icc[36:40] != b"acsp":
        return None
    return icc[16:20]


def _icc_for(icc: bytes | None, channels: int) -> bytes | None:
    """The profile if it describes `channels`-channel data; a CMYK profile on pixels converted to RGB
    (or an RGB profile on gray data) would make viewers mis-colour the image, so it is dropped."""
    space = _icc_space(icc)
    if space == (b"GRAY" if channels == 1 else b"RGB "):
        return icc
    return None


@contextmanager
def _cv2_quiet() -> Iterator[None]:
    """Silence OpenCV's own logging (libtiff warnings and the like go to stderr) for one call.

    The level is process-global, so it is changed under a lock and restored right after.
    """
    with _CV2_LOG_LOCK:
        previous = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        try:
            yield
        finally:
            cv2.utils.logging.setLogLevel(previous)
