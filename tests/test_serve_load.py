"""`srgan benchmark serve` (issue 42): the server under load, in a subprocess on 127.0.0.1, with tiny
models. Nothing here is timed: the runs are short and the asserts are about what the server answers
(refusals rather than memory, never another request's result), not how fast."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from typer.testing import CliRunner  # noqa: E402

from srgan_cli import weights  # noqa: E402
from srgan_cli.cli.app import app  # noqa: E402
from srgan_cli.errors import UsageError  # noqa: E402
from srgan_cli.serve import load  # noqa: E402

from .conftest import tiny_model  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

FIELDS = {f.name for f in dataclasses.fields(load.ServeLoadBenchmark)}


@pytest.fixture
def skip_model(weights_dir: Path) -> str:
    """A tiny x4 model with the bicubic skip, so its answers follow its input (conftest's tiny_x4,
    without it, upscales every image to nearly the same thing)."""
    weights.save(
        weights_dir / "tiny_skip_x4.safetensors", tiny_model(4, global_skip=True), trained_on="nothing"
    )
    return "tiny_skip_x4"


def test_four_times_the_workers_get_429s_and_only_their_own_results(skip_model: str) -> None:
    # the weights folder reaches the server subprocess through SRGAN_WEIGHTS_DIR (weights_dir sets it);
    # with --batch 4, waiting requests of one size share a pass of the model: where results could mix
    r = load.benchmark_serve(
        skip_model, clients=8, workers=2, queue=2, batch=4, seconds=2, size=(24, 24), reference_runs=2
    )
    assert set(r.to_dict()) == FIELDS
    assert json.loads(json.dumps(r.to_dict()))["model"] == skip_model
    assert r.statuses.get("200", 0) > 0 and r.statuses.get("429", 0) > 0, r.statuses
    assert set(r.statuses) <= {"200", "429", "503"}, (r.statuses, r.notes)
    assert r.server_errors == 0
    assert r.wrong_results == 0, r.wrong_examples
    assert r.warmup_requests == r.images == 32  # every image once, checked, before the timed run
    assert r.ok == r.statuses["200"] and r.requests == sum(r.statuses.values())
    assert r.output_size == (96, 96) and r.input_size == (24, 24)
    assert r.requests_per_s > 0 and r.in_process_images_per_s > 0 and r.of_in_process > 0
    assert r.latency_ms_p50 is not None and r.latency_ms_p99 is not None and r.latency_ms_max is not None
    assert 0 < r.latency_ms_p50 <= r.latency_ms_p90 <= r.latency_ms_p99 <= r.latency_ms_max
    assert r.refused_latency_ms_p50 is not None
    assert 0 < r.rss_start_mb <= r.rss_peak_mb and 0 < r.rss_end_mb <= r.rss_peak_mb
    assert r.rss_samples >= 3 and len(r.rss_timeline) >= 3
    assert r.rss_slope_mb_per_1000 is not None and r.batch == 4
    assert r.server_cpu_s > 0
    assert r.server_exit_code is not None and not r.server_killed  # it stopped on SIGTERM


def test_cli_json(weights_dir: Path) -> None:
    args = ["benchmark", "serve", "-m", "tiny", "--clients", "2", "--workers", "1", "--queue", "0"]
    result = CliRunner().invoke(app, [*args, "--seconds", "1", "--size", "16x16", "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc) == FIELDS
    assert doc["model"] == "tiny" and doc["clients"] == 2 and doc["threads"] == 1
    assert doc["statuses"].get("200", 0) > 0 and doc["wrong_results"] == 0
    assert doc["output_size"] == [64, 64]


def _truth(n: int = 4) -> load._Truth:
    images = load.make_images(8, 6, n)
    expected = [np.repeat(np.repeat(img, 2, axis=0), 2, axis=1) for img in images]  # a pretend x2
    return load._Truth([load.png_bytes(i) for i in images], expected, 1.0, 2, 50.0)


def test_checker_catches_another_requests_result() -> None:
    truth = _truth()
    checker = load._Checker(truth, "m")

    def answer(j: int, **headers: str) -> load.Answer:
        base = {"x-srgan-size": "16x12", "x-srgan-model": "m"}
        return load.Answer(200, {**base, **headers}, load.png_bytes(truth.expected[j]))

    assert checker.problem(1, answer(1)) is None
    assert checker.problem(1, answer(3)) == "image 1: got the result of image 3"
    assert "X-Srgan-Size 8x6" in (checker.problem(1, answer(1, **{"x-srgan-size": "8x6"})) or "")
    assert "X-Srgan-Model other" in (checker.problem(1, answer(1, **{"x-srgan-model": "other"})) or "")
    noisy = truth.expected[2].astype(np.int16) + 40
    wrong = load.Answer(
        200, {"x-srgan-size": "16x12"}, load.png_bytes(np.clip(noisy, 0, 255).astype(np.uint8))
    )
    assert "differs from the in-process upscale" in (checker.problem(2, wrong) or "")
    assert "not a PNG" in (checker.problem(0, load.Answer(200, {"x-srgan-size": "16x12"}, b"nope")) or "")


def test_images_are_distinct() -> None:
    images = load.make_images(16, 16, 8)
    assert min(load._mad(a, b) for i, a in enumerate(images) for b in images[i + 1 :]) > 10


def test_a_model_that_cannot_tell_images_apart_is_refused(weights_dir: Path) -> None:
    # conftest's tiny_x4 has no skip: every image comes out nearly the same, so no check could work
    with pytest.raises(UsageError, match="too much alike"):
        load.benchmark_serve("tiny_x4", clients=1, seconds=1, size=(16, 16), reference_runs=1)


def test_a_server_that_ignores_sigterm_is_killed() -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True)"
    code += "; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        exit_code, killed = load.stop_server(proc, grace=0.5)
        assert killed and exit_code == -9
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_memory_and_slope_helpers() -> None:
    import os

    rss, hwm = load.read_memory_mb(os.getpid())
    assert 0 < rss <= hwm
    assert load.read_cpu_seconds(os.getpid()) > 0
    flat = [(t * 0.5, 500.0, t * 10) for t in range(20)]
    assert load._slope_per_1000(flat) == 0.0
    growing = [(t * 0.5, 500.0 + t, t * 10) for t in range(20)]  # 1 MB per 10 answers
    assert load._slope_per_1000(growing) == pytest.approx(100.0)
    assert load._slope_per_1000(flat[:2]) is None
