"""The LR restoration front-end (sr.models.Restorer) and the `restore` training stage."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from srgan_cli import archs, weights
from srgan_cli.api import Upscaler
from srgan_cli.cli.app import app
from srgan_cli.errors import ArgumentError, UsageError
from srgan_cli.runtime.fused import fuse
from srgan_cli.sr.config import CHECKPOINT, TrainConfig, apply_init_arch
from srgan_cli.sr.models import Restorer, SRResNet, SRResNetConfig, with_restore_strength
from srgan_cli.sr.train import train
from srgan_cli.training import TrainingOptionError

from .conftest import make_photo, tiny_model


def _without_front_end(model: SRResNet) -> SRResNet:
    """The same SR network with no front-end: what a model gives when its front-end does nothing."""
    plain = SRResNet(replace(model.config, restore_blocks=0)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("restore.")})
    return plain


def test_an_untrained_restorer_is_the_identity_and_old_weights_keep_their_tensors() -> None:
    net = Restorer(3, 8)
    x = torch.rand(2, 3, 11, 17)
    with torch.no_grad():
        assert torch.equal(net(x), x)
    plain = SRResNet(SRResNetConfig(n_blocks=1, n_feats=8))
    assert not any(k.startswith("restore.") for k in plain.state_dict())
    assert (
        SRResNetConfig(**{k: v for k, v in plain.config.to_dict().items() if "restore" not in k})
        == plain.config
    )


@pytest.mark.parametrize("n_blocks", [1, 4, 8])
def test_restorer_radius_is_exact(n_blocks: int) -> None:
    """A pixel moves outputs up to `radius` away and no further (tiles rely on the bound)."""
    torch.manual_seed(0)
    net = Restorer(n_blocks, 4)
    torch.nn.init.normal_(net.tail.weight, std=0.1)
    r = Restorer.radius(n_blocks)
    x = torch.rand(1, 3, 2 * r + 5, 2 * r + 5)
    c = x.shape[-1] // 2
    x2 = x.clone()
    x2[..., c, c] += 1.0
    with torch.no_grad():
        diff = (net(x) - net(x2)).abs()[0].sum(0)
    ys, xs = torch.nonzero(diff > 0, as_tuple=True)
    assert max((ys - c).abs().max(), (xs - c).abs().max()) == r


def test_front_end_counts_in_the_srresnet_radius_and_fuses_exactly() -> None:
    model = tiny_model(4, seed=1, global_skip=True, restore_blocks=2)
    base = SRResNet.receptive_radius(replace(model.config, restore_blocks=0))
    assert SRResNet.receptive_radius(model.config) == base + Restorer.radius(2)
    x = torch.rand(1, 3, 15, 12)
    with torch.no_grad():
        want, got = model(x), fuse(model)(x)
        skipped = _without_front_end(model)
        without = skipped(x)
    assert (got - want).abs().max().item() < 1e-5
    assert (want - without).abs().max().item() > 1e-3  # the front-end is really in the path


def test_weights_with_a_front_end_round_trip_and_are_recognised_without_metadata(tmp_path: Path) -> None:
    model = tiny_model(2, restore_blocks=3)
    path = weights.save(tmp_path / "r.safetensors", model)
    loaded = archs.load(path).model
    assert loaded.config.restore_blocks == 3 and loaded.config.restore_feats == 8
    x = torch.rand(1, 3, 9, 9)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    arch, config = weights.infer_srresnet_config(model.state_dict(), path)
    assert arch == "srresnet" and config["restore_blocks"] == 3 and config["restore_feats"] == 8


def _config(photo_dir: Path, out: Path, init: Path, steps: int, **kw: object) -> TrainConfig:
    base = dict(
        data=[str(photo_dir)],
        out=str(out),
        stage="restore",
        init=str(init),
        scale=2,
        n_blocks=1,
        n_feats=8,
        restore_blocks=2,
        restore_feats=8,
        degradation="photo",
        crop=32,
        batch_size=2,
        steps=steps,
        val_every=100,
        checkpoint_every=4,
        log_every=4,
        device="cpu",
        seed=5,
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _kill_and_resume_matches(cfg: TrainConfig, tmp_path: Path, parts: tuple[str, ...]) -> None:
    """`cfg`'s run (already trained into tmp_path/a) again in tmp_path/b, stopped halfway and
    resumed: each network in `parts` ends bit for bit as the straight run's."""
    train(replace(cfg, out=str(tmp_path / "b"), steps=cfg.steps // 2))
    train(replace(cfg, out=str(tmp_path / "b")), resume=True)
    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)
    for part in parts:
        assert a[part]
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=0)


