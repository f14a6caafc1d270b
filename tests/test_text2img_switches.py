"""Text-to-image switches beyond the paper: projection D, hinge loss, conditioning augmentation and
hard-negative pre-training of the builtin encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from srgan_cli import weights
from srgan_cli.errors import TrainingError
from srgan_cli.text2img import shapes
from srgan_cli.text2img.captions import CaptionEmbeddings
from srgan_cli.text2img.encoders import EncoderTrainConfig, ImageEncoder, hard_batch
from srgan_cli.text2img.models import Text2ImgConfig, models
from srgan_cli.text2img.sample import TextToImage, load_text2img
from srgan_cli.text2img.train import train_text2img
from srgan_cli.text2img.trainer import (
    MODE_SEEKING_EPS,
    Text2ImgTrainConfig,
    Text2ImgTrainer,
    image_edges,
    image_outline,
    image_structure,
)

from .test_text2img import _config

TINY = {"ngf": 8, "ndf": 8, "z_dim": 8, "proj_dim": 8}


class _Zero(torch.nn.Module):
    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros(t.shape[0], 8 * 8 * 16)


def test_projection_discriminator_scores_image_and_text_together() -> None:
    torch.manual_seed(0)
    config = Text2ImgConfig(encoder="minilm", embed_dim=12, **TINY)
    _, d = models(config, spectral=True, condition="projection")
    d.eval()  # no power iteration between calls
    x, h = torch.rand(3, 3, 64, 64) * 2 - 1, F.normalize(torch.randn(3, 12), dim=1)
    s = d(x, h)
    assert s.shape == (3, 1)
    assert not torch.allclose(s, d(x, h.flip(0)))  # the text changes the score
    # the score is the image term plus a text-image inner product: with the text map zeroed, the
    # text no longer matters
    assert d.embed is not None
    d.embed = _Zero()
    assert torch.allclose(d(x, h), d(x, h.flip(0)))
    with pytest.raises(ValueError, match="condition"):
        models(config, condition="sum")


def test_conditioning_augmentation_samples_the_text_code_from_the_noise() -> None:
    torch.manual_seed(0)
    plain = Text2ImgConfig(encoder="minilm", embed_dim=12, **TINY)
    assert plain.noise_dim == 8 and models(plain)[0].kl is None
    config = Text2ImgConfig(encoder="minilm", embed_dim=12, ca=True, **TINY)
    assert config.noise_dim == 8 + 8  # z, then the code's eps
    g = models(config)[0].eval()
    h = F.normalize(torch.randn(2, 12), dim=1)
    noise = torch.randn(2, config.noise_dim)
    assert torch.equal(g(noise, h), g(noise, h))  # one noise vector, one image
    kl = g.kl
    assert kl is not None and float(kl.detach()) > 0
    other_eps = noise.clone()
    other_eps[:, 8:] = torch.randn(2, 8)
    assert not torch.allclose(g(noise, h), g(other_eps, h))  # eps moves the text code


def _one_step_each(
    model_config: Text2ImgConfig, configs: list[Text2ImgTrainConfig], image: ImageEncoder | None = None
) -> tuple[list[dict[str, torch.Tensor]], dict, dict, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training step per config, every trainer from the same G and D and the same noise:
    (stats of each, G's and D's starting states, x, h, h_wrong)."""
    dim = model_config.embed_dim
    trainers = [Text2ImgTrainer(model_config, c, torch.device("cpu"), image) for c in configs]
    g0 = {k: v.clone() for k, v in trainers[0].g.state_dict().items()}
    d0 = {k: v.clone() for k, v in trainers[0].d.state_dict().items()}
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    h, h_wrong = F.normalize(torch.randn(4, dim), dim=1), F.normalize(torch.randn(4, dim), dim=1)
    stats = []
    for trainer in trainers:
        trainer.g.load_state_dict(g0)
        trainer.d.load_state_dict(d0)
        torch.manual_seed(7)
        stats.append(trainer.step(x, h, h_wrong))
    return stats, g0, d0, x, h, h_wrong


