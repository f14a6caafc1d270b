"""ONNX Runtime upscaler: the same interface, tiling and image handling as the torch backend."""

from __future__ import annotations

import ctypes.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..devices import free_memory_bytes
from ..errors import NonFiniteOutput, OnnxError, UsageError, WeightsFormatError, WeightsNotFound
from .onnx_export import META_PREFIX, fit_side, size_needs
from .tiling import auto_tile, fixed_window_apply, shrink_on_oom, tiled_apply

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
_SHORT = {CPU: "CPU", CUDA: "CUDA", TENSORRT: "TensorRT"}


@dataclass
class OnnxModelInfo:
    """What an .onnx file says about itself (srgan-cli metadata, or probed for foreign models)."""

    path: Path
    name: str
    scale: int
    arch: str
    config: dict[str, Any]
    precision: str  # fp32, fp16 or int8
    input_name: str
    output_name: str
    input_dtype: np.dtype
    static: tuple[int, int] | None  # (H, W) of a fixed-shape model
    fixed_batch: bool  # the batch dimension is fixed too (our static exports: 1)
    metadata: dict[str, str] = field(default_factory=dict)
    has_srgan_metadata: bool = True


def _ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - a dependency, but a broken install happens
        raise OnnxError(
            "onnxruntime is not installed", hint="pip install onnxruntime (or onnxruntime-gpu)"
        ) from exc
    return ort


def _tensorrt_loadable() -> bool:
    """The TensorRT provider needs libnvinfer; asking for it without the library only adds noise."""
    return ctypes.util.find_library("nvinfer") is not None or any(
        _can_load(f"libnvinfer.so.{v}") for v in (10, 8)
    )


def _can_load(name: str) -> bool:
    try:
        ctypes.CDLL(name)
        return True
    except OSError:
        return False


def _device_index(device: str) -> int:
    return int(device.split(":", 1)[1]) if ":" in device else 0


