"""The weights file format: safetensors files that carry their architecture config, found by name or
path; header reading, metadata, saving, strict loading (which network a file builds: archs.py)."""

from __future__ import annotations

import json
import os
import struct
import sys
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from .atomic import atomic_open
from .errors import ForeignWeights, WeightsFormatError, WeightsMismatch, WeightsNotFound

FORMAT_VERSION = "1"
DEFAULT_MODEL = "srresnet_x4"  # what `srgan upscale` uses when -m is not given
# `srgan upscale -m auto`: JPEGs saved at AUTO_JPEG_QUALITY or lower get the real-world GAN, which
# beats DEFAULT_MODEL on them in PSNR, LPIPS and JPEG blocks, and so do videos, where it gives lower
# LPIPS, far less of the block grid and no more flicker for some PSNR (docs/degradations.md); the rest get
# DEFAULT_MODEL, which is better on clean photos and light JPEG damage
AUTO_MODEL = "auto"
REAL_MODEL = "srgan_x4_real"
AUTO_JPEG_QUALITY = 75


def auto_model(image: str | Path | BinaryIO) -> str:
    """The shipped model `auto` gives an image file (a path or a binary file object): REAL_MODEL
    for a JPEG saved at AUTO_JPEG_QUALITY or lower (read from its quantization tables), else
    DEFAULT_MODEL. `srgan upscale -m auto` and `srgan serve` both ask here."""
    from .imageio import jpeg_quality

    quality = jpeg_quality(image)
    return REAL_MODEL if quality is not None and quality <= AUTO_JPEG_QUALITY else DEFAULT_MODEL


ENV_DIR = "SRGAN_WEIGHTS_DIR"  # extra search folders (os.pathsep-separated), searched first

# What a torch model file (.pth/.pt/.ckpt/.bin: a zip archive) may unpack to, checked from its zip
# directory before torch reads it. torch stores members uncompressed, so an honest file unpacks to
# about its own size; the largest community SR models are 1-2 GB. A file that declares more than
# MAX_UNPACKED_BYTES, or whose compressed members inflate more than MAX_INFLATION times (beyond
# INFLATION_ALLOWANCE bytes in all), is a zip bomb and is refused. Module constants: raise them here.
MAX_UNPACKED_BYTES = 8 * 2**30
MAX_INFLATION = 100
INFLATION_ALLOWANCE = 16 * 2**20
TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")  # read with torch.load; anything else is safetensors

# where each kind of model is used, for the hint when one is given to the wrong command
ARCH_HINTS = {
    "srresnet": "super-resolution weights are for `srgan upscale`, `srgan eval` and `srgan export-onnx`",
    "lapgan": "LAPGAN models are for `srgan lapgan sample|eval` and `srgan upscale --mode lapgan`",
    "text2img": "text-to-image models are for `srgan text2img generate|eval`",
    "shapes_checker": "the shapes checker is used by `srgan text2img eval --checker`",
}

# What each shipped file is for, shown by `srgan models` (weights/README.md has the numbers behind
# it). Only the shipped files get these notes: a user's file of the same name says nothing.
SHIPPED_USES = {
    "srresnet_x4": "photos: faithful detail, best PSNR",
    "srresnet_x4_fast": "CPU: half the time, a bit softer",
    "srgan_x4": "sharper texture (GAN: invented detail)",
    "srgan_x4_real": "low-quality JPEGs, video: removes blocks (-m auto)",
    "srgan_x4_denoise": "noisy or soft photos: repairs the LR first (--denoise S)",
    "lapgan_photos64": "srgan lapgan sample",
    "text2img_shapes": "srgan text2img generate",
    "shapes_checker": "srgan text2img eval --checker",
}

_PACKAGE_DIR = Path(__file__).resolve().parent


def shipped_dirs() -> list[Path]:
    """Where shipped weights live: inside the installed package, or the repo's weights/ folder."""
    candidates = [_PACKAGE_DIR / "weights", _PACKAGE_DIR.parent / "weights"]
    return [d for d in candidates if d.is_dir()]


def shipped_use(info: WeightsInfo) -> str:
    """What a shipped file is for (SHIPPED_USES); "" for any other file."""
    shipped = any(info.path.parent.resolve() == d.resolve() for d in shipped_dirs())
    return SHIPPED_USES.get(info.name, "") if shipped else ""


