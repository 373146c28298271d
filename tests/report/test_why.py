"""Every effect the report shows beside a floor or tolerance says in words why it passed or
failed: no evidence and within the floor; beyond the floor but too noisy; significant but within
the floor (the practical-significance rule); significant and beyond it (the only failure).

Unit tests pin the words of each case from typed details; real runs (the lite run, a correct
server checked at a lenient α so that chance rejections show, and a server that applies the
temperature twice) check that the report carries them, with the expected sentence built here
from the JSON summary's numbers, never taken from the page.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from servecheck.checks.core.explain import case, headline, stat_reason
from servecheck.checks.core.results import CheckResult
from servecheck.checks.core.stats import StatTest
from servecheck.checks.distribution import FLOORS, FitDetails, TemperatureDetails
from servecheck.checks.greedy import GreedyDetails
from servecheck.checks.logprobs import LogprobsDetails
from servecheck.checks.seeds import SeedDetails, SeedGroup
from servecheck.collect.targets.hf import HFTarget
from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.parameters import Parameters
from servecheck.formats.prompts import Request, request_id
from servecheck.report.html import check_rows
from servecheck.report.pages import render


def _test(effect: float, p: float, p_adjusted: float, rejected: bool, floor: float = 0.1,
          label: str = "relative error", n: int = 12, group: str = "T=0.8") -> StatTest:
    return StatTest(group, "temperature = requested (LR)", p, effect, floor, label, n,
                    "temperature", p_adjusted, rejected)


def _fit(*tests: StatTest) -> FitDetails:
    return FitDetails(alpha=0.01, family_size=8, floors=FLOORS, skipped_groups=[], convention={},
                      token_sources=[], stat_tests=tests)


def test_no_evidence_within_floor() -> None:
    t = _test(0.02, 0.6, 1.0, False)
    assert case(t) == "quiet"
    assert stat_reason(t, 0.01) == (
        "PASS: the test found no evidence of a difference (p = 0.6, Holm-adjusted 1 > α = 0.01),"
        " and the measured relative error +0.020 is within the 0.1 floor anyway")


def test_no_evidence_beyond_floor_is_too_noisy() -> None:
    t = _test(-0.25, 0.43, 1.0, False)
    assert case(t) == "noisy" and not t.failed
    assert stat_reason(t, 0.01) == (
        "PASS: the test found no evidence of a difference (p = 0.43, Holm-adjusted 1 > α = 0.01);"
        " the measured relative error -0.250 is beyond the 0.1 floor, but with 12 tokens it is "
        "too noisy to tell from chance (more tokens would settle it)")


def test_significant_alone_but_not_after_holm_says_so() -> None:
    t = _test(-0.25, 0.004, 0.032, False)
    assert "p = 0.004 on its own, but 0.032 > α = 0.01 after Holm's correction over the run's 8 " \
           "tests" in stat_reason(t, 0.01, 8)


def test_significant_within_floor_passes_by_the_practical_rule() -> None:
    t = _test(0.04, 1e-6, 8e-6, True, floor=0.1, label="D", n=5000)
    assert case(t) == "small" and not t.failed
    assert stat_reason(t, 0.01) == (
        "PASS: the difference is statistically significant (Holm-adjusted p = 8e-06 ≤ α = 0.01) "
        "but too small to matter: the measured D +0.040 is within the 0.1 floor (effects that "
        "small are what bf16 kernels and chance produce on correct servers); a test fails only "
        "when it is significant and reaches its floor")


def test_significant_beyond_floor_fails() -> None:
    t = _test(-0.3, 1e-9, 4e-9, True)
    assert case(t) == "failed" and t.failed
    assert stat_reason(t, 0.01) == (
        "FAIL: the difference is statistically significant (Holm-adjusted p = 4e-09 ≤ α = 0.01) "
        "and the measured relative error -0.300 is beyond the 0.1 floor: both conditions for a "
        "failure hold")


def test_check_row_explains_the_effect_it_shows() -> None:
    quiet, noisy = _test(0.02, 0.6, 1.0, False), _test(0.5, 0.3, 1.0, False, group="T=1")
    small = _test(0.05, 1e-5, 1e-4, True, group="T=0.5")
    d = _fit(quiet, noisy, small)
    assert headline(d.tests()) is noisy and d.effect() == "relative error +0.500 (floor 0.1)"
    why = CheckResult("fit", "pass", "", d).reason
    assert why == (
        "PASS: none of the 3 test(s) is both significant after Holm (α = 0.01) and beyond its "
        "floor (no evidence, within the floor: 1; beyond the floor but too noisy to tell from "
        "chance: 1; significant but within the floor: 1). The effect shown, T=1 temperature = "
        "requested (LR): " + stat_reason(noisy, 0.01, 8).removeprefix("PASS: ") + ".")
    # a failing check shows (and explains) what failed, not a bigger inconclusive effect
    failed = _test(-0.2, 1e-9, 1e-8, True, group="T=0.7")
    d = _fit(quiet, noisy, failed)
    assert headline(d.tests()) is failed and d.effect() == "relative error -0.200 (floor 0.1)"
    why = CheckResult("fit", "fail", "", d).reason or ""
    assert why.startswith("FAIL: 1 of 3 test(s) significant after Holm (α = 0.01) and beyond "
                          "their floor") and \
        "The effect shown, T=0.7" in why
    assert CheckResult("fit", "skipped", "", _fit()).reason is None


def test_tolerance_checks_say_why() -> None:
    ok = LogprobsDetails(4, "raw", tokens=90, mean_abs_diff={"raw": 0.02, "after": 0.4},
                         max_abs_diff=0.3, tolerance=0.1)
    assert CheckResult("logprobs", "pass", "", ok).reason == (
        "PASS: the served log-probs (raw) differ from the reference's by a mean |Δ| of 0.0200, "
        "within the tolerance 0.1 of the server's numerics (a fixed bound on the mean, not a "
        "statistical test); the largest single |Δ|, 0.3000, is beyond it, but the verdict "
        "judges the mean.")
    bad = LogprobsDetails(4, "raw", tokens=90, mean_abs_diff={"raw": 0.5}, max_abs_diff=2.0,
                          tolerance=0.1)
    assert "mean |Δ| of 0.5000, beyond the tolerance 0.1" in \
        (CheckResult("logprobs", "fail", "", bad).reason or "")
    bos = LogprobsDetails(4, "raw", tokens=90, mean_abs_diff={"raw": 0.05}, max_abs_diff=0.09,
                          tolerance=0.1, prompt_diagnosis="an extra BOS",
                          prompt_fit={"reference prompt": 0.05, "an extra BOS": 0.0001})
    why = CheckResult("logprobs", "fail", "", bos).reason or ""
    assert why.startswith("FAIL: ") and "within the tolerance 0.1" in why
    assert "fit a prompt with an extra BOS far better than the reference prompt (mean |Δ| " \
           "0.00010 against 0.05000)" in why
    lost = LogprobsDetails(4, "raw", misaligned=2)
    assert (CheckResult("logprobs", "fail", "", lost).reason or "").startswith(
        "FAIL: 2 of 4 record(s)' served log-probs stop lining up")
    greedy = GreedyDetails(3, 50, 0, 2, 0.25, "bf16", [])
    assert CheckResult("greedy", "pass", "", greedy).reason == (
        "PASS: every one of the 50 served tokens is the reference's argmax; 2 token(s) differ "
        "from it by no more than δ = 0.25 logits, near-ties the bf16 numerics legitimately "
        "split.")
    seeds = SeedDetails([SeedGroup("'Hi' T=1", 8, 2, 7, 1e-6, 1e-9),
                         SeedGroup("'Yo' T=1", 8, 8, 1, 0.0, 1.0)], 0.01,
                        rejected=(True, False))
    assert CheckResult("seeds", "fail", "", seeds).reason == (
        "FAIL: 1 of 2 seed group(s) repeat one text more often than a correct sampler would by "
        "chance (rejected by Holm at α = 0.01).")


def test_template_shows_the_words_escaped() -> None:
    """Through the real template: the check row and its tests table carry the words."""
    small = _test(0.05, 1e-5, 1e-4, True, label="D", n=3000, group="T=<b>0.5</b>")
    d = TemperatureDetails(alpha=0.01, family_size=1, floors=FLOORS, skipped_groups=[],
                           convention={}, token_sources=[])
    fit = CheckResult("fit", "pass", "1 group(s) fit", _fit(small))
    page = render("report.html.j2", title="t", verdict="pass", meta={}, version="0",
                  created="now", checks=check_rows([fit, CheckResult("temperature", "skipped",
                                                                      "x", d)]),
                  groups=[], outputs="", digest=None)
    assert "<b>0.5</b>" not in page and "T=&lt;b&gt;0.5&lt;/b&gt;" in page
    words = _words(page)
    assert "PASS: none of the 1 test(s) is both significant" in words
    assert words.count("but too small to matter: the measured D +0.050 is within the 0.1 floor") \
        == 2  # the row's explanation and the tests table's why column


def _words(page: str) -> str:
    """The page's text as a reader sees it: tags out, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def _expected(t: dict, alpha: float, family: int) -> str:
    """The sentence a test of the JSON summary must have on the page, built from its fields."""
    size, floor = abs(t["effect"]), t["floor"]
    measured = (f"the measured {t['effect_label']} {t['effect']:+.3f} is "
                f"{'within' if size < floor else 'beyond'} the {floor:g} floor")
    if t["rejected"]:
        sig = f"significant (Holm-adjusted p = {t['p_adjusted']:.2g} ≤ α = {alpha:g})"
        return (f"FAIL: the difference is statistically {sig} and {measured}: both conditions "
                f"for a failure hold" if size >= floor else
                f"PASS: the difference is statistically {sig} but too small to matter: "
                f"{measured}")
    evidence = (f"p = {t['p']:.2g}, Holm-adjusted {t['p_adjusted']:.2g} > α = {alpha:g}"
                if t["p"] > alpha else f"p = {t['p']:.2g} on its own, but "
                f"{t['p_adjusted']:.2g} > α = {alpha:g} after Holm's correction over the run's "
                f"{family} tests")
    head = f"PASS: the test found no evidence of a difference ({evidence})"
    return (f"{head}; {measured}, but with {t['n']} tokens it is too noisy to tell from chance"
            if size >= floor else f"{head}, and {measured} anyway")


