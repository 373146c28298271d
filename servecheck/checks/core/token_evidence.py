"""Every scored output token's evidence, with where it sits in its context, and the tests that
compare two sets of tokens or follow the evidence along the context.

A fault of position (a sliding window served wrong, a KV cache that loses precision as it fills)
or of cache state (a prefix cache restoring the wrong keys and values) leaves the tokens of
short contexts, or of cache misses, as a correct server's, and only the others wrong: pooled
over a whole set, the greedy, fit and log-probs checks see it diluted. So each token keeps its
absolute position (prompt length + output index) and the three kinds of evidence the other
checks read, made by their own rules:

- a greedy token: whether it is a hard mismatch (not the argmax within δ, ``token_rules``);
- a sampled token: its randomised quantile residual −Φ⁻¹(u), u its randomised PIT (Dunn and
  Smyth 1996). For a correct sampler the u are independent U(0, 1) whatever the distributions,
  so the residuals are exactly independent N(0, 1): a mean below 0 is tokens less likely than a
  correct sampler's, and a two-sample or a slope test on them is exact at any size (the log q
  of a token has a long lower tail that the pooled log-likelihood z needs 400 tokens to tame);
- a token with a served log-prob: its |served − reference| under the server's convention
  (``served_logprobs``).

The tests are one-sided, towards "worse", each with its practical floor: a correct server's
evidence is the same on both sides (no mismatch, residuals N(0, 1)), and its log-prob |Δ| moves
with the context only by what its numerics do (bf16 against the fp32 reference on the built-in
model: mean |Δ| 0.004 before position 128, 0.008 at 256–384, 0.012 past 384), in proportion to
their own size: a jump in |Δ| must be beyond the numerics' (``jump_floor``), a slope a quarter
of their tolerance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as st

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.explain import family_reason, headline
from servecheck.checks.core.options import Numerics
from servecheck.checks.core.results import Details, Verdict
from servecheck.checks.core.stats import StatTest

__all__ = ["GREEDY_FLOOR", "MIN_TOKENS", "RESIDUAL_FLOOR", "SERVED_MIN", "SERVED_RATIO",
           "SERVED_SHARE", "ComparedDetails", "Side", "TokenEvidence", "compare", "describe_off",
           "jump_floor", "off_records",
           "sliding_window", "slopes"]

MIN_TOKENS = 20
"""Tokens of a kind each side needs before its test runs."""
GREEDY_FLOOR = 0.01
"""A greedy mismatch rate one point higher is worth a person's time (a correct server's is 0:
a near-tie within δ is no mismatch)."""
RESIDUAL_FLOOR = 0.1
"""Mean quantile residual, in standard deviations: bf16 kernels move a token's PIT by at most
about half the L1 distance of the distributions (p99 0.032 on the built-in model), a residual
by about 0.04; a tenth of a standard deviation is beyond them."""
SERVED_SHARE = 0.25
"""The log-prob |Δ| slope's floor, and the most a jump's floor asks, as a share of the
numerics' tolerance: a correct bf16 server's mean |Δ| grew by 0.002 per 128 positions, against
0.025 here."""
SERVED_MIN = 0.1
"""The least a jump in log-prob |Δ| must be, as a share of the numerics' tolerance (fp32:
0.001 nats), so that float32 rounding never counts."""
SERVED_RATIO = 4.0
"""…and at least this many times the base side's own mean |Δ|: a server's numerics err in
proportion to themselves (a correct bf16 server's |Δ| was 0.004 before the window and at most
2.7 times that far past it), while a fault adds its own error whatever the base (a window one
key too wide at fp32: 6.7e-7 before, 0.0024 past, 3,500 times)."""


def jump_floor(tolerance: float, base: float) -> float:
    """The floor of a jump in mean log-prob |Δ| over a base side whose mean |Δ| is ``base``."""
    return min(SERVED_SHARE * tolerance, max(SERVED_MIN * tolerance, SERVED_RATIO * base))


WORST = 20
"""Records a failure names, worst first."""


def sliding_window(ctx: CheckContext) -> int | None:
    """The checkpoint's sliding window W, where it has sliding-window layers (read from its
    config, once: a run scoring on a cluster never loads the weights here)."""
    def read() -> int | None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(ctx.ref.path, local_files_only=True)
        config = config.get_text_config()
        window = getattr(config, "sliding_window", None)
        types = getattr(config, "layer_types", None)
        if not window or (types is not None and "sliding_attention" not in types):
            return None
        return int(window)

    return ctx.once("sliding window", read)


@dataclass(frozen=True)
class TokenEvidence:
    """Flat arrays, one entry per scored output token of the kept records
    (``token_pool.TokenPool.evidence``)."""

    record: np.ndarray
    """The token's record (a row of its ``TokenPool``: the kept records in set order)."""
    position: np.ndarray
    """Its absolute position: its record's prompt length + its output index."""
    greedy: np.ndarray
    """A greedy record's token."""
    mismatch: np.ndarray
    """A greedy token that is a hard mismatch (beyond δ)."""
    residual: np.ndarray
    """A sampled informative token's quantile residual (NaN elsewhere)."""
    served: np.ndarray
    """|served − reference| log-prob (NaN where none, or the token is outside the support)."""


