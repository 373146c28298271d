"""``servecheck plan``: how many requests a check needs to catch faults of given sizes.

Power depends on the model and on the request mix far more than on any rule of thumb: a peaked
model puts almost no mass past rank 40, so no number of short answers shows a top_k 40 there,
while a flat one shows it in a few dozen. So the plan starts from a pilot: a responses file of
the mix the user will run (from the server under test, or from ``hf:`` the reference itself),
checked as usual. The sampler check's evidence grows with the records in a known way, and the
plan scales it:

- a truncation (min_p, top_k, top_p) is caught once the tokens a correct sampler puts where it
  cuts, λ, pass ln(m/α)·deff (the Poisson tail count of ``checks.core.alternatives``), and λ grows
  linearly with the records;
- a penalty or a temperature error is caught once its size passes z/√information (floored), and
  the information grows linearly too, so the size it can catch falls as 1/√records.

Each answer is "requests of this mix": the pilot's own mix, scaled. A fault the mix never acts
on (a top_k 40 default on requests that all send top_k 40) needs other requests, and says so.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from servecheck.errors import EXIT_PASS, InputError

if TYPE_CHECKING:
    from rich.console import Console

    from servecheck.checks.sampler import SamplerDetails

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


def add_arguments(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="how many requests of a pilot's mix catch faults of given "
                                    "sizes with 95%% power")
    p.add_argument("responses", type=Path, help="a pilot responses file of the mix you will run")
    p.add_argument("--reference", required=True, metavar="PATH|builtin",
                   help="the served model's checkpoint, as for check")
    p.add_argument("--alpha", type=float, default=0.01,
                   help="the run's false-alarm rate, as for check (default: 0.01)")
    for name, size in DEFAULT_FAULTS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=size,
                       help=f"fault size to plan for (default {size:g})")
    p.add_argument("--json", type=Path, help="write the plan here")
    p.set_defaults(func=cmd_plan)


def cmd_plan(a: argparse.Namespace, console: Console) -> int:
    from servecheck.checks.core.options import CheckOptions
    from servecheck.checks.sampler import SamplerDetails
    from servecheck.workflows.check import check

    run = check(a.responses, CheckOptions(reference=a.reference, alpha=a.alpha), console,
                progress=False)
    sampler = next((r for r in run.results if isinstance(r.details, SamplerDetails)), None)
    if sampler is None or not sampler.details.tail_mass:
        raise InputError("the pilot has too few sampled tokens to plan from (the sampler check "
                         f"says: {sampler.summary if sampler else 'no sampler check'})",
                         where=str(a.responses))
    sizes = {name: getattr(a, name) for name in DEFAULT_FAULTS}
    rows = plan(sampler.details, len(run.context.records), sizes)
    show(rows, len(run.context.records), console)
    if a.json:
        a.json.write_text(json.dumps({"pilot_records": len(run.context.records),
                                      "alpha": a.alpha, "plan": [asdict(r) for r in rows]},
                                     indent=2))
    return EXIT_PASS


def plan(d: SamplerDetails, pilot: int, sizes: dict[str, float]) -> list[PlanRow]:
    """One row per fault: the requests of the pilot's mix that catch it."""
    from servecheck.checks.core.alternatives import PENALTY_FLOORS, TEMPERATURE_FLOOR, detection_z

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
    return PlanRow(fault, size, math.ceil(MARGIN * pilot / ratio), ratio >= 1, why)


def show(rows: list[PlanRow], pilot: int, console: Console) -> None:
    from rich.table import Table

    table = Table(title=f"requests of the pilot's mix (the pilot: {pilot}) that catch each "
                        f"fault with 95% power")
    for col in ("fault", "size", "requests", "the pilot", "why"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.fault, f"{r.size:g}", "never" if r.requests is None else str(r.requests),
                      "caught" if r.caught_now else "not yet", r.why)
    console.print(table)
