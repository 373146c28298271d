"""Served log-probs against the reference's, token by token: made once a run, read by every check
that judges them (the log-probs check over the whole set, the context check by position, the
cache check by cache hit and miss).

Servers differ in what they report: the raw model log-prob (vLLM's default, llama.cpp), the
log-prob after the penalties but before the temperature (CTranslate2, ONNX Runtime GenAI's
logits), or the log-prob after temperature and truncation. Each is computed, and the closest is
the server's convention: every |Δ| a check reads is under it. A record whose served log-probs
stop lining up with the scored tokens (a token the text lost, another sequence's log-probs) is
named here once, so no check reads its |Δ| as evidence of anything but that.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from servecheck.checks.core.context import CheckContext
from servecheck.reference.sampling import Sampling
from servecheck.reference.token_scores import ScoreItem, TokenScores

__all__ = ["BREAK_NATS", "BREAK_RUN", "CONVENTIONS", "ServedColumns", "ServedDiffs", "as_served",
           "misalignment", "served_columns", "served_diffs"]

BREAK_NATS = 1.0
"""Served log-probs have stopped lining up with the scored tokens where, from some token on, the
median |Δ| stays above this (honest bf16 numerics stay below 0.1; a token lost from the text or
ids from another sequence shift every later comparison by whole nats)."""
BREAK_RUN = 4
"""…over at least this many tokens."""


@dataclass(frozen=True)
class ServedDiffs:
    """|served − reference| log-prob of every served token, under the server's convention."""

    convention: str
    """``raw``, ``after penalties`` or ``after sampling transform``: the closest on average."""
    means: dict[str, float]
    """Mean |Δ| under each convention, over every record with served log-probs."""
    per_record: dict[int, np.ndarray]
    """Record → |Δ| of its served tokens, in output order (index k is output token k); an
    infinite reference or served value is +inf."""
    misaligned: dict[int, str]
    """Records whose served log-probs do not belong to the scored tokens, and why."""

    def aligned(self) -> dict[int, np.ndarray]:
        """The records whose |Δ| is evidence about the model the server ran."""
        return {i: d for i, d in self.per_record.items() if i not in self.misaligned}


def misalignment(served: int, scored: int, diff: np.ndarray, marker_in_text: bool,
                 truncated: bool = False) -> str | None:
    """Why a record's ``served`` log-probs do not belong to the tokens scored, or None. One more
    served value than scored tokens is the end token's, when the text lost its end marker; a
    record scored only up to lost bytes (``truncated``) is compared on what was scored."""
    count_off = served < scored if truncated else \
        served != scored and not (served == scored + 1 and not marker_in_text)
    if count_off:
        return f"{served} served log-probs for {scored} scored tokens"
    n = len(diff)
    # a clean start and a broken tail: misaligned, not merely other weights or numerics. A
    # median above (below) a bound needs at least half the values above (below) it, so counts
    # (cumulative sums, all k at once) pick the candidates and medians confirm them: the first
    # break exactly as a scan over k would find it, without a median per token.
    ks = np.arange(1, max(1, n - BREAK_RUN + 1))
    if not len(ks):
        return None
    low = np.concatenate([[0], np.cumsum(diff < BREAK_NATS / 4)])[ks]  # below, in diff[:k]
    high = np.cumsum((diff > BREAK_NATS)[::-1])[::-1][ks]  # above, in diff[k:]
    maybe = (diff[ks] > 2 * BREAK_NATS) & (2 * low >= ks) & (2 * high >= n - ks)
    for k in ks[maybe]:
        if np.median(diff[k:]) > BREAK_NATS and np.median(diff[:k]) < BREAK_NATS / 4:
            return (f"from output token {k} on (median |Δ| {np.median(diff[k:]):.2f} nats over "
                    f"the last {n - k} tokens)")
    return None


def as_served(s: Sampling | None, convention: str) -> Sampling | None:
    """The sampling a served log-prob of ``convention`` is taken under (None: raw logits)."""
    if convention == "raw" or s is None:
        return None
    if convention == "after penalties":
        return Sampling(repetition_penalty=s.repetition_penalty,
                        presence_penalty=s.presence_penalty,
                        frequency_penalty=s.frequency_penalty)
    return s


def reference_logprobs(ctx: CheckContext, idx: list[int], scores: dict[int, TokenScores]
                       ) -> dict[str, dict[int, np.ndarray]]:
    """Per convention, the reference's log-prob of each scored token: raw, after the
    penalties alone (CTranslate2 and ONNX Runtime GenAI report these), and after the whole
    sampling transform. Only penalised records are scored again for the middle one."""
    penalised = [i for i in idx if ctx.sampling[i].penalised]
    again = dict(zip(penalised, ctx.score_items([ScoreItem(
        ctx.prompt_ids(i)[0], ctx.output_ids(i)[0], as_served(ctx.sampling[i], "after penalties"))
        for i in penalised]), strict=True))
    return {"raw": {i: scores[i].logprob for i in idx},
            "after penalties": {i: (again[i].stats["logq"] if i in again else scores[i].logprob)
                                for i in idx},
            "after sampling transform": {i: scores[i].stats.get("logq", scores[i].logprob)
                                         for i in idx}}


