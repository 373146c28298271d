"""Statistical verdicts: p-values, effect sizes, Holm's correction and practical-effect floors.

A verdict fails only when the test rejects after Holm's step-down correction over the whole family
of tests in the run (family-wise false-alarm rate ≤ α) *and* the effect is at least its practical
floor. The floor is what keeps a correct server whose kernels differ from the reference (bf16 vs
fp32) from failing as the sample grows: with enough tokens any tiny numerical shift becomes
"significant", but not large. Floors are calibrated on correct-server runs
(``benchmarks/detection_power.py``, docs/validation-power.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import stats as st

PIT_BINS = 10
EXACT_CHI2_BELOW = 200
"""Under this many PIT values the χ² p-value is simulated, not read off the χ² law: at n = 58
with 10 bins, the asymptotic p < 1e-4 happens twice as often as it should (measured), which
is where Holm's smallest thresholds sit."""
NULL_DRAWS = 100_000


@dataclass
class StatTest:
    group: str
    name: str
    p: float
    effect: float
    floor: float
    effect_label: str
    n: int
    kind: str = ""
    """What is tested, for code to tell the tests apart: ``ks``, ``chi2``, ``loglik``,
    ``temperature`` (``name`` is for people)."""
    p_adjusted: float = 1.0
    rejected: bool = False

    @property
    def failed(self) -> bool:
        return self.rejected and abs(self.effect) >= self.floor

    def to_json(self) -> dict[str, Any]:
        return self.__dict__ | {"failed": self.failed}

    def describe(self) -> str:
        return (f"{self.group}: {self.name} p={self.p:.2e} (Holm {self.p_adjusted:.2e}), "
                f"{self.effect_label}={self.effect:+.4f} (floor {self.floor:g}), n={self.n}")


def holm_step_down(p_values: list[float], alpha: float) -> tuple[list[float], list[bool]]:
    """Holm's step-down procedure: each p-value's Holm-adjusted value and whether it is
    rejected (family-wise error rate ≤ alpha), in the order given."""
    m = len(p_values)
    adjusted, rejected = [1.0] * m, [False] * m
    running = 0.0
    stop = False
    for k, i in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - k) * p_values[i]))
        adjusted[i] = running
        stop = stop or p_values[i] > alpha / (m - k)
        rejected[i] = not stop
    return adjusted, rejected


def holm(tests: list[StatTest], alpha: float) -> None:
    """Holm's step-down procedure, in place: family-wise error rate ≤ alpha."""
    adjusted, rejected = holm_step_down([t.p for t in tests], alpha)
    for t, a, r in zip(tests, adjusted, rejected, strict=True):
        t.p_adjusted, t.rejected = a, r


def holm_rejected(p_values: list[float], alpha: float) -> list[bool]:
    """Holm's step-down over plain p-values: which are rejected (family-wise false alarms
    ≤ alpha)."""
    return holm_step_down(p_values, alpha)[1]


def pit_ks(pit: np.ndarray, group: str, floor: float, deff: float = 1.0) -> StatTest:
    """Kolmogorov–Smirnov distance of the PIT values from U(0, 1); with a design effect
    (``checks.core.shared_seeds``) the p-value is that of n/deff independent values."""
    r = st.kstest(pit, "uniform")
    p = float(r.pvalue) if deff <= 1 else float(st.kstwo.sf(r.statistic,
                                                            max(1, int(len(pit) / deff))))
    return StatTest(group, "PIT uniformity (KS)", p, float(r.statistic), floor, "D",
                    len(pit), "ks")


def pit_chi2(pit: np.ndarray, group: str, floor: float, deff: float = 1.0) -> StatTest:
    """χ² on PIT deciles (divided by the design effect); effect is Cohen's w = sqrt(χ²/n)."""
    counts = np.histogram(pit, bins=PIT_BINS, range=(0.0, 1.0))[0]
    stat = float(st.chisquare(counts).statistic)
    x, n = stat / deff, len(pit)
    if 0 < n < EXACT_CHI2_BELOW:
        null = chi2_null(n)  # (1 + hits) / (1 + draws): a valid p-value, never 0
        p = (1 + len(null) - int(np.searchsorted(null, x - 1e-9))) / (1 + len(null))
    else:
        p = float(st.chi2.sf(x, PIT_BINS - 1))
    return StatTest(group, "PIT uniformity (χ²)", p, float(np.sqrt(stat / max(n, 1))), floor,
                    "w", n, "chi2")


@lru_cache(maxsize=64)
def chi2_null(n: int) -> np.ndarray:
    """The χ² statistic of n uniform PIT values in ``PIT_BINS`` bins, sorted: ``NULL_DRAWS``
    draws from a fixed seed, so a p-value is the same on every run."""
    counts = np.random.default_rng(n).multinomial(n, [1 / PIT_BINS] * PIT_BINS, NULL_DRAWS)
    expected = n / PIT_BINS
    return np.sort(((counts - expected) ** 2 / expected).sum(1))


def loglik_z(excess: float, var: float, n: int, group: str, floor: float,
             deff: float = 1.0) -> StatTest:
    """Σ log q(y) against its expectation -Σ H(q): a martingale CLT z-score, from the sums a
    group's tokens pool (``excess`` = Σ (log q(y) + H(q)), ``var`` = Σ Var_q(log q), n tokens).

    Effect: mean excess log-likelihood per token in nats. Negative: tokens less likely than a
    correct sampler's (too hot, truncation ignored, other weights); positive: more likely (too
    cold, nucleus too small).
    """
    sd = float(np.sqrt(var * deff))
    z = excess / sd if sd > 0 else 0.0
    return StatTest(group, "log-likelihood z", float(2 * st.norm.sf(abs(z))), excess / n,
                    floor, "nats/token", n, "loglik")


