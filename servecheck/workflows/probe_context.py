"""The long-context probe: requests long enough to cross the checkpoint's sliding window.

A sliding window off by one, a window that never reached the kernel, or keys and values rounded
to FP8 leave every short request as it was: the damage starts at the window and grows with
context. So the probe sends the long prompts (``reference.long_prompts``: 0.9×, 1.1×, 2× and 4×
the window, tasks that read distant context), greedy and sampled, and judges them with every
check ``check`` runs, the position-resolved one included; nothing is judged here twice.
"""

from __future__ import annotations

from servecheck.checks.core.options import CheckOptions
from servecheck.checks.core.results import CheckResult, Finding, NoDetails
from servecheck.collect.targets import Target
from servecheck.formats.prompts import Request
from servecheck.formats.records import ResponseRecord
from servecheck.reference.long_prompts import sliding_window
from servecheck.reference.model import Reference
from servecheck.workflows.check import check
from servecheck.workflows.long_requests import long_requests

__all__ = ["long_context"]

NAME = "long context"


async def long_context(target: Target, ref: Reference, max_tokens: int, numerics: str,
                       alpha: float, send) -> CheckResult:
    """``send(target, requests, concurrency)`` collects; the verdict is ``check``'s on what
    came back, the checks that failed named in causal order."""
    requests: list[Request] = long_requests(ref, max_tokens=max_tokens, first_seed=4321)
    if not requests:
        return CheckResult(NAME, "skipped", "the reference has no sliding window and no long "
                           "prompts were made", NoDetails())
    records: list[ResponseRecord] = await send(target, requests, 4)
    run = check(records, CheckOptions(ref.spec, numerics=numerics, alpha=alpha), reference=ref)
    failures = run.digest.failures  # causal order, each with its likely cause in words
    lengths = sorted({len(r.prompt_token_ids or ref.encode(r.input)) for r in records})
    scope = (f"{len(records)} requests of {lengths[0]}–{lengths[-1]} prompt tokens "
             f"(window {sliding_window(ref)} tokens)")
    if not failures:
        return CheckResult(NAME, "pass", f"{scope}: every check passed", NoDetails())
    evidence = [Finding(NAME, f"{f.check}: {f.cause}" + (f" ({f.finding})" if f.finding else ""))
                for f in failures]
    return CheckResult(NAME, "fail", f"{scope}: {failures[0].cause}", NoDetails(), evidence)
