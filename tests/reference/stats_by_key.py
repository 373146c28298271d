"""One logit block's sampled statistics as a dict by key, the way the tests read them.

The library never needs this form (the scorer keeps the statistics as columns of one tensor,
``token_scores.unpack`` names them on the host), so it lives with the tests. A plain helper
module, not a fixture: test_scoring_gpu.py runs with ``--noconftest``
(benchmarks/gpu_session.sh), so it imports this module, as it does ``cases``.
"""

from __future__ import annotations

import torch

from servecheck.reference.logit_blocks import block_stats
from servecheck.reference.sampling import Convention, Sampling
from servecheck.reference.tails import TAIL_KEYS
from servecheck.reference.token_scores import STAT_KEYS, TEMPERATURE_FACTORS


def reference_sampled_stats(logits: torch.Tensor, tok: torch.Tensor, s: Sampling,
                            convention: Convention, counts: torch.Tensor | None,
                            uniforms: torch.Tensor,
                            windows: tuple[torch.Tensor, torch.Tensor] | None = None
                            ) -> dict[str, torch.Tensor]:
    """The statistics of one block as a dict (``TokenScores.stats`` for these rows)."""
    _, block = block_stats(logits, tok, s, convention, counts, windows)
    assert block is not None
    out = {k: block[:, j] for j, k in enumerate(STAT_KEYS)}
    out["rule"] = out["rule"].long()
    out["pit"] = out["above"] + uniforms.to(block.device) * out["logq"].exp()
    n = len(STAT_KEYS) + len(TEMPERATURE_FACTORS)
    out["temp_ll"] = block[:, len(STAT_KEYS):n]
    out.update({k: block[:, n + j] for j, k in enumerate(TAIL_KEYS)})
    return out