def test_restore_stage_trains_only_the_front_end_and_resumes_exactly(photo_dir: Path, tmp_path: Path) -> None:
    sr = tmp_path / "sr.safetensors"
    weights.save(sr, tiny_model(2, seed=4))
    cfg = apply_init_arch(_config(photo_dir, tmp_path / "a", sr, 8), set())
    cfg.validate()
    straight = train(cfg)
    _kill_and_resume_matches(cfg, tmp_path, ("generator",))

    loaded = archs.load(straight.weights)
    assert loaded.info.config["restore_blocks"] == 2
    assert loaded.info.provenance["stage"] == "restore" and loaded.info.provenance["init"] == str(sr)
    assert Path(straight.weights).name == "restore_x2.safetensors"
    state, before = loaded.model.state_dict(), archs.load(sr).model.state_dict()
    for key, value in before.items():  # the SR network is frozen, batch-norm statistics included
        assert torch.equal(state[key], value), key
    assert state["restore.tail.weight"].abs().max() > 0  # the front-end learned

    # its weights start the next run with their front-end; the gan stage then trains the whole
    again = apply_init_arch(TrainConfig(stage="gan", init=str(straight.weights)), set())
    assert (again.restore_blocks, again.restore_feats) == (2, 8)

    # a run from those weights nests their provenance: a chain of runs keeps its whole history
    chained = train(replace(cfg, out=str(tmp_path / "c"), init=str(straight.weights), steps=2))
    history = archs.load(chained.weights).info.provenance
    assert history["init"] == str(straight.weights) and history["steps"] == 2
    assert history["init_provenance"] == loaded.info.provenance
    assert "init_provenance" not in loaded.info.provenance  # tiny_model's file carries none


def test_front_end_only_gan_trains_the_front_end_through_the_frozen_sr_network(
    photo_dir: Path, tmp_path: Path
) -> None:
    """--front-end-only in the gan stage: the adversarial and pixel losses on the output reach the
    front-end through the SR network, which stays exactly as it was (batch-norm statistics too,
    though it runs in every step); refused without a front-end."""
    start = tmp_path / "start.safetensors"
    weights.save(start, tiny_model(2, seed=6, restore_blocks=2))
    cfg = _config(photo_dir, tmp_path / "g", start, 3, stage="gan", front_end_only=True, content_weight=0.0)
    cfg = apply_init_arch(cfg, set())
    cfg.validate()
    done = train(cfg)
    loaded = archs.load(done.weights)
    assert loaded.info.provenance["train_config"]["front_end_only"] is True
    state, before = loaded.model.state_dict(), archs.load(start).model.state_dict()
    for key, value in before.items():
        if not key.startswith("restore."):
            assert torch.equal(state[key], value), key
    assert not torch.equal(state["restore.tail.weight"], before["restore.tail.weight"])

    plain = tmp_path / "plain.safetensors"
    weights.save(plain, tiny_model(2))
    no_front = apply_init_arch(replace(cfg, init=str(plain), restore_blocks=0), set())
    with pytest.raises(TrainingOptionError, match="--front-end-only"):
        no_front.validate()


