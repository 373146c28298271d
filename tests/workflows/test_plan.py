"""``servecheck plan`` scales a pilot's evidence, and what it promises holds.

The pilot is 120 realistic-mix requests answered by the in-process built-in model (fixed
seeds). The plan must (1) call "caught" exactly what the pilot's own check says it would have
caught, (2) ask for more requests for faults it did not, and (3) be right when followed: a
min_p 0.05 default, planned from the pilot, is caught by a run of the planned size.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servecheck.collect.targets.hf import HFTarget
from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.parameters import Parameters
from servecheck.formats.prompts import Request, request_id

PROMPTS = ["Name a color.", "Tell me a story about the fox.", "Pick a number between 1 and 10.",
           "Name an animal.", "Where should we go?", "Tell me a story about the cat."]
MIX = [dict(temperature=t, top_p=p) for t in (0.7, 1.0) for p in (0.9, 1.0)]


def _answers(spec: str, n: int, offset: int) -> list:
    target = HFTarget.from_spec(spec, spec.partition(":")[2])
    records = []
    for g, params in enumerate(MIX):
        requests = []
        for j in range(n // len(MIX)):
            conv = Conversation(contents=[Message(role="user", content=PROMPTS[j % len(PROMPTS)])])
            p = Parameters(**params, seed=offset + 1000 * g + j, max_tokens=40)
            requests.append(Request(request_id(conv, p, j), conv, p))
        records += target.generate_batch(requests)
    return records


@pytest.fixture(scope="module")
def pilot_plan(tmp_path_factory: pytest.TempPathFactory, write_records, run_cli
               ) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("plan")
    pilot = write_records(out / "pilot.json", _answers("hf:builtin", 120, 0))
    assert run_cli("plan", pilot, "--reference", "builtin", "--json", out / "plan.json") == 0
    assert run_cli("check", pilot, "--reference", "builtin", "--json", out / "s.json") == 0
    summary = json.loads((out / "s.json").read_text())
    sampler = next(c for c in summary["checks"] if c["name"] == "sampler")
    return json.loads((out / "plan.json").read_text()), sampler["details"]["detectable"]


def test_the_plan_agrees_with_the_pilots_own_power_statement(pilot_plan) -> None:
    plan, detectable = pilot_plan
    rows = {r["fault"]: r for r in plan["plan"]}
    assert plan["pilot_records"] == 120 and set(rows) >= {"min_p", "top_k", "temperature"}
    for fault in ("min_p",):
        caught = detectable[fault] is not None and detectable[fault] <= rows[fault]["size"]
        assert rows[fault]["caught_now"] == caught
    for r in rows.values():  # caught now ⇔ the point estimate is ≤ the pilot's 120
        assert r["requests"] is None or r["caught_now"] == (r["requests"] <= 1.5 * 120), r


def test_a_planned_run_catches_what_the_plan_promised(pilot_plan, tmp_path: Path,
                                                     write_records, check_json,
                                                     check_named) -> None:
    plan, _ = pilot_plan
    need = next(r for r in plan["plan"] if r["fault"] == "min_p")["requests"]
    assert need is not None and need <= 1000
    n = -(-need // len(MIX)) * len(MIX)
    path = write_records(tmp_path / "r.json", _answers("hf:builtin?fault=min-p-default", n, 50_000))
    code, summary = check_json(path, tmp_path)
    sampler = check_named(summary, "sampler")
    assert code == 1 and sampler["summary"].startswith("served as if min_p"), (
        sampler["summary"][-200:], {k: v for k, v in sampler["details"]["tail_mass"].items() if "min_p" in k})


def test_a_size_the_sampler_does_not_test_is_refused(pilot_plan, tmp_path: Path, write_records,
                                                     run_cli) -> None:
    path = write_records(tmp_path / "p.json", _answers("hf:builtin", 120, 0))
    assert run_cli("plan", path, "--reference", "builtin", "--top-k", "33") == 2
