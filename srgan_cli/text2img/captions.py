"""A run's captions as vectors: the text encoder files of a run folder and the embedding cache.

The text encoder is fixed during the GAN (as in the paper): the built-in one is first pre-trained
on the run's captions (text2img/encoders.py) and saved with its image-side partner, MiniLM is used
as it is. Every caption is encoded once and the embeddings are cached in the run folder.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import training
from ..atomic import atomic_open
from ..errors import TrainingError
from ..training import Event, load_checkpoint
from .data import CaptionSet
from .encoders import (
    BuiltinEncoderConfig,
    BuiltinTextEncoder,
    EncoderTrainConfig,
    ImageEncoder,
    MiniLMEncoder,
    pretrain_builtin,
)
from .trainer import Text2ImgTrainConfig

ENCODER_FILE = "text_encoder.safetensors"
IMAGE_ENCODER_FILE = "image_encoder.safetensors"
EMBEDDINGS = "embeddings.pt"


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


def _save_module(
    module: nn.Module, config: dict[str, Any], path: Path, pretraining: dict[str, Any] | None = None
) -> None:
    """A pre-trained encoder as safetensors, its config (and how it was pre-trained) in the metadata,
    written atomically."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    metadata = {"config": json.dumps(config)}
    if pretraining is not None:
        metadata["pretraining"] = json.dumps(pretraining)
    with atomic_open(path) as fh:
        fh.write(save(state, metadata=metadata))


def encoder_pretraining(path: Path) -> dict[str, Any] | None:
    """How the builtin encoder in `path` was pre-trained (steps, negatives, ...), as recorded when it
    was; None for a file written before the record was kept. A run that reuses an encoder made
    elsewhere takes these values from the file, not from its own options."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        recorded = (f.metadata() or {}).get("pretraining")
    return json.loads(recorded) if recorded else None


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


def load_text_encoder(path: Path) -> BuiltinTextEncoder:
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


def text_encoder_of(
    config: Text2ImgTrainConfig, data: CaptionSet, out: Path, device: torch.device, log: Event
) -> TextSide:
    """The run's text encoder; pre-trains the builtin one (and its image partner) once."""
    if config.encoder == "minilm":
        minilm = MiniLMEncoder(device)
        return TextSide(minilm.encode, minilm.dim)
    path, image_path = out / ENCODER_FILE, out / IMAGE_ENCODER_FILE
    if path.is_file():
        encoder = load_text_encoder(path)
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
        seconds = time.perf_counter() - started
        _save_module(image, {"dim": image.dim, "width": image.width}, image_path)
        record = {**asdict(enc_config), "images": int(data.images.shape[0]), "seconds": round(seconds, 1)}
        _save_module(encoder, encoder.config.to_dict(), path, record)  # last: it means "pre-trained"
        log(
            "encoder",
            {
                "encoder": "builtin",
                "path": str(path),
                "loaded": False,
                "vocab": len(encoder.config.vocab),
                "seconds": seconds,
            },
        )
    return TextSide(encoder.encode, encoder.config.dim, encoder, image)


def embeddings_of(
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
    training.save_checkpoint({"key": key, "vectors": vectors}, cache, what="embeddings cache")
    return CaptionEmbeddings(vectors, first, count)
