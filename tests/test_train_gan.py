"""The SRGAN stage: a few steps that checkpoint and resume bit-exactly, configs, init, two-process DDP."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import save_file
from typer.testing import CliRunner

from srgan_cli import archs, weights
from srgan_cli.cli.app import app
from srgan_cli.errors import PerceptualWeightsError, TrainingError, TrainingOptionError
from srgan_cli.sr import losses
from srgan_cli.sr.config import CHECKPOINT, SAMPLES, TrainConfig, apply_init_arch, load_toml
from srgan_cli.sr.train import train


def _gan(photo_dir: Path, out: Path, init: Path, vgg: Path, steps: int, **kw: object) -> TrainConfig:
    base = dict(
        data=str(photo_dir),
        val=str(photo_dir),
        out=str(out),
        stage="gan",
        init=str(init),
        scale=2,
        n_blocks=1,
        n_feats=8,
        d_feats=4,
        crop=16,
        batch_size=2,
        steps=steps,
        content_layer="vgg22",
        vgg_weights=str(vgg),
        val_every=6,
        checkpoint_every=3,
        log_every=3,
        samples=2,
        device="cpu",
        seed=7,
        schedule="step",
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


class _Killed(Exception):
    pass


def _straight_and_killed_then_resumed(config: Callable[[Path], TrainConfig], root: Path) -> Path:
    """Trains config(root/'a') straight through, and config(root/'b') killed right after its first
    checkpoint (as if the process died there) and then resumed; returns the straight run's weights."""

    def kill_after_first_checkpoint(kind: str, data: dict[str, object]) -> None:
        if kind == "checkpoint":
            raise _Killed

    straight = train(config(root / "a"))
    with pytest.raises(_Killed):
        train(config(root / "b"), on_event=kill_after_first_checkpoint)
    assert torch.load(root / "b" / CHECKPOINT, weights_only=True)["step"] == 3
    train(config(root / "b"), resume=True)
    assert straight.steps == 6
    return straight.weights


def test_gan_stage_resumes_bit_exactly(
    photo_dir: Path, tmp_path: Path, init_weights: Path, vgg_file: Path
) -> None:
    straight_weights = _straight_and_killed_then_resumed(
        lambda out: _gan(photo_dir, out, init_weights, vgg_file, 6), tmp_path
    )
    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)
    for part in ("generator", "ema", "discriminator"):
        _assert_same(a[part], b[part])
    assert a["d_optimizer"]["state"].keys() == b["d_optimizer"]["state"].keys()

    # the run started from the init weights, not from random ones
    start = archs.load(init_weights).model.state_dict()
    assert not torch.equal(a["generator"]["head.0.weight"], start["head.0.weight"])  # it trained
    assert (a["generator"]["head.0.weight"] - start["head.0.weight"]).abs().max() < 0.05  # from init

    events = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    logs = [e for e in events if e["event"] == "log"]
    assert {"D(x)", "D(G(z))", "content", "adversarial", "tv", "d_loss", "images_per_s"} <= logs[0].keys()
    assert 0 < logs[0]["D(x)"] < 1 and logs[0]["content"] > 0
    assert (tmp_path / "a" / SAMPLES / "step_0000006.png").is_file()

    info = weights.read_info(straight_weights)  # srgan_x2.safetensors, in the shipped format
    assert straight_weights.name == "srgan_x2.safetensors"
    assert info.provenance["stage"] == "gan" and info.provenance["init"] == str(init_weights)
    assert info.provenance["train_config"]["content_layer"] == "vgg22"
    assert "val_psnr_y" in info.metrics


def test_ragan_r1_pixel_and_grid_terms_train(
    photo_dir: Path, tmp_path: Path, init_weights: Path, vgg_file: Path
) -> None:
    cfg = _gan(
        photo_dir,
        tmp_path / "r",
        init_weights,
        vgg_file,
        3,
        gan_loss="ragan",
        r1_gamma=1.0,
        pixel_weight=1.0,
        grid_weight=1.0,
        val=None,
    )
    result = train(cfg)
    log = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    stats = next(e for e in log if e["event"] == "log")
    assert stats["r1"] > 0 and stats["pixel"] > 0 and stats["grid"] > 0
    assert result.discriminator is not None


