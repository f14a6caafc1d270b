"""The table of architectures: which network a weights file builds, and loading any of them.

`weights.py` owns the file format and knows no network; this module maps each `arch` name in a
file's metadata to its model class and config, and is what the runtime, the CLI and the scripts
load weights through. A feature package (sr, lapgan, text2img) loads its own kind with
`weights.load_model` and its own class, so it never imports this table.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from .errors import WeightsMismatch
from .weights import LoadedWeights, load_model


def architectures() -> dict[str, tuple[type[nn.Module], type]]:
    """arch name -> (model class, config dataclass)."""
    # imported here so that reading a header (weights.read_info) never pays for every model module
    from .lapgan.models import Lapgan, LapganConfig
    from .sr.models import SRResNet, SRResNetConfig
    from .text2img.checker import ShapeChecker, ShapeCheckerConfig
    from .text2img.models import Text2Img, Text2ImgConfig

    return {
        "srresnet": (SRResNet, SRResNetConfig),
        "lapgan": (Lapgan, LapganConfig),
        "text2img": (Text2Img, Text2ImgConfig),
        "shapes_checker": (ShapeChecker, ShapeCheckerConfig),
    }


def build_model(arch: str, config: dict[str, Any]) -> nn.Module:
    """An untrained model of `arch` with `config` (as a weights file's metadata gives them)."""
    table = architectures()
    if arch not in table:
        raise WeightsMismatch(
            f"unknown architecture {arch!r}; this version knows: {', '.join(sorted(table))}"
        )
    cls, config_cls = table[arch]
    try:
        return cls(config_cls(**config))
    except (TypeError, ValueError) as exc:
        raise WeightsMismatch(f"invalid {arch} config {config}: {exc}") from exc


def load(
    name_or_path: str | os.PathLike[str],
    *,
    expect_arch: str | None = None,
    expect_scale: int | None = None,
) -> LoadedWeights:
    """Build the model described by a weights file of any known architecture and load its
    tensors (CPU, eval mode)."""
    return load_model(name_or_path, build_model, expect_arch=expect_arch, expect_scale=expect_scale)


def interpolate(
    first: str | os.PathLike[str],
    second: str | os.PathLike[str],
    alpha: float,
    *,
    expect_arch: str | None = None,
    expect_scale: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Network interpolation (Wang et al. 2018, ESRGAN, section 3.4): (1 - alpha) * first + alpha * second.

    Both files must hold the same architecture and config, typically a PSNR-trained model and the
    GAN model fine-tuned from it; alpha trades the first's clean, smooth output for the second's
    texture. Returns the blended model (CPU, eval mode) and the provenance to save with it.
    Community models are blended by blend.py (this table knows only ours).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    a = load(first, expect_arch=expect_arch, expect_scale=expect_scale)
    b = load(second, expect_arch=expect_arch, expect_scale=expect_scale)
    if (a.info.arch, a.info.config) != (b.info.arch, b.info.config):
        differ = sorted(
            k
            for k in a.info.config.keys() | b.info.config.keys()
            if a.info.config.get(k) != b.info.config.get(k)
        )
        what = f"config fields {', '.join(differ)}" if differ else f"{a.info.arch!r} vs {b.info.arch!r}"
        raise WeightsMismatch(
            f"cannot interpolate {a.info.path} and {b.info.path}: they differ in {what}",
            hint="interpolate a model with one fine-tuned from it (e.g. srresnet_x4 and a GAN run from it)",
        )
    other = b.model.state_dict()
    mixed = {
        k: torch.lerp(v, other[k], alpha) if v.is_floating_point() else v
        for k, v in a.model.state_dict().items()
    }
    a.model.load_state_dict(mixed, strict=True)
    provenance = {
        "interpolation": {
            "alpha": alpha,
            "first": {"name": a.info.name, "provenance": a.info.provenance, "metrics": a.info.metrics},
            "second": {"name": b.info.name, "provenance": b.info.provenance, "metrics": b.info.metrics},
        }
    }
    return a.model, provenance
