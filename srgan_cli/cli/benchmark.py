"""`srgan benchmark ...`: speed measurements that print numbers (never a pass/fail test)."""

from __future__ import annotations

import json
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..benchmark import benchmark_train
from ..sr.train import TrainConfig
from .common import DeviceOpt, JsonOpt, console, guard, print_table, stdout
from .train import Amp, ContentLayer

app = typer.Typer(help="Measure throughput on this machine (see docs/benchmarks.md).", no_args_is_help=True)


class BenchStage(str, Enum):
    pretrain = "pretrain"
    gan = "gan"
    all = "all"


@app.command("train")
def train(
    stage: Annotated[
        BenchStage, typer.Option("--stage", help="Which training step to time.")
    ] = BenchStage.all,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Crops per step.")] = 16,
    crop: Annotated[int, typer.Option("--crop", min=8, help="HR crop side.")] = 96,
    scale: Annotated[int, typer.Option("--scale")] = 4,
    n_blocks: Annotated[int, typer.Option("--n-blocks", min=1)] = 16,
    n_feats: Annotated[int, typer.Option("--n-feats", min=1)] = 64,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Timed steps.")] = 10,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed steps first.")] = 3,
    device: DeviceOpt = "auto",
    amp: Annotated[Amp, typer.Option("--amp", help="Mixed precision on CUDA.")] = Amp.auto,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the networks.")] = False,
    content_layer: Annotated[ContentLayer, typer.Option("--content-layer")] = ContentLayer.vgg54,
    vgg_weights: Annotated[
        str | None,
        typer.Option(
            "--vgg-weights", help="VGG weights; default: random weights (speed does not depend on them)."
        ),
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="Photos to cut crops from; default: synthetic images.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """HR crops per second of the real training step (pretrain and/or GAN), with the machine's
    3x3-conv GFLOP/s measured in the same process as the reference."""
    base = TrainConfig(
        scale=scale,
        n_blocks=n_blocks,
        n_feats=n_feats,
        crop=crop,
        batch_size=batch_size,
        device=device,
        amp=amp.value,
        compile=compile_,
        content_layer=content_layer.value,
        vgg_weights=vgg_weights,
        ema=0.999,
    )
    stages = ["pretrain", "gan"] if stage == BenchStage.all else [stage.value]
    results = []
    with guard():
        base.validate()
        for name in stages:
            with console.status(f"timing {steps} {name} steps of batch {batch_size}"):
                results.append(
                    benchmark_train(replace(base, stage=name), steps=steps, warmup=warmup, data=data)
                )
    if as_json:
        stdout.print(json.dumps([r.to_dict() for r in results], indent=2), markup=False)
        return
    first = results[0]
    table = Table(
        show_edge=False,
        header_style="bold",
        title=f"training throughput: {first.model}, batch {first.batch_size} x {first.crop}px, "
        f"{first.device}, amp {first.amp}{', compiled' if first.compile else ''}",
    )
    for col in (
        "stage",
        "crops/s",
        "ms/step (min-max)",
        "GFLOP/crop",
        "GFLOP/s",
        "of 3x3 conv ref",
        "peak MB",
    ):
        table.add_column(col, justify="right" if col != "stage" else "left")
    for r in results:
        lo, hi = r.ms_per_step_spread
        table.add_row(
            r.stage,
            f"{r.crops_per_s:,.1f}",
            f"{r.ms_per_step:.1f} ({lo:.1f}-{hi:.1f})",
            f"{r.gflop_per_crop:.2f}",
            f"{r.achieved_gflops:,.1f}",
            f"{r.fraction_of_reference:.0%} of {r.reference_gflops:,.0f}",
            f"{r.peak_memory_mb:,.0f}",
        )
    print_table(table)
    if any(r.vgg == "random (speed only)" for r in results):
        console.print("[dim]gan stage timed with a randomly initialised VGG (same shape, same speed)[/]")
