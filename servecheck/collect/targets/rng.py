"""Per-request random generators for ``hf:``: one ``torch.Generator`` a row, as vLLM keeps one a
seeded request.

Seeding the process-wide RNG once per call made a seeded request's tokens depend on whatever
else ran in the process meanwhile: the collector runs several ``generate`` calls in threads at
once, and their draws interleaved, so copies of one seeded request differed. Here each row (each
request of a batch, each of its ``n`` choices) draws only from its own generator, so its tokens
depend on its seed, its choice index and the logits alone.

HF's own warpers stay the ground truth: ``hf_warpers`` builds transformers' public warper classes
in the order ``generate`` would, and ``RowSampler``, the last processor, draws each row's token
with that row's generator and hands ``generate`` a point mass on it, so ``generate``'s own draw
from the global RNG can only pick that token. The distribution sampled from is unchanged (the
same warped scores, the same softmax); only the source of the uniform numbers moves.
"""

from __future__ import annotations

import torch

__all__ = ["RowSampler", "draw", "generator", "hf_warpers", "row_seed", "uniform"]

_MASK = (1 << 64) - 1


def row_seed(seed: int, choice: int) -> int:
    """The seed of choice ``choice`` of a request seeded ``seed``.

    Choice 0 is the seed itself, so ``n=1`` and the first of ``n`` choices agree. Later choices
    mix (seed, choice) through splitmix64 rather than take ``seed + choice``: with the sum, choice
    1 of seed 7 would repeat choice 0 of seed 8, and two requests whose seeds differ by one would
    share texts.
    """
    if choice == 0:
        return seed
    x = (seed * 0x9E3779B97F4A7C15 + choice) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return (x ^ (x >> 31)) >> 1  # 63 bits: what manual_seed takes on every platform


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def draw(probs: torch.Tensor, gen: torch.Generator) -> int:
    """One token from a probability row with ``gen`` alone."""
    return int(torch.multinomial(probs.float().cpu(), 1, generator=gen))


def uniform(gen: torch.Generator) -> float:
    return float(torch.rand((), generator=gen))


class RowSampler:
    """The last ``generate`` logits processor of a sampled call: each row's token drawn from the
    softmax of its processed scores with that row's generator, returned as a point mass."""

    def __init__(self, generators: list[torch.Generator]) -> None:
        self.generators = generators

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = scores.float().softmax(-1)
        tokens = torch.tensor([[draw(probs[r], g)] for r, g in enumerate(self.generators)],
                              device=scores.device)
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens, 0.0)


def hf_warpers(temperature: float | None, top_k: int | None, top_p: float | None,
               min_p: float | None) -> list:
    """transformers' own warpers, in the order and under the conditions ``generate`` adds them
    (``GenerationMixin._get_logits_processor``, one beam: at least one token kept)."""
    from transformers import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    warpers: list = []
    if temperature is not None and temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
    if top_p is not None and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    if min_p is not None:
        warpers.append(MinPLogitsWarper(min_p=min_p, min_tokens_to_keep=1))
    return warpers
