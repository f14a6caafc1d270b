"""SIGTERM (`kill`, a container stop, a scheduler's cancel) handled like Ctrl-C, so that the same
cleanup runs: atomic writes remove their temporary files and the command says it was interrupted.
While a training command trains, `StopOnSignal` turns the first signal into a request to stop
after the current step (with a checkpoint) instead."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from .common import console


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread where Ctrl-C would raise KeyboardInterrupt: every
    `except KeyboardInterrupt` and `finally` runs for it too (guard() says "terminated", exit 143)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread
    instead of killing the process on the spot; the previous handler is put back afterwards.

    Nothing changes off the main thread (Python only lets the main thread set handlers, e.g. under
    a test runner's worker thread), or where SIGTERM is ignored (a parent chose that for us)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class StopOnSignal:
    """While training: the first SIGINT/SIGTERM asks the run to stop after the current step (it
    writes a checkpoint and the weights); a second one interrupts at once.

    Pass the instance as the training call's `should_stop`; `signum` says which signal asked (the
    command then exits 128 + signum, 130 or 143, as for an interrupt). Off the main thread (e.g.
    under a test runner's worker thread) `installed()` changes nothing."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # the second signal: at once (guard: exit 130, or 143 for SIGTERM)
            raise Terminated(signum) if signum == signal.SIGTERM else KeyboardInterrupt
        self.signum = signum
        console.print(
            f"[yellow]{signal.Signals(signum).name}[/]: stopping after this step with a checkpoint "
            "(send it again to stop at once)"
        )

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopOnSignal]:
        if threading.current_thread() is not threading.main_thread():  # e.g. inside a test runner
            yield self
            return
        caught = (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.getsignal(s) for s in caught}
        for s in caught:
            signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
