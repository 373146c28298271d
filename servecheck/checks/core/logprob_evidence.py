"""What the log-probs row keeps of a chunk of records, so that a large set's row is decided once
over the whole set, as one process decides it.

The row's numbers are the whole set's: the server's convention and each record's |Δ| are read
from the served-log-prob columns the context check pools (``ServedColumns``). What the columns
do not hold is kept here per served record: whether its log-probs are all 0.0 where the
reference is unsure, where its output ids came from, and the rescoring of the worst-fitting
records under known prompt mistakes. That rescoring needs the model, so it is made in the chunk:
the set's 16 worst records under the convention the set chooses are each among their own
chunk's 16 worst under that convention, so each chunk rescores its 16 worst under each of the
three conventions and keeps, per candidate and mistake, the sum and count of its |Δ|. The row
then picks the set's 16 worst from the columns and adds up their sums: no chunk decides it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.deployment import speculation_counts
from servecheck.checks.core.served_logprobs import CONVENTIONS, ServedColumns, as_served, served_columns
from servecheck.reference.token_scores import ScoreItem

__all__ = ["HYPOTHESES", "HYPOTHESES_SAMPLE", "SURE", "LogprobEvidence", "logprob_evidence",
           "worst"]

HYPOTHESES = ("an extra BOS (double BOS: the server tokenized the templated prompt with special "
              "tokens added)", "no BOS (the server dropped the template's BOS)")
"""The known prompt mistakes the served log-probs are rescored under, in the order a tie goes."""
HYPOTHESES_SAMPLE = 16
"""Records rescored per mistake (the worst fitting): enough to be sure, cheap next to the main
scoring."""
SURE = 0.1
"""A served log-prob of exactly 0.0 says the token was certain; the reference finding the token
less likely than e^-0.1 (about 0.9), and further from it than the numerics' tolerance, makes
that a log-prob nobody computed. An honest server's float32 log-softmax rounds to 0.0 only for
a token whose probability is within about 1e-7 of 1."""


@dataclass(frozen=True, eq=False)
class LogprobEvidence:
    """Per served record (a row of the pooled ``ServedColumns``, in set order), and per
    candidate of the prompt-mistake rescoring."""

    all_zero: np.ndarray
    """Its served log-probs are all 0.0 while the reference gives one of its tokens a raw
    log-prob below -max(SURE, tolerance)."""
    lowest: np.ndarray
    """The reference's smallest raw log-prob over its scored tokens (float64)."""
    text_only: np.ndarray
    """Its output tokens are the text's, searched, not ids the server gave."""
    sources: tuple[str, ...]
    """Where its output tokens came from, as a finding names it."""
    speculative: dict[str, int]
    """How many answered records say each speculative-decoding method was on."""
    candidate: np.ndarray
    """Per candidate: its row (int64)."""
    convention: np.ndarray
    """…the convention (index in ``CONVENTIONS``) it is among its chunk's worst under (int64)."""
    sums: np.ndarray
    """…per mistake of ``HYPOTHESES``: the sum of its |Δ| under that mistake's prompt (float64;
    NaN where the mistake cannot apply: no BOS to drop)."""
    counts: np.ndarray
    """…and how many tokens that sum is over (int64; -1 where the mistake cannot apply)."""

    def __len__(self) -> int:
        return len(self.all_zero)

    def merge(self, *later: LogprobEvidence) -> LogprobEvidence:
        pieces = (self, *later)
        offsets = np.cumsum([0, *(len(e) for e in pieces)])[:-1]
        speculative: Counter[str] = Counter()
        for e in pieces:  # in set order: ties go to the method seen first, as in one process
            speculative.update(e.speculative)
        return LogprobEvidence(
            *(np.concatenate([getattr(e, f) for e in pieces])
              for f in ("all_zero", "lowest", "text_only")),
            tuple(s for e in pieces for s in e.sources), dict(speculative),
            np.concatenate([e.candidate + o for e, o in zip(pieces, offsets, strict=True)]),
            *(np.concatenate([getattr(e, f) for e in pieces])
              for f in ("convention", "sums", "counts")))

    def speculation(self) -> str | None:
        """The speculative-decoding method the records say was on (the most common), or None."""
        return Counter(self.speculative).most_common(1)[0][0] if self.speculative else None

    def rescored(self, rows: list[int], convention: str) -> dict[str, float]:
        """Mean |Δ| over ``rows`` (the set's worst, under the set's ``convention``) under each
        mistake that applies to every one of them, in the order of ``HYPOTHESES``."""
        c = CONVENTIONS.index(convention)
        at = {int(r): n for n, r in enumerate(self.candidate) if self.convention[n] == c}
        if not rows or any(r not in at for r in rows):
            return {}
        picked = [at[r] for r in rows]
        out = {}
        for h, name in enumerate(HYPOTHESES):
            counts = self.counts[picked, h]
            if np.all(counts >= 0):
                out[name] = float(sum(float(self.sums[n, h]) for n in picked) / counts.sum())
        return out


