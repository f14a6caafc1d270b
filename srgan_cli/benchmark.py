"""`srgan benchmark`: throughput of training and upscaling, next to the machine's own conv speed."""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .devices import precision_name


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def conv_flops(model: nn.Module, *inputs: torch.Tensor) -> float:
    """Multiply-adds x 2 of every Conv2d and Linear in one forward pass of `inputs`, per sample."""
    total = 0.0

    def conv_hook(m: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
        total += 2.0 * k * out.numel()

    def linear_hook(m: nn.Linear, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += 2.0 * m.in_features * out.numel()

    handles = [
        m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)  # type: ignore[arg-type]
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return total / inputs[0].shape[0]


def time_runs(
    fn: Callable[[], object],
    device: torch.device,
    *,
    warmup: int,
    runs: int,
    on_run: Callable[[int, int, str], None] | None = None,
) -> list[float]:
    """Seconds per call of `fn`, one number per run, after `warmup` untimed calls.
    `on_run(calls done, warmup + runs, "warmup" or "timed")` follows each call, outside the clock."""
    for i in range(warmup):
        fn()
        if on_run is not None:
            on_run(i + 1, warmup + runs, "warmup")
    sync(device)
    out = []
    for i in range(runs):
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
        if on_run is not None:
            on_run(warmup + i + 1, warmup + runs, "timed")
    return out


def conv_reference(device: torch.device, dtype: torch.dtype, *, runs: int = 5) -> float:
    """The machine's own speed at the work these models are made of: GFLOP/s of a 64->64 3x3
    convolution (forward) on a 96x96 map in the given precision, the faster of the NCHW and
    channels_last layouts (channels_last only on GPUs, where NCHW is never the faster)."""
    batch = 64 if device.type == "cuda" else 4
    flops = 2.0 * 9 * 64 * 64 * 96 * 96 * batch
    best = 0.0
    layouts = (
        [torch.channels_last] if device.type == "cuda" else [torch.contiguous_format, torch.channels_last]
    )
    for layout in layouts:
        conv = nn.Conv2d(64, 64, 3, padding=1).to(device, dtype).to(memory_format=layout)
        x = torch.randn(batch, 64, 96, 96, device=device, dtype=dtype).contiguous(memory_format=layout)
        with torch.inference_mode():
            seconds = time_runs(lambda conv=conv, x=x: conv(x), device, warmup=2, runs=runs)
        best = max(best, flops / statistics.median(seconds) / 1e9)
    return best


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def synthetic_photos(n: int = 8, size: int = 384, seed: int = 0) -> list[np.ndarray]:
    """Smooth gradients, edges and noise: photo-like enough that timings do not depend on content."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = []
    for i in range(n):
        img = np.stack([np.sin(xx / (7 + i) + yy / 11), np.cos(yy / 5 - xx / 13), (xx + yy) / (2 * size)], -1)
        img = 0.5 + 0.4 * img + rng.normal(0, 0.05, img.shape)
        out.append(np.clip(img * 255, 0, 255).astype(np.uint8))
    return out


@dataclass
class StepProfile:
    """Where a training step's time goes (torch.profiler over `steps` real steps)."""

    steps: int
    wall_ms_per_step: float  # with the profiler on: a little slower than the benchmark's own time
    ops_per_step: float  # ATen operators dispatched from Python or autograd per step (not nested)
    kernels_per_step: float | None  # device kernels launched per step (CUDA only)
    device_busy_ms_per_step: float | None  # time some kernel was running (CUDA only)
    device_idle_share: float | None  # share of the wall time the GPU ran nothing (CUDA only)
    top: list[dict[str, Any]]  # the ops with the most self time: name, calls/step, ms/step, share

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _busy_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def profile_steps(
    step: Callable[[], object], device: torch.device, steps: int, *, top: int = 12
) -> StepProfile:
    """Run `step` `steps` times under torch.profiler: the ops with the most self time (on the GPU,
    else on the CPU), how many ops and kernel launches a step costs, and how long the GPU idles."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        wall = time.perf_counter() - start
    events = prof.events()
    ops = [
        e
        for e in events
        if e.device_type == DeviceType.CPU
        and e.name.startswith("aten::")
        and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::"))
    ]
    kernels = [e for e in events if e.device_type == DeviceType.CUDA] if cuda else []
    busy_ms = _busy_us([(e.time_range.start, e.time_range.end) for e in kernels]) / 1000 if cuda else None

    def self_us(avg: Any) -> float:
        if cuda:
            return float(getattr(avg, "self_device_time_total", getattr(avg, "self_cuda_time_total", 0.0)))
        return float(avg.self_cpu_time_total)

    averages = [a for a in prof.key_averages() if self_us(a) > 0]
    total = sum(self_us(a) for a in averages) or 1.0
    rows = sorted(averages, key=self_us, reverse=True)[:top]
    wall_ms = wall * 1000 / steps
    return StepProfile(
        steps=steps,
        wall_ms_per_step=round(wall_ms, 3),
        ops_per_step=round(len(ops) / steps, 1),
        kernels_per_step=round(len(kernels) / steps, 1) if cuda else None,
        device_busy_ms_per_step=round(busy_ms / steps, 3) if busy_ms is not None else None,
        device_idle_share=round(max(0.0, 1 - busy_ms / steps / wall_ms), 3) if busy_ms is not None else None,
        top=[
            {
                "name": a.key,
                "calls_per_step": round(a.count / steps, 1),
                "ms_per_step": round(self_us(a) / 1000 / steps, 3),
                "share": round(self_us(a) / total, 3),
            }
            for a in rows
        ],
    )


@dataclass
class TrainBenchmark:
    stage: str
    device: str
    amp: str
    compile: bool
    step_mode: str  # how the Trainer ran the step: "plain", "fast", "fast, CUDA graphs", ...
    batch_size: int
    crop: int
    model: str  # e.g. "srresnet 16x64 x4"
    vgg: str  # where the VGG weights came from ("random (speed only)" when none were given)
    steps: int
    ms_per_step: float  # median over the timed steps
    ms_per_step_spread: tuple[float, float]  # min, max
    crops_per_s: float  # HR crops (crop x crop) trained per second, median step
    gflop_per_crop: float  # approximate: backward counted as 2x forward
    achieved_gflops: float
    reference_gflops: float  # the machine's 3x3 conv throughput in the same process
    fraction_of_reference: float
    peak_memory_mb: float
    profile: StepProfile | None = None  # with profile=N: N more steps under torch.profiler
    notes: list[str] = field(default_factory=list)  # e.g. a compile that fell back to eager
    degradation: str = "bicubic"  # how the step's LR inputs were made (degradations/)
    discriminator: str = "none"  # the gan step's D: its --d-arch and width, e.g. "unet 64"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def benchmark_train(
    config: Any,
    *,
    steps: int = 10,
    warmup: int = 3,
    data: str | Path | None = None,
    random_vgg: bool = True,
    profile: int = 0,
    on_step: Callable[[int, int, str], None] | None = None,
) -> TrainBenchmark:
    """Time `steps` real training steps (Trainer.step on CropPool batches, their LR made by
    `config.degradation` as `srgan train` makes it) of `config`'s stage; with `profile`, run that
    many more under torch.profiler (StepProfile).

    The GAN stage needs VGG weights for its content loss; speed does not depend on their values,
    so with `random_vgg` and none given, a randomly initialised VGG of the same shape is used.

    `on_step(done, total, phase)` is told of each step (outside the timed part): steps done of
    warmup + steps + profile, phase "warmup", "timed" or "profiled"; then (total, total,
    "reference") before the FLOP count and the conv reference (a few seconds)."""
    from .degradations import Degrader, load_degradation
    from .devices import resolve_device
    from .photos import list_images
    from .sr import losses
    from .sr.data import CropPool
    from .sr.trainer import Trainer

    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(config.seed)
    vgg = None
    vgg_source = "none"
    if config.stage == "gan" and config.content_weight > 0:
        vgg_source = str(config.vgg_weights or os.environ.get(losses.ENV_VGG) or "")
        if not vgg_source:
            if not random_vgg:
                vgg_source = "torchvision download"
            else:
                layer = losses.CONTENT_LAYERS[config.content_layer]
                random_state = losses._features(layer.arch, layer.end).state_dict()
                vgg = losses.VGGFeatures(layer, random_state, "torchvision")
                vgg_source = "random (speed only)"
    trainer = Trainer(config, device, vgg=vgg)

    if data:
        pool = CropPool.from_files(list_images(data), scale=config.scale, crop=config.crop, device=device)
    else:
        pool = CropPool(synthetic_photos(), scale=config.scale, crop=config.crop, device=device)
    generator = pool.generator(config.seed)
    degradation = load_degradation(config.degradation)
    degrader = (
        None if degradation.bicubic else Degrader(degradation, config.scale, device=device, seed=config.seed)
    )
    trainer.g.train()
    state = {"step": 0}

    def one_step() -> None:
        if degrader is None:
            lr_img, hr_img = pool.batch(config.batch_size, generator)
        else:  # as sr.run.Run.train_step
            hr_img = pool.crops(config.batch_size, generator).to(device)
            lr_img, hr_img = degrader(hr_img), degrader.target(hr_img)
        trainer.set_lr(state["step"])
        trainer.step(lr_img, hr_img, state["step"])
        state["step"] += 1

    total = warmup + steps + profile

    def on_run(done: int, _runs: int, phase: str) -> None:
        if on_step is not None:
            on_step(done, total, phase)

    def profiled_step() -> None:
        one_step()
        on_run(warmup + steps + state["profiled"] + 1, total, "profiled")
        state["profiled"] += 1

    seconds = time_runs(one_step, device, warmup=warmup, runs=steps, on_run=on_run)
    median = statistics.median(seconds)
    state["profiled"] = 0
    step_profile = profile_steps(profiled_step, device, profile) if profile else None
    on_run(total, total, "reference")

    # FLOPs per crop: every pass that needs gradients costs ~3x its forward (forward + 2x backward)
    lr_probe, hr_probe = pool.batch(2, pool.generator(1))
    lr_probe, hr_probe = lr_probe.to(device), hr_probe.to(device)
    if trainer.restoring:  # the restore step runs the LR front-end alone (the SR network is frozen)
        flops = 3 * conv_flops(trainer.g.restore, lr_probe)
    else:
        flops = 3 * conv_flops(trainer.g, lr_probe)
    if config.stage == "gan" and trainer.d is not None:
        f_d = conv_flops(trainer.d, hr_probe)
        flops += 3 * f_d + 3 * f_d + 2 * f_d  # D step on real and fake, G step through D to its input
        if trainer.content is not None:
            flops += 3 * conv_flops(trainer.content.vgg, hr_probe)  # HR forward, SR forward + backward
    amp = trainer.amp
    reference = conv_reference(device, amp or torch.float32)
    crops_per_s = config.batch_size / median
    achieved = flops * crops_per_s / 1e9
    g_cfg = trainer.g.config
    return TrainBenchmark(
        stage=config.stage,
        device=str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        amp=precision_name(amp) if amp else "off",
        compile=bool(config.compile),
        step_mode=trainer.step_mode,
        batch_size=config.batch_size,
        crop=config.crop,
        model=f"srresnet {g_cfg.n_blocks}x{g_cfg.n_feats} x{g_cfg.scale}"
        + (f", front-end {g_cfg.restore_blocks}x{g_cfg.restore_feats}" if g_cfg.restore_blocks else ""),
        vgg=vgg_source,
        steps=steps,
        ms_per_step=round(median * 1000, 2),
        ms_per_step_spread=(round(min(seconds) * 1000, 2), round(max(seconds) * 1000, 2)),
        crops_per_s=round(crops_per_s, 2),
        gflop_per_crop=round(flops / 1e9, 3),
        achieved_gflops=round(achieved, 1),
        reference_gflops=round(reference, 1),
        fraction_of_reference=float(f"{achieved / reference:.3g}"),  # 3 significant digits, never 0
        peak_memory_mb=round(peak_memory_mb(device), 1),
        profile=step_profile,
        notes=list(trainer.notes),
        degradation=degradation.name,
        discriminator=f"{config.d_arch} {config.d_feats}" if trainer.d is not None else "none",
    )


# ---------------------------------------------------------------------------------------------
# upscaling


@dataclass
class UpscaleBenchmark:
    model: str
    backend: str  # torch or onnx
    device: str
    precision: str
    compile: bool
    input_size: tuple[int, int]  # (width, height) of the LR image
    output_size: tuple[int, int]
    tile: int  # LR tile side used (0 = whole image)
    runs: int
    ms_per_image: float  # median over the runs, numpy image in, numpy image out
    ms_per_image_spread: tuple[float, float]  # min, max
    images_per_s: float  # frames per second for video-like use
    input_mp_per_s: float
    output_mp_per_s: float
    ms_on_device: float | None  # torch on a GPU: tensor already on the device, result left there
    gflop_per_output_mp: float | None  # the model's conv work (paper architecture), None if unknown
    achieved_gflops: float | None
    reference_gflops: float  # the machine's 3x3 conv throughput, same process and precision
    fraction_of_reference: float | None
    peak_memory_mb: float  # CUDA: peak allocated by torch; CPU: the process's peak RSS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_gflop_per_output_mp(model: nn.Module, scale: int | None = None) -> float:
    """Conv and linear GFLOP per output megapixel (that work grows linearly with pixels; attention's
    own matrix products, in transformer models, are not counted)."""
    scale = scale or int(model.config.scale)  # type: ignore[union-attr]
    param = next(model.parameters())
    probe = torch.rand(1, 3, 32, 32, device=param.device, dtype=param.dtype)
    return conv_flops(model.eval(), probe) / (32 * scale) ** 2 * 1e6 / 1e9


def synthetic_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] with photo-like structure, for timing."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([np.sin(xx / 9 + yy / 13), np.cos(yy / 7 - xx / 11), (xx + yy) / (width + height)], -1)
    img = 0.5 + 0.4 * img + rng.normal(0, 0.03, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def benchmark_upscale(
    ready: Any,
    size: tuple[int, int],
    *,
    runs: int = 5,
    warmup: int = 2,
    gflop_per_output_mp: float | None = None,
    reference_gflops: float | None = None,
) -> UpscaleBenchmark:
    """Time `ready.upscaler` (a runtime.loader.ReadyUpscaler) on a synthetic (width, height) image."""
    width, height = size
    upscaler = ready.upscaler
    pixels = synthetic_image(width, height)
    torch_device = getattr(upscaler, "device", torch.device("cpu"))
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    seconds = time_runs(lambda: upscaler(pixels), torch_device, warmup=warmup, runs=runs)
    median = statistics.median(seconds)
    on_device = None
    if hasattr(upscaler, "upscale_tensor") and torch_device.type == "cuda":
        x = torch.from_numpy(pixels).permute(2, 0, 1)[None].to(torch_device)
        device_seconds = time_runs(lambda: upscaler.upscale_tensor(x), torch_device, warmup=1, runs=runs)
        on_device = round(statistics.median(device_seconds) * 1000, 2)
    if reference_gflops is None:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(ready.precision, torch.float32)
        reference_gflops = conv_reference(torch_device, dtype)
    out_w, out_h = width * ready.scale, height * ready.scale
    achieved = None if gflop_per_output_mp is None else gflop_per_output_mp * out_w * out_h / 1e6 / median
    return UpscaleBenchmark(
        model=ready.name,
        backend=ready.backend,
        device=ready.device if torch_device.type != "cuda" else torch.cuda.get_device_name(torch_device),
        precision=ready.precision,
        compile=bool(getattr(upscaler, "compiled", False)),
        input_size=(width, height),
        output_size=(out_w, out_h),
        tile=int(getattr(upscaler, "last_tile", 0)),
        runs=runs,
        ms_per_image=round(median * 1000, 2),
        ms_per_image_spread=(round(min(seconds) * 1000, 2), round(max(seconds) * 1000, 2)),
        images_per_s=round(1 / median, 3),
        input_mp_per_s=round(width * height / 1e6 / median, 4),
        output_mp_per_s=round(out_w * out_h / 1e6 / median, 3),
        ms_on_device=on_device,
        gflop_per_output_mp=None if gflop_per_output_mp is None else round(gflop_per_output_mp, 2),
        achieved_gflops=None if achieved is None else round(achieved, 1),
        reference_gflops=round(reference_gflops, 1),
        fraction_of_reference=None if achieved is None else float(f"{achieved / reference_gflops:.3g}"),
        peak_memory_mb=round(peak_memory_mb(torch_device), 1),
    )


@dataclass
class PipelineBenchmark:
    """The real file-to-file path (read, upscale, write: runtime/pipeline.py) on a generated folder,
    next to the model alone on the same images in the same process."""

    backend: str
    input_size: tuple[int, int]
    files: int
    formats: str  # e.g. "jpg -> png"
    io_threads: int  # reader and writer threads each in the overlapped run
    model_ms_per_image: float  # the upscaler alone: decoded image in memory, 8-bit result out
    sequential_ms_per_image: float  # one file at a time (--io-threads 0)
    pipelined_ms_per_image: float  # decoding and writing overlapped with the model
    sequential_of_model: float  # model-only time / file-to-file time: 1.0 = IO costs nothing
    pipelined_of_model: float
    video_frames: int  # a generated H.264 clip of that many frames, through srgan upscale's video path
    video_ms_per_frame: float
    video_of_model: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def benchmark_pipeline(
    ready: Any,
    size: tuple[int, int],
    *,
    files: int = 8,
    in_format: str = "jpg",
    out_format: str = "png",
    io_threads: int = 2,
) -> PipelineBenchmark:
    """Time `srgan upscale`'s path from files to files on `files` generated photos of `size`, one
    file at a time and overlapped, and the model alone on the same decoded images."""
    import tempfile

    from .imageio import ImageData, read_image, write_image
    from .runtime.batch import OutputOptions, plan_jobs
    from .runtime.pipeline import run_jobs
    from .runtime.upscaler import upscale_image

    width, height = size
    upscaler = ready.upscaler
    device = getattr(upscaler, "device", torch.device("cpu"))
    with tempfile.TemporaryDirectory(prefix="srgan-pipeline-") as tmp:
        src = Path(tmp) / "in"
        for i in range(files):
            write_image(
                src / f"photo{i:03d}.{in_format}", ImageData(synthetic_image(width, height, seed=i), None)
            )
        images = [read_image(path) for path in sorted(src.iterdir())]
        upscale_image(upscaler, images[0])  # warm-up: compile, cudnn autotuning, allocator
        sync(device)
        start = time.perf_counter()
        for image in images:
            upscale_image(upscaler, image)
        sync(device)
        model = (time.perf_counter() - start) / files

        def file_to_file(name: str, threads: int) -> float:
            options = OutputOptions(output=Path(tmp) / name, fmt=out_format)
            jobs = plan_jobs([str(src)], options, ready.scale).jobs
            start = time.perf_counter()
            results = list(run_jobs(upscaler, jobs, options, readers=threads, writers=threads))
            sync(device)
            seconds = time.perf_counter() - start
            failed = [r.error for r in results if r.status != "ok"]
            if failed:
                raise RuntimeError(f"the pipeline benchmark's files failed: {failed[:3]}")
            return seconds / files

        sequential = file_to_file("sequential", 0)
        pipelined = file_to_file("pipelined", io_threads)
        clip = synthetic_clip(Path(tmp) / "clip.mp4", width, height, frames=files)
        video = _time_video(ready.upscaler, clip, Path(tmp) / "clip_up.mp4", device) / files
    return PipelineBenchmark(
        backend=ready.backend,
        input_size=(width, height),
        files=files,
        formats=f"{in_format} -> {out_format}",
        io_threads=io_threads,
        model_ms_per_image=round(model * 1000, 2),
        sequential_ms_per_image=round(sequential * 1000, 2),
        pipelined_ms_per_image=round(pipelined * 1000, 2),
        sequential_of_model=round(model / sequential, 3),
        pipelined_of_model=round(model / pipelined, 3),
        video_frames=files,
        video_ms_per_frame=round(video * 1000, 2),
        video_of_model=round(model / video, 3),
    )


def synthetic_clip(path: Path, width: int, height: int, *, frames: int, fps: int = 25) -> Path:
    """An H.264 clip of `frames` photo-like frames (synthetic_image, a new seed each), for timing."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
        stream.options = {"crf": "18"}
        for i in range(frames):
            rgb = np.rint(synthetic_image(stream.width, stream.height, seed=i) * 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _time_video(upscaler: Any, src: Path, dst: Path, device: torch.device) -> float:
    """Seconds of `srgan upscale`'s video path (decode, upscale, encode: runtime/video.py)."""
    from .runtime.video import VideoOptions, upscale_video

    start = time.perf_counter()
    upscale_video(upscaler, src, dst, VideoOptions(), overwrite=True)
    sync(device)
    return time.perf_counter() - start
