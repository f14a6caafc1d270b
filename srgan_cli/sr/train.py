"""`srgan train`: the pixel-loss SRResNet stage and the SRGAN stage, resumable exactly, on 1..N GPUs."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import training
from .. import weights as weights_mod
from ..devices import free_memory_bytes, precision_name, resolve_device
from ..distributed import World, all_reduce_mean_, any_flag, gather_objects, init_group, world_from_env
from ..errors import TrainingError
from ..runtime.torch_backend import TorchUpscaler
from ..training import Event, count_parameters, load_checkpoint, save_png
from .data import (
    CropPool,
    DataSource,
    EvalPair,
    bicubic_upscale,
    gather_sources,
    load_eval_pairs,
    parse_data_spec,
)
from .evaluate import EvalReport, evaluate
from .losses import (
    CONTENT_LAYERS,
    ContentLoss,
    VGGFeatures,
    discriminator_loss,
    generator_adv_loss,
    grid_loss,
    load_vgg,
    r1_penalty,
    tv_loss,
)
from .models import Discriminator, DiscriminatorConfig, SRResNet, SRResNetConfig

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
SAMPLES = "samples"
# the choices of TrainConfig's string fields (validate() checks them; the CLI builds its choices from them)
STAGES = ("pretrain", "gan")
LOSSES = ("mse", "l1")
SCHEDULES = ("constant", "cosine", "step")
AMPS = ("auto", "off", "bf16", "fp16")
GAN_LOSSES = ("standard", "ragan")
VGG_INPUTS = ("auto", "torchvision", "caffe")

# Fields that define the run: a resumed run must agree with its checkpoint on these.
_RUN_FIELDS = (
    "stage",
    "scale",
    "n_blocks",
    "n_feats",
    "global_skip",
    "d_feats",
    "crop",
    "batch_size",
    "loss",
    "content_layer",
    "gan_loss",
    "seed",
    "ema",
    "augment",
)
_ARCH_FIELDS = ("scale", "n_blocks", "n_feats", "global_skip")  # the generator's, from --init
_RETIRED = ("cache_images", "workers")  # options of older versions, ignored in old checkpoints


@dataclass
class TrainConfig:
    # --- run ----------------------------------------------------------------------------------
    # folders of HR training photos (searched recursively), each "DIR" or "DIR:WEIGHT"; crops are
    # drawn in proportion to weight x pixels (sr.data.CropPool); a str is taken as one folder
    data: list[str] = field(default_factory=list)
    val: str | None = None  # folder of HR validation photos; None skips validation
    out: str = ""  # run folder (checkpoint, log, samples, weights); "" = runs/<name>_x<scale>
    stage: str = "pretrain"  # pretrain: SRResNet with a pixel loss; gan: SRGAN from SRResNet weights
    init: str | None = None  # generator weights to start from (gan stage default: srresnet_x<scale>)
    # --- generator (taken from --init in the gan stage) -----------------------------------------
    scale: int = 4  # 2, 4 or 8
    n_blocks: int = 16  # residual blocks (paper: 16)
    n_feats: int = 64  # channels per block (paper: 64)
    global_skip: bool = False  # learn a residual over bicubic upscaling (not in the paper)
    # --- discriminator --------------------------------------------------------------------------
    d_feats: int = 64  # channels of D's first conv (paper: 64)
    # --- data -----------------------------------------------------------------------------------
    crop: int = 96  # HR crop side; LR crops are crop/scale (paper: 96)
    batch_size: int = 16  # crops per step and process (paper: 16)
    augment: bool = True  # random flips and 90-degree rotations of each crop
    data_device: str = "auto"  # where decoded photos live: auto (GPU if they fit), cpu, or the device
    # --- optimisation ---------------------------------------------------------------------------
    steps: int = 100_000  # total optimiser steps (paper: 10^6 SRResNet, 2x10^5 SRGAN)
    lr: float = 1e-4  # Adam learning rate of G (paper: 1e-4)
    d_lr: float | None = None  # Adam learning rate of D; None = the same as lr
    schedule: str = "constant"  # constant, cosine (to lr_min), or step (x lr_gamma at lr_step_at)
    lr_min: float = 1e-6  # floor of the cosine schedule
    lr_step_at: float = 0.5  # step schedule: fraction of the steps where the rate drops
    lr_gamma: float = 0.1  # step schedule: factor of the drop (paper: 1e-4 -> 1e-5 halfway)
    beta1: float = 0.9  # Adam beta1 (paper: 0.9)
    beta2: float = 0.999
    # --- losses ---------------------------------------------------------------------------------
    loss: str = "mse"  # pixel loss: mse (paper) or l1; the whole loss of the pretrain stage
    pixel_weight: float = 0.0  # gan stage: weight of the pixel loss (paper: 0)
    content_layer: str = "vgg54"  # gan stage: vgg54 (paper), vgg22, vgg16_53, vgg16_22, vgg19_multi
    content_weight: float = 1.0  # weight of the VGG content loss (paper: 1)
    vgg_weights: str | None = None  # VGG weights file; None = $SRGAN_VGG_WEIGHTS or torchvision's
    vgg_input: str = "auto"  # input convention of those weights: auto, torchvision or caffe
    content_scale: float | None = None  # feature rescale; None = the paper's 1/12.75 (Caffe units)
    adv_weight: float = 1e-3  # weight of the adversarial loss (paper: 1e-3)
    gan_loss: str = "standard"  # standard (paper: -log D(G(z)), BCE for D) or ragan (ESRGAN)
    r1_gamma: float = 0.0  # R1 penalty on D's gradient at real images; 0 = off
    tv_weight: float = 2e-8  # total-variation regulariser (paper: 2e-8)
    grid_weight: float = 0.0  # phase-consistency (anti-checkerboard) loss, not in the paper; 0 = off
    # --- averaging, validation, logging --------------------------------------------------------
    ema: float = 0.999  # decay of an exponential moving average of G's weights; 0 turns it off
    val_every: int = 1000  # steps between validations (and interim weights, and sample grids)
    val_limit: int = 0  # validate on at most this many photos; 0 = all
    lpips_weights: str | None = None  # LPIPS weights folder; None = $SRGAN_LPIPS_WEIGHTS (else no LPIPS)
    samples: int = 4  # sample crops in the grid saved at each validation; 0 = none
    snapshots: bool = False  # keep the weights of each validation as <name>_step<N>.safetensors
    checkpoint_every: int = 500  # steps between checkpoints
    log_every: int = 20  # steps between log lines (the only host-device syncs of the loop)
    tensorboard: bool = False  # also write TensorBoard events to <out>/tb
    # --- machine --------------------------------------------------------------------------------
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N (under torchrun: each process's own GPU)
    amp: str = "auto"  # mixed precision: auto (bf16/fp16 on CUDA, off on CPU), off, bf16, fp16
    compile: bool = False  # torch.compile the networks (slow start, faster steps on GPUs)

    def __post_init__(self) -> None:
        if isinstance(self.data, (str, os.PathLike)):  # one folder (and checkpoints of older versions)
            self.data = [str(self.data)] if str(self.data) else []
        else:
            self.data = [str(d) for d in self.data]

    @classmethod
    def for_stage(cls, stage: str) -> TrainConfig:
        """The defaults of a stage (the gan stage follows the paper's SRGAN schedule)."""
        if stage == "gan":
            return cls(stage="gan", steps=200_000, schedule="step")
        return cls(stage=stage)

    @property
    def name(self) -> str:
        return f"{'srgan' if self.stage == 'gan' else 'srresnet'}_x{self.scale}"

    @property
    def run_dir(self) -> Path:
        return Path(self.out or f"runs/{self.name}")

    @property
    def init_weights(self) -> str | None:
        if self.init:
            return self.init
        return f"srresnet_x{self.scale}" if self.stage == "gan" else None

    def validate(self) -> None:
        def one_of(field: str, allowed: tuple[str, ...]) -> None:
            if getattr(self, field) not in allowed:
                raise TrainingError(f"unknown {field} {getattr(self, field)!r}: use {', '.join(allowed)}")

        one_of("stage", STAGES)
        for spec in self.data:
            parse_data_spec(spec)  # raises on a bad weight
        one_of("loss", LOSSES)
        one_of("schedule", SCHEDULES)
        one_of("amp", AMPS)
        one_of("gan_loss", GAN_LOSSES)
        one_of("content_layer", tuple(CONTENT_LAYERS))
        one_of("vgg_input", VGG_INPUTS)
        if self.steps < 1 or self.batch_size < 1:
            raise TrainingError("steps and batch size must be positive")
        if self.stage == "gan" and self.batch_size < 2 and self.gan_loss == "ragan":
            raise TrainingError("ragan compares a crop with the batch mean: use --batch-size 2 or more")
        if not 0.0 <= self.ema < 1.0:
            raise TrainingError("ema must be in [0, 1)")
        if not 0.0 < self.lr_step_at <= 1.0:
            raise TrainingError("lr_step_at is a fraction of the steps, in (0, 1]")
        if min(self.val_every, self.checkpoint_every, self.log_every) < 1:
            raise TrainingError("val_every, checkpoint_every and log_every must be positive")
        SRResNetConfig(self.scale, self.n_blocks, self.n_feats)  # raises on a bad scale
        if self.crop % self.scale:
            raise TrainingError(f"crop size {self.crop} must be a multiple of the scale {self.scale}")
        if self.grid_weight < 0:
            raise TrainingError("grid_weight must be 0 (off) or positive")
        if self.grid_weight > 0 and self.crop < 8 * self.scale:
            raise TrainingError(
                f"the grid loss works on tiles of {8 * self.scale} px (8 x the scale): "
                f"use --crop {8 * self.scale} or more, or --grid-weight 0"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = {k.replace("-", "_"): v for k, v in data.items() if k not in _RETIRED}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise TrainingError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_toml(path: str | Path) -> dict[str, Any]:
    """A `--config` file: TOML with the TrainConfig field names (dashes or underscores), flat or in
    tables ([model], [gan], ...) whose keys are merged; every name is checked."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainingError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainingError(f"cannot read config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TrainingError(f"{path} is not valid TOML: {exc}") from exc
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for k, v in items:
            k = k.replace("-", "_")
            if k in flat:
                raise TrainingError(f"{path}: option {k!r} is set twice")
            flat[k] = v
    known = {f.name: f for f in fields(TrainConfig)}
    unknown = sorted(set(flat) - set(known))
    if unknown:
        raise TrainingError(f"{path}: unknown option(s): {', '.join(unknown)}")
    defaults = TrainConfig()
    for k, v in flat.items():
        want = type(getattr(defaults, k)) if getattr(defaults, k) is not None else None
        ok = want is None or isinstance(v, want) or (want is float and isinstance(v, int))
        if want is list:  # data: one folder, or a list of them
            if not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))):
                raise TrainingError(f"{path}: {k} should be a folder or a list of folders, got {v!r}")
            continue
        if not ok or (want is int and isinstance(v, bool)):
            raise TrainingError(f"{path}: {k} should be a {want.__name__ if want else 'value'}, got {v!r}")
        if want is float:
            flat[k] = float(v)
    return flat


def apply_init_arch(config: TrainConfig, given: set[str]) -> TrainConfig:
    """With --init (always in the gan stage; in pretrain to fine-tune, e.g. the shipped weights on
    your photos) the generator's shape comes from those weights; options the user set explicitly
    (`given`) must agree with them."""
    init = config.init_weights
    if init is None:
        return config
    info = weights_mod.read_info(init)
    if info.arch != "srresnet":
        raise TrainingError(f"--init {init} is a {info.arch} model; training starts from srresnet weights")
    arch = {k: info.config[k] for k in _ARCH_FIELDS if k in info.config}
    clash = [
        f"{k}: {getattr(config, k)} (given) vs {v} (in {init})"
        for k, v in arch.items()
        if k in given and getattr(config, k) != v
    ]
    if clash:
        raise TrainingError(
            f"the generator's shape comes from --init, which disagrees: {'; '.join(clash)}",
            hint="leave out the shape options, or pick --init weights of that shape",
        )
    return replace(config, **arch)


@dataclass
class TrainResult:
    weights: Path
    steps: int
    seconds: float
    val: EvalReport | None
    generator: nn.Module | None = None  # the trained (EMA) generator, on its training device
    discriminator: nn.Module | None = None
    stopped: str | None = None  # why the run stopped before `config.steps`: "time limit" or "stop request"


def read_checkpoint_config(out: str | Path) -> TrainConfig:
    """The config a run in `out` was started with (for `--resume` without restating options)."""
    path = Path(out) / CHECKPOINT
    if not path.is_file():
        raise TrainingError(f"nothing to resume: {path} does not exist")
    return TrainConfig.from_dict(load_checkpoint(path)["config"])


def lr_at(config: TrainConfig, step: int, base: float) -> float:
    if config.schedule == "constant":
        return base
    t = min(step / max(config.steps, 1), 1.0)
    if config.schedule == "step":
        return base * (config.lr_gamma if t >= config.lr_step_at else 1.0)
    floor = min(config.lr_min, base)
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * t))


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off" or device.type != "cuda":
        if amp in ("bf16", "fp16") and device.type != "cuda":
            raise TrainingError(f"--amp {amp} needs a CUDA device; use --amp off on the CPU")
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)
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


def _unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)


class Trainer:
    """The networks, optimisers and the two step functions of both stages (also used by
    `srgan benchmark train`, so the benchmark times exactly the training step)."""

    def __init__(
        self,
        config: TrainConfig,
        device: torch.device,
        world: World | None = None,
        *,
        vgg: VGGFeatures | None = None,  # the content loss's network; None = load_vgg(config...)
    ) -> None:
        self.config, self.device, self.world = config, device, world or World()
        self.amp = amp_dtype(config.amp, device)
        self.channels_last = device.type == "cuda"
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        gan = config.stage == "gan"

        self.g = SRResNet(
            SRResNetConfig(config.scale, config.n_blocks, config.n_feats, global_skip=config.global_skip)
        ).to(device, memory_format=fmt)
        self.ema = copy.deepcopy(self.g).eval().requires_grad_(False) if config.ema > 0 else None
        self.g_opt = torch.optim.Adam(self.g.parameters(), lr=config.lr, betas=(config.beta1, config.beta2))
        self.g_scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        self.d: Discriminator | None = None
        self.content: ContentLoss | None = None
        if gan:
            self.d = Discriminator(DiscriminatorConfig(n_feats=config.d_feats)).to(device, memory_format=fmt)
            self.d_opt = torch.optim.Adam(
                self.d.parameters(), lr=config.d_lr or config.lr, betas=(config.beta1, config.beta2)
            )
            self.d_scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
            if config.content_weight > 0:
                if vgg is None:
                    vgg = load_vgg(config.content_layer, config.vgg_weights, convention=config.vgg_input)
                self.content = ContentLoss(vgg.to(device, memory_format=fmt), config.content_scale)
        self.pixel_loss = F.mse_loss if config.loss == "mse" else F.l1_loss

        # G is the network DDP wraps (one forward, one backward per step). D's gradients are
        # averaged by hand instead: R1's double backward and RaGAN's coupled real/fake loss do not
        # fit DDP's one-forward-one-backward contract.
        self.g_run: nn.Module = self.g
        if self.world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.g_run = DistributedDataParallel(
                self.g, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.d_run: nn.Module | None = self.d
        if config.compile:
            self.g_run = torch.compile(self.g_run)  # type: ignore[assignment]
            if self.d is not None and config.r1_gamma == 0:
                self.d_run = torch.compile(self.d)  # type: ignore[assignment]
            if self.content is not None:
                self.content.vgg = torch.compile(self.content.vgg)  # type: ignore[assignment]

    # --- helpers ------------------------------------------------------------------------------
    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def set_lr(self, step: int) -> float:
        lr_g = lr_at(self.config, step, self.config.lr)
        for group in self.g_opt.param_groups:
            group["lr"] = lr_g
        if self.d is not None:
            lr_d = lr_at(self.config, step, self.config.d_lr or self.config.lr)
            for group in self.d_opt.param_groups:
                group["lr"] = lr_d
        return lr_g

    def _after_g_step(self, step: int) -> None:
        if self.ema is not None:
            # warm-up: early on the average would be dominated by the random initial weights
            _ema_update(self.ema, self.g, min(self.config.ema, (1 + step) / (10 + step)))

    # --- the pretrain stage: SRResNet with a pixel loss ----------------------------------------
    def pretrain_step(self, lr_img: torch.Tensor, hr_img: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        lr_img, hr_img = self._prepare(lr_img), self._prepare(hr_img)
        with self._autocast():
            sr = self.g_run(lr_img)  # (N, 3, sH, sW)
        loss = self.pixel_loss(sr.float(), hr_img)
        self.g_opt.zero_grad(set_to_none=True)
        self.g_scaler.scale(loss).backward()
        self.g_scaler.step(self.g_opt)
        self.g_scaler.update()
        self._after_g_step(step)
        return {"loss": loss.detach()}

    # --- the gan stage: one D step, then one G step --------------------------------------------
    def gan_step(self, lr_img: torch.Tensor, hr_img: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        cfg, d, d_run = self.config, self.d, self.d_run
        assert d is not None and d_run is not None
        lr_img, hr_img = self._prepare(lr_img), self._prepare(hr_img)
        with self._autocast():
            sr = self.g_run(lr_img)  # G(z): (N, 3, sH, sW)

        # D step: push D(x) up and D(G(z)) down (BCE with logits, or RaGAN), plus optional R1.
        d.requires_grad_(True)
        real_in = hr_img.detach().requires_grad_(True) if cfg.r1_gamma > 0 else hr_img
        with self._autocast():
            real_logits = d_run(real_in).float()  # (N, 1)
            fake_logits = d_run(sr.detach()).float()
        d_loss = discriminator_loss(real_logits, fake_logits, cfg.gan_loss)
        r1 = r1_penalty(real_logits, real_in) if cfg.r1_gamma > 0 else torch.zeros((), device=self.device)
        self.d_opt.zero_grad(set_to_none=True)
        self.d_scaler.scale(d_loss + 0.5 * cfg.r1_gamma * r1).backward()
        all_reduce_mean_([p.grad for p in d.parameters() if p.grad is not None], self.world)
        self.d_scaler.step(self.d_opt)
        self.d_scaler.update()

        # G step: content (VGG) + adversarial + TV (+ pixel, + grid), with D frozen.
        d.requires_grad_(False)
        with self._autocast():
            fake_for_g = d_run(sr).float()
            real_for_g = None
            if cfg.gan_loss == "ragan":
                with torch.no_grad():
                    real_for_g = d_run(hr_img).float()
        adversarial = generator_adv_loss(fake_for_g, real_for_g, cfg.gan_loss)
        zero = torch.zeros((), device=self.device)
        content = zero
        if self.content is not None:
            with self._autocast():
                content = self.content(sr, hr_img)
        tv = tv_loss(sr) if cfg.tv_weight > 0 else zero
        pixel = self.pixel_loss(sr.float(), hr_img) if cfg.pixel_weight > 0 else zero
        grid = grid_loss(sr, hr_img, cfg.scale) if cfg.grid_weight > 0 else zero
        g_loss = (
            cfg.content_weight * content
            + cfg.adv_weight * adversarial
            + cfg.tv_weight * tv
            + cfg.pixel_weight * pixel
            + cfg.grid_weight * grid
        )
        self.g_opt.zero_grad(set_to_none=True)
        self.g_scaler.scale(g_loss).backward()
        self.g_scaler.step(self.g_opt)
        self.g_scaler.update()
        self._after_g_step(step)
        return {
            "loss": g_loss.detach(),
            "content": content.detach(),
            "adversarial": adversarial.detach(),
            "tv": tv.detach(),
            "pixel": pixel.detach(),
            "grid": grid.detach(),
            "d_loss": d_loss.detach(),
            "r1": r1.detach(),
            "D(x)": torch.sigmoid(real_logits.detach()).mean(),
            "D(G(z))": torch.sigmoid(fake_logits.detach()).mean(),
        }

    def step(self, lr_img: torch.Tensor, hr_img: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        if self.config.stage == "gan":
            return self.gan_step(lr_img, hr_img, step)
        return self.pretrain_step(lr_img, hr_img, step)

    # --- state ----------------------------------------------------------------------------------
    @property
    def generator(self) -> SRResNet:
        """The weights to ship: the EMA when there is one."""
        return self.ema if self.ema is not None else self.g  # type: ignore[return-value]

    def finite(self) -> bool:
        nets = [self.g] + ([self.d] if self.d is not None else [])
        return all(bool(torch.isfinite(p).all()) for net in nets for p in net.parameters())

    def sync_buffers(self) -> None:
        """Average BN running statistics across processes, so every rank holds the same weights."""
        nets = (
            [self.g] + ([self.ema] if self.ema is not None else []) + ([self.d] if self.d is not None else [])
        )
        all_reduce_mean_([b for net in nets for b in net.buffers() if b.is_floating_point()], self.world)

    def broadcast_from_main(self) -> None:
        """Give every process rank 0's weights (DDP does this for G alone, and only when wrapping)."""
        if not self.world.distributed:
            return
        import torch.distributed as dist

        nets = (
            [self.g] + ([self.ema] if self.ema is not None else []) + ([self.d] if self.d is not None else [])
        )
        for net in nets:
            for tensor in [*net.parameters(), *net.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "generator": self.g.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "g_optimizer": self.g_opt.state_dict(),
            "g_scaler": self.g_scaler.state_dict(),
        }
        if self.d is not None:
            state.update(
                discriminator=self.d.state_dict(),
                d_optimizer=self.d_opt.state_dict(),
                d_scaler=self.d_scaler.state_dict(),
            )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.g.load_state_dict(state["generator"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.g_opt.load_state_dict(state["g_optimizer"])
        self.g_scaler.load_state_dict(state["g_scaler"])
        if self.d is not None:
            self.d.load_state_dict(state["discriminator"])
            self.d_opt.load_state_dict(state["d_optimizer"])
            self.d_scaler.load_state_dict(state["d_scaler"])


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
        diff = [f for f in _RUN_FIELDS if getattr(saved, f) != getattr(config, f)]
        if diff:
            detail = ", ".join(f"{f}: {getattr(saved, f)} -> {getattr(config, f)}" for f in diff)
            raise TrainingError(f"cannot resume with different settings ({detail})")
        if int(state.get("world_size", 1)) != world.size:
            raise TrainingError(
                f"the run was trained by {state.get('world_size', 1)} process(es), now {world.size}",
                hint="resume with the same --nproc-per-node (each process continues its own data stream)",
            )
        trainer.load_state_dict(state)
        _set_rng_state(state["rng"][world.rank])
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
        rngs = gather_objects(_rng_state(), world)
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
