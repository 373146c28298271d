"""A chunk's checks run on a thread while the GPU teacher-forces the next chunk.

On one H100 a 100k-record check spent about as long in teacher forcing (the GPU, fed by Python)
as in the checks (CPU, mostly Python, with some rescoring on the GPU), one after the other. The
checks of chunk k read only chunk k's scores, and the scoring of chunk k+1 needs only the order
the chunks before it settled, which teacher forcing (not the checks) finds: so the two can run at
once. Calls run one at a time, in the order submitted (each chunk's verdicts are saved and merged
in set order, as without it); the caller waits before it holds more than ``behind`` unfinished
calls, which bounds the chunks held at once. An error in a call is raised in the caller, at its
next ``submit`` or ``wait``. A run stopped by Ctrl-C drops what waits and lets the chunk in hand
finish and be saved (``stop``): a rerun resumes after it.

Off (``enabled`` false) every call runs at once in the caller, exactly as before: under torchrun
every scoring call is a collective that all ranks must make in the same order, and on a CPU the
scoring and the checks share the same cores. ``chunked.overlapped`` says when it is on.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Finisher"]


class Finisher:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.error: BaseException | None = None
        self.dropped = False
        self.unfinished = 0
        self.changed = threading.Condition()
        if enabled:
            self.waiting: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.Queue()
            threading.Thread(target=self._work, name="servecheck-checks", daemon=True).start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if not self.enabled:
            fn(*args)
            return
        self._raise()
        with self.changed:
            self.unfinished += 1
        self.waiting.put((fn, args))

    def wait(self, behind: int = 0) -> None:
        """Until at most ``behind`` submitted calls are unfinished (0: all done)."""
        if not self.enabled:
            return
        with self.changed:
            self.changed.wait_for(lambda: self.unfinished <= behind or self.error is not None)
        self._raise()

    def stop(self) -> None:
        """Run nothing more that was submitted, and wait for the call in hand to end (the
        caller stops: Ctrl-C, an error). Waited for, because a process that exits while the
        thread is inside torch aborts; its error, if any, is not raised (the caller's is)."""
        self.dropped = True
        if self.enabled:
            with self.changed:
                self.changed.wait_for(lambda: self.unfinished <= 0)

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _work(self) -> None:
        while True:
            fn, args = self.waiting.get()
            if self.error is None and not self.dropped:
                try:
                    fn(*args)
                except BaseException as e:  # re-raised in the caller's thread
                    self.error = e
            with self.changed:
                self.unfinished -= 1
                self.changed.notify_all()
