"""``check --json FILE``: the verdict for machines.

Shape (documented in docs/formats.md)::

    {"schema_version": 1, "verdict": "pass" | "fail", "reference": ..., "responses": ...,
     "records": N, "checks": [{"name", "verdict": "pass" | "fail" | "inconclusive" | "skipped", "summary",
     "details": {...}, "details_version": 1, "findings": [{"record", "message"}, ...],
     "findings_total": N}], "tokens": {...}}

Each check's ``details`` is its typed details' own JSON (``Details.to_json``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from servecheck.checks.core.results import CheckResult, overall
from servecheck.report.files import write_text

SUMMARY_VERSION = 1
"""The summary's own ``schema_version``: it goes up when this shape changes meaning, apart from
the responses file's (``formats.records.SCHEMA_VERSION``), which is another format."""


def to_json(results: list[CheckResult], meta: dict[str, Any], max_findings: int = 100
            ) -> dict[str, Any]:
    return {"schema_version": SUMMARY_VERSION, "verdict": overall(results), **meta,
            "checks": [r.to_json(max_findings) for r in results]}


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinity as ``null``: JSON has neither, and ``NaN`` in a file
    breaks every strict parser (jq, JavaScript's ``JSON.parse``) that a CI step reads it with."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_json(path: Path, summary: dict[str, Any]) -> None:
    """The summary, whole or not at all (``files.write_text``), strict JSON."""
    write_text(path, json.dumps(finite(summary), indent=2, ensure_ascii=False,
                                allow_nan=False) + "\n")
