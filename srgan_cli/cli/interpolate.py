"""`srgan interpolate`: blend a PSNR model and a GAN model trained from it, weight by weight."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from .. import archs, weights
from ..errors import UsageError
from .common import console, guard


def interpolate(
    first: Annotated[str, typer.Argument(metavar="PSNR_MODEL", help="Weights name or path (alpha 0).")],
    second: Annotated[str, typer.Argument(metavar="GAN_MODEL", help="Weights name or path (alpha 1).")],
    alpha: Annotated[
        float,
        typer.Option(
            "--alpha", min=0.0, max=1.0, help="Share of GAN_MODEL: 0 gives PSNR_MODEL, 1 GAN_MODEL."
        ),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="The .safetensors file to write.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
) -> None:
    """Network interpolation (ESRGAN): (1 - alpha) x PSNR_MODEL + alpha x GAN_MODEL.

    Blending the weights of a PSNR-trained model with those of the GAN model fine-tuned from it
    gives a smooth trade between clean, soft output and GAN texture (and its artefacts), without
    training. Score the result with `srgan eval -m OUT --grid`.
    """
    with guard():
        if output.suffix != ".safetensors":
            raise UsageError(f"{output}: the output must be a .safetensors file")
        if output.exists() and not overwrite:
            raise UsageError(f"{output} exists", hint="pass --overwrite to replace it")
        model, provenance = archs.interpolate(first, second, alpha)
        first_info = weights.read_info(first)
        weights.save(output, model, trained_on=first_info.trained_on, provenance=provenance)
    blend = f"{1 - alpha:g} x {first} + {alpha:g} x {second}"
    console.print(f"[green]wrote[/] {escape(str(output))} ({escape(blend)})")
