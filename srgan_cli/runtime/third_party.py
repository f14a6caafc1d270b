"""Community super-resolution models (Real-ESRGAN's RRDBNet and Compact, SwinIR, HAT, SPAN, ...)
through spandrel, which recognises an architecture and its hyper-parameters from a state dict.

The file is read by this project's own safe loaders (`weights_only=True` for .pth/.pt/.ckpt, the
safetensors reader), never by spandrel's, so the pickle policy is the same as for our weights;
spandrel only gets the tensors. What its descriptor says decides how the model runs: its scale,
the precisions it supports (fp32 where it lacks the asked one, with a note), the size multiple it
needs (inputs padded and results cropped), whether tiling suits it, and its purpose (only
super-resolution models upscale).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..atomic import atomic_open
from ..errors import ForeignWeights, UsageError, WeightsFormatError
from .tiling import TilePad, measure_tile_pad
from .torch_backend import TensorUpscaler, is_torch_oom

SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors", ".bin")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a model file, read without running any pickled code, refused when its sizes
    do not fit the file (a zip bomb) or when a tensor holds NaN or Inf (weights.read_state)."""
    from ..weights import read_state

    return read_state(path)


def _spandrel() -> Any:
    """spandrel, with spandrel-extra-arches' architectures added when that package is installed
    (`pip install 'srgan-cli[extra-arches]'`: non-commercial licences, so off by default)."""
    import spandrel

    global _EXTRA_DONE
    if not _EXTRA_DONE:
        _EXTRA_DONE = True
        try:
            import spandrel_extra_arches
        except ImportError:
            pass
        else:
            spandrel_extra_arches.install()
    return spandrel


_EXTRA_DONE = False


# Prefixes a checkpoint puts before a network's own tensor names: DataParallel's "module.", a
# compiled model's "_orig_mod.", a Lightning module's attribute ("model.", "net_g.", "generator.").
# Tried, one or two deep, only when the names as they are match no architecture (old ESRGAN files
# really start with "model.").
STATE_PREFIXES = ("module.", "_orig_mod.", "model.", "net_g.", "netG.", "generator.", "net.", "G.")


def _candidates(state: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """`state`, then the tensors under each of STATE_PREFIXES (prefix removed), one or two deep."""
    found, level = [state], [state]
    for _ in range(2):
        deeper = []
        for candidate in level:
            for prefix in STATE_PREFIXES:
                sub = {k[len(prefix) :]: v for k, v in candidate.items() if k.startswith(prefix)}
                if sub and sub.keys() != candidate.keys():
                    deeper.append(sub)
        found += deeper
        level = deeper
    return found


def describe(path: str | os.PathLike[str]) -> Any:
    """spandrel's ModelDescriptor of the model in `path` (on the CPU, in eval mode)."""
    spandrel = _spandrel()

    path = Path(path)
    state = read_state_dict(path)
    failure: Exception | None = None
    descriptor = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # architectures' own deprecation chatter is not the user's
        for candidate in _candidates(state):
            try:
                descriptor = spandrel.ModelLoader().load_from_state_dict(candidate)
                break
            except spandrel.UnsupportedModelError:
                continue
            except Exception as exc:  # a known architecture whose tensors do not fit it
                failure = failure or exc
    if descriptor is None and failure is not None:
        raise WeightsFormatError(f"{path}: spandrel could not build its model: {failure}") from failure
    if descriptor is None:
        names = ", ".join(list(state)[:3])
        raise WeightsFormatError(
            f"{path}: neither srgan-cli weights nor an architecture spandrel knows "
            f"({len(state)} tensors, e.g. {names})",
            hint="spandrel lists the architectures it supports; for non-commercial ones, "
            "pip install spandrel-extra-arches",
        )
    _SOURCES[descriptor] = _file_key(path)
    return descriptor


def _file_key(path: Path) -> tuple[str, int, int]:
    """What identifies a model file's contents cheaply: (resolved path, size, mtime in ns)."""
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


# the file each descriptor was read from (describe), for the caches of measured tile pads
_SOURCES: weakref.WeakKeyDictionary[Any, tuple[str, int, int]] = weakref.WeakKeyDictionary()


def cannot_run(descriptor: Any) -> str | None:
    """Why `srgan upscale` cannot run a model spandrel built (None when it can)."""
    if descriptor.purpose != "SR" or descriptor.scale < 2:
        return (
            f"{descriptor.architecture.name} here is a x{descriptor.scale} {descriptor.purpose} model, "
            "not a super-resolution one: srgan upscale needs a model that upscales"
        )
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        return (
            f"this {descriptor.architecture.name} model takes {descriptor.input_channels} and gives "
            f"{descriptor.output_channels} channels; srgan upscale runs RGB models"
        )
    return None


_JUDGED: dict[tuple[str, int, int], tuple[str | None, dict[str, Any] | None]] = {}


def why_not_runnable(path: Path) -> str | None:
    """Why the model file `path` cannot be upscaled with (None when it can): refused, unreadable,
    an architecture spandrel does not know, or not an RGB super-resolution model. Builds the model
    once per file contents in this process (cached by path, size and modification time)."""
    return _judge(path)[0]


def facts_of(path: Path) -> dict[str, Any] | None:
    """`summary` of a community model file, from the same single build as why_not_runnable (None
    for our own weights and for files spandrel cannot build)."""
    return _judge(path)[1]


def _judge(path: Path) -> tuple[str | None, dict[str, Any] | None]:
    from .. import weights
    from ..errors import SrganError

    try:
        key = _file_key(path)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}", None
    if key not in _JUDGED:
        reason: str | None
        facts: dict[str, Any] | None = None
        try:
            try:
                info = weights.read_info(path)
            except ForeignWeights:
                descriptor = describe(path)
                reason, facts = cannot_run(descriptor), summary(descriptor)
            else:
                reason = None if info.arch == "srresnet" else f"a {info.arch} model, not super-resolution"
        except SrganError as exc:
            reason = str(exc).removeprefix(f"{path}: ").removeprefix(f"{path}")
        _JUDGED[key] = (reason, facts)
    return _JUDGED[key]


