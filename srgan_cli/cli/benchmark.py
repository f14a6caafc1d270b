"""`srgan benchmark ...`: speed measurements that print numbers (never a pass/fail test)."""

from __future__ import annotations

import json
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from .. import archs, weights
from ..benchmark import (
    PipelineBenchmark,
    TrainBenchmark,
    UpscaleBenchmark,
    benchmark_pipeline,
    benchmark_train,
    benchmark_upscale,
    model_gflop_per_output_mp,
)
from ..degradations.config import DAMAGE_PRESET_NAMES
from ..errors import UsageError
from ..runtime.loader import ReadyUpscaler, build_upscaler, is_onnx_path
from ..serve.load import TINY_MODEL, ServeLoadBenchmark, benchmark_serve
from ..sr.config import TrainConfig
from .choices import BenchAmp, ContentLayer, DArch
from .common import (
    DeviceOpt,
    JsonOpt,
    Precision,
    PrecisionOpt,
    TileOpt,
    console,
    guard,
    parse_tile,
    stdout,
)
from .progress import StageProgress
from .results import print_result

app = typer.Typer(help="Measure throughput on this machine (see docs/benchmarks.md).", no_args_is_help=True)


class BenchBackend(str, Enum):
    torch = "torch"
    onnx = "onnx"
    auto = "auto"
    all = "all"


class BenchStage(str, Enum):
    pretrain = "pretrain"
    gan = "gan"
    restore = "restore"
    all = "all"