def _tests_of(summary: dict) -> list[dict]:
    checks = {c["name"]: c for c in summary["checks"]}
    tests = list(checks["fit"]["details"].get("tests", []))
    tests += [g["test"] for g in (checks["temperature"]["details"].get("groups") or {}).values()]
    return tests


def _fit_alpha(summary: dict) -> float:
    return next(c for c in summary["checks"] if c["name"] == "fit")["details"]["alpha"]


def test_lite_report_explains_every_test(lite_report: Path) -> None:
    summary = json.loads(lite_report.with_name("summary.json").read_text())
    words = _words(lite_report.read_text(encoding="utf-8"))
    tests = _tests_of(summary)
    alpha = _fit_alpha(summary)  # the fit family's share of the run's α = 0.01
    assert alpha < 0.01
    cases = {("beyond" if abs(t["effect"]) >= t["floor"] else "within", t["rejected"])
             for t in tests}
    assert {("within", False), ("beyond", False)} <= cases  # the lite run has both
    for t in tests:
        assert _expected(t, alpha, 8) in words, _expected(t, alpha, 8)
    # KS and χ² in each of 2 groups: the log-likelihood z needs ≥ 400 tokens a group
    assert f"PASS: none of the 4 test(s) is both significant after Holm (α = {alpha:g})" in words
    assert "PASS: every one of the 172 served tokens is the reference's argmax" in words
    assert "PASS: the served log-probs (raw) differ from the reference's by a mean |Δ|" in words


