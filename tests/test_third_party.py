"""Community models through spandrel: tiny random RRDBNet (Real-ESRGAN), Compact (SRVGGNet) and
SwinIR built from spandrel's own classes, saved as .pth and .safetensors, found and run."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

import srgan_cli
from srgan_cli.cli.app import app

from .bad_files import poisoned, zip_bomb
from .conftest import make_photo

runner = CliRunner()


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(0)
    folder = tmp_path / "models"
    folder.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        swinir = SwinIR(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=2,
                        upsampler="pixelshuffledirect", mlp_ratio=2)  # fmt: skip
    compact = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
    torch.save(compact.state_dict(), folder / "compact_x2.pth")
    save_file(
        ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4).state_dict(),
        folder / "rrdb_x4.safetensors",
    )
    torch.save(swinir.state_dict(), folder / "swinir_x2.pth")
    return {
        "compact": folder / "compact_x2.pth",
        "rrdb": folder / "rrdb_x4.safetensors",
        "swinir": folder / "swinir_x2.pth",
    }


@pytest.mark.parametrize(("name", "scale"), [("compact", 2), ("rrdb", 4), ("swinir", 2)])
def test_detected_and_upscaled_tiled_as_untiled(
    models: dict[str, Path], tmp_path: Path, name: str, scale: int
) -> None:
    src = tmp_path / "p.png"
    Image.fromarray(make_photo(40, 36)).save(src)
    outs = {}
    for tile in ("0", "16"):
        out = tmp_path / f"{name}_{tile}.png"
        args = [
            "upscale",
            str(src),
            "-m",
            str(models[name]),
            "-o",
            str(out),
            "--device",
            "cpu",
            "--tile",
            tile,
        ]
        result = runner.invoke(app, [*args, "--tile-pad", "16"])
        assert result.exit_code == 0, result.output
        outs[tile] = np.asarray(Image.open(out)).astype(int)
    assert outs["0"].shape == (40 * scale, 36 * scale, 3)
    if name != "swinir":  # convolutions: a tile with enough context sees what the whole image does
        assert np.abs(outs["0"] - outs["16"]).max() <= 1
    up = srgan_cli.Upscaler(models[name], device="cpu")
    assert up.scale == scale and up(make_photo(20, 18)).shape == (20 * scale, 18 * scale, 3)


def test_inspect_says_what_a_file_is(models: dict[str, Path]) -> None:
    result = runner.invoke(app, ["models", "--inspect", str(models["rrdb"]), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["kind"] == "third-party (spandrel)" and facts["architecture"] == "ESRGAN"
    assert (
        facts["scale"] == 4
        and facts["purpose"] == "SR"
        and "fp32" in facts["precisions"]
        and facts["parameters"] > 0
    )
    text = runner.invoke(app, ["models", "--inspect", str(models["swinir"])]).output
    assert "architecture: SwinIR" in text and "tiling: discouraged" in text


def test_unknown_tensors_and_pickles_with_code_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "p.png"
    Image.fromarray(make_photo(16, 16)).save(src)
    odd = tmp_path / "odd.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)}, odd)
    result = runner.invoke(app, ["upscale", str(src), "-m", str(odd), "-o", str(tmp_path / "o.png")])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "neither srgan-cli weights nor an architecture spandrel knows" in text
    assert "2 tensors" in text and "Traceback" not in result.output

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (print, ("pwned",))

    bad = tmp_path / "evil.pth"
    bad.write_bytes(pickle.dumps({"params": Evil()}))
    result = runner.invoke(app, ["upscale", str(src), "-m", str(bad), "-o", str(tmp_path / "o.png")])
    assert (
        result.exit_code == 2
        and "pwned" not in result.output
        and "refused" in " ".join(result.output.split())
    )


def test_the_weights_folder_holds_both_kinds(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from srgan_cli import weights

    monkeypatch.setenv(weights.ENV_DIR, str(models["rrdb"].parent))
    listing = json.loads(runner.invoke(app, ["models", "--json"]).stdout)
    foreign = {row["name"] for row in listing if row["arch"] == "third-party"}
    assert foreign == {"compact_x2", "rrdb_x4", "swinir_x2"}
    assert "third-party models" in runner.invoke(app, ["models"]).output
    src = tmp_path / "p.png"
    Image.fromarray(make_photo(12, 12)).save(src)
    result = runner.invoke(app, ["upscale", str(src), "-m", "compact_x2", "-o", str(tmp_path / "o.png")])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "o.png") as im:
        assert im.size == (24, 24)


def test_export_onnx_where_the_architecture_exports(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "compact.onnx"
    result = runner.invoke(app, ["export-onnx", "-m", str(models["compact"]), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dynamic"] and report["max_abs_diff"] <= report["tolerance"]
    src = tmp_path / "p.png"
    Image.fromarray(make_photo(20, 16)).save(src)
    ran = runner.invoke(app, ["upscale", str(src), "-m", str(out), "-o", str(tmp_path / "o.png")])
    assert ran.exit_code == 0, ran.output
    with Image.open(tmp_path / "o.png") as im:
        assert im.size == (32, 40)
    half = runner.invoke(
        app,
        ["export-onnx", "-m", str(models["compact"]), "-o", str(tmp_path / "c16.onnx"), "--fp16", "--json"],
    )
    assert half.exit_code == 0, half.output  # its Resize keeps float32 scales in the fp16 graph
    assert json.loads(half.stdout)["precision"] == "fp16"
    # SwinIR traces its window padding at one size: the dynamic export is refused, a static one works
    bad = runner.invoke(app, ["export-onnx", "-m", str(models["swinir"]), "-o", str(tmp_path / "s.onnx")])
    assert bad.exit_code == 1 and "--static" in bad.output and not (tmp_path / "s.onnx").exists()
    good = runner.invoke(
        app, ["export-onnx", "-m", str(models["swinir"]), "-o", str(tmp_path / "s.onnx"), "--static", "32x32"]
    )
    assert good.exit_code == 0, good.output


def test_benchmark_and_eval_take_community_models(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SRGAN_CACHE_DIR", str(tmp_path / "cache"))  # the ONNX row's export goes there
    args = ["benchmark", "upscale", "-m", str(models["compact"]), "--size", "24x16", "--runs", "1"]
    result = runner.invoke(app, [*args, "--warmup", "0", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["backend"] for r in rows] == ["torch", "onnx"]  # ONNX: its cached export
    assert rows[0]["gflop_per_output_mp"] > 0 and rows[0]["output_size"] == [48, 32]
    photos = tmp_path / "val"
    photos.mkdir()
    Image.fromarray(make_photo(40, 40)).save(photos / "a.png")
    result = runner.invoke(app, ["eval", "--data", str(photos), "-m", str(models["compact"]), "--json"])
    assert result.exit_code == 0, result.output
    assert [r["method"] for r in json.loads(result.stdout)["results"]][0] == "bicubic"


def test_compile_runs_a_community_model_the_same(models: dict[str, Path]) -> None:
    """torch.compile of a spandrel model (the CPU's compiler here; CUDA graphs on a GPU)."""
    photo = make_photo(16, 16)
    plain = srgan_cli.Upscaler(models["compact"], device="cpu", tile=0)
    compiled = srgan_cli.Upscaler(models["compact"], device="cpu", tile=0, compile=True)
    assert compiled.runtime.upscaler.compiled  # type: ignore[attr-defined]
    assert np.abs(plain(photo).astype(int) - compiled(photo).astype(int)).max() <= 1


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_community_weights_holding_nan_are_refused(tmp_path: Path, suffix: str) -> None:
    """Refused by `srgan models --inspect` and `srgan upscale` alike, before spandrel builds it."""
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    state = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2).state_dict()
    names = [k for k in state if k.endswith("weight")][:2]
    path = tmp_path / f"compact_nan{suffix}"
    bad = poisoned(state, names)
    if suffix == ".pth":
        torch.save(bad, path)
    else:
        save_file(bad, str(path))
    sentence = f"2 tensors hold NaN or infinite values (e.g. {names[0]}): the file is damaged or the "
    sentence += "training diverged"
    inspected = runner.invoke(app, ["models", "--inspect", str(path)])
    assert inspected.exit_code == 2 and sentence in " ".join(inspected.output.split())
    src, out = tmp_path / "p.png", tmp_path / "o.png"
    Image.fromarray(make_photo(12, 12)).save(src)
    result = runner.invoke(app, ["upscale", str(src), "-m", str(path), "-o", str(out)])
    assert result.exit_code == 2 and sentence in " ".join(result.output.split()) and not out.exists()