@dataclass
class TemperatureFit:
    estimate: float
    low: float
    high: float
    test: StatTest
    nucleus: tuple[float, float] | None = None
    """(smallest top_p that holds every served token, requested top_p), where top_p < 1."""
    level: float = 0.95
    """The interval's coverage: simultaneous over the check's family (1 − α/m), so that an
    interval excluding the request goes with a failed test, not with a pass."""
    detectable: float | None = None
    """The smallest relative temperature error these tokens would have caught with 95% power
    at the family's level (never below the floor); None where the profile has no curvature."""
    temperatures: tuple[float, ...] = ()
    profile: tuple[float, ...] = ()
    """The log-likelihood at each of ``temperatures``, exactly as the test read it (the
    report draws it beside the interval, so the two agree)."""


OUTSIDE = -1e9
"""The log-likelihood a token outside the support costs a temperature profile."""


def temperature_profile(temp_ll: np.ndarray) -> np.ndarray:
    """Total log-likelihood at each grid temperature (a token outside the support costs
    ``OUTSIDE``)."""
    return np.where(np.isfinite(temp_ll), temp_ll, OUTSIDE).sum(0)


def temperature_fit(temp_ll: np.ndarray, requested: float, factors: np.ndarray, group: str,
                    floor: float, level: float = 0.95) -> TemperatureFit:
    """Profile likelihood over the temperature grid: MLE, 95% interval, LR test of the request.
    ``temp_ll[i, g]`` is log q_i(y_i) at temperature ``requested * factors[g]``."""
    return profile_fit(temperature_profile(temp_ll), temp_ll.shape[0], requested, factors,
                       group, floor, level)


def profile_fit(total: np.ndarray, n: int, requested: float, factors: np.ndarray, group: str,
                floor: float, level: float = 0.95) -> TemperatureFit:
    """``temperature_fit`` from the profile itself (``temperature_profile`` of n tokens, which
    sums over chunks). The MLE is
    refined by a parabola through the best grid point and its neighbours, in the inverse
    temperature: the log-likelihood is concave there (a log-partition function is convex), and
    that is the grid's own coordinate when it is evenly spaced in 1/factor, as scoring's is.
    """
    x = np.log(requested * factors)
    g = int(np.argmax(total))
    est = x[g]
    if 0 < g < len(x) - 1 and total[g - 1] > -1e8 and total[g + 1] > -1e8:
        y0, y1, y2 = total[g - 1:g + 2]
        b0, b1, b2 = 1 / factors[g - 1:g + 2]
        # vertex of the parabola through (b0, y0), (b1, y1), (b2, y2), any spacing
        num = (b1 - b0) ** 2 * (y1 - y2) - (b1 - b2) ** 2 * (y1 - y0)
        den = (b1 - b0) * (y1 - y2) - (b1 - b2) * (y1 - y0)
        curvature = ((y2 - y1) / (b2 - b1) - (y1 - y0) / (b1 - b0)) / (b2 - b0)
        if den != 0 and curvature < 0:
            est = np.log(requested / (b1 - 0.5 * num / den))
    best = float(np.max(total))
    low, high = _crossings(x, total, g, best - st.chi2.ppf(level, 1) / 2)
    at_request = float(np.interp(np.log(requested), x, total))
    lr = max(0.0, 2 * (best - at_request))
    estimate = float(np.exp(est))
    detectable = _detectable(x, total, g, level, floor)
    test = StatTest(group, "temperature = requested (LR)", float(st.chi2.sf(lr, 1)),
                estimate / requested - 1, floor, "relative error", n, "temperature")
    return TemperatureFit(estimate, float(np.exp(min(low, est))), float(np.exp(max(high, est))),
                          test, level=level, detectable=detectable,
                          temperatures=tuple(float(t) for t in requested * factors),
                          profile=tuple(float(v) for v in total))


POWER = 0.95


def _detectable(x: np.ndarray, total: np.ndarray, g: int, level: float, floor: float
                ) -> float | None:
    """Power planning from the profile's curvature at its peak (the observed information of
    log T): an error δ in log T is caught with probability ``POWER`` by a two-sided test at
    1 − ``level`` when |δ| ≥ (z_{level/2} + z_power) · SE. Reported as a relative error."""
    if not 0 < g < len(x) - 1 or min(total[g - 1:g + 2]) < -1e8:
        return None
    (x0, x1, x2), (y0, y1, y2) = x[g - 1:g + 2], total[g - 1:g + 2]
    d2 = 2 * ((y2 - y1) / (x2 - x1) - (y1 - y0) / (x1 - x0)) / (x2 - x0)
    if not d2 < 0:
        return None
    se = 1 / np.sqrt(-d2)
    z = st.norm.ppf(1 - (1 - level) / 2) + st.norm.ppf(POWER)
    return float(max(floor, np.expm1(z * se)))


def _crossings(x: np.ndarray, y: np.ndarray, peak: int, level: float) -> tuple[float, float]:
    """Where the profile falls below ``level`` on each side of the peak, linearly interpolated
    between grid points (the interval is often narrower than one grid step)."""
    def side(step: int) -> float:
        i = peak
        while 0 <= i + step < len(x) and y[i + step] >= level:
            i += step
        j = i + step
        if not 0 <= j < len(x):
            return float(x[i])
        return float(x[i] + (y[i] - level) / (y[i] - y[j]) * (x[j] - x[i]))
    return side(-1), side(+1)
