"""The pixel-loss training stage: a short run that checkpoints, resumes exactly, and validates."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from srgan_cli import archs, weights
from srgan_cli.errors import TrainingError
from srgan_cli.sr.config import CHECKPOINT, TrainConfig
from srgan_cli.sr.train import train


def _config(photo_dir: Path, out: Path, steps: int, **kw: object) -> TrainConfig:
    base = dict(
        data=str(photo_dir),
        val=str(photo_dir),
        out=str(out),
        scale=2,
        n_blocks=1,
        n_feats=8,
        crop=16,
        batch_size=2,
        steps=steps,
        val_every=10,
        checkpoint_every=5,
        log_every=5,
        device="cpu",
        seed=3,
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_twenty_steps_resume_exactly(photo_dir: Path, tmp_path: Path) -> None:
    straight = train(_config(photo_dir, tmp_path / "a", 20))
    assert straight.steps == 20 and straight.val is not None

    first = train(_config(photo_dir, tmp_path / "b", 10))
    assert first.steps == 10
    resumed = train(_config(photo_dir, tmp_path / "b", 20), resume=True)
    assert resumed.steps == 20

    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)
    for key in a["generator"]:
        torch.testing.assert_close(a["generator"][key], b["generator"][key], rtol=0, atol=0)
    for key in a["ema"]:
        torch.testing.assert_close(a["ema"][key], b["ema"][key], rtol=0, atol=0)

    loaded = archs.load(straight.weights)  # the final weights are in the shipped format
    assert loaded.info.scale == 2 and loaded.info.provenance["steps"] == 20
    assert "val_psnr_y" in loaded.info.metrics
    events = [json.loads(line)["event"] for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert events.count("val") == 2 and events[-1] == "done"


def test_existing_run_is_not_clobbered(photo_dir: Path, tmp_path: Path) -> None:
    train(_config(photo_dir, tmp_path / "r", 5, val=None))
    with pytest.raises(TrainingError, match="already holds a training run"):
        train(_config(photo_dir, tmp_path / "r", 5, val=None))
    with pytest.raises(TrainingError, match="different settings"):
        train(_config(photo_dir, tmp_path / "r", 10, val=None, n_feats=4), resume=True)
    with pytest.raises(TrainingError, match="global_skip"):  # no tensors differ, the model would
        train(_config(photo_dir, tmp_path / "r", 10, val=None, global_skip=False), resume=True)
    with pytest.raises(TrainingError, match="already finished"):
        train(_config(photo_dir, tmp_path / "r", 5, val=None), resume=True)


def test_diverging_loss_stops_clearly(photo_dir: Path, tmp_path: Path) -> None:
    cfg = _config(photo_dir, tmp_path / "nan", 10, val=None, lr=1e30, log_every=1, ema=0.0)
    with pytest.raises(TrainingError, match="loss became|non-finite"):
        train(cfg)


def test_empty_or_missing_data_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingError, match="no images"):
        train(_config(tmp_path / "empty", tmp_path / "o", 2))
    with pytest.raises(TrainingError, match="no such file or folder"):
        train(_config(tmp_path / "missing", tmp_path / "o", 2))


def test_images_smaller_than_the_crop_are_skipped(photo_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="no usable training images"):
        train(_config(photo_dir, tmp_path / "o", 2, crop=512, val=None))


def test_validation_lpips_samples_and_tensorboard(photo_dir: Path, tmp_path: Path, lpips_dir: Path) -> None:
    out = tmp_path / "tb_run"
    result = train(_config(photo_dir, out, 10, lpips_weights=str(lpips_dir), tensorboard=True, samples=2))
    assert result.val is not None and result.val.lpips is not None and result.val.lpips >= 0
    vals = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"val"' in x]
    assert vals and vals[-1]["lpips"] == pytest.approx(result.val.lpips)
    grid = out / "samples" / "step_0000010.png"
    from PIL import Image

    with Image.open(grid) as im:  # the photos are too small for 64 px centre crops: 2 training crops
        assert im.size == (3 * 16, 2 * 16)  # rows of bicubic | model | original
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert weights.read_info(result.weights).metrics["val_lpips"] == pytest.approx(result.val.lpips, abs=1e-4)


def test_snapshots_keep_each_validations_weights(photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "snap"
    result = train(_config(photo_dir, out, 10, val_every=4, snapshots=True, samples=0))
    kept = sorted(p.name for p in out.glob("srresnet_x2_step*.safetensors"))
    assert kept == [f"srresnet_x2_step{s:07d}.safetensors" for s in (4, 8, 10)]
    infos = [weights.read_info(out / name) for name in kept]
    assert [i.provenance["val_step"] for i in infos] == [4, 8, 10]
    from safetensors.torch import load_file

    last, final = load_file(str(out / kept[-1])), load_file(str(result.weights))
    assert all(torch.equal(last[k], final[k]) for k in final)  # the last one holds the final weights
    assert infos[0].metrics["val_psnr_y"] != infos[1].metrics["val_psnr_y"]  # each its own step's numbers
    plain = tmp_path / "plain"
    train(_config(photo_dir, plain, 4, val_every=4, samples=0))
    assert not list(plain.glob("*_step*.safetensors"))


def test_crop_pool_matches_the_pil_protocol_and_is_deterministic() -> None:
    import numpy as np

    from srgan_cli.sr.data import CropPool, bicubic_downscale

    from .conftest import make_photo

    images = [make_photo(40, 56, seed=1), make_photo(64, 48, seed=2)]
    pool = CropPool(images, scale=4, crop=32, augment=True)
    lr, hr = pool.batch(6, pool.generator(3))
    lr2, hr2 = pool.batch(6, pool.generator(3))
    assert torch.equal(lr, lr2) and torch.equal(hr, hr2)
    assert lr.shape == (6, 3, 8, 8) and hr.shape == (6, 3, 32, 32)
    for i in range(6):  # LR is PIL's antialiased bicubic of HR, within one 8-bit level
        hr8 = (hr[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        lr8 = (lr[i].permute(1, 2, 0).numpy() * 255).round().astype(np.int16)
        assert np.abs(bicubic_downscale(hr8, 4).astype(np.int16) - lr8).max() <= 1
    # every crop is one of the 8 dihedral transforms of a window of one of the photos
    for i in range(6):
        crop = (hr[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        found = False
        for k in range(8):
            c = np.rot90(crop, k % 4)
            c = c[:, ::-1] if k >= 4 else c
            for img in images:
                h, w = img.shape[:2]
                for t in range(h - 31):
                    for s in range(w - 31):
                        if np.array_equal(img[t : t + 32, s : s + 32], c):
                            found = True
        assert found
    with pytest.raises(TrainingError, match="at least 48x48"):
        CropPool(images, scale=4, crop=48)


class _Stop(Exception):
    pass


def _stop_at(step: int):  # noqa: ANN202
    def on_event(kind: str, data: dict[str, object]) -> None:
        if kind == "checkpoint" and data["step"] == step:
            raise _Stop

    return on_event


@pytest.mark.parametrize("degradation", ["bicubic", "realesrgan"])
def test_sigkill_loses_only_the_steps_since_the_last_checkpoint(
    photo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, degradation: str
) -> None:
    import signal
    import subprocess
    import sys
    import time

    killed = tmp_path / "killed"
    opts = dict(
        scale=2,
        n_blocks=1,
        n_feats=8,
        crop=16,
        batch_size=2,
        steps=100_000,
        checkpoint_every=5,
        degradation=degradation,  # its random stream resumes too: the same batches after the kill
    )
    args = [sys.executable, "-m", "srgan_cli", "train", "--data", str(photo_dir), "--out", str(killed)]
    for key, value in {**opts, "log_every": 5, "device": "cpu", "seed": 3}.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            path = killed / CHECKPOINT
            if path.exists() and torch.load(path, weights_only=True)["step"] >= 10:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # no chance to clean up
    finally:
        proc.wait(30)
    step = torch.load(killed / CHECKPOINT, weights_only=True)["step"]
    assert step >= 10 and step % 5 == 0  # what survives is a whole checkpoint

    # the resume below stands for a process started after the kill: a temporary file that the kill
    # cut short (when it landed mid-write) is older than that process, so it is its to remove
    from srgan_cli import atomic

    (killed / f".{CHECKPOINT}.0badf00d.tmp").write_bytes(b"cut short")  # as if it had, every time
    time.sleep(0.05)
    monkeypatch.setattr(atomic, "_STARTED", time.time())

    config = TrainConfig(data=str(photo_dir), out=str(killed), device="cpu", seed=3, log_every=5, **opts)
    with pytest.raises(_Stop):
        train(config, resume=True, on_event=_stop_at(step + 5))
    assert not list(killed.glob(".*tmp*"))  # no half-written file left behind
    straight = replace(config, out=str(tmp_path / "straight"))
    with pytest.raises(_Stop):
        train(straight, on_event=_stop_at(step + 5))
    a = torch.load(killed / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "straight" / CHECKPOINT, weights_only=True)
    assert a["step"] == b["step"] == step + 5
    for part in ("generator", "ema"):
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=0, msg=key)


def test_degradation_trains_resumes_exactly_and_is_recorded(photo_dir: Path, tmp_path: Path) -> None:
    cfg = _config(photo_dir, tmp_path / "a", 8, val=None, degradation="photo", checkpoint_every=4)
    straight = train(cfg)
    train(replace(cfg, out=str(tmp_path / "b"), steps=4))
    train(replace(cfg, out=str(tmp_path / "b")), resume=True)
    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)
    assert torch.equal(a["degrade_rng"][0]["rng"], b["degrade_rng"][0]["rng"])
    for key in a["generator"]:
        torch.testing.assert_close(a["generator"][key], b["generator"][key], rtol=0, atol=0)
    info = archs.load(straight.weights).info
    assert info.provenance["degradation"]["name"] == "photo"
    assert info.provenance["degradation"]["first"]["jpeg_quality"] == [50, 95]
    plain = train(
        replace(cfg, out=str(tmp_path / "plain"), degradation="bicubic")
    )  # the same crops, clean LR: other weights
    other = archs.load(plain.weights).model.state_dict()
    assert any(
        not torch.equal(v, other[k]) for k, v in archs.load(straight.weights).model.state_dict().items()
    )
    with pytest.raises(TrainingError, match="different settings"):
        train(replace(cfg, out=str(tmp_path / "b"), steps=12, degradation="realesrgan"), resume=True)


def test_paired_lr_photos_give_aligned_crops_and_train(tmp_path: Path) -> None:
    """--data-lr: each HR crop comes with the real LR photo's window at the same place, under the
    same flip/rotation; mismatched pairs are skipped with the reason, missing ones named."""
    import numpy as np
    from PIL import Image

    from srgan_cli.sr.data import CropPool, pair_lr_files

    from .conftest import make_photo

    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    (hr_dir / "sub").mkdir(parents=True)
    (lr_dir / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.png", "sub/b.png", "c.png"]):
        hr = make_photo(66 + 8 * i, 81, seed=i)  # not multiples of 4: cropped to fit the LR
        # an LR that is NOT a bicubic of the HR (a shifted, noisier copy): the pool must use it as is
        lr = np.array(Image.fromarray(hr).resize((81 // 4, (66 + 8 * i) // 4), Image.NEAREST))
        if name == "c.png":
            lr = lr[:-2]  # two rows short: does not pair
        Image.fromarray(hr).save(hr_dir / name)
        Image.fromarray(lr).save(lr_dir / Path(name).with_suffix(".jpg"), quality=98)
    files = sorted(p for p in hr_dir.rglob("*.png"))
    lr_files = pair_lr_files(hr_dir, files, lr_dir)
    assert [p.name for p in lr_files] == ["a.jpg", "c.jpg", "b.jpg"]
    pool = CropPool.from_files(files, scale=4, crop=32, lr_files=lr_files)
    assert [p.name for p in pool.files] == ["a.png", "b.png"]
    assert "does not pair" in pool.skipped[0][1]
    lr, hr = pool.batch(12, pool.generator(0))
    assert lr.shape == (12, 3, 8, 8) and hr.shape == (12, 3, 32, 32)
    photos = {p: np.array(Image.open(p)) for p in files}
    for i in range(12):  # the LR window is where the HR window is: the LR's pixels, unchanged
        crop_hr = (hr[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        crop_lr = (lr[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        found = False
        for k in range(8):
            undo_hr, undo_lr = np.rot90(crop_hr, k % 4), np.rot90(crop_lr, k % 4)
            if k >= 4:
                undo_hr, undo_lr = undo_hr[:, ::-1], undo_lr[:, ::-1]
            for path, lr_path in zip(files, lr_files, strict=True):
                img, small = photos[path], np.array(Image.open(lr_path).convert("RGB"))
                for t in range(0, img.shape[0] - 31, 4):
                    for s in range(0, img.shape[1] - 31, 4):
                        if np.array_equal(img[t : t + 32, s : s + 32], undo_hr):
                            found |= np.array_equal(small[t // 4 : t // 4 + 8, s // 4 : s // 4 + 8], undo_lr)
        assert found, i

    cfg = _config(hr_dir, tmp_path / "run", 4, val=None, scale=4, crop=32, data_lr=str(lr_dir))
    result = train(cfg)
    info = archs.load(result.weights).info
    assert info.provenance["data_lr"] == str(lr_dir)
    with pytest.raises(TrainingError, match="one or the other"):
        train(replace(cfg, out=str(tmp_path / "x"), degradation="photo"))
    (lr_dir / "a.jpg").unlink()
    with pytest.raises(TrainingError, match="no LR photo"):
        train(replace(cfg, out=str(tmp_path / "y")))
