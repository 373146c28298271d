"""Support check: every sampled token lies inside top_k, the top_p nucleus and min_p.

Deterministic, token by token: a token the reference transform gives probability 0 could not
have come from a correct server. A token just outside the boundary (within the numerics
tolerance: a logit gap for top_k, a probability mass for top_p/min_p) is a boundary tie and
counted apart, since a server with other kernels may rank it inside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.options import Numerics
from servecheck.checks.core.results import CheckResult, Details, Finding
from servecheck.reference.sampling import RULES
from servecheck.reference.scoring import TokenScores

ORDER = 60


@dataclass(frozen=True)
class SupportDetails(Details):
    records: int
    tokens: int
    violations: int
    boundary_ties: int
    by_rule: dict[str, int]
    """Violations per rule (top_k, top_p, min_p)."""
    tolerance: dict[str, float]
    convention: dict[str, Any]
    order_dependent: int = 0
    """Tokens outside the chosen order's support but inside an order the records could not
    rule out (``violations``)."""

    def effect(self) -> str:
        return f"{self.violations}/{self.tokens} tokens outside the support"


def outside_support(s: TokenScores, numerics: Numerics) -> tuple[list[tuple[int, str, float]], int]:
    """Tokens a correct server could not have sampled: ([(position, rule, slack)], boundary ties).

    A token outside by no more than the numerics tolerance is a boundary tie, not a violation.
    """
    violations: list[tuple[int, str, float]] = []
    ties = 0
    for k in np.flatnonzero(np.isinf(s.stats["logq"])):
        rule = RULES[int(s.stats["rule"][k])] or "unknown"
        tol = numerics.logit if rule == "top_k" else numerics.mass
        if s.stats["slack"][k] <= tol:
            ties += 1
        else:
            violations.append((int(k), rule, float(s.stats["slack"][k])))
    return violations, ties


def violations(ctx: CheckContext, idx: list[int], scores: dict[int, TokenScores]
               ) -> tuple[dict[int, list[tuple[int, str, float]]], dict[int, int], int]:
    """Per record: the tokens outside the support beyond the tolerance under the chosen
    order and under every order the records could not rule out (``ctx.undecided``), and the
    boundary ties; and how many tokens only the chosen order puts outside. With few records
    that tell the orders apart the default order stays, and a token a llama.cpp server drew
    inside its own nucleus (top_p on temperature-1 probabilities) can lie outside HF's: that
    is no evidence, and a token outside every plausible order's support still is. Each record
    is judged once a run (the support, sampler and per-record verdicts all ask)."""
    known: dict[int, tuple[list[tuple[int, str, float]], int, int]] = ctx.once(
        "support violations", dict)
    todo = [i for i in idx if i not in known]
    out = {i: outside_support(scores[i], ctx.tolerances) for i in todo}
    kept = {i: list(v[0]) for i, v in out.items()}
    suspects = [i for i in todo if kept[i]]
    for other in ctx.undecided:
        if not suspects:
            break
        again = ctx.scorer(ctx.ref, [ctx.item(i) for i in suspects], other)
        for i, s in zip(suspects, again, strict=True):
            inside = {v[0] for v in kept[i]} - {v[0] for v in
                                                outside_support(s, ctx.tolerances)[0]}
            kept[i] = [v for v in kept[i] if v[0] not in inside]
        suspects = [i for i in suspects if kept[i]]
    for i in todo:
        known[i] = (kept[i], out[i][1], len(out[i][0]) - len(kept[i]))
    return ({i: known[i][0] for i in idx}, {i: known[i][1] for i in idx},
            sum(known[i][2] for i in idx))


def run(ctx: CheckContext) -> list[CheckResult]:
    return [check_support(ctx)]


def check_support(ctx: CheckContext) -> CheckResult:
    sampling = {i: ctx.sampling[i] for i in ctx.sampled()}
    idx = [i for i, s in sampling.items() if s.top_k or s.top_p < 1 or s.min_p > 0]
    if not idx:
        return CheckResult("support", "skipped", "no sampled record with top_k, top_p or min_p")
    scores = ctx.scores(idx)
    tok = ctx.ref.tokenizer
    findings: list[Finding] = []
    tokens = count = ties = 0
    by_rule: dict[str, int] = {}
    outside_of, ties_of, forgiven = violations(ctx, idx, scores)
    for i in idx:
        tokens += len(scores[i])
        ties += ties_of[i]
        for k, rule, slack in outside_of[i]:
            count += 1
            by_rule[rule] = by_rule.get(rule, 0) + 1
            tol = ctx.tolerances.logit if rule == "top_k" else ctx.tolerances.mass
            unit = "logits" if rule == "top_k" else "probability mass"
            findings.append(Finding(
                ctx.labels[i],
                f"output token {k} {tok.convert_ids_to_tokens(int(scores[i].token_ids[k]))!r} "
                f"is outside {rule} ({sampling[i].label()}) by "
                f"{slack:.4f} {unit} (tolerance {tol})", slack))
    details = SupportDetails(len(idx), tokens, count, ties, by_rule,
                             {"top_k_logits": ctx.tolerances.logit,
                              "top_p_min_p_mass": ctx.tolerances.mass},
                             ctx.convention.describe(), forgiven)
    tie_note = f", {ties} boundary tie(s) within tolerance" if ties else ""
    if forgiven:
        tie_note += (f", {forgiven} outside {ctx.convention.name}'s support but inside "
                     f"{' and '.join(c.name for c in ctx.undecided)}'s, which these records "
                     f"could not rule out")
    if count:
        rules = ", ".join(f"{r} ({n})" for r, n in by_rule.items())
        return CheckResult("support", "fail", f"{count} token(s) outside the support: {rules}"
                           f" in {len({f.record for f in findings})}/{len(idx)} records{tie_note}",
                           details, findings)
    return CheckResult("support", "pass", f"{tokens} sampled tokens in {len(idx)} records all "
                       f"inside top_k/top_p/min_p{tie_note}", details)
