"""The sampling convention, found from the records rather than guessed.

Engines agree on what temperature, top_k, top_p and min_p mean, and disagree on their order:
transformers, vLLM, SGLang, TGI and TensorRT-LLM scale by the temperature first; llama.cpp
truncates on temperature-1 probabilities and scales last. Penalties count the prompt's tokens in
some engines and only generated ones in others. Checked under the wrong one, a correct llama.cpp
server at T = 0.7, top_p = 0.9 draws tokens "outside the nucleus", and a correct HF server at
T = 1.3 looks truncated.

The orders differ only on some records (sampled, T ≠ 1 with top_p or min_p; penalised, for the
scope), and only those the screening checks kept (``checks.screen``). Those are scored under
each candidate convention, and a candidate replaces the default only where its likelihood beats
the default's by ``MARGIN_NATS``, without its most favourable records too, and where it puts
(nearly) every served token inside its support (``_decide``). That is a likelihood-ratio
test with a known level: if the default is the truth, a ratio of e^10 or more has probability at
most e^-10 (Markov's inequality on the ratio, whose mean is 1), whatever the records. A clear
support violation (beyond the numerics tolerance, as the support check counts it) costs
``VIOLATION_NATS``, so a convention that makes served tokens impossible loses; a boundary tie
costs ``TIE_NATS``. The log-likelihoods are compared on the tokens inside every candidate's
support. Where the conventions hardly differ on the data, the default stays and little
rides on it. The user can fix the convention instead (``check --sampler-order``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import product
from typing import TYPE_CHECKING, Any

import numpy as np

from servecheck.checks.core.token_rules import outside_support
from servecheck.reference.sampling import HF, LLAMA_CPP, Convention
from servecheck.reference.token_scores import TokenScores
from servecheck.reference.tokenization import TokenSource

if TYPE_CHECKING:
    from servecheck.checks.core.context import CheckContext

MARGIN_NATS = 10.0
VIOLATION_NATS = 1000.0
TIE_NATS = 3.0
"""A token just outside a convention's support (within the numerics tolerance) is not
impossible under it, since other kernels may rank it inside, but it is unlikely: e^-3, about
1 in 20. Free, it would favour the convention with the smallest support, whose boundary every
other convention's extra tokens sit on (a llama.cpp nucleus at T = 0.7 adds 1% of mass just
outside HF's)."""
TRIM_MIN = 3
TRIM_SHARE = 0.02
"""The records most in a candidate's favour that its gain must hold without: 3, or 2% of the
telling records (a handful of broken outputs is no evidence of an order)."""
EXPLAINED_MIN = 2
EXPLAINED_SHARE = 0.1
"""A candidate explains the tokens the default cannot when it leaves outside its own support at
most 2 of them, or a tenth of the default's (text-only records scored on their canonical tokens
before the tokenization search put a few outside every support)."""
MAX_RECORDS = 512
"""Records scored per candidate at most (spread over the file): enough to tell the orders apart
wherever they differ, and a bounded cost on a million-record file."""


@dataclass(frozen=True)
class CandidateFit:
    convention: Convention
    loglik: float
    """Σ log q of the served tokens inside every candidate's support (the same tokens for
    all, so that a convention cannot gain by leaving a token out)."""
    violations: int
    """Tokens outside the support beyond the numerics tolerance."""
    ties: int
    """Tokens outside the support within the numerics tolerance."""

    @property
    def score(self) -> float:
        return self.loglik - VIOLATION_NATS * self.violations - TIE_NATS * self.ties

    def to_json(self) -> dict[str, Any]:
        return {"name": self.convention.name, "loglik": round(self.loglik, 3),
                "violations": self.violations, "boundary_ties": self.ties}


@dataclass(frozen=True)
class ConventionFit:
    """Which convention the check uses, and the evidence for it."""

    chosen: Convention
    found: bool
    """Chosen from the records (else fixed by the user)."""
    records: int = 0
    """Records on which the candidates differ, scored under each."""
    tokens: int = 0
    candidates: list[CandidateFit] = field(default_factory=list)
    kept_default: str | None = None
    """Why the default stayed although another candidate fit better (``_decide``)."""
    too_few: bool = False
    """The default stayed because a few records carried the other's whole advantage: the
    records cannot rule that order out (unlike a dropped setting, which no order explains)."""

    @property
    def undecided(self) -> list[Convention]:
        """Orders other than the chosen one that the records could not rule out: within
        ``MARGIN_NATS`` of it, or kept out only because a few records carried its advantage
        (not where no order explains the tokens: a dropped setting). A token
        that one of them holds inside its support is no evidence against the server (the
        support check says so instead of failing it)."""
        if not self.found or len(self.candidates) < 2:
            return []
        chosen = next(c for c in self.candidates if c.convention == self.chosen)
        return [c.convention for c in self.candidates if c.convention != self.chosen and
                (abs(c.score - chosen.score) <= MARGIN_NATS or self.too_few)]

    def describe(self) -> str:
        if not self.found:
            return f"{self.chosen.name} (as given)"
        if len(self.candidates) < 2:
            return f"{self.chosen.name} (the default: no record tells the engines' orders apart)"
        default = self.candidates[0]
        chosen = next(c for c in self.candidates if c.convention == self.chosen)
        if chosen is not default:
            return (f"{self.chosen.name}, found from {self.records} records: it fits "
                    f"{chosen.score - default.score:.1f} nats better than "
                    f"{default.convention.name}{_outside(default)}")
        other = max(self.candidates[1:], key=lambda c: c.score)
        gain = other.score - default.score
        if self.kept_default:
            return f"{self.chosen.name}, the default ({self.records} records): {self.kept_default}"
        return f"{self.chosen.name}, found from {self.records} records" + (
            f" ({other.convention.name} fits better by only {gain:.1f} nats, < {MARGIN_NATS:g})"
            if gain > 0 else f": it fits {-gain:.1f} nats better than "
                             f"{other.convention.name}{_outside(other)}")

    def to_json(self) -> dict[str, Any]:
        return {**self.chosen.describe(), "found": self.found, "records": self.records,
                "tokens": self.tokens, "candidates": [c.to_json() for c in self.candidates],
                "why": self.describe(), "kept_default": self.kept_default}


