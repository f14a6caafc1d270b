"""Tiles match the whole image for every architecture: a community model's tile pad is its reach,
measured once per model file (cached in memory and in the cache folder), window-attention models
get tiles that start on their window grid, and a model whose reach no pad covers says so."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

import srgan_cli
from srgan_cli.cli.app import app
from srgan_cli.runtime import third_party
from srgan_cli.runtime.third_party import SpandrelUpscaler, describe
from srgan_cli.runtime.tiling import TILE_TOLERANCE, measure_tile_pad, tile_grid, tiled_apply
from srgan_cli.runtime.torch_backend import TorchUpscaler
from srgan_cli.sr.models import SRResNet

from .conftest import make_photo, tiny_model

CPU = torch.device("cpu")


def network(name: str) -> nn.Module:
    """Tiny random models built with spandrel's own classes."""
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(0)
    if name == "rrdb":
        return ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=2, scale=4)
    if name == "compact":
        return Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=4, upscale=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SwinIR(img_size=16, embed_dim=12, depths=[2], num_heads=[2], window_size=4, upscale=2,
                      upsampler="pixelshuffledirect", mlp_ratio=2)  # fmt: skip


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SRGAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(third_party, "_PADS", {})


def saved(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.safetensors"
    save_file(network(name).state_dict(), str(path))
    return path


def _described(path: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return describe(path)


@pytest.mark.parametrize(("name", "scale", "align"), [("rrdb", 4, 1), ("compact", 2, 1), ("swinir", 2, 4)])
def test_tiled_equals_untiled_with_the_measured_pad(
    tmp_path: Path, name: str, scale: int, align: int
) -> None:
    path = saved(tmp_path, name)
    photo = make_photo(40, 44).astype(np.float32) / 255
    whole = SpandrelUpscaler(_described(path), device=CPU, tile=0)(photo)
    notes: list[str] = []
    tiled_up = SpandrelUpscaler(_described(path), device=CPU, tile=16, notes=notes)
    tiled = tiled_up(photo)
    assert tiled.shape == whole.shape == (40 * scale, 44 * scale, 3) and tiled_up.last_tile == 16
    assert tiled_up.measured is not None and tiled_up.measured.exact and notes == []
    assert tiled_up.tile_align == align and tiled_up.measured.pad % align == 0
    assert np.abs(tiled - whole).max() <= 1 / 255
    if name != "swinir":  # the pad matters: one pixel of context leaves seams
        seams = SpandrelUpscaler(_described(path), device=CPU, tile=16, tile_pad=1)(photo)
        assert np.abs(seams - whole).max() > 1 / 255


def test_window_models_get_tiles_on_their_window_grid() -> None:
    for tile, align in [(16, 4), (13, 4), (50, 8), (5, 8)]:
        grid = tile_grid(45, 71, tile, align)
        cover = np.zeros((45, 71), dtype=int)
        for y0, y1, x0, x1 in grid:
            assert y0 % align == 0 and x0 % align == 0
            cover[y0:y1, x0:x1] += 1
        assert (cover == 1).all()
    assert tile_grid(45, 71, 16) == tile_grid(45, 71, 16, 1)  # unaligned: as before


def test_the_pad_is_measured_once_per_model_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = saved(tmp_path, "compact")
    first = SpandrelUpscaler(_described(path), device=CPU, tile=16)
    assert first.measured is not None
    cached = list((tmp_path / "cache" / "tile-pads").glob("*.json"))
    assert len(cached) == 1

    def never(*_: object, **__: object) -> None:
        raise AssertionError("measured again")

    monkeypatch.setattr(third_party, "measure_tile_pad", never)
    assert SpandrelUpscaler(_described(path), device=CPU, tile=16).measured == first.measured  # memory
    monkeypatch.setattr(third_party, "_PADS", {})
    assert SpandrelUpscaler(_described(path), device=CPU, tile=16).measured == first.measured  # disk


def test_the_pad_is_only_measured_when_an_image_is_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--tile auto` (None) may or may not cut an image: the pad is asked for only when it does."""
    path = saved(tmp_path, "compact")
    up = SpandrelUpscaler(_described(path), device=CPU, tile=None)
    up(make_photo(12, 12).astype(np.float32) / 255)
    assert up.measured is None
    monkeypatch.setattr("srgan_cli.runtime.torch_backend.auto_tile", lambda *_, **__: 16)
    up(make_photo(40, 40).astype(np.float32) / 255)
    assert up.measured is not None and up.last_tile == 16


def test_an_explicit_pad_is_used_as_given(tmp_path: Path) -> None:
    up = SpandrelUpscaler(_described(saved(tmp_path, "compact")), device=CPU, tile=16, tile_pad=7)
    assert up.tile_pad == 7 and up.measured is None


def test_the_api_and_cli_default_to_the_measured_pad(tmp_path: Path) -> None:
    path = saved(tmp_path, "compact")
    photo = make_photo(40, 36)
    whole = srgan_cli.Upscaler(path, device="cpu", tile=0)(photo).astype(int)
    tiled = srgan_cli.Upscaler(path, device="cpu", tile=16)(photo).astype(int)
    assert np.abs(whole - tiled).max() <= 1
    src, out = tmp_path / "p.png", tmp_path / "o.png"
    Image.fromarray(photo).save(src)
    args = ["upscale", str(src), "-m", str(path), "-o", str(out), "--device", "cpu", "--tile", "16"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert np.abs(np.asarray(Image.open(out)).astype(int) - whole).max() <= 1


class _GlobalTint(nn.Module):
    """Every output pixel sees the image's mean (global pooling, as channel attention does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest") + 0.5 * (
            x.mean(dim=(2, 3), keepdim=True) - 0.5
        )


class _Descriptor:
    """What SpandrelUpscaler reads of a spandrel ModelDescriptor."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.scale, self.purpose = model, 2, "SR"
        self.input_channels = self.output_channels = 3
        self.supports_half = self.supports_bfloat16 = False
        self.architecture = type("Arch", (), {"name": "GlobalTint", "id": "global"})()
        self.size_requirements = type("Needs", (), {"multiple_of": 1, "minimum": 0})()
        self.tiling = type("Tiling", (), {"name": "SUPPORTED"})()


def test_a_model_no_pad_covers_says_how_far_tiles_may_differ() -> None:
    notes: list[str] = []
    up = SpandrelUpscaler(_Descriptor(_GlobalTint()), device=CPU, tile=16, notes=notes)
    assert up.measured is not None and not up.measured.exact
    assert len(notes) == 1 and "tiles cannot match the whole image exactly" in notes[0]
    said = float(re.search(r"up to ([0-9.]+)/255", notes[0]).group(1))  # type: ignore[union-attr]
    assert said > TILE_TOLERANCE * 255
    # on the kind of pattern it was measured on, tiles differ by about what it says
    ramp = torch.linspace(0, 1, 96)
    x = (0.6 * torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(1)) + 0.4 * ramp).clamp(0, 1)
    whole = up.upscale_tensor(x)
    tiled = tiled_apply(x, up._run, 2, tile=16, pad=up.measured.pad)
    assert 0 < float((tiled - whole).abs().max()) * 255 <= said * 1.5


def test_a_window_grid_tiles_do_not_follow_is_seen() -> None:
    """Measured as if it had no window (tiles anywhere), SwinIR differs everywhere: approximate."""
    model = network("swinir").eval()
    with torch.inference_mode():
        assert measure_tile_pad(model, 2, align=4, sides=(24,)).exact
        unaligned = measure_tile_pad(model, 2, align=1, sides=(24,))
    assert not unaligned.exact and unaligned.max_diff > TILE_TOLERANCE


def test_our_srresnet_pads_by_its_receptive_radius() -> None:
    model = tiny_model(4)
    up = TorchUpscaler(model, device=CPU, tile=16, tile_pad=None)
    assert up.tile_pad == SRResNet.receptive_radius(model.config)
    pixels = np.random.default_rng(3).random((35, 46, 3)).astype(np.float32)
    whole = TorchUpscaler(model, device=CPU, tile=0)(pixels)
    assert np.abs(up(pixels) - whole).max() < 1e-5


def test_measuring_a_local_model_finds_its_receptive_radius() -> None:
    """A stack of k 3x3 convolutions reaches exactly k LR pixels; the measured pad covers that."""
    torch.manual_seed(0)
    convs = nn.Sequential(*[nn.Conv2d(3, 3, 3, padding=1) for _ in range(6)])
    with torch.no_grad():
        for conv in convs:
            conv.weight.mul_(3)  # enough gain that the sixth pixel still shows above the tolerance

    def run(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(convs(x), scale_factor=2, mode="nearest")

    with torch.no_grad():
        found = measure_tile_pad(run, 2)
    assert found.exact and found.radius <= 6 <= found.pad
