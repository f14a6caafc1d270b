"""SIGTERM (`kill`, a container stop, a scheduler's cancel) handled like Ctrl-C, so that the same
cleanup runs: atomic writes remove their temporary files and the command says it was interrupted."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


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
