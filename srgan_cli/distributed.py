"""Running as one of several processes under `torchrun`: rank, world size, and the collectives we use."""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import UsageError


@dataclass(frozen=True)
class World:
    rank: int = 0  # this process among all of them
    size: int = 1  # number of processes
    local_rank: int = 0  # this process among those on its machine (picks the GPU)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


# What a launch that splits the work must announce (torchrun sets all of these, and more: LOCAL_RANK,
# LOCAL_WORLD_SIZE, TORCHELASTIC_RUN_ID; other env:// launchers such as a Kubernetes PyTorchJob or a
# Slurm script set at least these four, which is what `init_process_group("env://")` reads).
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT_ENV = "SRGAN_DIST_TIMEOUT"  # seconds to wait for the other processes to join
DEFAULT_TIMEOUT = 60.0


def _not_a_launch(size: int, why: str) -> UsageError:
    return UsageError(
        f"WORLD_SIZE={size} is set but this is not a torchrun launch ({why}): "
        "unset WORLD_SIZE and RANK, or start with torchrun",
        hint="to run one process: env -u WORLD_SIZE -u RANK -u LOCAL_RANK srgan ...",
    )


def _env_int(name: str, size: int) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise _not_a_launch(size, f"{name}={text!r} is not a whole number") from None


def world_from_env() -> World:
    """The layout torchrun announces in RANK / WORLD_SIZE / LOCAL_RANK (one process when unset).

    WORLD_SIZE above 1 without the rest of a launch (a variable left over in the shell) is a
    UsageError at once, not one file of three and then a crash, or a half-hour wait for a master."""
    text = os.environ.get("WORLD_SIZE", "").strip()
    if not text:
        return World()
    try:
        size = int(text)
    except ValueError:
        raise UsageError(
            f"WORLD_SIZE={text!r} is not a number of processes: unset it, or start with torchrun"
        ) from None
    if size <= 1:
        return World()
    missing = [name for name in LAUNCH_VARS if not os.environ.get(name, "").strip()]
    if missing:
        raise _not_a_launch(size, f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing")
    rank = _env_int("RANK", size)
    assert rank is not None  # checked above
    if not 0 <= rank < size:
        raise _not_a_launch(size, f"RANK={rank} is not in 0..{size - 1}")
    port = _env_int("MASTER_PORT", size)
    if port is None or not 0 < port < 2**16:
        raise _not_a_launch(size, f"MASTER_PORT={os.environ['MASTER_PORT']} is not a port number")
    local_rank = _env_int("LOCAL_RANK", size)
    local_size = _env_int("LOCAL_WORLD_SIZE", size)
    if local_rank is not None and local_rank < 0:
        raise _not_a_launch(size, f"LOCAL_RANK={local_rank} is negative")
    if local_size is not None:
        if not 1 <= local_size <= size:
            raise _not_a_launch(size, f"LOCAL_WORLD_SIZE={local_size} is not in 1..{size}")
        if local_rank is not None and local_rank >= local_size:
            raise _not_a_launch(size, f"LOCAL_RANK={local_rank} is not below LOCAL_WORLD_SIZE={local_size}")
    return World(rank, size, local_rank or 0)


def join_timeout() -> datetime.timedelta:
    """How long to wait for the other processes to join: $SRGAN_DIST_TIMEOUT seconds, else 60 s."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return datetime.timedelta(seconds=DEFAULT_TIMEOUT)
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not (math.isfinite(seconds) and seconds > 0):
        raise UsageError(f"{TIMEOUT_ENV}={text!r} must be a positive number of seconds")
    return datetime.timedelta(seconds=seconds)


def rank_device(device: str, world: World) -> str:
    """`device` for this process: under torchrun "auto" and "cuda" become the GPU of its LOCAL_RANK
    (wrapped around the visible GPUs); anything else, or a single process, is left as given."""
    if world.distributed and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{world.local_rank % torch.cuda.device_count()}"
    return device


def init_group(world: World, device: torch.device) -> bool:
    """Join the process group (NCCL on GPUs, gloo on CPU); True if this call created it.

    Meeting the other processes at MASTER_ADDR:MASTER_PORT may take `join_timeout()` (60 s unless
    $SRGAN_DIST_TIMEOUT says otherwise), not PyTorch's 30 minutes; a failure is a UsageError in one
    sentence. Collectives keep PyTorch's default timeout (rank 0 validates while the others wait)."""
    if not world.distributed or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = join_timeout()
    where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    hint = (
        "start all processes with torchrun, or unset WORLD_SIZE and RANK to run one; "
        f"{TIMEOUT_ENV}=SECONDS waits longer"
    )
    try:  # the rendezvous init_process_group would do, with our timeout for it alone
        with _quiet_native_stderr():  # c10d logs each retry with a C++ stack trace
            store, rank, size = next(dist.rendezvous("env://", timeout=timeout))
    except (RuntimeError, TimeoutError, ValueError, OSError) as exc:  # DistStoreError is a RuntimeError
        raise UsageError(
            f"process {world.rank} of {world.size} could not meet the others at MASTER_ADDR:MASTER_PORT "
            f"{where} within {timeout.total_seconds():g} s ({_first_line(exc)})",
            hint=hint,
        ) from exc
    store.set_timeout(dist.default_pg_timeout)  # from here on, the store serves collectives
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, store=store, rank=rank, world_size=size)
    except (RuntimeError, TimeoutError, ValueError, OSError) as exc:
        raise UsageError(
            f"process {world.rank} of {world.size} met the others at {where} but could not start "
            f"the {backend} process group ({_first_line(exc)})",
            hint=hint,
        ) from exc
    return True


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Send file descriptor 2 (where PyTorch's C++ code logs) to a discarded temporary file for the
    block; our own error replaces those lines. Nothing changes where fd 2 cannot be swapped."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def all_reduce_mean_(tensors: list[torch.Tensor], world: World) -> None:
    """Average tensors across processes in place, with one collective for all of them."""
    if not world.distributed or not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


def any_flag(flag: bool, world: World, device: torch.device) -> bool:
    """True on every process if `flag` is True on any (so all of them stop together)."""
    if not world.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_objects(obj: Any, world: World) -> list[Any]:
    """Every process's `obj`, in rank order (on every process)."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out
