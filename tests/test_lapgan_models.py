"""LAPGAN networks: shapes per level, class conditioning, config checks."""

from __future__ import annotations

import pytest
import torch

from srgan_cli.lapgan.models import LapganConfig, level_models


def tiny(**kw: int) -> LapganConfig:
    return LapganConfig(**{"size": 32, "base": 8, "coarse_hidden": 32, "n_feats": 8, "noise_dim": 10, **kw})


def test_levels_and_sides() -> None:
    cfg = tiny()
    assert cfg.levels == 3 and [cfg.side(k) for k in range(3)] == [8, 16, 32]
    assert LapganConfig(size=64).levels == 4 and LapganConfig(size=8, base=8).levels == 1


@pytest.mark.parametrize("n_classes", [0, 5])
def test_shapes_per_level(n_classes: int) -> None:
    cfg = tiny(n_classes=n_classes)
    labels = torch.tensor([0, 4]) if n_classes else None
    g0, d0 = level_models(cfg, 0)
    coarse = g0(torch.randn(2, cfg.noise_dim), labels)
    assert coarse.shape == (2, 3, 8, 8) and coarse.min() >= 0 and coarse.max() <= 1
    assert d0(coarse, labels).shape == (2, 1)
    for level in (1, 2):
        g, d = level_models(cfg, level)
        s = cfg.side(level)
        l_k = torch.rand(2, 3, s, s)
        band = g(torch.randn(2, 1, s, s), l_k, labels)
        assert band.shape == (2, 3, s, s)
        assert d(band, l_k, labels).shape == (2, 1)


def test_bad_configs_and_levels() -> None:
    with pytest.raises(ValueError, match="power of two"):
        LapganConfig(size=48, base=8)
    with pytest.raises(ValueError, match="size >= base"):
        LapganConfig(size=4, base=8)
    with pytest.raises(ValueError, match="does not exist"):
        level_models(tiny(), 3)
    g, _ = level_models(tiny(n_classes=3), 1)
    with pytest.raises(ValueError, match="class-conditional"):
        g(torch.randn(1, 1, 16, 16), torch.rand(1, 3, 16, 16))
