"""Tests for srgan_cli.imageio: round trips, orientation, metadata, error reasons and atomic writes."""

from __future__ import annotations

import errno
import io
import os
import struct
import time
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from srgan_cli.errors import ImageReadError, ImageWriteError
from srgan_cli.imageio import (
    DEFAULT_MAX_PIXELS,
    READABLE_SUFFIXES,
    WRITE_FORMATS,
    ImageData,
    fill_transparent,
    format_for_suffix,
    read_image,
    suffix_for_format,
    write_image,
)
from srgan_cli.imageio import write as imageio_write

ONE_8 = 1 / 255 + 1e-6
ONE_16 = 1 / 65535 + 1e-7


# ------------------------------------------------------------------------------------------- helpers


def _u8(h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def _u16(h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, (h, w, c), dtype=np.uint16)


def _smooth(h: int, w: int) -> np.ndarray:
    """A float32 RGB gradient on the 8-bit grid: survives JPEG well and round-trips exactly elsewhere."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([x / max(w - 1, 1), y / max(h - 1, 1), 0.5 + 0.0 * x], axis=-1)
    return np.asarray(np.rint(rgb * 255) / np.float32(255), dtype=np.float32)


def _srgb_icc() -> bytes:
    return bytes(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())


def _exif(orientation: int, make: str = "TestCam") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = make
    return bytes(exif.tobytes())


def _orientation_of(exif: bytes | None) -> int | None:
    assert exif is not None
    parsed = Image.Exif()
    parsed.load(exif)
    value = parsed.get(0x0112)
    return None if value is None else int(value)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png_chunks(data: bytes) -> list[bytes]:
    kinds, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kinds.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return kinds


def _tiff16_rgb(arr: np.ndarray, orientation: int) -> bytes:
    """A minimal uncompressed little-endian 16-bit RGB TIFF with an orientation tag (Pillow and OpenCV
    cannot write one: Pillow has no 16-bit RGB mode, OpenCV writes no orientation)."""
    h, w, _ = arr.shape
    pixels = np.ascontiguousarray(arr, dtype="<u2").tobytes()
    n = 11
    bps_offset = 8 + 2 + 12 * n + 4
    data_offset = bps_offset + 6

    def short(tag: int, value: int) -> bytes:
        return struct.pack("<HHIHH", tag, 3, 1, value, 0)

    def long(tag: int, value: int) -> bytes:
        return struct.pack("<HHII", tag, 4, 1, value)

    entries = [
        short(256, w),
        short(257, h),
        struct.pack("<HHII", 258, 3, 3, bps_offset),
        short(259, 1),
        short(262, 2),
        long(273, data_offset),
        short(274, orientation),
        short(277, 3),
        short(278, h),
        long(279, len(pixels)),
        short(284, 1),
    ]
    ifd = struct.pack("<H", n) + b"".join(entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<HHH", 16, 16, 16) + pixels


def _save_pil(path: Path, im: Image.Image, fmt: str | None = None, **options: object) -> Path:
    im.save(path, fmt, **options)
    return path


# ------------------------------------------------------------------------------------ names & formats


def test_format_names() -> None:
    assert format_for_suffix(".jpeg") == "jpg"
    assert format_for_suffix("photo.JPG") == "jpg"
    assert format_for_suffix(Path("a/b.tif")) == "tiff"
    assert format_for_suffix("x.webp") == "webp"
    assert format_for_suffix("x.xyz") is None
    assert format_for_suffix("noext") is None
    assert suffix_for_format("jpg") == ".jpg"
    assert suffix_for_format("jpeg") == ".jpg"
    assert suffix_for_format("tiff") == ".tiff"
    with pytest.raises(ValueError):
        suffix_for_format("psd")
    assert {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"} <= READABLE_SUFFIXES
    assert WRITE_FORMATS == ("png", "jpg", "webp", "tiff")
    assert DEFAULT_MAX_PIXELS == 64_000_000


def test_image_data_properties_and_validation() -> None:
    img = ImageData(pixels=np.zeros((4, 6, 1), np.float32), alpha=None)
    assert (img.height, img.width, img.is_gray, img.megapixels) == (4, 6, True, 24 / 1e6)
    other = img.replace(bit_depth=16)
    assert other.bit_depth == 16 and img.bit_depth == 8
    with pytest.raises(ValueError):
        ImageData(pixels=np.zeros((4, 6), np.float32), alpha=None)
    with pytest.raises(ValueError):
        ImageData(pixels=np.zeros((4, 6, 3), np.float32), alpha=np.zeros((6, 4), np.float32))
    with pytest.raises(ValueError):
        ImageData(pixels=np.zeros((4, 6, 3), np.float32), alpha=None, bit_depth=12)


# ------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize(("suffix", "options"), [(".png", {}), (".tiff", {}), (".webp", {"quality": 100})])
def test_rgb_round_trip_lossless(tmp_path: Path, suffix: str, options: dict[str, int]) -> None:
    pixels = _u8(9, 13, 3).astype(np.float32) / 255
    out = write_image(tmp_path / f"a{suffix}", ImageData(pixels=pixels, alpha=None), **options)  # type: ignore[arg-type]
    assert out == tmp_path / f"a{suffix}"
    back = read_image(out)
    assert back.pixels.dtype == np.float32 and back.pixels.shape == (9, 13, 3)
    assert back.alpha is None and back.bit_depth == 8
    assert np.abs(back.pixels - pixels).max() <= ONE_8
    assert back.source_format == suffix.lstrip(".")


def test_rgb_round_trip_jpeg(tmp_path: Path) -> None:
    pixels = _smooth(32, 48)
    back = read_image(write_image(tmp_path / "a.jpg", ImageData(pixels=pixels, alpha=None), quality=95))
    assert back.source_format == "jpg" and back.pixels.shape == (32, 48, 3)
    assert np.abs(back.pixels - pixels).mean() < 2 / 255
    assert np.abs(back.pixels - pixels).max() < 12 / 255


@pytest.mark.parametrize(("suffix", "options"), [(".png", {}), (".tiff", {}), (".webp", {"quality": 100})])
def test_rgba_round_trip_keeps_alpha(tmp_path: Path, suffix: str, options: dict[str, int]) -> None:
    rgba = _u8(8, 10, 4, seed=1).astype(np.float32) / 255
    rgba[..., 3][0, 0] = 0.0
    image = ImageData(pixels=rgba[..., :3].copy(), alpha=rgba[..., 3].copy())
    back = read_image(write_image(tmp_path / f"a{suffix}", image, **options))  # type: ignore[arg-type]
    assert back.alpha is not None
    assert image.alpha is not None and np.abs(back.alpha - image.alpha).max() <= ONE_8
    assert np.abs(back.pixels - image.pixels).max() <= ONE_8


def test_gray_png_stays_gray(tmp_path: Path) -> None:
    src = _save_pil(tmp_path / "g.png", Image.fromarray(_u8(7, 5, 1)[..., 0]))
    img = read_image(src)
    assert img.pixels.shape == (7, 5, 1) and img.is_gray and img.bit_depth == 8
    out = write_image(tmp_path / "out.png", img)
    with Image.open(out) as im:
        assert im.mode == "L"
    assert np.abs(read_image(out).pixels - img.pixels).max() <= ONE_8
    # Gray with alpha: LA in, LA out.
    alpha = np.linspace(0, 1, 35, dtype=np.float32).reshape(7, 5)
    out = write_image(tmp_path / "la.png", img.replace(alpha=alpha))
    with Image.open(out) as im:
        assert im.mode == "LA"
    back = read_image(out)
    assert back.is_gray and back.alpha is not None and np.abs(back.alpha - alpha).max() <= ONE_8


@pytest.mark.parametrize("fmt", ["jpg", "tiff"])
def test_gray_other_formats_stay_gray(tmp_path: Path, fmt: str) -> None:
    img = ImageData(pixels=_smooth(16, 16)[..., :1].copy(), alpha=None)
    out = write_image(tmp_path / f"g.{fmt}", img)
    with Image.open(out) as im:
        assert im.mode == "L"
    assert read_image(out).is_gray


def test_gray16_png(tmp_path: Path) -> None:
    gray = _u16(6, 9, 1)[..., 0]
    src = tmp_path / "g16.png"
    src.write_bytes(cv2.imencode(".png", gray)[1].tobytes())
    img = read_image(src)
    assert img.bit_depth == 16 and img.pixels.shape == (6, 9, 1)
    assert np.abs(img.pixels[..., 0] * 65535 - gray).max() < 0.01
    out = write_image(tmp_path / "out.png", img)
    with Image.open(out) as im:
        assert im.mode.startswith("I;16")
    back = read_image(out)
    assert back.bit_depth == 16 and np.abs(back.pixels - img.pixels).max() <= ONE_16


@pytest.mark.parametrize("channels", [3, 4])
def test_color16_png_full_precision(tmp_path: Path, channels: int) -> None:
    bgr = _u16(5, 7, channels, seed=channels)
    src = tmp_path / "c16.png"
    src.write_bytes(cv2.imencode(".png", bgr)[1].tobytes())
    img = read_image(src)
    assert img.bit_depth == 16 and img.pixels.shape == (5, 7, 3)
    # The low byte matters: Pillow alone would give only the high byte.
    assert np.abs(img.pixels * 65535 - bgr[..., 2::-1]).max() < 0.01
    if channels == 4:
        assert img.alpha is not None and np.abs(img.alpha * 65535 - bgr[..., 3]).max() < 0.01
    out = write_image(tmp_path / "out.png", img)
    raw = cv2.imdecode(np.fromfile(out, np.uint8), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and np.array_equal(raw, bgr)
    back = read_image(out)
    assert back.bit_depth == 16 and np.abs(back.pixels - img.pixels).max() <= ONE_16


def test_gray_alpha16_png_written_as_gray_alpha(tmp_path: Path) -> None:
    gray = _u16(4, 6, 1, seed=3).astype(np.float32) / 65535
    alpha = _u16(4, 6, 1, seed=4)[..., 0].astype(np.float32) / 65535
    out = write_image(tmp_path / "ga.png", ImageData(pixels=gray, alpha=alpha, bit_depth=16))
    header = out.read_bytes()[:26]
    assert header[24] == 16 and header[25] == 4  # 16-bit, colour type 4 = gray + alpha
    back = read_image(out)
    assert back.is_gray and back.bit_depth == 16 and back.alpha is not None
    assert np.abs(back.pixels - gray).max() <= ONE_16 and np.abs(back.alpha - alpha).max() <= ONE_16


def test_color16_tiff(tmp_path: Path) -> None:
    bgr = _u16(6, 5, 3, seed=7)
    src = tmp_path / "c16.tiff"
    src.write_bytes(cv2.imencode(".tiff", bgr)[1].tobytes())
    img = read_image(src)
    assert img.bit_depth == 16 and img.source_format == "tiff"
    assert np.abs(img.pixels * 65535 - bgr[..., ::-1]).max() < 0.01
    back = read_image(write_image(tmp_path / "out.tif", img))
    assert back.bit_depth == 16 and np.abs(back.pixels - img.pixels).max() <= ONE_16


def test_rgba16_tiff_alpha_and_icc_are_tagged(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    icc = _srgb_icc()
    rgba = _u16(5, 6, 4, seed=8).astype(np.float32) / 65535
    image = ImageData(pixels=rgba[..., :3].copy(), alpha=rgba[..., 3].copy(), bit_depth=16, icc_profile=icc)
    out = write_image(tmp_path / "a.tiff", image)
    with Image.open(out) as im:
        assert im.mode == "RGBA" and im.tag_v2.get(338) == (2,) and im.info.get("icc_profile") == icc
    back = read_image(out)
    assert back.bit_depth == 16 and back.icc_profile == icc and back.alpha is not None
    assert np.abs(back.pixels - image.pixels).max() <= ONE_16
    assert image.alpha is not None and np.abs(back.alpha - image.alpha).max() <= ONE_16
    # A file written by OpenCV itself lacks ExtraSamples; libtiff's warning about it must stay quiet.
    foreign = tmp_path / "cv2.tiff"
    foreign.write_bytes(cv2.imencode(".tiff", _u16(5, 6, 4))[1].tobytes())
    assert read_image(foreign).alpha is not None
    assert capfd.readouterr() == ("", "")


def test_16bit_to_8bit_formats(tmp_path: Path) -> None:
    img = ImageData(pixels=_smooth(8, 8), alpha=None, bit_depth=16)
    back = read_image(write_image(tmp_path / "a.webp", img, quality=100))
    assert back.bit_depth == 8 and np.abs(back.pixels - img.pixels).max() <= ONE_8


def test_palette_with_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (4, 3))
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    im.putdata([0, 1, 2, 1] * 3)
    src = _save_pil(tmp_path / "p.png", im, transparency=2)
    img = read_image(src)
    assert img.pixels.shape == (3, 4, 3) and img.alpha is not None
    assert np.array_equal(img.alpha, np.array([[1, 1, 0, 1]] * 3, np.float32))
    assert np.allclose(img.pixels[0, 0], [1, 0, 0]) and np.allclose(img.pixels[0, 1], [0, 1, 0])


def test_palette_without_transparency_is_rgb(tmp_path: Path) -> None:
    src = _save_pil(tmp_path / "p.gif", Image.fromarray(_u8(5, 5, 3)).convert("P"))
    img = read_image(src)
    assert img.pixels.shape == (5, 5, 3) and img.alpha is None and img.source_format == "gif"


def test_cmyk_jpeg_becomes_rgb_and_drops_cmyk_profile(tmp_path: Path) -> None:
    cmyk = Image.fromarray(_u8(8, 8, 4, seed=5), mode="CMYK")
    # A profile whose header says CMYK: it describes the file's colours, not our RGB pixels.
    fake_cmyk_icc = bytearray(_srgb_icc())
    fake_cmyk_icc[16:20] = b"CMYK"
    src = _save_pil(tmp_path / "c.jpg", cmyk, quality=95, icc_profile=bytes(fake_cmyk_icc))
    img = read_image(src)
    assert img.pixels.shape == (8, 8, 3) and img.icc_profile is None
    with Image.open(src) as im:
        expected = np.asarray(im.convert("RGB"), np.float32) / 255
    assert np.abs(img.pixels - expected).max() <= ONE_8


def test_one_bit_image_is_gray(tmp_path: Path) -> None:
    src = _save_pil(tmp_path / "b.png", Image.fromarray(_u8(4, 4, 1)[..., 0] > 127))
    img = read_image(src)
    assert img.is_gray and set(np.unique(img.pixels)) <= {0.0, 1.0}


# ----------------------------------------------------------------------------------------- orientation


def _asymmetric() -> np.ndarray:
    """4 rows x 6 columns, every pixel different, so any wrong flip or rotation shows."""
    return (np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3).astype(np.uint8)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_all_orientations_match_pillow(tmp_path: Path, orientation: int) -> None:
    src = _save_pil(tmp_path / "o.png", Image.fromarray(_asymmetric()), exif=_exif(orientation))
    img = read_image(src)
    with Image.open(src) as im:
        expected = np.asarray(ImageOps.exif_transpose(im), np.float32) / 255
    assert img.pixels.shape == expected.shape
    assert np.array_equal(img.pixels, expected)
    assert _orientation_of(img.exif) == 1


def test_orientation_6_jpeg_rotates_clockwise(tmp_path: Path) -> None:
    # Red block top-left of a 32x48 white image; orientation 6 = the camera was turned 90 degrees
    # clockwise, so the upright image is 48x32 with the block in the top-right corner.
    arr = np.full((32, 48, 3), 255, np.uint8)
    arr[:16, :16] = (255, 0, 0)
    src = _save_pil(tmp_path / "o6.jpg", Image.fromarray(arr), quality=100, exif=_exif(6))
    img = read_image(src)
    assert img.pixels.shape == (48, 32, 3)
    assert np.allclose(img.pixels[4, 28], [1, 0, 0], atol=0.05)
    assert np.allclose(img.pixels[4, 4], [1, 1, 1], atol=0.05)
    assert _orientation_of(img.exif) == 1
    parsed = Image.Exif()
    assert img.exif is not None
    parsed.load(img.exif)
    assert parsed.get(0x010F) == "TestCam"  # other tags survive the orientation reset


def test_orientation_3_jpeg_rotates_180(tmp_path: Path) -> None:
    arr = np.full((32, 48, 3), 255, np.uint8)
    arr[:16, :16] = (0, 0, 255)
    img = read_image(_save_pil(tmp_path / "o3.jpg", Image.fromarray(arr), quality=100, exif=_exif(3)))
    assert img.pixels.shape == (32, 48, 3)
    assert np.allclose(img.pixels[28, 44], [0, 0, 1], atol=0.05)
    assert _orientation_of(img.exif) == 1


def test_orientation_written_by_us_is_applied_on_read(tmp_path: Path) -> None:
    # A 16-bit PNG (OpenCV decode path) carrying orientation 8 in an eXIf chunk.
    pixels = _u16(4, 6, 3, seed=2).astype(np.float32) / 65535
    out = write_image(tmp_path / "o.png", ImageData(pixels=pixels, alpha=None, bit_depth=16, exif=_exif(8)))
    assert b"eXIf" in _png_chunks(out.read_bytes())
    img = read_image(out)
    assert img.bit_depth == 16 and np.abs(img.pixels - np.rot90(pixels, k=1)).max() <= ONE_16
    assert _orientation_of(img.exif) == 1


def test_orientation_tiff_applied_once(tmp_path: Path) -> None:
    arr8 = _asymmetric()
    src8 = _save_pil(tmp_path / "o8.tiff", Image.fromarray(arr8), exif=_exif(6))
    assert np.array_equal(read_image(src8).pixels, np.rot90(arr8, k=-1).astype(np.float32) / 255)
    # 16-bit RGB goes through OpenCV, whose TIFF decoder applies orientation by itself.
    arr16 = _u16(4, 6, 3, seed=9)
    src16 = tmp_path / "o16.tiff"
    src16.write_bytes(_tiff16_rgb(arr16, orientation=6))
    img = read_image(src16)
    assert img.bit_depth == 16
    assert np.abs(img.pixels * 65535 - np.rot90(arr16, k=-1)).max() < 0.01


# ------------------------------------------------------------------------------------------------- ICC


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".tiff"])
def test_icc_round_trip_8bit(tmp_path: Path, suffix: str) -> None:
    icc = _srgb_icc()
    out = write_image(tmp_path / f"a{suffix}", ImageData(pixels=_smooth(8, 8), alpha=None, icc_profile=icc))
    with Image.open(out) as im:
        assert im.info.get("icc_profile") == icc
    assert read_image(out).icc_profile == icc


def test_icc_round_trip_16bit_png(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    icc = _srgb_icc()
    image = ImageData(pixels=_smooth(8, 8), alpha=None, bit_depth=16, icc_profile=icc)
    out = write_image(tmp_path / "a16.png", image)
    assert _png_chunks(out.read_bytes())[:2] == [b"IHDR", b"iCCP"]
    with Image.open(out) as im:
        assert im.info["icc_profile"] == icc
    back = read_image(out)
    assert back.icc_profile == icc and back.bit_depth == 16
    assert capfd.readouterr() == ("", "")  # neither libpng nor OpenCV complained about the chunk


def test_icc_of_wrong_colour_space_not_embedded(tmp_path: Path) -> None:
    # An RGB profile on gray pixels would be invalid in the file; it is left out.
    out = write_image(
        tmp_path / "g.png",
        ImageData(pixels=_smooth(4, 4)[..., :1].copy(), alpha=None, icc_profile=_srgb_icc()),
    )
    with Image.open(out) as im:
        assert "icc_profile" not in im.info


# ---------------------------------------------------------------------------------------- read errors


def _reason(path: Path, **kwargs: int) -> str:
    with pytest.raises(ImageReadError) as info:
        read_image(path, **kwargs)
    assert info.value.path == path
    return info.value.reason


def test_read_errors_file_system(tmp_path: Path) -> None:
    assert _reason(tmp_path / "missing.png") == "no such file"
    (tmp_path / "dir.png").mkdir()
    assert _reason(tmp_path / "dir.png") == "is a directory"
    (tmp_path / "empty.png").write_bytes(b"")
    assert _reason(tmp_path / "empty.png") == "empty file (0 bytes)"
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.png")
        assert _reason(tmp_path / "fifo.png") == "not a regular file"


def _skip_unless_permissions_enforced(tmp_path: Path) -> None:
    """Root (with CAP_DAC_OVERRIDE) and Windows ignore mode bits; probe rather than guess."""
    probe = tmp_path / "probe"
    probe.write_bytes(b"x")
    probe.chmod(0)
    try:
        probe.read_bytes()
    except PermissionError:
        return
    finally:
        probe.chmod(0o644)
        probe.unlink()
    pytest.skip("file permissions are not enforced for this user")


def test_read_permission_denied(tmp_path: Path) -> None:
    _skip_unless_permissions_enforced(tmp_path)
    src = _save_pil(tmp_path / "a.png", Image.fromarray(_u8(2, 2, 3)))
    src.chmod(0)
    assert _reason(src) == "permission denied"


def test_read_not_an_image(tmp_path: Path) -> None:
    src = tmp_path / "noise.jpg"
    src.write_bytes(np.random.default_rng(0).bytes(4096))
    assert _reason(src) == "not an image (file content is not a recognised image format)"


@pytest.mark.parametrize(("suffix", "fmt"), [(".png", "PNG"), (".jpg", "JPEG")])
def test_read_truncated(tmp_path: Path, suffix: str, fmt: str) -> None:
    buf = io.BytesIO()
    Image.fromarray(_u8(64, 64, 3)).save(buf, fmt)
    src = tmp_path / f"cut{suffix}"
    src.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert _reason(src).startswith(f"truncated or corrupt {fmt} data")


def test_read_truncated_16bit_is_quiet(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    data = cv2.imencode(".png", _u16(64, 64, 3))[1].tobytes()
    src = tmp_path / "cut16.png"
    src.write_bytes(data[: len(data) // 2])
    assert _reason(src).startswith("truncated or corrupt PNG data")
    assert capfd.readouterr() == ("", "")


def _png_with_size(path: Path, width: int, height: int) -> Path:
    """A tiny valid PNG whose IHDR then claims another size (CRC fixed, so only the size is wrong)."""
    buf = io.BytesIO()
    Image.fromarray(_u8(2, 2, 3)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[8:33] = _png_chunk(b"IHDR", ihdr[4:])
    path.write_bytes(bytes(data))
    return path


def test_read_decompression_bomb(tmp_path: Path) -> None:
    src = _png_with_size(tmp_path / "bomb.png", 100_000, 100_000)
    start = time.perf_counter()
    reason = _reason(src)
    assert time.perf_counter() - start < 1.0
    assert "100000x100000" in reason and "10000.0 MP" in reason
    assert "limit of 64 MP" in reason and "max_pixels" in reason


@pytest.mark.parametrize(
    ("pil_limit", "max_pixels"),
    [
        (2000, 3000),  # Pillow would only warn (2500 > 2000): silenced
        (1000, 3000),  # Pillow would refuse (2500 > 2 * 1000): its limit is lifted for this read
        (1000, DEFAULT_MAX_PIXELS),
    ],
)
def test_read_max_pixels_is_ours_not_pillows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pil_limit: int, max_pixels: int
) -> None:
    src = _save_pil(tmp_path / "a.png", Image.fromarray(_u8(50, 50, 3)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pil_limit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(src, max_pixels=max_pixels).pixels.shape == (50, 50, 3)
        reason = _reason(src, max_pixels=2000)
    assert "50x50 = 0.0 MP" in reason and "limit of 0.002 MP" in reason
    assert pil_limit == Image.MAX_IMAGE_PIXELS  # restored


def test_read_animated_gif_refused(tmp_path: Path) -> None:
    frames = [Image.fromarray(_u8(8, 8, 3, seed=s)).convert("P") for s in (1, 2)]
    src = tmp_path / "anim.gif"
    frames[0].save(src, save_all=True, append_images=frames[1:], duration=100)
    assert _reason(src) == "animated images (2 frames) are not supported"


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_read_animated_png_and_webp_refused(tmp_path: Path, fmt: str) -> None:
    frames = [Image.fromarray(_u8(8, 8, 3, seed=s)) for s in (1, 2, 3)]
    src = tmp_path / f"anim.{fmt.lower()}"
    frames[0].save(src, fmt, save_all=True, append_images=frames[1:], duration=100)
    assert _reason(src) == "animated images (3 frames) are not supported"


@pytest.mark.parametrize(("fmt", "suffix"), [("MPO", ".jpg"), ("TIFF", ".tiff")])
def test_multi_picture_files_give_first_picture(tmp_path: Path, fmt: str, suffix: str) -> None:
    # Phone JPEGs often carry extra pictures (MPO): the first is the photo. A TIFF's extra pages
    # are pages of their own: refused, unless the caller accepts the first page alone (with a note).
    first = np.full((16, 16, 3), (250, 10, 10), np.uint8)
    second = np.full((8, 8, 3), (10, 10, 250), np.uint8)
    src = tmp_path / f"multi{suffix}"
    Image.fromarray(first).save(src, fmt, save_all=True, append_images=[Image.fromarray(second)])
    if fmt == "TIFF":
        assert _reason(src) == "is a multi-page TIFF (2 pages); one image file holds one upscaled page"
        img = read_image(src, allow_partial=True)
        assert img.notes == ("first page of 2 upscaled (a multi-page TIFF, --allow-partial)",)
    else:
        img = read_image(src)
        assert img.notes == ()
    assert img.pixels.shape == (16, 16, 3) and img.pixels[8, 8, 0] > 0.9


def test_gray16_and_float_tiff(tmp_path: Path) -> None:
    gray = _u16(5, 6, 1, seed=11)[..., 0]
    src = _save_pil(tmp_path / "g16.tiff", Image.fromarray(gray))
    img = read_image(src)
    assert img.is_gray and img.bit_depth == 16
    assert np.abs(img.pixels[..., 0] * 65535 - gray).max() < 0.01
    back = read_image(write_image(tmp_path / "out.tiff", img))
    assert back.is_gray and back.bit_depth == 16 and np.abs(back.pixels - img.pixels).max() <= ONE_16
    values = np.array([[-0.5, 0.25], [0.75, 3.0]], np.float32)
    img = read_image(_save_pil(tmp_path / "f.tiff", Image.fromarray(values)))
    assert img.bit_depth == 16 and np.allclose(img.pixels[..., 0], [[0, 0.25], [0.75, 1]])


def test_broken_exif_does_not_cost_the_image(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    garbage = b"Exif\x00\x00II*\x00\xff\xff\xff\x7f" + bytes(20)
    src = _save_pil(tmp_path / "e.jpg", Image.fromarray(_u8(8, 8, 3)), exif=garbage)
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's "Corrupt EXIF data" warning must not escape
        assert read_image(src).pixels.shape == (8, 8, 3)
    assert capfd.readouterr() == ("", "")


def test_read_non_ascii_path(tmp_path: Path) -> None:
    folder = tmp_path / "fotos ü 图"
    bgr = _u16(3, 4, 3)
    image = ImageData(pixels=bgr[..., ::-1].astype(np.float32) / 65535, alpha=None, bit_depth=16)
    out = write_image(folder / "bild é.png", image)
    back = read_image(out)
    assert back.bit_depth == 16 and np.abs(back.pixels - image.pixels).max() <= ONE_16


# ----------------------------------------------------------------------------------------------- write


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_refuses_overwrite_unless_asked(tmp_path: Path) -> None:
    target = tmp_path / "a.png"
    first = ImageData(pixels=np.zeros((2, 2, 3), np.float32), alpha=None)
    write_image(target, first)
    with pytest.raises(ImageWriteError, match="already exists; pass overwrite=True"):
        write_image(target, first.replace(pixels=np.ones((2, 2, 3), np.float32)))
    assert read_image(target).pixels.max() == 0.0
    write_image(target, first.replace(pixels=np.ones((2, 2, 3), np.float32)), overwrite=True)
    assert read_image(target).pixels.min() == 1.0
    assert _leftovers(tmp_path) == ["a.png"]


def test_write_creates_parents_and_uses_fmt(tmp_path: Path) -> None:
    image = ImageData(pixels=_smooth(4, 4), alpha=None)
    out = write_image(tmp_path / "x" / "y" / "out.bin", image, fmt="png")
    assert out.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ImageWriteError, match="unknown output suffix"):
        write_image(tmp_path / "out.bin", image)
    with pytest.raises(ImageWriteError, match="cannot write 'bmp'"):
        write_image(tmp_path / "out.bmp", image)
    with pytest.raises(ImageWriteError, match="quality"):
        write_image(tmp_path / "out.jpg", image, quality=0)
    (tmp_path / "d.png").mkdir()
    with pytest.raises(ImageWriteError, match="is a directory"):
        write_image(tmp_path / "d.png", image, overwrite=True)


def test_write_failure_mid_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a.png"
    old = ImageData(pixels=np.zeros((4, 4, 3), np.float32), alpha=None)
    write_image(target, old)
    before = target.read_bytes()

    def disk_full(fd: int, data: bytes) -> None:
        os.write(fd, data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(imageio_write, "_write_all", disk_full)
    with pytest.raises(ImageWriteError) as info:
        write_image(target, old.replace(pixels=np.ones((4, 4, 3), np.float32)), overwrite=True)
    assert info.value.path == target and info.value.reason == "no space left on device"
    assert _leftovers(tmp_path) == ["a.png"] and target.read_bytes() == before


def test_write_encoder_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> bytes:
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(imageio_write, "_encode", broken)
    with pytest.raises(ImageWriteError, match="encoder exploded"):
        write_image(tmp_path / "a.png", ImageData(pixels=np.zeros((2, 2, 3), np.float32), alpha=None))
    assert _leftovers(tmp_path) == []


def test_write_does_not_clobber_file_that_appears_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "a.png"
    real_encode = imageio_write._encode

    def racing_encode(*args: object) -> bytes:
        target.write_bytes(b"someone else's")  # another process wins the race during encoding
        return real_encode(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(imageio_write, "_encode", racing_encode)
    with pytest.raises(ImageWriteError, match="already exists"):
        write_image(target, ImageData(pixels=np.zeros((2, 2, 3), np.float32), alpha=None))
    assert target.read_bytes() == b"someone else's" and _leftovers(tmp_path) == ["a.png"]


def test_write_read_only_directory(tmp_path: Path) -> None:
    _skip_unless_permissions_enforced(tmp_path)
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(ImageWriteError, match="permission denied"):
            write_image(folder / "a.png", ImageData(pixels=np.zeros((2, 2, 3), np.float32), alpha=None))
        assert _leftovers(folder) == []
    finally:
        folder.chmod(0o755)


def test_write_clips_out_of_range_and_nan(tmp_path: Path) -> None:
    pixels = np.array([[[-0.5, 1.5, np.nan], [0.5, 2.0, -1.0]]], np.float32)
    out = write_image(tmp_path / "a.png", ImageData(pixels=pixels, alpha=None))
    with Image.open(out) as im:
        assert np.asarray(im).tolist() == [[[0, 255, 0], [128, 255, 0]]]


def test_jpeg_composites_alpha_onto_white(tmp_path: Path) -> None:
    pixels = np.zeros((16, 32, 3), np.float32)
    pixels[..., 0] = 1.0  # red everywhere, including under the transparent half
    alpha = np.ones((16, 32), np.float32)
    alpha[:, :16] = 0.0
    out = write_image(tmp_path / "a.jpg", ImageData(pixels=pixels, alpha=alpha))
    back = read_image(out)
    assert back.alpha is None
    assert np.allclose(back.pixels[8, 4], [1, 1, 1], atol=0.03)
    assert np.allclose(back.pixels[8, 28], [1, 0, 0], atol=0.03)


def test_exif_written_and_read_back(tmp_path: Path) -> None:
    for suffix in (".jpg", ".png", ".webp"):
        out = write_image(tmp_path / f"e{suffix}", ImageData(pixels=_smooth(4, 4), alpha=None, exif=_exif(1)))
        back = read_image(out)
        assert _orientation_of(back.exif) == 1


# ------------------------------------------------------------------------------------- fill_transparent


def test_fill_transparent_uses_neighbour_colour() -> None:
    h, w = 24, 40
    pixels = np.zeros((h, w, 3), np.float32)  # black under the transparent part: the fringe source
    pixels[:, :12] = (1.0, 0.0, 0.0)
    pixels[:, 28:] = (0.0, 0.0, 1.0)
    alpha = np.zeros((h, w), np.float32)
    alpha[:, :12] = 1.0
    alpha[:, 28:] = 0.6
    original = pixels.copy()
    filled = fill_transparent(pixels, alpha)
    assert np.array_equal(pixels, original)  # input untouched
    visible = alpha >= 1 / 255
    assert np.array_equal(filled[visible], pixels[visible])
    hole = filled[:, 12:28]
    assert (hole.sum(axis=-1) > 0.9).all()  # nothing stays black
    assert filled[10, 12, 0] > 0.8 and filled[10, 12, 2] < 0.2  # next to red: red
    assert filled[10, 27, 2] > 0.8 and filled[10, 27, 0] < 0.2  # next to blue: blue


def test_fill_transparent_gray_and_edge_cases() -> None:
    pixels = np.zeros((9, 7, 1), np.float32)
    pixels[4, 3] = 0.7
    alpha = np.zeros((9, 7), np.float32)
    alpha[4, 3] = 1.0
    filled = fill_transparent(pixels, alpha)
    assert filled.shape == (9, 7, 1) and np.allclose(filled, 0.7, atol=1e-5)
    # Nothing visible: nothing to copy from, so unchanged.
    assert np.array_equal(fill_transparent(pixels, np.zeros((9, 7), np.float32)), pixels)
    # Nothing transparent: unchanged.
    assert np.array_equal(fill_transparent(pixels, np.ones((9, 7), np.float32)), pixels)


@pytest.mark.parametrize("channels", [1, 3, 4], ids=["gray", "rgb", "rgba"])
def test_png_compression_level_changes_size_not_pixels(tmp_path: Path, channels: int) -> None:
    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 1, 64 * 48 * channels, dtype=np.float32).reshape(48, 64, channels)
    noisy = np.clip(smooth + rng.normal(0, 0.02, smooth.shape).astype(np.float32), 0, 1)
    image = ImageData(noisy[..., :3] if channels == 4 else noisy, noisy[..., 3] if channels == 4 else None)
    fast = write_image(tmp_path / "fast.png", image, png_compression=0)
    small = write_image(tmp_path / "small.png", image, png_compression=9)
    assert fast.stat().st_size > small.stat().st_size
    a, b = read_image(fast), read_image(small)
    assert np.array_equal(a.pixels, b.pixels) and np.allclose(a.pixels, np.rint(image.pixels * 255) / 255)
    assert (a.alpha is None) == (channels != 4) and a.is_gray == (channels == 1)
    with pytest.raises(ImageWriteError, match="between 0 and 9"):
        write_image(tmp_path / "bad.png", image, png_compression=10)
