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

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import UsageError, WeightsFormatError
from .torch_backend import TensorUpscaler

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


def describe(path: str | os.PathLike[str]) -> Any:
    """spandrel's ModelDescriptor of the model in `path` (on the CPU, in eval mode)."""
    spandrel = _spandrel()

    path = Path(path)
    state = read_state_dict(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # architectures' own deprecation chatter is not the user's
            descriptor = spandrel.ModelLoader().load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        names = ", ".join(list(state)[:3])
        raise WeightsFormatError(
            f"{path}: neither srgan-cli weights nor an architecture spandrel knows "
            f"({len(state)} tensors, e.g. {names})",
            hint="spandrel lists the architectures it supports; for non-commercial ones, "
            "pip install spandrel-extra-arches",
        ) from None
    except Exception as exc:  # a known architecture whose tensors do not fit it
        raise WeightsFormatError(f"{path}: spandrel could not build its model: {exc}") from exc
    return descriptor


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
        tile_pad: int = 32,
        tile_batch: int | None = None,
        compile: bool = False,
        notes: list[str] | None = None,
    ) -> None:
        if descriptor.purpose != "SR" or descriptor.scale < 2:
            raise UsageError(
                f"{descriptor.architecture.name} here is a x{descriptor.scale} {descriptor.purpose} model, "
                "not a super-resolution one: srgan upscale needs a model that upscales",
            )
        if descriptor.input_channels != 3 or descriptor.output_channels != 3:
            raise UsageError(
                f"this {descriptor.architecture.name} model takes {descriptor.input_channels} and gives "
                f"{descriptor.output_channels} channels; srgan upscale runs RGB models"
            )
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
        self.tile_pad = tile_pad
        self.tile_batch = tile_batch if tile_batch is not None else (4 if device.type == "cuda" else 1)
        self._forward = self._prepare_forward(self.model, compile)

    def _pass(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return self._run

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """Pad to the model's size multiple and minimum (reflecting the edge), run, crop."""
        h, w = x.shape[-2:]
        step = max(self.multiple, 1)
        ph = max(-(-h // step) * step, self.minimum) - h
        pw = max(-(-w // step) * step, self.minimum) - w
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        y = self._forward(x.to(self.dtype))
        return y[..., : h * self.scale, : w * self.scale].float()  # (checked and clamped by the caller)


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
