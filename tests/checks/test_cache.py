"""Cache state: outputs after a prefix-cache hit against those after a miss (the cache check), and
``usage.cached_tokens`` itself (the usage check).

The servers are ``hf:builtin?prefix_cache=on`` (vLLM's block-wise reuse, correct) and the
``prefix-cache-stale`` fault (a lookup keyed on the first block, restoring another prompt's keys
and values). Each conversation is asked greedy, then sampled: the second request repeats the
first's prompt and hits. The cache check's false-failure rate on a correct cache is its share
of α (0.02 × 0.01 = 2e-4 a run); a correct cache's hits differ from its misses by float-sum order
alone (log-prob |Δ| within 1e-6 here).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from servecheck.checks.cache import CAUSE
from servecheck.checks.cache import run as run_cache
from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.options import CheckOptions
from servecheck.checks.usage import run as usage
from servecheck.formats.records import ResponseRecord, Serving, Timing
from servecheck.formats.tools import Usage
from servecheck.reference.model import Reference


@pytest.fixture(scope="module")
def requests(long_requests) -> list:
    return long_requests(seed=5, temperatures=(0.0, 1.0))


def _cache(records: list, ref: Reference):
    return run_cache(CheckContext(records, ref, CheckOptions(numerics="fp32")))[0]


@pytest.mark.slow
def test_a_correct_prefix_cache_passes(serve, requests, ref: Reference) -> None:
    records = serve("hf:builtin?prefix_cache=on", requests)
    hits = [r for r in records if r.usage.cached_tokens]
    assert len(hits) >= len(records) // 2 - 2 and all(r.serving.prefix_caching for r in records)
    r = _cache(records, ref)
    assert r.verdict == "pass", [t.describe() for t in r.details.tests()]
    assert r.details.sides["hits"].served_mean < 1e-5
    [u] = usage(CheckContext(records, ref))
    assert u.verdict == "pass" and u.details.cached is None


@pytest.mark.slow
def test_a_stale_prefix_cache_fails_named(serve, requests, ref: Reference) -> None:
    records = serve("hf:builtin?fault=prefix-cache-stale", requests)
    r = _cache(records, ref)
    assert r.verdict == "fail" and r.summary == CAUSE and r.details.likely_cause() == CAUSE
    assert r.details.sides["misses"].mismatches == 0  # the misses are a correct server's
    hits = {rec.id for rec in records if rec.usage.cached_tokens}
    named = [f for f in r.findings if f.record in hits]
    assert named and all(f.message.startswith("after a hit of ") for f in named)


def test_hits_and_misses_need_cached_tokens(lite_records, ref: Reference) -> None:
    r = _cache(lite_records[:4], ref)
    assert r.verdict == "skipped" and "no record reports usage.cached_tokens" in r.summary
    records = [_with(x, cached=0) for x in lite_records[:4]]
    r = _cache(records, ref)
    assert r.verdict == "skipped" and "none of the 4 records" in r.summary


START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _with(record: ResponseRecord, cached: int | None = None, at: float | None = None,
          caching: bool | None = None) -> ResponseRecord:
    """The record with its usage's cached_tokens, a start ``at`` seconds into the run (1 s
    long), and what it says of prefix caching."""
    usage = (record.usage or Usage()).model_copy(update={"cached_tokens": cached})
    timing = Timing(started_at=(START + timedelta(seconds=at)).isoformat(), latency_s=1.0) \
        if at is not None else record.timing
    serving = Serving(prefix_caching=caching) if caching is not None else record.serving
    name = f"{record.id}@{at}" if at is not None else record.id
    return record.model_copy(update={"usage": usage, "timing": timing, "serving": serving,
                                     "id": name})


def _distinct(records: list, n: int) -> list[ResponseRecord]:
    """The first ``n`` records of distinct prompts."""
    seen: dict[tuple[int, ...], ResponseRecord] = {}
    for r in records:
        seen.setdefault(tuple(r.prompt_token_ids), r)
    return list(seen.values())[:n]


def _usage(records: list, ref: Reference):
    [r] = usage(CheckContext(records, ref))
    return r


def test_more_cached_tokens_than_prompt_tokens_fails(lite_records, ref: Reference) -> None:
    a, b = lite_records[:2]
    r = _usage([_with(a, cached=a.usage.prompt_tokens + 1), _with(b, cached=0)], ref)
    assert r.verdict == "fail" and r.details.kinds == {"cached_tokens": 1}
    assert r.findings[0].message == (f"cached_tokens {a.usage.prompt_tokens + 1} > "
                                     f"{a.usage.prompt_tokens} prompt tokens")


def test_a_repeat_right_after_its_prompt_reported_as_a_miss_fails(lite_records,
                                                                  ref: Reference) -> None:
    """Two prompts each asked twice in a row; the first repeat hits (so one client's repeats
    reach one cache, and prompts this short are cached), the second reports 0."""
    a, b = _distinct(lite_records, 2)
    records = [_with(a, 0, 0), _with(a, 16, 2), _with(b, 0, 4), _with(b, 0, 6)]
    r = _usage(records, ref)
    assert r.verdict == "fail" and r.details.kinds == {"cached_tokens": 1}
    [f] = r.findings
    assert f.record == records[3].id
    assert f.message.startswith("cached_tokens reported as 0 while the cache hits")


def test_a_miss_other_requests_could_explain_is_a_note(lite_records, ref: Reference) -> None:
    a, b, c = _distinct(lite_records, 3)
    # another request between the prompt and its repeat could have evicted it
    records = [_with(a, 0, 0), _with(a, 16, 2), _with(b, 0, 4), _with(c, 0, 6), _with(b, 0, 8)]
    r = _usage(records, ref)
    assert r.verdict == "pass" and r.details.cached.startswith(
        "1 record(s) repeat an earlier prompt with cached_tokens 0")
    assert r.details.cached in r.summary
    # the record says prefix caching was off
    records = [_with(a, 0, 0), _with(a, 16, 2), _with(b, 0, 4), _with(b, 0, 6, caching=False)]
    assert _usage(records, ref).verdict == "pass"
    # no repeat right after its prompt ever hit: one client's repeats may reach other caches
    records = [_with(a, 0, 0), _with(b, 0, 2), _with(a, 16, 4), _with(b, 0, 6), _with(b, 0, 8)]
    assert _usage(records, ref).verdict == "pass"
    # overlapping requests: the repeat started before its prompt's request ended
    records = [_with(a, 0, 0), _with(a, 16, 2), _with(b, 0, 4), _with(b, 0, 4.5)]
    assert _usage(records, ref).verdict == "pass"


def test_a_set_without_hits_or_cached_tokens_says_so(lite_records, ref: Reference) -> None:
    a, b = _distinct(lite_records, 2)
    r = _usage([_with(a, 0, 0), _with(a, 0, 2), _with(b, 0, 4)], ref)
    assert r.verdict == "pass" and r.details.cached == \
        "no record reports a prefix-cache hit (cached_tokens 0 throughout)"
    assert r.details.cached in r.summary
    r = _usage([a, b], ref)
    assert r.verdict == "pass" and r.details.cached.startswith("cached_tokens not reported")
    assert "cached_tokens" not in r.summary  # said in the details, not on every table row
