"""Records check: every request got an answer. Failed requests are not checked, so say so."""

from __future__ import annotations

from servecheck.checks import CheckContext, CheckResult, Finding, label


def check_records(ctx: CheckContext) -> CheckResult:
    failed = [(label(r, i), r.error) for i, r in enumerate(ctx.all_records) if r.error]
    n = len(ctx.all_records)
    details = {"records": n, "errors": len(failed)}
    if failed:
        return CheckResult("records", "fail",
                           f"{len(failed)}/{n} requests failed and were not checked "
                           f"(rerun generate to retry them)", details,
                           [Finding(name, f"error: {e}", 1.0) for name, e in failed])
    return CheckResult("records", "pass", f"{n}/{n} requests answered", details)
