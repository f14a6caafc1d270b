"""The degradation pipeline: seeded and reproducible, ranges that hold, kernels and filtering that
match their definitions, TOML and presets, resumable state; and `srgan degrade`."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from srgan_cli.cli.app import app
from srgan_cli.degradations import (
    PRESETS,
    DegradationConfig,
    DegradationError,
    Degrader,
    load_degradation,
    ops,
    parse_damage,
)
from srgan_cli.degradations.config import MAX_KERNEL, Stage
from srgan_cli.degradations.kernels import filter2d, gaussian_family, random_blur_kernels, sinc
from srgan_cli.sr.data import CropPool

from .conftest import make_photo


def _batch(n: int = 4, side: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.stack(
        [
            torch.from_numpy(make_photo(side, side, seed=seed + i)).permute(2, 0, 1).float() / 255
            for i in range(n)
        ]
    )


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_is_seeded_and_reproducible(preset: str) -> None:
    hr = _batch()
    a = Degrader(load_degradation(preset), 4, seed=5)(hr)
    b = Degrader(load_degradation(preset), 4, seed=5)(hr)
    assert a.shape == (4, 3, 12, 12) and torch.equal(a, b)
    assert torch.equal(a, (a * 255).round() / 255)  # 8-bit like a real file
    if preset != "bicubic":
        c = Degrader(load_degradation(preset), 4, seed=6)(hr)
        assert not torch.equal(a, c)


def test_bicubic_preset_is_the_crop_pools_lr() -> None:
    pool = CropPool([make_photo(64, 64, seed=1)], scale=4, crop=32)
    lr, hr = pool.batch(3, pool.generator(2))
    assert torch.equal(Degrader(load_degradation("bicubic"), 4)(hr), lr)


def test_state_dict_continues_the_same_stream() -> None:
    hr = _batch(2, 32)
    first = Degrader(load_degradation("realesrgan"), 2, seed=1)
    first(hr)
    saved = {k: v.clone() for k, v in first.state_dict().items()}
    expected = [first(hr), first(hr)]
    again = Degrader(load_degradation("realesrgan"), 2, seed=99)
    again.load_state_dict(saved)
    assert all(torch.equal(again(hr), e) for e in expected)


def test_every_step_of_a_stage_is_drawn_within_its_ranges() -> None:
    config = load_degradation("realesrgan")
    degrader = Degrader(config, 4, seed=0, record=True)
    hr = _batch(8, 64)
    first = config.first
    assert first is not None
    for _ in range(6):
        degrader(hr)
        for row in degrader.last:
            assert first.jpeg_quality[0] <= row["first_jpeg"] <= first.jpeg_quality[1]
            assert config.final_jpeg_quality[0] <= row["final_jpeg"] <= config.final_jpeg_quality[1]
            noise = row["first_noise"]
            span = first.noise_sigma if noise["kind"] == "gaussian" else first.poisson_scale
            assert span[0] - 1e-3 <= noise["strength"] <= span[1] + 1e-3
            resize = row["first_resize"]
            assert first.resize_range[0] <= resize["factor"] <= first.resize_range[1]
            assert resize["mode"] in first.resize_modes
            assert row["second_resize"]["factor"] <= config.second.resize_range[1] + 1e-6  # type: ignore[union-attr]


def test_random_kernels_are_normalised_and_within_their_size() -> None:
    g = torch.Generator().manual_seed(0)
    kernels, kinds = random_blur_kernels(
        200,
        kinds=Stage().kernel_kinds,
        size=(7, 13),
        sigma=(0.2, 3.0),
        generalized_beta=(0.5, 4.0),
        plateau_beta=(1.0, 2.0),
        sinc_prob=0.3,
        generator=g,
    )
    assert kernels.shape == (200, MAX_KERNEL, MAX_KERNEL)
    torch.testing.assert_close(kernels.sum(dim=(1, 2)), torch.ones(200), atol=1e-5, rtol=0)
    c = MAX_KERNEL // 2
    outside = kernels.clone()
    outside[:, c - 6 : c + 7, c - 6 : c + 7] = 0  # size 13 at most: nothing beyond 6 px from the centre
    assert outside.abs().max() == 0
    assert torch.equal(kernels, kernels.flip(1).flip(2))  # point-symmetric (filter2d relies on it)
    assert {"sinc", "iso", "aniso"} <= set(kinds)


def test_isotropic_gaussian_is_the_outer_product_of_1d_gaussians() -> None:
    sigma = torch.tensor([1.3], dtype=torch.float64)
    k = gaussian_family(torch.tensor([0]), torch.tensor([21]), sigma, sigma, torch.zeros(1), torch.ones(1))[0]
    r = torch.arange(21, dtype=torch.float64) - 10
    g = torch.exp(-0.5 * (r / 1.3) ** 2)
    torch.testing.assert_close(k, torch.outer(g, g) / torch.outer(g, g).sum())


def test_sinc_kernel_has_the_bessel_form() -> None:
    k = sinc(torch.tensor([21]), torch.tensor([math.pi / 2], dtype=torch.float64))[0]
    r = math.sqrt(3**2 + 4**2)  # at (3, 4) from the centre
    w = math.pi / 2
    raw_centre, raw_at = (
        w**2 / (4 * math.pi),
        w * torch.special.bessel_j1(torch.tensor(w * r, dtype=torch.float64)).item() / (2 * math.pi * r),
    )
    assert k[10 + 3, 10 + 4].item() / k[10, 10].item() == pytest.approx(raw_at / raw_centre, rel=1e-9)


def test_filter2d_matches_a_direct_convolution_with_reflected_borders() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 3, 30, 26, generator=g)
    kernels, _ = random_blur_kernels(
        3,
        kinds={"aniso": 1.0},
        size=(21, 21),
        sigma=(0.5, 3.0),
        generalized_beta=(1, 1),
        plateau_beta=(1, 1),
        sinc_prob=0.0,
        generator=g,
    )
    fast = filter2d(x, kernels)
    padded = F.pad(x, (10, 10, 10, 10), mode="reflect")
    direct = torch.cat(
        [F.conv2d(padded[i : i + 1], kernels[i].expand(3, 1, 21, 21), groups=3) for i in range(3)]
    )
    torch.testing.assert_close(fast, direct, atol=1e-5, rtol=0)


def test_noise_has_the_drawn_strength_and_grey_noise_is_grey() -> None:
    g = torch.Generator().manual_seed(0)
    flat = torch.full((2, 3, 128, 128), 0.5)
    noisy = ops.gaussian_noise(flat, torch.tensor([10.0, 10.0]), torch.tensor([False, True]), g)
    assert (noisy - flat).std().item() * 255 == pytest.approx(10.0, rel=0.03)
    grey = noisy[1]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert not torch.equal(noisy[0, 0], noisy[0, 1])


def test_jpeg_makes_8x8_blocks_and_quality_matters() -> None:
    from srgan_cli.metrics.luma import blockiness_y

    x = _batch(2, 64)
    low, high = ops.jpeg(x, [10, 10]), ops.jpeg(x, [95, 95])
    assert (low - x).abs().mean() > 2 * (high - x).abs().mean()
    assert blockiness_y(low, 8) > 1.3 > blockiness_y(x, 8)


def test_video_codec_round_trip_damages_mildly_and_keeps_odd_sizes() -> None:
    x = _batch(2, 34)[:, :, :, :33]
    out = ops.video_codec(x, ["libx264", "libx264"], [18, 40])
    assert out.shape == x.shape
    err = (out - x).abs().mean(dim=(1, 2, 3))
    assert 0 < err[0] < err[1]


def test_unsharp_target_sharpens_edges_not_flat_areas() -> None:
    x = torch.zeros(1, 3, 64, 64)
    x[..., 32:] = 0.8  # one vertical edge
    x[..., :16] += 0.01  # a step too small to count as detail
    y = ops.unsharp_mask(x, 0.5)
    assert y[..., 33].mean() > x[..., 33].mean()  # overshoot at the bright side of the edge
    assert torch.allclose(y[..., 4:8], x[..., 4:8], atol=1e-3)


def test_sharpened_targets_spare_the_crops_that_kept_the_clean_lr() -> None:
    config = replace(PRESETS["noisy"](), clean_prob=0.5, sharpen_target=1.0, sharpen_sigma=2.4)
    degrader = Degrader(config, 4, seed=3)
    hr = _batch(8, 48)
    degrader(hr)
    clean = degrader.clean
    assert clean is not None and 0 < int(clean.sum()) < 8
    target = degrader.target(hr)
    change = (target - hr).abs().flatten(1).amax(dim=1)
    assert bool((change[clean] == 0).all()) and bool((change[~clean] > 0.01).all())
    # the sigma asked for is the one used: Real-ESRGAN's wide 8 px mask gives another target
    wide = Degrader(replace(config, sharpen_sigma=8.0), 4, seed=3)
    wide(hr)
    assert not torch.allclose(wide.target(hr), target)
    assert torch.equal(Degrader(replace(config, sharpen_target=0.0), 4).target(hr), hr)
    # sharpen_threshold 0 sharpens faint detail too, which the default threshold leaves alone
    faint = torch.full((1, 3, 48, 48), 0.5)
    faint[..., ::2, :] += 2 / 255
    plain, every = (
        Degrader(replace(config, clean_prob=0.0, sharpen_threshold=t), 4).target(faint) for t in (10.0, 0.0)
    )
    assert torch.allclose(plain, faint) and (every - faint).abs().max() > 0.5 / 255
    with pytest.raises(DegradationError, match="sharpen_sigma"):
        replace(config, sharpen_sigma=0.1).check()
    with pytest.raises(DegradationError, match="sharpen_threshold"):
        replace(config, sharpen_threshold=-1.0).check()


def test_repair_preset_blurs_at_the_lr_size_and_sharpens_only_damaged_targets() -> None:
    degrader = Degrader(load_degradation("repair"), 4, seed=1, record=True)
    hr = _batch(16, 48)
    degrader(hr)
    blurred = [row.get("second_blur") is not None for row in degrader.last]
    assert any(blurred) and not all(blurred)
    assert degrader.clean is not None and bool(degrader.clean.any())
    changed = (degrader.target(hr) - hr).abs().flatten(1).amax(dim=1) > 0
    assert torch.equal(changed, ~degrader.clean)


def test_toml_overrides_ranges_and_rejects_mistakes(tmp_path: Path) -> None:
    good = tmp_path / "mine.toml"
    good.write_text(
        'preset = "photo"\nfinal_jpeg_quality = [70, 80]\nsecond = false\n[first]\nnoise_sigma = [0, 3]\n'
    )
    config = load_degradation(good)
    assert config.name == "mine" and config.second is None
    assert config.final_jpeg_quality == (70, 80) and config.first is not None
    assert (
        config.first.noise_sigma == (0, 3) and config.first.blur_sigma == PRESETS["photo"]().first.blur_sigma
    )  # type: ignore[union-attr]
    assert DegradationConfig.from_dict(config.to_dict()) == config  # what weights metadata records
    for text, message in [
        ("[first]\nnoise_sigma = [5, 1]\n", "low <= high"),
        ("[first]\nkernel_size = [7, 22]\n", "kernel_size"),
        ("jpeg = 3\n", "unknown option"),
        ("final_sinc_prob = 2\n", "chance"),
        ("video_prob = 0.5\nvideo_codecs = ['vp9']\n", "video_codecs"),
        ('preset = "bicubic"\n', "preset must be"),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(DegradationError, match=message):
            load_degradation(bad)
    with pytest.raises(DegradationError, match="unknown degradation"):
        load_degradation("jpegish")
    with pytest.raises(DegradationError, match="not found"):
        load_degradation(tmp_path / "none.toml")


def test_damage_specs() -> None:
    assert parse_damage("moderate").jpeg == 60
    d = parse_damage("blur=0.7, jpeg=40")
    assert (d.blur, d.noise, d.jpeg, d.codec) == (0.7, 0.0, 40, None)
    assert parse_damage("photo", seed=3).preset == "photo"
    v = parse_damage("noise=2,h265=28")
    assert (v.noise, v.codec, v.crf, v.spec) == (2.0, "libx265", 28, "noise=2,h265=28")
    assert (parse_damage("h264=0").codec, parse_damage("h264=0").crf) == ("libx264", 0)
    for bad in ("jpeg=0", "blur=x", "sharpen=1", "", "h264=52", "h264=2.5", "h264=20,h265=20", "vp9=30"):
        with pytest.raises(DegradationError):
            parse_damage(bad)


def test_codec_damage_is_one_video_frame_after_the_jpeg_save() -> None:
    """`jpeg=50,h264=30` is the `jpeg=50` LR through one H.264 frame at CRF 30; a higher CRF damages
    more, and the same spec gives the same LR every time."""
    from srgan_cli.degradations import damage_image

    hr = make_photo(96, 136, seed=4)
    jpeg_only = damage_image(hr, 4, parse_damage("jpeg=50"), "a")
    both = damage_image(hr, 4, parse_damage("jpeg=50,h264=30"), "a")
    assert both.shape == jpeg_only.shape == (24, 34, 3)
    assert np.array_equal(both, ops.codec_round_trip(jpeg_only, "libx264", 30))
    assert np.array_equal(both, damage_image(hr, 4, parse_damage("jpeg=50,h264=30"), "a"))
    clean = damage_image(hr, 4, parse_damage("blur=0"), "a").astype(float)
    errors = [
        np.abs(damage_image(hr, 4, parse_damage(f"{codec}={crf}"), "a") - clean).mean()
        for codec, crf in (("h264", 10), ("h264", 40), ("h265", 40))
    ]
    assert 0 < errors[0] < errors[1] and errors[2] > errors[0]


def test_degrade_command_writes_reproducible_images_and_a_record(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        Image.fromarray(make_photo(64, 72, seed=i)).save(src / f"p{i}.png")
    (src / "broken.png").write_bytes(b"not a png")
    runner = CliRunner()
    args = ["degrade", str(src), "-o", str(tmp_path / "a"), "--preset", "realesrgan", "--seed", "2"]
    first = runner.invoke(app, args)
    assert first.exit_code == 1, first.output  # the broken file fails alone
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["degrade.json", "p0.png", "p1.png"]
    assert Image.open(tmp_path / "a" / "p0.png").size == (18, 16)
    record = json.loads((tmp_path / "a" / "degrade.json").read_text())
    assert record["ranges"]["name"] == "realesrgan" and "first_jpeg" in record["images"][1]["applied"]
    again = runner.invoke(app, [*args[:3], str(tmp_path / "b"), *args[4:]])
    assert again.exit_code == 1
    for name in ("p0.png", "p1.png"):
        assert np.array_equal(
            np.array(Image.open(tmp_path / "a" / name)), np.array(Image.open(tmp_path / "b" / name))
        )
    refused = runner.invoke(app, args)  # outputs exist: nothing overwritten unless asked
    assert refused.exit_code == 1 and "already exists" in refused.output
    Image.fromarray(make_photo(64, 72, seed=5)).save(src / "p2.png")
    added = runner.invoke(app, [*args[:-1], "3"])  # a new photo, another seed: the record keeps all
    assert added.exit_code == 1
    images = json.loads((tmp_path / "a" / "degrade.json").read_text())["images"]
    by_name = {Path(str(row["output"])).name: row for row in images}
    assert set(by_name) == {"p0.png", "p1.png", "p2.png", "broken.png"}
    assert [by_name[n]["seed"] for n in ("p0.png", "p1.png", "p2.png")] == [2, 2, 3]
    first_p0 = next(row for row in record["images"] if str(row["output"]).endswith("p0.png"))
    assert by_name["p0.png"]["applied"] == first_p0["applied"]
    assert "error" not in by_name["p0.png"] and "error" in by_name["broken.png"]
    bad = runner.invoke(app, ["degrade", str(src), "-o", str(tmp_path / "c"), "--preset", "nope"])
    assert bad.exit_code == 2 and "cannot read" in bad.output


def test_clean_share_keeps_the_bicubic_lr() -> None:
    pool = CropPool([make_photo(64, 64, seed=1)], scale=4, crop=32)
    lr, hr = pool.batch(40, pool.generator(2))
    config = load_degradation("photo")
    assert config.clean_prob == 0.2
    degrader = Degrader(config, 4, seed=0, record=True)
    out = degrader(hr)
    clean = [row.get("clean", False) for row in degrader.last]
    assert 0 < sum(clean) < 40
    for i in range(40):  # exactly the clean protocol's LR where drawn, damaged elsewhere
        assert torch.equal(out[i], lr[i]) == clean[i]


def test_damage_from_the_clean_lr_is_noise_on_the_bicubic_lr() -> None:
    """from_clean_lr: no first stage, the second works on the clean protocol's LR at its own size,
    so what it adds is only its own damage (here: grey Gaussian noise of 6 levels, no JPEG)."""
    pool = CropPool([make_photo(96, 96, seed=3)], scale=4, crop=64)
    lr, hr = pool.batch(8, pool.generator(1))
    quiet = Stage(
        blur_prob=0.0, resize_probs=(0.0, 0.0, 1.0), noise_sigma=(6.0, 6.0), gaussian_noise_prob=1.0
    )
    config = DegradationConfig(
        from_clean_lr=True,
        first=None,
        second=replace(quiet, jpeg_prob=0.0),
        final_sinc_prob=0.0,
        final_jpeg_prob=0.0,
    )
    out = Degrader(config, 4, seed=2)(hr)
    residual = (out - lr) * 255
    assert abs(float(residual.mean())) < 0.5
    assert 5.0 < float(residual.std()) < 7.0  # 6 levels, less what clipping at 0 and 255 takes
    with pytest.raises(DegradationError, match="from_clean_lr"):
        DegradationConfig(from_clean_lr=True).check()
