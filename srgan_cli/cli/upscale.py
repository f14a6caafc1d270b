"""`srgan upscale`: files, folders and globs through a model, with progress and a summary."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from .. import api, weights
from ..blend import blend_tag, parse_blend
from ..distributed import rank_device, world_from_env
from ..errors import UsageError
from ..imageio import DEFAULT_MAX_PIXELS
from ..runtime.batch import (
    Job,
    JobResult,
    OutputOptions,
    Plan,
    default_suffix,
    gather_results,
    input_megapixels,
    model_tag,
    plan_jobs,
    shard_jobs,
)
from ..runtime.manifest import Producer
from ..runtime.pipeline import run_jobs
from ..runtime.upscaler import (
    DEFAULT_MAX_OUTPUT_PIXELS,
    Upscaler,
    check_max_pixels,
    check_outscale,
)
from ..runtime.video import VideoOptions, VideoResult, is_video, video_job, video_output
from .common import (
    Backend,
    BackendOpt,
    DeviceOpt,
    Ensemble,
    JsonOpt,
    LapganLevelsOpt,
    MaxMegapixelsOpt,
    MaxOutputMegapixelsOpt,
    Precision,
    PrecisionOpt,
    SelfEnsembleOpt,
    TileOpt,
    TilePadOpt,
    console,
    guard,
    parse_tile,
    stdout,
)
from .progress import FileProgress, Ticker
from .results import print_result
from .signals import terminate_as_interrupt


class Mode(str, Enum):
    sr = "sr"
    lapgan = "lapgan"


class OutFormat(str, Enum):
    auto = "auto"
    png = "png"
    jpg = "jpg"
    webp = "webp"
    tiff = "tiff"


def upscale(
    inputs: Annotated[
        list[str],
        typer.Argument(help="Image files, folders or glob patterns.", show_default=False, metavar="INPUT..."),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Output file (one input) or folder. Default: beside each input.",
            rich_help_panel="Output",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "-m",
            "--model",
            metavar="NAME|PATH",
            help=f"Shipped weights name, a .safetensors/.pth path, or an .onnx file. auto (the default): "
            f"JPEGs saved at quality {weights.AUTO_JPEG_QUALITY} or lower and videos to {weights.REAL_MODEL} "
            f"(removes the 8x8 blocks), everything else to {weights.DEFAULT_MODEL}.",
            show_default=False,
            rich_help_panel="Model",
        ),
    ] = None,
    mode: Annotated[
        Mode,
        typer.Option(
            "--mode",
            help="sr: a super-resolution model. lapgan: a LAPGAN model's conditional generators, "
            "x2 per level.",
            rich_help_panel="Model",
        ),
    ] = Mode.sr,
    lapgan_levels: LapganLevelsOpt = None,
    blend: Annotated[
        str | None,
        typer.Option(
            "--blend",
            metavar="MODEL:ALPHA",
            help="Weight by weight: (1-ALPHA) x -m + ALPHA x MODEL.",
            show_default=False,
            rich_help_panel="Model",
        ),
    ] = None,
    denoise: Annotated[
        float | None,
        typer.Option(
            "--denoise",
            metavar="S",
            min=0.0,
            max=1.0,
            help="How much srgan_x4_denoise removes (1: all).",
            show_default=False,
            rich_help_panel="Model",
        ),
    ] = None,
    outscale: Annotated[
        float | None,
        typer.Option(
            "-s",
            "--outscale",
            min=0.01,
            help="Final scale; the model's output is resampled to it.",
            rich_help_panel="Model",
        ),
    ] = None,
    suffix: Annotated[
        str | None,
        typer.Option(
            "--suffix",
            help="Added to output names. Default beside the input: _x<scale>, plus _<model> for a "
            "model other than the default (photo_x2.png, photo_x4_srgan.png); none in -o folders.",
            rich_help_panel="Output",
        ),
    ] = None,
    fmt: Annotated[
        OutFormat,
        typer.Option(
            "--format", help="Output format; auto keeps the input's format.", rich_help_panel="Output"
        ),
    ] = OutFormat.auto,
    quality: Annotated[
        int, typer.Option("--quality", min=1, max=100, help="JPEG/WebP quality.", rich_help_panel="Output")
    ] = 95,
    png_compression: Annotated[
        int,
        typer.Option(
            "--png-compression",
            min=0,
            max=9,
            help="PNG zlib level: 0 is fastest, 9 smallest (lossless either way).",
            rich_help_panel="Output",
        ),
    ] = 6,
    recursive: Annotated[
        bool,
        typer.Option(
            "-r", "--recursive", help="Look in subfolders of folder inputs.", rich_help_panel="Output"
        ),
    ] = False,
    skip_existing: Annotated[
        bool | None,
        typer.Option(
            "--skip-existing/--no-skip-existing",
            help="Skip inputs whose output exists, whatever made it. Default: for folders and globs, "
            "skip an output this model made from this input at this scale (else say why not); for "
            "named files, an existing output is an error.",
            show_default=False,
            rich_help_panel="Output",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing outputs.", rich_help_panel="Output")
    ] = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.auto,
    backend: BackendOpt = Backend.auto,
    onnx: Annotated[
        Path | None,
        typer.Option(
            "--onnx",
            metavar="FILE",
            help="Run this exported .onnx model (implies --backend onnx).",
            rich_help_panel="Performance",
        ),
    ] = None,
    compile_: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="torch.compile the model (CUDA graphs on GPUs): for many images of one size; "
            "each new size compiles again.",
            rich_help_panel="Performance",
        ),
    ] = False,
    tile: TileOpt = "auto",
    tile_pad: TilePadOpt = None,
    self_ensemble: SelfEnsembleOpt = Ensemble.one,
    io_threads: Annotated[
        int,
        typer.Option(
            "--io-threads",
            min=0,
            help="Threads that decode the next inputs and threads that write the results while the "
            "model runs (each); 0 = one file at a time.",
            rich_help_panel="Performance",
        ),
    ] = 2,
    max_megapixels: MaxMegapixelsOpt = DEFAULT_MAX_PIXELS / 1e6,
    max_output_megapixels: MaxOutputMegapixelsOpt = DEFAULT_MAX_OUTPUT_PIXELS / 1e6,
    codec: Annotated[
        str,
        typer.Option(
            "--codec",
            help="Videos: auto (vp9 for .webm, mpeg4 for .avi, else h264), h264, h265, av1, vp9 or mpeg4.",
            rich_help_panel="Video",
        ),
    ] = "auto",
    crf: Annotated[
        int | None,
        typer.Option(
            "--crf",
            min=0,
            max=63,
            help="Videos: constant rate factor, lower is better. Default: h264 18, h265 20, av1/vp9 30; "
            "for mpeg4 a fixed quantizer, 2-31, default 3.",
            rich_help_panel="Video",
            show_default=False,
        ),
    ] = None,
    pix_fmt: Annotated[
        str,
        typer.Option("--pix-fmt", help="Videos: pixel format of the encoded video.", rich_help_panel="Video"),
    ] = "yuv420p",
    video_batch: Annotated[
        int,
        typer.Option(
            "--video-batch",
            min=0,
            help="Videos: frames per model pass; 0 = 4 on a GPU, 1 on the CPU.",
            rich_help_panel="Video",
        ),
    ] = 0,
    frames: Annotated[
        Path | None,
        typer.Option(
            "--frames",
            metavar="DIR",
            help="Videos: write the upscaled frames as PNG files into DIR instead of a video.",
            rich_help_panel="Video",
        ),
    ] = None,
    allow_partial: Annotated[
        bool,
        typer.Option(
            "--allow-partial",
            help="Accept inputs that hold less than they declare (a truncated video, the first page of a "
            "multi-page TIFF): write what could be read, with a note.",
            rich_help_panel="Limits",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Upscale images and videos with a super-resolution model.

    The default model, auto, picks shipped x4 weights for each input: srgan_x4_real for
    low-quality JPEGs and videos, srresnet_x4 for everything else.

    A video (.mp4, .mkv, .webm, .mov, .avi; recognised by its content) is upscaled frame by frame
    and encoded again, with its audio and subtitles copied and its frame rate and timestamps kept.

    Under `torchrun --nproc-per-node N -m srgan_cli upscale ...` each process takes every N-th
    file (and GPU LOCAL_RANK); a rerun skips finished outputs, so a crashed share can be redone.
    """
    tile_size = parse_tile(tile)
    with guard(as_json):
        outscale = check_outscale(outscale)
        max_output = check_max_pixels(max_output_megapixels, "--max-output-megapixels")
        max_input = check_max_pixels(max_megapixels, "--max-megapixels")
        world = world_from_env()
        blended = parse_blend(blend) if blend is not None else None
    options = OutputOptions(
        output, suffix, fmt.value, quality, overwrite, skip_existing, png_compression, max_output
    )
    options.allow_partial, options.outscale = allow_partial, outscale
    quiet = as_json or not world.is_main
    with guard(as_json), terminate_as_interrupt():  # SIGTERM as Ctrl-C: temporaries removed, exit 130
        if model is None:  # the default: auto, unless another kind of model is asked for
            model = weights.AUTO_MODEL if onnx is None and mode == Mode.sr else weights.DEFAULT_MODEL
        auto = model == weights.AUTO_MODEL
        if auto and blended is not None:
            raise UsageError(
                "--blend needs the first model named with -m", hint="e.g. -m A.pth --blend B.pth:0.5"
            )
        if auto and denoise is not None:
            raise UsageError(
                "--denoise needs -m naming a model with a restoration front-end",
                hint="e.g. -m srgan_x4_denoise --denoise 0.5",
            )
        if auto and (onnx is not None or mode != Mode.sr):
            raise UsageError(
                "-m auto picks a shipped super-resolution model per input; with --onnx or --mode lapgan "
                "name the model with -m"
            )
        loaded: dict[str, api.Upscaler] = {}

        def upscaler_for(name: str) -> api.Upscaler:
            """One Upscaler per model, made when the first input that needs it comes."""
            if name not in loaded:
                loaded[name] = api.Upscaler(
                    name,
                    backend=backend.value,
                    onnx=onnx,
                    device=rank_device(device, world),
                    precision=precision.value,
                    tile="auto" if tile_size is None else tile_size,
                    tile_pad=tile_pad,
                    compile=compile_,
                    mode=mode.value,
                    lapgan_levels=lapgan_levels,
                    blend=None if blended is None else (blended.model, blended.alpha),
                    denoise=denoise,
                    self_ensemble=int(self_ensemble.value),
                )
                if not quiet:
                    for note in loaded[name].runtime.notes:
                        console.print(f"[yellow]note:[/] {note}")
            return loaded[name]

        # the same Upscaler as `import srgan_cli`; the runs below use its parts
        ready = upscaler_for(weights.DEFAULT_MODEL if auto else model).runtime
        asked_onnx = backend == Backend.onnx or onnx is not None or model.lower().endswith(".onnx")
        if not auto and (ready.name != weights.DEFAULT_MODEL or asked_onnx):
            # names beside the inputs say which model, and a run asked of ONNX Runtime says so too
            options.tag = model_tag(ready.name, ready.scale) + ("_onnx" if asked_onnx else "")
        if blended is not None:  # photo_x4_a+b@0.3.png
            options.tag = blend_tag(model, blended, ready.scale)
        videos = [Path(text) for text in inputs if Path(text).is_file() and is_video(text)]
        images = [text for text in inputs if Path(text) not in videos]
        plan = plan_jobs(images, options, ready.scale, recursive=recursive) if images else Plan()
        jobs = shard_jobs(plan, world)
        results: list[JobResult] = list(plan.failed) if world.is_main else []
        label = f" (process {world.rank + 1}/{world.size})" if world.distributed else ""
        video_options = VideoOptions(
            codec,
            crf,
            pix_fmt,
            frames,
            batch=video_batch,
            max_output_pixels=max_output,
            allow_partial=allow_partial,
        )
        # -m auto: low-quality JPEGs and videos to the real-world model, the rest to the default; each group
        # runs as one batch, results come back in input order
        groups = _auto_groups(jobs, videos) if auto else {model: (jobs, videos)}
        used: dict[str, int] = {}
        order = {job.src: i for i, job in enumerate(jobs)}
        job_results: list[JobResult] = []
        for name, (group_jobs, group_videos) in groups.items():
            if not group_jobs and not group_videos:
                continue
            runtime = upscaler_for(name).runtime
            if runtime.scale != ready.scale:
                raise UsageError(
                    f"-m auto needs models of one scale: {runtime.name} is x{runtime.scale}, "
                    f"{ready.name} x{ready.scale}"
                )
            used[runtime.name] = len(group_jobs) + len(group_videos)
            if auto and not quiet:
                console.print(
                    f"auto: {_auto_kinds(name, len(group_jobs), len(group_videos))} -> {runtime.name}"
                )
            for src in group_videos[world.rank :: world.size]:
                single, to_frames = len(inputs) == 1, frames is not None
                tail = suffix if suffix is not None else default_suffix(options, ready.scale)
                dst = video_output(src, output, tail, ready.scale, single, frames=to_frames)
                job = partial(video_job, runtime.upscaler, src, dst, video_options, outscale=outscale)
                job = partial(job, overwrite=overwrite, skip_existing=bool(skip_existing))
                results.append(_run_video(job, src, dst, quiet))
            made_by = Producer(runtime.name, outscale or runtime.scale, quality, runtime.self_ensemble)
            job_results += _run_jobs(
                runtime.upscaler,
                group_jobs,
                dataclasses.replace(options, producer=made_by),
                outscale=outscale,
                max_pixels=max_input,
                show=not quiet,
                show_failures=not as_json,
                label=label,
                io_threads=io_threads,
            )
        results += sorted(job_results, key=lambda r: order.get(r.src, len(order)))
        results = gather_results(results, world)

    if not world.is_main:
        raise typer.Exit(0)  # the main process reports for everyone
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "skipped", "failed")}
    if as_json:
        summary = {
            "model": weights.AUTO_MODEL if auto else ready.name,
            "models": used,
            "scale": ready.scale,
            "outscale": outscale,
            "backend": ready.backend,
            "device": ready.device,
            "precision": ready.precision,
            "self_ensemble": ready.self_ensemble,
            "processes": world.size,
            **counts,
            "results": [r.to_dict() for r in results],
        }
        stdout.print(json.dumps(summary, indent=2), markup=False, highlight=False)
    else:
        _print_summary(results, counts)
    raise typer.Exit(1 if counts["failed"] else 0)


