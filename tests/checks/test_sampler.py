"""The effective-sampler check: a setting the request did not ask for is found and named.

End to end, real in-process servers of the built-in model answer a realistic mix (T 0.7 and 1.0,
top_p 0.9 and 1.0, top_k 0 and 40); each faulty one applies one setting server-side
(servecheck/collect/targets/faults.py). Fixed seeds make the outcomes fixed: a correct server
fails the check's Holm family at most at α = 1% (on held-out seeds, docs/validation-power.md
measures it). The pieces are tested on their own with simulated nulls: each test's rejection
rate on data drawn from the request stays at or below its level.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from servecheck.checks.core import alternatives as alt
from servecheck.checks.core.shared_seeds import seed_design
from servecheck.collect.targets.hf import HFTarget
from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.parameters import Parameters
from servecheck.formats.prompts import Request, request_id

PROMPTS = ["Name a color.", "Tell me a story about the fox.", "Pick a number between 1 and 10.",
           "What does the horse eat?", "Name an animal.", "Tell me a story about the bee.",
           "Where should we go?", "Count from 2 to 7.", "Tell me a story about the cat.",
           "Where does the owl live?", "Repeat after me: red hill quiet frog", "What is 3 plus 4?"]
"""Flat prompts (a colour, a number) and peaked ones (facts, counting): a min_p cuts only where
q has a long tail, which the peaked ones have."""
MIX = [dict(temperature=t, top_p=p, top_k=k) for t in (0.7, 1.0) for p in (0.9, 1.0)
       for k in (0, 40)]


@pytest.fixture(scope="module")
def answers(write_records) -> Callable[[Path, str], Path]:
    def write(tmp_path: Path, spec: str, n: int = 200, **settings) -> Path:
        target = HFTarget.from_spec(spec, spec.partition(":")[2])
        records = []
        for g, params in enumerate(MIX):
            requests = []
            for j in range(n // len(MIX)):
                conv = Conversation(contents=[Message(role="user",
                                                      content=PROMPTS[j % len(PROMPTS)])])
                p = Parameters(**params, **settings, seed=1000 * g + j, max_tokens=40)
                requests.append(Request(request_id(conv, p, j), conv, p))
            records += target.generate_batch(requests)
        return write_records(tmp_path / "r.json", records)
    return write


def test_a_correct_server_passes_and_says_what_it_could_have_caught(
        tmp_path: Path, check_json, check_named, answers) -> None:
    _, summary = check_json(answers(tmp_path, "hf:builtin"), tmp_path)
    sampler = check_named(summary, "sampler")
    assert sampler["verdict"] == "pass", sampler["summary"]
    assert "would have caught" in sampler["summary"] and "min_p ≥" in sampler["summary"]
    assert sampler["details"]["detectable"]["min_p"] <= 0.05
    assert not sampler["details"]["seed_design"]["shared"]  # one seed a request


def test_a_setting_the_request_set_and_the_server_dropped_is_named_so(
        tmp_path: Path, check_json, check_named, answers) -> None:
    """The requests set min_p 0 (off) explicitly, and the server ran its own 0.05: said as the
    request's setting not applied, not as a setting that appeared from nowhere (issue 28)."""
    code, summary = check_json(answers(tmp_path, "hf:builtin?fault=min-p-default", 304,
                                       min_p=0.0), tmp_path)
    sampler = check_named(summary, "sampler")
    assert code == 1 and sampler["verdict"] == "fail"
    assert sampler["summary"].startswith("the server did not apply min_p=0.0 as requested: "
                                         "served as if min_p ≈ 0.0"), sampler["summary"]


def test_a_min_p_default_is_named_with_its_value(tmp_path: Path, check_json, check_named,
                                                answers) -> None:
    # 304 requests: at 200 these seeds leave the check's share of α (0.45%) just out of reach
    code, summary = check_json(answers(tmp_path, "hf:builtin?fault=min-p-default", 304), tmp_path)
    sampler = check_named(summary, "sampler")
    assert code == 1 and sampler["verdict"] == "fail"
    assert sampler["summary"].startswith("served as if min_p ≈ 0.0"), sampler["summary"]
    best = max((a for a in sampler["details"]["alternatives"] if a["test"]["failed"]),
               key=lambda a: a["gain"])
    assert best["setting"] == "min_p" and 0.04 <= best["estimate"] <= 0.08