class BenchStep(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"
    compare = "compare"


@app.command("train")
def train(
    stage: Annotated[
        BenchStage,
        typer.Option(
            "--stage",
            help="Which training step to time (all = pretrain and gan; restore: the front-end alone, "
            "--restore-blocks of it, its LR made by --degradation, default noisy).",
        ),
    ] = BenchStage.all,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Crops per step.")] = 16,
    crop: Annotated[int, typer.Option("--crop", min=8, help="HR crop side.")] = 96,
    scale: Annotated[int, typer.Option("--scale")] = 4,
    n_blocks: Annotated[int, typer.Option("--n-blocks", min=1)] = 16,
    n_feats: Annotated[int, typer.Option("--n-feats", min=1)] = 64,
    restore_blocks: Annotated[
        int, typer.Option("--restore-blocks", min=1, help="restore: blocks of the front-end.")
    ] = 8,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Timed steps.")] = 10,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed steps first.")] = 3,
    device: DeviceOpt = "auto",
    amp: Annotated[
        BenchAmp,
        typer.Option(
            "--amp",
            help="Mixed precision: auto (CUDA: bf16 or fp16; CPU: off), bf16, fp16 (CUDA only), off; "
            "compare = off, then bf16, and their ratio.",
        ),
    ] = BenchAmp.auto,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the networks.")] = False,
    fast_step: Annotated[
        BenchStep,
        typer.Option(
            "--fast-step",
            help="The training step to time (see srgan train --fast-step); compare = off, then on, "
            "and their ratio.",
        ),
    ] = BenchStep.auto,
    profile: Annotated[
        bool,
        typer.Option(
            "--profile",
            help="Also run --profile-steps steps under torch.profiler: the ops with the most time, "
            "ops and kernel launches per step, and the share of the step the GPU sits idle.",
        ),
    ] = False,
    profile_steps: Annotated[int, typer.Option("--profile-steps", min=1, help="Steps to profile.")] = 5,
    content_layer: Annotated[ContentLayer, typer.Option("--content-layer")] = ContentLayer.vgg54,
    d_arch: Annotated[
        DArch, typer.Option("--d-arch", help="The gan step's discriminator (see srgan train --d-arch).")
    ] = DArch.srgan,
    vgg_weights: Annotated[
        str | None,
        typer.Option(
            "--vgg-weights", help="VGG weights; default: random weights (speed does not depend on them)."
        ),
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="Photos to cut crops from; default: synthetic images.")
    ] = None,
    degradation: Annotated[
        str | None,
        typer.Option(
            "--degradation",
            metavar="SPEC",
            help=f"Also time the step with its LR made by this degradation ({DAMAGE_PRESET_NAMES}, "
            "FILE.toml), next to the plain bicubic step, and their ratio.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Training throughput: HR crops per second of the real training step.

    Pretrain and/or GAN step, with the machine's 3x3-conv GFLOP/s measured in the same process as
    the reference."""
    amps = ["off", "bf16"] if amp.value == "compare" else [amp.value]
    modes = ["off", "on"] if fast_step == BenchStep.compare else [fast_step.value]
    if stage == BenchStage.restore:  # a front-end learns only from damaged LR: no bicubic row
        degradations = [degradation or "noisy"]
    else:
        degradations = ["bicubic"] + ([degradation] if degradation and degradation != "bicubic" else [])
    compared = [
        name
        for name, runs in (("--amp", amps), ("--fast-step", modes), ("--degradation", degradations))
        if len(runs) > 1
    ]
    base = TrainConfig(
        scale=scale,
        n_blocks=n_blocks,
        n_feats=n_feats,
        crop=crop,
        batch_size=batch_size,
        device=device,
        amp=amps[0],
        compile=compile_,
        content_layer=content_layer.value,
        d_arch=d_arch.value,
        vgg_weights=vgg_weights,
        ema=0.999,
        restore_blocks=restore_blocks if stage == BenchStage.restore else 0,
    )
    stages = ["pretrain", "gan"] if stage == BenchStage.all else [stage.value]
    results = []
    runs = [
        (name, mode, lr_by, precision)
        for name in stages
        for mode in modes
        for lr_by in degradations
        for precision in amps
    ]
    per_run = warmup + steps + (profile_steps if profile else 0)
    with guard(as_json), StageProgress(console, per_run * len(runs), "steps") as progress:
        if len(compared) > 1:
            raise UsageError(f"{' and '.join(compared)} each compare two runs; give one of them at a time")
        replace(base, stage=stages[0], degradation=degradations[-1]).validate()
        for name, mode, lr_by, precision in runs:
            label = f"{name} (fast step {mode}, LR by {lr_by}{', amp ' + precision if len(amps) > 1 else ''})"
            with progress.stage(label, per_run) as on_step:
                config = replace(base, stage=name, fast_step=mode, degradation=lr_by, amp=precision)
                config.validate()
                results.append(
                    benchmark_train(
                        config,
                        steps=steps,
                        warmup=warmup,
                        data=data,
                        profile=profile_steps if profile else 0,
                        on_step=on_step,
                    )
                )
    if as_json:
        stdout.print(json.dumps([r.to_dict() for r in results], indent=2), markup=False)
        return
    _print_train_table(results)
    for r in results:
        for note in r.notes:
            console.print(f"[yellow]note:[/] {note}")
        if r.profile is not None:
            _print_profile(r)
    if len(degradations) > 1:
        for plain, degraded in zip(results[::2], results[1::2], strict=True):
            print_result(
                f"{plain.stage} ({plain.step_mode}): LR by {escape(degraded.degradation)} / bicubic = "
                f"{degraded.crops_per_s / plain.crops_per_s:.2f}x crops/s "
                f"({1 - degraded.crops_per_s / plain.crops_per_s:.0%} slower)"
            )
    elif len(amps) > 1:
        for full, mixed in zip(results[::2], results[1::2], strict=True):
            print_result(
                f"{full.stage} ({full.step_mode}): amp {mixed.amp} / {full.amp} = "
                f"{mixed.crops_per_s / full.crops_per_s:.2f}x crops/s"
            )
    elif fast_step == BenchStep.compare:
        for plain, fast in zip(results[::2], results[1::2], strict=True):
            print_result(
                f"{plain.stage}: fast step ({fast.step_mode}) / plain = "
                f"{fast.crops_per_s / plain.crops_per_s:.2f}x crops/s"
            )


def _print_train_table(results: list[TrainBenchmark]) -> None:
    """One row per stage (and step mode)."""
    first = results[0]
    # the paper's D goes without saying; the other one is named (the gan rows share one D)
    unet = next((f", D {r.discriminator}" for r in results if r.discriminator.startswith("unet")), "")
    mixed = len({r.amp for r in results}) > 1  # --amp compare: a column, not the title
    table = Table(
        show_edge=False,
        header_style="bold",
        title=f"training throughput: {first.model}, batch {first.batch_size} x {first.crop}px, "
        f"{first.device}{'' if mixed else ', amp ' + first.amp}{', compiled' if first.compile else ''}{unet}",
    )
    for col in (
        "stage",
        "step",
        "LR by",
        *(["amp"] if mixed else []),
        "crops/s",
        "ms/step (min-max)",
        "GFLOP/crop",
        "GFLOP/s",
        "of 3x3 conv ref",
        "peak MB",
    ):
        table.add_column(col, justify="right" if col not in ("stage", "step", "LR by", "amp") else "left")
    for r in results:
        lo, hi = r.ms_per_step_spread
        table.add_row(
            r.stage,
            r.step_mode,
            escape(r.degradation),
            *([r.amp] if mixed else []),
            f"{r.crops_per_s:,.1f}",
            f"{r.ms_per_step:.1f} ({lo:.1f}-{hi:.1f})",
            f"{r.gflop_per_crop:.2f}",
            f"{r.achieved_gflops:,.1f}",
            f"{r.fraction_of_reference:.0%} of {r.reference_gflops:,.0f}",
            f"{r.peak_memory_mb:,.0f}",
        )
    print_result(table)
    if any(r.vgg == "random (speed only)" for r in results):
        console.print("[dim]gan stage timed with a randomly initialised VGG (same shape, same speed)[/]")


def _print_profile(r: TrainBenchmark) -> None:
    """The profile of one stage: a summary line, then its top ops by self time."""
    prof = r.profile
    assert prof is not None
    where = "GPU" if prof.kernels_per_step is not None else "CPU"
    line = f"{r.stage} ({r.step_mode}): {prof.wall_ms_per_step:.1f} ms/step profiled"
    line += f", {prof.ops_per_step:,.0f} ops"
    if prof.kernels_per_step is not None:
        line += f", {prof.kernels_per_step:,.0f} kernel launches"
    line += " per step"
    if prof.device_idle_share is not None:
        line += (
            f"; GPU busy {prof.device_busy_ms_per_step:.1f} ms, idle {prof.device_idle_share:.0%} of the step"
        )
    console.print(line)
    table = Table(show_edge=False, header_style="bold", title=f"top ops by {where} self time")
    for col in ("op", "calls/step", "ms/step", "share"):
        table.add_column(col, justify="left" if col == "op" else "right")
    for row in prof.top:
        table.add_row(
            row["name"], f"{row['calls_per_step']:g}", f"{row['ms_per_step']:.3f}", f"{row['share']:.0%}"
        )
    print_result(table)


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected WIDTHxHEIGHT, e.g. 256x256") from None
    if w < 8 or h < 8:
        raise typer.BadParameter(f"{text!r}: width and height must be at least 8")
    return w, h


@app.command("upscale")
def upscale(
    model: Annotated[
        str, typer.Option("-m", "--model", help="Weights name or path, or an .onnx file.")
    ] = weights.DEFAULT_MODEL,
    backend: Annotated[
        BenchBackend,
        typer.Option(
            "--backend",
            help="Which backend(s) to time; all = torch and onnx (a community model's: its cached "
            "ONNX export); auto = what srgan upscale picks.",
        ),
    ] = BenchBackend.all,
    size: Annotated[
        list[str] | None,
        typer.Option("--size", metavar="WxH", help="LR input size; repeat for several. Default: 256x256."),
    ] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.auto,
    tile: TileOpt = "0",
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile (torch backend).")] = False,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Timed runs per size.")] = 5,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs first.")] = 2,
    plain: Annotated[
        bool,
        typer.Option(
            "--plain",
            help="Also time the torch backend without its fast path (the paper's graph, NCHW): the baseline.",
        ),
    ] = False,
    pipeline: Annotated[
        bool,
        typer.Option(
            "--pipeline",
            help="Also time the real path from files to files (a generated folder, one file at a time "
            "and overlapped) against the model alone on the same images.",
        ),
    ] = False,
    files: Annotated[int, typer.Option("--files", min=1, help="--pipeline: photos in the folder.")] = 8,
    in_format: Annotated[str, typer.Option("--in-format", help="--pipeline: the photos' format.")] = "jpg",
    out_format: Annotated[str, typer.Option("--out-format", help="--pipeline: the results' format.")] = "png",
    io_threads: Annotated[
        int, typer.Option("--io-threads", min=1, help="--pipeline: reader and writer threads (each).")
    ] = 2,
    as_json: JsonOpt = False,
) -> None:
    """Upscaling throughput per backend and size: ms per image, MP/s, peak memory.

    With the model's GFLOP per output MP and the machine's 3x3-conv GFLOP/s from the same process."""
    sizes = [_parse_size(s) for s in (size or ["256x256"])]
    tile_size = parse_tile(tile)
    names = ["torch", "onnx"] if backend == BenchBackend.all else [backend.value]
    if is_onnx_path(model) and "torch" in names:
        if backend == BenchBackend.torch:
            raise typer.BadParameter("an .onnx model runs on the onnx backend only")
        names = ["onnx"]
    if plain and "torch" in names:
        names.insert(names.index("torch") + 1, "torch-plain")
    results = []
    flows: list[PipelineBenchmark] = []
    with guard(as_json):
        gflop: float | None = None
        references: dict[tuple[str, str], float] = {}
        for name in names:
            ready = build_upscaler(
                model,
                backend="torch" if name == "torch-plain" else name,
                device=device,
                precision=precision.value,
                tile=tile_size,
                compile=compile_ and name in ("torch", "auto"),
                fast=name != "torch-plain",
            )
            ready.backend = f"auto ({ready.backend})" if name == "auto" else name
            if gflop is None:
                gflop = _model_gflop(ready)
            if not as_json:
                for note in ready.notes:
                    console.print(f"[yellow]note:[/] {note}")
            key = (str(getattr(ready.upscaler, "device", "cpu")), ready.precision)
            for wh in sizes:
                with console.status(f"timing {name} on {wh[0]}x{wh[1]} ({runs} runs)"):
                    r = benchmark_upscale(
                        ready,
                        wh,
                        runs=runs,
                        warmup=warmup,
                        gflop_per_output_mp=gflop,
                        reference_gflops=references.get(key),
                    )
                references[key] = r.reference_gflops
                results.append(r)
                if pipeline and name != "torch-plain":
                    with console.status(f"timing {name} from {files} files to files at {wh[0]}x{wh[1]}"):
                        flows.append(
                            benchmark_pipeline(
                                ready,
                                wh,
                                files=files,
                                in_format=in_format,
                                out_format=out_format,
                                io_threads=io_threads,
                            )
                        )
    if as_json:
        rows = [r.to_dict() for r in results]
        payload = {"upscale": rows, "pipeline": [f.to_dict() for f in flows]} if pipeline else rows
        stdout.print(json.dumps(payload, indent=2), markup=False)
        return
    _print_upscale_table(results, gflop)
    if flows:
        _print_pipeline_table(flows)


def _print_upscale_table(results: list[UpscaleBenchmark], gflop: float | None) -> None:
    """One row per backend and size, then the time ratios against the torch backend."""
    table = Table(show_edge=False, header_style="bold", title=f"upscaling throughput: {results[0].model}")
    for col in (
        "backend",
        "device",
        "prec",
        "input",
        "ms/image (min-max)",
        "img/s",
        "out MP/s",
        "of conv ref",
        "peak MB",
    ):
        table.add_column(col, justify="left" if col in ("backend", "device", "prec") else "right")
    for r in results:
        lo, hi = r.ms_per_image_spread
        frac = (
            "-"
            if r.fraction_of_reference is None
            else f"{r.fraction_of_reference:.0%} of {r.reference_gflops:,.0f}"
        )
        ms = f"{r.ms_per_image:,.1f} ({lo:,.1f}-{hi:,.1f})"
        if r.ms_on_device is not None:
            ms += f"; {r.ms_on_device:,.1f} on device"
        table.add_row(
            r.backend,
            r.device,
            r.precision,
            f"{r.input_size[0]}x{r.input_size[1]}",
            ms,
            f"{r.images_per_s:,.2f}",
            f"{r.output_mp_per_s:,.2f}",
            frac,
            f"{r.peak_memory_mb:,.0f}",
        )
    print_result(table)
    if gflop is not None:
        console.print(
            f"[dim]model: {gflop:.1f} GFLOP per output megapixel; reference: 3x3 conv, 64 channels[/]"
        )
    by_size: dict[tuple[int, int], dict[str, float]] = {}
    for r in results:
        by_size.setdefault(r.input_size, {})[r.backend] = r.ms_per_image
    for wh, ms in by_size.items():
        for other in ms:
            if "torch" in ms and other != "torch":
                print_result(f"{wh[0]}x{wh[1]}: {other} / torch time = {ms[other] / ms['torch']:.2f}")


def _print_pipeline_table(flows: list[PipelineBenchmark]) -> None:
    """Files to files, one at a time and overlapped, against the model alone."""
    first = flows[0]
    table = Table(
        show_edge=False,
        header_style="bold",
        title=f"files to files: {first.files} photos, {first.formats}, {first.io_threads} IO threads a way; "
        f"a {first.video_frames}-frame H.264 clip (in brackets: of the model alone)",
    )
    columns = ("backend", "input", "model ms/img", "one at a time", "overlapped", "video ms/frame")
    for col in columns:
        table.add_column(col, justify="left" if col == "backend" else "right")
    for f in flows:
        table.add_row(
            f.backend,
            f"{f.input_size[0]}x{f.input_size[1]}",
            f"{f.model_ms_per_image:,.1f}",
            f"{f.sequential_ms_per_image:,.1f} ({f.sequential_of_model:.0%})",
            f"{f.pipelined_ms_per_image:,.1f} ({f.pipelined_of_model:.0%})",
            f"{f.video_ms_per_frame:,.1f} ({f.video_of_model:.0%})",
        )
    print_result(table)


def _model_gflop(ready: ReadyUpscaler) -> float | None:
    """GFLOP per output MP of the model's architecture (the paper's graph, not the fused one that
    runs); None for an .onnx made elsewhere, whose architecture is unknown."""
    if ready.arch == "unknown":
        return None
    if ready.arch.startswith("spandrel:"):  # counted from the model's own graph, when it is at hand
        net = getattr(ready.upscaler, "model", None)  # (not in a community model's ONNX export)
        return None if net is None else model_gflop_per_output_mp(net, scale=ready.scale)
    return model_gflop_per_output_mp(archs.build_model(ready.arch, ready.config))


@app.command("serve")
def serve(
    model: Annotated[
        str,
        typer.Option(
            "-m",
            "--model",
            help=f"The model the server serves, by name. {TINY_MODEL}: a tiny SRResNet made on the fly "
            "(the server's own overhead, with almost no model work).",
        ),
    ] = "srresnet_x4_fast",
    clients: Annotated[int, typer.Option("--clients", min=1, help="Client threads sending at once.")] = 8,
    workers: Annotated[int, typer.Option("--workers", min=1, help="The server's --workers.")] = 2,
    queue: Annotated[int, typer.Option("--queue", min=0, help="The server's --queue.")] = 4,
    seconds: Annotated[
        float, typer.Option("--seconds", min=0.1, help="How long the clients send (after a warm-up).")
    ] = 20.0,
    size: Annotated[
        str, typer.Option("--size", metavar="WxH", help="The size of every image sent.")
    ] = "64x64",
    device: Annotated[
        str,
        typer.Option("--device", metavar="DEVICE", help="The server's --device (cpu, cuda, cuda:N, auto)."),
    ] = "cpu",
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="PyTorch's CPU threads in the server (OMP_NUM_THREADS) and for the reference. "
            "Default: PyTorch's own (the CPU's cores).",
            show_default=False,
        ),
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option(
            "--batch",
            min=1,
            help="The server's --batch (images of one size per pass of the model). Default: its own.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The HTTP server under load: requests/s, latency, refusals, wrong results and its memory.

    Starts `srgan serve` in a subprocess on 127.0.0.1, then --clients threads POST /api/upscale for
    --seconds, each with its own images, checking every answer is the upscale of the image it sent.
    The server's memory is read from /proc every half second. The same upscale in this process (no
    HTTP, one thread) is the reference."""
    wh = _parse_size(size)
    phases = {
        "reference": "upscaling the images here (the reference and the expected answers)",
        "starting": "starting srgan serve",
        "warm-up": "warm-up: every image once",
        "stopping": "stopping the server",
    }
    with guard(as_json), console.status("") as status:

        def on_progress(phase: str, done: float, total: float, answers: int) -> None:
            if phase == "load":
                status.update(f"{clients} clients: {done:.0f}/{total:.0f} s, {answers:,} answers")
            else:
                status.update(phases.get(phase, phase))

        result = benchmark_serve(
            model,
            clients=clients,
            workers=workers,
            queue=queue,
            seconds=seconds,
            size=wh,
            device=device,
            threads=threads,
            batch=batch,
            on_progress=on_progress,
        )
    if as_json:
        stdout.print(json.dumps(result.to_dict(), indent=2), markup=False)
        return
    _print_serve_table(result)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _print_serve_table(r: ServeLoadBenchmark) -> None:
    """Throughput and latency, answers by status, then the server's memory."""
    (w, h), (ow, oh) = r.input_size, r.output_size
    table = Table(
        show_edge=False,
        header_style="bold",
        title=f"srgan serve under load: {r.model} on {r.device}, {w}x{h} -> {ow}x{oh} PNG, "
        f"{r.clients} clients, {r.workers} workers, queue {r.queue}"
        f"{'' if r.batch is None else f', batch {r.batch}'}"
        f"{'' if r.threads is None else f', torch threads: {r.threads}'}, {r.duration_s:g} s",
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    statuses = ", ".join(f"{code}: {n:,}" for code, n in r.statuses.items()) or "none"
    rows = [
        ("requests/s (200s)", f"{r.requests_per_s:,.2f}"),
        (
            "of in-process",
            f"{r.of_in_process:.0%} of {r.in_process_images_per_s:,.2f} img/s "
            f"({r.in_process_ms_per_image:,.1f} ms/image)",
        ),
        (
            "latency p50 / p90 / p99 / max (ms)",
            " / ".join(
                _ms(v) for v in (r.latency_ms_p50, r.latency_ms_p90, r.latency_ms_p99, r.latency_ms_max)
            ),
        ),
        ("refusal latency p50 (ms)", _ms(r.refused_latency_ms_p50)),
        ("answers by status", statuses),
        ("wrong results", f"{r.wrong_results:,}" + ("" if r.wrong_results == 0 else " (!)")),
        ("server errors (5xx but 503)", f"{r.server_errors:,}"),
        (
            "server RSS start / end / peak (MB)",
            f"{r.rss_start_mb:,.0f} / {r.rss_end_mb:,.0f} / {r.rss_peak_mb:,.0f}",
        ),
        ("RSS first / last third, median (MB)", f"{r.rss_first_third_mb:,.0f} / {r.rss_last_third_mb:,.0f}"),
        (
            "RSS slope, all / second half (MB per 1000 answers)",
            " / ".join(
                "-" if v is None else f"{v:+.2f}"
                for v in (r.rss_slope_mb_per_1000, r.rss_slope_late_mb_per_1000)
            ),
        ),
        ("server CPU (s)", f"{r.server_cpu_s:,.1f} in {r.duration_s:g} s"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    print_result(table)
    console.print(
        f"[dim]{r.requests:,} answers, {r.warmup_requests} warm-up requests first; {r.images} distinct "
        f"images; load average before: {', '.join(f'{v:.2f}' for v in r.load_average)}[/]"
    )
    for example in r.wrong_examples:
        console.print(f"[red]wrong result:[/] {escape(example)}")
    for note in r.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
