"""ONNX export, the ONNX Runtime backend, `srgan export-onnx` and `srgan benchmark upscale`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from srgan_cli import weights
from srgan_cli.cli.app import app
from srgan_cli.errors import OnnxError, UsageError
from srgan_cli.runtime import onnx_export
from srgan_cli.runtime.loader import build_upscaler
from srgan_cli.runtime.onnx_backend import OnnxUpscaler
from srgan_cli.runtime.onnx_export import META_PREFIX, calibration_crops, export_onnx, quantize_int8
from srgan_cli.runtime.torch_backend import TorchUpscaler

from .conftest import make_photo, tiny_model

runner = CliRunner()


def run(*args: object) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SRGAN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def tiny_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.onnx"
    export_onnx(tiny_model(4, global_skip=True), path, source={"weights": "tiny"})
    return path


def test_export_round_trip_dynamic_shapes(tiny_onnx: Path) -> None:
    model = tiny_model(4, global_skip=True)
    up = OnnxUpscaler(tiny_onnx, device="cpu")
    assert up.notes == [] and up.scale == 4 and up.info.static is None
    ref = TorchUpscaler(model, device=torch.device("cpu"), tile=0)
    rng = np.random.default_rng(0)
    for h, w in ((23, 31), (40, 18)):  # two shapes through one file
        pixels = rng.random((h, w, 3), dtype=np.float32)
        got = up(pixels)
        assert got.shape == (4 * h, 4 * w, 3)
        assert np.abs(got - ref(pixels)).max() < 1e-4
    # a batch of two also works (dynamic batch)
    x = rng.random((2, 3, 12, 10), dtype=np.float32)
    assert up.upscale_array(x).shape == (2, 3, 48, 40)


def test_metadata_round_trip(tiny_onnx: Path) -> None:
    model = tiny_model(4, global_skip=True)
    proto = onnx.load(str(tiny_onnx))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta[META_PREFIX + "config"]) == model.config.to_dict()
    assert meta[META_PREFIX + "scale"] == "4" and meta[META_PREFIX + "arch"] == "srresnet"
    assert meta[META_PREFIX + "input_range"] == "0..1" and meta[META_PREFIX + "input_layout"] == "NCHW"
    assert json.loads(meta[META_PREFIX + "source"]) == {"weights": "tiny"}
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    info = OnnxUpscaler(tiny_onnx, device="cpu").info
    assert info.config == model.config.to_dict() and info.precision == "fp32" and info.has_srgan_metadata


def test_fp16_and_static_exports(tmp_path: Path) -> None:
    model = tiny_model(2)
    half = export_onnx(model, tmp_path / "half.onnx", fp16=True)
    assert half.precision == "fp16" and half.max_abs_diff <= 1e-2
    up = OnnxUpscaler(tmp_path / "half.onnx", device="cpu")
    assert up.info.input_dtype == np.float16 and up.info.precision == "fp16"
    pixels = np.random.default_rng(2).random((30, 26, 3), dtype=np.float32)
    ref = TorchUpscaler(model, device=torch.device("cpu"), tile=0)(pixels)
    assert np.abs(up(pixels) - ref).max() < 2e-2

    fixed = export_onnx(model, tmp_path / "fixed.onnx", static=(32, 28))
    assert not fixed.dynamic and fixed.input_shape == [1, 3, 32, 28]
    up = OnnxUpscaler(tmp_path / "fixed.onnx", device="cpu", tile_pad=16)
    assert up.info.static == (32, 28) and up.info.fixed_batch
    big = np.random.default_rng(3).random((45, 61, 3), dtype=np.float32)
    ref = TorchUpscaler(model, device=torch.device("cpu"), tile=0)(big)
    assert np.abs(up(big) - ref).max() < 1e-4  # windows shifted inward: exact at the borders too
    assert up(big[:10, :9]).shape == (20, 18, 3)  # smaller than the window


def test_export_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model(2)
    with pytest.raises(UsageError, match="opset 5 is not supported"):
        export_onnx(model, tmp_path / "a.onnx", opset=5)
    with pytest.raises(UsageError, match="does not exist"):
        export_onnx(model, tmp_path / "missing" / "a.onnx")
    with pytest.raises(UsageError, match="must end in .onnx"):
        export_onnx(model, tmp_path / "a.bin")
    (tmp_path / "there.onnx").write_bytes(b"mine")
    with pytest.raises(UsageError, match="exists"):
        export_onnx(model, tmp_path / "there.onnx")
    assert (tmp_path / "there.onnx").read_bytes() == b"mine"
    # a verification failure writes nothing
    monkeypatch.setattr(onnx_export, "verify", lambda *a, **k: 0.5)
    with pytest.raises(OnnxError, match="verification failed"):
        export_onnx(model, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
    assert not list(tmp_path.glob(".bad.onnx*"))  # nor a temporary file


def test_checker_failure_is_reported() -> None:
    broken = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Conv", ["input", "nowhere"], ["output"])],
            "g",
            [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
            [onnx.helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, None)],
        )
    )
    with pytest.raises(OnnxError, match="fails the ONNX checker"):
        onnx_export._finish(broken.SerializeToString(), {}, "")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback only happens without a GPU")
def test_provider_fallback_note(tiny_onnx: Path, tmp_path: Path) -> None:
    up = OnnxUpscaler(tiny_onnx, device="cuda")
    assert up.provider == "CPUExecutionProvider"
    assert len(up.notes) == 1 and "falling back to the CPU" in up.notes[0]
    assert OnnxUpscaler(tiny_onnx, device="auto").notes == []
    src = tmp_path / "p.png"
    Image.fromarray(make_photo(12, 14)).save(src)
    code, out = run("upscale", src, "-m", tiny_onnx, "--device", "cuda", "-o", tmp_path / "o.png")
    assert code == 0, out
    assert "falling back to the CPU" in " ".join(out.split())


def test_foreign_onnx_model_scale_is_probed(tmp_path: Path) -> None:
    """An image-to-image .onnx made elsewhere (no srgan-cli metadata) still runs, with a note."""
    model = tiny_model(2)
    path = tmp_path / "other.onnx"
    export_onnx(model, path)
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(path))
    up = OnnxUpscaler(path, device="cpu")
    assert up.scale == 2 and not up.info.has_srgan_metadata
    assert "no srgan-cli metadata" in up.notes[0]


def test_backend_parity_through_cli(weights_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "photo.png"
    Image.fromarray(make_photo(33, 47)).save(src)
    code, out = run("export-onnx", "-m", "tiny_x4", "-o", tmp_path / "tiny_x4.onnx", "--json")
    assert code == 0, out
    report = json.loads(out[out.index("{") :])
    assert report["max_abs_diff"] < 1e-4 and report["verified_shapes"] == [[1, 3, 40, 56], [2, 3, 27, 33]]
    code, out = run("export-onnx", "-m", "tiny_x4", "-o", tmp_path / "tiny_x4.onnx")
    assert code == 2 and "exists" in out

    outputs = {}
    for name, args in {
        "torch": ("-m", "tiny_x4"),
        "onnx_file": ("-m", tmp_path / "tiny_x4.onnx"),
        "onnx_flag": ("--onnx", tmp_path / "tiny_x4.onnx"),
        "onnx_cached": ("-m", "tiny_x4", "--backend", "onnx"),
    }.items():
        dst = tmp_path / f"{name}.png"
        code, out = run("upscale", src, *args, "--device", "cpu", "-o", dst, "--json")
        assert code == 0, out
        summary = json.loads(out[out.index("{") :])
        assert summary["backend"] == ("torch" if name == "torch" else "onnx")
        outputs[name] = np.asarray(Image.open(dst)).astype(int)
    for name, pixels in outputs.items():
        assert pixels.shape == (132, 188, 3)
        assert np.abs(pixels - outputs["torch"]).max() <= 1, name  # at most 1/255 apart
    assert list((tmp_path / "cache" / "onnx").glob("tiny_x4-*-fp32-*.onnx"))

    code, out = run(
        "upscale", src, "-m", tmp_path / "tiny_x4.onnx", "--backend", "torch", "-o", tmp_path / "x.png"
    )
    assert code == 2 and "torch backend needs weights" in " ".join(out.split())
    code, out = run("eval", "--data", tmp_path, "-m", "tiny_x4", "-m", tmp_path / "tiny_x4.onnx", "--json")
    assert code == 0, out
    results = json.loads(out[out.index("{") :])["results"]
    assert [r["method"] for r in results][0] == "bicubic" and len(results) == 3
    assert abs(results[1]["psnr"] - results[2]["psnr"]) < 0.05


def test_int8_export(tmp_path: Path) -> None:
    model = tiny_model(2, global_skip=True)
    images = [make_photo(48, 40, seed=i).astype(np.float32) / 255 for i in range(4)]
    report = quantize_int8(model, tmp_path / "q.onnx", calibration_crops(images, size=32))
    assert report.precision == "int8" and report.psnr_vs_fp32 is not None and report.psnr_vs_fp32 >= 30
    up = OnnxUpscaler(tmp_path / "q.onnx", device="cpu")
    assert up.info.precision == "int8"
    proto = onnx.load(str(tmp_path / "q.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    assert up(images[0][:20, :24]).shape == (40, 48, 3)


def test_export_onnx_cli_int8_needs_calibration(weights_dir: Path, tmp_path: Path) -> None:
    code, out = run("export-onnx", "-m", "tiny_x4", "--int8", "-o", tmp_path / "q.onnx")
    assert code == 2 and "--calibrate" in out
    code, out = run("export-onnx", "-m", "tiny_x4", "--static", "abc")
    assert code == 2 and "HEIGHTxWIDTH" in out


def test_benchmark_upscale_json(weights_dir: Path) -> None:
    code, out = run(
        "benchmark", "upscale", "-m", "tiny_x4", "--size", "16x12", "--runs", "1", "--warmup", "0",
        "--device", "cpu", "--json",
    )  # fmt: skip
    assert code == 0, out
    rows = json.loads(out[out.index("[") :])
    assert [r["backend"] for r in rows] == ["torch", "onnx"]
    for r in rows:
        assert r["input_size"] == [16, 12] and r["output_size"] == [64, 48] and r["runs"] == 1
        assert r["ms_per_image"] > 0 and r["output_mp_per_s"] > 0 and r["reference_gflops"] > 0
        assert r["fraction_of_reference"] > 0 and r["gflop_per_output_mp"] > 0
        assert r["peak_memory_mb"] > 0 and r["precision"] == "fp32"


def test_bad_onnx_files_exit_2(tmp_path: Path) -> None:
    src = tmp_path / "p.png"
    Image.fromarray(make_photo(12, 14)).save(src)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    code, out = run("upscale", src, "-m", tmp_path / "junk.onnx", "-o", tmp_path / "o.png")
    assert code == 2 and "cannot load this model" in " ".join(out.split())
    code, out = run("upscale", src, "-m", tmp_path / "missing.onnx", "-o", tmp_path / "o.png")
    assert code == 2 and "not found" in out
    assert not (tmp_path / "o.png").exists()


def test_loader_refuses_mismatched_precision(tiny_onnx: Path) -> None:
    with pytest.raises(UsageError, match="precision is fixed"):
        build_upscaler(str(tiny_onnx), device="cpu", precision="fp16")
    with pytest.raises(UsageError, match="torch backend only"):
        build_upscaler(str(tiny_onnx), device="cpu", compile=True)


def test_upscale_sharded_under_torchrun(weights_dir: Path, tmp_path: Path) -> None:
    """Two processes split a folder; the main one reports every file; a rerun skips them all."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(make_photo(10 + i, 12, seed=i)).save(folder / f"im{i}.png")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "srgan_cli", "upscale", str(folder), "-o", str(tmp_path / "out"), "-m", "tiny_x4",
        "--device", "cpu", "--json",
    ]  # fmt: skip
    env = {**os.environ, weights.ENV_DIR: str(weights_dir), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert summary["processes"] == 2 and summary["ok"] == 5
    assert sorted(Path(r["input"]).name for r in summary["results"]) == [f"im{i}.png" for i in range(5)]
    assert len(list((tmp_path / "out").glob("*.png"))) == 5
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout[again.stdout.index("{") :])["skipped"] == 5


