"""The perceptual loss terms: VGG content loss (layers, input conventions, weights), TV, GAN losses,
the grid (phase-consistency) loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from srgan_cli.errors import PerceptualWeightsError
from srgan_cli.sr import losses
from srgan_cli.sr.losses import (
    CONTENT_LAYERS,
    ContentLoss,
    VGGFeatures,
    block_excess_loss,
    block_step_loss,
    discriminator_loss,
    generator_adv_loss,
    grid_loss,
    load_vgg,
    r1_penalty,
    tv_loss,
)

from .conftest import make_vgg_prefix


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach torchvision's download; no user setting may leak in."""

    def refuse(arch: str) -> dict[str, torch.Tensor]:
        raise ConnectionError("downloads are disabled in tests")

    monkeypatch.setattr(losses, "_download", refuse)
    monkeypatch.delenv(losses.ENV_VGG, raising=False)


def test_tv_is_zero_on_a_constant_image_and_grows_with_noise() -> None:
    flat = torch.full((2, 3, 16, 16), 0.3)
    assert tv_loss(flat).item() == pytest.approx(0.0, abs=1e-3)
    g = torch.Generator().manual_seed(0)
    little = tv_loss(flat + 0.01 * torch.randn(flat.shape, generator=g))
    more = tv_loss(flat + 0.1 * torch.randn(flat.shape, generator=g))
    assert 0 < little < more
    # a horizontal ramp of slope 1/15 per pixel in [0, 1] is 2/15 in the paper's [-1, 1] units
    ramp = torch.linspace(0, 1, 16).expand(1, 1, 16, 16)
    assert tv_loss(ramp).item() == pytest.approx(2 / 15, rel=1e-3)


def test_layer_slicing_ends_at_the_named_relu() -> None:
    expected = {"vgg54": (36, 16), "vgg22": (9, 4), "vgg16_53": (30, 13), "vgg16_22": (9, 4)}
    for name, (end, convs) in expected.items():
        layer = CONTENT_LAYERS[name]
        body = losses._features(layer.arch, layer.end)
        assert layer.end == end
        assert isinstance(body[-1], torch.nn.ReLU)
        assert sum(isinstance(m, torch.nn.Conv2d) for m in body) == convs
    # relu5_4 of VGG19 is at index 35 in torchvision's vgg19().features, relu5_3 of VGG16 at 29
    import torchvision

    tv19 = torchvision.models.vgg19(weights=None).features
    tv16 = torchvision.models.vgg16(weights=None).features
    assert [type(m) for m in tv19[:36]] == [type(m) for m in losses._features("vgg19", 36)]
    assert [type(m) for m in tv16[:30]] == [type(m) for m in losses._features("vgg16", 30)]


def test_both_input_conventions(vgg_file: Path) -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    tv = load_vgg("vgg22", vgg_file, convention="torchvision")
    caffe = load_vgg("vgg22", vgg_file, convention="caffe")
    body = tv.body
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(tv(x), body((x - mean) / std))
    bgr = x[:, [2, 1, 0]] * 255 - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
    torch.testing.assert_close(caffe(x), body(bgr), rtol=1e-4, atol=1e-3)
    # auto picks caffe from the file name, torchvision otherwise
    named = make_vgg_prefix(vgg_file.parent / "my_vgg19_caffe.safetensors")
    assert load_vgg("vgg22", named).convention == "caffe"
    assert load_vgg("vgg22", vgg_file).convention == "torchvision"


def test_content_loss_is_zero_for_identical_images_and_frozen(vgg_file: Path) -> None:
    loss = ContentLoss(load_vgg("vgg22", vgg_file))
    x = torch.rand(2, 3, 16, 16)
    assert loss(x, x).item() == 0.0
    y = x.clone().requires_grad_(True)
    value = loss(y + 0.05, x)
    value.backward()
    assert value.item() > 0 and y.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in loss.vgg.parameters())
    loss.train()
    assert not loss.vgg.training  # stays in eval mode


def test_vgg_weights_from_a_whole_torchvision_state_dict(tmp_path: Path) -> None:
    import torchvision

    net = torchvision.models.vgg16(weights=None)
    path = tmp_path / "vgg16.pth"
    torch.save(net.state_dict(), path)  # "features.N.weight" and "classifier..." keys
    feats = load_vgg("vgg16_22", path)
    torch.testing.assert_close(feats.body[0].weight, net.features[0].weight)
    with pytest.raises(PerceptualWeightsError, match="vgg16 weights, but content layer vgg54 needs vgg19"):
        load_vgg("vgg54", path)


