"""The verdict for people: one rich table row per check, a failing one with its worst findings."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from servecheck.checks.core.results import CheckResult, overall
from servecheck.report.terminal import markup, visible

STYLE = {"pass": "bold green", "fail": "bold red", "inconclusive": "bold yellow",
         "skipped": "dim"}


def _short(text: str, width: int) -> str:
    """One line of at most ``width`` characters: the table must fit a screen, the full text is
    in the JSON summary and the HTML report. Control characters are shown, not obeyed (an id or
    a message may quote model text)."""
    line = " ".join(visible(text, newlines=True).split())
    return line if len(line) <= width else line[: max(1, width - 1)] + "…"


def print_table(results: list[CheckResult], console: Console, title: str,
                max_findings: int = 2) -> None:
    """One row per check; a failing one shows its worst findings, one line each."""
    table = Table(title=markup(title), show_lines=False, expand=False)
    table.add_column("check", style="bold")
    table.add_column("verdict")
    table.add_column("evidence", overflow="fold")
    width = max(40, console.width - 30)
    for r in results:
        evidence = escape(_short(r.summary, 3 * width))  # model text is data, never rich markup
        shown = r.worst_first()[:max_findings] if r.verdict == "fail" else []
        for f in shown:
            evidence += "\n" + escape(_short(f"  • [{f.record}] {f.message}", width))
        if r.verdict == "fail" and len(r.findings) > len(shown):
            evidence += f"\n  … {len(r.findings) - len(shown)} more (--report, --json)"
        table.add_row(markup(r.name), f"[{STYLE[r.verdict]}]{r.verdict.upper()}[/]", evidence,
                      end_section=True)
    console.print(table)
    verdict = overall(results)
    console.print(f"verdict: [{STYLE[verdict]}]{verdict.upper()}[/]")
