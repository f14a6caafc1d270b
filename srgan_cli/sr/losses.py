"""SRGAN's perceptual loss: VGG content loss, adversarial losses (standard, RaGAN, R1) and TV."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PerceptualWeightsError

ENV_VGG = "SRGAN_VGG_WEIGHTS"

# torchvision's `features` layout: numbers are conv widths, "M" a 2x2 max-pool.
_VGG_CFG: dict[str, list[int | str]] = {
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
    def end(self) -> int:
        """Length of torchvision's `features` prefix that ends with this layer's ReLU."""
        index, block, conv = 0, 1, 0
        for item in _VGG_CFG[self.arch]:
            if item == "M":
                block, conv = block + 1, 0
                index += 1
                continue
            conv += 1
            index += 2  # conv + ReLU
            if (block, conv) == (self.block, self.conv):
                return index
        raise ValueError(f"{self.arch} has no layer {self.block}_{self.conv}")


# The names people use (the paper's VGG22 / VGG54, and the same depths of VGG16).
CONTENT_LAYERS = {
    "vgg54": VGGLayer("vgg19", 5, 4),
    "vgg22": VGGLayer("vgg19", 2, 2),
    "vgg16_53": VGGLayer("vgg16", 5, 3),
    "vgg16_22": VGGLayer("vgg16", 2, 2),
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


def _features(arch: str, end: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for item in _VGG_CFG[arch]:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(in_ch, int(item), 3, padding=1), nn.ReLU(inplace=True)]
            in_ch = int(item)
    return nn.Sequential(*layers[:end])


class VGGFeatures(nn.Module):
    """Frozen VGG prefix: (N, 3, H, W) RGB in [0, 1] -> (N, C, H/2^k, W/2^k) features of one layer."""

    def __init__(self, layer: VGGLayer, state: dict[str, torch.Tensor], convention: str) -> None:
        super().__init__()
        if convention not in PAPER_FEATURE_SCALE:
            raise ValueError(f"unknown VGG input convention {convention!r}")
        self.layer, self.convention = layer, convention
        self.body = _features(layer.arch, layer.end)
        wanted = self.body.state_dict()
        missing = [k for k in wanted if k not in state]
        if missing:
            raise PerceptualWeightsError(
                f"the VGG weights lack {len(missing)} tensor(s) needed for {layer.arch} up to "
                f"relu{layer.block}_{layer.conv} (first: {missing[0]})"
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.order != [0, 1, 2]:
            x = x[:, self.order]
        return self.body((x - self.mean) / self.std)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise PerceptualWeightsError(f"VGG weights not found: {path}")
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

    if arch == "vgg19":
        net = torchvision.models.vgg19(weights=torchvision.models.VGG19_Weights.IMAGENET1K_V1)
    else:
        net = torchvision.models.vgg16(weights=torchvision.models.VGG16_Weights.IMAGENET1K_V1)
    return net.features.state_dict()


HOW_TO_GET_VGG = (
    "give a local file with --vgg-weights PATH (or the SRGAN_VGG_WEIGHTS variable): torchvision's "
    "vgg19/vgg16 state dict or its `features` as .safetensors/.pth, such as the vgg19-dcbb9e9d.pth that "
    "torchvision keeps in ~/.cache/torch/hub/checkpoints on a machine with internet (see docs/training.md)"
)


def load_vgg(layer_name: str, weights: str | Path | None = None, *, convention: str = "auto") -> VGGFeatures:
    """The frozen VGG prefix for `layer_name` (vgg54, vgg22, vgg16_53, vgg16_22).

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
        state = _read_state(path)
        found = _arch_of(state)
        if found is not None and found != layer.arch:
            raise PerceptualWeightsError(
                f"{path} holds {found} weights, but content layer {layer_name} needs {layer.arch}",
                hint="vgg54/vgg22 need VGG19 weights, vgg16_53/vgg16_22 need VGG16 weights",
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
    """l_VGG: MSE between scaled VGG features of SR and HR (HR features need no gradient)."""

    def __init__(self, vgg: VGGFeatures, feature_scale: float | None = None) -> None:
        super().__init__()
        self.vgg = vgg
        self.scale = PAPER_FEATURE_SCALE[vgg.convention] if feature_scale is None else feature_scale

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.vgg(hr)
        return F.mse_loss(self.vgg(sr).float() * self.scale, target.float() * self.scale)


def tv_loss(img: torch.Tensor) -> torch.Tensor:
    """l_TV of the paper: the mean over pixels of the gradient magnitude, on images in [-1, 1] (the
    paper's generator output range). (N, C, H, W) -> scalar."""
    x = img.float() * 2 - 1
    dx = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]  # both (N, C, H-1, W-1), aligned at the same pixel
    dy = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
    return torch.sqrt((dx * dx + dy * dy).sum(1) + 1e-8).mean()


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
