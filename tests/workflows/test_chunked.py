"""A responses set too large to hold, checked in chunks: each chunk at α/k, verdicts merged and
named by chunk, each chunk's verdicts saved so that a run stopped by Ctrl-C resumes where it
stopped. The interrupted run is a real process sent a real SIGINT. The saved state is data only:
files planted in a state directory run no code and change no verdict, and a directory others may
write to is refused."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from servecheck.checks.core.combine import combine
from servecheck.checks.core.results import CheckResult
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
    assert "chunk 1, records 0–9" in page and "the checks cover all 32 records" in page


def _cli(*args: str | Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "servecheck.cli", "check", *map(str, args)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.mark.slow
@pytest.mark.parametrize("overlap", ["0", "1"])  # 1: each chunk's checks beside the next's scoring
def test_a_run_stopped_by_ctrl_c_resumes_from_its_saved_chunks(lite_responses: Path,
                                                                tmp_path: Path, overlap: str) -> None:
    records = read_records(lite_responses)
    state = tmp_path / "state"
    env = {**os.environ, "SERVECHECK_STATE": str(tmp_path / "unused"), "SERVECHECK_OVERLAP": overlap}
    args = ("--reference", "builtin", "--records-per-chunk", "1", "--no-progress")
    first = _cli(lite_responses, *args, "--state", state, "--json", tmp_path / "a.json", env=env)
    deadline = time.monotonic() + 120
    while not list(state.glob("chunk-*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    said = first.communicate(timeout=60)[0]
    assert first.returncode == 130, said
    saved = len(list(state.glob("chunk-*.json")))
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


class _Plant:
    """Unpickling it runs ``open(marker, "w")``: what a planted pickle could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


def _planted(kind: str, marker: Path, call: dict) -> str:
    """A state file naming ``kind`` where a result should be, asking it to touch ``marker``."""
    return json.dumps({"format": "servecheck-check-state", "version": 1,
                       "data": {"$type": kind, **call}})


def _checks(summary: dict) -> list[dict]:
    return summary["checks"]


def test_planted_state_files_run_no_code_and_change_no_verdict(
        tmp_path: Path, lite_responses: Path, check_json, capsys: pytest.CaptureFixture[str]
        ) -> None:
    """A pickle that would create a file when loaded, and JSON naming os.system, subprocess.Popen
    and builtins.eval where a result belongs: nothing runs, each is checked again with a warning
    naming it, and the verdicts are those of a run that saved nothing."""
    state, marker = tmp_path / "state", tmp_path / "ran"
    args = ("--records-per-chunk", "10", "--state", str(state), "--no-progress")
    code, whole = check_json(lite_responses, tmp_path, "builtin", *args)
    assert sorted(p.name for p in state.glob("chunk-*")) == [f"chunk-0000{j}.json" for j in range(4)]
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    capsys.readouterr()

    (state / "chunk-00000.json").unlink()
    (state / "chunk-00000.pkl").write_bytes(pickle.dumps(_Plant(marker)))
    (state / "chunk-00001.json").write_text(_planted("os.system", marker,
                                                     {"command": f"touch {marker}"}))
    (state / "chunk-00002.json").write_text(_planted(
        "subprocess.Popen", marker, {"args": ["touch", str(marker)]}))
    saved = json.loads((state / "chunk-00003.json").read_text())  # a real file, one field bad
    saved["data"]["results"][0]["details"] = {"$type": "builtins.eval",
                                              "source": f"open({str(marker)!r}, 'w')"}
    (state / "chunk-00003.json").write_text(json.dumps(saved))

    again, resumed = check_json(lite_responses, tmp_path, "builtin", *args)
    err = capsys.readouterr().err
    assert not marker.exists(), "a planted state file ran code"
    assert again == code and resumed["resumed_chunks"] == 0
    assert _checks(resumed) == _checks(whole)
    for j, named in [(1, "os.system"), (2, "subprocess.Popen"), (3, "builtins.eval")]:
        assert f"{state / f'chunk-0000{j}.json'}: not saved verdicts" in err and named in err
    # checked again, so saved again: a third run, a fresh process that has checked nothing
    # yet, resumes every chunk and reports the same
    third = _cli(lite_responses, "--reference", "builtin", *args, "--json",
                 tmp_path / "third.json", env=dict(os.environ))
    said = third.communicate(timeout=300)[0]
    after = json.loads((tmp_path / "third.json").read_text())
    assert third.returncode == code and "warning" not in said, said
    assert after["resumed_chunks"] == 4 and _checks(after) == _checks(whole)
    assert not marker.exists()


