"""`srgan train`: build a typed config from the options, run it, and show live progress."""

from __future__ import annotations

from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..sr.train import TrainConfig, read_checkpoint_config
from ..sr.train import train as run_training
from .common import console, guard


class Stage(str, Enum):
    pretrain = "pretrain"


class Loss(str, Enum):
    mse = "mse"
    l1 = "l1"


class Schedule(str, Enum):
    constant = "constant"
    cosine = "cosine"


class Amp(str, Enum):
    auto = "auto"
    off = "off"
    bf16 = "bf16"
    fp16 = "fp16"


def train(
    data: Annotated[
        Path | None, typer.Option("--data", help="Folder of HR training photos (recursive).")
    ] = None,
    val: Annotated[Path | None, typer.Option("--val", help="Folder of HR validation photos.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Run folder: checkpoint, log, weights.")] = None,
    stage: Annotated[
        Stage | None, typer.Option("--stage", help="pretrain: SRResNet with a pixel loss.")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out exactly.")] = False,
    scale: Annotated[int | None, typer.Option("--scale", help="2, 4 or 8. [default: 4]")] = None,
    n_blocks: Annotated[
        int | None, typer.Option("--n-blocks", min=1, help="Residual blocks. [default: 16]")
    ] = None,
    n_feats: Annotated[int | None, typer.Option("--n-feats", min=1, help="Channels. [default: 64]")] = None,
    global_skip: Annotated[
        bool | None,
        typer.Option(
            "--global-skip/--no-global-skip",
            help="Learn a residual over bicubic upscaling (not in the paper; converges much faster).",
            show_default=False,
        ),
    ] = None,
    crop: Annotated[int | None, typer.Option("--crop", min=8, help="HR crop side. [default: 96]")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="[default: 16]")] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", min=1, help="Total steps. [default: 100000]")
    ] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Adam learning rate. [default: 1e-4]")] = None,
    schedule: Annotated[Schedule | None, typer.Option("--schedule", help="[default: constant]")] = None,
    loss: Annotated[Loss | None, typer.Option("--loss", help="Pixel loss. [default: mse]")] = None,
    ema: Annotated[
        float | None, typer.Option("--ema", help="EMA decay of the weights, 0 = off. [default: 0.999]")
    ] = None,
    augment: Annotated[bool | None, typer.Option("--augment/--no-augment", show_default=False)] = None,
    cache_images: Annotated[
        bool | None,
        typer.Option("--cache/--no-cache", help="Keep decoded photos in memory.", show_default=False),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Data loader processes, -1 = auto.")
    ] = None,
    val_every: Annotated[int | None, typer.Option("--val-every", min=1, help="[default: 1000]")] = None,
    val_limit: Annotated[
        int | None, typer.Option("--val-limit", min=0, help="Validate on at most N photos.")
    ] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option("--checkpoint-every", min=1, help="[default: 500]")
    ] = None,
    log_every: Annotated[int | None, typer.Option("--log-every", min=1, help="[default: 20]")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N.")] = None,
    amp: Annotated[Amp | None, typer.Option("--amp", help="Mixed precision on CUDA. [default: auto]")] = None,
    init: Annotated[str | None, typer.Option("--init", help="Start from these generator weights.")] = None,
) -> None:
    """Train a super-resolution model on your own photos (resumable; see docs/training.md)."""
    params = dict(locals())  # taken first: only the options themselves
    given: dict[str, Any] = {
        k: (v.value if isinstance(v, Enum) else str(v) if isinstance(v, Path) else v)
        for k, v in params.items()
        if k != "resume" and v is not None
    }
    with guard():
        if resume:
            base = read_checkpoint_config(out or TrainConfig.out)
        else:
            if data is None:
                raise typer.BadParameter("--data is required (a folder of photos)", param_hint="--data")
            base = TrainConfig()
        known = {f.name for f in fields(TrainConfig)}
        config = TrainConfig.from_dict({**{k: getattr(base, k) for k in known}, **given})
        _run(config, resume)


def _run(config: TrainConfig, resume: bool) -> None:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  val {task.fields[val]}  {task.fields[speed]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(config.stage, total=config.steps, loss="-", val="-", speed="")

        def on_event(kind: str, data: dict[str, Any]) -> None:
            if kind == "start":
                progress.update(task, completed=data["step"])
                progress.console.print(
                    f"training on {data['images']} photos, {data['params'] / 1e6:.2f}M params, "
                    f"device {data['device']}, amp {data['amp']}, from step {data['step']}"
                )
                for line in data["skipped"]:
                    progress.console.print(f"[yellow]skipped[/] {line}")
            elif kind == "log":
                progress.update(
                    task,
                    completed=data["step"],
                    loss=f"{data['loss']:.4f}",
                    speed=f"{data['images_per_s']:.1f} img/s",
                )
            elif kind == "val":
                progress.update(task, val=f"{data['psnr']:.2f} dB / {data['ssim']:.4f}")
                progress.console.print(
                    f"step {data['step']}: val PSNR-Y {data['psnr']:.3f} dB, SSIM-Y {data['ssim']:.4f}"
                )
            elif kind == "done":
                progress.update(task, completed=data["step"])

        result = run_training(config, resume=resume, on_event=on_event)
    console.print(
        f"[green]done[/]: {result.steps} steps in {result.seconds / 60:.1f} min -> {result.weights}"
    )