def test_vgg_weights_from_the_environment(vgg_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(losses.ENV_VGG, str(vgg_file))
    assert isinstance(load_vgg("vgg22"), VGGFeatures)


def test_no_vgg_weights_is_a_clear_error(tmp_path: Path, vgg_file: Path) -> None:
    with pytest.raises(PerceptualWeightsError, match="download failed") as info:
        load_vgg("vgg54")
    assert "--vgg-weights" in (info.value.hint or "") and "docs/" in (info.value.hint or "")
    with pytest.raises(PerceptualWeightsError, match="not found"):
        load_vgg("vgg54", tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not weights")
    with pytest.raises(PerceptualWeightsError, match="cannot read"):
        load_vgg("vgg22", tmp_path / "junk.safetensors")
    with pytest.raises(PerceptualWeightsError, match="lack"):  # a 4-conv prefix cannot give relu5_4
        load_vgg("vgg54", vgg_file)
    with pytest.raises(PerceptualWeightsError, match="unknown content layer"):
        load_vgg("vgg99", vgg_file)


def test_adversarial_losses_match_their_definitions() -> None:
    real = torch.tensor([[2.0], [0.5], [-1.0]])
    fake = torch.tensor([[-3.0], [0.1], [1.0]])
    ones, zeros = torch.ones_like(real), torch.zeros_like(real)
    # G: -log D(G(z)); D: BCE on both
    torch.testing.assert_close(
        generator_adv_loss(fake, None, "standard"), -torch.log(torch.sigmoid(fake)).mean()
    )
    expected_d = F.binary_cross_entropy_with_logits(real, ones) + F.binary_cross_entropy_with_logits(
        fake, zeros
    )
    torch.testing.assert_close(discriminator_loss(real, fake, "standard"), expected_d)
    # numerically stable where a naive log(sigmoid) would give inf
    assert torch.isfinite(generator_adv_loss(torch.tensor([[-200.0]]), None, "standard"))
    # RaGAN: D's loss of (real, fake) is G's loss with the roles of real and fake swapped
    torch.testing.assert_close(
        discriminator_loss(real, fake, "ragan"), generator_adv_loss(real, fake, "ragan")
    )
    assert discriminator_loss(real + 10, fake, "ragan") < discriminator_loss(real, fake, "ragan")


def test_r1_penalty_of_a_linear_critic_is_its_squared_weight_norm() -> None:
    w = torch.tensor([1.0, -2.0, 0.5])
    x = torch.rand(4, 3, requires_grad=True)
    logits = (x * w).sum(1, keepdim=True)
    assert r1_penalty(logits, x).item() == pytest.approx(float((w * w).sum()))


def _random_vgg19() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return losses._features("vgg19", 100).state_dict()


def test_multi_layer_taps_are_the_named_convs_before_their_relu() -> None:
    multi = CONTENT_LAYERS["vgg19_multi"]
    assert isinstance(multi, losses.VGGMultiLayer)
    # conv1_2, conv2_2, conv3_4, conv4_4, conv5_4 sit at 2, 7, 16, 25, 34 in torchvision's vgg19
    assert [layer.conv_index for layer in multi.layers] == [2, 7, 16, 25, 34]
    assert multi.end == 35 and multi.weights == [0.1, 0.1, 1.0, 1.0, 1.0]
    state = _random_vgg19()
    feats = VGGFeatures(multi, state, "torchvision")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    taps = feats(x)
    assert isinstance(taps, tuple) and len(taps) == 5
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    for layer, tap in zip(multi.layers, taps, strict=True):
        prefix = losses._features("vgg19", layer.conv_index + 1)  # ends with the conv itself
        prefix.load_state_dict({k: state[k] for k in prefix.state_dict()})
        expected = prefix((x - mean) / std)
        torch.testing.assert_close(tap, expected)
        assert tap.min() < 0  # before the ReLU (an in-place ReLU would have zeroed these)


def test_multi_layer_content_loss_is_the_weighted_sum_of_l1() -> None:
    feats = VGGFeatures(CONTENT_LAYERS["vgg19_multi"], _random_vgg19(), "torchvision")
    loss = ContentLoss(feats)
    g = torch.Generator().manual_seed(5)
    hr = torch.rand(2, 3, 32, 32, generator=g)
    sr = (hr + 0.05 * torch.randn(hr.shape, generator=g)).clamp(0, 1).requires_grad_(True)
    expected = sum(
        w * F.l1_loss(a, b) for w, a, b in zip([0.1, 0.1, 1.0, 1.0, 1.0], feats(sr), feats(hr), strict=True)
    )
    value = loss(sr, hr)
    torch.testing.assert_close(value, expected)
    value.backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0
    assert loss(hr, hr).item() == 0.0
    # Caffe-convention weights are put in the same (torchvision) units
    caffe = ContentLoss(VGGFeatures(CONTENT_LAYERS["vgg19_multi"], _random_vgg19(), "caffe"))
    assert caffe.scale == pytest.approx(1 / (255 * 0.226))
    assert ContentLoss(feats, feature_scale=2.0).scale == 2.0


def test_multi_layer_needs_vgg19_to_conv5_4(vgg_file: Path) -> None:
    with pytest.raises(PerceptualWeightsError, match=r"up to conv1_2, conv2_2, conv3_4, conv4_4, conv5_4"):
        load_vgg("vgg19_multi", vgg_file)  # the 4-conv prefix stops at conv2_2


def test_grid_loss_pushes_along_the_subpixel_checkerboard_only() -> None:
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(2, 3, 64, 64, generator=g) * 0.8 + 0.1
    pattern = torch.zeros(1, 1, 4, 4)
    pattern[..., 0, 0], pattern[..., 2, 1] = 0.04, -0.03
    pattern = (pattern - pattern.mean()).repeat(1, 1, 16, 16)  # period 4: one sub-pixel phase per cell
    noise = torch.randn(hr.shape, generator=g)
    noise = noise * pattern.pow(2).mean().sqrt() / noise.pow(2).mean().sqrt()  # the same RMS
    ramp = torch.linspace(-0.025, 0.025, 64).view(1, 1, 1, 64)  # smooth, its step 0.0008 per pixel

    same = hr.clone().requires_grad_(True)
    grid_loss(same, hr, 4).backward()
    assert same.grad is not None and torch.isfinite(same.grad).all()  # no infinite root gradient at 0
    checker = grid_loss(hr + pattern, hr, 4)
    assert checker > 5 * grid_loss(hr + noise, hr, 4)
    assert grid_loss(hr + ramp, hr, 4) < 0.1 * checker
    assert grid_loss(hr + 0.05, hr, 4) < 1e-4  # an offset is the pixel loss's business

    sr = (hr + pattern + 0.5 * noise).requires_grad_(True)
    grid_loss(sr, hr, 4).backward()
    assert sr.grad is not None
    direction = F.cosine_similarity(sr.grad.flatten(), pattern.expand_as(hr).flatten(), dim=0)
    assert direction > 0.9  # its gradient is the checkerboard itself: descent removes it
    with torch.no_grad():
        step = 0.5 * pattern.expand_as(hr).norm() * sr.grad / sr.grad.norm()  # half the pattern's size
        assert grid_loss(sr - step, hr, 4) < 0.7 * checker


def test_block_excess_loss_weighs_only_steps_sharper_than_the_clean_ones_on_the_block_lines() -> None:
    """The one-sided anti-block term: zero for a perfect restoration, for an error inside the
    blocks, for a block edge softened below the clean step, and for roughness between the lines
    (what a ratio of steps would reward); a block left raised by d on a flat image costs d at each
    of its two edges, averaged over every edge line; its gradient pulls those steps down."""
    torch.manual_seed(0)
    clean = torch.rand(2, 3, 48, 48)
    assert block_excess_loss(clean, clean) == 0
    inside = clean.clone()
    inside[..., 9:15, 9:15] += 0.2
    assert block_excess_loss(inside, clean) < 1e-6
    soft = clean.clone()
    soft[..., 1:7, 7:9] = soft[..., 1:7, 7:9].mean(dim=-1, keepdim=True)  # an edge at x = 8 smoothed away
    assert block_excess_loss(soft, clean) == 0
    assert block_step_loss(soft, clean) > 0  # the two-sided term asks for the clean step back
    flat = torch.full((1, 3, 48, 48), 0.5)
    raised = flat.clone()
    raised[..., :, 8:16] += 0.1  # one column of blocks: steps at x = 8 and x = 16, of 5 lines
    torch.testing.assert_close(
        block_excess_loss(raised, flat), torch.tensor(2 / 5 * 0.1), rtol=1e-4, atol=1e-6
    )
    rough = flat + 0.05 * torch.randn_like(flat)
    rough[..., :, 7::8] = 0.5  # pixels on both sides of each line left flat
    rough[..., :, 8::8] = 0.5
    rough[..., 7::8, :] = 0.5
    rough[..., 8::8, :] = 0.5
    assert block_excess_loss(rough, flat) == 0
    restored = raised.clone().requires_grad_(True)
    block_excess_loss(restored, flat).backward()
    assert restored.grad is not None
    with torch.no_grad():
        after = restored - 0.01 * restored.grad / restored.grad.abs().max()
    assert block_excess_loss(after, flat) < block_excess_loss(raised, flat)


def test_block_step_loss_weighs_only_the_steps_across_jpeg_block_edges() -> None:
    """The restore stage's anti-block term: zero for a perfect restoration and for any error that
    stays inside the 8x8 blocks; a block left raised by d costs d at each of its two edges, averaged
    over every edge line; its gradient reaches only the pixels on either side of an edge."""
    torch.manual_seed(0)
    clean = torch.rand(2, 3, 48, 48)
    assert block_step_loss(clean, clean) == 0
    inside = clean.clone()
    inside[..., 9:15, 9:15] += 0.2  # an error that does not touch an edge
    assert block_step_loss(inside, clean) < 1e-6
    raised = clean.clone()
    raised[..., :, 8:16] += 0.1  # one column of blocks: steps at x = 8 and x = 16, of 5 lines
    torch.testing.assert_close(
        block_step_loss(raised, clean), torch.tensor(2 / 5 * 0.1), rtol=1e-4, atol=1e-6
    )
    restored = (clean + 0.05 * torch.randn_like(clean)).requires_grad_(True)
    block_step_loss(restored, clean).backward()
    assert restored.grad is not None
    touched = restored.grad.abs().sum(dim=(0, 1)) > 0  # (48, 48)
    edge = torch.zeros(48, dtype=torch.bool)
    edge[7::8] = True
    edge[8::8] = True
    assert not touched[~edge][:, ~edge].any()  # no pixel away from every edge line moves
    assert touched[edge].any() and touched[:, edge].any()