def test_loader_fast_flag_reaches_the_torch_upscaler(weights_dir: Path) -> None:
    fast = build_upscaler("tiny_x4", device="cpu").upscaler
    plain = build_upscaler("tiny_x4", device="cpu", fast=False).upscaler
    assert fast.fast and not plain.fast  # type: ignore[attr-defined]


def test_int8_output_stage_stays_float(tmp_path: Path) -> None:
    export_onnx(tiny_model(2, global_skip=True), tmp_path / "f.onnx")
    stage = onnx_export.output_stage(onnx.load(str(tmp_path / "f.onnx")))
    ops = {n.op_type for n in onnx.load(str(tmp_path / "f.onnx")).graph.node if n.name in stage}
    assert {"Add", "Conv", "DepthToSpace"} <= ops and "PRelu" not in ops


def _onnx_with_metadata(path: Path, node: str, scale_meta: str | None) -> Path:
    """A one-node model over NCHW RGB (Identity, or an x2 nearest Resize) tagged as ours with any scale."""
    import onnx
    from onnx import TensorProto, helper

    dyn = ["batch", 3, "height", "width"]
    inits = []
    if node == "Identity":
        nodes = [helper.make_node("Identity", ["input"], ["output"])]
    else:
        scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
        inits.append(scales)
        nodes = [helper.make_node("Resize", ["input", "", "scales"], ["output"], mode="nearest")]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, dyn)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if scale_meta is not None:
        helper.set_model_props(model, {"srgan_cli.scale": scale_meta, "srgan_cli.arch": "srresnet"})
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("scale", ["4", "0", "-3", "1000", "two"])
def test_onnx_metadata_that_disagrees_with_the_model_is_refused(tmp_path: Path, scale: str) -> None:
    src = tmp_path / "p.png"
    Image.fromarray(make_photo(32, 32)).save(src)
    model = _onnx_with_metadata(tmp_path / "liar.onnx", "Identity", scale)
    code, out = run("upscale", src, "-m", model, "-o", tmp_path / "o.png")
    assert code in (1, 2) and "Traceback" not in out, out
    assert "upscales x1" in out or "not an integer upscale" in out or "corrupt srgan-cli metadata" in out, out
    assert not (tmp_path / "o.png").exists()
    honest = _onnx_with_metadata(tmp_path / "x2.onnx", "Resize", "2")
    code, out = run("upscale", src, "-m", honest, "-o", tmp_path / "o.png")
    assert code == 0, out
    with Image.open(tmp_path / "o.png") as im:
        assert im.size == (64, 64)
