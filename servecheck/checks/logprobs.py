"""Served log-probs: the log-probs a server reports against the reference's.

Servers differ in what they report: the raw model log-prob (vLLM's default) or the log-prob
after temperature and truncation. Both are computed and the closer one is named as the server's
convention; the verdict uses that one, against the numerics tolerance.
"""

from __future__ import annotations

import numpy as np

from servecheck.checks import CheckContext, CheckResult, Finding


def check_logprobs(ctx: CheckContext) -> CheckResult:
    idx = [i for i, r in enumerate(ctx.records) if r.output_logprobs]
    if not idx:
        return CheckResult("logprobs", "skipped", "no record carries served log-probs")
    scores = ctx.scores(idx)
    diffs: dict[str, list[np.ndarray]] = {"raw": [], "after sampling transform": []}
    per_record: list[tuple[int, np.ndarray, np.ndarray]] = []
    for i in idx:
        s = scores[i]
        served = np.asarray(ctx.records[i].output_logprobs, dtype=np.float64)[: len(s)]
        n = len(served)
        raw = np.abs(served - s.logprob[:n])
        post = np.abs(served - (s.stats["logq"][:n] if "logq" in s.stats else s.logprob[:n]))
        diffs["raw"].append(raw)
        diffs["after sampling transform"].append(np.where(np.isfinite(post), post, np.inf))
        per_record.append((i, raw, post))
    means = {k: float(np.mean(np.concatenate(v))) for k, v in diffs.items()}
    convention = min(means, key=lambda k: means[k])
    pooled = np.concatenate(diffs[convention])
    tol = ctx.numerics.logprob
    details = {"records": len(idx), "tokens": int(pooled.size), "convention": convention,
               "mean_abs_diff": means, "max_abs_diff": float(pooled.max()), "tolerance": tol}
    summary = (f"served log-probs are {convention} (mean |Δ| {means[convention]:.4f}, max "
               f"{pooled.max():.4f}, {pooled.size} tokens)")
    if means[convention] > tol:
        findings = [Finding(ctx.labels[i], f"mean |Δ log-prob| {float(np.mean(d)):.4f}, max "
                                           f"{float(np.max(d)):.4f}", float(np.mean(d)))
                    for i, raw, post in per_record for d in [raw if convention == "raw" else post]]
        return CheckResult("logprobs", "fail", f"{summary} > tolerance {tol}", details, findings)
    return CheckResult("logprobs", "pass", f"{summary} ≤ tolerance {tol}", details)
