"""The report draws what the tests read: with shared seeds the temperature test deflates the
log-likelihood by the design effect, and the profile the chart draws is that same deflated one,
so the interval shaded beside it is where the drawn curve falls by the test's threshold (the
report used to redraw the profile undeflated: deff× steeper than its interval)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import stats as st

import servecheck
from servecheck.checks.core.pooling import informative, sampled_groups
from servecheck.checks.core.stats import temperature_profile


def test_the_drawn_profile_is_the_one_the_interval_came_from(run_cli, tmp_path: Path,
                                                             ref) -> None:
    prompts = tmp_path / "prompts.json"  # one seed for every request: one random stream
    prompts.write_text(json.dumps({"prompt": [f"Write about the colour number {k}."
                                              for k in range(24)],
                                   "temperature": 0.8, "seed": 1234, "max_tokens": 32}))
    out = tmp_path / "responses.jsonl"
    assert run_cli("generate", prompts, "--target", "hf:builtin", "--out", out,
                   "--no-progress") == 0
    run = servecheck.check(out, servecheck.CheckOptions("builtin"), reference=ref)
    fit = next(r for r in run.results if r.name == "fit")
    deff = fit.details.seed_design["design_effect"]
    assert deff > 1.5, fit.details.seed_design  # one seed for every prompt: shared streams
    drawn = [g for g in fit.details.group_evidence() if g.profile is not None]
    assert drawn
    ctx, groups = run.context, sampled_groups(run.context)
    for g in drawn:
        p = g.profile
        test = next(t for t in g.tests if t.kind == "temperature")
        x, y = np.log(p.temperatures), np.asarray(p.loglik)
        row = next(r for r in run.results if r.name == "temperature").details.groups[g.label]
        drop = st.chi2.ppf(row.fit.level, 1) / 2  # the interval: where the profile falls this far
        ends = [e for e in (p.low, p.high) if x[0] < np.log(e) < x[-1] and e != p.estimate]
        assert ends, "an interval end inside the grid"
        for end in ends:
            np.testing.assert_allclose(max(y) - np.interp(np.log(end), x, y), drop, rtol=0.02)
        # and it is the deflated profile of the group's tokens, not the raw one
        idx = next(i for s, i in groups.items() if s.label() == g.label)
        scores = ctx.scores(idx)
        raw = np.concatenate([scores[i].stats["temp_ll"][informative(scores[i])] for i in idx])
        # (the check sums the float32 scores in float64, record by record: to float32's grain)
        np.testing.assert_allclose(y, temperature_profile(raw.astype(np.float64) / deff),
                                   rtol=1e-6)
        assert not np.allclose(y, temperature_profile(raw), rtol=1e-3)
        assert test.group == g.label
