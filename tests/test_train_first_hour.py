"""`srgan train` for a new user (issue 40): --val photos reached through --data are left out of
training (and trained on with a note when --val is the training set itself), recipes named after
the shipped models fill the config under --config and the options, and the first steps give an
estimate of the wall time."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from srgan_cli import weights
from srgan_cli.cli.app import app
from srgan_cli.errors import TrainingOptionError
from srgan_cli.sr.config import (
    CHECKPOINT,
    DEFAULT_RECIPES,
    RECIPES,
    TrainConfig,
    choose_recipe,
    load_toml,
)
from srgan_cli.sr.data import gather_sources, without_val_photos
from srgan_cli.sr.train import train

from .conftest import make_photo

runner = CliRunner()
_TINY = ["--scale", "2", "--n-blocks", "1", "--n-feats", "8", "--crop", "16", "--batch-size", "2"]
_TINY += ["--device", "cpu"]


def run(*args: object) -> tuple[int, str]:
    """Exit code and output with Rich's line wrapping undone."""
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


def _photos(folder: Path, n: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(make_photo(40 + 8 * i, 48, seed=seed + i)).save(folder / f"p{seed + i}.png")
    return folder


def _events(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


# --- the leakage guard -------------------------------------------------------------------------


def test_val_folder_inside_data_and_a_renamed_copy_are_left_out(tmp_path: Path) -> None:
    data = _photos(tmp_path / "data", 3)
    val = _photos(data / "val", 2, seed=10)  # the validation folder nested in the data folder
    shutil.copyfile(val / "p10.png", data / "renamed.png")  # a copy under another name
    overlap = without_val_photos(gather_sources([str(data)]), val)
    assert overlap.left_out
    assert sorted(p.name for s in overlap.sources for p in s.files) == ["p0.png", "p1.png", "p2.png"]
    assert sorted(p.name for p in overlap.photos) == ["p10.png", "p11.png", "renamed.png"]
    assert [s.name for s in overlap.sources] == [str(data)]  # the emptied val/ source is dropped

    out = tmp_path / "run"
    code, text = run("train", "--data", data, "--val", val, "--out", out, "--steps", 2, *_TINY)
    assert code == 0, text
    assert "note: 3 photos under --data also in --val (same file or identical bytes): left out" in text
    start = next(e for e in _events(out) if e["event"] == "start")
    assert start["images"] == 3 and len(start["left_out"]) == 3  # type: ignore[arg-type]
    info = weights.read_info(out / "srresnet_x2.safetensors")
    assert sorted(Path(p).name for p in info.provenance["left_out_as_val"]) == [
        "p10.png",
        "p11.png",
        "renamed.png",
    ]
    assert info.trained_on == "data (3 photos)"


def test_a_symlinked_val_photo_is_left_out_and_other_photos_are_kept(tmp_path: Path) -> None:
    data = _photos(tmp_path / "data", 2)
    val = _photos(tmp_path / "val", 2, seed=10)
    (data / "link.png").symlink_to(val / "p11.png")
    # the same size as a val photo but other bytes: hashed, and kept
    near = bytearray((val / "p10.png").read_bytes())
    near[len(near) // 2] ^= 1
    (data / "near.png").write_bytes(bytes(near))
    overlap = without_val_photos(gather_sources([str(data)]), val)
    assert [p.name for p in overlap.photos] == ["link.png"]
    assert sorted(p.name for s in overlap.sources for p in s.files) == ["near.png", "p0.png", "p1.png"]
    apart = without_val_photos(gather_sources([str(data)]), _photos(tmp_path / "v2", 1, seed=20))
    assert apart.photos == [] and not apart.left_out


def test_val_that_is_the_whole_training_set_is_trained_on_with_a_note(tmp_path: Path) -> None:
    """Nothing can be left out: --val given as the training folder itself is a deliberate check of
    fit, so training goes on, and the start line and the weights say what the numbers mean."""
    val = _photos(tmp_path / "val", 2)
    out = tmp_path / "run"
    code, text = run("train", "--data", val, "--val", val, "--out", out, "--steps", 2, *_TINY)
    assert code == 0, text
    assert "note: every --data photo is a --val photo (2): validation measures fit" in text
    start = next(e for e in _events(out) if e["event"] == "start")
    assert start["images"] == 2 and start["val_trained_on"] == 2 and start["left_out"] == []
    info = weights.read_info(out / "srresnet_x2.safetensors")
    assert info.provenance["val_is_training_data"] is True and "left_out_as_val" not in info.provenance


# --- recipes -----------------------------------------------------------------------------------


def test_recipes_hold_config_fields_and_the_shipped_values() -> None:
    names = {f for f in TrainConfig.__dataclass_fields__}
    for name, recipe in RECIPES.items():
        assert set(recipe.values) <= names, name
        assert not set(recipe.values) & {"data", "val", "out", "device", "amp"}, name
        config = TrainConfig.from_recipe(name, data=["x"])
        assert config.stage == recipe.stage
        config.validate_options()
    # the library's defaults are srresnet_x4's but for the schedule (constant: --steps can change)
    shipped, default = TrainConfig.from_recipe("srresnet_x4").to_dict(), TrainConfig().to_dict()
    assert {k for k in default if default[k] != shipped[k]} == {"schedule"}
    gan = TrainConfig.from_recipe("srgan_x4")
    assert (gan.stage, gan.content_layer, gan.content_weight, gan.pixel_weight) == (
        "gan",
        "vgg19_multi",
        0.01,
        1,
    )
    assert (gan.grid_weight, gan.batch_size, gan.crop, gan.steps, gan.schedule) == (10, 16, 96, 3900, "step")
    real = TrainConfig.from_recipe("srgan_x4_real")
    assert (real.init, real.degradation, real.batch_size, real.schedule) == (
        "srgan_x4",
        "photo",
        8,
        "constant",
    )
    denoise = TrainConfig.from_recipe("srgan_x4_denoise")
    assert (denoise.stage, denoise.init, denoise.restore_blocks, denoise.degradation) == (
        "restore",
        "srgan_x4",
        8,
        "repair",
    )
    denoise.validate()
    fast = TrainConfig.from_recipe("srresnet_x4_fast")
    assert (fast.n_blocks, fast.n_feats, fast.batch_size, fast.crop) == (10, 48, 16, 96)
    assert TrainConfig.from_recipe("srresnet_x4", lr=5e-5).lr == 5e-5  # values on top


def test_shipped_recipes_match_the_shipped_weights_provenance() -> None:
    """Each recipe named after a shipped model repeats that model's recorded training config (of
    its last run, for a model made by a chain of runs: the recipe is the chain as one run)."""
    skip = {"steps", "val_every", "init"}  # how long and where from: the model card says why
    # where a chain's last run dropped its rate, or planned to, is that run's, not the chain's
    chain_skip = {"schedule", "lr_step_at", "lr_gamma"}
    for name in ("srresnet_x4", "srresnet_x4_fast", "srgan_x4", "srgan_x4_real", "srgan_x4_denoise"):
        provenance = weights.read_info(name).provenance
        recorded = provenance["train_config"]
        chained = "init_provenance" in provenance
        for key, value in RECIPES[name].values.items():
            if key in recorded and key not in skip and not (chained and key in chain_skip):
                assert recorded[key] == value, (name, key)
    # srgan_x4_real's runs all ran at the recipe's constant rate: the last one stopped (its step-600
    # EMA shipped) before its planned drop
    last = weights.read_info("srgan_x4_real").provenance
    assert last["steps"] < last["train_config"]["lr_step_at"] * last["train_config"]["steps"]
    assert last["init_provenance"]["train_config"]["schedule"] == RECIPES["srgan_x4_real"].values["schedule"]


def test_choose_recipe_defaults_per_stage_and_refuses_the_other_stage() -> None:
    assert choose_recipe(None, None) is None and choose_recipe(None, "pretrain") is None
    assert choose_recipe(None, "gan") == DEFAULT_RECIPES["gan"] == "srgan_x4"
    assert TrainConfig.new_run(None) == TrainConfig()
    assert TrainConfig.new_run("srgan_x4") == TrainConfig.from_recipe("srgan_x4")  # its own stage
    assert TrainConfig.new_run(None, "gan") == TrainConfig.from_recipe("srgan_x4")
    assert choose_recipe("srgan_x4_real", None) == "srgan_x4_real"
    with pytest.raises(TrainingOptionError, match="gan-stage recipe"):
        choose_recipe("srgan_x4", "pretrain")
    with pytest.raises(TrainingOptionError, match="unknown --recipe 'x'"):
        choose_recipe("x", None)


def test_recipe_under_the_config_file_under_the_options(photo_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text('recipe = "srresnet_x4_fast"\nlr = 3e-4\nsteps = 3\n')
    assert load_toml(cfg)["recipe"] == "srresnet_x4_fast"
    out = tmp_path / "run"
    args = ["train", "--config", cfg, "--data", photo_dir, "--out", out, "--steps", 2, "--device", "cpu"]
    code, text = run(*args, "--scale", 2, "--crop", 16, "--batch-size", 2)
    assert code == 0, text
    assert "recipe srresnet_x4_fast:" in text
    saved = TrainConfig.from_dict(torch.load(out / CHECKPOINT, weights_only=True)["config"])
    assert (saved.n_blocks, saved.n_feats, saved.loss, saved.schedule) == (10, 48, "l1", "cosine")  # recipe
    assert saved.lr == 3e-4  # the file over the recipe
    assert (saved.steps, saved.crop, saved.scale) == (2, 16, 2)  # the options over both
    # the command line's --recipe over the file's; a resumed run keeps its own settings
    code, text = run("train", "--out", out, "--resume", "--recipe", "srresnet_x4")
    assert code == 2 and "a resumed run keeps its own settings" in text
    code, text = run("train", "--out", out, "--resume", "--steps", 3)
    assert code == 0, text
    assert TrainConfig.from_dict(torch.load(out / CHECKPOINT, weights_only=True)["config"]).n_feats == 48
    code, text = run(
        "train", "--data", photo_dir, "--out", tmp_path / "x", "--recipe", "srgan_x4", "--stage", "pretrain"
    )
    assert code == 2 and "gan-stage recipe" in text
    cfg.write_text("recipe = 3\n")
    code, text = run("train", "--config", cfg, "--data", photo_dir, "--out", tmp_path / "y")
    assert code == 1 and "recipe should be a name" in text


def test_the_defaults_are_the_shipped_srresnet_x4s(
    photo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    code, text = run("train", "--data", photo_dir, "--out", out, "--steps", 1, *_TINY)
    assert code == 0, text
    saved = TrainConfig.from_dict(torch.load(out / CHECKPOINT, weights_only=True)["config"])
    assert (saved.global_skip, saved.loss, saved.lr, saved.schedule) == (True, "l1", 2e-4, "constant")
    assert "recipe s" not in text  # the defaults: no recipe applied
    monkeypatch.setenv("COLUMNS", "200")  # no help line wrapped inside a default
    code, text = run("train", "--help")
    assert "[default: 4000; gan 3900]" in text and "[default: 128; gan 96]" in text


def test_the_gan_stage_defaults_to_the_srgan_x4_recipe(
    photo_dir: Path, tmp_path: Path, init_weights: Path, vgg_file: Path
) -> None:
    out = tmp_path / "gan"
    args = ["train", "--stage", "gan", "--init", init_weights, "--vgg-weights", vgg_file, "--d-feats", 4]
    args += ["--data", photo_dir, "--out", out, "--steps", 1, "--crop", 16, "--batch-size", 2]
    code, text = run(*args, "--content-layer", "vgg22", "--device", "cpu")
    assert code == 0, text
    assert "recipe srgan_x4: as shipped" in text and "overridden: --batch-size, --content-layer" in text
    assert "--d-feats, --init, --steps)" in " ".join(text.split())  # "from srresnet_x<scale>": --init too
    saved = TrainConfig.from_dict(torch.load(out / CHECKPOINT, weights_only=True)["config"])
    assert (saved.content_layer, saved.crop, saved.n_feats) == ("vgg22", 16, 8)  # options, --init
    assert (saved.pixel_weight, saved.content_weight, saved.grid_weight) == (1.0, 0.01, 10.0)  # recipe
    assert (saved.schedule, saved.lr, saved.loss) == ("step", 1e-4, "l1")


# --- the wall-time estimate --------------------------------------------------------------------


def test_the_first_steps_give_an_estimate_event_and_line(photo_dir: Path, tmp_path: Path) -> None:
    seen: list[dict[str, object]] = []
    config = TrainConfig(
        data=[str(photo_dir)], out=str(tmp_path / "lib"), scale=2, n_blocks=1, n_feats=8, crop=16
    )
    config.batch_size, config.steps, config.device = 2, 5, "cpu"
    train(config, on_event=lambda kind, data: seen.append(data) if kind == "estimate" else None)
    assert len(seen) == 1
    estimate = seen[0]
    assert estimate["step"] == 3 and estimate["steps"] == 5 and estimate["device"] == "cpu"
    per = float(estimate["seconds_per_step"])  # type: ignore[arg-type]
    assert 0 < per < 60 and float(estimate["seconds"]) == pytest.approx(5 * per)  # type: ignore[arg-type]
    assert sum(e["event"] == "estimate" for e in _events(tmp_path / "lib")) == 1  # in the log too
    short = TrainConfig(**{**config.to_dict(), "out": str(tmp_path / "short"), "steps": 2})
    seen.clear()
    train(short, on_event=lambda kind, data: seen.append(data) if kind == "estimate" else None)
    assert seen == []  # too few steps to time

    code, text = run("train", "--data", photo_dir, "--out", tmp_path / "cli", "--steps", 4, *_TINY)
    assert code == 0, text
    line = re.search(
        r"estimate: about [\d.]+ s per step on cpu \(batch 2, crop 16\): 4 steps would take about [\d.]+ s",
        text,
    )
    assert line, text


def test_a_long_estimate_gets_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    from srgan_cli.cli import train as train_cli
    from srgan_cli.cli.train import _estimate_lines

    monkeypatch.setattr(train_cli, "cpu_bf16_native", lambda: False)

    config = TrainConfig(data=["x"], device="cpu")  # the default recipe: 4,000 steps, 16 x 64
    data = {"seconds_per_step": 16.2, "steps": 4000, "seconds": 16.2 * 4000, "device": "cpu"}
    lines = _estimate_lines({**data, "batch_size": 64, "crop": 128}, config)
    assert lines[0] == (
        "estimate: about 16 s per step on cpu (batch 64, crop 128): 4,000 steps would take about "
        "18.0 hours, validations not counted"
    )
    assert lines[1].startswith("hint: --steps 440 fits in about 2 hours; --time-limit stops cleanly")
    assert "--recipe srresnet_x4_fast" in lines[1]
    days = _estimate_lines({**data, "seconds": 5e5, "batch_size": 64, "crop": 128}, config)
    assert "5.8 days" in days[0]
    quick = _estimate_lines(
        {**data, "seconds_per_step": 0.5, "seconds": 2000, "batch_size": 64, "crop": 128}, config
    )
    assert len(quick) == 1 and "33 min" in quick[0]
    assert "--amp" not in lines[1]

    # a CPU with bf16 hardware: the hint names --amp bf16, unless the run already chose a precision
    monkeypatch.setattr(train_cli, "cpu_bf16_native", lambda: True)
    long = {**data, "batch_size": 64, "crop": 128}
    assert "--amp bf16 trains 1.7-2x as fast on this CPU" in _estimate_lines(long, config)[1]
    assert "--amp" not in _estimate_lines(long, replace(config, amp="off"))[1]
    assert "--amp" not in _estimate_lines({**long, "device": "cuda:0"}, config)[1]
