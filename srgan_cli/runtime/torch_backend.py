"""PyTorch upscalers: `TensorUpscaler`, what every torch-run upscaler shares (tiles, `--tile auto`,
the out-of-memory retry, the NaN/Inf check, numpy in and out), and `TorchUpscaler`, a
super-resolution model on it."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..devices import free_memory_bytes, precision_name
from ..errors import NonFiniteOutput
from .fused import fuse
from .progress import tile_sink
from .tiling import auto_tile, shrink_on_oom, tile_grid, tiled_apply


def is_torch_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text
    )


class TensorUpscaler:
    """An upscaler whose passes are torch functions on self.device: runs them tile by tile (0 = the
    whole image at once; None = a side picked from the free memory), halving the tile and trying
    again on out-of-memory. A subclass sets the attributes below and gives `_pass`."""

    backend = "torch"
    device: torch.device
    scale: int
    tile: int | None
    tile_pad: int | Callable[[], int]  # or a function giving it when an image is cut (tiled_apply)
    tile_align: int = 1  # tiles start at multiples of this (a window-attention model's window)
    tile_batch: int = 1  # tiles of one shape run together
    n_feats: int = 64  # widest feature map, and bytes per element: the `--tile auto` estimate
    elem_bytes: int = 4
    dtype: torch.dtype = torch.float32  # what the model runs in (named when its output overflows)
    last_tile: int = 0  # the tile side actually used by the last call (0 = whole image)
    compiled: bool = False
    model: nn.Module | None = None  # the network `_pass` runs (its conv layers report progress)
    _work_per_pixel: float | None = None  # conv work per LR pixel of one pass (measured once)

    def _pass(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The function one attempt applies to each (N, 3, h, w) tile on self.device: the model's
        float32 output, unclamped (the caller checks it for NaN/Inf, then clamps it to [0, 1])."""
        raise NotImplementedError

    def _prepare_forward(self, model: nn.Module, compile: bool) -> Callable[..., torch.Tensor]:
        """`model` as a step calls it: torch.compile'd when asked (with CUDA graphs on a GPU, which
        pay off for many inputs of one size and compile once per new one), and cudnn's autotuning
        on for GPUs (once per input shape)."""
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.compiled = compile
        if not compile:
            return model
        mode = "reduce-overhead" if self.device.type == "cuda" else "default"
        return torch.compile(model, mode=mode, dynamic=False)  # type: ignore[return-value]

    def upscale_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float in [0, 1] or uint8 in [0, 255], on any device -> (N, 3, sH, sW)
        float32 in [0, 1] on self.device."""
        if x.dtype == torch.uint8:  # bytes cross to the device, the division happens there
            x = x.to(self.device, non_blocking=True).float().div_(255.0)
        x = x.to(self.device, torch.float32)
        height, width = x.shape[-2:]
        tile = self.tile
        if tile is None:
            free = free_memory_bytes(self.device) // max(int(x.shape[0]), 1)  # a batch shares it
            tile = auto_tile(
                free, height, width, scale=self.scale, n_feats=self.n_feats, elem_bytes=self.elem_bytes
            )

        def attempt(side: int) -> torch.Tensor:
            watch = _FiniteWatch(self._pass(), precision_name(self.dtype))
            with torch.inference_mode(), self._layer_progress(x, side):
                out = tiled_apply(
                    x, watch, self.scale, side, self.tile_pad, batch=self.tile_batch, align=self.tile_align
                )
            watch.check()
            return out

        def cleanup() -> None:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

        out, self.last_tile = shrink_on_oom(
            attempt, tile, max(height, width), is_torch_oom, str(self.device), cleanup
        )
        return out

    def _layer_progress(self, x: torch.Tensor, side: int) -> contextlib.AbstractContextManager[None]:
        """Progress inside a whole-image pass on the CPU (one tile, so the tiler has nothing to report
        until the end): each conv layer of the model tells the progress sink (runtime/progress.py)
        the share of the pass's conv work done so far, as LR pixels. The same pass, the same result,
        a Python call per layer; nothing at all without a sink. Not on a GPU, whose layers are only
        queued when their hooks run, nor for a compiled model."""
        sink = tile_sink()
        n, _c, height, width = x.shape
        if (
            sink is None
            or self.model is None
            or self.compiled
            or self.device.type != "cpu"
            or len(tile_grid(height, width, side)) > 1
        ):
            return contextlib.nullcontext()
        per_pixel = self._measure_work()
        if not per_pixel:
            return contextlib.nullcontext()
        total = int(n * height * width)
        expected = per_pixel * total
        state = {"work": 0.0, "done": 0}

        def on_work(work: float) -> None:
            state["work"] += work
            done = min(total - 1, int(total * state["work"] / expected))  # the tiler says "all"
            if done > state["done"]:
                state["done"] = done
                sink(done, total)

        return _conv_work(self.model, on_work)

    def _measure_work(self) -> float:
        """Conv work per LR pixel of one pass, from a pass over a small probe (once; 0 if the model
        cannot run one, and then it shows no progress inside a pass)."""
        if self._work_per_pixel is None and self.model is not None:
            step = max(int(getattr(self, "multiple", 1)), 1)  # a community model's size needs
            side = -(-max(32, int(getattr(self, "minimum", 0))) // step) * step
            work = 0.0

            def add(amount: float) -> None:
                nonlocal work
                work += amount

            try:
                with torch.inference_mode(), _conv_work(self.model, add):
                    self._pass()(torch.zeros(1, 3, side, side, device=self.device))
            except Exception:  # only progress is lost
                work = 0.0
            self._work_per_pixel = work / side**2
        return self._work_per_pixel or 0.0

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """(H, W, 3) float32 in [0, 1] -> (sH, sW, 3) float32 in [0, 1]."""
        y = self.upscale_tensor(_to_tensor(pixels))
        return y[0].permute(1, 2, 0).cpu().numpy()

    def upscale_u8(self, pixels: np.ndarray) -> np.ndarray:
        """(H, W, 3) float32 in [0, 1] or uint8 -> (sH, sW, 3) uint8, rounded on the device exactly
        as imageio.write_image rounds floats (so the file is the same), and copied back as bytes:
        a quarter of the float32 transfer, and no conversion on the host."""
        return self.upscale_u8_batch([pixels])[0]

    def upscale_u8_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """`upscale_u8` of several images of one size (video frames) in one pass."""
        y = self.upscale_tensor(torch.cat([_to_tensor(image) for image in images]))
        y = torch.nan_to_num(y, nan=0.0, posinf=1.0, neginf=0.0).clamp_(0, 1)
        q = y.mul_(255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        if q.is_cuda:  # into page-locked memory (PyTorch caches those blocks): a full-speed copy
            host = torch.empty(q.shape, dtype=torch.uint8, pin_memory=True)
            host.copy_(q, non_blocking=True)
            torch.cuda.current_stream(q.device).synchronize()
            return list(host.numpy())
        return list(q.numpy())


def _receptive_radius(model: nn.Module) -> int:
    from ..sr.models import SRResNet

    return SRResNet.receptive_radius(model.config)  # type: ignore[arg-type]


class _FiniteWatch:
    """A pass whose outputs are checked for NaN or Inf before they are clamped to [0, 1] (clamping
    would hide an overflow as white). The check is each tile's sum, one reduction that NaN and Inf
    carry through (finite outputs big enough to overflow it, ~1e32 a pixel, are garbage as well).
    The first tile of an image is looked at at once, so a broken model fails before the rest of
    the image is run; the others only add to a total on the device, looked at by `check` when the
    image is done: two host syncs per image, none per tile."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], precision: str) -> None:
        self.fn, self.precision = fn, precision
        self.total: torch.Tensor | None = None  # () float32 on the device: the sum of every tile so far

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fn(x)
        if self.total is None:
            self.total = y.sum()
            self.check()
        else:
            self.total += y.sum()
        return y.clamp_(0, 1)

    def check(self) -> None:
        if self.total is not None and not bool(torch.isfinite(self.total)):
            raise NonFiniteOutput(self.precision)


