"""runtime/background.py: work ahead of and behind the model on threads, in order, bounded, and
failures raised on the caller's thread in their place."""

from __future__ import annotations

import threading
import time

import pytest

from srgan_cli.runtime.background import Behind, ahead


def test_ahead_keeps_order_bounds_the_lead_and_raises_in_place() -> None:
    made = []

    def items():  # noqa: ANN202
        for i in range(6):
            made.append(i)
            if i == 4:
                raise ValueError("bad frame 4")
            yield i

    got = []
    with pytest.raises(ValueError, match="bad frame 4"):
        for item in ahead(items(), 2):
            time.sleep(0.02)
            assert len(made) - len(got) <= 4  # at most `depth` waiting, one being made, one taken
            got.append(item)
    assert got == [0, 1, 2, 3]


def test_ahead_stops_its_thread_when_the_consumer_stops() -> None:
    def endless():  # noqa: ANN202
        i = 0
        while True:
            yield i
            i += 1

    before = threading.active_count()
    for item in ahead(endless(), 3):
        if item == 5:
            break
    time.sleep(0.2)
    assert threading.active_count() == before


def test_behind_consumes_in_order_and_reports_its_failure() -> None:
    seen = []
    with Behind(seen.append, 2) as writer:
        for i in range(10):
            writer.put(i)
    assert seen == list(range(10))

    def fail_on_3(item: int) -> None:
        if item == 3:
            raise OSError("disk full")
        seen.append(item)

    seen.clear()
    with pytest.raises(OSError, match="disk full"), Behind(fail_on_3, 2) as writer:
        for i in range(10):
            writer.put(i)
            time.sleep(0.01)
    assert seen == [0, 1, 2]

    with pytest.raises(KeyError), Behind(seen.append, 2) as writer:  # the caller's error wins
        writer.put(1)
        raise KeyError("caller")
