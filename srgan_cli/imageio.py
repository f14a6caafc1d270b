"""Image files <-> float32 arrays: the only module that decodes or encodes image formats."""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import re
import stat
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError, features

from .atomic import atomic_open
from .errors import ImageReadError, ImageWriteError

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

    pixels: np.ndarray  # float32 (H, W, C) in [0, 1]; C == 3 (RGB) or C == 1 (grayscale)
    alpha: np.ndarray | None  # float32 (H, W) in [0, 1], or None
    bit_depth: int = 8  # 8 or 16: source precision, kept on output where the format allows
    source_format: str | None = None
    icc_profile: bytes | None = None
    exif: bytes | None = None  # orientation tag already reset to 1 (the pixels are upright)

    def __post_init__(self) -> None:
        if self.pixels.ndim != 3 or self.pixels.shape[2] not in (1, 3):
            raise ValueError(f"pixels must be (H, W, 1) or (H, W, 3), got shape {self.pixels.shape}")
        if self.alpha is not None and self.alpha.shape != self.pixels.shape[:2]:
            raise ValueError(f"alpha must be {self.pixels.shape[:2]}, got shape {self.alpha.shape}")
        if self.bit_depth not in (8, 16):
            raise ValueError(f"bit_depth must be 8 or 16, got {self.bit_depth}")

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


def _os_reason(exc: OSError) -> str:
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
        "(decompression-bomb guard); raise it with max_pixels"
    )


# ---------------------------------------------------------------------------------------------- read


@contextmanager
def _pil_pixel_limit(max_pixels: int) -> Iterator[None]:
    """Let our own max_pixels be the guard for the duration of one read.

    Pillow warns above MAX_IMAGE_PIXELS (printing, by default) and refuses above twice that. The warning
    is silenced because the size is checked right after the lazy open; so are Pillow's UserWarnings
    ("Corrupt EXIF data" and the like), since a library must not print and those files still decode.
    Only when the caller allows more than Pillow's hard limit is the global raised, under a lock and
    restored at once, so other users of Pillow are not left with a changed limit.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.simplefilter("ignore", UserWarning)
        pil_limit = Image.MAX_IMAGE_PIXELS
        if pil_limit is None or 2 * pil_limit >= max_pixels:
            yield
            return
        with _PIL_LIMIT_LOCK:
            Image.MAX_IMAGE_PIXELS = max_pixels
            try:
                yield
            finally:
                Image.MAX_IMAGE_PIXELS = pil_limit


def _png_header(head: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) from a PNG's IHDR, or None if not a PNG."""
    if len(head) < 26 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return width, height, head[24], head[25]


def _bomb_error(path: Path, exc: Exception, head: bytes, max_pixels: int) -> ImageReadError:
    """Our error for Pillow's DecompressionBombError, which carries only the pixel count in its text."""
    png = _png_header(head)
    if png is not None:
        return ImageReadError(path, _bomb_reason(png[0] * png[1], max_pixels, (png[0], png[1])))
    match = re.search(r"\((\d+) pixels\)", str(exc))
    if match:
        return ImageReadError(path, _bomb_reason(int(match.group(1)), max_pixels, None))
    return ImageReadError(path, f"image is over the decompression-bomb limit ({exc})")


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an (H, W) or (H, W, C) array, as a view."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.swapaxes(0, 1)
    if orientation == 6:
        return arr.swapaxes(0, 1)[:, ::-1]
    if orientation == 7:
        return arr.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return arr.swapaxes(0, 1)[::-1]
    return arr


