"""``servecheck check`` and its API: a responses file against the reference, every check run.

``check`` is what a Python user calls: records (or a file) and ``CheckOptions`` in, a
``CheckRun`` (the context with its cached scores, and every check's result) out, printing
nothing unless given a console. ``run_check`` is the command: the table, the files, the exit
code. Under ``torchrun`` every rank runs the same checks in the same order, so each scoring call
is one collective; the ranks share the scoring and rank 0 alone reports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from servecheck.checks import run_checks
from servecheck.checks.context import CheckContext, Scorer
from servecheck.checks.conventions import ConventionFit, find_convention
from servecheck.checks.options import CheckOptions
from servecheck.checks.results import CheckResult, Verdict, overall
from servecheck.errors import EXIT_FAIL, EXIT_INCONCLUSIVE, EXIT_PASS, InputError
from servecheck.formats.records import ResponseRecord
from servecheck.formats.responses import MAX_RECORD_BYTES, read_records
from servecheck.reference.model import Reference
from servecheck.reference.scoring import score
from servecheck.workflows.progress import bar, spinner


@dataclass(frozen=True)
class Outputs:
    """What ``check`` writes besides the terminal table; each optional."""

    json: Path | None = None
    report: Path | None = None
    junit: Path | None = None
    title: str | None = None


@dataclass
class CheckRun:
    context: CheckContext
    results: list[CheckResult]
    convention: ConventionFit
    """The sampling convention scored under, and how it was chosen."""
    rank: int = 0
    """This process's torchrun rank (0 alone): only rank 0 reports."""

    @property
    def verdict(self) -> Verdict:
        return overall(self.results)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _scorer() -> tuple[Scorer, int]:
    """Under ``torchrun`` (several processes, one GPU each): join the process group and score
    through ``parallel.score_data_parallel``; returns (the scorer, this rank)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return score, 0
    from servecheck.reference.parallel import init_from_torchrun, score_data_parallel

    rank, _ = init_from_torchrun()
    return score_data_parallel, rank


def teacher_force(ctx: CheckContext, console: Console, enabled: bool = True) -> ConventionFit:
    """Load the reference model, find the sampling order where the options leave it unset,
    and score every record under it, with spinners and a bar."""
    if not getattr(ctx.scorer, "remote", False):  # a cluster's workers load their own
        with spinner(console, f"loading the reference model ({ctx.ref.spec})…", enabled):
            ctx.ref.model  # noqa: B018 - cached property: loads the weights now, under the spinner
    given = ctx.options.convention
    if given:
        fit = ConventionFit(given, False)
    else:
        with spinner(console, "finding the sampling order…", enabled):
            fit = find_convention(ctx)
        ctx.convention = fit.chosen
    with bar(console, "teacher forcing", len(ctx.records), enabled) as advance:
        ctx.prefetch(advance)
    return fit


def check(responses: Path | list[ResponseRecord], options: CheckOptions | None = None,
          console: Console | None = None, progress: bool = False,
          reference: Reference | None = None,
          max_record_bytes: int = MAX_RECORD_BYTES) -> CheckRun:
    """Every check of ``responses`` (a responses file, or records) against the reference.

    ``reference``: a reference already loaded (for ``options.reference``), to check many files
    without loading it again; by default it is loaded from the options. A record in the file
    over ``max_record_bytes`` is refused by name (memory stays bounded)."""

    options = options or CheckOptions()
    records = read_records(responses, max_record_bytes) if isinstance(responses, Path) \
        else list(responses)
    scorer, rank = _scorer()
    device = options.device
    if device and device != "cpu" and not _has_cuda():
        raise InputError(f"--device {device}: this machine has no CUDA GPU")
    if scorer is not score and device in (None, "cuda") and _has_cuda():
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
    ref = reference or Reference(options.reference, dtype=options.dtype,
                                 device=device or ("cuda" if _has_cuda() else "cpu"))
    cluster = None
    if options.dask:
        from servecheck.reference.dask_scoring import DaskScorer, open_client

        scorer = cluster = DaskScorer(open_client(options.dask), options.dtype, device or "cpu")
    try:
        ctx = CheckContext(records, ref, options, scorer)
        fit = teacher_force(ctx, console or Console(quiet=True), progress and console is not None)
        return CheckRun(ctx, run_checks(ctx), fit, rank)
    finally:
        if cluster is not None:
            cluster.close()


def run_check(responses: Path, options: CheckOptions, console: Console,
              outputs: Outputs = Outputs(), progress: bool = True,
              max_record_bytes: int = MAX_RECORD_BYTES, inconclusive_ok: bool = False) -> int:
    """The ``check`` command: the table, the files asked for, and the exit code (3 when a
    check could not decide, unless ``inconclusive_ok``)."""
    from servecheck.report.outputs import write_outputs
    from servecheck.report.table import print_table

    run = check(responses, options, console, progress, max_record_bytes=max_record_bytes)
    if run.rank:  # another torchrun rank: it scored its share, rank 0 reports
        return exit_code(run.verdict, inconclusive_ok)
    title = outputs.title or f"servecheck: {responses} vs {options.reference}"
    print_table(run.results, console, title)
    meta = {"reference": options.reference, "responses": str(responses),
            "records": len(run.context.all_records), **options.describe(),
            "convention": run.convention.to_json()}
    console.print(f"sampling convention: {run.convention.describe()}")
    write_outputs(console, run.context, run.results, meta, title, outputs.json, outputs.report,
                  outputs.junit)
    if run.verdict == "inconclusive":
        console.print("inconclusive: a check had too few records to decide (exit 3; "
                      "--inconclusive-ok makes it 0)" if not inconclusive_ok else
                      "inconclusive: a check had too few records to decide (--inconclusive-ok: "
                      "exit 0)")
    return exit_code(run.verdict, inconclusive_ok)


def exit_code(verdict: Verdict, inconclusive_ok: bool = False) -> int:
    """0 pass, 1 fail, 3 inconclusive (0 with ``inconclusive_ok``, the old behaviour)."""
    if verdict == "inconclusive":
        return EXIT_PASS if inconclusive_ok else EXIT_INCONCLUSIVE
    return EXIT_PASS if verdict == "pass" else EXIT_FAIL
