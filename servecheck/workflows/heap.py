"""The garbage collector set for a check, which holds many objects and frees few.

CPython's cyclic collector walks the young objects every 700 allocations and, every so often,
every object it tracks. A check makes millions of small objects it keeps (validated records,
their scores, the checks' evidence) next to the hundreds of thousands its imports made (torch's
and transformers' modules, functions and types), and frees few of them before it ends, so
those walks find almost nothing and cost a lot: on this project's CPU, reading 20,000 records
took 2.0 s with the collector as it comes and 1.0 s with fewer walks (docs/performance.md).
So a check (``tuned``) freezes what its imports made (never walked again: it lives as long as the
process) and walks the young objects every 100,000 allocations, the older ones less often.
Garbage in cycles is still collected, later, and a chunked run collects it between chunks
(``between_chunks``), so a chunk held by a cycle (the first one is: the model is loaded while it
is scored, and a traceback transformers keeps from that load holds its frames) is freed before
the next is read, and the peak stays a chunk's. ``SERVECHECK_GC=0`` (or ``default``) leaves the
collector as it comes (to measure against).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["THRESHOLDS", "between_chunks", "tuned"]

THRESHOLDS = (100_000, 50, 100)
"""Allocations between young passes, and young (middle) passes between middle (full) ones;
CPython's own are (700, 10, 10)."""


@contextmanager
def tuned() -> Iterator[None]:
    """The collector set for a check while it runs (entered after the imports), and as it was
    after: a process that checks again and again (a test session, a service) keeps its own."""
    if os.environ.get("SERVECHECK_GC", "") in ("0", "default"):
        yield
        return
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()  # back to the oldest generation: what has died since is collected


def between_chunks() -> None:
    """Free what a finished chunk left in cycles: one full pass a chunk, over what is not frozen."""
    gc.collect()
