"""scripts/gpu_run.py, the GPU-session driver, run end to end on the CPU with tiny settings:
a pretrain chunk, its checkpoint back in parts, joined, resumed by a second chunk; then the GAN
chunk from its weights. Only the GPU and the lending tool's transfer are left out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from srgan_cli import weights
from srgan_cli.sr.data import gather_sources
from srgan_cli.sr.palette import pack_file

from .conftest import load_script, make_photo, make_vgg_prefix, tiny_model

TINY = ["--n-blocks", "1", "--n-feats", "8", "--batch-size", "2", "--crop", "32", "--log-every", "1"]
CPU = ["--device", "cpu", "--amp", "off", "--rate", "100"]  # --rate: no benchmark


@pytest.fixture
def gpu_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    module = load_script("gpu_run")
    monkeypatch.setattr(module, "ROOT", tmp_path / "root")
    monkeypatch.setattr(module, "PART", 64 * 1024)  # several parts even for a tiny checkpoint
    # the working tree as `slim` leaves it (0.9 MB; this checkout's own size grows with each
    # shipped file, and `plan` here checks the carry lists, not this checkout)
    monkeypatch.setattr(module, "tree_bytes", lambda: 900_000)
    monkeypatch.delenv("OUT", raising=False)
    return module


def _call(gpu_run, tmp_path: Path, name: str, stage: str, *args: str) -> Path:  # noqa: ANN001
    """One 'device call': $OUT starts empty, and what comes back is copied like files_at."""
    out = tmp_path / name
    gpu_run.main(["chunk", stage, "--minutes", "5", "--out", str(out), *args])
    back = tmp_path / f"{name}_back"
    manifest = json.loads((out / "manifest.json").read_text())
    back.mkdir()
    for file in [*manifest["files"], "manifest.json"]:
        shutil.copyfile(out / file, back / file)
    assert len(list(out.iterdir())) <= gpu_run.MAX_FILES
    return back


def test_pretrain_chunks_resume_across_calls_then_the_gan_chunk(
    gpu_run,
    tmp_path: Path,
    photo_dir: Path,
    lpips_dir: Path,  # noqa: ANN001
) -> None:
    root = gpu_run.ROOT
    shutil.copytree(photo_dir, root / gpu_run.TRAIN)
    shutil.copytree(photo_dir, root / gpu_run.VAL)
    archive = tmp_path / "archive"

    first = _call(gpu_run, tmp_path, "call1", "pretrain", *CPU, "--steps", "4", "--", *TINY)
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["step"] == 4 and len(manifest["checkpoint"]["parts"]) >= 2
    assert "--steps 4" in (first / "console.log").read_text()
    gpu_run.main(["collect", str(first), "--archive", str(archive)])
    assert (root / gpu_run.PRETRAIN_RUN / "checkpoint.pt").stat().st_size == manifest["checkpoint"]["bytes"]

    # the machine is bare again: only what is carried is there
    shutil.rmtree(root / gpu_run.PRETRAIN_RUN)
    gpu_run.main(["collect", str(first), "--archive", str(archive)])
    second = _call(gpu_run, tmp_path, "call2", "pretrain", *CPU, "--", "--steps", "6")
    log = [json.loads(line) for line in (second / "log.jsonl").read_text().splitlines()]
    steps = [e["step"] for e in log if e["event"] == "log"]
    assert steps == [1, 2, 3, 4, 5, 6]  # resumed at 5, not restarted
    assert "--resume" in (second / "console.log").read_text()
    gpu_run.main(["collect", str(second), "--archive", str(archive)])
    init = root / gpu_run.INIT_FILE
    assert weights.read_info(init).provenance["steps"] == 6
    assert (archive / "pretrain_step0000004" / "srresnet_x4.safetensors").is_file()

    # a part lost on the way is caught, and the good checkpoint stays
    broken = tmp_path / "broken"
    shutil.copytree(second, broken)
    (broken / "checkpoint.pt.part1").write_bytes(b"x" * 10)
    with pytest.raises(SystemExit, match="SHA-256"):
        gpu_run.main(["collect", str(broken), "--archive", str(archive)])
    assert torch.load(root / gpu_run.PRETRAIN_RUN / "checkpoint.pt", weights_only=True)["step"] == 6

    # the GAN chunk: packed VGG (a 4-conv stand-in, hence vgg22), fp16 LPIPS as `prepare` writes it
    vgg = make_vgg_prefix(tmp_path / "vgg19_caffe.safetensors")
    pack_file(vgg, root / gpu_run.VGG_FILE)
    gpu_run.write_lpips(lpips_dir)
    assert (
        load_file(str(root / gpu_run.LPIPS_DIR / "alexnet_features.safetensors"))["0.weight"].dtype
        == torch.float16
    )
    gan = _call(
        gpu_run, tmp_path, "call3", "gan", *CPU, "--steps", "8", "--", *TINY, "--content-layer", "vgg22"
    )
    manifest = json.loads((gan / "manifest.json").read_text())
    assert manifest["stage"] == "gan" and manifest["step"] == 8
    snaps = [f for f in manifest["files"] if "_step" in f]
    assert len(manifest["files"]) + 1 == gpu_run.MAX_FILES  # the snapshots fill what is left
    assert snaps == [f"srgan_x4_step{s:07d}.safetensors" for s in (2, 4, 6, 8)][-len(snaps) :]
    info = weights.read_info(gan / "srgan_x4_step0000004.safetensors")
    assert info.provenance["val_step"] == 4 and info.metrics["val_lpips"] >= 0
    assert info.provenance["init"].endswith("srresnet_x4.safetensors")
    gpu_run.main(["collect", str(gan), "--archive", str(archive)])
    assert (archive / "gan_step0000008" / "srgan_x4_step0000006.safetensors").is_file()


def test_a_gan_chunk_without_pretrained_weights_says_so(gpu_run, tmp_path: Path) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit, match="collect a pretrain chunk first"):
        gpu_run.main(["chunk", "gan", "--minutes", "5", "--out", str(tmp_path / "o"), *CPU])


def test_the_benchmark_times_the_discriminator_the_run_trains(gpu_run) -> None:  # noqa: ANN001
    assert gpu_run.d_arch_of(["--seed", "3", "--d-arch", "unet"]) == ["--d-arch", "unet"]
    assert gpu_run.d_arch_of(["--d-arch=unet", "--adv-weight", "0.1"]) == ["--d-arch", "unet"]
    assert gpu_run.d_arch_of(["--d-feats", "32"]) == [] and gpu_run.d_arch_of([]) == []


def test_planned_steps(gpu_run) -> None:  # noqa: ANN001
    assert gpu_run.planned_steps(3000.0, 1020.0, 64, 1000) == 40000  # 0.85 x 3000 x 1020 / 64 = 40640
    assert gpu_run.planned_steps(1.0, 10.0, 64, 1000) == 1000  # at least one unit


def _shared_photos(root: Path) -> Path:
    """A stand-in for ../shared/datasets/photos: train/ (one photo larger than the cap), train_extra/
    with its CREDITS.tsv, val/."""
    for name, sizes in (
        ("train", [(96, 80), (40, 48)]),
        ("train_extra", [(48, 40), (56, 48)]),
        ("val", [(48, 48)]),
    ):
        folder = root / name
        folder.mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            Image.fromarray(make_photo(h, w, seed=i)).save(folder / f"{name}{i}.png")
    (root / "train_extra" / "CREDITS.tsv").write_text("file\tauthor\nx.jpg\tsomeone\n")
    return root


def test_prepare_packs_both_photo_sets_small_and_repacks_when_asked_otherwise(
    gpu_run, tmp_path: Path
) -> None:  # noqa: ANN001
    photos = _shared_photos(tmp_path / "photos")
    root = gpu_run.ROOT
    gpu_run.pack_photos(photos, ["train", "extra"], 64, "webp", 90)
    packed = sorted(p.relative_to(root / gpu_run.TRAIN) for p in (root / gpu_run.TRAIN).rglob("*.webp"))
    assert [str(p) for p in packed] == [
        "extra/train_extra0.webp",
        "extra/train_extra1.webp",
        "train/train0.webp",
        "train/train1.webp",
    ]
    with Image.open(root / gpu_run.TRAIN / "train" / "train0.webp") as im:
        assert im.size == (53, 64)  # 80x96 capped at 64 on its longest side
    assert (root / gpu_run.TRAIN / "extra" / "CREDITS.tsv").is_file()  # the credits travel along
    sources = gather_sources([str(root / gpu_run.TRAIN)])
    assert [(Path(s.name).name, len(s.files)) for s in sources] == [("extra", 2), ("train", 2)]
    stamp = (root / gpu_run.TRAIN / "train" / "train1.webp").stat().st_mtime_ns
    gpu_run.pack_photos(photos, ["train", "extra"], 64, "webp", 90)  # the same packing: kept
    assert (root / gpu_run.TRAIN / "train" / "train1.webp").stat().st_mtime_ns == stamp
    gpu_run.pack_photos(photos, ["train"], 64, "jpeg", 85)  # another packing: redone
    assert sorted(p.name for p in (root / gpu_run.TRAIN).rglob("*.*") if p.suffix != ".json") == [
        "train0.jpg",
        "train1.jpg",
    ]


def _carry_for_the_gan(gpu_run, tmp_path: Path, lpips_dir: Path) -> Path:  # noqa: ANN001
    """What `prepare` puts in .carry/ for a GAN call (packed photos, val, VGG, LPIPS); the root."""
    root = gpu_run.ROOT
    photos = _shared_photos(tmp_path / "photos")
    gpu_run.pack_photos(photos, ["train", "extra"], 64, "webp", 90)
    shutil.copytree(photos / "val", root / gpu_run.VAL)
    pack_file(make_vgg_prefix(tmp_path / "vgg19_caffe.safetensors"), root / gpu_run.VGG_FILE)
    gpu_run.write_lpips(lpips_dir)
    return root


def test_continue_pretrains_from_the_start_weights_then_the_gan_in_one_call(
    gpu_run,
    tmp_path: Path,
    lpips_dir: Path,  # noqa: ANN001
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = _carry_for_the_gan(gpu_run, tmp_path, lpips_dir)
    with pytest.raises(SystemExit, match="prepare --init"):
        gpu_run.main(["chunk", "continue", "--minutes", "5", "--out", str(tmp_path / "o"), *CPU])
    start = weights.save(root / gpu_run.START_FILE, tiny_model(4, global_skip=True), trained_on="x")
    gpu_run.main(["plan"])
    assert "continue (one call: pretrain, then gan)" in capsys.readouterr().out

    tiny = [*TINY, "--content-layer", "vgg22"]  # a 4-conv VGG stand-in
    back = _call(gpu_run, tmp_path, "c1", "continue", *CPU, "--steps", "4", "--gan-steps", "8", "--", *tiny)
    manifest = json.loads((back / "manifest.json").read_text())
    assert (manifest["stage"], manifest["step"], manifest["gan_step"], manifest["data"]) == (
        "continue",
        4,
        8,
        "all",
    )
    assert len(manifest["files"]) + 1 == gpu_run.MAX_FILES  # GAN snapshots fill what is left
    pre = weights.read_info(back / "srresnet_x4.safetensors")
    assert pre.provenance["init"] == str(gpu_run.START_FILE) and pre.provenance["steps"] == 4
    assert pre.config["global_skip"] is True  # the shape came from the start weights
    sources = {Path(s["name"]).name: s for s in pre.provenance["data_sources"]}
    assert sorted(sources) == ["extra", "train"]  # half the crops from each (--extra-share 0.5)
    assert sources["extra"]["share"] == pytest.approx(0.5, abs=1e-3) and sources["train"]["weight"] == 1.0
    assert (
        pre.provenance["train_config"]["lr"] == 1e-4
        and pre.provenance["train_config"]["schedule"] == "cosine"
    )
    gan = weights.read_info(back / "srgan_x4.safetensors")
    assert gan.provenance["init"] == str(gpu_run.CONTINUE_RUN / "srresnet_x4.safetensors")
    assert gan.provenance["steps"] == 8 and gan.metrics["val_lpips"] >= 0
    archive = tmp_path / "archive"
    gpu_run.main(["collect", str(back), "--archive", str(archive)])
    kept = archive / "continue_step0000004"
    for name in ("pretrain_log.jsonl", "gan_log.jsonl", "console.log", "srgan_x4_step0000008.safetensors"):
        assert (kept / name).is_file(), name
    assert "val step 8" in capsys.readouterr().out

    # the A/B call: the same pretraining on the train photos only, no GAN stage
    shutil.rmtree(root / gpu_run.RUNS)
    back = _call(
        gpu_run,
        tmp_path,
        "c2",
        "continue",
        *CPU,
        "--only",
        "train",
        "--skip-gan",
        "--steps",
        "4",
        "--",
        *tiny,
    )
    manifest = json.loads((back / "manifest.json").read_text())
    assert manifest["files"] == ["logs.tar.gz", "srresnet_x4.safetensors"] and manifest["data"] == "train"
    only = weights.read_info(back / "srresnet_x4.safetensors")
    assert [Path(s["name"]).name for s in only.provenance["data_sources"]] == ["train"]
    assert start.is_file()


def test_the_speed_chunk_measures_both_steps_and_the_loop(gpu_run, tmp_path: Path, photo_dir: Path) -> None:  # noqa: ANN001
    shutil.copytree(photo_dir, gpu_run.ROOT / gpu_run.TRAIN)
    tiny = ["--n-blocks", "1", "--n-feats", "8", "--crop", "32"]
    back = _call(
        gpu_run, tmp_path, "s", "speed", "--device", "cpu", "--amp", "off", "--cases", "pretrain_b64",
        "--bench-steps", "1", "--loop-seconds", "20", "--", *tiny,
    )  # fmt: skip
    assert json.loads((back / "manifest.json").read_text())["stage"] == "speed"
    speed = json.loads((back / "speed.json").read_text())
    plain, fast = speed["cases"]["pretrain_b64"]
    assert (plain["step_mode"], fast["step_mode"], fast["batch_size"]) == ("plain", "fast", 64)
    assert fast["profile"]["ops_per_step"] < plain["profile"]["ops_per_step"]
    assert speed["loop"]["step_mode"] == "plain" and speed["loop"]["images_per_s"]  # auto: plain on the CPU
    assert "$ srgan benchmark train --stage pretrain --batch-size 64" in (back / "console.log").read_text()


def test_the_upscale_chunk_measures_the_pipeline_and_compares_devices(  # noqa: ANN001
    gpu_run, tmp_path: Path, photo_dir: Path, weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(photo_dir, gpu_run.ROOT / gpu_run.VAL)
    monkeypatch.setattr(gpu_run, "UPSCALE", {"tiny": ["--size", "24x16", "--files", "2"]})
    back = _call(
        gpu_run, tmp_path, "u", "upscale", "--device", "cpu", "--cases", "tiny", "--", "-m", "tiny_x4"
    )
    result = json.loads((back / "upscale.json").read_text())
    flow = result["cases"]["tiny"]["pipeline"][0]
    assert flow["files"] == 2 and flow["video_frames"] == 2 and flow["pipelined_ms_per_image"] > 0
    devices = result["devices"]
    assert devices["within_one_level"] and set(devices["max_level_difference"]) == {
        "p0.png",
        "p1.png",
        "p2.png",
    }
    assert "$ srgan benchmark upscale --backend torch --device cpu" in (back / "console.log").read_text()


def test_the_real_chunk_trains_on_degraded_lr_then_scores_damaged_copies(
    gpu_run,
    tmp_path: Path,
    lpips_dir: Path,  # noqa: ANN001
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`chunk real` on the CPU: the degradation pipeline runs inside the GAN stage exactly as it
    would on the GPU (same code, device from --device), then eval --degrade against the peers."""
    root = _carry_for_the_gan(gpu_run, tmp_path, lpips_dir)
    with pytest.raises(SystemExit, match="real-init"):
        gpu_run.main(["chunk", "real", "--minutes", "5", "--out", str(tmp_path / "o"), *CPU])
    weights.save(root / gpu_run.REAL_START_FILE, tiny_model(4, global_skip=True), trained_on="x")
    weights.save(root / gpu_run.PEERS_DIR / "peer_x4.safetensors", tiny_model(4, seed=2), trained_on="x")
    gpu_run.main(["plan"])
    assert "real (the real-world GAN, then its eval)" in capsys.readouterr().out

    # Real-ESRGAN's discriminator and weights, the arm docs/degradations.md names for a GPU call
    tiny = [
        *TINY,
        "--content-layer",
        "vgg22",
        "--d-arch",
        "unet",
        "--content-weight",
        "1",
        "--adv-weight",
        "0.1",
    ]
    back = _call(gpu_run, tmp_path, "r1", "real", *CPU, "--steps", "6", "--", *tiny)
    manifest = json.loads((back / "manifest.json").read_text())
    assert (manifest["stage"], manifest["step"]) == ("real", 6)
    gan = weights.read_info(back / "srgan_x4.safetensors")
    assert gan.provenance["init"] == str(gpu_run.REAL_START_FILE)
    assert gan.provenance["degradation"]["name"] == "photo" and gan.provenance["steps"] == 6
    assert gan.provenance["train_config"]["d_arch"] == "unet"
    assert gan.provenance["train_config"]["adv_weight"] == 0.1
    scores = json.loads((back / "real_eval.json").read_text())
    assert [s["name"] for s in scores["sets"]] == ["clean", "light", "moderate", "heavy"]
    methods = [r["method"] for r in scores["sets"][3]["results"]]
    assert methods[0] == "bicubic" and "peer_x4" in methods and len(methods) == 5
    gpu_run.main(["collect", str(back), "--archive", str(tmp_path / "archive")])
    assert (tmp_path / "archive" / "real_step0000006" / "gan_log.jsonl").is_file()
    assert "real: gan step 6" in capsys.readouterr().out


