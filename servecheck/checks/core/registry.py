"""The checks of a run, declared once: ``@check`` beside a check's ``run`` holds its name, its
place in the table, its kind and its share of the run's α, and registers it here.

A check used to be any module with an ``ORDER`` and a ``run``: a misspelt ``ORDER`` dropped it
without a word, its name was a literal repeated in the module, and the α shares lived in a
table elsewhere that had to know every statistical check. Now the spec is the one place: the
α shares are derived from the registered specs, a module of ``servecheck.checks`` that declares
no check is an error, and a team adds a check from its own package through the entry-point
group ``servecheck.checks`` (docs/extending.md), listed by ``servecheck list``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from importlib.metadata import entry_points
from typing import Any, Literal, Protocol

__all__ = ["CheckSpec", "Evidence", "Kind", "Pooling", "alpha_share", "check", "find", "pooled_names",
           "pooled_specs", "specs", "table_specs"]

Kind = Literal["deterministic", "statistical", "record"]
"""``statistical``: its verdicts are tests at a level, one Holm family with its share of α;
``record``: the per-record verdict (``checks.plausibility``), no row of the table but a share
of α all the same; ``deterministic``: judged against rules and tolerances, no α."""

GROUP = "servecheck.checks"
"""The entry-point group a package registers its checks under (``name = "pkg.module"``)."""


class Evidence(Protocol):
    """What a pooled check keeps of a chunk of records: plain data (saved between runs as the
    chunk's state) that merges with later chunks' into the evidence of all, in one call (so
    that k chunks are joined once, not copied k times)."""

    def merge(self, *later: Any) -> Any: ...


@dataclass(frozen=True)
class Pooling:
    """How a check judges a set too large to hold once, not chunk by chunk: each chunk
    ``reduce``s to evidence sufficient for its verdict, the chunks' evidence merges in set
    order, and ``decide`` judges it once (a statistical check at its full α, not α/k; a
    deterministic one on the whole set's numbers, not each chunk's). The check's ``run`` must be
    ``decide(reduce(ctx), ctx.options)`` on one run's records, so a chunked set and one process give the
    same verdicts and p-values (tests/workflows/test_pooled_chunks.py)."""

    reduce: Callable[[Any], Evidence]
    """``reduce(ctx) -> Evidence`` of a run's records."""
    decide: Callable[..., list[Any]]
    """``decide(evidence, options, *read) -> list[CheckResult]``, at the check's share of the
    run's ``options.alpha`` (``CheckOptions``); ``read``: the merged evidence of the checks
    named in ``reads``, in that order."""
    reads: tuple[str, ...] = ()
    """Other pooled checks whose evidence this one's decision reads, rather than keeping a
    copy of its own: the sampler reads the fit's draws and the seeds check's verdict (which
    records are distinct draws, how much they share random streams)."""


@dataclass(frozen=True)
class CheckSpec:
    name: str
    """The result's name, as the table, JSON and JUnit show it."""
    order: int
    """Its place in the table (and the order the checks run in)."""
    kind: Kind
    run: Callable[..., Any]
    """``run(ctx) -> list[CheckResult]`` (a ``record`` check: ``judge(ctx, results)``)."""
    alpha_share: float = 0.0
    """A statistical check's weight in the run's α (weighted Bonferroni, fixed before any data);
    the shares are normalized over the registered checks, so the built-ins' add up to 1. The
    built-ins: fit and sampler, which most faults fall to, 0.42 each; plausibility and seeds,
    whose evidence is far beyond any level when they fire, 0.05 each; context, cache and mask,
    whose faults show far beyond any level, 0.02 each (taken from fit and sampler, 0.45 each
    before they came). Each alone held α before, and a correct
    server's run failed one of them in 3% of 200 held-out runs at α = 1%
    (docs/validation-power.md)."""
    screens: bool = False
    """Its failures make a record unfit for the statistics (``checks.screen``)."""
    also: tuple[str, ...] = ()
    """Names of further results its ``run`` returns, tested in the same Holm family (the
    distribution check's temperature row)."""
    catches: str = ""
    """The faults it catches, in a serving engineer's words: what a PASS rules out, and what a
    file it had nothing to look at in could not show."""
    needs: str = ""
    """What records must hold for it to see anything, and how to collect them."""
    pooling: Pooling | None = None
    """Set for a check whose evidence merges across the chunks of a large set: it is then
    judged once over the whole set (a statistical one at its share of α, not in each chunk at
    α/k)."""
    module: str = ""
    source: str = "built-in"
    """Where it comes from: built-in, or the distribution that registered it."""

    @property
    def description(self) -> str:
        """The first line of its module's docstring."""
        doc = inspect.getdoc(importlib.import_module(self.module)) or ""
        return doc.split("\n", 1)[0]

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.also)


