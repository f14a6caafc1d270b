"""An automatic caption checker for the shapes data set: a small CNN that reads the five attributes back.

Trained only on freshly rendered shapes (never on a GAN's output) with augmentation that mimics GAN
artefacts (noise, blur, colour drift, blotches), it reads what a generated image shows, so caption
consistency can be measured without a person: text2img/evaluate.py compares its reading with the
caption's attributes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError, WeightsMismatch
from .shapes import ATTRIBUTES, CHOICES, ShapeSpec, random_spec, render

ARCH = "shapes_checker"
FILE_NAME = "shapes_checker.safetensors"
_HINT = "train one with `python scripts/train_shapes_checker.py` (writes weights/shapes_checker.safetensors)"


@dataclass
class ShapeCheckerConfig:
    """Architecture of the checker (stored in its weights file)."""

    width: int = 32  # channels of the first block; the later blocks have 2 x width

    def __post_init__(self) -> None:
        if self.width < 16 or self.width % 16:  # the stem's width/2 channels form 8 norm groups
            raise ValueError(f"width must be a positive multiple of 16, got {self.width}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _block(cin: int, cout: int) -> nn.Sequential:
    # GroupNorm rather than BatchNorm: per-image statistics, so a batch of odd GAN images in eval
    # mode is normalised exactly as it would be alone (no running statistics learnt on clean renders).
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.GroupNorm(8, cout), nn.ReLU(inplace=True)
    )


class ShapeChecker(nn.Module):
    """(N, 3, 64, 64) float in [0, 1] -> {attribute: (N, len(CHOICES[attribute])) logits}.

    A full-resolution stem, four stride-2 blocks (64 -> 32 -> 16 -> 8 -> 4), then the heads read the
    4x4 map flattened as it is (no pooling there: the position is in the layout), squeezed to
    `width` channels by a 1x1 convolution, next to its global average and maximum (the same shape
    looks the same in every cell, so pooled features make shape and colour easier to learn).
    """

    arch = ARCH
    scale = 1

    def __init__(self, config: ShapeCheckerConfig | None = None) -> None:
        super().__init__()
        self.config = config or ShapeCheckerConfig()
        w = self.config.width
        self.body = nn.Sequential(
            nn.Conv2d(3, w // 2, 3, 1, 1, bias=False),  # (N, w/2, 64, 64): thin edges of small shapes
            nn.GroupNorm(8, w // 2),
            nn.ReLU(inplace=True),
            _block(w // 2, w),  # (N, w, 32, 32)
            _block(w, 2 * w),  # (N, 2w, 16, 16)
            _block(2 * w, 2 * w),  # (N, 2w, 8, 8)
            _block(2 * w, 2 * w),  # (N, 2w, 4, 4)
        )
        self.squeeze = nn.Sequential(nn.Conv2d(2 * w, w, 1), nn.ReLU(inplace=True))  # (N, w, 4, 4)
        features = 16 * w + 2 * (2 * w)  # flattened layout + average + maximum
        self.heads = nn.ModuleDict({a: nn.Linear(features, len(CHOICES[a])) for a in ATTRIBUTES})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x * 2 - 1)  # centred inputs -> (N, 2w, 4, 4)
        feats = torch.cat([self.squeeze(h).flatten(1), h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return {a: head(feats) for a, head in self.heads.items()}


# --- loading -------------------------------------------------------------------------------------


def load_checker(path: str | Path | None = None) -> ShapeChecker:
    """The checker in a weights file (the shipped one when `path` is None), on the CPU in eval mode.
    Raises WeightsNotFound, WeightsFormatError or WeightsMismatch (with a hint on how to train one)."""
    from ..weights import load_model

    where = Path(path).expanduser() if path is not None else ARCH
    try:
        model = load_model(
            where, lambda arch, config: ShapeChecker(ShapeCheckerConfig(**config)), expect_arch=ARCH
        ).model
    except WeightsError as exc:
        if not isinstance(exc, WeightsMismatch):  # a mismatch's hint says what the file is for
            exc.hint = _HINT
        raise
    assert isinstance(model, ShapeChecker)
    return model.eval()


# --- training ------------------------------------------------------------------------------------


def render_batch(n: int, rng: random.Random) -> tuple[torch.Tensor, list[ShapeSpec]]:
    """`n` fresh renders: (n, 3, 64, 64) float in [0, 1] and their specs."""
    specs = [random_spec(rng) for _ in range(n)]
    pixels = np.stack([render(s, rng) for s in specs])  # (n, 64, 64, 3) uint8
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255), specs


def _labels(specs: list[ShapeSpec]) -> dict[str, torch.Tensor]:
    return {a: torch.tensor([s.label(a) for s in specs]) for a in ATTRIBUTES}


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, 3, H, W), replicate padding."""
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """GAN-like damage that keeps every attribute: (N, 3, 64, 64) in [0, 1] -> a new tensor.

    No flips and no shifts (position and the triangle's orientation are attributes); colour changes
    stay well inside the gaps between the eight palette colours; blotches (2-5 px) stay far smaller
    than the smallest shape (14 px)."""
    n, _, h, w = x.shape
    x = x.clone()  # blur and blotches write in place

    def u(*shape: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        return torch.rand(*shape, generator=gen) * (hi - lo) + lo

    # mild blur on about a third of the batch, one sigma per step
    blurred = u(n) < 0.35
    if blurred.any():
        x[blurred] = _blur(x[blurred], float(u(1, lo=0.4, hi=1.1)))
    # 1-3 blotches of a random colour on about a quarter of the images; all draws made at once
    # (a slot is used when its index is below the image's count): (N, 3) sizes/corners, (N, 3, 3) colours
    painted = (u(n) < 0.25).tolist()
    count = torch.randint(1, 4, (n,), generator=gen).tolist()
    sizes = torch.randint(2, 6, (n, 3, 2), generator=gen).tolist()
    corners = u(n, 3, 2).tolist()
    colours = u(n, 3, 3)
    for i in range(n):
        if not painted[i]:
            continue
        for j in range(count[i]):
            bh, bw = sizes[i][j]
            y0, x0 = int(corners[i][j][0] * (h - bh)), int(corners[i][j][1] * (w - bw))
            x[i, :, y0 : y0 + bh, x0 : x0 + bw] = colours[i, j].view(3, 1, 1)
    # contrast around the image mean, brightness, per-channel gain: factors (N, 1|3, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * u(n, 1, 1, 1, lo=0.85, hi=1.15) + mean + u(n, 1, 1, 1, lo=-0.06, hi=0.06)
    x = x * u(n, 3, 1, 1, lo=0.95, hi=1.05)
    # additive Gaussian noise, strength 0 .. 0.1 drawn per image
    x = x + torch.randn(x.shape, generator=gen) * u(n, 1, 1, 1, hi=0.1)
    return x.clamp_(0, 1)


def train_checker(
    steps: int = 2000,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    on_log: Callable[[int, float, dict[str, float]], None] | None = None,
    *,
    width: int = 32,
    log_every: int = 50,
) -> ShapeChecker:
    """Train a checker on an endless stream of fresh, augmented renders (reproducible from `seed`).

    The loss is the sum of the five heads' cross-entropies; Adam with a short warm-up and cosine
    decay. `on_log(step, loss, batch_accuracy)` is called every `log_every` steps. Returns the
    model on CPU in eval mode."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    model = ShapeChecker(ShapeCheckerConfig(width=width)).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    for step in range(steps):
        images, specs = render_batch(batch_size, rng)
        images = augment(images, gen).to(device)  # (B, 3, 64, 64)
        labels = {a: t.to(device) for a, t in _labels(specs).items()}  # {attr: (B,) class indices}
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        logits = model(images)
        loss = sum(F.cross_entropy(logits[a], labels[a]) for a in ATTRIBUTES)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        opt.step()
        if on_log is not None and ((step + 1) % log_every == 0 or step + 1 == steps):
            with torch.no_grad():
                acc = {a: float((logits[a].argmax(1) == labels[a]).float().mean()) for a in ATTRIBUTES}
            on_log(step + 1, float(loss.detach()), acc)  # type: ignore[union-attr]
    return model.cpu().eval()


# --- using it ------------------------------------------------------------------------------------


def judge(checker: ShapeChecker, images: torch.Tensor, batch_size: int = 256) -> list[dict[str, str]]:
    """The attribute names the checker reads in (N, 3, 64, 64) images in [0, 1] (uint8 is also taken)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (N, 3, 64, 64) images, got {tuple(images.shape)}")
    checker.eval()
    device = next(checker.parameters()).device
    out: list[dict[str, str]] = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].to(device)
            x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
            picks = {a: t.argmax(1).tolist() for a, t in checker(x).items()}  # {attr: N class indices}
            out.extend({a: CHOICES[a][picks[a][i]] for a in ATTRIBUTES} for i in range(x.shape[0]))
    return out


def agreement(predicted: list[dict[str, str]], specs: list[ShapeSpec]) -> dict[str, float]:
    """Fraction of images whose reading equals the spec, per attribute; "match" = colour, shape and
    position all right (caption consistency as the issue defines it); "all" = all five right."""
    if len(predicted) != len(specs):
        raise ValueError(f"{len(predicted)} predictions for {len(specs)} specs")
    if not specs:
        raise ValueError("agreement needs at least one image")
    n = len(specs)
    hits = [{a: p.get(a) == getattr(s, a) for a in ATTRIBUTES} for p, s in zip(predicted, specs, strict=True)]
    result = {a: sum(h[a] for h in hits) / n for a in ATTRIBUTES}
    result["match"] = sum(h["colour"] and h["shape"] and h["position"] for h in hits) / n
    result["all"] = sum(all(h.values()) for h in hits) / n
    return result
