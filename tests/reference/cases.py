"""Sampling parameters that stress the scorer: each truncation rule alone and together.

Plain data, no fixture: test_scoring.py checks the CPU statistics on them and
test_scoring_gpu.py the GPU ones, and the GPU file runs with ``--noconftest``
(benchmarks/gpu_session.sh), so it imports this module instead.
"""

from __future__ import annotations

from servecheck.reference.sampling import Sampling

CASES = [Sampling(temperature=0.7, top_p=0.9), Sampling(temperature=1.0),
         Sampling(temperature=1.0, top_k=40), Sampling(temperature=0.7, top_k=40, top_p=0.8),
         Sampling(temperature=1.3, top_p=0.95, min_p=0.02), Sampling(temperature=0.5, min_p=0.1),
         Sampling(temperature=0.8, top_k=5, top_p=0.5, min_p=0.05)]
