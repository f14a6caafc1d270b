"""PSNR/SSIM follow the SR protocol: BT.601 Y of 8-bit images, border removed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from srgan_cli.metrics.luma import grid_y, psnr_y, rgb_to_y, ssim_y


def test_y_channel_range() -> None:
    black, white = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    assert abs(float(rgb_to_y(black)) - 16.0) < 1e-4
    assert abs(float(rgb_to_y(white)) - 235.0) < 1e-3


def test_psnr_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (1, 3, 20, 24)).astype(np.float64) / 255
    sr = np.clip(hr + rng.normal(0, 0.02, hr.shape), 0, 1)
    sr = np.round(sr * 255) / 255
    y = lambda a: 16 + 65.481 * a[:, 0] + 128.553 * a[:, 1] + 24.966 * a[:, 2]  # noqa: E731
    border = 4
    diff = (y(sr) - y(hr))[:, border:-border, border:-border]
    expected = 10 * math.log10(255**2 / np.mean(diff**2))
    got = psnr_y(torch.from_numpy(sr).float(), torch.from_numpy(hr).float(), border=border)
    assert abs(got - expected) < 1e-3


def test_identical_images() -> None:
    img = torch.rand(2, 3, 32, 32)
    assert psnr_y(img, img) == 100.0
    assert abs(ssim_y(img, img) - 1.0) < 1e-9


def test_ssim_falls_with_noise_and_blur() -> None:
    gen = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 48, 48, generator=gen)
    noisy = (img + 0.1 * torch.randn(img.shape, generator=gen)).clamp(0, 1)
    very_noisy = (img + 0.3 * torch.randn(img.shape, generator=gen)).clamp(0, 1)
    assert 1.0 > ssim_y(noisy, img) > ssim_y(very_noisy, img) > 0.0


def _smooth(gen: torch.Generator, size: int = 96) -> torch.Tensor:
    coarse = torch.rand(1, 3, size // 8, size // 8, generator=gen)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def test_grid_finds_a_pattern_that_repeats_every_scale_pixels() -> None:
    gen = torch.Generator().manual_seed(0)
    hr = _smooth(gen)
    # error unrelated to the pixel phase: noise, and a one-pixel shift of the whole image
    noisy = (hr + 0.02 * torch.randn(hr.shape, generator=gen)).clamp(0, 1)
    shifted = torch.roll(hr, 1, dims=3)
    # a period-4 checkerboard of +-4/255 in one phase pattern, as a sub-pixel layer would leave
    tile = torch.tensor([[1.0, -1.0, 0.0, 0.0], [-1.0, 1.0, 0.0, 0.0], [0.0] * 4, [0.0] * 4]) * 4 / 255
    checker = (hr + tile.repeat(24, 24)).clamp(0, 1)
    assert grid_y(hr, hr, 4) == 0.0
    assert grid_y(noisy, hr, 4) < 0.4  # about the noise's luma sigma (2.9) / sqrt(64 pixels per phase)
    assert grid_y(shifted, hr, 4) < 0.8  # a ramp-like error within a tile leaves a little
    # luma of a +-4/255 grey step is +-3.44 (219/255 * 4); 4 of the 16 phases carry it: RMS 1.72
    assert 1.5 < grid_y(checker, hr, 4) < 1.9
    assert grid_y(checker, hr, 4) > 4 * grid_y(noisy, hr, 4)
    # the same pattern is not periodic at scale 3 on 36 px tiles: much weaker there
    assert grid_y(checker, hr, 3, block=36) < grid_y(checker, hr, 4) / 2


def test_grid_checks_its_arguments() -> None:
    img = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match="multiple of the scale"):
        grid_y(img, img, 3, block=32)
    with pytest.raises(ValueError, match="smaller than one"):
        grid_y(img[..., :16, :16], img[..., :16, :16], 4)
    with pytest.raises(ValueError, match="shapes differ"):
        grid_y(img, img[..., :32], 4)