def summary(descriptor: Any) -> dict[str, Any]:
    """What `srgan models --inspect` prints about a third-party model."""
    precisions = ["fp32"] + (["fp16"] if descriptor.supports_half else [])
    precisions += ["bf16"] if descriptor.supports_bfloat16 else []
    arch = descriptor.architecture
    return {
        "architecture": arch.name,
        "arch_id": arch.id,
        "purpose": descriptor.purpose,
        "scale": descriptor.scale,
        "input_channels": descriptor.input_channels,
        "output_channels": descriptor.output_channels,
        "parameters": sum(p.numel() for p in descriptor.model.parameters()),
        "precisions": precisions,
        "size_requirements": str(descriptor.size_requirements),
        "tiling": getattr(descriptor.tiling, "name", str(descriptor.tiling)).lower(),
        "tags": list(getattr(descriptor, "tags", []) or []),
    }


class SpandrelUpscaler(TensorUpscaler):
    """A spandrel model with the same tiling, out-of-memory retry and image handling as ours."""

    def __init__(
        self,
        descriptor: Any,
        *,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        tile: int | None = None,
        tile_pad: int | None = None,
        tile_batch: int | None = None,
        compile: bool = False,
        notes: list[str] | None = None,
    ) -> None:
        problem = cannot_run(descriptor)
        if problem is not None:
            raise UsageError(problem)
        supported = {torch.float16: descriptor.supports_half, torch.bfloat16: descriptor.supports_bfloat16}
        if dtype in supported and not supported[dtype]:
            if notes is not None:
                notes.append(f"{descriptor.architecture.name} does not support {dtype}: running in fp32")
            dtype = torch.float32
        self.descriptor, self.device, self.dtype = descriptor, device, dtype
        self.model = descriptor.model.to(device=device, dtype=dtype).eval()
        self.scale = int(descriptor.scale)
        self.elem_bytes = torch.finfo(dtype).bits // 8
        needs = descriptor.size_requirements
        self.multiple, self.minimum = int(needs.multiple_of), int(needs.minimum)
        tiling = getattr(descriptor.tiling, "name", "SUPPORTED")
        # a model that tiles itself, or tiles badly, gets the whole image unless a tile is asked for
        self.tile = tile if tile is not None or tiling == "SUPPORTED" else 0
        # tiles start where the whole-image pass starts a window (or a pixel-unshuffle block); the
        # pad is the model's measured reach unless one is given (tile_pad_for)
        window = getattr(self.model, "window_size", None)
        window = window if isinstance(window, int) and not isinstance(window, bool) and window > 1 else 1
        self.tile_align = math.lcm(max(self.multiple, 1), window)
        self.notes = notes if notes is not None else []
        self.measured: TilePad | None = None
        self.tile_pad: int | Callable[[], int] = tile_pad if tile_pad is not None else self._receptive_pad
        if tile_pad is None and self.tile:  # tiles asked for: measured now, so that a note is seen
            self._receptive_pad()
        self.tile_batch = tile_batch if tile_batch is not None else (4 if device.type == "cuda" else 1)
        self._forward = self._prepare_forward(self.model, compile)
        # channels_last on a GPU (cuDNN's fast layout in half precision); set on the first pass
        self.layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        self._first_done = False

    def _pass(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return self._run

    def _in_layout(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x.contiguous(memory_format=self.layout))

    def _first(self, x: torch.Tensor) -> torch.Tensor:
        """The first pass, in the GPU's layout and compiled when asked. What of that an architecture
        cannot take (a `.view` of channels_last memory, a graph the compiler fails on) is dropped
        with a note and the pass run again eagerly in NCHW; out of memory is the tiler's to handle."""
        try:
            self.model.to(memory_format=self.layout)
            y = self._in_layout(x)
        except Exception as exc:
            dropped = [what for what, on in (("torch.compile", self.compiled),
                       ("channels_last", self.layout == torch.channels_last)) if on]  # fmt: skip
            if is_torch_oom(exc) or not dropped:
                raise
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            self.notes.append(
                f"{self.descriptor.architecture.name}: {' and '.join(dropped)} failed ({reason}); "
                "running it eagerly in NCHW"
            )
            self.layout, self.compiled = torch.contiguous_format, False
            self._forward = self.model.to(memory_format=torch.contiguous_format)
            y = self._in_layout(x)
        self._first_done = True
        return y

    def _receptive_pad(self) -> int:
        """The tile pad this model needs (tile_pad_for), found once; a note when tiles cannot
        match the whole image."""
        if self.measured is None:
            self.measured = tile_pad_for(self)
            if not self.measured.exact:
                self.notes.append(approximate_note(self.descriptor.architecture.name, self.measured))
        return self.measured.pad

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """Pad to the model's size multiple and minimum (reflecting the edge), run, crop."""
        return self._sized(self._in_layout if self._first_done else self._first, x.to(self.dtype))

    def _sized(self, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        step = max(self.multiple, 1)
        ph = max(-(-h // step) * step, self.minimum) - h
        pw = max(-(-w // step) * step, self.minimum) - w
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        y = forward(x)
        return y[..., : h * self.scale, : w * self.scale].float()  # (checked and clamped by the caller)


_PADS: dict[tuple[str, int, int], TilePad] = {}  # measured tile pads by model file (path, size, mtime)
PAD_CACHE_VERSION = 1  # bump when measure_tile_pad changes what it measures


def tile_pad_for(up: SpandrelUpscaler) -> TilePad:
    """The tile pad `up`'s model needs, measured once per model file (tiling.measure_tile_pad), kept
    in memory and in the cache folder (tile-pads/, by the file's SHA-256). Measured on its device
    in float32 with TF32 off, whatever precision it runs in: rounding noise is not reach."""
    try:
        source = _SOURCES.get(up.descriptor)
    except TypeError:  # a descriptor-like object that takes no weak reference: not from a file
        source = None
    if source is not None and source in _PADS:
        return _PADS[source]
    disk = _disk_entry(source)
    found = _read_disk(disk)
    if found is None:
        found = _measure(up)
        _write_disk(disk, found)
    if source is not None:
        _PADS[source] = found
    return found


def _measure(up: SpandrelUpscaler) -> TilePad:
    model = up.model
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        model.float()
        with torch.inference_mode():
            return measure_tile_pad(
                lambda x: up._sized(model, x), up.scale, align=up.tile_align, device=up.device
            )
    finally:
        model.to(up.dtype)
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


def _disk_entry(source: tuple[str, int, int] | None) -> Path | None:
    """Where a model file's measured pad is kept (None for a model not read from a file)."""
    if source is None:
        return None
    from .loader import cache_dir

    try:
        digest = hashlib.sha256(Path(source[0]).read_bytes()).hexdigest()[:16]
    except OSError:
        return None
    return cache_dir() / "tile-pads" / f"{digest}-v{PAD_CACHE_VERSION}.json"


def _read_disk(path: Path | None) -> TilePad | None:
    if path is None:
        return None
    try:
        facts = json.loads(path.read_text())
        pad, exact, diff, radius = facts["pad"], facts["exact"], facts["max_diff"], facts["radius"]
        return TilePad(int(pad), bool(exact), float(diff), int(radius))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_disk(path: Path | None, pad: TilePad) -> None:
    if path is None:
        return
    try:
        with atomic_open(path) as fh:
            fh.write(json.dumps(pad.to_dict()).encode())
    except OSError:  # a read-only cache only costs a measurement next time
        pass


def approximate_note(arch: str, pad: TilePad) -> str:
    """The one line that says tiles may differ from the whole image, and by how much."""
    levels = pad.max_diff * 255
    return (
        f"{arch}: tiles cannot match the whole image exactly (what one output pixel depends on reaches "
        f"beyond {pad.radius} px); with a {pad.pad} px tile pad they differed from it by up to "
        f"{levels:.1f}/255 on a test pattern (--tile 0 runs the whole image)"
    )


class _Config:
    def __init__(self, facts: dict[str, Any]) -> None:
        self.facts = facts

    def to_dict(self) -> dict[str, Any]:
        return dict(self.facts)


class ExportableModel(torch.nn.Module):
    """A spandrel model dressed as ours for `onnx_export.export_onnx`: `.arch` and `.config`
    (its --inspect facts, with its scale)."""

    def __init__(self, descriptor: Any) -> None:
        super().__init__()
        self.net = descriptor.model
        facts = summary(descriptor)
        self.arch = f"spandrel:{facts['arch_id']}"
        self.config = _Config(facts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
