"""Seed check: do requests that differ only in their seed differ as often as chance says?

A server that ignores the seed (or runs every request with seed 0 under concurrency) returns
one text for many seeds. Identical texts are not proof by themselves: a peaked distribution
makes them likely. The reference gives the probability p(y) = Π q(y_t) that a correct sampler
produces exactly the text y, so for a text seen c times among n seeded requests, the chance that
at least c - 1 of the other n - 1 independent samples equal it is a binomial tail,
``P(Bin(n - 1, p(y)) ≥ c - 1)``. The smallest tail over the distinct texts, Bonferroni-corrected,
is the test's p-value; a false alarm happens at most at rate α.

In ``check`` the test runs on the requests of the file that differ only in their seed (skipped
when there are none), two seeds being enough; ``servecheck probe`` sends a purpose-built set.
Every group is one test of a Holm family, and so is Fisher's combination of all of them, so the
check's false alarms stay at α whatever the number of groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.options import CheckOptions
from servecheck.checks.core.registry import Pooling, alpha_share, check
from servecheck.checks.core.results import CheckResult, Details, Finding, Verdict
from servecheck.checks.core.seed_tests import (
    GREEDY,
    SEEDS,
    SeedEvidence,
    SeedGroup,
    SeedTests,
    decide,
    draws,
    meaning,
    seed_evidence,
    seed_tests,
)

NAME = SEEDS


@dataclass(frozen=True)
class SeedDetails(Details):
    groups: list[SeedGroup]
    alpha: float
    pooled_p: float = 1.0
    """Fisher's combination over the groups: one more member of the Holm family."""
    rejected: tuple[bool, ...] = ()
    """Per group, whether Holm rejected it (the family holds the pooled test too)."""
    pooled_rejected: bool = False

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        del out["rejected"], out["pooled_rejected"]
        return out

    def effect(self) -> str:
        return f"{len(self.groups)} seed group(s)"

    def reason(self, verdict: Verdict) -> str | None:
        if not self.groups:
            return None
        ps = [g.p_value for g in self.groups]
        bad = sum(self.rejected)
        if bad:
            return (f"FAIL: {bad} of {len(ps)} seed group(s) repeat one text more often than a "
                    f"correct sampler would by chance (rejected by Holm at α = {self.alpha:g}).")
        if self.pooled_rejected:
            return (f"FAIL: no seed group alone, but the {len(ps)} together repeat texts more "
                    f"often than chance allows (Fisher's combination p = {self.pooled_p:.2g}, "
                    f"rejected by Holm at α = {self.alpha:g}).")
        return (f"PASS: no seed group repeats a text more often than chance allows (smallest p = "
                f"{min(ps):.2g} over {len(ps)} group(s); Holm at α = {self.alpha:g} rejects none).")


def judge(tests: SeedTests, alpha: float) -> list[CheckResult]:
    """The check's result from its tests (of one run, or of a chunked set's pooled draws)."""
    groups, results, pooled = tests.groups, tests.results, tests.pooled
    rejected, pooled_rejected, greedy = tests.rejected, tests.pooled_rejected, tests.greedy
    if not groups:
        return [CheckResult(NAME, "skipped", "no requests that differ only in their seed")]
    details = SeedDetails(results, alpha, pooled, tuple(rejected), pooled_rejected)
    findings = [Finding(r.label, f"{r.most_common} of {r.seeds} {draws(g)} gave the same text, "
                                 f"whose reference probability is {r.p_text:.2e} (p = "
                                 f"{r.p_value:.1e}): {GREEDY if greedy else meaning(g)}",
                        1 - r.p_value)
                for g, r, bad in zip(groups, results, rejected, strict=True) if bad]
    if pooled_rejected:
        repeats = sum(r.distinct < r.seeds for r in results)
        findings.append(Finding("all seed groups", f"{repeats} of {len(results)} groups repeat a "
                                f"text across seeds, more than chance allows together (Fisher "
                                f"p = {pooled:.1e}): "
                                f"{GREEDY if greedy else 'the seed looks ignored'}", 1 - pooled))
    if findings:
        return [CheckResult(NAME, "fail", f"{len(findings)}/{len(results)} seed group(s) "
                            f"repeat one text beyond chance", details, findings)]
    return [CheckResult(NAME, "pass", f"{len(results)} seed group(s): texts differ across "
                        f"seeds as often as a correct sampler's", details)]


def pooled(found: SeedEvidence, options: CheckOptions) -> list[CheckResult]:
    """The verdict on draws merged over a set's chunks, tested once at the check's α."""
    alpha = options.alpha * alpha_share(NAME)
    return judge(decide(found, alpha), alpha)


@check(NAME, order=90, kind="statistical", alpha_share=0.05,
       catches="an ignored or shared seed: one text for many seeds",
       needs="the same sampled request sent with two or more seeds",
       pooling=Pooling(seed_evidence, pooled))
def run(ctx: CheckContext) -> list[CheckResult]:
    return judge(seed_tests(ctx), ctx.check_alpha(NAME))
