"""Per-record verdict: could a correct server have produced this one output?

The checks judge a run (a group of records pooled, one Holm family); a person looking at one
output, or at two different outputs side by side (``compare``), wants the same question answered
for that output alone. The answer uses the checks' own statistics, record by record:

- template and termination: the checks' findings for this record;
- greedy: every token the reference argmax, except near-ties within δ (``greedy_positions``);
- sampled: every token inside top_k/top_p/min_p within the numerics tolerance
  (``outside_support``), and the record's likelihood z (``record_pit_z``) within ±z*, the
  two-sided normal bound at α / N for the N sampled records judged (Bonferroni).

The likelihood z is exact, not an approximation. At each informative position the randomised
probability integral transform of the served token, u = Q(tokens likelier than y) + V·q(y), is a
uniform draw under a correct sampler whatever q is (the reference gives q at every teacher-forced
position), and the draws of one output are independent given its prefix. So
z = −Σ Φ⁻¹(u) / √n is standard normal for an output of any length: negative when its tokens sit
lower in q's ranking than chance (too hot, a truncation missing, other weights), positive when
higher. The sum of log q with its mean and variance, the statistic of the pooled fit check, is
no normal variable over a handful of tokens: one rare token among eight put honest records at
z = −8. Bonferroni over the records holds whatever their dependence, so records that share a
seed's random stream (an engine that seeds a fresh generator per request) are judged at α / N
like any others; they fail together or not at all, and a run's records failing together on one
seed is named as that stream's draw (``shared_stream``).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy import stats as st

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.greedy_causes import requested_gaps
from servecheck.checks.core.pooling import informative
from servecheck.checks.core.registry import alpha_share, check
from servecheck.checks.core.results import CheckResult, Finding, RecordDetails
from servecheck.checks.core.structured import judged
from servecheck.checks.core.token_rules import greedy_positions, violations
from servecheck.formats.records import ResponseRecord
from servecheck.reference.sampling import Sampling
from servecheck.reference.token_scores import TokenScores

NAME = "plausibility"
PIT_CLIP = 1e-12
"""A PIT of exactly 0 or 1 (float rounding) is read as this far inside the interval."""

def record_pit_z(s: TokenScores) -> tuple[float, int]:
    """(z, n): one output's exact likelihood z over its n informative tokens (module docstring);
    0 for an output with none."""
    u = s.stats["pit"][informative(s)].astype(np.float64)  # float32 rounds 1 - 1e-12 to 1
    if not len(u):
        return 0.0, 0
    z = -float(st.norm.ppf(np.clip(u, PIT_CLIP, 1 - PIT_CLIP)).sum()) / np.sqrt(len(u))
    return z, len(u)


def word(result: CheckResult) -> str:
    """How a person reads a record's verdict."""
    return "plausible" if result.verdict == "pass" else "implausible"


def counted(record: ResponseRecord) -> bool:
    """A record the per-record bound counts (``judge``'s N): answered, judged (not a forced
    tool call rebuilt from its parsed calls, ``structured.judged``) and sampled. A chunked run
    counts them on its first pass, so every chunk judges at the whole set's bound."""
    return record.error is None and judged(record) and not Sampling.of(record.parameters).greedy


def record_findings(results: list[CheckResult]) -> dict[str, list[str]]:
    """Messages of the per-record checks, by record label."""
    out: dict[str, list[str]] = defaultdict(list)
    for r in results:
        if r.per_record:
            for f in r.findings:
                out[f.record].append(f"{r.name}: {f.message}")
    return out


def _verdict(label: str, reasons: list[str], evidence: str, details: RecordDetails) -> CheckResult:
    return CheckResult(label, "fail" if reasons else "pass", evidence, details,
                       [Finding(label, r, 1.0) for r in reasons])


@check(NAME, order=100, kind="record", alpha_share=0.05,
       catches="single records no correct server could have produced")
def judge(ctx: CheckContext, results: list[CheckResult], indices: list[int] | None = None
          ) -> dict[int, CheckResult]:
    """A verdict for each record at ``indices`` (default: all), from cached scores."""
    idx = list(range(len(ctx.records))) if indices is None else indices
    scores = ctx.scores(idx)
    by_label = record_findings(results)
    sampled = [i for i in idx if not ctx.sampling[i].greedy]
    bound = ctx.options.record_bound if indices is None else None
    alpha, n = (bound[0] * alpha_share(NAME), bound[1]) if bound else \
        (ctx.check_alpha(NAME), len(sampled))
    z_star = float(st.norm.isf(alpha / (2 * max(1, n))))
    delta = ctx.tolerances.logit
    out: dict[int, CheckResult] = {}
    outside_of, ties_of, _ = violations(ctx, sampled, scores)
    gaps = requested_gaps(ctx, [i for i in idx if ctx.sampling[i].greedy])
    for i in idx:
        s = scores[i]
        label = ctx.labels[i]
        reasons = list(by_label.get(label, []))
        sampling = ctx.sampling[i]
        if sampling.greedy:
            hard, ties = greedy_positions(s, delta, gaps.get(i))
            evidence = (f"greedy: {len(s) - len(hard) - len(ties)}/{len(s)} tokens are the "
                        f"reference argmax" + (f", {len(ties)} near-tie(s) within δ={delta}"
                                               if len(ties) else ""))
            if len(hard):
                k = int(hard[0])
                margin = gaps.get(i, s.margin)
                reasons.append(f"greedy: {len(hard)} non-argmax token(s) beyond δ={delta}, first "
                               f"at token {k} (logit margin {margin[k]:.3f})")
            out[i] = _verdict(label, reasons, evidence, RecordDetails("greedy"))
            continue
        outside, ties = outside_of[i], ties_of[i]
        z, n_inf = record_pit_z(s)
        p = float(2 * st.norm.sf(abs(z)))
        evidence = (f"sampled ({sampling.label()}): likelihood z {z:+.2f} (p {p:.2g}, "
                    f"bound ±{z_star:.2f}) over {n_inf} informative of {len(s)} tokens; "
                    f"{len(outside)} outside the support" +
                    (f", {ties} boundary tie(s)" if ties else ""))
        if outside:
            k, rule, slack = outside[0]
            reasons.append(f"support: {len(outside)} token(s) outside the support, first at token "
                           f"{k} (outside {rule} by {slack:.4f})")
        if abs(z) > z_star:
            way = "less" if z < 0 else "more"
            reasons.append(f"likelihood z {z:+.2f} beyond ±{z_star:.2f}: tokens {way} likely "
                           f"than a correct sampler's")
        out[i] = _verdict(label, reasons, evidence, RecordDetails("sampled", z, p))
    return out
