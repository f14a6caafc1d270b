"""LPIPS-alex: the distance's properties and every way its weights are found or refused (random weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from srgan_cli.errors import PerceptualWeightsError, WeightsError
from srgan_cli.metrics import lpips as lpips_mod
from srgan_cli.metrics.lpips import LPIPS, load_lpips
from srgan_cli.sr.data import EvalPair, bicubic_downscale
from srgan_cli.sr.evaluate import evaluate

from .conftest import lpips_state, make_photo, write_lpips_weights


@pytest.fixture(scope="module")
def net() -> LPIPS:
    return LPIPS(*lpips_state())


def photo_batch(n: int = 2, h: int = 48, w: int = 64) -> torch.Tensor:
    """(n, 3, h, w) float32 in [0, 1] from the structured test photos."""
    imgs = [torch.from_numpy(make_photo(h, w, seed=i)).permute(2, 0, 1).float() / 255 for i in range(n)]
    return torch.stack(imgs)


def noisy(x: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


def test_distance_properties(net: LPIPS) -> None:
    x = photo_batch(3)
    y = noisy(x, 0.1)
    with torch.no_grad():
        same, d_xy, d_yx = net(x, x), net(x, y), net(y, x)
    assert same.shape == (3,) and d_xy.shape == (3,) and d_xy.dtype == torch.float32
    assert torch.all(same.abs() < 1e-7)
    assert torch.all(d_xy > 1e-4)
    torch.testing.assert_close(d_xy, d_yx)
    # the batch is just its images side by side
    torch.testing.assert_close(net(x[1:2], y[1:2]), d_xy[1:2])


def test_grows_with_noise(net: LPIPS) -> None:
    x = photo_batch(1)
    with torch.no_grad():
        d = [float(net(x, noisy(x, s))[0]) for s in (0.02, 0.05, 0.1, 0.2, 0.4)]
    assert d == sorted(d) and d[0] > 0, d


def test_sizes_and_shapes(net: LPIPS) -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 3, 33, 47, generator=g), torch.rand(2, 3, 33, 47, generator=g)
    assert net(x, y).shape == (2,)
    # below AlexNet's 31 px minimum both images are enlarged alike: still a finite score, still 0 for equal
    small = torch.rand(1, 3, 12, 20, generator=g)
    d = net(small, small.flip(-1))
    assert d.shape == (1,) and torch.isfinite(d).all() and float(d[0]) > 0
    assert float(net(small, small)[0]) == pytest.approx(0, abs=1e-7)
    with pytest.raises(ValueError, match="one shape"):
        net(x, y[:, :, :32])


def test_frozen_eval_and_gradients_reach_inputs(net: LPIPS) -> None:
    assert not any(p.requires_grad for p in net.parameters())
    net.train()
    assert not net.training
    x = photo_batch(1).requires_grad_(True)
    net(x, noisy(x.detach(), 0.1)).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_load_from_dir_matches_state_dicts(net: LPIPS, lpips_dir: Path) -> None:
    loaded = load_lpips(lpips_dir)
    x = photo_batch(2)
    y = noisy(x, 0.05)
    torch.testing.assert_close(loaded(x, y), net(x, y))
    # torchvision's own key layout ("features." prefix, classifier tensors) is accepted too
    feats, lins = lpips_state()
    full = {f"features.{k}": v for k, v in feats.items()} | {"classifier.1.bias": torch.zeros(4)}
    torch.testing.assert_close(LPIPS(full, lins)(x, y), net(x, y))


def test_env_var_and_precedence(lpips_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(lpips_mod.ENV_VAR, str(lpips_dir))
    assert isinstance(load_lpips(), LPIPS)
    # an explicit folder wins over the environment
    monkeypatch.setenv(lpips_mod.ENV_VAR, str(tmp_path / "nowhere"))
    assert isinstance(load_lpips(lpips_dir), LPIPS)
    with pytest.raises(PerceptualWeightsError, match=lpips_mod.ENV_VAR):
        load_lpips()


def test_fp16_files_load_as_fp32(tmp_path: Path) -> None:
    half = load_lpips(write_lpips_weights(tmp_path / "half", dtype=torch.float16))
    assert all(p.dtype == torch.float32 for p in half.parameters())
    # same numbers as float32 files holding the fp16-rounded values
    feats, lins = lpips_state()
    rounded = LPIPS({k: v.half() for k, v in feats.items()}, {k: v.half() for k, v in lins.items()})
    x = photo_batch(1)
    y = noisy(x, 0.1)
    torch.testing.assert_close(half(x, y), rounded(x, y))


def test_bad_folders_raise_typed_errors(lpips_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(PerceptualWeightsError, match="does not exist") as info:
        load_lpips(tmp_path / "nowhere")
    assert isinstance(info.value, WeightsError) and info.value.exit_code == 2
    assert "--lpips-weights" in (info.value.hint or "") and "docs/" in (info.value.hint or "")

    (lpips_dir / lpips_mod.LIN_FILE).unlink()
    with pytest.raises(PerceptualWeightsError, match=lpips_mod.LIN_FILE):
        load_lpips(lpips_dir)

    feats, lins = lpips_state()
    bad = tmp_path / "bad"
    write_lpips_weights(bad)
    save_file(lins | {"lin2.model.1.weight": torch.rand(1, 256, 1, 1)}, str(bad / lpips_mod.LIN_FILE))
    with pytest.raises(PerceptualWeightsError, match=r"lin2\.model\.1\.weight has shape \(1, 256, 1, 1\)"):
        load_lpips(bad)

    # a VGG features file where AlexNet's belongs: wrong keys, named
    vgg = {
        "0.weight": torch.rand(64, 3, 3, 3),
        "0.bias": torch.rand(64),
        "2.weight": torch.rand(64, 64, 3, 3),
    }
    save_file(vgg, str(bad / lpips_mod.FEATURES_FILE))
    with pytest.raises(PerceptualWeightsError, match=r"missing 10\.bias.*unexpected 2\.weight"):
        load_lpips(bad)

    (bad / lpips_mod.FEATURES_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(PerceptualWeightsError, match="cannot read"):
        load_lpips(bad)


def test_no_weights_anywhere() -> None:
    # conftest unsets SRGAN_LPIPS_WEIGHTS and hides any installed lpips package
    with pytest.raises(PerceptualWeightsError) as info:
        load_lpips()
    msg, hint = info.value.message, info.value.hint or ""
    assert lpips_mod.ENV_VAR in msg and "lpips package" in msg
    assert "pip install lpips" in hint and lpips_mod.ENV_VAR in hint and "--lpips-weights" in hint


def _fake_lpips_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    feats, lins = lpips_state()
    head = tmp_path / "lpips" / "weights" / "v0.1" / "alex.pth"
    head.parent.mkdir(parents=True)
    torch.save(lins, head)
    monkeypatch.setattr(lpips_mod, "_lpips_package_head", lambda: head)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def test_lpips_package_with_cached_torchvision_alexnet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchvision.models import AlexNet_Weights

    _fake_lpips_package(tmp_path, monkeypatch)
    # torchvision finds its checkpoint in the hub cache and downloads nothing
    feats, _ = lpips_state()
    ckpt = tmp_path / "torch_home" / "hub" / "checkpoints" / Path(AlexNet_Weights.IMAGENET1K_V1.url).name
    ckpt.parent.mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in feats.items()} | {"classifier.6.bias": torch.zeros(10)}, ckpt)
    x = photo_batch(1)
    torch.testing.assert_close(load_lpips()(x, noisy(x, 0.1)), LPIPS(*lpips_state())(x, noisy(x, 0.1)))


def test_lpips_package_without_torchvision_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.models._api as tv_api

    _fake_lpips_package(tmp_path, monkeypatch)

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    with pytest.raises(PerceptualWeightsError, match="not torchvision's AlexNet weights.*unreachable"):
        load_lpips()

    # tried once: the next runs say so without waiting on the network again, for a day
    def must_not_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("downloaded again")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", must_not_download)
    with pytest.raises(PerceptualWeightsError, match="download failed 0.0 h ago .*network is unreachable"):
        load_lpips()
    marker = tmp_path / "torch_home" / "hub" / lpips_mod.DOWNLOAD_FAILED
    marker.unlink()  # deleting the marker tries again
    with pytest.raises(PerceptualWeightsError, match="not torchvision's AlexNet weights: downloaded again"):
        load_lpips()


def test_evaluate_with_and_without_lpips(net: LPIPS) -> None:
    hr = make_photo(48, 40)
    pairs = [EvalPair("a", bicubic_downscale(hr, 2), hr)]
    plain = evaluate(pairs, 2, None, "bicubic")  # the positional form training validation uses
    assert plain.lpips is None and plain.images[0].lpips is None and plain.to_dict()["lpips"] is None
    report = evaluate(pairs, 2, None, "bicubic", lpips=net)
    assert report.images[0].psnr == plain.images[0].psnr
    assert report.lpips is not None and report.lpips > 0
    assert report.to_dict()["lpips"] == pytest.approx(report.lpips, abs=1e-5)
    # a perfect "upscaler" (returns the HR photo) scores 0
    perfect = evaluate(pairs, 2, lambda lr: hr.astype(np.float32) / 255, "oracle", lpips=net)
    assert perfect.lpips == pytest.approx(0, abs=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(lpips_dir: Path) -> None:
    x = photo_batch(2)
    y = noisy(x, 0.1)
    cpu = load_lpips(lpips_dir)(x, y)
    gpu = load_lpips(lpips_dir, device="cuda")(x.cuda(), y.cuda())
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-3)
