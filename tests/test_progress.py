"""Progress: the tiler's callback inside one image, its absence when unset, and what the CLI makes
of it when stderr is not a terminal (CliRunner's never is): plain lines, not Rich bars."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from srgan_cli.cli import progress as cli_progress
from srgan_cli.cli.app import app
from srgan_cli.runtime import tiling
from srgan_cli.runtime.batch import Job, JobResult, OutputOptions, plan_jobs
from srgan_cli.runtime.ensemble import SelfEnsemble
from srgan_cli.runtime.pipeline import run_jobs
from srgan_cli.runtime.progress import on_tiles, part, report
from srgan_cli.runtime.tiling import fixed_window_apply, tiled_apply
from srgan_cli.runtime.torch_backend import TorchUpscaler
from srgan_cli.sr.data import load_eval_set
from srgan_cli.sr.evaluate import evaluate
from srgan_cli.sr.models import SRResNet

from .conftest import make_photo, tiny_model

runner = CliRunner()


def _rising_to(calls: list[tuple[int, int]], total: int) -> None:
    """Counts rise strictly, the total never changes, and the last call is the total."""
    assert calls, "the callback was never called"
    assert {t for _, t in calls} == {total}
    done = [d for d, _ in calls]
    assert all(a < b for a, b in zip(done, done[1:], strict=False))
    assert done[-1] == total


@pytest.mark.parametrize("batch", [1, 3])
def test_torch_tiles_report_rising_counts(batch: int) -> None:
    model = tiny_model(4)
    x = torch.rand(2, 3, 37, 53, generator=torch.Generator().manual_seed(0))
    calls: list[tuple[int, int]] = []
    with torch.no_grad(), on_tiles(lambda d, t: calls.append((d, t))):
        tiled_apply(x, model, 4, tile=16, pad=8, batch=batch)
    _rising_to(calls, 2 * 37 * 53)  # LR pixels times the images of the batch
    if batch == 1:
        assert len(calls) == len(tiling.tile_grid(37, 53, 16))  # one call per batch of tiles


def test_whole_image_reports_once_and_numpy_paths_report() -> None:
    calls: list[tuple[int, int]] = []
    x = np.random.default_rng(0).random((1, 3, 30, 41)).astype(np.float32)

    def nearest(a: np.ndarray) -> np.ndarray:
        return a.repeat(2, axis=2).repeat(2, axis=3)

    with on_tiles(lambda d, t: calls.append((d, t))):
        tiled_apply(x, nearest, 2, tile=0)
        assert calls == [(30 * 41, 30 * 41)]
        calls.clear()
        tiled_apply(x, nearest, 2, tile=16, pad=4)  # the ONNX backend's path (numpy arrays)
        _rising_to(calls, 30 * 41)
        calls.clear()
        out = fixed_window_apply(x, nearest, 2, (24, 24), pad=4)  # fixed-shape ONNX models
        _rising_to(calls, 30 * 41)
    np.testing.assert_array_equal(out, nearest(x))


def test_no_callback_when_unset() -> None:
    calls: list[tuple[int, int]] = []
    x = torch.rand(1, 3, 20, 20)
    with on_tiles(lambda d, t: calls.append((d, t))):
        pass
    with torch.no_grad():
        tiled_apply(x, tiny_model(4), 4, tile=16, pad=4)
        with on_tiles(None):
            tiled_apply(x, tiny_model(4), 4, tile=16, pad=4)
    report(1, 2)
    assert calls == []


def test_tiled_equals_untiled_with_progress_on() -> None:
    model = tiny_model(4)
    pad = SRResNet.receptive_radius(model.config)
    pixels = np.random.default_rng(1).random((35, 46, 3)).astype(np.float32)
    whole = TorchUpscaler(model, device=torch.device("cpu"), tile=0)(pixels)
    calls: list[tuple[int, int]] = []
    with on_tiles(lambda d, t: calls.append((d, t))):
        tiled = TorchUpscaler(model, device=torch.device("cpu"), tile=16, tile_pad=pad)(pixels)
    _rising_to(calls, 35 * 46)
    assert len(calls) == len(tiling.tile_grid(35, 46, 16))
    assert np.abs(tiled - whole).max() < 1e-5


def test_whole_image_pass_reports_its_layers_with_the_same_result() -> None:
    """One tile (the whole image) on the CPU: the conv layers report the share of the pass done,
    and the result is the very same as without progress."""
    upscaler = TorchUpscaler(tiny_model(4), device=torch.device("cpu"), tile=0)
    pixels = np.random.default_rng(2).random((40, 52, 3)).astype(np.float32)
    quiet = upscaler(pixels)
    calls: list[tuple[int, int]] = []
    with on_tiles(lambda d, t: calls.append((d, t))):
        shown = upscaler(pixels)
    assert len(calls) > 3  # the layers of one pass, then the tiler's "all done"
    _rising_to(calls, 40 * 52)
    np.testing.assert_array_equal(shown, quiet)
    assert upscaler.model is not None
    assert not any(m._forward_hooks for m in upscaler.model.modules())  # nothing left behind


def test_passes_of_one_image_report_one_run() -> None:
    upscaler = SelfEnsemble(TorchUpscaler(tiny_model(4), device=torch.device("cpu"), tile=16, tile_pad=4), 4)
    calls: list[tuple[int, int]] = []
    with on_tiles(lambda d, t: calls.append((d, t))):
        upscaler(np.random.default_rng(3).random((20, 36, 3)).astype(np.float32))
    _rising_to(calls, 4 * 20 * 36)
    with on_tiles(lambda d, t: calls.append((d, t))), part(1, 3):
        report(5, 10)
    assert calls[-1] == (15, 30)


def test_onnx_tiles_report_rising_counts(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from srgan_cli.runtime.onnx_backend import OnnxUpscaler
    from srgan_cli.runtime.onnx_export import export_onnx

    path = tmp_path / "tiny.onnx"
    export_onnx(tiny_model(4), path, source={"weights": "tiny"})
    calls: list[tuple[int, int]] = []
    with on_tiles(lambda d, t: calls.append((d, t))):
        OnnxUpscaler(path, device="cpu", tile=16, tile_pad=4)(np.zeros((24, 40, 3), np.float32))
    _rising_to(calls, 24 * 40)


def _photos(folder: Path, sizes: list[tuple[int, int]]) -> Path:
    folder.mkdir()
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(make_photo(h, w, seed=i)).save(folder / f"p{i}.png")
    return folder


@pytest.mark.parametrize("io_threads", [0, 2])
def test_pipeline_says_whose_pass_runs(tmp_path: Path, io_threads: int) -> None:
    """`on_pass` names each job before its tiles are reported (with on_tiles around the loop)."""
    src = _photos(tmp_path / "in", [(20, 36), (28, 20), (20, 36)])
    options = OutputOptions(output=tmp_path / "out")
    jobs = plan_jobs([str(src)], options, 4).jobs
    upscaler = TorchUpscaler(tiny_model(4), device=torch.device("cpu"), tile=16, tile_pad=4)
    events: list[object] = []
    with on_tiles(lambda d, t: events.append((d, t))):
        results = list(
            run_jobs(upscaler, jobs, options, readers=io_threads, writers=io_threads, on_pass=events.append)
        )
    assert [r.status for r in results] == ["ok"] * 3
    passes = [e for e in events if isinstance(e, list)]
    assert passes == [[job] for job in jobs]
    for job, after in zip(jobs, _split(events), strict=True):  # each pass's tiles rise to its size
        h, w = (20, 36) if job.src.name != "p1.png" else (28, 20)
        _rising_to(after, h * w)


def _split(events: list[object]) -> list[list[tuple[int, int]]]:
    groups: list[list[tuple[int, int]]] = []
    for event in events:
        if isinstance(event, list):
            groups.append([])
        else:
            groups[-1].append(event)  # type: ignore[arg-type]
    return groups


def test_upscale_prints_plain_lines_off_a_terminal(
    weights_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_progress, "PLAIN_EVERY", 0.0)  # a line at every tile, to see them here
    src = _photos(tmp_path / "in", [(40, 56), (24, 24)])
    args = ["upscale", str(src), "-o", str(tmp_path / "out"), "-m", "tiny_x4", "--tile", "16"]
    result = runner.invoke(app, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert any(line.startswith("p0.png: ") and "% of " in line and "MP/s" in line for line in lines)
    assert any(line.startswith("1/2 p0.png done in ") for line in lines)
    assert any(line.startswith("2/2 p1.png done in ") for line in lines)
    assert not any("━" in line and "files" in line for line in lines)  # no Rich bar
    assert "2 upscaled" in result.stdout  # the summary is a result: stdout


def test_upscale_plain_lines_are_throttled(weights_dir: Path, tmp_path: Path) -> None:
    """At the default pace a quick file gets its completion line and nothing per tile."""
    src = _photos(tmp_path / "in", [(40, 56)])
    args = ["upscale", str(src), "-o", str(tmp_path / "out"), "-m", "tiny_x4", "--tile", "16"]
    result = runner.invoke(app, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "1/1 p0.png done in " in result.stderr
    assert "% of " not in result.stderr


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_estimate_line_once_for_a_long_job(tmp_path: Path) -> None:
    out = io.StringIO()
    console = Console(file=out, width=200)  # not a terminal: plain lines
    jobs = [Job(tmp_path / f"p{i}.png", tmp_path / f"o{i}.png", True) for i in range(10)]
    clock = _Clock()
    with cli_progress.FileProgress(console, jobs, [1.0] * 10, clock=clock) as progress:
        progress.start_pass([jobs[0]])
        clock.now = 5.0
        progress.on_tiles(25, 100)  # 0.25 MP in 5 s: 9.75 MP left at 0.05 MP/s, some 3 minutes
        clock.now = 20.0
        progress.on_tiles(100, 100)
        progress.finished(jobs[0], JobResult(jobs[0].src, jobs[0].dst, "ok", seconds=20.0))
    text = out.getvalue()
    assert text.count("estimate: about 3 min for 10 MP at 0.05 MP/s") == 1, text
    assert "1/10 p0.png done in 20.0 s; eta " in text


def test_no_estimate_for_a_short_job(tmp_path: Path) -> None:
    out = io.StringIO()
    job = Job(tmp_path / "p.png", tmp_path / "o.png", True)
    clock = _Clock()
    with cli_progress.FileProgress(Console(file=out), [job], [1.0], clock=clock) as progress:
        progress.start_pass([job])
        clock.now = 6.0
        progress.on_tiles(50, 100)  # 0.5 MP in 6 s: the job takes some 12 s in all
    assert "estimate" not in out.getvalue()


def test_eval_callback_once_per_image_per_model(photo_dir: Path) -> None:
    pairs, _ = load_eval_set(photo_dir, 4)
    upscaler = TorchUpscaler(tiny_model(4), device=torch.device("cpu"), tile=0)
    for upscale in (None, upscaler):
        calls: list[tuple[int, int]] = []
        evaluate(pairs, 4, upscale, "m", on_image=lambda d, t, calls=calls: calls.append((d, t)))
        assert calls == [(i + 1, len(pairs)) for i in range(len(pairs))]


def test_eval_cli_plain_lines(weights_dir: Path, photo_dir: Path) -> None:
    result = runner.invoke(app, ["eval", "-m", "tiny_x4", "--data", str(photo_dir), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "bicubic: 3 images in " in result.stderr
    assert "tiny_x4: 3 images in " in result.stderr


def test_benchmark_train_plain_lines() -> None:
    args = ["benchmark", "train", "--stage", "pretrain", "--n-blocks", "1", "--n-feats", "8", "--crop", "32"]
    args += ["--batch-size", "2", "--steps", "2", "--warmup", "1", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "pretrain (fast step auto, LR by bicubic): 3 steps in " in result.stderr
