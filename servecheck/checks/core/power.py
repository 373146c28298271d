"""What a run could have caught: for each fault deployments ship, the requests of this mix that
catch it with 95% power, scaled from the sampler check's own evidence.

``servecheck plan`` prints it for a pilot run; ``check`` states it beside every statistical
PASS and, with ``--detect``, makes a check that could not have caught the sizes asked for
INCONCLUSIVE. One computation for all three (``workflows/plan.py`` says how it scales).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from servecheck.checks.core.alternatives import (
    PENALTY_FLOORS,
    TEMPERATURE_FLOOR,
    Alternative,
    detection_z,
)
from servecheck.checks.core.shared_seeds import SeedDesign
from servecheck.errors import InputError


class Evidence(Protocol):
    """What the plan scales: the sampler check's details (``checks.sampler.SamplerDetails``)."""

    alpha: float
    design: SeedDesign
    alternatives: tuple[Alternative, ...]
    tail_mass: dict[str, float]
    information: dict[str, float]

__all__ = ["DEFAULT_FAULTS", "MARGIN", "Evidence", "PlanRow", "deployment_rows", "fault_words",
           "needs_words", "plan", "power_words"]


DEFAULT_FAULTS = {"temperature": 0.10, "min_p": 0.05, "top_k": 40, "top_p": 0.95,
                  "presence_penalty": 0.3, "frequency_penalty": 0.3, "repetition_penalty": 1.1}
"""The sizes real deployments ship (issue 16): llama.cpp's min_p and top_k defaults,
transformers' top_k, a 10% temperature error, a 0.3 penalty."""


MARGIN = 1.5
"""Requests planned over the point estimate. λ and the information of a 120-request pilot
are noisy: one planned at 533 requests from such a pilot measured λ 7.9 where 8.3 was due
(tests/workflows/test_plan.py)."""


@dataclass(frozen=True)
class PlanRow:
    fault: str
    size: float
    requests: int | None
    """Requests of the pilot's mix that catch it with 95% power, with ``MARGIN``; None: this
    mix never can."""
    caught_now: bool
    why: str


def plan(d: Evidence, pilot: int, sizes: dict[str, float]) -> list[PlanRow]:
    """One row per fault: the requests of the pilot's mix that catch it."""

    m, deff = len(d.alternatives), d.design.deff
    need_lam = math.log(max(1, m) / d.alpha) * deff
    rows = []
    for fault, size in sizes.items():
        if fault in ("min_p", "top_k", "top_p"):
            grid = {float(k.split()[1]): lam for k, lam in d.tail_mass.items()
                    if k.startswith(fault)}
            if size not in grid:
                raise InputError(f"--{fault.replace('_', '-')} {size:g}: the sampler tests "
                                 f"{fault} at {', '.join(f'{g:g}' for g in sorted(grid)) or 'no value'}"
                                 f" on this pilot", where="plan")
            lam = grid[size]
            rows.append(_scaled(fault, size, pilot, lam / need_lam if lam > 0 else 0.0,
                                f"λ = {lam:.2f} tokens where it cuts, {need_lam:.1f} needed"))
            continue
        if fault == "temperature":
            now = d.information.get("temperature", -1)
            if now < 0:
                rows.append(PlanRow(fault, size, None, False, "no temperature profile"))
            elif size < TEMPERATURE_FLOOR:
                rows.append(PlanRow(fault, size, None, False, f"below the {TEMPERATURE_FLOOR:g} "
                                                              "floor: never fails"))
            else:
                rows.append(_scaled(fault, size, pilot, (size / now) ** 2,
                                    f"the pilot would catch ≥ {100 * now:.0f}% off"))
            continue
        effect = size - 1 if fault == "repetition_penalty" else size
        info = max((v for k, v in d.information.items() if k.startswith(fault)), default=0.0)
        if effect < PENALTY_FLOORS[fault]:
            rows.append(PlanRow(fault, size, None, False, "below the floor: never fails"))
            continue
        z = detection_z(d.alpha, m)
        rows.append(_scaled(fault, size, pilot, (effect / z) ** 2 * info / deff if info else 0,
                            f"information {info:.1f} in the pilot"))
    return rows


def _scaled(fault: str, size: float, pilot: int, ratio: float, why: str) -> PlanRow:
    """``ratio``: the pilot's evidence over what catching takes (≥ 1: caught now). The
    requests carry ``MARGIN``: the pilot's evidence is itself a sample."""
    if ratio <= 0:
        return PlanRow(fault, size, None, False, f"{why}: this mix never acts on it")
    return PlanRow(fault, size, math.ceil(MARGIN * pilot / ratio), bool(ratio >= 1), why)


def deployment_rows(d: Evidence, pilot: int, sizes: dict[str, float]) -> list[PlanRow]:
    """``plan`` fault by fault; a truncation this mix gives the sampler nothing to test on (every
    request sets it) is a row that never catches it, not an error."""
    rows = []
    for fault, size in sizes.items():
        try:
            rows += plan(d, pilot, {fault: size})
        except InputError:
            rows.append(PlanRow(fault, size, None, False, "the requests of this mix leave the "
                                                          "sampler nothing to test it on"))
    return rows


def fault_words(fault: str, size: float) -> str:
    """A fault as a serving engineer says it: "a temperature 10% off", "top_k 40 on"."""
    if fault == "temperature":
        return f"a temperature {100 * size:.0f}% off"
    if fault in ("min_p", "top_k", "top_p"):
        return f"{fault} {size:g} silently on"
    return f"a {fault.replace('_', ' ')} of {size:g}"


def needs_words(row: PlanRow) -> str:
    return f"about {row.requests} requests of this mix" if row.requests is not None \
        else "never with this mix"


def power_words(rows: list[PlanRow]) -> str:
    """What a PASS could have caught of what deployments get wrong, in one clause."""
    caught = [fault_words(r.fault, r.size) for r in rows if r.caught_now]
    missed = [f"{fault_words(r.fault, r.size)} ({needs_words(r)})" for r in rows
              if not r.caught_now]
    parts = ([f"would have caught {', '.join(caught)}"] if caught else []) + \
        ([f"could not have caught {', '.join(missed)}"] if missed else [])
    return "of what deployments get wrong, these records " + "; ".join(parts)
