"""ONNX export of a super-resolution model: dynamic shapes, self-describing metadata, verification.

The exported graph is the fused inference form (runtime/fused.py), so ONNX Runtime gets the same
fast shapes as the torch backend. Its metadata (`srgan_cli.*` keys) says everything a deployment
in another language needs: scale, input range and layout, precision, the architecture config and
where the weights came from (docs/onnx.md).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_open
from ..errors import OnnxError, UsageError
from ..version import __version__
from .fused import fuse

MIN_OPSET = 11  # Pad with edge mode and DepthToSpace CRD need 11
DEFAULT_OPSET = 17
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
INPUT_NAME, OUTPUT_NAME = "input", "output"
META_PREFIX = "srgan_cli."


def max_opset() -> int:
    """The newest opset this torch's exporter can write."""
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET

        return int(ONNX_MAX_OPSET)
    except (ImportError, AttributeError):  # pragma: no cover - very old or very new torch
        return 17


@dataclass
class ExportReport:
    path: str
    opset: int
    precision: str  # fp32, fp16 or int8
    dynamic: bool  # batch, height and width dynamic (False: --static HxW)
    input_shape: list[int | str]
    verified_shapes: list[list[int]]  # input shapes run through ONNX Runtime against PyTorch
    max_abs_diff: float  # over every verified shape; nan when verification was skipped
    tolerance: float
    size_mb: float
    seconds: float
    psnr_vs_fp32: float | None = None  # INT8 only: dB against the fp32 model on the calibration crops

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def onnx_metadata(
    *, arch: str, config: dict[str, Any], scale: int, precision: str, source: dict[str, Any]
) -> dict[str, str]:
    """The `srgan_cli.*` metadata_props every exported model carries (all values are strings)."""
    meta = {
        "format": "srgan-cli-onnx/1",
        "producer_version": __version__,
        "arch": arch,
        "config": json.dumps(config, sort_keys=True),
        "scale": str(scale),
        "precision": precision,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_layout": "NCHW",
        "channel_order": "RGB",
        "input_range": "0..1",
        "output_range": "0..1 (clamp; values slightly outside occur)",
        "input_dtype": "float16" if precision == "fp16" else "float32",
        "output_shape": f"(N, 3, {scale}*H, {scale}*W)",
        "source": json.dumps(source, sort_keys=True),
    }
    return {META_PREFIX + k: v for k, v in meta.items()}


# A static export runs the model once at its shape, in PyTorch and in ONNX Runtime, on the CPU: a
# fixed shape is a tile size (a static model upscales larger images window by window), so its
# output is capped at 4096 x 4096 pixels, e.g. --static 1024x1024 at x4 (a few GB of activations).
MAX_STATIC_OUTPUT_PIXELS = 4096 * 4096
MIN_STATIC_SIDE = 8


def parse_static(text: str) -> tuple[int, int]:
    """'HxW' (e.g. 256x256) -> (H, W); sides of at least 8, and no more pixels than a static
    export can run (`check_static` checks the output once the scale is known)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--static {text!r}: expected HEIGHTxWIDTH, e.g. 256x256") from None
    check_static((h, w), None)
    return h, w


def check_static(static: tuple[int, int], scale: int | None) -> None:
    """Refuse a fixed input shape whose sides are under 8 pixels or whose output (x `scale`; None:
    not known yet, the input alone) is over MAX_STATIC_OUTPUT_PIXELS, before anything is allocated."""
    h, w = static
    shape = f"{h}x{w}"
    if h < MIN_STATIC_SIDE or w < MIN_STATIC_SIDE:
        raise UsageError(f"--static {shape}: height and width must be at least {MIN_STATIC_SIDE}")
    factor = scale or 1
    if h * w * factor * factor > MAX_STATIC_OUTPUT_PIXELS:
        side = math.isqrt(MAX_STATIC_OUTPUT_PIXELS // (factor * factor)) // 8 * 8
        if scale is None:
            side = min(side, 1024)  # a tile size that fits the cap at x4
        made = f" at x{scale} makes a {h * scale}x{w * scale} output" if scale else " is too large"
        raise UsageError(
            f"--static {shape}{made}: a static export runs the model once at its shape on the CPU, "
            f"so it is limited to {MAX_STATIC_OUTPUT_PIXELS / 1e6:.1f} MP of output, "
            f"e.g. --static {side}x{side}",
            hint="a static model upscales larger images tile by tile: its shape is the tile size",
        )


def size_needs(config: dict[str, Any]) -> tuple[int, int]:
    """(multiple, minimum) of an input side for a community model's config (spandrel's size
    requirements, as third_party.summary writes them: "SizeRequirements(minimum=16, multiple_of=8,
    ...)"); (1, 0) for ours and for a config that says nothing."""
    text = str(config.get("size_requirements", ""))
    multiple = re.search(r"multiple_of=(\d+)", text)
    minimum = re.search(r"minimum=(\d+)", text)
    return (max(int(multiple.group(1)), 1) if multiple else 1), (int(minimum.group(1)) if minimum else 0)


