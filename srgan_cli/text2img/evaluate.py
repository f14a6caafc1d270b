"""Caption consistency (does the image show what the caption says?) and diversity of a text-to-image model.

Consistency is read by the shapes checker (text2img/checker.py): the fraction of generated images
whose shape, colour and position all match the caption ("match"), per attribute, and with all five
right ("all"). Diversity is the mean pairwise distance between the samples drawn for one caption
(pixel RMS, and LPIPS when an LPIPS network is given): a collapsed generator scores 0. The functions
here know nothing about text encoders or models; the caller passes a `generate` callable.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import UsageError
from .checker import ShapeChecker, agreement, judge
from .data import CaptionSet
from .shapes import ATTRIBUTES, ShapeSpec, render, spec_from_record

# generate(captions, n, gen) -> (len(captions) * n, 3, 64, 64) in [0, 1], caption-major
Generate = Callable[[list[str], int, torch.Generator], torch.Tensor]
# an LPIPS network (srgan_cli.metrics.lpips.LPIPS): (a, b) both (P, 3, H, W) in [0, 1] -> (P,) distances
Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class ConsistencyReport:
    name: str
    n_captions: int
    samples_per_caption: int
    accuracy: dict[str, float] = field(default_factory=dict)  # per attribute, in ATTRIBUTES order
    match: float = 0.0  # colour, shape and position all right
    all: float = 0.0  # all five attributes right
    # mean pairwise RMS distance in [0, 1] between samples of one caption; None for real images
    # (one image per caption) and when fewer than 2 samples were drawn
    diversity_pixel: float | None = None
    diversity_lpips: float | None = None  # the same with LPIPS; None when no LPIPS network was given

    def to_dict(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 5)

        return {
            "name": self.name,
            "n_captions": self.n_captions,
            "samples_per_caption": self.samples_per_caption,
            "accuracy": {a: r(v) for a, v in self.accuracy.items()},
            "match": r(self.match),
            "all": r(self.all),
            "diversity_pixel": r(self.diversity_pixel),
            "diversity_lpips": r(self.diversity_lpips),
        }


def _report(name: str, scores: dict[str, float], n_captions: int, per_caption: int) -> ConsistencyReport:
    return ConsistencyReport(
        name=name,
        n_captions=n_captions,
        samples_per_caption=per_caption,
        accuracy={a: scores[a] for a in ATTRIBUTES},
        match=scores["match"],
        all=scores["all"],
    )


def evaluate_real(
    checker: ShapeChecker, images: torch.Tensor, specs: list[ShapeSpec], name: str = "real"
) -> ConsistencyReport:
    """The checker on the real images (uint8 (N, 3, 64, 64)) of the held-out captions: the ceiling a
    generator can reach. Diversity is left None: each caption has one real image, and distances
    between images of different captions say nothing about a model's variety."""
    if images.shape[0] != len(specs):
        raise ValueError(f"{images.shape[0]} images for {len(specs)} specs")
    return _report(name, agreement(judge(checker, images), specs), len(specs), 1)


def _pairs(n: int) -> tuple[list[int], list[int]]:
    """Index lists (i, j) of every pair i < j among n samples."""
    pairs = list(itertools.combinations(range(n), 2))
    return [i for i, _ in pairs], [j for _, j in pairs]


