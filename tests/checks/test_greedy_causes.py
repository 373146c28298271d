"""The greedy check's cause search (``checks.core.greedy_causes``): mismatches no penalty can
undo cost no rescoring of its grid.

Greedy records of the in-process server checked against a reference of other (random) weights
mismatch where the reference's argmax is a token never seen before; a penalty only lowers the
logits of tokens seen before, so none can make those served tokens the argmax, and the search
stops after one scoring call instead of scoring 36 cells. That a real penalty is still found and
named is the real engines' tests: llama.cpp's shipped repeat_penalty 1.1
(``tests/collect/test_llama_cpp.py``, ``tests/collect/test_engines.py``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import servecheck
from servecheck.checks.core import greedy_causes
from servecheck.collect.targets.hf import HFTarget
from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.parameters import Parameters
from servecheck.formats.prompts import Request, request_id
from servecheck.reference.model import BUILTIN

PROMPTS = ["Tell me a story about the fox.", "Count from 2 to 7.", "Tell me a story about the cat.",
           "Repeat after me: red hill quiet frog", "Tell me a story about the bee."]


def _greedy(spec: str, n: int = 24) -> list:
    target = HFTarget.from_spec(spec, spec.partition(":")[2])
    requests = []
    for j in range(n):
        conv = Conversation(contents=[Message(role="user", content=PROMPTS[j % len(PROMPTS)])])
        p = Parameters(temperature=0.0, max_tokens=40, seed=j)
        requests.append(Request(request_id(conv, p, j), conv, p))
    return target.generate_batch(requests)


def test_mismatches_no_penalty_can_undo_score_no_grid(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    other = tmp_path / "other-weights"
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(BUILTIN))
    with torch.no_grad():
        model.model.norm.weight.fill_(9.0)  # peaked: its argmax is far from the served token
    model.save_pretrained(other)
    for f in BUILTIN.iterdir():
        if f.is_file() and f.name not in ("config.json", "model.safetensors"):
            shutil.copy(f, other / f.name)
    calls: list[int] = []
    real = greedy_causes.penalised_gaps
    monkeypatch.setattr(greedy_causes, "penalised_gaps",
                        lambda ctx, items, scope: calls.append(len(items)) or real(ctx, items, scope))
    run = servecheck.check(_greedy("hf:builtin"), servecheck.CheckOptions(str(other)))
    greedy = next(r for r in run.results if r.name == "greedy")
    assert greedy.verdict == "fail" and "penalty" not in greedy.summary
    assert not calls, "the grid was scored for mismatches no penalty can undo"
