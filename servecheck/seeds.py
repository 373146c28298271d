"""Seed sensitivity: do requests that differ only in their seed differ as often as chance says?

A server that ignores the seed (or runs every request with seed 0 under concurrency) returns
one text for many seeds. Identical texts are not proof by themselves: a peaked distribution
makes them likely. The reference gives the probability p(y) = Π q(y_t) that a correct sampler
produces exactly the text y, so for a text seen c times among n seeded requests, the chance that
at least c - 1 of the other n - 1 independent samples equal it is a binomial tail,
``P(Bin(n - 1, p(y)) ≥ c - 1)``. The smallest tail over the distinct texts, Bonferroni-corrected,
is the test's p-value; a false alarm happens at most at rate α.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

from servecheck.records import ResponseRecord
from servecheck.reference import Reference
from servecheck.sampling import HF, Convention, Sampling
from servecheck.scoring import ScoreItem, score


@dataclass
class SeedGroup:
    label: str
    """The shared prompt and parameters, shortened."""
    seeds: int
    distinct: int
    most_common: int
    p_text: float
    """Reference probability of the most repeated text."""
    p_value: float


def seed_groups(records: list[ResponseRecord]) -> list[list[ResponseRecord]]:
    """Sampled records that differ only in their seed, groups of at least 3 seeds."""
    groups: dict[str, list[ResponseRecord]] = defaultdict(list)
    for r in records:
        if r.error is None and r.parameters.seed is not None and \
                not Sampling.of(r.parameters).greedy:
            key = r.conversations.model_dump_json() + r.parameters.model_copy(
                update={"seed": None}).model_dump_json()
            groups[key].append(r)
    return [g for g in groups.values() if len({r.parameters.seed for r in g}) >= 3]


def repeated(group: list[ResponseRecord]) -> list[ResponseRecord]:
    """One record per text that occurs more than once: the ones whose probability is needed."""
    by_text: dict[str, list[ResponseRecord]] = defaultdict(list)
    for r in group:
        by_text[r.output].append(r)
    return [same[0] for same in by_text.values() if len(same) > 1]


def seed_test(group: list[ResponseRecord], ref: Reference, convention: Convention = HF,
              text_logprob: Callable[[ResponseRecord], float] | None = None) -> SeedGroup:
    """``text_logprob`` gives log p(y) of a record's output from scores made elsewhere (the
    check's shared, batched scores, on the tokens it chose); without it each repeated text is
    scored here, on its server ids or its canonical tokens."""
    by_text: dict[str, list[ResponseRecord]] = defaultdict(list)
    for r in group:
        by_text[r.output].append(r)
    n = len(group)
    tails, p_common, most = [], 0.0, 0
    for text, same in by_text.items():
        c = len(same)
        if c < 2:
            continue
        r = same[0]
        if text_logprob is not None:
            logp = text_logprob(r)
        else:
            prompt = r.prompt_token_ids or ref.encode(r.input or ref.render(r.conversations))
            output = r.output_token_ids or ref.encode(text)
            (s,) = score(ref, [ScoreItem(prompt, output, Sampling.of(r.parameters))], convention)
            logp = float(np.sum(s.stats["logq"])) if len(s) else 0.0
        if logp == -np.inf:
            # a token outside the support: no correct sampler could have produced the text at
            # all, which is the support check's finding (or a boundary tie it forgives), and
            # says nothing about the seed
            continue
        p = float(np.exp(logp))
        tails.append(float(stats.binom.sf(c - 2, n - 1, p)))
        if c > most:
            most, p_common = c, p
    p_value = min(1.0, min(tails) * len(by_text)) if tails else 1.0
    first = group[0]
    label = f"{first.conversations.contents[-1].content[:40]!r} T={first.parameters.temperature}"
    return SeedGroup(label, n, len(by_text), max(most, 1), p_common, p_value)
