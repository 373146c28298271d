"""Support check: every sampled token lies inside top_k, the top_p nucleus and min_p.

Deterministic, token by token: a token the reference transform gives probability 0 could not
have come from a correct server. A token just outside the boundary (within the numerics
tolerance: a logit gap for top_k, a probability mass for top_p/min_p) is a boundary tie and
counted apart, since a server with other kernels may rank it inside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.registry import check
from servecheck.checks.core.results import CheckResult, Details, Finding, Verdict
from servecheck.checks.core.token_rules import violations

NAME = "support"


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

    def reason(self, verdict: Verdict) -> str | None:
        tol = (f"{self.tolerance.get('top_k_logits', 0):g} logits for top_k, "
               f"{self.tolerance.get('top_p_min_p_mass', 0):g} probability mass for top_p/min_p")
        ties = (f"; {self.boundary_ties} lie outside by no more than the tolerance ({tol}) and count "
                f"as boundary ties" if self.boundary_ties else "")
        if self.violations:
            return (f"FAIL: {self.violations} of {self.tokens} sampled tokens lie outside top_k/top_p/min_p "
                    f"by more than the tolerance ({tol}){ties}.")
        return f"PASS: all {self.tokens} sampled tokens are inside top_k/top_p/min_p{ties}."

@check(NAME, order=60,
       catches="top_k, top_p or min_p not applied: tokens outside the requested support",
       needs="sampled requests that set top_k, top_p or min_p")
def run(ctx: CheckContext) -> list[CheckResult]:
    return [check_support(ctx)]


def check_support(ctx: CheckContext) -> CheckResult:
    sampling = {i: ctx.sampling[i] for i in ctx.sampled()}
    idx = [i for i, s in sampling.items() if s.top_k or s.top_p < 1 or s.min_p > 0]
    if not idx:
        return CheckResult(NAME, "skipped", "no sampled record with top_k, top_p or min_p")
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
        return CheckResult(NAME, "fail", f"{count} token(s) outside the support: {rules}"
                           f" in {len({f.record for f in findings})}/{len(idx)} records{tie_note}",
                           details, findings)
    return CheckResult(NAME, "pass", f"{tokens} sampled tokens in {len(idx)} records all "
                       f"inside top_k/top_p/min_p{tie_note}", details)
