"""`srgan eval`: PSNR/SSIM of a model next to bicubic on a folder of HR photos."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .. import weights
from ..devices import resolve_device, resolve_precision
from ..runtime.torch_backend import TorchUpscaler
from ..sr.data import load_eval_pairs
from ..sr.evaluate import evaluate as run_eval
from .common import DeviceOpt, JsonOpt, Precision, TileOpt, console, guard, parse_tile, stdout


def evaluate(
    data: Annotated[
        Path, typer.Option("--data", help="Folder of HR photos; LR is made by bicubic downscaling.")
    ],
    model: Annotated[
        str, typer.Option("-m", "--model", help="Weights name or path.")
    ] = weights.DEFAULT_MODEL,
    limit: Annotated[int, typer.Option("--limit", min=0, help="Use at most this many photos (0 = all).")] = 0,
    device: DeviceOpt = "auto",
    precision: Annotated[
        Precision, typer.Option("--precision", help="Inference precision; fp32 gives reference numbers.")
    ] = Precision.fp32,
    tile: TileOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Score a model against bicubic: Y-channel PSNR/SSIM, `scale` pixels of border removed."""
    tile_size = parse_tile(tile)
    with guard():
        loaded = weights.load(model)
        scale = loaded.info.scale
        dev = resolve_device(device)
        upscaler = TorchUpscaler(
            loaded.model,
            device=dev,
            dtype=resolve_precision(precision.value, dev),
            tile=tile_size,
            tile_pad=32,
        )
        pairs = load_eval_pairs(data, scale, limit=limit or None)
        with console.status(f"evaluating {loaded.info.name} on {len(pairs)} image(s)"):
            bicubic = run_eval(pairs, scale, None, "bicubic")
            ours = run_eval(pairs, scale, upscaler, loaded.info.name)
    if as_json:
        stdout.print(
            json.dumps(
                {"data": str(data), "scale": scale, "results": [bicubic.to_dict(), ours.to_dict()]}, indent=2
            ),
            markup=False,
        )
        return
    table = Table(
        show_edge=False, header_style="bold", title=f"x{scale} on {data} (Y channel, border {scale})"
    )
    table.add_column("image")
    for col in ("bicubic PSNR", "bicubic SSIM", f"{loaded.info.name} PSNR", f"{loaded.info.name} SSIM"):
        table.add_column(col, justify="right")
    for b, o in zip(bicubic.images, ours.images, strict=True):
        table.add_row(b.name, f"{b.psnr:.2f}", f"{b.ssim:.4f}", f"{o.psnr:.2f}", f"{o.ssim:.4f}")
    table.add_row(
        "[bold]mean",
        f"[bold]{bicubic.psnr:.2f}",
        f"[bold]{bicubic.ssim:.4f}",
        f"[bold]{ours.psnr:.2f}",
        f"[bold]{ours.ssim:.4f}",
    )
    console.print(table)