def _outside(c: CandidateFit) -> str:
    n = c.violations + c.ties
    return f", which puts {n} served token(s) outside the support" if n else ""


def telling_records(ctx: CheckContext) -> tuple[list[int], list[int]]:
    """(records whose support or q depend on the order, records that are penalised)."""
    order, scope = [], []
    for i in ctx.sampled():
        s = ctx.sampling[i]
        if abs(s.temperature - 1.0) > 1e-6 and (s.top_p < 1.0 or s.min_p > 0):
            order.append(i)
        if s.penalised:
            scope.append(i)
    return order, scope


def candidates(order: bool, scope: bool) -> list[Convention]:
    """HF's convention (the default) first, then every combination the telling records can
    distinguish."""
    orders = [HF, LLAMA_CPP] if order else [HF]
    scopes = ["prompt+output", "output"] if scope else [HF.penalty_scope]
    return [replace(o, penalty_scope=p) for o, p in product(orders, scopes)]


def _spread(idx: list[int], n: int) -> list[int]:
    if len(idx) <= n:
        return idx
    return [idx[k] for k in np.linspace(0, len(idx) - 1, n).round().astype(int).tolist()]


def find_convention(ctx: CheckContext) -> tuple[ConventionFit, dict[int, TokenScores]]:
    """Score the telling records under each candidate; keep the default unless another fits
    better by ``MARGIN_NATS``. Returns the fit and the chosen candidate's scores of records
    with server ids, for ``CheckContext.use_convention`` to keep (a text-only record is scored
    again after its tokenization search)."""
    order, scope = telling_records(ctx)
    options = candidates(bool(order), bool(scope))
    if len(options) < 2:
        return ConventionFit(HF, True), {}
    idx = _spread(sorted(set(order) | set(scope)), MAX_RECORDS)
    items = [ctx.item(i) for i in idx]
    scored = [ctx.scorer(ctx.ref, items, c) for c in options]
    logq = [[s.stats["logq"] for s in scores] for scores in scored]
    common = [np.all([np.isfinite(lq[r]) for lq in logq], axis=0) for r in range(len(idx))]
    fits, per_record = [], []
    for scores, lq in zip(scored, logq, strict=True):
        clear = [len(outside_support(s, ctx.tolerances)[0]) for s in scores]
        ties = [int(np.isinf(q).sum()) - v for q, v in zip(lq, clear, strict=True)]
        ll = [float(q[keep].sum()) for q, keep in zip(lq, common, strict=True)]
        per_record.append(np.array(ll) - VIOLATION_NATS * np.array(clear) -
                          TIE_NATS * np.array(ties))
        fits.append((sum(ll), sum(clear), sum(ties)))
    fits_ = [CandidateFit(c, ll, v, t) for c, (ll, v, t) in zip(options, fits, strict=True)]
    chosen, note, too_few = _decide(fits_, per_record)
    kept = {i: s for i, s in zip(idx, scored[chosen], strict=True)
            if ctx.output_ids(i)[1] is TokenSource.SERVER_IDS}
    return ConventionFit(options[chosen], True, len(idx), sum(len(s) for s in scored[0]), fits_,
                         note, too_few), kept


def _decide(fits: list[CandidateFit], per_record: list[np.ndarray]
            ) -> tuple[int, str | None, bool]:
    """The candidate to score under (0, the default, unless another is clearly better), and
    why the default stayed where another fit better. Robust in two ways: the gain must hold
    without the ``TRIM`` records most in the candidate's favour (one broken record, whose one
    token only a wider nucleus holds, cannot move a file), and the candidate must explain the
    tokens the default cannot (at most ``EXPLAINED`` of them left outside its own support): a
    server that drops a requested setting puts tokens outside every order's support, and no
    engine's order is the name for that."""
    best = max(range(len(fits)), key=lambda k: fits[k].score)
    if best == 0 or fits[best].score - fits[0].score <= MARGIN_NATS:
        return 0, None, False
    gain = np.sort(per_record[best] - per_record[0])[::-1]
    trim = max(TRIM_MIN, int(np.ceil(TRIM_SHARE * len(gain))))
    rest = float(gain[trim:].sum())
    if rest <= MARGIN_NATS:
        return 0, (f"{fits[best].convention.name} fits better only through its {trim} most "
                   f"favourable records ({rest:.1f} nats without them, < {MARGIN_NATS:g}): a few "
                   f"records are no evidence of an order"), True
    default, other = fits[0].violations, fits[best].violations
    if other > max(EXPLAINED_MIN, EXPLAINED_SHARE * default):
        return 0, (f"neither order explains the served tokens: {default} lie outside HF order's "
                   f"support and {other} outside {fits[best].convention.name}'s, so a requested "
                   f"setting looks unapplied (see the support and sampler rows)"), False
    return best, None, False
