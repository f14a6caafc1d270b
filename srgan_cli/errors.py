"""Typed errors the library raises; the CLI turns each into one red line and an exit code."""

from __future__ import annotations

from pathlib import Path


class SrganError(Exception):
    """Base class: a message for the user, an optional hint, and the process exit code."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(SrganError):
    """Options that contradict each other or cannot work on this machine."""

    exit_code = 2


class ArgumentError(UsageError, ValueError):
    """An argument of the Python API (or an option) with a value it cannot take: also a ValueError."""


class ArgumentTypeError(UsageError, TypeError):
    """An argument of the Python API of a kind it cannot take (an int16 array, a list): also a
    TypeError."""


class DeviceError(UsageError):
    """A device or precision that is not available (e.g. fp16 on CPU, cuda without a GPU)."""


class WeightsError(SrganError):
    """Weights that cannot be found, read, or matched to an architecture."""

    exit_code = 2


class WeightsNotFound(WeightsError):
    pass


class WeightsFormatError(WeightsError):
    """Not a weights file, truncated or corrupt, or refused (pickled code)."""


class ForeignWeights(WeightsFormatError):
    """A model file that is not srgan-cli's: the runtime tries spandrel's architectures on it."""


class WeightsMismatch(WeightsError):
    """The tensors in the file do not fit the architecture config, or the scale is wrong."""


class PerceptualWeightsError(WeightsError):
    """Pretrained VGG or LPIPS weights that cannot be found or do not fit (never replaced by random ones)."""


class ImageError(SrganError):
    """A problem with one image file; a batch reports it and goes on."""

    def __init__(self, path: str | Path, reason: str, *, hint: str | None = None) -> None:
        super().__init__(f"{path}: {reason}", hint=hint)
        self.path = Path(path)
        self.reason = reason


class ImageReadError(ImageError):
    pass


class ImageWriteError(ImageError):
    pass


class OutOfMemory(SrganError):
    """The model did not fit in memory even with the smallest tile."""

    def __init__(self, message: str, *, hint: str | None = "try a smaller --tile, e.g. --tile 128") -> None:
        super().__init__(message, hint=hint)


class NonFiniteOutput(SrganError):
    """A model whose output holds NaN or Inf (finite weights can still overflow, often in fp16): the
    image would be garbage, so it is not written."""

    def __init__(self, precision: str, *, hint: str | None = None) -> None:
        super().__init__(
            f"the model's output holds NaN or infinite values (precision {precision}): "
            "the result would be garbage",
            hint=hint or ("try --precision fp32" if precision != "fp32" else None),
        )
        self.precision = precision


class TrainingError(SrganError):
    """A training run that cannot start or had to stop (bad data folder, NaN loss, ...)."""


class TrainingOptionError(ArgumentError, TrainingError):
    """A training option whose value no run can use (a negative learning rate, beta1 of 1.5, ...):
    exit code 2 like any usage error, and still a TrainingError (and a ValueError) to code that
    catches those."""


class OnnxError(SrganError):
    """An ONNX export that fails the checker or its verification, or a model ONNX Runtime cannot run."""


class QueueFull(SrganError):
    """`srgan serve`: every worker is busy and the waiting line is full (HTTP 429: try again later)."""


class ShuttingDown(SrganError):
    """`srgan serve`: the server is stopping and takes no new work (HTTP 503)."""


class UploadTooLarge(SrganError):
    """`srgan serve`: a request body above the server's upload limit (HTTP 413)."""
