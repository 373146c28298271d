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
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.registry import check
from servecheck.checks.core.results import CheckResult, Details, Finding
from servecheck.checks.stops import ended_on_stop

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

    def effect(self) -> str:
        return f"{sum(self.kinds.values())}/{self.records} counts wrong"


def _offset_text(offset: int) -> str:
    return f"{offset:+d}" if offset else "0"


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
    text_only = sum(offsets.values())
    if text_only:
        common, count = offsets.most_common(1)[0]
        if common != 0 and count >= SYSTEMATIC * text_only:
            kinds["completion_tokens"] += count
            findings.append(Finding("text-only records", f"completion_tokens is {_offset_text(common)} "
                                    f"against the tokens of the text in {count}/{text_only} "
                                    f"records: a systematic miscount", 1.0))
    details = UsageDetails(len(idx), exact, dict(kinds),
                           {_offset_text(k): v for k, v in sorted(offsets.items())})
    end_note = ctx.end_counting.describe("usage")
    end_note = f"; {end_note}" if end_note else ""
    if findings:
        return [CheckResult(NAME, "fail", "usage counts wrong: " + ", ".join(
            f"{k} ({n})" for k, n in kinds.most_common()) + end_note, details, findings)]
    return [CheckResult(NAME, "pass", f"{len(idx)} records: usage equals the tokens sent and "
                        f"served ({exact} against the server's ids){end_note}", details)]
