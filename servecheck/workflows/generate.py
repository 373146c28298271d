"""``servecheck generate``: expand a prompts file, collect every answer, say what happened.

The collector (``collect.collector``) does the work and survives interruptions; this is what a
person reads afterwards: the counts, the target's notes once per run, the failures grouped by
message, and the exit code (``servecheck.errors.EXIT_PASS`` … ``EXIT_INTERRUPTED``: 1 when a
request failed, 130 when interrupted; the same command resumes).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from servecheck.collect.collector import collect
from servecheck.errors import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_PASS, InputError
from servecheck.formats.limits import MAX_REQUESTS
from servecheck.report.terminal import visible


def run_generate(prompts: Path, target: str, out: Path, console: Console,
                 reference: str | None = None, retries: int = 3, progress: bool = True,
                 max_requests: int = MAX_REQUESTS) -> int:
    if retries < 0:
        raise InputError(f"retries must be ≥ 0, got {retries}")
    s = collect(prompts, target, out, show_progress=progress, retries=retries,
                reference=reference, max_requests=max_requests)
    console.print(f"{out}: {s.written} new record(s), {s.skipped} already answered, "
                  f"{s.planned} planned" + (f", {s.retried} transient failure(s) retried"
                                            if s.retried else ""))
    for note in s.notes:  # once per run, beside the counts, where a user reads the outcome
        console.print(f"note: {visible(note)}", markup=False)
    if s.errors:
        console.print(f"{len(s.errors)} request(s) failed; they are in the file with 'error' set "
                      f"and a rerun retries them:")
    for message, count, rid in s.error_groups()[:10]:
        console.print(f"  {count} × {visible(message)} (first: {visible(rid)})", markup=False)
    if s.compacted:
        console.print(f"{out}: rewritten without {s.compacted} superseded error record(s)")
    if s.interrupted:
        console.print(f"interrupted: {s.written} record(s) saved in {out}; run the same command "
                      f"again to resume")
        return EXIT_INTERRUPTED
    if s.gone:
        answered = s.written - len(s.errors)
        raise InputError(f"stopped early, the server is gone: {s.gone}; {answered} answered "
                         f"record(s) of this run are kept in {out}; start the server and run the "
                         f"same command again to resume", where=target)
    return EXIT_FAIL if s.errors else EXIT_PASS