@dataclass(frozen=True)
class Side:
    """One set of tokens' evidence, summarised: what the reports and the verdicts read."""

    greedy: int
    mismatches: int
    sampled: int
    residual: float | None
    """Mean quantile residual (None: no sampled token)."""
    served: int
    served_mean: float | None
    """Mean log-prob |Δ| (None: no served log-prob)."""

    @classmethod
    def of(cls, ev: TokenEvidence, mask: np.ndarray) -> Side:
        r, d = ev.residual[mask], ev.served[mask]
        r, d = r[~np.isnan(r)], d[~np.isnan(d)]
        return cls(int(np.sum(mask & ev.greedy)), int(np.sum(mask & ev.mismatch)), len(r),
                   float(r.mean()) if len(r) else None, len(d),
                   float(d.mean()) if len(d) else None)

    def clean(self, tolerances: Numerics) -> bool:
        """Within a correct server's numerics, by the rules the greedy and log-probs checks
        judge the whole set by, and with no residual beyond its floor (a chance one beyond it
        needs both a large mean and few tokens)."""
        return (not self.mismatches and (self.served_mean or 0.0) <= tolerances.logprob
                and (self.residual is None or self.residual > -RESIDUAL_FLOOR
                     or abs(self.residual) * np.sqrt(self.sampled) < st.norm.isf(0.005)))


@dataclass(frozen=True)
class ComparedDetails(Details):
    """What a check comparing sets of tokens hands over: each set's evidence and the tests,
    one Holm family at the check's α; a subclass names the cause (``likely_cause``)."""

    alpha: float
    sides: dict[str, Side]
    stat_tests: tuple[StatTest, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in super().to_json().items() if k != "stat_tests"}
        return {**out, "tests": [t.to_json() for t in self.stat_tests]}

    def tests(self) -> list[StatTest]:
        return list(self.stat_tests)

    def side_rows(self) -> list[dict[str, Any]]:
        return [{"set": name, **asdict(side)} for name, side in self.sides.items()]

    def family(self) -> tuple[float, int | None]:
        return self.alpha, len(self.stat_tests)

    def effect(self) -> str:
        big = headline(self.tests())
        return f"{big.effect_label} {big.effect:+.3g} (floor {big.floor:g})" if big else "—"

    def reason(self, verdict: Verdict) -> str | None:
        text = family_reason(verdict, self.tests(), self.alpha, len(self.stat_tests))
        cause = self.likely_cause()
        return f"{text} Named: {cause}." if text and cause and verdict == "fail" else text


