"""`srgan lapgan train|sample|eval`: the Laplacian pyramid GAN of Denton et al. (2015)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ..lapgan.train import LapganTrainConfig
from . import common
from .common import (
    DeviceOpt,
    JsonOpt,
    console,
    given_options,
    guard,
    parse_duration,
    stdout,
    training_progress,
)
from .results import print_result
from .signals import StopOnSignal, terminate_as_interrupt

app = typer.Typer(
    help="LAPGAN: sample images coarse to fine, train a pyramid of GANs, score it (Parzen window).",
    no_args_is_help=True,
)

_RUN = "Run"
_MODEL = "Model (fixed by the first run in --out)"
_OPT = "Optimisation"


_opt = common.panel_option(_OPT, LapganTrainConfig())


@app.command("train", no_args_is_help=True)
def train(
    data: Annotated[
        Path | None,
        _opt(
            "--data",
            panel=_RUN,
            metavar="DIR",
            help="Folder of images; class subfolders make a class-conditional model.",
        ),
    ] = None,
    out: Annotated[Path, _opt("--out", panel=_RUN, metavar="DIR", help="Run folder.")] = Path("runs/lapgan"),
    level: Annotated[
        list[int] | None,
        _opt("--level", panel=_RUN, help="Train only this level (repeatable; 0 = coarsest). Default: all."),
    ] = None,
    resume: Annotated[bool, _opt("--resume", panel=_RUN, help="Continue the levels' checkpoints.")] = False,
    overwrite: Annotated[
        bool, _opt("--overwrite", panel=_RUN, help="Train already trained levels again from scratch.")
    ] = False,
    time_limit: Annotated[
        str | None,
        _opt(
            "--time-limit",
            metavar="TIME",
            panel=_RUN,
            help=common.TIME_LIMIT_HELP + " The level in progress stops there; later levels wait.",
        ),
    ] = None,
    size: Annotated[int | None, _opt("--size", panel=_MODEL, help="Finest side: 32 or 64.")] = None,
    levels: Annotated[
        int | None,
        _opt(
            "--levels",
            default="from --base",
            panel=_MODEL,
            min=1,
            help="Pyramid levels (1 = a single-scale GAN).",
        ),
    ] = None,
    base: Annotated[int | None, _opt("--base", panel=_MODEL, help="Coarsest side.")] = None,
    n_feats: Annotated[
        int | None, _opt("--n-feats", panel=_MODEL, min=1, help="Conv width of levels 1..")
    ] = None,
    coarse_hidden: Annotated[
        int | None,
        _opt("--coarse-hidden", panel=_MODEL, min=1, help="Width of G_0's layers."),
    ] = None,
    classes: Annotated[
        bool | None,
        _opt(
            "--classes/--no-classes",
            panel=_MODEL,
            help="Use class subfolders.",
            show_default=False,
        ),
    ] = None,
    steps: Annotated[int | None, _opt("--steps", min=1, help="Steps per level.")] = None,
    batch_size: Annotated[int | None, _opt("--batch-size", min=1)] = None,
    lr: Annotated[float | None, _opt("--lr", help="Adam learning rate (positive).")] = None,
    min_crop: Annotated[
        float | None, _opt("--min-crop", help="Smallest crop / short side of a photo.")
    ] = None,
    seed: Annotated[int | None, _opt("--seed")] = None,
    sample_every: Annotated[
        int | None, _opt("--sample-every", min=1, help="Sample grid every N steps.")
    ] = None,
    checkpoint_every: Annotated[int | None, _opt("--checkpoint-every", min=1)] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Train a LAPGAN on a folder of images, one level after the other (see docs/lapgan.md)."""
    given = given_options(dict(locals()), skip=("level", "resume", "overwrite", "time_limit"))  # options only
    from ..lapgan.train import LapganTrainConfig, read_run_config

    # SIGTERM as Ctrl-C (no checkpoint temporaries left); while training, the first signal stops
    # after the current step with a checkpoint instead (StopOnSignal, in _run_training)
    with guard(), terminate_as_interrupt():
        seconds = parse_duration(time_limit) if time_limit is not None else None
        saved = read_run_config(out)
        if saved is None and "data" not in given:
            raise typer.BadParameter(
                "--data is required for a new run (a folder of images)", param_hint="--data"
            )
        base_config = saved.to_dict() if saved is not None else {}
        if saved is not None and "levels" in given and "base" not in given:
            base_config.pop("base", None)
        config = LapganTrainConfig.from_dict({**base_config, **given})
        _run_training(config, level, resume, overwrite, seconds)


