"""make demo's job: a correct server passes, a faulty one fails, and the files are where it says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.slow  # generates and checks both demo servers' responses, writes both reports
def test_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str], run_cli) -> None:
    assert run_cli("demo", "--out-dir", tmp_path) == 0
    out = capsys.readouterr().out
    assert "correct server: PASS — as expected" in out
    assert "faulty server: FAIL — as expected" in out
    assert "demo behaved as expected" in out
    faulty = json.loads((tmp_path / "summary-faulty.json").read_text())
    template = next(c for c in faulty["checks"] if c["name"] == "template")
    assert "role name (32)" in template["summary"]
    for name in ("report-correct.html", "report-faulty.html"):
        assert str(tmp_path / name) in out and "</html>" in (tmp_path / name).read_text()
    for name in ("responses-lite-correct.json", "responses-lite-faulty.json"):
        assert str(tmp_path / name) in out
        assert len(json.loads((tmp_path / name).read_text())) == 32
