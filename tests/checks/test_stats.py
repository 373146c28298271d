"""Holm's procedure and the temperature profile likelihood."""

from __future__ import annotations

import numpy as np
import torch

from servecheck.checks.core.stats import StatTest, holm, temperature_fit
from servecheck.reference.token_scores import TEMPERATURE_FACTORS


def _t(p: float) -> StatTest:
    return StatTest("g", "t", p, 1.0, 0.0, "e", 10)


def test_holm_step_down() -> None:
    tests = [_t(p) for p in (0.001, 0.004, 0.03, 0.2)]
    holm(tests, alpha=0.05)
    # thresholds 0.05/4, 0.05/3, 0.05/2, 0.05/1: the first two reject, then 0.03 > 0.025 stops
    assert [t.rejected for t in tests] == [True, True, False, False]
    assert [round(t.p_adjusted, 3) for t in tests] == [0.004, 0.012, 0.06, 0.2]


def test_temperature_fit_recovers_the_truth() -> None:
    """Tokens sampled at T=1.3, scored as if 0.9 was asked: the fit finds ~1.3 and rejects 0.9."""
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(3000, 30, generator=gen) * 2
    y = torch.multinomial((z / 1.3).softmax(-1), 1, generator=gen)
    requested = 0.9
    temp_ll = torch.stack([(z / (requested * f)).log_softmax(-1).gather(1, y)[:, 0]
                           for f in TEMPERATURE_FACTORS], 1).numpy()
    fit = temperature_fit(temp_ll, requested, TEMPERATURE_FACTORS, "g", 0.1)
    assert fit.low < 1.3 < fit.high and abs(fit.estimate - 1.3) < 0.05
    assert fit.test.p < 1e-10 and fit.test.effect > 0.3
    honest = torch.stack([(z / (1.3 * f)).log_softmax(-1).gather(1, y)[:, 0]
                          for f in TEMPERATURE_FACTORS], 1).numpy()
    same = temperature_fit(honest, 1.3, TEMPERATURE_FACTORS, "g", 0.1)
    assert same.test.p > 0.01 and np.isclose(same.estimate, fit.estimate, rtol=0.02)
