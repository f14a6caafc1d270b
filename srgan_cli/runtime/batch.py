"""Batch upscaling: turn inputs (files, folders, globs) into jobs, share them among the processes
of a torchrun, run each job safely, and gather the results."""

from __future__ import annotations

import glob
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cv2

from ..atomic import name_max, remove_stale_temps, same_file, temp_prefix
from ..distributed import World, gather_objects, init_group
from ..errors import ArgumentError, ImageError, SrganError, UsageError
from ..imageio import (
    READABLE_SUFFIXES,
    WRITE_FORMATS,
    ImageData,
    format_for_suffix,
    header_size,
    os_reason,
    read_image,
    suffix_for_format,
    write_image,
)
from ..photos import list_images, path_problem
from . import manifest
from .manifest import Producer
from .upscaler import DEFAULT_MAX_OUTPUT_PIXELS, Upscaler, upscale_image

_GLOB_CHARS = set("*?[")
T = TypeVar("T")


@dataclass
class Job:
    src: Path
    dst: Path
    from_folder: bool  # found by scanning a folder or glob (then an existing output is skipped by default)


@dataclass
class JobResult:
    src: Path
    dst: Path | None
    status: str  # "ok", "skipped" or "failed"
    error: str | None = None
    hint: str | None = None
    seconds: float = 0.0
    in_size: tuple[int, int] | None = None  # (width, height)
    out_size: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)  # what the user should know about an ok result

    def to_dict(self) -> dict[str, object]:
        return {
            "input": str(self.src),
            "output": str(self.dst) if self.dst else None,
            "status": self.status,
            "error": self.error,
            "hint": self.hint,
            "seconds": round(self.seconds, 3),
            "input_size": list(self.in_size) if self.in_size else None,
            "output_size": list(self.out_size) if self.out_size else None,
            "notes": list(self.notes),
        }


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)
    failed: list[JobResult] = field(default_factory=list)  # inputs that matched nothing, collisions


@dataclass
class OutputOptions:
    output: Path | None = None  # a file (single input) or a folder; None = beside each input
    suffix: str | None = None  # added to the stem; default "_x{scale}" beside inputs, "" in a folder
    fmt: str = "auto"  # auto (keep the input's format when writable, else png), png, jpg, webp, tiff
    quality: int = 95
    overwrite: bool = False
    skip_existing: bool | None = None  # None: skip for inputs found in folders, fail for named files
    png_compression: int = 6  # zlib level of PNG outputs: 0 (fastest) to 9 (smallest)
    max_output_pixels: int | None = DEFAULT_MAX_OUTPUT_PIXELS  # larger results are refused up front
    allow_partial: bool = False  # accept reading less than a file holds (a multi-page TIFF's first page)
    outscale: float | None = None  # the result's scale when not the model's (in default names)
    tag: str = ""  # a short model name for default names beside the inputs ("" for the default model)
    producer: Producer | None = None  # what makes the outputs: recorded, and checked before a skip


