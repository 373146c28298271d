"""What the fit and temperature tests read of each sampled record, kept in columns that chunks
of a large set concatenate: the test is then made once over the whole set, as one process
makes it.

Sums cannot stand for everything. The KS test reads every PIT value (4 bytes a token), the
seed design reads the PIT by output position of seeded records, and which records count is
only known over the whole set: a request repeated with its seed is one draw (the first), and
where the seeds check finds the seed ignored, so is each text a request served across seeds
(``shared_seeds.distinct_draws``). So each record keeps its keys, its PIT values and a few sums
(log-likelihood excess and variance, the temperature profile); the draws are chosen at the end,
from the seeds check's pooled verdict (``Pooling.reads``), and the sampler reads them too.
About 8 bytes a sampled token and some 300 a record: a million records of 100 tokens hold
under 1.5 GB, against the 13.6 KB a record a whole run holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.pooling import TRIVIAL, informative
from servecheck.checks.core.shared_seeds import SeedDesign, design_of, draw_keys, first_draws, stream_row
from servecheck.reference.sampling import Sampling
from servecheck.reference.token_scores import TEMPERATURE_FACTORS

__all__ = ["FIT", "Draws", "FitEvidence", "fit_evidence"]

FIT = "fit"
"""The fit check's name: the sampler and mask rows read its pooled evidence (``Pooling.reads``)."""


@dataclass(frozen=True, eq=False)
class FitEvidence:
    """Per sampled record (a row, in set order), what the fit tests read; arrays by row unless
    said. ``merge`` appends later chunks' rows, all at once."""

    convention: dict[str, Any]
    """The sampling convention the rows were scored under (``Convention.describe``)."""
    samplings: tuple[Sampling, ...]
    group: np.ndarray
    """Each row's parameter group (an index into ``samplings``)."""
    labels: tuple[str, ...]
    seed: tuple[int | None, ...]
    keys: tuple[tuple[str, str] | None, ...]
    """A seeded row's ``shared_seeds.draw_keys``."""
    sources: tuple[str, ...]
    sums: np.ndarray
    """rows × 3: Σ (log q(y) + H(q)) and Σ Var_q(log q) over the informative tokens, and the
    smallest nucleus that holds every served token (0 where the request set no top_p)."""
    profile: np.ndarray
    """rows × temperatures: Σ log q(y) at each, over the informative tokens inside the support."""
    outside: np.ndarray
    """rows × temperatures: informative tokens outside the support at each."""
    pit_n: np.ndarray
    pit: np.ndarray
    """The informative tokens' PIT values, every row's in turn (float32, as scored)."""
    stream_n: np.ndarray
    stream: np.ndarray
    """Seeded rows' ``stream_row``, every one's in turn (0 long for an unseeded row)."""
    least: tuple[str, ...]
    """Each row's least likely informative token, as a finding names it ("" without one)."""

    def __len__(self) -> int:
        return len(self.labels)

    def merge(self, *later: FitEvidence) -> FitEvidence:
        pieces = (self, *later)
        samplings = list(self.samplings)
        groups = [np.array([_index(samplings, s) for s in e.samplings], dtype=np.int64)[e.group]
                  if len(e) else e.group for e in pieces]
        return FitEvidence(  # the order of the last chunk: the first that settled it holds on
            pieces[-1].convention, tuple(samplings),
            np.concatenate(groups), *(tuple(chain.from_iterable(getattr(e, f) for e in pieces))
                                      for f in ("labels", "seed", "keys", "sources")),
            *(np.concatenate([getattr(e, f) for e in pieces])
              for f in ("sums", "profile", "outside", "pit_n", "pit", "stream_n", "stream")),
            tuple(chain.from_iterable(e.least for e in pieces)))

    def draws(self, ignored: bool) -> Draws:
        """The rows that are distinct draws, in set order (``shared_seeds.first_draws``);
        ``ignored``: the seeds check finds the seed ignored (its pooled verdict)."""
        return Draws(self, np.array(first_draws(list(self.keys), ignored), dtype=bool).reshape(-1),
                     ignored)


