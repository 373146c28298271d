"""The seed tests: do requests that differ only in their seed differ as often as chance says?
(The method is the seeds check's docstring, ``checks.seeds``.) Made once a run: the seeds check
reports them, and the fit and sampler checks ask whether an ignored seed put every record on
one random stream (``shared_seeds``); ``servecheck probe`` runs ``group_test`` on its own set.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.stats import holm_rejected
from servecheck.formats.records import ResponseRecord

SEEDS = "seeds"
"""The seeds check's name: the tests run at its share of α."""


@dataclass(frozen=True)
class SeedGroup:
    label: str
    """The shared prompt and parameters, shortened."""
    seeds: int
    distinct: int
    most_common: int
    p_text: float
    """Reference probability of the most repeated text."""
    p_value: float


MIN_SEEDS = 2
"""Two seeds suffice: a pair that repeats a text of reference probability p happens by chance
with probability p, and many pairs add up (the pooled test)."""


def seed_groups(records: list[ResponseRecord]) -> list[list[ResponseRecord]]:
    """Sampled records that differ only in their seed, one record per seed: an identical
    request repeated (same seed too) is one draw, and a seeded engine rightly answers it with
    one text, so counting it twice would call the seed ignored. Groups of ≥ ``MIN_SEEDS``."""
    groups: dict[str, dict[tuple[int, int | None], ResponseRecord]] = defaultdict(dict)
    for r in records:
        if r.error is None and r.parameters.seed is not None and \
                not r.parameters.greedy:
            key = r.conversations.model_dump_json() + r.parameters.model_copy(
                update={"seed": None}).model_dump_json()
            # the n choices of one seeded request must be independent draws too
            groups[key].setdefault((r.parameters.seed, r.choice), r)
    return [list(g.values()) for g in groups.values() if len(g) >= MIN_SEEDS]


def pooled_p(p_values: list[float]) -> float:
    """Fisher's combination of the groups' p-values (each valid on its own, 1 where no text
    repeats): pairs that each repeat a fairly likely text add up to evidence no single pair
    gives."""
    if len(p_values) < 2:
        return 1.0
    return float(stats.combine_pvalues(np.clip(p_values, 1e-300, 1.0), method="fisher").pvalue)


def repeated(group: list[ResponseRecord]) -> list[ResponseRecord]:
    """One record per text that occurs more than once: the ones whose probability is needed."""
    by_text: dict[str, list[ResponseRecord]] = defaultdict(list)
    for r in group:
        by_text[r.output].append(r)
    return [same[0] for same in by_text.values() if len(same) > 1]


def seed_test(group: list[ResponseRecord], text_logprob: Callable[[ResponseRecord], float]
              ) -> SeedGroup:
    """``text_logprob`` gives log p(y) of a record's output, from the shared, batched scores
    (``CheckContext.scores``, on the tokens the context chose)."""
    by_text: dict[str, list[ResponseRecord]] = defaultdict(list)
    for r in group:
        by_text[r.output].append(r)
    n = len(group)
    tails, p_common, most = [], 0.0, 0
    for same in by_text.values():
        c = len(same)
        if c < 2:
            continue
        logp = text_logprob(same[0])
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


def scored_logprob(ctx: CheckContext, records: list[ResponseRecord]
                   ) -> Callable[[ResponseRecord], float]:
    """log p(y) of each record's output, its repeated texts scored in one batch by the context."""
    index = {id(r): i for i, r in enumerate(ctx.records)}
    scores = ctx.scores([index[id(r)] for r in records])

    def text_logprob(r: ResponseRecord) -> float:
        s = scores[index[id(r)]]
        return float(np.sum(s.stats["logq"])) if len(s) else 0.0

    return text_logprob


