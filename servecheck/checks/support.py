"""Support check: every sampled token lies inside top_k, the top_p nucleus and min_p.

Deterministic, token by token: a token the reference transform gives probability 0 could not
have come from a correct server. A token just outside the boundary (within the numerics
tolerance: a logit gap for top_k, a probability mass for top_p/min_p) is a boundary tie and
counted apart, since a server with other kernels may rank it inside.
"""

from __future__ import annotations

import numpy as np

from servecheck.checks import CheckContext, CheckResult, Finding
from servecheck.sampling import RULES, Sampling


def check_support(ctx: CheckContext) -> CheckResult:
    sampling = {i: Sampling.of(ctx.records[i].parameters) for i in ctx.sampled()}
    idx = [i for i, s in sampling.items() if s.top_k or s.top_p < 1 or s.min_p > 0]
    if not idx:
        return CheckResult("support", "skipped", "no sampled record with top_k, top_p or min_p")
    scores = ctx.scores(idx)
    tok = ctx.ref.tokenizer
    findings: list[Finding] = []
    tokens = violations = ties = 0
    by_rule: dict[str, int] = {}
    for i in idx:
        s = scores[i].stats
        tokens += len(s["logq"])
        out = np.flatnonzero(np.isinf(s["logq"]))
        for k in out:
            rule = RULES[int(s["rule"][k])] or "unknown"
            tol = ctx.numerics.logit if rule == "top_k" else ctx.numerics.mass
            if s["slack"][k] <= tol:
                ties += 1
                continue
            violations += 1
            by_rule[rule] = by_rule.get(rule, 0) + 1
            unit = "logits" if rule == "top_k" else "probability mass"
            findings.append(Finding(
                ctx.labels[i],
                f"output token {k} {tok.convert_ids_to_tokens(int(scores[i].token_ids[k]))!r} "
                f"is outside {rule} ({sampling[i].label()}) by "
                f"{s['slack'][k]:.4f} {unit} (tolerance {tol})", float(s["slack"][k])))
    details = {"records": len(idx), "tokens": tokens, "violations": violations,
               "boundary_ties": ties, "by_rule": by_rule,
               "tolerance": {"top_k_logits": ctx.numerics.logit,
                             "top_p_min_p_mass": ctx.numerics.mass},
               "convention": ctx.convention.describe()}
    tie_note = f", {ties} boundary tie(s) within tolerance" if ties else ""
    if violations:
        rules = ", ".join(f"{r} ({n})" for r, n in by_rule.items())
        return CheckResult("support", "fail", f"{violations} token(s) outside the support: {rules}"
                           f" in {len({f.record for f in findings})}/{len(idx)} records{tie_note}",
                           details, findings)
    return CheckResult("support", "pass", f"{tokens} sampled tokens in {len(idx)} records all "
                       f"inside top_k/top_p/min_p{tie_note}", details)
