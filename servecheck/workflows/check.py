"""``servecheck check`` and its API: a responses file against the reference, every check run.

``check`` is what a Python user calls: records (or a file) and ``CheckOptions`` in, a
``CheckRun`` (the context with its cached scores, and every check's result) out, printing
nothing unless given a console. ``run_check`` is the command: the table, the files, the exit
code. Under ``torchrun`` every rank runs the same checks in the same order, so each scoring call
is one collective; the ranks share the scoring and rank 0 alone reports.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from rich.console import Console

from servecheck.checks import pooled_evidence, run_checks, screen
from servecheck.checks.core.context import CheckContext, Scorer
from servecheck.checks.core.conventions import ConventionFit, find_convention
from servecheck.checks.core.digest import Digest, RecordFacts, digest
from servecheck.checks.core.options import CheckOptions
from servecheck.checks.core.registry import Evidence
from servecheck.checks.core.results import CheckResult, Verdict, overall
from servecheck.checks.plausibility import judge
from servecheck.errors import InputError
from servecheck.formats.raw import MAX_RECORD_BYTES
from servecheck.formats.records import ResponseRecord
from servecheck.formats.responses import read_records
from servecheck.reference.forward import plan_compile
from servecheck.reference.model import Reference
from servecheck.reference.scoring import score
from servecheck.workflows.gpu_busy import watch
from servecheck.workflows.progress import bar, spinner, timed


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
    evidence: dict[str, Evidence] = field(default_factory=dict)
    """A chunk of a larger set: the evidence of the checks that pool it over the chunks, which
    its ``results`` leave out (``checks.pooled_evidence``)."""

    @property
    def verdict(self) -> Verdict:
        return overall(self.results)

    @cached_property
    def digest(self) -> Digest:
        """What failed first and why, and what the records could not show."""
        return digest(self.results, self.flagged,
                      RecordFacts.of(self.context.all_records, len(self.context.left_out)))

    @property
    def flagged(self) -> set[str]:
        """The records (by label) the results' findings name."""
        labels = set(self.context.labels)
        return {f.record for r in self.results for f in r.findings if f.record in labels}

    @cached_property
    def verdicts(self) -> dict[int, CheckResult]:
        """Each record's own verdict (``checks.plausibility``), made once, on first use (the
        report and ``compare`` show them; the table does not need them)."""
        return judge(self.context, self.results)


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


def teacher_force(ctx: CheckContext, console: Console, enabled: bool = True,
                  order: ConventionFit | None = None) -> ConventionFit:
    """Load the reference model, find the sampling order where the options leave it unset,
    and score every record under it, with spinners and a bar. ``order``: the order a set's
    first chunk found, for its later chunks: the chosen one and those it could not rule out,
    which judge a token outside the chosen order's support as the first chunk's do."""
    if not getattr(ctx.scorer, "remote", False):  # a cluster's workers load their own
        with spinner(console, f"loading the reference model ({ctx.ref.spec})…", enabled), \
                timed("load the reference"):
            ctx.ref.model  # noqa: B018 - cached property: loads the weights now, under the spinner
        device = ctx.ref.model.get_output_embeddings().weight.device
        if device.type == "cuda":
            import torch  # loaded with the model already

            watch(str(torch.cuda.get_device_properties(device).uuid))
    plan_compile(ctx.total_tokens())  # before the first scoring call: the order search scores
    given = ctx.options.convention
    if order is not None:
        fit = order
        ctx.use_convention(order.chosen, order.undecided, {})
    elif given:
        fit = ConventionFit(given, False)
    else:
        with spinner(console, "finding the sampling order…", enabled), timed("sampling order"):
            fit, scored = find_convention(ctx)
        ctx.use_convention(fit.chosen, fit.undecided, scored)
    with bar(console, "teacher forcing", len(ctx.records), enabled) as advance, \
            timed("teacher forcing"):
        ctx.prefetch(advance)
    return fit


