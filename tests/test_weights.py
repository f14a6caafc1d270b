"""Weights: safetensors round trip with config metadata, lookup by name, and every error case."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import torch

from srgan_cli import archs, weights
from srgan_cli.errors import WeightsFormatError, WeightsMismatch, WeightsNotFound

from .bad_files import poisoned, zip_bomb
from .conftest import tiny_model


def _rewrite_metadata(src: Path, dst: Path, **changes: str) -> None:
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"].update(changes)
    new = json.dumps(header).encode()
    dst.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


def test_round_trip_keeps_config_and_outputs(tmp_path: Path) -> None:
    model = tiny_model(4)
    path = weights.save(tmp_path / "m.safetensors", model, trained_on="photos", metrics={"val_psnr_y": 27.5})
    loaded = archs.load(path)
    assert loaded.info.arch == "srresnet"
    assert loaded.info.scale == 4
    assert loaded.info.config == model.config.to_dict()
    assert loaded.info.metrics == {"val_psnr_y": 27.5}
    assert loaded.info.n_params == sum(t.numel() for t in model.state_dict().values())
    x = torch.rand(1, 3, 9, 9)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


def test_lookup_by_name_in_env_folder(weights_dir: Path) -> None:
    assert weights.resolve("tiny_x4") == weights_dir / "tiny_x4.safetensors"
    assert weights.resolve("tiny_x2.safetensors") == weights_dir / "tiny_x2.safetensors"
    names = {i.name for i in weights.list_models()}
    assert {"tiny_x4", "tiny_x2"} <= names


def test_shipped_default_weights_load() -> None:
    loaded = archs.load(weights.DEFAULT_MODEL)
    assert loaded.info.scale == 4
    assert loaded.info.metrics.get("val_psnr_y")
    with torch.no_grad():
        assert loaded.model(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)


def _shipped_sr() -> list[Path]:
    return sorted(
        f
        for d in weights.shipped_dirs()
        for f in d.glob("*.safetensors")
        if weights.read_info(f).arch == "srresnet"
    )


def _trained_parents(provenance: dict) -> list[dict]:
    """The training provenances of a file: its own, or for a network interpolation its parents'."""
    if "interpolation" not in provenance:
        return [provenance]
    blend = provenance["interpolation"]
    assert 0 < blend["alpha"] < 1
    return _trained_parents(blend["first"]["provenance"]) + _trained_parents(blend["second"]["provenance"])


@pytest.mark.parametrize("path", _shipped_sr(), ids=lambda p: p.stem)
def test_every_shipped_sr_model_loads_and_beats_bicubic_on_val(path: Path) -> None:
    loaded = archs.load(path)
    scale = loaded.info.scale
    assert re.search(rf"_x{scale}(_|$)", path.stem)  # the name says the scale: srresnet_x4, srresnet_x4_fast
    metrics, provenance = loaded.info.metrics, loaded.info.provenance
    assert metrics["val_images"] == 6
    assert metrics["val_ssim_y"] > metrics["val_bicubic_ssim_y"]
    assert metrics["val_lpips"] < metrics["val_bicubic_lpips"]
    if provenance.get("stage") != "gan":  # a GAN trades PSNR for texture (SRGAN's own point):
        assert metrics["val_psnr_y"] > metrics["val_bicubic_psnr_y"]  # its bar is SSIM and LPIPS
    else:  # ... and it stays close: within 0.5 dB of bicubic on clean inputs
        assert metrics["val_psnr_y"] > metrics["val_bicubic_psnr_y"] - 0.5
    for trained in _trained_parents(provenance):  # every training run behind the file is recorded
        assert trained["steps"] > 0 and trained["train_config"]["scale"] == scale
    with torch.no_grad():
        assert loaded.model(torch.rand(1, 3, 8, 8)).shape == (1, 3, 8 * scale, 8 * scale)


def test_missing_file_and_unknown_name(weights_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFound, match="not found") as err:
        archs.load(tmp_path / "nope.safetensors")
    assert err.value.exit_code == 2
    with pytest.raises(WeightsNotFound, match="tiny_x4"):  # the message lists what exists
        archs.load("no_such_model")
    # a missing path is an error even when a shipped model has the same name
    with pytest.raises(WeightsNotFound, match="not found"):
        archs.load(tmp_path / "elsewhere" / "tiny_x4.safetensors")


def test_not_a_weights_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is just some text, not tensors at all")
    with pytest.raises(WeightsFormatError, match="not a safetensors"):
        archs.load(bad)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(WeightsFormatError, match="too short"):
        archs.load(empty)


