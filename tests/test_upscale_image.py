"""Whole-image handling shared by every backend: gray, alpha without fringes, exact outscale."""

from __future__ import annotations

import numpy as np

from srgan_cli.imageio import ImageData
from srgan_cli.runtime.upscaler import upscale_image


class Nearest:
    """A stand-in upscaler with an exactly known output: nearest-neighbour x2."""

    backend = "test"
    scale = 2

    def __init__(self) -> None:
        self.calls: list[np.ndarray] = []

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        self.calls.append(pixels)
        return pixels.repeat(2, axis=0).repeat(2, axis=1)


def test_gray_in_gray_out() -> None:
    gray = np.random.default_rng(0).random((5, 7, 1)).astype(np.float32)
    out = upscale_image(Nearest(), ImageData(gray, None))
    assert out.pixels.shape == (10, 14, 1)
    np.testing.assert_allclose(out.pixels[::2, ::2], gray, atol=1e-6)


def test_alpha_is_upscaled_and_hidden_colour_is_filled() -> None:
    rgb = np.zeros((6, 8, 3), np.float32)
    rgb[:, :4] = [0.2, 0.8, 0.4]  # visible green half; the transparent half hides black
    alpha = np.zeros((6, 8), np.float32)
    alpha[:, :4] = 1.0
    up = Nearest()
    out = upscale_image(up, ImageData(rgb, alpha))
    assert out.alpha is not None and out.alpha.shape == (12, 16)
    np.testing.assert_allclose(out.alpha[:, :8], 1.0)
    np.testing.assert_allclose(out.alpha[:, 8:], 0.0)
    # what the model saw under the transparent half is the neighbouring green, not black
    seen = up.calls[0]
    assert np.abs(seen[:, 4:] - np.array([0.2, 0.8, 0.4])).max() < 0.05
    np.testing.assert_allclose(out.pixels[:, :8], np.broadcast_to([0.2, 0.8, 0.4], (12, 8, 3)), atol=1e-6)


def test_opaque_alpha_skips_the_second_pass() -> None:
    rgb = np.full((4, 4, 3), 0.5, np.float32)
    up = Nearest()
    out = upscale_image(up, ImageData(rgb, np.ones((4, 4), np.float32)))
    assert len(up.calls) == 1 and out.alpha is not None and out.alpha.min() == 1.0


def test_outscale_gives_the_exact_size() -> None:
    rgb = np.random.default_rng(1).random((10, 15, 3)).astype(np.float32)
    for outscale, size in [(1.5, (15, 22)), (3.0, (30, 45)), (0.5, (5, 8)), (2.0, (20, 30))]:
        out = upscale_image(Nearest(), ImageData(rgb, None), outscale)
        assert out.pixels.shape[:2] == size
        assert out.pixels.min() >= 0.0 and out.pixels.max() <= 1.0


def test_8bit_rgb_is_rounded_by_the_upscaler_and_written_byte_for_byte_the_same(tmp_path) -> None:  # noqa: ANN001
    """The device-side uint8 result (upscale_u8) gives the same file as the float32 result."""
    import torch

    from srgan_cli.imageio import read_image, write_image
    from srgan_cli.runtime.torch_backend import TorchUpscaler

    from .conftest import make_photo, tiny_model

    up = TorchUpscaler(tiny_model(2, global_skip=True), device=torch.device("cpu"), tile=0)
    image = ImageData(make_photo(24, 20).astype(np.float32) / 255.0, None)
    fast = upscale_image(up, image)
    assert fast.pixels.dtype == np.uint8 and fast.pixels.shape == (48, 40, 3)
    slow = image.replace(pixels=up(image.pixels))  # the float path, rounded by write_image
    for fmt in ("png", "jpg", "webp", "tiff"):
        a = write_image(tmp_path / f"fast.{fmt}", fast)
        b = write_image(tmp_path / f"slow.{fmt}", slow)
        assert a.read_bytes() == b.read_bytes(), fmt
    assert np.array_equal(read_image(tmp_path / "fast.png").pixels, read_image(tmp_path / "slow.png").pixels)

    # gray, alpha, other scales and 16-bit keep the float path
    assert upscale_image(up, image, outscale=3).pixels.dtype == np.float32
    assert upscale_image(up, image.replace(bit_depth=16)).pixels.dtype == np.float32
    assert upscale_image(up, image.replace(alpha=np.ones((24, 20), np.float32))).pixels.dtype == np.float32
    assert upscale_image(up, ImageData(image.pixels[..., :1], None)).pixels.dtype == np.float32
    assert upscale_image(up, image, outscale=2.0).pixels.dtype == np.uint8  # the model's own scale


def test_uint8_pixels_are_8bit() -> None:
    import pytest

    with pytest.raises(ValueError, match="8-bit"):
        ImageData(np.zeros((2, 2, 3), np.uint8), None, bit_depth=16)
