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

from collections import defaultdict

import numpy as np

from servecheck.checks import CheckContext, CheckResult, Finding
from servecheck.sampling import Sampling
from servecheck.scoring import TEMPERATURE_FACTORS, TokenScores
from servecheck.stats import StatTest, holm, loglik_z, pit_chi2, pit_ks, temperature_fit

FLOORS = {"ks": 0.1, "chi2": 0.15, "loglik": 0.03, "temperature": 0.1}
"""Practical-effect floors: KS distance D, Cohen's w, nats per token, relative temperature error.
A PIT CDF 10 points off uniform, a 3% temperature-scale shift in log-likelihood, a 10% temperature
error are worth a person's time; smaller ones are within what bf16 kernels and chance produce
(KS D reached 0.078 by chance at n = 700 tokens in 400 correct-server runs). Calibrated on
correct servers: docs/validation-power.md."""
MIN_TOKENS = 20
TRIVIAL = 1 - 1e-6


def informative(s: TokenScores) -> np.ndarray:
    """Positions that carry evidence: the served token has finite q and q is not one-hot."""
    return np.isfinite(s.stats["logq"]) & (s.stats["top"] < TRIVIAL)


def pool(scores: dict[int, TokenScores], idx: list[int], key: str) -> np.ndarray:
    """One statistic pooled over the informative positions of a group's records."""
    return np.concatenate([scores[i].stats[key][informative(scores[i])] for i in idx])


def record_z(s: TokenScores) -> float:
    """One record's log-likelihood z (the group test's statistic on a single output)."""
    m = informative(s)
    sd = float(np.sqrt(s.stats["var"][m].sum()))
    return float((s.stats["logq"][m] + s.stats["entropy"][m]).sum() / sd) if sd > 0 else 0.0


def _drivers(ctx: CheckContext, scores: dict[int, TokenScores], idx: list[int], sign: float
             ) -> list[Finding]:
    """Records that pull hardest in the failing direction, with their least likely token."""
    tok = ctx.ref.tokenizer
    out = []
    for i in idx:
        s = scores[i]
        z = record_z(s)
        if z * sign <= 0:
            continue
        m = np.flatnonzero(informative(s))
        if not len(m):
            continue
        k = int(m[np.argmin(s.stats["logq"][m])])
        out.append(Finding(ctx.labels[i], f"record log-likelihood z {z:+.2f}; least likely token "
                           f"{k} {tok.convert_ids_to_tokens(int(s.token_ids[k]))!r} q="
                           f"{np.exp(s.stats['logq'][k]):.4f} (raw rank {int(s.rank[k])})",
                           abs(z)))
    return out


def sampled_groups(ctx: CheckContext) -> dict[Sampling, list[int]]:
    """Sampled records by parameter group: the unit every distribution test pools over."""
    groups: dict[Sampling, list[int]] = defaultdict(list)
    for i in ctx.sampled():
        groups[Sampling.of(ctx.records[i].parameters)].append(i)
    return dict(groups)


def check_distribution(ctx: CheckContext) -> list[CheckResult]:
    groups = sampled_groups(ctx)
    if not groups:
        reason = "no sampled records (temperature > 0)"
        return [CheckResult("fit", "skipped", reason), CheckResult("temperature", "skipped", reason)]
    scores = ctx.scores([i for idx in groups.values() for i in idx])
    fit_tests: list[StatTest] = []
    fits = {}
    skipped: list[str] = []
    members: dict[str, list[int]] = {}
    for s, idx in groups.items():
        label = s.label()
        members[label] = idx
        pit = pool(scores, idx, "pit")
        if len(pit) < MIN_TOKENS:
            skipped.append(f"{label} ({len(pit)} informative tokens < {MIN_TOKENS})")
            continue
        fit_tests += [pit_ks(pit, label, FLOORS["ks"]), pit_chi2(pit, label, FLOORS["chi2"]),
                      loglik_z(pool(scores, idx, "logq"), pool(scores, idx, "entropy"),
                               pool(scores, idx, "var"), label, FLOORS["loglik"])]
        temp_ll = np.concatenate([scores[i].stats["temp_ll"][informative(scores[i])]
                                  for i in idx])
        fits[label] = temperature_fit(temp_ll, s.temperature, TEMPERATURE_FACTORS, label,
                                      FLOORS["temperature"])
    holm(fit_tests + [f.test for f in fits.values()], ctx.alpha)
    family = len(fit_tests) + len(fits)
    sources = sorted({ctx.output_ids(i)[1] for idx in groups.values() for i in idx})
    common = {"alpha": ctx.alpha, "family_size": family, "floors": FLOORS,
              "skipped_groups": skipped, "convention": ctx.convention.describe(),
              "token_sources": sources}
    for s, idx in groups.items():
        if s.top_p < 1 and s.label() in fits:
            # The smallest nucleus that holds every served token: a lower bound on the top_p
            # the server really used (the support check judges it against the request).
            # (tokens already outside top_k/penalties have mass-above 1 and are the support
            # check's business, not evidence about the nucleus)
            above = [scores[i].stats["pre_nucleus_above"] for i in idx]
            need = max(float(a[a < TRIVIAL].max(initial=0.0)) for a in above)
            fits[s.label()].nucleus = (need, s.top_p)
    return [_fit_result(ctx, scores, fit_tests, members, common),
            _temperature_result(ctx, scores, fits, members, common)]


