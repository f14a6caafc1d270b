"""scripts/gpu_run.py, the GPU-session driver, run end to end on the CPU with tiny settings:
a pretrain chunk, its checkpoint back in parts, joined, resumed by a second chunk; then the GAN
chunk from its weights. Only the GPU and the lending tool's transfer are left out."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from srgan_cli import weights
from srgan_cli.sr.palette import pack_file

from .conftest import make_vgg_prefix

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_run.py"
TINY = ["--n-blocks", "1", "--n-feats", "8", "--batch-size", "2", "--crop", "32", "--log-every", "1"]
CPU = ["--device", "cpu", "--amp", "off", "--rate", "100"]  # --rate: no benchmark


@pytest.fixture
def gpu_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("gpu_run", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "ROOT", tmp_path / "root")
    monkeypatch.setattr(module, "PART", 64 * 1024)  # several parts even for a tiny checkpoint
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


def test_planned_steps(gpu_run) -> None:  # noqa: ANN001
    assert gpu_run.planned_steps(3000.0, 1020.0, 64, 1000) == 40000  # 0.85 x 3000 x 1020 / 64 = 40640
    assert gpu_run.planned_steps(1.0, 10.0, 64, 1000) == 1000  # at least one unit
