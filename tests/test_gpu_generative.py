"""scripts/gpu_generative.py, the one-call GPU run of the generative models, end to end on the CPU
with tiny models and a time budget of seconds: both runs stop at their time limits, their weights
come back (the text-to-image weights in parts), and collect joins and checks them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from srgan_cli.lapgan.train import load_lapgan
from srgan_cli.text2img.sample import load_text2img

from .conftest import load_script

T2I = "--ngf 8 --ndf 8 --batch-size 4 --encoder-steps 3 --match-weight 1"
LAPGAN = "--size 16 --base 4 --n-feats 8 --coarse-hidden 16 --batch-size 4 --sample-every 2"


def test_one_call_trains_both_models_and_collect_joins_the_parts(
    tmp_path: Path, photo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = load_script("gpu_generative")
    root = tmp_path / "root"
    monkeypatch.setattr(gen.gpu_run, "ROOT", root)
    monkeypatch.setattr(gen.gpu_run, "PART", 2**20)  # tiny weights still come back in parts
    shutil.copytree(photo_dir, root / "photos")
    out = tmp_path / "out"
    gen.main(
        ["train", "--minutes", "0.4", "--reserve", "0", "--out", str(out), "--device", "cpu",
         "--photos", "photos", "--shapes", "24", "--fresh", "12", "--captions", "8",
         "--text2img-args", T2I, "--lapgan-args", LAPGAN]
    )  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    parts = manifest["parts"]["text2img.safetensors"]
    assert len(parts) >= 2 and len(manifest["files"]) + 1 <= gen.gpu_run.MAX_FILES
    console = (out / "console.log").read_text()
    assert console.count("--time-limit") >= 3  # every training call is time-boxed

    back = tmp_path / "back"  # what the lending tool copies back
    back.mkdir()
    for name in [*manifest["files"], "manifest.json"]:
        shutil.copyfile(out / name, back / name)
    dest = tmp_path / "dest"
    gen.main(["collect", str(back), "--dest", str(dest)])
    model, info = load_text2img(dest / "text2img.safetensors")
    assert model.config.ngf == 8 and info.provenance["train_config"]["match_weight"] == 1
    # the run was finished by --resume calls with the shipped mode-seeking terms (run.json is the last call's)
    assert console.count("--resume --steps 1000000") == 3 and "--mode-seeking 0.5 " in console
    last_call = json.loads((dest / "text2img" / "run.json").read_text())["config"]
    assert last_call["mode_seeking"] == 2 and last_call["mode_seeking_distance"] == "outline"
    assert last_call["ema"] == 0.995
    assert last_call["ngf"] == 8 and last_call["match_weight"] == 1  # and the first call's options
    lapgan, _ = load_lapgan(dest / "lapgan.safetensors")
    assert lapgan.config.levels == 3 and lapgan.config.n_feats == 8
    report = json.loads((dest / "text2img" / "eval.json").read_text())
    assert report["captions"] == 8 and len(report["results"]) == 3  # real, re-drawn, the model
    assert (dest / "lapgan" / "log.jsonl").is_file() and (dest / "text2img" / "log.jsonl").is_file()

    (back / parts[0]).write_bytes(b"corrupted")  # a broken transfer is caught
    with pytest.raises(SystemExit, match="SHA-256"):
        gen.main(["collect", str(back), "--dest", str(tmp_path / "dest2")])
