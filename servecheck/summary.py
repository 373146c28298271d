"""The verdict, for people (a rich table) and for machines (the JSON summary).

JSON summary shape (``--json``; documented in docs/formats.md)::

    {"schema_version": 1, "verdict": "pass" | "fail", "reference": ..., "responses": ...,
     "records": N, "checks": [{"name", "verdict": "pass" | "fail" | "skipped", "summary",
     "details": {...}, "findings": [{"record", "message"}, ...]}]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from servecheck.checks import CheckResult
from servecheck.records import SCHEMA_VERSION

STYLE = {"pass": "bold green", "fail": "bold red", "skipped": "dim"}


def overall(results: list[CheckResult]) -> str:
    return "fail" if any(r.verdict == "fail" for r in results) else "pass"


def to_json(results: list[CheckResult], meta: dict[str, Any], max_findings: int = 100
            ) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION, "verdict": overall(results), **meta,
        "checks": [{"name": r.name, "verdict": r.verdict, "summary": r.summary,
                    "details": r.details,
                    "findings": [{"record": f.record, "message": f.message}
                                 for f in r.worst_first()[:max_findings]],
                    "findings_total": len(r.findings)} for r in results],
    }


def write_json(path: Path, summary: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _short(text: str, width: int) -> str:
    """One line of at most ``width`` characters: the table must fit a screen, the full text is
    in the JSON summary and the HTML report."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: max(1, width - 1)] + "…"


def print_table(results: list[CheckResult], console: Console, title: str,
                max_findings: int = 2) -> None:
    """One row per check; a failing one shows its worst findings, one line each."""
    table = Table(title=title, show_lines=False, expand=False)
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
        table.add_row(r.name, f"[{STYLE[r.verdict]}]{r.verdict.upper()}[/]", evidence,
                      end_section=True)
    console.print(table)
    verdict = overall(results)
    console.print(f"verdict: [{STYLE[verdict]}]{verdict.upper()}[/]")
