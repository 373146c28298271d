"""How likely a correct server is to think where the request switched thinking off.

A template that switches thinking off (``enable_thinking: false``) writes an empty thinking
block, after which a well-trained model almost never opens another; almost is not never. The
reference itself gives the opener a probability at the first answer token, and a small model
(the built-in ones) gives it a few percent: an honest server sampling at temperature 1 thinks
now and then, and a rule that any thinking is a fault false-alarmed on one record in a few
hundred. So thinking is judged against the reference's own odds:

- a record alone: a greedy record whose opener trails the argmax by more than the numerics'
  near-tie δ, or a sampled record whose opener had a probability below ``LEVEL / (2 n)``;
- the records together: thinking on more of them than the reference's odds allow (a
  Poisson-binomial tail below ``LEVEL / 2``). Records that share a seed share the server's
  random stream (one seeded generator per choice, vLLM's and ours), so a unit is a (seed,
  choice) pair, thinking if any of its records thinks, with the union bound of its records'
  probabilities: two seed-40 requests that both think are one draw, not two.

``LEVEL`` is this check's false-alarm rate on a correct server, at most 1 run in 10,000: a
server that drops the flag makes every record think, far beyond it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from servecheck.checks.core.context import CheckContext
from servecheck.reference.token_scores import ScoreItem

__all__ = ["LEVEL", "ThinkingOdds", "thinking_odds"]

LEVEL = 1e-4


@dataclass(frozen=True)
class ThinkingOdds:
    implausible: frozenset[int]
    """Thinking records no correct server would produce alone."""
    together: float
    """The chance that a correct server thinks on as many (seed, choice) units as this file
    does (1.0 when none think)."""
    expected: float
    """How many units a correct server would think on, on average."""

    @property
    def too_many(self) -> bool:
        return self.together < LEVEL / 2


def _opener_id(ctx: CheckContext, opener: str) -> int:
    """The opener's first token: its probability bounds the whole opener's from above, so a
    multi-token opener errs toward passing."""
    return ctx.ref.encode(opener.strip())[0]


def thinking_odds(ctx: CheckContext, off: list[int], thinks: set[int], opener: str) -> ThinkingOdds:
    """The odds of thinking for the records ``off`` (thinking switched off), of which ``thinks``
    think: under the reference's own prompt, whatever prompt the server reports (a dropped flag
    is the template check's to name; here it is the thinking it lets through)."""
    if not thinks:
        return ThinkingOdds(frozenset(), 1.0, 0.0)
    tok = _opener_id(ctx, opener)
    prompts = {i: ctx.ref.encode(ctx.expected_prompts[i]) for i in off}
    opened = {i: ctx.output_ids(i)[0].index(tok) if tok in ctx.output_ids(i)[0] else 0
              for i in thinks}
    late = sorted(i for i in thinks if opened[i])
    items = [ScoreItem(prompts[i], [tok], ctx.sampling[i], ctx.seed(i)) for i in off]
    items += [ScoreItem(prompts[i], ctx.output_ids(i)[0][:opened[i] + 1], ctx.sampling[i],
                        ctx.seed(i)) for i in late]
    scored = ctx.score_items(items)
    at_first = dict(zip(off, scored, strict=False))
    where = {**{i: (at_first[i], 0) for i in thinks},
             **{i: (s, opened[i]) for i, s in zip(late, scored[len(off):], strict=True)}}
    floor = LEVEL / (2 * len(off))
    implausible: set[int] = set()
    for i, (s, k) in where.items():
        if ctx.sampling[i].greedy:
            if float(s.margin[k]) > ctx.tolerances.logit:
                implausible.add(i)
        elif float(np.exp(s.stats["logq"][k])) < floor:
            implausible.add(i)
    units: dict[object, list[int]] = {}
    for i in off:
        if ctx.sampling[i].greedy or i in late:
            continue
        seed = ctx.records[i].parameters.seed
        units.setdefault(i if seed is None else (seed, ctx.records[i].choice), []).append(i)
    p = [min(1.0, float(sum(np.exp(at_first[i].stats["logq"][0]) for i in members)))
         for members in units.values()]
    hit = sum(any(i in thinks for i in members) for members in units.values())
    from scipy.stats import poisson_binom  # scipy 1.15+, only where thinking shows

    together = float(poisson_binom(p).sf(hit - 1)) if hit else 1.0
    return ThinkingOdds(frozenset(implausible), together, float(sum(p)))
