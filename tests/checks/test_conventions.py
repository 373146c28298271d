"""The sampling order is found from the records: a correct llama.cpp-order server passes without
flags, a correct HF-order one is not moved off HF's order, and the order found is the one that
matters (the same llama.cpp records checked under HF's order fail).

Real in-process servers of the built-in model (``hf:builtin?order=llama.cpp`` samples top_k,
top_p and min_p on temperature-1 probabilities, then the temperature: a correct engine of
another family, not a fault). The requests ask for what tells the orders apart: min_p at
T = 0.7 and top_p at T = 1.3. Fixed seeds make the outcomes fixed; the margin's level (a
likelihood ratio of e^10, so at most e^-10 under the default) is in ``checks/conventions.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from servecheck.checks.core.conventions import MARGIN_NATS, candidates
from servecheck.collect.targets.hf import HFTarget
from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.parameters import Parameters
from servecheck.formats.prompts import Request, request_id
from servecheck.reference.sampling import HF, LLAMA_CPP

PROMPTS = ["Name a color.", "Tell me a story about the fox.", "Pick a number between 1 and 10.",
           "Name an animal.", "Where should we go?", "Tell me a story about the cat."]
TELLING = [dict(temperature=0.6, min_p=0.2), dict(temperature=1.4, top_p=0.8),
           dict(temperature=1.0)]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, write_records) -> dict[str, Path]:
    out = {}
    for order in ("hf", "llama.cpp"):
        target = HFTarget.from_spec(f"hf:builtin?order={order}", f"builtin?order={order}")
        records = []
        for g, params in enumerate(TELLING):
            requests = []
            for j in range(40):
                conv = Conversation(contents=[Message(role="user",
                                                      content=PROMPTS[j % len(PROMPTS)])])
                p = Parameters(**params, seed=500 * g + j, max_tokens=40)
                requests.append(Request(request_id(conv, p, j), conv, p))
            records += target.generate_batch(requests)
        out[order] = write_records(tmp_path_factory.mktemp(order) / "r.json", records)
    return out


def test_a_correct_llama_cpp_server_passes_without_flags(served, tmp_path: Path,
                                                         check_json) -> None:
    code, summary = check_json(served["llama.cpp"], tmp_path)
    found = summary["convention"]
    assert found["found"] and found["name"] == "llama.cpp order", found["why"]
    assert code == 0, [c["summary"] for c in summary["checks"] if c["verdict"] != "pass"]
    best, default = sorted(found["candidates"], key=lambda c: c["name"] != "llama.cpp order")
    assert best["violations"] < default["violations"]


def test_a_correct_hf_server_keeps_hf_order(served, tmp_path: Path, check_json) -> None:
    code, summary = check_json(served["hf"], tmp_path)
    assert summary["convention"]["name"] == "HF order", summary["convention"]["why"]
    assert code == 0, [c["summary"] for c in summary["checks"] if c["verdict"] != "pass"]


def test_the_order_found_is_the_one_that_matters(served, tmp_path: Path, check_json,
                                                 check_named) -> None:
    code, summary = check_json(served["llama.cpp"], tmp_path, "builtin", "--sampler-order", "hf")
    assert summary["convention"] == {**HF.describe(), "found": False, "records": 0, "tokens": 0,
                                     "candidates": [], "why": "HF order (as given)",
                                     "kept_default": None}
    assert code == 1 and check_named(summary, "support")["verdict"] == "fail"
    code, summary = check_json(served["llama.cpp"], tmp_path, "builtin", "--sampler-order",
                               "llama.cpp")
    assert code == 0 and summary["convention"]["name"] == LLAMA_CPP.name


def test_only_what_the_records_can_tell_is_a_candidate() -> None:
    assert candidates(False, False) == [HF]
    assert [c.name for c in candidates(True, False)] == ["HF order", "llama.cpp order"]
    assert len(candidates(True, True)) == 4 and candidates(True, True)[0] == HF
    assert MARGIN_NATS >= 10  # P(ratio ≥ e^m) ≤ e^-m under the default: ≤ 4.5e-5
