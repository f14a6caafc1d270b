"""Progress on stderr for the long commands: Rich bars on a terminal, plain lines elsewhere.

A Rich bar written to a file or a pipe (a CI log, `nohup`) shows nothing until the end, so when
stderr is not a terminal the same progress comes as plain lines: one per finished file or stage,
and for long work one at most every PLAIN_EVERY seconds, never one per tile."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..runtime.batch import Job, JobResult
from ..runtime.progress import on_tiles

PLAIN_EVERY = 10.0  # seconds between two plain progress lines about the same work
ESTIMATE_AFTER = 5.0  # seconds of measured work before the one-line estimate of a whole job
ESTIMATE_ABOVE = 60.0  # ... which is printed only for a job that will take longer than this

Clock = Callable[[], float]


def clock_text(seconds: float) -> str:
    """0:00:21, as Rich writes times."""
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def about(seconds: float) -> str:
    """A rounded duration for an estimate: 40 s, 6 min, 2.5 h."""
    if seconds < 90:
        return f"{max(1, round(seconds, -1 if seconds >= 20 else 0)):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _rate(mp_per_s: float) -> str:
    return f"{mp_per_s:.2g}" if mp_per_s < 10 else f"{mp_per_s:.0f}"


def _mp(megapixels: float) -> str:
    return f"{megapixels:.2f}" if megapixels >= 0.1 else f"{megapixels:.2g}"


class Ticker:
    """True at most once every `every` seconds (the first call starts the clock)."""

    def __init__(self, every: float = PLAIN_EVERY, clock: Clock = time.monotonic) -> None:
        self.every, self.clock = every, clock
        self.last: float | None = None

    def due(self) -> bool:
        now = self.clock()
        if self.last is None:
            self.last = now
            return False
        if now - self.last >= self.every:
            self.last = now
            return True
        return False


def _columns() -> tuple[ProgressColumn, ...]:
    return (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )


class FileProgress:
    """`srgan upscale`'s progress over its files.

    On a terminal: a bar over all files, measured in megapixels and advanced inside a file as its
    tiles are done (so its ETA means something from the first seconds), and a line for the file
    being upscaled (share done, MP/s, its own ETA). Elsewhere: a line per finished file and, for a
    long file, a line at most every PLAIN_EVERY seconds. On both, once the first seconds of work
    are measured, a one-line estimate of the whole job when it will take over a minute.

    Wire it up with `run_jobs(..., on_pass=progress.start_pass)` and `with progress.tiles():`
    around the loop over the results, and call `finished` for each result."""

    def __init__(
        self,
        console: Console,
        jobs: list[Job],
        sizes: list[float],
        *,
        label: str = "",
        show: bool = True,
        clock: Clock = time.perf_counter,
    ) -> None:
        self.console, self.label, self.clock = console, label, clock
        self.show = show and bool(jobs)
        self.plain = self.show and not console.is_terminal
        self.size = {id(job): mp for job, mp in zip(jobs, sizes, strict=True)}
        self.n_files, self.total_mp = len(jobs), sum(sizes)
        self.files = 0  # results seen
        self.credit: dict[int, float] = {}  # MP of each job through the model so far
        self.model_mp = 0.0  # their sum
        self.other_mp = 0.0  # MP of jobs done without the model (skipped, failed before it)
        self.passing: list[Job] = []  # the jobs of the pass running now
        self.pass_mp, self.pass_start, self.fraction = 0.0, 0.0, 0.0
        self.first_start: float | None = None  # when the model first ran
        self.estimated = False
        self.ticker = Ticker(PLAIN_EVERY, clock)
        self.progress: Progress | None = None
        self.overall: TaskID | None = None
        self.current: TaskID | None = None

    def __enter__(self) -> FileProgress:
        if self.show and not self.plain:
            self.progress = Progress(*_columns(), console=self.console, transient=False)
            self.progress.__enter__()
            self.overall = self.progress.add_task(
                "upscaling", total=self.total_mp or self.n_files, info=self._overall_info()
            )
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.progress is not None:
            if self.current is not None:
                self.progress.remove_task(self.current)
            if kind is None and self.overall is not None:
                self.progress.update(self.overall, description="done")
            self.progress.__exit__(kind, exc, tb)

    @contextmanager
    def tiles(self) -> Iterator[None]:
        """The model's passes inside this block report their tiles here."""
        with on_tiles(self.on_tiles if self.show else None):
            yield

    def print(self, text: str) -> None:
        """A line (Rich markup) above the bars, or in the plain log."""
        (self.progress.console if self.progress is not None else self.console).print(text, soft_wrap=True)

    # --- the pipeline's callbacks

    def start_pass(self, jobs: list[Job]) -> None:
        """The model is about to run on these jobs' images."""
        now = self.clock()
        if self.first_start is None:
            self.first_start = now
        self.passing, self.fraction, self.pass_start = jobs, 0.0, now
        self.pass_mp = sum(self.size.get(id(job), 0.0) for job in jobs)
        self.ticker.last = now  # the first plain line of a file comes PLAIN_EVERY s into it
        if self.progress is not None:
            info = self._current_info()
            if self.current is None:
                self.current = self.progress.add_task(self._name(), total=self.pass_mp or 1, info=info)
            else:
                self.progress.reset(
                    self.current, total=self.pass_mp or 1, description=self._name(), info=info
                )

    def on_tiles(self, done: int, total: int) -> None:
        """`done` of `total` LR pixels of the current pass are upscaled."""
        fraction = min(1.0, done / total) if total > 0 else 1.0
        if fraction <= self.fraction:  # a retry with smaller tiles starts again: wait until it catches up
            return
        self.fraction = fraction
        for job in self.passing:
            mp = self.size.get(id(job), 0.0) * fraction
            self.model_mp += mp - self.credit.get(id(job), 0.0)
            self.credit[id(job)] = mp
        if self.progress is not None and self.current is not None and self.overall is not None:
            self.progress.update(self.current, completed=self.pass_mp * fraction, info=self._current_info())
            self.progress.update(self.overall, completed=self._overall_done(), info=self._overall_info())
        elif self.plain and fraction < 1.0 and self.ticker.due():
            rate, eta = self._pass_rate()
            line = f"{self._name()}: {fraction:.0%} of {_mp(self.pass_mp)} MP, {_rate(rate)} MP/s"
            self.print(escape(line + (f", eta {clock_text(eta)}" if eta is not None else "")))
        self._maybe_estimate()

    def finished(self, job: Job, result: JobResult) -> None:
        """`job`'s result came back (written, skipped or failed)."""
        self.files += 1
        key, mp = id(job), self.size.get(id(job), 0.0)
        if key in self.credit:  # through the model: whatever was not credited yet
            self.model_mp += mp - self.credit[key]
            self.credit[key] = mp
        else:
            self.other_mp += mp
        if self.progress is not None and self.overall is not None:
            done = self._overall_done() if self.total_mp else self.files
            self.progress.update(self.overall, completed=done, info=self._overall_info())
        elif self.plain and result.status == "ok":
            eta = self._job_eta()
            tail = f"; eta {clock_text(eta)}" if eta is not None and self.files < self.n_files else ""
            line = f"{self.files}/{self.n_files}{self.label} {result.src.name} done in {result.seconds:.1f} s"
            self.print(escape(line + tail))
        self._maybe_estimate()

    # --- helpers

    def _name(self) -> str:
        if len(self.passing) == 1:
            return self.passing[0].src.name
        return f"{len(self.passing)} files"

    def _overall_done(self) -> float:
        return self.model_mp + self.other_mp

    def _overall_info(self) -> str:
        return (
            f"{self.files}/{self.n_files} files{self.label} {self._overall_done():.2f}/{self.total_mp:.2f} MP"
        )

    def _pass_rate(self) -> tuple[float, float | None]:
        """MP/s of the current pass and the seconds it has left (None until measured)."""
        seconds = self.clock() - self.pass_start
        done = self.pass_mp * self.fraction
        rate = done / seconds if seconds > 0 else 0.0
        return rate, (self.pass_mp - done) / rate if rate > 0 else None

    def _current_info(self) -> str:
        rate, _ = self._pass_rate()
        text = f"{self.fraction:.0%} of {_mp(self.pass_mp)} MP"
        return text + (f", {_rate(rate)} MP/s" if rate > 0 else "")

    def _job_rate(self) -> float:
        """MP/s through the model since it first ran (reading and writing overlap it)."""
        if self.first_start is None:
            return 0.0
        seconds = self.clock() - self.first_start
        return self.model_mp / seconds if seconds > 0 else 0.0

    def _job_eta(self) -> float | None:
        rate = self._job_rate()
        left = max(0.0, self.total_mp - self._overall_done())
        return left / rate if rate > 0 and self.total_mp else None

    def _maybe_estimate(self) -> None:
        """Once, after ESTIMATE_AFTER s of measured work: the whole job's time at the rate so far,
        when it is over ESTIMATE_ABOVE s."""
        if self.estimated or not self.show or self.first_start is None or not self.total_mp:
            return
        seconds = self.clock() - self.first_start
        if seconds < ESTIMATE_AFTER or self.model_mp <= 0:
            return
        self.estimated = True
        eta = self._job_eta()
        if eta is not None and seconds + eta > ESTIMATE_ABOVE:
            rate, mp = _rate(self._job_rate()), f"{self.total_mp:.3g}"
            self.print(f"estimate: about {about(seconds + eta)} for {mp} MP at {rate} MP/s{self.label}")


