"""`srgan models`: the weights this installation can find, with their recorded numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from .. import weights
from ..errors import ForeignWeights
from .common import JsonOpt, console, guard, stdout
from .results import print_result


def models(
    inspect: Annotated[
        Path | None,
        typer.Option(
            "--inspect",
            metavar="FILE",
            help="Say what a model file is (ours, or any architecture spandrel knows): architecture, "
            "scale, parameters, precisions, size needs.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List shipped weights (and those in SRGAN_WEIGHTS_DIR) with scale, size and validation numbers."""
    if inspect is not None:
        with guard(as_json):
            facts = _inspect(inspect)
        if as_json:
            stdout.print(json.dumps(facts, indent=2), markup=False, highlight=False)
        else:
            for key, value in facts.items():
                print_result(f"[bold]{escape(key)}[/]: {escape(str(value))}")
        return
    infos, foreign = weights.list_models(), weights.list_foreign()
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
                "use": weights.shipped_use(i),  # what a shipped file is for; "" for any other
            }
            for i in infos
        ]
        rows += [{"name": _stem(f), "arch": "third-party", "path": str(f), "default": False} for f in foreign]
        stdout.print(json.dumps(rows, indent=2), markup=False, highlight=False)
        return
    if not infos:
        console.print(
            f"no weights found (searched: {', '.join(map(str, weights.search_dirs())) or 'nothing'})"
        )
        return
    # names never wrap (they are what users type); the "use" column takes what width is left
    table = Table(
        show_edge=False,
        header_style="bold",
        caption="PSNR-Y (dB), LPIPS: each file's recorded validation (shipped: weights/README.md)",
        caption_justify="left",
    )
    table.add_column("name", no_wrap=True)
    for col in ("scale", "params", "PSNR-Y", "LPIPS"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("use", overflow="fold", ratio=1, min_width=12)
    for i in infos:
        psnr, lpips = i.metrics.get("val_psnr_y"), i.metrics.get("val_lpips")
        use = weights.shipped_use(i) or (f"trained on {i.trained_on}" if i.trained_on else "-")
        if i.name == weights.DEFAULT_MODEL:
            use = f"[green](default)[/] {use}"
        table.add_row(
            i.name,
            f"x{i.scale}" if i.scale > 1 else "-",  # generators and the checker do not enlarge
            f"{i.n_params / 1e6:.2f}M",
            f"{psnr:.2f}" if psnr is not None else "-",
            f"{lpips:.3f}" if lpips is not None else "-",
            use,
        )
    print_result(table, fit=True)
    if foreign:
        names = ", ".join(f"{_stem(f)} ({f.stat().st_size / 2**20:.1f} MB)" for f in foreign)
        print_result(f"third-party models (run through spandrel): {escape(names)}")
        console.print("[dim]details of one: srgan models --inspect FILE[/]")
    console.print("[dim]paths and training details: srgan models --json[/]")


def _inspect(path: Path) -> dict[str, Any]:
    """What a model file is: srgan-cli weights from their header, anything else through spandrel."""
    try:
        info = weights.read_info(path)
    except ForeignWeights:
        from ..runtime.third_party import describe, summary

        return {"file": str(path), "kind": "third-party (spandrel)", **summary(describe(path))}
    weights.read_state(info.path)  # the header says what it is; the tensors must also be finite
    return {
        "file": str(info.path),
        "kind": "srgan-cli weights",
        "architecture": info.arch,
        "scale": info.scale,
        "parameters": info.n_params,
        "config": info.config,
        "trained_on": info.trained_on,
        "metrics": info.metrics,
    }


def _stem(path: Path) -> str:
    return path.name.rsplit(".", 1)[0]
