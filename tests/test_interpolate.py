"""Network interpolation: `archs.interpolate` and `srgan interpolate`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from srgan_cli import archs, weights
from srgan_cli.cli.app import app
from srgan_cli.errors import WeightsMismatch

from .conftest import tiny_model

runner = CliRunner()


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "psnr.safetensors", tmp_path / "gan.safetensors"
    weights.save(a, tiny_model(4, seed=0), trained_on="photos", provenance={"stage": "pretrain"})
    weights.save(b, tiny_model(4, seed=1), trained_on="photos", provenance={"stage": "gan"})
    return a, b


def _state(path: Path) -> dict[str, torch.Tensor]:
    return archs.load(path).model.state_dict()


def test_interpolation_is_a_weight_by_weight_blend(pair: tuple[Path, Path]) -> None:
    a, b = pair
    sa, sb = _state(a), _state(b)
    assert any(not torch.equal(sa[k], sb[k]) for k in sa)
    for alpha, expect in ((0.0, sa), (1.0, sb)):
        model, _ = archs.interpolate(a, b, alpha)
        for k, v in model.state_dict().items():
            assert torch.equal(v, expect[k]), (alpha, k)
    model, provenance = archs.interpolate(a, b, 0.25)
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.75 * sa[k] + 0.25 * sb[k])
    info = provenance["interpolation"]
    assert info["alpha"] == 0.25
    assert info["first"]["provenance"] == {"stage": "pretrain"}
    assert info["second"]["provenance"] == {"stage": "gan"}
    # the blend is a working x4 model
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert model(x).shape == (1, 3, 32, 32)


def test_interpolation_refuses_different_models(pair: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = pair
    other = tmp_path / "x2.safetensors"
    weights.save(other, tiny_model(2))
    with pytest.raises(WeightsMismatch, match="differ in config fields scale"):
        archs.interpolate(a, other, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        archs.interpolate(a, a, 1.5)


def test_interpolate_command(pair: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = pair
    out = tmp_path / "blend.safetensors"
    result = runner.invoke(app, ["interpolate", str(a), str(b), "--alpha", "0.5", "-o", str(out)])
    assert result.exit_code == 0, result.output
    info = weights.read_info(out)
    assert info.arch == "srresnet" and info.scale == 4 and info.trained_on == "photos"
    assert info.provenance["interpolation"]["alpha"] == 0.5
    blend, sa, sb = _state(out), _state(a), _state(b)
    k = next(k for k, v in sa.items() if v.is_floating_point() and not torch.equal(v, sb[k]))
    np.testing.assert_allclose(blend[k].numpy(), ((sa[k] + sb[k]) / 2).numpy(), rtol=1e-6, atol=1e-7)

    before = out.read_bytes()
    result = runner.invoke(app, ["interpolate", str(a), str(b), "--alpha", "0.9", "-o", str(out)])
    assert result.exit_code == 2 and "exists" in result.output
    assert out.read_bytes() == before  # nothing the user had is overwritten unless asked
    result = runner.invoke(
        app, ["interpolate", str(a), str(b), "--alpha", "0.9", "-o", str(out), "--overwrite"]
    )
    assert result.exit_code == 0 and weights.read_info(out).provenance["interpolation"]["alpha"] == 0.9

    result = runner.invoke(app, ["interpolate", str(a), str(b), "--alpha", "1.5", "-o", str(out)])
    assert result.exit_code == 2
    result = runner.invoke(
        app, ["interpolate", str(a), str(b), "--alpha", "0.5", "-o", str(tmp_path / "x.pt")]
    )
    assert result.exit_code == 2 and "safetensors" in result.output
    weights.save(tmp_path / "x2.safetensors", tiny_model(2))
    result = runner.invoke(
        app,
        [
            "interpolate",
            str(a),
            str(tmp_path / "x2.safetensors"),
            "--alpha",
            "0.5",
            "-o",
            str(tmp_path / "y.safetensors"),
        ],
    )
    assert result.exit_code != 0 and "scale" in " ".join(result.output.split())
    assert not (tmp_path / "y.safetensors").exists()