def _requests(n: int, temperature: float, first_seed: int = 0) -> list[Request]:
    prompts = ["Name a color.", "Tell me a story about the fox.",
               "Pick a number between 1 and 10.", "Name an animal.",
               "Tell me a story about the bee.", "Where should we go?"]
    out = []
    for j in range(n):
        conv = Conversation(contents=[Message(role="user", content=prompts[j % len(prompts)])])
        p = Parameters(temperature=temperature, seed=first_seed + j, max_tokens=40)
        out.append(Request(request_id(conv, p, j), conv, p))
    return out


@pytest.fixture(scope="module")
def served_report(tmp_path_factory: pytest.TempPathFactory, write_records, run_cli
                  ) -> Callable[..., tuple[int, str, dict]]:
    """``served_report(spec, n, *check_args)``: n answers at T=0.7 of the in-process server
    ``spec``, checked; (exit code, the report's words, the JSON summary)."""

    def run(spec: str, n: int, *args: str, first_seed: int = 0) -> tuple[int, str, dict]:
        out = tmp_path_factory.mktemp("served")
        records = HFTarget.from_spec(spec, spec.partition(":")[2]).generate_batch(
            _requests(n, 0.7, first_seed))
        path = write_records(out / "r.json", records)
        code = run_cli("check", path, "--reference", "builtin", "--report", out / "r.html",
                       "--json", out / "s.json", "--no-progress", *args)
        return code, _words((out / "r.html").read_text(encoding="utf-8")), \
            json.loads((out / "s.json").read_text())

    return run


def test_significant_but_small_passes_with_its_reason(served_report) -> None:
    """A correct server checked at α = 0.99 (the fit family's share: 0.45): chance
    rejections, with effects within the floor (seeds fixed, so the outcome is too: seeds
    1000-1249 give one since each request draws from its own generator; chosen by trying
    blocks 1000-6000, of which 1000 and 5000 had one)."""
    code, words, summary = served_report("hf:builtin", 250, "--alpha", "0.99", first_seed=1000)
    small = [t for t in _tests_of(summary) if t["rejected"] and abs(t["effect"]) < t["floor"]]
    assert code == 0 and small, "expected a significant test within its floor"
    alpha = _fit_alpha(summary)
    for t in small:
        assert _expected(t, alpha, 4) in words, _expected(t, alpha, 4)
    assert "significant but within the floor:" in words


def test_temperature_applied_twice_fails_with_its_reason(served_report) -> None:
    code, words, summary = served_report("hf:builtin?fault=temperature-twice", 400)
    failed = [t for t in _tests_of(summary) if t["failed"]]
    assert code == 1 and any(t["kind"] == "temperature" for t in failed)
    alpha = _fit_alpha(summary)
    for t in failed:
        assert _expected(t, alpha, 4) in words, _expected(t, alpha, 4)
    assert re.search(rf"FAIL: \d of \d test\(s\) significant after Holm \(α = {alpha:g}\) "
                     r"and beyond their floor", words)
