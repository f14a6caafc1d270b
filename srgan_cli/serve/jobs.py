"""The server's work: a bounded job queue run by N worker threads, and one warm Upscaler per
(model, device, precision), shared by every request.

A job that carries a batch `key` (small images of one size, one model, one output scale) may be
taken together with the other waiting jobs of the same key, up to `batch` of them, and run in one
pass of the model (`run_group`): on a GPU, small images alone leave most of it idle."""

from __future__ import annotations

import collections
import threading
import time
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from ..errors import QueueFull, ShuttingDown, SrganError
from ..runtime.progress import PassCancelled

KEEP_FINISHED = 64  # finished jobs kept for polling; beyond that the oldest are forgotten
KEEP_SECONDS = 600.0  # and none longer than this after it finished


class JobCancelled(PassCancelled, SrganError):
    """A running job stopped because the server shut down before it could finish (HTTP 503); as a
    PassCancelled it stops the model's pass at its next tile or layer."""


@dataclass(eq=False)  # by identity: jobs live in sets and are looked up in the line
class Job:
    """One piece of work: `run(job)` returns the result; `status` goes queued -> running -> done | failed.
    `progress` (0..1) rises while it runs; `cancelled` is set when the server stops waiting for it."""

    run: Callable[[Job], Any]
    key: Hashable | None = None  # jobs of one key may run together (JobQueue.batch)
    meta: dict[str, Any] = field(default_factory=dict)  # what the caller wants to keep with it
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: str = "queued"
    progress: float = 0.0
    result: Any = None
    error: BaseException | None = None
    created: float = field(default_factory=time.monotonic)
    finished: float | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    done_event: threading.Event = field(default_factory=threading.Event)

    def wait(self, timeout: float | None = None) -> bool:
        return self.done_event.wait(timeout)

    def report(self, done: int, total: int) -> None:
        """A progress sink (runtime.progress.on_tiles): records the share done, and stops the pass
        (JobCancelled) once the server has given up waiting for this job."""
        if self.cancelled.is_set():
            raise JobCancelled("the server shut down while this job ran")
        if total > 0:
            self.progress = max(self.progress, min(1.0, done / total))


GroupRunner = Callable[[list[Job]], list[tuple[Any, BaseException | None]]]


