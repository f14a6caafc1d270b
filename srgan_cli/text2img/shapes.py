"""A procedural captioned data set: coloured shapes on coloured backgrounds, with templated captions.

Every image is drawn from five attributes (shape, colour, size, position on a 3x3 grid, background
colour), and several differently worded captions are written for it. Because the attributes are
known, a generated image can be checked against its caption automatically (text2img/checker.py), so
text-to-image can be trained, tested and measured with no download.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..atomic import atomic_open
from ..errors import UsageError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "yellow": (240, 210, 30),
    "purple": (140, 60, 190),
    "orange": (250, 135, 20),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ("small", "medium", "large")
# Rows top to bottom, columns left to right; the centre cell is just "centre".
POSITIONS = (
    "top left",
    "top",
    "top right",
    "left",
    "centre",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
ATTRIBUTES = ("shape", "colour", "size", "position", "background")
CHOICES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "size": SIZES,
    "position": POSITIONS,
    "background": tuple(COLOURS),
}

# Extent of the shape's bounding box in pixels at 64x64, before a +-8% jitter.
_EXTENT = {"small": 14.0, "medium": 22.0, "large": 32.0}
_SUPERSAMPLE = 4  # drawn at 4x and box-filtered down: anti-aliased edges

# Caption vocabulary: several words per attribute value, so the text encoder has to learn that
# "big" and "large" mean the same thing.
_SIZE_WORDS = {
    "small": ("small", "little", "tiny"),
    "medium": ("medium", "medium-sized", "mid-sized"),
    "large": ("large", "big", "huge"),
}
_SHAPE_WORDS = {
    "circle": ("circle", "disc", "round dot"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "cross": ("cross", "plus sign"),
}
_POSITION_PHRASES = {
    "top left": ("at the top left", "in the top left corner", "in the upper left", "top-left"),
    "top": ("at the top", "near the top", "at the top in the middle", "top-centre"),
    "top right": ("at the top right", "in the top right corner", "in the upper right", "top-right"),
    "left": ("on the left", "at the left side", "on the left in the middle", "middle-left"),
    "centre": ("in the centre", "in the center", "in the middle", "centred"),
    "right": ("on the right", "at the right side", "on the right in the middle", "middle-right"),
    "bottom left": ("at the bottom left", "in the bottom left corner", "in the lower left", "bottom-left"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom in the middle", "bottom-centre"),
    "bottom right": (
        "at the bottom right",
        "in the bottom right corner",
        "in the lower right",
        "bottom-right",
    ),
}
_TEMPLATES = (
    "a {size} {colour} {shape} {pos} on a {bg} background",
    "{pos_start} there is a {size} {colour} {shape}; the background is {bg}",
    "a {bg} background with a {size} {colour} {shape} {pos}",
    "{size} {colour} {shape}, {pos}, {bg} background",
    "a {colour} {shape}, {size}, {pos} against a {bg} background",
    "the picture shows a {size} {shape} in {colour} {pos} on {bg}",
)


@dataclass(frozen=True)
class ShapeSpec:
    """What one image shows; the names are the values of CHOICES."""

    shape: str
    colour: str
    size: str
    position: str
    background: str

    def label(self, attribute: str) -> int:
        """Index of this spec's value in CHOICES[attribute] (the checker's class)."""
        return CHOICES[attribute].index(getattr(self, attribute))


def random_spec(rng: random.Random) -> ShapeSpec:
    """Uniform over every attribute; the background always differs from the shape's colour."""
    colour = rng.choice(CHOICES["colour"])
    background = rng.choice([c for c in CHOICES["background"] if c != colour])
    return ShapeSpec(
        shape=rng.choice(SHAPES),
        colour=colour,
        size=rng.choice(SIZES),
        position=rng.choice(POSITIONS),
        background=background,
    )


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(spec: ShapeSpec, rng: random.Random, template: int | None = None) -> str:
    """One caption for `spec`, worded by a random (or the given) template and synonyms."""
    pos = rng.choice(_POSITION_PHRASES[spec.position])
    pos_start = rng.choice(
        [p for p in _POSITION_PHRASES[spec.position] if p.split()[0] in ("at", "in", "on")]
    )
    text = _TEMPLATES[rng.randrange(len(_TEMPLATES)) if template is None else template].format(
        size=rng.choice(_SIZE_WORDS[spec.size]),
        colour=spec.colour,
        shape=rng.choice(_SHAPE_WORDS[spec.shape]),
        pos=pos,
        pos_start=pos_start,
        bg=spec.background,
    )
    # "a orange" -> "an orange", "a 'early'"-style fixes for every "a" before a vowel.
    words = text.split(" ")
    for i in range(len(words) - 1):
        if words[i] == "a":
            words[i] = _article(words[i + 1])
    return " ".join(words)


def captions(spec: ShapeSpec, rng: random.Random, n: int = 5) -> list[str]:
    """`n` captions for one image, each from a different template while there are enough."""
    order = rng.sample(range(len(_TEMPLATES)), len(_TEMPLATES))
    return [caption(spec, rng, order[i % len(order)]) for i in range(n)]