def _glob_root(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard: outputs keep the layout below it."""
    parts: list[str] = []
    for part in Path(os.path.expanduser(pattern)).parts:
        if _GLOB_CHARS & set(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _scan(inputs: list[str], recursive: bool) -> tuple[list[tuple[Path, Path | None]], list[JobResult]]:
    """(file, folder it was found under or None for a named file) for each input, plus misses."""
    found: list[tuple[Path, Path | None]] = []
    missing: list[JobResult] = []
    for text in inputs:
        path = Path(text).expanduser()
        if path.is_file():
            found.append((path, None))
        elif path.is_dir():
            files = list_images(path, recursive=recursive)
            if not files:
                hint = None if recursive else "add --recursive to look in subfolders"
                missing.append(JobResult(path, None, "failed", "folder holds no image files", hint))
            found.extend((f, path) for f in files)
        elif _GLOB_CHARS & set(text):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(text), recursive=True))
            files = [m for m in matches if m.is_file() and m.suffix.lower() in READABLE_SUFFIXES]
            if not files:
                missing.append(JobResult(path, None, "failed", "no image files match this pattern"))
            found.extend((f, _glob_root(text)) for f in files)
        else:
            missing.append(JobResult(path, None, "failed", path_problem(path)))
    return found, missing


def _out_format(src: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    own = format_for_suffix(src)
    return own if own in WRITE_FORMATS else "png"


def scale_label(scale: int, outscale: float | None) -> str:
    """The result's scale as names show it: 4, 2, 1.5."""
    return f"{scale if outscale is None else outscale:g}"


def model_tag(model: str, scale: int) -> str:
    """A short name for a model in output names: the weights' name without its `_x<scale>` part
    (srgan_x4 -> srgan, srgan_x4_real -> srgan_real, a path -> its stem)."""
    stem = Path(model).name.rsplit(".", 1)[0] if any(c in model for c in "/\\.") else model
    short = stem.replace(f"_x{scale}", "").strip("_-. ")
    return "".join(c if c.isalnum() or c in "_-+" else "_" for c in short) or "model"


def default_suffix(options: OutputOptions, scale: int) -> str:
    """`_x<scale>[_<model>]` beside the inputs; nothing inside an -o folder (there a rerun with
    another model or scale is told apart by the manifest)."""
    if options.output is not None:
        return ""
    return f"_x{scale_label(scale, options.outscale)}" + (f"_{options.tag}" if options.tag else "")


def _output_path(src: Path, base: Path | None, options: OutputOptions, scale: int, single_file: bool) -> Path:
    out = options.output
    if single_file:
        assert out is not None
        return out
    fmt = _out_format(src, options.fmt)
    suffix = options.suffix if options.suffix is not None else default_suffix(options, scale)
    # the input's own suffix when the format is kept (.tif stays .tif, .JPG stays .JPG)
    ext = src.suffix if format_for_suffix(src) == fmt else suffix_for_format(fmt)
    name = f"{src.stem}{suffix}{ext}"
    if out is None:
        return src.with_name(name)
    if base is not None and src.is_relative_to(base):
        return out / src.parent.relative_to(base) / name
    return out / name


def plan_jobs(inputs: list[str], options: OutputOptions, scale: int, *, recursive: bool = False) -> Plan:
    """Decide every output path before any work starts, so collisions are found up front."""
    if options.fmt != "auto" and options.fmt not in WRITE_FORMATS:
        raise UsageError(f"unknown output format {options.fmt!r}: use auto, {', '.join(WRITE_FORMATS)}")
    check_output_options(options)
    found, failed = _scan(inputs, recursive)
    found = _once_each(found)
    plan = Plan(failed=failed)
    out = options.output
    out_is_file = out is not None and not out.is_dir() and format_for_suffix(out) is not None
    looks_like_a_file = out is not None and re.fullmatch(r"\.[A-Za-z]{1,5}", out.suffix) is not None
    if out is not None and looks_like_a_file and not out_is_file and not out.exists() and len(found) == 1:
        raise UsageError(
            f"-o {out}: {out.suffix!r} is not an image suffix; write .png, .jpg, .webp or .tiff",
            hint="for a folder, give a name without a suffix (or make the folder first)",
        )
    if out_is_file and len(found) > 1:
        raise UsageError(
            f"-o {out} looks like a file name, but there are {len(found)} inputs",
            hint="give a folder to -o when upscaling several images",
        )
    single_file_out = out_is_file and len(found) == 1
    planned = [(src, base, _output_path(src, base, options, scale, single_file_out)) for src, base in found]
    # Outputs written beside their inputs by an earlier run are found again by a folder scan;
    # they are this run's outputs, not new inputs (no photo_x4_x4.png on a rerun).
    output_of = {dst.resolve(): src.resolve() for src, _base, dst in planned}
    claimed: dict[Path, Path] = {}
    for src, base, dst in planned:
        key = dst.resolve()
        if base is not None and output_of.get(src.resolve(), src.resolve()) != src.resolve():
            continue
        if base is not None and manifest.is_output(src):  # an earlier run's result, not an input
            continue
        if same_file(src, dst):  # the same path, a symlink to the input or a hard link of it
            plan.failed.append(
                JobResult(src, dst, "failed", "the output would overwrite the input", "use -o or --suffix")
            )
            continue
        if (problem := _name_problem(dst)) is not None:
            plan.failed.append(JobResult(src, dst, "failed", problem, "use a shorter --suffix or input name"))
            continue
        if key in claimed:
            plan.failed.append(
                JobResult(
                    src, dst, "failed", f"output name collides with that of {claimed[key]}", "use --suffix"
                )
            )
            continue
        claimed[key] = src
        plan.jobs.append(Job(src, dst, base is not None))
    return plan


def check_output_options(options: OutputOptions) -> None:
    """The output options a batch cannot start with, refused at once (ArgumentError)."""
    suffix = options.suffix or ""
    if any(sep and sep in suffix for sep in (os.sep, os.altsep, "\0")):
        raise ArgumentError(
            f"--suffix {suffix!r} holds a path separator; it is added to file names (use -o for folders)"
        )
    if isinstance(options.quality, bool) or not 1 <= options.quality <= 100:
        raise ArgumentError(f"quality is a whole number from 1 to 100, got {options.quality!r}")
    if not 0 <= options.png_compression <= 9:
        raise ArgumentError(f"PNG compression is 0 to 9, got {options.png_compression!r}")


def _once_each(found: list[tuple[Path, Path | None]]) -> list[tuple[Path, Path | None]]:
    """Each input file once, however many times it was named or found (a file named and also found
    in its folder keeps its first appearance)."""
    seen: set[Path] = set()
    out = []
    for src, base in found:
        key = src.resolve()
        if key not in seen:
            seen.add(key)
            out.append((src, base))
    return out


def _name_problem(dst: Path) -> str | None:
    """Why the file system would refuse `dst`'s name (too long), or None."""
    length = len(os.fsencode(dst.name))
    limit = name_max(dst.parent)
    if length > limit:
        return f"the output name is {length} bytes long, over the file system's limit of {limit}"
    return None


def run_job(
    upscaler: Upscaler,
    job: Job,
    options: OutputOptions,
    *,
    outscale: float | None = None,
    max_pixels: int | None = None,
    blocked: dict[Path, str] | None = None,
) -> JobResult:
    """Read, upscale and atomically write one image; any failure is returned, never raised.
    `blocked`: output folders known to be unwritable (unwritable_folders)."""
    start = time.perf_counter()
    result = JobResult(job.src, job.dst, "ok")
    if not settled_before_reading(job, options, result, blocked):
        image = attempt(result, read_input, job, max_pixels, result, options.allow_partial)
        out = None if image is None else attempt(result, upscale_input, upscaler, image, outscale, options)
        if out is not None:
            attempt(result, write_output, job, out, options, result)
        release_output(job.dst)
    result.seconds = time.perf_counter() - start
    return result


def read_input(job: Job, max_pixels: int | None, result: JobResult, allow_partial: bool = False) -> ImageData:
    """The job's input; its size and the read's notes go into `result`."""
    start = time.perf_counter()
    limit = {} if max_pixels is None else {"max_pixels": max_pixels}
    image = read_image(job.src, allow_partial=allow_partial, **limit)
    result.seconds += time.perf_counter() - start  # the time spent on this file, not in a queue
    result.in_size = (image.width, image.height)
    result.notes.extend(image.notes)
    return image


def write_output(job: Job, out: ImageData, options: OutputOptions, result: JobResult) -> None:
    """The job's output, written atomically; its size goes into `result` once it is there."""
    start = time.perf_counter()
    write_image(
        job.dst,
        out,
        fmt=format_for_suffix(job.dst),
        quality=options.quality,
        overwrite=True,
        png_compression=options.png_compression,
    )
    result.out_size = (out.width, out.height)
    result.seconds += time.perf_counter() - start
    if options.producer is not None:
        manifest.record(job.dst, job.src, options.producer)


def upscale_input(
    upscaler: Upscaler, image: ImageData, outscale: float | None, options: OutputOptions
) -> ImageData:
    """The job's result; one above options.max_output_pixels is refused before any work."""
    return upscale_image(upscaler, image, outscale, max_pixels=options.max_output_pixels)


# write failures that doom every later write to the same place: a batch stops at the first one
DESTINATION_LOST = ("no space left on device", "disk quota exceeded", "read-only file system")


def unwritable_folders(jobs: list[Job]) -> dict[Path, str]:
    """Each output folder the jobs need that cannot be written (created if missing, then a probe
    file made and removed), with the reason: its jobs fail at once instead of being upscaled for
    nothing. Stale temporary files of earlier, killed runs are removed from the folders that can."""
    blocked: dict[Path, str] = {}
    for folder in sorted({job.dst.parent for job in jobs}):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".srgan-probe-"):
                pass
        except OSError as exc:
            blocked[folder] = f"cannot write to {folder}: {os_reason(exc)}"
            continue
        names = {job.dst.name for job in jobs if job.dst.parent == folder}
        remove_stale_temps(folder, names)
        for name in names:  # claims of runs that were killed
            claim = claim_path(folder / name)
            if claim.exists() and _claim_holder(claim) is None:
                claim.unlink(missing_ok=True)
    return blocked


