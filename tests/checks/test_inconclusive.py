"""Too little data is not a pass: a statistical check that applies but cannot decide is
INCONCLUSIVE, the run exits 3, and ``--inconclusive-ok`` gives the old exit 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture()
def two_sampled(tmp_path: Path, lite_records) -> Path:
    sampled = [r for r in lite_records if not r.parameters.greedy][:2]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(r.model_dump_json(exclude_none=True) + "\n" for r in sampled))
    return path


def test_too_few_records_is_inconclusive_and_exits_3(two_sampled: Path, tmp_path: Path,
                                                     check_json, check_named, run_cli,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, summary = check_json(two_sampled, tmp_path)
    assert code == 3 and summary["verdict"] == "inconclusive"
    assert check_named(summary, "fit")["verdict"] == "inconclusive"
    assert "too few" in check_named(summary, "fit")["summary"]
    capsys.readouterr()
    junit = tmp_path / "j.xml"
    assert run_cli("check", two_sampled, "--reference", "builtin", "--inconclusive-ok",
                   "--junit", junit, "--no-progress") == 0
    assert "inconclusive" in capsys.readouterr().out
    assert 'message="inconclusive: ' in junit.read_text()


def test_nothing_to_look_at_is_skipped_not_inconclusive(lite_records, tmp_path: Path,
                                                        check_json, check_named) -> None:
    greedy = [r for r in lite_records if r.parameters.greedy]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(r.model_dump_json(exclude_none=True) + "\n" for r in greedy))
    code, summary = check_json(path, tmp_path)
    assert check_named(summary, "fit")["verdict"] == "skipped"  # no sampled record at all
    assert code == 0 and summary["verdict"] == "pass"
    assert json.loads(json.dumps(summary))  # plain JSON
