"""Distribution checks: do the sampled tokens fit q = S_θ(reference logits), group by group?

Under a correct server, whatever its RNG, each randomised PIT value u_i = Q_i(above y_i) +
V·q_i(y_i) is an independent U(0, 1) draw, and Σ log q_i(y_i) has mean -Σ H(q_i) and variance
Σ Var_q(log q_i). Per parameter group that gives three tests (KS and χ² on the PIT, the
directional log-likelihood z) and a fourth from the temperature profile likelihood: the
temperature that best explains the served tokens, with its interval, against the requested one.
All tests of a run form one Holm family (α, default 0.01); a verdict fails only beyond its
practical floor (``FLOORS``).

Positions where q puts all its mass on one token carry no information and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.explain import family_reason
from servecheck.checks.core.fit_evidence import FIT, Draws, FitEvidence, fit_evidence
from servecheck.checks.core.options import CheckOptions
from servecheck.checks.core.pooling import MIN_SAMPLED_TOKENS
from servecheck.checks.core.registry import Pooling, alpha_share, check
from servecheck.checks.core.results import (
    Case,
    CheckResult,
    Details,
    Finding,
    GroupEvidence,
    TemperatureProfile,
    Verdict,
)
from servecheck.checks.core.seed_tests import SEEDS, SeedEvidence, seed_evidence, seeds_ignored
from servecheck.checks.core.stats import (
    OUTSIDE,
    StatTest,
    TemperatureFit,
    holm,
    loglik_z,
    pit_chi2,
    pit_ks,
    profile_fit,
)
from servecheck.reference.sampling import Sampling
from servecheck.reference.token_scores import TEMPERATURE_FACTORS

NAME = FIT
TEMPERATURE = "temperature"

FLOORS = {"ks": 0.1, "chi2": 0.15, "loglik": 0.03, "temperature": 0.1}
"""Practical-effect floors: KS distance D, Cohen's w, nats per token, relative temperature error.
A PIT CDF 10 points off uniform, a 3% temperature-scale shift in log-likelihood, a 10% temperature
error are worth a person's time; smaller ones are within what bf16 kernels and chance produce
(KS D reached 0.078 by chance at n = 700 tokens in 400 correct-server runs). Calibrated on
correct servers: docs/validation-power.md."""
MIN_TOKENS = 20
MIN_LOGLIK_TOKENS = 400
"""The log-likelihood z needs this many tokens: log q(y) has a long lower tail (a rare token costs
many nats), so over ~100 tokens the normal approximation is too thin on the "too hot" side and
correct servers failed it (2 of 100 runs of 8 groups of ~110 tokens, held-out seeds 20000–20099);
at ≥ 400 it held (0 of 400 runs at ~700 tokens a group). The PIT tests cover smaller groups, and
the sampler check pools every group."""


@dataclass(frozen=True)
class SkippedGroup:
    group: str
    tokens: int
    """Informative tokens the group has (fewer than ``MIN_TOKENS``)."""

    def __str__(self) -> str:
        return f"{self.group} ({self.tokens} informative tokens < {MIN_TOKENS})"


@dataclass(frozen=True)
class GroupedDetails(Details):
    """What the fit and temperature checks share: one Holm family over every group's tests."""

    alpha: float
    family_size: int
    floors: dict[str, float]
    skipped_groups: list[SkippedGroup]
    convention: dict[str, Any]
    token_sources: list[str]
    seed_design: dict[str, Any] = field(default_factory=dict)
    """``checks.core.shared_seeds.SeedDesign.to_json``: whether seeds are shared and at what cost."""

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "skipped_groups": [str(g) for g in self.skipped_groups]}

    def effect(self) -> str:
        tests = self.tests()
        if not tests:
            return "—"
        # a failing check shows what failed, not a bigger but inconclusive effect
        big = max([t for t in tests if t.failed] or tests, key=lambda t: abs(t.effect) / t.floor)
        return f"{big.effect_label} {big.effect:+.3f} (floor {big.floor:g})"

    def family(self) -> tuple[float, int | None]:
        return self.alpha, self.family_size

    def reason(self, verdict: Verdict) -> str | None:
        return family_reason(verdict, self.tests(), self.alpha, self.family_size,
                             len(self.skipped_groups))

    def skipped_cases(self) -> list[Case]:
        return [Case(g.group, "inconclusive", f"too few informative tokens: {g}")
                for g in self.skipped_groups]