def search_dirs() -> list[Path]:
    """Where weights are looked for by name, first one wins: SRGAN_WEIGHTS_DIR's folders, the user's
    weights folder (where `srgan models get` stores models; searched whether or not it exists),
    then the shipped weights."""
    found = [*_env_dirs(), default_user_dir(), *shipped_dirs()]
    return [d for i, d in enumerate(found) if d not in found[:i]]  # one folder named twice: once


def _env_dirs() -> list[Path]:
    return [Path(p).expanduser() for p in os.environ.get(ENV_DIR, "").split(os.pathsep) if p.strip()]


def default_user_dir() -> Path:
    """The per-user weights folder: $XDG_DATA_HOME/srgan-cli/weights (~/.local/share/...), or the
    platform's equivalent on Windows (%LOCALAPPDATA%) and macOS (~/Library/Application Support)."""
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base.expanduser() / "srgan-cli" / "weights"


def user_dir() -> Path:
    """Where downloaded models go: the first folder of SRGAN_WEIGHTS_DIR when it is set (so that one
    setting moves everything), else default_user_dir()."""
    env = _env_dirs()
    return env[0] if env else default_user_dir()


@dataclass
class WeightsInfo:
    """What a weights file says about itself (read from the safetensors header only)."""

    name: str
    path: Path
    arch: str
    config: dict[str, Any]
    scale: int
    trained_on: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    n_params: int = 0


# ---------------------------------------------------------------------------------------------
# resolving a name or path


