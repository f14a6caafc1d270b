"""What real inputs suffer (blur kernels, resizing, noise, JPEG, video codecs), as batched, seeded
tensor ops on the training device: used by `srgan train --degradation`, `srgan degrade` and
`srgan eval --degrade` alike."""

from .config import (
    DAMAGE_PRESET_NAMES,
    PRESET_NAMES,
    PRESETS,
    DegradationConfig,
    DegradationError,
    Stage,
    load_degradation,
)
from .damage import DAMAGE_LEVELS, Damage, damage_image, parse_damage
from .pipeline import Degrader

__all__ = [
    "DAMAGE_LEVELS",
    "DAMAGE_PRESET_NAMES",
    "PRESET_NAMES",
    "PRESETS",
    "Damage",
    "DegradationConfig",
    "DegradationError",
    "Degrader",
    "Stage",
    "damage_image",
    "load_degradation",
    "parse_damage",
]
