"""Choosing the torch device and the inference/training precision from user-facing strings."""

from __future__ import annotations

import os

import torch

from .errors import DeviceError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' -> the first CUDA GPU if there is one, else CPU; 'cpu'; 'cuda' or 'cuda:N'."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {spec!r} asked for, but no CUDA GPU is visible to PyTorch",
                hint="use --device cpu, or check the NVIDIA driver and CUDA_VISIBLE_DEVICES",
            )
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"{spec} does not exist: {torch.cuda.device_count()} GPU(s) visible")
        return dev
    raise DeviceError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N")


def resolve_precision(spec: str, device: torch.device) -> torch.dtype:
    """'auto' -> fp16 on CUDA, fp32 on CPU. fp16 on CPU is refused (slow or unsupported kernels)."""
    spec = spec.strip().lower()
    if spec not in PRECISIONS:
        raise DeviceError(f"unknown precision {spec!r}: use one of {', '.join(PRECISIONS)}")
    if spec == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if spec == "fp16" and device.type == "cpu":
        raise DeviceError(
            "fp16 is not supported on the CPU (many convolution kernels are missing or very slow)",
            hint="use --precision fp32 (or bf16 on CPUs with AVX-512 BF16/AMX), or run on a GPU",
        )
    if spec == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError("this GPU does not support bf16", hint="use --precision fp16")
    return _DTYPES[spec]


def precision_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> 'bf16', the spelling the options use."""
    return next((name for name, d in _DTYPES.items() if d == dtype), str(dtype).removeprefix("torch."))


def free_memory_bytes(device: torch.device) -> int:
    """Memory an inference call may use now: free GPU memory, or available system RAM."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30  # platforms without sysconf: assume a modest 4 GiB
