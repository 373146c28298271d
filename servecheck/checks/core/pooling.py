"""Where the evidence of sampled tokens is: the informative positions (q neither one-hot nor
zero at the served token), pooled over a parameter group's records. The fit, temperature and
sampler checks and the per-record verdict all count the same positions.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.shared_seeds import distinct_draws
from servecheck.reference.sampling import Sampling
from servecheck.reference.token_scores import TokenScores

TRIVIAL = 1 - 1e-6


MIN_SAMPLED_TOKENS = 100
"""Informative sampled tokens of a whole file below which neither the sampler nor the
temperature row judges (the sampler's estimates need them; the two rows read the same tokens
and say the same)."""


def informative(s: TokenScores) -> np.ndarray:
    """Positions that carry evidence: the served token has finite q and q is not one-hot."""
    return np.isfinite(s.stats["logq"]) & (s.stats["top"] < TRIVIAL)


def record_z(s: TokenScores) -> float:
    """One record's log-likelihood z (the group test's statistic on a single output)."""
    m = informative(s)
    sd = float(np.sqrt(s.stats["var"][m].sum()))
    return float((s.stats["logq"][m] + s.stats["entropy"][m]).sum() / sd) if sd > 0 else 0.0


def sampled_groups(ctx: CheckContext) -> dict[Sampling, list[int]]:
    """Sampled records by parameter group: the unit every distribution test pools over."""
    groups: dict[Sampling, list[int]] = defaultdict(list)
    for i in distinct_draws(ctx, ctx.sampled()):
        groups[ctx.sampling[i]].append(i)
    return dict(groups)