def resolve(name_or_path: str | os.PathLike[str]) -> Path:
    """A path that exists, or a name (with or without .safetensors) found in the search folders."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise WeightsFormatError(f"{path} is not a file")
    has_folder = os.sep in text or "/" in text
    looks_like_path = has_folder or path.suffix in (".safetensors", ".pth", ".pt")
    if not has_folder and path.suffix in ("", ".safetensors"):  # a bare name: search the folders
        stem = path.name.removesuffix(".safetensors")
        for folder in search_dirs():  # ours first, then community models of that name
            for suffix in (".safetensors", *FOREIGN_SUFFIXES):
                cand = folder / f"{stem}{suffix}"
                if cand.is_file():
                    return cand
    if looks_like_path:
        raise WeightsNotFound(f"weights file not found: {path}")
    available = ", ".join(info.name for info in list_models()) or "none"
    raise WeightsNotFound(
        f"no weights named {text!r} (available: {available})",
        hint=f"pass a path to a .safetensors file, or add a folder to {ENV_DIR}",
    )


# ---------------------------------------------------------------------------------------------
# reading


def _read_header(path: Path) -> dict[str, Any]:
    """Parse and sanity-check a safetensors header ourselves, to give precise errors."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise WeightsFormatError(f"{path}: not a weights file ({size} bytes, too short)")
            (n,) = struct.unpack("<Q", head)
            first = fh.read(1)
            if first != b"{" or n > 100_000_000:
                raise WeightsFormatError(f"{path}: not a safetensors weights file")
            if 8 + n > size:
                raise WeightsFormatError(f"{path}: truncated weights file (header runs past the end)")
            header = json.loads(first + fh.read(n - 1))
    except OSError as exc:
        raise WeightsFormatError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WeightsFormatError(f"{path}: corrupt weights file (bad header)") from exc
    if not isinstance(header, dict):
        raise WeightsFormatError(f"{path}: corrupt weights file (bad header)")
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            end = max(end, int(entry["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise WeightsFormatError(f"{path}: corrupt weights file (bad tensor entry {key!r})") from exc
    if 8 + n + end > size:
        raise WeightsFormatError(
            f"{path}: truncated weights file ({size} bytes, the header describes {8 + n + end})",
            hint="download or copy it again",
        )
    return header


def _info_from_metadata(path: Path, meta: dict[str, str], n_params: int) -> WeightsInfo:
    if "arch" not in meta or "config" not in meta:
        raise ForeignWeights(
            f"{path}: safetensors file without srgan-cli metadata (arch/config)",
            hint="weights made elsewhere run through spandrel (srgan models --inspect FILE says what it is)",
        )
    try:
        config = json.loads(meta["config"])
        scale = int(meta.get("scale", config.get("scale", 0)))
        provenance = json.loads(meta.get("provenance", "{}"))
        metrics = json.loads(meta.get("metrics", "{}"))
    except (json.JSONDecodeError, ValueError, AttributeError) as exc:
        raise WeightsFormatError(f"{path}: corrupt srgan-cli metadata: {exc}") from exc
    return WeightsInfo(
        name=path.name.removesuffix(".safetensors"),
        path=path,
        arch=meta["arch"],
        config=config,
        scale=scale,
        trained_on=meta.get("trained_on", ""),
        provenance=provenance,
        metrics=metrics,
        n_params=n_params,
    )


def read_info(name_or_path: str | os.PathLike[str]) -> WeightsInfo:
    path = resolve(name_or_path)
    if path.suffix.lower() in TORCH_SUFFIXES:  # (.ckpt and .bin too: community models' suffixes)
        state = _torch_load(path)
        arch, config = infer_srresnet_config(state, path)
        n = sum(t.numel() for t in state.values())
        return WeightsInfo(path.stem, path, arch, config, int(config["scale"]), "unknown (.pth)", n_params=n)
    header = _read_header(path)
    n_params = 0
    for key, entry in header.items():
        if key != "__metadata__":
            count = 1
            for d in entry.get("shape", []):
                count *= int(d)
            n_params += count
    return _info_from_metadata(path, header.get("__metadata__") or {}, n_params)


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def check_torch_archive(path: Path) -> None:
    """Refuse a torch model file that would unpack to far more memory than it is big, from its zip
    directory alone (torch.load would inflate every member first); a legacy (pre-1.6) pickle reads
    its tensors raw from the file, so it passes; anything else is not a torch file."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(4)
            if head != b"PK\x03\x04":  # torch.load tells a zip archive by these bytes too
                if head[:1] == b"\x80":  # pickle protocol 2+: a legacy torch file
                    return
                raise WeightsFormatError(
                    f"{path}: not a PyTorch model file (neither a zip archive nor a pickle)"
                )
            members = zipfile.ZipFile(fh).infolist()
    except OSError as exc:
        raise WeightsFormatError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise WeightsFormatError(f"{path}: corrupt PyTorch model file (bad zip archive: {exc})") from exc
    packed = [m for m in members if m.compress_type != zipfile.ZIP_STORED]
    lying = [m for m in members if m.compress_type == zipfile.ZIP_STORED and m.file_size != m.compress_size]
    if lying or sum(m.compress_size for m in members) > size:
        raise WeightsFormatError(
            f"{path}: corrupt PyTorch model file (its zip directory does not fit the file)"
        )
    declared = sum(m.file_size for m in members)
    inflated, stored = sum(m.file_size for m in packed), sum(m.compress_size for m in packed)
    if inflated > INFLATION_ALLOWANCE and inflated > MAX_INFLATION * max(stored, 1):
        raise WeightsFormatError(
            f"{path}: refused: a {_size(size)} file that unpacks to {_size(declared)} "
            "(a zip bomb, not model weights)"
        )
    if declared > MAX_UNPACKED_BYTES:
        raise WeightsFormatError(
            f"{path}: refused: unpacks to {_size(declared)}, more than the {_size(MAX_UNPACKED_BYTES)} "
            "a model file may hold",
            hint="if it is genuine, raise srgan_cli.weights.MAX_UNPACKED_BYTES",
        )


def _finite(t: torch.Tensor) -> bool:
    """Whether a tensor holds no NaN or Inf; CPU tensors through numpy, which has none of torch's
    per-op thread-pool cost (0.8 ms instead of 30 ms for the 258 tensors of srresnet_x4)."""
    if t.device.type != "cpu" or t.dtype not in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        return bool(torch.isfinite(t).all())
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: NaN and Inf are its all-ones exponents
        bits = t.detach().contiguous().view(torch.int16).numpy()
        return not bool(((bits & 0x7F80) == 0x7F80).any())
    return bool(np.isfinite(t.detach().numpy()).all())


def check_finite(state: Mapping[str, torch.Tensor], path: Path | str) -> None:
    """Refuse weights holding NaN or Inf (they give a black or garbage image, never an error)."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not _finite(v)]
    if bad:
        held = "tensors hold" if len(bad) > 1 else "tensor holds"
        raise WeightsFormatError(
            f"{path}: {len(bad)} {held} NaN or infinite values (e.g. {bad[0]}): the file is damaged "
            "or the training diverged"
        )


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model file (.safetensors, or a torch state dict), on the CPU, read without
    running pickled code, its sizes checked before it is unpacked and its values checked finite."""
    if path.suffix.lower() in TORCH_SUFFIXES:
        return _torch_load(path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _read_header(path)  # the header's sizes against the file's, before the library maps it
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsFormatError(f"{path}: corrupt weights file: {exc}") from exc
    check_finite(state, path)
    return state


# Containers a state dict comes wrapped in, tried in this order at each level (spandrel's
# canonicalize_state_dict knows the same ones, but tries "state_dict" before "params_ema"): BasicSR
# and Real-ESRGAN save both "params" and "params_ema", and publish results with the EMA weights;
# Lightning checkpoints keep theirs under "state_dict" beside optimizer states and hyper-parameters.
STATE_WRAPPERS = (
    "params_ema", "params-ema", "ema", "params", "state_dict", "model_state_dict",
    "net_g", "netG", "generator", "model", "net", "module",
)  # fmt: skip
# What a checkpoint may hold beside its tensors that is read as an inert stand-in rather than
# refused: training bookkeeping (Lightning's hyper-parameters, an argparse.Namespace, OmegaConf
# configs, numpy scalars, paths): an entry ending in "." names a module, any other one global. The
# stand-in never runs the class's code; any other class or function in the pickle (a whole pickled
# model, os.system, ...) is refused.
BOOKKEEPING_GLOBALS = (
    "lightning.", "pytorch_lightning.", "lightning_fabric.", "omegaconf.", "argparse.Namespace",
    "numpy.", "pathlib.", "typing.", "enum.", "collections.defaultdict", "datetime.",
    *(f"builtins.{t}" for t in ("list", "dict", "set", "frozenset", "tuple", "int", "float", "complex",
                                "str", "bytes", "bytearray", "bool", "slice", "range", "object")),
)  # fmt: skip


class _Inert:
    """A stand-in for a checkpoint's bookkeeping object: takes any arguments and state, runs nothing."""

    def __new__(cls, *_args: Any, **_kwargs: Any) -> _Inert:
        return object.__new__(cls)

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    def __setstate__(self, _state: Any) -> None:
        pass


class _PlainDict:
    """A stand-in for a dict subclass (Lightning's AttributeDict): unpickles as a plain dict."""

    def __new__(cls, *_args: Any, **_kwargs: Any) -> dict[Any, Any]:  # type: ignore[misc]
        return {}


def _load_weights_only(path: Path) -> Any:
    """torch.load with weights_only=True; a checkpoint whose only non-tensor objects are training
    bookkeeping (BOOKKEEPING_GLOBALS) is read again with inert stand-ins for them."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if "weights only" not in str(exc).lower() and "weights_only" not in str(exc):
            raise
        list_globals = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
        try:
            names = list(list_globals(path)) if list_globals is not None else []
        except Exception:  # a legacy (not zip) file: torch cannot list them
            names = []
        modules = tuple(g for g in BOOKKEEPING_GLOBALS if g.endswith("."))
        code = [n for n in names if not n.startswith(modules) and n not in BOOKKEEPING_GLOBALS]
        if not names or code:
            what = f" ({', '.join(code[:3])})" if code else ""
            raise WeightsFormatError(
                f"{path}: holds pickled code or objects{what}, not only tensors: refused (files "
                "that need arbitrary pickled code are never loaded)",
                hint="save model.state_dict() instead, or convert it to .safetensors where it was made",
            ) from exc
        stand_ins = [(_PlainDict if n.lower().endswith("dict") else _Inert, n) for n in names]
        with torch.serialization.safe_globals(stand_ins):  # type: ignore[arg-type]
            return torch.load(path, map_location="cpu", weights_only=True)


def unwrap_state(obj: Any) -> Any:
    """The state dict inside a checkpoint's wrappers (STATE_WRAPPERS, or a dict of one dict), up to
    four levels deep; `obj` itself when it is not wrapped."""
    for _ in range(4):
        if not isinstance(obj, dict) or any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in STATE_WRAPPERS if isinstance(obj.get(k), dict) and obj[k]), None)
        if inner is None and len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
            inner = next(iter(obj.values()))
        if inner is None:
            break
        obj = inner
    return obj


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    """A .pth/.pt/.ckpt/.bin state dict, loaded without ever unpickling code (nor inflating a zip
    bomb), unwrapped from its checkpoint (unwrap_state); values that are not tensors are dropped."""
    check_torch_archive(path)
    try:
        obj = _load_weights_only(path)
    except WeightsFormatError:
        raise
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        raise WeightsFormatError(
            f"{path}: cannot load as a plain state dict ({type(exc).__name__}); files that need "
            "arbitrary pickled code are refused",
            hint="convert it to .safetensors where it was made",
        ) from exc
    obj = unwrap_state(obj)
    tensors = (
        {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if isinstance(obj, dict)
        else {}
    )
    if not tensors:
        raise WeightsFormatError(f"{path}: does not contain a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in tensors.items()}
    check_finite(state, path)
    return state


def infer_srresnet_config(state: dict[str, torch.Tensor], path: Path) -> tuple[str, dict[str, int]]:
    """Recover SRResNet's config from its tensor names and shapes (for .pth files without metadata)."""
    try:
        n_feats = int(state["head.0.weight"].shape[0])
        in_channels = int(state["head.0.weight"].shape[1])
        blocks = {int(k.split(".")[1]) for k in state if k.startswith("body.")}
        ups = {int(k.split(".")[1]) for k in state if k.startswith("upsample.")}
    except (KeyError, IndexError, ValueError) as exc:
        raise ForeignWeights(
            f"{path}: tensor names do not match srgan-cli's SRResNet (e.g. 'head.0.weight' missing)"
        ) from exc
    config = {
        "scale": 2 ** len(ups),
        "n_blocks": len(blocks),
        "n_feats": n_feats,
        "in_channels": in_channels,
    }
    if "restore.head.weight" in state:  # an LR restoration front-end (sr.models.Restorer)
        config["restore_blocks"] = len(
            {int(k.split(".")[2]) for k in state if k.startswith("restore.blocks.")}
        )
        config["restore_feats"] = int(state["restore.head.weight"].shape[0])
    return "srresnet", config


@dataclass
class LoadedWeights:
    model: nn.Module
    info: WeightsInfo


Build = Callable[[str, dict[str, Any]], nn.Module]  # (arch, config) -> an untrained model


def load_model(
    name_or_path: str | os.PathLike[str],
    build: Build,
    *,
    expect_arch: str | None = None,
    expect_scale: int | None = None,
) -> LoadedWeights:
    """Read a weights file, check what it holds, build its model with `build` and load its tensors
    (CPU, eval mode). `build` comes from the caller, so this module knows no architecture:
    `archs.load` passes the table of all of them, a feature package its own class."""
    info = read_info(name_or_path)
    if expect_arch is not None and info.arch != expect_arch:
        raise WeightsMismatch(
            f"{info.path}: holds a {info.arch!r} model, but a {expect_arch!r} is needed here",
            hint=ARCH_HINTS.get(info.arch),
        )
    if expect_scale is not None and info.scale != expect_scale:
        raise WeightsMismatch(
            f"{info.path}: is a x{info.scale} model, but x{expect_scale} was requested",
            hint="pick weights of the requested scale (`srgan models` lists them)",
        )
    state = read_state(info.path)  # NaN/Inf refused here, before anything is built
    _check_config(build, info, {k: tuple(v.shape) for k, v in state.items()})
    model = _build(build, info)
    load_state_dict(model, state, info.path)
    model.eval()
    return LoadedWeights(model, info)


class _TooManyTensors(Exception):
    pass


def _build(build: Build, info: WeightsInfo) -> nn.Module:
    try:
        return build(info.arch, info.config)
    except (TypeError, ValueError) as exc:  # a config field the class does not take, or a bad value
        raise WeightsMismatch(f"invalid {info.arch} config {info.config}: {exc}") from exc


def _check_config(build: Build, info: WeightsInfo, shapes: dict[str, tuple[int, ...]]) -> None:
    """Compare the model the file's config describes with the tensors the file holds, before
    anything is allocated: the model is built on the meta device (shapes without memory), and its
    construction is cut short as soon as it registers more tensors than the file has, so a config
    that claims a huge model is refused at once, whatever it claims."""
    from torch.nn.modules import module as torch_module

    limit, count = 2 * len(shapes) + 64, 0  # room for an honest mismatch to be named precisely

    def on_tensor(*_: Any) -> None:
        nonlocal count
        count += 1
        if count > limit:
            raise _TooManyTensors

    hooks = [
        torch_module.register_module_parameter_registration_hook(on_tensor),
        torch_module.register_module_buffer_registration_hook(on_tensor),
    ]
    try:
        with torch.device("meta"):
            shape_model = _build(build, info)
    except _TooManyTensors:
        raise WeightsMismatch(
            f"{info.path}: weights do not match the architecture config: the config describes a model "
            f"of more than {limit} tensors, the file holds {len(shapes)}"
        ) from None
    finally:
        for hook in hooks:
            hook.remove()
    problem = _mismatch({k: tuple(v.shape) for k, v in shape_model.state_dict().items()}, shapes)
    if problem:
        raise WeightsMismatch(f"{info.path}: weights do not match the architecture config: {problem}")


def load_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: Path | str = "<state>") -> None:
    """Strict load with a readable summary of what does not fit; NaN or Inf values are refused."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problem = _mismatch(own, {k: tuple(v.shape) for k, v in state.items()})
    if problem:
        raise WeightsMismatch(f"{path}: weights do not match the architecture config: {problem}")
    check_finite(state, path)
    model.load_state_dict(state, strict=True)


def _mismatch(own: dict[str, tuple[int, ...]], file: dict[str, tuple[int, ...]]) -> str:
    """What does not fit between a model's tensor shapes and a file's, in one line ("" if all do)."""
    missing = [k for k in own if k not in file]
    unexpected = [k for k in file if k not in own]
    wrong = [k for k in own if k in file and own[k] != file[k]]
    parts = []
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} shape mismatch(es), e.g. {k}: file {file[k]} vs model {own[k]}")
    if missing:
        parts.append(f"{len(missing)} tensor(s) missing, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# writing


def save(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    trained_on: str = "",
    provenance: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write `model` (which must have `.arch` and `.config`) as safetensors, atomically."""
    from safetensors.torch import save as to_bytes

    path = Path(path)
    config = model.config.to_dict()  # type: ignore[union-attr, operator]
    meta = {
        "format": f"srgan-cli/{FORMAT_VERSION}",
        "arch": str(model.arch),
        "config": json.dumps(config, sort_keys=True),
        "scale": str(getattr(model, "scale", config.get("scale", ""))),
        "trained_on": trained_on,
        "provenance": json.dumps(provenance or {}, sort_keys=True),
        "metrics": json.dumps(metrics or {}, sort_keys=True),
    }
    state = {
        k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    with atomic_open(path) as fh:  # (not save_file: the file gets the usual umask permissions)
        fh.write(to_bytes(state, metadata=meta))
    return path


FOREIGN_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")  # community model files (run through spandrel)


def list_foreign() -> list[Path]:
    """The model files in the search folders that are not srgan-cli weights and that `srgan upscale`
    can run (foreign_status says why the others cannot)."""
    return [path for path, why in foreign_status() if why is None]


def foreign_status() -> list[tuple[Path, str | None]]:
    """Every model file in the search folders that is not srgan-cli weights (.pth/.pt/.ckpt/.bin,
    and .safetensors without our metadata), by name, first one wins, with why it cannot run (None
    when it can): read without running pickled code and built through spandrel once per file
    contents in this process (runtime.third_party.why_not_runnable)."""
    from .runtime.third_party import why_not_runnable

    seen: dict[str, Path] = {}
    ours = {info.name for info in list_models()}
    for folder in search_dirs():
        for file in sorted(folder.iterdir()) if folder.is_dir() else []:
            name = file.name.rsplit(".", 1)[0]
            if name in seen or name in ours or not file.is_file() or file.name.startswith("."):
                continue
            if file.suffix.lower() in (*FOREIGN_SUFFIXES, ".safetensors"):
                seen[name] = file
    return [(path, why_not_runnable(path)) for path in seen.values()]


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file's header ({} when it has none), its tensors unread:
    what `srgan models get` recorded about a community model (source, licence, ...)."""
    meta = _read_header(path).get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def list_models() -> list[WeightsInfo]:
    """Every readable weights file in the search folders (first one wins for a repeated name)."""
    seen: dict[str, WeightsInfo] = {}
    for folder in search_dirs():
        for file in sorted(folder.glob("*.safetensors")):
            name = file.name.removesuffix(".safetensors")
            if name in seen:
                continue
            try:
                seen[name] = read_info(file)
            except (WeightsFormatError, WeightsMismatch):
                continue  # a broken file in a user folder must not break the listing
    return list(seen.values())
