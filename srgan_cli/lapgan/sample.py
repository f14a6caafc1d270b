"""Using a trained LAPGAN: coarse-to-fine draws, per-sample level strips, and draws from a given
coarse image. (x2-per-level upscaling of real images is runtime/lapgan_backend.py.)"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError
from ..photos import image_grid
from .models import Lapgan
from .pyramid import gaussian_pyramid


def _labels(model: Lapgan, n: int, label: int | None, generator: torch.Generator) -> torch.Tensor | None:
    """Class labels for a class-conditional model: the given class, else one drawn per sample."""
    k = model.config.n_classes
    if k == 0:
        if label is not None:
            raise UsageError("this LAPGAN is not class-conditional: leave out --class")
        return None
    if label is not None:
        if not 0 <= label < k:
            raise UsageError(f"class {label} does not exist: the model has classes 0..{k - 1}")
        return torch.full((n,), label, dtype=torch.int64)
    return torch.randint(k, (n,), generator=generator)


def coarse_from_image(pixels: np.ndarray, model: Lapgan) -> torch.Tensor:
    """(H, W, 3) float32 photo -> (1, 3, base, base): its centre square, resized to the model's
    size, then taken down the Gaussian pyramid to the coarsest level (what G_0 would draw)."""
    h, w = pixels.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = torch.from_numpy(np.ascontiguousarray(pixels[top : top + side, left : left + side]))
    x = square.permute(2, 0, 1)[None].float()
    size = model.config.size
    if side != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=side > size)
    return gaussian_pyramid(x.clamp(0, 1), model.config.levels)[-1]


DRAW_CHUNK = 256  # draws per pass of the generators


@torch.no_grad()
def draw(
    model: Lapgan,
    n: int,
    *,
    seed: int = 0,
    label: int | None = None,
    coarse: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """n draws, every level: [(n, 3, base, base), ..., (n, 3, size, size)] on the CPU.

    `coarse` (1 or n, 3, base, base) replaces level 0, so the draws differ only in their detail.
    The draws are made DRAW_CHUNK at a time from one random stream, so memory stays flat however
    many are asked for (the first DRAW_CHUNK draws of a seed do not depend on n)."""
    if n < 1:
        raise UsageError("the number of samples must be at least 1")
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    labels = _labels(model, n, label, generator)
    device = next(model.parameters()).device
    if coarse is not None:
        base = model.config.base
        if tuple(coarse.shape[-2:]) != (base, base):
            raise UsageError(f"a coarse image must be {base}x{base}, got {tuple(coarse.shape[-2:])}")
        coarse = coarse.expand(n, -1, -1, -1)
    parts: list[list[torch.Tensor]] = []
    for start in range(0, n, DRAW_CHUNK):
        stop = min(start + DRAW_CHUNK, n)
        levels = model.sample(
            stop - start,
            generator,
            labels=labels[start:stop].to(device) if labels is not None else None,
            coarse=coarse[start:stop] if coarse is not None else None,
        )
        parts.append([level.float().cpu() for level in levels])
    return [torch.cat(level) for level in zip(*parts, strict=True)]


def level_strip(levels: list[torch.Tensor], index: int, *, gap: int = 2) -> np.ndarray:
    """One sample's every level side by side, each enlarged (nearest) to the finest size:
    (size, L * (size + gap) - gap, 3) uint8, coarse on the left."""
    size = levels[-1].shape[-1]
    panels = [F.interpolate(level[index : index + 1], size=(size, size), mode="nearest") for level in levels]
    # the grid of one row, without its outer margin
    return image_grid(torch.cat(panels), len(panels), gap=gap)[gap:-gap, gap:-gap]
