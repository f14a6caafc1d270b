"""`srgan train`: the pixel-loss SRResNet stage and the SRGAN stage, resumable exactly, on 1..N GPUs."""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import training
from .. import weights as weights_mod
from ..devices import free_memory_bytes, precision_name, resolve_device
from ..distributed import World, any_flag, gather_objects, init_group, world_from_env
from ..errors import TrainingError
from ..runtime.torch_backend import TorchUpscaler
from ..training import Event, count_parameters, load_checkpoint, save_png
from .config import (
    CHECKPOINT,
    LOG,
    RUN_FIELDS,
    SAMPLES,
    TrainConfig,
)
from .data import (
    CropPool,
    DataSource,
    EvalPair,
    bicubic_upscale,
    gather_sources,
    load_eval_pairs,
)
from .evaluate import EvalReport, evaluate
from .models import SRResNet, SRResNetConfig
from .trainer import Trainer, global_rng_state, set_global_rng_state


@dataclass
class TrainResult:
    weights: Path
    steps: int
    seconds: float
    val: EvalReport | None
    generator: nn.Module | None = None  # the trained (EMA) generator, on its training device
    discriminator: nn.Module | None = None
    stopped: str | None = None  # why the run stopped before `config.steps`: "time limit" or "stop request"


def _pool_device(config: TrainConfig, device: torch.device, files: list[Path]) -> torch.device:
    if config.data_device == "cpu":
        return torch.device("cpu")
    if config.data_device not in ("auto", ""):
        return resolve_device(config.data_device)
    if device.type != "cuda":
        return device
    # keep the photos on the GPU when they take at most a quarter of its free memory
    need = CropPool.nbytes_needed(files)
    return device if need < free_memory_bytes(device) // 4 else torch.device("cpu")


def _source_shares(sources: list[DataSource], pool: CropPool) -> list[dict[str, Any]]:
    """Per source: photos kept in this process's pool and the share of the crops drawn from them."""
    kept = {f: i for i, f in enumerate(pool.files)}
    rows = []
    for source in sources:
        index = [kept[f] for f in source.files if f in kept]
        share = float(pool.shares[index].sum()) if index else 0.0
        rows.append({"name": source.name, "photos": len(index), "weight": source.weight, "share": share})
    return rows


