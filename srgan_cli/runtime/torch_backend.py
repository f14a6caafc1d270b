"""PyTorch upscaler: a model on a device, run tile by tile on (H, W, 3) float32 arrays."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..devices import free_memory_bytes
from ..errors import OutOfMemory
from ..tiling import pick_tile, tiled_apply

MIN_TILE = 32


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text
    )


class TorchUpscaler:
    """Upscale float32 (H, W, 3) arrays in [0, 1] with a torch model.

    tile: LR tile side in pixels; 0 runs the whole image at once, falling back to smaller tiles
    if it does not fit; None ("auto") picks a side from the free memory on the device.
    """

    backend = "torch"

    def __init__(
        self,
        model: nn.Module,
        *,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        tile: int | None = None,
        tile_pad: int = 24,
    ) -> None:
        self.model = model.to(device).eval()
        self.device, self.dtype = device, dtype
        self.scale = int(model.config.scale)  # type: ignore[union-attr]
        self.tile, self.tile_pad = tile, tile_pad
        self.last_tile: int = 0  # the tile side actually used by the last call (0 = whole image)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            self.model = self.model.to(memory_format=torch.channels_last)

    def _bytes_per_lr_pixel(self) -> float:
        # peak activations sit around the last x2 upsample: about 4*F channels at (s/2)^2 pixels
        # per LR pixel for the conv output plus F at s^2 for the shuffled result, in the compute dtype
        feats = int(self.model.config.n_feats)  # type: ignore[union-attr]
        elem = torch.finfo(self.dtype).bits // 8
        return elem * feats * (4 * (self.scale / 2) ** 2 + self.scale**2) * 2.0

    def _auto_tile(self, height: int, width: int) -> int:
        side = pick_tile(free_memory_bytes(self.device), self._bytes_per_lr_pixel(), minimum=MIN_TILE)
        return 0 if max(height, width) <= side else side

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        autocast = (
            torch.autocast(self.device.type, dtype=self.dtype)
            if self.dtype != torch.float32
            else contextlib.nullcontext()
        )
        with autocast:
            y = self.model(x)
        return y.float().clamp_(0, 1)

    def upscale_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float in [0, 1] on any device -> (N, 3, sH, sW) float32 on self.device."""
        x = x.to(self.device, torch.float32)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        height, width = x.shape[-2:]
        tile = self._auto_tile(height, width) if self.tile is None else self.tile
        run: Callable[[torch.Tensor], torch.Tensor] = self._run
        while True:
            try:
                with torch.inference_mode():
                    out = tiled_apply(x, run, self.scale, tile, self.tile_pad)
                self.last_tile = tile
                return out
            except Exception as exc:
                if not _is_oom(exc):
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                current = tile if tile > 0 else max(height, width)
                if current <= MIN_TILE:
                    raise OutOfMemory(
                        f"out of memory on {self.device} even with {MIN_TILE}px tiles",
                    ) from exc
                tile = max(MIN_TILE, current // 2)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """(H, W, 3) float32 in [0, 1] -> (sH, sW, 3) float32 in [0, 1]."""
        x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).permute(2, 0, 1)[None]
        y = self.upscale_tensor(x)
        return y[0].permute(1, 2, 0).cpu().numpy()
