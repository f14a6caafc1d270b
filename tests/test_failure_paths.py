"""Every command against bad paths, files and sizes: one clear message and exit code 1 or 2, never a
traceback (issue 26). A new failure a user can provoke belongs in CASES."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from srgan_cli.cli.app import app

from .conftest import make_photo

runner = CliRunner()
TINY = ["--n-blocks", "1", "--n-feats", "8", "--crop", "16", "--batch-size", "2"]
TINY += ["--steps", "2", "--scale", "2"]


@pytest.fixture
def place(tmp_path: Path, weights_dir: Path) -> Path:
    """A folder of things to trip over: photos, a 0-byte image, tiny images, a plain file, and
    the tiny_x2/tiny_x4 weights (weights_dir)."""
    (tmp_path / "photos").mkdir()
    for i in range(2):
        Image.fromarray(make_photo(40, 40, seed=i)).save(tmp_path / "photos" / f"p{i}.png")
    (tmp_path / "tiny").mkdir()
    Image.fromarray(make_photo(8, 8)).save(tmp_path / "tiny" / "t.png")
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "zero.safetensors").write_bytes(b"")
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.toml").write_text("steps = [")
    return tmp_path


CASES = {
    "upscale: no such input": ["upscale", "{t}/nothing.png", "-m", "tiny_x2"],
    "upscale: folder without images": ["upscale", "{t}/empty", "-m", "tiny_x2"],
    "upscale: 0-byte image": ["upscale", "{t}/zero.png", "-m", "tiny_x2", "-o", "{t}/o.png"],
    "upscale: output under a file": [
        "upscale",
        "{t}/photos/p0.png",
        "-m",
        "tiny_x2",
        "-o",
        "{t}/afile/o.png",
    ],
    "upscale: missing weights": ["upscale", "{t}/photos/p0.png", "-m", "{t}/none.safetensors"],
    "upscale: 0-byte weights": ["upscale", "{t}/photos/p0.png", "-m", "{t}/zero.safetensors"],
    "upscale: bad tile": ["upscale", "{t}/photos/p0.png", "-m", "tiny_x2", "--tile", "5"],
    "upscale: huge outscale": [
        "upscale",
        "{t}/photos/p0.png",
        "-m",
        "tiny_x2",
        "-s",
        "100000",
        "-o",
        "{t}/h.png",
    ],
    "train: no such data": ["train", "--data", "{t}/nothing", "--out", "{t}/r1", *TINY],
    "train: data is a file": ["train", "--data", "{t}/photos/p0.png", "--out", "{t}/r2", *TINY],
    "train: out is a file": ["train", "--data", "{t}/photos", "--out", "{t}/afile", *TINY],
    "train: val images too small": [
        "train",
        "--data",
        "{t}/photos",
        "--val",
        "{t}/tiny",
        "--out",
        "{t}/r3",
        *TINY,
    ],
    "train: resume nothing": ["train", "--out", "{t}/r4", "--resume"],
    "train: broken config": ["train", "--config", "{t}/broken.toml", "--out", "{t}/r5"],
    "eval: no such data": ["eval", "--data", "{t}/nothing", "-m", "tiny_x4"],
    "eval: images too small": ["eval", "--data", "{t}/tiny", "-m", "tiny_x4"],
    "eval: a 0-byte image among them": ["eval", "--data", "{t}", "-m", "tiny_x2"],
    "export-onnx: output under a file": ["export-onnx", "-m", "tiny_x2", "-o", "{t}/afile/m.onnx"],
    "export-onnx: missing weights": ["export-onnx", "-m", "{t}/none.safetensors", "-o", "{t}/m.onnx"],
    "interpolate: missing weights": [
        "interpolate",
        "tiny_x2",
        "{t}/none.safetensors",
        "-o",
        "{t}/i.safetensors",
    ],
    "benchmark upscale: bad size": [
        "benchmark",
        "upscale",
        "-m",
        "tiny_x2",
        "--size",
        "3x3",
        "--device",
        "cpu",
    ],
    "lapgan train: no such data": ["lapgan", "train", "--data", "{t}/nothing", "--out", "{t}/l1"],
    "lapgan sample: missing weights": ["lapgan", "sample", "-m", "{t}/none.safetensors", "-o", "{t}/s.png"],
    "text2img train: no such data": ["text2img", "train", "--data", "{t}/nothing", "--out", "{t}/x1"],
    "text2img generate: missing weights": [
        "text2img",
        "generate",
        "a red circle",
        "-m",
        "{t}/none.safetensors",
    ],
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_path_file_or_size_gets_a_message_not_a_traceback(place: Path, case: str) -> None:
    args = [a.replace("{t}", str(place)) for a in CASES[case]]
    result = runner.invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{case}: {type(result.exception).__name__}: {result.exception}\n{result.output}"
    )
    assert result.exit_code in (1, 2), f"{case}: exit {result.exit_code}\n{result.output}"
    assert "Traceback" not in result.output
    assert result.output.strip(), f"{case}: no message"


def test_messages_say_what_the_path_is_and_never_advise_unsafe_loading(place: Path) -> None:
    import os

    from srgan_cli.errors import TrainingError
    from srgan_cli.training import load_checkpoint

    (place / "loop").symlink_to(place / "loop")
    os.mkfifo(place / "pipe")
    (place / "dangling").symlink_to(place / "gone.png")
    result = runner.invoke(
        app, ["upscale", str(place / "loop"), str(place / "pipe"), str(place / "dangling")]
    )
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "a symlink loop" in text and "named pipe (FIFO)" in text
    assert "broken symlink" in text

    result = runner.invoke(
        app, ["train", "--data", str(place / "photos" / "p0.png"), "--out", str(place / "r")]
    )
    assert result.exit_code == 1 and "a file, not a folder" in " ".join(result.output.split())

    (place / "empty.pt").write_bytes(b"")
    with pytest.raises(TrainingError, match=r"is empty \(0 bytes\)"):
        load_checkpoint(place / "empty.pt")
    (place / "bad.pt").write_bytes(b"PK\x03\x04 not really a zip" * 10)
    with pytest.raises(TrainingError, match="damaged") as caught:
        load_checkpoint(place / "bad.pt")
    assert "weights_only" not in str(caught.value) and "weights_only" not in (caught.value.hint or "")


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(
    place: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every write goes through atomic.atomic_open, whose fsync is where a full disk shows up."""
    import errno
    import os

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    commands = {
        "train": ["train", "--data", str(place / "photos"), "--out", str(place / "run"), *TINY],
        "export-onnx": ["export-onnx", "-m", "tiny_x2", "-o", str(place / "m.onnx")],
        "upscale": ["upscale", str(place / "photos"), "-m", "tiny_x2", "-o", str(place / "up")],
    }
    for name, args in commands.items():
        result = runner.invoke(app, args)
        text = " ".join(result.output.split()).lower()
        assert result.exit_code == 1, f"{name}: {result.exit_code} {result.output}"
        assert result.exception is None or isinstance(result.exception, SystemExit), name
        assert "no space left on device" in text, f"{name}: {result.output}"
    leftovers = [p for p in place.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == [] and not (place / "m.onnx").exists()
