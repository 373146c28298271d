"""The one progress bar of every long loop: ``generate``'s requests, ``check``'s teacher forcing,
``compare``'s replays.

It lives in collect, the lowest stage that shows one, so that the workflows above reuse it
(``workflows.progress.bar``) rather than build a second. The callers differ only in the rate
they show and in whether the bar stays on screen, so those are the arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

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


class RequestRateColumn(ProgressColumn):
    """Requests/s over rich's recent window: what a server sustains right now (``generate``)."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.1f} req/s" if task.speed else "- req/s")


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
def bar(description: str, total: int, rate: ProgressColumn, *, console: Console | None = None,
        enabled: bool = True, transient: bool = False) -> Iterator[Callable[..., None]]:
    """A bar for ``total`` units showing ``rate``; yields ``advance(n=1, tokens=0)``.
    ``description`` is rich markup (a caller showing a file name escapes it); ``console``: rich's
    own when None; ``enabled`` false shows nothing; ``transient`` clears it once done."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), rate,
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not enabled, transient=transient) as progress:
        task = progress.add_task(description, total=total, tokens=0)
        counted = [0]

        def advance(n: int = 1, tokens: int = 0) -> None:
            if tokens:
                counted[0] += tokens
                progress.update(task, tokens=counted[0])
            progress.advance(task, n)

        yield advance