def _fit_result(ctx: CheckContext, scores: dict[int, TokenScores], tests: list[StatTest],
                members: dict[str, list[int]], common: dict) -> CheckResult:
    details = {**common, "tests": [t.__dict__ | {"failed": t.failed} for t in tests]}
    if not tests:
        return CheckResult("fit", "skipped", "no group with enough informative tokens", details)
    failed = [t for t in tests if t.failed]
    groups = len({t.group for t in tests})
    if not failed:
        worst = min(tests, key=lambda t: t.p)
        return CheckResult("fit", "pass", f"{groups} group(s) fit the reference distribution "
                           f"(smallest p {worst.p:.2g}, Holm α={ctx.alpha})", details)
    findings = [Finding(t.group, t.describe(), 10.0 + abs(t.effect)) for t in failed]
    for t in failed:
        if t.name == "log-likelihood z":
            findings += _drivers(ctx, scores, members[t.group], np.sign(t.effect))[:20]
    direction = next((("tokens less likely than a correct sampler's (too hot, truncation "
                       "ignored, or other weights)" if t.effect < 0 else
                       "tokens more likely than a correct sampler's (too cold or nucleus too "
                       "small)") for t in failed if t.name == "log-likelihood z"), "")
    summary = f"{len(failed)} test(s) failed in {len({t.group for t in failed})}/{groups} " \
              f"group(s): " + "; ".join(f"{t.group} {t.name} {t.effect_label}={t.effect:+.3f}"
                                       for t in failed[:3])
    return CheckResult("fit", "fail", summary + (f" — {direction}" if direction else ""), details,
                       findings)


def _temperature_result(ctx: CheckContext, scores: dict[int, TokenScores], fits: dict,
                        members: dict[str, list[int]], common: dict) -> CheckResult:
    rows = {g: {"requested": float(g.split()[0][2:]), "estimate": f.estimate, "low": f.low,
                "high": f.high, "test": f.test.__dict__ | {"failed": f.test.failed}}
            for g, f in fits.items()}
    details = {**common, "groups": rows}
    if not fits:
        return CheckResult("temperature", "skipped", "no group with enough informative tokens",
                           details)
    for g, f in fits.items():
        if f.nucleus:
            rows[g]["nucleus_needed"], rows[g]["top_p"] = f.nucleus
    text = {g: f"effective temperature {f.estimate:.2f} [{f.low:.2f}, {f.high:.2f}] vs "
               f"requested {rows[g]['requested']:g}" + (
                   f"; served tokens need top_p > {f.nucleus[0]:.3f} (requested {f.nucleus[1]:g})"
                   if f.nucleus else "") for g, f in fits.items()}
    failed = [g for g, f in fits.items() if f.test.failed]
    if failed:
        findings = [Finding(g, f"{text[g]} ({fits[g].test.describe()})", 10.0) for g in failed]
        for g in failed:
            findings += _drivers(ctx, scores, members[g], -1.0 if fits[g].estimate >
                                 rows[g]["requested"] else 1.0)[:10]
        return CheckResult("temperature", "fail", "; ".join(f"{g}: {text[g]}" for g in failed),
                           details, findings)
    return CheckResult("temperature", "pass", "; ".join(f"{g}: {text[g]}" for g in fits),
                       details)