class JobQueue:
    """At most `workers` jobs run at once and at most `capacity` more wait; a submit beyond that is a
    QueueFull (HTTP 429) and a submit after `stop()` a ShuttingDown (HTTP 503).

    Finished jobs are kept for polling (the latest `keep`, none longer than `keep_seconds`);
    `on_forget(job)` is called for each one dropped, to free what its result holds."""

    def __init__(
        self,
        workers: int = 1,
        capacity: int = 8,
        *,
        batch: int = 1,
        run_group: GroupRunner | None = None,
        keep: int = KEEP_FINISHED,
        keep_seconds: float = KEEP_SECONDS,
        on_forget: Callable[[Job], None] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers is at least 1, got {workers}")
        if capacity < 0:
            raise ValueError(f"the queue size is 0 or more, got {capacity}")
        if batch < 1:
            raise ValueError(f"batch is at least 1, got {batch}")
        self.workers, self.capacity, self.batch = workers, capacity, batch
        self.keep, self.keep_seconds = keep, keep_seconds
        self._run_group, self._on_forget = run_group, on_forget
        self._cond = threading.Condition()
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: set[Job] = set()
        self._jobs: dict[str, Job] = {}  # every job not yet forgotten, oldest first
        self._closing = False
        self._threads = [
            threading.Thread(target=self._work, name=f"srgan-serve-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    # --- asking -------------------------------------------------------------------------------
    def submit(
        self, run: Callable[[Job], Any], *, key: Hashable | None = None, meta: dict[str, Any] | None = None
    ) -> Job:
        job = Job(run, key=key, meta=meta or {})
        forgotten: list[Job] = []
        with self._cond:
            if self._closing:
                raise ShuttingDown("the server is shutting down and takes no new work")
            if len(self._waiting) + len(self._running) >= self.workers + self.capacity:
                raise QueueFull(
                    f"the server is busy: {len(self._running)} running, {len(self._waiting)} "
                    f"waiting (queue size {self.capacity})",
                    hint="try again in a moment",
                )
            forgotten = self._forget_old()
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._cond.notify()
        self._forget(forgotten)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            forgotten = self._forget_old()
            job = self._jobs.get(job_id)
        self._forget(forgotten)
        return job

    def position(self, job: Job) -> int | None:
        """How many jobs wait before this one (0: next), or None when it is not waiting."""
        with self._cond:
            try:
                return self._waiting.index(job)
            except ValueError:
                return None

    def discard(self, job_id: str) -> bool:
        """Forget a finished job now (its result is freed); False when there is no such finished job."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None or job.finished is None:
                return False
            del self._jobs[job_id]
        self._forget([job])
        return True

    def counts(self) -> dict[str, int]:
        with self._cond:
            return {
                "running": len(self._running),
                "waiting": len(self._waiting),
                "workers": self.workers,
                "queue": self.capacity,
                "batch": self.batch,
            }

    def stop(self) -> None:
        """Take no new work (ShuttingDown) and fail every job still waiting; running jobs go on."""
        with self._cond:
            self._closing = True
            cancelled = list(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
        for job in cancelled:
            self._finish([job], [(None, ShuttingDown("the server shut down before this job ran"))])

    def close(self, grace: float = 30.0) -> None:
        """`stop()`, then wait up to `grace` seconds for the running jobs; any still running then are
        cancelled at their next tile or layer (JobCancelled), and given a moment more to end."""
        self.stop()
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            still = list(self._running)
        for job in still:
            job.cancelled.set()
        for thread in self._threads:
            thread.join(5.0)

    def forget_all(self) -> None:
        """Forget every finished job (at exit: their results go)."""
        with self._cond:
            done = [job for job in self._jobs.values() if job.finished is not None]
            for job in done:
                del self._jobs[job.id]
        self._forget(done)

    # --- the workers --------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closing:
                    self._cond.wait()
                if not self._waiting:  # closing, and nothing left
                    return
                group = [self._waiting.popleft()]
                if group[0].key is not None and self.batch > 1 and self._run_group is not None:
                    for other in list(self._waiting):
                        if len(group) >= self.batch:
                            break
                        if other.key == group[0].key:
                            self._waiting.remove(other)
                            group.append(other)
                for job in group:
                    job.status = "running"
                    self._running.add(job)
            try:
                outcomes = self._run(group)
            except BaseException as exc:  # never leave a job hanging, whatever went wrong
                outcomes = [(None, exc)] * len(group)
            self._finish(group, outcomes)

    def _run(self, group: list[Job]) -> list[tuple[Any, BaseException | None]]:
        if len(group) > 1 and self._run_group is not None:
            try:
                outcomes = self._run_group(group)
            except BaseException as exc:  # the group's failure is each of its jobs'
                outcomes = [(None, exc)] * len(group)
            if len(outcomes) == len(group):
                return outcomes
            error = RuntimeError(f"a batch of {len(group)} jobs gave {len(outcomes)} results")
            return [(None, error)] * len(group)
        try:
            return [(group[0].run(group[0]), None)]
        except BaseException as exc:  # a job's failure is its own; the worker goes on
            return [(None, exc)]

    def _finish(self, group: list[Job], outcomes: list[tuple[Any, BaseException | None]]) -> None:
        with self._cond:
            now = time.monotonic()
            for job, (result, error) in zip(group, outcomes, strict=True):
                job.result, job.error = result, error
                job.status = "failed" if error is not None else "done"
                if error is None:
                    job.progress = 1.0
                job.finished = now
                self._running.discard(job)
        for job in group:
            job.done_event.set()

    def _forget_old(self) -> list[Job]:
        """Under the lock: drop finished jobs beyond `keep` or older than `keep_seconds`."""
        finished = [job for job in self._jobs.values() if job.finished is not None]
        cutoff = time.monotonic() - self.keep_seconds
        extra = max(0, len(finished) - self.keep)
        gone = [job for i, job in enumerate(finished) if i < extra or (job.finished or 0) < cutoff]
        for job in gone:
            del self._jobs[job.id]
        return gone

    def _forget(self, jobs: list[Job]) -> None:
        if self._on_forget is not None:
            for job in jobs:
                self._on_forget(job)


class UpscalerPool:
    """One warm `srgan_cli.Upscaler` per (model, device, precision, denoise), built on first use.
    Each has a lock: a backend keeps per-run state (its tile after an out-of-memory retry), so one
    model runs one pass at a time while the other workers decode and encode. Upscalers at a denoise
    strength of a request's choosing are kept for the last `MAX_STRENGTHS` strengths used, so
    requests cannot fill the memory with one model copy per strength; models as trained stay."""

    MAX_STRENGTHS = 4

    def __init__(self, *, max_output_pixels: int) -> None:
        self.max_output_pixels = max_output_pixels
        self._lock = threading.Lock()
        self._upscalers: dict[tuple[str, str, str, float | None], tuple[Any, threading.Lock]] = {}

    def get(
        self, model: str, device: str, precision: str, denoise: float | None = None
    ) -> tuple[Any, threading.Lock]:
        """The warm upscaler of a model the server checked (app.check_model) and its lock; with
        `denoise` (checked by app.check_denoise_for), its front-end at that strength."""
        from ..api import Upscaler
        from .app import model_source

        key = (model, device, precision, denoise)
        with self._lock:  # one build per key, even when two requests ask at once
            if key in self._upscalers and denoise is not None:
                self._upscalers[key] = self._upscalers.pop(key)  # the most recently used goes last
            if key not in self._upscalers:
                up = Upscaler(
                    model_source(model),
                    device=device,
                    precision=precision,
                    denoise=denoise,
                    max_output_megapixels=self.max_output_pixels / 1e6,
                )
                self._upscalers[key] = (up, threading.Lock())
                chosen = [k for k in self._upscalers if k[3] is not None]
                for old in chosen[: max(0, len(chosen) - self.MAX_STRENGTHS)]:
                    del self._upscalers[old]  # a job running on it keeps it until it ends
            return self._upscalers[key]

    def loaded(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"model": key[0], "scale": up.scale, "device": up.device, "precision": up.precision}
                | ({"denoise": key[3]} if key[3] is not None else {})
                for key, (up, _) in self._upscalers.items()
            ]