def test_gan_stage_without_vgg_weights_stops_clearly(
    photo_dir: Path, tmp_path: Path, init_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(losses, "_download", lambda arch: (_ for _ in ()).throw(OSError("offline")))
    monkeypatch.delenv(losses.ENV_VGG, raising=False)
    cfg = _gan(photo_dir, tmp_path / "n", init_weights, Path("x"), 2, vgg_weights=None)
    with pytest.raises(PerceptualWeightsError, match="no VGG weights"):
        train(cfg)
    assert not (tmp_path / "n" / CHECKPOINT).exists()


def test_generator_shape_comes_from_init(init_weights: Path) -> None:
    cfg = TrainConfig.for_stage("gan")
    cfg.init = str(init_weights)
    shaped = apply_init_arch(cfg, given=set())
    assert (shaped.scale, shaped.n_blocks, shaped.n_feats) == (2, 1, 8)
    assert (shaped.steps, shaped.schedule, shaped.name) == (200_000, "step", "srgan_x2")
    cfg.n_blocks = 5
    with pytest.raises(TrainingError, match="n_blocks: 5 \\(given\\) vs 1"):
        apply_init_arch(cfg, given={"n_blocks"})


def test_toml_config(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        'stage = "gan"\nsteps = 50\n[gan]\nadv-weight = 0.005\ngan_loss = "ragan"\n[run]\nlr = 1\n'
    )
    assert load_toml(path) == {
        "stage": "gan",
        "steps": 50,
        "adv_weight": 0.005,
        "gan_loss": "ragan",
        "lr": 1.0,
    }
    path.write_text("stepz = 3\n")
    with pytest.raises(TrainingError, match="unknown option\\(s\\): stepz"):
        load_toml(path)
    path.write_text('steps = "many"\n')
    with pytest.raises(TrainingError, match="steps should be a int"):
        load_toml(path)
    path.write_text("steps = \n")
    with pytest.raises(TrainingError, match="not valid TOML"):
        load_toml(path)
    with pytest.raises(TrainingError, match="not found"):
        load_toml(tmp_path / "missing.toml")


def test_cli_config_file_with_overrides(
    photo_dir: Path, tmp_path: Path, init_weights: Path, vgg_file: Path
) -> None:
    out = tmp_path / "cli"
    cfg = tmp_path / "gan.toml"
    cfg.write_text(
        f'stage = "gan"\ninit = "{init_weights}"\nsteps = 100\ncrop = 16\nbatch_size = 2\nd_feats = 4\n'
        f'content_layer = "vgg22"\nvgg_weights = "{vgg_file}"\ndevice = "cpu"\nlog_every = 1\n'
    )
    args = ["train", "--config", str(cfg), "--data", str(photo_dir), "--out", str(out), "--steps", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = torch.load(out / CHECKPOINT, weights_only=True)["config"]
    assert saved["steps"] == 2 and saved["adv_weight"] == 1e-3 and saved["n_feats"] == 8  # from --init
    assert "D(G(z))" in result.output
    again = CliRunner().invoke(app, ["train", "--resume", "--out", str(out), "--steps", "3"])
    assert again.exit_code == 0, again.output
    assert torch.load(out / CHECKPOINT, weights_only=True)["step"] == 3
    bad = CliRunner().invoke(
        app, [*args[:-2], "--steps", "2", "--n-blocks", "3", "--out", str(tmp_path / "x")]
    )
    assert bad.exit_code == 1 and "disagrees" in bad.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(rank: int, world: int, port: int, cfg: TrainConfig, dump: str, resume: bool = False) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    result = train(cfg, resume=resume)
    assert result.generator is not None and result.discriminator is not None
    torch.save(
        {"g": result.generator.state_dict(), "d": result.discriminator.state_dict()}, f"{dump}/rank{rank}.pt"
    )


def _two_processes_agree(cfg: TrainConfig, tmp_path: Path, resume: bool = False) -> None:
    """Train `cfg` in two gloo processes and check that they end with identical G and D."""
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, str(tmp_path), resume), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    _assert_same(r0["g"], r1["g"])
    _assert_same(r0["d"], r1["d"])


def test_two_gloo_processes_end_with_identical_weights(
    photo_dir: Path, tmp_path: Path, init_weights: Path, vgg_file: Path
) -> None:
    cfg = _gan(
        photo_dir,
        tmp_path / "ddp",
        init_weights,
        vgg_file,
        4,
        val=None,
        checkpoint_every=2,
        schedule="constant",
    )
    _two_processes_agree(cfg, tmp_path)
    ckpt = torch.load(tmp_path / "ddp" / CHECKPOINT, weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["data_rng"]) == 2
    assert not torch.equal(ckpt["data_rng"][0], ckpt["data_rng"][1])  # each rank its own stream
    lines = (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["event"] == "done" for line in lines) == 1  # rank 0 alone logs

    # a distributed run resumes too: every process continues its own stream, in step again
    _two_processes_agree(replace(cfg, steps=6), tmp_path, resume=True)
    assert torch.load(tmp_path / "ddp" / CHECKPOINT, weights_only=True)["step"] == 6
    with pytest.raises(TrainingError, match="trained by 2 process"):
        train(replace(cfg, steps=8), resume=True)  # one process cannot continue a two-process run


def test_gan_step_with_the_multi_layer_content_loss(
    photo_dir: Path, tmp_path: Path, init_weights: Path
) -> None:
    from srgan_cli.sr.trainer import Trainer

    torch.manual_seed(3)
    state = losses._features("vgg19", 100).state_dict()  # a random VGG19: the loss's wiring, not its values
    vgg = losses.VGGFeatures(losses.CONTENT_LAYERS["vgg19_multi"], state, "torchvision")
    config = _gan(
        photo_dir, tmp_path / "m", init_weights, tmp_path / "unused", 1, content_layer="vgg19_multi", crop=32
    )
    trainer = Trainer(config, torch.device("cpu"), vgg=vgg)
    before = [p.detach().clone() for p in trainer.g.parameters()]
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(2, 3, 32, 32, generator=g)
    lr = torch.nn.functional.interpolate(hr, scale_factor=0.5, mode="area")
    out = trainer.step(lr, hr, 0)
    assert out["content"].item() > 0 and torch.isfinite(out["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.g.parameters(), strict=True))


def test_grid_weight_needs_whole_tiles(
    photo_dir: Path, tmp_path: Path, init_weights: Path, vgg_file: Path
) -> None:
    with pytest.raises(TrainingError, match="tiles of 16 px"):
        _gan(photo_dir, tmp_path / "t", init_weights, vgg_file, 1, crop=8, grid_weight=1.0).validate()
    with pytest.raises(TrainingError, match="--grid-weight"):
        _gan(photo_dir, tmp_path / "t", init_weights, vgg_file, 1, grid_weight=-1.0).validate()
    _gan(photo_dir, tmp_path / "t", init_weights, vgg_file, 1, crop=8).validate()  # off: any crop


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_mixed_precision_paths_train_and_resume_bit_exactly(
    photo_dir: Path,
    tmp_path: Path,
    init_weights: Path,
    vgg_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    dtype: torch.dtype,
) -> None:
    """The code `--amp bf16|fp16` runs (autocast regions, the float casts around every loss, fp16's
    loss scalers and their checkpointed state) under the CPU's autocast. bf16 is `--amp bf16` as a
    CPU user runs it; fp16 is CUDA's only, so for it the Trainer's dtype is forced here (CI has no
    GPU)."""
    from srgan_cli.sr import trainer as trainer_module

    if dtype == torch.float16:
        monkeypatch.setattr(trainer_module, "amp_dtype", lambda amp, device: dtype)
    terms = dict(
        pixel_weight=1.0, grid_weight=1.0, r1_gamma=1.0, amp="bf16" if dtype == torch.bfloat16 else "off"
    )
    straight_weights = _straight_and_killed_then_resumed(
        lambda out: _gan(photo_dir, out, init_weights, vgg_file, 6, **terms), tmp_path
    )
    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)
    for part in ("generator", "ema", "discriminator"):
        _assert_same(a[part], b[part])
    for part in ("g_scaler", "d_scaler"):
        assert a[part] == b[part]  # the dynamic loss scale resumes where it was
        assert bool(a[part]) == (dtype == torch.float16)  # bf16 needs no loss scaling
        if a[part]:  # starts at 2**16 and halves on each overflowing (skipped) step
            assert 0 < a[part]["scale"] <= 2.0**16

    start = archs.load(init_weights).model.state_dict()
    assert not torch.equal(a["generator"]["head.0.weight"], start["head.0.weight"])  # it trained
    shipped = archs.load(straight_weights)
    assert {p.dtype for p in shipped.model.parameters()} == {torch.float32}  # autocast never casts weights
    logs = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    stats = [e for e in logs if e["event"] == "log"]
    assert stats and all(e["r1"] > 0 and e["grid"] > 0 and 0 < e["D(x)"] < 1 for e in stats)
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in stats)
    assert shipped.info.metrics["val_psnr_y"] > 10
    assert (
        logs[0]["event"] == "start"
        and logs[0]["amp"] == {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    )


def test_amp_on_the_cpu() -> None:
    """On the CPU auto is fp32 (the same numbers on every CPU), bf16 is there to ask for, and fp16
    is refused as a usage error that names the way round."""
    from srgan_cli.sr.trainer import amp_dtype, cpu_bf16_native

    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None and amp_dtype("off", cpu) is None
    assert amp_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(TrainingOptionError, match="--amp fp16 needs a CUDA device") as caught:
        amp_dtype("fp16", cpu)
    assert caught.value.exit_code == 2 and "--amp bf16" in (caught.value.hint or "")
    assert cpu_bf16_native() in (True, False, None)  # None: not an x86 CPU


def test_cpu_bf16_hardware_is_read_from_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """AVX512-BF16 or AMX count as bf16 hardware; plain AVX-512 does not (oneDNN emulates bf16 there)."""
    import platform

    from srgan_cli.sr.trainer import cpu_bf16_native

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    for avx512_bf16, amx, expected in ((True, False, True), (False, True, True), (False, False, False)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert cpu_bf16_native() is expected
    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    assert cpu_bf16_native() is None  # unknown: neither the hint nor the warning


def test_emulated_cpu_bf16_gets_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    """--amp bf16 on a CPU without bf16 hardware runs, slower than fp32: the run says so."""
    from srgan_cli.sr import trainer as trainer_module

    cpu = torch.device("cpu")

    def notes(amp: str) -> list[str]:
        config = TrainConfig(device="cpu", scale=2, n_blocks=1, n_feats=8, crop=16, batch_size=2, amp=amp)
        return trainer_module.Trainer(config, cpu).notes

    monkeypatch.setattr(trainer_module, "cpu_bf16_native", lambda: False)
    assert notes("auto") == [] and notes("off") == []
    assert len(notes("bf16")) == 1 and "emulated" in notes("bf16")[0]
    monkeypatch.setattr(trainer_module, "cpu_bf16_native", lambda: True)
    assert notes("bf16") == []


def _weights_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """D's learned tensors, without BN's running statistics (each forward pass moves them)."""
    return {k: v for k, v in state.items() if k.endswith(("weight", "bias"))}


def test_init_d_starts_the_discriminator_from_a_gan_run(
    photo_dir: Path, tmp_path: Path, init_weights: Path, vgg_file: Path
) -> None:
    train(_gan(photo_dir, tmp_path / "a", init_weights, vgg_file, 3, val=None))
    checkpoint = tmp_path / "a" / CHECKPOINT
    trained = torch.load(checkpoint, weights_only=True)["discriminator"]
    as_file = tmp_path / "d.safetensors"
    save_file(trained, str(as_file))

    def d_after_one_step(out: str, init_d: Path | None) -> dict[str, torch.Tensor]:
        # an Adam step of 1e-12 leaves D where it started, to within 1e-11
        cfg = _gan(photo_dir, tmp_path / out, init_weights, vgg_file, 1, val=None, d_lr=1e-12, seed=11)
        result = train(replace(cfg, init_d=None if init_d is None else str(init_d)))
        if init_d is not None:
            assert weights.read_info(result.weights).provenance["init_d"] == str(init_d)
        return _weights_only(torch.load(tmp_path / out / CHECKPOINT, weights_only=True)["discriminator"])

    for source in (checkpoint, as_file):
        started = d_after_one_step(f"from_{source.suffix[1:]}", source)
        for key, value in _weights_only(trained).items():
            torch.testing.assert_close(started[key], value, rtol=0, atol=1e-10, msg=key)
    fresh = d_after_one_step("fresh", None)  # the same seed without --init-d: a new D
    assert not torch.allclose(fresh["features.0.weight"], trained["features.0.weight"], atol=1e-3)


def test_init_d_refuses_what_cannot_start_a_discriminator(
    photo_dir: Path, tmp_path: Path, init_weights: Path, vgg_file: Path
) -> None:
    train(_gan(photo_dir, tmp_path / "a", init_weights, vgg_file, 3, val=None))
    checkpoint = tmp_path / "a" / CHECKPOINT

    def start(init_d: Path, **kw: object) -> None:
        train(_gan(photo_dir, tmp_path / "b", init_weights, vgg_file, 1, val=None, init_d=str(init_d), **kw))

    with pytest.raises(TrainingError, match="width 4, this run's is 8") as info:
        start(checkpoint, d_feats=8)
    assert "--d-feats 4" in str(info.value.hint)
    with pytest.raises(TrainingError, match="holds a srgan discriminator, this run's is unet") as info:
        start(checkpoint, d_arch="unet")
    assert "--d-arch srgan" in str(info.value.hint)
    with pytest.raises(TrainingError, match="no such file"):
        start(tmp_path / "missing.pt")
    pretrain = replace(_gan(photo_dir, tmp_path / "p", init_weights, vgg_file, 1, val=None), stage="pretrain")
    train(pretrain)
    with pytest.raises(TrainingError, match="holds no discriminator"):
        start(tmp_path / "p" / CHECKPOINT)
    with pytest.raises(TrainingError, match="only the gan stage"):
        train(replace(pretrain, out=str(tmp_path / "q"), init_d=str(checkpoint)))
    assert not (tmp_path / "b" / CHECKPOINT).exists()  # nothing was written for the refused runs


def test_unet_discriminator_trains_resumes_bit_exactly_and_restarts(
    photo_dir: Path, tmp_path: Path, init_weights: Path, vgg_file: Path
) -> None:
    """--d-arch unet: per-pixel logits through the same losses, spectral-norm state (the power
    iteration's vectors) in the checkpoint so that a killed run resumes to the same weights, and
    --init-d from such a run."""

    def config(out: Path) -> TrainConfig:
        return _gan(photo_dir, out, init_weights, vgg_file, 6, d_arch="unet", gan_loss="ragan")

    straight_weights = _straight_and_killed_then_resumed(config, tmp_path)
    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)
    for part in ("generator", "ema", "discriminator"):
        _assert_same(a[part], b[part])
    assert any(key.endswith("._u") for key in a["discriminator"])  # the power iteration resumes too
    info = weights.read_info(straight_weights)
    assert info.provenance["train_config"]["d_arch"] == "unet"
    logs = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    first = next(e for e in logs if e["event"] == "log")
    assert 0 < first["D(x)"] < 1 and first["adversarial"] > 0

    # the checkpoint restarts a unet D; a srgan run refuses it by name
    cfg = replace(config(tmp_path / "c"), steps=1, val=None, init_d=str(tmp_path / "a" / CHECKPOINT))
    train(cfg)
    with pytest.raises(TrainingError, match="holds a unet discriminator, this run's is srgan"):
        train(replace(cfg, out=str(tmp_path / "d"), d_arch="srgan"))
    with pytest.raises(TrainingError, match="cannot resume with different settings .*d_arch"):
        train(replace(config(tmp_path / "b"), d_arch="srgan"), resume=True)

    # in Python as on the command line, other start weights with resume are refused, not ignored
    with pytest.raises(TrainingError, match="init_d='other.pt' starts a new run, but resume continues"):
        train(replace(cfg, steps=2, init_d="other.pt"), resume=True)
    with pytest.raises(TrainingError, match="init='other.safetensors' starts a new run") as caught:
        train(replace(cfg, steps=2, init="other.safetensors"), resume=True)
    assert "leave init unset" in (caught.value.hint or "")
    resumed = train(replace(cfg, steps=2, init=None, init_d=None), resume=True)  # unset: the run's own
    assert weights.read_info(resumed.weights).provenance["init_d"] == cfg.init_d  # still named
    assert weights.read_info(resumed.weights).provenance["init"] == cfg.init
    train(replace(cfg, steps=3), resume=True)  # the same start as saved
