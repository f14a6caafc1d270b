"""The choices of `srgan train` and `srgan benchmark train` options, as the str Enums typer needs,
built from the library's own lists (sr/config.py, sr/losses.py) so each list is written once."""

from __future__ import annotations

from enum import Enum

from ..sr.config import AMPS, D_ARCHS, FAST_STEPS, GAN_LOSSES, LOSSES, SCHEDULES, STAGES, VGG_INPUTS
from ..sr.losses import CONTENT_LAYERS


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    return Enum(name, {value: value for value in values}, type=str)  # type: ignore[return-value]


Stage = _choices("Stage", STAGES)
Loss = _choices("Loss", LOSSES)
Schedule = _choices("Schedule", SCHEDULES)
Amp = _choices("Amp", AMPS)
BenchAmp = _choices("BenchAmp", (*AMPS, "compare"))  # srgan benchmark train: compare = off, then bf16
ContentLayer = _choices("ContentLayer", tuple(CONTENT_LAYERS))
VggInput = _choices("VggInput", VGG_INPUTS)
GanLoss = _choices("GanLoss", GAN_LOSSES)
DArch = _choices("DArch", D_ARCHS)
FastStep = _choices("FastStep", FAST_STEPS)
