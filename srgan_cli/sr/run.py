"""One `srgan train` call's state and everything its loop delegates: the photos and the crop pool,
the Trainer (fresh, from --init or from the checkpoint), validation and sample grids, the event log
and TensorBoard, shipped weights and checkpoints, and when to stop. `train.py` holds the loop."""

from __future__ import annotations

import contextlib
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import training
from .. import weights as weights_mod
from ..atomic import remove_stale_temps
from ..degradations import Degrader, load_degradation
from ..devices import free_memory_bytes, precision_name, resolve_device
from ..distributed import World, any_flag, gather_objects
from ..errors import TrainingError, WeightsError
from ..runtime.torch_backend import TorchUpscaler
from ..training import Event, RunningMeans, StopClock, TensorBoard, count_parameters, save_png
from .config import CHECKPOINT, LOG, RUN_FIELDS, SAMPLES, TrainConfig
from .data import (
    CropPool,
    DataSource,
    EvalPair,
    bicubic_upscale,
    gather_sources,
    load_eval_set,
    pair_lr_files,
    parse_data_spec,
    without_val_photos,
)
from .evaluate import EvalReport, evaluate
from .models import SRResNet, SRResNetConfig
from .trainer import Trainer


class Run:
    """A training call of one stage, between `train()`'s process setup and its loop. Only the main
    process (rank 0) writes files; every process trains, and they agree where they must (the stop
    decision, non-finite losses) with one all-reduce.

    Use as a context manager: leaving it closes the event log and TensorBoard."""

    def __init__(
        self,
        config: TrainConfig,
        resume: bool,
        on_event: Event | None,
        world: World,
        device: torch.device,
        clock: StopClock,
    ) -> None:
        self.config, self.world, self.device, self.clock = config, world, device, clock
        self.main = world.is_main
        self.emit: Event = (on_event or _ignore) if self.main else _ignore
        self.out = config.run_dir
        self.checkpoint_path = self.out / CHECKPOINT
        if self.checkpoint_path.exists() and not resume:
            raise TrainingError(
                f"{self.out} already holds a training run",
                hint="pass --resume to continue it, or choose another --out",
            )
        self.sources = gather_sources(config.data)
        # --val photos reached through --data (a nested folder, a link, a copy) are not trained on,
        # unless --val is the training set itself (then the start event says so)
        self.val_overlap = without_val_photos(self.sources, config.val) if config.val else None
        if self.val_overlap is not None:
            self.sources = self.val_overlap.sources
        files = [f for s in self.sources for f in s.files]
        source_of = {f: s for s in self.sources for f in s.files}
        lr_files = (
            pair_lr_files(parse_data_spec(config.data[0])[0], files, config.data_lr)
            if config.data_lr
            else None
        )
        if world.distributed and len(files) >= world.size:
            files = files[world.rank :: world.size]  # each process its own shard of the photos
            lr_files = lr_files[world.rank :: world.size] if lr_files is not None else None

        self.trainer = _new_trainer(config, device, world, resume)
        # a chain of runs keeps its whole history: the --init weights' own provenance, read once
        # here (before this run's weights could stand in the same place)
        self.init_provenance: dict[str, Any] = {}
        start = config.init_weights if config.stage in ("gan", "restore") else config.init
        if start:
            with contextlib.suppress(WeightsError, OSError):  # weights of other tools carry none
                self.init_provenance = weights_mod.read_info(start).provenance
        self.pool = CropPool.from_files(
            files,
            scale=config.scale,
            crop=config.crop,
            augment=config.augment,
            device=_pool_device(config, device, files),
            weights=[source_of[f].weight for f in files],
            lr_files=lr_files,
        )
        self.data_rng = self.pool.generator(config.seed * 1_000_003 + world.rank)
        # realistic damage for the LR inputs, made on the training device (None: plain bicubic)
        self.degradation = load_degradation(config.degradation)
        self.degrader = (
            None
            if self.degradation.bicubic
            else Degrader(
                self.degradation, config.scale, device=device, seed=config.seed * 1_000_003 + world.rank + 7
            )
        )
        self.shares = _source_shares(self.sources, self.pool)

        self.step, self.prior_seconds = 0, 0.0  # training time of earlier calls, from the checkpoint
        if resume:
            self._restore()
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.out, {CHECKPOINT})  # a checkpoint write cut short by a kill

        self.val_pairs: list[EvalPair] = []
        self.val_skipped: list[tuple[Path, str]] = []
        if config.val and self.main:
            self.val_pairs, self.val_skipped = load_eval_set(
                config.val, config.scale, limit=config.val_limit or None
            )
        self.lpips, self.lpips_note = self._lpips()
        self.crops = (
            _sample_crops(self.val_pairs, self.pool, config.samples, config.scale) if self.main else []
        )
        self.validates = bool(self.val_pairs or self.crops)
        self.last_val: EvalReport | None = None
        self.last_val_step = 0
        self.means = RunningMeans()
        self.lr_now = config.lr
        self.final: Path | None = None
        self.log: Event = _ignore  # the event log, from `begin` on (rank 0 only)
        self.timed, self.timed_from = (-1, -1), (0.0, 0.0)  # the steps timed for the estimate (`begin`)

        self._files = contextlib.ExitStack()
        self.tb = (
            self._files.enter_context(contextlib.closing(TensorBoard(self.out / "tb")))
            if (config.tensorboard and self.main)
            else None
        )

    # --- setup --------------------------------------------------------------------------------
    def _restore(self) -> None:
        """Continue from the checkpoint: same settings and world size, or a clear error."""
        config, world = self.config, self.world
        state = training.load_checkpoint(self.checkpoint_path)
        saved = TrainConfig.from_dict(state["config"])
        diff = [f for f in RUN_FIELDS if getattr(saved, f) != getattr(config, f)]
        if diff:
            detail = ", ".join(f"{f}: {getattr(saved, f)} -> {getattr(config, f)}" for f in diff)
            raise TrainingError(f"cannot resume with different settings ({detail})")
        starts = ("init", "init_d")  # where a new run starts: unset (None) when resuming is fine
        for key in starts:
            given, started = getattr(config, key), getattr(saved, key)
            if given is not None and given != started:
                raise TrainingError(
                    f"{key}={given!r} starts a new run, but resume continues {self.out} from its "
                    f"checkpoint (started with {key}={started!r})",
                    hint=f"leave {key} unset (or {started!r}) to continue, or start a new run in another out",
                )
        # unset ones are the run's own: the checkpoints and the weights' provenance keep naming them
        self.config = config = replace(config, **{key: getattr(saved, key) for key in starts})
        if int(state.get("world_size", 1)) != world.size:
            raise TrainingError(
                f"the run was trained by {state.get('world_size', 1)} process(es), now {world.size}",
                hint="resume with the same --nproc-per-node (each process continues its own data stream)",
            )
        self.trainer.load_state_dict(state)
        training.set_global_rng_state(state["rng"][world.rank])
        self.data_rng.set_state(state["data_rng"][world.rank])
        if self.degrader is not None and "degrade_rng" in state:
            self.degrader.load_state_dict(state["degrade_rng"][world.rank])
        self.step, self.prior_seconds = int(state["step"]), float(state["elapsed"])
        if self.step >= config.steps:
            raise TrainingError(
                f"the run in {self.out} already finished {self.step} steps",
                hint="raise --steps to train longer",
            )

    def _lpips(self) -> tuple[Any, str]:
        """The LPIPS network for validation, or None and a note saying why not."""
        if not (self.main and self.val_pairs):
            return None, ""
        from ..metrics.lpips import lpips_if_available

        net, why = lpips_if_available(self.config.lpips_weights, device=self.device)
        note = f"LPIPS not reported: {why.message} (give --lpips-weights DIR)" if why is not None else ""
        return net, note

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self._files.close()

    def begin(self) -> None:
        """Open the event log, announce the run (in the log too: how it ran), start the clocks."""
        config, trainer = self.config, self.trainer
        self.log = (
            self._files.enter_context(training.event_log(self.out / LOG, self.emit)) if self.main else _ignore
        )
        self.log(
            "start",
            {
                "stage": config.stage,
                "step": self.step,
                "steps": config.steps,
                "device": str(self.device),
                "amp": precision_name(trainer.amp) if trainer.amp else "off",
                "step_mode": trainer.step_mode,
                "params": count_parameters(trainer.g),
                # the front-end alone in the restore stage and with --front-end-only
                "trained_params": count_parameters(trainer.trained),
                "d_params": count_parameters(trainer.d) if trainer.d is not None else 0,
                "images": len(self.pool.files),
                "sources": self.shares,
                "pool": f"{self.pool.nbytes / 1e6:.0f} MB on {self.pool.device}",
                "skipped": [f"{p}: {why}" for p, why in self.pool.skipped]
                + [f"{p} (--val): {why}" for p, why in self.val_skipped],
                "world_size": self.world.size,
                "degradation": f"real LR photos in {self.config.data_lr}"
                if self.config.data_lr
                else self.degradation.name,
                "note": self.lpips_note,
                "left_out": [str(p) for p in self._val_overlap(left_out=True)],  # also --val photos
                "val_trained_on": len(self._val_overlap(left_out=False)),  # --val is the training set
            },
        )
        self.clock.begin(self.step)
        # the wall-time estimate: the steps after the first ones (compiling, allocating) are timed
        warmup = 3 if self.config.compile or self.device.type == "cuda" else 1
        self.timed = (self.step + warmup, self.step + warmup + (10 if self.device.type == "cuda" else 2))
        self.timed_from = (0.0, 0.0)  # (clock, overheads) at the first timed step
        self.t_log = time.perf_counter()
        trainer.train_mode()
        if trainer.d is not None:
            trainer.d.train()

    # --- what the loop calls ------------------------------------------------------------------
    def due(self, every: int) -> bool:
        """Whether a task done every `every` steps (and after the last) is due after this step."""
        return self.step % every == 0 or self.step == self.config.steps

    def train_step(self) -> None:
        if self.degrader is None:
            lr_img, hr_img = self.pool.batch(self.config.batch_size, self.data_rng)
        else:
            hr_img = self.pool.crops(self.config.batch_size, self.data_rng).to(self.device, non_blocking=True)
            lr_img = self.degrader(hr_img)  # (N, 3, c/s, c/s), 8-bit like a real file
            # sharpened when the degradation asks (the restore stage's target is this HR's clean LR)
            hr_img = self.degrader.target(hr_img)
        self.lr_now = self.trainer.set_lr(self.step)
        self.means.add(self.trainer.step(lr_img, hr_img, self.step))  # summed on the device: no sync
        self.step += 1
        while self.trainer.notes:  # e.g. a compile that fell back to eager, on the first step
            self.log("note", {"step": self.step, "message": self.trainer.notes.pop(0)})
        if self.main and self.step in self.timed:
            self._estimate()

    def _estimate(self) -> None:
        """At the first timed step, start the watch; at the last, an "estimate" event: seconds per
        step (validations and checkpoints in between left out) and for the steps still to go."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # steps run ahead of the host: time finished work
        now, overheads = time.perf_counter(), sum(self.clock.spent.values())
        first, last = self.timed
        if self.step == first:
            self.timed_from = (now, overheads)
            return
        per_step = (now - self.timed_from[0] - (overheads - self.timed_from[1])) / (last - first)
        left = self.config.steps - self.clock.first_step
        self.log(
            "estimate",
            {
                "step": self.step,
                "seconds_per_step": per_step,
                "steps": left,  # the steps of this call, from where it started
                "seconds": per_step * left,
                "device": str(self.device),
                "batch_size": self.config.batch_size,
                "crop": self.config.crop,
            },
        )

    def log_progress(self) -> None:
        """The mean losses since the last log line, the learning rate and the speed."""
        config, steps = self.config, self.means.count
        means = self.means.pop()
        if any_flag(not training.all_finite(means), self.world, self.device):
            raise TrainingError(
                f"the loss became non-finite at step {self.step} ({means.get('loss')}); stopped, "
                "the last checkpoint is kept",
                hint="lower --lr, or try --amp off",
            )
        now = time.perf_counter()
        speed = steps * config.batch_size * self.world.size / max(now - self.t_log, 1e-9)
        values = {**means, "lr": self.lr_now, "images_per_s": speed}
        self.log("log", {"step": self.step, **values})
        if self.tb is not None:
            self.tb.scalars(self.step, values, "train")
        self.t_log = now

    def validate(self) -> None:
        """Scores on --val (if given) and a sample grid, with the weights that will be shipped;
        then those weights are written (and kept per step with --snapshots)."""
        with self.clock.overhead("val"):
            report = self._evaluate()
        if report is not None:
            self.last_val, self.last_val_step = report, self.step
            val = {"psnr": report.psnr, "ssim": report.ssim, "lpips": report.lpips, "grid": report.grid}
            self.log("val", {"step": self.step, **val})
            if self.tb is not None:
                self.tb.scalars(self.step, val, "val")
        written = self.save_weights()
        if self.config.snapshots and self.main:  # the rewritten file, kept per validation step
            shutil.copyfile(written, self.out / f"{self.config.name}_step{self.step:07d}.safetensors")

    def _evaluate(self) -> EvalReport | None:
        config, net = self.config, self.trainer.generator
        net.eval()
        upscaler = TorchUpscaler(net, device=self.device, tile=None)
        report = None
        if self.val_pairs:
            report = evaluate(self.val_pairs, config.scale, upscaler, config.name, lpips=self.lpips)
        if self.crops:
            grid = _sample_grid(self.crops, upscaler, config.scale)
            save_png(self.out / SAMPLES / f"step_{self.step:07d}.png", grid)
            if self.tb is not None:
                self.tb.image(self.step, grid)
        self.trainer.train_mode()
        return report

    def save_checkpoint(self) -> None:
        """Everything needed to continue exactly: networks, optimisers, every process's RNGs."""
        world, trainer = self.world, self.trainer
        with self.clock.overhead("checkpoint"):
            if any_flag(not trainer.finite(), world, self.device):
                raise TrainingError(
                    f"weights became non-finite at step {self.step}; the last checkpoint is kept"
                )
            trainer.sync_buffers()
            rngs = gather_objects(training.global_rng_state(), world)
            data_rngs = gather_objects(self.data_rng.get_state(), world)
            degrade_rngs = gather_objects(self.degrader.state_dict(), world) if self.degrader else None
            if self.main:
                state = {
                    **trainer.state_dict(),
                    "step": self.step,
                    "elapsed": self.seconds(),
                    "config": self.config.to_dict(),
                    "world_size": world.size,
                    "rng": rngs,
                    "data_rng": data_rngs,
                }
                if degrade_rngs is not None:
                    state["degrade_rng"] = degrade_rngs
                training.save_checkpoint(state, self.checkpoint_path)
            self.log("checkpoint", {"step": self.step, "path": str(self.checkpoint_path)})

    def stop_reason(self) -> str | None:
        """Why to stop before the next step ("stop request", "time limit"), or None to go on.

        A single process may stop at any step; processes that train together agree on it with one
        all-reduce, so they only ask where they already sync (the log lines)."""
        config, step = self.config, self.step
        every = config.log_every if self.world.distributed else 1
        if step >= config.steps or step % every:
            return None
        horizon = range(step + 1, min(step + every, config.steps) + 1)
        val_due = self.validates and any(s % config.val_every == 0 or s == config.steps for s in horizon)
        reason = self.clock.reason(step, len(horizon), val_due)
        if any_flag(reason is not None, self.world, self.device):
            return reason or "stop request"  # another process asked
        return None

    def finish(self, stopped: str | None) -> None:
        """Write the final weights and say how the call ended."""
        if not self.main:
            return
        self.final = self.save_weights()
        end = {"step": self.step, "seconds": self.seconds(), "weights": str(self.final)}
        if stopped:
            self.log("stopped", {"step": self.step, "reason": stopped, **end})
        else:
            self.log("done", end)

    # --- files --------------------------------------------------------------------------------
    def seconds(self) -> float:
        """Training time of the run so far: earlier calls plus this call's loop."""
        return self.prior_seconds + self.clock.loop_seconds()

    def save_weights(self) -> Path:
        """The shipped (EMA) generator as a weights file with its provenance and last scores."""
        config = self.config
        provenance: dict[str, Any] = {
            "stage": config.stage,
            "steps": self.step,
            "data": config.data,
            "data_sources": self.shares,
            "train_seconds": round(self.seconds(), 1),
            "device": str(self.device),
            "world_size": self.world.size,
            "init": config.init_weights if config.stage in ("gan", "restore") else config.init,
            "init_d": config.init_d,
            "train_config": config.to_dict(),
            "degradation": self.degradation.to_dict(),
            "data_lr": self.config.data_lr,
        }
        if self.init_provenance:
            provenance["init_provenance"] = self.init_provenance
        if self._val_overlap(left_out=True):  # photos of --data that are also --val photos
            provenance["left_out_as_val"] = [str(p) for p in self._val_overlap(left_out=True)]
        if self._val_overlap(left_out=False):  # the validation numbers are on training photos
            provenance["val_is_training_data"] = True
        metrics: dict[str, Any] = {}
        if self.last_val:
            val = self.last_val
            metrics = {"val_psnr_y": round(val.psnr, 3), "val_ssim_y": round(val.ssim, 4)}
            if val.lpips is not None:
                metrics["val_lpips"] = round(val.lpips, 4)
            if val.grid is not None:
                metrics["val_grid"] = round(val.grid, 4)
            provenance["val_step"] = self.last_val_step  # differs from `steps` after an early stop
        return weights_mod.save(
            self.weights_path,
            self.trainer.generator,
            trained_on=" + ".join(f"{Path(s.name).name} ({len(s.files)} photos)" for s in self.sources),
            provenance=provenance,
            metrics=metrics,
        )

    def _val_overlap(self, *, left_out: bool) -> list[Path]:
        """The --data photos that are also --val photos and were left out (or trained on)."""
        overlap = self.val_overlap
        return overlap.photos if overlap is not None and overlap.left_out == left_out else []

    @property
    def weights_path(self) -> Path:
        return self.out / f"{self.config.name}.safetensors"


