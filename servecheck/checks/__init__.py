"""Stage 4, the checks: each takes the records and the reference and returns its verdicts.

A check is one module of this package that defines ``ORDER`` (its place in the table) and
``run(ctx) -> list[CheckResult]``. They are found here, so adding a check is adding its file:
no list to edit, and the report, JUnit and the per-record verdict read its typed details.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from functools import cache
from types import ModuleType

from servecheck.checks.core.attribution import attribute
from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.results import CheckResult


@cache
def check_modules() -> tuple[ModuleType, ...]:
    """Every check module of the package, in table order."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if isinstance(getattr(module, "ORDER", None), int) and callable(getattr(module, "run", None)):
            found.append(module)
    return tuple(sorted(found, key=lambda m: m.ORDER))


def screens(module: ModuleType) -> bool:
    """A check whose failures make a record unfit for the statistics (``SCREENS``)."""
    return bool(getattr(module, "SCREENS", False))


Screened = dict[str, list[CheckResult]]
"""The screening checks' results, by module name."""


def screen(ctx: CheckContext) -> Screened:
    """Run the screening checks (template, termination, detokenization) and leave the records
    they fail out of the statistical checks: an output cut mid-word is the termination check's
    finding, and its last token, scored as if sampled, would also fail greedy, support and
    temperature, and could tip the sampling order the whole file is scored under. Each such
    record is named where it fails, and ``ctx.left_out`` says why it is left out."""
    done = {m.__name__: m.run(ctx) for m in check_modules() if screens(m)}
    reasons: dict[str, list[str]] = {}
    for results in done.values():
        for r in results:
            if r.verdict == "fail":
                for f in r.findings:
                    reasons.setdefault(f.record, []).append(r.name)
    ctx.leave_out(reasons)
    return done


def run_checks(ctx: CheckContext, only: Callable[[ModuleType], bool] | None = None,
               screened: Screened | None = None) -> list[CheckResult]:
    """Every check's results, in table order (``only``: a filter on the check modules;
    ``screened``: what ``screen`` returned, when it ran before the scoring; else it runs
    first here)."""
    if screened is None and only is None:
        screened = screen(ctx)
    out = []
    for module in check_modules():
        if only is not None and not only(module):
            continue
        out += (screened or {}).get(module.__name__) or module.run(ctx)
    return attribute(out)