StepCallback = Callable[..., None]  # (done, total) or (done, total, detail)


class StageProgress:
    """Progress through stages of counted steps: `srgan eval`'s images per model, `srgan benchmark
    train`'s steps per run.

    On a terminal: one bar over all stages (its ETA is the whole job's), named after the stage
    running now, with that stage's count. Elsewhere: a line when a stage ends, and one at most
    every PLAIN_EVERY seconds inside a long one.

        with StageProgress(console, total=30, unit="images") as progress:
            with progress.stage("srresnet_x4", 10) as on_step:
                evaluate(..., on_image=on_step)
    """

    def __init__(
        self, console: Console, total: int, unit: str, *, show: bool = True, clock: Clock = time.perf_counter
    ) -> None:
        self.console, self.total, self.unit, self.clock = console, total, unit, clock
        self.show = show and total > 0
        self.plain = self.show and not console.is_terminal
        self.base = 0  # steps of the stages already ended
        self.ticker = Ticker(PLAIN_EVERY, clock)
        self.progress: Progress | None = None
        self.task: TaskID | None = None

    def __enter__(self) -> StageProgress:
        if self.show and not self.plain:
            self.progress = Progress(*_columns(), console=self.console, transient=False)
            self.progress.__enter__()
            self.task = self.progress.add_task("", total=self.total, info="")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.progress is not None:
            if kind is None and self.task is not None:
                self.progress.update(self.task, description="done", info=f"{self.base} {self.unit}")
            self.progress.__exit__(kind, exc, tb)

    def print(self, text: str) -> None:
        """A line (Rich markup) above the bar, or in the plain log."""
        (self.progress.console if self.progress is not None else self.console).print(text, soft_wrap=True)

    @contextmanager
    def stage(self, name: str, size: int) -> Iterator[StepCallback]:
        """A stage of `size` steps; the block is given the callback to call with (done, total)
        or (done, total, detail) as it goes."""
        start = self.clock()
        self.ticker.last = start

        def on_step(done: int, total: int, detail: str = "") -> None:
            what = f"{detail} " if detail else ""
            if self.progress is not None and self.task is not None:
                info = f"{what}{done}/{total} {self.unit}"
                self.progress.update(self.task, completed=self.base + min(done, size), info=info)
            elif self.plain and done < total and self.ticker.due():
                seconds = self.clock() - start
                eta = f", eta {clock_text(seconds / done * (total - done))}" if done > 0 else ""
                self.print(escape(f"{name}: {what}{done}/{total} {self.unit}{eta}"))

        if self.progress is not None and self.task is not None:
            self.progress.update(
                self.task, description=escape(name), completed=self.base, info=f"0/{size} {self.unit}"
            )
        yield on_step
        self.base += size
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=self.base)
        elif self.plain:
            self.print(escape(f"{name}: {size} {self.unit} in {self.clock() - start:.1f} s"))
