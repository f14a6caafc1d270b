"""Tiles, for every backend: the tile grid and tiled inference (pure functions of torch tensors or
numpy arrays), and the tile policy: the side `--tile auto` picks from free memory, and the smaller
tiles an out-of-memory retry falls back to."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from ..errors import OutOfMemory
from .progress import tile_sink

Array = TypeVar("Array")  # torch.Tensor or np.ndarray, shaped (N, C, H, W)
T = TypeVar("T")


def _spans(length: int, tile: int, align: int = 1) -> list[tuple[int, int]]:
    """Split [0, length) into ceil(length / tile) nearly equal spans (no sliver at the end), each
    starting at a multiple of `align` (a window-attention model's window, a pixel-unshuffle's
    factor: tiles then cut the image where the whole-image pass cuts it into windows)."""
    if align <= 1:
        n = max(1, math.ceil(length / tile))
        edges = [round(i * length / n) for i in range(n + 1)]
        return [(edges[i], edges[i + 1]) for i in range(n)]
    units = math.ceil(length / align)
    n = max(1, min(units, math.ceil(length / max(tile, align))))
    starts = [round(i * units / n) * align for i in range(n)]
    return [(a, b) for a, b in zip(starts, [*starts[1:], length], strict=True)]


def tile_grid(height: int, width: int, tile: int, align: int = 1) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of every tile; tile <= 0 means one tile for the whole image."""
    if tile <= 0:
        return [(0, height, 0, width)]
    rows, cols = _spans(height, tile, align), _spans(width, tile, align)
    return [(y0, y1, x0, x1) for y0, y1 in rows for x0, x1 in cols]


def _zeros_like(sample: Array, shape: tuple[int, ...]) -> Array:
    if isinstance(sample, np.ndarray):
        return np.zeros(shape, dtype=sample.dtype)  # type: ignore[return-value]
    return sample.new_zeros(shape)  # type: ignore[attr-defined]


def _concat(parts: list[Array]) -> Array:
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts, axis=0)  # type: ignore[return-value]
    import torch

    return torch.cat(parts, dim=0)  # type: ignore[return-value, arg-type]


