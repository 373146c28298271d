"""The worked example of docs/extending.md, run: a statistical check that exists only here, its
code taken from the page, installed as a package with an entry point in ``servecheck.checks``.

It shows that adding a statistical check with its sentence and its per-group chart is one
module: nothing in servecheck names it, yet ``servecheck list`` lists it with its source, and
``servecheck check`` puts its row in the table, the JSON summary and JUnit, its sentence and its
charts in the report, and gives it its share of α (the built-ins' shares scaled by 1/1.05).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from servecheck.checks.core import registry

ALPHA = 0.01


@pytest.fixture
def installed(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The page's check as the package ``my_checks`` (distribution ``my-checks``), on sys.path
    for this test only; the registry is restored afterwards."""
    page = (root / "docs" / "extending.md").read_text()
    code = re.search(r"```python\n(.*?)```", page, re.S).group(1)
    site = tmp_path / "site"
    (site / "my_checks").mkdir(parents=True)
    (site / "my_checks" / "__init__.py").write_text("")
    (site / "my_checks" / "first_token.py").write_text(code)
    info = site / "my_checks-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-checks\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[servecheck.checks]\nfirst_token = my_checks.first_token\n")
    registry.specs()  # the built-ins registered in the real registry before it is copied (a
    # module first imported under the copy would stay imported, its check gone with the copy),
    # and before the page's package is on the path
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_REGISTERED", dict(registry._REGISTERED))
    registry.specs.cache_clear()
    yield site
    registry.specs.cache_clear()
    for name in [m for m in sys.modules if m.split(".")[0] == "my_checks"]:
        del sys.modules[name]  # the next test installs it afresh


@pytest.fixture(scope="module")
def responses(tmp_path_factory: pytest.TempPathFactory, run_cli) -> Path:
    """40 sampled outputs of one parameter group from the in-process reference server."""
    work = tmp_path_factory.mktemp("first-token")
    prompts = work / "prompts.json"
    prompts.write_text(json.dumps({"prompt": [f"Tell me about the number {k}." for k in range(10)],
                                   "temperature": 1.0, "seed": [1, 2, 3, 4], "max_tokens": 8}))
    out = work / "responses.jsonl"
    assert run_cli("generate", prompts, "--target", "hf:builtin", "--out", out,
                   "--no-progress") == 0
    return out


def test_the_page_check_is_listed_with_its_source(installed: Path, run_cli) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_cli("list", "--json") == 0
    checks = {c["name"]: c for c in json.loads(out.getvalue())["checks"]}
    mine = checks["first token"]
    assert (mine["source"], mine["kind"], mine["order"]) == ("my-checks", "statistical", 72)
    assert mine["alpha_share"] == pytest.approx(0.05 / 1.05)
    assert checks["fit, temperature"]["alpha_share"] == pytest.approx(0.42 / 1.05)


def test_one_module_gives_row_sentence_chart_and_alpha(installed: Path, responses: Path,
                                                      run_cli, tmp_path: Path) -> None:
    summary, report, junit = tmp_path / "s.json", tmp_path / "r.html", tmp_path / "j.xml"
    code = run_cli("check", responses, "--reference", "builtin", "--alpha", str(ALPHA),
                   "--json", summary, "--report", report, "--junit", junit, "--no-progress")
    checks = {c["name"]: c for c in json.loads(summary.read_text())["checks"]}
    names = list(checks)
    assert names.index("temperature") < names.index("first token") < names.index("sampler")
    mine = checks["first token"]
    assert code == 0 and mine["verdict"] == "pass", mine
    assert mine["details"]["alpha"] == pytest.approx(ALPHA * 0.05 / 1.05)
    assert checks["fit"]["details"]["alpha"] == pytest.approx(ALPHA * 0.42 / 1.05)
    (test,) = mine["details"]["tests"]
    assert test["n"] >= 20 and not test["failed"]
    page = report.read_text()
    assert "first-token PIT histogram · " in page and "first-token PIT QQ · " in page
    assert 'data-checks="first token"' in page
    assert "PASS: none of the 1 test(s) is both significant after Holm" in page
    cases = [c.get("name") for c in ET.parse(junit).getroot().iter("testcase")]
    assert any(n and "first token" in n for n in cases), cases


def test_a_module_of_the_package_without_a_check_is_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A helper left among the checks (or a check whose ``@check`` was dropped) is named, not
    silently run as nothing."""
    from servecheck import checks

    (tmp_path / "stray_helper.py").write_text('"""A helper in the wrong room."""\n')
    monkeypatch.setattr(checks, "__path__", [*checks.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_REGISTERED", dict(registry._REGISTERED))
    registry.specs.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"stray_helper is in servecheck\.checks but "
                                               "declares no check"):
            registry.specs()
    finally:
        registry.specs.cache_clear()
