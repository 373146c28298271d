"""The alternatives' statistics (``reference.tails``) against their definition on materialised q.

Each column is a sum over q = S_θ(z) that ``transform`` gives in full: the mass a top_k, min_p
or top_p alternative would remove, the served token's rank in q, and the context sums of the
penalty scores, on random logits with and without truncation, with ties and with penalties.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from servecheck.reference.logit_blocks import token_counts
from servecheck.reference.sampling import HF, Sampling, apply_penalties, transform
from servecheck.reference.tails import (
    K_GRID,
    MIN_P_GRID,
    TAIL_CANDIDATES,
    TOP_P_GRID,
    WINDOW,
    context_windows,
)
from servecheck.reference.token_scores import ScoreItem
from tests.reference.stats_by_key import reference_sampled_stats

SAMPLINGS = [Sampling(temperature=0.8), Sampling(temperature=1.3, top_k=30),
             Sampling(temperature=0.7, top_p=0.9), Sampling(temperature=1.0, min_p=0.03),
             Sampling(temperature=0.9, presence_penalty=0.4, frequency_penalty=0.2)]


def by_definition(z: torch.Tensor, tok: torch.Tensor, s: Sampling, win: np.ndarray) -> dict:
    """Every column for one row from q itself (float64)."""
    q = transform(z[None], s, HF).exp()[0].double()
    ranked, _ = q.sort(descending=True)
    above = ranked.cumsum(0) - ranked
    out = {f"beyond_k{k}": float(ranked[k:].sum()) for k in K_GRID}
    out |= {f"below_min_p{c:g}": float(q[q < c * q.max()].sum()) for c in MIN_P_GRID}
    out |= {f"beyond_top_p{p:g}": float(ranked[above >= p].sum()) for p in TOP_P_GRID}
    if q[tok] > 0:  # (a token outside the support has no rank in q; the checks skip it)
        out["rank_q"] = min(TAIL_CANDIDATES, int((q > q[tok]).sum()))
    ids = [int(t) for t in win if t >= 0]
    counts = {t: ids.count(t) for t in set(ids)}
    zf = z.double()
    out["out_count_y"] = counts.get(int(tok), 0)
    out["out_seen"] = sum(float(q[t]) for t in counts)
    out["out_count"] = sum(float(q[t]) * c for t, c in counts.items())
    out["out_count2"] = sum(float(q[t]) * c * c for t, c in counts.items())
    out["out_rep"] = sum(float(q[t] * zf[t].abs()) for t in counts)
    return out


@pytest.mark.parametrize("s", SAMPLINGS, ids=[s.label() for s in SAMPLINGS])
def test_tail_columns_equal_their_definition(s: Sampling) -> None:
    g = torch.Generator().manual_seed(7)
    vocab, n = 600, 24
    logits = (torch.randn(n, vocab, generator=g) * 3).to(torch.bfloat16).float()  # with ties
    prompt = torch.randint(0, vocab, (30,), generator=g).tolist()
    output = torch.randint(0, 40, (n,), generator=g).tolist()  # repeats: penalties matter
    item = ScoreItem(prompt, output, s)
    counts = token_counts(item, slice(0, n), vocab, HF)
    tok = torch.tensor(output)
    wall, wout = context_windows(prompt, output, np.arange(n))
    got = reference_sampled_stats(logits, tok, s, HF, counts, torch.zeros(n),
                                  (torch.from_numpy(wall), torch.from_numpy(wout)))
    z = apply_penalties(logits, counts, s)
    plain = Sampling(s.temperature, s.top_k, s.top_p, s.min_p)  # q of the penalised logits
    for r in range(n):
        want = by_definition(z[r], tok[r], plain, wout[r])
        for key, value in want.items():
            have = float(got[key][r])
            if math.isnan(have):  # allowed only where the candidates cannot hold the answer
                assert key.startswith(("below_min_p", "beyond_top_p")), key
                continue
            assert have == pytest.approx(value, abs=2e-5, rel=1e-4), (key, r)


def test_windows_hold_the_last_tokens_before_each_position() -> None:
    prompt, output = list(range(100, 400)), [1, 2, 1, 3]
    wall, wout = context_windows(prompt, output, np.arange(4))
    assert wall.shape == (4, WINDOW) and wout.shape == (4, WINDOW)
    assert wall[0, -1] == 399 and wall[3, -3:].tolist() == [1, 2, 1]
    assert (wout[0] == -1).all() and wout[3, -3:].tolist() == [1, 2, 1]
    assert wall[3, 0] == 100 + 300 - WINDOW + 3
