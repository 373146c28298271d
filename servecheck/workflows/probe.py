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
- long context: the long prompts (0.9× to 4× the sliding window) checked as ``check`` does,
  the position-resolved check included (``probe_context.py``): a window off by one or ignored,
  keys and values rounded to FP8.
- prefix cache: families sharing a long prefix, cold then warm (``probe_cache.py``): wrong tokens
  after a hit, ``cached_tokens`` that contradicts what was sent.
- stream: the same seeded requests over the streaming and the unary path give one answer (text,
  tool calls, finish reason; ``stream_parity.py``), for Triton and OpenAI targets.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.options import CheckOptions
from servecheck.checks.core.results import (
    CheckResult,
    Details,
    Finding,
    NoDetails,
    Verdict,
    overall,
)
from servecheck.checks.core.seed_tests import group_test
from servecheck.checks.seeds import SeedDetails
from servecheck.checks.template import first_difference
from servecheck.collect.collector import CollectSummary, ask
from servecheck.collect.targets import Target, open_target
from servecheck.errors import EXIT_FAIL, EXIT_PASS, InputError, TargetError
from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.parameters import Parameters
from servecheck.formats.prompts import Request, expand
from servecheck.formats.records import ResponseRecord
from servecheck.reference.model import Reference
from servecheck.report.files import write_text
from servecheck.report.summary import finite
from servecheck.report.table import STYLE
from servecheck.report.terminal import markup
from servecheck.workflows.divergence import divergences
from servecheck.workflows.probe_cache import prefix_cache
from servecheck.workflows.probe_context import long_context
from servecheck.workflows.stream_parity import stream_vs_unary

PROMPTS = ["Tell me a story about the fox.", "Name a colour.", "What does the cat say?",
           "Tell me about the owl.", "Count from 3 to 8.", "Where does the frog live?",
           "What does the dog like?", "Tell me a story about the bird."]


def _result(name: str, verdict: Verdict, summary: str, evidence: list[str] | None = None,
            details: Details | None = None) -> CheckResult:
    """A probe's verdict, in the checks' shape: each line of evidence is a finding of the probe."""
    return CheckResult(name, verdict, summary, details or NoDetails(),
                       [Finding(name, e) for e in evidence or []])


def conversations(texts: list[str]) -> list[Conversation]:
    return [Conversation(contents=[Message(role="user", content=t)]) for t in texts]


CONVERSATIONS = conversations(PROMPTS)


class _Retrying:
    """The target, each request retried on a transient failure as ``generate`` retries it
    (``collector.ask``): a keep-alive connection the server closed mid-write is no probe's
    verdict."""

    def __init__(self, target: Target) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)

    async def generate(self, request: Request) -> ResponseRecord | list[ResponseRecord]:
        return await ask(self._target, request, PROBE_RETRIES, CollectSummary(1, 0))


PROBE_RETRIES = 3


def probe_request(rid: str, conv: Conversation, **params: Any) -> Request:
    return Request(rid, conv, Parameters(**params))


async def _send(target: Target, requests: list[Request], concurrency: int) -> list[ResponseRecord]:
    gate = asyncio.Semaphore(concurrency)

    async def one(r: Request) -> ResponseRecord:
        async with gate:
            return await target.generate(r)

    return list(await asyncio.gather(*(one(r) for r in requests)))


async def repeatability(target: Target, convs: list[Conversation], repeats: int,
                        max_tokens: int) -> CheckResult:
    base = probe_request("rep", convs[0], temperature=1.0, seed=1234, max_tokens=max_tokens)
    alone = [await target.generate(replace(base, id=f"rep-{k}")) for k in range(repeats)]
    traffic = [probe_request(f"other-{k}", convs[(1 + k) % len(convs)], temperature=1.0, seed=k,
                        max_tokens=max_tokens) for k in range(3 * repeats)]
    mixed = [replace(base, id=f"rep-busy-{k}") for k in range(repeats)]
    answers = await _send(target, [x for pair in zip(mixed, traffic[::3], traffic[1::3],
                                                     traffic[2::3], strict=True) for x in pair],
                          len(mixed) + len(traffic))
    busy = [a for a in answers if a.id and a.id.startswith("rep-busy")]
    reference = alone[0].output
    evidence = [f"{label} copy {k}: differs from the first at character "
                f"{first_difference(reference, r.output)}"
                for label, group in (("sequential", alone), ("under traffic", busy))
                for k, r in enumerate(group) if r.output != reference]
    n = len(alone) + len(busy)
    verdict = "fail" if evidence else "pass"
    return _result("repeatability", verdict, f"{n - len(evidence)}/{n} copies of one seeded "
                       f"request equal the first ({repeats} sequential, {repeats} under traffic)",
                       evidence)