def fit_side(side: int, multiple: int, minimum: int) -> int:
    """The smallest side >= `side` and >= `minimum` that is a multiple of `multiple`."""
    return max(-(-side // multiple) * multiple, -(-minimum // multiple) * multiple)


def _check_opset(opset: int) -> None:
    top = max_opset()
    if not MIN_OPSET <= opset <= top:
        raise UsageError(
            f"opset {opset} is not supported: use {MIN_OPSET} to {top} (default {DEFAULT_OPSET})"
        )


def _cpu_session(data: bytes | str | Path) -> Any:
    """An ONNX Runtime CPU session on model bytes or a file, quiet except for errors."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    model = data if isinstance(data, bytes) else str(data)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _check_target(path: Path, overwrite: bool) -> None:
    if path.suffix.lower() != ".onnx":
        raise UsageError(f"{path}: the output file name must end in .onnx")
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give a file name ending in .onnx")
    if path.exists() and not overwrite:
        raise UsageError(f"{path} exists", hint="pass --overwrite to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise UsageError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {path}: folder {parent} is not writable")


def _trace(model: nn.Module, dummy: torch.Tensor, opset: int, dynamic: bool) -> bytes:
    """torch -> ONNX bytes with the TorchScript exporter (fast, and needs no onnxscript)."""
    axes = (
        {
            INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
            OUTPUT_NAME: {0: "batch", 2: "out_height", 3: "out_width"},
        }
        if dynamic
        else None
    )
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            model,
            (dummy,),
            buf,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamic_axes=axes,
            do_constant_folding=True,
            dynamo=False,
        )
    return buf.getvalue()


def _finish(data: bytes, metadata: dict[str, str], doc: str) -> Any:
    """Attach metadata, run the checker and shape inference; the ModelProto."""
    import onnx

    proto = onnx.load_from_string(data)
    proto.producer_name, proto.producer_version, proto.doc_string = "srgan-cli", __version__, doc
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    try:
        onnx.checker.check_model(proto, full_check=True)
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise OnnxError(f"the exported model fails the ONNX checker: {exc}") from exc
    return proto


def to_fp16(proto: Any) -> Any:
    """An fp32 ModelProto with every float tensor, input and output turned into float16.

    Converting the graph is exact and quick; tracing the model in fp16 instead runs half-precision
    convolutions on the CPU, which takes minutes for nothing. Our graphs hold only Conv, PRelu, Add,
    Pad, DepthToSpace and constants, all of which have float16 kernels in ONNX Runtime. Community
    models may hold Resize (or Upsample), whose scales and region inputs must stay float32; other
    ops that have no float16 kernel make the export's verification fail, and nothing is written.
    """
    import onnx
    from onnx import numpy_helper

    float_type, half_type = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16

    def convert(tensor: Any) -> None:
        if tensor.data_type == float_type:
            half = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name)
            tensor.CopyFrom(half)

    keep = {
        name for node in proto.graph.node if node.op_type in ("Resize", "Upsample") for name in node.input[1:]
    }
    for init in proto.graph.initializer:
        if init.name not in keep:
            convert(init)
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.output[0] in keep:
            continue
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                convert(attr.t)
            if node.op_type == "Cast" and attr.name == "to" and attr.i == float_type:
                attr.i = half_type
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        if value.type.tensor_type.elem_type == float_type and value.name not in keep:
            value.type.tensor_type.elem_type = half_type
    return proto


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_open(path) as fh:
        fh.write(data)


def verify(
    data: bytes | str | Path,
    reference: nn.Module,
    shapes: Iterable[tuple[int, int, int, int]],
    *,
    input_dtype: np.dtype,
    seed: int = 0,
) -> float:
    """Largest |ONNX Runtime (CPU) - PyTorch fp32| over random images of the given shapes."""
    session = _cpu_session(data)
    rng = np.random.default_rng(seed)
    worst = 0.0
    reference = reference.eval().float()
    for shape in shapes:
        x = rng.random(shape, dtype=np.float32)
        with torch.inference_mode():
            want = reference(torch.from_numpy(x)).numpy()
        try:
            got = session.run([OUTPUT_NAME], {INPUT_NAME: x.astype(input_dtype)})[0].astype(np.float32)
        except Exception as exc:  # a graph traced at one size that cannot run at another
            first = str(exc).strip().splitlines()[0][:200]
            raise OnnxError(
                f"the exported model does not run at {shape[2]}x{shape[3]} in ONNX Runtime ({first}); "
                "nothing was written",
                hint="this architecture may only export at one size: try --static HxW",
            ) from None
        if got.shape != want.shape:
            raise OnnxError(f"ONNX output shape {got.shape} != PyTorch {want.shape} for input {shape}")
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    static: tuple[int, int] | None = None,
    overwrite: bool = False,
    source: dict[str, Any] | None = None,
    check: bool = True,
    quick: bool = False,
) -> ExportReport:
    """Export an SRResNet-like model (with `.arch` and `.config`) to `path`, verified.

    Dynamic batch, height and width unless `static` (H, W) is given. fp16 exports half-precision
    weights and float16 input/output. Verification runs the exported file in ONNX Runtime (CPU) on
    two random images of different shapes (one for a static model) and compares it with the
    PyTorch model in fp32; above the tolerance (fp32 1e-4, fp16 1e-2) OnnxError is raised and
    nothing is written. The file is written atomically. `quick` traces and verifies a dynamic
    export at sides about half as long (a quarter of the work: a deep community model exported on
    the fly, runtime/community_onnx.py), still two shapes and two batch sizes.
    """
    start = time.perf_counter()
    path = Path(path)
    _check_opset(opset)
    _check_target(path, overwrite)
    precision = "fp16" if fp16 else "fp32"
    config = model.config.to_dict()  # type: ignore[union-attr, operator]
    scale = int(config["scale"])
    if static is not None:
        check_static(static, scale)  # before the dummy input and the trace allocate anything
    reference = model.eval().float()
    # a community model that needs sides of a multiple (or a minimum) has its input padded by the
    # upscaler (onnx_backend), so it is traced and verified at such sides
    multiple, minimum = size_needs(config)
    h, w = static or (fit_side(32 if quick else 64, multiple, minimum),) * 2
    dummy = torch.rand(1, 3, h, w)
    meta = onnx_metadata(
        arch=str(model.arch), config=config, scale=scale, precision=precision, source=source or {}
    )
    doc = f"srgan-cli x{scale} super-resolution: input {INPUT_NAME} NCHW RGB in [0, 1]"
    try:
        raw = _trace(fuse(reference), dummy, opset, static is None)
    except (RuntimeError, torch.onnx.errors.OnnxExporterError) as exc:  # type: ignore[attr-defined]
        raise OnnxError(f"export failed at opset {opset}: {str(exc).splitlines()[0]}") from exc
    if fp16:
        import onnx

        raw = to_fp16(onnx.load_from_string(raw)).SerializeToString()
    proto = _finish(raw, meta, doc)
    data = proto.SerializeToString()

    sides = [(1, 20, 28), (2, 14, 17)] if quick else [(1, 40, 56), (2, 27, 33)]
    shapes = (
        [(1, 3, h, w)]
        if static
        else [(n, 3, fit_side(a, multiple, minimum), fit_side(b, multiple, minimum)) for n, a, b in sides]
    )
    worst, tol = float("nan"), TOLERANCE[precision]
    if check:
        worst = verify(data, reference, shapes, input_dtype=np.dtype(np.float16 if fp16 else np.float32))
        if not worst <= tol:
            raise OnnxError(
                f"verification failed: ONNX Runtime and PyTorch differ by {worst:.3g} (tolerance {tol:g}); "
                f"{path} was not written",
                hint="report this with the model and opset; a different --opset may help",
            )
    _write_atomic(path, data)
    input_shape: list[int | str] = [1, 3, h, w] if static else ["batch", 3, "height", "width"]
    return ExportReport(
        path=str(path),
        opset=opset,
        precision=precision,
        dynamic=static is None,
        input_shape=input_shape,
        verified_shapes=[list(s) for s in shapes] if check else [],
        max_abs_diff=worst,
        tolerance=tol,
        size_mb=round(len(data) / 2**20, 3),
        seconds=round(time.perf_counter() - start, 2),
    )


def calibration_crops(
    images: Iterable[np.ndarray], *, size: int = 128, limit: int = 32, seed: int = 0
) -> list[np.ndarray]:
    """(1, 3, size, size) float32 crops of (H, W, 3) images in [0, 1], at seeded random positions:
    the inputs an INT8 model's activation ranges are measured on."""
    rng = np.random.default_rng(seed)
    crops = []
    for img in images:
        h, w = img.shape[:2]
        ch, cw = min(size, h), min(size, w)
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crops.append(
            np.ascontiguousarray(img[y : y + ch, x : x + cw].transpose(2, 0, 1)[None], dtype=np.float32)
        )
        if len(crops) >= limit:
            break
    return crops


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.clip(a, 0, 1) - np.clip(b, 0, 1)) ** 2))
    return float("inf") if mse == 0 else 10 * float(np.log10(1.0 / mse))


