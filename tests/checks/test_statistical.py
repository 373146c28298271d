"""The statistical checks end to end: real in-process servers, correct and faulty, through `check`.

Each faulty server has one deployment bug (servecheck/collect/targets/faults.py). Runs use fixed seeds; a
correct server's false-alarm rate is ≤ 1% per run (docs/validation-power.md), so with fixed seeds
these outcomes are fixed, not flaky.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from servecheck.collect.targets.hf import HFTarget
from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.parameters import Parameters
from servecheck.formats.prompts import Request, request_id

FLAT = ["Name a color.", "Tell me a story about the fox.", "Pick a number between 1 and 10.",
        "Name an animal.", "Tell me a story about the bee.", "Where should we go?"]


def _requests(n: int, **params: float) -> list[Request]:
    out = []
    for j in range(n):
        conv = Conversation(contents=[Message(role="user", content=FLAT[j % len(FLAT)])])
        p = Parameters(**params, seed=j, max_tokens=40)
        out.append(Request(request_id(conv, p, j), conv, p))
    return out


@pytest.fixture(scope="session")
def responses(write_records) -> Callable[..., Path]:
    """``responses(tmp_path, spec, n=150, **params)``: n answers of the in-process server
    ``spec`` (one of FLAT each, seeds 0…n-1), written to tmp_path/r.json."""

    def write(tmp_path: Path, spec: str, n: int = 150, **params: float) -> Path:
        target = HFTarget.from_spec(spec, spec.partition(":")[2])
        records = target.generate_batch(_requests(n, **params))
        return write_records(tmp_path / "r.json", records)

    return write


TIGHT = dict(temperature=0.7, top_p=0.9, top_k=5)


def test_correct_server_passes_every_statistical_check(tmp_path: Path, check_json, check_named,
                                                       responses) -> None:
    code, summary = check_json(responses(tmp_path, "hf:builtin", **TIGHT), tmp_path)
    verdicts = {c["name"]: c["verdict"] for c in summary["checks"]}
    assert code == 0, summary
    assert verdicts["support"] == verdicts["fit"] == verdicts["temperature"] == "pass"
    (group,) = check_named(summary, "temperature")["details"]["groups"].values()
    assert group["low"] <= 0.7 <= group["high"]
    logprobs = check_named(summary, "logprobs")
    assert logprobs["verdict"] == "pass" and logprobs["details"]["convention"] == "raw"


def test_bf16_server_passes(tmp_path: Path, check_json, responses) -> None:
    code, summary = check_json(responses(tmp_path, "hf:builtin?dtype=bfloat16", **TIGHT),
                               tmp_path)
    assert code == 0, [c["summary"] for c in summary["checks"] if c["verdict"] == "fail"]


def test_temperature_applied_twice_is_named(tmp_path: Path, check_json, check_named, responses) -> None:
    # 400: at 200 the check's share of α (0.45%) leaves 0.49 inside the interval [0.46, 0.71]
    path = responses(tmp_path, "hf:builtin?fault=temperature-twice", 400, temperature=0.7)
    code, summary = check_json(path, tmp_path)
    temperature = check_named(summary, "temperature")
    assert code == 1 and temperature["verdict"] == "fail"
    assert "vs requested 0.7" in temperature["summary"]
    (group,) = temperature["details"]["groups"].values()
    assert group["high"] < 0.7 and group["estimate"] < 0.6  # the server ran at 0.7² = 0.49
    fit = check_named(summary, "fit")
    assert fit["verdict"] == "fail" and "more likely than a correct sampler's" in fit["summary"]
    drivers = [f for f in fit["findings"] if "record log-likelihood z" in f["message"]]
    assert drivers, "the records that drive the failure are named"


def test_temperature_ignored_is_named(tmp_path: Path, check_json, check_named, responses) -> None:
    path = responses(tmp_path, "hf:builtin?fault=temperature-ignored", 200, temperature=0.7)
    code, summary = check_json(path, tmp_path)
    (group,) = check_named(summary, "temperature")["details"]["groups"].values()
    assert code == 1 and group["low"] > 0.7 and group["low"] <= 1.0 <= group["high"]


@pytest.mark.parametrize(("fault", "rule"), [("top-p-ignored", "top_p"),
                                             ("top-k-off-by-one", "top_k")])
def test_truncation_faults_break_the_support(tmp_path: Path, fault: str, rule: str, check_json,
                                             check_named, responses) -> None:
    path = responses(tmp_path, f"hf:builtin?fault={fault}", **TIGHT)
    code, summary = check_json(path, tmp_path, "builtin", "--numerics", "fp32")
    support = check_named(summary, "support")
    assert code == 1 and support["verdict"] == "fail"
    assert f"outside {rule}" in support["findings"][0]["message"]


def test_served_logprobs_off_are_caught(tmp_path: Path, check_json, check_named, write_records) -> None:
    target = HFTarget()
    records = target.generate_batch(_requests(30, **TIGHT))
    for r in records:
        r.output_logprobs = [x - 0.5 for x in r.output_logprobs or []]
    code, summary = check_json(write_records(tmp_path / "r.json", records), tmp_path)
    logprobs = check_named(summary, "logprobs")
    assert code == 1 and logprobs["verdict"] == "fail"
    assert logprobs["details"]["mean_abs_diff"]["raw"] == pytest.approx(0.5, abs=0.01)