def test_restore_stage_learns_towards_sharpened_targets_but_not_for_clean_crops(
    photo_dir: Path, tmp_path: Path
) -> None:
    """`sharpen_target` reaches the restore stage's target (the clean LR of the sharpened HR), and
    crops that kept the clean LR keep the plain target: with every crop clean, sharpening changes
    nothing."""
    sr = tmp_path / "sr.safetensors"
    weights.save(sr, tiny_model(2, seed=4))
    tails = {}
    for name, sharpen, clean in (
        ("plain", 0.0, 0.0),
        ("sharp", 1.0, 0.0),
        ("allclean", 1.0, 1.0),
        ("clean", 0.0, 1.0),
    ):
        toml = tmp_path / f"{name}.toml"
        toml.write_text(
            f'preset = "noisy"\nclean_prob = {clean}\nsharpen_target = {sharpen}\nsharpen_sigma = 2.0\n'
        )
        cfg = apply_init_arch(_config(photo_dir, tmp_path / name, sr, 3, degradation=str(toml)), set())
        cfg.validate()
        train(cfg)
        tails[name] = torch.load(tmp_path / name / CHECKPOINT, weights_only=True)["generator"][
            "restore.tail.weight"
        ]
    assert not torch.equal(tails["plain"], tails["sharp"])
    assert torch.equal(tails["allclean"], tails["clean"])


def test_restore_stage_refuses_what_it_cannot_learn_from(photo_dir: Path, tmp_path: Path) -> None:
    sr = tmp_path / "sr.safetensors"
    weights.save(sr, tiny_model(2))
    with pytest.raises(TrainingOptionError, match="--restore-blocks"):
        replace(_config(photo_dir, tmp_path / "a", sr, 4), restore_blocks=0).validate()
    with pytest.raises(TrainingOptionError, match="--degradation"):
        replace(_config(photo_dir, tmp_path / "a", sr, 4), degradation="bicubic").validate()
    # weights without a front-end leave the run's own; given a size it disagrees with, a front-end is refused
    kept = apply_init_arch(_config(photo_dir, tmp_path / "a", sr, 4), {"restore_blocks"})
    assert kept.restore_blocks == 2
    with_front = tmp_path / "front.safetensors"
    weights.save(with_front, tiny_model(2, restore_blocks=3))
    with pytest.raises(Exception, match="restore_blocks"):
        apply_init_arch(replace(_config(photo_dir, tmp_path / "a", with_front, 4)), {"restore_blocks"})


def test_denoise_strength_scales_the_front_ends_correction_exactly(tmp_path: Path) -> None:
    model = tiny_model(2, seed=2, restore_blocks=2)
    x = torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        full = model.restore(x)
        half = with_restore_strength(model, 0.5).restore(x)
        none = with_restore_strength(model, 0.0)(x)
        skipped = _without_front_end(model)
        torch.testing.assert_close(half, x + 0.5 * (full - x))
        torch.testing.assert_close(none, skipped(x))
        assert torch.equal(model.restore(x), full)  # the caller's model is untouched
    with pytest.raises(ValueError, match="no restoration front-end"):
        with_restore_strength(tiny_model(2), 0.5)

    path = weights.save(tmp_path / "front.safetensors", model)
    plain = weights.save(tmp_path / "plain.safetensors", tiny_model(2))
    image = np.random.default_rng(0).random((10, 12, 3), dtype=np.float32)
    with torch.no_grad():
        want = with_restore_strength(model, 0.25)(torch.from_numpy(image).permute(2, 0, 1)[None])[0]
    got = Upscaler(str(path), device="cpu", tile=0, denoise=0.25)(image)
    np.testing.assert_allclose(got, want.clamp(0, 1).permute(1, 2, 0).numpy(), atol=0.6 / 255)  # 8-bit out
    assert np.abs(Upscaler(str(path), device="cpu", tile=0)(image) - got).max() > 2 / 255
    with pytest.raises(UsageError, match="has none"):
        Upscaler(str(plain), device="cpu", denoise=0.5)
    with pytest.raises(UsageError, match="ONNX"):
        Upscaler(str(path), device="cpu", backend="onnx", denoise=0.5)
    with pytest.raises(ArgumentError, match="between 0 and 1"):
        Upscaler(str(path), device="cpu", denoise=1.5)


