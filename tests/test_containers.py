"""Every container a community model comes in (.pth, .pt, .ckpt, .bin, .safetensors; plain, wrapped
in params_ema/params/state_dict/model/net_g, Lightning checkpoints with prefixed names and
bookkeeping, DataParallel's module.) is read without running pickled code and unwrapped the way
spandrel expects; `srgan models` lists what can run and says why the rest cannot."""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from srgan_cli import weights
from srgan_cli.cli.app import app
from srgan_cli.errors import WeightsFormatError
from srgan_cli.runtime.third_party import describe, why_not_runnable

runner = CliRunner()


def compact(seed: int = 0, scale: int = 2) -> dict[str, torch.Tensor]:
    """A tiny Real-ESRGAN Compact (SRVGGNet) state dict."""
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(seed)
    return Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=scale).state_dict()


def prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


@pytest.fixture
def lightning_module() -> Iterator[type]:
    """A stand-in for lightning.fabric.utilities.data.AttributeDict (Lightning's hyper-parameters),
    importable while a checkpoint is written and gone when it is read, as on a user's machine."""
    names = ["lightning", "lightning.fabric", "lightning.fabric.utilities", "lightning.fabric.utilities.data"]
    for name in names:
        sys.modules[name] = types.ModuleType(name)

    class AttributeDict(dict):
        pass

    AttributeDict.__module__, AttributeDict.__qualname__ = names[-1], "AttributeDict"
    sys.modules[names[-1]].AttributeDict = AttributeDict  # type: ignore[attr-defined]
    yield AttributeDict
    for name in names:
        sys.modules.pop(name, None)


def _plain(path: Path, state: dict[str, torch.Tensor]) -> None:
    torch.save(state, path)


def _params_ema(path: Path, state: dict[str, torch.Tensor]) -> None:
    # BasicSR / Real-ESRGAN: both kept, the EMA weights are the published ones
    torch.save({"params_ema": state, "params": compact(seed=9)}, path)


def _wrapped(key: str) -> Callable[[Path, dict[str, torch.Tensor]], None]:
    def save(path: Path, state: dict[str, torch.Tensor]) -> None:
        torch.save({key: state, "iter": 1000}, path)

    return save


def _nested(path: Path, state: dict[str, torch.Tensor]) -> None:
    torch.save({"model": {"state_dict": state}}, path)


def _data_parallel(path: Path, state: dict[str, torch.Tensor]) -> None:
    torch.save(prefixed(state, "module."), path)


def _compiled(path: Path, state: dict[str, torch.Tensor]) -> None:
    torch.save(prefixed(state, "_orig_mod."), path)


def _lightning(path: Path, state: dict[str, torch.Tensor]) -> None:
    """What Lightning's trainer.save_checkpoint writes, with a discriminator beside the generator."""
    hparams = sys.modules["lightning.fabric.utilities.data"].AttributeDict(lr=2e-4, scale=2)  # type: ignore[attr-defined]
    inner = {**prefixed(state, "net_g."), "net_d.conv.weight": torch.zeros(4, 3, 3, 3)}
    torch.save(
        {
            "epoch": 3,
            "global_step": 1200,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": inner,
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 2e-4, "params": [0, 1]}]}],
            "lr_schedulers": [],
            "hparams_name": "kwargs",
            "hyper_parameters": hparams,
            "args": argparse.Namespace(data="/data/div2k", batch=16),
            "best_psnr": np.float64(27.5),
        },
        path,
    )


def _lightning_model_prefix(path: Path, state: dict[str, torch.Tensor]) -> None:
    torch.save({"state_dict": prefixed(state, "model."), "epoch": 1}, path)


def _safetensors(path: Path, state: dict[str, torch.Tensor]) -> None:
    save_file(state, str(path))


def _safetensors_prefixed(path: Path, state: dict[str, torch.Tensor]) -> None:
    save_file(prefixed(state, "generator."), str(path))


CONTAINERS = {
    "plain.pth": _plain,
    "plain.pt": _plain,
    "plain.bin": _plain,
    "params_ema.pth": _params_ema,
    "params.pth": _wrapped("params"),
    "state_dict.pth": _wrapped("state_dict"),
    "model.pt": _wrapped("model"),
    "net_g.pth": _wrapped("net_g"),
    "model_state_dict.ckpt": _wrapped("model_state_dict"),
    "nested.pth": _nested,
    "data_parallel.bin": _data_parallel,
    "compiled.pth": _compiled,
    "lightning.ckpt": _lightning,
    "lightning_model.ckpt": _lightning_model_prefix,
    "plain.safetensors": _safetensors,
    "prefixed.safetensors": _safetensors_prefixed,
}


@pytest.mark.parametrize("name", sorted(CONTAINERS))
def test_each_container_reads_as_the_model_spandrel_builds(
    tmp_path: Path, name: str, lightning_module: type
) -> None:
    state = compact()
    path = tmp_path / name
    CONTAINERS[name](path, state)
    for module in [m for m in sys.modules if m.startswith("lightning")]:
        sys.modules.pop(module)  # reading must not need the classes the checkpoint names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        descriptor = describe(path)
    assert descriptor.architecture.name == "RealESRGAN Compact" and descriptor.scale == 2
    built = descriptor.model.state_dict()
    assert built.keys() == state.keys()
    assert all(torch.equal(built[k], state[k]) for k in state)  # params_ema's, never params'
    assert why_not_runnable(path) is None


