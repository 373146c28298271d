"""responses files: written record by record, read back in any state, resumed without loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.prompts import expand
from servecheck.formats.records import ResponseRecord
from servecheck.formats.responses import ResponseWriter, read_records


def _answered_ids(path: Path) -> set[str]:
    """Ids that need no retry: records present and without error."""
    if not path.exists() or not path.read_text(encoding="utf-8").strip():
        return set()
    return {r.id for r in read_records(path) if r.id and r.error is None}


def _rec(i: int, error: str | None = None) -> ResponseRecord:
    conv = Conversation(contents=[Message(role="user", content=f"q{i}")])
    return ResponseRecord(id=f"r{i}", conversations=conv, input="in", output=f"out{i}",
                          error=error)


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_roundtrip_and_reopen(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"responses{suffix}"
    with ResponseWriter(path) as w:
        for r in (_rec(0), _rec(1, error="boom")):
            w.write(r)
    if suffix == ".json":
        assert len(json.loads(path.read_text())) == 2  # a finished .json file is plain JSON
    with ResponseWriter(path) as w:  # a rerun appends; the retry replaces the error
        w.write(_rec(1))
    records = read_records(path)
    assert [r.id for r in records] == ["r0", "r1"]
    assert all(r.error is None for r in records)
    if suffix == ".json":
        assert len(json.loads(path.read_text())) == 3


def test_torn_last_line_is_dropped_then_appended_after(tmp_path: Path) -> None:
    path = tmp_path / "responses.json"
    w = ResponseWriter(path)
    w.write(_rec(0))
    w._fh.write(',{"schema_version": 1, "id": "r1", "conv')  # killed mid-write, no "]"
    w._fh.flush()
    assert [r.id for r in read_records(path)] == ["r0"]
    assert _answered_ids(path) == {"r0"}
    with ResponseWriter(path) as w2:
        w2.write(_rec(1))
    assert [r.id for r in read_records(path)] == ["r0", "r1"]
    json.loads(path.read_text())


def test_seed_format_list_is_read(tmp_path: Path) -> None:
    """The original notes' response.json: a JSON list with only the seed's fields."""
    path = tmp_path / "response.json"
    path.write_text(json.dumps([{
        "conversations": {"contents": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "hi"}]},
        "parameters": {"temperature": 0.7, "top_p": 0.9, "seed": 1},
        "input": "<bos>...", "output": "Hello.<end_of_turn>"}]))
    (r,) = read_records(path)
    assert r.conversations.hf_messages()[0]["role"] == "system"
    assert r.parameters.top_p == 0.9 and r.id is None


@pytest.mark.slow  # a generate subprocess, killed, then resumed (12 s)
def test_generate_resumes_after_sigkill(tmp_path: Path, root: Path, run_cli) -> None:
    """A generate killed mid-run, then rerun: every request answered exactly once."""
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({
        "prompt": ["Tell me a story about the fox.", "Count from 1 to 9.", "Name a color."],
        "temperature": [0.7, 1.0], "seed": list(range(8)), "max_tokens": 40}))
    out = tmp_path / "responses.json"
    cmd = [sys.executable, "-m", "servecheck.cli", "generate", str(prompts), "--target",
           "hf:builtin", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        if out.exists() and out.read_text().count('"id"') >= 5:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = read_records(out)
    planned = {r.id for r in expand(prompts)}
    assert 5 <= len(before) < len(planned), "the kill should land mid-run"
    assert run_cli(*cmd[3:]) == 0
    after = read_records(out)
    ids = [r.id for r in after]
    assert sorted(ids) == sorted(planned) and len(ids) == len(set(ids))
    # The records kept from before the kill are unchanged by the resume.
    kept = {r.id: r.output for r in after}
    assert all(kept[r.id] == r.output for r in before)
    raw_ids = [json.loads(line.strip().strip(","))["id"] for line in out.read_text().splitlines()
               if line.strip() not in ("[", "]", "")]
    assert len(raw_ids) == len(set(raw_ids)), "no request was generated twice"


@pytest.mark.slow  # a generate subprocess, interrupted (10 s)
def test_sigint_saves_and_exits_130(tmp_path: Path, root: Path) -> None:
    out = tmp_path / "responses.jsonl"
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"prompt": "Tell me a story about the owl.",
                                   "temperature": 1.0, "seed": list(range(40)),
                                   "max_tokens": 40}))
    proc = subprocess.Popen([sys.executable, "-m", "servecheck.cli", "generate", str(prompts),
                             "--target", "hf:builtin", "--out", str(out), "--no-progress"],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and out.read_text().count("\n") >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "run the same command again to resume" in stdout
    assert len(read_records(out)) >= 3


def test_rerun_of_finished_run_does_nothing(lite_responses: Path,
                                            capsys: pytest.CaptureFixture[str], run_cli,
                                            lite_prompts: Path) -> None:
    assert run_cli("generate", lite_prompts, "--target", "hf:builtin", "--out", lite_responses,
                   "--no-progress") == 0
    assert "0 new record(s), 32 already answered" in capsys.readouterr().out
