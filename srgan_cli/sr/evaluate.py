"""`srgan eval`: PSNR/SSIM of a model and of bicubic on a folder of HR photos, per image and mean."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .data import EvalPair, bicubic_upscale, to_tensor
from .metrics import psnr_y, ssim_y


@dataclass
class ImageScores:
    name: str
    psnr: float
    ssim: float


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

    def to_dict(self) -> dict[str, object]:
        return {
            "method": self.method,
            "scale": self.scale,
            "psnr": round(self.psnr, 4),
            "ssim": round(self.ssim, 5),
            "images": [asdict(s) for s in self.images],
        }


def score(sr: np.ndarray, hr: np.ndarray, scale: int) -> tuple[float, float]:
    """Y-PSNR and Y-SSIM of two (H, W, 3) arrays (uint8, or float in [0, 1]), `scale` px border off."""
    a = to_tensor(sr)[None] if sr.dtype == np.uint8 else torch.from_numpy(sr).permute(2, 0, 1)[None]
    b = to_tensor(hr)[None]
    return psnr_y(a, b, border=scale), ssim_y(a, b, border=scale)


def evaluate(
    pairs: list[EvalPair],
    scale: int,
    upscale: Callable[[np.ndarray], np.ndarray] | None,
    method: str,
) -> EvalReport:
    """Score `upscale` ((h, w, 3) float32 -> (sh, sw, 3) float32), or bicubic when it is None."""
    report = EvalReport(method, scale)
    for pair in pairs:
        if upscale is None:
            sr: np.ndarray = bicubic_upscale(pair.lr, scale)
        else:
            sr = upscale(pair.lr.astype(np.float32) / 255.0)
        p, s = score(sr, pair.hr, scale)
        report.images.append(ImageScores(pair.name, round(p, 4), round(s, 5)))
    return report
