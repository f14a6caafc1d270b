"""Training and validation data: HR photos -> random HR crops and their bicubic LR counterparts."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..degradations import Damage, damage_image
from ..degradations.damage import bicubic_downscale
from ..degradations.ops import bicubic_lr
from ..errors import ImageError, TrainingError
from ..photos import list_images, load_rgb_uint8, read_photos, require_folder


@dataclass(frozen=True)
class DataSource:
    """One set of training photos (a --data folder, or one subfolder of a folder of folders) and
    how much its photos count: crops are drawn with probability proportional to weight x pixels."""

    name: str  # as the user will recognise it in logs: the folder, relative to the --data folder
    files: tuple[Path, ...]
    weight: float = 1.0


def parse_data_spec(spec: str) -> tuple[Path, float]:
    """A --data value: "DIR", or "DIR:WEIGHT" (e.g. "photos/extra:0.5") -> (folder, weight).

    A folder whose name really ends in ":<number>" is taken whole when it exists."""
    text = str(spec)
    folder, sep, tail = text.rpartition(":")
    if sep and folder and not Path(text).is_dir():
        try:
            weight = float(tail)
        except ValueError:
            return Path(text), 1.0  # e.g. a Windows drive ("C:\\photos"): no weight given
        if not (weight > 0 and np.isfinite(weight)):
            raise TrainingError(f"--data {text}: the weight after ':' must be a positive number")
        return Path(folder), weight
    return Path(text), 1.0


def gather_sources(specs: Sequence[str]) -> list[DataSource]:
    """The photo sources of the --data values, each with its folder's weight.

    A folder whose photos sit in subfolders (a folder of folders, e.g. photos/{train,extra}) gives
    one source per subfolder (searched recursively) plus one for photos directly inside it, so the
    start of training can say what share of the crops each one gets. A photo reached twice (the
    same folder given twice, or nested) is an error: it would silently count double."""
    sources: list[DataSource] = []
    seen: dict[Path, str] = {}  # each photo's --data value
    for spec in specs:
        folder, weight = parse_data_spec(spec)
        require_folder(folder, "--data")
        groups: dict[str, list[Path]] = {}
        for path in list_images(folder):
            rel = path.relative_to(folder)
            key = str(folder / rel.parts[0]) if len(rel.parts) > 1 else str(folder)
            groups.setdefault(key, []).append(path)
        for name, files in groups.items():
            for path in files:
                real = path.resolve()
                if real in seen:
                    raise TrainingError(
                        f"{path} is reached twice: by --data {seen[real]} and by --data {spec}",
                        hint="give each folder once; subfolders are searched already",
                    )
                seen[real] = spec
            sources.append(DataSource(name, tuple(files), weight))
    if not sources:
        raise TrainingError(f"no images found in {', '.join(map(str, specs)) or 'no --data folder'}")
    return sources


@dataclass(frozen=True)
class ValOverlap:
    """The --data photos that are also --val photos, and what training does about them."""

    sources: list[DataSource]  # what to train on
    photos: list[Path]  # the training photos that are --val photos
    left_out: bool  # True: `photos` are not in `sources`; False: --val is the training set itself


def without_val_photos(sources: list[DataSource], val: str | Path) -> ValOverlap:
    """`sources` without the photos that are also --val photos (training on them would inflate
    every validation number), unless that leaves nothing: then --val is the training set itself,
    given on purpose (a check of fit), and `sources` stay whole.

    A training photo is a --val photo when it is the same file (by resolved path: a val folder
    inside --data, a symlink) or has identical bytes (a copy under another name: SHA-256, computed
    only for files whose size matches a val photo's). A source left with no photo is dropped."""
    val_files = list_images(require_folder(val, "--val"))
    val_paths = {p.resolve() for p in val_files}
    by_size: dict[int, list[Path]] = {}
    for path in val_files:
        by_size.setdefault(path.stat().st_size, []).append(path)
    val_hashes: dict[Path, str] = {}  # filled for the val photos whose size some training photo has

    def same_bytes(path: Path) -> bool:
        twins = by_size.get(path.stat().st_size)
        if not twins:
            return False
        for twin in twins:
            if twin not in val_hashes:
                val_hashes[twin] = _sha256(twin)
        return _sha256(path) in {val_hashes[t] for t in twins}

    kept: list[DataSource] = []
    overlap: list[Path] = []
    for source in sources:
        files = []
        for path in source.files:
            if path.resolve() in val_paths or same_bytes(path):
                overlap.append(path)
            else:
                files.append(path)
        if files:
            kept.append(DataSource(source.name, tuple(files), source.weight))
    if not kept:
        return ValOverlap(sources, overlap, left_out=False)
    return ValOverlap(kept, overlap, left_out=bool(overlap))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """The 'bicubic' baseline of every SR table: (h, w, 3) uint8 -> (s*h, s*w, 3) uint8."""
    h, w = lr.shape[:2]
    return np.array(Image.fromarray(lr).resize((w * scale, h * scale), Image.Resampling.BICUBIC))


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)