DIRECTION = {True: "tokens less likely than a correct sampler's (too hot, truncation ignored, or "
                   "other weights)",
             False: "tokens more likely than a correct sampler's (too cold or nucleus too small)"}
"""What a failing log-likelihood test's sign says, by ``effect < 0``."""


@dataclass(frozen=True)
class FitDetails(GroupedDetails):
    stat_tests: tuple[StatTest, ...] = ()
    evidence: tuple[GroupEvidence, ...] = ()
    """Every sampled group's PIT and temperature profile, as the tests read them (the report
    draws them; the temperature check's rows are in the same family)."""

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        del out["stat_tests"], out["evidence"]
        return {**out, "tests": [t.to_json() for t in self.stat_tests]}

    def group_evidence(self) -> list[GroupEvidence]:
        return list(self.evidence)

    def likely_cause(self) -> str | None:
        loglik = [t for t in self.stat_tests if t.failed and t.kind == "loglik"]
        if loglik:
            return DIRECTION[loglik[0].effect < 0]
        if any(t.failed for t in self.stat_tests):
            return ("the served tokens are not distributed as the reference's: other weights, "
                    "or a sampling setting off")
        return None

    def tests(self) -> list[StatTest]:
        return list(self.stat_tests)

    def cases(self) -> list[Case]:
        by_group: dict[str, list[StatTest]] = {}
        for t in self.stat_tests:
            by_group.setdefault(t.group, []).append(t)
        return [Case(g, "fail" if any(t.failed for t in ts) else "pass", "; ".join(
            f"{t.name} p={t.p:.3g} (Holm {t.p_adjusted:.3g}), {t.effect_label}={t.effect:+.4f} "
            f"(floor {t.floor:g}), n={t.n}" for t in ts), g) for g, ts in by_group.items()
        ] + self.skipped_cases()


@dataclass(frozen=True)
class GroupTemperature:
    sampling: Sampling
    fit: TemperatureFit

    def describe(self) -> str:
        f = self.fit
        text = (f"effective temperature {f.estimate:.2f} [{f.low:.2f}, {f.high:.2f}] "
                f"({100 * f.level:.4g}% simultaneous) vs requested {self.sampling.temperature:g}")
        if f.nucleus:
            text += f"; served tokens need top_p > {f.nucleus[0]:.3f} (requested {f.nucleus[1]:g})"
        if f.detectable is not None:
            text += (f"; these tokens would have caught a temperature off by ≥ "
                     f"{100 * f.detectable:.0f}% with 95% power")
        return text


@dataclass(frozen=True)
class TemperatureDetails(GroupedDetails):
    groups: dict[str, GroupTemperature] | None = None

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        rows = {}
        for g, row in (self.groups or {}).items():
            f = row.fit
            rows[g] = {"requested": row.sampling.temperature, "estimate": f.estimate, "low": f.low,
                       "high": f.high, "level": f.level,
                       "detectable_relative_error": f.detectable, "test": f.test.to_json()}
            if f.nucleus:
                rows[g]["nucleus_needed"], rows[g]["top_p"] = f.nucleus
        return {**out, "groups": rows}

    def tests(self) -> list[StatTest]:
        return [row.fit.test for row in (self.groups or {}).values()]

    def likely_cause(self) -> str | None:
        off = [(g, row) for g, row in (self.groups or {}).items() if row.fit.test.failed]
        if not off:
            return None
        return "; ".join(f"effective temperature {row.fit.estimate:.2f} where "
                         f"{row.sampling.temperature:g} was asked ({g})" for g, row in off)

    def cases(self) -> list[Case]:
        cases = []
        for g, row in (self.groups or {}).items():
            f, test = row.fit, row.fit.test
            cases.append(Case(g, "fail" if test.failed else "pass", (
                f"effective temperature {f.estimate:.3f} [{f.low:.3f}, {f.high:.3f}] vs "
                f"requested {row.sampling.temperature:g}; LR p={test.p:.3g} (Holm "
                f"{test.p_adjusted:.3g}), relative error {test.effect:+.3f} (floor "
                f"{test.floor:g})"), g))
        return cases + self.skipped_cases()