def test_truncated_file(tmp_path: Path) -> None:
    path = weights.save(tmp_path / "m.safetensors", tiny_model(4))
    raw = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(WeightsFormatError, match="truncated"):
        archs.load(cut)
    cut.write_bytes(raw[:20])
    with pytest.raises(WeightsFormatError, match="truncated"):
        archs.load(cut)


def test_corrupt_header(tmp_path: Path) -> None:
    path = weights.save(tmp_path / "m.safetensors", tiny_model(4))
    raw = bytearray(path.read_bytes())
    raw[12:20] = b"\xff\xfe\x00garbl"
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(WeightsFormatError, match="corrupt"):
        archs.load(bad)


def test_safetensors_without_metadata(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(path))
    with pytest.raises(WeightsFormatError, match="metadata"):
        archs.load(path)


def test_config_mismatch(tmp_path: Path) -> None:
    path = weights.save(tmp_path / "m.safetensors", tiny_model(4))
    wrong = tmp_path / "wrong.safetensors"
    _rewrite_metadata(
        path, wrong, config=json.dumps({"scale": 4, "n_blocks": 1, "n_feats": 16, "in_channels": 3})
    )
    with pytest.raises(WeightsMismatch, match="shape mismatch"):
        archs.load(wrong)
    _rewrite_metadata(
        path, wrong, config=json.dumps({"scale": 4, "n_blocks": 3, "n_feats": 8, "in_channels": 3})
    )
    with pytest.raises(WeightsMismatch, match="missing"):
        archs.load(wrong)
    _rewrite_metadata(path, wrong, arch="transformer")
    with pytest.raises(WeightsMismatch, match="unknown architecture"):
        archs.load(wrong)


def test_wrong_scale_requested(tmp_path: Path) -> None:
    path = weights.save(tmp_path / "m.safetensors", tiny_model(2))
    with pytest.raises(WeightsMismatch, match="x2 model, but x4"):
        archs.load(path, expect_scale=4)


