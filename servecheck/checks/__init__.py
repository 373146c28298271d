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

from servecheck.checks.context import CheckContext
from servecheck.checks.results import CheckResult


@cache
def check_modules() -> tuple[ModuleType, ...]:
    """Every check module of the package, in table order."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if isinstance(getattr(module, "ORDER", None), int) and callable(getattr(module, "run", None)):
            found.append(module)
    return tuple(sorted(found, key=lambda m: m.ORDER))


def run_checks(ctx: CheckContext, only: Callable[[ModuleType], bool] | None = None
               ) -> list[CheckResult]:
    """Every check's results, in table order (``only``: a filter on the check modules)."""
    return [result for module in check_modules() if only is None or only(module)
            for result in module.run(ctx)]