def _drivers(draws: Draws, rows: np.ndarray, sign: float, limit: int) -> list[Finding]:
    """Records that pull hardest in the failing direction, with their least likely token."""
    out = []
    for r in rows:
        z = draws.z(int(r))
        if z * sign <= 0 or not draws.of.least[r]:
            continue
        out.append(Finding(draws.of.labels[r], f"record log-likelihood z {z:+.2f}; "
                                               f"{draws.of.least[r]}", abs(z)))
        if len(out) == limit:
            break
    return out


def decide(found: FitEvidence, options: CheckOptions, seeds: SeedEvidence) -> list[CheckResult]:
    """The fit and temperature rows of a run's sampled records, or of a chunked set's, pooled
    (``FitEvidence``): the distinct draws chosen over all of them (``seeds``: the seeds
    check's evidence, whose verdict says whether an ignored seed made repeats one draw), then
    one Holm family."""
    draws = found.draws(seeds_ignored(seeds, options))
    groups = draws.groups()
    if not groups:
        reason = "no sampled records (temperature > 0)"
        return [CheckResult(NAME, "skipped", reason), CheckResult(TEMPERATURE, "skipped", reason)]
    design = draws.design()
    deff = design.deff
    fit_tests: list[StatTest] = []
    fits: dict[str, GroupTemperature] = {}
    skipped: list[SkippedGroup] = []
    members: dict[str, np.ndarray] = {}
    pits = {s.label(): draws.pit(rows) for s, rows in groups.items()}
    # intervals at the family's own level (Bonferroni over its 4 tests a group), so that one
    # excluding the request on a correct server is as rare as a false alarm
    tested = sum(len(pit) >= MIN_TOKENS for pit in pits.values())
    alpha = options.alpha * alpha_share(NAME)
    level = 1 - alpha / max(1, 4 * tested)
    for s, rows in groups.items():
        label = s.label()
        members[label], pit = rows, pits[label]
        if len(pit) < MIN_TOKENS:
            skipped.append(SkippedGroup(label, len(pit)))
            continue
        fit_tests += [pit_ks(pit, label, FLOORS["ks"], deff),
                      pit_chi2(pit, label, FLOORS["chi2"], deff)]
        excess, var, nucleus = found.sums[rows].T
        if len(pit) >= MIN_LOGLIK_TOKENS:
            fit_tests.append(loglik_z(float(excess.sum()), float(var.sum()), len(pit), label,
                                      FLOORS["loglik"], deff))
        # as ``temperature_profile`` of the tokens' log-likelihoods over deff
        total = found.profile[rows].sum(0) / deff + OUTSIDE * found.outside[rows].sum(0)
        fit = profile_fit(total, len(pit), s.temperature, TEMPERATURE_FACTORS, label,
                          FLOORS["temperature"], level)
        if s.top_p < 1:
            # The smallest nucleus that holds every served token: a lower bound on the top_p
            # the server really used (the support check judges it against the request).
            fit.nucleus = (float(nucleus.max()), s.top_p)
        fits[label] = GroupTemperature(s, fit)
    holm(fit_tests + [g.fit.test for g in fits.values()], alpha)
    sources = sorted({found.sources[r] for rows in groups.values() for r in rows})
    common = dict(alpha=alpha, family_size=len(fit_tests) + len(fits), floors=FLOORS,
                  skipped_groups=skipped, convention=found.convention,
                  token_sources=sources, seed_design=design.to_json())
    evidence = tuple(_evidence(label, len(rows), pits[label], fit_tests, fits.get(label))
                     for label, rows in members.items())
    asked = dict(options.detect).get("temperature")
    return [_fit_result(draws, FitDetails(**common, stat_tests=tuple(fit_tests),
                                          evidence=evidence), members),
            _temperature_result(draws, TemperatureDetails(**common, groups=fits), members,
                                sum(len(p) for p in pits.values()), asked)]


@check(NAME, order=70, kind="statistical", alpha_share=0.42, also=(TEMPERATURE,),
       catches=("a sampler that does not draw from the reference distribution: other weights, a wrong "
                "temperature, truncation not applied"),
       needs="sampled requests (temperature > 0)",
       pooling=Pooling(fit_evidence, decide, reads=(SEEDS,)))
def run(ctx: CheckContext) -> list[CheckResult]:
    return decide(fit_evidence(ctx), ctx.options, seed_evidence(ctx))


