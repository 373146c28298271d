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
from pathlib import Path
from typing import Any

from servecheck.checks.results import CheckResult, overall
from servecheck.formats.records import SCHEMA_VERSION


def to_json(results: list[CheckResult], meta: dict[str, Any], max_findings: int = 100
            ) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "verdict": overall(results), **meta,
            "checks": [r.to_json(max_findings) for r in results]}


def write_json(path: Path, summary: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