@contextlib.contextmanager
def _conv_work(model: nn.Module, on_work: Callable[[float], None]) -> Iterator[None]:
    """Inside: `on_work(multiply-adds)` after each Conv2d of `model` runs."""

    def hook(module: nn.Module, _inputs: object, out: torch.Tensor) -> None:
        assert isinstance(module, nn.Conv2d)
        kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        on_work(float(kernel * out.numel()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, 3) float32 in [0, 1] or uint8 -> (1, 3, H, W): uint8 stays uint8 until the device."""
    if pixels.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None]
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).permute(2, 0, 1)[None]


class TorchUpscaler(TensorUpscaler):
    """Upscale float32 (H, W, 3) arrays in [0, 1] with a torch model.

    The fast path is the default: the model is rewritten into its fused inference form
    (runtime/fused.py), cast to `dtype` (no autocast round trips), and run channels_last under
    inference_mode with cudnn.benchmark on GPUs; tiles of one shape go through in batches of
    `tile_batch`, and the output stays on the device until the whole image is done (no per-tile
    host sync). fast=False runs the paper's graph in PyTorch's default NCHW layout: the baseline
    that `srgan benchmark upscale --plain` compares with.

    tile: LR tile side in pixels; 0 runs the whole image at once, falling back to smaller tiles
    if it does not fit; None ("auto") picks a side from the free memory on the device.
    compile: torch.compile the model; on CUDA with CUDA graphs ("reduce-overhead"), which pays off
    for many inputs of one size (video frames, fixed tiles) and costs a recompile per new shape.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        tile: int | None = None,
        tile_pad: int | None = 24,
        tile_batch: int | None = None,
        compile: bool = False,
        fast: bool = True,
    ) -> None:
        self.device, self.dtype = device, dtype
        self.scale = int(model.config.scale)  # type: ignore[union-attr]
        self.n_feats = int(getattr(model.config, "n_feats", 64))  # type: ignore[union-attr]
        self.elem_bytes = torch.finfo(dtype).bits // 8
        self.fast = fast
        # never the caller's module: fuse() copies, and the plain path copies too
        net = fuse(model) if fast else copy.deepcopy(model)
        self.model: nn.Module = net.to(device=device, dtype=dtype).eval()
        self.layout = torch.channels_last if fast else torch.contiguous_format
        self.model = self.model.to(memory_format=self.layout)
        # None: the network's receptive radius (40 LR px for srresnet_x4): tiles then match exactly
        self.tile, self.tile_pad = tile, tile_pad if tile_pad is not None else _receptive_radius(model)
        self.tile_batch = tile_batch if tile_batch is not None else (8 if device.type == "cuda" else 1)
        self._forward = self._prepare_forward(self.model, compile)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        y = self._forward(x.to(self.dtype).contiguous(memory_format=self.layout))
        return y.float()  # (checked and clamped by the caller)

    def _pass(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return self._run