def _evidence(label: str, records: int, pit: np.ndarray, fit_tests: list[StatTest],
              temperature: GroupTemperature | None) -> GroupEvidence:
    """What the report draws of one group: its PIT, its tests, and the temperature profile
    exactly as the temperature test read it."""
    tests = tuple(t for t in fit_tests if t.group == label)
    if temperature is None:
        return GroupEvidence.of_pit(label, records, pit, tests=tests, checks=(NAME, TEMPERATURE),
                                    temperature="not estimated (too few informative tokens)")
    f = temperature.fit
    profile = TemperatureProfile(f.temperatures, f.profile, temperature.sampling.temperature,
                                 f.estimate, f.low, f.high)
    return GroupEvidence.of_pit(label, records, pit, tests=(*tests, f.test), profile=profile,
                                temperature=temperature.describe(), checks=(NAME, TEMPERATURE))


def _fit_result(draws: Draws, details: FitDetails, members: dict[str, np.ndarray]
                ) -> CheckResult:
    tests = details.tests()
    if not tests:
        return CheckResult(NAME, "inconclusive", "no group with enough informative tokens "
                           "to test (too few sampled records)", details)
    failed = [t for t in tests if t.failed]
    groups = len({t.group for t in tests})
    if not failed:
        worst = min(tests, key=lambda t: t.p)
        return CheckResult(NAME, "pass", f"{groups} group(s) fit the reference distribution "
                           f"(smallest p {worst.p:.2g}, Holm α={details.alpha:.4g})", details)
    findings = [Finding(t.group, t.describe(), 10.0 + abs(t.effect)) for t in failed]
    for t in failed:
        if t.kind == "loglik":
            findings += _drivers(draws, members[t.group], np.sign(t.effect), 20)
    direction = next((DIRECTION[t.effect < 0] for t in failed if t.kind == "loglik"), "")
    summary = f"{len(failed)} test(s) failed in {len({t.group for t in failed})}/{groups} " \
              f"group(s): " + "; ".join(f"{t.group} {t.name} {t.effect_label}={t.effect:+.3f}"
                                       for t in failed[:3])
    return CheckResult(NAME, "fail", summary + (f" — {direction}" if direction else ""), details,
                       findings)


def _temperature_result(draws: Draws, details: TemperatureDetails,
                        members: dict[str, np.ndarray], pooled: int, asked: float | None
                        ) -> CheckResult:
    """``pooled``: the informative sampled tokens of every group, the sampler check's own
    evidence: below ``MIN_SAMPLED_TOKENS`` both rows say they cannot judge (a PASS here beside
    the sampler's INCONCLUSIVE on the same tokens would say more than the tokens do)."""
    fits = details.groups or {}
    if not fits:
        return CheckResult(TEMPERATURE, "inconclusive", "no group with enough informative "
                           "tokens to test (too few sampled records)", details)
    failed = [g for g, row in fits.items() if row.fit.test.failed]
    if failed:
        findings = [Finding(g, f"{fits[g].describe()} ({fits[g].fit.test.describe()})", 10.0)
                    for g in failed]
        for g in failed:
            hot = fits[g].fit.estimate > fits[g].sampling.temperature
            findings += _drivers(draws, members[g], -1.0 if hot else 1.0, 10)
        return CheckResult(TEMPERATURE, "fail",
                           "; ".join(f"{g}: {fits[g].describe()}" for g in failed), details,
                           findings)
    summary = "; ".join(f"{g}: {row.describe()}" for g, row in fits.items())
    if pooled < MIN_SAMPLED_TOKENS:
        return CheckResult(TEMPERATURE, "inconclusive", f"{pooled} informative sampled tokens "
                           f"(< {MIN_SAMPLED_TOKENS}): too few to judge the temperature, as the "
                           f"sampler row says; {summary}", details)
    blind = [g for g, row in fits.items() if asked is not None and
             (row.fit.detectable is None or row.fit.detectable > asked)]
    if blind:
        return CheckResult(TEMPERATURE, "inconclusive", f"--detect: {len(blind)} group(s) could "
                           f"not have caught a temperature {100 * asked:.0f}% off (the sampler "
                           f"row says how many requests of this mix would)", details)
    return CheckResult(TEMPERATURE, "pass", summary, details)
