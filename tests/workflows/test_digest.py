"""Verdicts a serving engineer can act on (issue 31): the digest that ends every ``check``,
power-aware PASSes and ``--detect``, blind spots named, and the smaller traps.

Each test runs ``servecheck check`` on responses of the built-in model stored in tests/golden
(honest and faulty in-process servers, fixed seeds), some reduced to what a user's file would
hold (text only, no prompt ids), so the verdicts are deterministic on a given machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servecheck.formats.records import ResponseRecord
from servecheck.formats.responses import read_records


def _golden(root: Path, name: str) -> Path:
    return root / "tests" / "golden" / f"{name}.responses.jsonl"


def _write(records: list[ResponseRecord], path: Path) -> Path:
    path.write_text("".join(r.model_dump_json() + "\n" for r in records))
    return path


def _check(run_cli, capsys, path: Path, tmp_path: Path, *extra: str) -> tuple[int, str, dict]:
    summary = tmp_path / "summary.json"
    capsys.readouterr()
    code = run_cli("check", path, "--reference", "builtin", "--no-progress", "--json", summary,
                   *extra)
    return code, capsys.readouterr().out, json.loads(summary.read_text())


def test_the_digest_names_causes_in_causal_order(root: Path, tmp_path: Path, run_cli,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A temperature the server ignores fails the sampler row (which names it) and the
    temperature row (which it moves): the digest puts the named cause first, the other after
    it, each with its first finding in full and its worst records, and the JSON carries it."""
    code, out, summary = _check(run_cli, capsys, _golden(root, "temperature-ignored"), tmp_path)
    assert code == 1
    d = summary["digest"]
    assert [f["check"] for f in d["failures"]] == ["sampler", "temperature"]
    sampler, temperature = d["failures"]
    assert sampler["cause"].startswith("temperature ≈ requested ×") and sampler["follows"] is None
    assert temperature["follows"] == "sampler" and "effective temperature" in temperature["cause"]
    assert temperature["records"] and temperature["finding"]
    tail = out[out.index("digest: FAIL"):]
    assert tail.index("1. sampler") < tail.index("2. temperature (may follow from sampler)")
    assert temperature["finding"] in " ".join(tail.split())  # in full: no "…" at the width


def test_a_prompt_fault_comes_before_what_it_disturbs(root: Path, tmp_path: Path, run_cli,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The notes' double BOS, seen through the served log-probs only (prompt text, no prompt
    ids): the template row cannot see it and says so; the logprobs row finds it, and the digest
    puts it first, in a serving engineer's words."""
    records = [r.model_copy(update={"prompt_token_ids": None})
               for r in read_records(_golden(root, "double-bos"))]
    code, _out, summary = _check(run_cli, capsys, _write(records, tmp_path / "r.jsonl"), tmp_path)
    checks = {c["name"]: c for c in summary["checks"]}
    assert checks["template"]["verdict"] == "pass"
    assert "text only: a BOS or other special token" in checks["template"]["summary"]
    first = summary["digest"]["failures"][0]
    assert code == 1 and first["check"] == "logprobs" and "double BOS" in first["cause"]


def test_a_text_only_file_says_what_it_could_not_see(root: Path, tmp_path: Path, run_cli,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A server that doubles the BOS, its answers as text only: nothing in the file shows the
    prompt's tokens, and the digest says so (with what to collect) instead of passing in
    silence; so for the other fault classes the file cannot show."""
    records = [ResponseRecord(id=r.id, conversations=r.conversations, parameters=r.parameters,
                              output=r.output) for r in read_records(_golden(root, "double-bos"))]
    _, out, summary = _check(run_cli, capsys, _write(records, tmp_path / "r.jsonl"), tmp_path)
    spots = {b["fault"]: b for b in summary["digest"]["not_checked"]}
    bos = next(b for f, b in spots.items() if f.startswith("a double BOS"))
    assert "no record has prompt token ids or served log-probs" in bos["why"]
    assert "prompt token ids" in bos["collect"]
    assert any("tool-call parser" in f for f in spots)
    assert any("chat template" in f for f in spots)  # the template row had nothing to compare
    assert "not checked by this file" in out and "double BOS" in out


def test_a_pass_says_what_it_could_have_caught_and_detect_makes_it_inconclusive(
        root: Path, tmp_path: Path, run_cli, capsys: pytest.CaptureFixture[str]) -> None:
    """A correct server's 64 records pass, and the sampler row says which of the faults
    deployments ship those records could have caught; ``--detect temperature=0.1`` asks for
    one they could not: INCONCLUSIVE (exit 3), with the requests of this mix that would: the
    number ``servecheck plan`` gives for the same file."""
    path = _golden(root, "honest")
    code, _, summary = _check(run_cli, capsys, path, tmp_path)
    sampler = next(c for c in summary["checks"] if c["name"] == "sampler")
    assert code == 0 and sampler["verdict"] == "pass"
    assert "of what deployments get wrong, these records" in sampler["summary"]
    rows = {r["fault"]: r for r in sampler["details"]["power"]}
    temperature = rows["temperature"]
    assert temperature["size"] == 0.1 and not temperature["caught_now"]
    assert any(s["fault"] == "a temperature 10% off" for s in summary["digest"]["could_not_catch"])

    code, _out, summary = _check(run_cli, capsys, path, tmp_path, "--detect", "temperature=0.1")
    sampler = next(c for c in summary["checks"] if c["name"] == "sampler")
    assert code == 3 and sampler["verdict"] == "inconclusive"
    assert f"about {temperature['requests']} requests of this mix" in sampler["summary"]
    plan = tmp_path / "plan.json"
    assert run_cli("plan", path, "--reference", "builtin", "--json", plan) == 0
    planned = {r["fault"]: r for r in json.loads(plan.read_text())["plan"]}
    assert planned["temperature"]["requests"] == temperature["requests"]


def test_detect_names_what_it_can_test(root: Path, run_cli, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    for bad, said in [("temprature=0.1", "did you mean 'temperature'"),
                      ("top_k=30", "the sampler tests top_k at 1, 20, 40, 50, 100"),
                      ("temperature", "write FAULT=SIZE")]:
        capsys.readouterr()
        assert run_cli("check", _golden(root, "honest"), "--reference", "builtin",
                       "--detect", bad) == 2
        assert said in capsys.readouterr().err


def test_temperature_and_sampler_agree_on_few_tokens(root: Path, tmp_path: Path, run_cli,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """On a handful of sampled records both rows read the same tokens: the sampler cannot
    estimate from them, so the temperature row does not pass on them either."""
    records = [r for r in read_records(_golden(root, "honest")) if not r.parameters.greedy][:6]
    code, _out, summary = _check(run_cli, capsys, _write(records, tmp_path / "r.jsonl"), tmp_path)
    verdicts = {c["name"]: c["verdict"] for c in summary["checks"]}
    assert verdicts["sampler"] == "inconclusive" and verdicts["temperature"] == "inconclusive"
    assert code == 3


def test_check_explains_its_numerics(root: Path, tmp_path: Path, run_cli,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = _check(run_cli, capsys, _golden(root, "honest"), tmp_path)
    assert "numerics bf16 (the default: what GPU servers run; --numerics fp32 for an fp32 " \
           "server, as the demo's)" in " ".join(out.split())


def test_endpoint_files_needs_a_model(tmp_path: Path, run_cli,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("endpoint-files", "--out", tmp_path / "files") == 2
    assert "--model" in capsys.readouterr().err

