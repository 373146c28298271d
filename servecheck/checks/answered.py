"""Records check: every request got an answer. Failed requests are not checked, so say so."""

from __future__ import annotations

from dataclasses import dataclass, field

from servecheck.checks.core.context import CheckContext, label
from servecheck.checks.core.registry import check
from servecheck.checks.core.results import CheckResult, Details, Finding
from servecheck.checks.core.structured import TEXT_ONLY_GRAMMAR

NAME = "records"


@dataclass(frozen=True)
class AnsweredDetails(Details):
    records: int
    errors: int
    left_out: dict[str, int] = field(default_factory=dict)
    """Records left out of the statistical checks, by the screening check that failed them."""

    def effect(self) -> str:
        return f"{self.errors}/{self.records} failed requests"


@check(NAME, order=10,
       catches="requests the server failed to answer")
def run(ctx: CheckContext) -> list[CheckResult]:
    failed = [(label(r, ctx.first_index + i), r.error) for i, r in enumerate(ctx.all_records) if r.error]
    n = len(ctx.all_records)
    counts = ctx.left_out_counts()
    details = AnsweredDetails(n, len(failed), counts)
    failing = {name: k for name, k in counts.items() if name != TEXT_ONLY_GRAMMAR}
    left = (f"; {len(ctx.left_out)} left out of the statistical checks" + (
        ", named where they fail (" + ", ".join(f"{name} {k}" for name, k in failing.items())
        + ")" if failing else "") + (
        f"; {counts[TEXT_ONLY_GRAMMAR]} decoded under a grammar without the server's token ids "
        f"(walked by the grammar check only)" if TEXT_ONLY_GRAMMAR in counts else "")) \
        if counts else ""
    if failed:
        return [CheckResult(NAME, "fail",
                            f"{len(failed)}/{n} requests failed and were not checked "
                            f"(rerun generate to retry them){left}", details,
                            [Finding(name, f"error: {e}", 1.0) for name, e in failed])]
    forced = (f"; {ctx.constrained} forced tool call(s) not checked: their raw text was "
              f"rebuilt from the parsed calls (no server token ids), not what the engine decoded "
              f"under its grammar; ask for log-probs or token ids") if ctx.constrained else ""
    return [CheckResult(NAME, "pass", f"{n}/{n} requests answered{forced}{left}", details)]
