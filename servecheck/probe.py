"""``servecheck probe``: determinism and seed probes against a live server.

What a single response cannot show, how responses relate to each other can: a seed ignored
(every request run with seed 0), greedy output that changes with load, a seed honoured on one
path and not another. Each probe sends a small purpose-built set and gives a verdict with
evidence:

- repeatability: one seeded, sampled request sent ``repeats`` times in a row, then as many times
  again while other traffic is in flight; every copy must equal the first. Deterministic check.
- seeds: the same request under ``seeds`` different seeds; the texts must not coincide more often
  than the reference allows (``seeds.py``, false alarms ≤ α).
- batch invariance: greedy requests sent one at a time, then all at once at each load level;
  the tokens must agree. A divergence where the served token is within the numerics tolerance
  of the reference argmax is a near-tie (numerics), reported but passed; any other is a bug.
- stream: the same seeded request over the streaming and the unary path gives one text
  (targets with both paths: Triton).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any

from servecheck.checks import NUMERICS
from servecheck.errors import TargetError
from servecheck.prompts import Request
from servecheck.records import Conversation, Message, Parameters, ResponseRecord
from servecheck.reference import Reference
from servecheck.scoring import ScoreItem, score
from servecheck.seeds import seed_test
from servecheck.targets import Target, open_target

PROMPTS = ["Tell me a story about the fox.", "Name a colour.", "What does the cat say?",
           "Tell me about the owl.", "Count from 3 to 8.", "Where does the frog live?",
           "What does the dog like?", "Tell me a story about the bird."]


@dataclass
class ProbeResult:
    name: str
    verdict: str
    summary: str
    evidence: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def conversations(texts: list[str]) -> list[Conversation]:
    return [Conversation(contents=[Message(role="user", content=t)]) for t in texts]


CONVERSATIONS = conversations(PROMPTS)


def _request(rid: str, conv: Conversation, **params: Any) -> Request:
    return Request(rid, conv, Parameters(**params))


async def _send(target: Target, requests: list[Request], concurrency: int) -> list[ResponseRecord]:
    gate = asyncio.Semaphore(concurrency)

    async def one(r: Request) -> ResponseRecord:
        async with gate:
            return await target.generate(r)

    return list(await asyncio.gather(*(one(r) for r in requests)))


def _first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


async def repeatability(target: Target, convs: list[Conversation], repeats: int,
                        max_tokens: int) -> ProbeResult:
    base = _request("rep", convs[0], temperature=1.0, seed=1234, max_tokens=max_tokens)
    alone = [await target.generate(replace(base, id=f"rep-{k}")) for k in range(repeats)]
    traffic = [_request(f"other-{k}", convs[(1 + k) % len(convs)], temperature=1.0, seed=k,
                        max_tokens=max_tokens) for k in range(3 * repeats)]
    mixed = [replace(base, id=f"rep-busy-{k}") for k in range(repeats)]
    answers = await _send(target, [x for pair in zip(mixed, traffic[::3], traffic[1::3],
                                                     traffic[2::3], strict=True) for x in pair],
                          len(mixed) + len(traffic))
    busy = [a for a in answers if a.id and a.id.startswith("rep-busy")]
    reference = alone[0].output
    evidence = [f"{label} copy {k}: differs from the first at character "
                f"{_first_difference(reference, r.output)}"
                for label, group in (("sequential", alone), ("under traffic", busy))
                for k, r in enumerate(group) if r.output != reference]
    n = len(alone) + len(busy)
    verdict = "fail" if evidence else "pass"
    return ProbeResult("repeatability", verdict, f"{n - len(evidence)}/{n} copies of one seeded "
                       f"request equal the first ({repeats} sequential, {repeats} under traffic)",
                       evidence)


async def seeds(target: Target, ref: Reference, convs: list[Conversation], n: int,
                max_tokens: int, alpha: float) -> ProbeResult:
    groups = []
    for j, prompt in enumerate(convs[:2]):
        requests = [_request(f"seed-{j}-{s}", prompt, temperature=1.0, seed=s,
                             max_tokens=max_tokens) for s in range(n)]
        groups.append(await _send(target, requests, 1))
    results = [seed_test(g, ref) for g in groups]
    bad = [r for r in results if r.p_value * len(results) < alpha]
    evidence = [f"{r.label}: {r.distinct} distinct texts over {r.seeds} seeds; the most common "
                f"appears {r.most_common}×, reference probability {r.p_text:.2e}, "
                f"p = {r.p_value:.1e}" for r in results]
    return ProbeResult("seeds", "fail" if bad else "pass",
                       f"{len(bad)}/{len(results)} prompt(s) repeat one text across seeds beyond "
                       f"chance (α = {alpha}, Bonferroni)", evidence,
                       {"groups": [r.__dict__ for r in results]})


async def batch_invariance(target: Target, ref: Reference, convs: list[Conversation],
                           levels: list[int], max_tokens: int, numerics: str) -> ProbeResult:
    requests = [_request(f"greedy-{k}", c, temperature=0, max_tokens=max_tokens)
                for k, c in enumerate(convs)]
    alone = [await target.generate(r) for r in requests]
    tol = NUMERICS[numerics].logit
    bugs, ties = [], []
    for level in levels:
        loaded = await _send(target, requests, level)
        for a, b in zip(alone, loaded, strict=True):
            if a.output == b.output:
                continue
            ids_a, ids_b = ref.encode(a.output), ref.encode(b.output)
            at = next((i for i, (x, y) in enumerate(zip(ids_a, ids_b, strict=False)) if x != y),
                      min(len(ids_a), len(ids_b)))
            prompt = ref.encode(a.input or ref.render(a.conversations))
            (s,) = score(ref, [ScoreItem(prompt, ids_b[: at + 1])])
            margin = float(s.margin[at]) if at < len(s) else 0.0
            note = (f"load {level}, {a.id}: token {at} differs, served token's logit is "
                    f"{margin:.3f} below the reference argmax")
            (ties if margin <= tol else bugs).append(note)
    n = len(requests) * len(levels)
    return ProbeResult("batch invariance", "fail" if bugs else "pass",
                       f"{n - len(bugs) - len(ties)}/{n} greedy outputs unchanged under load "
                       f"{levels}; {len(ties)} near-tie divergence(s) (≤ {tol} logits, numerics), "
                       f"{len(bugs)} real", bugs + ties)


async def stream_vs_unary(spec: str, max_tokens: int, reference: str | None = None
                          ) -> ProbeResult:
    if not spec.startswith("triton"):
        return ProbeResult("stream", "skipped", "the target has no separate streaming path")
    sep = "&" if "?" in spec else "?"
    request = _request("stream", CONVERSATIONS[0], temperature=1.0, seed=77,
                       max_tokens=max_tokens)
    texts: dict[str, str] = {}
    for name in ("0", "1"):
        target = open_target(f"{spec}{sep}stream={name}", reference=reference)
        try:
            texts[name] = (await target.generate(request)).output
        except TargetError as e:
            return ProbeResult("stream", "skipped", f"stream={name} not available: {e}")
        finally:
            await target.aclose()
    same = texts["0"] == texts["1"]
    return ProbeResult("stream", "pass" if same else "fail",
                       "stream and unary give the same text for one seed" if same else
                       f"stream and unary differ from character "
                       f"{_first_difference(texts['0'], texts['1'])} for the same seed")


async def run_probes(spec: str, ref: Reference, convs: list[Conversation] | None = None,
                     repeats: int = 4, n_seeds: int = 8, levels: tuple[int, ...] = (4, 8),
                     max_tokens: int = 32, numerics: str = "bf16", alpha: float = 0.01
                     ) -> list[ProbeResult]:
    convs = convs or CONVERSATIONS
    if len(convs) < 2:
        convs = convs + CONVERSATIONS
    target = open_target(spec, reference=ref.spec)  # the probe's --reference is the served model
    try:
        return [await repeatability(target, convs, repeats, max_tokens),
                await seeds(target, ref, convs, n_seeds, max_tokens, alpha),
                await batch_invariance(target, ref, convs, list(levels), max_tokens, numerics),
                await stream_vs_unary(spec, max_tokens, ref.spec)]
    finally:
        await target.aclose()
        target.close()