def compare(ev: TokenEvidence, worse: np.ndarray, base: np.ndarray, group: str,
            tolerance: float) -> list[StatTest]:
    """One-sided tests that the tokens of ``worse`` are worse than those of ``base``: greedy
    mismatches (Fisher's exact), quantile residuals (two-sample z, exact), log-prob |Δ|
    (Mann–Whitney, its floor ``jump_floor`` of the numerics' log-prob ``tolerance`` and the
    base's |Δ|). A kind either side has fewer than ``MIN_TOKENS`` of is not tested."""
    tests = []
    a, b = ev.mismatch[worse & ev.greedy], ev.mismatch[base & ev.greedy]
    if min(len(a), len(b)) >= MIN_TOKENS:
        p = st.fisher_exact([[a.sum(), len(a) - a.sum()], [b.sum(), len(b) - b.sum()]],
                            alternative="greater").pvalue
        tests.append(StatTest(group, "greedy mismatches", float(p), float(a.mean() - b.mean()),
                              GREEDY_FLOOR, "mismatch rate Δ", len(a) + len(b), "greedy"))
    a, b = (_finite(ev.residual[m]) for m in (worse, base))
    if min(len(a), len(b)) >= MIN_TOKENS:
        z = (a.mean() - b.mean()) / np.sqrt(1 / len(a) + 1 / len(b))
        tests.append(StatTest(group, "quantile residual", float(st.norm.cdf(z)),
                              float(a.mean() - b.mean()), RESIDUAL_FLOOR, "residual Δ (sd)",
                              len(a) + len(b), "residual"))
    a, b = (_finite(ev.served[m]) for m in (worse, base))
    if min(len(a), len(b)) >= MIN_TOKENS:
        p = st.mannwhitneyu(a, b, alternative="greater").pvalue
        tests.append(StatTest(group, "log-prob |Δ|", float(p), float(a.mean() - b.mean()),
                              jump_floor(tolerance, float(b.mean())), "mean |Δ| Δ (nats)",
                              len(a) + len(b), "served"))
    return tests


def slopes(ev: TokenEvidence, mask: np.ndarray, group: str, per: int, tolerance: float
           ) -> list[StatTest]:
    """One-sided tests that the evidence worsens with position, effects per ``per`` positions:
    the quantile residuals' regression on position (exact: Σ c·r / √Σ c² is N(0, 1) for
    centred positions c) and the log-prob |Δ|'s (least squares)."""
    tests = []
    keep = mask & ~np.isnan(ev.residual)
    x, r = ev.position[keep].astype(float), ev.residual[keep]
    if len(r) >= 2 * MIN_TOKENS and np.ptp(x) > 0:
        c = x - x.mean()
        z = float(c @ r / np.sqrt(c @ c))
        tests.append(StatTest(group, "quantile residual slope", float(st.norm.cdf(z)),
                              float(c @ r / (c @ c) * per), RESIDUAL_FLOOR,
                              f"residual per {per} positions (sd)", len(r), "residual slope"))
    keep = mask & ~np.isnan(ev.served)
    x, d = ev.position[keep].astype(float), ev.served[keep]
    if len(d) >= 2 * MIN_TOKENS and np.ptp(x) > 0:
        fit = st.linregress(x, d, alternative="greater")
        tests.append(StatTest(group, "log-prob |Δ| slope", float(fit.pvalue),
                              float(fit.slope * per), SERVED_SHARE * tolerance,
                              f"mean |Δ| per {per} positions (nats)", len(d), "served slope"))
    return tests


def _finite(x: np.ndarray) -> np.ndarray:
    return x[~np.isnan(x)]


def off_records(ev: TokenEvidence, mask: np.ndarray, tolerance: float
                ) -> list[tuple[int, np.ndarray, int, float | None]]:
    """The records whose tokens in ``mask`` are off (a hard mismatch, or a mean log-prob |Δ|
    beyond the log-prob ``tolerance``), worst first: (record, its tokens' positions, hard
    mismatches, mean |Δ|)."""
    out = []
    at = np.flatnonzero(mask)
    at = at[np.argsort(ev.record[at], kind="stable")]  # each record's tokens together, in order
    records = ev.record[at]
    cuts = np.flatnonzero(np.diff(records)) + 1  # one pass over the tokens, not one a record
    for mine in np.split(at, cuts) if len(at) else []:
        wrong = int(np.sum(ev.mismatch[mine]))
        d = _finite(ev.served[mine])
        mean = float(d.mean()) if len(d) else None
        if wrong or (mean or 0.0) > tolerance:
            out.append((int(ev.record[mine[0]]), ev.position[mine], wrong, mean))
    return sorted(out, key=lambda r: -(r[2] + (r[3] or 0.0)))[:WORST]


def describe_off(wrong: int, mean: float | None) -> str:
    said = [f"{wrong} hard mismatch(es)"] if wrong else []
    return ", ".join(said + ([f"mean log-prob |Δ| {mean:.3f}"] if mean is not None else []))
