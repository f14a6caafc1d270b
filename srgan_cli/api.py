"""The promised Python surface: `srgan_cli.Upscaler`.

    import srgan_cli
    up = srgan_cli.Upscaler("srresnet_x4")          # shipped weights, a file, or an .onnx export
    big = up("photo.jpg")                           # a path, PIL image, numpy array or torch tensor

Everything else in the package stays importable, but only what this module exports (and
`srgan_cli.__version__`) keeps its shape between versions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

import numpy as np

from .atomic import same_file
from .blend import Blend, check_alpha
from .errors import ArgumentError, ArgumentTypeError, UsageError
from .imageio import DEFAULT_MAX_PIXELS, ImageData, image_from_pil, read_image, write_image
from .runtime.batch import JobResult, OutputOptions, plan_jobs
from .runtime.loader import ReadyUpscaler, build_upscaler, with_self_ensemble
from .runtime.manifest import Producer
from .runtime.pipeline import run_jobs
from .runtime.upscaler import (
    DEFAULT_MAX_OUTPUT_PIXELS,
    check_max_pixels,
    check_outscale,
    to_uint8,
    upscale_image,
)
from .weights import AUTO_JPEG_QUALITY, AUTO_MODEL, DEFAULT_MODEL, REAL_MODEL

if TYPE_CHECKING:
    import torch
    from PIL import Image

Array = TypeVar("Array", np.ndarray, "torch.Tensor")


class Upscaler:
    """A super-resolution model ready to upscale, on the best device available.

    model: shipped weights by name (`srgan models` lists them), a weights file written by
        `srgan train`, or an `.onnx` file made by `srgan export-onnx`.
    device: "auto" (the first GPU, else the CPU), "cpu", "cuda" or "cuda:N".
    precision: "auto" (fp16 on a GPU, fp32 on the CPU), "fp32", "fp16" or "bf16".
    backend: "auto", "torch" or "onnx" (ONNX Runtime).
    tile: "auto" (from free memory), 0 (whole image) or a tile side in input pixels.
    outscale: a final scale other than the model's (the model's pass, then a resample).
    self_ensemble: 1, 2, 4 or 8 passes over mirrored/rotated copies, averaged.
    mode: "sr", "lapgan" (a LAPGAN's conditional levels, x2 each; `lapgan_levels` of them) or
        "auto" (whichever the weights hold). onnx: an exported file to run instead of `model`.
    blend: (other, alpha) blends `model` with weights `other` of its architecture at load time,
        (1 - alpha) * model + alpha * other, alpha in [0, 1] (torch backend; `srgan interpolate`
        writes the same blend to a file).
    denoise: for a model with a restoration front-end (srgan_x4_denoise), how much of its
        correction to apply, 0-1 (0: none, the SR network alone; None or 1: as trained; torch).

    The same image handling as `srgan upscale`: gray stays gray, alpha is upscaled without
    fringes, 16-bit sources keep 16 bits when written; a result above `max_output_megapixels` is
    refused before any work.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_MODEL,
        *,
        device: str = "auto",
        precision: str = "auto",
        backend: str = "auto",
        tile: int | str = "auto",
        tile_pad: int | None = None,
        outscale: float | None = None,
        self_ensemble: int = 1,
        compile: bool = False,
        max_output_megapixels: float = DEFAULT_MAX_OUTPUT_PIXELS / 1e6,
        mode: str = "auto",
        lapgan_levels: int | None = None,
        onnx: str | os.PathLike[str] | None = None,
        blend: tuple[str | os.PathLike[str], float] | None = None,
        denoise: float | None = None,
    ) -> None:
        if str(model) == AUTO_MODEL:
            raise UsageError(
                "model 'auto' picks a model per input file, in `srgan upscale`; here name one: "
                f"{DEFAULT_MODEL}, or {REAL_MODEL} for JPEGs saved at quality {AUTO_JPEG_QUALITY} or lower "
                "and video frames"
            )
        if tile != "auto" and (isinstance(tile, (str, bool)) or not isinstance(tile, (int, np.integer))):
            raise ArgumentTypeError(f"tile is 'auto', 0 or a side in pixels, not {tile!r}")
        outscale = check_outscale(outscale)
        max_output_pixels = check_max_pixels(max_output_megapixels)
        ready = build_upscaler(
            str(model),
            backend=backend,
            onnx=onnx,
            device=device,
            precision=precision,
            tile=None if tile == "auto" else int(tile),
            tile_pad=tile_pad,
            compile=compile,
            mode=mode,
            lapgan_levels=lapgan_levels,
            blend=None if blend is None else _blend(blend),
            denoise=denoise,
        )
        self._ready = with_self_ensemble(ready, self_ensemble)
        self.outscale = outscale
        self.max_output_pixels = max_output_pixels

    # --- what it is ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._ready.name

    @property
    def scale(self) -> int:
        """The model's own scale (the result's is `outscale` when it is given)."""
        return self._ready.scale

    @property
    def device(self) -> str:
        return self._ready.device

    @property
    def precision(self) -> str:
        return self._ready.precision

    @property
    def notes(self) -> list[str]:
        """One-line remarks about how it runs (a fallback, a fresh ONNX export)."""
        return list(self._ready.notes)

    @property
    def runtime(self) -> ReadyUpscaler:
        """The runtime's view (backend, the upscaler object, its config): not promised."""
        return self._ready

    def __repr__(self) -> str:
        where = f"{self._ready.backend} on {self.device}"
        return f"Upscaler({self.name!r}, x{self.scale}, {where}, {self.precision})"

    # --- upscaling ----------------------------------------------------------------------------
    @overload
    def __call__(self, image: str | os.PathLike[str]) -> Image.Image: ...
    @overload
    def __call__(self, image: Image.Image) -> Image.Image: ...
    @overload
    def __call__(self, image: Array) -> Array: ...
    def __call__(self, image: Any) -> Any:
        """Upscale one image, returned as the kind it came as: a PIL image for a PIL image or a
        path (read with EXIF orientation, ICC and alpha), a numpy array of the same dtype and
        layout ((H, W), (H, W, 1|2|3|4); uint8, uint16 or float in [0, 1]), or a torch tensor
        ((3, H, W) or (N, 3, H, W), uint8 in 0..255 or float in [0, 1], on the device it came
        from). Anything else is an ArgumentError (a ValueError) or ArgumentTypeError (a
        TypeError) that says what is wrong, before any work."""
        if isinstance(image, (str, os.PathLike)):
            return _to_pil(self._upscale(read_image(image)))
        if _is_pil(image):
            _check_size(image.height, image.width)
            return _to_pil(self._upscale(image_from_pil(image)))
        if isinstance(image, np.ndarray):
            return _to_array(self._upscale(_from_array(image)), image)
        if type(image).__module__.startswith("torch"):
            return self._upscale_tensor(image)
        raise ArgumentTypeError(
            f"cannot upscale a {type(image).__name__}: give a path, PIL image, numpy array or tensor"
        )

    def upscale_file(
        self,
        src: str | os.PathLike[str],
        dst: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        quality: int = 95,
        allow_partial: bool = False,
    ) -> Path:
        """Read `src`, upscale, write `dst` (format from its suffix) atomically; returns `dst`.
        `dst` may never be `src` itself (nor a link to it), even with `overwrite`. A multi-page TIFF
        is refused unless `allow_partial` (then its first page is upscaled)."""
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ArgumentError(f"quality is a whole number from 1 to 100, got {quality!r}")
        if same_file(src, dst):
            raise ArgumentError(f"{dst}: the output would overwrite the input; write to another path")
        out = self._upscale(read_image(src, max_pixels=DEFAULT_MAX_PIXELS, allow_partial=allow_partial))
        return write_image(dst, out, quality=quality, overwrite=overwrite)

    def upscale_folder(
        self,
        src: str | os.PathLike[str],
        dst: str | os.PathLike[str],
        *,
        recursive: bool = False,
        overwrite: bool = False,
        fmt: str = "auto",
        quality: int = 95,
        allow_partial: bool = False,
    ) -> list[JobResult]:
        """Every image in `src` into `dst` (names and subfolders kept), as `srgan upscale` does it:
        overlapped reading and writing, an existing output skipped when this model made it from this
        input with these options (else it fails and says why) unless `overwrite`, one failed
        file never stopping the others; an input is never overwritten. Returns one result per file
        (`.status`, `.error`, `.notes`)."""
        options = OutputOptions(
            Path(dst),
            fmt=fmt,
            quality=quality,
            overwrite=overwrite,
            max_output_pixels=self.max_output_pixels,
            allow_partial=allow_partial,
            outscale=self.outscale,
            producer=Producer(self.name, self.outscale or self.scale, quality, self._ready.self_ensemble),
        )
        plan = plan_jobs([str(src)], options, self.scale, recursive=recursive)
        return list(plan.failed) + list(
            run_jobs(self._ready.upscaler, plan.jobs, options, outscale=self.outscale)
        )

    def _upscale(self, image: ImageData) -> ImageData:
        return upscale_image(self._ready.upscaler, image, self.outscale, max_pixels=self.max_output_pixels)

    def _upscale_tensor(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        if x.ndim not in (3, 4) or x.shape[-3] != 3:
            raise ArgumentError(f"a tensor must be (3, H, W) or (N, 3, H, W), got {tuple(x.shape)}")
        if x.dtype != torch.uint8 and not x.is_floating_point():
            raise ArgumentTypeError(
                f"an image tensor is uint8 (0..255) or floating point (0..1), not {x.dtype}"
            )
        _check_size(x.shape[-2], x.shape[-1])
        batch = x[None] if x.ndim == 3 else x
        outs = []
        for one in batch:
            pixels = one.detach().permute(1, 2, 0).cpu()
            if x.dtype == torch.uint8:
                unit = pixels.numpy().astype(np.float32) / 255.0
            else:
                unit = _unit_floats(pixels.float().numpy(), "tensor")
            out = _unit(self._upscale(ImageData(np.ascontiguousarray(unit), None)).pixels)
            outs.append(torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1))
        y = torch.stack(outs).to(x.device)
        # the result in the tensor's own kind: uint8 stays 0..255, floats stay 0..1 in their dtype
        y = (y * 255).round_().to(torch.uint8) if x.dtype == torch.uint8 else y.to(x.dtype)
        return y[0] if x.ndim == 3 else y


