"""The shapes caption checker (text2img/checker.py) and caption consistency (text2img/evaluate.py)."""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from srgan_cli import weights
from srgan_cli.errors import UsageError, WeightsError, WeightsMismatch, WeightsNotFound
from srgan_cli.text2img import shapes
from srgan_cli.text2img.checker import (
    ShapeChecker,
    ShapeCheckerConfig,
    agreement,
    judge,
    load_checker,
    render_batch,
)
from srgan_cli.text2img.data import load_caption_set
from srgan_cli.text2img.evaluate import evaluate_generator, evaluate_real, evaluate_redrawn, held_out_pairs

from .conftest import tiny_model

# Seeds the shipped checker never saw: it trained on the stream of seed 0 and was measured on 1000.
UNSEEN_SEED = 4242


@pytest.fixture(scope="module")
def shipped() -> ShapeChecker:
    return load_checker()


def _spec(**changes: str) -> shapes.ShapeSpec:
    base = {"shape": "circle", "colour": "red", "size": "small", "position": "top", "background": "blue"}
    return shapes.ShapeSpec(**{**base, **changes})


def test_heads_have_one_logit_per_choice() -> None:
    torch.manual_seed(0)
    model = ShapeChecker(ShapeCheckerConfig(width=16))
    out = model(torch.rand(2, 3, 64, 64))
    assert list(out) == list(shapes.ATTRIBUTES)
    for attribute, logits in out.items():
        assert logits.shape == (2, len(shapes.CHOICES[attribute]))


def test_agreement_counts_attributes_match_and_all() -> None:
    specs = [_spec(), _spec(shape="cross"), _spec(colour="green"), _spec(size="large")]
    predicted = [
        asdict(_spec()),  # all right
        asdict(_spec(shape="square")),  # shape wrong: neither match nor all
        asdict(_spec(colour="green", background="black")),  # match, but the background is wrong
        asdict(_spec(size="medium")),  # match, but the size is wrong
    ]
    result = agreement(predicted, specs)
    assert result["shape"] == 0.75
    assert result["colour"] == 1.0
    assert result["size"] == 0.75
    assert result["position"] == 1.0
    assert result["background"] == 0.75
    assert result["match"] == 0.75
    assert result["all"] == 0.25
    with pytest.raises(ValueError):
        agreement(predicted[:2], specs)


def test_judge_returns_names_from_choices() -> None:
    torch.manual_seed(0)
    model = ShapeChecker(ShapeCheckerConfig(width=16))
    images = torch.rand(5, 3, 64, 64)
    readings = judge(model, images, batch_size=2)
    assert len(readings) == 5
    for reading in readings:
        assert set(reading) == set(shapes.ATTRIBUTES)
        assert all(reading[a] in shapes.CHOICES[a] for a in shapes.ATTRIBUTES)
    # uint8 images are read as the same pixels in [0, 1]
    as_uint8 = (images * 255).round().to(torch.uint8)
    assert judge(model, as_uint8) == judge(model, as_uint8.float() / 255)


def test_shipped_checker_reads_unseen_renders(shipped: ShapeChecker) -> None:
    images, specs = render_batch(200, random.Random(UNSEEN_SEED))
    result = agreement(judge(shipped, images), specs)
    assert result["all"] >= 0.97, result


def test_load_checker_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFound, match="not found"):
        load_checker(tmp_path / "missing.safetensors")
    other = weights.save(tmp_path / "sr.safetensors", tiny_model(2))
    with pytest.raises(WeightsMismatch, match="srresnet") as info:
        load_checker(other)
    assert "upscale" in (info.value.hint or "")  # the hint says what the file is for
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(WeightsError):
        load_checker(junk)


def test_load_checker_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = ShapeChecker(ShapeCheckerConfig(width=16)).eval()
    path = weights.save(tmp_path / "c.safetensors", model, trained_on="shapes")
    loaded = load_checker(path)
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(model(x)[a], loaded(x)[a]) for a in shapes.ATTRIBUTES)


