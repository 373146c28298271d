"""Seed check: requests in the file that differ only in their seed must not coincide more
often than a correct sampler allows (``servecheck/seeds.py`` has the test). Skipped when the
file holds no such requests; ``servecheck probe`` sends a purpose-built set."""

from __future__ import annotations

import numpy as np

from servecheck.checks import CheckContext, CheckResult, Finding
from servecheck.records import ResponseRecord
from servecheck.seeds import repeated, seed_groups, seed_test


def check_seeds(ctx: CheckContext) -> CheckResult:
    groups = seed_groups(ctx.records)
    if not groups:
        return CheckResult("seeds", "skipped", "no requests that differ only in their seed")
    index = {id(r): i for i, r in enumerate(ctx.records)}
    scores = ctx.scores([index[id(r)] for g in groups for r in repeated(g)])  # one batch

    def text_logprob(r: ResponseRecord) -> float:
        s = scores[index[id(r)]]
        return float(np.sum(s.stats["logq"])) if len(s) else 0.0

    results = [seed_test(g, ctx.ref, ctx.convention, text_logprob) for g in groups]
    order = sorted(range(len(results)), key=lambda k: results[k].p_value)
    rejected = [False] * len(results)
    for rank, k in enumerate(order):  # Holm's step-down: family-wise false alarms ≤ alpha
        if results[k].p_value > ctx.alpha / (len(results) - rank):
            break
        rejected[k] = True
    details = {"groups": [r.__dict__ for r in results], "alpha": ctx.alpha}
    findings = [Finding(r.label, f"{r.most_common} of {r.seeds} seeds gave the same text, whose "
                                 f"reference probability is {r.p_text:.2e} (p = {r.p_value:.1e}): "
                                 f"the seed looks ignored", 1 - r.p_value)
                for r, bad in zip(results, rejected, strict=True) if bad]
    if findings:
        return CheckResult("seeds", "fail", f"{len(findings)}/{len(results)} seed group(s) "
                           f"repeat one text beyond chance", details, findings)
    return CheckResult("seeds", "pass", f"{len(results)} seed group(s): texts differ across "
                       f"seeds as often as a correct sampler's", details)
