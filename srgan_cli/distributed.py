"""Running as one of several processes under `torchrun`: rank, world size, and the collectives we use."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


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


def world_from_env() -> World:
    """The layout torchrun announces in RANK / WORLD_SIZE / LOCAL_RANK (one process when unset)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def rank_device(device: str, world: World) -> str:
    """`device` for this process: under torchrun "auto" and "cuda" become the GPU of its LOCAL_RANK
    (wrapped around the visible GPUs); anything else, or a single process, is left as given."""
    if world.distributed and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{world.local_rank % torch.cuda.device_count()}"
    return device


def init_group(world: World, device: torch.device) -> bool:
    """Join the process group (NCCL on GPUs, gloo on CPU); True if this call created it."""
    if not world.distributed or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


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
