"""`srgan text2img train`: GAN-CLS and GAN-INT (Reed et al. 2016, Algorithm 1), resumable.

Per step, with a batch of real images x, an embedding h of one of each image's captions and an
embedding h_w of a caption of another image (mismatched):

- D step: s_r = D(x, h), s_w = D(x, h_w), s_f = D(G(z, h), h).
  GAN-CLS: L_D = log s_r + (log(1 - s_w) + log(1 - s_f)) / 2, i.e. real-and-matching is "real",
  fake images and real images with the wrong text are both "fake". Plain GAN: L_D = log s_r +
  log(1 - s_f).
- G step: L_G = log s_f (non-saturating). GAN-INT adds the same term for images generated from
  interpolated embeddings beta * h_1 + (1 - beta) * h_2 (no real image exists for those, so D is not
  trained on them).

The text encoder is fixed during the GAN (as in the paper): the built-in one is first pre-trained
on the run's captions (text2img/encoders.py), MiniLM is used as it is. Every caption is encoded
once and the embeddings are cached in the run folder.

A run folder holds run.json, text_encoder.safetensors and image_encoder.safetensors (builtin; the
second is the text encoder's pre-training partner, used by the matching term), embeddings.pt (the cache),
checkpoint.pt (resumable), samples/step{N}.png with samples/captions.txt (the fixed captions, one
per row), log.jsonl, and text2img.safetensors (the generator and its text encoder) at the end.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import training
from .. import weights as weights_mod
from ..atomic import atomic_open
from ..devices import resolve_device
from ..errors import TrainingError
from ..training import (
    Event,
    GanPair,
    RunningMeans,
    StopClock,
    config_from_dict,
    count_parameters,
    event_log,
    load_checkpoint,
    read_run,
    require_positive,
    restore_rng,
    rng_state,
    save_png,
)
from .data import CaptionSet, load_caption_set
from .encoders import (
    NEGATIVES,
    BuiltinEncoderConfig,
    BuiltinTextEncoder,
    EncoderTrainConfig,
    ImageEncoder,
    MiniLMEncoder,
    matching_loss,
    pretrain_builtin,
)
from .models import CONDITIONS, Discriminator, Generator, Text2Img, Text2ImgConfig, models

RUN_FILE = "run.json"
LOG = "log.jsonl"
CHECKPOINT = "checkpoint.pt"
ENCODER_FILE = "text_encoder.safetensors"
IMAGE_ENCODER_FILE = "image_encoder.safetensors"
EMBEDDINGS = "embeddings.pt"
WEIGHTS = "text2img.safetensors"
SAMPLES = "samples"


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
        if self.encoder not in ("builtin", "minilm"):
            raise TrainingError(f"unknown --encoder {self.encoder!r}: use builtin or minilm")
        require_positive(
            self, ("steps", "batch_size", "log_every", "sample_every", "checkpoint_every", "encoder_steps")
        )
        if self.batch_size < 2:
            raise TrainingError("batch-size must be at least 2 (mismatched captions come from other images)")
        if not 0.0 <= self.beta <= 1.0:
            raise TrainingError("beta must be in [0, 1]")
        if self.lr <= 0:
            raise TrainingError("lr must be positive")
        if self.loss not in _LOSSES:
            raise TrainingError(f"unknown --loss {self.loss!r}: use {' or '.join(_LOSSES)}")
        if self.d_condition not in CONDITIONS:
            raise TrainingError(f"unknown --d-condition {self.d_condition!r}: use {' or '.join(CONDITIONS)}")
        if self.encoder_negatives not in NEGATIVES:
            raise TrainingError(
                f"unknown --encoder-negatives {self.encoder_negatives!r}: use {' or '.join(NEGATIVES)}"
            )
        if self.ca_kl < 0:
            raise TrainingError("ca-kl must be at least 0")
        if not 0.0 <= self.hard_wrong <= 1.0:
            raise TrainingError("hard-wrong must be in [0, 1]")
        if self.hard_wrong > 0 and not self.cls:
            raise TrainingError("--hard-wrong chooses GAN-CLS's mismatched captions: it needs --cls")
        if self.match_weight < 0:
            raise TrainingError("match-weight must be at least 0")
        if self.match_weight > 0 and self.encoder != "builtin":
            raise TrainingError(
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


_MODEL_FIELDS = (
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


@dataclass
class Text2ImgTrainResult:
    weights: Path
    steps: int
    seconds: float
    stopped: str | None = None  # why the run stopped before `config.steps`: "time limit", or None


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

    def noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.noise_dim, device=self.device)

    def step(self, x: torch.Tensor, h: torch.Tensor, h_wrong: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (N, 3, 64, 64) in [-1, 1]; h, h_wrong (N, D): matching and mismatched embeddings."""
        t = self.train_config
        n = x.shape[0]
        real, fake_loss, g_loss = _LOSSES[t.loss]
        d = self.d

        # --- D step: (x, h) real; (G(z, h), h) fake; GAN-CLS: (x, h_wrong) fake too
        fake = self.g(self.noise(n), h)
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


