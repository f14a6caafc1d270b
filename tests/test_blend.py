"""Blending two models of one architecture: `srgan interpolate` and `srgan upscale --blend` for
community models (tiny Compact models built with spandrel's classes) and our own weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import srgan_cli
from srgan_cli import blend, weights
from srgan_cli.cli.app import app
from srgan_cli.errors import ArgumentError, ArgumentTypeError, ForeignWeights, WeightsMismatch
from srgan_cli.runtime.third_party import describe, read_state_dict

from .conftest import make_photo, tiny_model

runner = CliRunner()


def _compact(seed: int, *, feat: int = 8, scale: int = 2) -> dict[str, torch.Tensor]:
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(seed)
    return Compact(num_in_ch=3, num_out_ch=3, num_feat=feat, num_conv=2, upscale=scale).state_dict()


@pytest.fixture
def compact(tmp_path: Path) -> dict[str, Path]:
    """Two x2 Compact models (a .pth and a .safetensors) and three that cannot blend with them."""
    from spandrel.architectures.ESRGAN import ESRGAN

    folder = tmp_path / "models"
    folder.mkdir()
    paths = {
        name: folder / file
        for name, file in {
            "a": "compact_a.pth",
            "b": "compact_b.safetensors",
            "wide": "wide.safetensors",
            "x4": "compact_x4.safetensors",
            "rrdb": "rrdb.safetensors",
        }.items()
    }
    torch.save(_compact(0), paths["a"])
    save_file(_compact(1), paths["b"])
    save_file(_compact(2, feat=16), paths["wide"])
    save_file(_compact(3, scale=4), paths["x4"])
    torch.manual_seed(4)
    save_file(ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2).state_dict(), paths["rrdb"])
    return paths


@pytest.fixture
def ours(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "psnr_x4.safetensors", tmp_path / "gan_x4.safetensors"
    weights.save(a, tiny_model(4, seed=0), trained_on="photos")
    weights.save(b, tiny_model(4, seed=1), trained_on="photos")
    return a, b


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    src = tmp_path / "p.png"
    Image.fromarray(make_photo(20, 24)).save(src)
    return src


def _interpolate(a: Path, b: Path, alpha: float, out: Path) -> None:
    args = ["interpolate", str(a), str(b), "--alpha", str(alpha), "-o", str(out), "--overwrite"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output


def _upscale(*args: str) -> np.ndarray:
    # torch in both runs: on the CPU, backend auto may time a file's ONNX export faster (a blend made
    # at load time always runs on torch), and the two may differ by a grey level
    result = runner.invoke(app, ["upscale", *args, "--device", "cpu", "--backend", "torch", "--overwrite"])
    assert result.exit_code == 0, result.output
    out = args[args.index("-o") + 1]
    return np.asarray(Image.open(out))


def _refused(args: list[str], *words: str) -> None:
    """Exit 2 with one error (no traceback) naming what differs."""
    result = runner.invoke(app, args)
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert text.count("error:") == 1 and "Traceback" not in text, result.output
    for word in words:
        assert word in text, result.output


def test_community_blend_is_a_tensor_by_tensor_mix(compact: dict[str, Path], tmp_path: Path) -> None:
    sa, sb = read_state_dict(compact["a"]), read_state_dict(compact["b"])
    out = tmp_path / "blend.safetensors"
    for alpha, expect in ((0.0, sa), (1.0, sb)):
        _interpolate(compact["a"], compact["b"], alpha, out)
        mixed = load_file(out)
        assert mixed.keys() == sa.keys()
        for k, v in mixed.items():
            assert torch.equal(v, expect[k]), (alpha, k)
    _interpolate(compact["a"], compact["b"], 0.5, out)
    mixed = load_file(out)
    for k, v in mixed.items():
        torch.testing.assert_close(v, (sa[k] + sb[k]) / 2)
    assert any(not torch.equal(sa[k], sb[k]) for k in sa)

    # spandrel recognises the blend again; it is a community model, not srgan-cli weights
    descriptor = describe(out)
    assert descriptor.architecture.name == "RealESRGAN Compact" and descriptor.scale == 2
    with pytest.raises(ForeignWeights):
        weights.read_info(out)
    with safe_open(str(out), "pt") as fh:
        meta = fh.metadata()
    record = json.loads(meta["interpolation"])
    assert meta["format"] == blend.FORMAT and meta["scale"] == "2"
    assert record["alpha"] == 0.5 and record["formula"] == blend.FORMULA
    assert record["first"]["file"] == "compact_a.pth" and record["second"]["file"] == "compact_b.safetensors"
    assert len(record["first"]["sha256"]) == 64 and record["first"]["sha256"] != record["second"]["sha256"]


def test_blended_file_upscales_as_blend_option(compact: dict[str, Path], photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "blend.safetensors"
    _interpolate(compact["a"], compact["b"], 0.3, out)
    from_file = _upscale(str(photo), "-m", str(out), "-o", str(tmp_path / "file.png"))
    in_memory = _upscale(
        str(photo), "-m", str(compact["a"]), "--blend", f"{compact['b']}:0.3", "-o", str(tmp_path / "mem.png")
    )
    assert from_file.shape == (40, 48, 3)
    np.testing.assert_array_equal(in_memory, from_file)
    plain = _upscale(str(photo), "-m", str(compact["a"]), "-o", str(tmp_path / "plain.png"))
    assert not np.array_equal(plain, in_memory)

    # beside the input the name says which blend made it; --json names it too
    result = runner.invoke(
        app, ["upscale", str(photo), "-m", str(compact["a"]), "--blend", f"{compact['b']}:0.3", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["model"] == "compact_a+compact_b@0.3"
    assert (photo.parent / "p_x2_compact_a+compact_b@0.3.png").is_file()


def test_our_weights_blend_at_load_time(ours: tuple[Path, Path], photo: Path, tmp_path: Path) -> None:
    a, b = ours
    out = tmp_path / "mix_x4.safetensors"
    _interpolate(a, b, 0.25, out)
    assert weights.read_info(out).provenance["interpolation"]["alpha"] == 0.25
    from_file = _upscale(str(photo), "-m", str(out), "-o", str(tmp_path / "file.png"))
    in_memory = _upscale(str(photo), "-m", str(a), "--blend", f"{b}:0.25", "-o", str(tmp_path / "mem.png"))
    np.testing.assert_array_equal(in_memory, from_file)

    # the Python API takes the same blend
    up = srgan_cli.Upscaler(a, device="cpu", blend=(b, 0.25))
    assert up.name == "psnr_x4+gan_x4@0.25"
    np.testing.assert_array_equal(np.asarray(up(photo)), from_file)
    with pytest.raises(ArgumentError, match="from 0 to 1"):
        srgan_cli.Upscaler(a, device="cpu", blend=(b, 1.5))
    with pytest.raises(ArgumentTypeError, match="pair"):
        srgan_cli.Upscaler(a, device="cpu", blend=b)  # type: ignore[arg-type]


def test_mismatched_models_are_refused(
    compact: dict[str, Path], ours: tuple[Path, Path], photo: Path, tmp_path: Path
) -> None:
    a, out = str(compact["a"]), str(tmp_path / "no.safetensors")
    cases = {
        "rrdb": ("different architectures", "ESRGAN"),
        "wide": ("shape", "body.0.weight"),
        "x4": ("different scales", "x2 vs x4"),
    }
    for name, words in cases.items():
        _refused(["interpolate", a, str(compact[name]), "--alpha", "0.5", "-o", out], *words)
        _refused(["upscale", str(photo), "-m", a, "--blend", f"{compact[name]}:0.5"], *words)
    _refused(["interpolate", a, str(ours[0]), "--alpha", "0.5", "-o", out], "different architectures")
    _refused(["upscale", str(photo), "-m", str(ours[0]), "--blend", f"{a}:0.5"], "different architectures")
    assert not Path(out).exists()

    blend_b = f"{compact['b']}:"
    _refused(["upscale", str(photo), "-m", a, "--blend", f"{blend_b}1.5"], "from 0 to 1")
    _refused(["upscale", str(photo), "-m", a, "--blend", f"{blend_b}nan"], "from 0 to 1")
    _refused(["upscale", str(photo), "-m", a, "--blend", f"{blend_b}x"], "MODEL:ALPHA")
    _refused(["upscale", str(photo), "-m", a, "--blend", str(compact["b"])], "MODEL:ALPHA")
    _refused(["upscale", str(photo), "--blend", f"{blend_b}0.5"], "-m")
    _refused(["upscale", str(photo), "-m", a, "--blend", f"{blend_b}0.5", "--backend", "onnx"], "torch")
    assert not list(photo.parent.glob("p_x*"))  # nothing written by any refused run


def test_mix_keeps_integer_tensors_of_the_first() -> None:
    first = {"w": torch.zeros(2), "n": torch.tensor(3)}
    second = {"w": torch.ones(2), "n": torch.tensor(7)}
    mixed = blend.mix(first, second, 0.25, ("a", "b"))
    torch.testing.assert_close(mixed["w"], torch.full((2,), 0.25))
    assert mixed["n"].item() == 3 and mixed["n"].dtype == torch.int64
    with pytest.raises(WeightsMismatch, match="only one of them, e.g. extra"):
        blend.mix(first, {**second, "extra": torch.ones(1)}, 0.5, ("a", "b"))
    with pytest.raises(WeightsMismatch, match="floating in one and integer"):
        blend.mix(first, {**second, "n": torch.tensor(7.0)}, 0.5, ("a", "b"))


def test_parse_blend() -> None:
    assert blend.parse_blend("C:\\models\\b.pth:0.3") == blend.Blend("C:\\models\\b.pth", 0.3)
    assert blend.parse_blend("b:1") == blend.Blend("b", 1.0)
    for bad in ("b", ":0.3", "b:-0.1", "b:inf"):
        with pytest.raises(ArgumentError):
            blend.parse_blend(bad)
