"""Parzen-window log-likelihood of held-out images under a generator's samples (the metric of
Goodfellow et al. 2014 and Denton et al. 2015).

A Gaussian kernel of width sigma is put on each of N generated images; the score of a held-out
image x is log( 1/N sum_i N(x; s_i, sigma^2 I) ), in nats, with pixels in [0, 1]. Sigma is chosen
on one half of the held-out crops and the mean score is reported on the other half. The estimate
is known to be crude in high dimensions (Theis et al. 2016): use it to compare models scored the
same way, not as an absolute likelihood.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from ..errors import UsageError
from ..training import count_parameters
from .models import Lapgan
from .sample import draw

DEFAULT_SIGMAS = tuple(round(10 ** (-2 + 0.1 * i), 5) for i in range(21))  # 0.01 .. 1, log-spaced


def squared_distances(samples: torch.Tensor, x: torch.Tensor, *, chunk: int = 256) -> torch.Tensor:
    """(M, N) float64 squared distances between the rows of x (M, D) and samples (N, D), computed
    as |x|^2 + |s|^2 - 2 x.s in chunks, without materialising (M, N, D)."""
    s = samples.float()
    s_sq = (s * s).sum(1)
    out = []
    for start in range(0, x.shape[0], chunk):
        xc = x[start : start + chunk].float()
        out.append(((xc * xc).sum(1, keepdim=True) + s_sq[None] - 2.0 * xc @ s.T).clamp_min(0).double())
    return torch.cat(out)


def parzen_from_distances(d2: torch.Tensor, sigma: float, dims: int) -> torch.Tensor:
    """(M,) log-likelihoods from (M, N) squared distances to the N kernel centres."""
    log_norm = math.log(d2.shape[1]) + 0.5 * dims * math.log(2 * math.pi * sigma**2)
    return torch.logsumexp(-d2 / (2 * sigma**2), dim=1) - log_norm


def parzen_log_likelihood(
    samples: torch.Tensor, x: torch.Tensor, sigma: float, *, chunk: int = 256
) -> torch.Tensor:
    """(M,) log-likelihood of each row of x (M, D) under the kernel density of samples (N, D)."""
    return parzen_from_distances(squared_distances(samples, x, chunk=chunk), sigma, samples.shape[1])


@dataclass
class ParzenReport:
    model: str
    levels: int
    g_params: int
    n_samples: int
    n_val: int
    n_test: int
    dims: int
    sigma: float  # chosen on the validation half
    mean: float  # mean log-likelihood on the test half, nats per image
    stderr: float  # standard error of that mean
    val_curve: dict[str, float] = field(default_factory=dict)  # sigma -> mean val log-likelihood

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def parzen_eval(
    model: Lapgan,
    heldout: torch.Tensor,
    *,
    name: str = "model",
    n_samples: int = 10_000,
    seed: int = 0,
    sigmas: tuple[float, ...] = DEFAULT_SIGMAS,
    batch: int = 500,
) -> ParzenReport:
    """Score `model` on held-out crops (M, 3, size, size): the first half picks sigma, the second
    half is scored."""
    size = model.config.size
    if tuple(heldout.shape[1:]) != (3, size, size):
        raise UsageError(f"held-out crops must be 3x{size}x{size}, got {tuple(heldout.shape[1:])}")
    if heldout.shape[0] < 4:
        raise UsageError("need at least 4 held-out crops (half choose sigma, half are scored)")
    if n_samples < 1:
        raise UsageError("need at least one sample")
    parts = []
    for i, start in enumerate(range(0, n_samples, batch)):
        parts.append(draw(model, min(batch, n_samples - start), seed=seed * 100_003 + i)[-1].flatten(1))
    samples = torch.cat(parts)
    flat = heldout.flatten(1).float()
    half = flat.shape[0] // 2
    val, test = flat[:half], flat[half:]
    dims = flat.shape[1]
    d2_val = squared_distances(samples, val)  # once; every sigma reuses it
    curve = {s: float(parzen_from_distances(d2_val, s, dims).mean()) for s in sigmas}
    sigma = max(curve, key=lambda s: curve[s])
    scores = parzen_log_likelihood(samples, test, sigma)
    stderr = float(scores.std(unbiased=True) / math.sqrt(scores.numel())) if scores.numel() > 1 else 0.0
    return ParzenReport(
        model=name,
        levels=model.config.levels,
        g_params=count_parameters(model),
        n_samples=n_samples,
        n_val=half,
        n_test=int(test.shape[0]),
        dims=int(flat.shape[1]),
        sigma=sigma,
        mean=float(scores.mean()),
        stderr=stderr,
        val_curve={f"{s:g}": round(v, 2) for s, v in curve.items()},
    )