@dataclass
class Engine:
    """Where a run scores: the reference, the scorer (here, torchrun's ranks or a Dask cluster)
    and this process's rank; opened once for all the chunks of a large run."""

    ref: Reference
    scorer: Scorer
    rank: int = 0
    cluster: object | None = None

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.close()  # type: ignore[attr-defined]
        if self.scorer is not score and sys.exc_info()[0] is None:
            # not while an error unwinds: a rank that died would never reach the barrier
            from servecheck.reference.parallel import leave_group

            leave_group()


def open_engine(options: CheckOptions, reference: Reference | None = None) -> Engine:
    """The reference on its device and the scorer the options and the environment ask for."""
    scorer, rank = _scorer()
    device = options.device
    if device and device != "cpu" and not _has_cuda():
        raise InputError(f"--device {device}: this machine has no CUDA GPU")
    if scorer is not score and device in (None, "cuda") and _has_cuda():
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
    ref = reference or Reference(options.reference, dtype=options.dtype,
                                 device=device or ("cuda" if _has_cuda() else "cpu"))
    if not options.dask:
        return Engine(ref, scorer, rank)
    from servecheck.reference.dask_scoring import DaskScorer, open_client

    on_gpus = options.dask.startswith("local-gpu")  # each worker sees its one card as cuda
    cluster = DaskScorer(open_client(options.dask), options.dtype,
                         "cuda" if on_gpus else device or "cpu")
    return Engine(ref, cluster, rank, cluster)


@dataclass
class Scored:
    """A run's records rendered, screened and teacher-forced: what its checks read."""

    context: CheckContext
    screened: dict
    convention: ConventionFit


def score_records(records: list[ResponseRecord], options: CheckOptions, engine: Engine,
                  console: Console | None = None, progress: bool = False, first_index: int = 0,
                  order: ConventionFit | None = None) -> Scored:
    """The first half of ``check``: the context (render, tokenize), the screening, the order
    search and teacher forcing. Apart so that a chunked run can check one chunk while the GPU
    scores the next (``workflows.finisher``)."""
    with timed("context (render, tokenize)"):
        ctx = CheckContext(records, engine.ref, options, engine.scorer, first_index)
        screened = screen(ctx)  # before the order search: a broken record tips no verdict
    fit = teacher_force(ctx, console or Console(quiet=True), progress and console is not None,
                        order)
    return Scored(ctx, screened, fit)


def run_scored(scored: Scored, rank: int = 0, pooled: bool = False) -> CheckRun:
    """The second half of ``check``: every check of records ``score_records`` scored."""
    with timed("checks"):
        results = run_checks(scored.context, screened=scored.screened, pooled=pooled)
        evidence = pooled_evidence(scored.context) if pooled else {}
    return CheckRun(scored.context, results, scored.convention, rank, evidence)


def check(responses: Path | list[ResponseRecord], options: CheckOptions | None = None,
          console: Console | None = None, progress: bool = False,
          reference: Reference | None = None,
          max_record_bytes: int = MAX_RECORD_BYTES, engine: Engine | None = None,
          first_index: int = 0, pooled: bool = False, order: ConventionFit | None = None
          ) -> CheckRun:
    """Every check of ``responses`` (a responses file, or records) against the reference.

    ``reference``: a reference already loaded (for ``options.reference``), to check many files
    without loading it again; by default it is loaded from the options. A record in the file
    over ``max_record_bytes`` is refused by name (memory stays bounded). ``engine``: one opened
    by the caller and left open (the chunks of one run); ``first_index``: where these records
    start in a larger set, for naming records without an id; ``pooled``: these records are a
    chunk of a set, and the checks that pool over its chunks give evidence, not results;
    ``order``: the sampling order the set's first chunk found (``teacher_force``)."""

    options = options or CheckOptions()
    records = read_records(responses, max_record_bytes) if isinstance(responses, Path) \
        else list(responses)
    own = engine is None
    engine = engine or open_engine(options, reference)
    try:
        scored = score_records(records, options, engine, console, progress, first_index, order)
        return run_scored(scored, engine.rank, pooled)
    finally:
        if own:
            engine.close()
