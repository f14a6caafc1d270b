"""`srgan lapgan train`: each pyramid level's GAN trained on its own, resumable, coarse to fine.

Level 0 learns the coarsest Gaussian level (base x base) from noise. Level k >= 1 learns the
Laplacian band of level k given the real coarser image: from a real crop I_k at side(k),
l_k = expand(reduce(I_k)) and h_k = I_k - l_k; G_k(z_k, l_k) proposes a band, D_k tells (h_k, l_k)
from (G_k(z_k, l_k), l_k). Levels never see each other's outputs during training (Denton et al.
train them independently), so one level can be trained or retrained alone with `--level K`.

A run folder holds run.json (the run's model config and data), level{K}.pt (one resumable
checkpoint per level), samples/level{K}_step{N}.png and log.jsonl; lapgan.safetensors (every
level's generator) is written as soon as every level has been trained.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import training
from .. import weights as weights_mod
from ..devices import resolve_device
from ..errors import TrainingError
from ..photos import image_grid
from ..training import (
    Event,
    GanPair,
    RunningMeans,
    StopClock,
    TrainingOptionError,
    config_from_dict,
    count_parameters,
    event_log,
    load_checkpoint,
    read_run,
    require_positive,
    require_rate,
    require_seed,
    require_unit,
    restore_rng,
    rng_state,
    save_png,
)
from .data import CropSampler
from .models import Lapgan, LapganConfig, coarse_noise, level_models, noise_plane
from .pyramid import expand, gaussian_pyramid, reduce

RUN_FILE = "run.json"
LOG = "log.jsonl"
WEIGHTS = "lapgan.safetensors"
SAMPLES = "samples"


@dataclass
class LapganTrainConfig:
    """One LAPGAN run. Model fields (size .. n_feats) are fixed by the first run in `out`."""

    data: str = ""  # folder of images (class subfolders give a class-conditional model)
    out: str = "runs/lapgan"
    size: int = 32  # finest side: 32 (CIFAR-like) or 64
    levels: int = 0  # pyramid levels including the coarse one; 0 = from base
    base: int = 8  # coarsest side (ignored when levels is given: base = size / 2^(levels-1))
    n_feats: int = 128  # conv width of the conditional levels (paper: 128)
    coarse_hidden: int = 1200  # width of G_0's hidden layers (paper: 1200)
    noise_dim: int = 100
    classes: bool = True  # condition on class subfolders when the data has them
    steps: int = 5000  # per level
    batch_size: int = 64
    lr: float = 2e-4  # Adam, as DCGAN (the paper used SGD with momentum)
    beta1: float = 0.5
    min_crop: float = 0.25  # smallest random crop, as a fraction of a photo's short side
    keep_side: int = 0  # photos are shrunk to this short side when read; 0 = 4 x size
    seed: int = 0
    device: str = "auto"
    log_every: int = 50
    sample_every: int = 500  # sample grid every N steps (and at the end of a level)
    checkpoint_every: int = 500

    def model_config(self, n_classes: int = 0) -> LapganConfig:
        base = self.size // 2 ** (self.levels - 1) if self.levels else self.base
        if self.levels and base * 2 ** (self.levels - 1) != self.size:
            raise TrainingError(f"--size {self.size} cannot be halved {self.levels - 1} time(s) evenly")
        try:
            return LapganConfig(
                size=self.size,
                base=base,
                noise_dim=self.noise_dim,
                coarse_hidden=self.coarse_hidden,
                n_feats=self.n_feats,
                n_classes=n_classes,
            )
        except ValueError as exc:
            raise TrainingError(str(exc), hint="e.g. --size 32 --levels 3 (8 -> 16 -> 32)") from exc

    def validate(self) -> None:
        """Every option's value (UsageError naming it, also a TrainingError), then the model's shape."""
        require_positive(
            self,
            ("n_feats", "coarse_hidden", "noise_dim", "steps", "batch_size")
            + ("log_every", "sample_every", "checkpoint_every"),
        )
        require_rate(self, ("lr",))
        require_unit(self, ("beta1",))
        require_seed(self)
        if not 0 < self.min_crop <= 1:  # also refuses nan
            raise TrainingOptionError(f"--min-crop must be in (0, 1], got {self.min_crop:g}")
        if self.keep_side < 0:
            raise TrainingOptionError(f"--keep-side must be 0 (4 x --size) or more, got {self.keep_side}")
        self.model_config()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LapganTrainConfig:
        return config_from_dict(cls, data, "LAPGAN")


_MODEL_FIELDS = ("size", "levels", "base", "n_feats", "coarse_hidden", "noise_dim", "classes")


def _read_run(out: str | Path) -> dict[str, Any] | None:
    """run.json of a run folder: {"config", "model", "classes"}, or None for a new folder."""
    return read_run(Path(out) / RUN_FILE, LapganTrainConfig.from_dict)


def read_run_config(out: str | Path) -> LapganTrainConfig | None:
    run = _read_run(out)
    return run["config"] if run is not None else None


@dataclass
class LapganTrainResult:
    weights: Path | None  # None until every level has been trained
    steps: dict[int, int]  # steps done per level
    seconds: float
    stopped: str | None = None  # "time limit" or "stop request" when it stopped before its levels were done


class LevelTrainer(GanPair):
    """G_k, D_k and their optimisers, with the labelled D and G steps of one level."""

    def __init__(self, config: LapganConfig, level: int, train: LapganTrainConfig, device: torch.device):
        g, d = level_models(config, level)
        super().__init__(g, d, lr=train.lr, beta1=train.beta1, device=device)
        self.config, self.level = config, level

    def targets(self, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What this level learns from a batch of real crops at the top size:
        level 0 -> (I_0, None); level k -> (h_k, l_k)."""
        levels = self.config.levels
        gauss = gaussian_pyramid(real, levels - self.level)  # down to side(level)
        image = gauss[-1]
        if self.level == 0:
            return image, None
        coarse = expand(reduce(image), tuple(image.shape[-2:]))
        return image - coarse, coarse

    def fake(self, n: int, coarse: torch.Tensor | None, labels: torch.Tensor | None) -> torch.Tensor:
        if coarse is None:
            return self.g(coarse_noise(self.config, n, device=self.device), labels)
        z = noise_plane(n, *coarse.shape[-2:], device=self.device)
        return self.g(z, coarse, labels)

    def _d(self, x: torch.Tensor, coarse: torch.Tensor | None, labels: torch.Tensor | None) -> torch.Tensor:
        return self.d(x, labels) if coarse is None else self.d(x, coarse, labels)

    def step(self, real: torch.Tensor, labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        x, coarse = self.targets(real)
        n = x.shape[0]
        ones, zeros = torch.ones(n, 1, device=self.device), torch.zeros(n, 1, device=self.device)

        # --- D step: (x, l) is real, (G(z, l), l) is fake
        fake = self.fake(n, coarse, labels)
        d_real = self._d(x, coarse, labels)
        d_fake = self._d(fake.detach(), coarse, labels)
        loss_d = F.binary_cross_entropy_with_logits(d_real, ones) + F.binary_cross_entropy_with_logits(
            d_fake, zeros
        )
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()

        # --- G step: the non-saturating loss -log D(G(z, l), l)
        d_gen = self._d(fake, coarse, labels)
        loss_g = F.binary_cross_entropy_with_logits(d_gen, ones)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        return {
            "D(x)": torch.sigmoid(d_real).mean().detach(),
            "D(G(z))": torch.sigmoid(d_fake).mean().detach(),
            "loss_D": loss_d.detach(),
            "loss_G": loss_g.detach(),
        }


def _level_grid(trainer: LevelTrainer, real: torch.Tensor, labels: torch.Tensor | None) -> np.ndarray:
    """Level 0: 8x8 draws. Level k: rows of l_k | l_k + G_k(z, l_k) | the real I_k, per crop."""
    g = trainer.g
    g.eval()
    cuda = [trainer.device] if trainer.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=cuda):  # training's RNG stream is untouched
        torch.manual_seed(1234)  # the same noise in every grid of a run
        if trainer.level == 0:
            n = min(64, real.shape[0])
            pictures = trainer.fake(n, None, labels[:n] if labels is not None else None)
            grid = image_grid(pictures, 8, cell=max(32, pictures.shape[-1]))
        else:
            x, coarse = trainer.targets(real)
            assert coarse is not None
            fake = (coarse + trainer.fake(x.shape[0], coarse, labels)).clamp(0, 1)
            rows = torch.stack([coarse, fake, (coarse + x).clamp(0, 1)], dim=1).flatten(0, 1)
            grid = image_grid(rows, 3, cell=max(64, x.shape[-1]))
    g.train()
    return grid


