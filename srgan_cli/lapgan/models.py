"""LAPGAN networks (Denton et al., 2015): a coarse generator from noise, then per-level conditional
generators of band-pass detail, each with its discriminator.

Sampling runs coarse to fine: I_K = G_0(z_0) at the base size (8x8 by default), then for each finer
level k, l_k = expand(I_{k+1}) and I_k = l_k + G_k(z_k, l_k). Level k's discriminator D_k judges a
band h_k together with the l_k it belongs to. Levels are trained independently (the paper's
choice), so `level_models(config, k)` builds exactly what one level needs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .pyramid import expand, reduce


@dataclass(frozen=True)
class LapganConfig:
    size: int = 32  # the finest level's side: images are size x size
    base: int = 8  # the coarsest level's side, drawn from noise by G_0
    channels: int = 3
    noise_dim: int = 100  # z of the coarse generator (the paper's CIFAR model: 100)
    coarse_hidden: int = 1200  # width of G_0's two hidden layers (paper: 1200); D_0 uses half
    n_feats: int = 128  # conv channels of the conditional generators and discriminators (paper: 128)
    n_classes: int = 0  # 0: unconditional; else the class is one more input of every G and D

    def __post_init__(self) -> None:
        if self.base < 4 or self.size < self.base:
            raise ValueError(f"need size >= base >= 4, got size {self.size}, base {self.base}")
        ratio = self.size // self.base
        if self.size % self.base or ratio & (ratio - 1):
            raise ValueError(
                f"size {self.size} must be the base {self.base} times a power of two (e.g. 8, 16, 32, 64)"
            )

    @property
    def levels(self) -> int:
        """Number of pyramid levels including the coarse one: 8 -> 16 -> 32 is 3."""
        return int(math.log2(self.size // self.base)) + 1

    def side(self, level: int) -> int:
        """Image side at `level`, counted from the coarsest (0 = base) to the finest (levels - 1)."""
        return self.base * 2**level

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class CoarseGenerator(nn.Module):
    """G_0: z (N, noise_dim) [+ class] -> an image (N, C, base, base) in [0, 1].

    The paper's coarse CIFAR generator is fully connected (100 -> 1200 -> 1200 -> 8*8*3); the
    output goes through a sigmoid so the coarse image is a valid image."""

    def __init__(self, config: LapganConfig) -> None:
        super().__init__()
        self.config = config
        c, b, h = config.channels, config.base, config.coarse_hidden
        self.net = nn.Sequential(
            nn.Linear(config.noise_dim + config.n_classes, h),
            nn.ReLU(inplace=True),
            nn.Linear(h, h),
            nn.ReLU(inplace=True),
            nn.Linear(h, c * b * b),
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        x = self.net(_with_labels(z, labels, cfg.n_classes))
        return torch.sigmoid(x).view(-1, cfg.channels, cfg.base, cfg.base)


class CoarseDiscriminator(nn.Module):
    """D_0: an image (N, C, base, base) [+ class] -> a logit (N, 1); MLP with dropout (paper: 600)."""

    def __init__(self, config: LapganConfig) -> None:
        super().__init__()
        self.config = config
        c, b, h = config.channels, config.base, config.coarse_hidden // 2
        self.net = nn.Sequential(
            nn.Linear(c * b * b + config.n_classes, h),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Dropout(0.5),
            nn.Linear(h, h),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Dropout(0.5),
            nn.Linear(h, 1),
        )

    def forward(self, image: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        flat = (image * 2 - 1).flatten(1)
        return self.net(_with_labels(flat, labels, self.config.n_classes))


class LevelGenerator(nn.Module):
    """G_k: (noise plane z_k (N, 1, s, s), coarse image l_k (N, C, s, s)) [+ class] -> band h_k.

    Three 3x3 convs as in the paper's CIFAR levels, ReLU + BN inside; no output activation, since a
    band-pass residual is signed. The raw output goes through the band-pass operator that defines
    the real bands, x - expand(reduce(x)), so a generated band carries no low frequencies of its
    own and cannot shift the coarse image. (Without it the discriminator tells real from generated
    bands by their low frequencies alone: D(G(z)) fell to 1e-5 within 1,500 steps at 16 px and
    G stopped learning; with it the same run stays near D(G(z)) 0.47. Not in the paper.)"""

    def __init__(self, config: LapganConfig) -> None:
        super().__init__()
        self.config = config
        f, c = config.n_feats, config.channels
        self.net = nn.Sequential(
            nn.Conv2d(c + 1 + config.n_classes, f, 3, padding=1),
            nn.BatchNorm2d(f),
            nn.ReLU(inplace=True),
            nn.Conv2d(f, f, 3, padding=1),
            nn.BatchNorm2d(f),
            nn.ReLU(inplace=True),
            nn.Conv2d(f, c, 3, padding=1),
        )

    def forward(
        self, z: torch.Tensor, coarse: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = torch.cat([coarse * 2 - 1, z, *_label_planes(labels, self.config.n_classes, coarse)], dim=1)
        raw = self.net(x)
        return raw - expand(reduce(raw), (raw.shape[-2], raw.shape[-1]))


class LevelDiscriminator(nn.Module):
    """D_k: (band h_k, coarse image l_k) [+ class] -> a logit (N, 1).

    Sees the band together with its coarse image (so it judges whether the detail fits the image),
    two strided 5x5 convs, then a linear layer on the pooled features."""

    def __init__(self, config: LapganConfig) -> None:
        super().__init__()
        self.config = config
        f, c = config.n_feats, config.channels
        self.features = nn.Sequential(
            nn.Conv2d(2 * c + config.n_classes, f, 5, stride=2, padding=2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(f, f, 5, stride=2, padding=2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Dropout(0.5),
        )
        self.classifier = nn.Linear(f * 4 * 4, 1)

    def forward(
        self, band: torch.Tensor, coarse: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = torch.cat(
            [band * 4, coarse * 2 - 1, *_label_planes(labels, self.config.n_classes, coarse)], dim=1
        )
        feat = F.adaptive_avg_pool2d(self.features(x), 4)  # (N, F, 4, 4) for any level size
        return self.classifier(feat.flatten(1))


def _with_labels(x: torch.Tensor, labels: torch.Tensor | None, n_classes: int) -> torch.Tensor:
    if n_classes == 0:
        return x
    if labels is None:
        raise ValueError("this model is class-conditional: pass labels")
    return torch.cat([x, F.one_hot(labels, n_classes).to(x.dtype)], dim=1)


def _label_planes(labels: torch.Tensor | None, n_classes: int, like: torch.Tensor) -> list[torch.Tensor]:
    """One-hot class as constant planes shaped like `like` (none for an unconditional model)."""
    if n_classes == 0:
        return []
    if labels is None:
        raise ValueError("this model is class-conditional: pass labels")
    onehot = F.one_hot(labels, n_classes).to(like.dtype)[:, :, None, None]
    return [onehot.expand(-1, -1, *like.shape[-2:])]


def coarse_noise(
    config: LapganConfig,
    n: int,
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """z_0: (n, noise_dim) uniform in [-1, 1] (the paper draws uniform noise)."""
    return _uniform((n, config.noise_dim), generator, device)


def noise_plane(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """z_k of a conditional level: one (n, 1, height, width) plane, uniform in [-1, 1]."""
    return _uniform((n, 1, height, width), generator, device)


def _uniform(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str
) -> torch.Tensor:
    """Uniform [-1, 1] noise drawn where `generator` lives (a CPU generator also serves a GPU model)."""
    where = generator.device if generator is not None else device
    return (torch.rand(shape, generator=generator, device=where) * 2 - 1).to(device)


class Lapgan(nn.Module):
    """The generators of every level, as shipped: `generators[0]` is G_0, `generators[k]` is G_k.

    The discriminators are only needed for training and live in the training checkpoints."""

    arch = "lapgan"

    def __init__(self, config: LapganConfig) -> None:
        super().__init__()
        self.config = config
        self.generators = nn.ModuleList(level_models(config, k)[0] for k in range(config.levels))

    @property
    def scale(self) -> int:
        """How much the conditional levels enlarge together: base -> size (x2 per level)."""
        return self.config.size // self.config.base

    def refine(
        self,
        image: torch.Tensor,
        level: int,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
        noise: float = 1.0,
    ) -> torch.Tensor:
        """One conditional level on any (N, C, H, W) image in [0, 1]: l = expand(image) to
        (2H, 2W), then l + G_level(z, l), clamped to [0, 1]. `noise` scales z (0 = the mean draw)."""
        if not 1 <= level < self.config.levels:
            raise ValueError(f"level {level} is not a conditional level (1..{self.config.levels - 1})")
        h, w = image.shape[-2:]
        coarse = expand(image, (2 * h, 2 * w))
        z = noise_plane(image.shape[0], 2 * h, 2 * w, generator, device=image.device) * noise
        return (coarse + self.generators[level](z.to(coarse.dtype), coarse, labels)).clamp(0, 1)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        labels: torch.Tensor | None = None,
        coarse: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Draw n images coarse to fine; returns every level [I_0 (base), ..., I_K (size)].

        `coarse` (n, C, base, base) replaces the level-0 draw (the paper's Figure 4)."""
        device = next(self.parameters()).device
        if coarse is None:
            z = coarse_noise(self.config, n, generator, device=device)
            image = self.generators[0](z, labels)
        else:
            image = coarse.to(device)
        levels = [image]
        for k in range(1, self.config.levels):
            image = self.refine(image, k, generator, labels)
            levels.append(image)
        return levels


def level_models(config: LapganConfig, level: int) -> tuple[nn.Module, nn.Module]:
    """(G, D) of one level: 0 is the coarse level drawn from noise, 1.. the conditional ones."""
    if not 0 <= level < config.levels:
        raise ValueError(f"level {level} does not exist: this pyramid has levels 0..{config.levels - 1}")
    if level == 0:
        return CoarseGenerator(config), CoarseDiscriminator(config)
    return LevelGenerator(config), LevelDiscriminator(config)