CONVENTIONS = ("raw", "after penalties", "after sampling transform")
"""What a server's log-probs may be taken after (``reference_logprobs``), in this order."""


@dataclass(frozen=True, eq=False)
class ServedColumns:
    """Per record with served log-probs (in set order), what choosing the server's convention
    and telling an aligned record from a misaligned one read: the chunks of a large set
    concatenate them, and the choice is made once over the whole set, as one process makes it
    (the context and cache checks pool it; 24 bytes a served token)."""

    count: np.ndarray
    """How many log-probs the record served."""
    scored: np.ndarray
    """How many of its output tokens were scored."""
    ends: np.ndarray
    """Its scored output ends on an end token."""
    truncated: np.ndarray
    """It was scored only up to bytes its server's detokenizer lost."""
    diffs: np.ndarray
    """conventions × tokens: |served − reference| (+inf where either is infinite) of each
    record's first min(count, scored) tokens in turn, under each of ``CONVENTIONS``."""
    votes: np.ndarray
    """Finished records whose served log-probs count the end token, and those one short
    (``EndCounting.votes``), over every answered record."""

    def merge(self, *later: ServedColumns) -> ServedColumns:
        pieces = (self, *later)
        return ServedColumns(*(np.concatenate([getattr(e, f) for e in pieces])
                               for f in ("count", "scored", "ends", "truncated")),
                             np.concatenate([e.diffs for e in pieces], axis=1),
                             np.sum([e.votes for e in pieces], axis=0))

    @cached_property
    def chosen(self) -> ServedDiffs:
        """The convention closest on average and the misaligned records, keyed by row; made
        once (the log-probs, context and cache checks read it)."""
        if not len(self.count):
            raise ValueError("no record with served log-probs to choose a convention by")
        means = {k: float(np.mean(self.diffs[j])) for j, k in enumerate(CONVENTIONS)}
        convention = min(means, key=lambda k: means[k])
        exact, short = self.votes
        unserved_end = bool(short > exact)  # ``find_end_counting``'s rule
        cuts = np.cumsum([0, *np.minimum(self.count, self.scored)])
        column = self.diffs[CONVENTIONS.index(convention)]
        per = {r: column[cuts[r]:cuts[r + 1]] for r in range(len(self.count))}
        lost = {}
        for r, d in per.items():
            ends = bool(self.ends[r])
            why = misalignment(int(self.count[r]), int(self.scored[r]) - (unserved_end and ends),
                               d, ends, bool(self.truncated[r]))
            if why:
                lost[r] = why
        return ServedDiffs(convention, means, per, lost)


def served_columns(ctx: CheckContext) -> tuple[list[int], ServedColumns | None]:
    """The kept records with served log-probs and their ``ServedColumns`` (None: none has
    any), made once a run."""
    return ctx.once("served log-prob columns", lambda: _columns(ctx))


def _columns(ctx: CheckContext) -> tuple[list[int], ServedColumns | None]:
    idx = [i for i in ctx.kept() if ctx.records[i].output_logprobs]
    if not idx:
        return idx, None
    scores = ctx.scores(idx)
    reference = reference_logprobs(ctx, idx, scores)
    diffs = []
    for i in idx:
        served = np.asarray(ctx.records[i].output_logprobs, dtype=np.float64)[: len(scores[i])]
        d = np.abs(served - np.stack([reference[k][i][: len(served)] for k in CONVENTIONS]))
        diffs.append(np.where(np.isfinite(d), d, np.inf))
    votes = (ctx.end_counting.votes or {}).get("logprobs", {})
    return idx, ServedColumns(
        np.array([len(ctx.records[i].output_logprobs or ()) for i in idx], dtype=np.int64),
        np.array([len(scores[i]) for i in idx], dtype=np.int64),
        np.array([ctx.ends_on_end_token(i) for i in idx], dtype=bool),
        np.array([i in ctx.lost_at for i in idx], dtype=bool),
        np.concatenate(diffs, axis=1),
        np.array([votes.get("exact", 0), votes.get("short", 0)], dtype=np.int64))


def served_diffs(ctx: CheckContext) -> ServedDiffs | None:
    """The run's ``ServedDiffs`` (None: no record carries served log-probs), keyed by record."""
    idx, columns = served_columns(ctx)
    if columns is None:
        return None
    found = columns.chosen
    return ServedDiffs(found.convention, found.means,
                       {idx[r]: d for r, d in found.per_record.items()},
                       {idx[r]: why for r, why in found.misaligned.items()})
