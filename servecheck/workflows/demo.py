"""``servecheck demo``: the whole loop on the built-in model, a correct server and a broken one.

Collects ``examples/prompts-lite.json`` from an in-process transformers server that is correct
and from one that writes the answering role as ``assistant`` (a template bug seen in real
deployments of Gemma), checks both against the built-in reference, and says whether each came
out as it should: the first passes, the second fails and the table says why (an HTML report of
each, report-*.html, shows it).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from servecheck.checks.core.options import CheckOptions
from servecheck.collect.collector import collect
from servecheck.errors import EXIT_FAIL, EXIT_PASS
from servecheck.report.files import cannot_write
from servecheck.report.terminal import markup
from servecheck.workflows.check import Outputs
from servecheck.workflows.check_command import run_check

LITE_PROMPTS = Path(__file__).parents[1] / "examples" / "prompts-lite.json"
SERVERS = [("correct", "hf:builtin", "pass"),
           ("faulty", "hf:builtin?fault=assistant-role", "fail")]


def run_demo(out_dir: Path, console: Console) -> int:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cannot_write(out_dir, e) from None
    as_expected = True
    written: list[Path] = []
    for name, target, expected in SERVERS:
        responses = out_dir / f"responses-lite-{name}.json"
        summary = out_dir / f"summary-{name}.json"
        report = out_dir / f"report-{name}.html"
        console.rule(f"[bold]{name} server: {target}")
        s = collect(LITE_PROMPTS, target, responses)
        console.print(f"{markup(responses)}: {s.written} new, {s.skipped} already there")
        code = run_check(responses, CheckOptions("builtin", numerics="fp32"), console,
                         Outputs(json=summary, report=report,
                                 title=f"{name} server ({target}) vs builtin reference"))
        got = "pass" if code == EXIT_PASS else "fail"
        ok = got == expected
        as_expected &= ok
        console.print(f"{name} server: {got.upper()} — "
                      f"{'as expected' if ok else f'NOT as expected (should {expected})'}")
        written += [responses, summary, report]
    console.rule("[bold]files")
    for p in written:
        console.print(f"  {markup(p)}")
    console.print(f"demo {'behaved as expected' if as_expected else 'did NOT behave as expected'}")
    return EXIT_PASS if as_expected else EXIT_FAIL
