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
they are off too, the other checks have the finding (INCONCLUSIVE).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.registry import check
from servecheck.checks.core.results import CheckResult, Finding
from servecheck.checks.core.stats import holm
from servecheck.checks.core.token_evidence import (
    ComparedDetails,
    Side,
    TokenEvidence,
    compare,
    describe_off,
    off_records,
    sliding_window,
    token_evidence,
)

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


@check(NAME, order=79, kind="statistical", alpha_share=0.02,
       catches="a prefix cache that restores wrong keys or values on a hit",
       needs=("usage.cached_tokens (prompt_tokens_details) from a server with prefix caching, "
              "with both hits and misses: repeat some prompts, not all"))
def run(ctx: CheckContext) -> list[CheckResult]:
    return [check_cache(ctx)]


def check_cache(ctx: CheckContext) -> CheckResult:
    cached = {i: ctx.records[i].usage.cached_tokens for i in ctx.kept()
              if ctx.records[i].usage is not None and ctx.records[i].usage.cached_tokens is not None}
    if not cached:
        return CheckResult(NAME, "skipped", "no record reports usage.cached_tokens (prompt_tokens_"
                           "details): hits and misses cannot be told apart")
    hits = {i for i, c in cached.items() if c > 0}
    misses = set(cached) - hits
    if not hits or not misses:
        return CheckResult(NAME, "skipped", (
            f"{'none' if not hits else 'every one'} of the {len(cached)} records reporting "
            f"cached_tokens is a prefix-cache hit: nothing to compare "
            f"{'misses' if not hits else 'hits'} with"))
    ev = token_evidence(ctx)
    is_hit, is_miss = np.isin(ev.record, list(hits)), np.isin(ev.record, list(misses))
    window = sliding_window(ctx)
    strata = {"all positions": np.ones(len(ev.record), bool)} if window is None else \
        {f"before position {window}": ev.position < window,
         f"past position {window}": ev.position >= window}
    tol = ctx.tolerances.logprob
    tests = [t for where, m in strata.items()
             for t in compare(ev, is_hit & m, is_miss & m, f"hits vs misses, {where}", tol)]
    alpha = ctx.check_alpha(NAME)
    details = CacheDetails(alpha, {"hits": Side.of(ev, is_hit), "misses": Side.of(ev, is_miss)},
                           tuple(tests), len(hits), len(misses))
    counts = f"{len(hits)} hit(s), {len(misses)} miss(es)"
    if not tests:
        return CheckResult(NAME, "skipped", f"{counts}: too few tokens of any kind on both "
                           f"sides to compare", details)
    holm(tests, alpha)
    failed = [t for t in tests if t.failed]
    if not failed:
        return CheckResult(NAME, "pass", f"{counts}: outputs after a hit are no worse than "
                           f"after a miss", details)
    if not details.sides["misses"].clean(ctx):
        return CheckResult(NAME, "inconclusive", (
            f"{counts}: hits are worse than misses, but the misses are already off (the greedy, "
            f"fit or log-probs checks' finding): the cache cannot be told apart from it"),
            details)
    details = replace(details, named=True)
    return CheckResult(NAME, "fail", CAUSE, details,
                       [Finding(t.group, t.describe(), 10.0 + abs(t.effect) / t.floor)
                        for t in failed] + _worst_hits(ctx, ev, hits, cached))


def _worst_hits(ctx: CheckContext, ev: TokenEvidence, hits: set[int], cached: dict[int, int]
                ) -> list[Finding]:
    """The hits whose tokens are off: hard mismatches, or log-prob |Δ| beyond the tolerance."""
    return [Finding(ctx.labels[i], f"after a hit of {cached[i]} cached prompt tokens: "
                    f"{describe_off(wrong, mean)}", wrong + (mean or 0.0))
            for i, _, wrong, mean in off_records(ctx, ev, np.isin(ev.record, list(hits)))]