def output_stage(proto: Any) -> list[str]:
    """Names of the nodes after the last activation on every path to the output: the output conv,
    its pixel shuffle, the bicubic skip and the final add. INT8 keeps them in float: quantising
    the image-valued output costs 3.5 dB on the val photos, keeping them costs 0.02 dB."""
    producer = {out: node for node in proto.graph.node for out in node.output}
    stage: list[str] = []
    todo = [o.name for o in proto.graph.output]
    seen: set[str] = set()
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in seen or node.op_type == "PRelu":
            continue
        seen.add(node.name)
        stage.append(node.name)
        todo.extend(node.input)
    return stage


INT8_MIN_PSNR = 30.0  # dB against the fp32 model on the calibration crops: below this it is broken


def quantize_int8(
    model: nn.Module,
    path: str | os.PathLike[str],
    calibration: list[np.ndarray],
    *,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    source: dict[str, Any] | None = None,
) -> ExportReport:
    """Static INT8 quantisation with ONNX Runtime's tools, for fast CPU inference.

    The fp32 export is quantised in QDQ form: weights per channel as int8, activations as uint8
    with ranges measured on `calibration` ((1, 3, h, w) float32 arrays, e.g. calibration_crops of
    the user's photos); the output stage stays in float (`output_stage`). The verification is the
    PSNR of the INT8 output against the fp32 PyTorch output on the calibration crops (the largest
    difference is reported as `max_abs_diff` too); under INT8_MIN_PSNR nothing is written.
    """
    start = time.perf_counter()
    path = Path(path)
    if not calibration:
        raise UsageError(
            "INT8 calibration needs at least one image", hint="give --calibrate a folder of photos"
        )
    _check_opset(opset)
    _check_target(path, overwrite)
    reference = model.eval().float()
    raw = _trace(fuse(reference), torch.rand(1, 3, 64, 64), opset, True)

    quantized = _quantize_qdq(raw, calibration)
    config = model.config.to_dict()  # type: ignore[union-attr, operator]
    scale = int(config["scale"])
    meta = onnx_metadata(
        arch=str(model.arch), config=config, scale=scale, precision="int8", source=source or {}
    )
    doc = f"srgan-cli x{scale} super-resolution (INT8 QDQ): input {INPUT_NAME} NCHW RGB in [0, 1]"
    data = _finish(quantized, meta, doc).SerializeToString()

    worst, psnr = _compare_with_fp32(_cpu_session(data), reference, calibration[:8])
    if psnr < INT8_MIN_PSNR:
        raise OnnxError(
            f"INT8 verification failed: {psnr:.1f} dB against fp32 on the calibration crops "
            f"(at least {INT8_MIN_PSNR:g} needed); {path} was not written",
            hint="calibrate on more, and more typical, photos",
        )
    _write_atomic(path, data)
    return ExportReport(
        path=str(path),
        opset=opset,
        precision="int8",
        dynamic=True,
        input_shape=["batch", 3, "height", "width"],
        verified_shapes=[list(c.shape) for c in calibration[:8]],
        max_abs_diff=worst,
        tolerance=float("nan"),
        size_mb=round(len(data) / 2**20, 3),
        seconds=round(time.perf_counter() - start, 2),
        psnr_vs_fp32=round(psnr, 2),
    )


def _quantize_qdq(raw: bytes, calibration: list[np.ndarray]) -> bytes:
    """The fp32 ONNX model `raw` quantised statically in QDQ form, activation ranges from
    `calibration`; the output stage stays in float."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self.items, None)
            return None if item is None else {INPUT_NAME: item}

    with tempfile.TemporaryDirectory(prefix="srgan-int8-") as tmp:
        fp32_file, int8_file = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        fp32_file.write_bytes(raw)
        quantize_static(
            str(fp32_file),
            str(int8_file),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=output_stage(onnx.load_from_string(raw)),
        )
        return int8_file.read_bytes()


def _compare_with_fp32(session: Any, reference: nn.Module, crops: list[np.ndarray]) -> tuple[float, float]:
    """(largest absolute difference, mean PSNR) of the session's output against `reference`'s."""
    worst, psnrs = 0.0, []
    for crop in crops:
        with torch.inference_mode():
            want = reference(torch.from_numpy(crop)).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: crop})[0]
        worst = max(worst, float(np.abs(got - want).max()))
        psnrs.append(_psnr(got, want))
    return worst, float(np.mean(psnrs))