def _auto_groups(jobs: list[Job], videos: list[Path]) -> dict[str, tuple[list[Job], list[Path]]]:
    """-m auto: model name -> (its image jobs, its videos). JPEGs saved at quality
    weights.AUTO_JPEG_QUALITY or lower (read from their quantization tables) and videos (always
    lossy) go to the real-world model, everything else (lossless images, good JPEGs) to the default
    (docs/degradations.md measures both rules)."""
    damaged = {job.src for job in jobs if weights.auto_model(job.src) == weights.REAL_MODEL}
    return {
        weights.DEFAULT_MODEL: ([job for job in jobs if job.src not in damaged], []),
        weights.REAL_MODEL: ([job for job in jobs if job.src in damaged], list(videos)),
    }


def _auto_kinds(model: str, images: int, videos: int) -> str:
    """What -m auto sent to `model`, in words: "2 JPEG (quality <= 75) inputs and 1 video"."""
    kind = "other" if model == weights.DEFAULT_MODEL else f"JPEG (quality <= {weights.AUTO_JPEG_QUALITY})"
    parts = [f"{images} {kind} input{'s' if images != 1 else ''}"] if images else []
    parts += [f"{videos} video{'s' if videos != 1 else ''}"] if videos else []
    return " and ".join(parts)


def _run_jobs(
    upscaler: Upscaler,
    jobs: list[Job],
    options: OutputOptions,
    *,
    outscale: float | None,
    max_pixels: int,
    show: bool,
    show_failures: bool,
    label: str,
    io_threads: int,
) -> list[JobResult]:
    """Run the jobs (decoding and writing overlapped with the model: runtime/pipeline.py) under a
    progress bar measured in megapixels (file headers), advanced tile by tile, or plain lines when
    stderr is not a terminal (cli/progress.py); results in job order."""
    sizes = [input_megapixels(job) for job in jobs]
    results: list[JobResult] = []
    with FileProgress(console, jobs, sizes, label=label, show=show) as progress, progress.tiles():
        pipeline = run_jobs(
            upscaler,
            jobs,
            options,
            outscale=outscale,
            max_pixels=max_pixels,
            readers=io_threads,
            writers=io_threads,
            on_pass=progress.start_pass,
        )
        try:
            for job, result in zip(jobs, pipeline, strict=True):
                results.append(result)
                if result.status == "failed" and show_failures:
                    where, why = escape(str(result.src)), escape(result.error or "")
                    progress.print(f"[red]failed[/] {where}: {why}")
                for note in result.notes if show else ():
                    progress.print(f"[yellow]note:[/] {escape(str(result.src))}: {escape(note)}")
                progress.finished(job, result)
        finally:  # interrupted here (Ctrl-C, SIGTERM): the writes under way finish, claims are released
            pipeline.close()
    return results


