"""The `srgan` command end to end with Typer's CliRunner and tiny models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from srgan_cli import __version__
from srgan_cli.cli.app import app

from .conftest import make_photo, tiny_model

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def test_version() -> None:
    code, out = run("--version")
    assert code == 0 and __version__ in out
    proc = subprocess.run([sys.executable, "-m", "srgan_cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and __version__ in proc.stdout


def test_upscale_one_file_default_name(weights_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "photo.png"
    Image.fromarray(make_photo(20, 30)).save(src)
    code, out = run("upscale", src, "-m", "tiny_x4", "--device", "cpu")
    assert code == 0, out
    with Image.open(tmp_path / "photo_x4_tiny.png") as im:  # the scale, and the model when not the default
        assert im.size == (120, 80)
    # a second run refuses to replace a named file's output unless asked
    code, out = run("upscale", src, "-m", "tiny_x4")
    assert code == 1 and "already exists" in out
    code, out = run("upscale", src, "-m", "tiny_x4", "--overwrite")
    assert code == 0


def test_upscale_explicit_output_outscale_and_format(weights_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "photo.jpg"
    Image.fromarray(make_photo(20, 30)).save(src, quality=95)
    dst = tmp_path / "out" / "big.webp"
    code, out = run("upscale", src, "-m", "tiny_x4", "-o", dst, "-s", "2.5", "--quality", "90")
    assert code == 0, out
    with Image.open(dst) as im:
        assert im.format == "WEBP" and im.size == (75, 50)
    code, out = run("upscale", src, "-m", "tiny_x4", "--format", "tiff", "--suffix", "_big")
    assert code == 0, out
    assert (tmp_path / "photo_big.tiff").is_file()


def test_upscale_folder_recursive_json_and_resume(weights_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(make_photo(16, 16, 1)).save(src / "a.png")
    Image.fromarray(make_photo(16, 24, 2)).save(src / "sub" / "b.jpg")
    out = tmp_path / "out"
    code, text = run("upscale", src, "-r", "-o", out, "-m", "tiny_x4", "--json")
    assert code == 0, text
    summary = json.loads(text)
    assert summary["ok"] == 2 and summary["failed"] == 0 and summary["scale"] == 4
    assert {Path(r["output"]).relative_to(out).as_posix() for r in summary["results"]} == {
        "a.png",
        "sub/b.jpg",
    }
    assert (out / "sub" / "b.jpg").is_file()
    # rerun: folder outputs that exist are skipped (resume), --overwrite redoes them
    summary = json.loads(run("upscale", src, "-r", "-o", out, "-m", "tiny_x4", "--json")[1])
    assert summary["skipped"] == 2 and summary["ok"] == 0
    summary = json.loads(run("upscale", src, "-r", "-o", out, "-m", "tiny_x4", "--json", "--overwrite")[1])
    assert summary["ok"] == 2
    # without --recursive only the top level is seen
    summary = json.loads(run("upscale", src, "-o", tmp_path / "flat", "-m", "tiny_x4", "--json")[1])
    assert summary["ok"] == 1


def test_outputs_beside_inputs_are_not_upscaled_again(weights_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(make_photo(12, 12)).save(src / "a.png")
    assert json.loads(run("upscale", src, "-m", "tiny_x4", "--json")[1])["ok"] == 1
    summary = json.loads(run("upscale", src, "-m", "tiny_x4", "--json")[1])
    assert summary["skipped"] == 1 and summary["ok"] == 0
    assert sorted(p.name for p in src.iterdir() if not p.name.startswith(".")) == ["a.png", "a_x4_tiny.png"]
    # writing into the input folder without a suffix would replace the inputs: refused per file
    code, text = run("upscale", src, "-o", src, "-m", "tiny_x4", "--json")
    assert code == 1 and "overwrite the input" in text


def test_glob_input(weights_dir: Path, tmp_path: Path) -> None:
    for i in range(2):
        Image.fromarray(make_photo(12, 12, i)).save(tmp_path / f"g{i}.png")
    code, text = run("upscale", str(tmp_path / "g*.png"), "-o", tmp_path / "o", "-m", "tiny_x4", "--json")
    assert code == 0, text
    assert json.loads(text)["ok"] == 2


def test_batch_with_bad_files_goes_on(weights_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(make_photo(16, 16)).save(src / "good.png")
    (src / "empty.png").write_bytes(b"")
    (src / "text.jpg").write_bytes(b"hello, I am not a JPEG" * 10)
    full = src / "full.png"
    Image.fromarray(make_photo(64, 64)).save(full)
    raw = full.read_bytes()
    (src / "cut.png").write_bytes(raw[: len(raw) // 2])
    full.unlink()
    out = tmp_path / "out"
    code, text = run("upscale", src, tmp_path / "missing.png", "-o", out, "-m", "tiny_x4", "--json")
    assert code == 1
    summary = json.loads(text)
    status = {Path(r["input"]).name: r for r in summary["results"]}
    assert status["good.png"]["status"] == "ok"
    for bad in ("empty.png", "text.jpg", "cut.png", "missing.png"):
        assert status[bad]["status"] == "failed" and status[bad]["error"]
    assert "empty" in status["empty.png"]["error"]
    visible = sorted(p.name for p in out.iterdir() if p.name != ".srgan-manifest.jsonl")
    assert visible == ["good.png"]  # nothing half-written, no temp files
    # the human-readable summary names the failures too
    code, text = run("upscale", src, "-o", tmp_path / "out2", "-m", "tiny_x4")
    assert code == 1 and "cut.png" in text and "1 upscaled" in text


def test_input_is_never_overwritten(weights_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "a.png"
    Image.fromarray(make_photo(12, 12)).save(src)
    before = src.read_bytes()
    code, text = run("upscale", src, "-o", src, "-m", "tiny_x4", "--overwrite")
    assert code == 1 and "overwrite the input" in text
    assert src.read_bytes() == before


def test_image_kinds_round_trip(weights_dir: Path, tmp_path: Path) -> None:
    rgb = make_photo(12, 20)
    # EXIF orientation 6 (rotate 90 degrees clockwise to display): output is upright, 4x
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    # RGBA with a transparent half
    rgba = np.dstack([rgb, np.where(np.arange(20)[None, :] < 10, 255, 0).repeat(12, 0).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(rgb[..., 0], "L").save(tmp_path / "gray.png")
    deep = (rgb.astype(np.uint16) * 257)[..., ::-1]  # BGR for cv2
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    code, text = run("upscale", tmp_path, "-o", tmp_path / "out", "-m", "tiny_x4", "--json")
    assert code == 0, text
    with Image.open(tmp_path / "out" / "rot.jpg") as im:
        assert im.size == (48, 80)  # 12x20 stored, shown as 20 wide x 12 high rotated -> 12 wide
        assert im.getexif().get(0x0112, 1) == 1
    with Image.open(tmp_path / "out" / "alpha.png") as im:
        assert im.mode == "RGBA" and im.size == (80, 48)
    with Image.open(tmp_path / "out" / "gray.png") as im:
        assert im.mode == "L" and im.size == (80, 48)
    out16 = cv2.imread(str(tmp_path / "out" / "deep.png"), cv2.IMREAD_UNCHANGED)
    assert out16.dtype == np.uint16 and out16.shape == (48, 80, 3)


def test_bad_options_and_weights(weights_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "a.png"
    Image.fromarray(make_photo(12, 12)).save(src)
    code, text = run("upscale", src, "-m", "tiny_x4", "--device", "cpu", "--precision", "fp16")
    assert code == 2 and "fp16" in text
    code, text = run("upscale", src, "-m", "does_not_exist")
    assert code == 2 and "no weights named" in text
    code, text = run("upscale", src, "-m", tmp_path / "missing.safetensors")
    assert code == 2 and "not found" in text
    code, text = run("upscale", src, "-m", "tiny_x4", "--tile", "banana")
    assert code == 2


@pytest.mark.parametrize("tile", ["0", "16", "auto"])
def test_tile_options(weights_dir: Path, tmp_path: Path, tile: str) -> None:
    src = tmp_path / "a.png"
    Image.fromarray(make_photo(40, 36)).save(src)
    code, text = run(
        "upscale", src, "-m", "tiny_x4", "--tile", tile, "--tile-pad", "40", "-o", tmp_path / f"{tile}.png"
    )
    assert code == 0, text
    first = np.asarray(Image.open(tmp_path / f"{tile}.png"))
    assert first.shape == (160, 144, 3)


def test_models_lists_weights(weights_dir: Path) -> None:
    code, text = run("models", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(text)}
    assert rows["tiny_x4"]["scale"] == 4 and rows["tiny_x4"]["params"] > 0
    assert rows["tiny_x4"]["metrics"]["val_psnr_y"] == 1.0
    assert rows["tiny_x4"]["use"] == "" and rows["srresnet_x4_fast"]["use"].startswith("CPU")
    code, text = run("models")
    assert code == 0 and "tiny_x2" in text


def test_models_table_shows_whole_names_and_uses_in_80_columns(
    weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from srgan_cli import weights
    from srgan_cli.cli import common

    long_name = "srresnet_x4_holiday_finetune"
    weights.save(weights_dir / f"{long_name}.safetensors", tiny_model(4), trained_on="holiday")
    monkeypatch.setattr(common.console, "width", 80)
    code, text = run("models")
    assert code == 0
    assert max(len(line) for line in text.splitlines()) <= 80
    names = {line.split()[0] for line in text.splitlines() if line.strip()}
    shipped = [i.name for i in weights.list_models() if weights.shipped_use(i)]
    assert {"srresnet_x4", "srresnet_x4_fast", "srgan_x4", long_name} <= names and len(shipped) >= 3
    assert "(default)" in text and "holiday" in text.split(long_name, 1)[1]  # its use: what it was trained on
    # a user's file named like a shipped one gets none of its notes
    weights.save(weights_dir / "srgan_x4.safetensors", tiny_model(4), trained_on="mine")
    assert not weights.shipped_use(weights.read_info("srgan_x4"))


def test_eval_json(weights_dir: Path, photo_dir: Path) -> None:
    result = runner.invoke(app, ["eval", "-m", "tiny_x2", "--data", str(photo_dir), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # stderr may carry a note (e.g. LPIPS skipped)
    methods = [r["method"] for r in report["results"]]
    assert methods == ["bicubic", "tiny_x2"]
    assert len(report["results"][0]["images"]) == 3
    assert report["results"][0]["psnr"] > 20  # bicubic on smooth images is good
    assert all(r["grid"] >= 0 for r in report["results"])  # checkerboard measure, always in the JSON
    result = runner.invoke(app, ["eval", "-m", "tiny_x2", "--data", str(photo_dir), "--grid"])
    assert result.exit_code == 0, result.output
    assert "grid" in result.output


def test_train_command_and_resume(photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        photo_dir,
        "--out",
        out,
        "--scale",
        "2",
        "--n-blocks",
        "1",
        "--n-feats",
        "8",
        "--crop",
        "16",
        "--batch-size",
        "2",
        "--steps",
        "4",
        "--device",
        "cpu",
        "--val",
        photo_dir,
        "--val-every",
        "4",
        "--checkpoint-every",
        "2",
    ]
    code, text = run(*args)
    assert code == 0, text
    assert (out / "srresnet_x2.safetensors").is_file()
    code, text = run("train", "--out", out, "--resume", "--steps", "6")  # options come from the checkpoint
    assert code == 0, text
    code, text = run("train", "--out", out)
    assert code == 2 and "--data" in text
    code, text = run(*args)
    assert code == 1 and "--resume" in text


def test_training_help_shows_each_default_from_its_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """The training commands' options default to None (saved runs and --config fill the gaps), so
    their help says each default itself, taken from the config dataclass, escaped from Rich markup."""
    from srgan_cli.lapgan.train import LapganTrainConfig
    from srgan_cli.sr.config import TrainConfig
    from srgan_cli.text2img.trainer import Text2ImgTrainConfig

    monkeypatch.setenv("COLUMNS", "200")
    cases = {
        ("train",): [
            f"Residual blocks. [default: {TrainConfig().n_blocks}]",
            "[default: 2e-4; gan 1e-4]",
            "[default: 2e-8]",
        ],
        ("lapgan", "train"): [f"Coarsest side. [default: {LapganTrainConfig().base}]", "[default: 2e-4]"],
        ("text2img", "train"): [f"G width. [default: {Text2ImgTrainConfig().ngf}]", "[default: spectral]"],
    }
    for command, expected in cases.items():
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0, result.output
        for text in expected:
            assert text in result.output, (command, text)


def test_auto_model_sends_low_quality_jpegs_to_the_real_world_model(
    weights_dir: Path, tmp_path: Path
) -> None:
    from srgan_cli import weights
    from srgan_cli.imageio import jpeg_quality

    # stand-ins for the two shipped models (SRGAN_WEIGHTS_DIR is searched first)
    weights.save(weights_dir / "srresnet_x4.safetensors", tiny_model(4, seed=3), trained_on="x")
    weights.save(weights_dir / "srgan_x4_real.safetensors", tiny_model(4, seed=4), trained_on="x")
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(make_photo(20, 24, seed=1)).save(src / "a.png")
    Image.fromarray(make_photo(20, 24, seed=2)).save(src / "b.jpg", quality=50)  # damaged: real model
    Image.fromarray(make_photo(20, 24, seed=3)).save(src / "c.jpg", quality=90)  # a good JPEG: default
    Image.fromarray(make_photo(20, 24, seed=4)).save(
        src / "d.png.jpg", format="PNG"
    )  # a PNG, whatever the name
    cv2.imwrite(str(src / "e.jpeg"), make_photo(20, 24, seed=5)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 30])
    assert [jpeg_quality(src / n) for n in ("a.png", "b.jpg", "c.jpg", "d.png.jpg", "e.jpeg")] == [
        None,
        50,
        90,
        None,
        30,
    ]
    code, out = run(
        "upscale", src, "-o", tmp_path / "auto", "-m", "auto", "--device", "cpu", "--format", "png", "--json"
    )
    assert code == 0, out
    summary = json.loads(out[out.index("{") :])
    assert summary["model"] == "auto" and summary["models"] == {"srresnet_x4": 3, "srgan_x4_real": 2}
    names = [Path(r["input"]).name for r in summary["results"]]
    assert names == ["a.png", "b.jpg", "c.jpg", "d.png.jpg", "e.jpeg"]  # input order kept
    for name, model in [
        ("a", "srresnet_x4"),
        ("b", "srgan_x4_real"),
        ("c", "srresnet_x4"),
        ("e", "srgan_x4_real"),
    ]:
        code, out = run(
            "upscale", src, "-o", tmp_path / model, "-m", model, "--device", "cpu", "--format", "png"
        )
        assert code == 0, out
        assert np.array_equal(
            np.array(Image.open(tmp_path / "auto" / f"{name}.png")),
            np.array(Image.open(tmp_path / model / f"{name}.png")),
        ), name
    code, out = run("upscale", src / "a.png", "-m", "auto", "--mode", "lapgan")
    assert code == 2 and "-m auto" in out
