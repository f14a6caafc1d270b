"""The training, export and environment side of the edge checks: option values refused with one
line and exit 2, a half-set torchrun environment refused at once (and an unreachable master within
seconds), a checkpoint write on a full disk ending in a sentence, SIGTERM handled as Ctrl-C, and
the training commands stopping after the current step with a checkpoint on a first signal."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from srgan_cli import training, weights
from srgan_cli.atomic import atomic_open
from srgan_cli.cli.app import app
from srgan_cli.cli.signals import StopOnSignal, Terminated, terminate_as_interrupt
from srgan_cli.distributed import World, init_group, world_from_env
from srgan_cli.errors import TrainingError, UsageError
from srgan_cli.lapgan.train import LapganTrainConfig
from srgan_cli.runtime.onnx_export import check_static, export_onnx, parse_static
from srgan_cli.sr.config import CHECKPOINT, TrainConfig
from srgan_cli.text2img.trainer import Text2ImgTrainConfig

from .conftest import tiny_model

runner = CliRunner()
_LAUNCH = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_TINY = ["--scale", "2", "--n-blocks", "1", "--n-feats", "8", "--crop", "16", "--batch-size", "2"]


@pytest.fixture(autouse=True)
def _one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """No launch variables from the shell that runs the tests."""
    for name in (*_LAUNCH, "TORCHELASTIC_RUN_ID", "SRGAN_DIST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)


def run(*args: object) -> tuple[int, str]:
    """Exit code and output with Rich's line wrapping undone."""
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


