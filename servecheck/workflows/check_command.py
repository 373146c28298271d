"""The ``check`` command: a responses set checked (in chunks when it is large), the table, the
files asked for, and the exit code (``servecheck.errors.EXIT_PASS`` … ``EXIT_INTERRUPTED``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from servecheck.checks.core.options import CheckOptions
from servecheck.checks.core.registry import pooled_names
from servecheck.checks.core.results import Verdict
from servecheck.errors import EXIT_FAIL, EXIT_INCONCLUSIVE, EXIT_PASS
from servecheck.formats.raw import MAX_RECORD_BYTES
from servecheck.workflows.check import CheckRun, Outputs
from servecheck.workflows.chunked import Chunking, SetRun, check_set
from servecheck.workflows.heap import tuned
from servecheck.workflows.progress import timed, write_timings


def run_check(responses: Path, options: CheckOptions, console: Console,
              outputs: Outputs | None = None, progress: bool = True,
              max_record_bytes: int = MAX_RECORD_BYTES, inconclusive_ok: bool = False,
              chunking: Chunking | None = None) -> int:
    """The ``check`` command: the table, the files asked for, and the exit code (3 when a
    check could not decide, unless ``inconclusive_ok``)."""
    with tuned():  # the collector, for a run that keeps most of what it makes
        return _run_check(responses, options, console, outputs, progress, max_record_bytes,
                          inconclusive_ok, chunking)


def _run_check(responses: Path, options: CheckOptions, console: Console, outputs: Outputs | None,
               progress: bool, max_record_bytes: int, inconclusive_ok: bool,
               chunking: Chunking | None) -> int:
    from servecheck.report.digest import print_digest
    from servecheck.report.outputs import write_html, write_html_around, write_result_files
    from servecheck.report.table import print_table

    outputs = outputs or Outputs()
    title = outputs.title or f"servecheck: {responses} vs {options.reference}"

    def meta_of(records: int, run: CheckRun | SetRun) -> dict[str, Any]:
        return {"reference": options.reference, "responses": str(responses), "records": records,
                **options.describe(), "convention": run.convention.to_json()}

    def draw(run: CheckRun, chunk: int) -> str:
        """A chunk's records as the report shows them (the page is laid around them at the end)."""
        from servecheck.report.html import outputs as drawn

        return str(drawn(run.context, run.results, run.verdicts))  # plain text: it is saved

    done: SetRun = check_set(responses, options, console, progress, max_record_bytes,
                             chunking or Chunking(), draw if outputs.report else None)
    if done.rank:  # another torchrun rank: it scored its share, rank 0 reports
        return exit_code(done.verdict, inconclusive_ok)
    print_table(done.results, console, title)
    meta = meta_of(done.records, done)
    if done.chunks > 1:
        meta.update(chunks=done.chunks, alpha_per_chunk=options.alpha / done.chunks,
                    pooled_checks=pooled_names(), resumed_chunks=done.resumed)
    console.print(f"sampling convention: {done.convention.describe()}")
    console.print(numerics_line(options))
    if done.digest is not None:
        print_digest(done.digest, console)
    digest = {"digest": done.digest.to_json()} if done.digest is not None else {}
    with timed("outputs (JSON, JUnit, HTML)"):
        write_result_files(console, done.results, {**meta, "tokens": done.tokens, **digest},
                           outputs.json, outputs.junit)
        if outputs.report and done.whole is not None:
            write_html(console, outputs.report, done.whole.context, done.results,
                       done.whole.verdicts, meta, title, done.whole.digest)
        elif outputs.report and done.report_chunk is not None:
            first, n = done.shown_records
            write_html_around(console, outputs.report, done.shown, done.results, meta,
                              f"{title} (outputs shown: chunk {done.report_chunk + 1}, records "
                              f"{first}–{first + n - 1}, the first failing chunk or else the "
                              f"first; the checks cover all {done.records} records)",
                              done.digest)
    write_timings()
    if done.verdict == "inconclusive":
        console.print("inconclusive: a check had too few records to decide (exit 3; "
                      "--inconclusive-ok makes it 0)" if not inconclusive_ok else
                      "inconclusive: a check had too few records to decide (--inconclusive-ok: "
                      "exit 0)")
    return exit_code(done.verdict, inconclusive_ok)


def numerics_line(options: CheckOptions) -> str:
    """The tolerances the deterministic checks used, and where they came from."""
    t = options.tolerances
    default = " (the default: what GPU servers run; --numerics fp32 for an fp32 server, as " \
        "the demo's)" if options.numerics == CheckOptions().numerics else ""
    return (f"numerics {options.numerics}{default}: greedy near-ties within {t.logit:g} logits, "
            f"top_p/min_p boundary {t.mass:g}, served log-probs within {t.logprob:g}")


def exit_code(verdict: Verdict | str, inconclusive_ok: bool = False) -> int:
    """0 pass, 1 fail, 3 inconclusive (0 with ``inconclusive_ok``, the old behaviour)."""
    if verdict == "inconclusive":
        return EXIT_PASS if inconclusive_ok else EXIT_INCONCLUSIVE
    return EXIT_PASS if verdict == "pass" else EXIT_FAIL
