"""What the three trainers (SRGAN, LAPGAN levels, text-to-image) share: checkpoint and sample-grid
files (written atomically), the event type and log, RNG capture and restore, the running means of
logged quantities, config parsing, the stop clock and TensorBoard; and for the DCGAN-style trainers
(LAPGAN levels, text-to-image) G and D with their Adam optimisers."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from .atomic import atomic_open
from .errors import TrainingError, TrainingOptionError

Event = Callable[[str, dict[str, Any]], None]  # on_event(kind, payload): "start", "log", "val", ...


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class EmaUpdate:
    """ema <- lerp(ema, model, 1 - decay) for the weights: one multi-tensor op over lists made once.
    Buffers (batch norm's running statistics) are copied from the live model, or with
    `copy_buffers=False` left to the caller (text-to-image runs the average itself to measure its own)."""

    def __init__(self, ema: nn.Module, model: nn.Module, *, copy_buffers: bool = True) -> None:
        self.ema_params = list(ema.parameters())
        self.params = [p.detach() for p in model.parameters()]
        self.ema_buffers, self.buffers = list(ema.buffers()), list(model.buffers())
        self.copy_buffers = copy_buffers

    @torch.no_grad()
    def __call__(self, decay: float) -> None:
        torch._foreach_lerp_(self.ema_params, self.params, 1.0 - decay)
        if self.copy_buffers and self.buffers:
            torch._foreach_copy_(self.ema_buffers, self.buffers)

    @staticmethod
    def warmed(decay: float, updates: int) -> float:
        """The decay of an update after `updates` earlier ones: `decay`, warmed up as
        (1 + k) / (10 + k), so that the weights the average started from fade out fast."""
        return min(decay, (1 + updates) / (10 + updates))


def save_checkpoint(state: Any, path: Path, *, what: str = "checkpoint") -> None:
    """torch.save `state` to `path` atomically: a kill at any moment leaves the old file or the new one.
    A failed write (a full disk, a lost mount) is a TrainingError saying so; the old file stays."""
    kept = path.is_file()
    try:
        with _signals_held(), atomic_open(path) as fh:
            torch.save(state, fh)
    except (OSError, RuntimeError) as exc:
        # PyTorch's zip writer reports a failed write as "PytorchStreamWriter failed writing file
        # ..." or an enforce failure (RuntimeError), with the OSError as its context if any
        previous = f"the previous {what} is kept" if kept else f"no {what} was written"
        raise TrainingError(
            f"cannot write the {what} to {path}: {_write_failure(exc, path.parent)} ({previous})",
            hint=_WRITE_HINTS.get(_errno_of(exc) or 0),
        ) from exc


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM arriving while a checkpoint is written are handled when it is whole: raised
    inside torch.save's writer, they would cut the file short and surface as a write failure."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for signum in caught:  # as they would have been handled, now that the file is whole
            handler = previous[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


_WRITE_HINTS = {
    errno.ENOSPC: "free some space on that disk, then continue with --resume",
    errno.EDQUOT: "free some of your disk quota, then continue with --resume",
}


def _errno_of(exc: BaseException) -> int | None:
    """The errno of the first OSError in `exc`'s chain (cause or context), if any."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno:
            return cur.errno
        cur = cur.__cause__ or cur.__context__
    return None


def _write_failure(exc: BaseException, folder: Path) -> str:
    """Why a write failed, in a few lower-case words: the OS's reason when one is in the chain;
    for PyTorch's own error without one, "no space left on device" if the disk is full."""
    code = _errno_of(exc)
    if code is not None:
        return os_reason(code)
    try:
        if shutil.disk_usage(folder).free < 1 << 20:
            return os_reason(errno.ENOSPC)
    except OSError:
        pass
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"the write failed ({first})"


def os_reason(code: int) -> str:
    """errno -> "no space left on device" (the C library's text, lower case)."""
    text = os.strerror(code)
    return text[:1].lower() + text[1:]


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by save_checkpoint (tensors and plain data only: weights_only)."""
    hint = "delete the run folder's checkpoint to start again, or put back a copy"
    try:
        if path.stat().st_size == 0:
            raise TrainingError(f"checkpoint {path} is empty (0 bytes): its write was cut short", hint=hint)
        return torch.load(path, map_location="cpu", weights_only=True)
    except TrainingError:
        raise
    except OSError as exc:
        raise TrainingError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # PyTorch's own text would suggest weights_only=False: never do that
        raise TrainingError(
            f"checkpoint {path} is damaged or not one of this tool's ({type(exc).__name__})", hint=hint
        ) from exc


def save_png(path: Path, pixels: np.ndarray) -> None:
    """A sample grid ((H, W, 3) uint8) as PNG, atomically."""
    from PIL import Image

    with atomic_open(path) as fh:
        Image.fromarray(pixels).save(fh, format="PNG")


class GanPair:
    """A generator and a discriminator with one Adam optimiser each (DCGAN: lr 2e-4, beta1 0.5),
    checkpointed together. Subclasses add the labelled D and G steps of their paper."""

    def __init__(self, g: nn.Module, d: nn.Module, *, lr: float, beta1: float, device: torch.device) -> None:
        self.device = device
        self.g, self.d = g.to(device), d.to(device)
        betas = (beta1, 0.999)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=lr, betas=betas)

    def state_dict(self) -> dict[str, Any]:
        return {
            "G": self.g.state_dict(),
            "D": self.d.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.g.load_state_dict(state["G"])
        self.d.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])


# --- RNG state ----------------------------------------------------------------------------------
# Two checkpoint layouts, both kept so that existing runs resume: the SRGAN trainer stores, per
# process, the global streams below (torch, Python, every GPU) next to its data sampler's, because
# under torchrun each rank has its own; the single-process DCGAN-style trainers store one dict with
# the data sampler, torch and the training GPU (`rng_state`).


def global_rng_state() -> dict[str, Any]:
    """torch's, Python's and every visible GPU's random state."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_state(device: torch.device, data_rng: torch.Generator) -> dict[str, Any]:
    """Every random stream a step draws from: the data sampler's, torch's and the GPU's."""
    state = {"data_rng": data_rng.get_state(), "torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device, data_rng: torch.Generator) -> None:
    data_rng.set_state(state["data_rng"])
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], device)


