"""`srgan models`: the weights this installation can find, with their recorded numbers."""

from __future__ import annotations

import json

from rich.table import Table

from .. import weights
from .common import JsonOpt, console, stdout


def models(as_json: JsonOpt = False) -> None:
    """List shipped weights (and those in SRGAN_WEIGHTS_DIR) with scale, size and validation numbers."""
    infos = weights.list_models()
    if as_json:
        rows = [
            {
                "name": i.name,
                "arch": i.arch,
                "scale": i.scale,
                "params": i.n_params,
                "config": i.config,
                "trained_on": i.trained_on,
                "metrics": i.metrics,
                "provenance": i.provenance,
                "path": str(i.path),
                "default": i.name == weights.DEFAULT_MODEL,
            }
            for i in infos
        ]
        stdout.print(json.dumps(rows, indent=2), markup=False, highlight=False)
        return
    if not infos:
        console.print(
            f"no weights found (searched: {', '.join(map(str, weights.search_dirs())) or 'nothing'})"
        )
        return
    table = Table(show_edge=False, header_style="bold")
    for col in ("name", "arch", "scale", "params", "val PSNR-Y", "val SSIM-Y", "trained on"):
        table.add_column(col, justify="right" if col in ("scale", "params") else "left")
    for i in infos:
        name = f"{i.name} [green](default)[/]" if i.name == weights.DEFAULT_MODEL else i.name
        psnr = i.metrics.get("val_psnr_y")
        ssim = i.metrics.get("val_ssim_y")
        table.add_row(
            name,
            i.arch,
            f"x{i.scale}" if i.scale > 1 else "-",  # generators and the checker do not enlarge
            f"{i.n_params / 1e6:.2f}M",
            f"{psnr:.2f} dB" if psnr is not None else "-",
            f"{ssim:.4f}" if ssim is not None else "-",
            i.trained_on or "-",
        )
    console.print(table)
    console.print("[dim]paths and training details: srgan models --json[/]")