def train_lapgan(
    config: LapganTrainConfig,
    *,
    levels: list[int] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_event: Event | None = None,
    time_limit: float | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> LapganTrainResult:
    """Train the chosen levels (all by default) one after the other; see the module docstring.
    With `time_limit` (seconds of this call) the level in progress stops before a step that would
    not fit and writes its checkpoint, the levels after it are left for a `resume=True` call.
    `should_stop` (polled before each step, e.g. set by a signal handler) stops it the same way,
    with the reason "stop request"."""
    emit: Event = on_event or (lambda kind, data: None)
    if time_limit is not None and time_limit < 0:
        raise TrainingError(f"the time limit must be 0 or more seconds, not {time_limit}")
    clock = StopClock(time_limit, should_stop)
    config.validate()
    out = Path(config.out)
    saved_run = _read_run(out)
    saved = saved_run["config"] if saved_run is not None else None
    if saved is not None:
        diff = [f for f in _MODEL_FIELDS if getattr(saved, f) != getattr(config, f)]
        if diff:
            detail = ", ".join(f"{f}: {getattr(saved, f)} -> {getattr(config, f)}" for f in diff)
            raise TrainingError(
                f"{out} holds a LAPGAN run with other model settings ({detail})",
                hint="leave those options out to use the run's own, or choose another --out",
            )
    device = resolve_device(config.device)
    data = CropSampler.from_folder(
        config.data,
        config.size,
        classes=config.classes,
        keep_side=config.keep_side or None,
        min_crop=config.min_crop,
    )
    model_config = config.model_config(len(data.classes))
    todo = sorted(set(levels)) if levels else list(range(model_config.levels))
    for k in todo:
        if not 0 <= k < model_config.levels:
            raise TrainingError(
                f"--level {k} does not exist: this model has levels 0..{model_config.levels - 1}"
            )
    if saved_run is not None:
        saved_model = saved_run.get("model", {})
        if saved_model and saved_model != model_config.to_dict():
            raise TrainingError(
                f"{out} was trained with {saved_model.get('n_classes', 0)} classes, the data now has "
                f"{model_config.n_classes}",
                hint="use the same data folder layout, or another --out",
            )
    for k in todo:
        ckpt = out / f"level{k}.pt"
        if ckpt.exists() and not (resume or overwrite):
            raise TrainingError(
                f"level {k} of {out} is already trained",
                hint="--resume continues it, --overwrite trains it again from scratch",
            )
    out.mkdir(parents=True, exist_ok=True)
    run = {"config": config.to_dict(), "model": model_config.to_dict(), "classes": data.classes}
    (out / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n")

    emit(
        "start",
        {
            "images": len(data.files),
            "classes": data.classes,
            "skipped": [f"{p}: {why}" for p, why in data.skipped],
            "device": str(device),
            "sides": [model_config.side(k) for k in range(model_config.levels)],
            "levels": todo,
            "steps": config.steps,
            "batch_size": config.batch_size,
        },
    )
    started = time.perf_counter()
    stopped = None
    with event_log(out / LOG, emit) as log:
        for k in todo:
            stopped = _train_level(
                config, model_config, k, data, device, out, resume and not overwrite, log, clock
            )
            if stopped:
                break
    seconds = time.perf_counter() - started
    result = LapganTrainResult(assemble(out), level_steps(out), seconds, stopped)
    emit(
        "done",
        {
            "weights": str(result.weights) if result.weights else None,
            "steps": result.steps,
            "stopped": stopped,
        },
    )
    return result


def _train_level(
    config: LapganTrainConfig,
    model_config: LapganConfig,
    level: int,
    data: CropSampler,
    device: torch.device,
    out: Path,
    resume: bool,
    log: Event,
    clock: StopClock,
) -> str | None:
    """Train one level to `config.steps`; returns why the clock stopped it first ("time limit",
    "stop request"), or None."""
    ckpt = out / f"level{level}.pt"
    torch.manual_seed(config.seed * 1000 + level)  # the level's initial weights
    trainer = LevelTrainer(model_config, level, config, device)
    data_rng = torch.Generator().manual_seed(config.seed * 1000 + level)
    step, elapsed = 0, 0.0
    if resume and ckpt.exists():
        state = load_checkpoint(ckpt)
        if state.get("model") != model_config.to_dict():
            raise TrainingError(f"{ckpt} belongs to another model config; use --overwrite or another --out")
        trainer.load_state_dict(state)
        restore_rng(state, device, data_rng)
        step, elapsed = int(state["step"]), float(state["elapsed"])
    conditional = model_config.n_classes > 0
    grid_real, grid_labels = data.fixed(8 if level else 64, seed=4321)
    grid_real = grid_real.to(device)
    grid_labels_dev = grid_labels.to(device) if conditional else None
    log(
        "level",
        {
            "level": level,
            "side": model_config.side(level),
            "step": step,
            "steps": config.steps,
            "g_params": count_parameters(trainer.g),
            "d_params": count_parameters(trainer.d),
        },
    )
    if step >= config.steps:
        log("level_done", {"level": level, "step": step, "seconds": elapsed})
        return None

    def save_checkpoint() -> None:
        state = {
            **trainer.state_dict(),
            "level": level,
            "step": step,
            "elapsed": elapsed,
            "model": model_config.to_dict(),
            "train": {**config.to_dict(), "device": str(device)},  # levels may differ in steps/batch/lr
            **rng_state(device, data_rng),
        }
        training.save_checkpoint(state, ckpt)

    def save_grid() -> None:
        grid = _level_grid(trainer, grid_real, grid_labels_dev)
        path = out / SAMPLES / f"level{level}_step{step:07d}.png"
        save_png(path, grid)
        log("sample", {"level": level, "step": step, "path": str(path)})

    trainer.g.train()
    trainer.d.train()
    meter = RunningMeans()
    t_log, t_seg = time.perf_counter(), time.perf_counter()
    clock.begin(step)
    saved = step if resume and ckpt.exists() else -1  # the step of this run's checkpoint on disk
    while step < config.steps:
        reason = clock.reason(step, 1, val_due=False)
        if reason is not None:
            if saved != step:
                elapsed += time.perf_counter() - t_seg
                save_checkpoint()
            log("stopped", {"level": level, "step": step, "reason": reason, "path": str(ckpt)})
            return reason
        real, labels = data.batch(config.batch_size, data_rng)
        meter.add(trainer.step(real.to(device), labels.to(device) if conditional else None))
        step += 1
        if step % config.log_every == 0 or step == config.steps:
            now = time.perf_counter()
            speed = meter.count * config.batch_size / max(now - t_log, 1e-9)
            means = meter.take(f"level {level}: ", step)
            log("log", {"level": level, "step": step, **means, "images_per_s": speed})
            t_log = now
        if step % config.sample_every == 0 or step == config.steps:
            save_grid()
        if step % config.checkpoint_every == 0 or step == config.steps:
            elapsed += time.perf_counter() - t_seg
            with clock.overhead("checkpoint"):
                save_checkpoint()
            saved, t_seg = step, time.perf_counter()
            log("checkpoint", {"level": level, "step": step, "path": str(ckpt)})
    log("level_done", {"level": level, "step": step, "seconds": elapsed})
    return None


def level_steps(out: str | Path) -> dict[int, int]:
    """Steps done per level, from the checkpoints in a run folder."""
    steps = {}
    for path in sorted(Path(out).glob("level*.pt")):
        try:
            steps[int(path.stem.removeprefix("level"))] = int(load_checkpoint(path)["step"])
        except (ValueError, KeyError):
            continue
    return steps


def assemble(out: str | Path, dest: str | Path | None = None) -> Path | None:
    """Write every level's generator into one weights file (None while a level is untrained)."""
    out = Path(out)
    run = _read_run(out)
    if run is None:
        raise TrainingError(f"{out} is not a LAPGAN run folder (no {RUN_FILE})")
    model_config = LapganConfig(**run["model"])
    model = Lapgan(model_config)
    per_level = {}
    for k in range(model_config.levels):
        ckpt = out / f"level{k}.pt"
        if not ckpt.is_file():
            return None
        state = load_checkpoint(ckpt)
        model.generators[k].load_state_dict(state["G"])
        train = state.get("train", {})
        per_level[str(k)] = {
            "side": model_config.side(k),
            "steps": int(state["step"]),
            "seconds": round(float(state["elapsed"]), 1),
            "batch_size": train.get("batch_size"),
            "lr": train.get("lr"),
            "device": train.get("device"),
        }
    train_config = run["config"].to_dict()
    path = Path(dest) if dest is not None else out / WEIGHTS
    return weights_mod.save(
        path,
        model,
        trained_on=Path(train_config["data"]).name,
        provenance={
            "kind": "lapgan",
            "levels": per_level,
            "classes": run.get("classes", []),
            "data": train_config["data"],
            "train_config": train_config,
        },
    )


def load_lapgan(name_or_path: str | Path) -> tuple[Lapgan, weights_mod.WeightsInfo]:
    """A LAPGAN from a weights file; any other kind of model is a clear error."""
    loaded = weights_mod.load_model(
        name_or_path, lambda arch, config: Lapgan(LapganConfig(**config)), expect_arch="lapgan"
    )
    model = loaded.model
    assert isinstance(model, Lapgan)
    return model, loaded.info