def test_a_zip_bomb_is_refused_by_inspect_and_upscale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2 MB that unpack to 2 GiB: `srgan models --inspect` took 4.9 GB and `srgan upscale` 2.8 GB of
    memory to refuse one; now torch.load is never reached."""

    def never(*_: object, **__: object) -> None:
        raise AssertionError("torch.load was reached")

    bomb = zip_bomb(tmp_path / "bomb.pth")
    monkeypatch.setattr(torch, "load", never)
    inspected = runner.invoke(app, ["models", "--inspect", str(bomb)])
    assert inspected.exit_code == 2 and "(a zip bomb, not model weights)" in " ".join(
        inspected.output.split()
    )
    src, out = tmp_path / "p.png", tmp_path / "o.png"
    Image.fromarray(make_photo(12, 12)).save(src)
    result = runner.invoke(app, ["upscale", str(src), "-m", str(bomb), "-o", str(out)])
    assert result.exit_code == 2 and "zip bomb" in result.output and not out.exists()


@pytest.mark.parametrize("suffix", [".ckpt", ".bin"])
def test_ckpt_and_bin_files_are_read_as_torch_files(tmp_path: Path, suffix: str) -> None:
    """They were taken for safetensors ("not a safetensors weights file") before spandrel saw them."""
    from spandrel.architectures.Compact import Compact

    path = tmp_path / f"compact{suffix}"
    torch.save(Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2).state_dict(), path)
    result = runner.invoke(app, ["models", "--inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["architecture"] == "RealESRGAN Compact"