def _run_video(
    job: Callable[..., tuple[str, VideoResult | None, str | None, str | None]],
    src: Path,
    dst: Path,
    quiet: bool,
) -> JobResult:
    """One video (`job(on_frame)`: runtime.video.video_job) under a progress bar of frames, with
    frames/s and ETA, as a JobResult for the summary."""
    columns = (
        TextColumn(f"[cyan]{escape(src.name)}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.fields[frames]} frames"),
        TextColumn("{task.fields[fps]:.1f} frames/s"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    plain, ticker = not quiet and not console.is_terminal, Ticker()  # a log: a line now and then
    with Progress(*columns, console=console, disable=quiet or plain, transient=False) as progress:
        task = progress.add_task("video", total=None, frames="?", fps=0.0)
        start = time.perf_counter()

        def on_frame(done: int, total: int) -> None:
            fps = done / max(time.perf_counter() - start, 1e-9)
            progress.update(task, completed=done, total=total or None, frames=total or "?", fps=fps)
            if plain and ticker.due():
                line = f"{src.name}: {done}/{total or '?'} frames, {fps:.1f} frames/s"
                console.print(escape(line), soft_wrap=True)

        status, video, error, hint = job(on_frame=on_frame)
    if plain and video is not None and status == "ok":
        line = f"{src.name} done: {video.frames} frames in {video.seconds:.1f} s"
        console.print(escape(line), soft_wrap=True)
    result = JobResult(src, video.dst if video is not None else dst, status, error, hint)
    if video is not None:
        result.seconds, result.in_size, result.out_size = video.seconds, video.in_size, video.out_size
        result.notes = list(video.notes)  # in --json too (e.g. what --allow-partial kept)
        for note in video.notes:
            console.print(f"[yellow]note:[/] {escape(note)}")
    if status == "failed" and not quiet:
        console.print(f"[red]failed[/] {src}: {escape(error or '')}")
    return result


def _print_summary(results: list[JobResult], counts: dict[str, int]) -> None:
    # small batches list every file; large ones only the failures (all of them are in --json)
    rows = results if len(results) <= 20 else [r for r in results if r.status == "failed"]
    if rows:
        table = Table(show_edge=False, header_style="bold", expand=False)
        table.add_column("input", overflow="fold")
        table.add_column("result", overflow="fold")
        for r in rows:
            if r.status == "ok":
                assert r.in_size is not None and r.out_size is not None
                size = f"{r.in_size[0]}x{r.in_size[1]} -> {r.out_size[0]}x{r.out_size[1]}"
                text = f"[green]{escape(str(r.dst))}[/] ({size}, {r.seconds:.1f}s)"
            elif r.status == "skipped":
                why = escape(r.notes[0]) if r.notes else f"{escape(str(r.dst))} exists"
                text = f"[yellow]skipped[/], {why}"
            else:
                text = f"[red]{escape(r.error or '')}[/]" + (f" [dim]({escape(r.hint)})[/]" if r.hint else "")
            table.add_row(escape(str(r.src)), text)
        print_result(table, fit=True)
    colour = "red" if counts["failed"] else "green"
    print_result(
        f"[{colour}]{counts['ok']} upscaled, {counts['skipped']} skipped, {counts['failed']} failed[/]"
    )
