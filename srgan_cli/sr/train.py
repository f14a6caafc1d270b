"""`srgan train`: the pixel-loss SRResNet stage and the SRGAN stage, resumable exactly, on 1..N GPUs.

The loop is below; `run.Run` holds the call's state and does what the loop asks (data, the Trainer,
validation, logs, weights and checkpoints), and `trainer.Trainer` holds the networks and the steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..devices import resolve_device
from ..distributed import init_group, world_from_env
from ..errors import TrainingError
from ..training import Event, StopClock
from .config import TrainConfig
from .evaluate import EvalReport
from .run import Run


@dataclass
class TrainResult:
    weights: Path
    steps: int
    seconds: float
    val: EvalReport | None
    generator: nn.Module | None = None  # the trained (EMA) generator, on its training device
    discriminator: nn.Module | None = None
    stopped: str | None = None  # why the run stopped before `config.steps`: "time limit" or "stop request"


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
    clock = StopClock(time_limit, should_stop)
    config.validate()
    world = world_from_env()
    device = resolve_device(config.device)
    if world.distributed and device.type == "cuda" and config.device in ("auto", "cuda"):
        device = torch.device("cuda", world.local_rank)
    owns_group = init_group(world, device)
    try:
        return _loop(Run(config, resume, on_event, world, device, clock))
    finally:
        if owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _loop(run: Run) -> TrainResult:
    config = run.config
    stopped: str | None = None
    with run:
        run.begin()
        while run.step < config.steps:
            run.train_step()
            if run.due(config.log_every):
                run.log_progress()  # mean losses, lr, images/s (stops on non-finite losses)
            if run.validates and run.due(config.val_every):
                run.validate()  # --val scores and a sample grid; writes the weights file
            checkpointed = run.due(config.checkpoint_every)
            if checkpointed:
                run.save_checkpoint()
            stopped = run.stop_reason()  # a stop request, or the time limit before the next step
            if stopped:
                if not checkpointed:
                    run.save_checkpoint()
                break
        run.finish(stopped)  # the final weights file, and a "done" or "stopped" event
    trainer = run.trainer
    return TrainResult(
        run.final or run.weights_path,
        run.step,
        run.seconds(),
        run.last_val,
        trainer.generator,
        trainer.d,
        stopped,
    )
