"""LPIPS v0.1 with AlexNet (Zhang et al., 2018): a learned perceptual distance, lower = more alike."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PerceptualWeightsError

ENV_VAR = "SRGAN_LPIPS_WEIGHTS"
FEATURES_FILE = "alexnet_features.safetensors"
LIN_FILE = "lpips_alex_lin.safetensors"

# torchvision alexnet().features: conv index -> (out, in, k, stride, pad); ReLUs follow at index + 1.
ALEXNET_CONVS: dict[int, tuple[int, int, int, int, int]] = {
    0: (64, 3, 11, 4, 2),
    3: (192, 64, 5, 1, 2),
    6: (384, 192, 3, 1, 1),
    8: (256, 384, 3, 1, 1),
    10: (256, 256, 3, 1, 1),
}
_POOLS = (2, 5)  # MaxPool2d(3, stride 2) after the first two ReLUs
_TAPS = (1, 4, 7, 9, 11)  # the five ReLU outputs LPIPS compares
HEAD_CHANNELS = (64, 192, 384, 256, 256)

# The LPIPS "scaling layer": inputs in [-1, 1] are shifted/scaled to ImageNet statistics.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)

# Smallest side AlexNet's features accept: conv 11/4 (31 -> 7), pool 3/2 (-> 3), conv, pool (-> 1).
MIN_SIZE = 31

_HINT = (
    f"make them once with `srgan weights fetch-perceptual DIR`, then pass `--lpips-weights DIR` or set "
    f"{ENV_VAR}=DIR; with internet, `pip install lpips` works too (docs/usage.md)"
)


def _features_layers() -> nn.Sequential:
    """torchvision's alexnet().features up to the last ReLU (index 11), same indices, no inplace ops."""
    layers: list[nn.Module] = []
    for i in range(12):
        if i in ALEXNET_CONVS:
            out_c, in_c, k, stride, pad = ALEXNET_CONVS[i]
            layers.append(nn.Conv2d(in_c, out_c, k, stride=stride, padding=pad))
        elif i in _POOLS:
            layers.append(nn.MaxPool2d(3, stride=2))
        else:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _check(
    state: Mapping[str, torch.Tensor], expected: dict[str, tuple[int, ...]], what: str, origin: str
) -> dict[str, torch.Tensor]:
    """Exact keys and shapes, or a PerceptualWeightsError naming what is wrong; returns float32 copies."""
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:6])}{' ...' if len(extra) > 6 else ''}")
        raise PerceptualWeightsError(
            f"{origin}: not LPIPS-alex {what} weights ({'; '.join(parts)})", hint=_HINT
        )
    out = {}
    for key, shape in expected.items():
        t = state[key]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise PerceptualWeightsError(f"{origin}: {what} tensor {key} has shape {got}, expected {shape}")
        if not t.is_floating_point():
            raise PerceptualWeightsError(f"{origin}: {what} tensor {key} is {t.dtype}, not floating point")
        # fp16/bf16 files are upcast: the distance is always computed in float32
        out[key] = t.detach().to(torch.float32)
    return out


class LPIPS(nn.Module):
    """LPIPS v0.1 "alex": `forward(a, b)` on (N, 3, H, W) images in [0, 1] gives (N,) float32 distances.

    Frozen and always in eval mode; gradients still flow to the inputs, so it can serve as a loss.
    """

    def __init__(
        self,
        features_state: Mapping[str, torch.Tensor],
        lin_state: Mapping[str, torch.Tensor],
        *,
        origin: str = "<state dict>",
    ) -> None:
        super().__init__()
        # accept a whole torchvision AlexNet state dict too: "features." prefix, classifier ignored
        feats = {
            k.removeprefix("features."): v
            for k, v in features_state.items()
            if not k.startswith("classifier.")
        }
        expected_feats: dict[str, tuple[int, ...]] = {}
        for i, (out_c, in_c, k, _, _) in ALEXNET_CONVS.items():
            expected_feats[f"{i}.weight"] = (out_c, in_c, k, k)
            expected_feats[f"{i}.bias"] = (out_c,)
        feats = _check(feats, expected_feats, "AlexNet features", origin)
        expected_lin = {f"lin{i}.model.1.weight": (1, c, 1, 1) for i, c in enumerate(HEAD_CHANNELS)}
        lins = _check(lin_state, expected_lin, "linear head", origin)

        self.features = _features_layers()
        self.features.load_state_dict(feats)
        # the learned per-channel weights; the reference's Dropout before them is a no-op in eval
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in HEAD_CHANNELS)
        for i, lin in enumerate(self.lins):
            lin.weight.data.copy_(lins[f"lin{i}.model.1.weight"])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        # a fixed metric: a parent module's .train() must not change it (it has no BN/dropout anyway)
        return super().train(False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) in [0, 1] -> five unit-normalised ReLU maps (N, C_k, H_k, W_k)."""
        x = (x * 2 - 1 - self.shift) / self.scale
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _TAPS:
                # unit length along channels at every position; eps keeps all-zero positions at 0
                norm = torch.sqrt((x * x).sum(dim=1, keepdim=True))
                taps.append(x / (norm + 1e-10))
        return taps

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
            raise ValueError(
                f"LPIPS needs two (N, 3, H, W) tensors of one shape, got {a.shape} and {b.shape}"
            )
        a, b = a.float(), b.float()
        h, w = a.shape[-2:]
        if min(h, w) < MIN_SIZE:
            # AlexNet's stride-4 conv and two pools need 31 px: enlarge both images alike (bilinear) so
            # tiny crops still get a (coarser) score instead of a shape error; larger inputs are untouched
            f = MIN_SIZE / min(h, w)
            size = (max(MIN_SIZE, round(h * f)), max(MIN_SIZE, round(w * f)))
            a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
            b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
        # one pass over the stacked pair: (2N, 3, H, W)
        taps = self._taps(torch.cat([a, b]))
        n = a.shape[0]
        total = torch.zeros(n, device=a.device, dtype=torch.float32)
        for fx, lin in zip(taps, self.lins, strict=True):
            d = (fx[:n] - fx[n:]) ** 2  # (N, C_k, H_k, W_k)
            total = total + lin(d).mean(dim=(1, 2, 3))  # (N, 1, H_k, W_k) -> (N,)
        return total


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise PerceptualWeightsError(f"LPIPS weights file not found: {path}", hint=_HINT)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise PerceptualWeightsError(f"cannot read LPIPS weights {path}: {exc}", hint=_HINT) from exc


def _from_dir(folder: Path, origin: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise PerceptualWeightsError(
            f"{origin}: {folder} {problem} (expected a folder holding {FEATURES_FILE} and {LIN_FILE})",
            hint=_HINT,
        )
    missing = [name for name in (FEATURES_FILE, LIN_FILE) if not (folder / name).is_file()]
    if missing:
        raise PerceptualWeightsError(f"{origin}: {folder} has no {' or '.join(missing)}", hint=_HINT)
    return _read_safetensors(folder / FEATURES_FILE), _read_safetensors(folder / LIN_FILE)


DOWNLOAD_FAILED = "srgan-cli-alexnet-download-failed"  # a marker in torch's hub folder
RETRY_AFTER = 24 * 3600  # seconds before a failed AlexNet download is tried again


def _lpips_package_head() -> Path | None:
    """The v0.1 AlexNet head shipped inside the `lpips` package, found without importing it."""
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        head = Path(root) / "weights" / "v0.1" / "alex.pth"
        if head.is_file():
            return head
    return None


def package_head() -> Path | None:
    """The `lpips` package's v0.1 AlexNet head file, if the package is installed."""
    return _lpips_package_head()


