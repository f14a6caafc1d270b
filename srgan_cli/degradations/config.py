"""What the degradation pipeline may do, as typed ranges: one `Stage` per order of degradation, the
final resize/sinc/JPEG, optional video compression and sharpened targets; the named presets and the
TOML loader (`--degradation PRESET|FILE.toml`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..tomlfile import read_toml

KERNEL_KINDS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
VIDEO_CODECS = ("libx264", "libx265")
MAX_KERNEL = 21  # every blur kernel is drawn on this frame (Real-ESRGAN's largest, 21x21)


class DegradationError(UsageError):
    """A degradation preset, file or range that cannot be used."""


Range = tuple[float, float]


@dataclass
class Stage:
    """One order of degradation: blur -> random resize -> noise -> JPEG, each with its own ranges.
    Noise sigmas are in 8-bit grey levels (0-255), as in Real-ESRGAN's options."""

    blur_prob: float = 1.0  # chance that this stage blurs at all
    kernel_size: Range = (7, 21)  # odd side of the blur kernel, drawn uniformly from the odd sizes
    kernel_kinds: dict[str, float] = field(
        default_factory=lambda: {
            "iso": 0.45,
            "aniso": 0.25,
            "generalized_iso": 0.12,
            "generalized_aniso": 0.03,
            "plateau_iso": 0.12,
            "plateau_aniso": 0.03,
        }
    )  # relative chances of the kernel shapes (Real-ESRGAN's)
    blur_sigma: Range = (0.2, 3.0)  # std. dev. of each kernel axis, in px
    generalized_beta: Range = (0.5, 4.0)  # shape exponent of generalized Gaussian kernels
    plateau_beta: Range = (1.0, 2.0)  # shape exponent of plateau kernels
    sinc_prob: float = 0.1  # chance that the blur is a 2-D sinc (ringing) instead
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)  # chances of up, down, keep
    resize_range: Range = (0.15, 1.5)  # resize factor (first stage: of its input; second: of the LR size)
    resize_modes: tuple[str, ...] = RESIZE_MODES  # drawn uniformly
    gaussian_noise_prob: float = 0.5  # Gaussian noise with this chance, else Poisson (shot) noise
    noise_sigma: Range = (1.0, 30.0)  # Gaussian noise std. dev., grey levels
    poisson_scale: Range = (0.05, 3.0)  # strength of Poisson noise
    gray_noise_prob: float = 0.4  # chance that the noise is the same in all three channels
    jpeg_prob: float = 1.0  # chance of a JPEG round trip at the end of the stage
    jpeg_quality: Range = (30, 95)  # JPEG quality, drawn as an integer

    def check(self, where: str) -> None:
        probs = ("blur_prob", "sinc_prob", "gaussian_noise_prob", "gray_noise_prob", "jpeg_prob")
        for name in probs:
            _probability(getattr(self, name), f"{where}.{name}")
        lo, hi = _range(self.kernel_size, f"{where}.kernel_size", 3, MAX_KERNEL)
        if int(lo) % 2 == 0 or int(hi) % 2 == 0 or lo != int(lo) or hi != int(hi):
            raise DegradationError(
                f"{where}.kernel_size: both ends must be odd integers, got {self.kernel_size}"
            )
        unknown = set(self.kernel_kinds) - set(KERNEL_KINDS)
        if unknown:
            raise DegradationError(
                f"{where}.kernel_kinds: unknown kind(s) {', '.join(sorted(unknown))}; "
                f"use {', '.join(KERNEL_KINDS)}"
            )
        if any(not (v >= 0) for v in self.kernel_kinds.values()) or sum(self.kernel_kinds.values()) <= 0:
            raise DegradationError(f"{where}.kernel_kinds: chances must be >= 0 and not all 0")
        _range(self.blur_sigma, f"{where}.blur_sigma", 0.05, 50.0)
        _range(self.generalized_beta, f"{where}.generalized_beta", 0.1, 10.0)
        _range(self.plateau_beta, f"{where}.plateau_beta", 0.1, 10.0)
        if (
            len(self.resize_probs) != 3
            or any(not (p >= 0) for p in self.resize_probs)
            or sum(self.resize_probs) <= 0
        ):
            raise DegradationError(f"{where}.resize_probs: three chances (up, down, keep), >= 0, not all 0")
        _range(self.resize_range, f"{where}.resize_range", 0.05, 4.0)
        if not self.resize_modes or set(self.resize_modes) - set(RESIZE_MODES):
            raise DegradationError(f"{where}.resize_modes: choose from {', '.join(RESIZE_MODES)}")
        _range(self.noise_sigma, f"{where}.noise_sigma", 0.0, 255.0)
        _range(self.poisson_scale, f"{where}.poisson_scale", 0.0, 50.0)
        _range(self.jpeg_quality, f"{where}.jpeg_quality", 1, 100)


