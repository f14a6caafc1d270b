"""The server's work: a bounded job queue run by N worker threads, and one warm Upscaler per
(model, device, precision), shared by every request."""

from __future__ import annotations

import itertools
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import QueueFull, ShuttingDown

KEEP_FINISHED = 64  # finished jobs (and their results, in memory) kept for polling; the oldest go first


@dataclass
class Job:
    """One piece of work: `run()` returns the result; `status` goes queued -> running -> done | failed."""

    run: Callable[[], Any]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: str = "queued"
    result: Any = None
    error: BaseException | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    done_event: threading.Event = field(default_factory=threading.Event)

    def wait(self, timeout: float | None = None) -> bool:
        return self.done_event.wait(timeout)


class JobQueue:
    """At most `workers` jobs run at once and at most `capacity` more wait; a submit beyond that is a
    QueueFull (HTTP 429) and a submit after `close()` a ShuttingDown (HTTP 503)."""

    def __init__(self, workers: int = 1, capacity: int = 8) -> None:
        if workers < 1:
            raise ValueError(f"workers is at least 1, got {workers}")
        if capacity < 0:
            raise ValueError(f"the queue size is 0 or more, got {capacity}")
        self.workers, self.capacity = workers, capacity
        self._lock = threading.Lock()
        self._waiting: queue.Queue[Job | None] = queue.Queue()  # bounded by the count below, not by size
        self._active = 0  # waiting + running
        self._running = 0
        self._jobs: dict[str, Job] = {}
        self._closing = False
        self._threads = [
            threading.Thread(target=self._work, name=f"srgan-serve-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    # --- asking -------------------------------------------------------------------------------
    def submit(self, run: Callable[[], Any]) -> Job:
        job = Job(run)
        with self._lock:
            if self._closing:
                raise ShuttingDown("the server is shutting down and takes no new work")
            if self._active >= self.workers + self.capacity:
                raise QueueFull(
                    f"the server is busy: {self._running} running, {self._active - self._running} "
                    f"waiting (queue size {self.capacity})",
                    hint="try again in a moment",
                )
            self._active += 1
            self._jobs[job.id] = job
            self._forget_old()
        self._waiting.put(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "running": self._running,
                "waiting": self._active - self._running,
                "workers": self.workers,
                "queue": self.capacity,
            }

    def close(self, timeout: float = 5.0) -> None:
        """Take no new work, fail what still waits (ShuttingDown), let running jobs finish."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        for _ in self._threads:
            self._waiting.put(None)
        for thread in self._threads:
            thread.join(timeout)

    # --- the workers --------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self._waiting.get()
            if job is None:
                return
            with self._lock:
                closing = self._closing
                if not closing:
                    self._running += 1
                    job.status = "running"
            if closing:
                self._finish(
                    job, None, ShuttingDown("the server shut down before this job ran"), running=False
                )
                continue
            try:
                result, error = job.run(), None
            except BaseException as exc:  # a job's failure is its own; the worker goes on
                result, error = None, exc
            self._finish(job, result, error, running=True)

    def _finish(self, job: Job, result: Any, error: BaseException | None, *, running: bool) -> None:
        with self._lock:
            job.result, job.error = result, error
            job.status = "failed" if error is not None else "done"
            job.finished = time.time()
            self._active -= 1
            if running:
                self._running -= 1
        job.done_event.set()

    def _forget_old(self) -> None:
        finished = [job for job in self._jobs.values() if job.finished is not None]
        for job in itertools.islice(finished, max(0, len(finished) - KEEP_FINISHED)):
            del self._jobs[job.id]


class UpscalerPool:
    """One warm `srgan_cli.Upscaler` per (model, device, precision), built on first use. Each has a
    lock: a backend keeps per-run state (its tile after an out-of-memory retry), so one model runs
    one image at a time while the other workers decode and encode."""

    def __init__(self, *, max_output_pixels: int) -> None:
        self.max_output_pixels = max_output_pixels
        self._lock = threading.Lock()
        self._upscalers: dict[tuple[str, str, str], tuple[Any, threading.Lock]] = {}

    def get(self, model: str, device: str, precision: str) -> tuple[Any, threading.Lock]:
        from ..api import Upscaler

        key = (model, device, precision)
        with self._lock:  # one build per key, even when two requests ask at once
            if key not in self._upscalers:
                up = Upscaler(
                    model,
                    device=device,
                    precision=precision,
                    max_output_megapixels=self.max_output_pixels / 1e6,
                )
                self._upscalers[key] = (up, threading.Lock())
            return self._upscalers[key]

    def loaded(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"model": up.name, "scale": up.scale, "device": up.device, "precision": up.precision}
                for up, _ in self._upscalers.values()
            ]