def _device_of(module: object) -> torch.device:
    try:
        return next(module.parameters()).device  # type: ignore[attr-defined]
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def evaluate_generator(
    name: str,
    generate: Generate,
    captions: list[str],
    specs: list[ShapeSpec],
    checker: ShapeChecker,
    samples_per_caption: int = 4,
    seed: int = 0,
    lpips: Distance | None = None,
    *,
    chunk: int = 64,
) -> ConsistencyReport:
    """Draw `samples_per_caption` images per caption with `generate` (seeded by a torch.Generator
    from `seed`), read them with the checker against the caption's spec, and measure diversity.

    `generate` is called with at most `chunk` captions at a time and must return (len * n, 3, 64, 64)
    in [0, 1] grouped caption-major (caption 0's n samples first). Diversity is the mean over
    captions of the mean pairwise distance between that caption's samples; with `lpips` (e.g.
    `srgan_cli.metrics.lpips.load_lpips(...)`) the same is also computed with LPIPS."""
    if len(captions) != len(specs):
        raise ValueError(f"{len(captions)} captions for {len(specs)} specs")
    if not captions:
        raise ValueError("evaluate_generator needs at least one caption")
    n = samples_per_caption
    if n < 1:
        raise ValueError(f"samples_per_caption must be at least 1, got {n}")
    gen = torch.Generator().manual_seed(seed)
    predicted: list[dict[str, str]] = []
    pixel: list[float] = []  # one mean pairwise distance per caption
    perceptual: list[float] = []
    left, right = _pairs(n)
    lpips_device = _device_of(lpips)
    for start in range(0, len(captions), chunk):
        part = captions[start : start + chunk]
        images = generate(part, n, gen)
        expected = (len(part) * n, 3, 64, 64)
        if tuple(images.shape) != expected:
            raise ValueError(f"generate returned {tuple(images.shape)}, expected {expected}")
        predicted.extend(judge(checker, images))
        if n < 2:
            continue
        with torch.no_grad():
            groups = images.detach().float().cpu().view(len(part), n, 3, 64, 64)  # caption-major
            a, b = groups[:, left], groups[:, right]  # (C, P, 3, 64, 64), P = n(n-1)/2 pairs
            rms = (a - b).pow(2).mean(dim=(2, 3, 4)).sqrt()  # (C, P)
            pixel.extend(rms.mean(dim=1).tolist())
            if lpips is not None:
                flat_a = a.reshape(-1, 3, 64, 64).to(lpips_device)
                flat_b = b.reshape(-1, 3, 64, 64).to(lpips_device)
                d = lpips(flat_a, flat_b).float().cpu().view(len(part), -1)  # (C, P)
                perceptual.extend(d.mean(dim=1).tolist())
    repeated = [spec for spec in specs for _ in range(n)]  # caption-major, as the images
    report = _report(name, agreement(predicted, repeated), len(captions), n)
    report.diversity_pixel = math.fsum(pixel) / len(pixel) if pixel else None
    report.diversity_lpips = math.fsum(perceptual) / len(perceptual) if perceptual else None
    return report


def evaluate_redrawn(
    captions: list[str],
    specs: list[ShapeSpec],
    checker: ShapeChecker,
    samples_per_caption: int = 4,
    seed: int = 0,
    lpips: Distance | None = None,
    name: str = "real, re-drawn",
) -> ConsistencyReport:
    """The renderer as a "generator": each caption's scene drawn `samples_per_caption` times with
    fresh jitter (colour, size and place vary a little, as in the data set). Its diversity is what a
    generator that has learnt the data's own variation would score, the reference for a model's."""
    by_caption = dict(zip(captions, specs, strict=True))  # a shapes caption names all 5 attributes

    def draw(part: list[str], n: int, gen: torch.Generator) -> torch.Tensor:
        rng = random.Random(int(torch.randint(2**31, (1,), generator=gen)))
        pictures = np.stack([render(by_caption[c], rng) for c in part for _ in range(n)])
        return torch.from_numpy(pictures).permute(0, 3, 1, 2).float().div_(255)

    return evaluate_generator(name, draw, captions, specs, checker, samples_per_caption, seed, lpips)


def held_out_pairs(
    caption_set: CaptionSet, n: int, seed: int
) -> tuple[list[str], list[ShapeSpec], torch.Tensor]:
    """`n` records of a shapes CaptionSet (all of them if it has fewer), chosen with `seed`, each with
    one of its captions picked at random: (captions, specs, real images uint8 (n, 3, size, size)).

    Raises UsageError when the set has no shape attributes (not made by `make-shapes`)."""
    if n < 1:
        raise UsageError(f"the number of held-out captions must be at least 1 (got {n})")
    usable = [(i, spec) for i, item in enumerate(caption_set.items) if (spec := spec_from_record(item.extra))]
    if not usable:
        raise UsageError(
            f"not a shapes data set: no record of {caption_set.format} folder carries shape attributes; "
            "make one with `srgan text2img make-shapes`"
        )
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(len(usable)), min(n, len(usable))))
    captions = [rng.choice(caption_set.captions[usable[k][0]]) for k in chosen]
    specs = [usable[k][1] for k in chosen]
    images = caption_set.images[[usable[k][0] for k in chosen]]
    return captions, specs, images
