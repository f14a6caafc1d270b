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
    assert metrics["val_images"] == 6 and metrics["val_psnr_y"] > metrics["val_bicubic_psnr_y"]
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
