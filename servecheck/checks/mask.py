"""Mask check: did the server's grammar mask take away what the grammar allows?

An over-constrained mask (offline comparisons of engines' masks find many) passes the grammar
check: every token it lets through is one the grammar allows. What it loses is tokens a correct
server would draw. The freedom masks most often lose is whitespace: between JSON tokens where a
layout allows it, and inside strings, where every layout does. So each sampled structured
output, scored under the masks of the tightest layout the records fit
(``checks.core.structured``), says at each position how much of the masked, renormalised
reference mass lay on whitespace tokens (``TokenScores.stats["watched"]``). Summed over the
positions where the grammar leaves whitespace a choice (not a literal's forced newline), that
is how many whitespace tokens a correct server would have drawn; a server that drew far fewer is
over-constrained. The count is tested like a truncation tail: a one-sided Poisson-binomial
tail (scipy) at the check's share of α, with a floor on the shortfall (half the expected count)
so that numerics at scale are never a finding. Repeats of one seeded request are one draw
(``shared_seeds.distinct_draws``); greedy outputs are the greedy check's (their argmax is
taken under the same masks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.fit_evidence import FIT, FitEvidence, fit_evidence
from servecheck.checks.core.options import CheckOptions
from servecheck.checks.core.registry import Pooling, alpha_share, check
from servecheck.checks.core.results import CheckResult, Details
from servecheck.checks.core.seed_tests import SEEDS, SeedEvidence, seed_evidence, seeds_ignored
from servecheck.checks.core.stats import StatTest

NAME = "mask"
FLOOR = 0.5
"""The shortfall a failure needs: fewer than half the whitespace a correct server draws."""
FORCED = 1e-6
"""A position whose whitespace mass is this close to 0 or 1 leaves the mask no choice (a
literal of the grammar): it says nothing of the mask, so it is not counted."""
CAUSE = ("the server's grammar mask forbids whitespace the grammar allows (over-constrained: "
         "a mask built with whitespace removed, or a tokenizer table missing those tokens)")


@dataclass(frozen=True)
class MaskDetails(Details):
    records: int
    positions: int
    expected: float
    """Whitespace tokens a correct server would draw at these positions, on average."""
    drawn: int
    test: StatTest
    alpha: float

    def tests(self) -> list[StatTest]:
        return [self.test]

    def family(self) -> tuple[float, int | None]:
        return self.alpha, 1

    def effect(self) -> str:
        return f"{self.drawn} whitespace tokens drawn, {self.expected:.1f} expected"

    def likely_cause(self) -> str | None:
        return CAUSE if self.test.failed else None


@dataclass(frozen=True, eq=False)
class MaskEvidence:
    """Per sampled record (the fit's rows, in set order), whether it is a structured output,
    and per token of those its masked whitespace mass and whether the served token is
    whitespace: the Poisson-binomial tail reads every position, so chunks concatenate them
    (about 5 bytes a token of a structured output) and the draws are the fit's."""

    grammared: np.ndarray
    tokens: np.ndarray
    watched: np.ndarray
    """float32, as scored."""
    served: np.ndarray

    def merge(self, *later: MaskEvidence) -> MaskEvidence:
        pieces = (self, *later)
        return MaskEvidence(*(np.concatenate([getattr(e, f) for e in pieces])
                              for f in ("grammared", "tokens", "watched", "served")))


def mask_evidence(ctx: CheckContext) -> MaskEvidence:
    rows = ctx.sampled()
    grammared = set(ctx.structured.indices())
    mine = [i for i in rows if i in grammared]
    scores = ctx.scores(mine)
    watch = ctx.structured.masks(mine[0])[1] if mine else None
    flags = np.array([i in grammared for i in rows], dtype=bool)
    n = np.array([len(scores[i]) if i in grammared else 0 for i in rows], dtype=np.int64)
    watched = [scores[i].stats["watched"].astype(np.float32) for i in mine]
    served = [watch[scores[i].token_ids] for i in mine] if watch is not None else []
    return MaskEvidence(flags, n, np.concatenate(watched) if watched else
                        np.zeros(0, dtype=np.float32),
                        np.concatenate(served).astype(bool) if served else np.zeros(0, dtype=bool))


def decide(found: MaskEvidence, options: CheckOptions, fit: FitEvidence, seeds: SeedEvidence
           ) -> list[CheckResult]:
    """The mask row of a run's, or a chunked set's, structured outputs: their distinct draws
    (the fit's, ``FitEvidence.draws``), one tail test at the check's share of α."""
    draws = fit.draws(seeds_ignored(seeds, options))
    rows = draws.keep & found.grammared
    if not rows.any():
        return [CheckResult(NAME, "skipped", "no sampled structured output (temperature > 0 with "
                            "a response_format or structured_outputs) to weigh a mask by")]
    at = np.repeat(rows, found.tokens)
    p, served = found.watched[at].astype(np.float64), found.served[at]
    records = int(rows.sum())
    free = (p > FORCED) & (p < 1 - FORCED)  # where the mask left a choice either way
    p, drawn = np.clip(p[free], 0.0, 1.0), int(served[free].sum())
    expected = float(p.sum())
    from scipy.stats import poisson_binom  # scipy 1.15+, only where structured outputs are
    pval = float(poisson_binom(p).cdf(drawn)) if len(p) else 1.0
    alpha = options.alpha * alpha_share(NAME)
    short = drawn / expected - 1.0 if expected > 0 else 0.0
    test = StatTest("structured outputs", "whitespace drawn vs the masked reference (lower tail)",
                    pval, short, FLOOR, "drawn/expected-1", len(p), kind="mask",
                    p_adjusted=pval, rejected=pval < alpha)
    details = MaskDetails(records, len(p), expected, drawn, test, alpha)
    said = (f"{drawn} whitespace tokens drawn where a correct server draws {expected:.1f} on "
            f"average ({records} sampled outputs under a grammar, {len(p)} tokens where the "
            f"mask leaves whitespace a choice; P = {pval:.2g})")
    if test.failed:
        return [CheckResult(NAME, "fail", f"over-constrained: {said}: {CAUSE}", details)]
    if float(np.log1p(-p).sum()) >= np.log(alpha):  # none drawn would still pass
        return [CheckResult(NAME, "pass", f"{said}: too little freedom to tell a mask that "
                            f"forbids whitespace from a correct one (ask for free text inside "
                            f"the JSON: strings with spaces)", details)]
    return [CheckResult(NAME, "pass", f"{said}: the mask leaves the whitespace the grammar "
                        f"allows; a mask that forbids it would have failed", details)]


@check(NAME, order=77, kind="statistical", alpha_share=0.02,
       catches=("an over-constrained grammar mask: whitespace a schema allows (between JSON "
                "tokens, inside strings) never drawn"),
       needs="sampled requests (temperature > 0) with a response_format or structured_outputs",
       pooling=Pooling(mask_evidence, decide, reads=(FIT, SEEDS)))
def run(ctx: CheckContext) -> list[CheckResult]:
    return decide(mask_evidence(ctx), ctx.options, fit_evidence(ctx), seed_evidence(ctx))
