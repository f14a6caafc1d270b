"""Training on several photo folders: --data DIR[:WEIGHT] (repeatable, or a folder of folders), crops
drawn in proportion to weight x pixels, reported per source; fine-tuning with --init in pretrain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from srgan_cli import weights
from srgan_cli.cli.app import app
from srgan_cli.errors import TrainingError
from srgan_cli.sr.config import TrainConfig, apply_init_arch, load_toml
from srgan_cli.sr.data import CropPool, gather_sources, parse_data_spec

from .conftest import make_photo, tiny_model


def _photos(folder: Path, n: int, size: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(make_photo(size, size + 8, seed=seed + i)).save(folder / f"p{i}.png")
    return folder


def test_data_spec_weights_and_paths(tmp_path: Path) -> None:
    assert parse_data_spec("photos") == (Path("photos"), 1.0)
    assert parse_data_spec("photos/extra:0.5") == (Path("photos/extra"), 0.5)
    assert parse_data_spec("C:\\photos") == (Path("C:\\photos"), 1.0)  # a drive letter, no weight
    odd = tmp_path / "run:2"  # a folder whose name ends like a weight is taken whole
    odd.mkdir()
    assert parse_data_spec(str(odd)) == (odd, 1.0)
    for bad in ("photos:0", "photos:-1", "photos:nan", "photos:inf"):
        with pytest.raises(TrainingError, match="positive number"):
            parse_data_spec(bad)
    with pytest.raises(TrainingError, match="positive number"):
        TrainConfig(data=["a", "b:0"]).validate()


def test_sources_from_folders_and_a_folder_of_folders(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    _photos(root / "train", 2, 40)
    _photos(root / "extra" / "animals", 3, 40)  # nested deeper: still the "extra" source
    _photos(root, 1, 40, seed=9)  # loose photos of the root are a source of their own
    sources = gather_sources([f"{root}:2"])
    assert [(Path(s.name).name, len(s.files), s.weight) for s in sources] == [
        ("extra", 3, 2.0),
        ("photos", 1, 2.0),
        ("train", 2, 2.0),
    ]  # in the order of the sorted paths
    two = gather_sources([str(root / "train"), f"{root / 'extra'}:0.5"])
    assert [(len(s.files), s.weight) for s in two] == [(2, 1.0), (3, 0.5)]
    with pytest.raises(TrainingError, match="reached twice") as err:
        gather_sources([str(root), str(root / "train")])
    assert "once" in (err.value.hint or "")
    with pytest.raises(TrainingError, match="no such file or folder"):
        gather_sources([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingError, match="no images"):
        gather_sources([str(tmp_path / "empty")])


def test_crops_are_drawn_in_proportion_to_weight_times_pixels() -> None:
    # three flat photos, told apart by colour: 32x32, 64x64 (4x the pixels), and 32x32 at weight 3
    colours = (10, 120, 240)
    images = [np.full((s, s, 3), c, np.uint8) for s, c in zip((32, 64, 32), colours, strict=True)]
    pool = CropPool(images, scale=4, crop=16, augment=False, weights=[1.0, 1.0, 3.0])
    np.testing.assert_allclose(pool.shares, [1 / 8, 4 / 8, 3 / 8])
    _, hr = pool.batch(8000, pool.generator(0))
    drawn = (hr[:, 0, 0, 0] * 255).round().long()
    freq = np.array([(drawn == c).float().mean().item() for c in colours])
    np.testing.assert_allclose(freq, pool.shares, atol=0.02)  # 8000 draws: sd of a share <= 0.006
    assert freq.sum() == pytest.approx(1.0)
    with pytest.raises(TrainingError, match="one positive weight per image"):
        CropPool(images, scale=4, crop=16, weights=[1.0, 0.0, 1.0])
    with pytest.raises(TrainingError, match="one positive weight per image"):
        CropPool(images, scale=4, crop=16, weights=[1.0])
    one = CropPool(images[:1], scale=4, crop=16)  # a single photo: every crop from it
    assert one.batch(5, one.generator(1))[1].shape == (5, 3, 16, 16)


def test_from_files_keeps_each_files_weight_when_others_are_skipped(tmp_path: Path) -> None:
    small = _photos(tmp_path / "small", 1, 12)  # smaller than the crop: skipped
    big = _photos(tmp_path / "big", 2, 40)
    files = [*sorted(small.iterdir()), *sorted(big.iterdir())]
    pool = CropPool.from_files(files, scale=2, crop=16, weights=[9.0, 1.0, 3.0])
    assert len(pool.files) == 2 and len(pool.skipped) == 1
    np.testing.assert_allclose(pool.shares, [0.25, 0.75])


def test_config_takes_one_folder_or_several(tmp_path: Path) -> None:
    assert TrainConfig(data="photos").data == ["photos"]  # a checkpoint of an older version
    assert TrainConfig.from_dict({"data": "photos"}).data == ["photos"]
    assert TrainConfig.from_dict({"data": ["a", "b:2"]}).data == ["a", "b:2"]
    cfg = tmp_path / "run.toml"
    cfg.write_text('data = ["photos/train", "photos/extra:0.5"]\n')
    assert load_toml(cfg) == {"data": ["photos/train", "photos/extra:0.5"]}
    cfg.write_text('data = "photos"\n')
    assert load_toml(cfg) == {"data": "photos"}
    cfg.write_text("data = 3\n")
    with pytest.raises(TrainingError, match="a folder or a list of folders"):
        load_toml(cfg)


def test_cli_trains_on_two_weighted_folders_and_records_them(tmp_path: Path) -> None:
    a, b = _photos(tmp_path / "a", 2, 40), _photos(tmp_path / "b", 1, 48, seed=5)
    out = tmp_path / "run"
    args = ["train", "--data", str(a), "--data", f"{b}:0.5", "--out", str(out), "--steps", "3"]
    args += ["--n-blocks", "1", "--n-feats", "8", "--crop", "16", "--batch-size", "2", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "crops from:" in result.output
    info = weights.read_info(out / "srresnet_x4.safetensors")
    assert info.provenance["data"] == [str(a), f"{b}:0.5"]
    # a: 2 x 40x48 px at weight 1, b: 48x56 px at weight 0.5 -> 3840 : 1344
    shares = [(s["name"], s["photos"], s["weight"]) for s in info.provenance["data_sources"]]
    assert shares == [(str(a), 2, 1.0), (str(b), 1, 0.5)]
    assert [s["share"] for s in info.provenance["data_sources"]] == pytest.approx([3840 / 5184, 1344 / 5184])
    assert info.trained_on == "a (2 photos) + b (1 photos)"
    assert torch.load(out / "checkpoint.pt", weights_only=True)["config"]["data"] == [str(a), f"{b}:0.5"]
    resumed = CliRunner().invoke(app, ["train", "--resume", "--out", str(out), "--steps", "4"])
    assert resumed.exit_code == 0, resumed.output
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 4


def test_pretrain_init_fine_tunes_with_the_weights_shape(tmp_path: Path) -> None:
    init = weights.save(tmp_path / "w.safetensors", tiny_model(2))
    cfg = TrainConfig(data=["x"], init=str(init))  # pretrain defaults: 16 x 64, x4
    shaped = apply_init_arch(cfg, given=set())
    assert (shaped.scale, shaped.n_blocks, shaped.n_feats, shaped.stage) == (2, 1, 8, "pretrain")
    with pytest.raises(TrainingError, match="disagrees"):
        apply_init_arch(TrainConfig(data=["x"], init=str(init), n_feats=16), given={"n_feats"})
    assert apply_init_arch(TrainConfig(data=["x"]), given=set()) == TrainConfig(data=["x"])  # no --init