def _short(text: str | None, width: int = 40, at: int = 0) -> str:
    """``text`` quoted, at most ``width`` characters of it, from about ``at`` on (where it first
    differs from another text: the part that tells them apart)."""
    text = text or ""
    start = max(0, at - width // 4) if at >= width - 1 else 0
    part = text[start:start + width]
    return repr(("…" if start else "") + part + ("…" if start + width < len(text) else ""))


def _system(conv: Conversation) -> str | None:
    first = conv.contents[0]
    return first.content if first.role == "system" else None


def _apart(conv: Conversation, twins: list[Conversation]) -> str | None:
    """What tells ``conv`` from ``twins``, which end in the same user text: the system prompt,
    else the first turn that differs, else the tools or template variables sent with it (None:
    nothing, the same conversation)."""
    def text(part: str | None, others: list[str | None]) -> str:
        at = min((first_difference(part or "", o or "") for o in others), default=0)
        return _short(part, 30, at)

    mine = _system(conv)
    if any(_system(t) != mine for t in twins):
        return "no system prompt" if mine is None else \
            f"system {text(mine, [_system(t) for t in twins])}"
    for k, m in enumerate(conv.contents):
        others = [t.contents[k] for t in twins if k < len(t.contents)]
        if len(others) < len(twins) or any(o != m for o in others):
            return f"turn {k + 1} {m.role} {text(m.content, [o.content for o in others])}"
    if any(t.tools != conv.tools for t in twins):
        names = [str(t.get("function", {}).get("name", "?")) for t in conv.tools or []]
        return f"tools {', '.join(names)}" if names else "no tools"
    if any(t.chat_template_kwargs != conv.chat_template_kwargs for t in twins):
        return f"template variables {conv.chat_template_kwargs or {}}"
    return None


def group_names(convs: list[Conversation]) -> list[str]:
    """A name per conversation that tells it from the others: its last user text, shortened,
    and where others end in the same text, what sets it apart (``_apart``: the system prompt,
    most often). Two requests of a prompts file that differ only in their system prompt would
    otherwise read as one."""
    base = [_short(c.contents[-1].content) for c in convs]
    names = []
    for i, c in enumerate(convs):
        twins = [d for j, d in enumerate(convs) if j != i and base[j] == base[i]]
        apart = _apart(c, twins) if twins else None
        names.append(f"{base[i]} ({apart})" if apart else base[i])
    if len(set(names)) < len(names):  # the parts that differ lie past what is shown
        names = [f"{name} [prompt {i + 1}]" for i, name in enumerate(names)]
    return names


async def seeds(target: Target, ref: Reference, convs: list[Conversation], n: int,
                max_tokens: int, alpha: float) -> CheckResult:
    groups = []
    for j, prompt in enumerate(convs[:2]):
        requests = [probe_request(f"seed-{j}-{s}", prompt, temperature=1.0, seed=s,
                             max_tokens=max_tokens) for s in range(n)]
        groups.append(await _send(target, requests, 1))
    ctx = CheckContext([r for g in groups for r in g], ref, CheckOptions(ref.spec, alpha=alpha))
    names = group_names(convs[:2])
    results = [replace(group_test(ctx, g), label=f"{name} T={g[0].parameters.temperature}")
               for name, g in zip(names, groups, strict=True)]
    bad = [r for r in results if r.p_value * len(results) < alpha]
    evidence = [f"{r.label}: {r.distinct} distinct texts over {r.seeds} seeds; the most common "
                f"appears {r.most_common}×, reference probability {r.p_text:.2e}, "
                f"p = {r.p_value:.1e}" for r in results]
    return _result("seeds", "fail" if bad else "pass",
                       f"{len(bad)}/{len(results)} prompt(s) repeat one text across seeds beyond "
                       f"chance (α = {alpha}, Bonferroni)", evidence,
                       SeedDetails(results, alpha))


async def batch_invariance(target: Target, ref: Reference, convs: list[Conversation],
                           levels: list[int], max_tokens: int, numerics: str) -> CheckResult:
    requests = [probe_request(f"greedy-{k}", c, temperature=0, max_tokens=max_tokens)
                for k, c in enumerate(convs)]
    alone = [await target.generate(r) for r in requests]
    ctx = CheckContext([], ref, CheckOptions(ref.spec, numerics=numerics))
    tol = ctx.tolerances.logit
    pairs = [(level, pair) for level in levels
             for pair in zip(alone, await _send(target, requests, level), strict=True)]
    parted = {id(d.second): d for d in divergences(ctx, [p for _, p in pairs])}
    bugs, ties = [], []
    for level, (a, b) in pairs:
        d = parted.get(id(b))
        if d is None:
            continue
        note = (f"load {level}, {a.id}: token {d.token} differs, served token's logit is "
                f"{d.margin:.3f} below the reference argmax")
        (ties if d.tie else bugs).append(note)
    n = len(requests) * len(levels)
    return _result("batch invariance", "fail" if bugs else "pass",
                       f"{n - len(bugs) - len(ties)}/{n} greedy outputs unchanged under load "
                       f"{levels}; {len(ties)} near-tie divergence(s) (≤ {tol} logits, numerics), "
                       f"{len(bugs)} real", bugs + ties)


async def run_probes(spec: str, ref: Reference, convs: list[Conversation] | None = None,
                     repeats: int = 4, n_seeds: int = 8, levels: tuple[int, ...] = (4, 8),
                     max_tokens: int = 32, numerics: str = "bf16", alpha: float = 0.01
                     ) -> list[CheckResult]:
    convs = convs or CONVERSATIONS
    if len(convs) < 2:  # the seed probe needs two prompts: a built-in one other than the given
        convs = convs + [c for c in CONVERSATIONS if c not in convs]
    target = _Retrying(open_target(spec, reference=ref.spec))  # --reference: the served model
    try:
        return [await repeatability(target, convs, repeats, max_tokens),
                await seeds(target, ref, convs, n_seeds, max_tokens, alpha),
                await batch_invariance(target, ref, convs, list(levels), max_tokens, numerics),
                await long_context(target, ref, max_tokens, numerics, alpha, _send),
                await prefix_cache(target, ref, max_tokens, numerics, alpha, _send),
                await stream_vs_unary(spec, max_tokens, ref.spec)]
    finally:
        await target.aclose()
        target.close()


@dataclass(frozen=True)
class ProbeOptions:
    reference: str = "builtin"
    repeats: int = 4
    seeds: int = 8
    levels: tuple[int, ...] = (4, 8)
    max_tokens: int = 32
    numerics: str = "bf16"
    alpha: float = 0.01


def probe(spec: str, options: ProbeOptions | None = None, prompts: Path | None = None
          ) -> list[CheckResult]:
    """Every probe against the live server ``spec`` (the built-in prompts, or those of the
    prompts file ``prompts``); a target failing mid-probe is an ``InputError``."""
    options = options or ProbeOptions()
    convs = None
    if prompts:
        seen: dict[str, Conversation] = {}
        for r in expand(prompts):
            seen.setdefault(r.conversation.model_dump_json(), r.conversation)
        convs = list(seen.values())
    ref = Reference(options.reference)
    try:
        return asyncio.run(run_probes(spec, ref, convs, options.repeats, options.seeds,
                                      options.levels, options.max_tokens, options.numerics,
                                      options.alpha))
    except TargetError as e:
        raise InputError(f"the target failed during a probe: {e}", where=spec) from None


def run_probe(spec: str, options: ProbeOptions, console: Console, prompts: Path | None = None,
              json_out: Path | None = None) -> int:
    """The ``probe`` command: every probe against ``spec``, a table, the JSON, the exit code
    (``servecheck.errors``: 1 when a probe failed; a skipped probe does not change it)."""
    with console.status("probing the server…"):
        results = probe(spec, options, prompts)
    table = Table(title=f"servecheck probe: {markup(spec)}")
    for col in ("probe", "verdict", "evidence"):
        table.add_column(col)
    for r in results:  # verdicts as ``check`` prints them (``report.table``); lowercase in JSON
        lines = [r.summary] + [f"  {f.message}" for f in r.findings[:4]]
        table.add_row(markup(r.name), f"[{STYLE[r.verdict]}]{r.verdict.upper()}[/]",
                      "\n".join(markup(line) for line in lines))  # one line each, as written
    console.print(table)
    verdict = overall(results)
    console.print(f"verdict: [{STYLE[verdict]}]{verdict.upper()}[/]")
    if json_out:
        write_text(json_out, json.dumps(finite([r.to_json() for r in results]), indent=2,
                                        allow_nan=False) + "\n")
        console.print(f"written {markup(json_out)}")
    return EXIT_FAIL if any(r.verdict == "fail" for r in results) else EXIT_PASS
