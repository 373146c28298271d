"""Stage 4, the checks: each takes the records and the reference and returns its verdicts.

Every module of this package is one check, declared with ``@check`` beside its ``run``
(``checks.core.registry``); the machinery they share is ``checks.core``. Adding a check is
adding its file here, or registering one from another package through the entry-point group
``servecheck.checks`` (docs/extending.md): the table, the report, JUnit and the per-record
verdict read its spec and its typed details.
"""

from __future__ import annotations

from dataclasses import replace

from servecheck.checks.core.attribution import attribute
from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.options import CheckOptions
from servecheck.checks.core.registry import Evidence, find, pooled_specs, table_specs
from servecheck.checks.core.results import CheckResult
from servecheck.checks.core.structured import TEXT_ONLY_GRAMMAR

__all__ = ["Screened", "decide_pooled", "pooled_evidence", "run_checks", "screen"]

Screened = dict[str, list[CheckResult]]
"""The screening checks' results, by check name."""


def screen(ctx: CheckContext) -> Screened:
    """Run the screening checks (template, termination, detokenization) and leave the records
    they fail out of the statistical checks: an output cut mid-word is the termination check's
    finding, and its last token, scored as if sampled, would also fail greedy, support and
    temperature, and could tip the sampling order the whole file is scored under. Each such
    record is named where it fails, and ``ctx.left_out`` says why it is left out; so is a
    structured output without token ids, which only the grammar check judges."""
    done = {s.name: s.run(ctx) for s in table_specs() if s.screens}
    reasons: dict[str, list[str]] = {}
    for results in done.values():
        for r in results:
            if r.verdict == "fail":
                for f in r.findings:
                    reasons.setdefault(f.record, []).append(r.name)
    for i in ctx.structured.text_only():
        reasons.setdefault(ctx.labels[i], []).append(TEXT_ONLY_GRAMMAR)
    ctx.leave_out(reasons)
    return done


def run_checks(ctx: CheckContext, screened: Screened | None = None, pooled: bool = False
               ) -> list[CheckResult]:
    """Every check's results, in table order (``screened``: what ``screen`` returned, when it
    ran before the scoring; else it runs first here). ``pooled``: this run is a chunk of a
    larger set, and the checks that pool their evidence over the chunks (``pooled_evidence``)
    are left to the set."""
    if screened is None:
        screened = screen(ctx)
    # one process is one chunk: its pooled checks decide on its own evidence, each reduced once
    evidence = {} if pooled else pooled_evidence(ctx)
    out = []
    for spec in table_specs():
        if spec.pooling is not None:
            out += [] if pooled else decide_one(spec.name, evidence, ctx.options)
            continue
        out += [replace(r, statistical=spec.kind == "statistical")
                for r in screened.get(spec.name) or spec.run(ctx)]
    return attribute(out)


def pooled_evidence(ctx: CheckContext) -> dict[str, Evidence]:
    """A chunk's evidence for each check that pools it over the chunks of a set, by check."""
    return {s.name: s.pooling.reduce(ctx) for s in pooled_specs() if s.pooling is not None}


def decide_pooled(evidence: dict[str, Evidence], options: CheckOptions) -> list[CheckResult]:
    """The pooled checks' results on a set's merged evidence, each at its share of the run's
    α (``options``: the run's, not a chunk's)."""
    return [r for name in evidence for r in decide_one(name, evidence, options)]


def decide_one(name: str, evidence: dict[str, Evidence], options: CheckOptions
               ) -> list[CheckResult]:
    """Check ``name``'s results on ``evidence`` (every pooled check's, which it may read)."""
    spec = find(name)
    pooling = spec.pooling
    assert pooling is not None
    return [replace(r, statistical=spec.kind == "statistical") for r in
            pooling.decide(evidence[name], options, *(evidence[n] for n in pooling.reads))]
