"""The context check: outputs past the built-in model's 128-token sliding window against those
before it, and along the context, from real in-process servers, correct and faulty.

Every server here is ``hf:builtin`` (fp32, or bf16 checked with numerics bf16) with at most one
fault of ``collect/targets/faults.py``; requests and seeds are fixed, so the outcomes are fixed.
The check's false-failure rate on a correct server is its share of α (0.02 × 0.01 = 2e-4 a run)
where its tests' nulls hold exactly (the quantile residuals, Fisher's test on mismatches a
correct server never makes); the log-prob |Δ| tests rest on their floors instead: a correct bf16
server's mean |Δ| grew by about 0.002 past the window (0.004 before it), against a jump floor of
4 times the before-window |Δ| (at least 0.01 and at most 0.025 at bf16) and a slope floor of
0.025 per 128 positions.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from servecheck.checks.context import run as run_context
from servecheck.checks.core.attribution import TOKEN_ROWS
from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.options import CheckOptions
from servecheck.checks.core.stats import holm
from servecheck.checks.core.token_evidence import TokenEvidence, compare, slopes
from servecheck.checks.logprobs import check_logprobs
from servecheck.reference.model import Reference
from servecheck.report.html import check_rows
from servecheck.workflows.check import check

WINDOW = "outputs degrade past 128 tokens of context: the sliding window is not what the checkpoint says"


@pytest.fixture(scope="module")
def greedy_requests(long_requests: Callable[..., list]) -> list:
    return long_requests(seed=0)


def _context(records: list, ref: Reference, numerics: str = "fp32"):
    return run_context(CheckContext(records, ref, CheckOptions(numerics=numerics)))[0]


def test_a_correct_server_past_the_window_passes(serve, greedy_requests, ref: Reference) -> None:
    r = _context(serve("hf:builtin", greedy_requests), ref)
    assert r.verdict == "pass", (r.summary, [t.describe() for t in r.details.tests()])
    sides = r.details.sides
    assert all(s.greedy >= 40 for s in sides.values()), sides
    assert not any(s.mismatches for s in sides.values())
    assert {t.kind for t in r.details.tests()} == {"greedy", "served", "served slope"}


def test_an_ignored_window_fails_named_with_the_window(serve, greedy_requests,
                                                       ref: Reference) -> None:
    records = serve("hf:builtin?fault=window-ignored", greedy_requests)
    r = _context(records, ref)
    assert r.verdict == "fail" and r.summary == WINDOW
    assert r.details.likely_cause() == WINDOW and r.details.shape == "step"
    assert (r.reason or "").startswith("FAIL: ") and (r.reason or "").endswith(f"Named: {WINDOW}.")
    before = r.details.sides["before the window"]
    assert before.mismatches == 0 and (before.served_mean or 0) < 1e-5  # exactly a correct server's
    named = [f for f in r.findings if f.record in {rec.id for rec in records}]
    assert named and all("past the window (positions" in f.message for f in named)
    (row,) = check_rows([r])  # the report's table of the three sets
    assert [s["set"] for s in row.sides] == ["before the window", "just past", "far past"]
    assert row.sides[0]["mismatches"] == 0 and row.sides[2]["mismatches"] > 0


def test_short_prompts_could_not_show_it(serve, long_requests, ref: Reference) -> None:
    records = serve("hf:builtin", long_requests(seed=1, turns=(0, 1), repeats=2))
    r = _context(records, ref)
    assert r.verdict == "skipped"
    assert r.summary.startswith("no output token lies past the 128-token sliding window")
    assert "send prompts longer than 128 tokens beside short ones" in r.summary


def test_only_long_prompts_have_nothing_to_compare_with(serve, long_requests,
                                                        ref: Reference) -> None:
    records = serve("hf:builtin", long_requests(seed=2, turns=(8, 10), repeats=2))
    r = _context(records, ref)
    assert r.verdict == "skipped" and "every scored token lies past it" in r.summary


def test_a_checkpoint_without_a_sliding_window_is_not_applicable(lite_records) -> None:
    r = run_context(CheckContext(lite_records[:2], Reference("builtin-tools")))[0]
    assert r.verdict == "skipped" and "has no sliding window" in r.summary


def _null(rng: np.random.Generator, n: int = 600) -> TokenEvidence:
    """A correct server's tokens: positions 40–400, no greedy mismatch, N(0, 1) quantile
    residuals, log-prob |Δ| of bf16 numerics that grow with position as measured."""
    position = rng.integers(40, 400, n)
    greedy = rng.random(n) < 0.5
    residual = np.where(greedy, np.nan, rng.standard_normal(n))
    served = rng.exponential(0.004 + 0.00002 * position)
    return TokenEvidence(np.arange(n) // 30, position, greedy, np.zeros(n, bool), residual,
                         served)


def test_the_tests_hold_their_level_on_a_correct_servers_tokens() -> None:
    """2,000 correct-server sets at the check's level (2e-4): none fails. The residual tests'
    nulls are exact: their p-values are uniform (share below 0.05 within 0.04–0.06)."""
    rng = np.random.default_rng(20260101)
    fails, low = 0, []
    for _ in range(2000):
        ev = _null(rng)
        past = ev.position >= 128
        tests = compare(ev, past, ~past, "jump", 0.1) + slopes(ev, past | ~past, "slope", 128, 0.1)
        holm(tests, 2e-4)
        fails += any(t.failed for t in tests)
        low += [t.p < 0.05 for t in tests if t.kind in ("residual", "residual slope")]
    assert fails == 0
    assert 0.04 <= np.mean(low) <= 0.06


@pytest.mark.slow
def test_correct_servers_pass_seed_after_seed(serve, long_requests, ref: Reference) -> None:
    """Four seeds of 64 records (greedy and T = 1), fp32 and bf16 (numerics bf16): 8 correct
    sets, 0 context failures (the check's rate is 2e-4 a run)."""
    for seed in (11, 12, 13, 14):
        requests = long_requests(seed=seed, repeats=4, temperatures=(0.0, 1.0))
        for spec, numerics in (("hf:builtin", "fp32"), ("hf:builtin?dtype=bfloat16", "bf16")):
            r = _context(serve(spec, requests), ref, numerics)
            assert r.verdict == "pass", (seed, spec, [t.describe() for t in r.details.tests()])


@pytest.mark.slow
def test_window_faults_are_named_where_pooled_checks_miss_them(serve, long_requests,
                                                               ref: Reference) -> None:
    """An ignored window served in bf16, checked with numerics bf16: the context check names
    it, first among the run's failures. A window one key too wide at fp32 numerics: the
    log-probs check, pooling every token, passes (its mean |Δ| stays within 0.003), the context
    check names it; within bf16's tolerance it is no finding."""
    requests = long_requests(seed=3, repeats=4, temperatures=(0.0, 1.0))
    run = check(serve("hf:builtin?dtype=bfloat16&fault=window-ignored", requests),
                CheckOptions(numerics="bf16"), reference=ref)
    verdicts = {r.name: r for r in run.results}
    assert verdicts["context"].verdict == "fail" and verdicts["context"].summary == WINDOW
    first, *rest = run.digest.failures
    assert first.check == "context" and first.cause == WINDOW, run.digest.failures
    assert all(f.follows == "context" for f in rest if f.check in TOKEN_ROWS), rest
    wide = serve("hf:builtin?fault=window-off-by-one", requests)
    r = _context(wide, ref)
    assert r.verdict == "fail" and r.summary == WINDOW, [t.describe() for t in r.details.tests()]
    pooled = check_logprobs(CheckContext(wide, ref, CheckOptions(numerics="fp32")))
    assert pooled.verdict == "pass", pooled.summary
    assert _context(wide, ref, "bf16").verdict == "pass"


@pytest.mark.slow
def test_an_fp8_kv_cache_is_never_named_the_window(serve, long_requests, ref: Reference) -> None:
    """kv-fp8 (scale 1.0) moves every log-prob a little, a little more past the window on the
    built-in model (mean |Δ| 0.003 before it, 0.005–0.011 past, seeds 1–4): at fp32 numerics
    the tests find it in some sets and not others, a step never (its before-window |Δ| is no
    correct server's), so it is never named the window; where it fails, it is named a growth
    with context, with the KV cache the records report."""
    for seed in (2, 3):
        r = _context(serve("hf:builtin?fault=kv-fp8", long_requests(seed=seed, repeats=4,
                                                                    temperatures=(0.0, 1.0))), ref)
        assert r.summary != WINDOW and r.details.shape != "step", r.summary
        sides = r.details.sides
        assert sides["before the window"].served_mean > 0.002  # not a correct server's 1e-6
        if r.verdict == "fail":
            assert "(the records say the KV cache is fp8)" in r.summary


@pytest.mark.slow
def test_degradation_everywhere_is_not_this_checks_finding(serve, long_requests,
                                                           ref: Reference) -> None:
    """int4 weights: wrong before the window as after it; the greedy check fails, this one does
    not name a position fault."""
    r = _context(serve("hf:builtin?fault=int4", long_requests(seed=3, repeats=4)), ref)
    assert r.verdict in ("pass", "inconclusive"), r.summary
    assert r.details.likely_cause() is None


@pytest.mark.slow
def test_log_probs_off_past_the_window_only_name_the_window_as_a_cause(
        serve, long_requests, ref: Reference) -> None:
    """Every prompt longer than the window (as behind a long system prompt): the context check
    has no token before it to compare with, so the log-probs row, failing at fp32 (a window one
    key too wide: mean |Δ| 0.0041 past it on these seeds), says a window served wrong explains them as
    well as other numerics; with short prompts beside, where the context check names the window
    itself, the row does not say it."""
    served = serve("hf:builtin?fault=window-off-by-one",
                   long_requests(seed=2, repeats=4, temperatures=(0.0, 1.0)))
    long = [r for r in served if len(r.prompt_token_ids or []) >= 128]
    assert 0 < len(long) < len(served)
    alone = check_logprobs(CheckContext(long, ref, CheckOptions(numerics="fp32")))
    assert alone.verdict == "fail" and alone.details.past_window == 128
    assert "128-token sliding window: a window served wrong" in alone.details.likely_cause()
    mixed = check_logprobs(CheckContext(served, ref, CheckOptions(numerics="fp32")))
    assert mixed.details is None or getattr(mixed.details, "past_window", None) is None
