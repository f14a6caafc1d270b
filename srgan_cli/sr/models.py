"""SRGAN networks (Ledig et al., 2017): the SRResNet generator, the 8-conv discriminator, and for
real-world damage a U-Net discriminator (Real-ESRGAN) and an LR restoration front-end."""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SRResNetConfig:
    scale: int = 4  # upscaling factor: 2, 4 or 8 (one x2 sub-pixel stage per factor of 2)
    n_blocks: int = 16  # residual blocks B; the paper uses 16
    n_feats: int = 64  # feature channels in every block; the paper uses 64
    in_channels: int = 3  # RGB
    # Not in the paper: add a bicubic upscaling of the input to the output, so the network learns
    # only the residual. It starts training at bicubic quality instead of from a blank image, which
    # matters when the training budget is small (the shipped SRResNet weights use it).
    global_skip: bool = False
    # Not in the paper: a restoration front-end that works at the LR size before the SR network
    # (the `Restorer` below), for damaged inputs: it learns to turn a noisy, blurred or JPEG-saved
    # LR image back into the clean LR image the SR network was trained on. 0 = none.
    restore_blocks: int = 0
    restore_feats: int = 64  # its channels

    def __post_init__(self) -> None:
        if self.scale not in (2, 4, 8):
            raise ValueError(f"scale must be 2, 4 or 8, not {self.scale}")
        if self.n_blocks < 1 or self.n_feats < 1:
            raise ValueError("n_blocks and n_feats must be positive")
        if self.restore_blocks < 0 or self.restore_feats < 1:
            raise ValueError("restore_blocks must be 0 or more and restore_feats positive")

    def to_dict(self) -> dict[str, int | bool]:
        return asdict(self)


