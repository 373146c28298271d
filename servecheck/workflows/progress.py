"""Progress for the slow steps of ``check`` and ``compare``: loading the model, teacher forcing,
replaying requests.

A person waiting more than a second or two wants to see that something moves and how long is
left; CI logs want nothing animated. Both come from rich: a bar on a terminal, nothing when
``enabled`` is false (``--no-progress``) or the console is not interactive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@contextmanager
def bar(console: Console, description: str, total: int, enabled: bool = True
        ) -> Iterator[Callable[[int], None]]:
    """A progress bar for ``total`` units; yields ``advance(n)``. Transient: it leaves the
    screen for the results once done."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not enabled, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


def spinner(console: Console, text: str, enabled: bool = True):
    """A status line for a step whose length is unknown (loading weights)."""
    return console.status(text) if enabled else nullcontext()

