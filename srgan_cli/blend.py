"""Blending two models of one architecture weight by weight (network interpolation, ESRGAN 3.4):
this project's weights and community models (through spandrel) alike, into a file
(`srgan interpolate`) or in memory at load time (`srgan upscale -m A --blend B:ALPHA`).

Everywhere alpha is the second model's share: (1 - alpha) * first + alpha * second, alpha in
[0, 1] (0 gives the first model exactly, 1 the second; extrapolating beyond them is refused: the
result of such weights is no model anyone trained). Floating tensors are blended in fp32; integer
ones (BatchNorm's num_batches_tracked, attention index tables) are kept from the first model.
Real-ESRGAN's denoise strength S (`--denoise_strength`, general-x4v3 with its WDN twin) is
`-m realesr-general-wdn-x4v3 --blend realesr-general-x4v3:S`: S is the general model's share.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from . import archs, weights
from .atomic import atomic_open
from .errors import ArgumentError, ForeignWeights, UsageError, WeightsFormatError, WeightsMismatch

FORMULA = "(1 - alpha) * first + alpha * second"
FORMAT = "srgan-cli-blend/1"  # the metadata "format" of a blended community model file
SAME_HINT = "blend two models of one architecture and size, e.g. a model and one fine-tuned from it"


@dataclass(frozen=True)
class Blend:
    """The second model of a blend made at load time, and its share (alpha)."""

    model: str  # a weights name or path
    alpha: float  # the share of `model`: 0 keeps the first model, 1 gives this one


@dataclass
class Written:
    """What `interpolate_file` wrote: the file and the architecture it holds."""

    path: Path
    architecture: str  # "srresnet" (ours) or spandrel's name, e.g. "RealESRGAN Compact"
    scale: int


def check_alpha(alpha: float, what: str = "alpha") -> float:
    """alpha as a float in [0, 1], or an ArgumentError that says the rule."""
    ok = isinstance(alpha, (int, float)) and not isinstance(alpha, bool)
    if not ok or math.isnan(alpha) or not 0.0 <= alpha <= 1.0:
        raise ArgumentError(
            f"{what} must be a number from 0 to 1 (the second model's share), got {alpha!r}",
            hint="0 gives the first model, 1 the second; blends beyond them are not supported",
        )
    return float(alpha)


def parse_blend(text: str) -> Blend:
    """`--blend MODEL:ALPHA` (the last colon splits, so a Windows path C:\\m.pth:0.3 works)."""
    model, sep, share = text.rpartition(":")
    if not sep or not model:
        raise ArgumentError(f"--blend {text!r}: expected MODEL:ALPHA, e.g. --blend other.pth:0.3")
    try:
        alpha = float(share)
    except ValueError:
        raise ArgumentError(
            f"--blend {text!r}: {share!r} is not a number; expected MODEL:ALPHA, e.g. --blend other.pth:0.3"
        ) from None
    return Blend(model, check_alpha(alpha, "--blend's ALPHA"))


def blend_name(first: str, second: str, alpha: float) -> str:
    """How a blend is named in results, --json and output manifests: `first+second@alpha`."""
    return f"{first}+{second}@{alpha:g}"


def blend_tag(first: str, blend: Blend, scale: int) -> str:
    """The model tag in output names beside the inputs (runtime.batch.model_tag of each side):
    -m general_wdn_x4 --blend general_x4:0.3 -> `general_wdn+general@0.3`."""
    from .runtime.batch import model_tag

    return f"{model_tag(first, scale)}+{model_tag(blend.model, scale)}@{blend.alpha:g}"


# ---------------------------------------------------------------------------------------------
# tensors


def mix(
    first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], alpha: float, names: tuple[Any, Any]
) -> dict[str, torch.Tensor]:
    """(1 - alpha) * first + alpha * second for floating tensors (in fp32; exactly `first` at 0 and
    `second` at 1), `first`'s own for the others; refused unless names, shapes and kinds agree."""
    problem = difference(first, second)
    if problem:
        raise WeightsMismatch(f"cannot blend {names[0]} and {names[1]}: {problem}", hint=SAME_HINT)
    return {
        k: torch.lerp(v.float(), second[k].float(), alpha) if v.is_floating_point() else v
        for k, v in first.items()
    }


def difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> str:
    """What keeps two state dicts from being blended, in one line ("" when nothing does)."""
    missing = [k for k in first if k not in second]
    extra = [k for k in second if k not in first]
    both = [k for k in first if k in second]
    shapes = [k for k in both if first[k].shape != second[k].shape]
    kinds = [k for k in both if first[k].is_floating_point() != second[k].is_floating_point()]
    parts = []
    if shapes:
        k = shapes[0]
        a, b = tuple(first[k].shape), tuple(second[k].shape)
        parts.append(f"{len(shapes)} tensor shape(s) differ, e.g. {k}: {a} vs {b}")
    if missing or extra:
        k = (missing or extra)[0]
        parts.append(f"{len(missing) + len(extra)} tensor name(s) in only one of them, e.g. {k}")
    if kinds:
        parts.append(f"{len(kinds)} tensor(s) floating in one and integer in the other, e.g. {kinds[0]}")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# models


def _is_ours(path: Path) -> bool:
    """srgan-cli weights (True) or a community model file (False); other problems raise."""
    if path.suffix.lower() == ".onnx":
        raise UsageError(f"{path}: an ONNX file cannot be blended; blend the weights it was exported from")
    try:
        weights.read_info(path)
    except ForeignWeights:
        return False
    return True


