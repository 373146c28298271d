"""The verdict on one record is calibrated: an exact null, not a normal approximation.

``plausibility.record_pit_z`` combines the randomised PIT values of a record's informative
tokens, each uniform under a correct sampler whatever q is, into z = −Σ Φ⁻¹(u) / √n: standard
normal for an output of any length. The sum of log q with its mean and variance (the pooled fit
check's statistic) is no normal variable over a handful of tokens: one rare token among eight
put honest records at z = −9 (issue 28: 2 of 1,344 honest records, 4 of 600 short T = 1
outputs, flagged under a green PASS, and ``compare`` blamed an identical ground truth).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as st

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.options import CheckOptions
from servecheck.checks.core.pooling import record_z
from servecheck.checks.plausibility import counted, judge, record_pit_z
from servecheck.collect.targets.hf import HFTarget
from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.parameters import Parameters
from servecheck.formats.prompts import Request, request_id
from servecheck.formats.responses import read_records
from servecheck.formats.stream import index
from servecheck.reference.model import Reference
from servecheck.reference.token_scores import TokenScores

RARE = [("Pick a number between 1 and 10.", 339), ("Pick a number between 1 and 10.", 191),
        ("Name an animal.", 263), ("Name an animal.", 252), ("Pick a number between 1 and 10.", 143)]
"""Honest T = 1 outputs of the built-in model of one to four tokens with a rare token among
them ("#.", " SEEDS.", "The FROG."): the log-likelihood z put them at −7.7 to −9.1."""


def _simulated(rng: np.random.Generator, length: int) -> TokenScores:
    """A record of ``length`` tokens drawn from random categorical distributions (peaked and
    flat), with its randomised PIT as the scorer computes it."""
    logq, pit, top = [], [], []
    for _ in range(length):
        q = rng.dirichlet(np.full(50, rng.choice([0.05, 0.3, 2.0])))
        y = rng.choice(50, p=q)
        above = q[q > q[y]].sum()
        logq.append(np.log(q[y]))
        pit.append(above + rng.random() * q[y])
        top.append(q.max())
    n = np.zeros(length)
    return TokenScores(n.astype(int), n, n.astype(int), n, n.astype(int),
                       {"logq": np.array(logq), "pit": np.array(pit), "top": np.array(top),
                        "entropy": n, "var": n})


def test_the_record_z_is_standard_normal_for_any_length() -> None:
    """40,000 simulated honest records of 1–8 tokens: z is N(0, 1) (KS) and the two-sided
    rejection rate at α = 0.001 is within its binomial noise. Fixed seed; a correct statistic
    fails this with probability below 1e-3 (KS) plus 1e-3 (the rate's bound)."""
    rng = np.random.default_rng(28)
    z = np.array([record_pit_z(_simulated(rng, int(rng.integers(1, 9))))[0]
                  for _ in range(40_000)])
    assert st.kstest(z, "norm").pvalue > 1e-3
    bound = st.norm.isf(0.0005)
    rate = float(np.mean(np.abs(z) > bound))
    assert rate <= st.binom.isf(1e-3, 40_000, 0.001) / 40_000


@pytest.fixture(scope="module")
def rare() -> list:
    target = HFTarget()
    records = []
    for prompt, seed in RARE:
        conv = Conversation(contents=[Message(role="user", content=prompt)])
        p = Parameters(temperature=1.0, seed=seed, max_tokens=16)
        records += target.generate_batch([Request(request_id(conv, p, seed), conv, p)])
    return records


def test_short_honest_outputs_with_a_rare_token_are_plausible(rare: list, verdicts) -> None:
    run, _, implausible = verdicts(rare)
    ctx = run.context
    scores = ctx.scores(list(range(len(rare))))
    assert min(record_z(s) for s in scores.values()) < -7  # what flagged them before
    assert not implausible


def test_compare_does_not_blame_an_identical_ground_truth(
        rare: list, tmp_path: Path, write_records: Callable, run_cli,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Replayed on the reference with their own seeds, these records come back identical: one
    text after one prompt, one verdict, and exit 0 (issue 28: exit 1, "the ground truth itself
    ... looks wrong")."""
    path = write_records(tmp_path / "r.json", rare)
    code = run_cli("compare", path, "--reference", "builtin", "--sample", "5", "--no-progress")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "served: 5/5 plausible · ground truth: 5/5 plausible" in out
    assert "looks wrong" not in out


def test_a_chunk_judges_its_records_at_the_whole_sets_bound() -> None:
    """Each chunk of a set checked in chunks judges its records against the bound one process
    would use (α/N over the set's N sampled records, counted on the first pass), not at its own
    α/k over its own records: every record of a chunk gets one process's verdict and words."""
    path = Path(__file__).parents[1] / "golden" / "temperature-ignored.responses.jsonl"
    records, ref = read_records(path), Reference("builtin")
    whole_ctx = CheckContext(records, ref, CheckOptions())
    whole = {whole_ctx.labels[i]: v for i, v in judge(whole_ctx, []).items()}
    n = index(path, tally=counted).tally()
    assert n == sum(not s.greedy for s in whole_ctx.sampling) > 16
    part = CheckContext(records[:16], ref, CheckOptions(alpha=0.01 / 4, record_bound=(0.01, n)))
    alone = CheckContext(records[:16], ref, CheckOptions(alpha=0.01 / 4))
    for ctx, same in ((part, True), (alone, False)):
        verdicts = {ctx.labels[i]: v for i, v in judge(ctx, []).items()}
        sampled = [k for k, v in verdicts.items() if v.details.mode == "sampled"]
        assert sampled
        assert all((verdicts[k].summary == whole[k].summary) is same for k in sampled)