# loss name -> (D's term for "real", D's term for "fake", G's term); G's BCE term is non-saturating
_LOSSES = {"bce": (_bce_real, _bce_fake, _bce_real), "hinge": (_hinge_real, _hinge_fake, _hinge_g)}


HARD_POOL = 32  # --hard-wrong draws a mismatched caption from the image's 32 nearest in meaning
SAME_MEANING = 0.95  # ... among images whose mean caption embeddings are less alike than this


@dataclass
class CaptionEmbeddings:
    """Every caption's embedding, flattened: image i owns rows first[i] .. first[i] + count[i] - 1."""

    vectors: torch.Tensor  # (M, D) float32
    first: torch.Tensor  # (N,) int64
    count: torch.Tensor  # (N,) int64

    def pick(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One random caption embedding for each image in `idx`."""
        offset = (torch.rand(idx.shape[0], generator=gen) * self.count[idx]).long()
        return self.vectors[self.first[idx] + offset]

    def neighbours(self, k: int = HARD_POOL, same: float = SAME_MEANING, chunk: int = 1024) -> torch.Tensor:
        """(N, k) image indices: for each image, the k other images whose captions mean the most
        nearly the same without meaning the same (cosine of the images' mean caption embeddings
        below `same`). Where fewer than k qualify (tiny data sets), the rest are random others."""
        n = self.first.shape[0]
        owner = torch.repeat_interleave(torch.arange(n), self.count)
        means = F.normalize(torch.zeros(n, self.vectors.shape[1]).index_add_(0, owner, self.vectors), dim=1)
        k = min(k, n - 1)
        gen = torch.Generator().manual_seed(0)
        parts = []
        for start in range(0, n, chunk):
            sims = means[start : start + chunk] @ means.t()  # (c, N)
            rows = torch.arange(sims.shape[0])
            sims[rows, rows + start] = -2.0  # never the image itself
            sims[sims >= same] = -2.0  # nor an image whose captions say the same
            values, index = sims.topk(k, dim=1)
            other = (rows[:, None] + start + torch.randint(1, n, (sims.shape[0], k), generator=gen)) % n
            parts.append(torch.where(values > -2.0, index, other))
        return torch.cat(parts)


def _flatten(captions: list[list[str]]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    count = torch.tensor([len(c) for c in captions], dtype=torch.long)
    first = torch.cumsum(count, 0) - count
    return [c for caps in captions for c in caps], first, count


def _save_module(module: nn.Module, config: dict[str, Any], path: Path) -> None:
    """A pre-trained encoder as safetensors, its config in the metadata (written atomically)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_open(path) as fh:
        fh.write(save(state, metadata={"config": json.dumps(config)}))


def _save_encoder(encoder: BuiltinTextEncoder, path: Path) -> None:
    _save_module(encoder, encoder.config.to_dict(), path)


def _load_module(path: Path, build: Callable[[dict[str, Any]], nn.Module]) -> nn.Module:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as f:
            module = build(json.loads(f.metadata()["config"]))
        module.load_state_dict(load_file(str(path)))
    except Exception as exc:
        raise TrainingError(
            f"cannot read {path}: {exc}", hint="delete it to pre-train the encoder again"
        ) from exc
    return module.eval()


def _load_encoder(path: Path) -> BuiltinTextEncoder:
    encoder = _load_module(path, lambda c: BuiltinTextEncoder(BuiltinEncoderConfig.from_dict(c)))
    assert isinstance(encoder, BuiltinTextEncoder)
    return encoder


def _load_image_encoder(path: Path) -> ImageEncoder:
    encoder = _load_module(path, lambda c: ImageEncoder(int(c["dim"]), int(c["width"])))
    assert isinstance(encoder, ImageEncoder)
    return encoder


@dataclass
class TextSide:
    """The run's sentence encoder: `builtin` is None for MiniLM; `image` is the builtin encoder's
    pre-training partner (for the matching term), None when the run folder has none."""

    encode: Callable[[list[str]], torch.Tensor]
    dim: int
    builtin: BuiltinTextEncoder | None = None
    image: ImageEncoder | None = None


def _text_encoder(
    config: Text2ImgTrainConfig, data: CaptionSet, out: Path, device: torch.device, log: Event
) -> TextSide:
    """The run's text encoder; pre-trains the builtin one (and its image partner) once."""
    if config.encoder == "minilm":
        minilm = MiniLMEncoder(device)
        return TextSide(minilm.encode, minilm.dim)
    path, image_path = out / ENCODER_FILE, out / IMAGE_ENCODER_FILE
    if path.is_file():
        encoder = _load_encoder(path)
        image = _load_image_encoder(image_path) if image_path.is_file() else None
        log("encoder", {"encoder": "builtin", "path": str(path), "loaded": True})
    else:
        enc_config = EncoderTrainConfig(
            steps=config.encoder_steps,
            dim=config.encoder_dim,
            seed=config.seed,
            negatives=config.encoder_negatives,
        )
        started = time.perf_counter()
        encoder, image = pretrain_builtin(
            data.images,
            data.captions,
            enc_config,
            device,
            on_log=lambda stats: log("encoder_log", stats),
        )
        _save_module(image, {"dim": image.dim, "width": image.width}, image_path)
        _save_encoder(encoder, path)  # last: its presence means "pre-trained"
        log(
            "encoder",
            {
                "encoder": "builtin",
                "path": str(path),
                "loaded": False,
                "vocab": len(encoder.config.vocab),
                "seconds": time.perf_counter() - started,
            },
        )
    return TextSide(encoder.encode, encoder.config.dim, encoder, image)


def _embeddings(
    data: CaptionSet, encode: Callable[[list[str]], torch.Tensor], out: Path, encoder: str
) -> CaptionEmbeddings:
    """Every caption encoded once; the cache is reused only for the same captions and encoder."""
    texts, first, count = _flatten(data.captions)
    digest = hashlib.sha256(encoder.encode())
    if encoder == "builtin":  # the pre-trained weights, not just the name
        digest.update((out / ENCODER_FILE).read_bytes())
    digest.update("\n".join(texts).encode())
    key = digest.hexdigest()
    cache = out / EMBEDDINGS
    if cache.is_file():
        state = load_checkpoint(cache)
        if state.get("key") == key:
            return CaptionEmbeddings(state["vectors"], first, count)
    vectors = encode(texts).float()
    training.save_checkpoint({"key": key, "vectors": vectors}, cache)
    return CaptionEmbeddings(vectors, first, count)


def sample_captions(data: CaptionSet, n: int = 8) -> list[str]:
    """The fixed captions of a run's sample grids: the first caption of `n` evenly spread images."""
    step = max(1, len(data.captions) // n)
    return [data.captions[i][0] for i in range(0, len(data.captions), step)][:n]


def _read_run(out: Path) -> dict[str, Any] | None:
    """run.json of a run folder: {"config"}, or None for a new folder."""
    return read_run(out / RUN_FILE, Text2ImgTrainConfig.from_dict)


def read_run_config(out: str | Path) -> Text2ImgTrainConfig | None:
    run = _read_run(Path(out))
    return run["config"] if run is not None else None


def train_text2img(
    config: Text2ImgTrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_event: Event | None = None,
    time_limit: float | None = None,
) -> Text2ImgTrainResult:
    """Train (or resume) a text-to-image GAN; see the module docstring. With `time_limit` (seconds
    of this call, data loading and encoder pre-training included) the run stops before a step that
    would not fit, writes its checkpoint and the weights of the steps done; `resume=True` continues."""
    emit: Event = on_event or (lambda kind, data: None)
    if time_limit is not None and time_limit < 0:
        raise TrainingError(f"the time limit must be 0 or more seconds, not {time_limit}")
    clock = StopClock(time_limit, None)
    config.validate()
    out = Path(config.out)
    saved_run = _read_run(out)
    if saved_run is not None and not overwrite:
        saved = saved_run["config"]
        diff = [f for f in _MODEL_FIELDS if getattr(saved, f) != getattr(config, f)]
        if diff:
            detail = ", ".join(f"{f}: {getattr(saved, f)} -> {getattr(config, f)}" for f in diff)
            raise TrainingError(
                f"{out} holds a text-to-image run with other settings ({detail})",
                hint="leave those options out to use the run's own, or choose another --out",
            )
        if not resume:
            raise TrainingError(
                f"{out} already holds a text-to-image run",
                hint="--resume continues it, --overwrite starts again from scratch",
            )
    if overwrite:
        for name in (CHECKPOINT, ENCODER_FILE, IMAGE_ENCODER_FILE, EMBEDDINGS, WEIGHTS, LOG):
            (out / name).unlink(missing_ok=True)
    device = resolve_device(config.device)
    data = load_caption_set(config.data, 64, limit=config.limit or None)
    if data.images.shape[0] < 2:
        raise TrainingError("text-to-image training needs at least 2 captioned images")
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_FILE).write_text(json.dumps({"config": config.to_dict()}, indent=2) + "\n")
    emit(
        "start",
        {
            "images": int(data.images.shape[0]),
            "captions": sum(len(c) for c in data.captions),
            "format": data.format,
            "skipped": [f"{p}: {why}" for p, why in data.skipped],
            "device": str(device),
            "variant": config.variant,
        },
    )
    started = time.perf_counter()
    with event_log(out / LOG, emit) as log:
        text = _text_encoder(config, data, out, device, log)
        if config.match_weight > 0 and text.image is None:
            raise TrainingError(
                f"--match-weight needs the builtin encoder's image encoder ({out / IMAGE_ENCODER_FILE})",
                hint="it is made with the builtin encoder: use --encoder builtin, and delete an older "
                f"{ENCODER_FILE} to pre-train both again",
            )
        embeddings = _embeddings(data, text.encode, out, config.encoder)
        model_config = Text2ImgConfig(
            z_dim=config.z_dim,
            proj_dim=config.proj_dim,
            ngf=config.ngf,
            ndf=config.ndf,
            encoder=config.encoder,
            embed_dim=text.dim,
            text=text.builtin.config.to_dict() if text.builtin is not None else {},
            ca=config.ca,
        )
        step, stopped = _train_gan(
            config, model_config, data, embeddings, text, device, out, resume, log, clock
        )
        weights = assemble(out, model_config, text.builtin)
    seconds = time.perf_counter() - started
    emit("done", {"weights": str(weights), "steps": step, "stopped": stopped})
    return Text2ImgTrainResult(weights, step, seconds, stopped)


def _grid(g: Generator, fixed: torch.Tensor, z: torch.Tensor) -> np.ndarray:
    """Rows: the fixed captions; columns: the same 8 noise vectors in every row and every grid."""
    from ..photos import image_grid

    g.eval()
    with torch.no_grad():
        rows, cols = fixed.shape[0], z.shape[0]
        h = fixed.repeat_interleave(cols, dim=0)
        pictures = g(z.repeat(rows, 1), h).add(1).mul(0.5).clamp(0, 1)
    g.train()
    return image_grid(pictures, cols, cell=64)


def _train_gan(
    config: Text2ImgTrainConfig,
    model_config: Text2ImgConfig,
    data: CaptionSet,
    embeddings: CaptionEmbeddings,
    text: TextSide,
    device: torch.device,
    out: Path,
    resume: bool,
    log: Event,
    clock: StopClock,
) -> tuple[int, str | None]:
    """Steps done, and why it stopped early ("time limit") or None."""
    ckpt = out / CHECKPOINT
    torch.manual_seed(config.seed)
    trainer = Text2ImgTrainer(model_config, config, device, text.image)
    data_rng = torch.Generator().manual_seed(config.seed)
    step, elapsed = 0, 0.0
    if resume and ckpt.exists():
        state = load_checkpoint(ckpt)
        if state.get("model") != model_config.to_dict():
            raise TrainingError(f"{ckpt} belongs to another model config; use --overwrite or another --out")
        trainer.load_state_dict(state)
        restore_rng(state, device, data_rng)
        step, elapsed = int(state["step"]), float(state["elapsed"])
    fixed_captions = sample_captions(data)
    (out / SAMPLES).mkdir(parents=True, exist_ok=True)
    (out / SAMPLES / "captions.txt").write_text("\n".join(fixed_captions) + "\n", encoding="utf-8")
    fixed = text.encode(fixed_captions).to(device)
    fixed_z = torch.randn(8, model_config.noise_dim, generator=torch.Generator().manual_seed(1234)).to(device)
    log(
        "gan",
        {
            "step": step,
            "steps": config.steps,
            "variant": config.variant,
            "g_params": count_parameters(trainer.g),
            "d_params": count_parameters(trainer.d),
        },
    )

    def save_checkpoint() -> None:
        state = {
            **trainer.state_dict(),
            "step": step,
            "elapsed": elapsed,
            "model": model_config.to_dict(),
            "train": {**config.to_dict(), "device": str(device)},
            **rng_state(device, data_rng),
        }
        training.save_checkpoint(state, ckpt)

    n = data.images.shape[0]
    neighbours = embeddings.neighbours() if config.cls and config.hard_wrong > 0 else None
    meter = RunningMeans()
    t_log, t_seg = time.perf_counter(), time.perf_counter()
    clock.begin(step)
    stopped, saved = None, (step if ckpt.exists() else -1)  # the step of the checkpoint on disk
    while step < config.steps:
        if clock.reason(step, 1, val_due=False) is not None:
            stopped = "time limit"
            if saved != step:
                elapsed += time.perf_counter() - t_seg
                save_checkpoint()
            log("stopped", {"step": step, "reason": stopped, "path": str(ckpt)})
            break
        idx = torch.randint(n, (config.batch_size,), generator=data_rng)
        # a caption of another image: shift each index by 1 .. n-1 (never the image itself)
        wrong = (idx + torch.randint(1, n, (config.batch_size,), generator=data_rng)) % n
        if neighbours is not None:  # --hard-wrong: some mismatches differ from the image in little
            hard = torch.rand(config.batch_size, generator=data_rng) < config.hard_wrong
            near = neighbours[
                idx, torch.randint(neighbours.shape[1], (config.batch_size,), generator=data_rng)
            ]
            wrong = torch.where(hard, near, wrong)
        h = embeddings.pick(idx, data_rng).to(device)
        h_wrong = embeddings.pick(wrong, data_rng).to(device)
        x = data.images[idx].to(device).float().div_(127.5).sub_(1.0)
        meter.add(trainer.step(x, h, h_wrong))
        step += 1
        if step % config.log_every == 0 or step == config.steps:
            now = time.perf_counter()
            speed = meter.count * config.batch_size / max(now - t_log, 1e-9)
            log("log", {"step": step, **meter.take("", step), "images_per_s": speed})
            t_log = now
        if step % config.sample_every == 0 or step == config.steps:
            path = out / SAMPLES / f"step{step:07d}.png"
            save_png(path, _grid(trainer.g, fixed, fixed_z))
            log("sample", {"step": step, "path": str(path)})
        if step % config.checkpoint_every == 0 or step == config.steps:
            elapsed += time.perf_counter() - t_seg
            with clock.overhead("checkpoint"):
                save_checkpoint()
            saved, t_seg = step, time.perf_counter()
            log("checkpoint", {"step": step, "path": str(ckpt)})
    return step, stopped


def assemble(out: Path, model_config: Text2ImgConfig, encoder: BuiltinTextEncoder | None) -> Path:
    """Write the generator (and builtin encoder) of the run's checkpoint as text2img.safetensors."""
    state = load_checkpoint(out / CHECKPOINT)
    model = Text2Img(model_config)
    model.generator.load_state_dict(state["G"])
    if encoder is not None:
        assert model.encoder is not None
        model.encoder.load_state_dict(encoder.state_dict())
    train = state.get("train", {})
    return weights_mod.save(
        out / WEIGHTS,
        model,
        trained_on=Path(train.get("data", "")).name,
        provenance={
            "kind": "text2img",
            "variant": variant_name(bool(train.get("cls")), bool(train.get("interpolate"))),
            "steps": int(state["step"]),
            "seconds": round(float(state["elapsed"]), 1),
            "device": train.get("device"),
            "train_config": {k: v for k, v in train.items() if k != "device"},
        },
    )
