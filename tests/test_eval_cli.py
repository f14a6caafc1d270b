"""`srgan eval`: several models in one table, LPIPS from --lpips-weights or skipped with a note."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from srgan_cli import weights
from srgan_cli.cli.app import app
from srgan_cli.metrics import lpips as lpips_mod

from .conftest import tiny_model

runner = CliRunner()


@pytest.fixture
def two_x4(weights_dir: Path) -> Path:
    """weights_dir plus a second, different x4 model."""
    weights.save(weights_dir / "other_x4.safetensors", tiny_model(4, seed=1), trained_on="nothing")
    return weights_dir


def invoke(*args: object) -> tuple[int, str, str]:
    result = runner.invoke(app, ["eval", *(str(a) for a in args)], env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def test_two_models_json_with_lpips(two_x4: Path, photo_dir: Path, lpips_dir: Path) -> None:
    code, out, err = invoke(
        "-m", "tiny_x4", "-m", "other_x4", "--data", photo_dir, "--lpips-weights", lpips_dir, "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["scale"] == 4 and report["lpips"] is True
    assert [r["method"] for r in report["results"]] == ["bicubic", "tiny_x4", "other_x4"]
    for r in report["results"]:
        assert len(r["images"]) == 3 and all(im["lpips"] > 0 for im in r["images"])
        assert r["lpips"] == pytest.approx(sum(im["lpips"] for im in r["images"]) / 3, abs=1e-4)
    # two different models give two different sets of numbers
    assert report["results"][1]["images"] != report["results"][2]["images"]
    assert "skipped" not in err


def test_table_has_lpips_columns(two_x4: Path, photo_dir: Path, lpips_dir: Path) -> None:
    code, out, err = invoke(
        "-m", "tiny_x4", "-m", "other_x4", "--data", photo_dir, "--lpips-weights", lpips_dir
    )
    assert code == 0, err
    # the results table is on stdout (`srgan eval ... > scores.txt`), notes and progress on stderr
    assert "lower is better" in out and out.count("LPIPS") >= 3
    assert "other_x4" in out and "mean" in out and "p2" in out and "mean" not in err


def test_lpips_from_env(weights_dir: Path, photo_dir: Path, lpips_dir: Path) -> None:
    result = runner.invoke(
        app,
        ["eval", "-m", "tiny_x4", "--data", str(photo_dir), "--json"],
        env={lpips_mod.ENV_VAR: str(lpips_dir)},
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["lpips"] is True


def test_lpips_skipped_with_note(weights_dir: Path, photo_dir: Path) -> None:
    code, out, err = invoke("-m", "tiny_x4", "--data", photo_dir, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["lpips"] is False and all(r["lpips"] is None for r in report["results"])
    assert "LPIPS skipped" in err and "--lpips-weights" in err
    code, out, err = invoke("-m", "tiny_x4", "--data", photo_dir)
    assert code == 0 and "LPIPS skipped" in err and "PSNR" in out and "LPIPS↓" not in out


def test_bad_explicit_lpips_weights_is_an_error(weights_dir: Path, photo_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, out, err = invoke("-m", "tiny_x4", "--data", photo_dir, "--lpips-weights", tmp_path / "empty")
    assert code == 2 and out == ""
    assert "alexnet_features.safetensors" in err and "--lpips-weights" in err


def test_models_of_different_scales_are_refused(weights_dir: Path, photo_dir: Path) -> None:
    code, _, err = invoke("-m", "tiny_x4", "-m", "tiny_x2", "--data", photo_dir)
    assert code == 2
    assert "different scales" in err and "tiny_x2 (x2)" in err and "--scale N" in " ".join(err.split())


def test_scale_scores_other_scales_through_a_resample(weights_dir: Path, photo_dir: Path) -> None:
    code, out, err = invoke("-m", "tiny_x4", "-m", "tiny_x2", "--data", photo_dir, "--scale", "2", "--json")
    assert code == 0, err
    both = json.loads(out)
    assert both["scale"] == 2
    assert [r["method"] for r in both["results"]] == ["bicubic", "tiny_x4 -s 2", "tiny_x2"]
    code, out, err = invoke("-m", "tiny_x2", "--data", photo_dir, "--json")
    assert code == 0, err
    alone = json.loads(out)
    # the same x2 pairs: bicubic and the native x2 model score exactly as without --scale
    assert both["results"][0] == alone["results"][0] and both["results"][2] == alone["results"][1]
    assert both["results"][1]["images"] != both["results"][2]["images"]
    assert all(im["psnr"] > 5 for im in both["results"][1]["images"])  # a real image, not a shape mishap


def test_degrade_matches_a_hand_built_damaged_copy(weights_dir: Path, tmp_path: Path) -> None:
    """`--degrade blur=0.6,noise=4,jpeg=35` scores exactly the LR one builds by hand: PIL's bicubic
    x4 downscale, a Gaussian blur (OpenCV), Gaussian noise seeded by the image's name, a PIL JPEG."""
    import io

    import cv2
    import numpy as np
    from PIL import Image

    from srgan_cli.degradations.damage import image_seed
    from srgan_cli.runtime.loader import build_upscaler
    from srgan_cli.sr.data import EvalPair
    from srgan_cli.sr.evaluate import evaluate

    from .conftest import make_photo

    data = tmp_path / "hr"
    data.mkdir()
    hand: list[EvalPair] = []
    for i, (h, w) in enumerate([(96, 130), (72, 72)]):
        hr = make_photo(h, w, seed=i)
        Image.fromarray(hr).save(data / f"p{i}.png")
        hr = hr[: h - h % 4, : w - w % 4]
        lr = np.array(
            Image.fromarray(hr).resize((hr.shape[1] // 4, hr.shape[0] // 4), Image.BICUBIC), np.float64
        )
        lr = cv2.GaussianBlur(lr, (0, 0), 0.6, borderType=cv2.BORDER_REFLECT_101)
        lr = lr + np.random.default_rng(image_seed(f"p{i}", 7)).normal(0, 4.0, lr.shape)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(np.round(lr), 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=35)
        hand.append(EvalPair(f"p{i}", np.array(Image.open(buffer).convert("RGB")), hr))

    code, out, err = invoke(
        "-m",
        "tiny_x4",
        "--data",
        data,
        "--degrade",
        "blur=0.6,noise=4,jpeg=35",
        "--degrade-seed",
        7,
        "--json",
    )
    assert code == 0, err
    report = json.loads(out)
    assert [s["name"] for s in report["sets"]] == ["clean", "blur=0.6,noise=4,jpeg=35"]
    damaged = report["sets"][1]["results"]
    upscaler = build_upscaler(
        "tiny_x4", device="cpu", precision="fp32", tile=None, tile_pad=32, mode="auto"
    ).upscaler
    for got, expected in zip(
        damaged, [evaluate(hand, 4, None, "bicubic"), evaluate(hand, 4, upscaler, "tiny_x4")], strict=True
    ):
        assert got["method"] == expected.method
        for a, b in zip(got["images"], expected.images, strict=True):
            assert (a["psnr"], a["ssim"], a["block"]) == (b.psnr, b.ssim, b.block)
    clean = report["sets"][0]["results"][0]
    assert clean["psnr"] > damaged[0]["psnr"] + 1  # the damage is real
    assert damaged[0]["images"][0]["block"] is not None  # 96x128: two 32 px block periods

    code, out, err = invoke("-m", "tiny_x4", "--data", data, "--degrade", "heavy", "--no-clean")
    assert (
        code == 0 and "heavy LR (blur=0.8,noise=10,jpeg=30)" in out and "clean" not in out and "block" in out
    ), err
    code, out, err = invoke("-m", "tiny_x4", "--data", data, "--degrade", "h265=30", "--no-clean")
    assert code == 0 and "h265=30 LR" in out, err
    code, _, err = invoke("-m", "tiny_x4", "--data", data, "--degrade", "jpeg=500")
    assert code == 2 and "quality" in err


def test_eval_at_a_scale_that_does_not_divide_the_grid_block(weights_dir: Path, photo_dir: Path) -> None:
    result = runner.invoke(app, ["eval", "-m", "tiny_x4", "--data", str(photo_dir), "--scale", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["scale"] == 3