def tiled_apply(
    x: Array,
    fn: Callable[[Array], Array],
    scale: int,
    tile: int = 0,
    pad: int | Callable[[], int] = 16,
    *,
    batch: int = 1,
    align: int = 1,
) -> Array:
    """Apply an upscaling `fn` ((N, C, h, w) -> (N, C', s*h, s*w)) to `x` tile by tile.

    Each tile is cut from `x` with `pad` extra LR pixels on every side that exists (image borders
    get the model's own zero padding, exactly as in an untiled pass), upscaled, and the padded
    margin is cropped away before the tile is pasted into the output. When `pad` is at least the
    model's receptive radius, the result equals the untiled result up to float rounding.

    `pad` may be a function giving it (a measured receptive radius, `measure_tile_pad`): it is only
    asked for when the image is cut into more than one tile. With `align` > 1, tiles and their pads
    start at multiples of `align` (tile_grid), so that a window-attention model sees the windows
    the whole-image pass sees.

    Padded tiles of the same shape (all interior tiles, usually) go through `fn` together, up to
    `batch` at a time, stacked along N: fewer, larger calls for a GPU.

    With a progress sink set (runtime/progress.py), each batch of tiles reports the LR pixels done
    so far, times N, out of height * width * N.
    """
    n, _c, height, width = x.shape  # type: ignore[attr-defined]
    grid = tile_grid(height, width, tile, align)
    sink = tile_sink()
    total = n * height * width
    if len(grid) == 1:
        out = fn(x)
        if sink is not None:
            sink(total, total)
        return out
    pad = pad() if callable(pad) else pad
    pad = -(-pad // max(align, 1)) * max(align, 1)
    groups: dict[tuple[int, int], list[tuple[int, ...]]] = {}
    for y0, y1, x0, x1 in grid:
        py0, py1 = max(y0 - pad, 0), min(y1 + pad, height)
        px0, px1 = max(x0 - pad, 0), min(x1 + pad, width)
        groups.setdefault((py1 - py0, px1 - px0), []).append((y0, y1, x0, x1, py0, py1, px0, px1))
    out = None
    step = max(1, batch)
    done = 0
    for items in groups.values():
        for i in range(0, len(items), step):
            chunk = items[i : i + step]
            result = fn(_concat([x[:, :, t[4] : t[5], t[6] : t[7]] for t in chunk]))  # type: ignore[index]
            if out is None:
                out = _zeros_like(result, (n, result.shape[1], height * scale, width * scale))  # type: ignore[attr-defined]
            for j, (y0, y1, x0, x1, py0, _py1, px0, _px1) in enumerate(chunk):
                oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
                out[:, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = result[  # type: ignore[index]
                    j * n : (j + 1) * n, :, oy : oy + (y1 - y0) * scale, ox : ox + (x1 - x0) * scale
                ]
                done += n * (y1 - y0) * (x1 - x0)
            if sink is not None:
                sink(done, total)
    return out  # type: ignore[return-value]


def fixed_window_apply(
    x: np.ndarray,
    fn: Callable[[np.ndarray], np.ndarray],
    scale: int,
    window: tuple[int, int],
    pad: int = 16,
) -> np.ndarray:
    """`tiled_apply` for a model that only takes inputs of one shape `window` (H, W).

    Every call of `fn` gets a full window cut from inside the image: a window that would cross an
    image border is shifted inward instead of padded, so pixels at the image border still see the
    model's own zero padding, as in an untiled pass. Only the central tile of each window (`pad`
    pixels of context kept on inner sides) is used. An image smaller than the window is edge-padded
    up to it first (the only approximation, and only for such small images).
    """
    n, _c, height, width = x.shape
    wh, ww = window
    ph, pw = max(0, wh - height), max(0, ww - width)
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge")
    full_h, full_w = x.shape[-2:]
    pad = max(0, min(pad, (min(wh, ww) - 8) // 2))
    th, tw = wh - 2 * pad, ww - 2 * pad
    out = None
    sink, done, total = tile_sink(), 0, n * height * width
    rows = _spans(full_h, th) if full_h > wh else [(0, full_h)]
    cols = _spans(full_w, tw) if full_w > ww else [(0, full_w)]
    for y0, y1 in rows:
        for x0, x1 in cols:
            wy = min(max(y0 - pad, 0), full_h - wh)
            wx = min(max(x0 - pad, 0), full_w - ww)
            result = fn(x[:, :, wy : wy + wh, wx : wx + ww])
            if out is None:
                out = np.zeros((n, result.shape[1], full_h * scale, full_w * scale), dtype=result.dtype)
            oy, ox = (y0 - wy) * scale, (x0 - wx) * scale
            out[:, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = result[
                :, :, oy : oy + (y1 - y0) * scale, ox : ox + (x1 - x0) * scale
            ]
            if sink is not None:  # the part inside the image (edge padding is not counted)
                done += n * max(0, min(y1, height) - y0) * max(0, min(x1, width) - x0)
                sink(done, total)
    assert out is not None
    return out[:, :, : height * scale, : width * scale]


# What "tiled equals untiled" means: tiles may differ from the whole image by at most this much
# (0..1 scale) on the measuring probe, a third of one 8-bit grey level: rounding to 8 bits then
# changes a pixel by one level at most, and rarely.
TILE_TOLERANCE = 1 / (3 * 255)
PROBE_SIDES = (24, 48, 96)  # LR sides of the probe's cut, tried in turn until the reach fits in 3/4
PRACTICAL_PAD = 64  # the pad a model gets when no probe side bounds its reach (tiles then differ)


@dataclass(frozen=True)
class TilePad:
    """The tile pad a model needs: `pad` LR pixels of context around each tile, and whether tiles
    with it match the whole image (`exact`, to TILE_TOLERANCE); `max_diff` is the largest
    difference measured beyond `pad` (0..1 scale), `radius` how far a cut was seen to reach."""

    pad: int
    exact: bool
    max_diff: float
    radius: int

    def to_dict(self) -> dict[str, Any]:
        return {"pad": self.pad, "exact": self.exact, "max_diff": self.max_diff, "radius": self.radius}


def _cut_profile(fn: Callable[[Any], Any], x: Any, cut: int, scale: int) -> np.ndarray:
    """How much cutting the probe `x` (1, C, N, N) down to a `cut` x `cut` corner changes the
    output, by LR distance from the cut: profile[k] is the largest change (after clamping to [0, 1],
    as written) of any output pixel whose LR pixel lies k pixels inside the cut. Both the top-left
    corner (cut on its bottom and right) and the bottom-right one (cut on its top and left, which
    also moves the image's origin, as a tile does: window grids and pixel-unshuffle blocks show)."""
    n, s = x.shape[-1], scale
    full = fn(x).float().clamp(0, 1)
    off = n - cut
    parts = [(fn(x[..., :cut, :cut].contiguous()), full[..., : cut * s, : cut * s]),
             (fn(x[..., off:, off:].contiguous()), full[..., off * s :, off * s :])]  # fmt: skip
    profile = np.zeros(cut, dtype=np.float64)
    for flip, (part, whole) in enumerate(parts):
        diff = (whole - part.float().clamp(0, 1)).abs().nan_to_num(nan=1.0).amax(dim=(0, 1))
        diff = diff.reshape(cut, s, cut, s).amax(dim=(1, 3)).cpu().numpy()  # per LR pixel
        if flip:  # distances from the top-left cut: the same indexing as from a bottom-right one
            diff = diff[::-1, ::-1]
        for k in range(cut):  # the L of LR pixels k inside both cut edges
            edge = cut - 1 - k
            profile[k] = max(
                profile[k], float(diff[edge, : edge + 1].max()), float(diff[: edge + 1, edge].max())
            )
    return profile


def _probe(side: int, generator: Any) -> Any:
    """(1, 3, side, side) in [0, 1]: uniform noise over a ramp that brightens towards the bottom
    right, so that a cut corner also differs from the whole in its mean (what global pooling or
    channel attention sees) and not only in its edge."""
    import torch

    ramp = torch.linspace(0, 1, side)
    ramp = (ramp[:, None] + ramp[None, :]) / 2
    return (0.6 * torch.rand(1, 3, side, side, generator=generator) + 0.4 * ramp).clamp(0, 1)


def measure_tile_pad(
    fn: Callable[[Any], Any],
    scale: int,
    *,
    align: int = 1,
    device: Any = "cpu",
    tolerance: float = TILE_TOLERANCE,
    sides: tuple[int, ...] = PROBE_SIDES,
    seed: int = 0,
) -> TilePad:
    """The tile pad a model needs, measured rather than derived: how far into a tile the cut at its
    edge changes the output.

    `fn` runs the model, (1, 3, h, w) float32 in [0, 1] on `device` -> (1, 3, s*h, s*w). A probe
    (noise over a ramp) of (1.5 * side)^2 LR pixels goes through whole and cut to its side x side
    corners, top-left and bottom-right (two cut edges and their corner each: the worst place in a
    tile; the second moves the origin as a tile does); the pad is the farthest LR distance
    from the cut at which the output still changes by more than `tolerance`, plus a margin of an
    eighth. A reach beyond three quarters of the side is not trusted and the next, larger side is
    tried; when even the largest side does not bound it (global attention, or a very deep network),
    the pad is PRACTICAL_PAD and the result says how much tiles may then differ (`exact` False).
    Cost: passes over 36^2 + 2 * 24^2 LR pixels at the first side, 4x that at each next one.
    """
    import torch

    step = max(align, 1)
    generator = torch.Generator().manual_seed(seed)
    profile = np.zeros(0)
    for side in sides:
        cut = -(-side // step) * step
        # the second corner's origin moves by a multiple of `align`; by an odd amount without one,
        # so that a window grid nobody declared shows up as differences everywhere
        whole = cut + (-(-(cut // 2) // step) * step if step > 1 else cut // 2 | 1)
        x = _probe(whole, generator).to(device)
        profile = _cut_profile(fn, x, cut, scale)
        over = np.nonzero(profile > tolerance)[0]
        radius = int(over.max()) + 1 if over.size else 0
        if radius <= cut * 3 // 4:
            pad = -(-(radius + -(-radius // 8)) // step) * step
            return TilePad(pad, True, float(profile[pad:].max(initial=0.0)), radius)
    pad = -(-PRACTICAL_PAD // step) * step
    beyond = profile[min(pad, len(profile) - 1) :]  # (a probe narrower than the pad: its far edge)
    return TilePad(pad, False, float(beyond.max()), len(profile))


def pick_tile(free_bytes: int, bytes_per_lr_pixel: float, *, budget: float = 0.5, minimum: int = 64) -> int:
    """Largest square LR tile whose activations fit in `budget` of the free memory."""
    side = int(math.sqrt(max(free_bytes * budget, 0) / max(bytes_per_lr_pixel, 1.0)))
    return max(minimum, side // 8 * 8)


MIN_TILE = 32  # the smallest tile an out-of-memory retry goes down to


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
