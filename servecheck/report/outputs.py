"""What ``check`` writes besides the terminal table: the JSON summary, the HTML report, JUnit XML.

Each is optional and independent; the report is imported only when asked for (it pulls in the
HTML templates and the charts). The summary and JUnit need only the results; the report also
needs the records and their scores (a chunked run writes it for one chunk, while it is held).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.digest import Digest
from servecheck.checks.core.results import CheckResult
from servecheck.report.terminal import markup


def write_outputs(console: Console, ctx: CheckContext, results: list[CheckResult],
                  verdicts: dict[int, CheckResult], meta: dict[str, Any], title: str,
                  json_out: Path | None = None, report: Path | None = None,
                  junit: Path | None = None, digest: Digest | None = None) -> None:
    extra = {"digest": digest.to_json()} if digest is not None else {}
    write_result_files(console, results, {**meta, "tokens": ctx.token_sources(), **extra},
                       json_out, junit)
    if report:
        write_html(console, report, ctx, results, verdicts, meta, title, digest)


def write_result_files(console: Console, results: list[CheckResult], meta: dict[str, Any],
                       json_out: Path | None = None, junit: Path | None = None) -> None:
    """The JSON summary and JUnit XML, each where asked for."""
    if json_out:
        from servecheck.report.summary import to_json, write_json

        write_json(json_out, to_json(results, meta))
        console.print(f"summary written to {markup(json_out)}")
    if junit:
        from servecheck.report.junit import write_junit

        write_junit(junit, results, {k: v for k, v in meta.items() if k not in ("tokens", "digest")})
        console.print(f"JUnit XML written to {markup(junit)}")


def write_html(console: Console, report: Path, ctx: CheckContext, results: list[CheckResult],
               verdicts: dict[int, CheckResult], meta: dict[str, Any], title: str,
               digest: Digest | None = None) -> None:
    """The HTML report; ``verdicts``: each record's own verdict (``CheckRun.verdicts``);
    ``digest``: what heads it (``CheckRun.digest``)."""
    from servecheck.report.html import outputs

    with console.status("writing the HTML report…"):
        shown = outputs(ctx, results, verdicts)
    write_html_around(console, report, shown, results, meta, title, digest)


def write_html_around(console: Console, report: Path, shown: str, results: list[CheckResult],
                      meta: dict[str, Any], title: str, digest: Digest | None = None) -> None:
    """The page of ``results`` around what ``report.html.outputs`` drew of the records (a
    chunked run's: one chunk's, kept while the chunks ran, around the whole set's results)."""
    from markupsafe import Markup

    from servecheck.report.html import write_page_around

    with console.status("writing the HTML report…"):
        write_page_around(report, Markup(shown), results, meta, title, digest)
    console.print(f"report written to {markup(report)} (open it in a browser)")
