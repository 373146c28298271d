"""``check --junit FILE``: the verdicts as JUnit XML, which every CI system can show.

One test case per check, and for the statistical checks (fit, temperature) one per parameter
group, so a CI page says "fit[T=0.8 top_p=0.9] failed" rather than "fit failed somewhere". A
failure carries the check's message and its worst findings; a skipped check or group is
``<skipped>``. Built with ``xml.etree`` (escaping is the serializer's job); characters XML 1.0
cannot hold (control characters a model may emit) are replaced, so the file always parses.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from servecheck.checks.core.results import CheckResult
from servecheck.report.files import replacing

MAX_FINDINGS = 20
_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def clean(text: str) -> str:
    """Text XML 1.0 can carry: invalid characters become U+FFFD."""
    return _INVALID.sub("\ufffd", text)


def _case(suite: ET.Element, name: str, classname: str, verdict: str, message: str,
          detail: str = "") -> None:
    case = ET.SubElement(suite, "testcase", {"name": clean(name), "classname": classname,
                                            "time": "0"})
    if verdict == "fail":
        failure = ET.SubElement(case, "failure", {"message": clean(message), "type": "servecheck"})
        failure.text = clean(detail or message)
    elif verdict in ("skipped", "inconclusive"):  # JUnit has no "inconclusive": said in words
        prefix = "inconclusive: " if verdict == "inconclusive" else ""
        ET.SubElement(case, "skipped", {"message": clean(prefix + message)})
    else:
        ET.SubElement(case, "system-out").text = clean(message)


def _findings(r: CheckResult, group: str | None = None) -> str:
    """The summary and the worst findings (of one group, when ``group`` is given)."""
    found = [f for f in r.worst_first() if group is None or f.record == group]
    lines = [f"[{f.record}] {f.message}" for f in found[:MAX_FINDINGS]]
    if len(found) > MAX_FINDINGS:
        lines.append(f"… {len(found) - MAX_FINDINGS} more (see the JSON summary)")
    return "\n".join([r.summary, *lines])


def _group_cases(suite: ET.Element, r: CheckResult) -> bool:
    """Per-group test cases of a statistical check; False when it has no groups to list."""
    cases = r.details.cases()
    for c in cases:
        failed = c.verdict == "fail"
        _case(suite, f"{r.name}[{c.name}]", f"servecheck.{r.name}", c.verdict, c.message,
              f"{c.message}\n{_findings(r, c.findings_of)}" if failed else "")
    return bool(cases)


def to_junit(results: list[CheckResult], meta: dict[str, Any]) -> ET.ElementTree:
    suites = ET.Element("testsuites", {"name": "servecheck"})
    suite = ET.SubElement(suites, "testsuite", {
        "name": clean(f"servecheck {meta.get('responses', '')} vs {meta.get('reference', '')}"),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    props = ET.SubElement(suite, "properties")
    for k, v in meta.items():
        value = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
        ET.SubElement(props, "property", {"name": k, "value": clean(value)})
    for r in results:
        if r.verdict not in ("skipped", "inconclusive") and _group_cases(suite, r):
            continue
        _case(suite, r.name, f"servecheck.{r.name}", r.verdict, r.summary, _findings(r))
    cases = suite.findall("testcase")
    counts = {"tests": len(cases), "failures": sum(c.find("failure") is not None for c in cases),
              "skipped": sum(c.find("skipped") is not None for c in cases), "errors": 0}
    for element in (suite, suites):
        element.attrib.update({k: str(v) for k, v in counts.items()}, time="0")
    ET.indent(suites)
    return ET.ElementTree(suites)


def write_junit(path: Path, results: list[CheckResult], meta: dict[str, Any]) -> None:
    tree = to_junit(results, meta)
    with replacing(path) as f:
        tree.write(f, encoding="utf-8", xml_declaration=True)
