"""Progress for the slow steps of ``check`` and ``compare``: loading the model, teacher forcing,
replaying requests.

A person waiting more than a second or two wants to see that something moves and how long is
left; CI logs want nothing animated. Both come from rich: a bar on a terminal, nothing when
``enabled`` is false (``--no-progress``) or the console is not interactive.

Where the time of a run goes (reading, loading, teacher forcing, the checks, the outputs) is
summed per phase by ``timed``; with ``SERVECHECK_TIMINGS=FILE`` the command writes the sums there
as JSON, for the benchmarks and for anyone asking why a run is slow.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from rich.console import Console

from servecheck.collect.progress import RatesColumn
from servecheck.collect.progress import bar as shared_bar
from servecheck.report.files import write_text
from servecheck.report.terminal import markup
from servecheck.workflows.gpu_busy import fractions


def bar(console: Console, description: str, total: int, enabled: bool = True
        ) -> AbstractContextManager[Callable[..., None]]:
    """collect's progress bar (``servecheck.collect.progress``) for ``total`` units, with records/s
    and tokens/s; yields ``advance(n, tokens=0)``. Transient: it leaves the screen for the
    results once done. ``description`` may name a file, so it is shown as data, never markup."""
    return shared_bar(markup(description), total, RatesColumn(), console=console, enabled=enabled,
                      transient=True)


def spinner(console: Console, text: str, enabled: bool = True):
    """A status line for a step whose length is unknown (loading weights); ``text`` may name a
    file or a target, so it is shown as data, never markup or control sequences."""
    return console.status(markup(text)) if enabled else nullcontext()



SPANS: dict[str, list[tuple[float, float]]] = {}
"""Each phase's (start, end) times in this process's runs (``timed``): summed, the seconds per
phase; with the GPU's samples, its busy fraction within each (``gpu_busy``)."""


@contextmanager
def timed(phase: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        SPANS.setdefault(phase, []).append((start, time.perf_counter()))


def write_timings() -> None:
    """The phases' sums to ``$SERVECHECK_TIMINGS``, where it is set, as ``{"phases_s": {phase:
    seconds}, "gpu_busy": {"run": fraction, phase: fraction, …}}`` (``gpu_busy`` is null where
    the run used no GPU)."""
    target = os.environ.get("SERVECHECK_TIMINGS")
    if target:
        seconds = {k: round(sum(z - a for a, z in v), 3) for k, v in SPANS.items()}
        write_text(Path(target), json.dumps({"phases_s": seconds, "gpu_busy": fractions(SPANS)}))
