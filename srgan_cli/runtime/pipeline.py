"""The file-to-file upscaling path with its stages overlapped: while the model upscales one image,
reader threads decode the next ones and writer threads encode and write the previous results, so
the device does not wait for PIL or zlib (which release the GIL while they work). Results come
back in job order, each job's failures stay its own, and what is in flight is bounded: at most
`ahead` decoded inputs and `writers + 1` results waiting to be written."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ..imageio import ImageData
from .batch import (
    Job,
    JobResult,
    OutputOptions,
    attempt,
    read_input,
    run_job,
    settled_before_reading,
    upscale_input,
    write_output,
)
from .upscaler import Upscaler


@dataclass
class _InFlight:
    job: Job
    result: JobResult
    start: float
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
) -> Iterator[JobResult]:
    """Each job's result, in order, as soon as it and every job before it are done. With
    `readers` and `writers` 0, the jobs run one after the other (`batch.run_job`)."""
    if readers == 0 and writers == 0:
        for job in jobs:
            yield run_job(upscaler, job, options, outscale=outscale, max_pixels=max_pixels)
        return
    todo = iter(jobs)
    reading: deque[_InFlight] = deque()  # decoded (or decoding) inputs, in order
    finishing: deque[_InFlight] = deque()  # results being written (or settled), in order
    with (
        ThreadPoolExecutor(max(readers, 1), "srgan-read") as read_pool,
        ThreadPoolExecutor(max(writers, 1), "srgan-write") as write_pool,
    ):

        def read_next() -> None:
            job = next(todo, None)
            if job is None:
                return
            item = _InFlight(job, JobResult(job.src, job.dst, "ok"), time.perf_counter())
            if not settled_before_reading(job, options, item.result):
                item.work = read_pool.submit(read_input, job, max_pixels, item.result)
            reading.append(item)

        for _ in range(max(ahead, 1)):
            read_next()
        while reading:
            item = reading.popleft()
            read_next()  # keep `ahead` inputs decoding while this one is upscaled
            if item.work is not None:
                image = attempt(item.result, item.work.result)
                out = (
                    attempt(item.result, upscale_input, upscaler, image, outscale, options) if image else None
                )
                del image  # the input is not needed while the result is written
                item.work = write_pool.submit(_write, item, out, options) if out is not None else None
            finishing.append(item)
            while finishing and (finishing[0].done() or len(finishing) > writers + 1):
                yield _finish(finishing.popleft())
        while finishing:
            yield _finish(finishing.popleft())


def _write(item: _InFlight, out: ImageData, options: OutputOptions) -> None:
    """On a writer thread: the failures a write may have are recorded in the job's result."""
    attempt(item.result, write_output, item.job, out, options, item.result)


def _finish(item: _InFlight) -> JobResult:
    if item.work is not None:
        item.work.result()  # waits for the write; anything but a user's kind of failure propagates
    item.result.seconds = time.perf_counter() - item.start
    return item.result
