"""`srgan interpolate`: blend two models of one architecture (ours or community), weight by weight."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from .. import blend
from ..errors import UsageError
from .common import console, guard


def interpolate(
    first: Annotated[
        str, typer.Argument(metavar="MODEL_A", help="Weights name or path, e.g. a PSNR model (alpha 0).")
    ],
    second: Annotated[
        str, typer.Argument(metavar="MODEL_B", help="Weights name or path, e.g. its GAN model (alpha 1).")
    ],
    alpha: Annotated[
        float,
        typer.Option("--alpha", min=0.0, max=1.0, help="Share of MODEL_B: 0 gives MODEL_A, 1 MODEL_B."),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="The .safetensors file to write.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
) -> None:
    """Network interpolation (ESRGAN): (1 - alpha) x MODEL_A + alpha x MODEL_B.

    Blending the weights of a PSNR-trained model with those of the GAN model fine-tuned from it
    gives a smooth trade between clean, soft output and GAN texture (and its artefacts), without
    training. Community models blend too when both are one architecture, scale and size:
    Real-ESRGAN's denoise strength S is `srgan interpolate realesr-general-wdn-x4v3.pth
    realesr-general-x4v3.pth --alpha S`. Score the result with `srgan eval -m OUT --grid`.
    """
    with guard():
        if output.suffix != ".safetensors":
            raise UsageError(f"{output}: the output must be a .safetensors file")
        if output.exists() and not overwrite:
            raise UsageError(f"{output} exists", hint="pass --overwrite to replace it")
        written = blend.interpolate_file(first, second, alpha, output)
    mixed = f"{1 - alpha:g} x {first} + {alpha:g} x {second}; x{written.scale} {written.architecture}"
    console.print(f"[green]wrote[/] {escape(str(output))} ({escape(mixed)})")