@dataclass(frozen=True, eq=False)
class Draws:
    """The distinct draws of a ``FitEvidence``, and what the tests pool over them."""

    of: FitEvidence
    keep: np.ndarray
    ignored: bool
    """The seed looks ignored (the seeds check): every seeded record reads one stream."""

    def groups(self) -> dict[Sampling, np.ndarray]:
        """Each parameter group's rows, groups in the order first drawn."""
        rows = np.flatnonzero(self.keep)
        order = dict.fromkeys(self.of.group[rows].tolist())
        return {self.of.samplings[g]: rows[self.of.group[rows] == g] for g in order}

    def pit(self, rows: np.ndarray) -> np.ndarray:
        return self.of.pit[np.repeat(_chosen(len(self.of), rows), self.of.pit_n)]

    def seeded(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The design's input (``shared_seeds.design_of``): seeds, lengths and stream rows of
        the seeded draws."""
        rows = np.array([r for r in np.flatnonzero(self.keep) if self.of.seed[r] is not None],
                        dtype=np.int64)
        mask = np.repeat(_chosen(len(self.of), rows), self.of.stream_n)
        return (np.array([self.of.seed[r] for r in rows], dtype=np.int64),
                self.of.stream_n[rows], self.of.stream[mask])

    def design(self) -> SeedDesign:
        """How much the draws share random streams (every pooled test counts tokens at 1/deff)."""
        return design_of(*self.seeded(), self.ignored)

    def z(self, row: int) -> float:
        excess, var, _ = self.of.sums[row]
        return float(excess / np.sqrt(var)) if var > 0 else 0.0


def _chosen(n: int, rows: np.ndarray) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return mask


def _index(samplings: list[Sampling], s: Sampling) -> int:
    if s not in samplings:
        samplings.append(s)
    return samplings.index(s)


def fit_evidence(ctx: CheckContext) -> FitEvidence:
    """The evidence of the sampled records the screening kept (every one: the distinct draws
    are chosen over the whole set, ``FitEvidence.draws``)."""
    rows = ctx.sampled()
    scores = ctx.scores(rows)
    samplings: list[Sampling] = []
    tok = ctx.ref.tokenizer
    sums, profile, outside, pits, streams, least = [], [], [], [], [], []
    for i in rows:
        s = scores[i]
        m = informative(s)
        ll = s.stats["temp_ll"][m]
        inside = np.isfinite(ll)
        pits.append(s.stats["pit"][m])
        profile.append(np.where(inside, ll, 0.0).sum(0, dtype=np.float64))
        outside.append((~inside).sum(0))
        streams.append(stream_row(s) if ctx.records[i].parameters.seed is not None else
                       np.zeros(0, dtype=np.float32))
        above = s.stats["pre_nucleus_above"]
        nucleus = float(above[above < TRIVIAL].max(initial=0.0)) if ctx.sampling[i].top_p < 1 \
            else 0.0
        sums.append((float((s.stats["logq"][m] + s.stats["entropy"][m]).sum(dtype=np.float64)),
                     float(s.stats["var"][m].sum(dtype=np.float64)), nucleus))
        at = np.flatnonzero(m)
        k = int(at[np.argmin(s.stats["logq"][at])]) if len(at) else -1
        least.append("" if k < 0 else
                     f"least likely token {k} {tok.convert_ids_to_tokens(int(s.token_ids[k]))!r} "
                     f"q={np.exp(s.stats['logq'][k]):.4f} (raw rank {int(s.rank[k])})")
    width = len(TEMPERATURE_FACTORS)
    group = np.array([_index(samplings, ctx.sampling[i]) for i in rows], dtype=np.int64)
    return FitEvidence(
        ctx.convention.describe(), tuple(samplings), group,
        tuple(ctx.labels[i] for i in rows),
        tuple(ctx.records[i].parameters.seed for i in rows), tuple(draw_keys(ctx.records[i]) for i in rows),
        tuple(ctx.output_ids(i)[1].value for i in rows),
        np.array(sums, dtype=np.float64).reshape(-1, 3),
        np.array(profile, dtype=np.float64).reshape(-1, width),
        np.array(outside, dtype=np.int64).reshape(-1, width),
        np.array([len(p) for p in pits], dtype=np.int64), _flat(pits),
        np.array([len(r) for r in streams], dtype=np.int64), _flat(streams), tuple(least))


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays).astype(np.float32) if arrays else np.zeros(0, dtype=np.float32)