def test_hinge_step_with_projection_and_augmentation_computes_its_losses() -> None:
    """loss_D is the hinge form of GAN-CLS, recomputed by hand; loss_G adds ca_kl * KL."""
    torch.manual_seed(0)
    model_config = Text2ImgConfig(encoder="minilm", embed_dim=12, ca=True, **TINY)
    train = Text2ImgTrainConfig(loss="hinge", d_condition="projection", ca=True, ca_kl=2.0, interpolate=False)
    no_kl = Text2ImgTrainConfig(**{**train.to_dict(), "ca_kl": 0.0})
    (stats, other), g0, d0, x, h, h_wrong = _one_step_each(model_config, [train, no_kl])
    assert "KL" in stats and float(stats["KL"]) > 0

    g, d = models(model_config, True, "projection")
    g.load_state_dict(g0)
    d.load_state_dict(d0)
    torch.manual_seed(7)
    fake = g(torch.randn(4, model_config.noise_dim), h)
    kl = g.kl
    assert kl is not None
    real_term = F.relu(1 - d(x, h)).mean()  # D's calls in the trainer's order (spectral norm
    fake_term = F.relu(1 + d(fake, h)).mean()  # iterates once per call)
    expected_d = real_term + 0.5 * (F.relu(1 + d(x, h_wrong)).mean() + fake_term)
    assert torch.allclose(stats["loss_D"], expected_d, atol=1e-5)
    assert torch.allclose(stats["KL"], kl, atol=1e-6)
    # without the KL weight, D's step is the same and G's loss differs by 2 * KL
    assert torch.allclose(other["loss_D"], stats["loss_D"], atol=1e-6)
    assert torch.allclose(stats["loss_G"] - other["loss_G"], 2.0 * kl, atol=1e-5)


def test_matching_term_adds_the_weighted_caption_matching_loss_of_the_fakes() -> None:
    torch.manual_seed(0)
    model_config = Text2ImgConfig(encoder="minilm", embed_dim=16, **TINY)
    image = ImageEncoder(16, width=4)
    base = Text2ImgTrainConfig(match_weight=0.5, interpolate=False)
    with pytest.raises(TrainingError, match="image encoder"):
        Text2ImgTrainer(model_config, base, torch.device("cpu"))
    plain = Text2ImgTrainConfig(interpolate=False)
    (stats, other), *_ = _one_step_each(model_config, [base, plain], image)
    assert not any(p.requires_grad for p in image.parameters())  # frozen
    assert "match" in stats and "match" not in other
    assert float(stats["match"]) > 0
    assert torch.allclose(stats["loss_G"] - other["loss_G"], 0.5 * stats["match"], atol=1e-5)


@pytest.mark.parametrize("distance", ["pixels", "structure", "outline"])
def test_mode_seeking_adds_one_over_the_distance_ratio_of_two_draws_per_caption(distance: str) -> None:
    """The MS term, recomputed by hand: half the captions get a second draw from other noise; loss_G
    grows by w / (mean |f(G(z1, h)) - f(G(z2, h))| / mean |z1 - z2| + eps), with f the images
    themselves, their block-averaged neighbour differences, or those at a fixed edge strength; D's
    step is untouched."""
    torch.manual_seed(0)
    model_config = Text2ImgConfig(encoder="minilm", embed_dim=12, **TINY)
    seeking = Text2ImgTrainConfig(mode_seeking=0.5, mode_seeking_distance=distance, interpolate=False)
    plain = Text2ImgTrainConfig(interpolate=False)
    (stats, other), g0, _, _, h, _ = _one_step_each(model_config, [seeking, plain])
    assert "MS" in stats and "MS" not in other
    assert torch.allclose(stats["loss_D"], other["loss_D"], atol=1e-6)
    assert torch.allclose(
        stats["loss_G"] - other["loss_G"], 0.5 / (stats["MS"] + MODE_SEEKING_EPS), atol=1e-4
    )

    g = models(model_config)[0]
    g.load_state_dict(g0)
    torch.manual_seed(7)
    z = torch.randn(4, model_config.noise_dim)
    fake = g(z, h)
    z2 = torch.randn(2, model_config.noise_dim)
    first, second = fake[:2], g(z2, h[:2])
    seen = {"pixels": lambda x: x, "structure": image_structure, "outline": image_outline}[distance]
    first, second = seen(first), seen(second)
    ratio = (first - second).abs().mean() / (z[:2] - z2).abs().mean()
    assert torch.allclose(stats["MS"], ratio.detach(), atol=1e-5)


