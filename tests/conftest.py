"""Shared fixtures: tiny seeded models, small generated photos, an isolated weights folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

from srgan_cli import weights
from srgan_cli.metrics import lpips as lpips_mod
from srgan_cli.sr.models import SRResNet, SRResNetConfig

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py imported as a module (the scripts are not part of the package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A (H, W, 3) uint8 image with smooth gradients, edges and texture: enough structure for SR."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack(
        [
            0.5 + 0.4 * np.sin(xx / (5 + seed % 3) + yy / 9),
            0.5 + 0.4 * np.cos(yy / 7 - xx / 13),
            (xx + yy) / (height + width),
        ],
        axis=-1,
    )
    img[height // 4 : height // 2, width // 3 : 2 * width // 3] = rng.uniform(0, 1, 3)  # a flat block
    img += rng.normal(0, 0.03, img.shape)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def tiny_model(scale: int = 4, seed: int = 0, global_skip: bool = False, restore_blocks: int = 0) -> SRResNet:
    torch.manual_seed(seed)
    model = SRResNet(
        SRResNetConfig(
            scale=scale,
            n_blocks=1,
            n_feats=8,
            global_skip=global_skip,
            restore_blocks=restore_blocks,
            restore_feats=8,
        )
    )
    if restore_blocks:  # a trained front-end is not the identity its zero-initialised tail starts as
        torch.nn.init.normal_(model.restore.tail.weight, std=0.05)
    # non-trivial BN statistics so eval mode is not an identity
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def weights_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A SRGAN_WEIGHTS_DIR holding tiny_x4 and tiny_x2."""
    folder = tmp_path / "weights"
    weights.save(
        folder / "tiny_x4.safetensors", tiny_model(4), trained_on="nothing", metrics={"val_psnr_y": 1.0}
    )
    weights.save(folder / "tiny_x2.safetensors", tiny_model(2), trained_on="nothing")
    monkeypatch.setenv(weights.ENV_DIR, str(folder))
    return folder


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(make_photo(40 + 8 * i, 48, seed=i)).save(folder / f"p{i}.png")
    return folder


def lpips_state(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Random but well-formed LPIPS-alex weights: (AlexNet features, lin heads) state dicts."""
    g = torch.Generator().manual_seed(seed)
    feats: dict[str, torch.Tensor] = {}
    # torchvision alexnet().features conv index -> (out channels, in channels, kernel)
    convs = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}
    for i, (out_c, in_c, k) in convs.items():
        # He-scaled so activations neither vanish nor blow up through the five layers
        feats[f"{i}.weight"] = torch.randn(out_c, in_c, k, k, generator=g) * (2 / (in_c * k * k)) ** 0.5
        feats[f"{i}.bias"] = torch.randn(out_c, generator=g) * 0.01
    # the real heads are non-negative, which makes every distance >= 0; keep that property
    lins = {
        f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) * 0.1
        for i, c in enumerate((64, 192, 384, 256, 256))
    }
    return feats, lins


def write_lpips_weights(folder: Path, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """A folder laid out like tools/perceptual_weights.py's output, with random LPIPS-alex weights."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    feats, lins = lpips_state(seed)
    save_file({k: v.to(dtype) for k, v in feats.items()}, str(folder / lpips_mod.FEATURES_FILE))
    save_file({k: v.to(dtype) for k, v in lins.items()}, str(folder / lpips_mod.LIN_FILE))
    return folder


@pytest.fixture(autouse=True)
def _no_ambient_lpips(monkeypatch: pytest.MonkeyPatch) -> None:
    """LPIPS weights come only from what a test sets up: not the user's env, not an installed lpips."""
    monkeypatch.delenv(lpips_mod.ENV_VAR, raising=False)
    monkeypatch.setattr(lpips_mod, "_lpips_package_head", lambda: None)


@pytest.fixture(scope="session")
def _test_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("xdg")


@pytest.fixture(autouse=True)
def _no_ambient_models(monkeypatch: pytest.MonkeyPatch, _test_home: Path) -> None:
    """Models come only from what a test sets up: not the user's weights folder or SRGAN_WEIGHTS_DIR,
    not their model catalogue or cache (one cache for the session, so ONNX exports are shared)."""
    home = _test_home
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    for name in ("SRGAN_WEIGHTS_DIR", "SRGAN_MODEL_CATALOGUE", "SRGAN_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def lpips_dir(tmp_path: Path) -> Path:
    return write_lpips_weights(tmp_path / "lpips")


def make_vgg_prefix(path: Path, convs: int = 4, seed: int = 0) -> Path:
    """A random stand-in for VGG19's first `convs` convs (torchvision layer names) as safetensors:
    enough for the vgg22 content layer; tests never download real weights."""
    from safetensors.torch import save_file

    from srgan_cli.sr.losses import _features

    torch.manual_seed(seed)
    body = _features("vgg19", 100)
    state = {}
    n = 0
    for key, value in body.state_dict().items():
        if key.endswith(".weight"):
            n += 1
        if n > convs:
            break
        state[key] = value.clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


@pytest.fixture
def vgg_file(tmp_path: Path) -> Path:
    return make_vgg_prefix(tmp_path / "vgg" / "vgg19_prefix.safetensors")


@pytest.fixture
def init_weights(tmp_path: Path) -> Path:
    """A tiny x2 SRResNet standing in for the shipped pretrain weights."""
    return weights.save(tmp_path / "init" / "tiny_x2.safetensors", tiny_model(2, seed=5), trained_on="test")


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny shapes data set (16 images, 2 captions each) for text-to-image training tests."""
    from srgan_cli.text2img import shapes

    folder = tmp_path_factory.mktemp("shapes") / "data"
    shapes.make_shapes(folder, 16, seed=0, n_captions=2)
    return folder
