"""LAPGAN training data: random square crops of a folder of photos, resized to the model's size.

Any folder of images works: CIFAR-10/STL-10 folders (images already at the size: the crop is the
whole image) as well as photos of any size (crops from a quarter of the short side up to all of it,
so the model sees both textures and whole scenes). A folder whose images all sit in first-level
subfolders, two or more of them, is a class-labelled data set (the subfolder names are the classes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import TrainingError
from ..photos import list_images, read_photos


def class_names(folder: Path, files: list[Path]) -> list[str]:
    """Sorted class names when every image is in a first-level subfolder and there are >= 2."""
    parents = {f.relative_to(folder).parts[0] if len(f.relative_to(folder).parts) > 1 else "" for f in files}
    if "" in parents or len(parents) < 2:
        return []
    return sorted(parents)


@dataclass
class CropSampler:
    """Photos held in memory as uint8 (3, H, W) tensors, pre-shrunk so that their short side is at
    most `keep_side` (crops are resized to `size` anyway; this bounds memory and resize cost)."""

    images: list[torch.Tensor]
    labels: list[int]
    size: int
    classes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    min_crop: float = 0.25  # the smallest crop side, as a fraction of the short side
    flip: bool = True

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        size: int,
        *,
        classes: bool = True,
        keep_side: int | None = None,
        min_crop: float = 0.25,
        flip: bool = True,
        limit: int | None = None,
    ) -> CropSampler:
        """Read every image below `folder`; unreadable ones and ones smaller than `size` are skipped
        and reported in `.skipped`. `classes=False` ignores class subfolders."""
        folder = Path(folder)
        files = list_images(folder)
        if limit:
            files = files[:limit]
        if not files:
            raise TrainingError(f"no images found in {folder}")
        names = class_names(folder, files) if classes else []
        keep = keep_side or 4 * size
        images, kept, skipped = read_photos(files, size, "model size", lambda pixels: _shrink(pixels, keep))
        labels = [names.index(path.relative_to(folder).parts[0]) if names else 0 for path in kept]
        if not images:
            raise TrainingError(
                f"no usable images in {folder} ({len(skipped)} skipped)",
                hint=f"images must be readable and at least {size}x{size}",
            )
        return cls(images, labels, size, names, kept, skipped, min_crop, flip)

    def batch(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, 3, size, size) float32 in [0, 1] and (n,) int64 class labels."""
        idx = torch.randint(len(self.images), (n,), generator=generator).tolist()
        u = torch.rand(n, 3, generator=generator).tolist()
        flips = (torch.rand(n, generator=generator) < 0.5).tolist()
        out = torch.empty(n, 3, self.size, self.size)
        for j, (i, (a, b, c), flip) in enumerate(zip(idx, u, flips, strict=True)):
            img = self.images[i]
            h, w = img.shape[-2:]
            short = min(h, w)
            lo = max(self.size, round(self.min_crop * short))
            side = lo + round(a * (short - lo))
            top, left = round(b * (h - side)), round(c * (w - side))
            crop = img[:, top : top + side, left : left + side].float().div_(255.0)[None]
            if side != self.size:
                crop = F.interpolate(crop, size=(self.size, self.size), mode="bilinear", antialias=True)
            if flip and self.flip:
                crop = crop.flip(-1)
            out[j] = crop[0]
        labels = torch.tensor([self.labels[i] for i in idx], dtype=torch.int64)
        return out.clamp_(0, 1), labels

    def fixed(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The same n crops every time for one seed (held-out sets, sample grids)."""
        return self.batch(n, torch.Generator().manual_seed(seed))


def _shrink(pixels: np.ndarray, keep: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, h, w) uint8 with the short side at most `keep` (area averaging)."""
    t = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)
    h, w = t.shape[-2:]
    if min(h, w) <= keep:
        return t.contiguous()
    f = keep / min(h, w)
    small = F.interpolate(
        t[None].float(), size=(max(keep, round(h * f)), max(keep, round(w * f))), mode="area"
    )
    return small[0].round_().clamp_(0, 255).to(torch.uint8)
