"""PSNR and SSIM on the BT.601 Y channel with a border crop (the SR field's reporting protocol), and the
checkerboard (grid) measure of sub-pixel upscalers."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (N, 1, H, W) BT.601 luma in [16, 235] (MATLAB rgb2ycbcr)."""
    r, g, b = img[:, 0:1], img[:, 1:2], img[:, 2:3]
    return 16.0 + 65.481 * r + 128.553 * g + 24.966 * b


def _prepare(sr: torch.Tensor, hr: torch.Tensor, border: int) -> tuple[torch.Tensor, torch.Tensor]:
    if sr.shape != hr.shape:
        raise ValueError(f"shapes differ: {tuple(sr.shape)} vs {tuple(hr.shape)}")
    # quantise like a saved 8-bit image would be, so numbers match what users measure on files
    sr = torch.round(sr.clamp(0, 1) * 255) / 255
    hr = torch.round(hr.clamp(0, 1) * 255) / 255
    sr_y, hr_y = rgb_to_y(sr.double()), rgb_to_y(hr.double())
    if border > 0:
        sr_y = sr_y[..., border:-border, border:-border]
        hr_y = hr_y[..., border:-border, border:-border]
    return sr_y, hr_y


def psnr_y(sr: torch.Tensor, hr: torch.Tensor, border: int = 0) -> float:
    """Mean Y-channel PSNR in dB over a batch of (N, 3, H, W) images in [0, 1]."""
    sr_y, hr_y = _prepare(sr, hr, border)
    mse = ((sr_y - hr_y) ** 2).mean(dim=(1, 2, 3))
    values = [100.0 if m == 0 else 10 * math.log10(255.0**2 / float(m)) for m in mse]
    return float(np.mean(values))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1, 1, size, size)


def ssim_y(sr: torch.Tensor, hr: torch.Tensor, border: int = 0) -> float:
    """Mean Y-channel SSIM (Wang et al., 2004: 11x11 Gaussian, sigma 1.5, 'valid' windows)."""
    sr_y, hr_y = _prepare(sr, hr, border)
    w = _gaussian_window().to(sr_y.device)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = F.conv2d(sr_y, w), F.conv2d(hr_y, w)
    sxx = F.conv2d(sr_y * sr_y, w) - mu_x**2
    syy = F.conv2d(hr_y * hr_y, w) - mu_y**2
    sxy = F.conv2d(sr_y * hr_y, w) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return float((num / den).mean(dim=(1, 2, 3)).mean())


def grid_y(sr: torch.Tensor, hr: torch.Tensor, scale: int, block: int = 32) -> float:
    """Strength of the scale-periodic ("checkerboard") part of the Y error of a x`scale` upscaler.

    Sub-pixel convolution makes each output pixel from one of scale x scale phases; a network whose
    phases disagree leaves a pattern that repeats every `scale` pixels, on flat areas too. In each
    block x block tile, the error SR - HR (luma, 0-255) is averaged over the pixels of each phase
    (y mod scale, x mod scale); the result is the RMS spread of those scale^2 means about their
    tile's mean, over all tiles and the batch. Error unrelated to the phase averages out to a small
    floor (bicubic, which has no phases, shows it); a checkerboard does not. Lower is better.
    """
    sr_y, hr_y = _prepare(sr, hr, 0)
    return float(phase_spread(sr_y - hr_y, scale, block))


def phase_spread(err: torch.Tensor, scale: int, block: int = 32, eps: float = 0.0) -> torch.Tensor:
    """The measure of `grid_y` on any (N, C, H, W) error, as a differentiable tensor.

    Per channel and block x block tile, the error is averaged over each of the scale x scale
    phases (y mod scale, x mod scale); returns the RMS of those means about their tile's mean.
    Only whole tiles count (from the top-left corner). `eps` is added under the square root (a
    loss needs it: the root's gradient at zero error is infinite).
    """
    if scale < 2:
        raise ValueError(f"scale must be at least 2, got {scale}")
    if block % scale:
        raise ValueError(f"block {block} is not a multiple of the scale {scale}")
    n, c, h, w = err.shape
    h, w = (h // block) * block, (w // block) * block
    if h == 0 or w == 0:
        raise ValueError(f"image {err.shape[3]}x{err.shape[2]} is smaller than one {block} px tile")
    per = block // scale
    tiles = err[:, :, :h, :w].reshape(n, c, h // block, per, scale, w // block, per, scale)
    phase_means = tiles.mean(dim=(3, 6))  # (n, c, tiles_y, scale, tiles_x, scale)
    spread = phase_means - phase_means.mean(dim=(3, 5), keepdim=True)
    return (spread.pow(2).mean() + eps).sqrt()


def blockiness_y(img: torch.Tensor, period: int) -> float | None:
    """How much stronger the luma steps are across the lines of a `period`-px grid (from the top-left
    corner) than between other neighbours: mean |step| on the grid lines / mean |step| elsewhere,
    over columns and rows. 1.0 means no grid; JPEG's 8x8 blocks, enlarged x4 by a model that keeps
    them, show up at period 32. None for an image under two periods on a side."""
    y = rgb_to_y(img.float())  # (N, 1, H, W), 0-255
    h, w = y.shape[-2:]
    if min(h, w) < 2 * period:
        return None
    ratios = []
    for dim in (-1, -2):  # steps between neighbouring columns, then rows
        n = y.shape[dim]
        steps = (y.narrow(dim, 1, n - 1) - y.narrow(dim, 0, n - 1)).abs()
        on = (
            torch.arange(n - 1, device=y.device) + 1
        ) % period == 0  # step from pixel k*period-1 to k*period
        on_mean = steps.index_select(dim, on.nonzero().flatten()).mean()
        off_mean = steps.index_select(dim, (~on).nonzero().flatten()).mean()
        ratios.append(float((on_mean + 1e-3) / (off_mean + 1e-3)))
    return sum(ratios) / 2
