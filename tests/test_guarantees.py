"""Issue 39's guarantees for images, on the CLI and the Python API: an input is never destroyed,
nothing is silently partial, one file never ends a batch, arguments are checked at the edge, and
two runs on one folder share the work instead of doing it twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import srgan_cli
from srgan_cli.atomic import NAME_MAX, atomic_open, remove_stale_temps, same_file, temp_prefix
from srgan_cli.cli.app import app
from srgan_cli.errors import ArgumentError, ArgumentTypeError
from srgan_cli.runtime.batch import OutputOptions, claim_output, claim_path, plan_jobs, release_output
from srgan_cli.runtime.pipeline import run_jobs

from .conftest import make_photo

runner = CliRunner()


def cli(*args: object) -> tuple[int, str, str]:
    """(exit code, stdout, everything printed) of `srgan ARGS` on the CPU."""
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.output


def photo(path: Path, height: int = 12, width: int = 16, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_photo(height, width, seed)).save(path)
    return path


@pytest.fixture
def up(weights_dir: Path) -> srgan_cli.Upscaler:
    return srgan_cli.Upscaler("tiny_x2", device="cpu", tile=0)


# --- 1. an input is never destroyed -------------------------------------------------------------


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
def test_the_cli_never_writes_over_its_input(weights_dir: Path, tmp_path: Path, link: str) -> None:
    src = photo(tmp_path / "in.png")
    before = src.read_bytes()
    dst = tmp_path / "out.png"
    if link == "same":
        dst = src
    elif link == "symlink":
        dst.symlink_to(src)
    else:
        os.link(src, dst)
    code, out, _ = cli("upscale", src, "-o", dst, "--overwrite", "-m", "tiny_x2", "--device", "cpu", "--json")
    assert code == 1
    assert json.loads(out)["results"][0]["error"] == "the output would overwrite the input"
    assert src.read_bytes() == before and same_file(src, dst)


def test_a_suffix_that_names_the_input_is_refused_too(weights_dir: Path, tmp_path: Path) -> None:
    src = photo(tmp_path / "in.png")
    code, out, _ = cli("upscale", src, "--suffix", "", "--overwrite", "-m", "tiny_x2", "--json")
    assert code == 1 and json.loads(out)["results"][0]["error"] == "the output would overwrite the input"


@pytest.mark.parametrize("link", ["same", "hardlink", "symlink"])
def test_the_api_never_writes_over_its_input(up: srgan_cli.Upscaler, tmp_path: Path, link: str) -> None:
    src = photo(tmp_path / "in.png")
    before = src.read_bytes()
    dst = src if link == "same" else tmp_path / "out.png"
    if link == "hardlink":
        os.link(src, dst)
    elif link == "symlink":
        dst.symlink_to(src)
    with pytest.raises(ArgumentError, match="would overwrite the input"):
        up.upscale_file(src, dst, overwrite=True)
    assert src.read_bytes() == before
    # a folder into itself with the same names: every file refused, none touched
    results = up.upscale_folder(tmp_path, tmp_path, overwrite=True)
    assert results and all(r.status == "failed" for r in results)
    assert src.read_bytes() == before


# --- 2. nothing silently partial: multi-page TIFF ------------------------------------------------


def _two_page_tiff(path: Path) -> Path:
    pages = [Image.fromarray(make_photo(12, 16, seed)) for seed in (1, 2)]
    pages[0].save(path, "TIFF", save_all=True, append_images=pages[1:])
    return path


def test_a_multi_page_tiff_is_refused_unless_partial_is_accepted(
    weights_dir: Path, tmp_path: Path, up: srgan_cli.Upscaler
) -> None:
    src = _two_page_tiff(tmp_path / "scan.tiff")
    code, out, _ = cli("upscale", src, "-o", tmp_path / "o.png", "-m", "tiny_x2", "--json")
    assert code == 1
    error = json.loads(out)["results"][0]["error"]
    assert error == "is a multi-page TIFF (2 pages); one image file holds one upscaled page"
    assert not (tmp_path / "o.png").exists()
    with pytest.raises(srgan_cli.errors.ImageReadError, match="multi-page"):
        up.upscale_file(src, tmp_path / "o.png")
    up.upscale_file(src, tmp_path / "o.png", allow_partial=True)
    assert Image.open(tmp_path / "o.png").size == (32, 24)


def test_allow_partial_on_the_cli_says_what_it_left_out(weights_dir: Path, tmp_path: Path) -> None:
    src = _two_page_tiff(tmp_path / "scan.tiff")
    code, out, _ = cli("upscale", src, "-o", tmp_path / "o.png", "-m", "tiny_x2", "--allow-partial", "--json")
    assert code == 0
    result = json.loads(out)["results"][0]
    assert result["status"] == "ok" and result["notes"] == [
        "first page of 2 upscaled (a multi-page TIFF, --allow-partial)"
    ]


# --- 4. one file never ends a batch ----------------------------------------------------------------


def test_an_output_name_over_the_limit_fails_alone(weights_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    for stem in ("a", "b" * 240, "c"):
        photo(folder / f"{stem}.png")
    code, out, _ = cli(
        "upscale", folder, "-o", tmp_path / "out", "--suffix", "_upscaled_x2", "-m", "tiny_x2", "--json"
    )
    assert code == 1
    results = {Path(r["input"]).name[:1]: r for r in json.loads(out)["results"]}
    assert results["a"]["status"] == results["c"]["status"] == "ok"
    assert results["b"]["error"].startswith("the output name is 256 bytes long, over the file system's limit")


def test_a_name_that_fits_is_never_refused_for_its_temporary(tmp_path: Path) -> None:
    name = "é" * 100 + "x" * 50 + ".png"  # 254 bytes: fits, but `.<name>.<hex>.tmp` would not
    assert len(os.fsencode(name)) == 254
    with atomic_open(tmp_path / name) as fh:
        fh.write(b"data")
    assert (tmp_path / name).read_bytes() == b"data"
    assert len(os.fsencode(temp_prefix(name))) + len(".0123abcd.tmp") <= NAME_MAX
    stale = tmp_path / f"{temp_prefix(name)}.0badf00d.tmp"  # what a killed write of it leaves
    stale.write_bytes(b"half")
    os.utime(stale, (1, 1))
    assert remove_stale_temps(tmp_path, {name}) == 1


# --- 5. arguments checked at the edge -----------------------------------------------------------


def test_cli_options_are_refused_with_one_line(weights_dir: Path, tmp_path: Path) -> None:
    src = photo(tmp_path / "in.png")
    code, out, text = cli("upscale", src, "--suffix", "a/b", "-m", "tiny_x2", "--json")
    assert code == 2 and "holds a path separator" in json.loads(out)["error"]
    assert "Traceback" not in text
    code, _, text = cli("upscale", src, "--tile-pad", "-1", "-m", "tiny_x2")
    assert code == 2 and "Traceback" not in text


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"outscale": 0}, ArgumentError, "outscale must be a finite number above 0"),
        ({"outscale": float("nan")}, ArgumentError, "outscale"),
        ({"outscale": float("inf")}, ArgumentError, "outscale"),
        ({"outscale": "2"}, ArgumentTypeError, "outscale is a number"),
        ({"tile_pad": -1}, ArgumentError, "tile_pad must be 0 or more"),
        ({"tile": -5}, ArgumentError, "tile must be 0"),
        ({"tile": 8}, ArgumentError, "at least 16"),
        ({"tile": 2.5}, ArgumentTypeError, "tile is"),
        ({"max_output_megapixels": 0}, ArgumentError, "max_output_megapixels"),
        ({"backend": "tensorrt"}, ArgumentError, "unknown backend"),
    ],
)
def test_api_arguments_are_typed_errors(
    weights_dir: Path, kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        srgan_cli.Upscaler("tiny_x2", device="cpu", **kwargs)  # type: ignore[arg-type]
    assert issubclass(ArgumentError, ValueError) and issubclass(ArgumentTypeError, TypeError)


def test_arrays_and_tensors_are_read_by_dtype(up: srgan_cli.Upscaler) -> None:
    pixels = make_photo(8, 10)
    as_u8 = up(pixels)
    # a uint8 tensor is 0..255 and comes back as one
    tensor = up(torch.from_numpy(pixels).permute(2, 0, 1).contiguous())
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, 16, 20)
    assert np.abs(tensor.permute(1, 2, 0).numpy().astype(int) - as_u8.astype(int)).max() <= 1
    # float arrays are 0..1; 0..255 in a float array is an error that says what to do
    with pytest.raises(ArgumentError, match=r"spans .*\(divide by 255, or pass uint8\)"):
        up(pixels.astype(np.float64))
    with pytest.raises(ArgumentError, match="spans"):
        up(torch.from_numpy(pixels).permute(2, 0, 1).float())
    with pytest.raises(ArgumentError, match="NaN or infinite"):
        up(np.full((8, 8, 3), np.nan, np.float32))
    with pytest.raises(ArgumentError, match="at least 1x1 pixels, got 0x0"):
        up(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(ArgumentError, match="at least 1x1"):
        up(torch.zeros(3, 0, 5))
    with pytest.raises(ArgumentTypeError, match="not int16"):
        up(np.zeros((8, 8, 3), np.int16))
    with pytest.raises(ArgumentTypeError, match="not torch.int32"):
        up(torch.zeros(3, 8, 8, dtype=torch.int32))
    # a little overshoot (a resampler's) is clipped, not refused
    assert up(np.clip(pixels / 255.0, 0, 1) * 1.05 - 0.02).shape == (16, 20, 3)


# --- also: the same input twice, two runs on one folder, --json on a fatal error -------------------


def test_the_same_input_named_twice_is_upscaled_once(weights_dir: Path, tmp_path: Path) -> None:
    src = photo(tmp_path / "in" / "a.png")
    code, out, _ = cli(
        "upscale", src, src, tmp_path / "in", "-o", tmp_path / "out", "-m", "tiny_x2", "--json"
    )
    assert code == 0
    assert [r["status"] for r in json.loads(out)["results"]] == ["ok"]


def test_an_output_claimed_by_a_live_process_is_left_to_it(up: srgan_cli.Upscaler, tmp_path: Path) -> None:
    photo(tmp_path / "in" / "a.png")
    photo(tmp_path / "in" / "b.png", seed=1)
    out = tmp_path / "out"
    out.mkdir()
    # another srgan process (here: a sleeping child) is making a.png
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        claim_path(out / "a.png").write_text(f"{other.pid} {socket.gethostname()}\n")
        results = {r.src.name: r for r in up.upscale_folder(tmp_path / "in", out)}
        assert results["a.png"].status == "skipped"
        assert results["a.png"].notes == [f"another srgan process (pid {other.pid}) is making this output"]
        assert results["b.png"].status == "ok" and not claim_path(out / "b.png").exists()
    finally:
        other.kill()
        other.wait()
    # once that process is gone, its claim is taken over and the work is done
    results = {r.src.name: r for r in up.upscale_folder(tmp_path / "in", out)}
    assert results["a.png"].status == "ok" and not claim_path(out / "a.png").exists()


def test_claims_are_released_when_the_caller_stops_early(up: srgan_cli.Upscaler, tmp_path: Path) -> None:
    for i in range(4):
        photo(tmp_path / "in" / f"p{i}.png", seed=i)
    options = OutputOptions(tmp_path / "out")
    plan = plan_jobs([str(tmp_path / "in")], options, up.scale)
    results = run_jobs(up.runtime.upscaler, plan.jobs, options)
    next(results)  # the first result; the rest are read ahead and claimed
    results.close()
    assert not list((tmp_path / "out").glob(".*.srgan-claim"))
    assert claim_output(tmp_path / "out" / "x.png") is None  # and a claim of one's own is free to take
    release_output(tmp_path / "out" / "x.png")
    assert not claim_path(tmp_path / "out" / "x.png").exists()


def test_json_gets_a_document_for_a_fatal_error(tmp_path: Path) -> None:
    src = photo(tmp_path / "in.png")
    code, out, _ = cli("upscale", src, "-m", tmp_path / "missing.safetensors", "--json")
    assert code == 2
    document = json.loads(out)
    assert document["exit_code"] == 2 and "not found" in document["error"]


def test_sigterm_stops_upscale_cleanly(weights_dir: Path, tmp_path: Path) -> None:
    for i in range(60):
        photo(tmp_path / "in" / f"p{i:02d}.png", 64, 64, seed=i)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    args = ["upscale", str(tmp_path / "in"), "-o", str(out), "-m", "tiny_x4", "--device", "cpu"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "srgan_cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not list(out.glob("*.png")):
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        text, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, text
    assert "terminated" in text and "Traceback" not in text
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert hidden in ([], [".srgan-manifest.jsonl"])  # no temporaries, no claims
    assert 0 < len(list(out.glob("*.png"))) < 60


def test_json_gets_a_document_for_an_option_refused_while_parsing(tmp_path: Path) -> None:
    src = photo(tmp_path / "in.png")
    proc = subprocess.run(
        [sys.executable, "-m", "srgan_cli", "upscale", str(src), "-s", "0", "--json"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    document = json.loads(proc.stdout)
    assert document["exit_code"] == 2 and "--outscale" in document["error"]
