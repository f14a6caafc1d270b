"""Writing ImageData to PNG, JPEG, WebP or TIFF (16-bit, alpha, ICC and EXIF kept where the format
allows), atomically and without clobbering unless asked."""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, features

from ..atomic import atomic_open
from ..errors import ImageWriteError
from .formats import (
    _EXIF_PREFIX,
    _PNG_SIGNATURE,
    WRITE_FORMATS,
    ImageData,
    _cv2_quiet,
    _icc_for,
    _normalise_format,
    format_for_suffix,
    os_reason,
)

# --------------------------------------------------------------------------------------------- write


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png_add_metadata(png: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    """Insert iCCP / eXIf chunks right after IHDR (both must precede IDAT)."""
    extra = b""
    if icc:
        extra += _png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc))
    if exif:
        body = exif[len(_EXIF_PREFIX) :] if exif.startswith(_EXIF_PREFIX) else exif
        if body[:4] in (b"II*\x00", b"MM\x00*"):
            extra += _png_chunk(b"eXIf", body)
    ihdr_end = 8 + 12 + 13  # signature, then IHDR: length, type, 13 data bytes, CRC
    return png[:ihdr_end] + extra + png[ihdr_end:]


def _png_gray_alpha16(gray: np.ndarray, alpha: np.ndarray) -> bytes:
    """16-bit gray+alpha PNG, written by hand: OpenCV cannot encode 2-channel images, Pillow has no such
    mode, and expanding to RGBA would turn a gray image into a colour one."""
    height, width = gray.shape
    samples = np.stack([gray, alpha], axis=-1).astype(">u2").view(np.uint8).reshape(height, width * 4)
    # "Sub" filter (type 1): byte minus the same byte of the previous pixel, which compresses smooth images
    # far better than no filter.
    filtered = samples.copy()
    filtered[:, 4:] = samples[:, 4:] - samples[:, :-4]
    raw = np.concatenate([np.ones((height, 1), np.uint8), filtered], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 4, 0, 0, 0)
    return (
        _PNG_SIGNATURE
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw, 6))
        + _png_chunk(b"IEND", b"")
    )


def _cv2_encode(suffix: str, arr: np.ndarray, params: list[int]) -> bytes:
    with _cv2_quiet():
        ok, buf = cv2.imencode(suffix, arr, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode {suffix}")
    return bytes(buf.tobytes())


def _tiff_add_tags(tiff: bytes, tags: list[tuple[int, int, int, bytes | int]]) -> bytes:
    """Add or replace IFD0 entries (tag, type, count, value) in a TIFF file.

    The IFD is rewritten at the end of the file and the header pointed at it; image data and the old
    entries' out-of-line values stay where they are, so no offset needs fixing. An int value is a SHORT.
    """
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return tiff
    order = "<" if tiff[:2] == b"II" else ">"
    magic, ifd = struct.unpack(order + "HI", tiff[2:8])
    if magic != 42 or ifd + 2 > len(tiff):
        return tiff
    (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
    end = ifd + 2 + 12 * count
    if end + 4 > len(tiff):
        return tiff
    entries = {}
    for pos in range(ifd + 2, end, 12):
        (tag,) = struct.unpack(order + "H", tiff[pos : pos + 2])
        entries[tag] = tiff[pos : pos + 12]
    next_ifd = tiff[end : end + 4]
    out = bytearray(tiff)
    for tag, kind, n, value in tags:
        data = struct.pack(order + "H", value) if isinstance(value, int) else value
        if len(data) <= 4:
            field = data.ljust(4, b"\x00")
        else:
            out += b"\x00" * (len(out) % 2)  # offsets must be word-aligned
            field = struct.pack(order + "I", len(out))
            out += data
        entries[tag] = struct.pack(order + "HHI", tag, kind, n) + field
    out += b"\x00" * (len(out) % 2)
    new_ifd = len(out)
    out += struct.pack(order + "H", len(entries)) + b"".join(entries[t] for t in sorted(entries)) + next_ifd
    out[4:8] = struct.pack(order + "I", new_ifd)
    return bytes(out)


def _encode16(
    pixels: np.ndarray, alpha: np.ndarray | None, image: ImageData, fmt: str, png_level: int = 6
) -> bytes:
    color = np.rint(pixels * 65535.0).astype(np.uint16)
    a16 = None if alpha is None else np.rint(alpha * 65535.0).astype(np.uint16)
    if fmt == "png" and color.shape[2] == 1 and a16 is not None:
        icc = _icc_for(image.icc_profile, 1)
        return _png_add_metadata(_png_gray_alpha16(color[..., 0], a16), icc, image.exif)
    if color.shape[2] == 1 and a16 is not None:
        color = np.repeat(color, 3, axis=2)  # TIFF via OpenCV: no 2-channel images, so gray+alpha -> RGBA
    icc = _icc_for(image.icc_profile, color.shape[2])
    if color.shape[2] == 1:
        arr = color[..., 0]
    else:
        arr = color[..., ::-1] if a16 is None else np.dstack([color[..., ::-1], a16])
    arr = np.ascontiguousarray(arr)
    if fmt == "png":
        data = _cv2_encode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, png_level])
        return _png_add_metadata(data, icc, image.exif)
    data = _cv2_encode(".tiff", arr, [])
    # OpenCV writes no ICC profile and no ExtraSamples tag, so other readers would have to guess whether
    # a 4th channel is alpha (libtiff warns about it). Both are added; EXIF is not (it needs a sub-IFD).
    tags: list[tuple[int, int, int, bytes | int]] = []
    if a16 is not None:
        tags.append((338, 3, 1, 2))  # ExtraSamples: unassociated alpha
    if icc:
        tags.append((34675, 7, len(icc), icc))  # InterColorProfile, UNDEFINED bytes
    return _tiff_add_tags(data, tags) if tags else data


