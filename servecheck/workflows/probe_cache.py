"""The prefix-cache probe: families of requests that share a long prefix, sent cold, then warm.

Wrong tokens after a cache hit, damage that grows with the restored region, ``cached_tokens``
reported as 0 while the cache hits: none of it shows in a file of unrelated requests. Each
family's prefix starts with words drawn afresh for this probe, so its first request is cold on
any server; its exact repeat and a sibling that shares the prefix and ends otherwise are then
warm. All greedy, sent one at a time (a cache hit needs the first request finished). The repeat
must give the cold answer (a near-tie aside), every answer must pass ``check`` (the cache check
compares hits with misses there), and the counts must be what a cache that works reports.
"""

from __future__ import annotations

import random

from servecheck.checks.core.options import CheckOptions
from servecheck.checks.core.results import CheckResult, Finding, NoDetails
from servecheck.collect.targets import Target
from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.parameters import Parameters
from servecheck.formats.prompts import Request
from servecheck.formats.records import ResponseRecord
from servecheck.reference.model import Reference
from servecheck.workflows.check import check
from servecheck.workflows.divergence import divergences
from servecheck.workflows.long_requests import long_requests

__all__ = ["prefix_cache"]

NAME = "prefix cache"
FAMILIES = 3
SIBLING_END = " Now tell me a story about the fox."


def _cached(r: ResponseRecord) -> int | None:
    return r.usage.cached_tokens if r.usage else None


def families(ref: Reference, n: int, max_tokens: int, rng: random.Random
             ) -> tuple[list[Request], list[Request], list[Request]]:
    """(cold, repeats, siblings): a long prompt of the reference's own long set behind words
    drawn from ``rng``, so no earlier request shares even its first block."""
    base = [r for r in long_requests(ref, max_tokens=max_tokens)
            if r.parameters.greedy]
    text = base[len(base) // 2].conversation.contents[-1].content  # about twice the window
    words = sorted({w.strip(".,?!").lower() for w in text.split() if w.isalpha()})
    cold, repeats, siblings = [], [], []
    for f in range(n):
        nonce = " ".join(rng.choice(words) for _ in range(6)).capitalize()
        user = f"{nonce}. {text}"
        p = Parameters(temperature=0.0, max_tokens=max_tokens)
        one = Conversation(contents=[Message(role="user", content=user)])
        sib = Conversation(contents=[Message(role="user", content=user + SIBLING_END)])
        cold.append(Request(f"cache-{f}-cold", one, p))
        repeats.append(Request(f"cache-{f}-repeat", one, p))
        siblings.append(Request(f"cache-{f}-sibling", sib, p))
    return cold, repeats, siblings


def _counts(cold: list[ResponseRecord], warm: list[ResponseRecord],
            repeats: list[ResponseRecord]) -> tuple[list[str], str]:
    """Findings about ``cached_tokens`` itself, and a sentence on what the counts showed."""
    told = [c for c in map(_cached, cold + warm) if c is not None]
    if not told:
        return [], ("the server reports no cached_tokens (vLLM: --enable-prompt-tokens-details); "
                    "the answers were still compared")
    bad = [f"{r.id}: {_cached(r)} cached tokens on a cold request (its first block was new)"
           for r in cold if (_cached(r) or 0) > 0]
    hits = [r for r in warm if (_cached(r) or 0) > 0]
    if hits:
        bad += [f"{r.id}: cached_tokens 0 on an exact repeat while the server reports hits "
                f"elsewhere (the cache hits, the count says it did not)"
                for r in repeats if _cached(r) == 0]
        return bad, f"{len(hits)}/{len(warm)} warm requests report cached tokens"
    return bad, (f"no warm request reports cached tokens ({len(warm)} sent): prefix caching is "
                 "off, or its count is not reported")


async def prefix_cache(target: Target, ref: Reference, max_tokens: int, numerics: str,
                       alpha: float, send, rng: random.Random | None = None) -> CheckResult:
    rng = rng or random.Random()  # fresh words each probe: cold on a server that ran one before
    cold_q, repeat_q, sibling_q = families(ref, FAMILIES, max_tokens, rng)
    cold = await send(target, cold_q, 1)
    repeats = await send(target, repeat_q, 1)
    siblings = await send(target, sibling_q, 1)
    run = check(cold + repeats + siblings, CheckOptions(ref.spec, numerics=numerics, alpha=alpha),
                reference=ref)
    count_findings, counted = _counts(cold, repeats + siblings, repeats)
    evidence = [f"{d.second.id}: differs from its cold answer at token {d.token}, "
                f"{d.margin:.3f} logits below the reference argmax"
                + (" (a near-tie: numerics)" if d.tie else "")
                for d in divergences(run.context, list(zip(cold, repeats, strict=True)))]
    real = [e for e in evidence if not e.endswith("(a near-tie: numerics)")]
    failures = run.digest.failures
    evidence = count_findings + real + [f"{f.check}: {f.cause}" for f in failures] + \
        [e for e in evidence if e not in real]
    verdict = "fail" if count_findings or real or failures else "pass"
    first = (failures[0].cause if failures else real[0] if real
             else count_findings[0] if count_findings else "every warm answer as the cold one")
    return CheckResult(NAME, verdict, f"{FAMILIES} prefix families, cold then warm; {counted}; "
                       f"{first}", NoDetails(), [Finding(NAME, e) for e in evidence])
