"""What teacher forcing takes and gives: ``ScoreItem`` in, ``TokenScores`` out.

On the way the scorer holds every output token's numbers as two tensors of rows on the device:
raw (log-prob, argmax, margin, rank) and extra (``STAT_KEYS``, the ``TEMPERATURE_FACTORS``
profile, then ``tails.TAIL_KEYS``). That column layout is defined here, with ``unpack``, which
reads it back into ``TokenScores``, so the scorer, the data-parallel and Dask scorers and the
checks share it without importing the machinery that fills it (``scoring``, ``logit_blocks``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from servecheck.reference.passes import PROFILE
from servecheck.reference.sampling import Sampling
from servecheck.reference.tails import TAIL_KEYS

__all__ = ["STAT_KEYS", "TEMPERATURE_FACTORS", "ScoreItem", "TokenScores", "unpack"]

TEMPERATURE_FACTORS = 1 / (PROFILE[0] + PROFILE[1] * np.arange(PROFILE[2]))[::-1]
"""Grid for the temperature profile likelihood, as multiples of the requested temperature: 64
factors from 0.4 to 2.5, evenly spaced in their inverse (``passes.PROFILE`` says why)."""
STAT_KEYS = ("logq", "above", "entropy", "var", "top", "pre_nucleus_above", "rule", "slack",
             "watched")


@dataclass(frozen=True)
class ScoreItem:
    prompt_ids: list[int]
    output_ids: list[int]
    sampling: Sampling | None = None
    """Requested sampling; None scores raw log-probs only (greedy checks need no more)."""
    seed: int = 0
    """Seeds the uniform draws of the randomised PIT, so results are reproducible."""
    allowed: np.ndarray | None = None
    """Decoded under a grammar: int32 [outputs, ⌈vocab/32⌉], the tokens the grammar allowed at
    each output position as a bitmask (xgrammar's layout, bit j of word w is token 32w + j).
    The reference is scored masked to them and renormalised, the engines' own semantics: raw
    log-prob, argmax and rank too, since a greedy server takes the argmax of what is allowed."""
    watch: np.ndarray | None = None
    """bool [vocab]: a set of tokens whose q-mass each sampled row reports (``watched``), so a
    check can tell what a correct server would have drawn from it (whitespace a grammar
    allows, which an over-constrained mask never lets through)."""

    @property
    def alone(self) -> bool:
        """Scored on its own rows: its penalty counts, mask or watched set are its own."""
        return (self.sampling is not None and self.sampling.penalised) \
            or self.allowed is not None or self.watch is not None


@dataclass
class TokenScores:
    """Per output token: what the reference thinks of the token the server produced."""

    token_ids: np.ndarray
    logprob: np.ndarray
    """Raw log-probability (temperature 1, no truncation)."""
    argmax: np.ndarray
    margin: np.ndarray
    """Logit of the argmax minus logit of the served token (0 when they are the same)."""
    rank: np.ndarray
    """How many tokens have a strictly higher raw logit (0 = argmax)."""
    stats: dict[str, np.ndarray] = field(default_factory=dict)
    """With a sampling transform: ``logq`` (log q(y), -inf outside the support), ``above``
    (q-mass ranked above y), ``pit``, ``entropy`` and ``var`` (of log q under q), ``top``
    (largest q), ``pre_nucleus_above`` (mass above y before top_p), ``watched`` (q-mass on
    ``ScoreItem.watch``, NaN without one), and ``temp_ll``
    (log q(y) at each temperature of ``TEMPERATURE_FACTORS`` × requested, on the requested
    support); for tokens outside
    the support, ``rule`` (index into ``sampling.RULES``) and ``slack`` (how far outside)."""

    def __len__(self) -> int:
        return len(self.token_ids)


def unpack(items: Sequence[ScoreItem], raw: np.ndarray, extra: np.ndarray) -> list[TokenScores]:
    """``scoring.score_rows``'s arrays (on the host) as one ``TokenScores`` per item: views into them, with
    the randomised PIT drawn here from each item's seed (column by column for all rows at once;
    per item, only the draw and the slicing)."""
    n_out = [len(it.output_ids) for it in items]
    ends = np.cumsum([0, *n_out])
    cols: dict[str, np.ndarray] = {}
    if extra.shape[1]:
        cols = {k: extra[:, j] for j, k in enumerate(STAT_KEYS)}
        cols["rule"] = np.nan_to_num(cols["rule"]).astype(np.int64).astype(np.float32)
        u = np.zeros(len(extra), dtype=np.float32)
        for it, a, b in zip(items, ends[:-1], ends[1:], strict=True):
            if it.sampling is not None and not it.sampling.greedy:
                u[a:b] = np.random.default_rng(it.seed).random(b - a)
        cols["pit"] = cols["above"] + u * np.exp(cols["logq"])
        n = len(STAT_KEYS) + len(TEMPERATURE_FACTORS)
        cols["temp_ll"] = extra[:, len(STAT_KEYS):n]
        cols.update({k: extra[:, n + j] for j, k in enumerate(TAIL_KEYS)})
    argmax, rank = raw[:, 1].astype(np.int64), raw[:, 3].astype(np.int64)
    out = []
    for it, a, b in zip(items, ends[:-1], ends[1:], strict=True):
        sampled = it.sampling is not None and not it.sampling.greedy
        out.append(TokenScores(token_ids=np.asarray(it.output_ids, dtype=np.int64),
                               logprob=raw[a:b, 0], argmax=argmax[a:b], margin=raw[a:b, 2],
                               rank=rank[a:b], stats={k: v[a:b] for k, v in cols.items()}
                               if sampled else {}))
    return out
