"""`srgan lapgan train|sample|eval` and `srgan upscale --mode lapgan` through the CLI, tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from srgan_cli import weights
from srgan_cli.cli.app import app
from srgan_cli.lapgan.models import Lapgan, LapganConfig

from .conftest import make_photo

runner = CliRunner()
TINY = ["--size", "16", "--base", "4", "--n-feats", "8", "--coarse-hidden", "16"]


def run(*args: object) -> tuple[int, str]:
    """Exit code and output with Rich's line wrapping undone (words joined by single spaces)."""
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture
def lapgan_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = Lapgan(LapganConfig(size=16, base=4, n_feats=8, coarse_hidden=16, noise_dim=8))
    return weights.save(tmp_path / "tiny_lapgan.safetensors", model, trained_on="nothing")


def test_train_then_sample_from_the_run(photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, text = run(
        "lapgan", "train", "--data", photo_dir, "--out", out, *TINY, "--steps", "2", "--batch-size", "2",
        "--device", "cpu",
    )  # fmt: skip
    assert code == 0, text
    assert "LAPGAN 4 -> 8 -> 16" in text and (out / "lapgan.safetensors").is_file()
    # a second call on the same run: one level again, model options taken from the run
    code, text = run(
        "lapgan", "train", "--out", out, "--level", "1", "--steps", "3", "--resume", "--device", "cpu"
    )
    assert code == 0, text
    assert "level 1: 3" in text
    assert "3 steps x batch 2 each" in text  # the batch size of the run's last call, said on the start line
    code, text = run("lapgan", "train", "--out", out, "--level", "1", "--device", "cpu")
    assert code == 1 and "already trained" in text and "--resume" in text
    grid = tmp_path / "grid.png"
    code, text = run(
        "lapgan", "sample", "-m", out / "lapgan.safetensors", "-n", "4", "-o", grid, "--device", "cpu"
    )
    assert code == 0, text
    assert Image.open(grid).size == (2 * 32 + 3 * 2, 2 * 32 + 3 * 2)  # 2x2 cells of 16 px, zoom 2


def test_train_bad_input(photo_dir: Path, tmp_path: Path) -> None:
    code, text = run("lapgan", "train", "--out", tmp_path / "new", "--size", "16")
    assert code == 2 and "--data is required" in text
    code, text = run("lapgan", "train", "--data", photo_dir, "--out", tmp_path / "r", "--size", "24")
    assert code == 1 and "must be the base 8 times a power of two" in text
    code, text = run("lapgan", "train", "--data", tmp_path / "missing", "--out", tmp_path / "r2", *TINY)
    assert code == 1 and "no such file or folder" in text


def test_sample_grid_levels_and_from_image(lapgan_file: Path, tmp_path: Path) -> None:
    grid = tmp_path / "g.png"
    code, text = run(
        "lapgan", "sample", "-m", lapgan_file, "-n", "3", "-o", grid, "--save-levels", "--seed", "7"
    )
    assert code == 0, text
    strips = sorted((tmp_path / "g").iterdir())
    assert [p.name for p in strips] == ["sample_000.png", "sample_001.png", "sample_002.png"]
    assert Image.open(strips[0]).size == (2 * (3 * 16 + 2 * 2), 32)  # 3 levels side by side, zoom 2
    first = np.asarray(Image.open(grid))
    code, text = run("lapgan", "sample", "-m", lapgan_file, "-n", "3", "-o", grid, "--seed", "7")
    assert code == 1 and "already exists" in text  # nothing is overwritten unless asked
    code, _ = run("lapgan", "sample", "-m", lapgan_file, "-n", "3", "-o", grid, "--seed", "7", "--overwrite")
    assert code == 0 and np.array_equal(first, np.asarray(Image.open(grid)))  # same seed, same grid

    src = tmp_path / "photo.png"
    Image.fromarray(make_photo(30, 40)).save(src)
    fig = tmp_path / "fig4.png"
    code, text = run(
        "lapgan", "sample", "-m", lapgan_file, "-n", "3", "-o", fig, "--from-image", src, "--zoom", "1"
    )
    assert code == 0, text
    assert "from the coarse level of" in text
    assert Image.open(fig).size == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2)  # coarse input + 3 draws, 2x2
    code, text = run(
        "lapgan", "sample", "-m", lapgan_file, "-o", tmp_path / "x.png", "--from-image", tmp_path / "no.png"
    )
    assert code != 0 and "no.png" in text