def worst(diffs: np.ndarray, lengths: np.ndarray, count: int = HYPOTHESES_SAMPLE) -> list[int]:
    """The ``count`` records with the largest mean |Δ|, ties in record order: the records a
    prompt mistake is judged on. ``diffs``: the records' |Δ| one after another, ``lengths``
    long each. A record's mean is its own tokens' pairwise sum over their count, whatever array
    holds them, so a chunk and its set rank a record alike."""
    lengths = np.asarray(lengths, dtype=np.int64)
    rows = np.flatnonzero(lengths > 0)
    if not len(rows):
        return []
    starts = (np.cumsum(lengths) - lengths)[rows]
    means = np.add.reduceat(diffs, starts) / lengths[rows]
    return rows[np.argsort(-means, kind="stable")[:count]].tolist()


def mistakes(bos: int | None, prompt: list[int]) -> dict[int, list[int]]:
    """Each mistake of ``HYPOTHESES`` that can apply to ``prompt`` → the prompt it gives."""
    if bos is None:
        return {}
    out = {0: [bos, *prompt]}
    if prompt[:1] == [bos]:
        out[1] = prompt[1:]
    return out


def logprob_evidence(ctx: CheckContext) -> LogprobEvidence:
    """The log-probs row's evidence of a run's records (``served_columns``' records, in turn)."""
    idx, columns = served_columns(ctx)
    scores = ctx.scores(idx)
    bound = -max(SURE, ctx.tolerances.logprob)
    all_zero, lowest = [], []
    for i in idx:
        served = np.asarray(ctx.records[i].output_logprobs, dtype=np.float64)
        reference = scores[i].logprob
        all_zero.append(not np.any(served) and bool(np.any(reference[: len(served)] < bound)))
        lowest.append(float(reference.min()) if len(reference) else np.nan)
    candidate, convention, sums, counts = _rescored(ctx, idx, columns)
    return LogprobEvidence(
        np.array(all_zero, dtype=bool), np.array(lowest, dtype=np.float64),
        np.array([ctx.is_text_only(i) for i in idx], dtype=bool),
        tuple(f"{ctx.output_ids(i)[1]}" for i in idx), dict(speculation_counts(ctx.records)),
        candidate, convention, sums, counts)


def _rescored(ctx: CheckContext, idx: list[int], columns: ServedColumns | None
              ) -> tuple[np.ndarray, ...]:
    """Per convention, this chunk's worst records rescored under each mistake that applies."""
    pairs: list[tuple[int, int]] = []  # (row, convention)
    bos = ctx.ref.tokenizer.bos_token_id
    if columns is not None and bos is not None:
        lengths = np.minimum(columns.count, columns.scored)
        for c in range(len(CONVENTIONS)):
            pairs += [(r, c) for r in worst(columns.diffs[c], lengths)]
    wanted: dict[tuple, ScoreItem] = {}  # one scoring per distinct item
    keys: list[list[tuple | None]] = []
    for r, c in pairs:
        i = idx[r]
        alts = mistakes(bos, ctx.prompt_ids(i)[0])
        row = []
        for h in range(len(HYPOTHESES)):
            if h not in alts:
                row.append(None)
                continue
            sampling = as_served(ctx.sampling[i], CONVENTIONS[c])
            key = (r, h, sampling)
            wanted.setdefault(key, ScoreItem(alts[h], ctx.output_ids(i)[0], sampling))
            row.append(key)
        keys.append(row)
    found = dict(zip(wanted, ctx.score_items(list(wanted.values())), strict=True))
    sums = np.full((len(pairs), len(HYPOTHESES)), np.nan)
    counts = np.full((len(pairs), len(HYPOTHESES)), -1, dtype=np.int64)
    for n, row in enumerate(keys):
        for h, key in enumerate(row):
            if key is None:
                continue
            s = found[key]
            served = np.asarray(ctx.records[idx[key[0]]].output_logprobs, dtype=np.float64)
            d = np.abs(served[: len(s)] - s.stats.get("logq", s.logprob)[: len(served)])
            sums[n, h], counts[n, h] = float(np.sum(d)), d.size
    return (np.array([r for r, _ in pairs], dtype=np.int64),
            np.array([c for _, c in pairs], dtype=np.int64), sums, counts)