@pytest.mark.parametrize("change", ["mode", "owner"])
def test_a_state_directory_others_can_write_is_refused(
        change: str, tmp_path: Path, lite_responses: Path, run_cli,
        capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "shared"
    state.mkdir()
    if change == "mode":
        state.chmod(0o775)
        said = "writable by group or others (mode 775)"
    else:
        if os.geteuid() != 0:
            pytest.skip("only root can give a directory to another user")
        os.chown(state, 12345, -1)
        state.chmod(0o700)
        said = "owned by uid 12345, not by you (uid 0)"
    code = run_cli("check", lite_responses, "--reference", "builtin", "--records-per-chunk", "10",
                   "--state", state, "--no-progress")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"servecheck: error: {state}: the check state directory is ")
    assert said in err and ("chmod go-w" in err) == (change == "mode") and "--state" in err
    assert list(state.iterdir()) == []


def _outputs_part(page: str) -> str:
    """What a report page drew of its records (templates/_outputs.html.j2), and no more."""
    return page[page.index('<h2 id="template">'):page.index("</main>")]


def test_a_resumed_run_reuses_what_its_saved_chunk_drew_for_the_report(
        tmp_path: Path, lite_responses: Path, run_cli, capsys: pytest.CaptureFixture[str]
        ) -> None:
    """The records the report shows were drawn by the run that checked their chunk, and kept
    beside its verdicts: a run resuming every chunk lays the page around them instead of reading
    and scoring the chunk again only to draw it."""
    state = tmp_path / "state"
    args = ("--reference", "builtin", "--records-per-chunk", "10", "--state", str(state),
            "--no-progress")
    first = run_cli("check", lite_responses, *args, "--report", tmp_path / "a.html")
    capsys.readouterr()
    again = run_cli("check", lite_responses, *args, "--report", tmp_path / "b.html")
    said = capsys.readouterr().out
    assert again == first and "resumed: 4 of 4 chunks" in said
    assert "again for the HTML report" not in said and "as the run that checked it drew it" in said
    a, b = (tmp_path / "a.html").read_text(), (tmp_path / "b.html").read_text()
    assert _outputs_part(a) == _outputs_part(b) and "records 0–9" in b


def test_a_chunked_report_shows_the_whole_sets_verdicts_pooled_rows_among_them(
        tmp_path: Path, lite_responses: Path, run_cli) -> None:
    """The page of a chunked run heads with the set's verdict and lists every row the JSON
    summary does, the pooled ones (tested once over every chunk) too: a chunk's page alone
    would show no fit, temperature or seeds row, and could pass where the set fails."""
    args = ("--reference", "builtin", "--records-per-chunk", "10", "--no-progress",
            "--state", str(tmp_path / "state"))
    run_cli("check", lite_responses, *args, "--report", tmp_path / "r.html",
            "--json", tmp_path / "r.json")
    summary = json.loads((tmp_path / "r.json").read_text())
    page = (tmp_path / "r.html").read_text()
    assert summary["chunks"] == 4
    for row in summary["checks"]:
        assert f'id="check-{row["name"]}"' in page, row["name"]
    for name in ("fit", "temperature", "seeds"):
        assert "pooled over the 4 chunks" in next(r["summary"] for r in summary["checks"]
                                                  if r["name"] == name)
    assert f'<body data-verdict="{summary["verdict"]}">' in page
    assert "the checks cover all" in page