def test_wrong_kind_of_model_is_a_clear_error(lapgan_file: Path, weights_dir: Path, tmp_path: Path) -> None:
    code, text = run("lapgan", "sample", "-m", "tiny_x4", "-o", tmp_path / "s.png")
    assert code == 2 and "holds a 'srresnet' model, but a 'lapgan' is needed" in text
    src = tmp_path / "photo.png"
    Image.fromarray(make_photo(12, 14)).save(src)
    code, text = run("upscale", src, "-m", lapgan_file, "-o", tmp_path / "o.png", "--device", "cpu")
    assert code == 2 and "--mode lapgan" in text
    code, text = run("upscale", src, "--mode", "lapgan", "-m", "tiny_x4", "-o", tmp_path / "o.png")
    assert code == 2 and "but a 'lapgan' is needed" in text
    code, text = run("export-onnx", "-m", lapgan_file, "-o", tmp_path / "x.onnx")
    assert code == 2 and "'lapgan'" in text
    code, text = run("upscale", src, "--lapgan-levels", "1", "-m", "tiny_x4", "-o", tmp_path / "o.png")
    assert code == 2 and "--mode lapgan only" in text


def test_upscale_mode_lapgan(lapgan_file: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(make_photo(12, 14, seed=i)).save(folder / f"p{i}.png")
    (folder / "broken.png").write_bytes(b"nope")
    out = tmp_path / "out"
    code, text = run(
        "upscale", folder, "--mode", "lapgan", "-m", lapgan_file, "-o", out, "--device", "cpu", "--json"
    )
    assert code == 1  # the broken file fails, the rest of the batch goes on
    summary = json.loads(text[text.index("{") :])
    assert summary["scale"] == 4 and summary["ok"] == 2 and summary["failed"] == 1
    assert Image.open(out / "p0.png").size == (56, 48)
    code, text = run(
        "upscale", folder / "p1.png", "--mode", "lapgan", "--lapgan-levels", "1", "-m", lapgan_file,
        "-o", tmp_path / "x2.png", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, text
    assert Image.open(tmp_path / "x2.png").size == (28, 24)


def test_eval_scores_a_lapgan_next_to_bicubic(lapgan_file: Path, photo_dir: Path) -> None:
    code, text = run("eval", "--data", photo_dir, "-m", lapgan_file, "--device", "cpu", "--json")
    assert code == 0, text
    payload = json.loads(text[text.index("{") :])
    assert payload["scale"] == 4
    assert [r["method"] for r in payload["results"]] == ["bicubic", "tiny_lapgan"]


def test_lapgan_eval_parzen_json(lapgan_file: Path, photo_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(1)
    single = Lapgan(LapganConfig(size=16, base=16, coarse_hidden=8, noise_dim=8))
    single_file = weights.save(tmp_path / "single.safetensors", single)
    code, text = run(
        "lapgan", "eval", "-m", lapgan_file, "-m", single_file, "--data", photo_dir, "--samples", "50",
        "--crops", "20", "--device", "cpu", "--json",
    )  # fmt: skip
    assert code == 0, text
    results = json.loads(text[text.index("{") :])["results"]
    assert [(r["model"], r["levels"], r["n_test"], r["dims"]) for r in results] == [
        ("tiny_lapgan", 3, 10, 768),
        ("single", 1, 10, 768),
    ]
    code, text = run("lapgan", "eval", "-m", lapgan_file, "--data", tmp_path / "missing")
    assert code == 1 and "no such file or folder" in text


def test_draws_are_made_a_chunk_at_a_time(lapgan_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`lapgan sample -n 4096` used to run all draws in one pass (13.8 GB on the CPU)."""
    from srgan_cli import archs
    from srgan_cli.lapgan import sample as sample_mod

    model = archs.load(lapgan_file).model
    sizes: list[int] = []
    run = model.sample

    def spy(n: int, *args: object, **kw: object) -> object:
        sizes.append(n)
        return run(n, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(model, "sample", spy)
    monkeypatch.setattr(sample_mod, "DRAW_CHUNK", 3)
    seven = sample_mod.draw(model, 7, seed=5)  # type: ignore[arg-type]
    assert sizes == [3, 3, 1] and [level.shape[0] for level in seven] == [7] * len(seven)
    three = sample_mod.draw(model, 3, seed=5)  # type: ignore[arg-type]
    assert all(torch.equal(a[:3], b) for a, b in zip(seven, three, strict=True))  # a seed's first draws
