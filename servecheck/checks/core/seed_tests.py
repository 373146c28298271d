"""The seed tests: do requests that differ only in their seed differ as often as chance says?
(The method is the seeds check's docstring, ``checks.seeds``.) Made once a run: the seeds check
reports them, and the fit and sampler checks ask whether an ignored seed put every record on
one random stream (``shared_seeds``); ``servecheck probe`` runs ``group_test`` on its own set.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.options import CheckOptions
from servecheck.checks.core.registry import alpha_share
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

Member = tuple[int, int | None]
"""A draw of a seed group: its seed and its choice (the n choices of one seeded request must be
independent draws too)."""


@dataclass(frozen=True)
class Text:
    logp: float
    """log p(y) of the text under the reference, from the first record that served it."""
    argmax: bool
    """Every token of it is the reference's argmax (a greedy path)."""


@dataclass(frozen=True)
class GroupDraws:
    """One request sent with several seeds, as the seed tests read it: which text each draw
    gave, by a digest of the text, and what each text's probability is. Sufficient for the
    test, and small: chunks of a large set merge these instead of holding their records."""

    label: str
    """The shared prompt and parameters, shortened."""
    members: dict[Member, str]
    """Each draw's text (by digest), in the order the set holds them; a draw repeated (same
    seed and choice) is the first one only: a seeded engine rightly answers it with one text."""
    texts: dict[str, Text]

    def merge(self, later: GroupDraws) -> GroupDraws:
        members = {**later.members, **self.members}  # the first of a repeated draw stands
        order = [*self.members, *(m for m in later.members if m not in self.members)]
        return GroupDraws(self.label, {m: members[m] for m in order},
                          {**later.texts, **self.texts})

    def by_text(self) -> dict[str, list[Member]]:
        """Each text's draws, texts in the order first served."""
        out: dict[str, list[Member]] = defaultdict(list)
        for member, text in self.members.items():
            out[text].append(member)
        return dict(out)

    def most_repeated(self) -> list[Member]:
        """The draws of the text served most often (the first such text on a tie)."""
        return max(self.by_text().values(), key=len)


@dataclass(frozen=True)
class SeedEvidence:
    """Every seeded request's draws, by request (a digest of its conversation and parameters
    other than the seed): what the seed tests need of a set, mergeable chunk by chunk in set
    order, so that a group whose seeds lie in different chunks is tested whole."""

    groups: dict[str, GroupDraws] = field(default_factory=dict)
    _tests: dict[float, SeedTests] = field(default_factory=dict, init=False, repr=False,
                                           compare=False)
    """``decide``'s answer by α, made once (every check that pools the draws reads it)."""

    def merge(self, *later: SeedEvidence) -> SeedEvidence:
        merged = dict(self.groups)
        for each in later:
            for key, g in each.groups.items():
                merged[key] = merged[key].merge(g) if key in merged else g
        return SeedEvidence(merged)

    def tested(self) -> list[GroupDraws]:
        """The groups of at least ``MIN_SEEDS`` draws: the ones a test can read."""
        return [g for g in self.groups.values() if len(g.members) >= MIN_SEEDS]


def digest(text: str) -> str:
    """A 128-bit digest of a text: what pooled evidence keeps of a text or a request."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def request_key(r: ResponseRecord) -> str:
    """What makes requests one group: the conversation and every parameter but the seed."""
    return digest(r.conversations.model_dump_json() +
                   r.parameters.model_copy(update={"seed": None}).model_dump_json())


def seeded(r: ResponseRecord) -> bool:
    return r.error is None and r.parameters.seed is not None and not r.parameters.greedy


def evidence(ctx: CheckContext, indices: list[int]) -> SeedEvidence:
    """The draws of the seeded sampled records among ``indices`` (of ``ctx.records``), each
    text's probability scored once, in one batch, from the first record that served it."""
    groups: dict[str, tuple[str, dict[Member, str], dict[str, int]]] = {}
    for i in indices:
        r = ctx.records[i]
        if not seeded(r):
            continue
        first = r.conversations.contents[-1].content[:40]
        _, members, firsts = groups.setdefault(
            request_key(r), (f"{first!r} T={r.parameters.temperature}", {}, {}))
        member = (r.parameters.seed, r.choice)
        if member in members:
            continue
        members[member] = text = digest(r.output)
        firsts.setdefault(text, i)
    scores = ctx.scores([i for _, _, firsts in groups.values() for i in firsts.values()])

    def text(i: int) -> Text:
        s = scores[i]
        return Text(float(np.sum(s.stats["logq"], dtype=np.float64)) if len(s) else 0.0,
                    bool(np.all(s.token_ids == s.argmax)))

    return SeedEvidence({key: GroupDraws(label, members, {t: text(i) for t, i in firsts.items()})
                         for key, (label, members, firsts) in groups.items()})