@dataclass(frozen=True)
class SeedTests:
    groups: list[list[ResponseRecord]]
    results: list[SeedGroup]
    pooled: float
    rejected: list[bool]
    pooled_rejected: bool

    greedy: bool = False
    """Every repeated text is the argmax path: greedy decoding, not an ignored seed."""

    @property
    def ignored(self) -> bool:
        """Texts repeat across seeds beyond chance, other than as copied choices or greedy
        paths: the seed looks ignored, so every record may read one random stream."""
        if self.greedy:
            return False
        return any(bad and draws(g) == "seeds" for g, bad in zip(self.groups, self.rejected,
                                                                   strict=True)) \
            or self.pooled_rejected


def seed_tests(ctx: CheckContext) -> SeedTests:
    """The seed tests of the records the screening kept, made once per run: the fit and
    sampler checks ask too (``shared_seeds``), since an ignored seed puts every record on one
    random stream."""
    def make() -> SeedTests:
        groups = seed_groups([ctx.records[i] for i in ctx.kept()])
        if not groups:
            return SeedTests([], [], 1.0, [], False)
        text_logprob = scored_logprob(ctx, [r for g in groups for r in repeated(g)])
        results = [seed_test(g, text_logprob) for g in groups]
        pooled = pooled_p([r.p_value for r in results])
        *rejected, pooled_rejected = holm_rejected([r.p_value for r in results] + [pooled],
                                                   ctx.check_alpha(SEEDS))
        bad = [g for g, r in zip(groups, rejected, strict=True) if r] or \
            (groups if pooled_rejected else [])
        return SeedTests(groups, results, pooled, rejected, pooled_rejected,
                         argmax_paths(ctx, bad))

    return ctx.once("seed tests", make)


GREEDY = ("every repeated text is the reference's argmax path: the server decodes greedily "
          "where sampling was asked (the sampler row), so the seed had nothing to vary")


def argmax_paths(ctx: CheckContext, groups: list[list[ResponseRecord]]) -> bool:
    """Whether every text repeated across seeds is the argmax at every token: repeats a greedy
    decoder makes whatever the seed, not the mark of an ignored seed."""
    texts = [r for g in groups for r in repeated(g)]
    if not texts:
        return False
    index = {id(r): i for i, r in enumerate(ctx.records)}
    scores = ctx.scores([index[id(r)] for r in texts])
    return all(bool(np.all(s.token_ids == s.argmax)) for s in scores.values())


def draws(group: list[ResponseRecord]) -> str:
    """``choices`` where the repeats are one seed's n choices, else ``seeds``."""
    by_text: dict[str, list[ResponseRecord]] = defaultdict(list)
    for r in group:
        by_text[r.output].append(r)
    same = max(by_text.values(), key=len)
    copies = len({r.parameters.seed for r in same}) == 1 and len({r.choice for r in same}) > 1
    return "choices" if copies else "seeds"


def meaning(group: list[ResponseRecord]) -> str:
    """What a repeat means: one seed's n choices copied, choices seeded s, s+1, … (so requests
    with nearby seeds share samples), or the seed ignored."""
    if draws(group) == "choices":
        return ("the n choices of one request are copies, not independent samples (each choice "
                "needs its own random stream)")
    by_text: dict[str, list[ResponseRecord]] = defaultdict(list)
    for r in group:
        by_text[r.output].append(r)
    same = max(by_text.values(), key=len)
    if all(r.choice is not None and r.parameters.seed is not None for r in same) and \
            len({r.parameters.seed + (r.choice or 0) for r in same}) == 1:
        return ("choice k of seed s repeats choice 0 of seed s + k: the server seeds the n "
                "choices s, s+1, …, so requests whose seeds are closer than n share samples "
                "(space the seeds at least n apart)")
    return "the seed looks ignored"


def group_test(ctx: CheckContext, group: list[ResponseRecord]) -> SeedGroup:
    """One group's test, its repeated texts scored through ``ctx`` (``servecheck probe``)."""
    return seed_test(group, scored_logprob(ctx, repeated(group)))
