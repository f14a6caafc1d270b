"""Two small threads for overlapping work with the model, in order and with bounded memory: one
that runs an iterator ahead of its consumer, one that consumes items behind the producer. An
exception on either thread is raised on the caller's, in its place in the order."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def ahead(items: Iterator[T], depth: int, name: str = "srgan-ahead") -> Iterator[T]:
    """`items`, produced on a thread up to `depth` items ahead of whoever iterates this. Stopping
    early (break, an exception) stops the thread too."""
    buffer: queue.Queue[Any] = queue.Queue(max(depth, 1))
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, which raises it
            put(_Failure(exc))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()


class Behind(Generic[T]):
    """`consume(item)` for each item `put`, in order, on one thread, at most `depth` items behind.
    `close()` waits for the rest and raises what the thread raised; after a failure, `put` raises it."""

    def __init__(self, consume: Callable[[T], None], depth: int, name: str = "srgan-behind") -> None:
        self.consume = consume
        self.buffer: queue.Queue[Any] = queue.Queue(max(depth, 1))
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.buffer.get()
            if item is _DONE:
                return
            if self.failure is None:
                try:
                    self.consume(item)
                except BaseException as exc:  # kept for the caller; later items are dropped
                    self.failure = exc

    def put(self, item: T) -> None:
        if self.failure is not None:
            raise self.failure
        self.buffer.put(item)

    def close(self) -> None:
        self.buffer.put(_DONE)
        self.thread.join()
        if self.failure is not None:
            raise self.failure

    def __enter__(self) -> Behind[T]:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:
            self.close()  # the thread's failure, if any, is raised here
        else:  # the caller's exception wins; the thread is stopped and its failure dropped
            self.failure = self.failure or RuntimeError("stopped")
            self.buffer.put(_DONE)
            self.thread.join()