def _sample_crops(pairs: list[EvalPair], pool: CropPool, n: int, scale: int) -> list[EvalPair]:
    """Fixed crops for the sample grid: the centres of the validation photos, else training crops."""
    side = max(16, 128 // scale)  # LR side; HR is 128 px at x4
    out = []
    for pair in pairs[:n]:
        h, w = pair.lr.shape[:2]
        if h < side or w < side:
            continue
        top, left = (h - side) // 2, (w - side) // 2
        lr = pair.lr[top : top + side, left : left + side]
        hr = pair.hr[top * scale : (top + side) * scale, left * scale : (left + side) * scale]
        out.append(EvalPair(pair.name, np.ascontiguousarray(lr), np.ascontiguousarray(hr)))
    if not out and n > 0:
        lr_t, hr_t = (
            (t.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
            for t in pool.batch(n, pool.generator(12345))
        )
        out += [EvalPair(f"crop{i}", lr_t[i], hr_t[i]) for i in range(n)]
    return out


def _sample_grid(
    crops: list[EvalPair], upscale: Callable[[np.ndarray], np.ndarray], scale: int
) -> np.ndarray:
    """(rows * S, 3 * S, 3) uint8: each row is bicubic | model | original."""
    rows = []
    for pair in crops:
        sr = upscale(pair.lr.astype(np.float32) / 255.0)
        sr8 = np.clip(sr * 255.0 + 0.5, 0, 255).astype(np.uint8)
        rows.append(np.concatenate([bicubic_upscale(pair.lr, scale), sr8, pair.hr], axis=1))
    return np.concatenate(rows, axis=0)


class _TensorBoard:
    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise TrainingError(
                "--tensorboard needs the tensorboard package",
                hint="pip install 'srgan-cli[tensorboard]' (or pip install tensorboard)",
            ) from exc
        self.writer = SummaryWriter(str(folder))

    def scalars(self, step: int, values: dict[str, float], prefix: str) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"{prefix}/{key}", value, step)
        self.writer.flush()

    def image(self, step: int, pixels: np.ndarray) -> None:
        self.writer.add_image("samples", pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _StopClock:
    """Decides, between steps, whether this call should stop: on request, or before a step that
    would run past the time limit. Validation and checkpoint time is measured apart from the steps,
    so a step's cost is predicted from the steps alone and the next validation from the last one."""

    def __init__(self, limit: float | None, should_stop: Callable[[], bool] | None) -> None:
        self.limit, self.should_stop = limit, should_stop
        self.start = time.perf_counter()  # the limit counts from here: loading the data counts too
        self.begin(0)

    def begin(self, step: int) -> None:
        """The training loop starts at `step`: the step time is measured from here."""
        self.loop_start, self.first_step = time.perf_counter(), step
        self.spent = {"val": 0.0, "checkpoint": 0.0}  # total seconds of each overhead
        self.last = {"val": 0.0, "checkpoint": 0.0}  # seconds of its last occurrence

    @contextlib.contextmanager
    def overhead(self, kind: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.last[kind] = time.perf_counter() - t0
            self.spent[kind] += self.last[kind]

    def reason(self, step: int, next_steps: int, val_due: bool) -> str | None:
        if self.should_stop is not None and self.should_stop():
            return "stop request"
        if self.limit is None:
            return None
        now = time.perf_counter()
        loop = now - self.loop_start - sum(self.spent.values())
        per_step = loop / max(step - self.first_step, 1)
        need = per_step * next_steps + self.last["checkpoint"] + (self.last["val"] if val_due else 0.0)
        return "time limit" if now - self.start + need > self.limit else None


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    on_event: Event | None = None,
    time_limit: float | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Run (or continue) a stage; returns where the final weights were written.

    `time_limit` (seconds of this call) and `should_stop` (polled between steps, e.g. set by a
    signal handler) end the call early but cleanly: a checkpoint and the current weights are
    written, and `resume=True` continues exactly where it stopped. The time limit is kept by
    predicting the next step (and a validation, if one is due) from the steps so far; at least one
    step is always taken.

    Under torchrun every process calls this: each trains on its own shard of the photos with its
    own seed, gradients are averaged, and only rank 0 writes checkpoints, logs and weights."""
    if time_limit is not None and time_limit < 0:
        raise TrainingError(f"the time limit must be 0 or more seconds, not {time_limit}")
    clock = _StopClock(time_limit, should_stop)
    config.validate()
    world = world_from_env()
    device = resolve_device(config.device)
    if world.distributed and device.type == "cuda" and config.device in ("auto", "cuda"):
        device = torch.device("cuda", world.local_rank)
    owns_group = init_group(world, device)
    try:
        return _train(config, resume, on_event, world, device, clock)
    finally:
        if owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(
    config: TrainConfig,
    resume: bool,
    on_event: Event | None,
    world: World,
    device: torch.device,
    clock: _StopClock,
) -> TrainResult:
    main = world.is_main
    emit: Event = (on_event or (lambda kind, data: None)) if main else (lambda kind, data: None)
    out = config.run_dir
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise TrainingError(
            f"{out} already holds a training run",
            hint="pass --resume to continue it, or choose another --out",
        )
    sources = gather_sources(config.data)
    files = [f for s in sources for f in s.files]
    source_of = {f: s for s in sources for f in s.files}
    if world.distributed and len(files) >= world.size:
        files = files[world.rank :: world.size]  # each process its own shard of the photos

    torch.manual_seed(config.seed)  # the same initial weights in every process
    trainer = Trainer(config, device, world)
    if not resume and config.init_weights:
        init = weights_mod.load_model(
            config.init_weights,
            lambda arch, cfg: SRResNet(SRResNetConfig(**cfg)),
            expect_arch="srresnet",
            expect_scale=config.scale,
        )
        weights_mod.load_state_dict(trainer.g, init.model.state_dict(), init.info.path)
        if trainer.ema is not None:
            trainer.ema.load_state_dict(trainer.g.state_dict())
    trainer.broadcast_from_main()
    torch.manual_seed(config.seed + world.rank)
    random.seed(config.seed + world.rank)

    pool = CropPool.from_files(
        files,
        scale=config.scale,
        crop=config.crop,
        augment=config.augment,
        device=_pool_device(config, device, files),
        weights=[source_of[f].weight for f in files],
    )
    generator = pool.generator(config.seed * 1_000_003 + world.rank)
    shares = _source_shares(sources, pool)

    step, prior_seconds = 0, 0.0  # training time of earlier calls, from the checkpoint
    if resume:
        state = load_checkpoint(ckpt_path)
        saved = TrainConfig.from_dict(state["config"])
        diff = [f for f in RUN_FIELDS if getattr(saved, f) != getattr(config, f)]
        if diff:
            detail = ", ".join(f"{f}: {getattr(saved, f)} -> {getattr(config, f)}" for f in diff)
            raise TrainingError(f"cannot resume with different settings ({detail})")
        if int(state.get("world_size", 1)) != world.size:
            raise TrainingError(
                f"the run was trained by {state.get('world_size', 1)} process(es), now {world.size}",
                hint="resume with the same --nproc-per-node (each process continues its own data stream)",
            )
        trainer.load_state_dict(state)
        set_global_rng_state(state["rng"][world.rank])
        generator.set_state(state["data_rng"][world.rank])
        step, prior_seconds = int(state["step"]), float(state["elapsed"])
        if step >= config.steps:
            raise TrainingError(
                f"the run in {out} already finished {step} steps", hint="raise --steps to train longer"
            )
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(f".{CHECKPOINT}.*.tmp"):  # a checkpoint write cut short by a kill
            stale.unlink(missing_ok=True)

    val_pairs = (
        load_eval_pairs(config.val, config.scale, limit=config.val_limit or None)
        if config.val and main
        else []
    )
    lpips_net, lpips_note = None, ""
    if main and val_pairs:
        from ..metrics.lpips import lpips_if_available

        lpips_net, why = lpips_if_available(config.lpips_weights, device=device)
        if why is not None:
            lpips_note = f"LPIPS not reported: {why.message} (give --lpips-weights DIR)"
    crops = _sample_crops(val_pairs, pool, config.samples, config.scale) if main else []
    tb = _TensorBoard(out / "tb") if config.tensorboard and main else None

    emit(
        "start",
        {
            "stage": config.stage,
            "step": step,
            "steps": config.steps,
            "device": str(device),
            "amp": precision_name(trainer.amp) if trainer.amp else "off",
            "params": count_parameters(trainer.g),
            "d_params": count_parameters(trainer.d) if trainer.d is not None else 0,
            "images": len(pool.files),
            "sources": shares,
            "pool": f"{pool.nbytes / 1e6:.0f} MB on {pool.device}",
            "skipped": [f"{p}: {why}" for p, why in pool.skipped],
            "world_size": world.size,
            "note": lpips_note,
        },
    )

    log_file = (out / LOG).open("a", encoding="utf-8") if main else None
    last_val: EvalReport | None = None
    last_val_step = 0

    def log(kind: str, data: dict[str, Any]) -> None:
        if log_file is not None:
            log_file.write(json.dumps({"event": kind, **data}) + "\n")
            log_file.flush()
        emit(kind, data)

    def save_weights() -> Path:
        metrics: dict[str, Any] = {}
        provenance: dict[str, Any] = {
            "stage": config.stage,
            "steps": step,
            "data": config.data,
            "data_sources": shares,
            "train_seconds": round(seconds(), 1),
            "device": str(device),
            "world_size": world.size,
            "init": config.init_weights if config.stage == "gan" else config.init,
            "train_config": config.to_dict(),
        }
        if last_val:
            metrics = {"val_psnr_y": round(last_val.psnr, 3), "val_ssim_y": round(last_val.ssim, 4)}
            if last_val.lpips is not None:
                metrics["val_lpips"] = round(last_val.lpips, 4)
            if last_val.grid is not None:
                metrics["val_grid"] = round(last_val.grid, 4)
            provenance["val_step"] = last_val_step  # differs from `steps` after an early stop
        return weights_mod.save(
            out / f"{config.name}.safetensors",
            trainer.generator,
            trained_on=" + ".join(f"{Path(s.name).name} ({len(s.files)} photos)" for s in sources),
            provenance=provenance,
            metrics=metrics,
        )

    def save_checkpoint() -> None:
        if any_flag(not trainer.finite(), world, device):
            raise TrainingError(f"weights became non-finite at step {step}; the last checkpoint is kept")
        trainer.sync_buffers()
        rngs = gather_objects(global_rng_state(), world)
        data_rngs = gather_objects(generator.get_state(), world)
        if main:
            training.save_checkpoint(
                {
                    **trainer.state_dict(),
                    "step": step,
                    "elapsed": seconds(),
                    "config": config.to_dict(),
                    "world_size": world.size,
                    "rng": rngs,
                    "data_rng": data_rngs,
                },
                ckpt_path,
            )
        log("checkpoint", {"step": step, "path": str(ckpt_path)})

    def validate() -> EvalReport | None:
        """Scores on --val (if given) and a sample grid, with the weights that will be shipped."""
        net = trainer.generator
        net.eval()
        upscaler = TorchUpscaler(net, device=device, tile=None)
        report = (
            evaluate(val_pairs, config.scale, upscaler, config.name, lpips=lpips_net) if val_pairs else None
        )
        if crops:
            grid = _sample_grid(crops, upscaler, config.scale)
            save_png(out / SAMPLES / f"step_{step:07d}.png", grid)
            if tb is not None:
                tb.image(step, grid)
        trainer.g.train()
        return report

    validates = bool(val_pairs or crops)
    clock.begin(step)

    def seconds() -> float:
        """Training time of the run so far: earlier calls plus this call's loop."""
        return prior_seconds + time.perf_counter() - clock.loop_start

    # Between steps a single process may stop at any step; processes that train together agree
    # on it with one all-reduce, so they only ask where they already sync (the log lines).
    stop_every = config.log_every if world.distributed else 1

    trainer.g.train()
    if trainer.d is not None:
        trainer.d.train()
    sums: dict[str, torch.Tensor] = {}
    steps_since_log, t_log = 0, time.perf_counter()
    final: Path | None = None
    stopped: str | None = None
    try:
        while step < config.steps:
            lr_img, hr_img = pool.batch(config.batch_size, generator)
            lr_now = trainer.set_lr(step)
            stats = trainer.step(lr_img, hr_img, step)
            step += 1
            for key, value in stats.items():  # summed on the device: no sync until the log line
                sums[key] = sums[key] + value if key in sums else value.clone()
            steps_since_log += 1

            if step % config.log_every == 0 or step == config.steps:
                means = {k: float(v) / steps_since_log for k, v in sums.items()}
                bad = not all(math.isfinite(v) for v in means.values())
                if any_flag(bad, world, device):
                    raise TrainingError(
                        f"the loss became non-finite at step {step} ({means.get('loss')}); stopped, "
                        "the last checkpoint is kept",
                        hint="lower --lr, or try --amp off",
                    )
                now = time.perf_counter()
                speed = steps_since_log * config.batch_size * world.size / max(now - t_log, 1e-9)
                log("log", {"step": step, **means, "lr": lr_now, "images_per_s": speed})
                if tb is not None:
                    tb.scalars(step, {**means, "lr": lr_now, "images_per_s": speed}, "train")
                sums, steps_since_log, t_log = {}, 0, now

            if validates and (step % config.val_every == 0 or step == config.steps):
                with clock.overhead("val"):
                    report = validate()
                if report is not None:
                    last_val, last_val_step = report, step
                    val = {
                        "step": step,
                        "psnr": report.psnr,
                        "ssim": report.ssim,
                        "lpips": report.lpips,
                        "grid": report.grid,
                    }
                    log("val", val)
                    if tb is not None:
                        tb.scalars(
                            step, {k: v for k, v in val.items() if k != "step" and v is not None}, "val"
                        )
                written = save_weights()
                if config.snapshots and main:  # the rewritten file, kept per validation step
                    shutil.copyfile(written, out / f"{config.name}_step{step:07d}.safetensors")
            saved = step % config.checkpoint_every == 0 or step == config.steps
            if saved:
                with clock.overhead("checkpoint"):
                    save_checkpoint()
            if step < config.steps and step % stop_every == 0:
                horizon = range(step + 1, min(step + stop_every, config.steps) + 1)
                val_due = validates and any(s % config.val_every == 0 or s == config.steps for s in horizon)
                reason = clock.reason(step, len(horizon), val_due)
                if any_flag(reason is not None, world, device):
                    stopped = reason or "stop request"  # another process asked
                    if not saved:
                        save_checkpoint()
                    break
        if main:
            final = save_weights()
            if stopped:
                log("stopped", {"step": step, "reason": stopped, "seconds": seconds(), "weights": str(final)})
            else:
                log("done", {"step": step, "seconds": seconds(), "weights": str(final)})
    finally:
        if log_file is not None:
            log_file.close()
        if tb is not None:
            tb.close()
    return TrainResult(
        final or out / f"{config.name}.safetensors",
        step,
        seconds(),
        last_val,
        trainer.generator,
        trainer.d,
        stopped,
    )