def _patch_orientation(tiff: bytes) -> bytes | None:
    """Set IFD0's orientation to 1 in raw TIFF-structured EXIF, touching no other byte.

    Patching in place (rather than re-serialising with Pillow) keeps maker notes and other
    offset-sensitive data intact. None if the structure cannot be parsed.
    """
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return None
    order = "<" if tiff[:2] == b"II" else ">"
    magic, ifd = struct.unpack(order + "HI", tiff[2:8])
    if magic != 42:  # BigTIFF (43) has another layout
        return None
    if ifd + 2 > len(tiff):
        return None
    (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
    out = bytearray(tiff)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        if entry + 12 > len(tiff):
            return None
        tag, kind = struct.unpack(order + "HH", tiff[entry : entry + 4])
        if tag != _ORIENTATION_TAG:
            continue
        # The value is stored inline; SHORT is what the standard says, LONG shows up in the wild.
        if kind == 3:
            out[entry + 8 : entry + 10] = struct.pack(order + "H", 1)
        elif kind == 4:
            out[entry + 8 : entry + 12] = struct.pack(order + "I", 1)
        else:
            return None
        break
    return bytes(out)


def _exif_upright(im: Image.Image) -> bytes | None:
    """The file's EXIF with orientation 1, as bytes with the "Exif\\0\\0" header Pillow's writers expect."""
    if im.format == "TIFF":
        # Pillow's TIFF "EXIF" is the file's own IFD (strip offsets, compression...): not portable.
        return None
    raw = im.info.get("exif")
    if isinstance(raw, bytes) and raw:
        body = raw[len(_EXIF_PREFIX) :] if raw.startswith(_EXIF_PREFIX) else raw
        patched = _patch_orientation(body)
        if patched is not None:
            return _EXIF_PREFIX + patched
    try:
        exif = im.getexif()
        if len(exif) == 0:
            return None
        if _ORIENTATION_TAG in exif:
            exif[_ORIENTATION_TAG] = 1
        return bytes(exif.tobytes())
    except Exception:  # unreadable EXIF is dropped: it must never cost the user the image
        return None


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation still to be applied to the loaded image (1 if none or unreadable)."""
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block must not cost the user the image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


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


def _unit(arr: np.ndarray, scale: float) -> np.ndarray:
    return arr.astype(np.float32) / np.float32(scale)


def _pil_arrays(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(pixels (H, W, C), alpha or None, bit depth) from a loaded Pillow image of any mode."""
    mode = im.mode
    transparent = im.info.get("transparency") is not None
    if mode in _GRAY16_MODES:
        return _unit(np.asarray(im), 65535)[..., None], None, 16
    if mode == "I":
        # 32-bit int gray is how Pillow hands over 16-bit sources; values beyond 16 bits are clipped.
        return _unit(np.clip(np.asarray(im), 0, 65535), 65535)[..., None], None, 16
    if mode == "F":
        return np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)[..., None], None, 16
    if mode in ("1", "L") and not transparent:
        im = im.convert("L")
    elif mode in ("1", "L", "LA", "La"):
        im = im.convert("LA")
    elif mode in ("RGBA", "RGBa", "PA") or (mode in ("P", "RGB") and transparent):
        im = im.convert("RGBA")
    elif mode != "RGB":
        # P, CMYK, YCbCr, LAB, HSV, RGBX...: Pillow converts them all to RGB.
        im = im.convert("RGB")
    arr = np.asarray(im)
    if arr.ndim == 2:
        return _unit(arr, 255)[..., None], None, 8
    if arr.shape[2] in (2, 4):
        return _unit(arr[..., :-1], 255), _unit(arr[..., -1], 255), 8
    return _unit(arr, 255), None, 8


def _cv2_16bit_kind(im: Image.Image, head: bytes) -> str | None:
    """Return "gray" or "color" for 16-bit data Pillow would truncate to 8 bits, else None.

    Pillow keeps 16-bit gray (mode I;16) but has no 16-bit RGB/RGBA/LA modes, so those go to OpenCV.
    """
    if im.format == "PNG":
        png = _png_header(head)
        if png is None or png[2] != 16 or png[3] == 0:
            return None
        return "gray" if png[3] == 4 else "color"
    if im.format == "TIFF" and im.mode not in _GRAY16_MODES:
        tags = getattr(im, "tag_v2", {})
        bits = tags.get(258)
        bits = bits if isinstance(bits, tuple) else (bits,)
        sample_format = tags.get(339, (1,))
        sample_format = sample_format if isinstance(sample_format, tuple) else (sample_format,)
        photometric = tags.get(262)
        if bits and all(b == 16 for b in bits) and all(f == 1 for f in sample_format):
            if photometric == 1:
                return "gray"
            if photometric == 2:
                return "color"
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


def _cv2_arrays(data: bytes, kind: str) -> tuple[np.ndarray, np.ndarray | None, int] | None:
    """Decode 16-bit PNG/TIFF at full precision with OpenCV; None if OpenCV cannot."""
    with _cv2_quiet():
        arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype not in (np.uint8, np.uint16):
        return None
    scale = 65535 if arr.dtype == np.uint16 else 255
    depth = 16 if arr.dtype == np.uint16 else 8
    if arr.ndim == 2:
        arr = arr[..., None]
    channels = arr.shape[2]
    alpha = _unit(arr[..., -1], scale) if channels in (2, 4) else None
    color = arr[..., :-1] if channels in (2, 4) else arr
    if color.shape[2] == 3:
        # OpenCV is BGR; a gray source expanded to BGR(A) by the decoder goes back to one channel.
        color = color[..., :1] if kind == "gray" else color[..., ::-1]
    return _unit(color, scale), alpha, depth


