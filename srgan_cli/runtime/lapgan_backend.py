"""LAPGAN upscaling: a trained LAPGAN's conditional generators, x2 per level, on real images, with
the same tiling, `--tile auto` and out-of-memory retry as the super-resolution models."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import UsageError
from ..lapgan.models import Lapgan
from .torch_backend import TensorUpscaler


class LapganUpscaler(TensorUpscaler):
    """x2 per conditional level on real images: I <- clamp(expand(I) + G_k(z_k, expand(I))).

    The input plays the coarse image. `levels` picks how many conditional generators run (the
    finest ones: G_{K-levels+1} .. G_K, whose bands are the finest detail the model learned);
    the scale is 2^levels. The noise is seeded per call, so one image always gives one result;
    `noise` scales it (0 = the generators' mean behaviour). Same interface as the SR upscalers."""

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
        self.n_feats = model.config.n_feats  # its n_feats maps at the output size dominate, as in SR

    def _run(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        top = self.model.config.levels - 1
        for k in range(top - self.levels + 1, top + 1):
            x = self.model.refine(x, k, generator, noise=self.noise)
        return x

    def _pass(self) -> Callable[[torch.Tensor], torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed)  # one image, one result
        return lambda tile: self._run(tile, generator)
