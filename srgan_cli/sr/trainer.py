"""The SRResNet/SRGAN Trainer: networks, optimisers, EMA, mixed precision, and the labelled pretrain,
D and G steps: what `srgan train` runs, and what `srgan benchmark train` times.

The fast step (`fast_step`, on by default on CUDA) computes the same thing with fewer, larger
kernels and no host syncs: fused Adam, the EMA and the logged values as a few multi-tensor ops,
and on CUDA (or with `compile` anywhere) the step's forward passes and losses compiled by
torch.compile, with CUDA graphs on a single GPU, so a step is a handful of graph replays
instead of hundreds of launches from Python. `fast_step="off"` runs the plain eager step."""

from __future__ import annotations

import copy
import math
import platform
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..degradations.ops import bicubic_lr
from ..distributed import World, all_reduce_mean_
from ..errors import TrainingOptionError
from ..training import EmaUpdate
from .config import TrainConfig
from .losses import (
    ContentLoss,
    VGGFeatures,
    block_excess_loss,
    block_step_loss,
    discriminator_loss,
    generator_adv_loss,
    grid_loss,
    load_vgg,
    r1_penalty,
    tv_loss,
)
from .models import SRResNet, SRResNetConfig, make_discriminator


def lr_at(config: TrainConfig, step: int, base: float) -> float:
    if config.schedule == "constant":
        return base
    t = min(step / max(config.steps, 1), 1.0)
    if config.schedule == "step":
        return base * (config.lr_gamma if t >= config.lr_step_at else 1.0)
    floor = min(config.lr_min, base)
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * t))


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast precision of `--amp` on `device`, None for full fp32. On CUDA auto is bf16
    where the GPU has it, else fp16 (with loss scaling). On the CPU auto is off (fp32: the same
    numbers on every CPU) and bf16 is there to ask for; fp16 is CUDA's only."""
    if device.type != "cuda":
        if amp == "fp16":
            raise TrainingOptionError(
                "--amp fp16 needs a CUDA device",
                hint="on the CPU use --amp bf16 (fast where the CPU computes bf16 natively) or --amp off",
            )
        return torch.bfloat16 if amp == "bf16" else None
    if amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def cpu_bf16_native() -> bool | None:
    """Whether this CPU computes bf16 in hardware: True with AVX512-BF16 or AMX (where oneDNN runs
    bf16 convolutions about twice as fast as fp32), False on an x86 CPU without them (bf16 is
    emulated there, slower than fp32), None where it is not known (another architecture)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return None
    cpu: Any = torch.cpu
    try:
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # an older torch without the probes
        return None


def fast_step_on(mode: str, device: torch.device) -> bool:
    """Whether `fast_step` ("auto", "on", "off") runs the fast step on `device` (auto: on CUDA)."""
    return mode == "on" or (mode == "auto" and device.type == "cuda")


class _Compiled:
    """torch.compile of a step function that falls back to the eager function, once and with a
    note, if compiling fails (no compiler toolchain, an unsupported op): a training run is never
    stopped by the fast path."""

    def __init__(self, fn: Any, mode: str | None, notes: list[str]) -> None:
        self.eager, self.notes, self.ready = fn, notes, False
        self.fn = torch.compile(fn, mode=mode)

    def __call__(self, *args: Any) -> Any:
        if self.ready:
            return self.fn(*args)
        try:
            out = self.fn(*args)
        except Exception as exc:  # compile errors surface on the first call, before anything runs
            name = getattr(self.eager, "__name__", "step")
            self.notes.append(f"torch.compile of {name} failed, running it eagerly: {str(exc)[:200]}")
            self.fn = self.eager
            out = self.fn(*args)
        self.ready = True
        return out


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
        self.fast = fast_step_on(config.fast_step, device)
        self.notes: list[str] = []  # one-line remarks for the user (e.g. a compile fallback)
        self.amp = amp_dtype(config.amp, device)
        if device.type == "cpu" and config.amp == "bf16" and cpu_bf16_native() is False:
            self.notes.append(
                "no bf16 hardware in this CPU (AVX512-BF16, AMX): --amp bf16 is emulated; off is faster"
            )
        self.channels_last = device.type == "cuda"
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        gan = config.stage == "gan"

        self.g = SRResNet(
            SRResNetConfig(
                config.scale,
                config.n_blocks,
                config.n_feats,
                global_skip=config.global_skip,
                restore_blocks=config.restore_blocks,
                restore_feats=config.restore_feats,
            )
        ).to(device, memory_format=fmt)
        self.restoring = config.stage == "restore"  # the front-end's own step, against the clean LR
        # only the LR front-end learns; the SR network is frozen (the restore stage, or
        # --front-end-only: the stage's losses on the output, through the frozen SR network)
        self.front_end_only = self.restoring or config.front_end_only
        if self.front_end_only:
            self.g.requires_grad_(False)
            self.g.restore.requires_grad_(True)
        self.ema = copy.deepcopy(self.g).eval().requires_grad_(False) if config.ema > 0 else None
        self._ema_update = EmaUpdate(self.ema, self.g) if self.ema is not None else None
        self.trained: nn.Module = self.g.restore if self.front_end_only else self.g  # what has gradients
        self.g_opt = self._adam(self.trained, config.lr)
        self.g_scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        self.d: nn.Module | None = None
        self.content: ContentLoss | None = None
        # the restore stage's optional perceptual terms, on the restored LR against the clean LR
        restore_adv = self.restoring and config.restore_adv_weight > 0
        restore_content = self.restoring and config.restore_content_weight > 0
        if gan or restore_adv:
            self.d = make_discriminator(config.d_arch, config.d_feats).to(device, memory_format=fmt)
            self.d_opt = self._adam(self.d, config.d_lr or config.lr)
            self.d_scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        if (gan and config.content_weight > 0) or restore_content:
            if vgg is None:
                vgg = load_vgg(config.content_layer, config.vgg_weights, convention=config.vgg_input)
            self.content = ContentLoss(vgg.to(device, memory_format=fmt), config.content_scale)
        self.pixel_loss = F.mse_loss if config.loss == "mse" else F.l1_loss
        self._zero = torch.zeros((), device=device)  # the value of a loss term that is off

        # G is the network DDP wraps (one forward, one backward per step). D's gradients are
        # averaged by hand instead: R1's double backward and RaGAN's coupled real/fake loss do not
        # fit DDP's one-forward-one-backward contract.
        self.g_run: nn.Module = self.g
        self.restore_run: nn.Module | None = self.g.restore if self.restoring else None
        if self.world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            if self.restore_run is not None:  # the one network with gradients
                self.restore_run = DistributedDataParallel(self.g.restore, device_ids=ids)
            else:
                self.g_run = DistributedDataParallel(self.g, device_ids=ids)
        self.d_run: nn.Module | None = self.d
        # the step's three differentiable pieces; the fast step compiles them whole (passes and losses)
        self._g_forward: Any = self._g_forward_eager
        self._d_losses: Any = self._d_losses_eager
        self._g_losses: Any = self._g_losses_eager
        self.graphs = False  # CUDA graphs (torch.compile "reduce-overhead") in use
        if self.fast and not self.restoring and (device.type == "cuda" or config.compile):
            self._compile_step()
        elif config.compile:
            self.g_run = torch.compile(self.g_run)  # type: ignore[assignment]
            if self.d is not None and config.r1_gamma == 0:
                self.d_run = torch.compile(self.d)  # type: ignore[assignment]
            if self.content is not None:
                self.content.vgg = torch.compile(self.content.vgg)  # type: ignore[assignment]

    def train_mode(self) -> None:
        """G in training mode for the steps; with the SR network frozen (front-end only), all of it
        but the front-end stays in eval mode: its batch-norm statistics are part of what is frozen."""
        self.g.train()
        if self.front_end_only:
            for name, part in self.g.named_children():
                if name != "restore":
                    part.eval()

    @property
    def step_mode(self) -> str:
        """How a step runs, in words: "plain", "fast", "fast, compiled" or "fast, CUDA graphs"."""
        if not self.fast:
            return "plain" + (", compiled networks" if self.config.compile else "")
        if isinstance(self._g_forward, _Compiled):
            return "fast, CUDA graphs" if self.graphs else "fast, compiled"
        return "fast"

    def _adam(self, net: nn.Module, lr: float) -> torch.optim.Adam:
        """Adam; fused (one kernel for all of a network's tensors) in the fast step."""
        betas = (self.config.beta1, self.config.beta2)
        if self.fast:
            return torch.optim.Adam(net.parameters(), lr=lr, betas=betas, fused=True)
        return torch.optim.Adam(net.parameters(), lr=lr, betas=betas)

    def _compile_step(self) -> None:
        """Compile G's forward pass, D's loss and G's loss, each with its backward. On one GPU with
        bf16 or fp32 they run as CUDA graphs; under torchrun (DDP's hooks) and with fp16 (the
        loss scaler syncs) they are compiled without graphs. R1's double backward stays eager."""
        self.graphs = self.device.type == "cuda" and not self.world.distributed and self.amp != torch.float16
        mode = "reduce-overhead" if self.graphs else None
        self._g_forward = _Compiled(self._g_forward_eager, mode, self.notes)
        self._g_losses = _Compiled(self._g_losses_eager, mode, self.notes)
        if self.config.r1_gamma == 0:
            self._d_losses = _Compiled(self._d_losses_eager, mode, self.notes)

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
        if self._ema_update is not None:
            # warm-up: early on the average would be dominated by the random initial weights
            self._ema_update(EmaUpdate.warmed(self.config.ema, step))

    def _begin_step(self) -> None:
        if self.graphs:  # the last step's graph outputs may be overwritten from here on
            torch.compiler.cudagraph_mark_step_begin()

    # --- the differentiable pieces (compiled whole by the fast step) ---------------------------
    def _g_forward_eager(self, lr_img: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.g_run(lr_img)  # G(z): (N, 3, sH, sW)

    def _d_losses_eager(
        self, real_in: torch.Tensor, fake: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """D's loss on HR crops (real) and G's output (fake); and D's logits of both, (N, 1)."""
        d_run = self.d_run
        assert d_run is not None
        with self._autocast():
            real_logits = d_run(real_in).float()
            fake_logits = d_run(fake).float()
        return discriminator_loss(real_logits, fake_logits, self.config.gan_loss), real_logits, fake_logits

    def _g_adversarial(self, d_run: nn.Module, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """G's adversarial loss: D's logits of `fake` (and for RaGAN of `real`, without gradient)."""
        with self._autocast():
            fake_logits = d_run(fake).float()
            real_logits = None
            if self.config.gan_loss == "ragan":
                with torch.no_grad():
                    real_logits = d_run(real).float()
        return generator_adv_loss(fake_logits, real_logits, self.config.gan_loss)

    def _g_losses_eager(self, sr: torch.Tensor, hr_img: torch.Tensor) -> dict[str, torch.Tensor]:
        """G's loss in the GAN stage (content + adversarial + TV + pixel + grid, weighted) and its
        terms; a term whose weight is 0 is not computed."""
        cfg, d_run, zero = self.config, self.d_run, self._zero
        assert d_run is not None
        adversarial = self._g_adversarial(d_run, sr, hr_img)
        content = zero
        if self.content is not None:
            with self._autocast():
                content = self.content(sr, hr_img)
        tv = tv_loss(sr) if cfg.tv_weight > 0 else zero
        pixel = self.pixel_loss(sr.float(), hr_img) if cfg.pixel_weight > 0 else zero
        grid = grid_loss(sr, hr_img, cfg.scale) if cfg.grid_weight > 0 else zero
        loss = (
            cfg.content_weight * content
            + cfg.adv_weight * adversarial
            + cfg.tv_weight * tv
            + cfg.pixel_weight * pixel
            + cfg.grid_weight * grid
        )
        return {
            "loss": loss,
            "content": content,
            "adversarial": adversarial,
            "tv": tv,
            "pixel": pixel,
            "grid": grid,
        }

    # --- the pretrain stage: SRResNet with a pixel loss ----------------------------------------
    def pretrain_step(self, lr_img: torch.Tensor, hr_img: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        lr_img, hr_img = self._prepare(lr_img), self._prepare(hr_img)
        self._begin_step()
        sr = self._g_forward(lr_img)  # (N, 3, sH, sW)
        return self._pixel_update(self.pixel_loss(sr.float(), hr_img), step)

    def _pixel_update(self, loss: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """The optimiser step of the pixel-loss stages (pretrain, restore)."""
        self.g_opt.zero_grad(set_to_none=True)
        self.g_scaler.scale(loss).backward()
        self.g_scaler.step(self.g_opt)
        self.g_scaler.update()
        self._after_g_step(step)
        return {"loss": loss.detach()}

    # --- the restore stage: the LR front-end alone, against the clean LR -----------------------
    def restore_step(self, lr_img: torch.Tensor, hr_img: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """The damaged LR through the restorer, compared with the clean protocol's LR of the same HR
        crop (antialiased bicubic, 8 bit): what the frozen SR network behind it was trained on. With
        the degradation's `sharpen_target`, `hr_img` comes unsharp-masked (but for the crops that
        kept the clean LR), so the target is a little sharper than the clean LR: an L1 average of
        what a damaged LR could have been is softer than any of them, and this pays it back."""
        assert self.restore_run is not None
        lr_img, hr_img = self._prepare(lr_img), self._prepare(hr_img)
        clean = bicubic_lr(hr_img.float(), tuple(lr_img.shape[-2:]))  # (N, 3, h, w)
        with self._autocast():
            restored = self.restore_run(lr_img)
        pixel = self.pixel_loss(restored.float(), clean)
        cfg = self.config
        if (
            self.d is None
            and self.content is None
            and cfg.restore_block_weight == cfg.restore_block_excess_weight == 0
        ):
            return self._pixel_update(pixel, step)
        return self._restore_perceptual_update(restored, clean, pixel, step)

    def _restore_perceptual_update(
        self, restored: torch.Tensor, clean: torch.Tensor, pixel: torch.Tensor, step: int
    ) -> dict[str, torch.Tensor]:
        """The restore stage with --restore-content-weight / --restore-adv-weight: an L1 average of
        every clean LR a damaged one could have been is softer than any of them, and the SR network
        behind the front-end enlarges that softness. A VGG loss and a discriminator on LR crops
        (clean LR: real; restored: fake) pull the front-end towards a plausible clean LR instead,
        and --restore-block-weight weighs the steps across JPEG's block edges (`block_step_loss`).
        With a discriminator: one D step, then one step of the front-end, as in the gan stage."""
        cfg, zero = self.config, self._zero
        out: dict[str, torch.Tensor] = {}
        adversarial = zero
        if self.d is not None:
            d_loss, r1, real_logits, fake_logits = self._d_update(clean, restored, cfg.r1_gamma)
            self.d.requires_grad_(False)
            adversarial = self._g_adversarial(self.d, restored, clean)
            out.update(
                d_loss=d_loss.detach(),
                r1=r1.detach(),
                **{
                    "D(x)": torch.sigmoid(real_logits.detach()).mean(),
                    "D(G(z))": torch.sigmoid(fake_logits.detach()).mean(),
                },
            )
        content = zero
        if self.content is not None:
            with self._autocast():
                content = self.content(restored, clean)
        block = block_step_loss(restored, clean) if cfg.restore_block_weight > 0 else zero
        excess = block_excess_loss(restored, clean) if cfg.restore_block_excess_weight > 0 else zero
        loss = (
            pixel
            + cfg.restore_content_weight * content
            + cfg.restore_adv_weight * adversarial
            + cfg.restore_block_weight * block
            + cfg.restore_block_excess_weight * excess
        )
        self._pixel_update(loss, step)
        return {
            "loss": loss.detach(),
            "pixel": pixel.detach(),
            "content": content.detach(),
            "adversarial": adversarial.detach(),
            "block": block.detach(),
            "block_excess": excess.detach(),
            **out,
        }

    def _d_update(
        self, real: torch.Tensor, fake: torch.Tensor, r1_gamma: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """D's step: push D(x) up and D(G(z)) down (BCE with logits, or RaGAN), plus R1 when
        `r1_gamma` > 0. Returns D's loss, R1 and D's logits of `real` and `fake`."""
        d = self.d
        assert d is not None
        d.requires_grad_(True)
        real_in = real.detach().requires_grad_(True) if r1_gamma > 0 else real
        d_loss, real_logits, fake_logits = self._d_losses(real_in, fake.detach())
        r1 = r1_penalty(real_logits, real_in) if r1_gamma > 0 else self._zero
        self.d_opt.zero_grad(set_to_none=True)
        self.d_scaler.scale(d_loss + 0.5 * r1_gamma * r1).backward()
        all_reduce_mean_([p.grad for p in d.parameters() if p.grad is not None], self.world)
        self.d_scaler.step(self.d_opt)
        self.d_scaler.update()
        return d_loss, r1, real_logits, fake_logits

    # --- the gan stage: one D step, then one G step --------------------------------------------
    def gan_step(self, lr_img: torch.Tensor, hr_img: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        cfg, d = self.config, self.d
        assert d is not None
        lr_img, hr_img = self._prepare(lr_img), self._prepare(hr_img)
        self._begin_step()
        sr = self._g_forward(lr_img)  # G(z): (N, 3, sH, sW)

        d_loss, r1, real_logits, fake_logits = self._d_update(hr_img, sr, cfg.r1_gamma)

        # G step: content (VGG) + adversarial + TV (+ pixel, + grid), with D frozen.
        d.requires_grad_(False)
        terms = self._g_losses(sr, hr_img)
        self.g_opt.zero_grad(set_to_none=True)
        self.g_scaler.scale(terms["loss"]).backward()
        self.g_scaler.step(self.g_opt)
        self.g_scaler.update()
        self._after_g_step(step)
        return {
            **{k: v.detach() for k, v in terms.items()},
            "d_loss": d_loss.detach(),
            "r1": r1.detach(),
            "D(x)": torch.sigmoid(real_logits.detach()).mean(),
            "D(G(z))": torch.sigmoid(fake_logits.detach()).mean(),
        }

    def step(self, lr_img: torch.Tensor, hr_img: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        if self.config.stage == "gan":
            return self.gan_step(lr_img, hr_img, step)
        if self.restoring:
            return self.restore_step(lr_img, hr_img, step)
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
        _load_adam(self.g_opt, state["g_optimizer"])
        self.g_scaler.load_state_dict(state["g_scaler"])
        if self.d is not None:
            self.d.load_state_dict(state["discriminator"])
            _load_adam(self.d_opt, state["d_optimizer"])
            self.d_scaler.load_state_dict(state["d_scaler"])


def _load_adam(opt: torch.optim.Adam, state: dict[str, Any]) -> None:
    """Adam's moments and step counts from a checkpoint, keeping this run's implementation: the
    saved param groups would also bring back the fused/foreach choice of the run that saved them
    (--fast-step may change between calls)."""
    how = {key: opt.param_groups[0][key] for key in ("fused", "foreach", "capturable")}
    opt.load_state_dict(state)
    for group in opt.param_groups:
        group.update(how)
