"""The in-process server's per-request generators (``collect/targets/rng.py``).

A seeded request must give the same tokens whatever else runs: alone, in a batch, or while other
requests are generated in other threads (the collector's ``generate`` runs in ``to_thread``).
That its sampled tokens still follow the distribution HF's warpers define is tested beside the
speculative server's, in ``test_deployment_faults.py``.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest
import torch

from servecheck.collect.targets.hf import HFTarget
from servecheck.collect.targets.rng import row_seed
from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.parameters import Parameters
from servecheck.formats.prompts import Request

SAMPLED = dict(temperature=1.0, max_tokens=24)
PROMPTS = ["Tell me a story about the fox.", "Name a colour.", "What does the cat say?",
           "Tell me about the owl."]


def request(rid: str, text: str, **params) -> Request:
    return Request(rid, Conversation(contents=[Message(role="user", content=text)]),
                   Parameters(**params))


@pytest.fixture(scope="module")
def target() -> HFTarget:
    return HFTarget("builtin")


def test_a_seeded_request_repeats_under_concurrent_traffic(target: HFTarget) -> None:
    """Eight copies of one seeded request, interleaved with eight other requests, all generated
    in threads at once: every copy gives the text it gives alone."""
    base = request("same", PROMPTS[0], seed=1234, **SAMPLED)
    alone = target.generate_batch([base])[0]

    async def traffic() -> list:
        copies = [replace(base, id=f"same-{k}") for k in range(8)]
        others = [request(f"other-{k}", PROMPTS[1 + k % 3], seed=k, **SAMPLED) for k in range(8)]
        mixed = [x for pair in zip(copies, others, strict=True) for x in pair]
        return await asyncio.gather(*(target.generate(r) for r in mixed))

    answers = asyncio.run(traffic())
    copies = [a for a in answers if a.id.startswith("same")]
    assert len(copies) == 8
    assert {a.output for a in copies} == {alone.output}
    assert all(a.output_token_ids == alone.output_token_ids for a in copies)


def test_different_seeds_give_different_texts(target: HFTarget) -> None:
    texts = {target.generate_batch([request("s", PROMPTS[0], seed=s, **SAMPLED)])[0].output
             for s in range(8)}
    assert len(texts) >= 6


def test_n_choices_differ_and_the_first_is_the_seed_alone(target: HFTarget) -> None:
    one = target.generate_batch([request("n", PROMPTS[0], seed=5, **SAMPLED)])[0]
    four = target.generate_batch([request("n", PROMPTS[0], seed=5, n=4, **SAMPLED)])
    assert four[0].output == one.output
    assert len({r.output for r in four}) >= 3
    assert row_seed(7, 1) != row_seed(8, 0) and row_seed(7, 0) == 7


@pytest.mark.parametrize("params", [dict(temperature=0.0, max_tokens=24),
                                    dict(temperature=0.9, top_p=0.95, max_tokens=24)],
                         ids=["greedy", "sampled"])
def test_a_batch_equals_each_request_alone(target: HFTarget, params: dict) -> None:
    """Different prompts and seeds in one left-padded batch: each row's tokens are the ones it
    gets alone (fp32; padding moves the logits by ~1e-6, far from any draw's boundary here)."""
    requests = [request(f"b{k}", text, seed=10 + k, **params) for k, text in enumerate(PROMPTS)]
    batched = target.generate_batch(requests)
    for r, b in zip(requests, batched, strict=True):
        assert target.generate_batch([r])[0].output_token_ids == b.output_token_ids


def test_recorded_logprobs_are_the_raw_ones(target: HFTarget) -> None:
    """The per-row draw replaces only where the uniform numbers come from: the recorded
    log-probs are still the model's raw ones, as teacher forcing computes them."""
    (rec,) = target.generate_batch([request("lp", PROMPTS[0], seed=3, temperature=0.7,
                                            top_k=5, max_tokens=24)])
    ids = rec.prompt_token_ids + rec.output_token_ids
    with torch.inference_mode():
        logits = target.ref.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    start = len(rec.prompt_token_ids) - 1
    forced = logits[torch.arange(start, len(ids) - 1), torch.tensor(rec.output_token_ids)]
    assert np.allclose(rec.output_logprobs, forced.tolist(), atol=1e-4)
