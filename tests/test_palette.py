"""Palette-packed weight files: exact round trip, the VGG loader reads them, broken ones are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from srgan_cli.errors import PerceptualWeightsError
from srgan_cli.sr.losses import load_vgg
from srgan_cli.sr.palette import PaletteError, pack, pack_file, unpack


def _quantised(shape: tuple[int, ...], levels: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(levels, generator=g)
    return table[torch.randint(0, levels, shape, generator=g)]


def test_pack_is_exact_and_packs_only_what_fits() -> None:
    state = {
        "k256": _quantised((64, 32, 3, 3), 256, 0),  # exactly 256 values: packed
        "k300": _quantised((64, 32, 3, 3), 300, 1),  # too many values: plain
        "bias": _quantised((64,), 4, 2),  # too small to gain: plain
        "half": _quantised((32, 32, 3, 3), 200, 3).half(),
        "steps": torch.arange(5000),  # not floating point: plain
    }
    packed = pack(state)
    assert set(packed) == {
        "k256.codes", "k256.palette", "k300", "bias", "half.codes", "half.palette", "steps"
    }  # fmt: skip
    assert packed["k256.codes"].dtype == torch.uint8 and packed["k256.palette"].numel() == 256
    assert packed["half.palette"].dtype == torch.float16
    back = unpack(packed)
    assert back.keys() == state.keys()
    for key, tensor in state.items():
        assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), key
    assert unpack(state) is state  # a plain state dict passes through


def test_broken_packs_are_refused() -> None:
    packed = pack({"w": _quantised((16, 16, 4, 4), 10, 0)})
    with pytest.raises(PaletteError, match="no w.palette"):
        unpack({"w.codes": packed["w.codes"]})
    with pytest.raises(PaletteError, match="no w.codes"):
        unpack({"w.palette": packed["w.palette"], "v": torch.zeros(1)})
    with pytest.raises(PaletteError, match="points past"):
        unpack({"w.codes": packed["w.codes"], "w.palette": packed["w.palette"][:5]})
    with pytest.raises(PaletteError, match="uint8"):
        unpack({"w.codes": packed["w.codes"].long(), "w.palette": packed["w.palette"]})
    with pytest.raises(PaletteError, match="both plain and packed"):
        unpack({**packed, "w": torch.zeros(3)})


def test_the_vgg_loader_reads_a_packed_file_like_the_plain_one(tmp_path: Path, vgg_file: Path) -> None:
    # a VGG prefix whose kernels take 256 values each, like the Caffe VGG19 from perceptual_weights.py
    state = {
        k: _quantised(tuple(v.shape), 256, i) if v.dim() == 4 else v
        for i, (k, v) in enumerate(load_file(str(vgg_file)).items())
    }
    plain = tmp_path / "vgg19_caffe_plain.safetensors"
    save_file(state, str(plain))
    small = tmp_path / "vgg19_caffe_packed.safetensors"
    assert pack_file(plain, small) == (3, len(state))  # the first conv (3 x 64 x 9 = 1728) stays plain
    assert small.stat().st_size < 0.3 * plain.stat().st_size
    with pytest.raises(FileExistsError):
        pack_file(plain, small)
    x = torch.rand(2, 3, 24, 24)
    a, b = load_vgg("vgg22", plain), load_vgg("vgg22", small)
    assert a.convention == b.convention == "caffe"
    assert torch.equal(a(x), b(x))
    broken = tmp_path / "vgg19_broken.safetensors"
    save_file({k: v for k, v in load_file(str(small)).items() if not k.endswith(".palette")}, str(broken))
    with pytest.raises(PerceptualWeightsError, match="cannot read VGG weights.*palette"):
        load_vgg("vgg22", broken)
