"""The file-to-file upscaling path with its stages overlapped: while the model upscales one image,
reader threads decode the next ones and writer threads encode and write the previous results, so
the device does not wait for PIL or zlib (which release the GIL while they work). Results come
back in job order, each job's failures stay its own, and what is in flight is bounded: at most
`ahead` decoded inputs and `writers + 1` results waiting to be written."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..imageio import ImageData
from .batch import (
    DESTINATION_LOST,
    Job,
    JobResult,
    OutputOptions,
    attempt,
    read_input,
    release_output,
    run_job,
    settled_before_reading,
    unwritable_folders,
    upscale_input,
    write_output,
)
from .upscaler import Upscaler, images_per_pass, upscale_same_size


@dataclass
class _InFlight:
    job: Job
    result: JobResult
    work: Future[ImageData] | Future[None] | None = None  # the read, then the write; None: settled

    def done(self) -> bool:
        return self.work is None or self.work.done()


def run_jobs(
    upscaler: Upscaler,
    jobs: Iterable[Job],
    options: OutputOptions,
    *,
    outscale: float | None = None,
    max_pixels: int | None = None,
    readers: int = 2,
    writers: int = 2,
    ahead: int = 3,
    batch: int | None = None,
    on_pass: Callable[[list[Job]], None] | None = None,
) -> Iterator[JobResult]:
    """Each job's result, in order, as soon as it and every job before it are done. With
    `readers` and `writers` 0, the jobs run one after the other (`batch.run_job`). `batch`
    consecutive 8-bit RGB images of one size go through the model in one pass (default: 4 on a
    GPU, 1 elsewhere: upscaler.images_per_pass); the files are the same either way.

    Jobs whose output folder cannot be written fail at once, without being upscaled; after a
    write fails for lack of space (or a read-only disk, a quota), no further job is started: the
    jobs in flight finish, the rest are reported as not attempted.

    `on_pass(jobs)` is called, on this thread, just before the model runs on those jobs' images
    (several: one batched pass; with no IO threads, before each job is read): with
    runtime.progress.on_tiles around the loop, a caller knows whose tiles it is told about."""
    jobs = list(jobs)
    blocked = unwritable_folders(jobs)
    lost: list[str] = []  # the reason the destination was lost, once it was
    group = images_per_pass(upscaler, outscale, batch or 0)
    sizes = (ahead, group)
    results = _run(
        upscaler, jobs, options, outscale, max_pixels, blocked, lost, readers, writers, sizes, on_pass
    )
    done = 0
    try:
        for result in results:
            done += 1
            if result.status == "failed" and result.error in DESTINATION_LOST and not lost:
                lost.append(result.error)
            yield result
    finally:  # a bug, or the caller stopped early: no claim of this process outlives the run
        results.close()
        for job in jobs[done:]:
            release_output(job.dst)
    for job in jobs[done:]:  # never started: the destination was lost
        yield JobResult(
            job.src,
            job.dst,
            "failed",
            f"not attempted: {lost[0]} (an earlier file)",
            "free space, then rerun",
        )


def _run(
    upscaler: Upscaler,
    jobs: list[Job],
    options: OutputOptions,
    outscale: float | None,
    max_pixels: int | None,
    blocked: dict[Path, str],
    lost: list[str],
    readers: int,
    writers: int,
    sizes: tuple[int, int],
    on_pass: Callable[[list[Job]], None] | None,
) -> Iterator[JobResult]:
    ahead, batch = sizes  # inputs decoded ahead; images per pass of the model
    if readers == 0 and writers == 0:
        for job in jobs:
            if lost:
                return
            if on_pass is not None:
                on_pass([job])
            yield run_job(upscaler, job, options, outscale=outscale, max_pixels=max_pixels, blocked=blocked)
        return
    todo = iter(jobs)
    reading: deque[_InFlight] = deque()  # decoded (or decoding) inputs, in order
    finishing: deque[_InFlight] = deque()  # results being written (or settled), in order
    with (
        ThreadPoolExecutor(max(readers, 1), "srgan-read") as read_pool,
        ThreadPoolExecutor(max(writers, 1), "srgan-write") as write_pool,
    ):

        def read_next() -> None:
            job = None if lost else next(todo, None)  # nothing new once the destination is lost
            if job is None:
                return
            item = _InFlight(job, JobResult(job.src, job.dst, "ok"))
            if not settled_before_reading(job, options, item.result, blocked):
                item.work = read_pool.submit(read_input, job, max_pixels, item.result, options.allow_partial)
            reading.append(item)

        for _ in range(max(ahead, batch, 1)):
            read_next()
        while reading:
            group = [reading.popleft()]
            while len(group) < batch and reading:  # the next inputs, for one pass of the model
                group.append(reading.popleft())
            for _ in group:
                read_next()  # keep inputs decoding while these are upscaled
            images = [attempt(item.result, item.work.result) if item.work else None for item in group]
            results = [item.result for item in group]
            outs = _upscale_group(
                upscaler, images, results, outscale, options, [item.job for item in group], on_pass
            )
            del images  # the inputs are not needed while the results are written
            for item, out in zip(group, outs, strict=True):
                item.work = write_pool.submit(_write, item, out, options) if out is not None else None
                finishing.append(item)
            while finishing and (finishing[0].done() or len(finishing) > writers + len(group)):
                yield _finish(finishing.popleft())
        while finishing:
            yield _finish(finishing.popleft())


def _upscale_group(
    upscaler: Upscaler,
    images: list[ImageData | None],
    results: list[JobResult],
    outscale: float | None,
    options: OutputOptions,
    jobs: list[Job] | None = None,
    on_pass: Callable[[list[Job]], None] | None = None,
) -> list[ImageData | None]:
    """Each image's result (None where it failed, recorded in its result): the 8-bit RGB images of
    the first one's size in one pass of the model, the others one by one, as upscale_image would.
    `on_pass` is told the `jobs` of each pass before it runs."""
    outs: list[ImageData | None] = [None] * len(images)

    def announce(indices: list[int]) -> None:
        if on_pass is not None and jobs is not None:
            on_pass([jobs[i] for i in indices])

    start = time.perf_counter()
    together = upscale_same_size(upscaler, images, outscale, options.max_output_pixels, before=announce)
    share = (time.perf_counter() - start) / max(len(together), 1)  # each file's part of the pass
    for i, out in together.items():
        outs[i] = out
        results[i].seconds += share
    for i, image in enumerate(images):
        if image is not None and outs[i] is None:
            if on_pass is not None and jobs is not None:
                on_pass([jobs[i]])
            start = time.perf_counter()
            outs[i] = attempt(results[i], upscale_input, upscaler, image, outscale, options)
            results[i].seconds += time.perf_counter() - start
    return outs


def _write(item: _InFlight, out: ImageData, options: OutputOptions) -> None:
    """On a writer thread: the failures a write may have are recorded in the job's result."""
    attempt(item.result, write_output, item.job, out, options, item.result)


def _finish(item: _InFlight) -> JobResult:
    try:
        if item.work is not None:
            item.work.result()  # waits for the write; anything but a user's kind of failure propagates
    finally:
        release_output(item.job.dst)
    return item.result  # its seconds: reading, upscaling and writing it, not waiting in a queue
