"""The CPU fast path of community models: each exported once to ONNX into the cache (verified
against PyTorch like every export), timed once against the torch path on a small probe, and run
through ONNX Runtime from then on when that was the faster (docs/benchmarks.md).

What was decided is kept beside the export, in a JSON record with the same name: the two times,
the backend chosen and the thread count they were measured with (another count measures again),
or why the architecture did not export (then it is not tried again by this version).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_open
from ..errors import OnnxError, UsageError
from ..version import __version__
from .onnx_export import fit_side

# Below this many parameters a model runs in milliseconds on the CPU: an export and a timing (a few
# seconds, once) would cost more than they could save, so such a model stays on torch untouched.
MIN_PARAMETERS = 100_000
PROBE_SIDE = 32  # LR side of the timing probe: about a second a run for a 23-block RRDB on 2 cores
PROBE_RUNS = 3  # at most, timed runs of each backend, interleaved, after one untimed; the fastest counts
DECISIVE = 1.5  # a ratio of times at least this large (either way) after one timed run ends the timing


@dataclass
class Decision:
    """Which backend runs a community model on the CPU, and why."""

    backend: str  # "onnx" or "torch"
    torch_ms: float | None = None  # the probe's time on each (None when the export failed)
    onnx_ms: float | None = None
    probe: int = PROBE_SIDE  # LR side of the probe
    threads: int = 0  # intra-op threads both ran with
    error: str | None = None  # why the export failed (backend torch)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "torch_ms": self.torch_ms,
            "onnx_ms": self.onnx_ms,
            "probe": self.probe,
            "threads": self.threads,
            "error": self.error,
            "version": __version__,
        }


def record_path(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".json")


def read_decision(onnx_path: Path) -> Decision | None:
    """What an earlier run decided for this export, if it still holds: an export that failed (for
    this version, which the file name carries), or a timing made with today's thread count whose
    export is still there; None otherwise (time it now)."""
    try:
        data = json.loads(record_path(onnx_path).read_text())
        decision = Decision(
            backend=str(data["backend"]),
            torch_ms=data.get("torch_ms"),
            onnx_ms=data.get("onnx_ms"),
            probe=int(data.get("probe", PROBE_SIDE)),
            threads=int(data.get("threads", 0)),
            error=data.get("error"),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if decision.error is not None:
        return decision
    if decision.backend not in ("onnx", "torch") or decision.threads != torch.get_num_threads():
        return None
    return decision if onnx_path.is_file() else None


def write_decision(onnx_path: Path, decision: Decision) -> None:
    """The record beside the export, written atomically (a cache: a write that fails only means
    the next run decides again)."""
    try:
        with atomic_open(record_path(onnx_path)) as fh:
            fh.write(json.dumps(decision.to_dict(), indent=2).encode())
    except OSError:
        pass


def export_community(descriptor: Any, onnx_path: Path, *, fp16: bool, source: dict[str, Any]) -> None:
    """Export spandrel's model to `onnx_path`, verified against PyTorch (onnx_export.export_onnx
    raises OnnxError, and writes nothing, when it differs or does not export)."""
    from .onnx_export import export_onnx
    from .third_party import ExportableModel

    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    net = ExportableModel(descriptor)
    export_onnx(net, onnx_path, fp16=fp16, source=source, overwrite=True, quick=True)


def _seconds(upscaler: Any, probe: np.ndarray) -> float:
    start = time.perf_counter()
    upscaler(probe)
    return time.perf_counter() - start


def time_backends(torch_up: Any, onnx_up: Any, side: int) -> tuple[float, float]:
    """(torch ms, ONNX ms) of one side x side image through each upscaler, as `srgan upscale`
    runs it (numpy in, numpy out): one untimed call each (allocations, ONNX Runtime's arena),
    then up to PROBE_RUNS interleaved timed calls each, the fastest of each counting (the least
    disturbed by whatever else the machine is doing); one timed pair is enough when one backend
    is DECISIVE-ly faster."""
    probe = np.random.default_rng(0).random((side, side, 3), dtype=np.float32)
    torch_up(probe)
    onnx_up(probe)
    torch_s: list[float] = []
    onnx_s: list[float] = []
    for _ in range(PROBE_RUNS):
        torch_s.append(_seconds(torch_up, probe))
        onnx_s.append(_seconds(onnx_up, probe))
        ratio = min(torch_s) / max(min(onnx_s), 1e-9)
        if not 1 / DECISIVE < ratio < DECISIVE:
            break
    return round(min(torch_s) * 1000, 1), round(min(onnx_s) * 1000, 1)


def first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


def cached_export(path: Path, precision: str) -> tuple[Path, str]:
    """(where the ONNX export of the community model file `path` is cached, the file's SHA-256
    prefix): keyed like loader.cached_onnx, by the file's contents, the precision and this version."""
    from .loader import cache_dir

    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    stem = path.name.rsplit(".", 1)[0]
    return cache_dir() / "onnx" / f"{stem}-{digest}-{precision}-v{__version__}.onnx", digest


def _source(path: Path, digest: str, torch_up: Any) -> dict[str, Any]:
    """The export's `source` metadata; `tile_align` tells OnnxUpscaler where tiles must start
    (a window-attention model's window, a size multiple: SpandrelUpscaler.tile_align)."""
    return {
        "weights": path.name,
        "sha256": digest,
        "architecture": f"spandrel:{torch_up.descriptor.architecture.id}",
        "tile_align": int(getattr(torch_up, "tile_align", 1)),
    }


def _measured_pad(path: Path, notes: list[str]) -> Callable[[], int]:
    """The tile pad the model's tiles need, found by third_party.tile_pad_for with its torch model
    (measured once per file, and cached), built only when an image is really cut into tiles."""
    found: list[int] = []

    def pad() -> int:
        if not found:
            from .third_party import SpandrelUpscaler, describe

            up = SpandrelUpscaler(describe(path), device=torch.device("cpu"), tile=0, notes=notes)
            found.append(int(up.tile_pad() if callable(up.tile_pad) else up.tile_pad))
        return found[0]

    return pad


def onnx_ready(
    path: Path,
    onnx_path: Path,
    device: str,
    expect_scale: int | None,
    notes: list[str],
    *,
    torch_up: Any = None,
    tile: int | None,
    tile_pad: int | None,
    tile_batch: int | None,
) -> Any:
    """A ReadyUpscaler of the community model `path` through its export `onnx_path`. With no tile
    pad given, tiles get the pad the torch model measures (from `torch_up` when it is at hand)."""
    from .loader import ReadyUpscaler
    from .onnx_backend import OnnxUpscaler

    pad: int | Callable[[], int]
    if tile_pad is not None:
        pad = tile_pad
    elif torch_up is not None:
        pad = torch_up.tile_pad
    else:
        pad = _measured_pad(path, notes)
    up = OnnxUpscaler(onnx_path, device=device, tile=tile, tile_pad=pad, tile_batch=tile_batch)
    if expect_scale is not None and up.scale != expect_scale:
        raise UsageError(f"{path} is a x{up.scale} model, but x{expect_scale} was requested")
    if tile_pad is None and up.tile and callable(pad):  # tiles asked for: measured now, notes seen
        pad()
    notes.extend(up.notes)
    info = up.info
    name = path.name.rsplit(".", 1)[0]
    return ReadyUpscaler(
        up, name, up.scale, "onnx", up.device_name, info.precision, info.arch, info.config, notes
    )


def fast_ready(path: Path, expect_scale: int | None, torch_ready: Callable[[], Any], **tiling: Any) -> Any:
    """backend auto for a community model on the CPU in fp32: through ONNX Runtime when its
    cached export was timed faster than torch, else `torch_ready()` (loader's SpandrelUpscaler).

    The first run exports the model into the cache, verified (export_onnx), and times both on a
    PROBE_SIDE probe (time_backends); the record beside the export keeps the result, so later
    runs neither export nor time. An architecture that does not export runs on torch, with a
    note, and is not tried again; a model under MIN_PARAMETERS is neither exported nor timed."""
    onnx_path, digest = cached_export(path, "fp32")
    known = read_decision(onnx_path)
    if known is not None and known.backend == "onnx":
        return onnx_ready(path, onnx_path, "cpu", expect_scale, [], **tiling)
    ready = torch_ready()
    if known is not None or int(ready.config.get("parameters", 0)) < MIN_PARAMETERS:
        return ready
    torch_up = ready.upscaler
    threads = torch.get_num_threads()
    try:
        if not onnx_path.is_file():
            source = _source(path, digest, torch_up)
            export_community(torch_up.descriptor, onnx_path, fp16=False, source=source)
        fast = onnx_ready(path, onnx_path, "cpu", expect_scale, [], torch_up=torch_up, **tiling)
    except Exception as exc:  # an architecture that does not export, or that ONNX Runtime cannot run
        decision = Decision("torch", threads=threads, error=first_line(exc))
        write_decision(onnx_path, decision)
        ready.notes.append(
            f"{torch_up.descriptor.architecture.name} does not export to ONNX ({decision.error}); "
            "running it through torch (not tried again)"
        )
        return ready
    side = fit_side(PROBE_SIDE, fast.upscaler.multiple, fast.upscaler.minimum)
    torch_ms, onnx_ms = time_backends(torch_up, fast.upscaler, side)
    decision = Decision("onnx" if onnx_ms < torch_ms else "torch", torch_ms, onnx_ms, side, threads)
    write_decision(onnx_path, decision)
    chosen = fast if decision.backend == "onnx" else ready
    chosen.notes.append(
        f"timed {ready.name} once on a {side}x{side} image: ONNX Runtime {onnx_ms:,.0f} ms, torch "
        f"{torch_ms:,.0f} ms; running it through {'ONNX Runtime' if chosen is fast else 'torch'} "
        f"(export and timing cached in {onnx_path.parent})"
    )
    return chosen


def explicit_ready(path: Path, expect_scale: int | None, device: str, precision: str, **tiling: Any) -> Any:
    """backend onnx for a community model: its cached export (fp16 where a GPU will run it and the
    architecture supports half precision, else fp32), exported now if missing; an architecture that
    does not export is an OnnxError here, since ONNX Runtime was asked for."""
    from .third_party import SpandrelUpscaler, describe

    gpu = device != "cpu" and torch.cuda.is_available()
    want = precision if precision != "auto" else ("fp16" if gpu else "fp32")
    if want not in ("fp32", "fp16"):
        raise UsageError(f"the ONNX backend runs fp32 or fp16 models, not {want}")
    onnx_path, digest = cached_export(path, want)
    notes: list[str] = []
    torch_up = None
    if not onnx_path.is_file() and want == "fp16" and precision == "auto":
        fp32_path, _ = cached_export(path, "fp32")
        if fp32_path.is_file():  # an earlier run found the architecture has no half precision
            onnx_path, want = fp32_path, "fp32"
    if not onnx_path.is_file():
        torch_up = SpandrelUpscaler(describe(path), device=torch.device("cpu"), tile=0, notes=notes)
        descriptor = torch_up.descriptor
        if want == "fp16" and not descriptor.supports_half:
            if precision != "auto":
                raise UsageError(
                    f"{descriptor.architecture.name} does not support fp16: use --precision fp32"
                )
            want = "fp32"
            onnx_path, digest = cached_export(path, want)
        if not onnx_path.is_file():
            try:
                export_community(
                    descriptor, onnx_path, fp16=want == "fp16", source=_source(path, digest, torch_up)
                )
            except OnnxError as exc:
                raise OnnxError(
                    f"{path.name} ({descriptor.architecture.name}) does not export to ONNX: {exc}",
                    hint="run it with --backend torch",
                ) from exc
            notes.append(f"exported {path.name} to {onnx_path} (cached for next time)")
    return onnx_ready(path, onnx_path, device, expect_scale, notes, torch_up=torch_up, **tiling)
