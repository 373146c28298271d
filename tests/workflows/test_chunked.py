"""A responses set too large to hold, checked in chunks: each chunk at α/k, verdicts merged and
named by chunk, each chunk's verdicts saved so that a run stopped by Ctrl-C resumes where it
stopped. The interrupted run is a real process sent a real SIGINT."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from servecheck.checks.combine import combine
from servecheck.checks.results import CheckResult
from servecheck.collect.collector import collect
from servecheck.formats.responses import read_records

ROOT = Path(__file__).resolve().parents[2]


def _verdicts(summary: dict) -> list[tuple[str, str]]:
    return [(c["name"], c["verdict"]) for c in summary["checks"]]


def test_combined_verdict_fails_where_any_chunk_fails_and_passes_past_a_short_chunk() -> None:
    passing, failing = CheckResult("fit", "pass", "ok"), CheckResult("fit", "fail", "hot")
    short = CheckResult("fit", "inconclusive", "too few")
    [merged] = combine([(0, 10, [passing]), (10, 10, [failing]), (20, 3, [short])], 0.01 / 3)
    assert merged.verdict == "fail" and "fails in 1 of 3 chunks; chunk 2 (records 10–19)" in \
        merged.summary
    [merged] = combine([(0, 10, [passing]), (10, 3, [short])], 0.005)
    assert merged.verdict == "pass" and "1 too small to decide" in merged.summary
    [merged] = combine([(0, 3, [short]), (3, 3, [short])], 0.005)
    assert merged.verdict == "inconclusive"
    assert combine([(0, 5, [failing])], 0.01) == [failing]  # one chunk: the run itself


def test_a_fault_is_found_in_chunks_and_its_records_are_named_across_the_set(
        tmp_path: Path, lite_prompts: Path, check_json, check_named) -> None:
    out = tmp_path / "dropped.jsonl"
    collect(lite_prompts, "hf:builtin?fault=drop-system", out, show_progress=False)
    code, whole = check_json(out, tmp_path)
    report = tmp_path / "report.html"
    code_chunked, chunked = check_json(out, tmp_path, "builtin", "--records-per-chunk", "10",
                                       "--report", report)
    assert code == code_chunked == 1
    template = check_named(chunked, "template")
    assert template["verdict"] == "fail" and "of 4 chunks" in template["summary"]
    assert chunked["chunks"] == 4 and chunked["alpha_per_chunk"] == pytest.approx(0.0025)
    named = {f["record"] for f in check_named(whole, "template")["findings"]}
    assert {f["record"] for f in template["findings"]} == named  # ids, whatever the chunk
    assert [c["verdict"] for c in template["details"]["chunks"]] == ["fail"] * 4
    page = report.read_text()  # the report shows the first failing chunk, and says so
    assert "chunk 1: records 0–9" in page and "the JSON summary covers all" in page


def _cli(*args: str | Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "servecheck.cli", "check", *map(str, args)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.mark.slow
def test_a_run_stopped_by_ctrl_c_resumes_from_its_saved_chunks(lite_responses: Path,
                                                                tmp_path: Path) -> None:
    records = read_records(lite_responses)
    state = tmp_path / "state"
    env = {**os.environ, "SERVECHECK_STATE": str(tmp_path / "unused")}
    args = ("--reference", "builtin", "--records-per-chunk", "1", "--no-progress")
    first = _cli(lite_responses, *args, "--state", state, "--json", tmp_path / "a.json", env=env)
    deadline = time.monotonic() + 120
    while not list(state.glob("chunk-*.pkl")) and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    said = first.communicate(timeout=60)[0]
    assert first.returncode == 130, said
    saved = len(list(state.glob("chunk-*.pkl")))
    assert 1 <= saved < len(records), "the run was not stopped part way"
    assert f"resumes from chunk {saved + 1}" in said

    again = _cli(lite_responses, *args, "--state", state, "--json", tmp_path / "b.json",
                 "--report", tmp_path / "b.html", env=env)
    said = again.communicate(timeout=300)[0]
    assert again.returncode in (0, 1, 3), said
    assert f"resumed: {saved} of {len(records)} chunks" in said
    # the report's chunk (the first: nothing fails) was checked by the first run: checked again
    assert "checking chunk 1 again for the HTML report" in said and (tmp_path / "b.html").exists()
    redone = re.findall(r"^chunk \d+/\d+: records", said, re.MULTILINE)
    assert len(redone) == len(records) - saved  # no saved chunk checked again

    fresh = _cli(lite_responses, *args, "--state", tmp_path / "fresh", "--json",
                 tmp_path / "c.json", env=env)
    fresh.communicate(timeout=300)
    resumed, whole = (json.loads((tmp_path / n).read_text()) for n in ("b.json", "c.json"))
    assert _verdicts(resumed) == _verdicts(whole) and resumed["resumed_chunks"] == saved
