"""The HTML report (``check --report``) and JUnit XML (``--junit``) of a real run, in a real browser.

The run is the lite responses plus one hostile record whose prompt and output carry a
``<script>`` and an ``<img onerror>``: a model's output is untrusted. Headless Chromium renders
the report; the tests assert that nothing injected ran, that the text shows escaped, that the
key parts are on the page, and that a screenshot has content. Chromium comes from Debian's
``chromium`` package, which ``.ci/run`` installs; the browser tests skip only where it is absent.
"""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.responses import read_records
from servecheck.reference.model import Reference
from tests.report.browser import BROWSER, needs_browser

XSS_SCRIPT = "<script>document.title='pwned'</script>"
XSS_IMG = '<img src=x onerror="document.body.dataset.pwned=1">'


@pytest.fixture(scope="module")
def run(lite_responses: Path, ref: Reference, tmp_path_factory: pytest.TempPathFactory,
        write_records, run_cli) -> dict:
    out = tmp_path_factory.mktemp("report")
    records = read_records(lite_responses)
    base = next(r for r in records if r.parameters.greedy and len(r.conversations.contents) == 1)
    conv = Conversation(contents=[Message(role="user", content=f"Say {XSS_SCRIPT} and {XSS_IMG}")])
    evil = base.model_copy(update={
        "id": "evil", "conversations": conv, "input": ref.render(conv),
        "output": f"Sure: {XSS_SCRIPT} {XSS_IMG}<end_of_turn>", "prompt_token_ids": None,
        "output_token_ids": None, "output_logprobs": None, "usage": None})
    path = write_records(out / "responses.json", [*records, evil])
    html, junit, summary = out / "report.html", out / "junit.xml", out / "summary.json"
    code = run_cli("check", path, "--reference", "builtin", "--report", html, "--junit", junit,
                   "--json", summary, "--no-progress")
    return {"code": code, "html": html, "junit": junit, "dir": out}


def chromium(*args: str, timeout: int = 60) -> str:
    assert BROWSER is not None
    done = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-dev-shm-usage", "--no-first-run", *args],
                          capture_output=True, text=True, timeout=timeout, check=True)
    return done.stdout


def test_report_written_and_self_contained(run: dict) -> None:
    assert run["code"] == 1  # the hostile output is not what the reference would say greedily
    page = run["html"].read_text(encoding="utf-8")
    # nothing fetched: no external script, stylesheet, image or frame; one script, ours
    assert not re.search(r"<(link|img|iframe|object|embed)\b", page)
    assert len(re.findall(r"<script\b", page)) == 1
    assert re.search(r"<script nonce=\"[\w-]+\">", page)
    assert not re.search(r"(src|href)=\"?https?:", page)
    assert "Content-Security-Policy" in page
    # the hostile text is there, escaped, in the prompt and in the output
    assert "document.title=&#39;pwned&#39;" in page
    assert page.count("&lt;img src=x onerror=&#34;document.body.dataset.pwned=1&#34;&gt;") >= 2
    assert XSS_SCRIPT not in page and XSS_IMG not in page


def test_report_contents(run: dict) -> None:
    page = run["html"].read_text(encoding="utf-8")
    for check in ("records", "template", "termination", "greedy", "support", "fit",
                  "temperature", "logprobs"):
        assert f'id="check-{check}"' in page
    assert '<span class="verdict fail ">FAIL</span>' in page  # greedy fails on the hostile record
    assert page.count('class="chart pit"') == page.count('class="chart qq"') == 2  # two groups
    assert page.count('class="chart temp"') == 2
    assert "Holm" in page and "effective 0." in page
    assert 'class="diff"' in page and '<span class="sp">&lt;start_of_turn&gt;</span>' in page
    # worst first: the hostile record is the first output shown
    first = re.search(r'<section class="record [^"]*"[^>]*id="r-([^"]+)"', page)
    assert first and first.group(1) == "evil"
    assert re.search(r'<span class="tok[^"]*" style="background:hsl\([^"]+\)" title="token 0: ',
                     page)


def test_junit_parses_back(run: dict) -> None:
    root = ET.parse(run["junit"]).getroot()
    suite = root.find("testsuite")
    assert suite is not None
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert {"records", "template", "termination", "detokenization", "greedy", "support",
            "logprobs", "seeds", "sampler", "tool calls", "reasoning", "stop strings", "usage",
            "context", "cache", "grammar", "mask",
            "fit[T=0.8]", "fit[T=0.8 top_p=0.9]", "temperature[T=0.8]",
            "temperature[T=0.8 top_p=0.9]"} == set(cases)
    # the hostile output runs past max_tokens: named by termination, and left out of the
    # statistics rather than failing greedy as well (checks.screen)
    failure = cases["termination"].find("failure")
    assert failure is not None and "too long" in failure.get("message", "")
    assert "[evil]" in (failure.text or "")
    assert cases["greedy"].find("failure") is None
    assert cases["fit[T=0.8]"].find("failure") is None
    assert int(suite.get("tests", 0)) == 21  # with detokenization, the sampler, the four
    # checks of tools, reasoning, stop strings and usage (skipped or passed on plain chats),
    # context and cache (skipped: short prompts, no cached_tokens), grammar and mask (no
    # structured output asked)
    assert int(suite.get("failures", 0)) == 1  # termination (longer than max_tokens) alone


@needs_browser
def test_browser_runs_nothing_injected(run: dict) -> None:
    dom = chromium("--virtual-time-budget=3000", "--dump-dom", run["html"].as_uri())
    assert "<title>servecheck:" in dom and "pwned</title>" not in dom
    assert "data-pwned" not in dom
    # the injected markup is text on the page, not elements
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom
    assert '&lt;img src=x onerror="document.body.dataset.pwned=1"&gt;' in dom
    # key elements, after the browser built the DOM
    assert re.search(r'<svg [^>]*class="chart pit"', dom)
    assert re.search(r'<span class="tok[^"]*" style="[^"]*" title="token \d+: ', dom)
    assert 'class="diff"' in dom and 'class="verdict fail ' in dom


@needs_browser
def test_browser_search_filters_records(run: dict) -> None:
    dom = chromium("--virtual-time-budget=3000", "--dump-dom", run["html"].as_uri() + "#q=pwned")
    sections = re.findall(r"<section class=\"record[^>]*>", dom)
    shown = [s for s in sections if " hidden" not in s]
    assert len(sections) == 33 and len(shown) == 1 and 'id="r-evil"' in shown[0]
    assert '<span id="shown">1</span>' in dom


@needs_browser
def test_browser_screenshot(run: dict) -> None:
    shot = run["dir"] / "report.png"
    chromium("--hide-scrollbars", f"--screenshot={shot}", "--window-size=1280,2400",
             run["html"].as_uri())
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 50_000, f"screenshot only {len(data)} bytes: the page looks empty"
