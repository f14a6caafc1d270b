"""The fast training step (fused Adam, multi-tensor EMA and logging, compiled passes and losses)
computes what the plain step computes, resumes exactly, and can be switched off."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from srgan_cli.sr import trainer as trainer_module
from srgan_cli.sr.config import CHECKPOINT, TrainConfig
from srgan_cli.sr.trainer import Trainer, fast_step_on
from srgan_cli.training import RunningMeans

from .test_train_gan import _assert_same, _gan, _straight_and_killed_then_resumed, _two_processes_agree

CPU = torch.device("cpu")


def _pretrain(**kw: object) -> TrainConfig:
    base: dict[str, object] = dict(scale=2, n_blocks=2, n_feats=8, crop=16, batch_size=3, steps=8, seed=3)
    base.update(kw)
    return TrainConfig(device="cpu", **base)  # type: ignore[arg-type]


def _gan_config(vgg: Path, **kw: object) -> TrainConfig:
    """The GAN stage's test config with every optional loss term on (the Trainer alone: no data,
    no run folder, no init weights are read)."""
    terms: dict[str, object] = dict(pixel_weight=1.0, grid_weight=1.0, steps=8)
    terms.update(kw)
    steps = int(terms.pop("steps"))  # type: ignore[call-overload]
    unused = Path("unused")
    return _gan(unused, unused, unused, vgg, steps, **terms)


def _run(config: TrainConfig, steps: int) -> tuple[Trainer, list[dict[str, float]]]:
    """`steps` steps of a fresh Trainer on batches drawn from one fixed stream."""
    torch.manual_seed(config.seed)
    trainer = Trainer(config, CPU)
    data = torch.Generator().manual_seed(11)
    stats = []
    for step in range(steps):
        hr = torch.rand(config.batch_size, 3, config.crop, config.crop, generator=data)
        lr = torch.nn.functional.avg_pool2d(hr, config.scale)
        trainer.set_lr(step)
        stats.append({k: float(v) for k, v in trainer.step(lr, hr, step).items()})
    return trainer, stats


def _assert_close_runs(
    a: tuple[Trainer, list[dict[str, float]]], b: tuple[Trainer, list[dict[str, float]]]
) -> None:
    (ta, sa), (tb, sb) = a, b
    pairs = [(ta.g, tb.g), (ta.ema, tb.ema)] + ([(ta.d, tb.d)] if ta.d is not None else [])
    for net_a, net_b in pairs:
        assert net_a is not None and net_b is not None
        for (name, x), (_, y) in zip(net_a.state_dict().items(), net_b.state_dict().items(), strict=True):
            # Adam moves a weight by up to ~3.2 lr per step ((1 - beta1) / sqrt(1 - beta2)) whatever
            # the size of its gradient, so one whose gradient is zero up to rounding (a conv bias a
            # BatchNorm cancels, a BN shift at a flat spot) can end up to twice that apart per step
            # between two runs that round differently; the losses below are the close check
            atol = 6.4 * ta.config.lr * len(sa)
            torch.testing.assert_close(x, y, rtol=1e-4, atol=atol, msg=lambda m, name=name: f"{name}: {m}")
    assert [s.keys() for s in sa] == [s.keys() for s in sb]
    for step_a, step_b in zip(sa, sb, strict=True):
        for key in step_a:
            assert step_a[key] == pytest.approx(step_b[key], rel=1e-4, abs=1e-6), key


def test_the_switch() -> None:
    assert fast_step_on("auto", torch.device("cuda")) and not fast_step_on("auto", CPU)
    assert fast_step_on("on", CPU) and not fast_step_on("off", torch.device("cuda"))
    plain, fast = Trainer(_pretrain(fast_step="off"), CPU), Trainer(_pretrain(fast_step="on"), CPU)
    assert plain.step_mode == "plain" and fast.step_mode == "fast"
    assert not plain.g_opt.defaults["fused"] and fast.g_opt.defaults["fused"]
    with pytest.raises(Exception, match="--fast-step"):
        _pretrain(fast_step="sometimes").validate()


@pytest.mark.parametrize("stage", ["pretrain", "gan"])
def test_fast_step_equals_the_plain_step(stage: str, vgg_file: Path) -> None:
    config = _pretrain() if stage == "pretrain" else _gan_config(vgg_file)
    plain = _run(TrainConfig(**{**config.to_dict(), "fast_step": "off"}), 5)
    fast = _run(TrainConfig(**{**config.to_dict(), "fast_step": "on"}), 5)
    assert fast[0].step_mode == "fast"
    _assert_close_runs(plain, fast)
    assert not torch.equal(plain[0].g.head[0].weight, Trainer(config, CPU).g.head[0].weight)  # it trained


def test_compiled_fast_step_equals_the_plain_step(vgg_file: Path) -> None:
    """torch.compile of the passes and losses (what CUDA runs as graphs), on the CPU's compiler; with
    the U-Net D too, whose spectral norm updates its power-iteration vectors (compared with the
    weights) in place on every training forward."""
    unet = _gan_config(vgg_file, steps=4, d_arch="unet")
    for config in (_pretrain(steps=4), _gan_config(vgg_file, steps=4), unet):
        plain = _run(TrainConfig(**{**config.to_dict(), "fast_step": "off"}), 3)
        compiled = _run(TrainConfig(**{**config.to_dict(), "fast_step": "on", "compile": True}), 3)
        assert compiled[0].step_mode == "fast, compiled" and not compiled[0].notes, compiled[0].notes
        _assert_close_runs(plain, compiled)
    assert plain[0].d is not None and any(k.endswith("._u") for k in plain[0].d.state_dict())  # compared


def test_a_failing_compile_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fn: object, mode: str | None = None) -> object:
        def raise_(*args: object) -> None:
            raise RuntimeError("no C++ compiler")

        return raise_

    monkeypatch.setattr(trainer_module.torch, "compile", broken)
    trainer, stats = _run(_pretrain(fast_step="on", compile=True), 2)
    plain = _run(_pretrain(fast_step="on"), 2)
    _assert_close_runs(plain, (trainer, stats))
    assert any("failed, running it eagerly: no C++ compiler" in n for n in trainer.notes)


def test_fast_gan_stage_resumes_bit_exactly(
    photo_dir: Path, tmp_path: Path, vgg_file: Path, init_weights: Path
) -> None:
    _straight_and_killed_then_resumed(
        lambda out: _gan(photo_dir, out, init_weights, vgg_file, 6, fast_step="on"), tmp_path
    )
    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)
    for part in ("generator", "ema", "discriminator"):
        _assert_same(a[part], b[part])
    assert a["g_optimizer"]["param_groups"][0]["fused"]


def test_fast_step_under_two_gloo_processes(
    photo_dir: Path, tmp_path: Path, init_weights: Path, vgg_file: Path
) -> None:
    """DDP with the fast step: fused Adam on both ranks, D's hand-averaged gradients, one log."""
    cfg = _gan(photo_dir, tmp_path / "ddp", init_weights, vgg_file, 3, val=None, fast_step="on")
    _two_processes_agree(cfg, tmp_path)
    ckpt = torch.load(tmp_path / "ddp" / CHECKPOINT, weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["g_optimizer"]["param_groups"][0]["fused"]


def test_resuming_with_the_other_step_keeps_the_adam_state_and_switches(vgg_file: Path) -> None:
    fast, _ = _run(_gan_config(vgg_file, fast_step="on"), 2)
    plain = Trainer(_gan_config(vgg_file, fast_step="off"), CPU)
    plain.load_state_dict(fast.state_dict())
    for opt, saved in ((plain.g_opt, fast.g_opt), (plain.d_opt, fast.d_opt)):
        assert not opt.param_groups[0]["fused"]  # this run's choice, not the checkpoint's
        for p, q in zip(opt.param_groups[0]["params"], saved.param_groups[0]["params"], strict=True):
            torch.testing.assert_close(opt.state[p]["exp_avg"], saved.state[q]["exp_avg"], rtol=0, atol=0)
    plain.step(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16), 2)  # and it trains on from there


def test_running_means_stack_a_step_into_one_vector() -> None:
    means = RunningMeans()
    means.add({"a": torch.tensor(1.0), "b": torch.tensor(2, dtype=torch.float64)})
    means.add({"a": torch.tensor(3.0), "b": torch.tensor(4.0)})
    assert means.pop() == {"a": 2.0, "b": 3.0}
    assert means.pop() == {}
    means.add({"a": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="logged"):
        means.add({"b": torch.tensor(1.0)})


def test_cli_switch_and_the_step_mode_in_the_log(photo_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from srgan_cli.cli.app import app

    for mode, shown in (("on", "step fast,"), ("off", "step plain,")):
        out = tmp_path / mode
        args = ["train", "--data", str(photo_dir), "--out", str(out), "--scale", "2", "--n-blocks", "1"]
        args += ["--n-feats", "8", "--crop", "16", "--batch-size", "2", "--steps", "2", "--device", "cpu"]
        result = CliRunner().invoke(app, [*args, "--fast-step", mode])
        assert result.exit_code == 0, result.output
        assert shown in " ".join(result.output.split())
        saved = TrainConfig.from_dict(torch.load(out / CHECKPOINT, weights_only=True)["config"])
        assert saved.fast_step == mode
