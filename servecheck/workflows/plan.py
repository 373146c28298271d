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
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from servecheck.checks.core.power import DEFAULT_FAULTS, PlanRow, plan
from servecheck.errors import EXIT_PASS, InputError

if TYPE_CHECKING:
    from rich.console import Console



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
