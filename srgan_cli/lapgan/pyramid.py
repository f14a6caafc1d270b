"""Gaussian and Laplacian pyramids (Burt & Adelson, 1983) on (N, C, H, W) tensors, any size.

Level 0 is the full image. Going down a level blurs with the 5-tap binomial kernel
[1, 4, 6, 4, 1] / 16 and keeps every second pixel, so an H x W level becomes ceil(H/2) x ceil(W/2)
(odd sizes are fine). Going up (`expand`) puts the coarse pixels back on the even positions of a
zero image of the requested size and blurs with the same kernel times 2 per axis (to make up for
the zeros). The Laplacian band of a level is the level minus the expanded next-coarser level, so
`reconstruct` (expand and add, coarse to fine) gives the image back exactly, up to float rounding,
whatever the kernel does at the borders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_TAPS = (1.0, 4.0, 6.0, 4.0, 1.0)


def _blur(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Separable 5x5 binomial blur of (N, C, H, W), reflect padding (replicate for tiny sides)."""
    c = x.shape[1]
    taps = torch.tensor(_TAPS, dtype=x.dtype, device=x.device) / 16.0 * gain
    kx = taps.view(1, 1, 1, 5).repeat(c, 1, 1, 1)
    ky = taps.view(1, 1, 5, 1).repeat(c, 1, 1, 1)
    mode = "reflect" if min(x.shape[-2:]) > 2 else "replicate"
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode=mode), kx, groups=c)
    return F.conv2d(F.pad(x, (0, 0, 2, 2), mode=mode), ky, groups=c)


def reduce(x: torch.Tensor) -> torch.Tensor:
    """One level down: (N, C, H, W) -> (N, C, ceil(H/2), ceil(W/2))."""
    return _blur(x)[:, :, ::2, ::2]


def expand(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """One level up to exactly `size` (H, W), which must satisfy ceil(H/2), ceil(W/2) == x's size."""
    h, w = size
    if (x.shape[-2], x.shape[-1]) != ((h + 1) // 2, (w + 1) // 2):
        raise ValueError(f"cannot expand {tuple(x.shape[-2:])} to {size}: sizes must halve (rounding up)")
    up = x.new_zeros(*x.shape[:2], h, w)
    up[:, :, ::2, ::2] = x
    return _blur(up, gain=2.0)


def gaussian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """[G_0 = x, G_1, ..., G_{levels-1}], each half the size of the one before."""
    if levels < 1:
        raise ValueError("levels must be at least 1")
    out = [x]
    for _ in range(levels - 1):
        out.append(reduce(out[-1]))
    return out


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """[h_0, ..., h_{levels-2}, G_{levels-1}]: band-pass residuals fine to coarse, then the coarsest
    Gaussian level (the low-pass image LAPGAN's level-0 generator draws)."""
    gauss = gaussian_pyramid(x, levels)
    bands = [g - expand(g_next, tuple(g.shape[-2:])) for g, g_next in zip(gauss[:-1], gauss[1:], strict=True)]
    return [*bands, gauss[-1]]


def reconstruct(pyramid: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of laplacian_pyramid: I_k = expand(I_{k+1}) + h_k, from the coarsest level up."""
    image = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        image = expand(image, tuple(band.shape[-2:])) + band
    return image