def _run_training(
    config: Any, levels: list[int] | None, resume: bool, overwrite: bool, time_limit: float | None
) -> None:
    with StopOnSignal().installed() as stop:  # the first signal: stop after this step, with a checkpoint
        _train_with(config, levels, resume, overwrite, time_limit, stop)
    if stop.signum is not None:  # stopped on request: 130 or 143, as srgan train
        raise typer.Exit(128 + stop.signum)


def _train_with(
    config: Any,
    levels: list[int] | None,
    resume: bool,
    overwrite: bool,
    time_limit: float | None,
    stop: StopOnSignal,
) -> None:
    from ..lapgan.train import train_lapgan

    with training_progress() as progress:
        tasks: dict[int, Any] = {}

        def on_event(kind: str, data: dict[str, Any]) -> None:
            if kind == "start":
                sides = " -> ".join(str(s) for s in data["sides"])
                cls = f", {len(data['classes'])} classes" if data["classes"] else ""
                progress.console.print(
                    f"LAPGAN {sides}: {data['images']} images{cls}, device {data['device']}, "
                    f"levels {', '.join(map(str, data['levels']))}: {data['steps']} steps x batch "
                    f"{data['batch_size']} each"
                )
                for line in data["skipped"]:
                    progress.console.print(f"[yellow]skipped[/] {escape(line)}")
            elif kind == "level":
                tasks[data["level"]] = progress.add_task(
                    f"level {data['level']} ({data['side']}px)",
                    total=data["steps"],
                    completed=data["step"],
                    stats=f"G {data['g_params'] / 1e6:.2f}M, D {data['d_params'] / 1e6:.2f}M params",
                )
            elif kind == "log":
                stats = (
                    f"D(x) {data['D(x)']:.3f}  D(G(z)) {data['D(G(z))']:.3f}  "
                    f"loss_D {data['loss_D']:.3f}  loss_G {data['loss_G']:.3f}  "
                    f"{data['images_per_s']:.0f} img/s"
                )
                progress.update(tasks[data["level"]], completed=data["step"], stats=stats)
            elif kind == "level_done":
                progress.update(tasks[data["level"]], completed=data["step"])

        result = train_lapgan(
            config,
            levels=levels,
            resume=resume,
            overwrite=overwrite,
            on_event=on_event,
            time_limit=time_limit,
            should_stop=stop,
        )
    done = ", ".join(f"level {k}: {n}" for k, n in sorted(result.steps.items()))
    if result.stopped:
        again = f" --time-limit {time_limit:g}" if time_limit is not None else ""
        console.print(
            f"[yellow]stopped ({result.stopped})[/] after {result.seconds / 60:.1f} min (steps {done}); "
            f"continue with: srgan lapgan train --out {escape(str(config.out))} --resume{again}"
        )
    else:
        console.print(f"[green]done[/] in {result.seconds / 60:.1f} min (steps {done})")
    if result.weights is not None:
        console.print(f"weights: {escape(str(result.weights))}")
    else:
        console.print(
            "[yellow]note:[/] not every level is trained yet, so there are no weights to sample from; "
            "train the missing levels with --level K"
        )


def _load(model: str, device: str) -> tuple[Any, Any, Any]:
    from ..devices import resolve_device
    from ..lapgan.train import load_lapgan

    dev = resolve_device(device)
    net, info = load_lapgan(model)
    return net.to(dev), info, dev


def _class_index(info: Any, name: str | None) -> int | None:
    """--class given as a class name (from the model's data folder) or an index."""
    if name is None:
        return None
    classes = list(info.provenance.get("classes", []))
    if name in classes:
        return classes.index(name)
    try:
        return int(name)
    except ValueError:
        known = ", ".join(classes) if classes else "none: the model is not class-conditional"
        raise typer.BadParameter(f"unknown class {name!r} (classes: {known})", param_hint="--class") from None


def _write_png(path: Path, pixels: Any, overwrite: bool) -> Path:
    import numpy as np

    from ..imageio import ImageData, write_image

    return write_image(path, ImageData(pixels.astype(np.float32) / 255.0, None), overwrite=overwrite)