def parse_caption(text: str) -> dict[str, str]:
    """The attributes a caption names (those it does not name are left out). Understands every
    wording `caption` writes; used to check user captions against the shapes vocabulary."""
    t = " " + text.lower().replace(",", " ").replace(";", " ").replace(".", " ") + " "
    found: dict[str, str] = {}
    # Background first ("<c> background", "background is <c>", a final "on <c>"); that phrase is
    # then cut out so the shape's colour is the first colour word left.
    for name in COLOURS:
        for phrase in (f" {name} background ", f" background is {name} ", f" on {name} "):
            if phrase in t and (not phrase.startswith(" on ") or t.endswith(phrase)):
                found["background"] = name
                t = t.replace(phrase, " ")
                break
    hits = [(t.find(f" {name} "), name) for name in COLOURS if f" {name} " in t]
    if hits:
        found["colour"] = min(hits)[1]
    for shape, words in _SHAPE_WORDS.items():
        if any(f" {w} " in t for w in words):
            found["shape"] = shape
    for size, words in _SIZE_WORDS.items():
        if any(f" {w} " in t for w in words):
            found["size"] = size
    # Longest phrases first so "top left" is not read as "top".
    phrases = sorted(
        ((p, name) for name, ps in _POSITION_PHRASES.items() for p in ps), key=lambda x: -len(x[0])
    )
    for phrase, name in phrases:
        if f" {phrase} " in t:
            found["position"] = name
            break
    return found


def _centre(spec: ShapeSpec, extent: float, size: int, rng: random.Random) -> tuple[float, float]:
    """Centre of the shape: the near edge, the middle or the far edge of the canvas on each axis
    (keeping the whole shape inside), with +-2 px of jitter."""
    row, col = divmod(POSITIONS.index(spec.position), 3)
    lo, hi = extent / 2 + 2, size - extent / 2 - 2
    spots = (lo, size / 2, hi)
    jitter = size / 32
    return spots[col] + rng.uniform(-jitter, jitter), spots[row] + rng.uniform(-jitter, jitter)


def _vary(rgb: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + rng.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]


def render(spec: ShapeSpec, rng: random.Random, size: int = 64) -> np.ndarray:
    """(size, size, 3) uint8 image of `spec`. Colours, extent and position vary a little."""
    s = _SUPERSAMPLE
    big = size * s
    img = Image.new("RGB", (big, big), _vary(COLOURS[spec.background], rng, 12))
    draw = ImageDraw.Draw(img)
    extent = _EXTENT[spec.size] * size / 64 * rng.uniform(0.92, 1.08)
    cx, cy = _centre(spec, extent, size, rng)
    cx, cy, r = cx * s, cy * s, extent * s / 2
    fill = _vary(COLOURS[spec.colour], rng, 12)
    if spec.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif spec.shape == "square":
        q = r * 0.88  # a square of the same extent looks bigger than the circle; even them out
        draw.rectangle((cx - q, cy - q, cx + q, cy + q), fill=fill)
    elif spec.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif spec.shape == "cross":
        w = r / 3
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    else:
        raise UsageError(f"unknown shape {spec.shape!r}; shapes are {', '.join(SHAPES)}")
    return np.asarray(img.resize((size, size), Image.Resampling.BOX))


def samples(
    n: int, seed: int, size: int = 64, n_captions: int = 5
) -> Iterator[tuple[ShapeSpec, np.ndarray, list[str]]]:
    """`n` (spec, image, captions) triples, reproducible from `seed`."""
    rng = random.Random(seed)
    for _ in range(n):
        spec = random_spec(rng)
        yield spec, render(spec, rng, size), captions(spec, rng, n_captions)


def make_shapes(
    out: str | Path,
    n: int,
    *,
    seed: int = 0,
    size: int = 64,
    n_captions: int = 5,
    overwrite: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write `n` images to OUT/images/ and OUT/captions.jsonl (image, captions, attributes).

    The jsonl is written last, through a temporary file, so a folder with a captions.jsonl is a
    complete data set. An existing data set is refused unless `overwrite`."""
    out = Path(out)
    if n < 1:
        raise UsageError(f"--n must be at least 1 (got {n})")
    index = out / "captions.jsonl"
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out} exists and is not empty", hint="pass --overwrite to replace the data set")
    (out / "images").mkdir(parents=True, exist_ok=True)
    width = len(str(n - 1))
    records = []
    for i, (spec, img, caps) in enumerate(samples(n, seed, size, n_captions)):
        name = f"images/shape_{i:0{width}d}.png"
        Image.fromarray(img).save(out / name, optimize=False, compress_level=1)
        records.append({"image": name, "captions": caps, "attributes": asdict(spec)})
        if on_progress is not None:
            on_progress(i + 1, n)
    with atomic_open(index) as f:  # the index last, and whole: it is what marks the data set done
        f.write("".join(json.dumps(rec) + "\n" for rec in records).encode("utf-8"))
    meta = {"generator": "srgan text2img make-shapes", "n": n, "seed": seed, "size": size, "choices": CHOICES}
    (out / "README.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return index


def spec_from_record(extra: dict) -> ShapeSpec | None:
    """The ShapeSpec stored in a captions.jsonl record's "attributes", or None if it has none."""
    attrs = extra.get("attributes")
    if not isinstance(attrs, dict) or any(attrs.get(a) not in CHOICES[a] for a in ATTRIBUTES):
        return None
    return ShapeSpec(**{a: attrs[a] for a in ATTRIBUTES})
