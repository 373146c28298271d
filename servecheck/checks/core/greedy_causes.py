"""Greedy mismatches a penalty explains: the setting the server applied that made them argmax.

A greedy output is deterministic, so a penalty the server applies where the request set none
(llama.cpp's server default ``repeat_penalty`` 1.1, a ``repetition_penalty`` sent under a name
the server does not read, a deployment default) shows as hard argmax mismatches at the first
repeated token, and nowhere else. The greedy check counts them; this names their cause where one
setting does: the mismatched records are scored again under each candidate penalty, and a
candidate explains them when it leaves (almost) none of their mismatches and adds none to a
sample of the records that matched. The smallest such penalty is named, llama.cpp's default
first among equals. The sampled records' evidence for a penalty is the sampler check's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from servecheck.checks.core.context import CheckContext
from servecheck.reference.sampling import Sampling
from servecheck.reference.token_scores import ScoreItem, TokenScores

GRID = ([("repetition_penalty", v) for v in (1.05, 1.1, 1.15, 1.2, 1.3, 1.5)]
        + [(name, v) for name in ("presence_penalty", "frequency_penalty")
           for v in (0.1, 0.3, 0.5, 1.0, 1.5, 2.0)])
SCOPES = ("prompt+output", "output")
SAMPLE = 32
"""Mismatched records rescored at most, and as many of the matched ones."""
LEFT = 0.05
"""A candidate may leave this share of the mismatches (a near-tie its kernels break otherwise)."""


@dataclass(frozen=True)
class Cause:
    setting: str
    value: float
    scope: str
    before: int
    """Hard mismatches in the records rescored, under the request."""
    after: int
    """…and under this penalty (in the matched records too)."""
    records: int
    requested: float | None
    """The value every rescored request set for ``setting`` explicitly, if they all did."""

    def describe(self) -> str:
        shape = (f"a {self.setting.replace('_', ' ')} of {self.value:g} ({self.scope} tokens "
                 f"counted)")
        said = (f"every one of the {self.before} mismatches in the {self.records} records "
                f"rescored is the argmax once {shape} is applied" if not self.after else
                f"{self.before - self.after} of the {self.before} mismatches in the "
                f"{self.records} records rescored are the argmax once {shape} is applied")
        if self.requested is not None:
            return (f"{said}: the server did not apply {self.setting}={self.requested} as "
                    f"requested")
        return f"{said}: the server applies a penalty the request did not ask for"


def penalised_gaps(ctx: CheckContext, items: list[ScoreItem], scope: str) -> list[np.ndarray]:
    """Per item and token: how far the served token's penalised logit is below the penalised
    argmax's, under the item's (temperature-1) sampling (logit gaps are log-probability gaps
    there): 0 where the served token is the argmax a penalised greedy decoder takes."""
    return [_gap(s) for s in _scored(ctx, items, scope)]


def _scored(ctx: CheckContext, items: list[ScoreItem], scope: str) -> list[TokenScores]:
    return ctx.scorer(ctx.ref, items, replace(ctx.convention, penalty_scope=scope))


def _gap(s: TokenScores) -> np.ndarray:
    return np.log(s.stats["top"]) - s.stats["logq"]


def requested_gaps(ctx: CheckContext, idx: list[int]) -> dict[int, np.ndarray]:
    """For the greedy records at ``idx`` whose requests set penalties: each token's distance
    from the argmax under those penalties, the token a correct greedy decoder takes. Each
    record is scored for it once a run (the greedy check and the token evidence both ask)."""
    known: dict[int, np.ndarray] = ctx.once("requested gaps", dict)
    penalised = [i for i in idx if ctx.sampling[i].penalised and i not in known]
    items = [replace(ctx.item(i), sampling=Sampling(
        repetition_penalty=ctx.sampling[i].repetition_penalty,
        presence_penalty=ctx.sampling[i].presence_penalty,
        frequency_penalty=ctx.sampling[i].frequency_penalty)) for i in penalised]
    gaps = penalised_gaps(ctx, items, ctx.convention.penalty_scope) if items else []
    known.update(zip(penalised, gaps, strict=True))
    return {i: known[i] for i in idx if i in known}


def _hard(ctx: CheckContext, items: list[ScoreItem], scope: str) -> list[int]:
    """Hard mismatches per item: tokens more than the numerics tolerance off the penalised
    argmax."""
    return [int(np.sum(g > ctx.tolerances.logit)) for g in penalised_gaps(ctx, items, scope)]


def _reachable(item: ScoreItem, scores: TokenScores, hard: np.ndarray) -> int:
    """Hard mismatches a penalty could undo: those whose reference argmax is a token seen
    before (in the prompt or the output so far). Every penalty lowers the logits of seen tokens
    only, so an unseen argmax stays as far above the served token as it was, whatever the
    penalty or its scope: where too few are reachable, no cell of the grid can explain the
    mismatches, and none is scored (a reference of other weights mismatches everywhere: the
    checks of 5,376 such records took 5.6 s with the grid, 1.8 s without, same verdicts, on
    this project's 2-core CPU)."""
    seen = set(item.prompt_ids)
    reach = 0
    for k, token in enumerate(item.output_ids):
        reach += bool(hard[k]) and int(scores.argmax[k]) in seen
        seen.add(token)
    return reach


def explain(ctx: CheckContext, mismatched: list[int], matched: list[int]) -> Cause | None:
    """The penalty that makes the greedy records' tokens argmax, or None."""
    plain = [i for i in mismatched if not ctx.sampling[i].penalised][:SAMPLE]
    others = [i for i in matched if not ctx.sampling[i].penalised]
    others = [others[k] for k in np.linspace(0, len(others) - 1, min(SAMPLE, len(others)))
              .round().astype(int).tolist()] if others else []
    if not plain:
        return None
    rows = plain + others
    base = [replace(ctx.item(i), sampling=Sampling(), seed=0) for i in rows]  # masks kept
    scored = _scored(ctx, base[:len(plain)], SCOPES[0])
    hard = [_gap(s) > ctx.tolerances.logit for s in scored]
    before = sum(int(h.sum()) for h in hard)
    if not before or before - sum(map(_reachable, base, scored, hard)) > LEFT * before:
        return None
    found: list[Cause] = []
    for scope in SCOPES:  # the whole grid in one call: one forward pass per record, not per cell
        items = [replace(b, sampling=Sampling(**{setting: value}))
                 for setting, value in GRID for b in base]
        hard = np.asarray(_hard(ctx, items, scope)).reshape(len(GRID), len(base)).sum(axis=1)
        for (setting, value), after in zip(GRID, hard.tolist(), strict=True):
            if after <= LEFT * before:
                asked = {getattr(ctx.records[i].parameters, setting) for i in plain}
                neutral = 1.0 if setting == "repetition_penalty" else 0.0
                found.append(Cause(setting, value, scope, before, after, len(plain),
                                   neutral if asked == {neutral} else None))
    if not found:
        return None
    return min(found, key=lambda c: (c.after, c.setting != "repetition_penalty",
                                     abs(c.value - (1.1 if c.setting == "repetition_penalty"
                                                    else 0.0)), c.scope != SCOPES[0]))
