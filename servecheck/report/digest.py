"""The digest on a terminal: printed last, where the eye lands when a run ends, in full (no
cut at the screen's width: the first finding is the evidence a person acts on)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from servecheck.checks.core.digest import Digest
from servecheck.report.table import STYLE
from servecheck.report.terminal import markup, visible

__all__ = ["print_digest"]


def _text(s: str) -> str:
    """Model text as data: control characters shown, never rich markup."""
    return escape(visible(s, newlines=True))


def print_digest(d: Digest, console: Console) -> None:
    console.print(f"[bold]digest[/]: [{STYLE[d.verdict]}]{d.verdict.upper()}[/]")
    for k, f in enumerate(d.failures, 1):
        after = f" (may follow from {markup(f.follows)})" if f.follows else ""
        console.print(f"  {k}. [bold]{markup(f.check)}[/]{after}: {_text(f.cause)}")
        if f.finding:
            console.print(f"     first finding: {_text(f.finding)}")
        if f.records:
            console.print(f"     worst records: {_text(', '.join(f.records))}")
    for check, why in d.inconclusive:
        console.print(f"  [{STYLE['inconclusive']}]INCONCLUSIVE[/] {markup(check)}: {_text(why)}")
    if d.not_checked:
        console.print("  [bold]not checked by this file[/]:")
        for b in d.not_checked:
            console.print(f"   - {_text(b.fault)}: {_text(b.why)}; to check it, collect "
                          f"{_text(b.collect)}")
    if d.could_not_catch:
        console.print("  [bold]too few records to catch[/] (of what deployments get wrong):")
        for s in d.could_not_catch:
            console.print(f"   - {_text(s.fault)}: " + (
                f"about {s.requests} requests of this mix would catch it (servecheck plan)"
                if s.requests is not None else f"this mix never can ({_text(s.why)})"))
