"""From a model name or path and a backend choice to a ready upscaler (torch or ONNX Runtime)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import archs, weights
from ..blend import Blend, blend_name, describe_blend, load_ours
from ..devices import precision_name, resolve_device, resolve_precision
from ..errors import ArgumentError, ForeignWeights, UsageError
from ..version import __version__
from .ensemble import SelfEnsemble
from .upscaler import Upscaler, check_tiling

BACKENDS = ("auto", "torch", "onnx")
MODES = ("sr", "lapgan", "auto")
ENV_CACHE = "SRGAN_CACHE_DIR"


@dataclass
class ReadyUpscaler:
    upscaler: Upscaler
    name: str  # weights name, or the .onnx file's stem
    scale: int
    backend: str  # torch or onnx
    device: str  # e.g. "cpu", "cuda:0", "CPU (onnxruntime)"
    precision: str  # fp32, fp16, bf16, int8
    arch: str = "unknown"  # architecture and config the model was built from ("unknown" and {} for
    config: dict[str, Any] = field(default_factory=dict)  # an .onnx made elsewhere)
    notes: list[str] = field(default_factory=list)  # one-liners for the user (fallbacks, exports)
    self_ensemble: int = 1  # passes of the geometric self-ensemble (1 = off; with_self_ensemble)


def cache_dir() -> Path:
    """Where exported ONNX files are cached ($SRGAN_CACHE_DIR, else ~/.cache/srgan-cli)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "srgan-cli"


def is_onnx_path(model: str) -> bool:
    return model.lower().endswith(".onnx")


def cached_onnx(model: str, precision: str) -> tuple[Path, bool]:
    """The ONNX export of weights `model` in the cache, exported now if missing; (path, fresh)."""
    from .onnx_export import DEFAULT_OPSET, export_onnx

    info = weights.read_info(model)  # the header only: a cache hit never builds the model
    digest = hashlib.sha256(info.path.read_bytes()).hexdigest()[:16]
    path = cache_dir() / "onnx" / f"{info.name}-{digest}-{precision}-v{__version__}.onnx"
    if path.is_file():
        return path, False
    path.parent.mkdir(parents=True, exist_ok=True)
    source = {"weights": info.name, "sha256": digest}
    net = archs.load(info.path, expect_arch="srresnet").model
    export_onnx(net, path, opset=DEFAULT_OPSET, fp16=precision == "fp16", source=source, overwrite=True)
    return path, True