class RunningMeans:
    """Sums of a step's logged tensors, kept on the device (no sync per step), read as means. A
    step's values are stacked and added as one vector: two kernels a step, not one per value."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        values = torch.stack([v.detach().float() for v in stats.values()])
        if self.total is None:
            self.names, self.total = list(stats), values
        elif list(stats) != self.names:
            raise ValueError(f"a step logged {list(stats)}, the steps before it {self.names}")
        else:
            self.total = self.total + values
        self.count += 1

    def pop(self) -> dict[str, float]:
        """The means since the last pop (one host sync), then start again."""
        total = self.total.tolist() if self.total is not None else []  # the one sync
        means = {key: v / max(self.count, 1) for key, v in zip(self.names, total, strict=True)}
        self.names, self.total, self.count = [], None, 0
        return means

    def take(self, where: str, step: int) -> dict[str, float]:
        """`pop`, and non-finite losses stop the run."""
        means = self.pop()
        if not all_finite(means):
            raise TrainingError(
                f"{where}the losses became non-finite at step {step}; the last checkpoint is kept",
                hint="lower --lr",
            )
        return means


def all_finite(values: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in values.values())


def read_run(path: Path, parse_config: Callable[[dict[str, Any]], Any]) -> dict[str, Any] | None:
    """A run folder's run.json with its "config" parsed by `parse_config`, or None for a new folder."""
    if not path.is_file():
        return None
    try:
        run = json.loads(path.read_text())
        run["config"] = parse_config(run["config"])
        return run
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"cannot read {path}: {exc}") from exc


C = TypeVar("C")


def config_from_dict(cls: type[C], data: dict[str, Any], what: str) -> C:
    """A training config dataclass from a dict; unknown keys are an error naming them."""
    unknown = sorted(set(data) - {f.name for f in fields(cls)})  # type: ignore[arg-type]
    if unknown:
        raise TrainingError(f"unknown {what} training option(s): {', '.join(unknown)}")
    return cls(**data)


def option_name(field: str) -> str:
    """A config field as its command-line option: lr_min -> --lr-min."""
    return "--" + field.replace("_", "-")


def _shown(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value) if isinstance(value, str) else str(value)


def _number(config: object, name: str) -> float:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TrainingOptionError(f"{option_name(name)} must be a number, got {_shown(value)}")
    return float(value)


