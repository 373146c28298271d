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
from contextlib import contextmanager, nullcontext
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from servecheck.report.files import write_text
from servecheck.report.terminal import markup


class RatesColumn(ProgressColumn):
    """Records/s, and tokens/s where the caller counts tokens: at scale, the figure to watch."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        if elapsed <= 0 or not task.completed:
            return Text("")
        tokens = task.fields.get("tokens", 0)
        rates = f"{task.completed / elapsed:,.0f} rec/s"
        return Text(rates + (f" · {tokens / elapsed:,.0f} tok/s" if tokens else ""))


@contextmanager
def bar(console: Console, description: str, total: int, enabled: bool = True
        ) -> Iterator[Callable[..., None]]:
    """A progress bar for ``total`` units; yields ``advance(n, tokens=0)``. Transient: it leaves
    the screen for the results once done."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               RatesColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not enabled, transient=True) as progress:
        task = progress.add_task(markup(description), total=total, tokens=0)  # names a file

        counted = [0]

        def advance(n: int = 1, tokens: int = 0) -> None:
            counted[0] += tokens
            progress.update(task, advance=n, tokens=counted[0])

        yield advance


def spinner(console: Console, text: str, enabled: bool = True):
    """A status line for a step whose length is unknown (loading weights); ``text`` may name a
    file or a target, so it is shown as data, never markup or control sequences."""
    return console.status(markup(text)) if enabled else nullcontext()



PHASES: dict[str, float] = {}
"""Seconds per phase of this process's runs, summed (``timed``)."""


@contextmanager
def timed(phase: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        PHASES[phase] = PHASES.get(phase, 0.0) + time.perf_counter() - start


def write_timings() -> None:
    """The phases' sums to ``$SERVECHECK_TIMINGS``, where it is set."""
    target = os.environ.get("SERVECHECK_TIMINGS")
    if target:
        write_text(Path(target), json.dumps({k: round(v, 3) for k, v in PHASES.items()}))