def build_upscaler(
    model: str,
    *,
    backend: str = "auto",
    onnx: str | os.PathLike[str] | None = None,
    device: str = "auto",
    precision: str = "auto",
    tile: int | None = None,
    tile_pad: int | None = None,
    compile: bool = False,
    tile_batch: int | None = None,
    expect_scale: int | None = None,
    fast: bool = True,
    mode: str = "sr",
    lapgan_levels: int | None = None,
    blend: Blend | None = None,
    denoise: float | None = None,
) -> ReadyUpscaler:
    """One upscaler for `srgan upscale`, `srgan eval` and `srgan benchmark upscale`.

    backend auto: ONNX Runtime for a .onnx model (or when --onnx is given), else torch; for a
    community model on the CPU in fp32, whichever of torch and its cached ONNX export was timed
    faster for it, once (runtime/community_onnx.py).
    backend onnx with weights (not a .onnx file): the weights are exported once into the cache
    (fp16 when the GPU will run it, fp32 on the CPU) and that file is used.
    fast=False: the paper's graph in NCHW in the torch backend (the baseline for comparisons).
    mode sr: a super-resolution model; lapgan: a LAPGAN's conditional levels, x2 each
    (`lapgan_levels` of them, default all); auto: whichever the weights hold.
    blend: `model` blended with another of its architecture at load time (blend.py; torch only).
    denoise: the share (0-1) of its correction that a model's restoration front-end applies
    (sr.models.with_restore_strength; torch only); None: all of it, as trained.
    tile_pad None: from the model, so that tiles match the whole image: SRResNet's receptive radius,
    a community model's reach measured once (third_party.tile_pad_for); 32 for ONNX and LAPGAN.
    """
    if backend not in BACKENDS:
        raise ArgumentError(f"unknown backend {backend!r}: use {', '.join(BACKENDS)}")
    check_tiling(tile, tile_pad)
    if mode not in MODES:
        raise ArgumentError(f"unknown mode {mode!r}: use {', '.join(MODES)}")
    chosen = mode
    # the file's header, read once: None for a community model (or when an .onnx file runs)
    info = _info_or_foreign(model) if not is_onnx_path(model) and (mode == "auto" or onnx is None) else None
    foreign = info is None and onnx is None and not is_onnx_path(model)
    if mode == "auto":
        mode = "lapgan" if info is not None and info.arch == "lapgan" else "sr"
    if blend is not None and (mode == "lapgan" or backend == "onnx" or onnx or is_onnx_path(model)):
        raise UsageError(
            "--blend runs super-resolution weights on the torch backend",
            hint="for ONNX, write the blend with srgan interpolate and export that file",
        )
    if denoise is not None:
        check_denoise(denoise, info, mode, backend, onnx is not None or is_onnx_path(model))
    if mode == "lapgan":
        pad = 32 if tile_pad is None else tile_pad  # LAPGAN: the pad it always had
        return _lapgan_upscaler(model, backend, onnx, device, precision, tile, pad, compile, lapgan_levels)
    if lapgan_levels is not None and chosen == "sr":
        raise UsageError("--lapgan-levels applies to --mode lapgan only")
    onnx_file = Path(onnx) if onnx is not None else (Path(model) if is_onnx_path(model) else None)
    tiling = {"tile": tile, "tile_pad": tile_pad, "tile_batch": tile_batch}
    if backend == "torch" and onnx_file is not None:
        raise UsageError(
            f"{onnx_file} is an ONNX model; the torch backend needs weights (.safetensors)",
            hint="use --backend onnx, or give weights with -m",
        )
    auto = backend == "auto"
    if backend == "auto":
        backend = "onnx" if onnx_file is not None else "torch"
    if foreign:  # a community model: spandrel knows its architecture
        return _community_upscaler(
            model, auto, backend, expect_scale, device, precision, compile, blend, tiling
        )

    if backend == "torch":
        return _torch_upscaler(
            model, expect_scale, device, precision, blend, denoise, compile=compile, fast=fast, **tiling
        )
    if compile:
        raise UsageError("--compile applies to the torch backend only")
    if tile_pad is None:  # ONNX Runtime: the pad it always had (srresnet_x4 tiles: within 2e-7)
        tiling["tile_pad"] = 32
    return _onnx_upscaler(model, onnx_file, device, precision, expect_scale, **tiling)


def check_denoise(
    denoise: float, info: weights.WeightsInfo | None, mode: str, backend: str, onnx: bool
) -> None:
    """--denoise needs this project's weights with a restoration front-end, on the torch backend."""
    if not (isinstance(denoise, (int, float)) and not isinstance(denoise, bool) and 0.0 <= denoise <= 1.0):
        raise ArgumentError(f"--denoise is a strength between 0 and 1, not {denoise!r}")
    if onnx or backend == "onnx":
        raise UsageError(
            "--denoise changes the weights as they are loaded, which the ONNX backend cannot",
            hint="use --backend torch, or export that strength: srgan export-onnx -m MODEL --denoise S",
        )
    if mode != "sr" or info is None or info.arch != "srresnet" or not info.config.get("restore_blocks"):
        raise UsageError(
            "--denoise sets how much a restoration front-end removes; this model has none",
            hint="models with one: srgan models (e.g. srgan_x4_denoise)",
        )


def with_self_ensemble(ready: ReadyUpscaler, passes: int) -> ReadyUpscaler:
    """`ready` with its upscaler run `passes` (2, 4 or 8) times on mirrored and rotated copies of
    each image and averaged (ensemble.SelfEnsemble); 1 runs it once."""
    inner = ready.upscaler.inner if isinstance(ready.upscaler, SelfEnsemble) else ready.upscaler
    try:
        ready.upscaler = inner if passes == 1 else SelfEnsemble(inner, passes)
    except ValueError as exc:  # SelfEnsemble knows which counts exist
        raise UsageError(f"--self-ensemble: {exc}") from None
    ready.self_ensemble = passes
    return ready


