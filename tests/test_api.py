"""`srgan_cli.Upscaler`, the promised Python surface: each input kind comes back as its own kind,
with the same pixels as `srgan upscale` writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import srgan_cli
from srgan_cli.cli.app import app
from srgan_cli.errors import UsageError

from .conftest import make_photo


@pytest.fixture
def up(weights_dir: Path) -> srgan_cli.Upscaler:
    return srgan_cli.Upscaler("tiny_x2", device="cpu")


def test_every_input_kind_comes_back_as_its_kind_with_the_cli_pixels(
    up: srgan_cli.Upscaler, tmp_path: Path
) -> None:
    photo = make_photo(20, 24)
    src = tmp_path / "p.png"
    Image.fromarray(photo).save(src)
    assert CliRunner().invoke(app, ["upscale", str(src), "-m", "tiny_x2", "--device", "cpu"]).exit_code == 0
    want = np.asarray(Image.open(tmp_path / "p_x2_tiny.png"))

    from_path = up(src)
    assert isinstance(from_path, Image.Image) and np.array_equal(np.asarray(from_path), want)
    assert np.array_equal(np.asarray(up(Image.fromarray(photo))), want)
    as_u8 = up(photo)
    assert as_u8.dtype == np.uint8 and np.array_equal(as_u8, want)
    as_float = up(photo.astype(np.float32) / 255)
    assert as_float.dtype == np.float32 and np.abs(as_float * 255 - want).max() <= 0.5 + 1e-3
    tensor = torch.from_numpy(photo).permute(2, 0, 1).float() / 255
    for x in (tensor, tensor[None].repeat(2, 1, 1, 1)):
        y = up(x)
        assert isinstance(y, torch.Tensor) and y.shape[-2:] == (40, 48) and y.ndim == x.ndim
        assert np.abs(y.reshape(-1, 3, 40, 48)[0].permute(1, 2, 0).numpy() * 255 - want).max() <= 0.5 + 1e-3
    assert up.scale == 2 and up.name == "tiny_x2" and "tiny_x2" in repr(up)


def test_gray_alpha_and_16_bit_arrays_keep_their_layout(up: srgan_cli.Upscaler) -> None:
    gray = up(make_photo(10, 12)[..., 0])
    assert gray.shape == (20, 24) and gray.dtype == np.uint8
    rgba = np.dstack([make_photo(10, 12), np.full((10, 12), 128, np.uint8)])
    out = up(rgba)
    assert out.shape == (20, 24, 4) and out.dtype == np.uint8  # alpha went through the model too
    deep = (make_photo(10, 12).astype(np.uint16) * 257)[..., :1]
    assert up(deep).dtype == np.uint16 and up(deep).shape == (20, 24, 1)
    gray_alpha = up(np.dstack([make_photo(10, 12)[..., :1], np.full((10, 12, 1), 200, np.uint8)]))
    assert gray_alpha.shape == (20, 24, 2) and gray_alpha.dtype == np.uint8  # gray + alpha stays so
    with pytest.raises(UsageError, match="image array"):
        up(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(UsageError, match="cannot upscale a dict"):
        up({})


def test_files_folders_and_outscale(weights_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        Image.fromarray(make_photo(16, 16, seed=i)).save(src / f"p{i}.png")
    (src / "bad.png").write_bytes(b"")
    up = srgan_cli.Upscaler("tiny_x2", device="cpu", outscale=3)
    results = up.upscale_folder(src, tmp_path / "out")
    assert sorted(r.status for r in results) == ["failed", "ok", "ok", "ok"]
    with Image.open(tmp_path / "out" / "p0.png") as im:
        assert im.size == (48, 48)
    assert up.upscale_file(src / "p1.png", tmp_path / "one.webp").is_file()
    assert up(make_photo(8, 8)).shape == (24, 24, 3)


def test_auto_is_a_cli_choice_with_advice() -> None:
    import pytest

    import srgan_cli
    from srgan_cli.errors import UsageError

    with pytest.raises(UsageError, match="srgan_x4_real for JPEGs saved at quality 75"):
        srgan_cli.Upscaler("auto")