def test_params_ema_is_preferred_to_params_and_state_dict() -> None:
    ema, other = {"w": torch.ones(1)}, {"w": torch.zeros(1)}
    assert weights.unwrap_state({"params": other, "params_ema": ema}) is ema
    assert weights.unwrap_state({"state_dict": other, "params_ema": ema}) is ema
    assert weights.unwrap_state({"only": {"state_dict": ema}}) is ema  # a dict of one dict, then a wrapper
    assert weights.unwrap_state(ema) is ema


def test_pickled_code_is_refused_and_never_run(tmp_path: Path) -> None:
    """A whole pickled model, or a pickle that calls a function, is refused by name; nothing runs."""
    from spandrel.architectures.Compact import Compact

    whole = tmp_path / "whole_model.ckpt"
    torch.save({"model": Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)}, whole)
    with pytest.raises(
        WeightsFormatError, match=r"holds pickled code or objects \((torch|spandrel)\..*refused"
    ):
        weights.read_state(whole)

    ran: list[str] = []

    class Evil:
        def __reduce__(self) -> tuple[Callable[..., None], tuple[str]]:
            return (ran.append, ("pwned",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": compact(), "callbacks": Evil()}, evil)
    with pytest.raises(WeightsFormatError, match="refused"):
        weights.read_state(evil)
    assert ran == []
    assert "pickled code" in (why_not_runnable(evil) or "")


def leftthomas_srgan() -> dict[str, torch.Tensor]:
    """The tensor names of github.com/leftthomas/SRGAN's Generator (netG_epoch_4_100.pth), small."""
    f = 4
    state = {"block1.0.weight": torch.zeros(f, 3, 9, 9), "block1.0.bias": torch.zeros(f)}
    state["block1.1.weight"] = torch.zeros(1)  # PReLU
    for b in range(2, 7):
        for conv in ("conv1", "conv2"):
            state[f"block{b}.{conv}.weight"] = torch.zeros(f, f, 3, 3)
            state[f"block{b}.{conv}.bias"] = torch.zeros(f)
        for bn in ("bn1", "bn2"):
            for t in ("weight", "bias", "running_mean", "running_var"):
                state[f"block{b}.{bn}.{t}"] = torch.zeros(f)
    state["block8.0.conv.weight"] = torch.zeros(4 * f, f, 3, 3)
    state["block8.2.weight"] = torch.zeros(3, f, 9, 9)
    return state


def test_models_lists_what_runs_and_says_why_the_rest_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save({"params_ema": compact()}, folder / "compact_x2.pth")
    _lightning_model_prefix(folder / "lightning_x2.ckpt", compact(seed=1))
    torch.save(leftthomas_srgan(), folder / "netG_epoch_4_100.pth")
    torch.save({"encoder.weight": torch.zeros(3, 3)}, folder / "mystery.bin")
    torch.save({"state_dict": compact(scale=1)}, folder / "denoise_x1.pth")  # spandrel knows it: not SR
    from spandrel.architectures.Compact import Compact

    torch.save(Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2), folder / "pickled.ckpt")
    (folder / "upscayl_model.bin").write_bytes(b"\x00" * 64)  # an ncnn .bin beside its .param
    monkeypatch.setenv(weights.ENV_DIR, str(folder))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))

    status = {path.name: why for path, why in weights.foreign_status()}
    assert status["compact_x2.pth"] is None and status["lightning_x2.ckpt"] is None
    assert "architecture spandrel knows" in (status["netG_epoch_4_100.pth"] or "")
    assert "architecture spandrel knows" in (status["mystery.bin"] or "")
    assert "not a super-resolution one" in (status["denoise_x1.pth"] or "")
    assert "pickled code" in (status["pickled.ckpt"] or "")
    assert "not a PyTorch model file" in (status["upscayl_model.bin"] or "")
    assert {p.name for p in weights.list_foreign()} == {"compact_x2.pth", "lightning_x2.ckpt"}

    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout) if row["arch"] != "srresnet"}
    cannot = {name for name, row in rows.items() if row["arch"] == "cannot run"}
    assert cannot == {"netG_epoch_4_100", "mystery", "denoise_x1", "pickled", "upscayl_model"}
    assert all(rows[name]["reason"] for name in cannot)
    assert rows["compact_x2"]["arch"] == "third-party" and rows["lightning_x2"]["arch"] == "third-party"
    text = " ".join(runner.invoke(app, ["models"]).output.split())
    assert "cannot run netG_epoch_4_100.pth: neither srgan-cli weights nor an architecture" in text
    assert "cannot run pickled.ckpt: holds pickled code" in text


def test_the_runnable_check_is_cached_by_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing builds each model once per process; a changed file is looked at again."""
    from srgan_cli.runtime import third_party

    path = tmp_path / "c.pth"
    torch.save(compact(), path)
    assert why_not_runnable(path) is None
    calls: list[Path] = []

    def describe_again(p: Path) -> None:
        calls.append(p)
        raise WeightsFormatError(f"{p}: changed")

    monkeypatch.setattr(third_party, "describe", describe_again)
    assert why_not_runnable(path) is None and calls == []
    torch.save({"encoder.weight": torch.zeros(2)}, path)
    os.utime(path, ns=(1, 1))
    assert why_not_runnable(path) == "changed" and calls == [path]