def require_positive(config: object, names: tuple[str, ...]) -> None:
    """Every named option of `config` must be a whole number of at least 1 (named as its --flag)."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TrainingOptionError(f"{option_name(name)} must be at least 1, got {_shown(value)}")


def require_rate(config: object, names: tuple[str, ...]) -> None:
    """Every named option must be a positive finite number (learning rates, factors)."""
    for name in names:
        value = _number(config, name)
        if not (math.isfinite(value) and value > 0):
            raise TrainingOptionError(
                f"{option_name(name)} must be a positive finite number, got {_shown(getattr(config, name))}"
            )


def require_weight(config: object, names: tuple[str, ...]) -> None:
    """Every named option must be a finite number of 0 or more (loss weights: 0 turns a term off)."""
    for name in names:
        value = _number(config, name)
        if not (math.isfinite(value) and value >= 0):
            shown = _shown(getattr(config, name))
            raise TrainingOptionError(f"{option_name(name)} must be finite and 0 or more, got {shown}")


def require_unit(config: object, names: tuple[str, ...], *, closed: bool = False) -> None:
    """Every named option must be in [0, 1) (Adam's betas, EMA decays), or [0, 1] with `closed`."""
    for name in names:
        value = _number(config, name)
        if not (0.0 <= value <= 1.0 and (closed or value < 1.0)):
            interval = "[0, 1]" if closed else "[0, 1)"
            raise TrainingOptionError(
                f"{option_name(name)} must be in {interval}, got {_shown(getattr(config, name))}"
            )


def require_seed(config: object, name: str = "seed") -> None:
    """A seed that every generator takes (and that stays in range once offset per process)."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise TrainingOptionError(
            f"{option_name(name)} must be a whole number from 0 to {2**32 - 1}, got {_shown(value)}"
        )


@contextlib.contextmanager
def event_log(path: Path, emit: Event) -> Iterator[Event]:
    """A `log(kind, payload)` that appends one JSON line to `path` (flushed, so a killed run keeps
    its log) and passes the event on to `emit`."""
    with path.open("a", encoding="utf-8") as log_file:

        def log(kind: str, payload: dict[str, Any]) -> None:
            log_file.write(json.dumps({"event": kind, **payload}) + "\n")
            log_file.flush()
            emit(kind, payload)

        yield log


class StopClock:
    """Decides, between steps, whether a training call should stop: on request, or before a step
    that would run past the time limit. Validation and checkpoint time is measured apart from the
    steps, so a step's cost is predicted from the steps alone and the next validation from the last
    one."""

    def __init__(self, limit: float | None, should_stop: Callable[[], bool] | None) -> None:
        self.limit, self.should_stop = limit, should_stop
        self.start = time.perf_counter()  # the limit counts from here: loading the data counts too
        self.begin(0)

    def begin(self, step: int) -> None:
        """The training loop starts at `step`: the step time is measured from here."""
        self.loop_start, self.first_step = time.perf_counter(), step
        self.spent = {"val": 0.0, "checkpoint": 0.0}  # total seconds of each overhead
        self.last = {"val": 0.0, "checkpoint": 0.0}  # seconds of its last occurrence

    def loop_seconds(self) -> float:
        """Seconds since `begin`."""
        return time.perf_counter() - self.loop_start

    @contextlib.contextmanager
    def overhead(self, kind: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.last[kind] = time.perf_counter() - t0
            self.spent[kind] += self.last[kind]

    def reason(self, step: int, next_steps: int, val_due: bool) -> str | None:
        """ "stop request", "time limit" (the next `next_steps` steps would not fit), or None."""
        if self.should_stop is not None and self.should_stop():
            return "stop request"
        if self.limit is None:
            return None
        now = time.perf_counter()
        loop = now - self.loop_start - sum(self.spent.values())
        per_step = loop / max(step - self.first_step, 1)
        need = per_step * next_steps + self.last["checkpoint"] + (self.last["val"] if val_due else 0.0)
        return "time limit" if now - self.start + need > self.limit else None


class TensorBoard:
    """Scalars and sample images for `--tensorboard` (the optional tensorboard package)."""

    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise TrainingError(
                "--tensorboard needs the tensorboard package",
                hint="pip install 'srgan-cli[tensorboard]' (or pip install tensorboard)",
            ) from exc
        self.writer = SummaryWriter(str(folder))

    def scalars(self, step: int, values: dict[str, float | None], prefix: str) -> None:
        """Each value that is not None, as `prefix/key`."""
        for key, value in values.items():
            if value is not None:
                self.writer.add_scalar(f"{prefix}/{key}", value, step)
        self.writer.flush()

    def image(self, step: int, pixels: np.ndarray) -> None:
        self.writer.add_image("samples", pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