def _without_orientation(data: bytes, fmt: str) -> bytes:
    """File bytes whose orientation OpenCV cannot apply, so it is applied exactly once, by us.

    OpenCV documents IMREAD_UNCHANGED as ignoring orientation, but its TIFF decoder (5.0) applies it
    anyway; neutralising the tag makes the result independent of the OpenCV version.
    """
    if fmt == "TIFF":
        return _patch_orientation(data) or data
    if fmt == "PNG":
        chunks = [data[:8]]
        pos = 8
        while pos + 12 <= len(data):
            (length,) = struct.unpack(">I", data[pos : pos + 4])
            end = pos + 12 + length
            if data[pos + 4 : pos + 8] != b"eXIf":
                chunks.append(data[pos:end])
            pos = end
        chunks.append(data[pos:])
        return b"".join(chunks)
    return data


def _decode_error(path: Path, fmt: str, exc: Exception) -> ImageReadError:
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and ("decoder" in detail and "not available" in detail):
        return ImageReadError(path, f"cannot decode this kind of {fmt} ({detail})")
    return ImageReadError(path, f"truncated or corrupt {fmt} data ({detail})")


def _open_checked(path: Path) -> BinaryIO:
    """Open for reading with a specific error for each way a path can fail to be an image file."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ImageReadError(path, _os_reason(exc)) from exc
    if stat.S_ISDIR(st.st_mode):
        raise ImageReadError(path, "is a directory")
    if not stat.S_ISREG(st.st_mode):
        # A FIFO or device would block or stream forever.
        raise ImageReadError(path, "not a regular file")
    if st.st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by the caller's with-block
    except OSError as exc:
        raise ImageReadError(path, _os_reason(exc)) from exc


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageData:
    """Decode an image file to float32 RGB or gray in [0, 1], upright, with alpha and metadata."""
    path = Path(path)
    with _open_checked(path) as fh, _pil_pixel_limit(max_pixels):
        head = fh.read(64)
        fh.seek(0)
        try:
            im = Image.open(fh)
        except Image.DecompressionBombError as exc:
            raise _bomb_error(path, exc, head, max_pixels) from exc
        except UnidentifiedImageError as exc:
            raise ImageReadError(path, _NOT_AN_IMAGE) from exc
        except OSError as exc:
            raise ImageReadError(path, _os_reason(exc)) from exc
        except Exception as exc:  # Pillow plugins raise assorted errors on malformed headers
            raise ImageReadError(path, f"corrupt image header ({exc})") from exc
        with im:
            fmt = im.format or "image"
            width, height = im.size
            # Image.open only parsed the header: refuse before a single pixel is decoded.
            if width * height > max_pixels:
                raise ImageReadError(path, _bomb_reason(width * height, max_pixels, (width, height)))
            try:
                animated = bool(getattr(im, "is_animated", False))
                if animated and fmt not in _FIRST_FRAME_FORMATS:
                    frames = getattr(im, "n_frames", 2)
                    raise ImageReadError(path, f"animated images ({frames} frames) are not supported")
                # Pillow turns a TIFF upright while loading and then deletes the tag; the OpenCV path
                # needs the original value.
                tiff_orientation = getattr(im, "tag_v2", {}).get(_ORIENTATION_TAG) if fmt == "TIFF" else None
                cv2_kind = _cv2_16bit_kind(im, head)
                # load() decodes everything; it is also the integrity check for the OpenCV path, which
                # would print libpng's complaints to stderr on a broken file.
                im.load()
            except ImageReadError:
                raise
            except Image.DecompressionBombError as exc:
                raise _bomb_error(path, exc, head, max_pixels) from exc
            except Exception as exc:
                raise _decode_error(path, fmt, exc) from exc

            orientation = _orientation(im)
            decoded = None
            if cv2_kind is not None:
                fh.seek(0)
                decoded = _cv2_arrays(_without_orientation(fh.read(), fmt), cv2_kind)
                if decoded is not None and fmt == "TIFF":
                    # Pillow's copy was turned upright during load; OpenCV's is as stored.
                    raw = tiff_orientation
                    orientation = raw if isinstance(raw, int) and 1 <= raw <= 8 else 1
            if decoded is None:
                decoded = _pil_arrays(im)
            pixels, alpha, bit_depth = decoded
            if orientation != 1:
                pixels = _orient(pixels, orientation)
                alpha = None if alpha is None else _orient(alpha, orientation)
            icc = im.info.get("icc_profile")
            return ImageData(
                pixels=np.ascontiguousarray(pixels),
                alpha=None if alpha is None else np.ascontiguousarray(alpha),
                bit_depth=bit_depth,
                source_format=_PIL_FORMATS.get(fmt, fmt.lower()),
                icc_profile=_icc_for(icc if isinstance(icc, bytes) else None, pixels.shape[2]),
                exif=_exif_upright(im),
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


def _encode16(pixels: np.ndarray, alpha: np.ndarray | None, image: ImageData, fmt: str) -> bytes:
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
        data = _cv2_encode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 6])
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


def _encode8(pixels: np.ndarray, alpha: np.ndarray | None, image: ImageData, fmt: str, quality: int) -> bytes:
    arr = np.rint(pixels * 255.0).astype(np.uint8)
    if alpha is not None:
        arr = np.dstack([arr, np.rint(alpha * 255.0).astype(np.uint8)])
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
        options["compress_level"] = 6
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


def _encode(image: ImageData, fmt: str, quality: int) -> bytes:
    """The complete file contents; encoding in memory means a failure never leaves a partial file."""
    pixels = np.asarray(image.pixels, dtype=np.float32)
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
        return _encode16(pixels, alpha, image, fmt)
    return _encode8(pixels, alpha, image, fmt, quality)


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
        raise ImageWriteError(path, _os_reason(exc)) from exc
    try:
        with atomic_open(path, overwrite=overwrite) as fh:
            _write_all(fh.fileno(), data)  # unbuffered, straight to the temporary file
    except FileExistsError:  # appeared since write_image checked
        raise ImageWriteError(path, "already exists; pass overwrite=True to replace it") from None
    except OSError as exc:
        raise ImageWriteError(path, _os_reason(exc)) from exc


def write_image(
    path: str | Path,
    image: ImageData,
    *,
    fmt: str | None = None,
    quality: int = 95,
    overwrite: bool = False,
) -> Path:
    """Encode `image` and write it atomically; the format comes from `fmt` or the path's suffix."""
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
    if path.is_dir():
        raise ImageWriteError(path, "is a directory")
    if not overwrite and (path.exists() or path.is_symlink()):
        raise ImageWriteError(path, "already exists; pass overwrite=True to replace it")
    try:
        data = _encode(image, name, quality)
    except Exception as exc:
        raise ImageWriteError(path, f"could not encode as {name}: {exc}") from exc
    _commit(path, data, overwrite)
    return path


