"""Training and validation data: HR photos -> random HR crops and their bicubic LR counterparts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from ..errors import ImageError, TrainingError
from ..imageio import READABLE_SUFFIXES, read_image


def list_images(folder: str | Path, *, recursive: bool = True) -> list[Path]:
    """Image files below `folder`, sorted, by suffix (contents are checked when they are read)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TrainingError(f"data folder not found: {folder}")
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in READABLE_SUFFIXES)


def load_rgb_uint8(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; grayscale is replicated, alpha dropped, 16-bit rounded to 8-bit."""
    img = read_image(path)
    pixels = img.pixels if not img.is_gray else np.repeat(img.pixels, 3, axis=2)
    return np.ascontiguousarray(np.rint(pixels * 255.0).astype(np.uint8))


def bicubic_downscale(hr: np.ndarray, scale: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (H/s, W/s, 3) uint8 with PIL's antialiased bicubic (the SR protocol)."""
    h, w = hr.shape[:2]
    return np.array(Image.fromarray(hr).resize((w // scale, h // scale), Image.Resampling.BICUBIC))


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """The 'bicubic' baseline of every SR table: (h, w, 3) uint8 -> (s*h, s*w, 3) uint8."""
    h, w = lr.shape[:2]
    return np.array(Image.fromarray(lr).resize((w * scale, h * scale), Image.Resampling.BICUBIC))


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)


def _augment(img: np.ndarray, code: int) -> np.ndarray:
    """One of the 8 dihedral transforms: code bit 0 flips, bits 1-2 rotate by 90 degrees."""
    if code & 1:
        img = img[:, ::-1]
    return np.rot90(img, k=code >> 1)


class TrainCrops(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Random (LR, HR) crop pairs. Item i is a pure function of (seed, i), so a run resumed at
    step k sees exactly the batches it would have seen, whatever the number of workers."""

    def __init__(
        self,
        files: list[Path],
        *,
        scale: int,
        crop: int,
        augment: bool = True,
        seed: int = 0,
        cache: bool = True,
    ) -> None:
        if crop % scale:
            raise TrainingError(f"crop size {crop} must be a multiple of the scale {scale}")
        self.scale, self.crop, self.augment, self.seed, self.cache = scale, crop, augment, seed, cache
        self.files: list[Path] = []
        self.skipped: list[tuple[Path, str]] = []
        self._images: dict[int, np.ndarray] = {}
        for path in files:
            try:
                if cache:
                    img = load_rgb_uint8(path)
                    h, w = img.shape[:2]
                else:
                    with Image.open(path) as im:
                        w, h = im.size
            except (ImageError, OSError) as exc:
                self.skipped.append((path, str(exc)))
                continue
            if h < crop or w < crop:
                self.skipped.append((path, f"smaller than the {crop}px crop ({w}x{h})"))
                continue
            if cache:
                self._images[len(self.files)] = img
            self.files.append(path)
        if not self.files:
            raise TrainingError(
                f"no usable training images ({len(self.skipped)} skipped)",
                hint="the data folder needs photos at least as large as --crop",
            )

    def __len__(self) -> int:
        return 2**62  # an endless stream; the sampler decides which indices are drawn

    def _image(self, k: int) -> np.ndarray:
        if k in self._images:
            return self._images[k]
        return load_rgb_uint8(self.files[k])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        k = int(rng.integers(len(self.files)))
        img = self._image(k)
        h, w = img.shape[:2]
        top = int(rng.integers(h - self.crop + 1))
        left = int(rng.integers(w - self.crop + 1))
        hr = img[top : top + self.crop, left : left + self.crop]
        if self.augment:
            hr = _augment(hr, int(rng.integers(8)))
        hr = np.ascontiguousarray(hr)
        lr = bicubic_downscale(hr, self.scale)
        return to_tensor(lr), to_tensor(hr)


class StepSampler(Sampler[int]):
    """Indices start*batch, start*batch+1, ... for `steps` batches: resumable by construction."""

    def __init__(self, start_step: int, steps: int, batch_size: int) -> None:
        self.start, self.stop = start_step * batch_size, steps * batch_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


@dataclass
class EvalPair:
    name: str
    lr: np.ndarray  # (h, w, 3) uint8
    hr: np.ndarray  # (s*h, s*w, 3) uint8


def load_eval_pairs(folder: str | Path, scale: int, *, limit: int | None = None) -> list[EvalPair]:
    """HR photos cropped to a multiple of the scale, LR by antialiased bicubic (DESIGN.md protocol)."""
    files = list_images(folder)
    if not files:
        raise TrainingError(f"no images found in {folder}")
    pairs = []
    for path in files[:limit]:
        hr = load_rgb_uint8(path)
        h, w = hr.shape[:2]
        hr = np.ascontiguousarray(hr[: h - h % scale, : w - w % scale])
        pairs.append(EvalPair(path.stem, bicubic_downscale(hr, scale), hr))
    return pairs
