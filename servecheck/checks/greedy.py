"""Greedy check: at temperature 0 (or top_k 1) every served token is the reference's argmax.

Teacher forcing scores the whole served output in one pass, so checking goes on after a
divergence: each position is judged given the served tokens before it. A non-argmax token whose
logit is within the numerics tolerance δ of the argmax's is a near-tie (engines legitimately
split those); anything further is a hard mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.greedy_causes import explain, requested_gaps
from servecheck.checks.core.registry import check
from servecheck.checks.core.results import CheckResult, Details, Finding, Verdict
from servecheck.checks.core.token_rules import greedy_positions

NAME = "greedy"


@dataclass(frozen=True)
class GreedyDetails(Details):
    records: int
    tokens: int
    hard_mismatches: int
    near_ties: int
    tolerance: float
    numerics: str
    token_sources: list[str]
    cause: str | None = None
    """The penalty that makes every mismatch an argmax, where one does (``greedy_causes``)."""

    def effect(self) -> str:
        return f"{self.hard_mismatches}/{self.tokens} tokens non-argmax beyond δ"

    def reason(self, verdict: Verdict) -> str | None:
        ties = (f"; {self.near_ties} token(s) differ from it by no more than δ = {self.tolerance:g} logits, "
                f"near-ties the {self.numerics} numerics legitimately split" if self.near_ties else "")
        if self.hard_mismatches:
            return (f"FAIL: {self.hard_mismatches} of {self.tokens} served tokens are not the reference's "
                    f"argmax and trail it by more than δ = {self.tolerance:g} logits{ties}.")
        return f"PASS: every one of the {self.tokens} served tokens is the reference's argmax{ties}."

    def likely_cause(self) -> str | None:
        if self.cause:
            return f"greedy decoding with {self.cause}"
        return ("tokens that are not the reference's argmax: other weights, or sampling left on "
                "at temperature 0")

@check(NAME, order=50,
       catches=("greedy decoding that is not the argmax: other weights, or sampling or a penalty left "
                "on at temperature 0"),
       needs="temperature 0 (or top_k 1) requests")
def run(ctx: CheckContext) -> list[CheckResult]:
    return [check_greedy(ctx)]


def check_greedy(ctx: CheckContext) -> CheckResult:
    idx = ctx.greedy()
    if not idx:
        return CheckResult(NAME, "skipped", "no greedy records (temperature 0 or top_k 1)")
    scores = ctx.scores(idx)
    tok = ctx.ref.tokenizer
    delta = ctx.tolerances.logit
    findings: list[Finding] = []
    tokens = hard = ties = 0
    sources = {ctx.output_ids(i)[1] for i in idx} | {ctx.prompt_ids(i)[1] for i in idx}
    gaps = requested_gaps(ctx, idx)
    for i in idx:
        s = scores[i]
        tokens += len(s)
        hard_pos, tie_pos = greedy_positions(s, delta, gaps.get(i))
        hard += len(hard_pos)
        ties += len(tie_pos)
        if len(hard_pos):
            k = int(hard_pos[0])
            margin = gaps.get(i, s.margin)
            served, best = tok.convert_ids_to_tokens([int(s.token_ids[k]), int(s.argmax[k])])
            best = "the argmax under the requested penalties" if i in gaps else \
                f"reference argmax {best!r}"
            findings.append(Finding(
                ctx.labels[i],
                f"{len(hard_pos)} non-argmax token(s); first at output token {k}: served "
                f"{served!r}, {best}, logit margin {margin[k]:.3f} > δ {delta}",
                float(margin[hard_pos].max())))
    tie_note = f", {ties} near-tie divergence(s) within δ={delta}" if ties else ""
    if hard:
        wrong = {f.record for f in findings}
        cause = explain(ctx, [i for i in idx if ctx.labels[i] in wrong],
                        [i for i in idx if ctx.labels[i] not in wrong])
        details = GreedyDetails(len(idx), tokens, hard, ties, delta, ctx.tolerances.name,
                                sorted(s.value for s in sources),
                                cause.describe() if cause else None)
        why = f" — {cause.describe()}" if cause else ""
        return CheckResult(NAME, "fail",
                           f"{hard} hard mismatch(es) in {len(findings)}/{len(idx)} greedy "
                           f"records ({tokens} tokens){tie_note}{why}", details, findings)
    details = GreedyDetails(len(idx), tokens, hard, ties, delta, ctx.tolerances.name,
                            sorted(s.value for s in sources))
    return CheckResult(NAME, "pass", f"{tokens} tokens in {len(idx)} greedy records all "
                       f"argmax{tie_note}", details)
