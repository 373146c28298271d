"""Seed designs that break the pooled tests' independence, and what they cost.

The pooled tests assume that every served token is a fresh draw. Two designs users run break it:

- **Repeated requests.** The same prompt, parameters and seed sent twice is one draw: a seeded
  engine rightly answers it with the same text. ``distinct_draws`` keeps one record of each.
- **Shared seeds.** The original notes' matrix crosses one seed list with every prompt, so all
  prompts sent with seed s read the engine's one random stream. Their PIT values at the same output
  position correlate (llama.cpp: +0.06 with the same seed, −0.007 with distinct ones). With m
  records on a stream and correlation ρ, a sum's variance grows by the design effect
  1 + (m − 1)·ρ (Kish), so each test counts its tokens as 1/deff of their number.

ρ is estimated from the data: the mean product of PIT values (centred on their mean, ½ for a
correct server) over pairs of records that share a seed and an output position, less the same
over pairs on different seeds at that position, over their variance, with a one-sided 95%
upper bound (under independence each product has variance 1/144). The difference measures what
a stream shares and nothing else: a server whose PIT values all sit low (greedy decoding where
sampling was asked) makes every pair's product positive, and read against ½ alone that looked
like one shared stream, which then hid the fault. Where the seed looks ignored (the seeds
check), every record is taken to read one stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.seed_tests import digest, seed_tests
from servecheck.formats.records import ResponseRecord
from servecheck.reference.token_scores import TokenScores

MIN_PAIRS = 50
"""Fewer pairs than this estimate nothing: ρ is then taken as ``RHO_PRIOR``."""
RHO_PRIOR = 0.1
"""The correlation assumed when there are too few pairs to measure it (above what llama.cpp
showed, +0.06)."""


def draw_keys(r: ResponseRecord) -> tuple[str, str] | None:
    """A seeded record's draw keys (None unseeded): the request with its seed, and the request
    without it with the text served, each as a 128-bit digest (a pooled set keeps one pair a
    record). Records sharing the first are one draw; where the seed looks ignored, so are
    records sharing the second."""
    if r.parameters.seed is None:
        return None
    request = r.conversations.model_dump_json() + str(r.choice)  # n choices: separate draws
    return (digest(request + r.parameters.model_dump_json()),
            digest(request + r.parameters.model_copy(update={"seed": None}).model_dump_json()
                    + "\x00" + r.output))


def first_draws(keys: list[tuple[str, str] | None], ignored: bool) -> list[bool]:
    """Per record (in set order, by its ``draw_keys``), whether it is the first of its draw."""
    seen: set[str] = set()
    out = []
    for k in keys:
        key = None if k is None else k[1] if ignored else k[0]
        out.append(key is None or key not in seen)
        if key is not None:
            seen.add(key)
    return out


def distinct_draws(ctx: CheckContext, indices: list[int]) -> list[int]:
    """``indices`` less repeats of an identical seeded request (same conversation, parameters
    and seed): the first record of each stands for it. Unseeded repeats are separate draws.
    Where the seed looks ignored (``seeds.seed_tests``), requests that differ only in their
    seed and came back with one text are one draw too: the server drew it once."""
    first = first_draws([draw_keys(ctx.records[i]) for i in indices], seed_tests(ctx).ignored)
    return [i for i, keep in zip(indices, first, strict=True) if keep]


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
    one_stream: bool = False
    """The seed looks ignored, so every record was taken to read one stream."""

    @property
    def shared(self) -> bool:
        return self.records_per_seed > 1

    def describe(self) -> str:
        if not self.shared:
            return "every seed is used once: tokens are independent draws"
        if self.one_stream:
            rho = "too few pairs to measure" if np.isnan(self.rho) else \
                f"{self.rho:+.3f}, ≤ {self.rho_upper:.3f} at 95%"
            return (f"the seed looks ignored (the seeds row), so every record is taken to read "
                    f"one random stream; correlation on it {rho} over {self.pairs} pairs; the "
                    f"tests count tokens at 1/{self.deff:.2f}")
        rho = "too few pairs to measure" if np.isnan(self.rho) else \
            f"{self.rho:+.3f}, ≤ {self.rho_upper:.3f} at 95%"
        return (f"seeds are shared: {self.records_per_seed:.1f} records a seed; correlation on "
                f"a shared stream {rho} over {self.pairs} pairs; the tests count tokens at "
                f"1/{self.deff:.2f} (the power of {100 / self.deff:.0f}% as many independent "
                f"draws)")

    def to_json(self) -> dict[str, float | int | bool]:
        return {"shared": self.shared, "records_per_seed": self.records_per_seed,
                "pairs": self.pairs, "rho": None if np.isnan(self.rho) else self.rho,
                "rho_upper": self.rho_upper, "design_effect": self.deff,
                "one_stream": self.one_stream}


INDEPENDENT = SeedDesign(1.0, 0, float("nan"), 0.0, 1.0)


def stream_row(s: TokenScores) -> np.ndarray:
    """A record's PIT values by output position, NaN where the served token lies outside the
    support: what the design reads of it."""
    return np.where(np.isfinite(s.stats["logq"]), s.stats["pit"], np.nan)


def seed_design(ctx: CheckContext, scores: dict[int, TokenScores],
                one_stream: bool | None = None) -> SeedDesign:
    """How much the records of ``scores`` (sampled, distinct draws) share random streams;
    ``one_stream``: whether the seed looks ignored (None: ask the seeds check's tests)."""
    ignored = seed_tests(ctx).ignored if one_stream is None else one_stream
    seeded = [(seed, stream_row(scores[i])) for i in scores
              if (seed := ctx.records[i].parameters.seed) is not None]
    if not seeded:
        return INDEPENDENT
    return design_of(np.array([seed for seed, _ in seeded], dtype=np.int64),
                     np.array([len(row) for _, row in seeded], dtype=np.int64),
                     np.concatenate([row for _, row in seeded]), ignored)


def design_of(seeds: np.ndarray, lengths: np.ndarray, rows: np.ndarray, ignored: bool
              ) -> SeedDesign:
    """The design of seeded records: each one's seed, its length, and every ``stream_row``
    concatenated in set order (flat, so that a pooled set's millions of records cost memory by
    their tokens, not a records × longest-output matrix); ``ignored``: the seed looks ignored,
    so every record reads one stream."""
    streams = np.zeros(len(seeds), dtype=np.int64) if ignored else \
        np.unique(seeds, return_inverse=True)[1].reshape(-1)
    sizes = np.bincount(streams) if len(streams) else np.zeros(0, dtype=np.int64)
    if not len(sizes) or sizes.max() < 2:
        return INDEPENDENT
    sizes = sizes[sizes > 0]
    m = float(np.sum(np.square(sizes)) / np.sum(sizes))  # a record's view: the size of its stream
    have = np.isfinite(rows)
    centre = float(rows[have].mean(dtype=np.float64)) if have.any() else 0.5  # ½, correct
    x = np.where(have, rows.astype(np.float64) - centre, 0.0)
    var = float((x * x).sum() / max(1, have.sum()))
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    position = np.arange(len(rows)) - starts
    width = int(lengths.max())

    def pair_sums(cell: np.ndarray) -> tuple[float, int]:
        """Σ of products, and count, over pairs of records in one cell (a stream's position)."""
        sums = np.bincount(cell, weights=x)
        squares = np.bincount(cell, weights=x * x)
        n = np.bincount(cell, weights=have).astype(np.int64)
        return float(((sums ** 2 - squares) / 2).sum()), int((n * (n - 1) // 2).sum())

    total, pairs = pair_sums(np.repeat(streams, lengths) * width + position)
    everyone, all_pairs = pair_sums(position)
    if pairs < MIN_PAIRS or var <= 0:
        return SeedDesign(m, pairs, float("nan"), RHO_PRIOR, 1 + (m - 1) * RHO_PRIOR, ignored)
    # the excess of same-stream products over those of records on other streams at the same
    # position: what a stream shares, not what every record at that position shares (a greedy
    # server's PIT values all sit low, and read against 1/2 alone their products look like one
    # shared stream, which then removed the evidence of the fault)
    others = all_pairs - pairs
    baseline = (everyone - total) / others if others >= MIN_PAIRS else 0.0
    rho = (total / pairs - baseline) / var
    upper = min(1.0, max(0.0, rho + 1.645 / np.sqrt(pairs)))
    return SeedDesign(m, pairs, rho, upper, 1 + (m - 1) * upper, ignored)
