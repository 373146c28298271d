"""The report opens on its digest (issue 31): checked in headless Chromium, as the other report
tests are: the text and where the page puts it."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from tests.report.browser import needs_browser


@needs_browser
def test_the_report_opens_on_the_digest(root: Path, tmp_path: Path, run_cli, chromium_run,
                                        probe) -> None:
    """In headless Chromium: the digest is the first thing under the header, above the checks
    table, in the first screen, with the failure's cause and its worst records linked."""
    report = tmp_path / "report.html"
    responses = root / "tests" / "golden" / "double-bos.responses.jsonl"
    assert run_cli("check", responses, "--reference", "builtin", "--no-progress",
                   "--report", report) == 1
    page = probe(report, """
const d = document.getElementById('digest'), t = document.querySelector('table.checks');
const out = document.createElement('pre'); out.id = 'probe-out';
out.textContent = JSON.stringify({digest: d.getBoundingClientRect().top,
  table: t.getBoundingClientRect().top, text: d.innerText,
  links: [...d.querySelectorAll('a')].map(a => a.getAttribute('href'))});
document.body.appendChild(out);""")
    dom = chromium_run("--window-size=1280,900", "--dump-dom", page.as_uri())
    found = json.loads(html.unescape(re.search(r'<pre id="probe-out">(.*?)</pre>', dom, re.S)
                                     .group(1)))
    assert found["digest"] < found["table"] and found["digest"] < 900
    assert "template" in found["text"] and "adds a BOS the chat template already writes" in \
        found["text"]
    assert found["links"] and all(h.startswith("#r-") for h in found["links"])


def test_an_undecided_statistical_row_is_not_called_deterministic() -> None:
    """The p-value column said "— (deterministic)" beside an INCONCLUSIVE sampler row."""
    from servecheck.checks.core.results import CheckResult
    from servecheck.report.html import check_rows

    rows = check_rows([CheckResult("sampler", "inconclusive", "too few", statistical=True),
                       CheckResult("greedy", "pass", "all argmax")])
    assert [r.p for r in rows] == ["— (no test: too few records)", "— (deterministic)"]
