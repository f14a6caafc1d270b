"""The Laplacian pyramid is exact, for any size, in batches, on float32 and float64."""

from __future__ import annotations

import pytest
import torch

from srgan_cli.lapgan.pyramid import expand, gaussian_pyramid, laplacian_pyramid, reconstruct, reduce


@pytest.mark.parametrize("size", [(64, 64), (37, 53), (33, 8), (7, 5)])
@pytest.mark.parametrize("levels", [1, 2, 4])
def test_reconstruction_is_exact(size: tuple[int, int], levels: int) -> None:
    x = torch.rand(3, 3, *size, generator=torch.Generator().manual_seed(sum(size) + levels))
    pyr = laplacian_pyramid(x, levels)
    assert len(pyr) == levels
    assert (reconstruct(pyr) - x).abs().max().item() < 1e-5


def test_level_shapes_halve_rounding_up() -> None:
    x = torch.rand(2, 3, 37, 53)
    shapes = [tuple(g.shape) for g in gaussian_pyramid(x, 4)]
    assert shapes == [(2, 3, 37, 53), (2, 3, 19, 27), (2, 3, 10, 14), (2, 3, 5, 7)]
    bands = laplacian_pyramid(x, 4)
    assert [tuple(b.shape) for b in bands] == shapes


def test_bands_are_band_pass() -> None:
    """A smooth image has almost nothing in its finest band; the coarse level keeps the mean."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    smooth = (0.3 + 0.4 * xx * yy).expand(1, 3, 64, 64)
    bands = laplacian_pyramid(smooth, 3)
    assert bands[0][:, :, 4:-4, 4:-4].abs().max().item() < 1e-3
    assert abs(bands[-1].mean().item() - smooth.mean().item()) < 1e-2


def test_expand_refuses_sizes_that_do_not_halve() -> None:
    with pytest.raises(ValueError, match="sizes must halve"):
        expand(torch.rand(1, 3, 8, 8), (20, 16))
    assert reduce(torch.rand(1, 1, 9, 9)).shape == (1, 1, 5, 5)


def test_float64_and_constant_images() -> None:
    x = torch.full((1, 3, 16, 16), 0.25, dtype=torch.float64)
    pyr = laplacian_pyramid(x, 3)
    assert pyr[0].dtype == torch.float64
    assert pyr[0].abs().max().item() < 1e-12  # a constant image has no detail at any level
    assert (reconstruct(pyr) - x).abs().max().item() < 1e-12