def test_evaluate_generator_with_the_real_images(shipped: ShapeChecker) -> None:
    rng = random.Random(UNSEEN_SEED + 1)
    triples = [(s, shapes.caption(s, rng)) for s in (shapes.random_spec(rng) for _ in range(16))]
    specs = [s for s, _ in triples]
    captions = [c for _, c in triples]
    real = torch.from_numpy(np.stack([shapes.render(s, rng) for s in specs])).permute(0, 3, 1, 2)
    by_caption = dict(zip(captions, real, strict=True))
    calls: list[int] = []

    def generate(batch: list[str], n: int, gen: torch.Generator) -> torch.Tensor:
        calls.append(len(batch))
        # each caption's real image n times, caption-major: (len(batch) * n, 3, 64, 64) in [0, 1]
        return torch.stack([by_caption[c] for c in batch]).repeat_interleave(n, dim=0).float() / 255

    def fake_lpips(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).abs().mean(dim=(1, 2, 3))

    ceiling = evaluate_real(shipped, real, specs)
    assert ceiling.diversity_pixel is None and ceiling.samples_per_caption == 1
    report = evaluate_generator(
        "copy", generate, captions, specs, shipped, samples_per_caption=3, lpips=fake_lpips, chunk=10
    )
    assert calls == [10, 6]
    assert report.n_captions == 16 and report.samples_per_caption == 3
    assert report.diversity_pixel == 0.0
    assert report.diversity_lpips == 0.0
    assert report.match == ceiling.match
    assert report.all == ceiling.all
    assert report.accuracy == ceiling.accuracy
    assert report.to_dict()["name"] == "copy"

    def noisy(batch: list[str], n: int, gen: torch.Generator) -> torch.Tensor:
        x = generate(batch, n, gen)
        return (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1)

    varied = evaluate_generator("noisy", noisy, captions, specs, shipped, samples_per_caption=2)
    assert varied.diversity_pixel is not None and 0.03 < varied.diversity_pixel < 0.08
    assert varied.diversity_lpips is None


def test_redrawn_scenes_are_read_right_and_vary_like_the_data(shipped: ShapeChecker) -> None:
    """The renderer as a generator: the checker reads its scenes as their captions say, and two
    draws of one scene differ by the data set's jitter (not 0, far below unrelated scenes)."""
    rng = random.Random(UNSEEN_SEED + 2)
    specs = [shapes.random_spec(rng) for _ in range(12)]
    captions = [shapes.caption(s, rng) for s in specs]
    report = evaluate_redrawn(captions, specs, shipped, samples_per_caption=3, seed=4)
    assert report.match == 1.0 and report.samples_per_caption == 3
    assert report.diversity_pixel is not None and 0.02 < report.diversity_pixel < 0.2
    again = evaluate_redrawn(captions, specs, shipped, samples_per_caption=3, seed=4)
    assert again.diversity_pixel == report.diversity_pixel  # seeded


def test_held_out_pairs_on_a_shapes_folder(tmp_path: Path) -> None:
    shapes.make_shapes(tmp_path / "shapes", 12, seed=3)
    cs = load_caption_set(tmp_path / "shapes")
    captions, specs, images = held_out_pairs(cs, 12, seed=0)
    assert len(captions) == len(specs) == 12
    assert images.dtype == torch.uint8 and images.shape == (12, 3, 64, 64)
    for caption, spec in zip(captions, specs, strict=True):
        assert shapes.parse_caption(caption) == asdict(spec)
    assert held_out_pairs(cs, 12, seed=0)[0] == captions  # reproducible
    few_captions, few_specs, few_images = held_out_pairs(cs, 5, seed=1)
    assert len(few_captions) == 5 and few_images.shape[0] == 5
    for spec, image in zip(few_specs, few_images, strict=True):
        row = next(i for i, item in enumerate(cs.items) if shapes.spec_from_record(item.extra) == spec)
        assert torch.equal(cs.images[row], image)


def test_held_out_pairs_refuses_a_folder_without_attributes(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(folder / "a.png")
    (folder / "a.txt").write_text("a green square\n", encoding="utf-8")
    cs = load_caption_set(folder)
    with pytest.raises(UsageError, match="not a shapes data set.*srgan text2img make-shapes"):
        held_out_pairs(cs, 4, seed=0)
