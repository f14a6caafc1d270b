"""The upscaler interface every backend implements, and whole-image handling on top of any of them:
gray and alpha, `--outscale` resampling, and `Rescaled` for scoring at another scale."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import cv2
import numpy as np

from ..errors import ArgumentError, ArgumentTypeError, SrganError
from ..imageio import ImageData, fill_transparent
from .progress import PassCancelled, part


class Upscaler(Protocol):
    """(H, W, 3) float32 in [0, 1] -> (scale*H, scale*W, 3) float32 in [0, 1]."""

    backend: str
    scale: int

    def __call__(self, pixels: np.ndarray) -> np.ndarray: ...


def resample(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """High-quality resize of (H, W, C) float32: area averaging down, Lanczos up."""
    h, w = pixels.shape[:2]
    if (w, h) == (width, height):
        return pixels
    interp = cv2.INTER_AREA if width < w and height < h else cv2.INTER_LANCZOS4
    out = cv2.resize(pixels, (width, height), interpolation=interp)
    if out.ndim == 2:  # cv2 drops a single channel axis
        out = out[..., None]
    return np.clip(out, 0.0, 1.0)


MIN_TILE_SIDE = 16  # smaller tiles are all overlap: --tile takes 0, auto or at least this


def check_outscale(outscale: Any) -> float | None:
    """`outscale` as a float: None, or a finite number above 0 (ArgumentError otherwise)."""
    if outscale is None:
        return None
    if isinstance(outscale, bool) or not isinstance(outscale, (int, float)):
        raise ArgumentTypeError(f"outscale is a number, not {type(outscale).__name__}")
    if not math.isfinite(outscale) or outscale <= 0:
        raise ArgumentError(f"outscale must be a finite number above 0, got {outscale}")
    return float(outscale)


def check_tiling(tile: Any, tile_pad: Any) -> None:
    """A tile side (None: auto, 0: whole image, or >= MIN_TILE_SIDE) and a tile pad (None: from the
    model, or >= 0), both whole numbers; ArgumentError/ArgumentTypeError otherwise."""
    for name, value in (("tile", tile), ("tile_pad", tile_pad)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ArgumentTypeError(f"{name} is a whole number, not {type(value).__name__} {value!r}")
    if tile is not None and (tile < 0 or 0 < tile < MIN_TILE_SIDE):
        raise ArgumentError(
            f"tile must be 0 (whole image), auto or at least {MIN_TILE_SIDE} pixels, got {tile}"
        )
    if tile_pad is not None and tile_pad < 0:
        raise ArgumentError(f"tile_pad must be 0 or more pixels, got {tile_pad}")


def check_max_pixels(megapixels: Any, name: str = "max_output_megapixels") -> int:
    """A megapixel limit (finite, above 0) as a pixel count."""
    if isinstance(megapixels, bool) or not isinstance(megapixels, (int, float)):
        raise ArgumentTypeError(f"{name} is a number, not {type(megapixels).__name__}")
    if not math.isfinite(megapixels) or megapixels <= 0:
        raise ArgumentError(f"{name} must be a finite number above 0, got {megapixels}")
    return max(1, int(megapixels * 1e6))


def scaled_size(width: int, height: int, scale: int, outscale: float | None) -> tuple[int, int]:
    """(width, height) of a result: the model's scale, or exactly `outscale` times the input."""
    factor = scale if outscale is None else outscale
    return max(1, round(width * factor)), max(1, round(height * factor))


def output_size(image: ImageData, scale: int, outscale: float | None) -> tuple[int, int]:
    return scaled_size(image.width, image.height, scale, outscale)


def at_model_scale(upscaler: Upscaler, width: int, height: int, outscale: float | None) -> bool:
    """Whether the result is the model's own output, with no resample after it."""
    return outscale is None or scaled_size(width, height, upscaler.scale, outscale) == scaled_size(
        width, height, upscaler.scale, None
    )


def takes_u8_path(upscaler: Upscaler, image: ImageData, outscale: float | None) -> bool:
    """Whether the upscaler rounds this image's result to bytes itself (`upscale_u8`): an 8-bit RGB
    image without alpha, at the model's own scale."""
    return (
        hasattr(upscaler, "upscale_u8")
        and image.bit_depth == 8
        and not image.is_gray
        and image.alpha is None
        and at_model_scale(upscaler, image.width, image.height, outscale)
    )


def images_per_pass(upscaler: Upscaler, outscale: float | None, asked: int = 0) -> int:
    """How many images of one size go through the model together: `asked` where the upscaler can
    batch (upscale_u8_batch, at the model's scale), else 4 on a GPU (small images then keep it
    busy) and 1 elsewhere; 1 for an upscaler that cannot."""
    if not hasattr(upscaler, "upscale_u8_batch") or outscale not in (None, float(upscaler.scale)):
        return 1
    if asked:
        return asked
    return 4 if getattr(getattr(upscaler, "device", None), "type", "cpu") == "cuda" else 1


