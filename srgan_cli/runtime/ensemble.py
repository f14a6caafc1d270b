"""Geometric self-ensemble (`--self-ensemble`): an upscaler run on mirrored and rotated copies."""

from __future__ import annotations

import numpy as np

from .progress import part
from .upscaler import Upscaler

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
        for index, (turns, mirror) in enumerate(_DIHEDRAL[: self.passes]):
            view = np.ascontiguousarray(_forward_view(pixels, turns, mirror))
            with part(index, self.passes):  # progress: one run over all passes
                out = _inverse_view(self.inner(view), turns, mirror)
            if total is None:
                total = out.astype(np.float32, copy=True)
            else:
                total += out
        assert total is not None
        if self.passes > 1:
            total /= self.passes
        return np.ascontiguousarray(total)
