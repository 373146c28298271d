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

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from resumable import run_all  # noqa: E402 - the benchmarks' one run loop

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
    return {"server": name, "spec": spec, "n": n, "rep": rep,
            "failed": [r.name for r in run.results if r.verdict == "fail"],
            "summaries": {r.name: r.summary for r in run.results if r.verdict == "fail"},
            "first_cause": run.digest.failures[0].cause if run.digest.failures else None,
            "implausible": [run.context.labels[i] for i, v in run.verdicts.items()
                            if v.verdict != "pass"],
            "seconds": round(time.perf_counter() - t0, 2)}


def _upper(k: int, n: int) -> float:
    from scipy.stats import beta

    return float("nan") if not n else 1.0 if k == n else float(beta.ppf(0.975, k + 1, n - k))


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
                   f"({100 * _upper(k, len(runs)):.1f}%) | "
                   f"{', '.join(f'{c} {v}' for c, v in by.most_common()) or '—'} | "
                   f"{one}/{len(runs)} ({100 * _upper(one, len(runs)):.1f}%) |")
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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fa-runs", type=int, default=100)
    ap.add_argument("--fa-size", type=int, default=68)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--sizes", default="68,136,200")
    ap.add_argument("--rep-offset", type=int, default=900_000)
    ap.add_argument("--only", default="", help="server names or faults, separated by ;")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--results", type=Path,
                    default=ROOT / "benchmarks" / "results" / "grammar_power.jsonl")
    ap.add_argument("--table", type=Path,
                    default=ROOT / "benchmarks" / "results" / "grammar_power.md")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    rows = [json.loads(x) for x in a.results.read_text().splitlines() if x.strip()] \
        if a.results.exists() else []
    done = {(r["server"], r["n"], r["rep"]) for r in rows}
    only = [w.strip() for w in a.only.split(";") if w.strip()]
    todo = [(name, spec, a.fa_size, a.rep_offset + k) for name, spec in CORRECT.items()
            for k in range(a.fa_runs)]
    todo += [(f, spec, n, a.rep_offset + k) for f, spec in FAULTY.items() for n in sizes
             for k in range(a.reps)]
    todo = [t for t in todo if (t[0], t[2], t[3]) not in done
            and (not only or any(w in t[0] for w in only))]
    todo.sort(key=lambda t: (t[3], t[2]))  # every server advances together: a cut run is even
    a.results.parent.mkdir(parents=True, exist_ok=True)
    run_all(todo, one_run, a.results, rows, a.workers, _init)
    text = table(rows, sizes)
    a.table.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
