"""Usage check: the server's ``usage`` counts against the tokens it was sent and served.

``prompt_tokens`` must be the length of the prompt the server conditioned on, and
``completion_tokens`` the number of tokens it generated: the end token included or not, as the
server's convention is (``checks.core.end_counting``), and up to the tokens of the stop string more
for an output cut at one, which engines generate and then cut. With the server's own token ids
the counts are exact, record by record. Text-only records know their tokens only as the
reference's tokenization of the text, which a sampler may have split otherwise, so there a
server fails only when most records disagree by the same amount: a systematic miscount, never a
record whose tokens the text hides. A reported ``reasoning_tokens`` of 0 for an output that
thinks fails too (a bug vLLM and SGLang shipped).

``cached_tokens`` (``prompt_tokens_details``: prompt tokens whose keys and values came from the
prefix cache) is counted too. More cached tokens than prompt tokens fails. Where the set shows
the cache hitting, a record that repeats an earlier prompt and reports 0 fails only where
nothing else explains a miss (``unexplained_misses``): the repeat came right after the
earlier request ended, with no request between that could have evicted it; the hits show the
cache keeps prompts as short as this one; and other repeats right after their prompt did hit,
so one client's repeats reach one cache (a router spreading them over replicas with caches of
their own misses on every such repeat). Any other repeat reported as a miss is a note, and so
is a set with no hit at all or no ``cached_tokens``: what the records could not show.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.registry import check
from servecheck.checks.core.results import CheckResult, Details, Finding
from servecheck.checks.stops import ended_on_stop
from servecheck.formats.records import ResponseRecord

NAME = "usage"
SYSTEMATIC = 0.5
"""Text-only: the share of records off by one same amount that makes a miscount systematic."""


@dataclass(frozen=True)
class UsageDetails(Details):
    records: int
    exact: int
    """Records whose counts were compared against the server's own token ids."""
    kinds: dict[str, int] = field(default_factory=dict)
    completion_offsets: dict[str, int] = field(default_factory=dict)
    """Text-only records: reported − counted completion tokens → how many records."""
    cached: str | None = None
    """What the records say of the prefix cache (``cached_tokens``), where not a failure."""

    def effect(self) -> str:
        return f"{sum(self.kinds.values())}/{self.records} counts wrong"


def _offset_text(offset: int) -> str:
    return f"{offset:+d}" if offset else "0"


def _span(r: ResponseRecord) -> tuple[datetime, datetime] | None:
    """When the request started and ended (UTC), where the record says."""
    if r.timing is None:
        return None
    start = datetime.fromisoformat(r.timing.started_at.replace("Z", "+00:00"))
    return start, start + timedelta(seconds=r.timing.latency_s)


def unexplained_misses(ctx: CheckContext, idx: list[int]) -> tuple[list[int], list[int]]:
    """Records reporting cached_tokens 0 that repeat an earlier record's prompt (same ids, the
    earlier one ended before this one started): (the ones nothing but a miscount explains,
    the others). Only where some record reports a hit."""
    rows = sorted(((span, i) for i in idx if (span := _span(ctx.records[i])) is not None),
                  key=lambda row: row[0][0])
    cached = {i: ctx.records[i].usage.cached_tokens for _, i in rows}  # type: ignore[union-attr]
    hits = [c for c in cached.values() if c]
    if not hits:
        return [], []
    prompts = {i: tuple(ctx.prompt_ids(i)[0]) for _, i in rows}
    adjacent_hit, zero, unexplained = False, [], []
    # per prompt, where its records stand in ``rows``: each record looks back only along its
    # own prompt's runs (a scan of every earlier record was quadratic: hours at 100k records)
    runs: dict[tuple[int, ...], list[int]] = {}
    for k, ((start, _), i) in enumerate(rows):
        same = runs.setdefault(prompts[i], [])
        # the latest earlier run of this prompt that had ended before this one started
        last = next((rows[m][1] for m in reversed(same)
                     if rows[m][0][1] <= start and rows[m][0][0] < start), None)
        same.append(k)
        if last is None or cached[i] is None:
            continue
        # nothing started between the prompt's last run and this one: nothing could evict it
        alone = rows[k - 1][1] == last
        adjacent_hit |= alone and cached[i] > 0
        if cached[i] == 0:
            serving = ctx.records[i].serving
            short = len(prompts[i]) <= min(hits)  # the cache may keep only whole blocks
            fair = alone and not short and not (serving and serving.prefix_caching is False)
            (unexplained if fair else zero).append(i)
    return (unexplained, zero) if adjacent_hit else ([], unexplained + zero)


