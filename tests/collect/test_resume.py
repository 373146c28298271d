"""Collection that knows when to stop: the circuit breaker on a dead server, a resume that never
mixes two servers in one file, the compaction that leaves each request once on disk, and one bad
answer that stays one error record.

The dead server is a port nobody listens on (a real refused connection); the bad answers come
from a fake target (a test double: no real server can be made to send a malformed answer to one
chosen prompt); the other runs use the in-process ``hf:builtin`` target, a real model.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from servecheck.collect import collector
from servecheck.collect.collector import BREAKER_AFTER, CollectSummary, ask
from servecheck.collect.targets import Target, open_target
from servecheck.errors import TargetError
from servecheck.formats.prompts import Request, expand
from servecheck.formats.records import ResponseRecord
from servecheck.formats.responses import read_records


def _prompts(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"prompt": [f"Say {k}." for k in range(n)], "max_tokens": 4}))
    return path


def test_a_dead_server_trips_the_breaker(tmp_path: Path, free_ports, run_cli,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    (port,) = free_ports(1)
    out = tmp_path / "r.jsonl"
    start = time.monotonic()
    code = run_cli("generate", _prompts(tmp_path, 60), "--target",
                   f"openai://127.0.0.1:{port}/v1?concurrency=2", "--out", out, "--no-progress",
                   "--retries", "1")
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and "stopped early, the server is gone" in err
    assert f"{BREAKER_AFTER} requests in a row" in err and f"127.0.0.1:{port}" in err
    lines = out.read_text().splitlines()
    assert BREAKER_AFTER <= len(lines) < 10, "60 requests planned; the run stopped after a few"
    assert all(json.loads(line)["error"] for line in lines)  # kept: a rerun retries them
    assert elapsed < 20


def test_an_unresolvable_name_is_retried_as_unreachable(expand_one) -> None:
    target = open_target("openai://no-such-host.invalid:8000/v1?mode=completions",
                         reference="builtin")
    summary = CollectSummary(planned=1, skipped=0)

    async def go() -> TargetError:
        try:
            await ask(target, expand_one(max_tokens=4)[0], 1, summary)
        except TargetError as e:
            return e
        finally:
            await target.aclose()
        raise AssertionError("a host that does not resolve answered")

    error = asyncio.run(go())
    assert error.gone and error.transient and summary.retried == 1


def test_resume_refuses_another_target(tmp_path: Path, run_cli,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    prompts, out = _prompts(tmp_path, 2), tmp_path / "r.json"
    assert run_cli("generate", prompts, "--target", "hf:builtin", "--out", out,
                   "--no-progress") == 0
    before = out.read_text()
    code = run_cli("generate", prompts, "--target", "hf:builtin?fault=double-bos", "--out", out,
                   "--no-progress")
    err = capsys.readouterr().err
    assert code == 2 and "holds records from another target (hf:builtin)" in err
    assert "hf:builtin?fault=double-bos" in err and "Traceback" not in err
    assert out.read_text() == before  # nothing of the other server appended


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_completion_compacts_superseded_errors(tmp_path: Path, run_cli, suffix: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A first run that failed on half its requests, then a rerun that answers them: the file
    ends with each request once, no error records, in its own shape, and no temporary file."""
    prompts, out = _prompts(tmp_path, 4), tmp_path / f"r{suffix}"
    requests = expand(prompts)
    failed = [ResponseRecord(id=r.id, conversations=r.conversation, parameters=r.parameters,
                             target="hf:builtin", error="refused")
              for r in requests[:2]]
    lines = [r.model_dump_json(exclude_none=True) for r in failed]
    out.write_text("[\n" + ",\n".join(lines) + "\n]\n" if suffix == ".json" else
                   "\n".join(lines) + "\n")
    assert run_cli("generate", prompts, "--target", "hf:builtin", "--out", out,
                   "--no-progress") == 0
    assert "rewritten without 2 superseded error record(s)" in capsys.readouterr().out
    text = out.read_text()
    records = json.loads(text) if suffix == ".json" else [json.loads(x) for x in text.splitlines()]
    assert sorted(r["id"] for r in records) == sorted(r.id for r in requests)
    assert not any(r.get("error") for r in records)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


class _Malformed(Target):
    """Answers every request but ``bad``, whose answer breaks the interface the way ``how``
    says: a parse error (ValueError, KeyError) or a record that does not validate."""

    spec = "fake:malformed"
    max_concurrency = 2

    def __init__(self, bad: set[str], how: str) -> None:
        self.bad, self.how, self.asked = bad, how, []

    async def generate(self, request: Request) -> ResponseRecord:
        self.asked.append(request.id)
        answer = {"id": request.id, "conversations": request.conversation,
                  "parameters": request.parameters, "target": self.spec, "input": "in",
                  "output": "Hello.<end_of_turn>"}
        if request.id in self.bad:
            if self.how == "ValueError":
                raise ValueError("logprob 'NaN-ish' at token 3 is not a number; "
                                 "Bearer sk-abcdefghijklmnop")
            if self.how == "KeyError":
                raise KeyError("choices")
            answer["finish_reason"] = "eos_token"  # not one ResponseRecord knows
        return ResponseRecord(**answer)


@pytest.mark.parametrize("how", ["ValueError", "KeyError", "ValidationError"])
def test_one_malformed_answer_is_one_error_record_and_is_retried(
        how: str, tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    prompts, out = _prompts(tmp_path, 6), tmp_path / "r.jsonl"
    ids = [r.id for r in expand(prompts)]
    target = _Malformed({ids[2]}, how)
    monkeypatch.setattr(collector, "open_target", lambda spec, reference=None: target)
    code = run_cli("generate", prompts, "--target", "fake:malformed", "--out", out,
                   "--no-progress")
    said = capsys.readouterr()
    assert code == 1 and "Traceback" not in said.err  # as for any failed request
    assert sorted(target.asked) == sorted(ids)  # the run went on past the bad answer
    records = {r.id: r for r in read_records(out)}
    assert set(records) == set(ids)
    assert [i for i, r in records.items() if r.error] == [ids[2]]
    error = records[ids[2]].error
    assert error.startswith(f"the server's answer broke the interface: {how}: ") and "\n" not in error
    assert "sk-abcdefghijklmnop" not in error and "1 request(s) failed" in said.out

    fixed = _Malformed(set(), how)  # the next run retries the error record, and only it
    monkeypatch.setattr(collector, "open_target", lambda spec, reference=None: fixed)
    assert run_cli("generate", prompts, "--target", "fake:malformed", "--out", out,
                   "--no-progress") == 0
    assert fixed.asked == [ids[2]]
    assert all(r.error is None for r in read_records(out)) and len(read_records(out)) == 6


def test_ctrl_c_inside_a_target_still_stops_the_run(tmp_path: Path, run_cli,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """What is caught per request is an answer's error, not the user stopping the run."""

    class Interrupted(_Malformed):
        async def generate(self, request: Request) -> ResponseRecord:
            if len(self.asked) == 2:
                raise KeyboardInterrupt
            return await super().generate(request)

    prompts, out = _prompts(tmp_path, 6), tmp_path / "r.jsonl"
    target = Interrupted(set(), "ValueError")
    monkeypatch.setattr(collector, "open_target", lambda spec, reference=None: target)
    assert run_cli("generate", prompts, "--target", "fake:malformed", "--out", out,
                   "--no-progress") == 130
    assert len(target.asked) == 2 and all(r.error is None for r in read_records(out))
