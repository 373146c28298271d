"""The shape the fault-power benchmarks share (``deployment_power``, ``grammar_power``): correct
servers run ``--fa-runs`` times at ``--fa-size`` requests, faulty ones ``--reps`` times at each
of ``--sizes``, every server advancing through the seed blocks together, rows appended as they
finish (``resumable.run_all``), and one table written at the end."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resumable import run_all

__all__ = ["outcome", "power_args", "run_power", "upper"]


def upper(k: int, n: int) -> float:
    """The 95% (Clopper–Pearson) upper bound of a rate seen k times in n."""
    from scipy.stats import beta

    return float("nan") if not n else 1.0 if k == n else float(beta.ppf(0.975, k + 1, n - k))


def outcome(run: Any, key: str = "") -> dict[str, Any]:
    """What a row keeps of one ``servecheck.check`` run: the failing checks, their summaries,
    the digest's first cause and the records judged implausible (``key`` suffixes the names)."""
    return {f"failed{key}": [r.name for r in run.results if r.verdict == "fail"],
            f"summaries{key}": {r.name: r.summary for r in run.results if r.verdict == "fail"},
            f"first_cause{key}": run.digest.failures[0].cause if run.digest.failures else None,
            f"implausible{key}": [run.context.labels[i] for i, v in run.verdicts.items()
                                  if v.verdict != "pass"]}


def power_args(description: str, results: Path, fa_size: int, sizes: str, rep_offset: int
               ) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--fa-runs", type=int, default=100)
    ap.add_argument("--fa-size", type=int, default=fa_size)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--sizes", default=sizes)
    ap.add_argument("--rep-offset", type=int, default=rep_offset)
    ap.add_argument("--only", default="", help="server names or faults, separated by ;")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--results", type=Path, default=results.with_suffix(".jsonl"))
    ap.add_argument("--table", type=Path, default=results.with_suffix(".md"))
    return ap.parse_args()


def run_power(a: argparse.Namespace, correct: dict[str, str], faulty: dict[str, str],
              one_run: Callable[..., dict], init: Callable[[], None],
              table: Callable[[list[dict], list[int]], str]) -> None:
    """Every run the file does not hold yet, then the table, written and printed."""
    sizes = [int(s) for s in a.sizes.split(",")]
    rows = [json.loads(x) for x in a.results.read_text().splitlines() if x.strip()] \
        if a.results.exists() else []
    done = {(r["server"], r["n"], r["rep"]) for r in rows}
    only = [w.strip() for w in a.only.split(";") if w.strip()]
    todo = [(name, spec, a.fa_size, a.rep_offset + k) for name, spec in correct.items()
            for k in range(a.fa_runs)]
    todo += [(f, spec, n, a.rep_offset + k) for f, spec in faulty.items() for n in sizes
             for k in range(a.reps)]
    todo = [t for t in todo if (t[0], t[2], t[3]) not in done
            and (not only or any(w in t[0] for w in only))]
    todo.sort(key=lambda t: (t[3], t[2]))  # every server advances together: a cut run is even
    a.results.parent.mkdir(parents=True, exist_ok=True)
    run_all(todo, one_run, a.results, rows, a.workers, init)
    text = table(rows, sizes)
    a.table.write_text(text + "\n")
    print(text)