CLAIM_TAIL = ".srgan-claim"  # `.<output name>.srgan-claim`: this output is being made by a live process


def claim_path(dst: Path) -> Path:
    return dst.parent / f"{temp_prefix(dst.name)}{CLAIM_TAIL}"


def claim_output(dst: Path) -> int | None:
    """Mark `dst` as being made by this process, so a second `srgan upscale` on the same folder
    skips it instead of doing it again; returns None when claimed, or the pid of the live process
    on this machine that holds it. A claim left by a process that is gone is taken over."""
    path = claim_path(dst)
    mine = f"{os.getpid()} {socket.gethostname()}\n".encode()
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _claim_holder(path)
            if holder is not None:
                return holder
            path.unlink(missing_ok=True)  # its process is gone: take it over
            continue
        except OSError:
            return None  # a folder that takes no extra files: go on without a claim
        with os.fdopen(fd, "wb") as fh:
            fh.write(mine)
        return None
    return None


def _claim_holder(path: Path) -> int | None:
    """The pid holding a claim file, if that process is alive on this machine (else None)."""
    try:
        pid_text, _, host = path.read_text().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if host.strip() != socket.gethostname() or pid == os.getpid():
        return None if pid == os.getpid() else pid  # another machine's run: assume it is alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:  # alive, but someone else's process
        return pid
    return pid