def check_cached(ctx: CheckContext, idx: list[int], kinds: Counter[str],
                 findings: list[Finding]) -> str | None:
    """The cached_tokens rules, adding to ``kinds`` and ``findings``; a note where nothing
    fails but the records could not show what a person would expect them to."""
    reported = [i for i in idx if ctx.records[i].usage.cached_tokens is not None]  # type: ignore[union-attr]
    if not reported:
        return "cached_tokens not reported (prompt_tokens_details): prefix caching not checked"
    for i in reported:
        u = ctx.records[i].usage
        prompt = u.prompt_tokens if u.prompt_tokens is not None else len(ctx.prompt_ids(i)[0])
        if u.cached_tokens > prompt:
            kinds["cached_tokens"] += 1
            findings.append(Finding(ctx.labels[i], f"cached_tokens {u.cached_tokens} > "
                                    f"{prompt} prompt tokens", 1.0))
    unexplained, others = unexplained_misses(ctx, reported)
    for i in unexplained:
        kinds["cached_tokens"] += 1
        findings.append(Finding(ctx.labels[i], "cached_tokens reported as 0 while the cache "
                                "hits: the record repeats the prompt that ran just before it, "
                                "with no request between", 1.0))
    if not any(ctx.records[i].usage.cached_tokens for i in reported):  # type: ignore[union-attr]
        return "no record reports a prefix-cache hit (cached_tokens 0 throughout)"
    if others:
        return (f"{len(others)} record(s) repeat an earlier prompt with cached_tokens 0, where "
                f"other requests between, a prompt shorter than the cache's blocks or another "
                f"replica could explain the miss")
    return None


@check(NAME, order=35,
       catches="usage counts that disagree with the tokens sent and served",
       needs="answers with usage counts")
def run(ctx: CheckContext) -> list[CheckResult]:
    idx = [i for i, r in enumerate(ctx.records) if r.usage is not None]
    if not idx:
        return [CheckResult(NAME, "skipped", "no record holds the server's usage counts")]
    kinds: Counter[str] = Counter()
    findings: list[Finding] = []
    offsets: Counter[int] = Counter()
    exact = 0
    uncounted_end = not ctx.end_counting.usage_counts_end
    for i in idx:
        r = ctx.records[i]
        u = r.usage
        assert u is not None
        prompt, _ = ctx.prompt_ids(i)
        if u.prompt_tokens is not None and u.prompt_tokens != len(prompt):
            kinds["prompt_tokens"] += 1
            findings.append(Finding(ctx.labels[i], f"prompt_tokens {u.prompt_tokens} ≠ {len(prompt)} "
                                    f"tokens in the prompt ({_offset_text(u.prompt_tokens - len(prompt))})",
                                    1.0))
        if u.completion_tokens is not None:
            served, _ = ctx.output_ids(i)
            slack = len(ctx.ref.encode(max(r.parameters.stop or [""], key=len))) + 1 \
                if ended_on_stop(r, ctx.ref.end_markers) else 0
            counted = len(served) - (uncounted_end and ctx.ends_on_end_token(i))
            off = u.completion_tokens - counted
            if r.output_token_ids is not None:
                exact += 1
                if not 0 <= off <= slack:
                    kinds["completion_tokens"] += 1
                    findings.append(Finding(ctx.labels[i], f"completion_tokens {u.completion_tokens} "
                                            f"≠ {len(served)} tokens served ({_offset_text(off)})",
                                            1.0))
            elif not slack:
                offsets[off] += 1
        if u.reasoning_tokens == 0 and (ctx.outputs.parsed(i).reasoning or "").strip():
            kinds["reasoning_tokens"] += 1
            findings.append(Finding(ctx.labels[i], "reasoning_tokens 0 for an output that thinks",
                                    1.0))
    cached = check_cached(ctx, idx, kinds, findings)
    text_only = sum(offsets.values())
    if text_only:
        common, count = offsets.most_common(1)[0]
        if common != 0 and count >= SYSTEMATIC * text_only:
            kinds["completion_tokens"] += count
            findings.append(Finding("text-only records", f"completion_tokens is {_offset_text(common)} "
                                    f"against the tokens of the text in {count}/{text_only} "
                                    f"records: a systematic miscount", 1.0))
    details = UsageDetails(len(idx), exact, dict(kinds),
                           {_offset_text(k): v for k, v in sorted(offsets.items())}, cached)
    # a set without cached_tokens says so in its details alone, not on every row of the table
    shown = cached if any(ctx.records[i].usage.cached_tokens is not None  # type: ignore[union-attr]
                          for i in idx) else None
    end_note = "; ".join(n for n in (ctx.end_counting.describe("usage"), shown) if n)
    end_note = f"; {end_note}" if end_note else ""
    if findings:
        return [CheckResult(NAME, "fail", "usage counts wrong: " + ", ".join(
            f"{k} ({n})" for k, n in kinds.most_common()) + end_note, details, findings)]
    return [CheckResult(NAME, "pass", f"{len(idx)} records: usage equals the tokens sent and "
                        f"served ({exact} against the server's ids){end_note}", details)]