def _info_or_foreign(model: str) -> weights.WeightsInfo | None:
    """The header of srgan-cli weights, or None for a model file that is not ours."""
    try:
        return weights.read_info(model)
    except ForeignWeights:
        return None


def has_front_end(model: str) -> bool:
    """Whether `model` names this project's SR weights with a restoration front-end (the models
    `--denoise` applies to)."""
    if is_onnx_path(model):
        return False
    info = _info_or_foreign(model)
    return info is not None and info.arch == "srresnet" and bool(info.config.get("restore_blocks"))


def is_foreign(model: str) -> bool:
    """Whether `model` names a model file that is not srgan-cli's (tried with spandrel)."""
    return not is_onnx_path(model) and _info_or_foreign(model) is None


def _community_upscaler(
    model: str,
    auto: bool,
    backend: str,
    expect_scale: int | None,
    device: str,
    precision: str,
    compile: bool,
    blend: Blend | None,
    tiling: dict[str, Any],
) -> ReadyUpscaler:
    """A community model: on the torch backend, through its cached ONNX export (backend onnx), or,
    with backend auto on the CPU in fp32, through whichever of the two was timed faster for it
    (runtime/community_onnx.py; a blend or --compile stays on torch)."""
    from . import community_onnx

    def torch_ready() -> ReadyUpscaler:
        return _spandrel_upscaler(
            model, expect_scale, device, precision, blend=blend, compile=compile, **tiling
        )

    path = weights.resolve(model)
    if backend == "onnx":
        if compile:
            raise UsageError("--compile applies to the torch backend only")
        return community_onnx.explicit_ready(path, expect_scale, device, precision, **tiling)
    cpu_fp32 = precision in ("auto", "fp32") and resolve_device(device).type == "cpu"
    if auto and blend is None and not compile and cpu_fp32:
        return community_onnx.fast_ready(path, expect_scale, torch_ready, **tiling)
    return torch_ready()


def _spandrel_upscaler(
    model: str,
    expect_scale: int | None,
    device: str,
    precision: str,
    *,
    compile: bool,
    blend: Blend | None = None,
    **tiling: Any,
) -> ReadyUpscaler:
    """A community model (runtime/third_party.py) on the torch backend."""
    from .third_party import SpandrelUpscaler, describe, summary

    path = weights.resolve(model)
    descriptor = describe(path) if blend is None else describe_blend(path, blend)
    if expect_scale is not None and descriptor.scale != expect_scale:
        raise UsageError(f"{path} is a x{descriptor.scale} model, but x{expect_scale} was requested")
    dev = resolve_device(device)
    notes: list[str] = []
    dtype = resolve_precision(precision, dev)
    if precision == "auto" and dev.type == "cuda" and not descriptor.supports_half:
        import torch  # auto on a GPU: the half precision the architecture supports, else fp32

        bf16 = descriptor.supports_bfloat16 and torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if bf16 else torch.float32
    up = SpandrelUpscaler(descriptor, device=dev, dtype=dtype, compile=compile, notes=notes, **tiling)
    info = summary(descriptor)
    name = path.name.rsplit(".", 1)[0]
    if blend is not None:
        name = blend_name(name, weights.resolve(blend.model).name.rsplit(".", 1)[0], blend.alpha)
    arch = f"spandrel:{info['arch_id']}"
    return ReadyUpscaler(up, name, up.scale, "torch", str(dev), precision_name(up.dtype), arch, info, notes)


