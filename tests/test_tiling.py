"""Tiled inference equals untiled inference for any image size, with enough padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from srgan_cli.runtime.tiling import pick_tile, tile_grid, tiled_apply
from srgan_cli.runtime.torch_backend import TorchUpscaler
from srgan_cli.sr.models import SRResNet

from .conftest import tiny_model


@pytest.mark.parametrize(
    ("height", "width", "tile", "skip"),
    [(37, 53, 16, False), (31, 29, 7, False), (40, 40, 20, True), (9, 50, 16, True)],
)
def test_tiled_equals_untiled(height: int, width: int, tile: int, skip: bool) -> None:
    model = tiny_model(4, global_skip=skip)
    pad = SRResNet.receptive_radius(model.config)
    x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(height * width))
    with torch.no_grad():
        whole = model(x)
        tiled = tiled_apply(x, model, 4, tile=tile, pad=pad)
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().max() < 1e-5


def test_tiling_works_on_numpy_arrays() -> None:
    x = np.random.default_rng(0).random((1, 2, 13, 17)).astype(np.float32)

    def nearest(a: np.ndarray) -> np.ndarray:
        return a.repeat(3, axis=2).repeat(3, axis=3)

    out = tiled_apply(x, nearest, 3, tile=5, pad=0)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, nearest(x))


def test_grid_covers_every_pixel_once() -> None:
    cover = np.zeros((45, 71), dtype=int)
    for y0, y1, x0, x1 in tile_grid(45, 71, 16):
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all()
    assert tile_grid(10, 10, 0) == [(0, 10, 0, 10)]


def test_upscaler_tiled_matches_whole_on_uint8() -> None:
    model = tiny_model(4)
    pixels = np.random.default_rng(1).random((35, 46, 3)).astype(np.float32)
    whole = TorchUpscaler(model, device=torch.device("cpu"), tile=0)(pixels)
    tiled_up = TorchUpscaler(model, device=torch.device("cpu"), tile=16, tile_pad=24)
    tiled = tiled_up(pixels)
    assert tiled_up.last_tile == 16
    diff = np.abs(np.rint(whole * 255) - np.rint(tiled * 255)).max()
    assert diff <= 1


def test_pick_tile_scales_with_memory() -> None:
    assert pick_tile(1 << 30, 1000) > pick_tile(1 << 26, 1000)
    assert pick_tile(0, 1000) == 64
