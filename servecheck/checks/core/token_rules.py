"""What a correct server's token may be, position by position: the reference's argmax within
the numerics tolerance δ (greedy), or a token inside top_k, the top_p nucleus and min_p within
the tolerance (sampled). The greedy and support checks judge files by these rules; the
per-record verdict, the sampler check and the convention search judge records by them.
"""

from __future__ import annotations

import numpy as np

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.options import Numerics
from servecheck.reference.sampling import RULES
from servecheck.reference.token_scores import TokenScores


def greedy_positions(s: TokenScores, delta: float, gap: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(hard mismatches, near-ties): non-argmax positions beyond and within the tolerance δ.
    ``gap``: for a request with penalties, each token's distance from the penalised argmax
    (``greedy_causes.penalised_gaps``), which a correct greedy decoder takes instead of the
    raw one."""
    if gap is not None:
        off = gap > 0
        return np.flatnonzero(off & (gap > delta)), np.flatnonzero(off & (gap <= delta))
    off = s.token_ids != s.argmax
    return np.flatnonzero(off & (s.margin > delta)), np.flatnonzero(off & (s.margin <= delta))


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