# ------------------------------------------------------------------------------------------- alpha fill


def fill_transparent(pixels: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Give fully transparent pixels the colour of the nearest visible ones; others are untouched.

    The colour hidden under alpha == 0 is arbitrary (often black). An upscaler's receptive field spans the
    edge, so that colour bleeds into visible edge pixels as a dark fringe. This is normalised convolution
    on a Gaussian pyramid (push-pull): blur(pixels * alpha) / blur(alpha) at scales 1, 2, 4, ... down to
    1x1, and each pixel takes its value from the finest scale at which visible pixels reach it. Holes next
    to an edge therefore get that edge's colour, and wide holes a smooth blend of their surroundings.
    """
    p = np.asarray(pixels, dtype=np.float32)
    a = np.asarray(alpha, dtype=np.float32)
    if p.ndim != 3 or a.shape != p.shape[:2]:
        raise ValueError(f"need pixels (H, W, C) and alpha (H, W), got {p.shape} and {a.shape}")
    out = p.copy()
    hole = a < 1.0 / 255.0
    if not hole.any() or hole.all():
        return out
    weight = np.where(hole, np.float32(0), np.clip(a, 0.0, 1.0))
    height, width, channels = p.shape
    # Colour premultiplied by weight, with the weight as the last channel: one pyramid for both.
    base = np.empty((height, width, channels + 1), np.float32)
    np.multiply(p, weight[..., None], out=base[..., :channels])
    base[..., channels] = weight
    levels = [base]
    while levels[-1].shape[0] > 1 or levels[-1].shape[1] > 1:
        h, w = levels[-1].shape[:2]
        down = cv2.pyrDown(levels[-1], dstsize=((w + 1) // 2, (h + 1) // 2))
        levels.append(down.reshape(down.shape[0], down.shape[1], channels + 1))
    tiny = np.float32(1e-30)
    top = levels[-1]
    fill = top[..., :channels] / np.maximum(top[..., channels:], tiny)
    for level in reversed(levels[1:-1]):
        h, w = level.shape[:2]
        coarse = cv2.pyrUp(fill, dstsize=(w, h)).reshape(h, w, channels)
        weight_sum = level[..., channels:]
        local = level[..., :channels] / np.maximum(weight_sum, tiny)
        # Trust this scale wherever visible pixels reach it at all; the ramp (rather than a hard switch)
        # only smooths the frontier where their reach ends.
        trust = np.clip(weight_sum * np.float32(1024), 0.0, 1.0)
        fill = trust * local + (1.0 - trust) * coarse
    # At full resolution a hole has no weight of its own, so it takes the upsampled fill as it is.
    fill = cv2.pyrUp(fill, dstsize=(width, height)).reshape(height, width, channels)
    np.copyto(out, fill, where=hole[..., None])
    return out
