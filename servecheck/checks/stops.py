"""Stop-string check: OpenAI semantics, the text ends before the first occurrence of any stop.

A server that ignores ``stop`` generates past it; one that matches per token misses a stop string
spanning tokens; one that keeps it leaves the string at the end of the text. Each is the server's
own code, so any record that breaks the rule fails. An output cut at a stop string ends without
the end-of-turn marker and with ``finish_reason`` ``stop``: the termination check leaves such
records to this one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.registry import check
from servecheck.checks.core.results import CheckResult, Details, Finding
from servecheck.checks.template import show
from servecheck.formats.records import ResponseRecord

NAME = "stop strings"


@dataclass(frozen=True)
class StopDetails(Details):
    records: int
    stopped: int
    """Records that ended on a stop string."""
    kinds: dict[str, int] = field(default_factory=dict)

    def effect(self) -> str:
        return f"{sum(self.kinds.values())}/{self.records} records past a stop string"


def ended_on_stop(r: ResponseRecord, end_markers: list[str]) -> bool:
    """A ``stop`` finish with no end marker: the text was cut at a stop string."""
    return bool(r.parameters.stop) and r.finish_reason == "stop" and \
        not any(m in r.output for m in end_markers)


def problem(r: ResponseRecord, end_markers: list[str]) -> tuple[str, str] | None:
    text = r.output
    for m in end_markers:
        if m in text:
            text = text[: text.find(m)]
    hits = sorted((text.find(s), s) for s in r.parameters.stop or [] if s in text)
    if not hits:
        return None
    at, stop = hits[0]
    if at + len(stop) == len(text):
        return "stop string kept", (f"the text ends with the stop string {stop!r}: it must end "
                                    f"before it")
    return "generated past a stop", (f"{len(text) - at} characters from the stop string {stop!r} "
                                     f"on: {show(text, at)}")


@check(NAME, order=34,
       catches="stop strings applied wrongly: text past a stop, or the stop string kept",
       needs="requests with stop strings")
def run(ctx: CheckContext) -> list[CheckResult]:
    idx = [i for i, r in enumerate(ctx.records) if r.parameters.stop]
    if not idx:
        return [CheckResult(NAME, "skipped", "no request set stop strings")]
    ends = ctx.ref.end_markers
    kinds: Counter[str] = Counter()
    findings = []
    for i in idx:
        found = problem(ctx.records[i], ends)
        if found:
            kinds[found[0]] += 1
            findings.append(Finding(ctx.labels[i], f"{found[0]}: {found[1]}", 1.0))
    stopped = sum(ended_on_stop(ctx.records[i], ends) for i in idx)
    details = StopDetails(len(idx), stopped, dict(kinds))
    if findings:
        return [CheckResult(NAME, "fail", f"{len(findings)}/{len(idx)} records: " +
                            ", ".join(f"{k} ({n})" for k, n in kinds.most_common()), details,
                            findings, per_record=True)]
    return [CheckResult(NAME, "pass", f"{len(idx)} records with stop strings end before "
                        f"them ({stopped} cut at one)", details, per_record=True)]
