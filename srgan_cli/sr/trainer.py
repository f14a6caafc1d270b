"""The SRResNet/SRGAN Trainer: networks, optimisers, EMA, mixed precision, and the labelled pretrain,
D and G steps: what `srgan train` runs, and what `srgan benchmark train` times."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import World, all_reduce_mean_
from ..errors import TrainingError
from .config import TrainConfig
from .losses import (
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
