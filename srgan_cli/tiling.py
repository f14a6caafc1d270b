"""Tiled inference shared by every backend: a pure function of arrays (torch tensors or numpy)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import numpy as np

Array = TypeVar("Array")  # torch.Tensor or np.ndarray, shaped (N, C, H, W)


def _spans(length: int, tile: int) -> list[tuple[int, int]]:
    """Split [0, length) into ceil(length / tile) nearly equal spans (no sliver at the end)."""
    n = max(1, math.ceil(length / tile))
    edges = [round(i * length / n) for i in range(n + 1)]
    return [(edges[i], edges[i + 1]) for i in range(n)]


def tile_grid(height: int, width: int, tile: int) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of every tile; tile <= 0 means one tile for the whole image."""
    if tile <= 0:
        return [(0, height, 0, width)]
    return [(y0, y1, x0, x1) for y0, y1 in _spans(height, tile) for x0, x1 in _spans(width, tile)]


def _zeros_like(sample: Array, shape: tuple[int, ...]) -> Array:
    if isinstance(sample, np.ndarray):
        return np.zeros(shape, dtype=sample.dtype)  # type: ignore[return-value]
    return sample.new_zeros(shape)  # type: ignore[attr-defined]


def tiled_apply(
    x: Array,
    fn: Callable[[Array], Array],
    scale: int,
    tile: int = 0,
    pad: int = 16,
) -> Array:
    """Apply an upscaling `fn` ((N, C, h, w) -> (N, C', s*h, s*w)) to `x` tile by tile.

    Each tile is cut from `x` with `pad` extra LR pixels on every side that exists (image borders
    get the model's own zero padding, exactly as in an untiled pass), upscaled, and the padded
    margin is cropped away before the tile is pasted into the output. When `pad` is at least the
    model's receptive radius, the result equals the untiled result up to float rounding.
    """
    n, _c, height, width = x.shape  # type: ignore[attr-defined]
    grid = tile_grid(height, width, tile)
    if len(grid) == 1:
        return fn(x)
    out = None
    for y0, y1, x0, x1 in grid:
        py0, py1 = max(y0 - pad, 0), min(y1 + pad, height)
        px0, px1 = max(x0 - pad, 0), min(x1 + pad, width)
        result = fn(x[:, :, py0:py1, px0:px1])  # type: ignore[index]
        if out is None:
            out = _zeros_like(result, (n, result.shape[1], height * scale, width * scale))  # type: ignore[attr-defined]
        oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
        out[:, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = result[  # type: ignore[index]
            :, :, oy : oy + (y1 - y0) * scale, ox : ox + (x1 - x0) * scale
        ]
    return out  # type: ignore[return-value]


def pick_tile(free_bytes: int, bytes_per_lr_pixel: float, *, budget: float = 0.5, minimum: int = 64) -> int:
    """Largest square LR tile whose activations fit in `budget` of the free memory."""
    side = int(math.sqrt(max(free_bytes * budget, 0) / max(bytes_per_lr_pixel, 1.0)))
    return max(minimum, side // 8 * 8)
