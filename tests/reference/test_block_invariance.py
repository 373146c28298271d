"""A row's sampled statistics do not depend on which rows share its logit block: each row takes
its own path (the sorted candidates of its top_k or nucleus, or the full vocabulary), never one
chosen for the whole block. So a chunked set scores every record as one process does, which the
pooled chunks rely on (tests/workflows/test_pooled_chunks.py). The two paths agree to float32
rounding, not bit for bit: before the choice was per row, a peaked row's temperature profile
moved by 2e-7 when a flat row joined its block.

On one thread: torch's CPU sums split a row among threads when a block has few rows, which
moves the last bit of a float32 sum whatever the path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from servecheck.reference.sampling import HF, Sampling
from tests.reference.stats_by_key import reference_sampled_stats


@pytest.fixture()
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("s", [Sampling(top_p=0.9), Sampling(top_k=40),
                               Sampling(temperature=0.8, top_k=40, top_p=0.9)],
                         ids=["top_p", "top_k", "both"])
def test_a_rows_statistics_are_the_same_in_any_block(s: Sampling, one_thread) -> None:
    g = torch.Generator().manual_seed(0)
    peaked = torch.randn(6, 4096, generator=g)  # its nucleus: a few tokens, among the candidates
    peaked[:, :9] += 30.0 + torch.rand(6, 9, generator=g)
    flat = torch.randn(6, 4096, generator=g) * 0.1  # its nucleus: most of the vocabulary
    tok, u = torch.tensor([4] * 6 + [3] * 6), torch.full((12,), 0.5)
    joint = reference_sampled_stats(torch.cat([peaked, flat]), tok, s, HF, None, u)
    alone = reference_sampled_stats(peaked, tok[:6], s, HF, None, u[:6])
    for key, values in joint.items():
        assert np.array_equal(values[:6].numpy(), alone[key].numpy(), equal_nan=True), key
