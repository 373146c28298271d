"""JUnit XML: one test case per check and per group, failures with their message, always parseable.

The end-to-end file of a real run is tested in test_html.py; here hand-made results reach the
corners: a failing group beside a passing one, skipped checks and groups, and model text with
characters XML 1.0 cannot carry.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from servecheck.checks.core.results import CheckResult, Finding
from servecheck.checks.core.stats import StatTest, TemperatureFit
from servecheck.checks.distribution import (
    FitDetails,
    GroupTemperature,
    SkippedGroup,
    TemperatureDetails,
)
from servecheck.reference.sampling import Sampling
from servecheck.report.junit import write_junit


def _test(group: str, name: str, failed: bool) -> StatTest:
    return StatTest(group, name, 1e-9 if failed else 0.4, 0.3 if failed else 0.01, 0.1, "D", 500,
                    p_adjusted=1e-8 if failed else 1.0, rejected=failed)


COMMON = {"alpha": 0.01, "family_size": 3, "floors": {}, "convention": {}, "token_sources": []}


def test_cases_per_check_and_group(tmp_path: Path) -> None:
    fit = CheckResult("fit", "fail", "1 test(s) failed", FitDetails(
        **COMMON, skipped_groups=[SkippedGroup("T=0.3", 4)],
        stat_tests=(_test("T=0.7", "PIT uniformity (KS)", True),
                    _test("T=1", "PIT uniformity (KS)", False))),
        [Finding("T=0.7", "T=0.7: PIT uniformity (KS) p=1e-9", 10.3)])
    temperature = CheckResult("temperature", "pass", "fine", TemperatureDetails(
        **COMMON, skipped_groups=[], groups={"T=0.7": GroupTemperature(
            Sampling(temperature=0.7), TemperatureFit(
                0.71, 0.65, 0.77, _test("T=0.7", "temperature = requested (LR)", False)))}))
    template = CheckResult("template", "fail", "1/2 records differ",
                           findings=[Finding("r1", "role name 'assistant' \x00\x1b[31m <b>&", 1.0)])
    greedy = CheckResult("greedy", "skipped", "no greedy records")
    path = tmp_path / "junit.xml"
    write_junit(path, [template, greedy, fit, temperature], {"responses": "r.json",
                                                             "alpha": 0.01})
    root = ET.parse(path).getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert set(cases) == {"template", "greedy", "fit[T=0.7]", "fit[T=1]", "fit[T=0.3]",
                          "temperature[T=0.7]"}
    assert cases["fit[T=0.7]"].find("failure") is not None
    assert "PIT uniformity (KS) p=1e-09" in cases["fit[T=0.7]"].find("failure").get("message")
    assert cases["fit[T=1]"].find("failure") is None
    assert "too few informative tokens" in cases["fit[T=0.3]"].find("skipped").get("message")
    assert cases["greedy"].find("skipped") is not None
    text = cases["template"].find("failure").text or ""
    assert "[r1] role name 'assistant' \ufffd\ufffd[31m <b>&" in text  # escaped, cleaned, parsed
    assert cases["temperature[T=0.7]"].find("failure") is None
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("6", "2", "2")
    assert root.get("failures") == "2"
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props == {"responses": "r.json", "alpha": "0.01"}
