"""Geometric self-ensemble: exact inverse transforms, any backend, the CLI option on upscale and eval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from srgan_cli.cli.app import app
from srgan_cli.errors import UsageError
from srgan_cli.runtime.ensemble import SelfEnsemble
from srgan_cli.runtime.loader import build_upscaler, with_self_ensemble
from srgan_cli.runtime.onnx_export import export_onnx
from srgan_cli.runtime.torch_backend import TorchUpscaler

from .conftest import make_photo, tiny_model

runner = CliRunner()


class Recorder:
    """Nearest-neighbour x2 plus an optional left-to-right ramp (which no mirror leaves alone)."""

    backend = "test"
    scale = 2

    def __init__(self, ramp: float = 0.0) -> None:
        self.ramp = ramp
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        assert pixels.flags.c_contiguous  # backends may hand the array to a runtime as it is
        self.shapes.append(pixels.shape)
        out = pixels.repeat(2, axis=0).repeat(2, axis=1)
        width = out.shape[1]
        return out + self.ramp * np.linspace(0, 1, width, dtype=np.float32)[None, :, None]


@pytest.mark.parametrize("passes", [1, 2, 4, 8])
def test_transforms_are_undone_exactly(passes: int) -> None:
    # a model that commutes with flips and rotations: every pass gives back the same image
    pixels = np.random.default_rng(0).random((5, 9, 3)).astype(np.float32)  # not square
    inner = Recorder()
    out = SelfEnsemble(inner, passes)(pixels)
    np.testing.assert_allclose(out, pixels.repeat(2, axis=0).repeat(2, axis=1), atol=1e-6)
    assert len(inner.shapes) == passes
    transposed = [s for s in inner.shapes if s == (9, 5, 3)]
    assert len(transposed) == (4 if passes == 8 else 0)  # 2 and 4 passes keep the shape


@pytest.mark.parametrize("passes", [2, 4, 8])
def test_what_the_passes_disagree_on_is_averaged(passes: int) -> None:
    # the ramp points right in every pass's own frame; undone, half of the passes see it running
    # the other way, so the average is a flat +0.5 on top of the exact upscale
    pixels = np.random.default_rng(1).random((4, 6, 3)).astype(np.float32)
    single = Recorder(ramp=1.0)(pixels)
    out = SelfEnsemble(Recorder(ramp=1.0), passes)(pixels)
    np.testing.assert_allclose(out, pixels.repeat(2, axis=0).repeat(2, axis=1) + 0.5, atol=1e-6)
    assert np.abs(single - out).max() > 0.4


def test_real_model_stays_close_to_one_pass_and_keeps_the_shape() -> None:
    model = tiny_model(4, global_skip=True)
    up = TorchUpscaler(model, device=torch.device("cpu"), tile=0)
    pixels = make_photo(21, 30).astype(np.float32) / 255
    one = up(pixels)
    eight = SelfEnsemble(up, 8)(pixels)
    assert eight.shape == one.shape == (84, 120, 3) and eight.dtype == np.float32
    diff = np.abs(eight - one)
    assert 0 < diff.mean() < 0.05  # the same model, seen from eight sides
    assert eight.min() >= 0.0 and eight.max() <= 1.0


def test_onnx_backend_takes_transposed_inputs(tmp_path: Path) -> None:
    path = tmp_path / "tiny.onnx"
    export_onnx(tiny_model(4, global_skip=True), path, source={"weights": "tiny"})
    torch_up = with_self_ensemble(build_upscaler(str(path), device="cpu"), 8)
    assert torch_up.backend == "onnx" and torch_up.self_ensemble == 8
    ref = SelfEnsemble(TorchUpscaler(tiny_model(4, global_skip=True), device=torch.device("cpu"), tile=0), 8)
    pixels = make_photo(17, 26).astype(np.float32) / 255
    assert np.abs(torch_up.upscaler(pixels) - ref(pixels)).max() < 1e-4


def test_with_self_ensemble_rewraps_and_refuses_odd_counts(weights_dir: Path) -> None:
    ready = build_upscaler("tiny_x4", device="cpu")
    plain = ready.upscaler
    ready = with_self_ensemble(with_self_ensemble(ready, 8), 2)
    assert isinstance(ready.upscaler, SelfEnsemble) and ready.upscaler.passes == 2
    assert ready.upscaler.inner is plain  # not an ensemble of ensembles
    assert with_self_ensemble(ready, 1).upscaler is plain
    with pytest.raises(UsageError, match="1, 2, 4, 8"):
        with_self_ensemble(ready, 3)
    with pytest.raises(ValueError, match="not 6"):
        SelfEnsemble(plain, 6)


def test_upscale_cli(weights_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "photo.png"
    Image.fromarray(make_photo(19, 27)).save(src)
    pixels = {}
    for n in ("1", "8"):
        dst = tmp_path / f"out{n}.png"
        result = runner.invoke(
            app,
            ["upscale", str(src), "-m", "tiny_x4", "--device", "cpu", "-o", str(dst)]
            + ["--self-ensemble", n, "--json"],
        )
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["self_ensemble"] == int(n) and summary["ok"] == 1
        pixels[n] = np.asarray(Image.open(dst)).astype(int)
    assert pixels["1"].shape == pixels["8"].shape == (76, 108, 3)
    assert 0 < np.abs(pixels["1"] - pixels["8"]).max() < 40

    result = runner.invoke(app, ["upscale", str(src), "-m", "tiny_x4", "--self-ensemble", "3"])
    assert result.exit_code == 2 and "--self-ensemble" in " ".join(result.output.split())


def test_eval_cli(weights_dir: Path, photo_dir: Path) -> None:
    reports = {}
    for n in ("1", "4"):
        result = runner.invoke(
            app, ["eval", "-m", "tiny_x4", "--data", str(photo_dir), "--self-ensemble", n, "--json"]
        )
        assert result.exit_code == 0, result.output
        reports[n] = json.loads(result.stdout)
        assert reports[n]["self_ensemble"] == int(n)
    bicubic = [r["results"][0] for r in reports.values()]
    assert bicubic[0] == bicubic[1]  # the baseline is never ensembled
    assert reports["1"]["results"][1]["images"] != reports["4"]["results"][1]["images"]
    result = runner.invoke(
        app,
        ["eval", "-m", "tiny_x4", "--data", str(photo_dir), "--self-ensemble", "4"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0 and "self-ensemble of 4" in " ".join(result.output.split())
