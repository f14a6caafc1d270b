"""Shapes and structure of the SRGAN networks."""

from __future__ import annotations

import pytest
import torch

from srgan_cli.sr.models import Discriminator, SRResNet, SRResNetConfig, UNetDiscriminator
from srgan_cli.training import count_parameters

from .conftest import tiny_model


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_srresnet_output_shape(scale: int) -> None:
    model = SRResNet(SRResNetConfig(scale=scale, n_blocks=2, n_feats=8)).eval()
    y = model(torch.rand(2, 3, 11, 13))
    assert y.shape == (2, 3, 11 * scale, 13 * scale)


def test_srresnet_paper_size() -> None:
    model = SRResNet()  # the paper's generator: 16 blocks, 64 channels, x4
    assert model.config == SRResNetConfig(4, 16, 64)
    assert 1.5e6 < count_parameters(model) < 1.6e6
    assert sum(isinstance(m, torch.nn.PixelShuffle) for m in model.modules()) == 2


def test_global_skip_starts_at_bicubic() -> None:
    model = SRResNet(SRResNetConfig(scale=2, n_blocks=1, n_feats=8, global_skip=True)).eval()
    torch.nn.init.zeros_(model.tail.weight)
    torch.nn.init.zeros_(model.tail.bias)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        expected = torch.nn.functional.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
        torch.testing.assert_close(model(x), expected)


def test_bad_scale_is_refused() -> None:
    with pytest.raises(ValueError, match="scale"):
        SRResNetConfig(scale=3)


@pytest.mark.parametrize("size", [96, 128, 40])
def test_discriminator_any_crop(size: int) -> None:
    disc = Discriminator(n_feats=8, fc_feats=16)
    logits = disc(torch.rand(3, 3, size, size))
    assert logits.shape == (3, 1)


def test_discriminator_structure() -> None:
    disc = Discriminator()
    convs = [m for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 8
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert [c.stride[0] for c in convs] == [1, 2, 1, 2, 1, 2, 1, 2]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in disc.modules()) == 7
    assert disc.classifier[1].out_features == 1024


@pytest.mark.parametrize("size", [16, 37, 96])
def test_unet_discriminator_scores_every_pixel_of_any_crop(size: int) -> None:
    disc = UNetDiscriminator(n_feats=8)
    x = torch.rand(2, 3, size, size)
    logits = disc(x)
    assert logits.shape == (2, 1, size, size)
    # a change in one corner moves the logits near it and leaves the far corner alone
    x2 = x.clone()
    x2[..., :4, :4] = 1 - x2[..., :4, :4]
    disc.eval()  # no power-iteration update between the two passes
    with torch.no_grad():
        diff = (disc(x2) - disc(x)).abs()[0, 0]
    assert diff[:4, :4].max() > 0
    if size == 96:
        assert diff[-8:, -8:].max() == 0


def test_unet_discriminator_is_spectrally_normalised() -> None:
    """Every conv but the first and the last has its largest singular value held at 1 (Miyato et
    al.), however large its raw weights grow."""
    torch.manual_seed(0)
    disc = UNetDiscriminator(n_feats=8)
    for module in disc.modules():
        if isinstance(module, torch.nn.Conv2d) and hasattr(module, "parametrizations"):
            with torch.no_grad():
                module.parametrizations.weight.original.mul_(50)
    for _ in range(50):  # power iterations, one per training-mode forward
        disc(torch.rand(1, 3, 16, 16))
    disc.eval()
    normed = [m for m in disc.modules() if isinstance(m, torch.nn.Conv2d) and hasattr(m, "parametrizations")]
    assert len(normed) == 8
    for conv in normed:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert abs(float(sigma) - 1) < 0.05  # the raw weights were made 50 times larger
    assert sum(p.numel() for p in UNetDiscriminator().parameters()) < 5e6  # a fifth of the SRGAN D's


@pytest.mark.parametrize("scale", [2, 4])
def test_receptive_radius_bounds_the_influence(scale: int) -> None:
    """Perturbing one LR pixel changes nothing beyond the stated radius (tiling relies on it)."""
    model = tiny_model(scale)
    radius = SRResNet.receptive_radius(model.config)
    x = torch.rand(1, 3, 2 * radius + 9, 2 * radius + 9)
    c = x.shape[-1] // 2
    x2 = x.clone()
    x2[..., c, c] += 1.0
    with torch.no_grad():
        diff = (model(x) - model(x2)).abs()[0].sum(0)
    ys, xs = torch.nonzero(diff > 0, as_tuple=True)
    assert len(ys) > 0
    reach = max((ys // scale - c).abs().max(), (xs // scale - c).abs().max())
    assert reach <= radius
