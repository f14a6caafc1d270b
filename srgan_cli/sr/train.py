"""`srgan train --stage pretrain`: the MSE (or L1) stage that trains SRResNet, resumable exactly."""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .. import weights as weights_mod
from ..devices import precision_name, resolve_device
from ..errors import TrainingError
from ..runtime.torch_backend import TorchUpscaler
from .data import StepSampler, TrainCrops, list_images, load_eval_pairs
from .evaluate import EvalReport, evaluate
from .models import SRResNet, SRResNetConfig, count_parameters

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"

# Fields that define the run: a resumed run must agree with its checkpoint on these.
_RUN_FIELDS = (
    "stage",
    "scale",
    "n_blocks",
    "n_feats",
    "global_skip",
    "crop",
    "batch_size",
    "loss",
    "seed",
    "ema",
    "augment",
)


@dataclass
class TrainConfig:
    data: str = ""  # folder of HR training photos (searched recursively)
    val: str | None = None  # folder of HR validation photos; None skips validation
    out: str = "runs/srresnet_x4"  # checkpoint, log and weights go here
    stage: str = "pretrain"  # pretrain = pixel-loss SRResNet (the GAN stage comes later)
    scale: int = 4  # 2, 4 or 8
    n_blocks: int = 16  # residual blocks (paper: 16)
    n_feats: int = 64  # channels per block (paper: 64)
    global_skip: bool = False  # learn a residual over bicubic upscaling (not in the paper)
    crop: int = 96  # HR crop side; LR crops are crop/scale (paper: 96)
    batch_size: int = 16  # paper: 16
    steps: int = 100_000  # total optimiser steps (paper: 10^6 for SRResNet on ImageNet)
    lr: float = 1e-4  # Adam learning rate (paper: 1e-4)
    lr_min: float = 1e-6  # floor of the cosine schedule
    schedule: str = "constant"  # constant (paper) or cosine (decays lr to lr_min over `steps`)
    beta1: float = 0.9  # Adam beta1 (paper: 0.9)
    beta2: float = 0.999
    loss: str = "mse"  # mse (paper) or l1
    ema: float = 0.999  # decay of an exponential moving average of the weights; 0 turns it off
    augment: bool = True  # random flips and 90-degree rotations of each crop
    cache_images: bool = True  # decode every training photo once and keep it in memory
    workers: int = -1  # data loader processes; -1 = 0 on CPU (no spare cores), else up to 8
    val_every: int = 1000  # steps between validations (and interim weights)
    val_limit: int = 0  # validate on at most this many photos; 0 = all
    checkpoint_every: int = 500  # steps between checkpoints
    log_every: int = 20  # steps between log lines
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    amp: str = "auto"  # mixed precision: auto (bf16/fp16 on CUDA, off on CPU), off, bf16, fp16
    init: str | None = None  # start from these generator weights instead of random ones

    def validate(self) -> None:
        if self.stage != "pretrain":
            raise TrainingError(f"unknown stage {self.stage!r}: this version trains --stage pretrain")
        if self.loss not in ("mse", "l1"):
            raise TrainingError(f"unknown loss {self.loss!r}: use mse or l1")
        if self.schedule not in ("constant", "cosine"):
            raise TrainingError(f"unknown schedule {self.schedule!r}: use constant or cosine")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise TrainingError(f"unknown amp mode {self.amp!r}: use auto, off, bf16 or fp16")
        if self.steps < 1 or self.batch_size < 1:
            raise TrainingError("steps and batch size must be positive")
        if not 0.0 <= self.ema < 1.0:
            raise TrainingError("ema must be in [0, 1)")
        SRResNetConfig(self.scale, self.n_blocks, self.n_feats)  # raises on a bad scale

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise TrainingError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        return cls(**data)


@dataclass
class TrainResult:
    weights: Path
    steps: int
    seconds: float
    val: EvalReport | None


Event = Callable[[str, dict[str, Any]], None]


