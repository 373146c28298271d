"""Greedy check: at temperature 0 (or top_k 1) every served token is the reference's argmax.

Teacher forcing scores the whole served output in one pass, so checking goes on after a
divergence: each position is judged given the served tokens before it. A non-argmax token whose
logit is within the numerics tolerance δ of the argmax's is a near-tie (engines legitimately
split those); anything further is a hard mismatch.
"""

from __future__ import annotations

import numpy as np

from servecheck.checks import CheckContext, CheckResult, Finding
from servecheck.scoring import TokenScores


def greedy_positions(s: TokenScores, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """(hard mismatches, near-ties): non-argmax positions beyond and within the tolerance δ."""
    off = s.token_ids != s.argmax
    return np.flatnonzero(off & (s.margin > delta)), np.flatnonzero(off & (s.margin <= delta))


def check_greedy(ctx: CheckContext) -> CheckResult:
    idx = [i for i, r in enumerate(ctx.records) if r.parameters.greedy]
    if not idx:
        return CheckResult("greedy", "skipped", "no greedy records (temperature 0 or top_k 1)")
    scores = ctx.scores(idx)
    tok = ctx.ref.tokenizer
    delta = ctx.numerics.logit
    findings: list[Finding] = []
    tokens = hard = ties = 0
    sources = {ctx.output_ids(i)[1] for i in idx} | {ctx.prompt_ids(i)[1] for i in idx}
    for i in idx:
        s = scores[i]
        tokens += len(s)
        hard_pos, tie_pos = greedy_positions(s, delta)
        hard += len(hard_pos)
        ties += len(tie_pos)
        if len(hard_pos):
            k = int(hard_pos[0])
            served, best = tok.convert_ids_to_tokens([int(s.token_ids[k]), int(s.argmax[k])])
            findings.append(Finding(
                ctx.labels[i],
                f"{len(hard_pos)} non-argmax token(s); first at output token {k}: served "
                f"{served!r}, reference argmax {best!r}, logit margin {s.margin[k]:.3f} > δ {delta}",
                float(s.margin[hard_pos].max())))
    details = {"records": len(idx), "tokens": tokens, "hard_mismatches": hard,
               "near_ties": ties, "tolerance": delta, "numerics": ctx.numerics.name,
               "token_sources": sorted(sources)}
    tie_note = f", {ties} near-tie divergence(s) within δ={delta}" if ties else ""
    if hard:
        return CheckResult("greedy", "fail",
                           f"{hard} hard mismatch(es) in {len(findings)}/{len(idx)} greedy "
                           f"records ({tokens} tokens){tie_note}", details, findings)
    return CheckResult("greedy", "pass", f"{tokens} tokens in {len(idx)} greedy records all "
                       f"argmax{tie_note}", details)