class ResidualBlock(nn.Module):
    """conv3x3-BN-PReLU-conv3x3-BN plus identity skip (the paper's Figure 4, generator)."""

    def __init__(self, n_feats: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feats, n_feats, 3, padding=1),
            nn.BatchNorm2d(n_feats),
            nn.PReLU(n_feats),
            nn.Conv2d(n_feats, n_feats, 3, padding=1),
            nn.BatchNorm2d(n_feats),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class UpsampleBlock(nn.Module):
    """x2 sub-pixel convolution (Shi et al., 2016): conv to 4*C channels, PixelShuffle(2), PReLU."""

    def __init__(self, n_feats: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(n_feats, n_feats * 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.act = nn.PReLU(n_feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shuffle(self.conv(x)))


class Restorer(nn.Module):
    """A residual restoration network at the LR size: (N, 3, H, W) -> (N, 3, H, W), the input plus
    a learned correction. Residual blocks of conv3x3 (dilated) - ReLU - conv3x3, no batch norm
    (a denoiser's output should not depend on the batch), dilations rising 1, 2, 4, 8 and falling
    back, so 8 blocks see 40 px on each side (a JPEG block and strong noise need that much context)
    while every conv still runs at the input's size: any input size works, and a tile padded by
    `radius` gives exactly the whole image's result."""

    def __init__(self, n_blocks: int, n_feats: int, channels: int = 3) -> None:
        super().__init__()
        self.dilations = self.dilation_schedule(n_blocks)
        self.head = nn.Conv2d(channels, n_feats, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(n_feats, n_feats, 3, padding=d, dilation=d),
                nn.ReLU(inplace=True),
                nn.Conv2d(n_feats, n_feats, 3, padding=1),
            )
            for d in self.dilations
        )
        self.tail = nn.Conv2d(n_feats, channels, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # an untrained restorer is the identity
        nn.init.zeros_(self.tail.bias)

    @staticmethod
    def dilation_schedule(n_blocks: int) -> list[int]:
        return [2 ** min(i, n_blocks - 1 - i, 3) for i in range(n_blocks)]

    @staticmethod
    def radius(n_blocks: int) -> int:
        """LR pixels on each side that can influence one output pixel."""
        return 2 + sum(d + 1 for d in Restorer.dilation_schedule(n_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = F.relu(self.head(x))
        for block in self.blocks:
            feat = feat + block(feat)
        return x + self.tail(feat)


class SRResNet(nn.Module):
    """The SRGAN generator. Input (N, 3, H, W) in [0, 1] -> output (N, 3, sH, sW), about [0, 1].

    The paper feeds LR images in [0, 1] and trains against HR in [-1, 1]; we keep [0, 1] at both
    ends of the public interface and do the [-1, 1] mapping on the output side inside the network,
    so callers never see it.
    """

    arch = "srresnet"

    def __init__(self, config: SRResNetConfig | None = None, **overrides: int) -> None:
        super().__init__()
        if config is None:
            config = SRResNetConfig(**overrides)
        elif overrides:
            raise TypeError("pass either a config or keyword overrides, not both")
        self.config = config
        c, f = config.in_channels, config.n_feats
        if config.restore_blocks:
            self.restore = Restorer(config.restore_blocks, config.restore_feats, c)
        self.head = nn.Sequential(nn.Conv2d(c, f, 9, padding=4), nn.PReLU(f))
        self.body = nn.Sequential(*[ResidualBlock(f) for _ in range(config.n_blocks)])
        self.body_tail = nn.Sequential(nn.Conv2d(f, f, 3, padding=1), nn.BatchNorm2d(f))
        self.upsample = nn.Sequential(*[UpsampleBlock(f) for _ in range(int(math.log2(config.scale)))])
        self.tail = nn.Conv2d(f, c, 9, padding=4)

    @property
    def scale(self) -> int:
        return self.config.scale

    @staticmethod
    def receptive_radius(config: SRResNetConfig) -> int:
        """How many LR pixels on each side can influence one output pixel (for tile padding)."""
        lr = 4 + 2 * config.n_blocks + 1 + 1  # head 9x9, two 3x3 per block, body tail, first upsample conv
        hr = 0.0
        factor = 1
        for _ in range(int(math.log2(config.scale)) - 1):  # later upsample convs run at 2x, 4x, ...
            factor *= 2
            hr += 1 / factor
        hr += 4 / config.scale  # 9x9 tail at full resolution
        front = Restorer.radius(config.restore_blocks) if config.restore_blocks else 0
        return front + lr + math.ceil(hr)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.restore_blocks:
            x = self.restore(x)  # (N, 3, H, W): the damaged LR made clean first
        feat = self.head(x)  # (N, F, H, W)
        feat = feat + self.body_tail(self.body(feat))  # long skip over all residual blocks
        out = self.tail(self.upsample(feat))  # (N, 3, sH, sW), in the paper's [-1, 1] range
        if self.config.global_skip:
            base = F.interpolate(x, scale_factor=self.config.scale, mode="bicubic", align_corners=False)
            return base + out * 0.5
        return out * 0.5 + 0.5


def with_restore_strength(model: SRResNet, strength: float) -> SRResNet:
    """A copy of `model` whose front-end applies `strength` (0-1) of its correction: 0 passes the
    input through untouched, 1 is the model as trained (Real-ESRGAN's denoise strength, done here
    exactly: the correction is the last conv's output, so its weights and bias are scaled)."""
    if not model.config.restore_blocks:
        raise ValueError("this model has no restoration front-end (restore_blocks is 0)")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"the strength is between 0 and 1, not {strength:g}")
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.restore.tail.weight.mul_(strength)
        out.restore.tail.bias.mul_(strength)
    return out


@dataclass(frozen=True)
class DiscriminatorConfig:
    n_feats: int = 64  # channels of the first conv; doubled every second conv up to 8x
    fc_feats: int = 1024  # width of the dense layer before the logit
    in_channels: int = 3
    pool_size: int = 6  # the features are pooled to pool_size^2 so any crop size works (96 -> 6)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class Discriminator(nn.Module):
    """The SRGAN discriminator: 8 conv layers, dense 1024, dense 1 (a logit, no sigmoid).

    Input (N, 3, H, W) in [0, 1]. Channels go 64, 64, 128, 128, 256, 256, 512, 512 with stride 2 on
    every second conv. The paper flattens the 6x6 map of a 96x96 crop; adaptive average pooling
    to the same 6x6 keeps the paper's shape at 96 and lets other crop sizes through unchanged.
    """

    arch = "srgan_discriminator"

    def __init__(self, config: DiscriminatorConfig | None = None, **overrides: int) -> None:
        super().__init__()
        if config is None:
            config = DiscriminatorConfig(**overrides)
        self.config = config
        f = config.n_feats
        layers: list[nn.Module] = []
        in_ch = config.in_channels
        for i in range(8):
            out_ch = f * 2 ** (i // 2)
            stride = 2 if i % 2 == 1 else 1
            layers.append(nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1))
            if i > 0:  # no BN after the first conv, as in the paper
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(config.pool_size)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_ch * config.pool_size**2, config.fc_feats),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(config.fc_feats, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.pool(self.features(x * 2 - 1))  # (N, 8F, 6, 6)
        return self.classifier(feat)  # (N, 1) logits


class UNetDiscriminator(nn.Module):
    """A U-Net discriminator with spectral normalisation: one logit per pixel, (N, 1, H, W).

    The design Real-ESRGAN (Wang et al., 2021, section 3.3) uses for real-world damage: an
    encoder of three stride-2 convs (F, 2F, 4F, 8F channels), a decoder that upsamples back with a
    skip from each encoder level, and two more convs before the logit map. Each pixel's logit
    tells G where a region looks generated, not only whether the crop does (the SRGAN
    discriminator's one logit per crop). Spectral normalisation (Miyato et al., 2018) holds each
    inner conv's largest singular value at 1 (the first and the last conv are left free, as in
    Real-ESRGAN), which keeps D from running away from G. Any crop size works: the decoder
    resizes to each skip's size.
    """

    arch = "unet_discriminator"

    def __init__(self, config: DiscriminatorConfig | None = None, **overrides: int) -> None:
        super().__init__()
        if config is None:
            config = DiscriminatorConfig(**overrides)
        self.config = config
        sn = nn.utils.parametrizations.spectral_norm
        f = config.n_feats
        self.stem = nn.Conv2d(config.in_channels, f, 3, 1, 1)
        self.down = nn.ModuleList(
            sn(nn.Conv2d(f * 2**i, f * 2 ** (i + 1), 4, 2, 1, bias=False)) for i in range(3)
        )
        self.up = nn.ModuleList(
            sn(nn.Conv2d(f * 2 ** (i + 1), f * 2**i, 3, 1, 1, bias=False)) for i in (2, 1, 0)
        )
        self.head = nn.Sequential(
            sn(nn.Conv2d(f, f, 3, 1, 1, bias=False)),
            nn.LeakyReLU(0.2, inplace=True),
            sn(nn.Conv2d(f, f, 3, 1, 1, bias=False)),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(f, 1, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.leaky_relu
        skips = [act(self.stem(x * 2 - 1), 0.2)]
        for conv in self.down:
            skips.append(act(conv(skips[-1]), 0.2))
        h = skips.pop()
        for conv in self.up:
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = act(conv(h), 0.2) + skip
        return self.head(h)  # (N, 1, H, W) logits


DISCRIMINATORS = {"srgan": Discriminator, "unet": UNetDiscriminator}  # --d-arch


def make_discriminator(arch: str, n_feats: int) -> nn.Module:
    """The discriminator `--d-arch` names: srgan (the paper's, one logit per crop) or unet."""
    return DISCRIMINATORS[arch](DiscriminatorConfig(n_feats=n_feats))
