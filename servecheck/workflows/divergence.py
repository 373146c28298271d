"""Two greedy answers to one request that should agree: where they part, and whether that is
numerics (a near-tie of the reference) or a bug. The batch-invariance and prefix-cache probes
both ask it."""

from __future__ import annotations

from dataclasses import dataclass

from servecheck.checks.core.context import CheckContext
from servecheck.checks.template import first_difference
from servecheck.formats.records import ResponseRecord
from servecheck.reference.token_scores import ScoreItem

__all__ = ["Divergence", "divergences"]


@dataclass(frozen=True)
class Divergence:
    first: ResponseRecord
    second: ResponseRecord
    token: int
    """The first token at which the two outputs differ."""
    margin: float
    """How far below the reference argmax the second answer's token is, in logits."""
    tie: bool
    """Within the numerics tolerance: honest kernels may part there."""


def divergences(ctx: CheckContext, pairs: list[tuple[ResponseRecord, ResponseRecord]]
                ) -> list[Divergence]:
    """Each pair whose texts differ, teacher-forced up to and including the second answer's
    first differing token (one batch for all of them)."""
    ref = ctx.ref
    parted = []
    for a, b in pairs:
        if a.output == b.output:
            continue
        ids_a, ids_b = ref.encode(a.output), ref.encode(b.output)
        at = first_difference(ids_a, ids_b)
        prompt = ref.encode(a.input or ref.render(a.conversations, parameters=a.parameters))
        parted.append((a, b, at, ScoreItem(prompt, ids_b[: at + 1])))
    tol = ctx.tolerances.logit
    out = []
    for (a, b, at, _), s in zip(parted, ctx.score_items([p[3] for p in parted]), strict=True):
        margin = float(s.margin[at]) if at < len(s) else 0.0
        out.append(Divergence(a, b, at, margin, margin <= tol))
    return out
