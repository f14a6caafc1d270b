"""The CPU fast path of community models (runtime/community_onnx.py): backend auto exports a
spandrel model once into the cache, times it against torch once, and runs the faster; results
equal the torch path's; an architecture that does not export stays on torch with a note; and
`srgan benchmark upscale` times a community model's torch and ONNX rows, and its exports."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from srgan_cli.cli.app import app
from srgan_cli.errors import OnnxError
from srgan_cli.runtime import community_onnx
from srgan_cli.runtime.loader import build_upscaler

from .conftest import make_photo

runner = CliRunner()


def _centred(net: torch.nn.Module) -> torch.nn.Module:
    """`net` with its last conv's bias moved so that outputs sit around 0.5, not clamped away."""
    last = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        assert last.bias is not None
        last.bias += 0.5 - net.eval()(torch.rand(1, 3, 16, 16)).mean()
    return net


@pytest.fixture
def community(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Tiny Compact (x2), RRDB (x4) and SwinIR (x2, which exports at one size only) as .pth files,
    an empty cache folder, and no size floor for the fast path."""
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.SwinIR import SwinIR

    monkeypatch.setenv("SRGAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(community_onnx, "MIN_PARAMETERS", 0)
    monkeypatch.setattr(community_onnx, "PROBE_SIDE", 16)  # the decision, not the speed, is tested
    torch.manual_seed(0)
    folder = tmp_path / "models"
    folder.mkdir()
    compact = _centred(Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2))
    rrdb = _centred(ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        swinir = SwinIR(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=2,
                        upsampler="pixelshuffledirect", mlp_ratio=2)  # fmt: skip
    for name, net in (("compact_x2", compact), ("rrdb_x4", rrdb), ("swinir_x2", swinir)):
        torch.save(net.state_dict(), folder / f"{name}.pth")
    return {p.stem.split("_")[0]: p for p in folder.iterdir()}


def _exports(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache" / "onnx").glob("*.onnx"))


class _Counter:
    """Stands in for a function and counts its calls (then calls it, or returns `value`)."""

    def __init__(self, fn: Any = None, value: Any = None) -> None:
        self.fn, self.value, self.calls = fn, value, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.fn(*args, **kwargs) if self.fn is not None else self.value


@pytest.mark.parametrize(("name", "scale"), [("compact", 2), ("rrdb", 4)])
def test_auto_on_cpu_equals_torch_and_is_decided_once(
    community: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, scale: int
) -> None:
    model = str(community[name])
    photo = make_photo(30, 26).astype(np.float32) / 255
    exports = _Counter(community_onnx.export_community)
    timings = _Counter(community_onnx.time_backends)
    monkeypatch.setattr(community_onnx, "export_community", exports)
    monkeypatch.setattr(community_onnx, "time_backends", timings)

    first = build_upscaler(model, device="cpu")
    assert exports.calls == 1 and timings.calls == 1 and len(_exports(tmp_path)) == 1
    record = json.loads(_exports(tmp_path)[0].with_suffix(".json").read_text())
    assert record["torch_ms"] > 0 and record["onnx_ms"] > 0 and record["error"] is None
    faster = "onnx" if record["onnx_ms"] < record["torch_ms"] else "torch"
    assert record["backend"] == first.backend == faster
    assert any("timed" in note and "cached" in note for note in first.notes)

    again = build_upscaler(model, device="cpu")  # the record holds: no export, no timing
    assert exports.calls == 1 and timings.calls == 1
    assert again.backend == faster and again.notes == [] and again.scale == scale
    assert again.arch == f"spandrel:{'ESRGAN' if name == 'rrdb' else 'Compact'}"

    want = build_upscaler(model, device="cpu", backend="torch").upscaler(photo)
    explicit = build_upscaler(model, device="cpu", backend="onnx")  # the same cached export
    assert explicit.backend == "onnx" and exports.calls == 1 and len(_exports(tmp_path)) == 1
    assert want.shape == (30 * scale, 26 * scale, 3) and want.std() > 0.05  # not clamped flat
    for ready in (first, again, explicit):
        assert np.abs(ready.upscaler(photo) - want).max() <= 1 / 255


def test_onnx_chosen_when_faster_and_torch_when_not(
    community: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = str(community["compact"])
    monkeypatch.setattr(community_onnx, "time_backends", _Counter(value=(40.0, 10.0)))  # (torch, onnx)
    ready = build_upscaler(model, device="cpu")
    assert ready.backend == "onnx" and ready.device == "CPU (onnxruntime)" and ready.name == "compact_x2"

    for record in (tmp_path / "cache" / "onnx").glob("*.json"):
        record.unlink()  # decide again, with torch the faster this time
    slower = _Counter(value=(10.0, 40.0))
    monkeypatch.setattr(community_onnx, "time_backends", slower)
    assert build_upscaler(model, device="cpu").backend == "torch"
    assert build_upscaler(model, device="cpu").backend == "torch" and slower.calls == 1

    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # another thread count: timed again
    build_upscaler(model, device="cpu")
    assert slower.calls == 2


def test_an_export_that_fails_falls_back_to_torch_once_with_a_note(
    community: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = str(community["rrdb"])

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise OnnxError("export failed at opset 17: Exporting the operator 'aten::odd' is not supported")

    failing = _Counter(refuse)
    monkeypatch.setattr(community_onnx, "export_community", failing)
    ready = build_upscaler(model, device="cpu")
    assert ready.backend == "torch" and failing.calls == 1 and _exports(tmp_path) == []
    (note,) = [n for n in ready.notes if "ONNX" in n]
    assert "ESRGAN does not export to ONNX" in note and "aten::odd" in note and "torch" in note
    again = build_upscaler(model, device="cpu")  # remembered: not tried again
    assert again.backend == "torch" and failing.calls == 1
    photo = make_photo(20, 18).astype(np.float32) / 255
    want = build_upscaler(model, device="cpu", backend="torch").upscaler(photo)
    assert np.array_equal(again.upscaler(photo), want)


def test_a_real_architecture_that_does_not_export_runs_on_torch(community: dict[str, Path]) -> None:
    """SwinIR traces its window padding at one size: its dynamic export fails verification."""
    ready = build_upscaler(str(community["swinir"]), device="cpu")
    assert ready.backend == "torch" and any("does not export to ONNX" in n for n in ready.notes)
    assert ready.upscaler(make_photo(20, 20).astype(np.float32) / 255).shape == (40, 40, 3)


def test_small_models_and_other_choices_stay_on_torch(
    community: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = str(community["compact"])
    monkeypatch.setattr(community_onnx, "MIN_PARAMETERS", 10**9)  # as the real floor treats tiny models
    assert build_upscaler(model, device="cpu").backend == "torch" and _exports(tmp_path) == []
    monkeypatch.setattr(community_onnx, "MIN_PARAMETERS", 0)
    assert build_upscaler(model, device="cpu", backend="torch").backend == "torch"
    assert build_upscaler(model, device="cpu", compile=True).backend == "torch"
    assert _exports(tmp_path) == []


def test_tiles_on_the_onnx_path_match_the_whole_image(
    community: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """From the record (no torch model at hand), tiles get the pad the torch model measures."""
    model = str(community["rrdb"])
    monkeypatch.setattr(community_onnx, "time_backends", _Counter(value=(40.0, 10.0)))
    assert build_upscaler(model, device="cpu").backend == "onnx"
    tiled = build_upscaler(model, device="cpu", tile=16)
    assert tiled.backend == "onnx"
    photo = make_photo(40, 36).astype(np.float32) / 255
    want = build_upscaler(model, device="cpu", backend="torch", tile=0).upscaler(photo)
    got = tiled.upscaler(photo)
    assert tiled.upscaler.last_tile == 16  # type: ignore[attr-defined]
    assert np.abs(got - want).max() <= 1 / 255


def test_size_needs_are_padded_on_the_onnx_path_as_on_torch(community: dict[str, Path]) -> None:
    """A model that needs sides of a multiple (and a minimum): padded, run, cropped, on both."""
    model = str(community["compact"])
    on_torch = build_upscaler(model, device="cpu", backend="torch", tile=0).upscaler
    on_onnx = build_upscaler(model, device="cpu", backend="onnx", tile=0).upscaler
    for up in (on_torch, on_onnx):
        up.multiple, up.minimum = 8, 16  # type: ignore[union-attr]
    photo = make_photo(13, 10).astype(np.float32) / 255
    want = on_torch(photo)
    assert want.shape == (26, 20, 3)
    assert np.abs(on_onnx(photo) - want).max() <= 1 / 255


def test_benchmark_times_torch_and_the_cached_export(community: dict[str, Path], tmp_path: Path) -> None:
    args = ["benchmark", "upscale", "-m", str(community["compact"]), "--size", "24x16", "--runs", "1"]
    result = runner.invoke(app, [*args, "--warmup", "0", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["backend"] for r in rows] == ["torch", "onnx"]
    assert all(r["output_size"] == [48, 32] and r["ms_per_image"] > 0 for r in rows)
    assert rows[0]["gflop_per_output_mp"] > 0 and len(_exports(tmp_path)) == 1
    table = runner.invoke(app, [*args, "--warmup", "0", "--device", "cpu", "--backend", "auto"])
    assert table.exit_code == 0, table.output
    assert "auto (" in table.output


def test_benchmark_takes_a_community_export(community: dict[str, Path], tmp_path: Path) -> None:
    """It used to crash: an OnnxUpscaler has no torch model to count the conv work of."""
    out = tmp_path / "compact.onnx"
    made = runner.invoke(app, ["export-onnx", "-m", str(community["compact"]), "-o", str(out)])
    assert made.exit_code == 0, made.output
    args = ["benchmark", "upscale", "-m", str(out), "--size", "24x16", "--runs", "1", "--warmup", "0"]
    result = runner.invoke(app, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "onnx" in result.output
    result = runner.invoke(app, [*args, "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["backend"] == "onnx" and row["output_size"] == [48, 32] and row["gflop_per_output_mp"] is None
