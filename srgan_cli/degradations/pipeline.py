"""The degradation pipeline: a batch of HR crops -> their damaged LR images, on the training device,
seeded and resumable. Every random choice is drawn in a fixed order from a CPU generator (the noise
fields from a second generator on the device), whatever the outcome of earlier draws, so the same
seed gives the same batches on any machine with the same libjpeg, and a checkpoint that stores
`state_dict()` continues the same stream."""

from __future__ import annotations

import math
from typing import Any

import torch

from . import ops
from .config import MAX_KERNEL, DegradationConfig, Stage
from .kernels import odd_sizes, random_blur_kernels, sinc, uniform


def _delta(n: int) -> torch.Tensor:
    k = torch.zeros(n, MAX_KERNEL, MAX_KERNEL)
    k[:, MAX_KERNEL // 2, MAX_KERNEL // 2] = 1.0
    return k


class Degrader:
    """`degrader(hr)`: (N, 3, H, W) float HR in [0, 1] -> (N, 3, H/s, W/s) float LR in [0, 1],
    8-bit quantised like a real file. `target(hr)`: the training target of the last call's batch
    (sharpened if the config asks, except for the crops that kept the clean LR). With
    `record=True`, `last` describes what each sample of the last call went through."""

    def __init__(
        self,
        config: DegradationConfig,
        scale: int,
        *,
        device: torch.device | str = "cpu",
        seed: int = 0,
        record: bool = False,
    ) -> None:
        self.config = config.check()
        self.scale = int(scale)
        self.device = torch.device(device)
        self.rng = torch.Generator().manual_seed(seed)  # every choice and parameter
        self.noise_rng = torch.Generator(device=self.device).manual_seed(seed + 1)  # noise fields
        self.record = record
        self.last: list[dict[str, Any]] = []
        self.clean: torch.Tensor | None = None  # (N,) bool: the last call's crops that kept the clean LR

    # --- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"rng": self.rng.get_state(), "noise_rng": self.noise_rng.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.rng.set_state(state["rng"].cpu())
        self.noise_rng.set_state(state["noise_rng"].cpu())  # a CUDA generator's state is a CPU tensor too

    # --- the pipeline ---------------------------------------------------------------------------
    def target(self, hr: torch.Tensor) -> torch.Tensor:
        """The target of `hr`, the batch of the last call: unsharp-masked with `sharpen_target`, but
        the crops that kept the clean LR keep their HR as it is (a clean photo is to stay as it is)."""
        cfg = self.config
        if cfg.sharpen_target <= 0:
            return hr
        sharp = ops.unsharp_mask(
            hr, cfg.sharpen_target, sigma=cfg.sharpen_sigma, threshold=cfg.sharpen_threshold / 255.0
        )
        clean = self.clean
        if clean is not None and clean.shape[0] == hr.shape[0] and bool(clean.any()):
            sharp = torch.where(clean.to(hr.device).view(-1, 1, 1, 1), hr, sharp)
        return sharp

    @torch.no_grad()
    def __call__(self, hr: torch.Tensor) -> torch.Tensor:
        n, _, h, w = hr.shape
        out = (h // self.scale, w // self.scale)
        if min(out) < 1:
            raise ValueError(f"a {w}x{h} image has no x{self.scale} LR")
        x = hr.to(self.device, torch.float32)
        cfg = self.config
        self.last = [{} for _ in range(n)] if self.record else []
        if cfg.bicubic:
            self.clean = None
            return ops.bicubic_lr(x, out)
        clean = torch.rand(n, generator=self.rng) < cfg.clean_prob  # drawn first, always
        self.clean = clean
        if cfg.from_clean_lr:  # the damage starts from the clean protocol's LR
            x = ops.bicubic_lr(x, out)
        if cfg.first is not None:
            x = self._stage(x, cfg.first, None, "first")
        if cfg.second is not None:
            x = self._stage(x, cfg.second, out, "second")
        x = self._final(x, out)
        if bool(clean.any()):  # these crops keep the clean protocol's LR
            plain = ops.bicubic_lr(hr.to(self.device, torch.float32), out)
            x = torch.where(clean.to(x.device).view(n, 1, 1, 1), plain, x)
            self._note("clean", [True if c else None for c in clean.tolist()])
        return ops.to_uint8(x).float().div_(255.0)

    def _note(self, key: str, values: list[Any]) -> None:
        if self.record:
            for row, v in zip(self.last, values, strict=True):
                if v is not None:
                    row[key] = v

    def _stage(
        self, x: torch.Tensor, stage: Stage, target: tuple[int, int] | None, name: str
    ) -> torch.Tensor:
        """blur -> random resize (relative to the input, or with `target` to the LR size) -> noise -> JPEG."""
        n, g = x.shape[0], self.rng
        # blur: per sample, a kernel of its own (or none)
        blur = torch.rand(n, generator=g) < stage.blur_prob
        kernels, kinds = random_blur_kernels(
            n,
            kinds=stage.kernel_kinds,
            size=stage.kernel_size,
            sigma=stage.blur_sigma,
            generalized_beta=stage.generalized_beta,
            plateau_beta=stage.plateau_beta,
            sinc_prob=stage.sinc_prob,
            generator=g,
        )
        if bool(blur.any()):
            kernels = torch.where(blur.view(n, 1, 1), kernels, _delta(n))
            x = ops.filter2d(x, kernels).clamp_(0.0, 1.0)
        self._note(f"{name}_blur", [k if b else None for k, b in zip(kinds, blur.tolist(), strict=True)])
        # resize: one factor and mode for the whole batch (the crops must keep one size)
        u, f, m = torch.rand(3, generator=g, dtype=torch.float64).tolist()
        up, down, _keep = (p / sum(stage.resize_probs) for p in stage.resize_probs)
        lo, hi = stage.resize_range
        if u < up:
            factor = 1.0 + f * (max(hi, 1.0) - 1.0)
        elif u < up + down:
            factor = min(lo, 1.0) + f * (1.0 - min(lo, 1.0))
        else:
            factor = 1.0
        mode = stage.resize_modes[min(int(m * len(stage.resize_modes)), len(stage.resize_modes) - 1)]
        base = target if target is not None else tuple(x.shape[-2:])
        size = (max(4, round(base[0] * factor)), max(4, round(base[1] * factor)))
        x = ops.resize(x, size, mode)
        self._note(f"{name}_resize", [{"mode": mode, "factor": round(factor, 4), "size": list(size)}] * n)
        # noise: Gaussian or Poisson, colour or grey, per sample
        gaussian = torch.rand(n, generator=g) < stage.gaussian_noise_prob
        gray = torch.rand(n, generator=g) < stage.gray_noise_prob
        sigma = uniform(n, stage.noise_sigma, g).float()
        strength = uniform(n, stage.poisson_scale, g).float()
        # each crop gets only the noise drawn for it (Poisson sampling is the slow one on the CPU)
        x = x.clone()
        for kind, pick in ((ops.gaussian_noise, gaussian), (ops.poisson_noise, ~gaussian)):
            index = pick.nonzero().flatten()
            if len(index):
                amount = sigma if kind is ops.gaussian_noise else strength
                x[index.to(x.device)] = kind(
                    x[index.to(x.device)], amount[index], gray[index], self.noise_rng
                )
        x = x.clamp_(0.0, 1.0)
        strengths = torch.where(gaussian, sigma, strength).tolist()
        self._note(
            f"{name}_noise",
            [
                {"kind": "gaussian" if ga else "poisson", "grey": gr, "strength": round(v, 3)}
                for ga, gr, v in zip(gaussian.tolist(), gray.tolist(), strengths, strict=True)
            ],
        )
        # JPEG at the end of the stage
        do = torch.rand(n, generator=g) < stage.jpeg_prob
        quality = torch.randint(int(stage.jpeg_quality[0]), int(stage.jpeg_quality[1]) + 1, (n,), generator=g)
        x = self._jpeg_some(x, do, quality, f"{name}_jpeg")
        return x

    def _jpeg_some(self, x: torch.Tensor, do: torch.Tensor, quality: torch.Tensor, key: str) -> torch.Tensor:
        index = do.nonzero().flatten().tolist()
        if index:
            x = x.clone()
            x[index] = ops.jpeg(x[index], [int(quality[i]) for i in index])
        self._note(key, [int(q) if d else None for q, d in zip(quality.tolist(), do.tolist(), strict=True)])
        return x

    def _final(self, x: torch.Tensor, out: tuple[int, int]) -> torch.Tensor:
        """[resize to the LR size + sinc, JPEG] or [JPEG, resize + sinc], then maybe a video codec."""
        cfg, n, g = self.config, x.shape[0], self.rng
        resize_first, m = torch.rand(2, generator=g, dtype=torch.float64).tolist()
        mode = cfg.final_resize_modes[
            min(int(m * len(cfg.final_resize_modes)), len(cfg.final_resize_modes) - 1)
        ]
        use_sinc = torch.rand(n, generator=g) < cfg.final_sinc_prob
        sizes = odd_sizes(n, (7, MAX_KERNEL), g)
        cutoff = uniform(n, (math.pi / 3, math.pi), g)
        kernels = torch.where(use_sinc.view(n, 1, 1), sinc(sizes, cutoff).float(), _delta(n))
        do_jpeg = torch.rand(n, generator=g) < cfg.final_jpeg_prob
        quality = torch.randint(
            int(cfg.final_jpeg_quality[0]), int(cfg.final_jpeg_quality[1]) + 1, (n,), generator=g
        )
        do_video = torch.rand(n, generator=g) < cfg.video_prob
        codec = torch.randint(len(cfg.video_codecs), (n,), generator=g)
        crf = torch.randint(int(cfg.video_crf[0]), int(cfg.video_crf[1]) + 1, (n,), generator=g)

        def resize_and_sinc(y: torch.Tensor) -> torch.Tensor:
            y = ops.resize(y, out, mode)
            return ops.filter2d(y, kernels).clamp_(0.0, 1.0) if bool(use_sinc.any()) else y

        if resize_first < 0.5:
            x = self._jpeg_some(resize_and_sinc(x), do_jpeg, quality, "final_jpeg")
        else:
            x = resize_and_sinc(self._jpeg_some(x, do_jpeg, quality, "final_jpeg"))
        self._note("final", [f"{mode}{' + sinc' if s else ''}" for s in use_sinc.tolist()])
        index = do_video.nonzero().flatten().tolist()
        if index:
            x = x.clone()
            x[index] = ops.video_codec(
                x[index], [cfg.video_codecs[int(codec[i])] for i in index], [int(crf[i]) for i in index]
            )
        self._note(
            "video",
            [
                f"{cfg.video_codecs[int(c)]} crf {int(q)}" if d else None
                for d, c, q in zip(do_video.tolist(), codec, crf, strict=True)
            ],
        )
        return x
