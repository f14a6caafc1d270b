"""Captioned-image data sets for text-to-image training: three folder layouts, read into uint8 squares.

Accepted layouts, detected in this order:

1. ``captions.jsonl`` at the folder root, one JSON object a line:
   ``{"image": "relative/path.png", "captions": ["...", "..."]}`` (or ``"caption": "..."``); any
   other keys of the object are kept as the record's ``extra``.
2. The CUB-200 / Oxford-102 releases of Reed et al. (2016): ``text_c10/<class>/<image stem>.txt``
   (one caption a line) with the images anywhere else under the root, matched by file stem.
3. Side-by-side files: ``photo.jpg`` next to ``photo.txt`` (one caption a line), in any subfolder.

Bad records (no captions, no image, not UTF-8, corrupt image, ...) are skipped with a reason and
counted; only a folder with nothing usable at all is an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import ImageError, TrainingError
from ..photos import list_images, load_rgb_uint8, require_folder

JSONL_NAME = "captions.jsonl"
CUB_TEXT_DIR = "text_c10"
FORMATS = ("jsonl", "cub", "sidecar")

# The folders the CUB-200 ("images") and Oxford-102 ("jpg") releases keep their photos in: the
# tie-break when a stem also names another file in a class folder (e.g. CUB's segmentation masks).
_RELEASE_IMAGE_DIRS = frozenset({"images", "jpg"})
_SHOWN_REASONS = 5

LAYOUT_HINT = (
    "accepted layouts: (1) captions.jsonl at the folder root, one JSON object a line "
    '{"image": "relative/path.png", "captions": ["...", ...]}; '
    "(2) the CUB-200 / Oxford-102 layout of Reed et al.: text_c10/<class>/<image stem>.txt "
    "(one caption a line) with the images elsewhere under the folder; "
    "(3) photo.jpg next to photo.txt (one caption a line), in any subfolder"
)


@dataclass
class CaptionedImage:
    image: Path
    captions: list[str]
    label: str | None = None  # class folder for the CUB/Oxford layout
    extra: dict[str, Any] = field(default_factory=dict)  # other keys of a captions.jsonl record


@dataclass
class CaptionIndex:
    folder: Path
    format: str  # "jsonl" | "cub" | "sidecar"
    items: list[CaptionedImage]
    skipped: list[tuple[Path, str]]  # (path, reason)


@dataclass
class CaptionSet:
    images: torch.Tensor  # (N, 3, size, size) uint8, kept on CPU
    captions: list[list[str]]  # captions[i] belong to images[i], each list non-empty
    items: list[CaptionedImage]  # the kept records, same order
    skipped: list[tuple[Path, str]]  # index skips + decode failures
    size: int
    format: str


def detect_format(folder: str | Path) -> str:
    """ "jsonl" when captions.jsonl is at the root, else "cub" when text_c10/ is, else "sidecar"."""
    folder = _existing_folder(folder)
    if (folder / JSONL_NAME).is_file():
        return "jsonl"
    if (folder / CUB_TEXT_DIR).is_dir():
        return "cub"
    return "sidecar"


def index_captions(folder: str | Path, *, limit: int | None = None) -> CaptionIndex:
    """Pair every image below `folder` with its captions, without decoding any image.

    Items are sorted by image path (the same folder always gives the same order); `limit` keeps the
    first `limit` of them. Raises TrainingError when no image has a usable caption."""
    _check_limit(limit)
    folder = _existing_folder(folder)
    fmt = detect_format(folder)
    reader = {"jsonl": _index_jsonl, "cub": _index_cub, "sidecar": _index_sidecar}[fmt]
    items, skipped = reader(folder)
    items.sort(key=lambda item: str(item.image))
    if not items:
        raise _nothing_usable(folder, fmt, skipped)
    return CaptionIndex(folder, fmt, items[:limit], skipped)


def load_caption_set(
    folder: str | Path, size: int = 64, *, limit: int | None = None, min_size: int = 0
) -> CaptionSet:
    """Decode the indexed images into (N, 3, size, size) uint8: centre-cropped to a square on the
    short side, then resized with PIL's antialiased bicubic (images already size x size are kept
    bit-exact). No flips: captions may say "left" or "right".

    Unreadable images and images whose short side is below `min_size` are skipped with a reason;
    `limit` stops after that many images are kept. Raises TrainingError when none is usable."""
    if size < 1:
        raise TrainingError(f"image size must be at least 1, got {size}")
    _check_limit(limit)
    index = index_captions(folder)
    skipped = list(index.skipped)
    pixels: list[np.ndarray] = []
    kept: list[CaptionedImage] = []
    for item in index.items:
        if limit is not None and len(kept) >= limit:
            break
        try:
            img = load_rgb_uint8(item.image)
        except ImageError as exc:
            skipped.append((item.image, exc.reason))
            continue
        except OSError as exc:
            skipped.append((item.image, str(exc)))
            continue
        h, w = img.shape[:2]
        if min(h, w) < min_size:
            skipped.append((item.image, f"smaller than the {min_size}px minimum ({w}x{h})"))
            continue
        pixels.append(_square(img, size))
        kept.append(item)
    if not kept:
        raise _nothing_usable(index.folder, index.format, skipped)
    images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()
    return CaptionSet(images, [list(item.captions) for item in kept], kept, skipped, size, index.format)


# --- the three layouts ---------------------------------------------------------------------------


def _index_jsonl(folder: Path) -> tuple[list[CaptionedImage], list[tuple[Path, str]]]:
    source = folder / JSONL_NAME
    skipped: list[tuple[Path, str]] = []
    by_image: dict[Path, CaptionedImage] = {}
    try:
        raw = source.read_bytes()
    except OSError as exc:
        return [], [(source, f"cannot read {JSONL_NAME}: {exc.strerror or exc}")]
    if raw.startswith(b"\xef\xbb\xbf"):  # a BOM, as some Windows editors write
        raw = raw[3:]
    for number, line_bytes in enumerate(raw.splitlines(), start=1):
        where = f"{JSONL_NAME} line {number}"
        try:
            line = line_bytes.decode("utf-8").strip()
        except UnicodeDecodeError:
            skipped.append((source, f"{where}: not UTF-8"))
            continue
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            skipped.append((source, f"{where}: not valid JSON"))
            continue
        if not isinstance(record, dict):
            skipped.append((source, f"{where}: not a JSON object"))
            continue
        rel = record.get("image")
        if not isinstance(rel, str) or not rel.strip():
            skipped.append((source, f'{where}: no "image" path'))
            continue
        rel = rel.strip()
        if _escapes(rel):
            skipped.append((source, f"{where}: image path {rel!r} is outside the folder"))
            continue
        captions = _clean(_json_captions(record))
        if not captions:
            skipped.append((source, f"{where}: no captions"))
            continue
        image = folder / rel
        if not image.is_file():
            skipped.append((image, f"{where}: image not found"))
            continue
        extra = {k: v for k, v in record.items() if k not in ("image", "captions", "caption")}
        if image in by_image:
            # One image on several lines (one caption a line, as COCO-style exports write): merge.
            prior = by_image[image]
            prior.captions.extend(captions)
            for key, value in extra.items():
                prior.extra.setdefault(key, value)
        else:
            by_image[image] = CaptionedImage(image, captions, extra=extra)
    for path in list_images(folder):
        if path not in by_image:
            skipped.append((path, f"no caption file (not listed in {JSONL_NAME})"))
    return list(by_image.values()), skipped


def _index_cub(folder: Path) -> tuple[list[CaptionedImage], list[tuple[Path, str]]]:
    text_dir = folder / CUB_TEXT_DIR
    skipped: list[tuple[Path, str]] = []
    by_stem: dict[str, list[Path]] = {}
    for path in list_images(folder):
        if path.relative_to(folder).parts[0] == CUB_TEXT_DIR:
            continue
        by_stem.setdefault(path.stem, []).append(path)
    items: list[CaptionedImage] = []
    text_stems: set[str] = set()
    for txt in _caption_files(text_dir):
        label = txt.parent.name if txt.parent != text_dir else None
        text_stems.add(txt.stem)
        image, reason = _match_cub_image(folder, by_stem.get(txt.stem, []), label)
        if image is None:
            skipped.append((txt, reason))
            continue
        captions, reason = _read_captions(txt)
        if not captions:
            skipped.append((txt, reason))
            continue
        items.append(CaptionedImage(image, captions, label=label))
    for stem, paths in sorted(by_stem.items()):
        if stem not in text_stems:
            skipped.extend((path, f"no caption file ({CUB_TEXT_DIR}/*/{stem}.txt)") for path in paths)
    skipped.sort(key=lambda s: str(s[0]))
    return items, skipped


def _match_cub_image(folder: Path, candidates: list[Path], label: str | None) -> tuple[Path | None, str]:
    """The one image a text_c10 caption file belongs to, or None and why."""
    if not candidates:
        return None, "caption file without image (no image with this name)"
    if len(candidates) == 1:
        return candidates[0], ""
    in_class = [p for p in candidates if label is not None and p.parent.name == label]
    if len(in_class) == 1:
        return in_class[0], ""
    pool = in_class or candidates
    released = [p for p in pool if p.relative_to(folder).parts[0] in _RELEASE_IMAGE_DIRS]
    if len(released) == 1:
        return released[0], ""
    names = ", ".join(str(p.relative_to(folder)) for p in candidates[:3])
    more = f" and {len(candidates) - 3} more" if len(candidates) > 3 else ""
    return None, f"ambiguous: {len(candidates)} images have this name ({names}{more})"


def _index_sidecar(folder: Path) -> tuple[list[CaptionedImage], list[tuple[Path, str]]]:
    skipped: list[tuple[Path, str]] = []
    images: dict[tuple[Path, str], list[Path]] = {}
    for path in list_images(folder):
        images.setdefault((path.parent, path.stem), []).append(path)
    texts = {(txt.parent, txt.stem): txt for txt in _caption_files(folder)}
    items: list[CaptionedImage] = []
    for key, paths in images.items():
        txt = texts.get(key)
        if txt is None:
            skipped.extend((path, "no caption file") for path in paths)
            continue
        if len(paths) > 1:
            # photo.jpg and photo.png next to one photo.txt: which one the captions describe is a guess.
            names = ", ".join(p.name for p in paths)
            skipped.append((txt, f"ambiguous: {len(paths)} images share this caption file ({names})"))
            continue
        captions, reason = _read_captions(txt)
        if not captions:
            skipped.append((txt, reason))
            continue
        items.append(CaptionedImage(paths[0], captions))
    for key, txt in texts.items():
        if key not in images:
            skipped.append((txt, "caption file without image"))
    skipped.sort(key=lambda s: str(s[0]))
    return items, skipped


# --- helpers -------------------------------------------------------------------------------------


def _existing_folder(folder: str | Path) -> Path:
    return require_folder(folder, "--data", hint=LAYOUT_HINT)


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise TrainingError(f"limit must be at least 1, got {limit}")


def _caption_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".txt" and p.is_file())


def _read_captions(txt: Path) -> tuple[list[str], str]:
    """The captions of one text file (stripped, blank lines dropped), or [] and why."""
    try:
        text = txt.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        return [], "caption file is not UTF-8 text"
    except OSError as exc:
        return [], f"cannot read caption file: {exc.strerror or exc}"
    captions = _clean(text.splitlines())
    return captions, "" if captions else "no captions (empty file)"


def _json_captions(record: dict[str, Any]) -> list[Any]:
    found: list[Any] = []
    for key in ("captions", "caption"):
        value = record.get(key)
        if isinstance(value, list):
            found.extend(value)
        elif value is not None:
            found.append(value)
    return found


def _clean(captions: list[Any]) -> list[str]:
    # Non-strings (numbers, nulls in a hand-written jsonl) are dropped rather than turned into "None".
    return [c.strip() for c in captions if isinstance(c, str) and c.strip()]


def _escapes(rel: str) -> bool:
    """True for an absolute path or one that climbs out with '..' (both would read outside the set)."""
    path = PurePath(rel)
    return path.is_absolute() or rel.startswith(("/", "\\")) or ".." in path.parts


def _square(img: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> centre square on the short side, resized to (size, size, 3) uint8."""
    h, w = img.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = img[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(crop)
    # PIL widens the bicubic kernel when shrinking, so downscales are antialiased.
    return np.asarray(
        Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.Resampling.BICUBIC)
    )


def _nothing_usable(folder: Path, fmt: str, skipped: list[tuple[Path, str]]) -> TrainingError:
    shown = "; ".join(f"{_short(path, folder)}: {reason}" for path, reason in skipped[:_SHOWN_REASONS])
    more = f" (and {len(skipped) - _SHOWN_REASONS} more)" if len(skipped) > _SHOWN_REASONS else ""
    detail = f": {shown}{more}" if skipped else ""
    return TrainingError(
        f"no usable captioned images in {folder} (detected format: {fmt}; {len(skipped)} skipped){detail}",
        hint=LAYOUT_HINT,
    )


def _short(path: Path, folder: Path) -> str:
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)