def test_ema_averages_g_without_changing_its_training() -> None:
    """With --ema, G and D take exactly the steps they take without it; the average moves towards G
    with the warmed-up decay (first update: 1/10 of the old average stays) and measures its own batch
    norm statistics; it is checkpointed, and a checkpoint from before it starts it at G."""
    torch.manual_seed(0)
    model_config = Text2ImgConfig(encoder="minilm", embed_dim=12, **TINY)
    averaged, plain = Text2ImgTrainConfig(ema=0.99), Text2ImgTrainConfig()
    trainers = [Text2ImgTrainer(model_config, c, torch.device("cpu")) for c in (averaged, plain)]
    g0 = {k: v.clone() for k, v in trainers[0].g.state_dict().items()}
    trainers[1].g.load_state_dict(g0)
    trainers[1].d.load_state_dict(trainers[0].d.state_dict())
    assert trainers[0].ema is not None and trainers[1].ema is None
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    h, h_wrong = F.normalize(torch.randn(4, 12), dim=1), F.normalize(torch.randn(4, 12), dim=1)
    for trainer in trainers:
        torch.manual_seed(7)
        trainer.step(x, h, h_wrong)
    ema, g = trainers[0].ema.state_dict(), trainers[0].g.state_dict()
    assert all(torch.equal(v, trainers[1].g.state_dict()[k]) for k, v in g.items())
    weight = "net.0.weight"
    assert torch.allclose(ema[weight], torch.lerp(g0[weight], g[weight], 0.9), atol=1e-7)
    assert not torch.equal(ema[weight], g[weight])
    assert not torch.allclose(ema["net.1.running_mean"], g["net.1.running_mean"])
    assert trainers[0].generator is trainers[0].ema and trainers[1].generator is trainers[1].g

    state = trainers[0].state_dict()
    assert state["ema_updates"] == 1
    again = Text2ImgTrainer(model_config, averaged, torch.device("cpu"))
    again.load_state_dict(state)
    assert again.ema is not None and again.ema_updates == 1
    assert all(torch.equal(v, ema[k]) for k, v in again.ema.state_dict().items())
    later = Text2ImgTrainer(model_config, averaged, torch.device("cpu"))
    later.load_state_dict(trainers[1].state_dict())  # switched on at --resume
    assert later.ema is not None and later.ema_updates == 0
    assert all(torch.equal(v, trainers[1].g.state_dict()[k]) for k, v in later.ema.state_dict().items())


