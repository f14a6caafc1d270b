"""Random blur kernels as batched tensors: isotropic and anisotropic Gaussian, generalized Gaussian,
plateau and 2-D sinc (Real-ESRGAN's set), every one on a MAX_KERNEL x MAX_KERNEL frame so a batch
of different kernels is one (N, K, K) tensor; and filtering a batch with its per-sample kernels."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import KERNEL_KINDS, MAX_KERNEL, Range


def uniform(n: int, bounds: Range, generator: torch.Generator) -> torch.Tensor:
    """(n,) float64 uniform in [low, high] (on the CPU: parameters are drawn there)."""
    lo, hi = float(bounds[0]), float(bounds[1])
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)


def odd_sizes(n: int, bounds: Range, generator: torch.Generator) -> torch.Tensor:
    """(n,) int64 odd kernel sides drawn uniformly from low, low+2, ..., high."""
    lo, hi = int(bounds[0]), int(bounds[1])
    count = (hi - lo) // 2 + 1
    return lo + 2 * torch.randint(count, (n,), generator=generator)


def _grid(size: int = MAX_KERNEL) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.arange(size, dtype=torch.float64) - size // 2
    return r.view(1, size, 1).expand(1, size, size), r.view(1, 1, size).expand(1, size, size)


def _window(sizes: torch.Tensor, frame: int = MAX_KERNEL) -> torch.Tensor:
    """(n, K, K) 1 inside each sample's centred size x size square, 0 outside."""
    y, x = _grid(frame)
    half = (sizes.view(-1, 1, 1) // 2).double()
    return ((y.abs() <= half) & (x.abs() <= half)).double()


def gaussian_family(
    kinds: torch.Tensor,
    sizes: torch.Tensor,
    sigma_x: torch.Tensor,
    sigma_y: torch.Tensor,
    theta: torch.Tensor,
    beta: torch.Tensor,
) -> torch.Tensor:
    """(n, K, K) float64 kernels, each summing to 1.

    With the quadratic form d = [x y] R diag(1/sx^2, 1/sy^2) R^T [x y]^T of an oriented Gaussian:
    Gaussian exp(-d/2), generalized Gaussian exp(-(d)^(beta/2)) and plateau 1 / (1 + d^(beta/2))
    (kinds: index into KERNEL_KINDS; isotropic kinds have sx = sy, which makes theta irrelevant)."""
    y, x = _grid()
    c, s = torch.cos(theta).view(-1, 1, 1), torch.sin(theta).view(-1, 1, 1)
    u = c * x + s * y  # coordinates along the kernel's own axes
    v = -s * x + c * y
    d = (u / sigma_x.view(-1, 1, 1)) ** 2 + (v / sigma_y.view(-1, 1, 1)) ** 2
    b = beta.view(-1, 1, 1)
    family = kinds.view(-1, 1, 1) // 2  # 0 Gaussian, 1 generalized, 2 plateau (KERNEL_KINDS pairs)
    k = torch.where(
        family == 0,
        torch.exp(-0.5 * d),
        torch.where(family == 1, torch.exp(-(d ** (b / 2))), 1 / (1 + d ** (b / 2))),
    )
    k = k * _window(sizes)
    return k / k.sum(dim=(1, 2), keepdim=True)


def sinc(sizes: torch.Tensor, cutoff: torch.Tensor, frame: int = MAX_KERNEL) -> torch.Tensor:
    """(n, K, K) float64 circular low-pass (2-D sinc) kernels of angular cutoff `cutoff` (radians per
    px, below pi): omega J1(omega r) / (2 pi r), which rings like an ideal resampling filter."""
    y, x = _grid(frame)
    r = torch.sqrt(x**2 + y**2)
    w = cutoff.view(-1, 1, 1)
    safe = torch.where(r == 0, torch.ones_like(r), r)
    k = w * torch.special.bessel_j1(w * safe) / (2 * math.pi * safe)
    k = torch.where(r == 0, w**2 / (4 * math.pi), k) * _window(sizes, frame)
    return k / k.sum(dim=(1, 2), keepdim=True)


def random_blur_kernels(
    n: int,
    *,
    kinds: dict[str, float],
    size: Range,
    sigma: Range,
    generalized_beta: Range,
    plateau_beta: Range,
    sinc_prob: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, list[str]]:
    """(n, K, K) float32 kernels and each one's kind ("sinc" or a KERNEL_KINDS name), drawn like
    Real-ESRGAN's: a sinc with chance `sinc_prob` (cutoff pi/3..pi for sides below 13, else
    pi/5..pi), otherwise a kind by its chance with its own sigmas, angle and beta."""
    weights = torch.tensor([kinds.get(k, 0.0) for k in KERNEL_KINDS], dtype=torch.float64)
    kind = torch.multinomial(weights, n, replacement=True, generator=generator)
    sizes = odd_sizes(n, size, generator)
    sx = uniform(n, sigma, generator)
    sy = uniform(n, sigma, generator)
    theta = uniform(n, (-math.pi, math.pi), generator)
    beta_g = uniform(n, generalized_beta, generator)
    beta_p = uniform(n, plateau_beta, generator)
    use_sinc = torch.rand(n, generator=generator, dtype=torch.float64) < sinc_prob
    cut_lo = torch.where(sizes < 13, math.pi / 3, math.pi / 5)
    cutoff = cut_lo + (math.pi - cut_lo) * torch.rand(n, generator=generator, dtype=torch.float64)
    iso = kind % 2 == 0  # iso kinds sit at even indices of KERNEL_KINDS
    sy = torch.where(iso, sx, sy)
    theta = torch.where(iso, torch.zeros_like(theta), theta)
    beta = torch.where(kind // 2 == 1, beta_g, beta_p)
    k = gaussian_family(kind, sizes, sx, sy, theta, beta)
    k = torch.where(use_sinc.view(-1, 1, 1), sinc(sizes, cutoff), k)
    names = [
        "sinc" if s else KERNEL_KINDS[int(i)] for s, i in zip(use_sinc.tolist(), kind.tolist(), strict=True)
    ]
    return k.float(), names


def filter2d(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Each image of (N, C, H, W) filtered by its own point-symmetric kernel of (N, K, K), K odd,
    with reflected borders; by FFT, so a 21x21 kernel costs what a 3x3 one does."""
    n, c, h, w = images.shape
    k = kernels.shape[-1]
    p = k // 2
    mode = "reflect" if min(h, w) > p else "replicate"
    padded = F.pad(images, (p, p, p, p), mode=mode)  # (N, C, H+2p, W+2p)
    hp, wp = h + 2 * p, w + 2 * p
    spectrum = torch.fft.rfft2(padded.float(), s=(hp, wp))
    kernel_spectrum = torch.fft.rfft2(kernels.to(images.device, torch.float32), s=(hp, wp))
    out = torch.fft.irfft2(spectrum * kernel_spectrum.unsqueeze(1), s=(hp, wp))
    # circular convolution with the kernel at the origin: output (i, j) is the neighbourhood of
    # padded pixel (i - p, j - p), i.e. of image pixel (i - 2p, j - 2p); rows >= 2p never wrap
    return out[..., 2 * p :, 2 * p :].to(images.dtype)


def gaussian_kernel(sigma: float, size: int | None = None) -> torch.Tensor:
    """(1, K, K) float32 isotropic Gaussian, K = size or the odd side covering 3 sigma."""
    side = size or 2 * math.ceil(3 * sigma) + 1
    r = torch.arange(side, dtype=torch.float64) - side // 2
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    k = g[:, None] * g[None, :]
    return (k / k.sum()).float()[None]