class CropPool:
    """Every training photo decoded once into one uint8 buffer on `device` (GPU memory when it fits);
    batches of random HR crops and their LR images are then cut there with index arithmetic, with
    no per-crop Python, no worker processes and no host-device copy.

    A crop comes from photo i with probability proportional to weights[i] x its pixel count, so
    every pixel of equal weight is equally likely to be trained on, whatever the photo sizes (what
    sampling sub-images cut from every photo does; a 2040 px photo holds 4x the crops of a 1020 px
    one). Randomness comes only from `generator`, so a run that saves its state resumes exactly."""

    def __init__(
        self,
        images: list[np.ndarray],
        *,
        scale: int,
        crop: int,
        augment: bool = True,
        device: torch.device | str = "cpu",
        files: list[Path] | None = None,
        skipped: list[tuple[Path, str]] | None = None,
        weights: Sequence[float] | None = None,
        lr_images: list[np.ndarray] | None = None,
    ) -> None:
        """`images`: (H, W, 3) uint8 arrays, each at least `crop` on both sides; `weights`: one
        positive number per image (default 1), multiplying its pixels' chance of being drawn.
        `lr_images`: real LR photos paired with `images` (each exactly 1/scale of its HR's size):
        `batch` then cuts aligned crops of both instead of downscaling the HR."""
        if crop % scale:
            raise TrainingError(f"crop size {crop} must be a multiple of the scale {scale}")
        if not images:
            raise TrainingError("no training images")
        self.scale, self.crop, self.augment = scale, crop, augment
        self.device = torch.device(device)
        self.files = files if files is not None else [Path(f"<array {i}>") for i in range(len(images))]
        self.skipped = skipped or []
        sizes = [img.shape[:2] for img in images]
        if min(min(hw) for hw in sizes) < crop:
            raise TrainingError(f"every training image must be at least {crop}x{crop} (the crop)")
        weights = [1.0] * len(images) if weights is None else [float(w) for w in weights]
        if len(weights) != len(images) or not all(w > 0 and np.isfinite(w) for w in weights):
            raise TrainingError("the crop pool needs one positive weight per image")
        mass = np.array(weights) * np.array([h * w for h, w in sizes], dtype=np.float64)
        self.shares = mass / mass.sum()  # (n_images,) probability that a crop comes from each photo
        chunks = [torch.from_numpy(np.ascontiguousarray(img).reshape(-1, 3)) for img in images]
        self.pixels = torch.cat(chunks).to(self.device)  # (P, 3) uint8, every photo row-major
        hw = torch.tensor(sizes, dtype=torch.int64)
        offsets = torch.cumsum(hw[:, 0] * hw[:, 1], 0) - hw[:, 0] * hw[:, 1]
        self.offsets, self.heights, self.widths = (t.to(self.device) for t in (offsets, hw[:, 0], hw[:, 1]))
        self.paired = lr_images is not None
        if lr_images is not None:
            if len(lr_images) != len(images):
                raise TrainingError("the crop pool needs one LR image per HR image")
            for hr, lr in zip(images, lr_images, strict=True):
                if (lr.shape[0] * scale, lr.shape[1] * scale) != hr.shape[:2]:
                    raise TrainingError(
                        f"a {lr.shape[1]}x{lr.shape[0]} LR image does not pair with a "
                        f"{hr.shape[1]}x{hr.shape[0]} HR image at x{scale}"
                    )
            self.lr_pixels = torch.cat(
                [torch.from_numpy(np.ascontiguousarray(lr).reshape(-1, 3)) for lr in lr_images]
            ).to(self.device)  # (P / s^2, 3) uint8
            self.lr_offsets, self.lr_widths = offsets.to(self.device) // scale**2, self.widths // scale
        self._grid = torch.arange(crop, device=self.device)
        # the photo of a crop is drawn by inverting this distribution function (searchsorted)
        self._cdf = torch.from_numpy(np.cumsum(self.shares)[:-1].astype(np.float32)).to(self.device)

    @classmethod
    def from_files(
        cls,
        files: list[Path],
        *,
        scale: int,
        crop: int,
        augment: bool = True,
        device: torch.device | str = "cpu",
        weights: Sequence[float] | None = None,
        lr_files: Sequence[Path] | None = None,
    ) -> CropPool:
        """Decode each photo once; unreadable ones and ones smaller than the crop are skipped.
        `weights`: one per file (see the class), default 1. `lr_files`: the real LR photo of each
        HR file (paired training); an HR photo up to scale-1 px larger than scale x its LR is
        cropped to fit, other mismatches are skipped with the reason."""
        weight_of = dict(zip(files, weights if weights is not None else [1.0] * len(files), strict=True))
        lr_of = dict(zip(files, lr_files, strict=True)) if lr_files is not None else {}
        pair_skipped: list[tuple[Path, str]] = []

        def with_lr(path: Path, hr: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
            try:
                lr = load_rgb_uint8(lr_of[path])
            except (ImageError, OSError) as exc:
                pair_skipped.append((path, f"its LR {lr_of[path]}: {exc}"))
                return None
            (h, w), (lh, lw) = hr.shape[:2], lr.shape[:2]
            if not (0 <= h - lh * scale < scale and 0 <= w - lw * scale < scale):
                pair_skipped.append(
                    (path, f"{w}x{h} does not pair with its {lw}x{lh} LR {lr_of[path]} at x{scale}")
                )
                return None
            if min(lh, lw) * scale < crop:  # cropped to the LR's multiple, it may fall under the crop
                pair_skipped.append((path, f"smaller than the {crop}px crop once paired with its LR"))
                return None
            return np.ascontiguousarray(hr[: lh * scale, : lw * scale]), lr

        lr_images: list[np.ndarray] | None = None
        if lr_files is None:
            images, kept, skipped = read_photos(files, crop, "crop")
        else:
            pairs, kept, skipped = read_photos(files, crop, "crop", lambda img: img)
            paired = [(p, with_lr(p, img)) for p, img in zip(kept, pairs, strict=True)]
            kept = [p for p, pair in paired if pair is not None]
            images = [pair[0] for _, pair in paired if pair is not None]
            lr_images = [pair[1] for _, pair in paired if pair is not None]
            skipped += pair_skipped
        if not images:
            raise TrainingError(
                f"no usable training images ({len(skipped)} skipped)",
                hint="the data folder needs photos at least as large as --crop",
            )
        return cls(
            images,
            scale=scale,
            crop=crop,
            augment=augment,
            device=device,
            files=kept,
            skipped=skipped,
            weights=[weight_of[p] for p in kept],
            lr_images=lr_images,
        )

    @property
    def nbytes(self) -> int:
        return self.pixels.numel()

    @staticmethod
    def nbytes_needed(files: list[Path]) -> int:
        """Bytes the pool will take, read from the image headers (for choosing its device)."""
        total = 0
        for path in files:
            try:
                with Image.open(path) as im:
                    total += im.size[0] * im.size[1] * 3
            except OSError:
                continue
        return total

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def batch(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(LR (n, 3, c/s, c/s), HR (n, 3, c, c)) float32 in [0, 1] on the pool's device; LR is the
        antialiased bicubic downscale of HR, rounded to 8 bit like a real LR image, or for a paired
        pool the real LR photo's aligned crop."""
        c, s = self.crop, self.scale
        k, top, left, code = self._draw(n, generator)
        hr = self._cut(self.pixels, self.offsets[k], self.widths[k], top, left, code, c)
        if self.paired:  # the same window and transform on the LR grid (top, left are multiples of s)
            lr = self._cut(
                self.lr_pixels, self.lr_offsets[k], self.lr_widths[k], top // s, left // s, code, c // s
            )
            return lr, hr
        return bicubic_lr(hr, (c // s, c // s)).contiguous(), hr  # (n, 3, c/s, c/s)

    def crops(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, 3, c, c) float32 HR crops in [0, 1] on the pool's device (the same draws as `batch`,
        for a degradation pipeline to make the LR from)."""
        k, top, left, code = self._draw(n, generator)
        return self._cut(self.pixels, self.offsets[k], self.widths[k], top, left, code, self.crop)

    def _draw(
        self, n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each crop's photo, top-left corner and dihedral code (0-7); corners on the LR grid (multiples
        of the scale) for a paired pool."""
        c = self.crop
        step = self.scale if self.paired else 1
        u = torch.rand(n, 4, generator=generator, device=self.device)  # image, top, left, dihedral code
        k = torch.searchsorted(self._cdf, u[:, 0].contiguous(), right=True)  # the photo of each crop
        h, w = self.heights[k], self.widths[k]
        top = (u[:, 1] * ((h - c) // step + 1)).long() * step
        left = (u[:, 2] * ((w - c) // step + 1)).long() * step
        return k, top, left, (u[:, 3] * 8).long()

    def _cut(
        self,
        pixels: torch.Tensor,
        offsets: torch.Tensor,
        widths: torch.Tensor,
        top: torch.Tensor,
        left: torch.Tensor,
        code: torch.Tensor,
        c: int,
    ) -> torch.Tensor:
        """(n, 3, c, c) float32 windows of a row-major pixel buffer, each under its dihedral transform."""
        n = top.shape[0]
        grid = self._grid[:c]
        i = grid.view(1, c, 1).expand(n, c, c)  # output row
        j = grid.view(1, 1, c).expand(n, c, c)  # output column
        if self.augment:
            # one of the 8 dihedral transforms per crop: bit 0 transposes, bits 1/2 flip rows/columns
            code = code.view(n, 1, 1)
            transpose = (code & 1).bool()
            i, j = torch.where(transpose, j, i), torch.where(transpose, i, j)
            i = torch.where((code & 2).bool(), c - 1 - i, i)
            j = torch.where((code & 4).bool(), c - 1 - j, j)
        index = (
            offsets.view(n, 1, 1) + (top.view(n, 1, 1) + i) * widths.view(n, 1, 1) + left.view(n, 1, 1) + j
        )
        return pixels[index].permute(0, 3, 1, 2).float().div_(255.0)  # (n, 3, c, c)


def pair_lr_files(hr_root: Path, files: Sequence[Path], lr_root: str | Path) -> list[Path]:
    """The LR photo of each HR file: the file of the same relative path and stem, any image suffix,
    under `lr_root` (BasicSR's paired layout: dataroot_gt and dataroot_lq). A missing one is an error
    that names it."""
    from ..photos import list_images as _list

    lr_root = require_folder(lr_root, "--data-lr")
    by_stem = {p.relative_to(lr_root).with_suffix(""): p for p in _list(lr_root)}
    out, missing = [], []
    for path in files:
        key = path.relative_to(hr_root).with_suffix("")
        if key in by_stem:
            out.append(by_stem[key])
        else:
            missing.append(str(key))
    if missing:
        raise TrainingError(
            f"{len(missing)} HR photo(s) have no LR photo in {lr_root}: {', '.join(missing[:3])}",
            hint="give each HR photo an LR photo of the same name (any image suffix) under --data-lr",
        )
    return out


@dataclass
class EvalPair:
    name: str
    lr: np.ndarray  # (h, w, 3) uint8
    hr: np.ndarray  # (s*h, s*w, 3) uint8


def load_eval_pairs(folder: str | Path, scale: int, *, limit: int | None = None) -> list[EvalPair]:
    """HR photos cropped to a multiple of the scale, LR by antialiased bicubic (DESIGN.md protocol);
    files that cannot be scored are left out (`load_eval_set` says which and why)."""
    return load_eval_set(folder, scale, limit=limit)[0]


def min_eval_side(scale: int) -> int:
    """The smallest HR side that can be scored: SSIM's 11x11 window after a border of `scale` px."""
    return 11 + 2 * scale


def load_eval_set(
    folder: str | Path, scale: int, *, limit: int | None = None
) -> tuple[list[EvalPair], list[tuple[Path, str]]]:
    """(pairs, skipped): each readable photo as an EvalPair, and (path, reason) for each one that is
    unreadable or too small to score; no usable photo at all is an error."""
    files = list_images(folder)
    if not files:
        raise TrainingError(f"no images found in {folder}")
    pairs, skipped = [], []
    smallest = min_eval_side(scale)
    for path in files[:limit]:
        try:
            hr = load_rgb_uint8(path)
        except ImageError as exc:
            skipped.append((path, exc.reason))
            continue
        h, w = hr.shape[:2]
        if min(h, w) < smallest:
            skipped.append(
                (path, f"{w}x{h} is too small to score at x{scale} (at least {smallest} px a side)")
            )
            continue
        hr = np.ascontiguousarray(hr[: h - h % scale, : w - w % scale])
        pairs.append(EvalPair(path.stem, bicubic_downscale(hr, scale), hr))
    if not pairs:
        reasons = "; ".join(f"{p.name}: {why}" for p, why in skipped[:3])
        raise TrainingError(f"no image in {folder} can be scored ({reasons})")
    return pairs, skipped


def damage_pairs(pairs: list[EvalPair], scale: int, damage: Damage) -> list[EvalPair]:
    """The same photos with the LR damaged as `damage` says (degradations.damage_image; each photo's
    random draws are seeded by its name), for `srgan eval --degrade`."""
    return [EvalPair(p.name, damage_image(p.hr, scale, damage, p.name), p.hr) for p in pairs]