def read_checkpoint_config(out: str | Path) -> TrainConfig:
    """The config a run in `out` was started with (for `--resume` without restating options)."""
    path = Path(out) / CHECKPOINT
    if not path.is_file():
        raise TrainingError(f"nothing to resume: {path} does not exist")
    state = _load_checkpoint(path)
    return TrainConfig.from_dict(state["config"])


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(f"cannot read checkpoint {path}: {exc}") from exc


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _lr_at(config: TrainConfig, step: int) -> float:
    if config.schedule == "constant":
        return config.lr
    t = min(step / max(config.steps, 1), 1.0)
    return config.lr_min + 0.5 * (config.lr - config.lr_min) * (1 + math.cos(math.pi * t))


def _amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if config.amp == "off" or device.type != "cuda":
        if config.amp in ("bf16", "fp16") and device.type != "cuda":
            raise TrainingError(f"--amp {config.amp} needs a CUDA device; use --amp off on the CPU")
        return None
    if config.amp == "fp16":
        return torch.float16
    if config.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    ema_params = [p for p in ema.parameters()]
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for eb, b in zip(ema.buffers(), model.buffers(), strict=True):
        eb.copy_(b)  # BN running statistics follow the live model


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train(config: TrainConfig, *, resume: bool = False, on_event: Event | None = None) -> TrainResult:
    """Run (or continue) the pixel-loss stage; returns where the final weights were written."""
    config.validate()
    emit: Event = on_event or (lambda kind, data: None)
    device = resolve_device(config.device)
    out = Path(config.out)
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise TrainingError(
            f"{out} already holds a training run",
            hint="pass --resume to continue it, or choose another --out",
        )
    files = list_images(config.data)
    if not files:
        raise TrainingError(f"no images found in {config.data}")

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model = SRResNet(
        SRResNetConfig(config.scale, config.n_blocks, config.n_feats, global_skip=config.global_skip)
    )
    if config.init and not resume:
        init = weights_mod.load(config.init, expect_arch="srresnet", expect_scale=config.scale)
        weights_mod.load_state_dict(model, init.model.state_dict(), init.info.path)
    model.to(device)
    ema = copy.deepcopy(model).eval() if config.ema > 0 else None
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2))
    amp_dtype = _amp_dtype(config, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    step, elapsed = 0, 0.0
    if resume:
        state = _load_checkpoint(ckpt_path)
        saved = TrainConfig.from_dict(state["config"])
        diff = [f for f in _RUN_FIELDS if getattr(saved, f) != getattr(config, f)]
        if diff:
            detail = ", ".join(f"{f}: {getattr(saved, f)} -> {getattr(config, f)}" for f in diff)
            raise TrainingError(f"cannot resume with different settings ({detail})")
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        if step >= config.steps:
            raise TrainingError(
                f"the run in {out} already finished {step} steps", hint="raise --steps to train longer"
            )
    out.mkdir(parents=True, exist_ok=True)

    dataset = TrainCrops(
        files,
        scale=config.scale,
        crop=config.crop,
        augment=config.augment,
        seed=config.seed,
        cache=config.cache_images,
    )
    workers = (
        config.workers
        if config.workers >= 0
        else (0 if device.type == "cpu" else min(8, os.cpu_count() or 1))
    )
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=StepSampler(step, config.steps, config.batch_size),
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )
    val_pairs = (
        load_eval_pairs(config.val, config.scale, limit=config.val_limit or None) if config.val else []
    )
    criterion = F.mse_loss if config.loss == "mse" else F.l1_loss
    emit(
        "start",
        {
            "step": step,
            "steps": config.steps,
            "device": str(device),
            "amp": precision_name(amp_dtype) if amp_dtype else "off",
            "params": count_parameters(model),
            "images": len(dataset.files),
            "skipped": [f"{p}: {why}" for p, why in dataset.skipped],
            "workers": workers,
        },
    )

    log_file = (out / LOG).open("a", encoding="utf-8")
    last_val: EvalReport | None = None

    def log(kind: str, data: dict[str, Any]) -> None:
        log_file.write(json.dumps({"event": kind, **data}) + "\n")
        log_file.flush()
        emit(kind, data)

    def interim_weights() -> Path:
        net = ema if ema is not None else model
        metrics = (
            {"val_psnr_y": round(last_val.psnr, 3), "val_ssim_y": round(last_val.ssim, 4)} if last_val else {}
        )
        return weights_mod.save(
            out / f"srresnet_x{config.scale}.safetensors",
            net,
            trained_on=Path(config.data).name,
            provenance={
                "stage": config.stage,
                "steps": step,
                "data": str(config.data),
                "crop": config.crop,
                "batch_size": config.batch_size,
                "loss": config.loss,
                "ema": config.ema,
                "train_seconds": round(elapsed, 1),
                "device": str(device),
                "train_config": asdict(config),
            },
            metrics=metrics,
        )

    def save_checkpoint() -> None:
        _atomic_torch_save(
            {
                "model": model.state_dict(),
                "ema": ema.state_dict() if ema is not None else {},
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "step": step,
                "elapsed": elapsed,
                "config": asdict(config),
                "rng": _rng_state(),
            },
            ckpt_path,
        )

    def validate() -> EvalReport:
        net = ema if ema is not None else model
        upscaler = TorchUpscaler(net, device=device, tile=None)
        report = evaluate(val_pairs, config.scale, upscaler, "model")
        model.train()
        return report

    model.train()
    loss_sum = torch.zeros((), device=device)
    seen_since_log, t_log = 0, time.perf_counter()
    t_seg = time.perf_counter()  # wall time since the last save, added to `elapsed`
    try:
        for lr_batch, hr_batch in loader:
            lr_batch = lr_batch.to(device, non_blocking=True)
            hr_batch = hr_batch.to(device, non_blocking=True)
            lr_now = _lr_at(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr_now

            # --- G step (pixel loss only in this stage) -----------------------------------------
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                sr = model(lr_batch)
            loss = criterion(sr.float(), hr_batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                _ema_update(ema, model, min(config.ema, (1 + step) / (10 + step)))
            step += 1
            loss_sum += loss.detach()
            seen_since_log += lr_batch.shape[0]

            if step % config.log_every == 0 or step == config.steps:
                mean_loss = float(loss_sum) / max(1, seen_since_log // config.batch_size)
                if not math.isfinite(mean_loss):
                    raise TrainingError(
                        f"loss became {mean_loss} at step {step}; stopped (the last checkpoint is kept)",
                        hint="lower --lr, or try --amp off",
                    )
                now = time.perf_counter()
                log(
                    "log",
                    {
                        "step": step,
                        "loss": mean_loss,
                        "lr": lr_now,
                        "images_per_s": seen_since_log / max(now - t_log, 1e-9),
                    },
                )
                loss_sum.zero_()
                seen_since_log, t_log = 0, now

            if val_pairs and (step % config.val_every == 0 or step == config.steps):
                last_val = validate()
                log("val", {"step": step, "psnr": last_val.psnr, "ssim": last_val.ssim})
                elapsed += time.perf_counter() - t_seg
                t_seg = time.perf_counter()
                interim_weights()
            if step % config.checkpoint_every == 0 or step == config.steps:
                if not all(torch.isfinite(p).all() for p in model.parameters()):
                    raise TrainingError(
                        f"weights became non-finite at step {step}; the last checkpoint is kept"
                    )
                elapsed += time.perf_counter() - t_seg
                t_seg = time.perf_counter()
                save_checkpoint()
                log("checkpoint", {"step": step, "path": str(ckpt_path)})
        elapsed += time.perf_counter() - t_seg
        final = interim_weights()
        log("done", {"step": step, "seconds": elapsed, "weights": str(final)})
    finally:
        log_file.close()
    return TrainResult(final, step, elapsed, last_val)
