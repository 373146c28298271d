"""Seed designs that break the pooled tests' independence, and what they cost.

The pooled tests assume that every served token is a fresh draw. Two designs users run break it:

- **Repeated requests.** The same prompt, parameters and seed sent twice is one draw: a seeded
  engine rightly answers it with the same text. ``distinct_draws`` keeps one record of each.
- **Shared seeds.** The original notes' matrix crosses one seed list with every prompt, so all
  prompts sent with seed s read the engine's one random stream. Their PIT values at the same output
  position correlate (llama.cpp: +0.06 with the same seed, −0.007 with distinct ones). With m
  records on a stream and correlation ρ, a sum's variance grows by the design effect
  1 + (m − 1)·ρ (Kish), so each test counts its tokens as 1/deff of their number.

ρ is estimated from the data: the mean product of centred PIT values over pairs of records that
share a seed and an output position, with a one-sided 95% upper bound (under independence each
product has variance 1/144). A correct server's PIT values are uniform, so the estimate measures
the stream's correlation and nothing else; on a faulty one it is only the correction's size.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from servecheck.checks.context import CheckContext
from servecheck.reference.scoring import TokenScores

MIN_PAIRS = 50
"""Fewer pairs than this estimate nothing: ρ is then taken as ``RHO_PRIOR``."""
RHO_PRIOR = 0.1
"""The correlation assumed when there are too few pairs to measure it (above what llama.cpp
showed, +0.06)."""


def distinct_draws(ctx: CheckContext, indices: list[int]) -> list[int]:
    """``indices`` less repeats of an identical seeded request (same conversation, parameters
    and seed): the first record of each stands for it. Unseeded repeats are separate draws."""
    seen: set[str] = set()
    out = []
    for i in indices:
        r = ctx.records[i]
        if r.parameters.seed is None:
            out.append(i)
            continue
        key = r.conversations.model_dump_json() + r.parameters.model_dump_json() + \
            str(r.choice)  # the n choices of one request are separate draws
        if key not in seen:
            seen.add(key)
            out.append(i)
    return out


@dataclass(frozen=True)
class SeedDesign:
    records_per_seed: float
    """Mean number of distinct prompts a record shares its seed with, itself included."""
    pairs: int
    """Same-seed, same-position token pairs the correlation was estimated from."""
    rho: float
    """Estimated correlation of PIT values on a shared stream (NaN: too few pairs)."""
    rho_upper: float
    deff: float
    """Design effect: each pooled test counts its tokens as 1/deff of their number."""

    @property
    def shared(self) -> bool:
        return self.records_per_seed > 1

    def describe(self) -> str:
        if not self.shared:
            return "every seed is used once: tokens are independent draws"
        rho = "too few pairs to measure" if np.isnan(self.rho) else \
            f"{self.rho:+.3f}, ≤ {self.rho_upper:.3f} at 95%"
        return (f"seeds are shared: {self.records_per_seed:.1f} records a seed; correlation on "
                f"a shared stream {rho} over {self.pairs} pairs; the tests count tokens at "
                f"1/{self.deff:.2f} (the power of {100 / self.deff:.0f}% as many independent "
                f"draws)")

    def to_json(self) -> dict[str, float | int | bool]:
        return {"shared": self.shared, "records_per_seed": self.records_per_seed,
                "pairs": self.pairs, "rho": None if np.isnan(self.rho) else self.rho,
                "rho_upper": self.rho_upper, "design_effect": self.deff}


INDEPENDENT = SeedDesign(1.0, 0, float("nan"), 0.0, 1.0)


def seed_design(ctx: CheckContext, scores: dict[int, TokenScores]) -> SeedDesign:
    """How much the records of ``scores`` (sampled, distinct draws) share random streams."""
    by_seed: dict[int, list[int]] = defaultdict(list)
    for i in scores:
        seed = ctx.records[i].parameters.seed
        if seed is not None:
            by_seed[seed].append(i)
    sizes = [len(v) for v in by_seed.values()]
    if not sizes or max(sizes) < 2:
        return INDEPENDENT
    m = float(np.sum(np.square(sizes)) / np.sum(sizes))  # a record's view: the size of its stream
    total, pairs = 0.0, 0
    for members in by_seed.values():
        if len(members) < 2:
            continue
        longest = max(len(scores[i].stats["pit"]) for i in members)
        cells = np.full((len(members), longest), np.nan)
        for row, i in enumerate(members):
            pit = scores[i].stats["pit"]
            cells[row, :len(pit)] = np.where(np.isfinite(scores[i].stats["logq"]), pit - 0.5,
                                             np.nan)
        have = np.isfinite(cells)
        x = np.nan_to_num(cells)
        n = have.sum(0)
        total += float(((x.sum(0) ** 2 - (x * x).sum(0)) / 2).sum())
        pairs += int((n * (n - 1) // 2).sum())
    if pairs < MIN_PAIRS:
        return SeedDesign(m, pairs, float("nan"), RHO_PRIOR, 1 + (m - 1) * RHO_PRIOR)
    rho = total / pairs * 12
    upper = min(1.0, max(0.0, rho + 1.645 / np.sqrt(pairs)))
    return SeedDesign(m, pairs, rho, upper, 1 + (m - 1) * upper)
