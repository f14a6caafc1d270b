"""Garbage refused, not written: weights holding NaN/Inf at load, and a model whose output overflows
(finite weights, e.g. in fp16) on the first tile of an image or any later one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from srgan_cli import weights
from srgan_cli.cli.app import app
from srgan_cli.errors import NonFiniteOutput
from srgan_cli.runtime.torch_backend import TensorUpscaler, TorchUpscaler

from .bad_files import poisoned
from .conftest import make_photo, tiny_model

runner = CliRunner()
CPU = torch.device("cpu")


def _photos(folder: Path, n: int = 2) -> Path:
    folder.mkdir()
    for i in range(n):
        Image.fromarray(make_photo(32, 24, seed=i)).save(folder / f"p{i}.png")
    return folder


def test_upscale_with_nan_weights_fails_and_writes_nothing(tmp_path: Path) -> None:
    """Used to write an all-black image and exit 0."""
    model = tiny_model(2)
    model.load_state_dict(poisoned(model.state_dict(), ["head.0.weight"]))
    path = weights.save(tmp_path / "nan.safetensors", model)
    src, out = _photos(tmp_path / "in"), tmp_path / "out"
    result = runner.invoke(app, ["upscale", str(src), "-m", str(path), "-o", str(out), "--device", "cpu"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "nan.safetensors: 1 tensor holds NaN or infinite values (e.g. head.0.weight): the file is" in text
    assert not out.exists() or not any(out.iterdir())
    inspected = runner.invoke(app, ["models", "--inspect", str(path)])
    assert inspected.exit_code == 2 and "1 tensor holds NaN" in " ".join(inspected.output.split())


def _overflowing(factor: float, convs: int = 1) -> torch.nn.Module:
    """Finite weights whose first `convs` convolutions are `factor` times too large: 1e5 on one
    overflows fp16's 65504 but not fp32; 1e20 on three overflows fp32 too."""
    model = tiny_model(2)
    with torch.no_grad():
        for weight in [p for p in model.parameters() if p.dim() == 4][:convs]:
            weight.mul_(factor)
    return model


def test_output_that_overflows_in_fp16_is_refused_with_the_fp32_hint() -> None:
    photo = make_photo(16, 16).astype(np.float32) / 255
    assert np.isfinite(TorchUpscaler(_overflowing(1e5), device=CPU, tile=0)(photo)).all()
    half = TorchUpscaler(_overflowing(1e5), device=CPU, dtype=torch.float16, tile=0)
    try:
        with pytest.raises(
            NonFiniteOutput, match=r"output holds NaN or infinite values \(precision fp16\)"
        ) as e:
            half(photo)
    except RuntimeError as exc:  # a torch build without half-precision CPU convolutions
        pytest.skip(f"no fp16 convolution on this CPU: {exc}")
    assert e.value.hint == "try --precision fp32"


def test_upscale_with_overflowing_weights_fails_each_file_and_writes_nothing(tmp_path: Path) -> None:
    path = weights.save(tmp_path / "huge.safetensors", _overflowing(1e20, convs=3))
    src, out = _photos(tmp_path / "in"), tmp_path / "out"
    args = ["upscale", str(src), "-m", str(path), "-o", str(out), "--device", "cpu", "--tile", "16"]
    result = runner.invoke(app, args)
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "Traceback" not in result.output
    sentence = "the model's output holds NaN or infinite values (precision fp32): the result would be garbage"
    assert text.count(sentence) >= 2 and "0 upscaled" in text
    assert not out.exists() or not any(out.iterdir())


class _Upsampler(TensorUpscaler):
    """x2 nearest upsampling whose output is NaN wherever a tile is bright: a model that overflows
    only on some content, so the first tile of an image can be fine and a later one not."""

    def __init__(self, tile: int) -> None:
        self.device, self.scale, self.tile, self.tile_pad = CPU, 2, tile, 0

    def _pass(self) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(x: torch.Tensor) -> torch.Tensor:
            y = F.interpolate(x, scale_factor=2, mode="nearest")
            return y / 0.0 if bool(x.mean() > 0.5) else y  # (x / 0: Inf, NaN where x is 0)

        return run


@pytest.mark.parametrize("tile", [0, 8])
def test_a_later_tile_that_overflows_is_caught_too(tile: int) -> None:
    image = np.zeros((16, 16, 3), np.float32)
    assert _Upsampler(tile)(image).shape == (32, 32, 3)  # dark everywhere: fine, and clamped
    image[8:, 8:] = 1.0  # bright in the last tile only (the whole image stays dark on average)
    if tile == 0:
        assert _Upsampler(tile)(image).max() == 1.0
        return
    with pytest.raises(NonFiniteOutput, match=r"precision fp32\): the result would be garbage") as e:
        _Upsampler(tile)(image)
    assert e.value.hint is None


def _onnx_upsampler(path: Path, gain: float) -> Path:
    """A x2 ONNX model by hand (nearest upsampling, then times `gain` twice): with a finite gain of
    3e38 every non-zero pixel overflows float32; no torch export needed."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node(
            "Constant", [], ["scales"], value=helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 2, 2])
        ),
        helper.make_node("Resize", ["input", "", "scales"], ["up"], mode="nearest"),
        helper.make_node(
            "Constant", [], ["gain"], value=helper.make_tensor("g", TensorProto.FLOAT, [], [gain])
        ),
        helper.make_node("Mul", ["up", "gain"], ["once"]),
        helper.make_node("Mul", ["once", "gain"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "upsampler",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 3, "H", "W"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("tile", [0, 8])
def test_an_onnx_model_whose_output_overflows_is_refused(tmp_path: Path, tile: int) -> None:
    from srgan_cli.runtime.onnx_backend import OnnxUpscaler

    image = np.zeros((16, 16, 3), np.float32)
    image[8:, 8:] = 0.5  # non-zero in the last tile only
    fine = OnnxUpscaler(_onnx_upsampler(tmp_path / "fine.onnx", 1.0), device="cpu", tile=tile, tile_pad=0)
    assert np.array_equal(fine(image), np.kron(image, np.ones((2, 2, 1), np.float32)))
    bad = OnnxUpscaler(_onnx_upsampler(tmp_path / "bad.onnx", 3e38), device="cpu", tile=tile, tile_pad=0)
    with pytest.raises(NonFiniteOutput, match="the result would be garbage"):
        bad(image)
    photos = _photos(tmp_path / "in")
    result = runner.invoke(
        app, ["upscale", str(photos), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "bad.onnx")]
    )
    assert result.exit_code == 1 and "garbage" in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.png"))