def upscale_same_size(
    upscaler: Upscaler,
    images: Sequence[ImageData | None],
    outscale: float | None,
    max_pixels: int | None,
    before: Callable[[list[int]], None] | None = None,
) -> dict[int, ImageData]:
    """The 8-bit RGB images (at the model's scale) of the first such image's size, upscaled in one
    pass of the model (upscale_u8_batch), by index. Empty when fewer than two qualify or when they
    fail together (too big, out of memory, a bad output): the caller then runs each on its own,
    as upscale_image would, and each failure is that image's. `before` is told the indices first."""
    if not hasattr(upscaler, "upscale_u8_batch"):
        return {}
    ready = [
        (i, im) for i, im in enumerate(images) if im is not None and takes_u8_path(upscaler, im, outscale)
    ]
    together = [(i, im) for i, im in ready if im.pixels.shape == ready[0][1].pixels.shape] if ready else []
    if len(together) < 2:
        return {}
    try:
        for _, im in together:  # the output limit, per image, before any work
            check_output_size(im.width * upscaler.scale, im.height * upscaler.scale, max_pixels)
        if before is not None:
            before([i for i, _ in together])
        pixels = upscaler.upscale_u8_batch([im.pixels for _, im in together])  # type: ignore[attr-defined]
    except PassCancelled:
        raise
    except (SrganError, MemoryError):
        return {}
    return {i: im.replace(pixels=out) for (i, im), out in zip(together, pixels, strict=True)}


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels as they are; floats in [0, 1] rounded as write_image rounds them."""
    return pixels if pixels.dtype == np.uint8 else np.rint(np.clip(pixels, 0, 1) * 255).astype(np.uint8)


DEFAULT_MAX_OUTPUT_PIXELS = 400_000_000  # 400 MP: e.g. a 20000x20000 result, about 1.2 GB as bytes


class OutputTooLarge(SrganError):
    """A result bigger than the output limit (refused before any work)."""


def check_output_size(width: int, height: int, max_pixels: int | None) -> None:
    """Refuse a result of width x height above `max_pixels` (None: no limit), before allocating it."""
    if max_pixels is not None and width * height > max_pixels:
        raise OutputTooLarge(
            f"the result would be {width}x{height} ({_mp(width * height)} MP), above the limit of "
            f"{_mp(max_pixels)} MP",
            hint="raise --max-output-megapixels, or ask for less with --outscale",
        )


def _mp(pixels: float) -> str:
    megapixels = pixels / 1e6
    return f"{megapixels:,.0f}" if megapixels >= 10 else f"{megapixels:.2g}"


def upscale_image(
    upscaler: Upscaler, image: ImageData, outscale: float | None = None, *, max_pixels: int | None = None
) -> ImageData:
    """Upscale one image with any backend; a result above `max_pixels` is refused before any work.

    Grayscale goes through the RGB model as three equal channels and comes back as one channel.
    Alpha is upscaled on its own, as a gray image through the same model; before that, the colour
    hidden under transparent pixels is replaced by that of their visible neighbours, so it cannot
    bleed into the edges (the black fringe of naive RGBA upscaling).

    The common case, an 8-bit RGB image without alpha at the model's own scale, is rounded to
    8 bits by the upscaler itself where it can (`upscale_u8`: on the device) and comes back as
    uint8 pixels, which write_image writes as they are: the same file, without a float32 copy
    of the result on the host.
    """
    check_output_size(*output_size(image, upscaler.scale, outscale), max_pixels)
    check_output_size(image.width * upscaler.scale, image.height * upscaler.scale, max_pixels)  # the model's
    if takes_u8_path(upscaler, image, outscale):
        return image.replace(pixels=upscaler.upscale_u8(image.pixels))  # type: ignore[attr-defined]
    if image.pixels.dtype == np.uint8:  # the float path below works in [0, 1]
        image = image.replace(pixels=image.pixels.astype(np.float32) / 255.0)
    rgb = np.repeat(image.pixels, 3, axis=2) if image.is_gray else image.pixels
    alpha = image.alpha
    opaque = alpha is None or float(alpha.min()) >= 1.0
    if alpha is not None and not opaque:
        rgb = fill_transparent(rgb, alpha)
    passes = 2 if alpha is not None and not opaque else 1  # progress: the colour, then the alpha
    with part(0, passes):
        out = upscaler(rgb)
    if image.is_gray:
        out = out.mean(axis=2, keepdims=True)
    out_alpha = None
    if alpha is not None:
        if opaque:  # fully opaque: nothing to upscale
            out_alpha = np.ones(out.shape[:2], dtype=np.float32)
        else:
            with part(1, passes):
                out_alpha = upscaler(np.repeat(alpha[..., None], 3, axis=2)).mean(axis=2)
    width, height = output_size(image, upscaler.scale, outscale)
    out = resample(out, width, height)
    if out_alpha is not None:
        out_alpha = resample(out_alpha[..., None], width, height)[..., 0]
    return image.replace(pixels=out.astype(np.float32), alpha=out_alpha)


class Rescaled:
    """An upscaler brought to another scale the way `srgan upscale -s N` does it: the model's own
    pass, then a resample to exactly N times the input (for `srgan eval --scale`)."""

    def __init__(self, upscaler: Upscaler, scale: int) -> None:
        self.inner, self.scale, self.backend = upscaler, scale, upscaler.backend

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return upscale_image(self.inner, ImageData(pixels, None), float(self.scale)).pixels
