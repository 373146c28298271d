"""Cache check: are outputs after a prefix-cache hit as good as those after a miss?

A server with automatic prefix caching reuses the keys and values of an earlier prompt that
starts the same way, and says how many prompt tokens it reused (``usage.cached_tokens``). A
correct cache changes only the order of float sums; one that restores the wrong keys or values
(a lookup keyed too loosely, a block table off by one, a stale entry) conditions the hit on
another request's context, and only the hits go wrong: pooled with the misses, the greedy, fit
and log-probs checks see it diluted and cannot say where it comes from.

Here the tokens of hits (cached_tokens > 0) and of misses (0) are compared by the evidence the
other checks read (``checks.core.token_evidence``: greedy mismatches, quantile residuals, served
log-prob |Δ|), one-sided towards "hits worse", each test with its floor, one Holm family at the
check's share of α. Hits and misses are compared within each side of the checkpoint's sliding
window, so that hits, often the longer prompts, are not blamed for what the context does (the
context check's finding). A failure is named only where the misses are within numerics; where
they are off too, the other checks have the finding (INCONCLUSIVE). A set checked in chunks
keeps each record's ``cached_tokens`` and reads the context check's pooled tokens
(``checks.core.token_pool``): the row is decided once over the set, as one process decides it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.fit_evidence import FIT, FitEvidence, fit_evidence
from servecheck.checks.core.options import CheckOptions
from servecheck.checks.core.registry import Pooling, alpha_share, check
from servecheck.checks.core.results import CheckResult, Finding
from servecheck.checks.core.seed_tests import SEEDS, SeedEvidence, seed_evidence, seeds_ignored
from servecheck.checks.core.stats import holm
from servecheck.checks.core.token_evidence import (
    ComparedDetails,
    Side,
    TokenEvidence,
    compare,
    describe_off,
    off_records,
)
from servecheck.checks.core.token_pool import CONTEXT, TokenPool, token_pool

NAME = "cache"
CAUSE = ("outputs after a prefix-cache hit differ from cache misses beyond numerics: the prefix "
         "cache restores wrong keys/values")


@dataclass(frozen=True)
class CacheDetails(ComparedDetails):
    """``sides``: ``hits`` and ``misses`` (every token of each)."""

    hits: int = 0
    misses: int = 0
    named: bool = False
    """The hits are worse and the misses within numerics: the cause is the cache."""

    def likely_cause(self) -> str | None:
        return CAUSE if self.named else None


@dataclass(frozen=True, eq=False)
class CacheEvidence:
    """Per kept record (the context check's rows, in set order), the prompt tokens its server
    says it reused (``usage.cached_tokens``; -1 where it does not say)."""

    cached: np.ndarray

    def merge(self, *later: CacheEvidence) -> CacheEvidence:
        return CacheEvidence(np.concatenate([e.cached for e in (self, *later)]))


def cache_evidence(ctx: CheckContext) -> CacheEvidence:
    said = [ctx.records[i].usage.cached_tokens if ctx.records[i].usage is not None else None
            for i in ctx.kept()]
    return CacheEvidence(np.array([-1 if c is None else c for c in said], dtype=np.int64))


def decide(found: CacheEvidence, options: CheckOptions, pool: TokenPool, fit: FitEvidence,
           seeds: SeedEvidence) -> list[CheckResult]:
    """The cache row of a run's, or a chunked set's, records: their tokens (the context check's
    ``TokenPool``) of distinct draws (the fit's), one Holm family at the check's share of α."""
    reported = found.cached >= 0
    if not reported.any():
        return [CheckResult(NAME, "skipped", "no record reports usage.cached_tokens (prompt_"
                            "tokens_details): hits and misses cannot be told apart")]
    hits, misses = reported & (found.cached > 0), reported & (found.cached == 0)
    if not hits.any() or not misses.any():
        return [CheckResult(NAME, "skipped", (
            f"{'none' if not hits.any() else 'every one'} of the {int(reported.sum())} records "
            f"reporting cached_tokens is a prefix-cache hit: nothing to compare "
            f"{'misses' if not hits.any() else 'hits'} with"))]
    ev = pool.evidence(fit.draws(seeds_ignored(seeds, options)).keep)
    return [_judge(found, pool, ev, hits, misses, options)]


@check(NAME, order=79, kind="statistical", alpha_share=0.02,
       catches="a prefix cache that restores wrong keys or values on a hit",
       needs=("usage.cached_tokens (prompt_tokens_details) from a server with prefix caching, "
              "with both hits and misses: repeat some prompts, not all"),
       pooling=Pooling(cache_evidence, decide, reads=(CONTEXT, FIT, SEEDS)))
def run(ctx: CheckContext) -> list[CheckResult]:
    return decide(cache_evidence(ctx), ctx.options, token_pool(ctx), fit_evidence(ctx),
                  seed_evidence(ctx))


def _judge(found: CacheEvidence, pool: TokenPool, ev: TokenEvidence, hits: np.ndarray,
           misses: np.ndarray, options: CheckOptions) -> CheckResult:
    is_hit, is_miss = hits[ev.record], misses[ev.record]
    window = pool.window
    strata = {"all positions": np.ones(len(ev.record), bool)} if window is None else \
        {f"before position {window}": ev.position < window,
         f"past position {window}": ev.position >= window}
    tol = options.tolerances.logprob
    tests = [t for where, m in strata.items()
             for t in compare(ev, is_hit & m, is_miss & m, f"hits vs misses, {where}", tol)]
    alpha = options.alpha * alpha_share(NAME)
    n_hits, n_misses = int(hits.sum()), int(misses.sum())
    details = CacheDetails(alpha, {"hits": Side.of(ev, is_hit), "misses": Side.of(ev, is_miss)},
                           tuple(tests), n_hits, n_misses)
    counts = f"{n_hits} hit(s), {n_misses} miss(es)"
    if not tests:
        return CheckResult(NAME, "skipped", f"{counts}: too few tokens of any kind on both "
                           f"sides to compare", details)
    holm(tests, alpha)
    failed = [t for t in tests if t.failed]
    if not failed:
        return CheckResult(NAME, "pass", f"{counts}: outputs after a hit are no worse than "
                           f"after a miss", details)
    if not details.sides["misses"].clean(options.tolerances):
        return CheckResult(NAME, "inconclusive", (
            f"{counts}: hits are worse than misses, but the misses are already off (the greedy, "
            f"fit or log-probs checks' finding): the cache cannot be told apart from it"),
            details)
    details = replace(details, named=True)
    worst = [Finding(pool.labels[i], f"after a hit of {found.cached[i]} cached prompt tokens: "
                     f"{describe_off(wrong, mean)}", wrong + (mean or 0.0))
             for i, _, wrong, mean in off_records(ev, is_hit, tol)]
    return CheckResult(NAME, "fail", CAUSE, details,
                       [Finding(t.group, t.describe(), 10.0 + abs(t.effect) / t.floor)
                        for t in failed] + worst)
