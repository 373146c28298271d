"""The alternatives to the requested sampler, each tested against the request on pooled tokens.

Each function takes the pooled per-token statistics of the records an alternative applies to
(``reference.tails``) and returns an ``Alternative``: a test of the request against it, the
alternative's log-likelihood gain (how well it explains the tokens, for naming the best one), the
setting's estimate, and what the tokens could have detected.

- **Truncations** (a top_k, min_p or top_p the request did not ask for). Under the request a
  share ``λ = Σ mass removed`` of the tokens should land where the truncation cuts; with it on,
  none do. The count there is Poisson-binomial with mean λ, and Poisson's lower tail bounds its
  own (a Poisson-binomial is more concentrated), so ``P(N ≤ n)`` is a conservative p-value. The
  effect is the deficit 1 − n/λ, floored at a half: a truncation removes it all, numerics none.
- **Penalties** (presence, frequency, repetition). The score of log q(y) in the penalty at 0 has
  mean 0 under the request and variance the Fisher information; a one-step estimate is
  score/information.
- **Temperature** pooled over groups as a scale (T = c·requested, every group's profile summed)
  and as an offset (T = requested + b, each group's profile read at its own factor).

Every test counts tokens at 1/deff (``checks.core.shared_seeds``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special
from scipy import stats as st

from servecheck.checks.core.stats import OUTSIDE, StatTest, profile_fit

DEFICIT_FLOOR = 0.5
"""A truncation fails only when at least half the tokens it would cut are missing."""
PENALTY_FLOORS = {"presence_penalty": 0.1, "frequency_penalty": 0.1, "repetition_penalty": 0.05}
TEMPERATURE_FLOOR = 0.05
"""Pooled over every group: a 5% temperature error (the per-group check's floor is 10%)."""
OUTLIER_NATS = float(np.log(1e3))
"""A token a truncation forbids costs it this much in the gain (a 1-in-1000 slip), not ∞:
a truncating server's numerics can put a token just past the reference's boundary."""
POWER = 0.95


@dataclass
class Alternative:
    setting: str
    """The sampler setting, as engines name it: ``min_p``, ``top_k``, ``top_p``,
    ``temperature``, ``presence_penalty``, ``frequency_penalty``, ``repetition_penalty``."""
    grid_value: float
    """The alternative's value (a truncation's grid point; 0 for penalties and temperature)."""
    test: StatTest
    gain: float
    """Log-likelihood of the tokens under the alternative minus under the request (≥ 0 when it
    explains them better); only for naming the best of the failing ones."""
    estimate: float
    """The setting the tokens point to (a truncation's: the tightest one they allow)."""
    scope: str = ""
    """Penalties: which tokens were counted (``output`` or ``prompt+output``)."""
    requested: float | None = None
    """The value every request this alternative acts on set explicitly (``repetition_penalty``
    1.0, ``top_k`` 0): the server then did not apply what was asked, which is said so."""
    dropped: bool = False
    """A setting the requests set that the served tokens break outright (tokens outside the
    requested top_k, top_p or min_p): the server did not apply it."""

    def describe(self) -> str:
        """What the server did, in the words of its settings."""
        if self.dropped:
            return self._dropped()
        said = self._shape()
        if self.requested is None:
            return said
        return (f"the server did not apply {self.setting}={self.requested} as requested: "
                f"{said}")

    def _shape(self) -> str:
        e = self.estimate
        if self.setting == "min_p":
            return f"served as if min_p ≈ {e:.2g} were on"
        if self.setting == "top_k" and int(e) == 1:
            return ("served greedily where the request asked to sample (as if top_k = 1: an "
                    "engine's greedy default, such as CTranslate2's sampling_topk or "
                    "do_sample off)")
        if self.setting == "top_k":
            return f"top_k ≈ {int(e)} applied where the request asked for more (or 0, off)"
        if self.setting == "top_p":
            return f"served as if top_p ≈ {e:.2f} were on"
        if self.setting == "temperature":
            return f"temperature ≈ requested × {e:.2f}"
        if self.setting == "temperature offset":
            return f"temperature ≈ requested {e:+.2f}"
        name = self.setting.replace("_", " ")
        return f"{name} ≈ {e:.2f} ({self.scope} tokens counted)"

    def _dropped(self) -> str:
        n = self.test.n
        need = {"top_p": f"; the served tokens need top_p ≥ {self.estimate:.3f}",
                "top_k": f"; the served tokens need top_k ≥ {int(self.estimate)}"}
        return (f"{self.setting} as requested was not applied: {int(self.test.effect)} served "
                f"token(s) in {n} record(s) lie outside it{need.get(self.setting, '')}")


KNOWN_DEFAULTS = {("top_k", 1), ("top_k", 40), ("top_k", 50), ("min_p", 0.05), ("top_p", 0.95),
                  ("repetition_penalty", 1.1)}
"""Settings engines ship as defaults: CTranslate2's sampling_topk 1 (and ONNX Runtime GenAI's
do_sample off), llama.cpp's top_k 40, min_p 0.05, top_p 0.95 and repeat_penalty 1.1,
transformers' and ONNX Runtime GenAI's top_k 50."""
ABOUT_EQUAL = 0.8
"""Failing alternatives whose gains are within this ratio of the best fit about equally."""


def rank_key(a: Alternative) -> tuple[bool, float]:
    """The order failing alternatives are named in: a setting the requests broke outright
    first, then, among those that fit about as well as the best, one that real engines ship
    as a default (a repetition penalty of 1.1, not a presence penalty of 0.73), then the gain."""
    return a.dropped, a.gain


def named_first(failed: list[Alternative]) -> list[Alternative]:
    """``failed`` in the order the sampler check names them."""
    if not failed:
        return []
    ordered = sorted(failed, key=rank_key, reverse=True)
    top = ordered[0]
    if top.dropped:
        return ordered
    close = [a for a in ordered if a.gain >= ABOUT_EQUAL * top.gain]
    shipped = [a for a in close if is_known_default(a)]
    first = shipped[0] if shipped else top
    return [first, *(a for a in ordered if a is not first)]


def is_known_default(a: Alternative) -> bool:
    value = round(a.estimate, 2) if a.setting != "top_k" else int(a.estimate)
    return any(a.setting == s and abs(value - v) <= 0.03 * max(1.0, v)
               for s, v in KNOWN_DEFAULTS) or a.setting == "repetition_penalty"


def dropped(setting: str, violations: int, records: int, tokens: int, need: float
            ) -> Alternative:
    """A requested truncation the served tokens break outright: ``violations`` tokens in
    ``records`` records outside it (beyond the numerics tolerance; a correct server puts none
    there), of ``tokens`` sampled under it; ``need``: the loosest value that holds them."""
    test = StatTest(f"{setting} dropped", f"{setting} as requested (support)", 0.0,
                    float(violations), 1.0, "tokens outside the requested setting", records,
                    f"sampler:{setting} dropped")
    return Alternative(setting, 0.0, test, violations * OUTLIER_NATS * 10, need, dropped=True)


def detection_z(alpha: float, family: int) -> float:
    """z of a two-sided test at Holm's first step (α/m) plus z of 95% power."""
    return float(st.norm.ppf(1 - alpha / (2 * max(1, family))) + st.norm.ppf(POWER))


@dataclass(frozen=True)
class Tail:
    """What a truncation's test reads of the tokens it acts on, summed (so that it pools over
    records and chunks): how many, the q-mass it would remove (λ), how many served tokens lie
    where it cuts, and Σ ``tail_gain`` over the others."""

    tokens: int
    removed: float
    outside: int
    kept_gain: float


def tail_gain(removed: np.ndarray) -> np.ndarray:
    """A token inside the cut gains −log(1 − removed) under the truncation (q renormalised)."""
    return -np.log1p(-np.minimum(removed, 1 - 1e-12))


def truncation(setting: str, grid_value: float, tail: Tail, deff: float, tightest: float,
               requested: float | None = None) -> Alternative:
    """The request against ``setting`` = ``grid_value`` on the tokens it acts on (``tail``);
    ``tightest``: the tightest value those tokens allow (their own place: q/max q for min_p,
    rank for top_k, mass above for top_p)."""
    lam, n = tail.removed, tail.outside
    p = float(special.gammaincc(n / deff + 1, lam / deff)) if lam > 0 else 1.0
    deficit = 1 - n / lam if lam > 0 else 0.0
    gain = float(tail.kept_gain - n * OUTLIER_NATS)
    test = StatTest(f"{setting} {grid_value:g}", f"{setting} = {grid_value:g} not applied "
                    f"(tail count)", p, deficit, DEFICIT_FLOOR, "missing share of the tail",
                    tail.tokens, f"sampler:{setting}")
    return Alternative(setting, grid_value, test, gain, tightest, requested=requested)


def truncation_detectable(lam: float, deff: float, alpha: float, family: int) -> bool:
    """Would this truncation, fully applied, have failed: e^(-λ/deff) below the family's level."""
    return lam / deff > np.log(max(1, family) / alpha)


def penalty(setting: str, scope: str, score: float, info: float, square: float, tokens: int,
            deff: float) -> tuple[Alternative, float]:
    """Score test of a penalty at 0 from its sums over the tokens (Σ score, Σ information,
    Σ score²); returns it and the information (for the power statement). A score > 0 means the
    served tokens avoid the context's tokens more than q says."""
    u, i = score, info
    # Self-normalized where the tokens' scores are heavier-tailed than q says: a long prompt
    # makes a token's context count large, and one such token can carry the whole sum, where the
    # information alone would read it as many small ones (false alarms on correct servers).
    spread = max(i, square)
    z = u / np.sqrt(spread * deff) if spread > 0 else 0.0
    estimate = u / i if i > 0 else 0.0
    effect = estimate
    if setting == "repetition_penalty":
        estimate = 1 + estimate
    test = StatTest(f"{setting} ({scope})", f"{setting.replace('_', ' ')} = requested "
                    f"(score, {scope})", float(2 * st.norm.sf(abs(z))), effect,
                    PENALTY_FLOORS[setting], "estimated extra penalty", tokens,
                    f"sampler:{setting}")
    return Alternative(setting, 0.0, test, u * u / (2 * i) if i > 0 else 0.0, estimate, scope), i


def penalty_detectable(info: float, deff: float, alpha: float, family: int, floor: float
                       ) -> float | None:
    if info <= 0:
        return None
    return max(floor, detection_z(alpha, family) / np.sqrt(info / deff))


def temperature_scale(total: np.ndarray, tokens: int, factors: np.ndarray, deff: float,
                      level: float) -> tuple[Alternative, float | None]:
    """One temperature factor for every group (a server that scales T by mistake); ``total``:
    the pooled ``temperature_profile`` of ``tokens`` tokens, split as (Σ inside, count
    outside) so that the design effect scales only the first."""
    inside, outside = total
    fit = profile_fit(inside / deff + OUTSIDE * outside, tokens, 1.0, factors, "all groups",
                      TEMPERATURE_FLOOR, level)
    fit.test.name, fit.test.kind = "temperature = requested × c (LR, pooled)", \
        "sampler:temperature"
    whole = inside + OUTSIDE * outside
    gain = float(whole.max() - np.interp(0.0, np.log(factors), whole))
    return Alternative("temperature", 0.0, fit.test, gain, fit.estimate), fit.detectable


def temperature_offset(profiles: list[np.ndarray], temperatures: list[float],
                       factors: np.ndarray, deff: float) -> Alternative:
    """T = requested + b for every group: each group's profile (summed over its tokens, at
    ``factors`` × its temperature) read at factor 1 + b/T_g, summed; LR against b = 0."""
    x = np.log(factors)
    bs = np.linspace(-0.6, 0.6, 241)
    total = np.zeros_like(bs)
    for prof, t in zip(profiles, temperatures, strict=True):
        f = 1 + bs / t
        ok = (f >= factors[0]) & (f <= factors[-1])
        total += np.where(ok, np.interp(np.log(np.where(ok, f, 1.0)), x, prof), -1e12)
    g = int(np.argmax(total))
    at_zero = float(total[np.argmin(np.abs(bs))])
    lr = max(0.0, 2 * (float(total[g]) - at_zero)) / deff
    test = StatTest("all groups", "temperature = requested + b (LR, pooled)",
                    float(st.chi2.sf(lr, 1)), float(bs[g]), TEMPERATURE_FLOOR,
                    "temperature offset", len(profiles), "sampler:temperature offset")
    return Alternative("temperature offset", 0.0, test, lr / 2 * deff, float(bs[g]))