def release_output(dst: Path) -> None:
    """Remove this process's claim on `dst` (if it made one)."""
    path = claim_path(dst)
    try:
        if path.read_text().partition(" ")[0] == str(os.getpid()):
            path.unlink()
    except (OSError, ValueError):
        pass


def settled_before_reading(
    job: Job, options: OutputOptions, result: JobResult, blocked: dict[Path, str] | None = None
) -> bool:
    """Whether the job ends before its input is read: its folder cannot be written, or its output
    exists and is skipped or may not be replaced (then `result` says so)."""
    if blocked and job.dst.parent in blocked:
        result.status, result.error = "failed", blocked[job.dst.parent]
        result.hint = "choose an output folder you can write to (-o)"
        return True
    try:
        exists = job.dst.exists()
    except OSError as exc:  # a path the file system refuses (too long, a file used as a folder)
        result.status, result.error = "failed", f"cannot use {job.dst}: {os_reason(exc)}"
        return True
    if not exists or options.overwrite:
        holder = claim_output(job.dst)
        if holder is None:
            return False
        result.status = "skipped"
        result.notes.append(f"another srgan process (pid {holder}) is making this output")
        return True
    if options.skip_existing:  # asked for: whatever made it
        result.status = "skipped"
        return True
    if options.skip_existing is None and job.from_folder:  # the default: only this run's own result
        why = manifest.mismatch(job.dst, job.src, options.producer) if options.producer else None
        if why is None:
            result.status = "skipped"
            return True
        result.status, result.error = "failed", f"output exists, {why}"
        result.hint = "pass --overwrite to replace it, --skip-existing to keep it, or choose another -o"
        return True
    result.status, result.error = "failed", "output already exists"
    result.hint = "pass --overwrite to replace it, or --skip-existing to skip it"
    return True


def attempt(result: JobResult, fn: Callable[..., T], *args: Any) -> T | None:
    """fn(*args), or None with the failure recorded in `result` (the user's kinds of failure: a bad
    file, a refused size, out of memory; anything else is a bug and propagates)."""
    try:
        value = fn(*args)
    except ImageError as exc:
        result.status, result.error, result.hint = "failed", exc.reason, exc.hint
        return None
    except SrganError as exc:
        result.status, result.error, result.hint = "failed", exc.message, exc.hint
        return None
    except MemoryError:
        result.status, result.error, result.hint = "failed", "out of memory", "try a smaller --tile"
        return None
    except cv2.error as exc:  # OpenCV's resize or codecs, e.g. "Insufficient memory" on a huge image
        result.status, result.error = "failed", f"OpenCV: {str(exc).strip().splitlines()[-1][:200]}"
        result.hint = "try a smaller --outscale" if "memory" in str(exc).lower() else None
        return None
    return value


def shard_jobs(plan: Plan, world: World) -> list[Job]:
    """This process's jobs: every `world.size`-th one from its rank (all of them when alone). A rerun
    skips finished outputs, so a crashed share can be redone."""
    return plan.jobs[world.rank :: world.size]


def input_megapixels(job: Job) -> float:
    """The input's size in megapixels from its header (for progress); 0 when unreadable, as the job
    will fail and say why."""
    size = header_size(job.src)
    return size[0] * size[1] / 1e6 if size else 0.0


def gather_results(results: list[JobResult], world: World) -> list[JobResult]:
    """Under torchrun: every process's results, in rank order, on every process (over a CPU group,
    which is also what a GPU run of `srgan upscale` has: its processes share nothing else)."""
    if not world.distributed:
        return results
    import torch
    import torch.distributed as dist

    owns_group = init_group(world, torch.device("cpu"))
    try:
        parts = gather_objects(results, world)
    finally:
        if owns_group:
            dist.destroy_process_group()
    return [r for part in parts for r in part]