def test_upscale_cli_denoise(tmp_path: Path) -> None:
    model = weights.save(tmp_path / "front.safetensors", tiny_model(2, restore_blocks=2))
    src = tmp_path / "in.png"
    Image.fromarray(make_photo(12, 10, seed=1)).save(src)
    runner = CliRunner()
    out = tmp_path / "out.png"
    result = runner.invoke(app, ["upscale", str(src), "-m", str(model), "--denoise", "0.3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (20, 24)  # make_photo(h, w)
    refused = runner.invoke(app, ["upscale", str(src), "--denoise", "0.3", "-o", str(tmp_path / "b.png")])
    assert refused.exit_code != 0 and "--denoise needs -m" in " ".join(refused.output.split())
    assert not (tmp_path / "b.png").exists()


def test_a_front_end_model_exports_to_onnx_and_runs_in_onnx_runtime(tmp_path: Path) -> None:
    from srgan_cli.runtime.onnx_export import export_onnx

    model = tiny_model(2, seed=3, global_skip=True, restore_blocks=2)
    path = tmp_path / "front.onnx"
    export_onnx(model, path)  # verified against PyTorch inside, on two shapes (raises above 1e-4)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 9, 14)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4)


def test_export_onnx_denoise_bakes_the_strength_into_the_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`srgan export-onnx --denoise S`: the ONNX file computes what `upscale --denoise S` does,
    says so in its metadata and its default name; a model without a front-end is refused."""
    import json

    import onnx
    import onnxruntime as ort

    model = tiny_model(2, seed=4, global_skip=True, restore_blocks=2)
    src = weights.save(tmp_path / "front_x2.safetensors", model)
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)  # the default output name lands here
    done = runner.invoke(app, ["export-onnx", "-m", str(src), "--denoise", "0.5"])
    assert done.exit_code == 0, done.output
    path = tmp_path / "front_x2_denoise0.5.onnx"
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["srgan_cli.source"])["denoise"] == 0.5
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 10, 12)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        half, full = with_restore_strength(model, 0.5)(x), model(x)
    np.testing.assert_allclose(got, half.numpy(), atol=1e-4)
    assert not np.allclose(got, full.numpy(), atol=1e-3)  # the strength is in the graph

    plain = weights.save(tmp_path / "plain_x2.safetensors", tiny_model(2))
    refused = runner.invoke(
        app, ["export-onnx", "-m", str(plain), "--denoise", "0.5", "-o", str(tmp_path / "p.onnx")]
    )
    assert refused.exit_code == 2 and "has none" in " ".join(refused.output.split())
    assert not (tmp_path / "p.onnx").exists()


def test_restore_stage_perceptual_terms_train_the_front_end_and_resume_exactly(
    photo_dir: Path, tmp_path: Path, vgg_file: Path
) -> None:
    """--restore-content-weight, --restore-adv-weight and --restore-block-weight: a VGG loss, a
    discriminator and the block-edge term on the restored LR beside the pixel loss. Each is logged,
    they change what the front-end learns, the SR network stays frozen, and a killed run resumes
    bit for bit (D and its Adam included)."""
    sr = tmp_path / "sr.safetensors"
    weights.save(sr, tiny_model(2, seed=4))
    extra = dict(
        restore_content_weight=0.5,
        restore_adv_weight=0.05,
        restore_block_weight=1.0,
        restore_block_excess_weight=1.0,
        r1_gamma=0.5,
        content_layer="vgg22",
        vgg_weights=str(vgg_file),
        d_feats=4,
    )
    cfg = apply_init_arch(_config(photo_dir, tmp_path / "a", sr, 8, **extra), set())
    cfg.validate()
    straight = train(cfg)
    _kill_and_resume_matches(cfg, tmp_path, ("generator", "discriminator"))  # D is in the checkpoint

    logs = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    steps = [e for e in logs if e["event"] == "log"]
    assert steps and all(e["content"] > 0 and e["adversarial"] > 0 and 0 < e["D(x)"] < 1 for e in steps)
    assert all(e["block"] > 0 and e["block_excess"] > 0 and e["r1"] > 0 for e in steps)
    assert all(e["loss"] > e["pixel"] for e in steps)

    state, before = archs.load(straight.weights).model.state_dict(), archs.load(sr).model.state_dict()
    for key, value in before.items():  # only the front-end learns
        assert torch.equal(state[key], value), key
    plain = train(apply_init_arch(_config(photo_dir, tmp_path / "p", sr, 8), set()))
    plain_state = archs.load(plain.weights).model.state_dict()
    assert not torch.equal(state["restore.tail.weight"], plain_state["restore.tail.weight"])


def test_restore_perceptual_weights_are_refused_where_they_do_nothing(
    photo_dir: Path, tmp_path: Path
) -> None:
    sr = tmp_path / "sr.safetensors"
    weights.save(sr, tiny_model(2, seed=4))
    gan = _config(photo_dir, tmp_path / "g", sr, 2, stage="gan", restore_adv_weight=0.1)
    gan = apply_init_arch(gan, set())
    with pytest.raises(TrainingOptionError, match="--restore-adv-weight.*--stage restore"):
        gan.validate()
    small = apply_init_arch(
        _config(photo_dir, tmp_path / "s", sr, 2, restore_content_weight=1.0, content_layer="vgg54", crop=16),
        set(),
    )
    with pytest.raises(TrainingOptionError, match="--crop 32 or more"):
        small.validate()
    pretrain = _config(photo_dir, tmp_path / "p", sr, 2, stage="pretrain", restore_block_weight=1.0)
    with pytest.raises(TrainingOptionError, match="--restore-block-weight"):
        apply_init_arch(pretrain, set()).validate()
    gan_excess = _config(photo_dir, tmp_path / "e", sr, 2, stage="gan", restore_block_excess_weight=1.0)
    with pytest.raises(TrainingOptionError, match="--restore-block-excess-weight"):
        apply_init_arch(gan_excess, set()).validate()
    negative = _config(photo_dir, tmp_path / "n", sr, 2, restore_content_weight=-1.0)
    with pytest.raises(TrainingOptionError, match="--restore-content-weight"):
        negative.validate_options()


def test_eval_cli_denoise_scores_each_strength_of_front_end_models(photo_dir: Path, tmp_path: Path) -> None:
    """`srgan eval --denoise S` (repeatable): each model with a front-end once per strength, labelled
    with it, and the numbers are those of that strength's model; other models once as they are;
    refused when no model has a front-end."""
    front = tiny_model(2, seed=3, restore_blocks=2)
    torch.nn.init.normal_(front.restore.tail.weight, std=0.2)  # a front-end that corrects something
    model = weights.save(tmp_path / "front.safetensors", front)
    plain = weights.save(tmp_path / "plain.safetensors", tiny_model(2, seed=1))
    half = weights.save(tmp_path / "half.safetensors", with_restore_strength(front, 0.5))
    runner = CliRunner()
    args = ["eval", "--data", str(photo_dir), "--json", "--device", "cpu", "-m", str(model), "-m", str(plain)]
    done = runner.invoke(app, [*args, "-m", str(half), "--denoise", "0.5", "--denoise", "1"])
    assert done.exit_code == 0, done.output
    rows = {r["method"]: r for r in json.loads(done.stdout)["results"]}
    assert list(rows) == [
        "bicubic",
        "front --denoise 0.5",
        "front --denoise 1",
        "plain",
        "half --denoise 0.5",
        "half --denoise 1",
    ]
    assert rows["front --denoise 0.5"]["images"] == rows["half --denoise 1"]["images"]
    assert rows["front --denoise 0.5"]["psnr"] != rows["front --denoise 1"]["psnr"]
    refused = runner.invoke(app, ["eval", "--data", str(photo_dir), "-m", str(plain), "--denoise", "0.5"])
    assert refused.exit_code != 0 and "none of the models has one" in " ".join(refused.output.split())
