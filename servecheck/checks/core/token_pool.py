"""What the context and cache checks keep of each scored output token, in columns that the chunks
of a large set concatenate: their tests are then made once over the whole set, as one process
makes them.

Their tests read every token (a Mann–Whitney test ranks each log-prob |Δ|, the slopes regress
each on its position), so no sum stands for them, and which tokens count is only known over the
whole set: a sampled token's quantile residual counts where its record is a distinct draw
(chosen at the end from the seeds check's pooled verdict, as the fit's are), and a log-prob |Δ|
is taken under the convention the whole set's served log-probs are closest to
(``ServedColumns.chosen``). So each kept record keeps its label, its prompt length and its
number of scored tokens, and each token whether it is a greedy hard mismatch and its PIT
(float32, as scored): 5 bytes a token, and 24 more a served log-prob.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
from scipy import stats as st

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.deployment import kv_cache_counts
from servecheck.checks.core.greedy_causes import requested_gaps
from servecheck.checks.core.pooling import informative
from servecheck.checks.core.served_logprobs import ServedColumns, served_columns
from servecheck.checks.core.token_evidence import TokenEvidence, sliding_window
from servecheck.checks.core.token_rules import greedy_positions

__all__ = ["CONTEXT", "TokenPool", "token_pool"]

CONTEXT = "context"
"""The context check's name: the cache check reads its pooled tokens (``Pooling.reads``)."""


@dataclass(frozen=True, eq=False)
class TokenPool:
    """Per kept record (a row, in set order) and per scored output token of each in turn."""

    window: int | None
    """The checkpoint's sliding window (``token_evidence.sliding_window``)."""
    labels: tuple[str, ...]
    greedy: np.ndarray
    """A greedy record (the others, in turn, are the fit's rows)."""
    prompt: np.ndarray
    """Its prompt length: a token's position is this + its output index."""
    tokens: np.ndarray
    mismatch: np.ndarray
    """Per token: a greedy token that is a hard mismatch (beyond δ)."""
    pit: np.ndarray
    """Per token: a sampled informative token's randomised PIT (NaN elsewhere; float32)."""
    served: np.ndarray
    """A record with served log-probs (each, in turn, a row of ``columns``)."""
    columns: ServedColumns | None
    kv: dict[str, int]
    """How many answered records say each KV-cache type (``deployment.kv_cache_counts``)."""
    _made: dict[bytes, TokenEvidence] = field(default_factory=dict, init=False, repr=False)
    """``evidence`` by its draws: the context and cache rows read the same (not saved)."""

    def __len__(self) -> int:
        return len(self.labels)

    def merge(self, *later: TokenPool) -> TokenPool:
        pieces = (self, *later)
        columns = [e.columns for e in pieces if e.columns is not None]
        kv: Counter[str] = Counter()
        for e in pieces:  # in set order: ties go to the type seen first, as in one process
            kv.update(e.kv)
        return TokenPool(
            self.window, tuple(chain.from_iterable(e.labels for e in pieces)),
            *(np.concatenate([getattr(e, f) for e in pieces])
              for f in ("greedy", "prompt", "tokens", "mismatch", "pit", "served")),
            columns[0].merge(*columns[1:]) if columns else None, dict(kv))

    def kv_cache(self) -> str | None:
        """The KV-cache type the records say was used, where not the model's own."""
        return Counter(self.kv).most_common(1)[0][0] if self.kv else None

    def evidence(self, draws: np.ndarray) -> TokenEvidence:
        """Every token's evidence, its residual where its record is one of the distinct
        ``draws`` (a mask over the sampled records, the fit's rows); made once per draws."""
        key = np.asarray(draws, dtype=bool).tobytes()
        if key not in self._made:
            self._made[key] = self._evidence(draws)
        return self._made[key]

    def _evidence(self, draws: np.ndarray) -> TokenEvidence:
        rows = np.arange(len(self))
        drawn = np.zeros(len(self), dtype=bool)
        drawn[~self.greedy] = draws
        starts = np.cumsum(self.tokens) - self.tokens
        total = int(self.tokens.sum())
        record = np.repeat(rows, self.tokens)
        position = np.repeat(self.prompt, self.tokens) + np.arange(total) - \
            np.repeat(starts, self.tokens)
        use = np.repeat(drawn, self.tokens) & ~np.isnan(self.pit)
        p = np.clip(self.pit, 1e-12, 1 - 1e-12)
        residual = np.where(use, -st.norm.ppf(p), np.nan).astype(np.float64)
        return TokenEvidence(record, position, np.repeat(self.greedy, self.tokens),
                             self.mismatch, residual, self._served(starts, total))

    def _served(self, starts: np.ndarray, total: int) -> np.ndarray:
        """Each token's |Δ| under the set's convention (NaN: none, not finite, or a record
        whose served log-probs do not line up with its tokens)."""
        out = np.full(total, np.nan)
        if self.columns is None:
            return out
        found = self.columns.chosen
        for r, row in enumerate(np.flatnonzero(self.served)):
            if r in found.misaligned:
                continue
            d = found.per_record[r][: self.tokens[row]]
            out[starts[row]: starts[row] + len(d)] = np.where(np.isfinite(d), d, np.nan)
        return out


def token_pool(ctx: CheckContext) -> TokenPool:
    """The run's ``TokenPool``, made once (the context check's evidence; the cache check's
    reads it)."""
    return ctx.once("token pool", lambda: _pool(ctx))


def _pool(ctx: CheckContext) -> TokenPool:
    kept = ctx.kept()
    scores = ctx.scores(kept)
    gaps = requested_gaps(ctx, ctx.greedy())
    idx, columns = served_columns(ctx)
    mismatch, pit = [], []
    for i in kept:
        s, n = scores[i], len(scores[i])
        wrong, p = np.zeros(n, bool), np.full(n, np.nan, dtype=np.float32)
        if ctx.sampling[i].greedy:
            wrong[greedy_positions(s, ctx.tolerances.logit, gaps.get(i))[0]] = True
        else:
            p = np.where(informative(s), s.stats["pit"], np.nan).astype(np.float32)
        mismatch.append(wrong)
        pit.append(p)
    with_served = set(idx)
    return TokenPool(
        sliding_window(ctx), tuple(ctx.labels[i] for i in kept),
        np.array([ctx.sampling[i].greedy for i in kept], dtype=bool),
        np.array([len(ctx.prompt_ids(i)[0]) for i in kept], dtype=np.int64),
        np.array([len(scores[i]) for i in kept], dtype=np.int64),
        np.concatenate(mismatch) if mismatch else np.zeros(0, dtype=bool),
        np.concatenate(pit) if pit else np.zeros(0, dtype=np.float32),
        np.array([i in with_served for i in kept], dtype=bool), columns,
        dict(kv_cache_counts(ctx.records)))
