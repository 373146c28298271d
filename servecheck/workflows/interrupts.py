"""Ctrl-C that a finalizer cannot swallow.

Python raises ``KeyboardInterrupt`` wherever the main thread is when it handles the signal.
Where that is a finalizer (a ``__del__`` that a garbage-collection pass runs, such as the
``regex`` package's), the exception is printed as "Exception ignored in …" and dropped, and a
chunked check ran on to its last chunk and exited 0 (seen once in CI, where a pass runs between
chunks: ``workflows.heap``). So a chunked run notes the signal as well as raising it, and asks
at each chunk whether one came that nothing raised.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["noted"]


@contextmanager
def noted() -> Iterator[Callable[[], None]]:
    """Within it, SIGINT raises ``KeyboardInterrupt`` as before and is noted; the function it
    gives raises one if a Ctrl-C came and was lost. Outside the main thread, or where SIGINT is
    ignored or handled by someone else, it changes nothing."""
    previous = signal.getsignal(signal.SIGINT) \
        if threading.current_thread() is threading.main_thread() else None
    if previous is not signal.default_int_handler:
        yield lambda: None
        return
    came: list[bool] = []

    def handler(signum: int, frame: object) -> None:
        came.append(True)
        signal.default_int_handler(signum, frame)

    def ask() -> None:
        if came:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield ask
    finally:
        signal.signal(signal.SIGINT, previous)
