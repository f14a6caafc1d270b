"""Fixed, reproducible damage for evaluation: an HR photo -> its x`scale` LR as a user would have it
(the SR protocol's bicubic downscale, then blur, sensor noise, a JPEG save and a video codec at set
strengths), or drawn from a training preset with a set seed. `srgan eval --degrade SPEC` scores
models on these."""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from .config import DAMAGE_PRESET_NAMES, PRESETS, DegradationError


@dataclass(frozen=True)
class Damage:
    """One damage setting. Fixed strengths apply in this order to the bicubic LR: Gaussian blur of
    std. dev. `blur` LR px, Gaussian noise of std. dev. `noise` grey levels (colour, seeded per image
    by its name), a JPEG save at `jpeg` quality (4:2:0, as PIL and most cameras save), then one
    intra frame of `codec` (libx264 or libx265, yuv420p) at constant rate factor `crf`: a frame of
    streamed or downloaded video. With `preset` (a training preset or a .toml file), the LR is drawn
    from that pipeline with `seed` instead."""

    name: str
    blur: float = 0.0
    noise: float = 0.0
    jpeg: int | None = None
    codec: str | None = None  # libx264 or libx265, with crf
    crf: int | None = None
    preset: str | None = None
    seed: int = 0

    @property
    def spec(self) -> str:
        if self.preset is not None:
            return f"{self.preset} (seed {self.seed})"
        parts = [f"blur={self.blur:g}"] if self.blur else []
        parts += [f"noise={self.noise:g}"] if self.noise else []
        parts += [f"jpeg={self.jpeg}"] if self.jpeg is not None else []
        parts += [f"{_CODEC_KEYS[self.codec]}={self.crf}"] if self.codec is not None else []
        return ",".join(parts) or "none"


# --degrade's name for each codec: h264=CRF, h265=CRF
_CODEC_KEYS = {"libx264": "h264", "libx265": "h265"}
_KEYS = ("blur", "noise", "jpeg", *_CODEC_KEYS.values())
_FORMS = "blur=SIGMA,noise=SIGMA,jpeg=QUALITY,h264=CRF (or h265=CRF)"

# the three levels of docs/degradations.md: light, moderate and heavy phone/web damage
DAMAGE_LEVELS = {
    "light": Damage("light", blur=0.0, noise=2.0, jpeg=90),
    "moderate": Damage("moderate", blur=0.5, noise=5.0, jpeg=60),
    "heavy": Damage("heavy", blur=0.8, noise=10.0, jpeg=30),
}


def parse_damage(spec: str, *, seed: int = 0) -> Damage:
    """`light`, `moderate`, `heavy`; `blur=S,noise=S,jpeg=Q,h264=CRF` (any subset; or h265=CRF); a
    training preset name (`realesrgan`, `photo`, `video`) or a .toml degradation file, drawn with
    `seed`."""
    text = spec.strip()
    if text in DAMAGE_LEVELS:
        return replace(DAMAGE_LEVELS[text], seed=seed)
    if text in PRESETS or text.lower().endswith(".toml"):
        if text.lower().endswith(".toml") and not Path(text).is_file():
            raise DegradationError(f"degradation file not found: {text}")
        return Damage(Path(text).stem if text.endswith(".toml") else text, preset=text, seed=seed)
    values: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in _KEYS:
            raise DegradationError(
                f"--degrade {spec!r}: cannot read {part!r}",
                hint=f"use light, moderate, heavy, a preset ({DAMAGE_PRESET_NAMES}), a "
                f".toml file, or {_FORMS}",
            )
        try:
            values[key] = float(value)
        except ValueError:
            raise DegradationError(f"--degrade {spec!r}: {key} must be a number, got {value!r}") from None
    if not values:
        raise DegradationError(f"--degrade {spec!r} names no damage")
    blur, noise = values.get("blur", 0.0), values.get("noise", 0.0)
    if not (0 <= blur <= 20 and 0 <= noise <= 100):
        raise DegradationError(f"--degrade {spec!r}: blur must be 0-20 px and noise 0-100 grey levels")
    jpeg = values.get("jpeg")
    if jpeg is not None and not (1 <= jpeg <= 100 and jpeg == int(jpeg)):
        raise DegradationError(f"--degrade {spec!r}: jpeg is a quality from 1 to 100")
    codecs = [(codec, values[key]) for codec, key in _CODEC_KEYS.items() if key in values]
    if len(codecs) > 1:
        raise DegradationError(f"--degrade {spec!r}: one video codec at a time (h264 or h265)")
    codec, crf = codecs[0] if codecs else (None, None)
    if crf is not None and not (0 <= crf <= 51 and crf == int(crf)):
        raise DegradationError(f"--degrade {spec!r}: {_CODEC_KEYS[str(codec)]} takes a CRF from 0 to 51")
    return Damage(
        text,
        blur=blur,
        noise=noise,
        jpeg=None if jpeg is None else int(jpeg),
        codec=codec,
        crf=None if crf is None else int(crf),
        seed=seed,
    )


def bicubic_downscale(hr: np.ndarray, scale: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (H/s, W/s, 3) uint8 with PIL's antialiased bicubic (the SR protocol)."""
    h, w = hr.shape[:2]
    return np.array(Image.fromarray(hr).resize((w // scale, h // scale), Image.Resampling.BICUBIC))


def image_seed(name: str, seed: int) -> int:
    """A per-image seed that does not depend on the order or number of images."""
    return (zlib.crc32(name.encode("utf-8")) ^ (seed * 0x9E3779B1)) & 0xFFFFFFFF


def damage_image(
    hr: np.ndarray, scale: int, damage: Damage, name: str, record: dict[str, object] | None = None
) -> np.ndarray:
    """(H, W, 3) uint8 HR (sides multiples of `scale`) -> (H/s, W/s, 3) uint8 damaged LR. `name`
    seeds the image's own random draws; `record` (a dict) receives what a preset's pipeline did."""
    if damage.preset is not None:
        from .config import load_degradation
        from .pipeline import Degrader

        degrader = Degrader(
            load_degradation(damage.preset),
            scale,
            seed=image_seed(name, damage.seed),
            record=record is not None,
        )
        hr_t = torch.from_numpy(np.ascontiguousarray(hr)).permute(2, 0, 1)[None].float().div_(255.0)
        lr_t = degrader(hr_t)[0]
        if record is not None:
            record.update(degrader.last[0])
        return lr_t.mul(255.0).round_().to(torch.uint8).permute(1, 2, 0).numpy()
    lr = bicubic_downscale(hr, scale).astype(np.float64)
    if damage.blur > 0:
        lr = cv2.GaussianBlur(lr, (0, 0), damage.blur, borderType=cv2.BORDER_REFLECT_101)
    if damage.noise > 0:
        rng = np.random.default_rng(image_seed(name, damage.seed))
        lr = lr + rng.normal(0.0, damage.noise, lr.shape)
    out = np.clip(np.round(lr), 0, 255).astype(np.uint8)
    if damage.jpeg is not None:
        buffer = io.BytesIO()
        Image.fromarray(out).save(buffer, format="JPEG", quality=damage.jpeg)
        buffer.seek(0)
        out = np.array(Image.open(buffer).convert("RGB"))
    if damage.codec is not None and damage.crf is not None:
        from .ops import codec_round_trip

        out = codec_round_trip(out, damage.codec, damage.crf)
    return out
