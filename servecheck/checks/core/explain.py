"""Why a verdict is what it is, in plain words, from the numbers: the sentences the checks' details
carry (``Details.reason``, ``Details.test_rows``) for the report to show.

A reader who sees "relative error -0.250 (floor 0.1)" beside PASS cannot guess the rule that
made it pass. The rule (``StatTest.failed``): a statistical test fails only when
Holm's step-down over the run's whole family of tests rejects it at α *and* the size of its
effect is at least its practical floor. So a PASS next to an effect has one of three reasons,
and each needs different words:

- no evidence, and the effect is within the floor anyway;
- no evidence, though the measured effect is beyond the floor: too few tokens to tell it from
  chance (more tokens would settle it);
- significant, but the effect is within the floor: real but too small to matter, the size that
  bf16 kernels and chance produce on correct servers (each check's floors).

The words come from the numbers (p, Holm-adjusted p, effect, floor, n), never from a display
string, so they cannot disagree with the verdict. Checks judged against a fixed tolerance
(log-probs, greedy near-ties, support boundary ties) and the seed test write their own sentence
in their details; this module has what the statistical ones share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from servecheck.checks.core.stats import StatTest

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


def family_reason(verdict: str, tests: list[StatTest], alpha: float, family_size: int,
                  skipped: int = 0) -> str | None:
    """A statistical check's verdict in words: how its tests fell, and the effect its row shows."""
    big = headline(tests)
    if big is None:
        return None
    counts = {k: sum(case(t) == k for t in tests) for k in _TALLY}
    tally = "; ".join(f"{_TALLY[k]}: {n}" for k, n in counts.items() if n)
    failed = counts["failed"]
    head = (f"{failed} of {len(tests)} test(s) significant after Holm (α = {alpha:g}) and "
            f"beyond their floor" if failed else
            f"none of the {len(tests)} test(s) is both significant after Holm (α = {alpha:g}) "
            f"and beyond its floor")
    untested = f" {skipped} group(s) not tested: too few informative tokens." if skipped else ""
    return (f"{verdict.upper()}: {head} ({tally}). The effect shown, {big.group} "
            f"{big.name}: {because(big, alpha, family_size)}.{untested}")


def test_rows(tests: list[StatTest], alpha: float, family: int | None) -> list[dict[str, Any]]:
    """Each test as the report's tables show it: its numbers, its verdict and why."""
    return [{**t.to_json(), "verdict": "fail" if t.failed else "pass",
             "why": stat_reason(t, alpha, family)} for t in tests]
