#!/usr/bin/env python3
"""Which caption words a text-to-image model can follow: what its encoder and its D make of each
shapes attribute.

For 300 random scenes, each caption is set next to (a) a paraphrase (the same scene, another
template) and (b) the same sentence with one attribute changed (shape, colour, size, position or
background).

- encoder: the mean cosine similarity of each pair kind. A paraphrase should stay near 1 and a
  changed attribute fall well below it; an attribute whose similarity stays near the paraphrase's
  is barely encoded, and G cannot follow a word its embedding does not carry.
- D (a run folder, `--run`): the mean of D(x, caption) - D(x, changed caption) on the scenes'
  rendered images x, in logits. It is how much the discriminator cares that the caption names this
  image's attribute; G is pushed to draw an attribute only as hard as D checks it.

  python scripts/probe_text2img.py weights/text2img_shapes.safetensors
  python scripts/probe_text2img.py runs/t2i/text_encoder.safetensors          (a run's encoder)
  python scripts/probe_text2img.py --run runs/t2i                              (encoder and D)
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from srgan_cli.text2img import shapes
from srgan_cli.text2img.captions import ENCODER_FILE, load_text_encoder
from srgan_cli.text2img.encoders import BuiltinTextEncoder
from srgan_cli.text2img.models import Text2ImgConfig, models
from srgan_cli.text2img.sample import load_text2img
from srgan_cli.text2img.train import CHECKPOINT, read_run_config
from srgan_cli.training import load_checkpoint


def load(path: str) -> BuiltinTextEncoder:
    if Path(path).name == ENCODER_FILE:
        return load_text_encoder(Path(path))
    model, _ = load_text2img(path)
    if model.encoder is None:
        raise SystemExit(f"{path} uses MiniLM, not the builtin encoder")
    return model.encoder


Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (embeddings, images) -> (N,)


def probe(
    encoder: BuiltinTextEncoder, n: int = 300, seed: int = 5, d_score: Score | None = None
) -> dict[str, dict[str, float]]:
    """{"encoder": {pair kind: mean cosine}} and, with `d_score`, {"D": {attribute: mean score gap}}."""
    rng = random.Random(seed)
    specs = [shapes.random_spec(rng) for _ in range(n)]
    templates = [rng.randrange(len(shapes._TEMPLATES)) for _ in range(n)]
    draw = random.Random(seed + 1)
    images = torch.from_numpy(np.stack([shapes.render(s, draw) for s in specs])).permute(0, 3, 1, 2)

    def captions(scenes: list[shapes.ShapeSpec], shift: int = 0, salt: int = 0) -> list[str]:
        return [
            shapes.caption(s, random.Random(i + salt), template=(t + shift) % len(shapes._TEMPLATES))
            for i, (s, t) in enumerate(zip(scenes, templates, strict=True))
        ]

    base = encoder.encode(captions(specs))
    cosine = {"paraphrase": float((base * encoder.encode(captions(specs, 1, 999))).sum(1).mean())}
    gap: dict[str, float] = {}
    for attribute in shapes.ATTRIBUTES:
        changed = []
        for s in specs:
            taken = {getattr(s, attribute)}
            if attribute in ("colour", "background"):  # the two colours always differ
                taken.add(s.background if attribute == "colour" else s.colour)
            value = rng.choice([v for v in shapes.CHOICES[attribute] if v not in taken])
            changed.append(replace(s, **{attribute: value}))
        other = encoder.encode(captions(changed))
        cosine[attribute] = float((base * other).sum(1).mean())
        if d_score is not None:
            gap[attribute] = float((d_score(base, images) - d_score(other, images)).mean())
    return {"encoder": cosine, **({"D": gap} if d_score is not None else {})}


def run_discriminator(run: Path) -> tuple[BuiltinTextEncoder, Score]:
    """A run folder's encoder, and its D (from checkpoint.pt) as a score function."""
    config = read_run_config(run)
    if config is None:
        raise SystemExit(f"{run} holds no text-to-image run (run.json)")
    state = load_checkpoint(run / CHECKPOINT)
    model_config = Text2ImgConfig(**state["model"])
    _, d = models(model_config, config.spectral_norm, config.d_condition)
    d.load_state_dict(state["D"])
    d.eval()

    @torch.no_grad()
    def score(h: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div(127.5).sub(1)
        return torch.cat([d(x[i : i + 100], h[i : i + 100]) for i in range(0, len(h), 100)]).flatten()

    return load_text_encoder(run / ENCODER_FILE), score


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", nargs="*", help="text-to-image weights or a run's text_encoder.safetensors")
    parser.add_argument("--run", action="append", default=[], help="a run folder: its encoder and D")
    args = parser.parse_args()
    if not args.model and not args.run:
        parser.error("give weights, an encoder file or --run DIR")
    for path in args.model:
        report(path, probe(load(path)))
    for run in args.run:
        encoder, score = run_discriminator(Path(run))
        report(run, probe(encoder, d_score=score))


def report(name: str, result: dict[str, dict[str, float]]) -> None:
    print(
        json.dumps(
            {"model": name, **{k: {a: round(v, 3) for a, v in part.items()} for k, part in result.items()}}
        )
    )


if __name__ == "__main__":
    main()