def _one_error_line(code: int, text: str, *needles: str) -> None:
    assert code == 2, text
    assert text.count("error:") == 1 and "Traceback" not in text, text
    for needle in needles:
        assert needle in text, text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- A. option values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,message",
    [
        (["--lr", "-1"], "--lr must be a positive finite number, got -1"),
        (["--lr", "nan"], "--lr must be a positive finite number, got nan"),
        (["--lr", "inf"], "--lr must be a positive finite number, got inf"),
        (["--d-lr", "0"], "--d-lr must be a positive finite number, got 0"),
        (["--beta1", "1.5"], "--beta1 must be in [0, 1), got 1.5"),
        (["--beta2", "1"], "--beta2 must be in [0, 1), got 1"),
        (["--scale", "3"], "--scale must be 2, 4 or 8, got 3"),
        (["--scale", "5", "--stage", "gan"], "--scale must be 2, 4 or 8, got 5"),  # before any --init lookup
        (["--ema", "1"], "--ema must be in [0, 1), got 1"),
        (["--tv-weight", "-1"], "--tv-weight must be finite and 0 or more, got -1"),
        (["--adv-weight", "nan"], "--adv-weight must be finite and 0 or more"),
        (["--content-weight", "inf"], "--content-weight must be finite and 0 or more"),
        (["--lr-min", "-1e-6"], "--lr-min"),
        (["--lr-gamma", "0"], "--lr-gamma must be a positive finite number"),
        (["--lr-step-at", "nan"], "--lr-step-at"),
        (["--content-scale", "0"], "--content-scale"),
        (["--r1-gamma", "-2"], "--r1-gamma"),
        (["--seed", "-1"], "--seed must be a whole number from 0"),
        (["--crop", "20", "--scale", "8"], "--crop 20 must be a multiple of the scale 8"),
    ],
)
def test_train_refuses_option_values_with_one_line(
    photo_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "run"
    code, text = run("train", "--data", photo_dir, "--out", out, "--steps", 1, "--device", "cpu", *args)
    _one_error_line(code, text, message)
    assert not out.exists()  # refused before anything was made


def test_option_errors_are_usage_training_and_value_errors() -> None:
    with pytest.raises(UsageError, match="--lr must be a positive finite number") as info:
        TrainConfig(data=["x"], lr=float("nan")).validate()
    assert isinstance(info.value, TrainingError) and isinstance(info.value, ValueError)
    assert info.value.exit_code == 2
    with pytest.raises(UsageError, match="--batch-size must be at least 1, got 0"):
        TrainConfig(data=["x"], batch_size=0).validate()
    with pytest.raises(UsageError, match="--crop must be at least 8"):
        TrainConfig(data=["x"], crop=4, scale=2).validate()
    with pytest.raises(UsageError, match="--samples must be 0 or more"):
        TrainConfig(data=["x"], samples=-1).validate()
    # the gan stage's VGG layer must still see a pixel of the crop: vgg54 after 4 max-pools
    with pytest.raises(UsageError, match="--content-layer vgg54 pools a crop 16 times smaller"):
        TrainConfig(data=["x"], stage="gan", scale=2, crop=8).validate()
    TrainConfig(data=["x"], stage="gan", scale=2, crop=8, content_layer="vgg22").validate()
    TrainConfig(data=["x"]).validate()  # the defaults pass


def test_a_config_file_and_a_resumed_run_are_checked_too(photo_dir: Path, tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("[optim]\nlr = nan\n")
    code, text = run("train", "--data", photo_dir, "--out", tmp_path / "a", "--config", toml)
    _one_error_line(code, text, "--lr must be a positive finite number, got nan")
    toml.write_text("beta1 = 1.0\n")
    code, text = run("train", "--data", photo_dir, "--out", tmp_path / "a", "--config", toml)
    _one_error_line(code, text, "--beta1 must be in [0, 1), got 1")

    # --resume takes the checkpoint's settings: a bad one there, or a bad option given now
    out = tmp_path / "r"
    out.mkdir()
    config = TrainConfig(data=[str(photo_dir)], out=str(out), scale=3).to_dict()
    torch.save({"config": config, "step": 1}, out / CHECKPOINT)
    code, text = run("train", "--out", out, "--resume")
    _one_error_line(code, text, "--scale must be 2, 4 or 8, got 3")
    config["scale"] = 2
    torch.save({"config": config, "step": 1}, out / CHECKPOINT)
    code, text = run("train", "--out", out, "--resume", "--lr", "-1")
    _one_error_line(code, text, "--lr must be a positive finite number, got -1")

    # --init / --init-d choose a new run's start: with --resume the checkpoint would win in silence
    config.update(stage="gan", init="a.safetensors")
    torch.save({"config": config, "step": 1}, out / CHECKPOINT)
    code, text = run("train", "--out", out, "--resume", "--init", "b.safetensors")
    _one_error_line(code, text, "--init starts a new run, but --resume continues")
    assert "started with --init a.safetensors" in text and "drop --init" in text
    code, text = run("train", "--out", out, "--resume", "--init-d", "d.pt")
    _one_error_line(code, text, "--init-d starts a new run, but --resume continues")
    assert "started with --init-d none" in text


def test_lapgan_and_text2img_check_their_rates(photo_dir: Path, tmp_path: Path) -> None:
    code, text = run("lapgan", "train", "--data", photo_dir, "--out", tmp_path / "l", "--lr", "nan")
    _one_error_line(code, text, "--lr must be a positive finite number, got nan")
    code, text = run("lapgan", "train", "--data", photo_dir, "--out", tmp_path / "l", "--lr", "0")
    _one_error_line(code, text, "--lr must be a positive finite number, got 0")
    with pytest.raises(UsageError, match=r"--beta1 must be in \[0, 1\), got 1"):
        LapganTrainConfig(data="x", beta1=1.0).validate()
    with pytest.raises(UsageError, match="--min-crop"):
        LapganTrainConfig(data="x", min_crop=float("nan")).validate()

    code, text = run("text2img", "train", "--data", photo_dir, "--out", tmp_path / "t", "--lr", "inf")
    _one_error_line(code, text, "--lr must be a positive finite number, got inf")
    with pytest.raises(UsageError, match=r"--beta1 must be in \[0, 1\), got -0.1"):
        Text2ImgTrainConfig(data="x", beta1=-0.1).validate()
    with pytest.raises(UsageError, match="--ca-kl must be finite"):
        Text2ImgTrainConfig(data="x", ca_kl=float("nan")).validate()
    assert not (tmp_path / "l").exists() and not (tmp_path / "t").exists()


def test_export_refuses_static_shapes_it_cannot_run(tmp_path: Path) -> None:
    start = time.perf_counter()
    code, text = run(
        "export-onnx", "-m", "srresnet_x4", "-o", tmp_path / "x.onnx", "--static", "100000x100000"
    )
    _one_error_line(code, text, "--static 100000x100000 is too large", "MP of output")
    assert time.perf_counter() - start < 30 and not (tmp_path / "x.onnx").exists()
    for bad in ("0x0", "-5x64", "64x7"):
        code, text = run("export-onnx", "-o", tmp_path / "x.onnx", "--static", bad)
        _one_error_line(code, text, "at least 8")
    assert parse_static("4096x4096") == (4096, 4096)  # fine for an x1 model ...
    with pytest.raises(UsageError, match="at x4 makes a 16384x16384 output"):
        check_static((4096, 4096), 4)  # ... not at x4
    check_static((1024, 1024), 4)
    with pytest.raises(UsageError, match="--static 2048x2048 at x4"):  # the library checks too
        export_onnx(tiny_model(4), tmp_path / "y.onnx", static=(2048, 2048))
    with pytest.raises(UsageError, match="at least 8"):
        export_onnx(tiny_model(4), tmp_path / "y.onnx", static=(0, 64))
    assert not (tmp_path / "y.onnx").exists()


# --- B. the environment -------------------------------------------------------------------------


def _launch(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_a_leftover_world_size_is_not_a_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    assert world_from_env() == World()
    _launch(monkeypatch, WORLD_SIZE="1", RANK="0")
    assert world_from_env() == World()
    _launch(monkeypatch, WORLD_SIZE="2", RANK="1")
    with pytest.raises(UsageError) as info:
        world_from_env()
    assert str(info.value) == (
        "WORLD_SIZE=2 is set but this is not a torchrun launch (MASTER_ADDR, MASTER_PORT are missing): "
        "unset WORLD_SIZE and RANK, or start with torchrun"
    )
    _launch(monkeypatch, MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")
    assert world_from_env() == World(1, 2, 0)  # a plain env:// launch (a Slurm script, a PyTorchJob)
    _launch(monkeypatch, LOCAL_RANK="1", LOCAL_WORLD_SIZE="2")
    assert world_from_env() == World(1, 2, 1)
    for name, value, message in [
        ("RANK", "2", "RANK=2 is not in 0..1"),
        ("RANK", "one", "RANK='one' is not a whole number"),
        ("MASTER_PORT", "70000", "MASTER_PORT=70000 is not a port number"),
        ("LOCAL_RANK", "2", "LOCAL_RANK=2 is not below LOCAL_WORLD_SIZE=2"),
        ("LOCAL_WORLD_SIZE", "3", "LOCAL_WORLD_SIZE=3 is not in 1..2"),
        ("WORLD_SIZE", "two", "WORLD_SIZE='two' is not a number of processes"),
    ]:
        with monkeypatch.context() as m:
            m.setenv(name, value)
            with pytest.raises(UsageError, match=message.replace(".", r"\.")):
                world_from_env()
    monkeypatch.delenv("RANK")
    with pytest.raises(UsageError, match=r"\(RANK is missing\)"):
        world_from_env()


def test_train_with_a_leftover_world_size_exits_2(
    photo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _launch(monkeypatch, WORLD_SIZE="2", RANK="1")
    out = tmp_path / "run"
    code, text = run("train", "--data", photo_dir, "--out", out, "--steps", 1, "--device", "cpu", *_TINY)
    _one_error_line(code, text, "WORLD_SIZE=2 is set but this is not a torchrun launch", "unset WORLD_SIZE")
    assert not out.exists()


@pytest.mark.parametrize("rank", ["1", "0"])  # a client that finds no master; a master nobody joins
def test_an_unreachable_master_fails_within_seconds(
    photo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rank: str
) -> None:
    port = str(_free_port())  # closed: nothing listens there
    _launch(
        monkeypatch,
        WORLD_SIZE="2",
        RANK=rank,
        LOCAL_RANK=rank,
        LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=port,
        TORCHELASTIC_RUN_ID="test",
        SRGAN_DIST_TIMEOUT="2",
    )
    start = time.perf_counter()
    with pytest.raises(
        UsageError, match=f"could not meet the others at MASTER_ADDR:MASTER_PORT 127.0.0.1:{port}"
    ):
        init_group(world_from_env(), torch.device("cpu"))
    assert time.perf_counter() - start < 20
    out = tmp_path / "run"
    start = time.perf_counter()
    code, text = run("train", "--data", photo_dir, "--out", out, "--steps", 1, "--device", "cpu", *_TINY)
    _one_error_line(
        code, text, f"process {rank} of 2 could not meet the others", f"127.0.0.1:{port} within 2 s"
    )
    assert "SRGAN_DIST_TIMEOUT" in text
    assert time.perf_counter() - start < 60
    assert not torch.distributed.is_initialized()


def test_the_join_timeout_must_be_a_number(monkeypatch: pytest.MonkeyPatch) -> None:
    _launch(monkeypatch, WORLD_SIZE="2", RANK="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")
    monkeypatch.setenv("SRGAN_DIST_TIMEOUT", "soon")
    with pytest.raises(UsageError, match="SRGAN_DIST_TIMEOUT='soon' must be a positive number of seconds"):
        init_group(world_from_env(), torch.device("cpu"))


# --- C. faults in training ----------------------------------------------------------------------


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.name.endswith(".tmp")]


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    training.save_checkpoint({"step": 1}, path)
    before = path.read_bytes()
    real_save = torch.save

    def enospc(state: object, fh: object) -> None:
        real_save(state, fh)  # some bytes reach the temporary file first
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(training.torch, "save", enospc)
    with pytest.raises(TrainingError) as info:
        training.save_checkpoint({"step": 2}, path)
    assert str(info.value) == (
        f"cannot write the checkpoint to {path}: no space left on device (the previous checkpoint is kept)"
    )
    assert "free some space" in (info.value.hint or "")
    assert path.read_bytes() == before and not _temps(tmp_path)

    # what PyTorch's zip writer raises: a RuntimeError, with the OSError as its context ...
    def stream_writer(state: object, fh: object) -> None:
        error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        error.__context__ = OSError(errno.ENOSPC, "No space left on device")
        raise error

    monkeypatch.setattr(training.torch, "save", stream_writer)
    with pytest.raises(TrainingError, match="no space left on device"):
        training.save_checkpoint({"step": 2}, path)

    # ... or without one: a disk with no room left says what happened
    def bare(state: object, fh: object) -> None:
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(training.torch, "save", bare)
    monkeypatch.setattr(training.shutil, "disk_usage", lambda p: type("U", (), {"free": 0})())
    with pytest.raises(TrainingError, match="no space left on device"):
        training.save_checkpoint({"step": 2}, path)
    monkeypatch.setattr(training.shutil, "disk_usage", lambda p: type("U", (), {"free": 10**12})())
    with pytest.raises(TrainingError, match=r"the write failed \(PytorchStreamWriter failed writing file"):
        training.save_checkpoint({"step": 2}, tmp_path / "new.pt")
    assert not (tmp_path / "new.pt").exists() and not _temps(tmp_path)
    assert path.read_bytes() == before


def test_train_on_a_full_disk_ends_with_a_sentence(
    photo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = torch.save

    def full_after_step_1(state: object, fh: object) -> None:
        if isinstance(state, dict) and state.get("step", 0) >= 2:
            fh.write(b"PK\x03\x04 partial")  # type: ignore[attr-defined]
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(state, fh)

    monkeypatch.setattr(training.torch, "save", full_after_step_1)
    out = tmp_path / "run"
    args = ["train", "--data", photo_dir, "--out", out, "--steps", 3, "--device", "cpu", *_TINY]
    code, text = run(*args, "--checkpoint-every", 1, "--log-every", 1)
    assert code == 1, text
    said = f"cannot write the checkpoint to {out / CHECKPOINT}: no space left on device"
    assert said.replace(" ", "") in text.replace(" ", "")  # Rich may wrap a long path anywhere
    assert "(the previous checkpoint is kept)" in text and "Traceback" not in text
    assert torch.load(out / CHECKPOINT, weights_only=True)["step"] == 1  # intact and loadable
    assert not _temps(out)


def test_sigterm_raises_as_ctrl_c_and_temporaries_go(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    target = tmp_path / "out.png"
    with pytest.raises(KeyboardInterrupt) as info, terminate_as_interrupt(), atomic_open(target) as fh:
        fh.write(b"half")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert isinstance(info.value, Terminated) and info.value.signum == signal.SIGTERM
    assert not target.exists() and not _temps(tmp_path)
    assert signal.getsignal(signal.SIGTERM) is before  # put back


def test_the_training_commands_stop_at_once_on_a_second_signal() -> None:
    stop = StopOnSignal()
    assert not stop()
    stop._handle(signal.SIGTERM, None)
    assert stop() and stop.signum == signal.SIGTERM  # the first: stop after this step
    with pytest.raises(Terminated) as info:
        stop._handle(signal.SIGTERM, None)  # the second: at once (guard: "terminated", exit 143)
    assert info.value.signum == signal.SIGTERM
    ctrl_c = StopOnSignal()
    ctrl_c._handle(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt) as raised:
        ctrl_c._handle(signal.SIGINT, None)  # guard: "interrupted", exit 130
    assert not isinstance(raised.value, Terminated)


def test_outside_the_training_loop_sigterm_is_ctrl_c_again() -> None:
    """The lapgan and text2img commands install StopOnSignal inside terminate_as_interrupt: once
    training is over (or before it starts) SIGTERM interrupts at once again."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with terminate_as_interrupt():
        outer = signal.getsignal(signal.SIGTERM)
        with StopOnSignal().installed() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):  # Python runs the handler between bytecodes, soon after the kill
                if stop():
                    break
                time.sleep(0.01)
            assert stop.signum == signal.SIGTERM  # asked to stop, nothing raised
        assert signal.getsignal(signal.SIGTERM) is outer
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
    assert {s: signal.getsignal(s) for s in before} == before


def _sigterm_after_training_began(args: list[str], out: Path) -> tuple[int, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in (*_LAUNCH, "TORCHELASTIC_RUN_ID"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "srgan_cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.time() + 180
        log = out / "log.jsonl"
        while time.time() < deadline and proc.poll() is None:
            lines = log.read_text().splitlines() if log.exists() else []
            if any(json.loads(line).get("event") == "log" for line in lines if line.endswith("}")):
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, " ".join(output.split())


def _events(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _stopped_on_request(code: int, text: str, out: Path) -> int:
    """Checks a run that got one SIGTERM while training; returns the step it stopped at."""
    assert code == 143, text  # 128 + SIGTERM, as srgan train after a stop on request
    assert "SIGTERM: stopping after this step with a checkpoint" in text, text
    assert "stopped (stop request)" in text and "--resume" in text, text
    assert "terminated" not in text and "Traceback" not in text, text
    assert not _temps(out)
    last = _events(out)[-1]
    assert last["event"] == "stopped" and last["reason"] == "stop request", last
    return int(last["step"])  # type: ignore[call-overload]


def test_sigterm_stops_lapgan_after_the_step_with_a_checkpoint(photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "lapgan"
    args = ["lapgan", "train", "--data", str(photo_dir), "--out", str(out), "--size", "16", "--base", "4"]
    args += ["--n-feats", "8", "--coarse-hidden", "16", "--steps", "100000", "--batch-size", "2"]
    args += ["--checkpoint-every", "100000", "--sample-every", "100000", "--device", "cpu"]
    code, text = _sigterm_after_training_began(args, out)
    step = _stopped_on_request(code, text, out)
    ckpt = torch.load(out / "level0.pt", weights_only=True)
    assert ckpt["step"] == step >= 50  # no periodic checkpoint was due: this one is the stop's
    assert "level 0: " + str(step) in text
    # --resume continues from the stop: the next call starts at that step and adds to it
    code, text = run("lapgan", "train", "--out", out, "--resume", "--level", 0, "--steps", step + 2)
    assert code == 0 and "done" in text, text
    levels = [e for e in _events(out) if e["event"] == "level"]
    assert levels[-1]["step"] == step and levels[-1]["level"] == 0
    assert torch.load(out / "level0.pt", weights_only=True)["step"] == step + 2


def test_sigterm_stops_text2img_after_the_step_with_a_checkpoint(shapes_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "t2i"
    args = ["text2img", "train", "--data", str(shapes_dir), "--out", str(out), "--steps", "100000"]
    args += ["--ngf", "8", "--ndf", "8", "--encoder-steps", "2", "--batch-size", "4", "--device", "cpu"]
    args += ["--checkpoint-every", "100000", "--sample-every", "100000"]
    code, text = _sigterm_after_training_began(args, out)
    step = _stopped_on_request(code, text, out)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == step >= 50  # the stop's
    info = weights.read_info(out / "text2img.safetensors")
    assert info.provenance["steps"] == step  # the weights of the steps done
    code, text = run("text2img", "train", "--out", out, "--resume", "--steps", step + 2)
    assert code == 0 and "done" in text, text
    gan = [e for e in _events(out) if e["event"] == "gan"]
    assert gan[-1]["step"] == step  # continued from the stop, nothing lost
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == step + 2
    assert weights.read_info(out / "text2img.safetensors").provenance["steps"] == step + 2


def test_a_signal_during_a_checkpoint_write_waits_for_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = torch.save

    def save_with_a_signal_inside(state: object, fh: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the file is half written
        time.sleep(0.05)
        real_save(state, fh)

    monkeypatch.setattr(training.torch, "save", save_with_a_signal_inside)
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(Terminated), terminate_as_interrupt():
        training.save_checkpoint({"step": 7}, path)
    assert torch.load(path, weights_only=True)["step"] == 7  # whole, then the signal was handled
    assert not _temps(tmp_path)
