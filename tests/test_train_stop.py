"""Stopping a training call early on purpose (a time limit, a stop request or a signal): a checkpoint
and the weights are written at the stopping step, and `--resume` continues bit-exactly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from srgan_cli import training, weights
from srgan_cli.cli.app import app
from srgan_cli.errors import TrainingError
from srgan_cli.sr.config import CHECKPOINT, TrainConfig
from srgan_cli.sr.train import train

from .test_train import _config

_OPTS = dict(scale=2, n_blocks=1, n_feats=8, crop=16, batch_size=2, checkpoint_every=5, log_every=5, seed=3)


def _events(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _assert_same_weights(a: Path, b: Path) -> None:
    ca = torch.load(a / CHECKPOINT, weights_only=True)
    cb = torch.load(b / CHECKPOINT, weights_only=True)
    assert ca["step"] == cb["step"]
    for part in ("generator", "ema"):
        for key in ca[part]:
            torch.testing.assert_close(ca[part][key], cb[part][key], rtol=0, atol=0, msg=key)


def test_stop_request_and_time_limit_resume_exactly(photo_dir: Path, tmp_path: Path) -> None:
    straight = train(_config(photo_dir, tmp_path / "straight", 20))
    assert straight.stopped is None

    out = tmp_path / "chunked"
    polls = iter(range(100))
    first = train(_config(photo_dir, out, 20), should_stop=lambda: next(polls) >= 6)  # 7th poll
    assert first.stopped == "stop request" and first.steps == 7
    ckpt = torch.load(out / CHECKPOINT, weights_only=True)
    assert ckpt["step"] == 7  # saved at the stop, not at the last multiple of --checkpoint-every
    info = weights.read_info(first.weights)
    assert info.provenance["steps"] == 7 and not info.metrics  # not validated yet (every 10 steps)
    assert _events(out)[-1]["event"] == "stopped" and _events(out)[-1]["reason"] == "stop request"

    second = train(_config(photo_dir, out, 20), resume=True, time_limit=0)  # one step, at least
    assert second.stopped == "time limit" and second.steps == 8

    third = train(_config(photo_dir, out, 20), resume=True)
    assert third.stopped is None and third.steps == 20
    _assert_same_weights(tmp_path / "straight", out)
    info = weights.read_info(third.weights)
    assert info.provenance["val_step"] == 20 and "val_psnr_y" in info.metrics
    kinds = [e["event"] for e in _events(out)]
    assert kinds.count("stopped") == 2 and kinds[-1] == "done"


def test_weights_written_at_a_stop_say_which_step_was_validated(photo_dir: Path, tmp_path: Path) -> None:
    polls = iter(range(100))
    result = train(_config(photo_dir, tmp_path / "r", 20), should_stop=lambda: next(polls) >= 11)
    assert result.steps == 12
    info = weights.read_info(result.weights)
    assert info.provenance["steps"] == 12 and info.provenance["val_step"] == 10
    assert info.metrics["val_psnr_y"] == pytest.approx(result.val.psnr, abs=1e-3)  # type: ignore[union-attr]


def test_the_time_limit_predicts_the_next_step_and_a_due_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(training.time, "perf_counter", lambda: now[0])
    clock = training.StopClock(10.0, None)
    now[0] += 1.0  # loading the data: counts against the limit, not as step time
    clock.begin(0)
    now[0] += 3.0  # 3 steps of 1 s
    assert clock.reason(3, 1, val_due=False) is None  # 4 + 1 <= 10
    with clock.overhead("val"):
        now[0] += 3.0  # a validation of 3 s: not counted as step time
    assert clock.reason(3, 1, val_due=False) is None  # 7 + 1 <= 10
    assert clock.reason(3, 3, val_due=True) == "time limit"  # 7 + 3 + 3 > 10
    now[0] += 2.0  # 2 more steps: 9 s used, 1 s per step
    assert clock.reason(5, 1, val_due=False) is None  # 9 + 1 = 10, still within
    now[0] += 0.5
    assert clock.reason(5, 1, val_due=False) == "time limit"
    assert training.StopClock(None, None).reason(1, 1, val_due=True) is None
    with pytest.raises(TrainingError, match="0 or more seconds"):
        train(TrainConfig(data="x"), time_limit=-1)


def test_cli_time_limit_and_bad_durations(photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["train", "--data", str(photo_dir), "--out", str(out), "--steps", "10", "--device", "cpu"]
    for key, value in _OPTS.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    result = CliRunner().invoke(app, [*args, "--time-limit", "0s"])
    text = " ".join(result.output.split())
    assert result.exit_code == 0, text
    assert "stopped (time limit) at step 1 of 10" in text
    assert f"continue with: srgan train --out {out} --resume --time-limit 0" in text
    again = CliRunner().invoke(app, ["train", "--out", str(out), "--resume", "--time-limit", "1h"])
    assert again.exit_code == 0 and "done" in again.output
    assert torch.load(out / CHECKPOINT, weights_only=True)["step"] == 10
    for bad in ("soon", "-5", "5d", "1:30"):
        r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "bad"), "--time-limit", bad])
        assert r.exit_code == 2, bad
        assert "not a duration" in " ".join(r.output.split())
    assert not (tmp_path / "bad").exists()


def test_sigterm_stops_after_the_step_with_a_checkpoint(photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "term"
    args = [sys.executable, "-m", "srgan_cli", "train", "--data", str(photo_dir), "--out", str(out)]
    for key, value in {**_OPTS, "checkpoint_every": 100_000, "steps": 100_000, "device": "cpu"}.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        log = out / "log.jsonl"
        while time.time() < deadline and not (log.exists() and '"log"' in log.read_text()):
            time.sleep(0.05)  # trained at least --log-every steps
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, output
    last = _events(out)[-1]
    assert last["event"] == "stopped" and last["reason"] == "stop request"
    step = torch.load(out / CHECKPOINT, weights_only=True)["step"]
    assert step == last["step"] >= 5  # no periodic checkpoint was due: this one is the stop's
    assert weights.read_info(out / "srresnet_x2.safetensors").provenance["steps"] == step
    assert "SIGTERM" in output and "--resume" in output
    assert not list(out.glob(".*tmp*"))