@app.command("sample")
def sample(
    model: Annotated[str, typer.Option("-m", "--model", help="LAPGAN weights (name or path).")],
    n: Annotated[int, typer.Option("-n", min=1, max=4096, help="Number of samples.")] = 64,
    output: Annotated[Path, typer.Option("-o", "--output", help="Grid image to write (PNG).")] = Path(
        "lapgan_samples.png"
    ),
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same samples.")] = 0,
    save_levels: Annotated[
        bool,
        typer.Option(
            "--save-levels",
            help="Also write a strip per sample showing every level (into OUTPUT's stem folder).",
        ),
    ] = False,
    from_image: Annotated[
        Path | None,
        typer.Option(
            "--from-image",
            help="Start from this image's coarse level instead of drawing one: draws differ only in detail.",
        ),
    ] = None,
    class_: Annotated[
        str | None, typer.Option("--class", help="Class name or index (class-conditional models).")
    ] = None,
    columns: Annotated[int, typer.Option("--columns", min=0, help="Grid columns (0 = square).")] = 0,
    zoom: Annotated[int, typer.Option("--zoom", min=1, max=16, help="Enlarge each cell (nearest).")] = 2,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing files.")] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Draw images coarse to fine; with --from-image, draw the detail for a given coarse image."""
    import math

    import numpy as np
    import torch

    from ..imageio import read_image
    from ..lapgan.sample import coarse_from_image, draw, level_strip
    from ..photos import image_grid

    with guard():
        net, info, _dev = _load(model, device)
        label = _class_index(info, class_)
        coarse = None
        if from_image is not None:
            image = read_image(from_image)
            pixels = np.repeat(image.pixels, 3, axis=2) if image.is_gray else image.pixels
            coarse = coarse_from_image(pixels, net)
        levels = draw(net, n, seed=seed, label=label, coarse=coarse)
        final = levels[-1]
        if coarse is not None:  # the first cell shows the coarse image everything was drawn from
            final = torch.cat([torch.nn.functional.interpolate(coarse, size=final.shape[-2:]), final])
        cols = columns or math.ceil(math.sqrt(final.shape[0]))
        size = net.config.size
        grid = image_grid(final, cols, cell=size * zoom)
        written = [_write_png(output, grid, overwrite)]
        if save_levels:
            folder = output.with_suffix("")
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                strip = level_strip(levels, i)
                if zoom > 1:
                    strip = strip.repeat(zoom, axis=0).repeat(zoom, axis=1)
                written.append(_write_png(folder / f"sample_{i:03d}.png", strip, overwrite))
    sides = " -> ".join(str(net.config.side(k)) for k in range(net.config.levels))
    start = f"from the coarse level of {from_image}" if from_image else "from noise"
    console.print(f"[green]{n} samples[/] ({sides}, {start}, seed {seed}) -> {escape(str(written[0]))}")
    if save_levels:
        console.print(
            f"level strips (coarse to fine): {len(written) - 1} files in "
            f"{escape(str(output.with_suffix('')))}"
        )


@app.command("eval", no_args_is_help=True)
def evaluate(
    model: Annotated[
        list[str],
        typer.Option("-m", "--model", help="LAPGAN weights; repeat to compare (e.g. with --levels 1 runs)."),
    ],
    data: Annotated[
        Path, typer.Option("--data", help="Folder of held-out images (not the training photos).")
    ],
    samples: Annotated[int, typer.Option("--samples", min=1, help="Generated images per model.")] = 10_000,
    crops: Annotated[
        int, typer.Option("--crops", min=4, help="Held-out crops: half choose sigma, half are scored.")
    ] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the held-out crops and the samples.")] = 0,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Parzen-window log-likelihood of held-out crops (Denton et al.'s metric), model by model."""
    from ..lapgan.data import CropSampler
    from ..lapgan.parzen import parzen_eval

    with guard(as_json):
        nets = [_load(m, device) for m in model]
        sizes = {net.config.size for net, _, _ in nets}
        if len(sizes) > 1:
            raise typer.BadParameter(
                "models of different sizes cannot be scored on the same crops", param_hint="-m"
            )
        heldout, _ = CropSampler.from_folder(data, sizes.pop(), classes=False).fixed(crops, seed=seed + 777)
        reports = []
        with console.status(f"scoring {len(nets)} model(s) on {crops} held-out crops"):
            for net, info, _dev in nets:
                reports.append(parzen_eval(net, heldout, name=info.name, n_samples=samples, seed=seed))
    if as_json:
        stdout.print(json.dumps({"data": str(data), "results": [r.to_dict() for r in reports]}, indent=2))
        return
    table = Table(
        show_edge=False,
        header_style="bold",
        title=f"Parzen-window log-likelihood of {reports[0].n_test} held-out crops of {data}, "
        "nats per image (higher is better)",
    )
    for col in ("model", "levels", "G params", "samples", "sigma", "log-likelihood"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in reports:
        table.add_row(
            r.model,
            str(r.levels),
            f"{r.g_params / 1e6:.2f}M",
            str(r.n_samples),
            f"{r.sigma:g}",
            f"{r.mean:.0f} ± {r.stderr:.0f}",
        )
    print_result(table)