def test_structure_weighs_a_moved_shape_over_a_background_shade_or_a_fine_texture() -> None:
    """The structure distance: a square on a background; the same with another background shade or a
    checkerboard over the background; the square moved. In pixels the shade is the larger change;
    in structure only the shape's outline sees the shade or the texture, and the move counts most.
    A flat shift or a checkerboard over the whole image is invisible."""
    image = torch.zeros(1, 3, 16, 16)
    image[..., 4:8, 4:8] = 1.0
    background = image == 0
    checker = (torch.arange(16).view(16, 1) + torch.arange(16)).remainder(2)
    shaded = image + 0.3 * background
    checkered = image + 0.2 * background * checker
    moved = torch.roll(image, 4, dims=3)
    assert image_edges(image).shape == (1, 3 * (16 * 15 + 15 * 16))  # every neighbour pair
    assert image_structure(image, block=4).shape == (1, 3 * (4 * 3 + 3 * 4))

    def distance(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((image_structure(a, block=4) - image_structure(b, block=4)).abs().mean())

    assert (image - shaded).abs().mean() > 2 * (image - moved).abs().mean()  # pixels: the shade
    assert (image_edges(image) - image_edges(checkered)).abs().mean() > 0.1  # full-resolution edges
    assert distance(image, moved) > 0.3
    assert distance(image, shaded) < 0.2 * distance(image, moved)
    assert distance(image, checkered) < 0.1 * distance(image, moved)
    assert distance(image, image + 0.5) == 0.0
    assert distance(image, image + 0.2 * checker) == pytest.approx(0.0, abs=1e-6)


def test_outline_sees_where_the_shape_is_and_not_its_colours() -> None:
    """The outline distance: a square recoloured, on another background shade, or under a
    checkerboard is (almost) the same outline; the square moved or made larger is not."""
    image = torch.full((1, 3, 16, 16), -1.0)
    image[..., 4:8, 4:8] = 1.0
    background = image == -1
    checker = (torch.arange(16).view(16, 1) + torch.arange(16)).remainder(2)
    recoloured = torch.where(background, image, torch.tensor([0.2, -0.5, 0.8]).view(1, 3, 1, 1))
    shaded = image + 0.6 * background
    checkered = image + 0.2 * background * checker
    moved = torch.roll(image, 4, dims=3)
    larger = image.clone()
    larger[..., 4:12, 4:12] = 1.0

    def distance(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((image_outline(a, block=4) - image_outline(b, block=4)).abs().mean())

    assert image_outline(image, block=4).shape == (1, 3 * (4 * 3 + 3 * 4))
    change = min(distance(image, moved), distance(image, larger))
    assert change > 1.0
    for same in (recoloured, shaded, checkered):
        assert distance(image, same) < 0.05 * change

    # the structure distance, by contrast, sees the new colours: against the move, ten times as much
    def structure(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((image_structure(a, block=4) - image_structure(b, block=4)).abs().mean())

    outline_share = distance(image, recoloured) / distance(image, moved)
    assert structure(image, recoloured) / structure(image, moved) > 10 * outline_share


def test_hard_wrong_neighbours_are_near_in_meaning_but_never_the_same() -> None:
    """Six images with two captions each: 0 and 1 say the same (cosine 1), 2 is a little off, 3..5
    far away. Image 0's nearest neither is itself nor 1 (same meaning) but 2."""
    base = F.normalize(torch.randn(6, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    base[1] = base[0]
    base[2] = F.normalize(base[0] + 0.6 * base[3], dim=0)  # cosine with 0 about 0.85
    vectors = base.repeat_interleave(2, dim=0)
    emb = CaptionEmbeddings(vectors, torch.arange(0, 12, 2), torch.full((6,), 2))
    near = emb.neighbours(k=2)
    assert near.shape == (6, 2)
    assert int(near[0, 0]) == 2 and 0 not in near[0].tolist() and 1 not in near[0].tolist()
    assert all(i not in near[i].tolist() for i in range(6))
    tiny = CaptionEmbeddings(vectors[:4], torch.tensor([0, 2]), torch.tensor([2, 2]))  # 0 and 1 alike
    assert tiny.neighbours(k=5).tolist() == [[1], [0]]  # no qualified neighbour: a random other


def test_hard_batches_are_groups_of_look_alikes_without_repeats() -> None:
    """Eight well-separated clusters of 50 embeddings: every group is drawn from its anchor's own
    cluster, and no index repeats."""
    gen = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(8, 16, generator=gen), dim=1) * 5
    bank = F.normalize(centres.repeat_interleave(50, 0) + 0.1 * torch.randn(400, 16, generator=gen), dim=1)
    config = EncoderTrainConfig(negatives="hard", group=4, pool=20)
    idx = hard_batch(bank, 32, config, gen)
    assert len(set(idx.tolist())) == idx.shape[0] and 20 <= idx.shape[0] <= 32
    clusters = (idx // 50).tolist()
    # in order: each anchor, then its group; so clusters come in runs, one per anchor
    runs = [clusters[0]]
    for c in clusters[1:]:
        if c != runs[-1]:
            runs.append(c)
    assert len(runs) <= 8  # at most one run per anchor (8 anchors)
    with pytest.raises(ValueError, match="negatives"):
        EncoderTrainConfig(negatives="easy")


def test_a_run_with_every_switch_trains_saves_and_generates(shapes_dir: Path, tmp_path: Path) -> None:
    switches = dict(
        loss="hinge",
        d_condition="projection",
        ca=True,
        encoder_negatives="hard",
        match_weight=1.0,
        hard_wrong=0.5,
        mode_seeking=1.0,
        mode_seeking_distance="structure",
        ema=0.9,
    )
    logs: list[dict] = []
    result = train_text2img(
        _config(shapes_dir, tmp_path / "run", **switches),
        on_event=lambda kind, data: logs.append(data) if kind == "log" else None,
    )
    assert (tmp_path / "run" / "image_encoder.safetensors").is_file()
    assert logs and {"KL", "match", "MS"} <= set(logs[-1])
    model, info = load_text2img(result.weights)
    assert model.config.ca and model.config.noise_dim == 16
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    shipped = model.generator.state_dict()  # the average, not G
    assert all(torch.equal(v, checkpoint["G_ema"][k]) for k, v in shipped.items())
    assert not all(torch.equal(v, checkpoint["G"][k]) for k, v in shipped.items())
    assert {k: info.provenance["train_config"][k] for k in switches} == switches
    t2i = TextToImage(model)
    a = t2i.generate(["a red circle on a blue background"], n=2, seed=3)
    assert torch.equal(a, t2i.generate(["a red circle on a blue background"], n=2, seed=3))
    with pytest.raises(TrainingError, match="other settings.*loss: hinge -> bce"):
        train_text2img(
            _config(shapes_dir, tmp_path / "run", steps=4, **{**switches, "loss": "bce"}), resume=True
        )
    assert weights.read_info(result.weights).provenance["variant"] == "GAN-INT-CLS"


def test_weights_record_how_the_encoder_was_pre_trained_even_when_it_came_from_another_run(
    shapes_dir: Path, tmp_path: Path
) -> None:
    """A run that reuses an encoder pre-trained elsewhere (its file copied into the run folder) records
    that encoder's own pre-training, not the run's --encoder-negatives; a file from before the
    record says so."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    first = train_text2img(_config(shapes_dir, tmp_path / "hard", steps=1, encoder_negatives="hard"))
    made = weights.read_info(first.weights).provenance["encoder_pretraining"]
    assert made["negatives"] == "hard" and made["steps"] == 3 and made["images"] == 16
    reuse = tmp_path / "reuse"
    reuse.mkdir()
    shutil.copy(tmp_path / "hard" / "text_encoder.safetensors", reuse)
    second = train_text2img(_config(shapes_dir, reuse, steps=1))  # its own option: random
    info = weights.read_info(second.weights).provenance
    assert info["train_config"]["encoder_negatives"] == "random"
    assert info["encoder_pretraining"]["negatives"] == "hard"
    old = tmp_path / "old"
    old.mkdir()
    encoder_file = tmp_path / "hard" / "text_encoder.safetensors"
    with safe_open(str(encoder_file), "pt") as f:
        config_only = {"config": (f.metadata() or {})["config"]}
    save_file(load_file(str(encoder_file)), str(old / "text_encoder.safetensors"), metadata=config_only)
    third = train_text2img(_config(shapes_dir, old, steps=1))
    assert weights.read_info(third.weights).provenance["encoder_pretraining"] == "not recorded"


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("loss", "wgan", "unknown --loss"),
        ("d_condition", "sum", "unknown --d-condition"),
        ("encoder_negatives", "easy", "unknown --encoder-negatives"),
        ("ca_kl", -1.0, "ca-kl"),
        ("match_weight", -1.0, "match-weight"),
        ("hard_wrong", 1.5, "hard-wrong"),
        ("mode_seeking", -0.5, "mode-seeking"),
        ("mode_seeking_distance", "edges", "unknown --mode-seeking-distance"),
        ("ema", 1.0, "ema must be"),
    ],
)
def test_unknown_switch_values_are_refused(tmp_path: Path, option: str, value: object, message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        train_text2img(_config(tmp_path, tmp_path / "o", **{option: value}))


def test_matching_term_needs_the_builtin_encoder_and_its_image_encoder(
    shapes_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(TrainingError, match="builtin"):
        train_text2img(_config(shapes_dir, tmp_path / "m", encoder="minilm", match_weight=1.0))
    # a run folder whose text encoder was pre-trained before image encoders were kept
    train_text2img(_config(shapes_dir, tmp_path / "old", steps=1))
    (tmp_path / "old" / "image_encoder.safetensors").unlink()
    with pytest.raises(TrainingError, match="image encoder") as info:
        train_text2img(_config(shapes_dir, tmp_path / "old", steps=2, match_weight=1.0), resume=True)
    assert "delete" in (info.value.hint or "")


def test_probe_script_scores_every_attribute_for_encoder_and_d(shapes_dir: Path, tmp_path: Path) -> None:
    """scripts/probe_text_encoder.py on a tiny untrained encoder: every attribute is scored, within
    the cosine range, the same on every call (what a pre-trained encoder scores is in
    docs/text2img.md)."""
    from .conftest import load_script
    from .test_text2img import tiny_encoder

    module = load_script("probe_text2img")
    result = module.probe(tiny_encoder(), n=20)["encoder"]
    assert set(result) == {"paraphrase", *shapes.ATTRIBUTES}
    assert all(-1.0 <= v <= 1.0 for v in result.values())
    assert result == module.probe(tiny_encoder(), n=20)["encoder"]  # seeded
    train_text2img(_config(shapes_dir, tmp_path / "run", steps=2, d_condition="projection"))
    encoder, score = module.run_discriminator(tmp_path / "run")
    both = module.probe(encoder, n=10, d_score=score)
    assert set(both["D"]) == set(shapes.ATTRIBUTES) and all(v == v for v in both["D"].values())


def test_hard_wrong_needs_gan_cls(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="needs --cls"):
        train_text2img(_config(tmp_path, tmp_path / "o", cls=False, hard_wrong=0.5))