def test_pth_state_dict_is_accepted(tmp_path: Path) -> None:
    model = tiny_model(2)
    path = tmp_path / "m.pth"
    torch.save({"params_ema": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    loaded = archs.load(path)
    assert loaded.info.scale == 2
    assert loaded.info.config["n_feats"] == 8
    x = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


class _Payload:
    def __reduce__(self):  # what a malicious checkpoint would do on unpickling
        return (print, ("this must never run",))


def test_pth_with_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": _Payload()}, path)
    with pytest.raises(WeightsFormatError, match="refused"):
        archs.load(path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsFormatError):
        archs.load(garbage)


def test_the_format_knows_no_architecture() -> None:
    """weights.py (the file format) imports no feature package; archs.py holds the table, and a
    feature package loads its own kind through weights.load_model with its own class."""
    import subprocess
    import sys

    code = (
        "import sys, srgan_cli.weights as w; w.read_info('srresnet_x4'); "
        "print(sorted(m for m in sys.modules if m.split('.')[1:2] in (['sr'], ['lapgan'], ['text2img'])))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert set(archs.architectures()) == {"srresnet", "lapgan", "text2img", "shapes_checker"}


def test_load_model_with_a_callers_class(tmp_path: Path) -> None:
    from srgan_cli.sr.models import SRResNet, SRResNetConfig

    path = weights.save(tmp_path / "m.safetensors", tiny_model(2))
    loaded = weights.load_model(
        path, lambda arch, cfg: SRResNet(SRResNetConfig(**cfg)), expect_arch="srresnet"
    )
    assert isinstance(loaded.model, SRResNet) and not loaded.model.training
    with pytest.raises(WeightsMismatch, match="invalid srresnet config"):  # a builder that rejects the config
        weights.load_model(path, lambda arch, cfg: SRResNet(SRResNetConfig(**cfg, colour="red")))
    with pytest.raises(WeightsMismatch, match="unknown architecture 'vit'"):
        archs.build_model("vit", {})


@pytest.mark.parametrize(
    ("name", "lie"),
    [
        ("srresnet_x4", {"n_feats": 10**7}),
        ("srresnet_x4", {"n_blocks": 10**7}),
        ("lapgan_photos64", {"n_feats": 10**7, "coarse_hidden": 10**8}),
        ("text2img_shapes", {"ngf": 10**7, "z_dim": 10**9}),
        ("shapes_checker", {"width": 10**8}),
    ],
)
def test_a_config_that_claims_a_huge_model_is_refused_at_once(
    tmp_path: Path, name: str, lie: dict[str, int]
) -> None:
    """The config is checked against the tensors' shapes before anything is allocated: building a
    model of 10**7 features would take gigabytes and minutes."""
    import resource
    import time

    info = archs.load(name).info  # the honest file loads (and its modules are imported: not timed)
    doctored = tmp_path / f"{name}.safetensors"
    _rewrite_metadata(info.path, doctored, config=json.dumps({**info.config, **lie}))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(WeightsMismatch, match="do not match the architecture config"):
        archs.load(doctored)
    assert time.perf_counter() - start < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: under 200 MB


def test_weights_holding_nan_or_inf_are_refused(tmp_path: Path) -> None:
    """NaN weights used to give an all-black image and exit 0: now neither file kind loads."""
    names = ["body.0.body.0.weight", "body_tail.1.running_var", "tail.weight"]  # a BN buffer too
    model = tiny_model(2)
    bad = poisoned(model.state_dict(), names)
    model.load_state_dict(bad)
    sentence = (
        r"nan\.safetensors: 3 tensors hold NaN or infinite values \(e\.g\. body\.0\.body\.0\.weight\): "
        "the file is damaged or the training diverged"
    )
    with pytest.raises(WeightsFormatError, match=sentence):
        archs.load(weights.save(tmp_path / "nan.safetensors", model))
    torch.save(bad, tmp_path / "nan.pth")
    with pytest.raises(WeightsFormatError, match=sentence.replace("safetensors", "pth")):
        archs.load(tmp_path / "nan.pth")
    with pytest.raises(WeightsFormatError, match="1 tensor holds NaN"):
        weights.load_state_dict(tiny_model(2), poisoned(tiny_model(2).state_dict(), ["head.0.bias"]))
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in bad.items()}
        with pytest.raises(WeightsFormatError, match="3 tensors hold"):
            weights.check_finite(cast, "x")
    weights.check_finite({"big": torch.full((4,), 6e4, dtype=torch.float16)}, "x")  # large is not Inf
    archs.load(weights.save(tmp_path / "ok.safetensors", tiny_model(2)))  # honest weights still load


def test_a_zip_bomb_is_refused_before_torch_unpacks_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2 MB .pth whose member inflates to 2 GiB took 2 GB of memory in torch.load before it was
    refused; its zip directory gives it away first."""
    import resource

    bomb = zip_bomb(tmp_path / "bomb.pth", gib=2)
    assert bomb.stat().st_size < 3 * 2**20

    def never(*_: object, **__: object) -> None:
        raise AssertionError("torch.load was reached")

    monkeypatch.setattr(torch, "load", never)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(
        WeightsFormatError, match=r"refused: a 2\.0 MB file that unpacks to 2\.0 GiB \(a zip bomb"
    ):
        archs.load(bomb)
    from srgan_cli.runtime.third_party import read_state_dict

    with pytest.raises(WeightsFormatError, match="zip bomb"):
        read_state_dict(bomb.rename(tmp_path / "bomb.ckpt"))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: under 100 MB


def test_torch_files_past_the_size_limit_or_not_torch_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.pth"
    torch.save(tiny_model(2).state_dict(), path)
    monkeypatch.setattr(weights, "MAX_UNPACKED_BYTES", 1000)  # a module constant, raised where needed
    with pytest.raises(WeightsFormatError, match=r"refused: unpacks to .* more than the 0\.0 MB") as caught:
        archs.load(path)
    assert "MAX_UNPACKED_BYTES" in (caught.value.hint or "")
    monkeypatch.undo()
    assert archs.load(path).info.scale == 2
    text = tmp_path / "notes.pt"
    text.write_text("not a model")
    with pytest.raises(WeightsFormatError, match="neither a zip archive nor a pickle"):
        archs.load(text)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[:-30])  # the zip directory's end is gone
    with pytest.raises(WeightsFormatError, match="bad zip archive"):
        archs.load(cut)


@pytest.mark.parametrize(
    ("declared", "message"),
    [(2**62, "not a safetensors"), (90_000_000, "truncated"), ("offsets", "truncated")],
)
def test_safetensors_sizes_that_do_not_fit_the_file_are_refused_at_once(
    tmp_path: Path, declared: int | str, message: str
) -> None:
    """A header length or a tensor offset past the end of the file is refused from the first bytes,
    by our loaders and the community-model path alike, without reading or allocating it (the
    safetensors library checks too; ours comes first, with the file's sizes in the message)."""
    import resource

    from srgan_cli.runtime.third_party import read_state_dict

    raw = weights.save(tmp_path / "m.safetensors", tiny_model(2)).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    if declared == "offsets":
        header = json.loads(raw[8 : 8 + n])
        entry = header["head.0.weight"]
        entry["shape"], entry["data_offsets"] = [2**20, 2**20], [0, 2**42]  # 4 TiB of float32
        new = json.dumps(header).encode()
        data = struct.pack("<Q", len(new)) + new + raw[8 + n :]
    else:
        data = struct.pack("<Q", declared) + raw[8:]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for load in (archs.load, read_state_dict):
        with pytest.raises(WeightsFormatError, match=message):
            load(bad)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB
