"""Text-to-image: the shapes data set, the encoders, the GAN-CLS / GAN-INT steps, training and resume."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from srgan_cli import archs, weights
from srgan_cli.errors import TrainingError, UsageError, WeightsMismatch
from srgan_cli.text2img import shapes
from srgan_cli.text2img.encoders import (
    PAD,
    UNK,
    BuiltinEncoderConfig,
    BuiltinTextEncoder,
    EncoderTrainConfig,
    MiniLMEncoder,
    build_vocab,
    minilm_available,
    pretrain_builtin,
)
from srgan_cli.text2img.models import Text2Img, Text2ImgConfig, models
from srgan_cli.text2img.sample import TextToImage, load_text2img, read_captions_file
from srgan_cli.text2img.train import train_text2img
from srgan_cli.text2img.trainer import Text2ImgTrainConfig, Text2ImgTrainer

TINY = {"ngf": 8, "ndf": 8, "z_dim": 8, "proj_dim": 8}


def tiny_encoder(seed: int = 0) -> BuiltinTextEncoder:
    torch.manual_seed(seed)
    vocab = build_vocab(["a small red circle on a blue background", "a large green square at the top"])
    return BuiltinTextEncoder(BuiltinEncoderConfig(vocab=vocab, word_dim=8, hidden=8, dim=16))


# --- the shapes data set ------------------------------------------------------------------------


def test_every_caption_names_exactly_its_image_attributes() -> None:
    rng = random.Random(5)
    for _ in range(300):
        spec = shapes.random_spec(rng)
        assert spec.colour != spec.background
        for text in shapes.captions(spec, rng, 6):
            assert shapes.parse_caption(text) == {a: getattr(spec, a) for a in shapes.ATTRIBUTES}, text


def test_rendered_shape_sits_where_the_caption_says_in_its_colour() -> None:
    """Pixel analysis of the renderer: the pixels far from the background colour form the shape;
    its centroid is in the caption's third on each axis and its colour is the caption's."""
    rng = random.Random(1)
    for position in shapes.POSITIONS:
        for shape in shapes.SHAPES:
            spec = shapes.ShapeSpec(shape, "red", "medium", position, "blue")
            img = shapes.render(spec, rng).astype(np.float32)
            mask = np.abs(img - np.array(shapes.COLOURS["blue"])).sum(-1) > 120
            ys, xs = np.nonzero(mask)
            row, col = divmod(shapes.POSITIONS.index(position), 3)
            assert int(xs.mean() // (64 / 3)) == col and int(ys.mean() // (64 / 3)) == row
            inner = img[mask & (np.abs(img - np.array(shapes.COLOURS["red"])).sum(-1) < 60)]
            assert len(inner) > 0.6 * mask.sum()  # most of the shape is solid red (edges are blended)


def test_sizes_grow_and_shapes_fill_their_box_differently() -> None:
    rng = random.Random(2)
    area = {}
    fill = {}
    for size in shapes.SIZES:
        for shape in shapes.SHAPES:
            img = shapes.render(shapes.ShapeSpec(shape, "white", size, "centre", "black"), rng)
            mask = img.mean(-1) > 128
            ys, xs = np.nonzero(mask)
            area[size, shape] = mask.sum()
            fill[size, shape] = mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
    for shape in shapes.SHAPES:
        assert area["small", shape] < area["medium", shape] < area["large", shape]
    f = {s: fill["large", s] for s in shapes.SHAPES}
    assert f["square"] > 0.95 and 0.7 < f["circle"] < 0.85 and f["triangle"] < 0.6 and f["cross"] < 0.65


def test_make_shapes_writes_a_complete_reproducible_data_set(tmp_path: Path) -> None:
    index = shapes.make_shapes(tmp_path / "a", 5, seed=3, n_captions=2)
    again = shapes.make_shapes(tmp_path / "b", 5, seed=3, n_captions=2)
    records = [json.loads(line) for line in index.read_text().splitlines()]
    assert len(records) == 5 and all(len(r["captions"]) == 2 for r in records)
    assert index.read_text() == again.read_text()
    a = np.asarray(__import__("PIL.Image").Image.open(tmp_path / "a" / records[0]["image"]))
    b = np.asarray(__import__("PIL.Image").Image.open(tmp_path / "b" / records[0]["image"]))
    assert a.shape == (64, 64, 3) and np.array_equal(a, b)
    assert shapes.spec_from_record(records[0]) == shapes.ShapeSpec(**records[0]["attributes"])
    with pytest.raises(UsageError, match="not empty"):
        shapes.make_shapes(tmp_path / "a", 5)


# --- encoders -------------------------------------------------------------------------------------


def test_vocab_and_tokens() -> None:
    vocab = build_vocab(["Red red circle", "a Top-Left circle"], min_count=1)
    assert vocab[:2] == [PAD, UNK] and vocab[2:4] == ["circle", "red"]  # by frequency, then name
    enc = BuiltinTextEncoder(BuiltinEncoderConfig(vocab=vocab, word_dim=4, hidden=4, dim=6))
    ids, lengths = enc.tokenize(["red zebra", "", "top-left"])
    assert ids[0, :2].tolist() == [vocab.index("red"), 1] and lengths.tolist() == [2, 1, 2]
    assert ids[1, 0] == 1  # an empty caption is one unknown word, not a crash
    with pytest.raises(ValueError, match="<pad>"):
        BuiltinTextEncoder(BuiltinEncoderConfig(vocab=["red", "circle"]))


def test_builtin_encoder_gives_unit_vectors_that_ignore_padding() -> None:
    enc = tiny_encoder()
    out = enc.encode(["a small red circle", "a large green square at the top on a blue background"])
    assert out.shape == (2, 16) and torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    alone = enc.encode(["a small red circle"])  # in a batch with a longer caption it was padded
    assert torch.allclose(out[0], alone[0], atol=1e-5)


def test_pretraining_makes_captions_find_their_images(tmp_path: Path) -> None:
    """A few hundred steps on 32 shapes: each caption's nearest image is its own far more often
    than chance (1/32)."""
    triples = list(shapes.samples(32, seed=0, n_captions=3))
    images = torch.from_numpy(np.stack([im for _, im, _ in triples])).permute(0, 3, 1, 2).contiguous()
    captions = [caps for _, _, caps in triples]
    logs: list[dict] = []
    enc, image = pretrain_builtin(
        images,
        captions,
        EncoderTrainConfig(steps=150, batch_size=32, word_dim=16, hidden=32, dim=32),
        torch.device("cpu"),
        on_log=logs.append,
        log_every=50,
    )
    assert logs[-1]["loss"] < logs[0]["loss"] and logs[-1]["accuracy"] > 0.5
    assert not enc.training and not image.training
    # the image encoder is the text encoder's partner: captions pick their own images
    with torch.no_grad():
        sims = enc.encode([caps[0] for caps in captions]) @ image(images.float() / 255).t()
    assert float((sims.argmax(1) == torch.arange(32)).float().mean()) > 0.5


@pytest.mark.skipif(
    not minilm_available(), reason="the [text] extra (sentence-transformers) is not installed"
)
def test_minilm_encoder_is_384_d_and_semantic() -> None:
    enc = MiniLMEncoder("cpu")
    out = enc.encode(["a small red circle", "a tiny red disc", "a large blue square on a yellow background"])
    assert out.shape == (3, 384) and torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-4)
    assert float(out[0] @ out[1]) > float(out[0] @ out[2])


def test_minilm_missing_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_st(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("sentence_transformers"):
            raise ImportError("no", name="sentence_transformers")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_st)
    with pytest.raises(UsageError, match=r"\[text\] extra") as info:
        MiniLMEncoder("cpu")
    assert "srgan-cli[text]" in (info.value.hint or "")


# --- models ---------------------------------------------------------------------------------------


def test_generator_and_discriminator_shapes_and_text_dependence() -> None:
    torch.manual_seed(0)
    config = Text2ImgConfig(encoder="minilm", embed_dim=12, **TINY)
    g, d = models(config)
    z, h = torch.randn(3, 8), F.normalize(torch.randn(3, 12), dim=1)
    x = g(z, h)
    assert x.shape == (3, 3, 64, 64) and x.min() >= -1 and x.max() <= 1
    d.eval()
    s = d(x, h)
    assert s.shape == (3, 1)
    assert not torch.allclose(s, d(x, h.flip(0)))  # the text reaches D's score
    assert not torch.allclose(g.eval()(z, h), g(z, h.flip(0)))  # and G's image


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="size must be 64"):
        Text2ImgConfig(size=32, encoder="minilm")
    with pytest.raises(ValueError, match="vocabulary"):
        Text2ImgConfig(encoder="builtin")
    with pytest.raises(ValueError, match="encoder must be"):
        Text2ImgConfig(encoder="clip")


# --- one training step per loss variant --------------------------------------------------------------


@pytest.mark.parametrize("cls,interpolate", [(False, False), (True, False), (False, True), (True, True)])
def test_one_step_of_each_variant_computes_the_papers_losses(cls: bool, interpolate: bool) -> None:
    """The trainer's loss_D and loss_G equal the formulas of Reed et al.'s Algorithm 1 recomputed
    by hand from copies of the networks, with the same noise."""
    torch.manual_seed(0)
    model_config = Text2ImgConfig(encoder="minilm", embed_dim=12, **TINY)
    train = Text2ImgTrainConfig(cls=cls, interpolate=interpolate, beta=0.5)
    trainer = Text2ImgTrainer(model_config, train, torch.device("cpu"))
    g0 = {k: v.clone() for k, v in trainer.g.state_dict().items()}
    d0 = {k: v.clone() for k, v in trainer.d.state_dict().items()}
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    h, h_wrong = F.normalize(torch.randn(4, 12), dim=1), F.normalize(torch.randn(4, 12), dim=1)

    torch.manual_seed(7)
    stats = trainer.step(x, h, h_wrong)
    assert ("D(x,wrong)" in stats) == cls

    g, d = models(model_config, train.spectral_norm)
    g.load_state_dict(g0)
    d.load_state_dict(d0)
    torch.manual_seed(7)
    bce = F.binary_cross_entropy_with_logits
    fake = g(torch.randn(4, 8), h)
    one, zero = torch.ones(4, 1), torch.zeros(4, 1)
    real_term = bce(d(x, h), one)
    fake_term = bce(d(fake, h), zero)
    expected_d = real_term + (0.5 * (bce(d(x, h_wrong), zero) + fake_term) if cls else fake_term)
    assert torch.allclose(stats["loss_D"], expected_d, atol=1e-5)
    assert all(not torch.equal(v, d0[k]) for k, v in trainer.d.state_dict().items() if k.endswith("weight"))
    assert any(not torch.equal(v, g0[k]) for k, v in trainer.g.state_dict().items())
    assert float(stats["loss_G"]) > 0 and torch.isfinite(stats["loss_G"])
    if not interpolate:
        return
    # GAN-INT: the G loss has a second term, so it is about twice the matching term alone
    plain = Text2ImgTrainer(
        model_config, Text2ImgTrainConfig(cls=cls, interpolate=False), torch.device("cpu")
    )
    plain.g.load_state_dict(g0)
    plain.d.load_state_dict(d0)
    torch.manual_seed(7)
    single = plain.step(x, h, h_wrong)
    assert float(stats["loss_G"]) > 1.3 * float(single["loss_G"])


# --- training, resume, weights ----------------------------------------------------------------------


def _config(data: Path, out: Path, **kw: object) -> Text2ImgTrainConfig:
    base = dict(
        data=str(data),
        out=str(out),
        steps=4,
        batch_size=4,
        encoder_steps=3,
        encoder_dim=16,
        device="cpu",
        log_every=2,
        sample_every=2,
        checkpoint_every=2,
        ngf=8,
        ndf=8,
        z_dim=8,
        proj_dim=8,
    )
    base.update(kw)
    return Text2ImgTrainConfig(**base)  # type: ignore[arg-type]


def test_train_resume_is_exact_and_weights_carry_the_encoder(shapes_dir: Path, tmp_path: Path) -> None:
    events: list[str] = []
    full = train_text2img(_config(shapes_dir, tmp_path / "full"), on_event=lambda k, d: events.append(k))
    assert {"start", "encoder_log", "encoder", "gan", "log", "sample", "checkpoint", "done"} <= set(events)
    assert (tmp_path / "full" / "samples" / "step0000004.png").is_file()
    assert len((tmp_path / "full" / "samples" / "captions.txt").read_text().splitlines()) == 8

    train_text2img(_config(shapes_dir, tmp_path / "split", steps=2))
    with pytest.raises(TrainingError, match="already holds"):
        train_text2img(_config(shapes_dir, tmp_path / "split", steps=4))
    split = train_text2img(_config(shapes_dir, tmp_path / "split", steps=4), resume=True)
    a, b = archs.load(full.weights).model, archs.load(split.weights).model
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())

    with pytest.raises(TrainingError, match="other settings"):
        train_text2img(_config(shapes_dir, tmp_path / "split", steps=6, ngf=16), resume=True)

    model, info = load_text2img(full.weights)
    assert info.arch == "text2img" and info.provenance["variant"] == "GAN-INT-CLS"
    assert info.provenance["steps"] == 4 and model.encoder is not None
    t2i = TextToImage(model)
    one = t2i.generate(["a small red circle at the top left on a blue background", "a big box"], n=3, seed=1)
    assert one.shape == (6, 3, 64, 64) and float(one.min()) >= 0 and float(one.max()) <= 1
    assert torch.equal(
        one,
        t2i.generate(["a small red circle at the top left on a blue background", "a big box"], n=3, seed=1),
    )
    strip = t2i.interpolate("a red circle", "a blue square", steps=5, rows=2, seed=0)
    assert strip.shape == (10, 3, 64, 64)
    # the ends of a one-row strip are the two captions' own images (the same noise)
    strip = t2i.interpolate("a red circle", "a blue square", steps=5, rows=1, seed=0)
    ends = t2i.generate(["a red circle", "a blue square"], n=1, seed=0)
    assert torch.allclose(strip[0], ends[0], atol=1e-6) and torch.allclose(strip[4], ends[1], atol=1e-6)
    assert not torch.equal(strip[2], ends[0])
    with pytest.raises(UsageError, match="empty"):
        t2i.generate(["fine", "  "])


def test_time_limit_writes_weights_of_the_steps_done_and_resume_finishes(
    shapes_dir: Path, tmp_path: Path
) -> None:
    """A limit of 0 s stops before the first GAN step with a checkpoint and weights (of an untrained
    G); --resume finishes to the same weights as a run without a limit."""
    cut = train_text2img(_config(shapes_dir, tmp_path / "cut"), time_limit=0)
    assert cut.stopped == "time limit" and cut.steps == 0 and cut.weights.is_file()
    done = train_text2img(_config(shapes_dir, tmp_path / "cut"), resume=True)
    straight = train_text2img(_config(shapes_dir, tmp_path / "straight"))
    assert done.stopped is None and done.steps == straight.steps == 4
    a, b = archs.load(done.weights).model, archs.load(straight.weights).model
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    with pytest.raises(TrainingError, match="time limit"):
        train_text2img(_config(shapes_dir, tmp_path / "neg"), time_limit=-1)


def test_a_stop_request_stops_after_the_step_with_a_checkpoint(shapes_dir: Path, tmp_path: Path) -> None:
    """`should_stop` (a signal handler's flag in the CLI) is polled before each GAN step: the run
    stops there with a checkpoint and the weights of the steps done, and --resume finishes exactly."""
    polls = iter(range(100))
    out = tmp_path / "cut"
    config = _config(shapes_dir, out, checkpoint_every=3)
    cut = train_text2img(config, should_stop=lambda: next(polls) >= 1)  # the 2nd poll: after 1 step
    assert cut.stopped == "stop request" and cut.steps == 1 and cut.weights.is_file()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 1  # the stop's checkpoint
    assert weights.read_info(cut.weights).provenance["steps"] == 1
    last = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "stopped" and last["reason"] == "stop request" and last["step"] == 1
    done = train_text2img(_config(shapes_dir, out, checkpoint_every=3), resume=True)
    straight = train_text2img(_config(shapes_dir, tmp_path / "straight"))
    assert done.stopped is None and done.steps == straight.steps == 4
    a, b = archs.load(done.weights).model, archs.load(straight.weights).model
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_gan_int_only_run_and_the_encoder_is_reused(shapes_dir: Path, tmp_path: Path) -> None:
    first = _config(shapes_dir, tmp_path / "a", steps=2)
    train_text2img(first)
    other = tmp_path / "b"
    other.mkdir()
    (other / "text_encoder.safetensors").write_bytes(
        (tmp_path / "a" / "text_encoder.safetensors").read_bytes()
    )
    events: list[tuple[str, dict]] = []
    result = train_text2img(
        _config(shapes_dir, other, steps=2, cls=False), on_event=lambda k, d: events.append((k, d))
    )
    assert any(k == "encoder" and d["loaded"] for k, d in events)
    assert not any(k == "encoder_log" for k, _ in events)
    logs = [d for k, d in events if k == "log"]
    assert logs and "D(x,wrong)" not in logs[-1]
    assert weights.read_info(result.weights).provenance["variant"] == "GAN-INT"


def test_bad_training_options_and_data(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="encoder"):
        train_text2img(_config(tmp_path, tmp_path / "o", encoder="clip"))
    with pytest.raises(TrainingError, match="batch-size"):
        train_text2img(_config(tmp_path, tmp_path / "o", batch_size=1))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TrainingError):
        train_text2img(_config(empty, tmp_path / "o"))


def test_loading_the_wrong_kind_of_model_is_refused(tmp_path: Path) -> None:
    from .conftest import tiny_model

    path = weights.save(tmp_path / "sr.safetensors", tiny_model(4), trained_on="nothing")
    with pytest.raises(WeightsMismatch) as info:
        load_text2img(path)
    assert "upscale" in (info.value.hint or "")


def test_captions_file(tmp_path: Path) -> None:
    path = tmp_path / "caps.txt"
    path.write_text("# a comment\na red circle\n\n  a blue square  \n", encoding="utf-8")
    assert read_captions_file(path) == ["a red circle", "a blue square"]
    path.write_text("\n# only a comment\n", encoding="utf-8")
    with pytest.raises(UsageError, match="no captions"):
        read_captions_file(path)
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UsageError, match="UTF-8"):
        read_captions_file(path)
    with pytest.raises(UsageError, match="cannot read"):
        read_captions_file(tmp_path / "missing.txt")


def test_text2img_model_round_trips_through_weights(tmp_path: Path) -> None:
    enc = tiny_encoder()
    config = Text2ImgConfig(encoder="builtin", embed_dim=16, text=enc.config.to_dict(), **TINY)
    model = Text2Img(config)
    path = weights.save(tmp_path / "t.safetensors", model, trained_on="x")
    back = archs.load(path, expect_arch="text2img").model
    assert back.encoder is not None and back.encoder.config.vocab == enc.config.vocab
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())


def test_running_means_average_and_stop_on_non_finite_losses() -> None:
    from srgan_cli.training import RunningMeans

    meter = RunningMeans()
    meter.add({"loss_D": torch.tensor(1.0), "D(x)": torch.tensor(0.5)})
    meter.add({"loss_D": torch.tensor(3.0), "D(x)": torch.tensor(0.7)})
    assert meter.count == 2
    means = meter.take("", 2)
    assert means == pytest.approx({"loss_D": 2.0, "D(x)": 0.6}) and meter.count == 0
    meter.add({"loss_D": torch.tensor(float("nan"))})
    with pytest.raises(TrainingError, match="level 3: the losses became non-finite at step 9"):
        meter.take("level 3: ", 9)
