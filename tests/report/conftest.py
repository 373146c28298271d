"""Fixtures of the report tests: the lite run's report, and measuring a page's charts as
Chromium lays them out.

Sizes and overlaps are only real once a browser has chosen fonts and laid out the page, so the
chart tests load the page in headless Chromium with ``measure.js`` added (under the page's own
script nonce: the report's Content-Security-Policy lets nothing else run) and read the numbers
the script writes into the DOM back from ``--dump-dom``. The tests that use these fixtures skip
where Chromium is absent (``tests.report.browser.needs_browser``).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

MEASURE_JS = Path(__file__).with_name("measure.js")
Measure = Callable[..., dict[str, Any]]


@pytest.fixture(scope="session")
def lite_report(lite_responses: Path, tmp_path_factory: pytest.TempPathFactory, run_cli) -> Path:
    """The report of the lite run (a correct server; two sampled groups) and its JSON summary
    beside it (``summary.json``)."""
    out = tmp_path_factory.mktemp("lite-report")
    assert run_cli("check", lite_responses, "--reference", "builtin", "--report",
                   out / "report.html", "--json", out / "summary.json", "--no-progress") == 0
    return out / "report.html"


@pytest.fixture(scope="session")
def chromium_path() -> str:
    found = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                  if shutil.which(n)), None)
    if found is None:
        pytest.skip("chromium is not installed")
    return found


@pytest.fixture(scope="session")
def chromium_run(chromium_path: str) -> Callable[..., str]:
    """``chromium_run(*args)``: headless Chromium with ``args``; returns its stdout."""

    def run(*args: str, timeout: int = 60) -> str:
        done = subprocess.run([chromium_path, "--headless", "--no-sandbox", "--disable-gpu",
                               "--disable-dev-shm-usage", "--no-first-run", *args],
                              capture_output=True, text=True, timeout=timeout, check=True)
        return done.stdout

    return run


@pytest.fixture(scope="session")
def probe() -> Callable[..., Path]:
    """``probe(page, *scripts)``: a copy of ``page`` beside it that runs ``scripts`` (JavaScript
    source) at the end of its body, under the page's own nonce."""

    def write(page: Path, *scripts: str) -> Path:
        text = page.read_text(encoding="utf-8")
        nonce = re.search(r'<script nonce="([\w-]+)"', text)
        attr = f' nonce="{nonce.group(1)}"' if nonce else ""
        added = "".join(f"<script{attr}>\n{js}\n</script>\n" for js in scripts)
        out = page.with_name(f"{page.stem}.probe-{zlib.crc32(added.encode()):08x}.html")
        out.write_text(text.replace("</body>", added + "</body>", 1), encoding="utf-8")
        return out

    return write


@pytest.fixture(scope="session")
def measure(chromium_run: Callable[..., str], probe: Callable[..., Path]) -> Measure:
    """``measure(page, width, height, before="")``: the charts of ``page`` at that window size
    (after the script ``before`` ran), as ``{"viewport": [w, h], "charts": [{"cls", "x0", "y0",
    "x1", "y1", "texts": [{"text", "px", "x0", …}]}]}`` in CSS pixels (``px``: the rendered font
    size)."""

    def run(page: Path, width: int, height: int, before: str = "") -> dict[str, Any]:
        scripts = [before] if before else []
        dom = chromium_run(f"--window-size={width},{height}", "--virtual-time-budget=3000",
                           "--dump-dom", probe(page, *scripts, MEASURE_JS.read_text()).as_uri())
        found = re.findall(r'<pre id="measured">(.*?)</pre>', dom, re.S)
        assert found, "the measuring script did not run"
        return json.loads(html.unescape(found[-1]))

    return run
