"""Generating from a trained text-to-image model: captions -> 64x64 images, interpolation strips."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .. import weights as weights_mod
from ..errors import UsageError
from .encoders import Encode, MiniLMEncoder
from .models import Text2Img, Text2ImgConfig


def load_text2img(name_or_path: str | Path) -> tuple[Text2Img, weights_mod.WeightsInfo]:
    """A text-to-image model from a weights file; any other kind of model is a clear error."""
    loaded = weights_mod.load_model(
        name_or_path, lambda arch, config: Text2Img(Text2ImgConfig(**config)), expect_arch="text2img"
    )
    model = loaded.model
    assert isinstance(model, Text2Img)
    return model.eval(), loaded.info


def text_encoder(model: Text2Img, device: torch.device | str = "cpu") -> Encode:
    """The encode function the model was trained with: its own builtin encoder, or MiniLM."""
    if model.encoder is not None:
        return model.encoder.encode
    encoder = MiniLMEncoder(device)
    if encoder.dim != model.config.embed_dim:
        raise UsageError(
            f"the model expects {model.config.embed_dim}-d embeddings, MiniLM gives {encoder.dim}"
        )
    return encoder.encode


def _check_captions(captions: Sequence[str]) -> list[str]:
    cleaned = [c.strip() for c in captions]
    empty = [i for i, c in enumerate(cleaned) if not c]
    if not cleaned:
        raise UsageError("no caption given")
    if empty:
        raise UsageError(f"caption {empty[0] + 1} is empty")
    return cleaned


class TextToImage:
    """A model on a device with its text encoder: `generate` and `interpolate` return images in
    [0, 1]. Noise is drawn on the CPU from `seed`, so a seed gives the same images on any device."""

    def __init__(self, model: Text2Img, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.encode = text_encoder(model, self.device)

    def embed(self, captions: Sequence[str]) -> torch.Tensor:
        return self.encode(_check_captions(captions)).to(self.device)

    @torch.no_grad()
    def from_embeddings(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """(N, D) embeddings and (N, noise_dim) noise -> (N, 3, 64, 64) in [0, 1] on the CPU."""
        parts = []
        for i in range(0, h.shape[0], 256):
            parts.append(self.model(z[i : i + 256].to(self.device), h[i : i + 256].to(self.device)).cpu())
        return torch.cat(parts).clamp_(0, 1)

    def noise(self, n: int, seed: int) -> torch.Tensor:
        return torch.randn(n, self.model.config.noise_dim, generator=torch.Generator().manual_seed(seed))

    def generate(self, captions: Sequence[str], n: int = 1, seed: int = 0) -> torch.Tensor:
        """(len(captions) * n, 3, 64, 64), caption-major: caption 0's n images first. Caption i uses
        the same n noise vectors as every other caption, so rows differ only by their text."""
        h = self.embed(captions).repeat_interleave(n, dim=0)
        z = self.noise(n, seed).repeat(len(captions), 1)
        return self.from_embeddings(h, z)

    def interpolate(
        self, first: str, second: str, steps: int = 8, rows: int = 1, seed: int = 0
    ) -> torch.Tensor:
        """(rows * steps, 3, 64, 64): each row keeps one noise vector while the embedding moves
        from `first` to `second` in `steps` equal steps (the paper's Figure 5)."""
        if steps < 2:
            raise UsageError("--steps must be at least 2 for an interpolation")
        h = self.embed([first, second])
        alpha = torch.linspace(0, 1, steps, device=h.device)[:, None]
        path = (1 - alpha) * h[0] + alpha * h[1]  # (steps, D)
        z = self.noise(rows, seed).repeat_interleave(steps, dim=0)
        return self.from_embeddings(path.repeat(rows, 1), z)


def read_captions_file(path: str | Path) -> list[str]:
    """One caption per line; blank lines and lines starting with # are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text") from exc
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    lines = [line.strip() for line in text.splitlines()]
    captions = [line for line in lines if line and not line.startswith("#")]
    if not captions:
        raise UsageError(f"{path} holds no captions (one per line)")
    return captions