_REGISTERED: dict[str, CheckSpec] = {}


def check(name: str, *, order: int, kind: Kind = "deterministic", alpha_share: float = 0.0,
          screens: bool = False, also: tuple[str, ...] = (), catches: str = "", needs: str = "",
          pooling: Pooling | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declares the decorated ``run`` a check (``CheckSpec`` says what each argument means)."""
    if pooling is not None and kind == "record":
        raise ValueError(f"check {name!r}: the per-record verdict pools no evidence")
    if (kind == "deterministic") != (alpha_share == 0):
        raise ValueError(f"check {name!r}: a statistical or record check has an α share > 0, a "
                         f"deterministic one none (got {kind}, {alpha_share})")

    def register(run: Callable[..., Any]) -> Callable[..., Any]:
        spec = CheckSpec(name, order, kind, run, alpha_share, screens, also, catches, needs,
                         pooling, run.__module__)
        for n in spec.names:
            other = next((s for s in _REGISTERED.values() if n in s.names), None)
            if other is not None and other.module != spec.module:
                raise ValueError(f"two checks are named {n!r}: {other.module} ({other.source}) "
                                 f"and {spec.module} ({spec.source})")
        _REGISTERED[name] = spec
        return run

    return register


@cache
def specs() -> tuple[CheckSpec, ...]:
    """Every registered check, built-ins and entry points, in table order. Each module of
    ``servecheck.checks`` must declare one: a module that declares none is an error, not a
    check silently left out."""
    # by name, as the entry points below are: the package imports this module, not the reverse
    checks = importlib.import_module("servecheck.checks")
    for info in pkgutil.iter_modules(checks.__path__):
        if info.name == "core":
            continue
        module = f"{checks.__name__}.{info.name}"
        importlib.import_module(module)
        if not any(s.module == module for s in _REGISTERED.values()):
            raise RuntimeError(f"{module} is in servecheck.checks but declares no check "
                               f"(@check beside its run); helpers belong in servecheck.checks.core")
    for ep in entry_points(group=GROUP):
        before = set(_REGISTERED)
        ep.load()
        added = set(_REGISTERED) - before
        if not added:
            raise RuntimeError(f"the entry point {ep.name} = {ep.value} ({GROUP}) registered "
                               f"no check: its module must declare one with @check")
        for name in added:  # where it came from, for ``servecheck list``
            _REGISTERED[name] = replace(_REGISTERED[name], source=ep.dist.name if ep.dist
                                        else ep.value)
    return tuple(sorted(_REGISTERED.values(), key=lambda s: (s.order, s.name)))


def table_specs() -> list[CheckSpec]:
    """The checks that are rows of the table, in order."""
    return [s for s in specs() if s.kind != "record"]


def pooled_specs() -> list[CheckSpec]:
    """The checks whose evidence merges across a large set's chunks (``Pooling``). A check
    that reads evidence no pooled check gives is an error here, named, not a KeyError when a
    run decides."""
    pooled = [s for s in table_specs() if s.pooling is not None]
    names = {s.name for s in pooled}
    for s in pooled:
        assert s.pooling is not None
        missing = [n for n in s.pooling.reads if n not in names]
        if missing:
            raise RuntimeError(f"check {s.name!r} ({s.source}) reads the pooled evidence of "
                               f"{', '.join(map(repr, missing))}, which no pooled check gives "
                               f"(pooled: {', '.join(sorted(names))})")
    return pooled


def pooled_names() -> list[str]:
    """The rows those checks give (the fit check's temperature row too)."""
    return [n for s in pooled_specs() for n in s.names]


def find(name: str) -> CheckSpec:
    """The spec that gives results named ``name``."""
    for s in specs():
        if name in s.names:
            return s
    raise KeyError(name)


def alpha_share(name: str) -> float:
    """Check ``name``'s share of the run's α: its weight over the weights of every registered
    check (1 in all)."""
    total = sum(s.alpha_share for s in specs())
    return find(name).alpha_share / total