def test_the_restore_chunk_trains_the_front_end_then_scores_noise_and_damage(
    gpu_run,
    tmp_path: Path,
    lpips_dir: Path,  # noqa: ANN001
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`chunk restore` on the CPU: the front-end of the carried start trains alone on LR made by the
    repair preset (the recipe srgan_x4_denoise), continued at the lower rate; then the eval on the
    damage levels and noise alone; the weights, the eval and the logs come back and `collect` them."""
    root = _carry_for_the_gan(gpu_run, tmp_path, lpips_dir)
    with pytest.raises(SystemExit, match="restore-init"):
        gpu_run.main(["chunk", "restore", "--minutes", "5", "--out", str(tmp_path / "o"), *CPU])
    start = tiny_model(4, global_skip=True, restore_blocks=2)
    weights.save(root / gpu_run.RESTORE_START_FILE, start, trained_on="x")
    gpu_run.main(["plan"])
    assert "restore (the denoising front-end, then its eval)" in capsys.readouterr().out

    back = _call(gpu_run, tmp_path, "d1", "restore", *CPU, "--steps", "4", "--", *TINY)
    manifest = json.loads((back / "manifest.json").read_text())
    assert (manifest["stage"], manifest["step"]) == ("restore", 4)
    assert manifest["weights"] == "restore_x4.safetensors"
    info = weights.read_info(back / "restore_x4.safetensors")
    assert info.config["restore_blocks"] == 2 and info.provenance["stage"] == "restore"
    assert info.provenance["degradation"]["name"] == "repair" and info.provenance["steps"] == 4
    assert info.provenance["train_config"]["lr"] == 1e-4  # a trained front-end: the lower rate
    trained = load_file(str(back / "restore_x4.safetensors"))
    for name, tensor in start.state_dict().items():  # the SR network behind it is frozen
        if not name.startswith("restore.") and tensor.is_floating_point():
            assert torch.equal(trained[name], tensor), name
    assert not torch.equal(trained["restore.tail.weight"], start.state_dict()["restore.tail.weight"])
    scores = json.loads((back / "restore_eval.json").read_text())
    names = ["clean", "light", "moderate", "heavy", "noise=5", "noise=10"]
    assert [s["name"] for s in scores["sets"]] == names
    methods = [r["method"] for r in scores["sets"][-1]["results"]]
    assert methods[0] == "bicubic" and "restore_x4" in methods
    gpu_run.main(["collect", str(back), "--archive", str(tmp_path / "archive")])
    assert (tmp_path / "archive" / "restore_step0000004" / "restore_log.jsonl").is_file()
    assert "restore: step 4" in capsys.readouterr().out

    # the perceptual terms on the restored LR, passed on after `--` (the carried VGG is given), on
    # a fresh machine
    shutil.rmtree(root / gpu_run.RESTORE_RUN)
    perceptual = ["--restore-content-weight", "0.1", "--restore-adv-weight", "0.01"]
    perceptual += ["--content-layer", "vgg22"]
    back = _call(gpu_run, tmp_path, "d2", "restore", *CPU, "--steps", "2", "--", *TINY, *perceptual)
    config = weights.read_info(back / "restore_x4.safetensors").provenance["train_config"]
    assert (config["restore_content_weight"], config["restore_adv_weight"]) == (0.1, 0.01)
    assert config["vgg_weights"] == str(gpu_run.VGG_FILE)


def test_the_eval_of_a_chunk_leaves_out_srgan_x4_where_slim_left_it_behind(
    gpu_run,
    tmp_path: Path,
    lpips_dir: Path,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """On the GPU machine the shipped weights are not carried (`slim`): the chunk's eval scores the
    models it has instead of failing on the missing name."""
    root = _carry_for_the_gan(gpu_run, tmp_path, lpips_dir)
    model = weights.save(root / "m.safetensors", tiny_model(4), trained_on="x")

    def missing(name: str) -> Path:
        raise weights.WeightsNotFound(f"no weights named {name!r}")

    monkeypatch.setattr(weights, "resolve", missing)
    out = tmp_path / "o"
    out.mkdir()
    args = gpu_run.argparse.Namespace(device="cpu")
    deadline = gpu_run.time.monotonic() + 120
    gpu_run.score(args, [str(model)], ["noise=5"], out / "e.json", out / "console.log", deadline)
    scores = json.loads((out / "e.json").read_text())
    assert [r["method"] for r in scores["sets"][1]["results"]] == ["bicubic", "m"]
    assert "srgan_x4 is not here (slimmed)" in capsys.readouterr().out
