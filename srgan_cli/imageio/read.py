"""Reading image files into ImageData: EXIF orientation, alpha, gray, 16-bit, ICC, palette/CMYK,
and a decompression-bomb guard checked before decoding."""

from __future__ import annotations

import os
import re
import stat
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ImageReadError
from .formats import (
    _EXIF_PREFIX,
    _FIRST_FRAME_FORMATS,
    _GRAY16_MODES,
    _NOT_AN_IMAGE,
    _ORIENTATION_TAG,
    _PIL_FORMATS,
    _PIL_LIMIT_LOCK,
    _PNG_SIGNATURE,
    DEFAULT_MAX_PIXELS,
    ImageData,
    _bomb_reason,
    _cv2_quiet,
    _icc_for,
    os_reason,
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
        raise ImageReadError(path, os_reason(exc)) from exc
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
        raise ImageReadError(path, os_reason(exc)) from exc


_NEW_SUBFILE_TYPE = 254  # TIFF tag: bit 0 set marks a reduced-resolution copy (a thumbnail, a preview)


def _tiff_pages(im: Image.Image) -> int:
    """How many full-resolution pages a TIFF holds (thumbnails and previews not counted); the
    image is left on its first page."""
    frames = int(getattr(im, "n_frames", 1) or 1)
    if frames <= 1:
        return 1
    pages = 0
    try:
        for index in range(frames):
            im.seek(index)
            kind = getattr(im, "tag_v2", {}).get(_NEW_SUBFILE_TYPE, 0)
            pages += 0 if isinstance(kind, int) and kind & 1 else 1
    finally:
        im.seek(0)
    return max(pages, 1)


def read_image(
    path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, allow_partial: bool = False
) -> ImageData:
    """Decode an image file to float32 RGB or gray in [0, 1], upright, with alpha and metadata.

    A multi-page TIFF is refused (one page would silently stand for the whole file) unless
    `allow_partial`: then its first page is read, and `notes` of the result say so."""
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
            raise ImageReadError(path, os_reason(exc)) from exc
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
                notes: tuple[str, ...] = ()
                pages = _tiff_pages(im) if fmt == "TIFF" else 1
                if pages > 1 and not allow_partial:
                    raise ImageReadError(
                        path,
                        f"is a multi-page TIFF ({pages} pages); one image file holds one upscaled page",
                        hint="pass --allow-partial (allow_partial=True) to upscale its first page only, "
                        "or split the pages into files first",
                    )
                if pages > 1:
                    notes = (f"first page of {pages} upscaled (a multi-page TIFF, --allow-partial)",)
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
                notes=notes,
            )


def header_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) from the file's header alone, without decoding; None when it cannot be read
    (`read_image` then says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an oversized header is reported by read_image
            with Image.open(path) as im:
                return im.size
    except Exception:
        return None


def image_from_pil(im: Image.Image) -> ImageData:
    """A PIL image already in memory as ImageData, through the same conversions read_image uses
    (any mode; alpha, gray and 16-bit kept). The image is taken as it is: no EXIF turn."""
    pixels, alpha, depth = _pil_arrays(im)
    return ImageData(
        np.ascontiguousarray(pixels), None if alpha is None else np.ascontiguousarray(alpha), depth
    )
