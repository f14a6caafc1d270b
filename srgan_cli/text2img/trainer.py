"""The GAN-CLS / GAN-INT step (Reed et al. 2016, Algorithm 1) and the settings of a text-to-image run.

Per step, with a batch of real images x, an embedding h of one of each image's captions and an
embedding h_w of a caption of another image (mismatched):

- D step: s_r = D(x, h), s_w = D(x, h_w), s_f = D(G(z, h), h).
  GAN-CLS: L_D = log s_r + (log(1 - s_w) + log(1 - s_f)) / 2, i.e. real-and-matching is "real",
  fake images and real images with the wrong text are both "fake". Plain GAN: L_D = log s_r +
  log(1 - s_f). `--loss hinge` uses the hinge form of the same terms.
- G step: L_G = log s_f (non-saturating). GAN-INT adds the same term for images generated from
  interpolated embeddings beta * h_1 + (1 - beta) * h_2 (no real image exists for those, so D is not
  trained on them). Conditioning augmentation adds its KL term, the matching term its caption
  matching loss, mode seeking (MSGAN) its 1 / (image distance / noise distance) term
  (docs/text2img.md).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import TrainingError
from ..training import (
    EmaUpdate,
    GanPair,
    TrainingOptionError,
    config_from_dict,
    require_positive,
    require_rate,
    require_seed,
    require_unit,
    require_weight,
)
from .encoders import NEGATIVES, ImageEncoder, matching_loss
from .models import CONDITIONS, Discriminator, Generator, Text2ImgConfig, models


def variant_name(cls: bool, interpolate: bool) -> str:
    """The paper's name for the loss: GAN, GAN-CLS, GAN-INT or GAN-INT-CLS."""
    return "GAN" + ("-INT" if interpolate else "") + ("-CLS" if cls else "")


@dataclass
class Text2ImgTrainConfig:
    """One text-to-image run. Model fields (encoder .. ndf) are fixed by the first run in `out`."""

    data: str = ""  # captioned images: captions.jsonl, the CUB/Oxford text_c10 layout, or .txt beside images
    out: str = "runs/text2img"
    encoder: str = "builtin"  # "builtin" (pre-trained here on the captions) or "minilm" (the [text] extra)
    cls: bool = True  # GAN-CLS: real images with mismatched text are scored as fake
    interpolate: bool = True  # GAN-INT: G also learns from interpolated embeddings
    beta: float = 0.5  # GAN-INT interpolation weight (paper: 0.5)
    spectral_norm: bool = True  # spectral normalisation in D instead of the paper's batch norm (see docs)
    loss: str = "bce"  # "bce" (the paper's cross-entropy) or "hinge"
    d_condition: str = "concat"  # how D joins text and image: "concat" (the paper) or "projection"
    ca: bool = False  # conditioning augmentation in G (StackGAN)
    ca_kl: float = 1.0  # weight of the conditioning augmentation's KL term in G's loss
    # weight of the matching term in G's loss (AttnGAN's DAMSM sentence loss, with the builtin
    # encoder's pre-training image encoder); 0 = off
    match_weight: float = 0.0
    # GAN-CLS's mismatched captions: the paper takes another random image's; this fraction of them
    # is instead drawn from the image's nearest neighbours in caption meaning (a caption that is
    # wrong in one or two words), so D has to read every word, not only the easiest
    hard_wrong: float = 0.0
    # weight of the mode-seeking term (MSGAN, Mao et al. 2019): two samples of one caption from two
    # noise vectors must differ in proportion to their noise; 0 = off
    mode_seeking: float = 0.0
    # what the mode-seeking term measures between the two draws: "pixels" (MSGAN's mean absolute
    # difference); "structure" (the same on the neighbour differences of the images averaged over
    # 4x4 blocks: another flat shade of the background earns G nothing, and neither does a
    # pixel-scale texture; moving or resizing the shape does); or "outline" (structure with each
    # image's channels scaled to the same edge strength: only where the outlines are counts, not
    # the colours on either side of them)
    mode_seeking_distance: str = "pixels"
    # decay of an exponential moving average of G's weights, which the sample grids and the weights
    # file then hold (as in ProGAN, StyleGAN and BigGAN); 0 = off (the paper: the last weights).
    # Switched on at --resume, the average starts from the checkpoint's G
    ema: float = 0.0
    steps: int = 5000
    batch_size: int = 64
    lr: float = 2e-4  # Adam (paper: 2e-4, beta1 0.5)
    beta1: float = 0.5
    ngf: int = 64  # G width (paper: 64)
    ndf: int = 64  # D width (paper: 64)
    z_dim: int = 100
    proj_dim: int = 128
    encoder_steps: int = 1500  # pre-training of the builtin encoder
    encoder_dim: int = 256  # builtin encoder output size
    encoder_negatives: str = "random"  # builtin encoder pre-training batches: "random" or "hard"
    limit: int = 0  # use only the first N images (0 = all)
    seed: int = 0
    device: str = "auto"
    log_every: int = 50
    sample_every: int = 500
    checkpoint_every: int = 250

    def validate(self) -> None:
        """Every option's value and how they go together: UsageError naming the option (exit 2),
        which is also a TrainingError."""
        if self.encoder not in ("builtin", "minilm"):
            raise TrainingOptionError(f"unknown --encoder {self.encoder!r}: use builtin or minilm")
        require_positive(
            self,
            ("steps", "batch_size", "log_every", "sample_every", "checkpoint_every", "encoder_steps")
            + ("ngf", "ndf", "z_dim", "proj_dim", "encoder_dim"),
        )
        if self.batch_size < 2:
            raise TrainingOptionError(
                f"--batch-size must be at least 2 (mismatched captions come from other images), "
                f"got {self.batch_size}"
            )
        if self.limit < 0:
            raise TrainingOptionError(f"--limit must be 0 (all images) or more, got {self.limit}")
        require_rate(self, ("lr",))
        require_unit(self, ("beta1", "ema"))
        require_unit(self, ("beta", "hard_wrong"), closed=True)
        require_weight(self, ("ca_kl", "match_weight", "mode_seeking"))
        require_seed(self)
        if self.loss not in _LOSSES:
            raise TrainingOptionError(f"unknown --loss {self.loss!r}: use {' or '.join(_LOSSES)}")
        if self.d_condition not in CONDITIONS:
            raise TrainingOptionError(
                f"unknown --d-condition {self.d_condition!r}: use {' or '.join(CONDITIONS)}"
            )
        if self.encoder_negatives not in NEGATIVES:
            raise TrainingOptionError(
                f"unknown --encoder-negatives {self.encoder_negatives!r}: use {' or '.join(NEGATIVES)}"
            )
        if self.hard_wrong > 0 and not self.cls:
            raise TrainingOptionError("--hard-wrong chooses GAN-CLS's mismatched captions: it needs --cls")
        if self.mode_seeking_distance not in _DISTANCES:
            raise TrainingOptionError(
                f"unknown --mode-seeking-distance {self.mode_seeking_distance!r}: "
                f"use {' or '.join(_DISTANCES)}"
            )
        if self.match_weight > 0 and self.encoder != "builtin":
            raise TrainingOptionError(
                "--match-weight needs the builtin text encoder (its pre-training makes the image encoder)"
            )

    @property
    def variant(self) -> str:
        return variant_name(self.cls, self.interpolate)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Text2ImgTrainConfig:
        return config_from_dict(cls, data, "text-to-image")


