"""Reading the next chunk on a thread while this one is checked (``workflows.prefetch``):
the chunks come in order, the reader's error is raised where the run asks for that chunk, and
a run that stops early stops the reader."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from servecheck.workflows.prefetch import ahead


def test_items_come_in_order_and_the_next_is_read_while_this_one_is_used() -> None:
    read: list[int] = []

    def items() -> Iterator[int]:
        for i in range(5):
            read.append(i)
            yield i

    got = []
    for item in ahead(items()):
        deadline = time.monotonic() + 5
        while len(read) < min(item + 2, 5) and time.monotonic() < deadline:
            time.sleep(0.01)  # the reader is one ahead, without being asked
        assert len(read) >= min(item + 2, 5)
        got.append(item)
    assert got == [0, 1, 2, 3, 4]


def test_the_readers_error_is_raised_where_its_item_is_asked_for() -> None:
    def items() -> Iterator[int]:
        yield 1
        raise ValueError("record 7 of shard 2 is not JSON")

    it = ahead(items())
    assert next(it) == 1
    with pytest.raises(ValueError, match="record 7"):
        next(it)


def test_a_run_that_stops_early_stops_the_reader() -> None:
    made: list[int] = []

    def items() -> Iterator[int]:
        for i in range(1000):
            made.append(i)
            yield i

    it = ahead(items())
    assert next(it) == 0
    it.close()
    time.sleep(0.5)
    assert len(made) <= 3  # the one used, the one ahead, the one waiting to be put
    assert not [t for t in threading.enumerate() if t.name == "servecheck-read-ahead"]