def _encode8(
    pixels: np.ndarray, alpha: np.ndarray | None, image: ImageData, fmt: str, quality: int, png_level: int = 6
) -> bytes:
    """`pixels` float32 in [0, 1] (rounded here) or uint8 (as they are).

    PNG goes through OpenCV's encoder where it can (gray, RGB, RGBA): at 3840x2160 it took 1.36 s
    against Pillow's 1.86 s at level 6, for a slightly smaller file (docs/benchmarks.md). JPEG and
    WebP stay with Pillow, which was the faster of the two there."""
    arr = pixels if pixels.dtype == np.uint8 else np.rint(pixels * 255.0).astype(np.uint8)
    if alpha is not None:
        arr = np.dstack([arr, np.rint(alpha * 255.0).astype(np.uint8)])
    if fmt == "png" and arr.shape[2] != 2:  # OpenCV has no 2-channel (gray + alpha) images
        bgr = arr[..., 0] if arr.shape[2] == 1 else arr[..., [2, 1, 0, 3][: arr.shape[2]]]
        data = _cv2_encode(".png", np.ascontiguousarray(bgr), [cv2.IMWRITE_PNG_COMPRESSION, png_level])
        return _png_add_metadata(data, _icc_for(image.icc_profile, 1 if arr.shape[2] == 1 else 3), image.exif)
    im = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
    if fmt == "webp" and im.mode in ("L", "LA"):
        im = im.convert("RGBA" if im.mode == "LA" else "RGB")  # WebP has no gray; make the ICC check see it
    options: dict[str, Any] = {}
    icc = _icc_for(image.icc_profile, 1 if im.mode in ("L", "LA") else 3)
    if icc:
        options["icc_profile"] = icc
    # A JPEG APP1 segment holds at most 64 KiB; EXIF from a PNG or WebP source can be larger.
    if image.exif and (fmt != "jpg" or len(image.exif) <= 65_000):
        options["exif"] = image.exif
    if fmt == "png":
        pil_format = "PNG"
        options["compress_level"] = png_level
    elif fmt == "jpg":
        pil_format = "JPEG"
        options["quality"] = quality
        # Chroma subsampling visibly blurs coloured edges, which is exactly what an upscaler sharpens.
        options["subsampling"] = 0 if quality >= 90 else 2
    elif fmt == "webp":
        pil_format = "WEBP"
        options["quality"] = quality
        options["lossless"] = quality == 100
        options["exact"] = quality == 100  # keep colour under transparent pixels when lossless
    else:
        pil_format = "TIFF"
        if features.check("libtiff"):
            options["compression"] = "tiff_lzw"
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. Pillow on odd EXIF: a library must not print
        im.save(out, pil_format, **options)
    return out.getvalue()