def _kinds(first: Path, second: Path) -> bool:
    """Whether both are ours (True) or both community models (False); refused when mixed."""
    ours = _is_ours(first), _is_ours(second)
    if ours[0] != ours[1]:
        kind = {True: "srgan-cli weights", False: "a community model (spandrel)"}
        raise WeightsMismatch(
            f"cannot blend {first} and {second}: different architectures "
            f"({first.name} is {kind[ours[0]]}, {second.name} {kind[ours[1]]})",
            hint=SAME_HINT,
        )
    return ours[0]


def _describe_pair(first: Path, second: Path) -> tuple[Any, Any]:
    """spandrel's descriptors of two community models, refused unless one architecture and scale."""
    from .runtime.third_party import describe

    a, b = describe(first), describe(second)
    what = [
        (label, x, y)
        for label, x, y in (
            ("architectures", a.architecture.name, b.architecture.name),
            ("scales", f"x{a.scale}", f"x{b.scale}"),
            ("input channels", a.input_channels, b.input_channels),
            ("output channels", a.output_channels, b.output_channels),
        )
        if x != y
    ]
    if what:
        label, x, y = what[0]
        raise WeightsMismatch(
            f"cannot blend {first} and {second}: different {label} ({x} vs {y})", hint=SAME_HINT
        )
    return a, b


def load_ours(
    first: str | os.PathLike[str],
    blend: Blend,
    *,
    expect_arch: str | None = None,
    expect_scale: int | None = None,
) -> weights.LoadedWeights:
    """srgan-cli weights `first` blended with `blend.model` (CPU, eval mode), named
    `first+second@alpha`."""
    a, b = weights.resolve(first), weights.resolve(blend.model)
    if not _kinds(a, b):
        raise ForeignWeights(f"{a}: not srgan-cli weights")  # (the caller asked for ours)
    alpha = check_alpha(blend.alpha)
    model, _ = archs.interpolate(a, b, alpha, expect_arch=expect_arch, expect_scale=expect_scale)
    info = weights.read_info(a)
    name = blend_name(info.name, weights.read_info(b).name, alpha)
    return weights.LoadedWeights(model, replace(info, name=name))


def describe_blend(first: str | os.PathLike[str], blend: Blend) -> Any:
    """spandrel's descriptor of community model `first` with its weights blended with those of
    `blend.model` (same architecture, scale, tensor names and shapes)."""
    a, b = weights.resolve(first), weights.resolve(blend.model)
    if _kinds(a, b):
        raise UsageError(f"{a}: srgan-cli weights, not a community model")  # (the caller asked for one)
    alpha = check_alpha(blend.alpha)
    da, db = _describe_pair(a, b)
    da.model.load_state_dict(mix(da.model.state_dict(), db.model.state_dict(), alpha, (a, b)), strict=True)
    return da


def interpolate_file(
    first: str | os.PathLike[str],
    second: str | os.PathLike[str],
    alpha: float,
    output: str | os.PathLike[str],
) -> Written:
    """Write (1 - alpha) * first + alpha * second as safetensors at `output` (replacing it).

    Ours: the usual weights file, its provenance recording alpha and both inputs'. Community
    models: the first's tensor names and layout (fp32), with metadata recording both sources
    (file names and SHA-256) and alpha; the written file is described by spandrel again and
    checked to be the same architecture and scale before this returns.
    """
    alpha = check_alpha(alpha)
    a, b, out = weights.resolve(first), weights.resolve(second), Path(output)
    if _kinds(a, b):
        model, provenance = archs.interpolate(a, b, alpha)
        trained_on = weights.read_info(a).trained_on
        weights.save(out, model, trained_on=trained_on, provenance=provenance)
        return Written(out, str(model.arch), int(weights.read_info(out).scale))

    from safetensors.torch import save as to_bytes

    from .runtime.third_party import describe, read_state_dict

    da, _ = _describe_pair(a, b)
    state = mix(read_state_dict(a), read_state_dict(b), alpha, (a, b))
    meta = {
        "format": FORMAT,
        "architecture": str(da.architecture.name),
        "scale": str(da.scale),
        "interpolation": json.dumps(
            {"alpha": alpha, "formula": FORMULA, "first": _source(a), "second": _source(b)}, sort_keys=True
        ),
    }
    data = to_bytes({k: v.detach().contiguous() for k, v in state.items()}, metadata=meta)
    with atomic_open(out) as fh:
        fh.write(data)
    try:  # the blend must be recognised as what it was made from
        again = describe(out)
    except WeightsFormatError as exc:
        out.unlink(missing_ok=True)
        raise WeightsFormatError(f"{out}: the blend is not recognised by spandrel again: {exc}") from exc
    if (again.architecture.name, again.scale) != (da.architecture.name, da.scale):
        out.unlink(missing_ok=True)
        raise WeightsFormatError(
            f"{out}: spandrel reads the blend as a x{again.scale} {again.architecture.name}, "
            f"not the x{da.scale} {da.architecture.name} it was made from"
        )
    return Written(out, str(da.architecture.name), int(da.scale))


def _source(path: Path) -> dict[str, str]:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return {"file": path.name, "sha256": digest.hexdigest()}
