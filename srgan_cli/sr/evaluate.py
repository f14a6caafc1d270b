"""`srgan eval`: PSNR/SSIM (and LPIPS) of a model or bicubic on a folder of HR photos, per image and mean."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..metrics.luma import blockiness_y, grid_y, psnr_y, ssim_y
from .data import EvalPair, bicubic_upscale, to_tensor

GRID_BLOCK = 32  # tile side of the checkerboard measure (a multiple of 2, 4 and 8)
JPEG_BLOCK = 8  # JPEG's block side in the LR image; the block measure looks at scale x 8 in the output

if TYPE_CHECKING:
    from ..metrics.lpips import LPIPS


@dataclass
class ImageScores:
    name: str
    psnr: float
    ssim: float
    lpips: float | None = None  # None when no LPIPS network was given
    grid: float | None = None  # checkerboard strength (metrics.grid_y); None where the photo is too small
    block: float | None = None  # JPEG block grid left in the output, relative to the original (1 = as it)


@dataclass
class EvalReport:
    method: str
    scale: int
    images: list[ImageScores] = field(default_factory=list)

    @property
    def psnr(self) -> float:
        return float(np.mean([s.psnr for s in self.images])) if self.images else float("nan")

    @property
    def ssim(self) -> float:
        return float(np.mean([s.ssim for s in self.images])) if self.images else float("nan")

    @property
    def lpips(self) -> float | None:
        """Mean LPIPS over the images that have one; None when it was not computed."""
        values = [s.lpips for s in self.images if s.lpips is not None]
        return float(np.mean(values)) if values else None

    @property
    def grid(self) -> float | None:
        """Mean checkerboard strength over the images that have one (metrics.grid_y)."""
        values = [s.grid for s in self.images if s.grid is not None]
        return float(np.mean(values)) if values else None

    @property
    def block(self) -> float | None:
        """Mean JPEG block-grid ratio over the images that have one (metrics.blockiness_y)."""
        values = [s.block for s in self.images if s.block is not None]
        return float(np.mean(values)) if values else None

    def to_dict(self) -> dict[str, object]:
        lp, grid, block = self.lpips, self.grid, self.block
        return {
            "method": self.method,
            "scale": self.scale,
            "psnr": round(self.psnr, 4),
            "ssim": round(self.ssim, 5),
            "lpips": None if lp is None else round(lp, 5),
            "grid": None if grid is None else round(grid, 4),
            "block": None if block is None else round(block, 4),
            "images": [asdict(s) for s in self.images],
        }


def _pair(sr: np.ndarray, hr: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    a = to_tensor(sr)[None] if sr.dtype == np.uint8 else torch.from_numpy(sr).permute(2, 0, 1)[None]
    return a, to_tensor(hr)[None]


def score(sr: np.ndarray, hr: np.ndarray, scale: int) -> tuple[float, float]:
    """Y-PSNR and Y-SSIM of two (H, W, 3) arrays (uint8, or float in [0, 1]), `scale` px border off."""
    a, b = _pair(sr, hr)
    return psnr_y(a, b, border=scale), ssim_y(a, b, border=scale)


def grid_score(sr: np.ndarray, hr: np.ndarray, scale: int) -> float | None:
    """metrics.grid_y of two (H, W, 3) arrays; None for scale 1 or a photo smaller than one tile."""
    a, b = _pair(sr, hr)
    block = -(-GRID_BLOCK // max(scale, 1)) * max(scale, 1)  # whole phases per tile: 32 at x2/x4/x8, 33 at x3
    if scale < 2 or min(a.shape[-2:]) < block:
        return None
    return grid_y(a, b, scale, block)


def block_score(sr: np.ndarray, hr: np.ndarray, scale: int) -> float | None:
    """The JPEG block grid left in an (H, W, 3) output: metrics.blockiness_y at the period of the
    LR's 8x8 blocks (8 x scale), divided by the original's own figure there (photos that were JPEGs
    once have a faint grid of their own), so 1.00 means as the original; None for small photos."""
    a, b = _pair(sr, hr)
    a = torch.round(a.clamp(0, 1) * 255) / 255
    mine, theirs = blockiness_y(a, JPEG_BLOCK * scale), blockiness_y(b, JPEG_BLOCK * scale)
    return None if mine is None or theirs is None else mine / theirs


def lpips_score(sr: np.ndarray, hr: np.ndarray, scale: int, lpips: LPIPS) -> float:
    """LPIPS of two (H, W, 3) arrays (uint8, or float in [0, 1]) on RGB, `scale` px border off.

    The SR image is quantised to 8 bit first, as PSNR/SSIM do, so all three see the same pixels.
    """
    device = next(lpips.parameters()).device
    a = to_tensor(sr) if sr.dtype == np.uint8 else torch.from_numpy(np.ascontiguousarray(sr)).permute(2, 0, 1)
    a = torch.round(a.float().clamp(0, 1) * 255) / 255  # (3, H, W)
    b = to_tensor(hr)
    if scale > 0:
        a, b = a[:, scale:-scale, scale:-scale], b[:, scale:-scale, scale:-scale]
    with torch.inference_mode():
        return float(lpips(a[None].to(device), b[None].to(device))[0])


def evaluate(
    pairs: list[EvalPair],
    scale: int,
    upscale: Callable[[np.ndarray], np.ndarray] | None,
    method: str,
    *,
    lpips: LPIPS | None = None,
    on_image: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Score `upscale` ((h, w, 3) float32 -> (sh, sw, 3) float32), or bicubic when it is None.

    With `lpips`, each image also gets an LPIPS distance (on the LPIPS module's device).
    `on_image(done, total)` is called after each image is scored (for progress).
    """
    report = EvalReport(method, scale)
    for pair in pairs:
        if upscale is None:
            sr: np.ndarray = bicubic_upscale(pair.lr, scale)
        else:
            sr = upscale(pair.lr.astype(np.float32) / 255.0)
        p, s = score(sr, pair.hr, scale)
        lp = None if lpips is None else round(lpips_score(sr, pair.hr, scale, lpips), 5)
        grid = grid_score(sr, pair.hr, scale)
        block = block_score(sr, pair.hr, scale)
        report.images.append(
            ImageScores(
                pair.name,
                round(p, 4),
                round(s, 5),
                lp,
                None if grid is None else round(grid, 4),
                None if block is None else round(block, 4),
            )
        )
        if on_image is not None:
            on_image(len(report.images), len(pairs))
    return report
