"""PSNR/SSIM follow the SR protocol: BT.601 Y of 8-bit images, border removed."""

from __future__ import annotations

import math

import numpy as np
import torch

from srgan_cli.sr.metrics import psnr_y, rgb_to_y, ssim_y


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
