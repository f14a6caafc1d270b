"""Issue 40: output names say the real scale and the model, and an existing output counts as done
only when the manifest says this input, model, scale and quality made it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from srgan_cli.cli.app import app
from srgan_cli.runtime.batch import model_tag
from srgan_cli.runtime.manifest import MANIFEST

from .conftest import make_photo

runner = CliRunner()


def upscale(*args: object) -> tuple[int, dict]:
    result = runner.invoke(app, ["upscale", *[str(a) for a in args], "--device", "cpu", "--json"])
    return result.exit_code, json.loads(result.stdout)


def photos(folder: Path, names: tuple[str, ...] = ("a.png", "b.png")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(make_photo(10, 12, seed=i)).save(folder / name)
    return folder


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_names_beside_the_inputs_carry_scale_and_model(weights_dir: Path, tmp_path: Path) -> None:
    src = photos(tmp_path / "in", ("a.png", "b.TIF", "c.JPG"))
    assert upscale(src, "-m", "tiny_x4")[0] == 0
    assert upscale(src, "-m", "tiny_x4", "-s", "2")[0] == 0
    assert upscale(src, "-m", "tiny_x4", "-s", "1.5", "--format", "webp")[0] == 0
    assert visible(src) == sorted(
        [
            *("a.png", "b.TIF", "c.JPG"),
            *("a_x4_tiny.png", "b_x4_tiny.TIF", "c_x4_tiny.JPG"),  # .tif stays .tif, .JPG stays .JPG
            *("a_x2_tiny.png", "b_x2_tiny.TIF", "c_x2_tiny.JPG"),  # -s 2: the real scale
            *("a_x1.5_tiny.webp", "b_x1.5_tiny.webp", "c_x1.5_tiny.webp"),
        ]
    )
    # tiny_x2 would make the same names, which tiny_x4 at -s 2 made: it says so instead of skipping
    code, report = upscale(src, "-m", "tiny_x2")
    assert code == 1 and {r["status"] for r in report["results"]} == {"failed"}
    assert "made by tiny_x4 at x2; this run is tiny_x2 at x2" in report["results"][0]["error"]
    assert model_tag("srgan_x4_real", 4) == "srgan_real" and model_tag("dir/RealESRGAN_x4plus.pth", 4)


def test_a_rerun_with_another_model_or_scale_says_why_it_does_not_skip(
    weights_dir: Path, tmp_path: Path
) -> None:
    src, out = photos(tmp_path / "in"), tmp_path / "out"
    assert upscale(src, "-o", out, "-m", "tiny_x4")[1]["ok"] == 2
    code, report = upscale(src, "-o", out, "-m", "tiny_x4")  # the same run again: done
    assert code == 0 and report["skipped"] == 2
    code, report = upscale(src, "-o", out, "-m", "tiny_x4", "-s", "2")
    assert code == 1 and report["ok"] == 0 and report["failed"] == 2
    first = report["results"][0]
    assert first["error"] == "output exists, made by tiny_x4 at x4; this run is tiny_x4 at x2"
    code, report = upscale(src, "-o", out, "-m", "tiny_x2")
    assert "made by tiny_x4 at x4; this run is tiny_x2 at x2" in report["results"][0]["error"]
    # --overwrite does the work and records it; --skip-existing keeps whatever is there
    assert upscale(src, "-o", out, "-m", "tiny_x2", "--overwrite")[1]["ok"] == 2
    assert upscale(src, "-o", out, "-m", "tiny_x2")[1]["skipped"] == 2
    assert upscale(src, "-o", out, "-m", "tiny_x4", "--skip-existing")[1]["skipped"] == 2
    with Image.open(out / "a.png") as im:
        assert im.size == (24, 20)


def test_quality_counts_for_lossy_outputs_only(weights_dir: Path, tmp_path: Path) -> None:
    src, out = photos(tmp_path / "in", ("a.jpg",)), tmp_path / "out"
    assert upscale(src, "-o", out, "-m", "tiny_x2")[0] == 0
    code, report = upscale(src, "-o", out, "-m", "tiny_x2", "--quality", "80")
    assert code == 1 and "quality 95; this run is tiny_x2 at x2, quality 80" in report["results"][0]["error"]
    png_out = tmp_path / "png"
    assert upscale(src, "-o", png_out, "-m", "tiny_x2", "--format", "png")[0] == 0
    assert (
        upscale(src, "-o", png_out, "-m", "tiny_x2", "--format", "png", "--quality", "80")[1]["skipped"] == 1
    )


def test_an_output_of_another_input_or_an_older_input_is_not_done(weights_dir: Path, tmp_path: Path) -> None:
    first, second, out = photos(tmp_path / "in1"), photos(tmp_path / "in2"), tmp_path / "out"
    assert upscale(first, "-o", out, "-m", "tiny_x2")[0] == 0
    code, report = upscale(second, "-o", out, "-m", "tiny_x2")  # same names, other files
    assert code == 1 and report["results"][0]["error"].startswith("output exists, made from another input")
    Image.fromarray(make_photo(10, 12, seed=7)).save(first / "a.png")  # the input changed since
    os.utime(first / "a.png", ns=(1, 1))
    code, report = upscale(first, "-o", out, "-m", "tiny_x2")
    rows = {Path(r["input"]).name: r for r in report["results"]}
    assert rows["a.png"]["error"] == "output exists, made from an earlier version of this input"
    assert rows["b.png"]["status"] == "skipped"
    (out / "b.png").write_bytes((out / "b.png").read_bytes() + b"\0")  # replaced by something else
    code, report = upscale(first, "-o", out, "-m", "tiny_x2")
    rows = {Path(r["input"]).name: r for r in report["results"]}
    assert "no record of what made it" in rows["b.png"]["error"]
    lines = (out / MANIFEST).read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["made_by"]["model"] == "tiny_x2"


def test_outputs_recorded_beside_inputs_are_not_taken_as_inputs(weights_dir: Path, tmp_path: Path) -> None:
    src = photos(tmp_path / "in", ("a.png",))
    assert upscale(src, "-m", "tiny_x4")[1]["ok"] == 1
    code, report = upscale(src, "-m", "tiny_x2")  # a_x4_tiny.png is an output, not a new input
    assert code == 0 and [Path(r["input"]).name for r in report["results"]] == ["a.png"]
    assert visible(src) == ["a.png", "a_x2_tiny.png", "a_x4_tiny.png"]


def test_an_output_with_an_unknown_suffix_is_refused(weights_dir: Path, tmp_path: Path) -> None:
    src = photos(tmp_path / "in", ("a.png",)) / "a.png"
    result = runner.invoke(app, ["upscale", str(src), "-o", str(tmp_path / "result.xyz"), "-m", "tiny_x2"])
    flat = " ".join(result.output.split())  # Rich wraps at the terminal's width, wherever the path ends
    assert result.exit_code == 2 and "'.xyz' is not an image suffix" in flat
    assert not (tmp_path / "result.xyz").exists()


def test_an_onnx_run_beside_the_inputs_is_named_apart(weights_dir: Path, tmp_path: Path) -> None:
    src = photos(tmp_path / "in", ("a.png",))
    onnx = tmp_path / "tiny_x4.onnx"
    assert runner.invoke(app, ["export-onnx", "-m", "tiny_x4", "-o", str(onnx)]).exit_code == 0
    assert upscale(src / "a.png", "-m", "tiny_x4")[0] == 0
    code, report = upscale(src / "a.png", "-m", onnx)  # the same model through ONNX Runtime
    assert code == 0 and Path(report["results"][0]["output"]).name == "a_x4_tiny_onnx.png"
