"""What every backend shares: the upscaler interface and whole-image handling (gray, alpha, outscale)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import cv2
import numpy as np

from ..errors import OutOfMemory
from ..imageio import ImageData, fill_transparent
from ..tiling import pick_tile

T = TypeVar("T")
MIN_TILE = 32  # the smallest tile an out-of-memory retry goes down to


class Upscaler(Protocol):
    """(H, W, 3) float32 in [0, 1] -> (scale*H, scale*W, 3) float32 in [0, 1]."""

    backend: str
    scale: int

    def __call__(self, pixels: np.ndarray) -> np.ndarray: ...


ENSEMBLE_SIZES = (1, 2, 4, 8)
# (quarter turns, mirror) of each pass, in the order the smaller ensembles take them: 2 adds the
# mirror image, 4 the two other shape-keeping ones (upside down, both), 8 the four transposed ones
_DIHEDRAL = ((0, False), (0, True), (2, False), (2, True), (1, False), (1, True), (3, False), (3, True))


def _forward_view(pixels: np.ndarray, turns: int, mirror: bool) -> np.ndarray:
    out = np.rot90(pixels, turns, axes=(0, 1))
    return out[:, ::-1] if mirror else out


def _inverse_view(pixels: np.ndarray, turns: int, mirror: bool) -> np.ndarray:
    out = pixels[:, ::-1] if mirror else pixels
    return np.rot90(out, -turns, axes=(0, 1))


class SelfEnsemble:
    """Geometric self-ensemble (test-time augmentation) around any upscaler.

    Each pass upscales a mirrored and/or rotated copy of the image, undoes the transform on the
    result and the passes are averaged: `passes` times the time for a small gain in PSNR on
    PSNR-trained weights (Lim et al. 2017, EDSR's "+" models; see docs/usage.md for what it does
    to ours). On GAN weights the average also smooths their generated texture. 2 and 4 passes keep
    the image's shape (for backends that compiled one), 8 also transposes it.
    """

    def __init__(self, upscaler: Upscaler, passes: int = 8) -> None:
        if passes not in ENSEMBLE_SIZES:
            sizes = ", ".join(map(str, ENSEMBLE_SIZES))
            raise ValueError(f"a self-ensemble has {sizes} passes, not {passes}")
        self.inner, self.passes = upscaler, passes
        self.backend, self.scale = upscaler.backend, upscaler.scale

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        total: np.ndarray | None = None
        for turns, mirror in _DIHEDRAL[: self.passes]:
            view = np.ascontiguousarray(_forward_view(pixels, turns, mirror))
            out = _inverse_view(self.inner(view), turns, mirror)
            if total is None:
                total = out.astype(np.float32, copy=True)
            else:
                total += out
        assert total is not None
        if self.passes > 1:
            total /= self.passes
        return np.ascontiguousarray(total)


def auto_tile(free_bytes: int, height: int, width: int, *, scale: int, n_feats: int, elem_bytes: int) -> int:
    """The LR tile side for `--tile auto`: 0 (whole image) when it fits in half of `free_bytes`.

    Peak activation memory per LR pixel of an SRResNet pass sits around the last x2 upsample:
    4*F channels at (s/2)^2 pixels per LR pixel for the conv output plus the next map of about the
    same size, with a 2x margin for the allocator.
    """
    per_pixel = elem_bytes * n_feats * (4 * (scale / 2) ** 2 + scale**2) * 2.0
    side = pick_tile(free_bytes, per_pixel, minimum=MIN_TILE)
    return 0 if max(height, width) <= side else side


def shrink_on_oom(
    attempt: Callable[[int], T],
    tile: int,
    full_side: int,
    is_oom: Callable[[BaseException], bool],
    where: str,
    cleanup: Callable[[], None] = lambda: None,
) -> tuple[T, int]:
    """Run `attempt(tile)`; on out-of-memory halve the tile (0 = whole image) and retry, down to
    MIN_TILE. Returns the result and the tile side that worked."""
    while True:
        try:
            return attempt(tile), tile
        except Exception as exc:
            if not is_oom(exc):
                raise
            cleanup()
            current = tile if tile > 0 else full_side
            if current <= MIN_TILE:
                raise OutOfMemory(f"out of memory on {where} even with {MIN_TILE}px tiles") from exc
            tile = max(MIN_TILE, current // 2)


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


def output_size(image: ImageData, scale: int, outscale: float | None) -> tuple[int, int]:
    """(width, height) of the result: the model's scale, or exactly `outscale` times the input."""
    factor = scale if outscale is None else outscale
    return max(1, round(image.width * factor)), max(1, round(image.height * factor))


def upscale_image(upscaler: Upscaler, image: ImageData, outscale: float | None = None) -> ImageData:
    """Upscale one image with any backend.

    Grayscale goes through the RGB model as three equal channels and comes back as one channel.
    Alpha is upscaled on its own, as a gray image through the same model; before that, the colour
    hidden under transparent pixels is replaced by that of their visible neighbours, so it cannot
    bleed into the edges (the black fringe of naive RGBA upscaling).
    """
    rgb = np.repeat(image.pixels, 3, axis=2) if image.is_gray else image.pixels
    alpha = image.alpha
    opaque = alpha is None or float(alpha.min()) >= 1.0
    if alpha is not None and not opaque:
        rgb = fill_transparent(rgb, alpha)
    out = upscaler(rgb)
    if image.is_gray:
        out = out.mean(axis=2, keepdims=True)
    out_alpha = None
    if alpha is not None:
        if opaque:  # fully opaque: nothing to upscale
            out_alpha = np.ones(out.shape[:2], dtype=np.float32)
        else:
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
