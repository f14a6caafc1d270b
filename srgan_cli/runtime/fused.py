"""Inference-time rewrite of a trained SRResNet: the same function, computed faster.

Three exact rewrites (up to float rounding, ~1e-6), each for a measured reason (docs/benchmarks.md):

1. Every BatchNorm is folded into the conv before it (inference uses the running statistics).
2. The last x2 upsample and the 9x9 tail are fused in space-to-depth form. The paper's tail is a
   9x9 conv from F channels to 3 at full output resolution; a conv with 3 output channels is a
   poor shape for conv kernels (on the 2-core CPU: 6 GFLOP/s in NCHW, 40 in channels_last, against
   130 for the 48->48 body convs; in NCHW it is 3.8 s of a 5.3 s x4 upscale of a 256x256 image).
   Run on the *unshuffled* 4F-channel map instead, the same conv becomes a 5x5 conv from 4F to
   3*4 channels at half resolution followed by one PixelShuffle(2), a shape that runs at full
   speed, and the F-channel PixelShuffle at full resolution disappears.
3. The bicubic base of the global skip (F.interpolate, align_corners=False, edge clamp) becomes a
   fixed 5x5 grouped conv with replicate padding and a PixelShuffle(scale): the same numbers,
   and one that ONNX Runtime runs ~10x faster than its cubic Resize.
The output affine map (out * 0.5 + 0.5, or * 0.5 for the residual) is folded into the tail.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..sr.models import SRResNet, SRResNetConfig

_CUBIC_A = -0.75  # PyTorch's (and OpenCV's) bicubic coefficient


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """conv followed by BN in eval mode -> one conv with the same output."""
    assert bn.running_mean is not None and bn.running_var is not None
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True
    )
    fused.weight.data = conv.weight.detach() * scale.detach()[:, None, None, None]
    fused.bias.data = ((bias - bn.running_mean) * scale + bn.bias).detach()
    return fused


def space_to_depth_conv(conv: nn.Conv2d, r: int = 2) -> nn.Conv2d:
    """A stride-1, 'same'-padded conv on a PixelShuffle(r) output, moved before the shuffle.

    conv: (C -> O, KxK) applied to x = PixelShuffle(r)(g), g of shape (N, C*r*r, H, W).
    Returns conv2 ((C*r*r) -> (O*r*r), K2xK2) with PixelShuffle(r)(conv2(g)) == conv(x) exactly,
    zero padding included: a zero border of x is a zero border of g. Output pixel (r*i+a, r*j+b)
    reads input pixel (r*i+a+dy, ...) = g[channel (c, (a+dy) mod r), row i + floor((a+dy)/r)].
    """
    w = conv.weight.detach()  # (O, C, K, K)
    out_ch, in_ch, k, _ = w.shape
    p = k // 2
    lo, hi = -p // r, (r - 1 + p) // r  # range of floor((a + d) / r) over phases a and taps d
    k2 = hi - lo + 1
    w2 = w.new_zeros(out_ch, r, r, in_ch, r, r, k2, k2)  # (O, a, b, C, a', b', ky, kx)
    for a in range(r):
        for b in range(r):
            for dy in range(-p, p + 1):
                for dx in range(-p, p + 1):
                    (qy, ay), (qx, bx) = divmod(a + dy, r), divmod(b + dx, r)
                    w2[:, a, b, :, ay, bx, qy - lo, qx - lo] = w[:, :, dy + p, dx + p]
    fused = nn.Conv2d(in_ch * r * r, out_ch * r * r, k2, padding=-lo)
    fused.weight.data = w2.reshape(out_ch * r * r, in_ch * r * r, k2, k2)
    bias = conv.bias.detach() if conv.bias is not None else w.new_zeros(out_ch)
    fused.bias.data = bias.repeat_interleave(r * r)  # PixelShuffle order: channel o*r*r + a*r + b
    return fused


def _cubic(t: float) -> float:
    t = abs(t)
    a = _CUBIC_A
    if t <= 1:
        return ((a + 2) * t - (a + 3)) * t * t + 1
    if t < 2:
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return 0.0


def bicubic_kernel(scale: int, channels: int = 3) -> torch.Tensor:
    """(channels * scale^2, 1, 5, 5) grouped-conv weights of bicubic upsampling by `scale`.

    Output phase (a, b) of an LR pixel samples the input at (i + (a + 0.5)/scale - 0.5, ...), which
    lies within half a pixel of i, so its 4 taps per axis sit in offsets -2..2 of a 5x5 window.
    """
    taps = torch.zeros(scale, 5, dtype=torch.float64)
    for phase in range(scale):
        src = (phase + 0.5) / scale - 0.5
        base = math.floor(src)
        for j in range(-1, 3):
            taps[phase, base + j + 2] += _cubic(j - (src - base))
    kernel = torch.einsum("ai,bj->abij", taps, taps).reshape(scale * scale, 1, 5, 5)
    return kernel.repeat(channels, 1, 1, 1).float()


class BicubicUpsample(nn.Module):
    """Exactly F.interpolate(x, scale_factor=s, mode="bicubic", align_corners=False), as a conv."""

    def __init__(self, scale: int, channels: int = 3) -> None:
        super().__init__()
        self.scale, self.channels = scale, channels
        self.register_buffer("kernel", bicubic_kernel(scale, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (2, 2, 2, 2), mode="replicate")  # PyTorch clamps sample indices at edges
        return F.pixel_shuffle(F.conv2d(padded, self.kernel, groups=self.channels), self.scale)


class FusedSRResNet(nn.Module):
    """SRResNet rewritten for inference (see the module docstring). Not trainable: build it from a
    trained SRResNet with `fuse(model)`. (N, 3, H, W) in [0, 1] -> (N, 3, sH, sW), like SRResNet."""

    arch = "srresnet"

    def __init__(self, model: SRResNet) -> None:
        super().__init__()
        model = copy.deepcopy(model).eval()  # never share modules (or a later .half()) with the caller
        self.config: SRResNetConfig = model.config
        self.restore = model.restore if model.config.restore_blocks else None  # no batch norm to fold
        self.head = model.head
        self.body = nn.ModuleList(
            nn.Sequential(
                fold_batchnorm(block.body[0], block.body[1]),
                block.body[2],
                fold_batchnorm(block.body[3], block.body[4]),
            )
            for block in model.body
        )
        self.body_tail = fold_batchnorm(model.body_tail[0], model.body_tail[1])
        *early, last = list(model.upsample)
        self.upsample = nn.Sequential(*early)
        self.last_conv = last.conv
        # PReLU on the unshuffled map: channel c*4 + k holds pixels of channel c
        self.last_alpha = nn.Parameter(last.act.weight.detach().repeat_interleave(4))
        tail = space_to_depth_conv(model.tail, 2)
        # fold the output map: out * 0.5 + 0.5 (plain) or out * 0.5 added to the bicubic base
        tail.weight.data *= 0.5
        tail.bias.data = tail.bias.data * 0.5 + (0.0 if self.config.global_skip else 0.5)
        self.tail = tail
        self.base = BicubicUpsample(self.config.scale) if self.config.global_skip else None
        self.requires_grad_(False)

    @property
    def scale(self) -> int:
        return self.config.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.restore is not None:
            x = self.restore(x)
        feat = self.head(x)  # (N, F, H, W)
        h = feat
        for block in self.body:
            h = h + block(h)
        feat = feat + self.body_tail(h)
        g = F.prelu(self.last_conv(self.upsample(feat)), self.last_alpha)  # (N, 4F, sH/2, sW/2)
        out = F.pixel_shuffle(self.tail(g), 2)  # (N, 3, sH, sW)
        if self.base is not None:
            out = out + self.base(x)
        return out


def fuse(model: nn.Module) -> nn.Module:
    """The fastest exact inference form of `model` (FusedSRResNet for an SRResNet, else unchanged)."""
    if isinstance(model, SRResNet):
        return FusedSRResNet(model)
    return model