@dataclass
class DegradationConfig:
    """The whole pipeline (Real-ESRGAN's second-order model, Wang et al. 2021, plus video):

    HR -> first stage -> second stage (if any; resized relative to the LR size) -> final step, in
    random order either [resize to LR size + sinc, JPEG] or [JPEG, resize to LR size + sinc] ->
    video codec (if drawn) -> 8-bit LR. `bicubic` is the plain antialiased downscale of the SR
    protocol (no damage)."""

    name: str = "custom"
    bicubic: bool = False  # the clean SR protocol: no stages, LR = antialiased bicubic, 8 bit
    # chance that a crop skips the damage and gets the clean bicubic LR (as BSRGAN-style pipelines
    # keep some clean inputs), so the model still treats sharp, clean photos as they are
    clean_prob: float = 0.0
    # start from the clean LR (antialiased bicubic, as `bicubic` gives it) instead of the HR crop:
    # the first stage is skipped and the second damages the LR at its own size (its resize then
    # only by its factor), so the damage is all at the LR size, as in `srgan eval --degrade`
    from_clean_lr: bool = False
    first: Stage | None = field(default_factory=Stage)
    second: Stage | None = None
    final_sinc_prob: float = 0.8  # chance of a sinc filter with the final resize
    final_resize_modes: tuple[str, ...] = RESIZE_MODES
    final_jpeg_prob: float = 1.0
    final_jpeg_quality: Range = (30, 95)
    video_prob: float = 0.0  # chance that the LR goes through a video codec at the end
    video_codecs: tuple[str, ...] = ("libx264",)
    video_crf: Range = (18, 35)  # constant rate factor (x264/x265: 0 lossless, 23 default, 51 worst)
    sharpen_target: float = 0.0  # unsharp-mask weight of the training targets (Real-ESRGAN: 0.5); 0 = off
    # its Gaussian's std. dev. in HR px (Real-ESRGAN: 8, a 51 px kernel); a small one (2-3) sharpens
    # edges, not local contrast: what a restoration front-end's target needs (docs/degradations.md)
    sharpen_sigma: float = 8.0
    # the detail (grey levels of 255) below which the mask leaves pixels unsharpened (Real-ESRGAN:
    # 10, so flat areas keep their noise-free look); 0 sharpens texture too
    sharpen_threshold: float = 10.0

    def check(self) -> DegradationConfig:
        if self.bicubic:
            return self
        for name, stage in (("first", self.first), ("second", self.second)):
            if stage is not None:
                stage.check(name)
        if self.from_clean_lr and self.first is not None:
            raise DegradationError("from_clean_lr starts at the LR size: leave out the [first] stage")
        for name in ("clean_prob", "final_sinc_prob", "final_jpeg_prob", "video_prob"):
            _probability(getattr(self, name), name)
        if not self.final_resize_modes or set(self.final_resize_modes) - set(RESIZE_MODES):
            raise DegradationError(f"final_resize_modes: choose from {', '.join(RESIZE_MODES)}")
        _range(self.final_jpeg_quality, "final_jpeg_quality", 1, 100)
        if self.video_prob > 0:
            if not self.video_codecs or set(self.video_codecs) - set(VIDEO_CODECS):
                raise DegradationError(f"video_codecs: choose from {', '.join(VIDEO_CODECS)}")
            _range(self.video_crf, "video_crf", 0, 51)
        if not 0.0 <= self.sharpen_target <= 4.0:
            raise DegradationError(f"sharpen_target must be in [0, 4], got {self.sharpen_target}")
        if not 0.3 <= self.sharpen_sigma <= 16.0:
            raise DegradationError(f"sharpen_sigma must be in [0.3, 16] HR px, got {self.sharpen_sigma}")
        if not 0.0 <= self.sharpen_threshold <= 255.0:
            raise DegradationError(
                f"sharpen_threshold must be in [0, 255] grey levels, got {self.sharpen_threshold}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Every range, as recorded in weights metadata and written by `srgan degrade --dump`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "degradation") -> DegradationConfig:
        data = dict(data)
        stages: dict[str, Stage | None] = {}
        for key in ("first", "second"):
            if key in data:
                value = data.pop(key)
                stages[key] = None if value in (None, False, {}) else _stage_from(value, f"{where} [{key}]")
        config = _build(cls, data, where)
        return replace(config, **stages).check()

    @property
    def label(self) -> str:
        return self.name


def _stage_from(value: Any, where: str) -> Stage:
    if not isinstance(value, dict):
        raise DegradationError(f"{where} must be a table of ranges")
    return _build(Stage, value, where)


def _build(cls: Any, data: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise DegradationError(
            f"{where}: unknown option(s) {', '.join(unknown)}",
            hint=f"known: {', '.join(k for k in known if k not in ('first', 'second'))}",
        )
    out: dict[str, Any] = {}
    defaults = cls()
    for k, v in data.items():
        default = getattr(defaults, k)
        if isinstance(default, tuple):
            if not isinstance(v, (list, tuple)):
                raise DegradationError(f"{where}: {k} should be a list like {list(default)}, got {v!r}")
            v = tuple(v)
            if k.endswith(("range", "sigma", "beta", "scale", "quality", "size", "crf")) and len(v) != 2:
                raise DegradationError(f"{where}: {k} should be [low, high], got {list(v)}")
        elif isinstance(default, dict):
            if not isinstance(v, dict):
                raise DegradationError(f"{where}: {k} should be a table like {default}, got {v!r}")
            v = {str(a): float(b) for a, b in v.items()}
        elif isinstance(default, bool):
            if not isinstance(v, bool):
                raise DegradationError(f"{where}: {k} should be true or false, got {v!r}")
        elif isinstance(default, float):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise DegradationError(f"{where}: {k} should be a number, got {v!r}")
            v = float(v)
        elif isinstance(default, str) and not isinstance(v, str):
            raise DegradationError(f"{where}: {k} should be a string, got {v!r}")
        out[k] = v
    return cls(**out)


def _probability(value: float, name: str) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise DegradationError(f"{name} is a chance, in [0, 1]; got {value!r}")


def _range(value: Any, name: str, low: float, high: float) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise DegradationError(f"{name} should be [low, high], got {value!r}") from None
    if not (low <= lo <= hi <= high):
        raise DegradationError(f"{name} should satisfy {low:g} <= low <= high <= {high:g}, got {list(value)}")
    return lo, hi


# --- presets ------------------------------------------------------------------------------------
def _realesrgan() -> DegradationConfig:
    """Real-ESRGAN's x4plus training options (Wang et al. 2021, options/train_realesrgan_x4plus.yml)."""
    return DegradationConfig(
        name="realesrgan",
        first=Stage(),
        second=Stage(
            blur_prob=0.8,
            blur_sigma=(0.2, 1.5),
            resize_probs=(0.3, 0.4, 0.3),
            resize_range=(0.3, 1.2),
            noise_sigma=(1.0, 25.0),
            poisson_scale=(0.05, 2.5),
            jpeg_prob=0.0,  # the second order's JPEG is the final step's
        ),
        final_sinc_prob=0.8,
        final_jpeg_quality=(30, 95),
    )


def _photo() -> DegradationConfig:
    """Phone, web and messaging-app photos: milder blur than Real-ESRGAN's (no plateau or
    generalized anisotropic kernels), downscales, sensor noise up to 10 grey levels, one or two
    JPEG saves down to quality 30, rarely a ringing resampler; one crop in five left clean. Spans
    the `srgan eval --degrade` levels light and moderate (damage.py); heavy's LR noise of 10 is past
    the second order's 8."""
    mild = {"iso": 0.5, "aniso": 0.3, "generalized_iso": 0.1, "plateau_iso": 0.1}
    return DegradationConfig(
        name="photo",
        first=Stage(
            blur_prob=0.7,
            kernel_size=(7, 15),
            kernel_kinds=mild,
            blur_sigma=(0.2, 2.5),
            sinc_prob=0.05,
            resize_probs=(0.1, 0.6, 0.3),
            resize_range=(0.4, 1.2),
            noise_sigma=(0.5, 10.0),
            poisson_scale=(0.05, 1.0),
            jpeg_prob=0.5,
            jpeg_quality=(50, 95),
        ),
        second=Stage(
            blur_prob=0.5,
            kernel_size=(7, 11),
            kernel_kinds=mild,
            blur_sigma=(0.2, 1.5),
            sinc_prob=0.0,
            resize_probs=(0.2, 0.3, 0.5),
            resize_range=(0.6, 1.2),
            noise_sigma=(0.5, 8.0),
            poisson_scale=(0.05, 0.5),
            gaussian_noise_prob=0.7,
            jpeg_prob=0.0,
        ),
        final_sinc_prob=0.2,
        final_jpeg_prob=0.9,
        final_jpeg_quality=(30, 95),
        clean_prob=0.2,
    )


def _video() -> DegradationConfig:
    """`photo`, then half the time an H.264 or H.265 intra frame at CRF 18-35 (streamed and
    downloaded video)."""
    return replace(
        _photo(),
        name="video",
        final_jpeg_prob=0.5,
        video_prob=0.5,
        video_codecs=("libx264", "libx265"),
        video_crf=(18, 35),
    )


def _noisy() -> DegradationConfig:
    """Sensor noise and JPEG on the clean LR, at its own size (no blur, no resampling): the
    damage a restoration front-end learns to remove (the restore stage). Gaussian noise 80% of the
    time (0.5-15 grey levels, colour 65% of the time), else Poisson; then a JPEG save at quality
    30-95 70% of the time; one crop in five left clean, so clean input is left alone."""
    return DegradationConfig(
        name="noisy",
        from_clean_lr=True,
        clean_prob=0.2,
        first=None,
        second=Stage(
            blur_prob=0.0,
            resize_probs=(0.0, 0.0, 1.0),
            noise_sigma=(0.5, 15.0),
            gaussian_noise_prob=0.8,
            poisson_scale=(0.05, 1.5),
            gray_noise_prob=0.35,
            jpeg_prob=0.0,
        ),
        final_sinc_prob=0.0,
        final_jpeg_prob=0.7,
        final_jpeg_quality=(30, 95),
    )


def _repair() -> DegradationConfig:
    """`noisy` with blur: what the shipped front-end (`srgan_x4_denoise`) learns to repair at the
    LR size. A Gaussian, anisotropic, generalized or plateau blur of 0.2-1.3 LR px 60% of the time,
    then the noise of `noisy`, then a JPEG save at quality 25-95 80% of the time; 15% of crops
    clean. The targets of damaged crops are sharpened (weight 1.5, sigma 2.4 HR px, every detail
    however faint): an L1 front-end's output is an average of the clean LRs a damaged one could
    have come from, softer than any of them, and the SR network behind it makes less texture from
    a soft LR (docs/degradations.md)."""
    noisy = _noisy()
    assert noisy.second is not None
    return replace(
        noisy,
        name="repair",
        clean_prob=0.15,
        second=replace(
            noisy.second,
            blur_prob=0.6,
            kernel_size=(7, 13),
            kernel_kinds={"iso": 0.6, "aniso": 0.25, "generalized_iso": 0.1, "plateau_iso": 0.05},
            blur_sigma=(0.2, 1.3),
            sinc_prob=0.0,
        ),
        final_jpeg_prob=0.8,
        final_jpeg_quality=(25, 95),
        sharpen_target=1.5,
        sharpen_sigma=2.4,
        sharpen_threshold=0.0,
    )


PRESETS = {
    "bicubic": lambda: DegradationConfig(name="bicubic", bicubic=True, first=None),
    "realesrgan": _realesrgan,
    "photo": _photo,
    "video": _video,
    "noisy": _noisy,
    "repair": _repair,
}
# the presets as help strings name them: every one, and those that damage (all but bicubic)
PRESET_NAMES = ", ".join(PRESETS)
DAMAGE_PRESET_NAMES = ", ".join(name for name in PRESETS if name != "bicubic")


def load_degradation(spec: str | Path | None) -> DegradationConfig:
    """A preset name (bicubic, realesrgan, photo, video, noisy, repair) or a TOML file: top-level keys
    override a base (`preset = "photo"`, default realesrgan), tables [first] and [second] override its
    stages (`second = false` drops the second order)."""
    if spec is None or str(spec) == "":
        spec = "bicubic"
    text = str(spec)
    if text in PRESETS:
        return PRESETS[text]().check()
    path = Path(text)
    if path.suffix.lower() != ".toml":
        raise DegradationError(
            f"unknown degradation {text!r}",
            hint=f"use a preset ({', '.join(PRESETS)}) or a .toml file of ranges",
        )
    raw = read_toml(path, DegradationError, "degradation file")
    raw = raw.get("degradation", raw)  # also accept the ranges under a [degradation] table
    base_name = raw.pop("preset", "realesrgan")
    if base_name not in PRESETS or base_name == "bicubic":
        bases = ", ".join(p for p in PRESETS if p != "bicubic")
        raise DegradationError(f"{path}: preset must be one of {bases}; got {base_name!r}")
    base = PRESETS[base_name]().to_dict()
    for key in ("first", "second"):
        if key in raw:
            value = raw.pop(key)
            if value is False:
                base[key] = None
            elif isinstance(value, dict):
                base[key] = {**(base[key] or asdict(Stage())), **value}
            else:
                raise DegradationError(f"{path}: [{key}] must be a table of ranges (or false)")
    base.update(raw)
    base["name"] = raw.get("name", path.stem)
    base.pop("bicubic", None)
    return DegradationConfig.from_dict(base, str(path))