def _ignore(kind: str, data: dict[str, Any]) -> None:
    pass


def _new_trainer(config: TrainConfig, device: torch.device, world: World, resume: bool) -> Trainer:
    """The same initial weights in every process (from --init's file for a new run), then each
    process its own random streams."""
    torch.manual_seed(config.seed)
    trainer = Trainer(config, device, world)
    if not resume and config.init_weights:
        init = weights_mod.load_model(
            config.init_weights,
            lambda arch, cfg: SRResNet(SRResNetConfig(**cfg)),
            expect_arch="srresnet",
            expect_scale=config.scale,
        )
        state = init.model.state_dict()
        if config.restore_blocks and not init.model.config.restore_blocks:  # a new front-end: the identity
            state.update({k: v for k, v in trainer.g.state_dict().items() if k.startswith("restore.")})
        weights_mod.load_state_dict(trainer.g, state, init.info.path)
        if trainer.ema is not None:
            trainer.ema.load_state_dict(trainer.g.state_dict())
    if not resume and config.init_d:
        assert trainer.d is not None  # validate(): --init-d needs the gan stage
        state = read_discriminator(config.init_d)
        arch = "unet" if "stem.weight" in state else "srgan" if "features.0.weight" in state else None
        if arch is not None and arch != config.d_arch:
            raise TrainingError(
                f"--init-d {config.init_d} holds a {arch} discriminator, this run's is {config.d_arch}",
                hint=f"add --d-arch {arch}",
            )
        first = "stem.weight" if arch == "unet" else "features.0.weight"
        width = int(state[first].shape[0]) if first in state else None
        if width is not None and width != config.d_feats:
            raise TrainingError(
                f"--init-d {config.init_d} holds a discriminator of width {width}, this run's is "
                f"{config.d_feats}",
                hint=f"add --d-feats {width}",
            )
        try:
            weights_mod.load_state_dict(trainer.d, state, config.init_d)
        except Exception as exc:  # a mismatch or non-finite values, named by load_state_dict
            raise TrainingError(f"--init-d: {exc}") from exc
    trainer.broadcast_from_main()
    torch.manual_seed(config.seed + world.rank)
    random.seed(config.seed + world.rank)
    return trainer


def read_discriminator(path: str | Path) -> dict[str, torch.Tensor]:
    """D's state from a gan-stage run's checkpoint.pt, or from a .safetensors file of it."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(
            f"--init-d {path}: no such file",
            hint="give the checkpoint.pt of a gan-stage run (or a .safetensors of its discriminator)",
        )
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise TrainingError(f"cannot read --init-d {path}: {exc}") from exc
    state = training.load_checkpoint(path).get("discriminator")
    if not isinstance(state, dict) or not state:
        raise TrainingError(
            f"--init-d {path} holds no discriminator: it is not the checkpoint of a gan-stage run"
        )
    return state


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