def _wanted_providers(device: str, available: list[str], path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Providers to ask for, best first, for a --device string."""
    device = device.strip().lower()
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise UsageError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    use_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    wanted: list[tuple[str, dict[str, Any]]] = []
    if use_gpu:
        index = _device_index(device)
        if TENSORRT in available and _tensorrt_loadable():
            cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "srgan-cli" / "tensorrt"
            wanted.append(
                (
                    TENSORRT,
                    {
                        "device_id": index,
                        "trt_fp16_enable": _declares_fp16(path),
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(cache),
                    },
                )
            )
        if CUDA in available:
            wanted.append((CUDA, {"device_id": index, "cudnn_conv_algo_search": "EXHAUSTIVE"}))
    wanted.append((CPU, {}))
    return wanted


def _declares_fp16(path: Path) -> bool:
    """Whether the model's input is float16 (read from the file, before any session exists)."""
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        return proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    except Exception:  # unreadable files are reported by ONNX Runtime itself just after
        return False


def _dtype(type_text: str) -> np.dtype:
    return np.dtype(np.float16) if "float16" in type_text else np.dtype(np.float32)


class OnnxUpscaler:
    """Upscale float32 (H, W, 3) arrays in [0, 1] with an exported .onnx model.

    Providers: TensorRT (when its library loads), CUDA, then CPU; a GPU that cannot be used gives a
    one-line note in `notes` and the CPU. On the CPU, intra-op threads follow torch's choice
    (physical cores), so both backends use the same cores. On CUDA, inputs and outputs go through
    IO binding. A fixed-shape model is run on windows of exactly its shape (tiling.fixed_window_apply).
    """

    backend = "onnx"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        device: str = "auto",
        tile: int | None = None,
        tile_pad: int | Callable[[], int] = 32,
        threads: int | None = None,
        tile_batch: int | None = None,
    ) -> None:
        ort = _ort()
        self.path = Path(path)
        if not self.path.is_file():
            raise WeightsNotFound(f"ONNX model not found: {self.path}")
        self.notes: list[str] = []
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.intra_op_num_threads = max(1, threads if threads is not None else torch.get_num_threads())
        wanted = _wanted_providers(device, list(ort.get_available_providers()), self.path)
        ort.set_default_logger_severity(4)  # a provider that fails to load is reported by us, once
        try:
            self.session = ort.InferenceSession(
                str(self.path),
                options,
                providers=[p for p, _ in wanted],
                provider_options=[o for _, o in wanted],
            )
        except Exception as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsFormatError(
                f"{self.path}: ONNX Runtime cannot load this model: {text}",
                hint="export it again with `srgan export-onnx`",
            ) from exc
        finally:
            ort.set_default_logger_severity(2)
        got = list(self.session.get_providers())
        missing = [_SHORT[p] for p, _ in wanted if p != CPU and p not in got]
        if missing and not any(p in got for p in (CUDA, TENSORRT)):
            self.notes.append(
                f"ONNX Runtime could not start {' or '.join(missing)} (GPU, driver, CUDA or cuDNN "
                "missing); falling back to the CPU"
            )
        elif device.strip().lower().startswith("cuda") and not missing and len(wanted) == 1:
            self.notes.append("this onnxruntime build has no CUDA provider; falling back to the CPU")
        self.provider = got[0]
        self.gpu_index = _device_index(device.strip().lower())
        self.info = read_onnx_info(self.path, self.session)
        self.scale = self.info.scale
        # a community model's size needs (inputs padded, results cropped, as SpandrelUpscaler does)
        self.multiple, self.minimum = size_needs(self.info.config)
        # a model that tiles itself, or tiles badly, gets the whole image unless a tile is asked for
        tiling = str(self.info.config.get("tiling", "supported")).lower()
        self.tile = tile if tile is not None or tiling == "supported" else 0
        self.tile_pad = tile_pad  # or a function giving it, asked only when an image is cut into tiles
        # where tiles must start: a community export's window or size multiple (its source metadata)
        self.tile_align = _tile_align(self.info.metadata)
        self.tile_batch = tile_batch if tile_batch is not None else (8 if self.on_gpu else 1)
        self.last_tile = 0
        if not self.info.has_srgan_metadata:
            self.notes.append(
                f"{self.path.name} has no srgan-cli metadata: assuming NCHW RGB input in [0, 1]; "
                f"scale x{self.scale} measured"
            )

    @property
    def on_gpu(self) -> bool:
        return self.provider in (CUDA, TENSORRT)

    @property
    def device_name(self) -> str:
        return f"{_SHORT.get(self.provider, self.provider)} (onnxruntime)"

    def _infer(self, x: np.ndarray) -> np.ndarray:
        height, width = x.shape[-2:]
        ph = fit_side(height, self.multiple, self.minimum) - height
        pw = fit_side(width, self.multiple, self.minimum) - width
        if ph or pw:  # reflecting the edge where the image is large enough, as SpandrelUpscaler does
            mode = "reflect" if ph < height and pw < width else "edge"
            x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode=mode)
        x = np.ascontiguousarray(x, dtype=self.info.input_dtype)
        if self.on_gpu:
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.info.input_name, x)
            binding.bind_output(self.info.output_name, "cuda")
            self.session.run_with_iobinding(binding)
            y = binding.copy_outputs_to_cpu()[0]
        else:
            y = self.session.run([self.info.output_name], {self.info.input_name: x})[0]
        want = (x.shape[0], 3, self.scale * x.shape[2], self.scale * x.shape[3])
        if tuple(y.shape) != want:  # a model whose output size depends on more than its input's
            raise OnnxError(
                f"{self.path.name}: gave {list(y.shape)} for a {list(x.shape)} input, not {list(want)}"
            )
        y = y[..., : height * self.scale, : width * self.scale].astype(np.float32, copy=False)
        if not np.isfinite(y).all():  # every tile: it is on the host already (clipping would hide Inf)
            precision = self.info.precision
            hint = (
                None if precision == "fp32" else "use --precision fp32 with weights, or an fp32 .onnx export"
            )
            raise NonFiniteOutput(precision, hint=hint)
        return np.clip(y, 0.0, 1.0)

    def _infer_each(self, x: np.ndarray) -> np.ndarray:
        """A fixed batch-1 model: one image of the batch at a time."""
        return np.concatenate([self._infer(x[i : i + 1]) for i in range(x.shape[0])], axis=0)

    def upscale_array(self, x: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 in [0, 1] -> (N, 3, sH, sW) float32."""
        height, width = x.shape[-2:]
        if self.info.static is not None:  # one window shape, one image at a time
            self.last_tile = min(self.info.static)
            run_one = self._infer if not self.info.fixed_batch else self._infer_each
            pad = self.tile_pad() if callable(self.tile_pad) else self.tile_pad
            return fixed_window_apply(x, run_one, self.scale, self.info.static, pad)
        tile = self.tile
        if tile is None:
            free = free_memory_bytes(
                torch.device("cuda", self.gpu_index) if self.on_gpu else torch.device("cpu")
            )
            elem = 2 if self.info.input_dtype == np.float16 else 4
            n_feats = int(self.info.config.get("n_feats", 64))
            tile = auto_tile(free, height, width, scale=self.scale, n_feats=n_feats, elem_bytes=elem)

        aligned = {"align": self.tile_align} if self.tile_align > 1 else {}

        def attempt(side: int) -> np.ndarray:
            return tiled_apply(
                x, self._infer, self.scale, side, self.tile_pad, batch=self.tile_batch, **aligned
            )

        def is_oom(exc: BaseException) -> bool:
            text = str(exc).lower()
            return "failed to allocate" in text or "out of memory" in text or "bad_alloc" in text

        out, self.last_tile = shrink_on_oom(attempt, tile, max(height, width), is_oom, self.device_name)
        return out

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """(H, W, 3) float32 in [0, 1] -> (sH, sW, 3) float32 in [0, 1]."""
        x = np.ascontiguousarray(pixels.transpose(2, 0, 1)[None], dtype=np.float32)
        return self.upscale_array(x)[0].transpose(1, 2, 0)


def _tile_align(metadata: dict[str, str]) -> int:
    """`tile_align` from an export's source metadata (community models exported by the loader), else 1."""
    try:
        value = json.loads(metadata.get(META_PREFIX + "source", "{}")).get("tile_align", 1)
    except (ValueError, AttributeError):
        return 1
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 1 else 1


def _dim(d: Any) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


def _measure_scale(
    path: Path, session: Any, inp: Any, out: Any, dtype: Any, static: tuple[int, int] | None, batch: int
) -> int:
    """The scale the model really applies: one run on a small (or its fixed-size) input, whose
    output must be an RGB image an integer number of times larger on both sides."""
    probe_hw = static or (16, 16)
    probe = np.zeros((batch, 3, *probe_hw), dtype=dtype)
    try:
        y = session.run([out.name], {inp.name: probe})[0]
    except Exception as exc:
        raise OnnxError(f"{path}: a test run on a {probe_hw[0]}x{probe_hw[1]} input failed: {exc}") from exc
    scale = y.shape[-1] // probe_hw[1] if y.ndim == 4 else 0
    if (
        y.ndim != 4
        or y.shape[1] != 3
        or scale < 1
        or tuple(y.shape[-2:]) != (scale * probe_hw[0], scale * probe_hw[1])
    ):
        raise OnnxError(f"{path}: output shape {list(y.shape)} is not an integer upscale of the input")
    return int(scale)


def read_onnx_info(path: Path, session: Any) -> OnnxModelInfo:
    """Scale, names and shapes: the scale measured by one small run, and for our exports checked
    against the srgan-cli metadata (which also gives the architecture and precision)."""
    meta = dict(session.get_modelmeta().custom_metadata_map)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1:
        raise OnnxError(f"{path}: expected one image input, found {len(inputs)} inputs")
    inp, out = inputs[0], outputs[0]
    shape = list(inp.shape)
    if len(shape) != 4 or (_dim(shape[1]) not in (None, 3)):
        raise OnnxError(f"{path}: input {inp.name} has shape {shape}; an NCHW RGB image input is needed")
    hw = (_dim(shape[2]), _dim(shape[3]))
    static = (hw[0], hw[1]) if hw[0] is not None and hw[1] is not None else None
    dtype = _dtype(inp.type)
    srgan = META_PREFIX + "scale" in meta
    measured = _measure_scale(path, session, inp, out, dtype, static, _dim(shape[0]) or 1)
    if srgan:
        try:
            scale = int(meta[META_PREFIX + "scale"])
            config = json.loads(meta.get(META_PREFIX + "config", "{}"))
        except (ValueError, json.JSONDecodeError) as exc:
            raise OnnxError(f"{path}: corrupt srgan-cli metadata: {exc}") from exc
        if scale != measured:  # the behaviour is what counts; a file that says otherwise is refused
            raise OnnxError(
                f"{path}: its metadata says x{scale}, but the model upscales x{measured}",
                hint="export it again with srgan export-onnx",
            )
        precision = meta.get(META_PREFIX + "precision", "fp16" if dtype == np.float16 else "fp32")
        arch = meta.get(META_PREFIX + "arch", "unknown")
    else:  # a model exported elsewhere: its measured scale
        scale = measured
        config, precision, arch = {}, ("fp16" if dtype == np.float16 else "fp32"), "unknown"
    return OnnxModelInfo(
        path=path,
        name=path.name.removesuffix(".onnx"),
        scale=scale,
        arch=arch,
        config=config,
        precision=precision,
        input_name=inp.name,
        output_name=out.name,
        input_dtype=dtype,
        static=static,
        fixed_batch=_dim(shape[0]) is not None,
        metadata=meta,
        has_srgan_metadata=srgan,
    )