FLOAT_SLACK = 0.1  # floats this far outside [0, 1] (a resampler's overshoot) are clipped, not refused


def _blend(blend: Any) -> Blend:
    """Upscaler's `blend=(other, alpha)`, checked (an ArgumentError says what is wrong)."""
    if not isinstance(blend, tuple) or len(blend) != 2 or not isinstance(blend[0], (str, os.PathLike)):
        raise ArgumentTypeError(f"blend is a (weights path, alpha) pair, not {blend!r}")
    return Blend(str(blend[0]), check_alpha(blend[1], "blend's alpha"))


def _check_size(height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise ArgumentError(f"an image has at least 1x1 pixels, got {width}x{height} (width x height)")


def _unit_floats(values: np.ndarray, kind: str) -> np.ndarray:
    """Float pixels in [0, 1] as float32, clipped; NaN/inf or a range like 0..255 is an ArgumentError
    that says what to do."""
    values = values.astype(np.float32, copy=False)
    if values.size == 0:
        return values
    if not np.isfinite(values).all():
        raise ArgumentError(f"the image {kind} holds NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if low < -FLOAT_SLACK or high > 1 + FLOAT_SLACK:
        hint = " (divide by 255, or pass uint8)" if high <= 255.5 and low >= -0.5 else ""
        raise ArgumentError(
            f"a floating-point image {kind} holds values in [0, 1], this one spans {low:g}..{high:g}{hint}"
        )
    return np.clip(values, 0.0, 1.0)


def _is_pil(image: Any) -> bool:
    return type(image).__module__.startswith("PIL.")


def _to_pil(image: ImageData) -> Image.Image:
    from PIL import Image

    if image.bit_depth == 16 and image.alpha is None and image.is_gray:
        return Image.fromarray(np.rint(_unit(image.pixels)[..., 0] * 65535).astype(np.uint16))
    arr = to_uint8(image.pixels)
    if image.alpha is not None:
        arr = np.dstack([arr, to_uint8(image.alpha[..., None])])
    return Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)


def _from_array(array: np.ndarray) -> ImageData:
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ArgumentError(
            f"an image array is (H, W) or (H, W, C) with C 1 (gray), 2 (gray, alpha), 3 (RGB) or "
            f"4 (RGBA), got {array.shape}"
        )
    _check_size(array.shape[0], array.shape[1])
    if array.dtype == np.uint8:
        unit, depth = array.astype(np.float32) / 255.0, 8
    elif array.dtype == np.uint16:
        unit, depth = array.astype(np.float32) / 65535.0, 16
    elif np.issubdtype(array.dtype, np.floating):
        unit, depth = _unit_floats(array, "array"), 8
    else:
        raise ArgumentTypeError(
            f"an image array is uint8, uint16 or floating point in [0, 1], not {array.dtype}"
        )
    alpha = unit[..., -1] if unit.shape[2] in (2, 4) else None
    return ImageData(np.ascontiguousarray(unit[..., :-1] if alpha is not None else unit), alpha, depth)


def _to_array(image: ImageData, like: np.ndarray) -> np.ndarray:
    """The result in `like`'s dtype and layout."""
    unit = _unit(image.pixels)
    if image.alpha is not None:
        unit = np.dstack([unit, image.alpha])
    if like.ndim == 2:
        unit = unit[..., 0]
    if like.dtype == np.uint8:
        return np.rint(unit * 255).astype(np.uint8)
    if like.dtype == np.uint16:
        return np.rint(unit * 65535).astype(np.uint16)
    return unit.astype(like.dtype)


def _unit(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float32) / 255.0 if pixels.dtype == np.uint8 else pixels