def _from_lpips_package(head: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Head from the lpips package, AlexNet from torchvision (its hub cache, or a download)."""
    try:
        lin = torch.load(head, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or pickled-code file: report it, never fall back to random
        raise PerceptualWeightsError(f"cannot read {head}: {exc}", hint=_HINT) from exc
    from torchvision.models import AlexNet_Weights

    weights = AlexNet_Weights.IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    failed = Path(torch.hub.get_dir()) / DOWNLOAD_FAILED
    if not cached.is_file() and failed.is_file() and time.time() - failed.stat().st_mtime < RETRY_AFTER:
        hours, why = (time.time() - failed.stat().st_mtime) / 3600, failed.read_text().strip()[:120]
        raise PerceptualWeightsError(  # tried once already: no network wait on every run
            f"found the lpips package's head ({head}); torchvision's AlexNet download failed "
            f"{hours:.1f} h ago ({why}), not tried again for a day (delete {failed} to try now)",
            hint=_HINT,
        )
    try:
        # torch.hub reports a download on stdout, which is kept for results (`--json`)
        with contextlib.redirect_stdout(sys.stderr):
            feats = weights.get_state_dict(progress=False)
    except Exception as exc:  # offline, or a blocked download: remembered, so later runs do not wait
        with contextlib.suppress(OSError):
            failed.parent.mkdir(parents=True, exist_ok=True)
            failed.write_text(f"{type(exc).__name__}: {exc}")
        raise PerceptualWeightsError(
            f"found the lpips package's head ({head}) but not torchvision's AlexNet weights: {exc}",
            hint=_HINT,
        ) from exc
    failed.unlink(missing_ok=True)
    return feats, lin


def load_lpips(source: str | os.PathLike[str] | None = None, *, device: str | torch.device = "cpu") -> LPIPS:
    """LPIPS-alex from `source` (a folder), else $SRGAN_LPIPS_WEIGHTS, else the `lpips` package.

    A folder holds alexnet_features.safetensors and lpips_alex_lin.safetensors (docs/usage.md says
    how to make one). Raises PerceptualWeightsError when none of these works; random
    weights are never used.
    """
    if source is not None and str(source) != "":
        folder = Path(source).expanduser()
        feats, lin = _from_dir(folder, "LPIPS weights")
        origin = str(folder)
    elif os.environ.get(ENV_VAR):
        folder = Path(os.environ[ENV_VAR]).expanduser()
        feats, lin = _from_dir(folder, ENV_VAR)
        origin = str(folder)
    else:
        head = _lpips_package_head()
        if head is None:
            raise PerceptualWeightsError(
                f"no LPIPS weights found (tried: no folder given, {ENV_VAR} not set, "
                "lpips package not installed)",
                hint=_HINT,
            )
        feats, lin = _from_lpips_package(head)
        origin = f"{head} + torchvision AlexNet"
    return LPIPS(feats, lin, origin=origin).to(device)


def lpips_if_available(
    source: str | os.PathLike[str] | None, *, device: str | torch.device = "cpu"
) -> tuple[LPIPS | None, PerceptualWeightsError | None]:
    """LPIPS where it is optional (evaluation, validation): from `source` when one is given (then a
    bad folder raises: it was asked for), else from $SRGAN_LPIPS_WEIGHTS or the `lpips` package
    when either has weights; with none, (None, why) so the caller can say LPIPS was skipped."""
    if source is not None and str(source) != "":
        return load_lpips(source, device=device), None
    try:
        return load_lpips(None, device=device), None
    except PerceptualWeightsError as exc:
        return None, exc
