"""What the sampler check reads of each sampled record, kept so that the chunks of a large set
pool it and the check is made once over the whole set, as one process makes it.

Its tests are sums over tokens: a truncation's λ (the mass it would remove), the served tokens
where it would cut and its gain; a penalty's score, information and Σ score². Which tokens a
test reads depends only on each record's request (its settings, which it left to the server)
and on whether the reference could price the cut at that token, so each record keeps its own
sums per alternative, and the draws (a seeded request repeated is one draw; an ignored seed's
repeated text is one draw, ``FitEvidence.draws``) are summed at the end. Each test's estimate
is a quantile of the tokens' own places (rank, q/max q, mass above), which no sum holds: those
three are kept a token (11 bytes with the finiteness bits), about as much as the fit's PIT.
The temperature profile is the fit's (``FitEvidence.profile``), read, not kept twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from servecheck.checks.core.alternatives import Tail, tail_gain
from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.fit_evidence import FitEvidence
from servecheck.checks.core.pooling import MIN_SAMPLED_TOKENS, informative
from servecheck.checks.core.token_rules import violations
from servecheck.reference.tails import K_GRID, MIN_P_GRID, TOP_P_GRID

__all__ = ["ALTERNATIVES", "NEUTRAL", "PENALTIES", "RULES", "SCOPES", "Chosen",
           "SamplerEvidence", "sampler_evidence"]

ALTERNATIVES = (*(("top_k", k, f"beyond_k{k}") for k in K_GRID),
                *(("min_p", c, f"below_min_p{c:g}") for c in MIN_P_GRID),
                *(("top_p", p, f"beyond_top_p{p:g}") for p in TOP_P_GRID))
"""Each truncation the sampler tests: its setting, grid value and the ``reference.tails``
column of the mass it would remove."""
NEUTRAL = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0,
           "presence_penalty": 0.0, "frequency_penalty": 0.0}
"""Each setting's "off" value, which a request may set explicitly (a neutral sampler sent to a
server with defaults of its own)."""
SETTINGS = tuple(NEUTRAL)
SCOPES = ("out", "all")
PENALTIES = ("presence_penalty", "frequency_penalty", "repetition_penalty")
RULES = ("top_k", "top_p", "min_p")
"""The requested truncations a server can drop (tokens outside them, ``dropped_settings``)."""
MIN_TOKENS = MIN_SAMPLED_TOKENS


@dataclass(frozen=True, eq=False)
class SamplerEvidence:
    """Per sampled record (a row, in set order: the fit's rows, ``FitEvidence``), arrays by
    row unless said. ``merge`` appends later chunks' rows, all at once."""

    records: int
    """Records of the run (sampled or not): the power rows scale by it."""
    tokens: np.ndarray
    """Informative tokens."""
    length: np.ndarray
    """Every output token (the dropped settings' denominator)."""
    off: np.ndarray
    """rows × ``SETTINGS``: the request set the setting to its "off" value explicitly."""
    unset: np.ndarray
    """rows × ``SETTINGS``: the request left the setting to the server."""
    tails: np.ndarray
    """rows × 4·``ALTERNATIVES``: per alternative, the informative tokens whose cut the
    reference could price, Σ mass removed, the served tokens where it cuts, Σ ``tail_gain``
    of the others."""
    penalties: np.ndarray
    """rows × ``SCOPES``·``PENALTIES``·3: Σ score, Σ information, Σ score²; NaN where the
    row's context was not scored."""
    dropped: np.ndarray
    """rows × 2·``RULES``: tokens outside the requested rule beyond the tolerance, and the
    loosest value that holds them."""
    rank: np.ndarray
    """Per informative token, every row's in turn: tokens with larger q (uint16)."""
    ratio: np.ndarray
    """q(y) / max q (float32, as scored)."""
    above: np.ndarray
    """q-mass ranked above y (float32)."""
    finite: np.ndarray
    """Bit j set where ``ALTERNATIVES[j]``'s mass is known at the token (uint16)."""

    def __len__(self) -> int:
        return len(self.tokens)

    def merge(self, *later: SamplerEvidence) -> SamplerEvidence:
        pieces = (self, *later)
        arrays = {f: np.concatenate([getattr(e, f) for e in pieces]) for f in _ARRAYS}
        return SamplerEvidence(sum(e.records for e in pieces), **arrays)

    def chosen(self, rows: np.ndarray, fit: FitEvidence) -> Chosen:
        """The draws ``rows`` (of the fit's, the same rows) as the tests read them."""
        if len(fit) != len(self):
            raise ValueError(f"the sampler's evidence has {len(self)} rows, the fit's "
                             f"{len(fit)}: not the same records")
        return Chosen(self, fit, rows)


_ARRAYS = ("tokens", "length", "off", "unset", "tails", "penalties", "dropped", "rank", "ratio",
           "above", "finite")


class Chosen:
    """The distinct draws of a ``SamplerEvidence``: each test's tokens, by rows."""

    def __init__(self, ev: SamplerEvidence, fit: FitEvidence, rows: np.ndarray) -> None:
        self.ev, self.rows = ev, rows
        self.tokens = ev.tokens[rows]
        samplings = [fit.samplings[g] for g in fit.group[rows]]
        self.params = {k: np.array([getattr(s, k) for s in samplings], dtype=float)
                       for k in ("temperature", "top_k", "top_p", "min_p")}
        self.profile = (fit.profile[rows], fit.outside[rows])
        """The fit's temperature profile of each row: Σ log q inside the support, and the
        tokens outside it, at each temperature."""

    def tail(self, j: int, use: np.ndarray) -> Tail:
        t = self.ev.tails[self.rows[use], 4 * j:4 * j + 4].sum(0)
        return Tail(int(t[0]), float(t[1]), int(t[2]), float(t[3]))

    def counted(self, j: int) -> np.ndarray:
        """Per chosen row: its tokens alternative ``j`` can read."""
        return self.ev.tails[self.rows, 4 * j]

    def places(self, j: int, use: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """rank, q/max q and mass above of the tokens of rows ``use`` that alternative ``j``
        reads."""
        mask = np.zeros(len(self.ev), dtype=bool)
        mask[self.rows[use]] = True
        at = np.repeat(mask, self.ev.tokens) & ((self.ev.finite >> j) & 1).astype(bool)
        return self.ev.rank[at].astype(np.float32), self.ev.ratio[at], self.ev.above[at]

    def acted_on(self, setting: str, j: int, eligible: np.ndarray) -> np.ndarray:
        """The rows a server-side ``setting`` would act on: of those it could change, the
        ones whose requests left it unset, where they hold enough tokens (a default applies
        only there: CTranslate2's top_k 1 leaves a request's own top_k 40 alone), else all of
        them (a server that overrides what was asked)."""
        unset = eligible & self.ev.unset[self.rows, SETTINGS.index(setting)]
        return unset if self.counted(j)[unset].sum() >= MIN_TOKENS else eligible

    def asked_off(self, setting: str, use: np.ndarray | None = None) -> float | None:
        """The "off" value of ``setting`` when every token (of rows ``use``) comes from a
        request that set it so explicitly, else None."""
        have = self.tokens > 0 if use is None else use
        flags = self.ev.off[self.rows[have], SETTINGS.index(setting)]
        return NEUTRAL[setting] if len(flags) and flags.all() else None

    def penalty_sums(self, scope: str, setting: str) -> np.ndarray | None:
        """Σ score, Σ information, Σ score² of a penalty over the chosen rows; None where a
        row's context was not scored."""
        k = 3 * (SCOPES.index(scope) * len(PENALTIES) + PENALTIES.index(setting))
        sums = self.ev.penalties[self.rows, k:k + 3]
        return sums.sum(0) if np.isfinite(sums).all() else None


def sampler_evidence(ctx: CheckContext) -> SamplerEvidence:
    """The evidence of the sampled records the screening kept (every one: the distinct draws
    are chosen over the whole set, as the fit's are)."""
    rows = ctx.sampled()
    scores = ctx.scores(rows)
    keep = [informative(scores[i]) for i in rows]
    n = np.array([int(m.sum()) for m in keep], dtype=np.int64)
    owner = np.repeat(np.arange(len(rows)), n)
    kept = np.concatenate(keep) if rows else np.zeros(0, dtype=bool)

    def col(key: str) -> np.ndarray:  # one mask over the joined columns: not one a record
        return np.concatenate([scores[i].stats[key] for i in rows])[kept] if rows \
            else np.zeros(0, dtype=np.float32)

    def per_row(values: np.ndarray) -> np.ndarray:  # (float even with no token: numpy's is int)
        return np.bincount(owner, weights=values, minlength=len(rows)).astype(np.float64)

    rank, above = col("rank_q"), col("above")
    ratio = np.exp(col("logq")) / col("top")
    places = {"top_k": rank, "min_p": ratio, "top_p": above}
    tails, finite = [], np.zeros(len(owner), dtype=np.uint16)
    for j, (setting, value, key) in enumerate(ALTERNATIVES):
        removed = col(key)
        known = np.isfinite(removed)
        finite |= known.astype(np.uint16) << j
        place = places[setting]
        out = known & (place < value if setting == "min_p" else place >= value)
        safe = np.where(known, removed, 0)
        tails += [per_row(known), per_row(safe), per_row(out),
                  per_row(np.where(known & ~out, tail_gain(safe), 0))]
    t = np.repeat(np.array([ctx.sampling[i].temperature for i in rows], dtype=float), n)
    params = [ctx.records[i].parameters for i in rows]
    return SamplerEvidence(
        len(ctx.records), n, np.array([len(scores[i]) for i in rows], dtype=np.int64),
        np.array([[getattr(p, k) == v for k, v in NEUTRAL.items()] for p in params],
                 dtype=bool).reshape(-1, len(SETTINGS)),
        np.array([[getattr(p, k) is None for k in SETTINGS] for p in params],
                 dtype=bool).reshape(-1, len(SETTINGS)),
        np.stack(tails, axis=1).astype(np.float64),
        np.stack(_penalties(col, per_row, t), axis=1).astype(np.float64),
        _dropped(ctx, rows, scores), rank.astype(np.uint16), ratio.astype(np.float32),
        above.astype(np.float32), finite)


def _penalties(col: Any, per_row: Any, t: np.ndarray) -> list[np.ndarray]:
    """Per scope and penalty, the per-row sums of its score test (``alternatives.penalty``):
    the score is the derivative of log q(y) in the penalty at 0 (``reference.tails``)."""
    out = []
    for scope in SCOPES:
        seen, count, rep = col(f"{scope}_seen"), col(f"{scope}_count"), col(f"{scope}_rep")
        count_y = col(f"{scope}_count_y")
        seen_y = (count_y > 0).astype(float)
        unknown = per_row(~np.isfinite(seen)) > 0
        for score, fisher in (((seen - seen_y) / t, seen * (1 - seen) / t ** 2),
                              ((count - count_y) / t, (col(f"{scope}_count2") - count ** 2) / t ** 2),
                              ((rep - col("abs_zy") * seen_y) / t,
                               (col(f"{scope}_rep2") - rep ** 2) / t ** 2)):
            for v in (score, np.clip(fisher, 0, None), np.square(score)):
                sums = per_row(np.nan_to_num(v))
                sums[unknown] = np.nan
                out.append(sums)
    return out


def _dropped(ctx: CheckContext, rows: list[int], scores: dict) -> np.ndarray:
    """Per row and requested rule: the tokens outside it beyond the tolerance
    (``token_rules.violations``) and the loosest value that holds them (top_k: rank + 1;
    top_p: the mass above before the nucleus; min_p: none)."""
    outside_of, _, _ = violations(ctx, rows, scores)
    out = np.zeros((len(rows), 2 * len(RULES)))
    for r, i in enumerate(rows):
        for k, rule in enumerate(RULES):
            found = [t for t, name, _ in outside_of[i] if name == rule]
            if not found:
                continue
            out[r, 2 * k] = len(found)
            if rule == "top_k":
                out[r, 2 * k + 1] = float(scores[i].rank[found].max()) + 1
            elif rule == "top_p":
                out[r, 2 * k + 1] = float(scores[i].stats["pre_nucleus_above"][found].max())
    return out