def _torch_upscaler(
    model: str,
    expect_scale: int | None,
    device: str,
    precision: str,
    blend: Blend | None = None,
    denoise: float | None = None,
    **options: Any,
) -> ReadyUpscaler:
    """Weights on the torch backend; `options` are TorchUpscaler's (tiles, compile, fast)."""
    if blend is None:
        loaded = archs.load(model, expect_arch="srresnet", expect_scale=expect_scale)
    else:
        loaded = load_ours(model, blend, expect_arch="srresnet", expect_scale=expect_scale)
    if denoise is not None:
        from ..sr.models import with_restore_strength

        loaded.model = with_restore_strength(loaded.model, float(denoise))  # type: ignore[arg-type]
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    from .torch_backend import TorchUpscaler

    torch_up = TorchUpscaler(loaded.model, device=dev, dtype=dtype, **options)
    return ReadyUpscaler(
        torch_up,
        loaded.info.name,
        loaded.info.scale,
        "torch",
        str(dev),
        precision_name(dtype),
        loaded.info.arch,
        loaded.info.config,
    )


def _onnx_upscaler(
    model: str, onnx_file: Path | None, device: str, precision: str, expect_scale: int | None, **tiling: Any
) -> ReadyUpscaler:
    """An .onnx file on ONNX Runtime, or weights through their cached export (`onnx_file` None);
    `tiling` is OnnxUpscaler's tile, tile_pad and tile_batch."""
    from .onnx_backend import OnnxUpscaler

    notes: list[str] = []
    given = onnx_file is not None
    if onnx_file is None:  # weights given: use (or make) their cached export
        import torch

        # fp16 only where the GPU will run it (ONNX Runtime's fp16 CPU kernels are slow)
        gpu = device != "cpu" and torch.cuda.is_available()
        want = precision if precision != "auto" else ("fp16" if gpu else "fp32")
        if want not in ("fp32", "fp16"):
            raise UsageError(f"the ONNX backend runs fp32 or fp16 models, not {want}")
        onnx_file, fresh = cached_onnx(model, want)
        if fresh:
            notes.append(f"exported {model} to {onnx_file} (cached for next time)")
    onnx_up = OnnxUpscaler(onnx_file, device=device, **tiling)
    info = onnx_up.info
    if given and precision not in ("auto", info.precision):
        raise UsageError(
            f"{onnx_file} is an {info.precision} model; its precision is fixed at export",
            hint="export again (srgan export-onnx, --fp16 for half precision) or drop --precision",
        )
    if expect_scale is not None and info.scale != expect_scale:
        raise UsageError(f"{onnx_file} is a x{info.scale} model, but x{expect_scale} was requested")
    return ReadyUpscaler(
        onnx_up,
        info.name if given else weights.read_info(model).name,  # weights keep their own name
        info.scale,
        "onnx",
        onnx_up.device_name,
        info.precision,
        info.arch,
        info.config,
        notes + onnx_up.notes,
    )


def _lapgan_upscaler(
    model: str,
    backend: str,
    onnx: str | os.PathLike[str] | None,
    device: str,
    precision: str,
    tile: int | None,
    tile_pad: int,
    compile: bool,
    levels: int | None,
) -> ReadyUpscaler:
    """A LAPGAN's conditional generators as an upscaler (PyTorch, fp32)."""
    if backend == "onnx" or onnx is not None or is_onnx_path(model):
        raise UsageError(
            "--mode lapgan runs on the torch backend only (LAPGAN models are not exported to ONNX)"
        )
    if compile:
        raise UsageError("--compile is not supported with --mode lapgan")
    if precision not in ("auto", "fp32"):
        raise UsageError(f"--mode lapgan runs in fp32, not {precision}")
    from .lapgan_backend import LapganUpscaler

    loaded = archs.load(model, expect_arch="lapgan")
    dev = resolve_device(device)
    up = LapganUpscaler(loaded.model, device=dev, levels=levels, tile=tile, tile_pad=tile_pad)  # type: ignore[arg-type]
    return ReadyUpscaler(
        up,
        loaded.info.name,
        up.scale,
        "torch",
        str(dev),
        "fp32",
        loaded.info.arch,
        loaded.info.config,
        [f"LAPGAN upscaling with {up.levels} conditional level(s), x2 each (x{up.scale})"],
    )
