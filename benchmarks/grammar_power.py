"""False alarms and detection power of structured outputs (issue 33).

Each run is N requests of ``examples/prompts-json.json`` (a JSON schema, json_object, vLLM's
choice and regex; greedy and T 1), repeated with fresh seeds up to N, served by the in-process
server (``hf:builtin-tools``, xgrammar's masks as a logits processor, as vLLM applies them)
correctly or with one of the three grammar faults, and checked exactly as ``servecheck check``
does (α = 0.01). A record the per-record verdict judges implausible counts as an alarm too.

    python benchmarks/grammar_power.py --fa-runs 100 --reps 20 --sizes 68,136,200

Seeds: run r draws request seeds r·100003 + j; the default first block, 900000, was never used
to tune anything (the mask check's floor and α share were set before any run of it). Rows
append to ``--results`` as they finish (resumable).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from power_runs import outcome, power_args, run_power, upper  # noqa: E402 - shared shape

PROMPTS = ROOT / "examples" / "prompts-json.json"
CORRECT = {"xgrammar masks, correct": "hf:builtin-tools"}
FAULTY = {f: f"hf:builtin-tools?fault={f}" for f in
          ("grammar-ignored", "grammar-loose", "grammar-tight")}

_state: dict = {}


def _init() -> None:
    import torch

    from servecheck.reference.model import Reference

    torch.set_num_threads(1)
    _state["ref"] = Reference("builtin-tools")


def requests_for(n: int, rep: int) -> list:
    from dataclasses import replace

    from servecheck.formats.prompts import expand

    base = expand(PROMPTS)
    out = []
    for j in range(n):
        r = base[j % len(base)]
        params = r.parameters.model_copy(update={"seed": rep * 100_003 + j})
        out.append(replace(r, id=f"r{rep}-{j}", parameters=params))
    return out


def one_run(name: str, spec: str, n: int, rep: int) -> dict:
    import servecheck
    from servecheck.collect.targets.hf import HFTarget

    target = _state.get(spec) or HFTarget.from_spec(spec, spec.partition(":")[2])
    _state[spec] = target
    t0 = time.perf_counter()
    records = []
    requests = requests_for(n, rep)
    groups: dict[str, list] = {}
    for r in requests:  # a batch shares its sampling and its grammar, as an engine's step does
        groups.setdefault(r.parameters.model_copy(update={"seed": None}).model_dump_json(),
                          []).append(r)
    for group in groups.values():
        for b in range(0, len(group), 16):
            records += target.generate_batch(group[b:b + 16])
    run = servecheck.check(records, servecheck.CheckOptions("builtin-tools"), reference=_state["ref"])
    return {"server": name, "spec": spec, "n": n, "rep": rep, **outcome(run),
            "seconds": round(time.perf_counter() - t0, 2)}


def table(rows: list[dict], sizes: list[int]) -> str:
    out = ["| correct server | runs × N | runs failing any check (95% upper) | by check | "
           "runs with a record judged implausible |", "|---|---|---|---|---|"]
    for name in CORRECT:
        runs = [r for r in rows if r["server"] == name]
        if not runs:
            continue
        k = sum(bool(r["failed"]) for r in runs)
        one = sum(bool(r["implausible"]) for r in runs)
        by = Counter(c for r in runs for c in r["failed"])
        out.append(f"| {name} | {len(runs)} × {runs[0]['n']} | {k}/{len(runs)} "
                   f"({100 * upper(k, len(runs)):.1f}%) | "
                   f"{', '.join(f'{c} {v}' for c, v in by.most_common()) or '—'} | "
                   f"{one}/{len(runs)} ({100 * upper(one, len(runs)):.1f}%) |")
    out += ["", "| fault | " + " | ".join(f"N={n}" for n in sizes) + " | caught by | named first |",
            "|---|" + "---|" * len(sizes) + "---|---|"]
    for fault in FAULTY:
        runs = [r for r in rows if r["server"] == fault]
        if not runs:
            continue
        cells = []
        for n in sizes:
            v = [bool(r["failed"]) for r in runs if r["n"] == n]
            cells.append(f"{sum(v)}/{len(v)}" if v else "–")
        by = Counter(c for r in runs for c in r["failed"])
        named = Counter(r["first_cause"] for r in runs if r["first_cause"])
        out.append(f"| {fault} | " + " | ".join(cells) + " | " +
                   (", ".join(f"{c} {v}" for c, v in by.most_common(4)) or "—") + " | " +
                   (named.most_common(1)[0][0][:140] if named else "—") + " |")
    return "\n".join(out)


def main() -> None:
    a = power_args(__doc__.split("\n\n")[0], ROOT / "benchmarks" / "results" / "grammar_power",
                   68, "68,136,200", 900_000)
    run_power(a, CORRECT, FAULTY, one_run, _init, table)


if __name__ == "__main__":
    main()
