"""`srgan export-onnx`: weights -> a verified .onnx file with dynamic shapes and metadata."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from .. import archs, weights
from ..errors import ForeignWeights, UsageError
from ..runtime.loader import check_denoise
from ..runtime.onnx_export import DEFAULT_OPSET, ExportReport, export_onnx, parse_static
from ..sr.models import with_restore_strength
from .common import JsonOpt, console, guard, stdout
from .results import print_result


def _default_output(
    name: str, fp16: bool, int8: bool, static: tuple[int, int] | None, denoise: float | None = None
) -> Path:
    tag = f"_denoise{denoise:g}" if denoise is not None else ""
    tag += "_int8" if int8 else "_fp16" if fp16 else ""
    if static:
        tag += f"_{static[0]}x{static[1]}"
    return Path(f"{name}{tag}.onnx")


def _calibration(folder: Path, limit: int) -> list:  # list of (1, 3, h, w) float32 arrays
    from ..errors import ImageError
    from ..imageio import READABLE_SUFFIXES, read_image
    from ..runtime.onnx_export import calibration_crops

    if not folder.is_dir():
        raise UsageError(f"--calibrate {folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in READABLE_SUFFIXES)
    images = []
    for file in files[:limit]:
        try:
            image = read_image(file)
        except ImageError as exc:
            console.print(f"[yellow]skipped[/] {exc.message}")
            continue
        pixels = image.pixels
        images.append(pixels.repeat(3, axis=2) if image.is_gray else pixels)
    if not images:
        raise UsageError(f"--calibrate {folder}: no readable images found")
    return calibration_crops(images, limit=limit)


def export_onnx_cmd(
    model: Annotated[
        str, typer.Option("-m", "--model", help="Shipped weights name or a .safetensors/.pth path.")
    ] = weights.DEFAULT_MODEL,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o", "--output", help="The .onnx file. Default: MODEL[_denoiseS][_fp16|_int8][_HxW].onnx here."
        ),
    ] = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset version.")] = DEFAULT_OPSET,
    fp16: Annotated[
        bool, typer.Option("--fp16", help="Half-precision weights and float16 input/output (for GPUs).")
    ] = False,
    static: Annotated[
        str | None,
        typer.Option(
            "--static",
            metavar="HxW",
            help="Fixed input shape (batch 1), e.g. 256x256, for runtimes that need one. "
            "Default: dynamic batch, height and width.",
        ),
    ] = None,
    int8: Annotated[
        bool,
        typer.Option("--int8", help="Static INT8 quantisation for fast CPU inference (needs --calibrate)."),
    ] = False,
    calibrate: Annotated[
        Path | None,
        typer.Option("--calibrate", metavar="DIR", help="Photos to measure INT8 activation ranges on."),
    ] = None,
    calibrate_limit: Annotated[
        int, typer.Option("--calibrate-limit", min=1, help="Use at most this many calibration photos.")
    ] = 32,
    denoise: Annotated[
        float | None,
        typer.Option(
            "--denoise",
            min=0.0,
            max=1.0,
            metavar="S",
            help="For a model with a restoration front-end (srgan_x4_denoise): export it applying S (0-1) "
            "of its correction, as `srgan upscale --denoise S` does.",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Export weights to ONNX, then check that ONNX Runtime and PyTorch agree on random images.

    Exit code 1 if they differ by more than the tolerance (fp32 1e-4, fp16 1e-2); nothing is written then.
    """
    with guard(as_json):
        if int8 and (fp16 or static):
            raise UsageError("--int8 cannot be combined with --fp16 or --static")
        if int8 and calibrate is None:
            raise UsageError("--int8 needs --calibrate DIR (a few dozen typical photos)")
        if calibrate is not None and not int8:
            raise UsageError("--calibrate is only used with --int8")
        shape = parse_static(static) if static else None
        net, name, source = _model_to_export(model, denoise)
        path = output or _default_output(name, fp16, int8, shape, denoise)
        if int8:
            from ..runtime.onnx_export import quantize_int8

            assert calibrate is not None
            crops = _calibration(calibrate, calibrate_limit)
            with console.status(f"calibrating INT8 on {len(crops)} crop(s) of {calibrate}"):
                report = quantize_int8(net, path, crops, opset=opset, overwrite=overwrite, source=source)
        else:
            with console.status(f"exporting {name} to {path}"):
                report = export_onnx(
                    net,
                    path,
                    opset=opset,
                    fp16=fp16,
                    static=shape,
                    overwrite=overwrite,
                    source=source,
                )
    if as_json:
        payload = report.to_dict()
        for key in ("max_abs_diff", "tolerance"):
            if isinstance(payload[key], float) and math.isnan(payload[key]):
                payload[key] = None
        stdout.print(json.dumps(payload, indent=2), markup=False, highlight=False)
        return
    _print_report(report)


def _model_to_export(model: str, denoise: float | None = None) -> tuple[Any, str, dict[str, Any]]:
    """(network, name, source facts) of our weights, or of a community model (spandrel); with
    `denoise`, our model's restoration front-end scaled to that strength."""
    try:
        loaded = archs.load(model, expect_arch="srresnet")
    except ForeignWeights:
        if denoise is not None:
            raise UsageError("--denoise needs this project's weights with a restoration front-end") from None
        from ..runtime.third_party import ExportableModel, describe

        path = weights.resolve(model)
        net = ExportableModel(describe(path))
        return net, path.name.rsplit(".", 1)[0], {"weights": path.name, "architecture": net.arch}
    source = {
        "weights": loaded.info.name,
        "trained_on": loaded.info.trained_on,
        "metrics": loaded.info.metrics,
    }
    if denoise is None:
        return loaded.model, loaded.info.name, source
    check_denoise(denoise, loaded.info, "sr", "torch", onnx=False)  # upscale --denoise's own checks
    return with_restore_strength(loaded.model, denoise), loaded.info.name, {**source, "denoise": denoise}


def _print_report(r: ExportReport) -> None:
    """The result on stdout: the file written and how it was checked; how to run it on stderr."""
    shape = "x".join(str(d) for d in r.input_shape)
    print_result(
        f"[green]wrote[/] {escape(str(r.path))} ({r.size_mb:.2f} MB, opset {r.opset}, {r.precision}, "
        f"input {shape})"
    )
    checked = ", ".join("x".join(str(d) for d in s) for s in r.verified_shapes)
    if r.psnr_vs_fp32 is not None:
        print_result(
            f"INT8 vs fp32 PyTorch on {len(r.verified_shapes)} calibration crop(s): "
            f"{r.psnr_vs_fp32:.2f} dB PSNR, max |diff| {r.max_abs_diff:.3g}"
        )
    else:
        print_result(
            f"verified against PyTorch on {checked}: max |diff| {r.max_abs_diff:.2e} "
            f"[green](tolerance {r.tolerance:g})[/]"
        )
    console.print(f"[dim]{r.seconds:.1f}s; run it with:[/] srgan upscale IMAGE -m {escape(str(r.path))}")
