"""Progress inside one image: a sink the tiler reports to, set by whoever shows it (the CLI).

The library never prints. A caller that wants to see how far a long pass has come wraps it in
`on_tiles(callback)`; the tiler then calls `callback(done, total)` after each batch of tiles, in
LR pixels (times the images of a batch), and a whole-image pass of a torch model on the CPU
reports the share of its conv work done after each layer (torch_backend.py). Nothing is called,
and nothing costs, when no sink is set.

An image that takes several passes (a self-ensemble, an alpha channel upscaled on its own) wraps
each of them in `part(index, count)`, so one image still reports one run from 0 to its total.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

TileCallback = Callable[[int, int], None]  # (done, total), in LR pixels; done rises to total


class PassCancelled(Exception):
    """Raised by a sink to stop the pass it watches (a server giving up on a job): it goes through
    every layer of the runtime, never taken for a failure of the pass itself."""


_sink: ContextVar[TileCallback | None] = ContextVar("srgan_tile_progress", default=None)


@contextlib.contextmanager
def on_tiles(callback: TileCallback | None) -> Iterator[None]:
    """Report the tiles of every pass run inside this block (in this thread) to `callback`."""
    token = _sink.set(callback)
    try:
        yield
    finally:
        _sink.reset(token)


def tile_sink() -> TileCallback | None:
    """The callback set by the innermost `on_tiles`, or None."""
    return _sink.get()


def report(done: int, total: int) -> None:
    """Tell the sink, if any, that `done` of `total` LR pixels are upscaled."""
    sink = _sink.get()
    if sink is not None:
        sink(done, total)


@contextlib.contextmanager
def part(index: int, count: int) -> Iterator[None]:
    """Inside: pass `index` (from 0) of `count` equal passes over one image. Its (done, total)
    reach the outer sink as (index * total + done, count * total)."""
    outer = _sink.get()
    if outer is None or count <= 1:
        yield
        return

    def inner(done: int, total: int) -> None:
        outer(index * total + done, count * total)

    with on_tiles(inner):
        yield
