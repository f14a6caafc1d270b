"""Palette storage for weight files whose tensors take few distinct values.

The Caffe VGG19 weights that `srgan weights fetch-perceptual` builds come from a package that stores each
kernel k-means quantised: every conv kernel holds at most 256 distinct values. Such a kernel is
exactly a table of those values plus a uint8 index per weight, a quarter of its float32 size and
with nothing rounded (float16 would halve the file and round every value). `pack` writes a tensor
`K` that way as `K.codes` (uint8, K's shape) and `K.palette` (the values, 1-D); tensors with more
than 256 values, or too small to gain, stay as they are. `unpack` restores the plain state dict;
the VGG loader applies it to every file it reads, so a packed file is used like any other.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..atomic import atomic_open

CODES = ".codes"
PALETTE = ".palette"
MAX_VALUES = 256  # what a uint8 index can address
MIN_SIZE = 4096  # smaller tensors (biases) gain little and stay plain


class PaletteError(ValueError):
    """A packed state dict whose codes and palettes do not fit together."""


def pack(state: dict[str, torch.Tensor], *, min_size: int = MIN_SIZE) -> dict[str, torch.Tensor]:
    """`state` with each floating tensor of at least `min_size` elements and at most 256 distinct
    values replaced by its codes and palette; `unpack` gives back exactly the same tensors."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.endswith((CODES, PALETTE)):
            raise PaletteError(f"{key}: the name already ends like a packed tensor's part")
        if tensor.is_floating_point() and tensor.numel() >= min_size:
            values, codes = torch.unique(tensor, return_inverse=True)  # values sorted, codes index them
            if values.numel() <= MAX_VALUES:
                out[key + CODES] = codes.to(torch.uint8).contiguous()
                out[key + PALETTE] = values.contiguous()
                continue
        out[key] = tensor.contiguous()
    return out


def unpack(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plain state dict of a packed one (a plain one is returned as it is)."""
    if not any(key.endswith((CODES, PALETTE)) for key in state):
        return state
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for key, tensor in state.items():
        if key.endswith(PALETTE):
            continue
        if not key.endswith(CODES):
            out[key] = tensor
            continue
        base = key[: -len(CODES)]
        palette = state.get(base + PALETTE)
        if palette is None:
            raise PaletteError(f"{key} has no {base + PALETTE} beside it")
        if tensor.dtype != torch.uint8 or palette.dim() != 1 or not palette.is_floating_point():
            raise PaletteError(
                f"{base}: codes must be uint8 and the palette a 1-D float tensor "
                f"(got {tensor.dtype} and {palette.dtype} {tuple(palette.shape)})"
            )
        if tensor.numel() and int(tensor.max()) >= palette.numel():
            raise PaletteError(
                f"{base}: a code ({int(tensor.max())}) points past its {palette.numel()}-value palette"
            )
        if base in state:
            raise PaletteError(f"{base} is stored both plain and packed")
        out[base] = palette[tensor.long()]
        used.add(base + PALETTE)
    orphans = [key for key in state if key.endswith(PALETTE) and key not in used]
    if orphans:
        raise PaletteError(f"{orphans[0]} has no {orphans[0][: -len(PALETTE)] + CODES} beside it")
    return out


def pack_file(src: str | Path, dst: str | Path, *, overwrite: bool = False) -> tuple[int, int]:
    """Write `src` (safetensors) packed to `dst`, checking that it unpacks to exactly `src`'s
    tensors. Returns (tensors packed, tensors in all). Refuses to replace `dst` unless `overwrite`."""
    from safetensors.torch import load_file, save

    src, dst = Path(src), Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists (overwrite it explicitly)")
    state = load_file(str(src))
    packed = pack(state)
    back = unpack(packed)
    if back.keys() != state.keys() or not all(torch.equal(back[k], state[k]) for k in state):
        raise PaletteError(f"packing {src} did not round-trip")  # a bug, never expected
    with atomic_open(dst) as fh:
        fh.write(save(packed, metadata={"packing": "palette", "source": src.name}))
    return sum(1 for k in packed if k.endswith(CODES)), len(state)
