"""The next chunk's records, read while this one is checked.

Reading and validating a chunk (JSON, pydantic: about 0.2 ms a record) is CPU work that the
scoring of the chunk before it need not wait for: teacher forcing mostly waits on the decoder,
and torch releases the GIL while it runs. So a thread reads chunk k+1 while chunk k is checked.
One chunk ahead and no more, so at most two chunks of records are held at once (their scores,
the large part, only for one). A thread, not a process: records cross no pickle, and the
reader's errors (a record that fails validation, a shard gone) surface in the caller, where
they would have without it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

__all__ = ["ahead"]

T = TypeVar("T")
_DONE = object()


def ahead(items: Iterator[T]) -> Iterator[T]:
    """``items``, with the next one made on a thread while the caller works on this one. The
    reader stops when the caller stops asking (an interrupted or failed run)."""
    ready: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(entry: tuple) -> bool:
        """Hand ``entry`` over once there is room; False if the caller stopped first."""
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as e:  # handed to the caller, raised where it asks for the next
            put((_DONE, e))

    reader = threading.Thread(target=read, name="servecheck-read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