MODEL_FIELDS = (  # fixed by a run's first call
    "encoder",
    "ngf",
    "ndf",
    "z_dim",
    "proj_dim",
    "encoder_dim",
    "cls",
    "interpolate",
    "spectral_norm",
    "loss",
    "d_condition",
    "ca",
)


MODE_SEEKING_EPS = 1e-5  # MSGAN's
# the block of the "structure" distance: at full resolution (block 1) G bought the distance with a
# checkerboard over the background (docs/text2img.md); a block of 4 averages such a pattern away
STRUCTURE_BLOCK = 4
# the floor of the "outline" distance's per-channel edge scale: a scene's mean edge is 0.01-0.1 per
# channel (images in [-1, 1]); the floor keeps a channel in which shape and background agree from
# magnifying noise
OUTLINE_EPS = 0.005


class Text2ImgTrainer(GanPair):
    """G, D and their optimisers, with the labelled D and G steps of Algorithm 1."""

    g: Generator
    d: Discriminator

    def __init__(
        self,
        config: Text2ImgConfig,
        train: Text2ImgTrainConfig,
        device: torch.device,
        image_encoder: ImageEncoder | None = None,
    ) -> None:
        g, d = models(config, train.spectral_norm, train.d_condition)
        super().__init__(g, d, lr=train.lr, beta1=train.beta1, device=device)
        self.train_config = train
        self.noise_dim = config.noise_dim
        # the matching term: the frozen image encoder of the text encoder's pre-training
        self.image_encoder = None
        if train.match_weight > 0:
            if image_encoder is None:
                raise TrainingError("the matching term (match_weight > 0) needs an image encoder")
            self.image_encoder = image_encoder.to(device).eval().requires_grad_(False)
        # the moving average of G: its weights follow G's; its batch norm statistics are its own,
        # measured by running it on each step's noise and captions
        self.ema: Generator | None = None
        self._ema_update: EmaUpdate | None = None
        self.ema_updates = 0  # since the average started: its decay warms up (EmaUpdate.warmed)
        if train.ema > 0:
            self.ema = copy.deepcopy(self.g).requires_grad_(False)
            self._ema_update = EmaUpdate(self.ema, self.g, copy_buffers=False)

    @property
    def generator(self) -> Generator:
        """The G to sample from and ship: the moving average when there is one."""
        return self.ema if self.ema is not None else self.g

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.ema is not None:
            state["G_ema"] = self.ema.state_dict()
            state["ema_updates"] = self.ema_updates
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.ema is not None:  # a checkpoint from before the average starts it at its G
            self.ema.load_state_dict(state.get("G_ema", state["G"]))
            self.ema_updates = int(state.get("ema_updates", 0))

    def noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.noise_dim, device=self.device)

    def step(self, x: torch.Tensor, h: torch.Tensor, h_wrong: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (N, 3, 64, 64) in [-1, 1]; h, h_wrong (N, D): matching and mismatched embeddings."""
        t = self.train_config
        n = x.shape[0]
        real, fake_loss, g_loss = _LOSSES[t.loss]
        d = self.d

        # --- D step: (x, h) real; (G(z, h), h) fake; GAN-CLS: (x, h_wrong) fake too
        z = self.noise(n)
        fake = self.g(z, h)
        kl = self.g.kl  # the conditioning augmentation's KL of this batch (None without it)
        s_r = d(x, h)
        s_f = d(fake.detach(), h)
        stats: dict[str, torch.Tensor] = {}
        if t.cls:
            s_w = d(x, h_wrong)
            loss_d = real(s_r) + 0.5 * (fake_loss(s_w) + fake_loss(s_f))
            stats["D(x,wrong)"] = torch.sigmoid(s_w).mean().detach()
        else:
            loss_d = real(s_r) + fake_loss(s_f)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()

        # --- G step: -log D(G(z, h), h); GAN-INT: + -log D(G(z', h_int), h_int)
        loss_g = g_loss(d(fake, h))
        if t.interpolate:
            h_int = t.beta * h + (1 - t.beta) * h.roll(1, dims=0)  # another image's caption
            loss_g = loss_g + g_loss(d(self.g(self.noise(n), h_int), h_int))
        if t.mode_seeking > 0:  # a second draw for half the captions, from other noise
            k = n // 2
            z2 = self.noise(k)
            seen = _DISTANCES[t.mode_seeking_distance]
            ratio = (seen(fake[:k]) - seen(self.g(z2, h[:k]))).abs().mean() / (z[:k] - z2).abs().mean()
            loss_g = loss_g + t.mode_seeking / (ratio + MODE_SEEKING_EPS)
            stats["MS"] = ratio.detach()
        if kl is not None:
            loss_g = loss_g + t.ca_kl * kl
            stats["KL"] = kl.detach()
        if self.image_encoder is not None:  # the images must pick their own captions in the batch
            seen = self.image_encoder(fake.add(1).mul(0.5))
            match, _ = matching_loss(h, seen, self.image_encoder.logit_scale)
            loss_g = loss_g + t.match_weight * match
            stats["match"] = match.detach()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        if self._ema_update is not None and self.ema is not None:
            self._ema_update(EmaUpdate.warmed(t.ema, self.ema_updates))
            self.ema_updates += 1
            with torch.no_grad():  # batch norm statistics of the averaged weights (train mode)
                self.ema.train()(z, h)
        return {
            "D(x)": torch.sigmoid(s_r).mean().detach(),
            **stats,
            "D(G(z))": torch.sigmoid(s_f).mean().detach(),
            "loss_D": loss_d.detach(),
            "loss_G": loss_g.detach(),
        }


def _bce_real(score: torch.Tensor) -> torch.Tensor:
    return F.softplus(-score).mean()  # -log sigmoid(s): binary cross-entropy against "real"


def _bce_fake(score: torch.Tensor) -> torch.Tensor:
    return F.softplus(score).mean()  # -log(1 - sigmoid(s))


def _hinge_real(score: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - score).mean()


def _hinge_fake(score: torch.Tensor) -> torch.Tensor:
    return F.relu(1 + score).mean()


def _hinge_g(score: torch.Tensor) -> torch.Tensor:
    return -score.mean()


def _neighbour_differences(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H*(W-1) + (H-1)*W): every difference of horizontal and vertical neighbours."""
    across = x[..., :, 1:] - x[..., :, :-1]
    down = x[..., 1:, :] - x[..., :-1, :]
    return torch.cat([across.flatten(2), down.flatten(2)], dim=2)


def image_edges(x: torch.Tensor) -> torch.Tensor:
    """The neighbour differences of each image, flattened: (N, C * pairs)."""
    return _neighbour_differences(x).flatten(1)


def image_structure(x: torch.Tensor, block: int = STRUCTURE_BLOCK) -> torch.Tensor:
    """The neighbour differences of x averaged over block x block squares: edges at the scale of shapes."""
    return image_edges(F.avg_pool2d(x, block))


def image_outline(x: torch.Tensor, block: int = STRUCTURE_BLOCK, eps: float = OUTLINE_EPS) -> torch.Tensor:
    """image_structure with each image's channels scaled to a mean absolute edge of 1: where the
    outlines are, not their contrast, so neither the shape's colour nor the background's counts."""
    edges = _neighbour_differences(F.avg_pool2d(x, block))
    return (edges / (edges.abs().mean(2, keepdim=True) + eps)).flatten(1)


# mode-seeking distance name -> what of each image it compares
_DISTANCES = {"pixels": lambda x: x, "structure": image_structure, "outline": image_outline}

# loss name -> (D's term for "real", D's term for "fake", G's term); G's BCE term is non-saturating
_LOSSES = {"bce": (_bce_real, _bce_fake, _bce_real), "hinge": (_hinge_real, _hinge_fake, _hinge_g)}