def pooled_p(p_values: list[float]) -> float:
    """Fisher's combination of the groups' p-values (each valid on its own, 1 where no text
    repeats): pairs that each repeat a fairly likely text add up to evidence no single pair
    gives."""
    if len(p_values) < 2:
        return 1.0
    return float(stats.combine_pvalues(np.clip(p_values, 1e-300, 1.0), method="fisher").pvalue)


def seed_test(group: GroupDraws) -> SeedGroup:
    """For each text served c ≥ 2 times among n draws, the chance that at least c − 1 of the
    other n − 1 independent draws equal it, ``P(Bin(n − 1, p(y)) ≥ c − 1)``; the smallest,
    Bonferroni-corrected over the distinct texts, is the group's p-value."""
    by_text = group.by_text()
    n = len(group.members)
    tails, p_common, most = [], 0.0, 0
    for text, same in by_text.items():
        c = len(same)
        if c < 2:
            continue
        logp = group.texts[text].logp
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
    return SeedGroup(group.label, n, len(by_text), max(most, 1), p_common, p_value)


@dataclass(frozen=True)
class SeedTests:
    groups: list[GroupDraws]
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


def decide(found: SeedEvidence, alpha: float) -> SeedTests:
    """The seed tests of a set's draws, one Holm family at ``alpha``: each group, and Fisher's
    combination of them all (made once per α)."""
    if alpha not in found._tests:
        found._tests[alpha] = _decide(found, alpha)
    return found._tests[alpha]


def _decide(found: SeedEvidence, alpha: float) -> SeedTests:
    groups = found.tested()
    if not groups:
        return SeedTests([], [], 1.0, [], False)
    results = [seed_test(g) for g in groups]
    pooled = pooled_p([r.p_value for r in results])
    *rejected, pooled_rejected = holm_rejected([r.p_value for r in results] + [pooled], alpha)
    bad = [g for g, r in zip(groups, rejected, strict=True) if r] or \
        (groups if pooled_rejected else [])
    return SeedTests(groups, results, pooled, rejected, pooled_rejected, argmax_paths(bad))


def seeds_ignored(found: SeedEvidence, options: CheckOptions) -> bool:
    """The seeds check's verdict on a set's draws (at its share of the run's α): whether an
    ignored seed put every seeded record on one random stream, for the checks that pool the
    draws (fit, temperature, sampler, mask, context, cache)."""
    return decide(found, options.alpha * alpha_share(SEEDS)).ignored


def seed_evidence(ctx: CheckContext) -> SeedEvidence:
    """The draws of the records the screening kept, gathered once per run."""
    return ctx.once("seed evidence", lambda: evidence(ctx, ctx.kept()))


def seed_tests(ctx: CheckContext) -> SeedTests:
    """The seed tests of the records the screening kept, made once per run: the fit and
    sampler checks ask too (``shared_seeds``), since an ignored seed puts every record on one
    random stream."""
    return ctx.once("seed tests", lambda: decide(seed_evidence(ctx), ctx.check_alpha(SEEDS)))


GREEDY = ("every repeated text is the reference's argmax path: the server decodes greedily "
          "where sampling was asked (the sampler row), so the seed had nothing to vary")


def argmax_paths(groups: list[GroupDraws]) -> bool:
    """Whether every text repeated across seeds is the argmax at every token: repeats a greedy
    decoder makes whatever the seed, not the mark of an ignored seed."""
    repeats = [g.texts[t] for g in groups for t, same in g.by_text().items() if len(same) > 1]
    return bool(repeats) and all(t.argmax for t in repeats)


def draws(group: GroupDraws) -> str:
    """``choices`` where the repeats are one seed's n choices, else ``seeds``."""
    same = group.most_repeated()
    copies = len({seed for seed, _ in same}) == 1 and len({choice for _, choice in same}) > 1
    return "choices" if copies else "seeds"


def meaning(group: GroupDraws) -> str:
    """What a repeat means: one seed's n choices copied, choices seeded s, s+1, … (so requests
    with nearby seeds share samples), or the seed ignored."""
    if draws(group) == "choices":
        return ("the n choices of one request are copies, not independent samples (each choice "
                "needs its own random stream)")
    same = group.most_repeated()
    if all(choice is not None for _, choice in same) and \
            len({seed + (choice or 0) for seed, choice in same}) == 1:
        return ("choice k of seed s repeats choice 0 of seed s + k: the server seeds the n "
                "choices s, s+1, …, so requests whose seeds are closer than n share samples "
                "(space the seeds at least n apart)")
    return "the seed looks ignored"


def group_test(ctx: CheckContext, group: list[ResponseRecord]) -> SeedGroup:
    """One group's test (one request sent with several seeds), its texts scored through
    ``ctx`` (``servecheck probe``)."""
    index = {id(r): i for i, r in enumerate(ctx.records)}
    [draws_of] = evidence(ctx, [index[id(r)] for r in group]).groups.values()
    return seed_test(draws_of)
