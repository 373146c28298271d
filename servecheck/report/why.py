"""Why a verdict is what it is, in plain words, from the details' typed fields.

A reader who sees "relative error -0.250 (floor 0.1)" beside PASS cannot guess the rule that
made it pass. The rule (``checks.core.stats.StatTest.failed``): a statistical test fails only when
Holm's step-down over the run's whole family of tests rejects it at α *and* the size of its
effect is at least its practical floor. So a PASS next to an effect has one of three reasons,
and each needs different words:

- no evidence, and the effect is within the floor anyway;
- no evidence, though the measured effect is beyond the floor: too few tokens to tell it from
  chance (more tokens would settle it);
- significant, but the effect is within the floor: real but too small to matter, the size that
  bf16 kernels and chance produce on correct servers (``checks.distribution.FLOORS``).

The words come from the numbers (p, Holm-adjusted p, effect, floor, n), never from a display
string, so they cannot disagree with the verdict. Checks judged against a fixed tolerance
(log-probs, greedy near-ties, support boundary ties) and the seed test get their own sentence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from servecheck.checks.core.results import CheckResult
from servecheck.checks.core.stats import StatTest, holm_rejected
from servecheck.checks.distribution import GroupedDetails
from servecheck.checks.greedy import GreedyDetails
from servecheck.checks.logprobs import LogprobsDetails
from servecheck.checks.seeds import SeedDetails
from servecheck.checks.support import SupportDetails

Case = Literal["quiet", "noisy", "small", "failed"]
"""quiet: no evidence, within the floor; noisy: no evidence, beyond the floor; small:
significant, within the floor; failed: significant and beyond the floor."""


def case(t: StatTest) -> Case:
    big = abs(t.effect) >= t.floor
    if t.rejected:
        return "failed" if big else "small"
    return "noisy" if big else "quiet"


def _num(x: float) -> str:
    """An effect as the report's tables print it: signed, three decimals (tiny ones in e)."""
    return f"{x:+.3f}" if x == 0 or abs(x) >= 0.001 else f"{x:+.1e}"


def _evidence(t: StatTest, alpha: float, family: int | None) -> str:
    over = f" over the run's {family} tests" if family else ""
    if t.rejected:
        return f"Holm-adjusted p = {t.p_adjusted:.2g} ≤ α = {alpha:g}"
    if t.p <= alpha:
        return (f"p = {t.p:.2g} on its own, but {t.p_adjusted:.2g} > α = {alpha:g} after Holm's "
                f"correction{over}")
    return f"p = {t.p:.2g}, Holm-adjusted {t.p_adjusted:.2g} > α = {alpha:g}"


def _against_floor(t: StatTest) -> str:
    size = abs(t.effect)
    where = "within" if size < t.floor else "at" if size == t.floor else "beyond"
    return f"the measured {t.effect_label} {_num(t.effect)} is {where} the {t.floor:g} floor"


def because(t: StatTest, alpha: float, family: int | None = None) -> str:
    """Why one test passed or failed, without the verdict word."""
    evidence, measured = _evidence(t, alpha, family), _against_floor(t)
    return {
        "quiet": f"the test found no evidence of a difference ({evidence}), and {measured} "
                 f"anyway",
        "noisy": f"the test found no evidence of a difference ({evidence}); {measured}, but "
                 f"with {t.n} tokens it is too noisy to tell from chance (more tokens would "
                 f"settle it)",
        "small": f"the difference is statistically significant ({evidence}) but too small to "
                 f"matter: {measured} (effects that small are what bf16 kernels and chance "
                 f"produce on correct servers); a test fails only when it is significant and "
                 f"reaches its floor",
        "failed": f"the difference is statistically significant ({evidence}) and {measured}: "
                  f"both conditions for a failure hold",
    }[case(t)]


def stat_reason(t: StatTest, alpha: float, family: int | None = None) -> str:
    """One test's verdict in words: "PASS: …" or "FAIL: …"."""
    return f"{'FAIL' if t.failed else 'PASS'}: {because(t, alpha, family)}"


def headline(tests: list[StatTest]) -> StatTest | None:
    """The test whose effect the check's row shows: the largest relative to its floor, among
    the failing ones when any fail (the same choice as ``GroupedDetails.effect``)."""
    pool = [t for t in tests if t.failed] or tests
    return max(pool, key=lambda t: abs(t.effect) / t.floor) if pool else None


_TALLY = {"quiet": "no evidence, within the floor",
          "noisy": "beyond the floor but too noisy to tell from chance",
          "small": "significant but within the floor",
          "failed": "significant and beyond the floor"}


