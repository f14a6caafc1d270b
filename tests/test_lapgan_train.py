"""LAPGAN training, sampling, upscaling and the Parzen estimate on tiny models (CPU, seconds)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from srgan_cli import archs, weights
from srgan_cli.errors import TrainingError, UsageError, WeightsMismatch
from srgan_cli.lapgan.data import CropSampler
from srgan_cli.lapgan.models import Lapgan, LapganConfig
from srgan_cli.lapgan.parzen import parzen_eval, parzen_log_likelihood
from srgan_cli.lapgan.pyramid import gaussian_pyramid
from srgan_cli.lapgan.sample import coarse_from_image, draw, level_strip
from srgan_cli.lapgan.train import (
    LapganTrainConfig,
    LevelTrainer,
    assemble,
    level_steps,
    load_lapgan,
    train_lapgan,
)
from srgan_cli.runtime.lapgan_backend import LapganUpscaler

from .conftest import make_photo

TINY = {"size": 16, "base": 4, "n_feats": 8, "coarse_hidden": 16, "noise_dim": 8}


def tiny_config(data: Path, out: Path, **kw: object) -> LapganTrainConfig:
    values: dict[str, object] = {
        **TINY,
        "data": str(data),
        "out": str(out),
        "steps": 3,
        "batch_size": 4,
        "device": "cpu",
        "log_every": 1,
        "sample_every": 2,
        "checkpoint_every": 2,
        **kw,
    }
    return LapganTrainConfig.from_dict(values)


@pytest.fixture
def class_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "classes"
    for c, name in enumerate(("cats", "dogs")):
        (folder / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(make_photo(24, 20, seed=10 * c + i)).save(folder / name / f"{i}.png")
    return folder


def tiny_lapgan(seed: int = 0, **kw: int) -> Lapgan:
    torch.manual_seed(seed)
    return Lapgan(LapganConfig(**{**TINY, **kw})).eval()


def test_one_step_per_level_moves_both_networks() -> None:
    config = LapganConfig(**TINY)
    train = LapganTrainConfig(**TINY)
    real = torch.rand(4, 3, 16, 16)
    for level in range(config.levels):
        torch.manual_seed(level)
        trainer = LevelTrainer(config, level, train, torch.device("cpu"))
        g0 = [p.detach().clone() for p in trainer.g.parameters()]
        d0 = [p.detach().clone() for p in trainer.d.parameters()]
        stats = trainer.step(real, None)
        assert set(stats) == {"D(x)", "D(G(z))", "loss_D", "loss_G"}
        assert all(math.isfinite(float(v)) for v in stats.values())
        assert any(not torch.equal(a, b) for a, b in zip(g0, trainer.g.parameters(), strict=True))
        assert any(not torch.equal(a, b) for a, b in zip(d0, trainer.d.parameters(), strict=True))


def test_targets_are_the_pyramid_of_the_real_crop() -> None:
    config = LapganConfig(**TINY)
    real = torch.rand(2, 3, 16, 16)
    gauss = gaussian_pyramid(real, config.levels)  # 16, 8, 4
    coarse_x, none = LevelTrainer(config, 0, LapganTrainConfig(**TINY), torch.device("cpu")).targets(real)
    assert none is None and torch.equal(coarse_x, gauss[-1])
    band, coarse = LevelTrainer(config, 2, LapganTrainConfig(**TINY), torch.device("cpu")).targets(real)
    assert band.shape == coarse.shape == (2, 3, 16, 16)
    torch.testing.assert_close(band + coarse, real)  # I_k = l_k + h_k


def test_train_writes_weights_checkpoints_and_grids(photo_dir: Path, tmp_path: Path) -> None:
    events: list[str] = []
    result = train_lapgan(tiny_config(photo_dir, tmp_path / "run"), on_event=lambda k, d: events.append(k))
    assert result.weights is not None and result.steps == {0: 3, 1: 3, 2: 3}
    assert events[0] == "start" and events[-1] == "done" and events.count("level_done") == 3
    grids = sorted(p.name for p in (tmp_path / "run" / "samples").iterdir())
    assert grids == [f"level{k}_step000000{s}.png" for k in range(3) for s in (2, 3)]
    model, info = load_lapgan(result.weights)
    assert info.arch == "lapgan" and info.scale == 4 and model.config.levels == 3
    assert info.provenance["levels"]["2"]["steps"] == 3


def test_resume_continues_exactly(photo_dir: Path, tmp_path: Path) -> None:
    straight = train_lapgan(tiny_config(photo_dir, tmp_path / "a", steps=4), levels=[1])
    train_lapgan(tiny_config(photo_dir, tmp_path / "b", steps=2), levels=[1])
    with pytest.raises(TrainingError, match="already trained"):
        train_lapgan(tiny_config(photo_dir, tmp_path / "b", steps=4), levels=[1])
    resumed = train_lapgan(tiny_config(photo_dir, tmp_path / "b", steps=4), levels=[1], resume=True)
    assert straight.weights is None and resumed.steps == {1: 4}  # level 0 and 2 never trained
    a = torch.load(tmp_path / "a" / "level1.pt", weights_only=True)["G"]
    b = torch.load(tmp_path / "b" / "level1.pt", weights_only=True)["G"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_time_limit_stops_the_level_in_progress_and_resume_finishes_exactly(
    photo_dir: Path, tmp_path: Path
) -> None:
    """A limit of 0 s stops level 0 before its first step: a step-0 checkpoint, no later level, no
    weights. --resume then trains every level, to the same weights as a run without a limit."""
    events: list[tuple[str, dict]] = []
    cut = train_lapgan(
        tiny_config(photo_dir, tmp_path / "cut"), time_limit=0, on_event=lambda k, d: events.append((k, d))
    )
    assert cut.stopped == "time limit" and cut.weights is None and cut.steps == {0: 0}
    assert (
        "stopped",
        {"level": 0, "step": 0, "reason": "time limit", "path": str(tmp_path / "cut" / "level0.pt")},
    ) in events
    done = train_lapgan(tiny_config(photo_dir, tmp_path / "cut"), resume=True)
    straight = train_lapgan(tiny_config(photo_dir, tmp_path / "straight"))
    assert done.stopped is None and done.steps == straight.steps == {0: 3, 1: 3, 2: 3}
    assert done.weights is not None and straight.weights is not None
    a, b = load_lapgan(done.weights)[0].state_dict(), load_lapgan(straight.weights)[0].state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    with pytest.raises(TrainingError, match="time limit"):
        train_lapgan(tiny_config(photo_dir, tmp_path / "neg"), time_limit=-1)
    # --overwrite stopped at once replaces the trained level's checkpoint, never keeps it
    again = train_lapgan(tiny_config(photo_dir, tmp_path / "cut"), levels=[0], overwrite=True, time_limit=0)
    assert again.stopped == "time limit" and again.steps[0] == 0


def test_a_stop_request_stops_after_the_step_with_a_checkpoint(photo_dir: Path, tmp_path: Path) -> None:
    """`should_stop` (a signal handler's flag in the CLI) is polled before each step: the level stops
    there with a checkpoint of the steps done (none was due), and --resume finishes exactly."""
    events: list[tuple[str, dict]] = []
    polls = iter(range(100))
    out = tmp_path / "cut"
    cut = train_lapgan(
        tiny_config(photo_dir, out, steps=4, checkpoint_every=3),
        levels=[1],
        should_stop=lambda: next(polls) >= 2,  # the 3rd poll: after 2 steps
        on_event=lambda k, d: events.append((k, d)),
    )
    assert cut.stopped == "stop request" and cut.steps == {1: 2} and cut.weights is None
    assert (
        "stopped",
        {"level": 1, "step": 2, "reason": "stop request", "path": str(out / "level1.pt")},
    ) in events
    assert events[-1] == ("done", {"weights": None, "steps": {1: 2}, "stopped": "stop request"})
    assert torch.load(out / "level1.pt", weights_only=True)["step"] == 2  # the stop's checkpoint
    done = train_lapgan(tiny_config(photo_dir, out, steps=4, checkpoint_every=3), levels=[1], resume=True)
    straight = train_lapgan(tiny_config(photo_dir, tmp_path / "straight", steps=4), levels=[1])
    assert done.stopped is None and done.steps == straight.steps == {1: 4}
    a = torch.load(out / "level1.pt", weights_only=True)["G"]
    b = torch.load(tmp_path / "straight" / "level1.pt", weights_only=True)["G"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_one_level_can_be_retrained(photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train_lapgan(tiny_config(photo_dir, out))
    before = torch.load(out / "level2.pt", weights_only=True)["G"]
    train_lapgan(tiny_config(photo_dir, out, steps=2, seed=5), levels=[2], overwrite=True)
    assert level_steps(out) == {0: 3, 1: 3, 2: 2}
    after = torch.load(out / "level2.pt", weights_only=True)["G"]
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert assemble(out) is not None


def test_run_refuses_other_model_settings_and_bad_sizes(photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train_lapgan(tiny_config(photo_dir, out), levels=[0])
    with pytest.raises(TrainingError, match="other model settings.*n_feats: 8 -> 16"):
        train_lapgan(tiny_config(photo_dir, out, n_feats=16), levels=[1])
    with pytest.raises(TrainingError, match="base 4 times a power of two"):
        train_lapgan(tiny_config(photo_dir, tmp_path / "x", size=24))
    with pytest.raises(TrainingError, match="levels 0..2"):
        train_lapgan(tiny_config(photo_dir, tmp_path / "y"), levels=[3])


def test_class_subfolders_make_a_conditional_model(class_dir: Path, tmp_path: Path) -> None:
    result = train_lapgan(tiny_config(class_dir, tmp_path / "run", steps=1))
    model, info = load_lapgan(result.weights)  # type: ignore[arg-type]
    assert model.config.n_classes == 2 and info.provenance["classes"] == ["cats", "dogs"]
    levels = draw(model, 3, seed=1, label=1)
    assert levels[-1].shape == (3, 3, 16, 16)
    with pytest.raises(UsageError, match="classes 0..1"):
        draw(model, 1, label=2)
    with pytest.raises(UsageError, match="cannot upscale"):
        LapganUpscaler(model, device=torch.device("cpu"))


def test_crop_sampler_skips_small_and_broken_images(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(make_photo(40, 50)).save(folder / "good.png")
    Image.fromarray(make_photo(10, 50)).save(folder / "small.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    data = CropSampler.from_folder(folder, 16)
    assert [p.name for p in data.files] == ["good.png"]
    assert sorted(p.name for p, _ in data.skipped) == ["broken.jpg", "small.png"]
    x, labels = data.batch(5, torch.Generator().manual_seed(0))
    assert x.shape == (5, 3, 16, 16) and labels.tolist() == [0] * 5
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    torch.testing.assert_close(data.fixed(3, 7)[0], data.fixed(3, 7)[0])
    (folder / "good.png").unlink()
    with pytest.raises(TrainingError, match="no usable images"):
        CropSampler.from_folder(folder, 16)


def test_draw_is_seeded_and_from_image_keeps_the_coarse_level() -> None:
    model = tiny_lapgan()
    a, b = draw(model, 4, seed=3), draw(model, 4, seed=3)
    assert [t.shape[-1] for t in a] == [4, 8, 16]
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)
    assert not torch.equal(a[-1], draw(model, 4, seed=4)[-1])
    coarse = coarse_from_image(make_photo(30, 40).astype(np.float32) / 255, model)
    assert coarse.shape == (1, 3, 4, 4)
    levels = draw(model, 3, seed=0, coarse=coarse)
    for i in range(3):
        torch.testing.assert_close(levels[0][i], coarse[0])
    assert not torch.equal(levels[-1][0], levels[-1][1])  # same coarse image, different detail
    strip = level_strip(levels, 1)
    assert strip.shape == (16, 3 * 16 + 2 * 2, 3) and strip.dtype == np.uint8


def test_upscaler_scale_levels_and_tiling() -> None:
    model = tiny_lapgan()
    pixels = make_photo(20, 28).astype(np.float32) / 255
    up = LapganUpscaler(model, device=torch.device("cpu"), tile=0)
    out = up(pixels)
    assert up.scale == 4 and out.shape == (80, 112, 3)
    np.testing.assert_array_equal(out, up(pixels))  # seeded noise: one image, one result
    one = LapganUpscaler(model, device=torch.device("cpu"), levels=1, tile=0)
    assert one.scale == 2 and one(pixels).shape == (40, 56, 3)
    # without noise the generators are deterministic convolutions, so tiles must not show
    whole = LapganUpscaler(model, device=torch.device("cpu"), tile=0, noise=0.0)(pixels)
    tiled = LapganUpscaler(model, device=torch.device("cpu"), tile=8, tile_pad=8, noise=0.0)(pixels)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    with pytest.raises(UsageError, match="1 to 2 level"):
        LapganUpscaler(model, device=torch.device("cpu"), levels=3)
    single = Lapgan(LapganConfig(size=8, base=8, coarse_hidden=8, noise_dim=4))
    with pytest.raises(UsageError, match="single-scale"):
        LapganUpscaler(single, device=torch.device("cpu"))


def test_weights_round_trip_and_wrong_kind(tmp_path: Path) -> None:
    model = tiny_lapgan(seed=2)
    path = weights.save(tmp_path / "lg.safetensors", model)
    loaded, info = load_lapgan(path)
    assert info.scale == 4
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(WeightsMismatch, match="holds a 'lapgan' model"):
        archs.load(path, expect_arch="srresnet")


def test_parzen_matches_the_formula() -> None:
    g = torch.Generator().manual_seed(0)
    samples, x = torch.rand(50, 6, generator=g), torch.rand(7, 6, generator=g)
    sigma = 0.3
    ll = parzen_log_likelihood(samples, x, sigma, chunk=3)
    d2 = ((x[:, None, :].double() - samples[None].double()) ** 2).sum(-1)
    kernel = torch.exp(-d2 / (2 * sigma**2)) / (2 * math.pi * sigma**2) ** 3
    torch.testing.assert_close(ll, torch.log(kernel.mean(1)), rtol=1e-5, atol=1e-5)


def test_parzen_prefers_the_data_distribution() -> None:
    """Crops scored under a model must come out worse than under the held-out data itself would
    (a sanity check of the protocol: sigma is chosen on the first half, the second is scored)."""
    model = tiny_lapgan()
    heldout = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.1 + 0.45
    report = parzen_eval(model, heldout, n_samples=64, sigmas=(0.05, 0.1, 0.2, 0.4))
    assert report.n_val == 20 and report.n_test == 20 and report.dims == 768
    assert report.sigma in (0.05, 0.1, 0.2, 0.4) and math.isfinite(report.mean)
    assert report.val_curve[f"{report.sigma:g}"] == max(report.val_curve.values())
    # samples from the held-out distribution itself score far higher than an untrained model's
    same = parzen_log_likelihood(torch.rand(64, 768) * 0.1 + 0.45, heldout[20:].flatten(1), report.sigma)
    assert float(same.mean()) > report.mean
    with pytest.raises(UsageError, match="3x16x16"):
        parzen_eval(model, torch.rand(8, 3, 8, 8))


def test_level_timing_script_times_every_conditional_level_at_every_width(capsys) -> None:
    """scripts/time_lapgan_levels.py (docs/lapgan.md's cost of a wider pyramid) on a tiny pyramid:
    one row per conditional level, the first width is the reference (x1.00)."""
    from .conftest import load_script

    module = load_script("time_lapgan_levels")
    rows = module.time_levels(32, [4, 8], steps=1, batch=4)
    assert [(level, n, width) for level, n, width, _ in rows] == [
        (1, 4, 4), (1, 4, 8), (2, 2, 4), (2, 2, 8)
    ]  # fmt: skip
    assert all(seconds > 0 for *_, seconds in rows)
    threads = torch.get_num_threads()
    module.main(["--size", "16", "--widths", "4", "8", "--steps", "1", "--batch", "4"])
    assert torch.get_num_threads() == threads  # left alone without --threads (the suite's runs compare bits)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "n-feats 8" in lines[0] and lines[1].split()[:3] == ["1", "16", "2"]
    assert "x1.00" in lines[1]
