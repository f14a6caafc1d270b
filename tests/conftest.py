"""Shared fixtures: tiny seeded models, small generated photos, an isolated weights folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from srgan_cli import weights
from srgan_cli.sr.models import SRResNet, SRResNetConfig


def make_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A (H, W, 3) uint8 image with smooth gradients, edges and texture: enough structure for SR."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack(
        [
            0.5 + 0.4 * np.sin(xx / (5 + seed % 3) + yy / 9),
            0.5 + 0.4 * np.cos(yy / 7 - xx / 13),
            (xx + yy) / (height + width),
        ],
        axis=-1,
    )
    img[height // 4 : height // 2, width // 3 : 2 * width // 3] = rng.uniform(0, 1, 3)  # a flat block
    img += rng.normal(0, 0.03, img.shape)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def tiny_model(scale: int = 4, seed: int = 0, global_skip: bool = False) -> SRResNet:
    torch.manual_seed(seed)
    model = SRResNet(SRResNetConfig(scale=scale, n_blocks=1, n_feats=8, global_skip=global_skip))
    # non-trivial BN statistics so eval mode is not an identity
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def weights_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A SRGAN_WEIGHTS_DIR holding tiny_x4 and tiny_x2."""
    folder = tmp_path / "weights"
    weights.save(
        folder / "tiny_x4.safetensors", tiny_model(4), trained_on="nothing", metrics={"val_psnr_y": 1.0}
    )
    weights.save(folder / "tiny_x2.safetensors", tiny_model(2), trained_on="nothing")
    monkeypatch.setenv(weights.ENV_DIR, str(folder))
    return folder


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(make_photo(40 + 8 * i, 48, seed=i)).save(folder / f"p{i}.png")
    return folder