def test_a_silent_repetition_penalty_is_named(tmp_path: Path, check_json, check_named,
                                             answers) -> None:
    _, summary = check_json(answers(tmp_path, "hf:builtin?fault=repetition-penalty"), tmp_path)
    sampler = check_named(summary, "sampler")
    assert sampler["verdict"] == "fail" and "penalty" in sampler["summary"], sampler["summary"]


def _tail(removed: np.ndarray, outside: np.ndarray) -> alt.Tail:
    """The sums a truncation's test reads of these tokens (as ``sampler_evidence`` keeps them)."""
    return alt.Tail(len(removed), float(removed.sum()), int(outside.sum()),
                    float(alt.tail_gain(removed[~outside]).sum()))


def test_the_truncation_test_holds_its_level_under_the_request() -> None:
    """Tokens drawn from the request land where a truncation would cut at the rate q says:
    the tail-count p-value rejects at most at its level (simulated, 4000 runs of 300 tokens)."""
    rng = np.random.default_rng(5)
    rejected = 0
    for _ in range(4000):
        removed = rng.beta(0.5, 8, size=300)
        outside = rng.random(300) < removed
        a = alt.truncation("min_p", 0.05, _tail(removed, outside), 1.0, 0.0)
        rejected += a.test.p < 0.01
    assert rejected / 4000 <= 0.01


def test_a_truncating_server_fails_the_tail_count() -> None:
    rng = np.random.default_rng(6)
    removed = rng.beta(0.5, 8, size=300)
    a = alt.truncation("min_p", 0.05, _tail(removed, np.zeros(300, bool)), 1.0, 0.05)
    assert a.test.p < 1e-6 and a.test.effect == 1.0 and a.gain > 0


def test_the_penalty_score_holds_its_level_under_the_request() -> None:
    """A served token that is a context token with probability S: the score test's rejections
    stay at its level (simulated, 4000 runs of 500 tokens)."""
    rng = np.random.default_rng(7)
    rejected = 0
    for _ in range(4000):
        seen = rng.beta(1, 3, size=500)
        seen_y = (rng.random(500) < seen).astype(float)
        score = seen - seen_y
        a, _ = alt.penalty("presence_penalty", "output", score.sum(), (seen * (1 - seen)).sum(),
                           np.square(score).sum(), len(score), 1.0)
        rejected += a.test.p < 0.01
    assert rejected / 4000 <= 0.0125  # 0.01 and its binomial noise at 4000 runs (≈ 1.6 sd)


def _design(seeds: list[int], pits: np.ndarray):
    ctx = SimpleNamespace(records=[SimpleNamespace(parameters=SimpleNamespace(seed=s))
                                   for s in seeds])
    scores = {i: SimpleNamespace(stats={"pit": pits[i], "logq": np.zeros(pits.shape[1])})
              for i in range(len(seeds))}
    return seed_design(ctx, scores, one_stream=False)  # type: ignore[arg-type]


def test_shared_streams_raise_the_design_effect_and_distinct_seeds_do_not() -> None:
    rng = np.random.default_rng(8)
    n, length = 120, 30
    independent = _design(list(range(n)), rng.random((n, length)))
    assert independent.deff == 1.0 and not independent.shared
    # 12 seeds, 10 prompts each; PIT values on a stream share a common part (correlation ~0.3)
    common = rng.random((12, length))
    pits = np.array([np.where(rng.random(length) < 0.55, common[i % 12], rng.random(length))
                     for i in range(n)])
    shared = _design([i % 12 for i in range(n)], pits)
    assert shared.shared and shared.rho > 0.15 and shared.deff > 2
    # the same seeds with independent PIT values: the bound stays small
    calm = _design([i % 12 for i in range(n)], rng.random((n, length)))
    assert calm.rho_upper < 0.1 and calm.deff < shared.deff
    # every record greedy where sampling was asked: PIT values all low, none shared; read
    # against ½ alone their products were taken for one stream that hid the fault (issue 28)
    greedy = _design([i % 12 for i in range(n)], 0.3 * rng.random((n, length)))
    assert greedy.rho_upper < 0.05 and greedy.deff < 1.5
