"""Using a trained LAPGAN: coarse-to-fine draws, per-sample level strips, draws from a given coarse
image, and x2-per-level upscaling of real images with the conditional generators."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..devices import free_memory_bytes
from ..errors import UsageError
from ..photos import image_grid
from ..runtime.base import auto_tile, shrink_on_oom
from ..runtime.torch_backend import is_torch_oom
from ..tiling import tiled_apply
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

    `coarse` (1 or n, 3, base, base) replaces level 0, so the draws differ only in their detail."""
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
    levels = model.sample(
        n,
        generator,
        labels=labels.to(device) if labels is not None else None,
        coarse=coarse,
    )
    return [level.float().cpu() for level in levels]


def level_strip(levels: list[torch.Tensor], index: int, *, gap: int = 2) -> np.ndarray:
    """One sample's every level side by side, each enlarged (nearest) to the finest size:
    (size, L * (size + gap) - gap, 3) uint8, coarse on the left."""
    size = levels[-1].shape[-1]
    panels = [F.interpolate(level[index : index + 1], size=(size, size), mode="nearest") for level in levels]
    # the grid of one row, without its outer margin
    return image_grid(torch.cat(panels), len(panels), gap=gap)[gap:-gap, gap:-gap]


class LapganUpscaler:
    """x2 per conditional level on real images: I <- clamp(expand(I) + G_k(z_k, expand(I))).

    The input plays the coarse image. `levels` picks how many conditional generators run (the
    finest ones: G_{K-levels+1} .. G_K, whose bands are the finest detail the model learned);
    the scale is 2^levels. The noise is seeded per call, so one image always gives one result;
    `noise` scales it (0 = the generators' mean behaviour). Same interface as the SR upscalers."""

    backend = "torch"

    def __init__(
        self,
        model: Lapgan,
        *,
        device: torch.device,
        levels: int | None = None,
        tile: int | None = None,
        tile_pad: int = 16,
        seed: int = 0,
        noise: float = 1.0,
    ) -> None:
        top = model.config.levels - 1
        if top < 1:
            raise UsageError(
                "this LAPGAN has only the coarse level (a single-scale GAN): it has no conditional "
                "levels to upscale with"
            )
        if model.config.n_classes:
            raise UsageError("class-conditional LAPGAN models cannot upscale (which class would it be?)")
        self.levels = top if levels is None else levels
        if not 1 <= self.levels <= top:
            raise UsageError(f"this LAPGAN can upscale with 1 to {top} level(s), not {self.levels}")
        self.model = model.to(device).eval()
        self.device = device
        self.scale = 2**self.levels
        self.tile, self.tile_pad, self.seed, self.noise = tile, tile_pad, seed, noise
        self.last_tile = 0

    def _run(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        top = self.model.config.levels - 1
        for k in range(top - self.levels + 1, top + 1):
            x = self.model.refine(x, k, generator, noise=self.noise)
        return x

    def upscale_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, 3, sH, sW) float32 on self.device."""
        x = x.to(self.device, torch.float32)
        height, width = x.shape[-2:]
        tile = self.tile
        if tile is None:  # the SR estimate: n_feats maps at the output size dominate here too
            free = free_memory_bytes(self.device)
            n_feats = self.model.config.n_feats
            tile = auto_tile(free, height, width, scale=self.scale, n_feats=n_feats, elem_bytes=4)

        def attempt(side: int) -> torch.Tensor:
            generator = torch.Generator().manual_seed(self.seed)  # one image, one result
            with torch.inference_mode():
                return tiled_apply(x, lambda t: self._run(t, generator), self.scale, side, self.tile_pad)

        def cleanup() -> None:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

        out, self.last_tile = shrink_on_oom(
            attempt, tile, max(height, width), is_torch_oom, str(self.device), cleanup
        )
        return out

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).permute(2, 0, 1)[None]
        return self.upscale_tensor(x)[0].permute(1, 2, 0).cpu().numpy()