def _grouped(r: CheckResult, d: GroupedDetails) -> str | None:
    tests = d.tests()
    big = headline(tests)
    if big is None:
        return None
    counts = {k: sum(case(t) == k for t in tests) for k in _TALLY}
    tally = "; ".join(f"{_TALLY[k]}: {n}" for k, n in counts.items() if n)
    failed = counts["failed"]
    head = (f"{failed} of {len(tests)} test(s) significant after Holm (α = {d.alpha:g}) and "
            f"beyond their floor" if failed else
            f"none of the {len(tests)} test(s) is both significant after Holm (α = {d.alpha:g}) "
            f"and beyond its floor")
    skipped = f" {len(d.skipped_groups)} group(s) not tested: too few informative tokens." \
        if d.skipped_groups else ""
    return (f"{r.verdict.upper()}: {head} ({tally}). The effect shown, {big.group} "
            f"{big.name}: {because(big, d.alpha, d.family_size)}.{skipped}")


def _logprobs(r: CheckResult, d: LogprobsDetails) -> str | None:
    if d.mean_abs_diff is None:
        return (f"FAIL: {d.misaligned} of {d.records} record(s)' served log-probs stop lining up "
                f"with the scored tokens (a token the text lost, or another sequence's "
                f"log-probs), so the log-probs were not compared against the tolerance.")
    mean, tol = d.mean_abs_diff[d.convention], d.tolerance or 0.0
    within = mean <= tol
    text = (f"the served log-probs ({d.convention}) differ from the reference's by a mean |Δ| "
            f"of {mean:.4f}, {'within' if within else 'beyond'} the tolerance {tol:g} of the "
            f"server's numerics (a fixed bound on the mean, not a statistical test)")
    if d.max_abs_diff is not None and within and d.max_abs_diff > tol:
        text += f"; the largest single |Δ|, {d.max_abs_diff:.4f}, is beyond it, but the " \
                f"verdict judges the mean"
    if d.prompt_diagnosis:
        fit = d.prompt_fit or {}
        own, alt = fit.get("reference prompt"), fit.get(d.prompt_diagnosis)
        numbers = f" (mean |Δ| {alt:.5f} against {own:.5f})" if own is not None and \
            alt is not None else ""
        return (f"FAIL: {text}; but they fit a prompt with {d.prompt_diagnosis} far better than "
                f"the reference prompt{numbers}, so the server conditioned on another prompt.")
    return f"{'PASS' if within else 'FAIL'}: {text}."


def _greedy(r: CheckResult, d: GreedyDetails) -> str | None:
    ties = (f"; {d.near_ties} token(s) differ from it by no more than δ = {d.tolerance:g} logits, "
            f"near-ties the {d.numerics} numerics legitimately split" if d.near_ties else "")
    if d.hard_mismatches:
        return (f"FAIL: {d.hard_mismatches} of {d.tokens} served tokens are not the reference's "
                f"argmax and trail it by more than δ = {d.tolerance:g} logits{ties}.")
    return f"PASS: every one of the {d.tokens} served tokens is the reference's argmax{ties}."


def _support(r: CheckResult, d: SupportDetails) -> str | None:
    tol = (f"{d.tolerance.get('top_k_logits', 0):g} logits for top_k, "
           f"{d.tolerance.get('top_p_min_p_mass', 0):g} probability mass for top_p/min_p")
    ties = (f"; {d.boundary_ties} lie outside by no more than the tolerance ({tol}) and count "
            f"as boundary ties" if d.boundary_ties else "")
    if d.violations:
        return (f"FAIL: {d.violations} of {d.tokens} sampled tokens lie outside top_k/top_p/min_p "
                f"by more than the tolerance ({tol}){ties}.")
    return f"PASS: all {d.tokens} sampled tokens are inside top_k/top_p/min_p{ties}."


def _seeds(r: CheckResult, d: SeedDetails) -> str | None:
    if not d.groups:
        return None
    ps = [g.p_value for g in d.groups]
    bad = sum(holm_rejected(ps, d.alpha))
    if bad:
        return (f"FAIL: {bad} of {len(ps)} seed group(s) repeat one text more often than a "
                f"correct sampler would by chance (rejected by Holm at α = {d.alpha:g}).")
    return (f"PASS: no seed group repeats a text more often than chance allows (smallest p = "
            f"{min(ps):.2g} over {len(ps)} group(s); Holm at α = {d.alpha:g} rejects none).")


_REASONS: list[tuple[type, Callable[[CheckResult, Any], str | None]]] = [
    (GroupedDetails, _grouped), (LogprobsDetails, _logprobs), (GreedyDetails, _greedy),
    (SupportDetails, _support), (SeedDetails, _seeds)]


def check_reason(r: CheckResult) -> str | None:
    """A check's verdict in words, where its effect is judged against a floor or tolerance;
    None for a skipped check and for checks whose effect is a plain count of what went wrong."""
    if r.verdict in ("skipped", "inconclusive"):
        return None
    return next((f(r, r.details) for kind, f in _REASONS if isinstance(r.details, kind)), None)