def _encode(image: ImageData, fmt: str, quality: int, png_level: int = 6) -> bytes:
    """The complete file contents; encoding in memory means a failure never leaves a partial file."""
    if image.pixels.dtype == np.uint8 and image.alpha is None:
        return _encode8(
            image.pixels, None, image, fmt, quality, png_level
        )  # quantised already (on the device)
    pixels = np.asarray(image.pixels, dtype=np.float32)
    if image.pixels.dtype == np.uint8:
        pixels = pixels / 255.0
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise ValueError(f"pixels must be (H, W, 1) or (H, W, 3), got shape {pixels.shape}")
    # NaN/inf from a diverging model would otherwise turn into arbitrary integers.
    pixels = np.clip(np.nan_to_num(pixels, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    alpha = None
    if image.alpha is not None:
        alpha = np.asarray(image.alpha, dtype=np.float32)
        if alpha.shape != pixels.shape[:2]:
            raise ValueError(f"alpha must be {pixels.shape[:2]}, got shape {alpha.shape}")
        alpha = np.clip(np.nan_to_num(alpha, nan=1.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    if fmt == "jpg" and alpha is not None:
        pixels = pixels * alpha[..., None] + (1.0 - alpha[..., None])  # JPEG has no alpha: onto white
        alpha = None
    if image.bit_depth == 16 and fmt in ("png", "tiff"):
        return _encode16(pixels, alpha, image, fmt, png_level)
    return _encode8(pixels, alpha, image, fmt, quality, png_level)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _commit(path: Path, data: bytes, overwrite: bool) -> None:
    """Write `data` to `path` all at once or not at all (atomic.atomic_open), as ImageWriteErrors."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise ImageWriteError(path, "a parent of the path is not a directory") from exc
    except OSError as exc:
        raise ImageWriteError(path, os_reason(exc)) from exc
    try:
        with atomic_open(path, overwrite=overwrite) as fh:
            _write_all(fh.fileno(), data)  # unbuffered, straight to the temporary file
    except FileExistsError:  # appeared since write_image checked
        raise ImageWriteError(path, "already exists; pass overwrite=True to replace it") from None
    except OSError as exc:
        raise ImageWriteError(path, os_reason(exc)) from exc


def write_image(
    path: str | Path,
    image: ImageData,
    *,
    fmt: str | None = None,
    quality: int = 95,
    overwrite: bool = False,
    png_compression: int = 6,
) -> Path:
    """Encode `image` and write it atomically; the format comes from `fmt` or the path's suffix.
    `png_compression` is zlib's level for PNG: 0 (none, fastest) to 9 (smallest)."""
    path = Path(path)
    if fmt is None:
        name = format_for_suffix(path)
        if name is None:
            known = ", ".join(WRITE_FORMATS)
            raise ImageWriteError(path, f"unknown output suffix {path.suffix!r}; use one of {known}")
    else:
        name = _normalise_format(fmt)
    if name not in WRITE_FORMATS:
        raise ImageWriteError(path, f"cannot write {name!r} files; use one of {', '.join(WRITE_FORMATS)}")
    if not 1 <= quality <= 100:
        raise ImageWriteError(path, f"quality must be between 1 and 100, got {quality}")
    if not 0 <= png_compression <= 9:
        raise ImageWriteError(path, f"PNG compression must be between 0 and 9, got {png_compression}")
    if path.is_dir():
        raise ImageWriteError(path, "is a directory")
    if not overwrite and (path.exists() or path.is_symlink()):
        raise ImageWriteError(path, "already exists; pass overwrite=True to replace it")
    try:
        data = _encode(image, name, quality, png_compression)
    except Exception as exc:
        raise ImageWriteError(path, f"could not encode as {name}: {exc}") from exc
    _commit(path, data, overwrite)
    return path
