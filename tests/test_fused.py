"""The fused inference form computes the same function as the paper's SRResNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from srgan_cli.runtime.fused import BicubicUpsample, FusedSRResNet, fold_batchnorm, fuse, space_to_depth_conv
from srgan_cli.runtime.tiling import fixed_window_apply, tiled_apply
from srgan_cli.runtime.torch_backend import TorchUpscaler
from srgan_cli.sr.models import SRResNet

from .conftest import tiny_model


@pytest.mark.parametrize("scale", [2, 4, 8])
@pytest.mark.parametrize("global_skip", [False, True])
def test_fused_model_matches_original(scale: int, global_skip: bool) -> None:
    model = tiny_model(scale, seed=scale, global_skip=global_skip)
    fused = fuse(model)
    assert isinstance(fused, FusedSRResNet)
    x = torch.rand(2, 3, 13, 18)
    with torch.no_grad():
        want, got = model(x), fused(x)
    assert got.shape == want.shape == (2, 3, 13 * scale, 18 * scale)
    assert (got - want).abs().max().item() < 1e-5
    # the caller's model is untouched by fusing or by casting the fused copy
    fused.half()
    assert next(model.parameters()).dtype == torch.float32
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_bicubic_as_conv_equals_interpolate(scale: int) -> None:
    x = torch.rand(1, 3, 9, 14)
    want = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    assert (BicubicUpsample(scale)(x) - want).abs().max().item() < 1e-5


@pytest.mark.parametrize("kernel", [1, 3, 5, 9])
def test_space_to_depth_conv(kernel: int) -> None:
    torch.manual_seed(kernel)
    conv = nn.Conv2d(4, 3, kernel, padding=kernel // 2)
    g = torch.randn(2, 16, 7, 5)  # the unshuffled map of a (2, 4, 14, 10) image
    want = conv(F.pixel_shuffle(g, 2))
    got = F.pixel_shuffle(space_to_depth_conv(conv, 2)(g), 2)
    assert (got - want).abs().max().item() < 1e-5


def test_fold_batchnorm() -> None:
    conv, bn = nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5).eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.2, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(1, 3, 8, 8)
    assert (fold_batchnorm(conv, bn)(x) - bn(conv(x))).abs().max().item() < 1e-5


def test_torch_upscaler_fast_path_matches_plain_model() -> None:
    model = tiny_model(4, global_skip=True)
    pixels = np.random.default_rng(0).random((21, 17, 3), dtype=np.float32)
    fast = TorchUpscaler(model, device=torch.device("cpu"), tile=0)(pixels)
    plain = TorchUpscaler(model, device=torch.device("cpu"), tile=0, fast=False)(pixels)
    with torch.no_grad():
        direct = (
            model(torch.from_numpy(pixels).permute(2, 0, 1)[None]).clamp(0, 1)[0].permute(1, 2, 0).numpy()
        )
    assert np.abs(fast - direct).max() < 1e-5 and np.abs(plain - direct).max() < 1e-6


def test_batched_tiles_equal_one_by_one() -> None:
    model = fuse(tiny_model(2))
    x = torch.rand(1, 3, 37, 41)
    with torch.no_grad():
        one = tiled_apply(x, model, 2, tile=10, pad=4, batch=1)
        many = tiled_apply(x, model, 2, tile=10, pad=4, batch=5)
        whole = model(x)
    assert torch.equal(one, many) or (one - many).abs().max().item() < 1e-6
    radius = SRResNet.receptive_radius(model.config)
    with torch.no_grad():
        exact = tiled_apply(x, model, 2, tile=10, pad=radius, batch=4)
    assert (exact - whole).abs().max().item() < 1e-5


def test_fixed_window_apply_matches_whole_image() -> None:
    model = fuse(tiny_model(2))

    def run(a: np.ndarray) -> np.ndarray:
        assert a.shape[-2:] == (32, 28)  # every call gets exactly the window
        with torch.no_grad():
            return model(torch.from_numpy(a)).numpy()

    x = np.random.default_rng(1).random((1, 3, 45, 53), dtype=np.float32)
    with torch.no_grad():
        whole = model(torch.from_numpy(x)).numpy()
    out = fixed_window_apply(x, run, 2, (32, 28), pad=12)  # pad 10 used: the receptive radius
    assert out.shape == whole.shape
    assert np.abs(out - whole).max() < 1e-5
    small = fixed_window_apply(x[:, :, :10, :12], run, 2, (32, 28), pad=12)  # edge-padded up
    assert small.shape == (1, 3, 20, 24)
