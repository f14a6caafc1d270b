"""The text-conditional DCGAN of Reed et al. (2016): G(z, phi(t)) -> 64x64 image, D(x, phi(t)) -> score.

Both networks first compress the sentence embedding phi(t) with a fully connected layer and a
leaky ReLU (to `proj_dim`, 128 in the paper). G concatenates it with the noise z (100-d) and
upsamples 1 -> 4 -> 8 -> 16 -> 32 -> 64 with strided transposed convolutions, batch norm and ReLU.
D downsamples the image 64 -> 32 -> 16 -> 8 -> 4 with strided convolutions and leaky ReLU, then
replicates the compressed embedding over the 4x4 grid, concatenates it depth-wise, and scores the
pair with a 1x1 convolution and a final 4x4 convolution, as in the paper's Figure 2.

Two switches change the paper's networks (A/B in docs/text2img.md):
- conditioning augmentation (StackGAN, Zhang et al. 2017): G draws its text code from a Gaussian
  N(mu(phi), sigma(phi)^2) instead of taking it as it is; the Gaussian's noise is the second part of
  G's noise vector, so one seed still gives one image.
- a projection discriminator (Miyato & Koyama 2018): D's score is an unconditional term plus the
  inner product of its 4x4 image features with a linear map of the text, instead of the depth-wise
  concatenation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .encoders import BuiltinEncoderConfig, BuiltinTextEncoder

CONDITIONS = ("concat", "projection")  # how D joins the text to the image


@dataclass
class Text2ImgConfig:
    """Architecture of a text-to-image model (stored in its weights file)."""

    size: int = 64  # output side; the DCGAN stack below is for 64x64
    z_dim: int = 100  # noise dimension (paper: 100)
    proj_dim: int = 128  # compressed text embedding (paper: 128)
    ngf: int = 64  # G width: 8*ngf channels at 4x4 down to ngf at 32x32 (paper: 64)
    ndf: int = 64  # D width: ndf at 32x32 up to 8*ndf at 4x4 (paper: 64)
    encoder: str = "builtin"  # "builtin" (stored in the weights) or "minilm" (the [text] extra)
    embed_dim: int = 256  # the sentence encoder's output dimension (MiniLM: 384)
    text: dict[str, Any] = field(default_factory=dict)  # BuiltinEncoderConfig for "builtin"
    ca: bool = False  # conditioning augmentation: the text code is sampled (StackGAN)

    def __post_init__(self) -> None:
        if self.size != 64:
            raise ValueError(f"size must be 64 (the paper's DCGAN stack), got {self.size}")
        if self.encoder not in ("builtin", "minilm"):
            raise ValueError(f"encoder must be 'builtin' or 'minilm', got {self.encoder!r}")
        if self.encoder == "builtin" and not self.text:
            raise ValueError("a builtin-encoder model needs its text encoder config (vocabulary)")
        for name in ("z_dim", "proj_dim", "ngf", "ndf", "embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")

    @property
    def noise_dim(self) -> int:
        """Length of G's noise vector: z, then (with conditioning augmentation) the text code's noise."""
        return self.z_dim + (self.proj_dim if self.ca else 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _init_dcgan(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) conv weights, N(1, 0.02) batch-norm scales."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class _Projection(nn.Module):
    """phi(t) -> FC -> leaky ReLU, as the paper. Both encoders give unit vectors, whose entries are
    ~1/sqrt(D): they are scaled by sqrt(D) first, to unit variance like z, or the text would reach G
    about 50x weaker than the noise at initialisation."""

    def __init__(self, embed_dim: int, proj_dim: int) -> None:
        super().__init__()
        self.scale = float(embed_dim) ** 0.5
        self.fc = nn.Linear(embed_dim, proj_dim)
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(embedding * self.scale))


class _Augmented(nn.Module):
    """Conditioning augmentation: phi(t) -> (mu, log sigma^2) by one FC layer; the code is
    mu + sigma * eps with eps given by the caller (part of G's noise). `kl` holds the last batch's
    KL divergence from N(0, I), which the trainer adds to G's loss."""

    def __init__(self, embed_dim: int, proj_dim: int) -> None:
        super().__init__()
        self.scale = float(embed_dim) ** 0.5
        self.fc = nn.Linear(embed_dim, 2 * proj_dim)
        self.kl = torch.zeros(())

    def forward(self, embedding: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.fc(embedding * self.scale).chunk(2, dim=1)
        logvar = logvar.clamp(-10, 10)
        self.kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean()
        return mu + (0.5 * logvar).exp() * eps


class Generator(nn.Module):
    """(noise (N, noise_dim), phi(t) (N, embed_dim)) -> (N, 3, 64, 64) in [-1, 1] (tanh). The noise
    is z, followed by the conditioning augmentation's eps when `config.ca`."""

    def __init__(self, config: Text2ImgConfig) -> None:
        super().__init__()
        c, ngf = config, config.ngf
        self.z_dim = c.z_dim

        def up(cin: int, cout: int) -> list[nn.Module]:
            return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]

        self.project: _Projection | _Augmented = (
            _Augmented(c.embed_dim, c.proj_dim) if c.ca else _Projection(c.embed_dim, c.proj_dim)
        )
        self.net = nn.Sequential(
            nn.ConvTranspose2d(c.z_dim + c.proj_dim, ngf * 8, 4, 1, 0, bias=False),  # 1 -> 4
            nn.BatchNorm2d(ngf * 8),
            nn.ReLU(True),
            *up(ngf * 8, ngf * 4),  # 8
            *up(ngf * 4, ngf * 2),  # 16
            *up(ngf * 2, ngf),  # 32
            nn.ConvTranspose2d(ngf, 3, 4, 2, 1),  # 64
            nn.Tanh(),
        )
        _init_dcgan(self)

    @property
    def kl(self) -> torch.Tensor | None:
        """The conditioning augmentation's KL term of the last batch; None without it."""
        return self.project.kl if isinstance(self.project, _Augmented) else None

    def forward(self, noise: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        z = noise[:, : self.z_dim]
        if isinstance(self.project, _Augmented):
            code = self.project(embedding, noise[:, self.z_dim :])
        else:
            code = self.project(embedding)
        h = torch.cat([z, code], dim=1)  # (N, z_dim + proj_dim)
        return self.net(h[:, :, None, None])


class Discriminator(nn.Module):
    """(x (N, 3, 64, 64) in [-1, 1], phi(t) (N, embed_dim)) -> (N, 1) logits of "real and matching".

    `spectral=False` is the paper's DCGAN discriminator (batch norm after every conv but the first).
    `spectral=True` replaces batch norm by spectral normalisation of every layer (Miyato et al.
    2018), which bounds how fast D can separate real from generated images; see docs/text2img.md
    for why the shipped model uses it.

    `condition="concat"` is the paper's depth-wise concatenation of the text at 4x4;
    `condition="projection"` scores the image alone (1x1 conv, 4x4 conv) and adds the inner product
    of the 4x4 features with a linear map of the projected text (a projection discriminator)."""

    def __init__(self, config: Text2ImgConfig, spectral: bool = False, condition: str = "concat") -> None:
        super().__init__()
        if condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
        c, ndf = config, config.ndf
        self.condition = condition
        sn = nn.utils.parametrizations.spectral_norm if spectral else (lambda m: m)

        def norm(channels: int) -> list[nn.Module]:
            return [] if spectral else [nn.BatchNorm2d(channels)]

        def down(cin: int, cout: int) -> list[nn.Module]:
            return [sn(nn.Conv2d(cin, cout, 4, 2, 1, bias=spectral)), *norm(cout), nn.LeakyReLU(0.2, True)]

        self.image = nn.Sequential(
            sn(nn.Conv2d(3, ndf, 4, 2, 1)),  # 32 (no batch norm on the input layer, as DCGAN)
            nn.LeakyReLU(0.2, True),
            *down(ndf, ndf * 2),  # 16
            *down(ndf * 2, ndf * 4),  # 8
            *down(ndf * 4, ndf * 8),  # 4
        )
        self.project = _Projection(c.embed_dim, c.proj_dim)
        text_in = c.proj_dim if condition == "concat" else 0
        self.joint = nn.Sequential(
            sn(nn.Conv2d(ndf * 8 + text_in, ndf * 8, 1, 1, 0, bias=spectral)),
            *norm(ndf * 8),
            nn.LeakyReLU(0.2, True),
            sn(nn.Conv2d(ndf * 8, 1, 4, 1, 0)),  # 4x4 -> 1x1: the score
        )
        # projection: text -> one weight per feature and place of the 4x4 grid
        self.embed = sn(nn.Linear(c.proj_dim, ndf * 8 * 16)) if condition == "projection" else None
        if not spectral:  # spectral normalisation rescales the weights itself
            _init_dcgan(self)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.image(x)  # (N, 8*ndf, 4, 4)
        t = self.project(embedding)
        if self.embed is None:
            replicated = t[:, :, None, None].expand(-1, -1, *h.shape[-2:])  # the text at every cell
            return self.joint(torch.cat([h, replicated], dim=1)).flatten(1)
        features = self.joint[:-1](h)
        matching = (self.embed(t) * features.flatten(1)).sum(1, keepdim=True)
        return self.joint[-1](features).flatten(1) + matching


class Text2Img(nn.Module):
    """What a text-to-image weights file holds: the generator and, for the builtin encoder, the text
    encoder it was trained with (a MiniLM model keeps only its name; the extra loads it)."""

    arch = "text2img"
    scale = 1

    def __init__(self, config: Text2ImgConfig) -> None:
        super().__init__()
        self.config = config
        self.generator = Generator(config)
        self.encoder: BuiltinTextEncoder | None = None
        if config.encoder == "builtin":
            self.encoder = BuiltinTextEncoder(BuiltinEncoderConfig.from_dict(config.text))
            dim = self.encoder.config.dim
            if dim != config.embed_dim:
                raise ValueError(
                    f"the builtin encoder gives {dim}-d vectors, embed_dim is {config.embed_dim}"
                )

    def forward(self, z: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], (N, 3, 64, 64)."""
        return self.generator(z, embedding).add(1).mul(0.5)


def models(
    config: Text2ImgConfig, spectral: bool = False, condition: str = "concat"
) -> tuple[Generator, Discriminator]:
    return Generator(config), Discriminator(config, spectral, condition)
