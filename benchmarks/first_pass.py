"""The first pass of a chunked check (validate every record, index the answers, tally the
per-record bound) in one process against split over forked workers (``formats.split_index``).

    python benchmarks/first_pass.py --sizes 100000,1000000

Each row is a fresh interpreter timing ``stream.index(path, tally=counted)`` alone, the imports
excluded; both ways run on the same file in the same invocation, and the split index must equal
the one-pass index (records read, superseded, token estimates, tallies) or the run stops.
Records: ``check_scale.py``'s (the 5,376 of ``check_time.py`` repeated with fresh ids).
Results: ``benchmarks/results/scale/first_pass.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from check_scale import ROOT, synthetic  # the same records as the CPU benchmark

TIMED = r"""
import hashlib, json, sys, time
from pathlib import Path
from servecheck.checks.plausibility import counted
from servecheck.formats import split_index
from servecheck.formats.stream import index
if sys.argv[2] == "one":
    split_index.scan = lambda *a, **k: None
else:
    split_index.MAX_WORKERS = int(sys.argv[2])
t = time.perf_counter()
f = index(Path(sys.argv[1]), tally=counted)
wall = time.perf_counter() - t
same = hashlib.sha256(json.dumps([f.read, sorted(f.superseded), list(f.sizes),
                                  list(f.tallied)]).encode()).hexdigest()[:16]
print(json.dumps({"index_s": round(wall, 3), "records": f.records, "digest": same}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000")
    ap.add_argument("--workers", default="", help="worker counts to try (default: every core)")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".cache" / "scale")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale" /
                    "first_pass.json")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    ways = ["one", *(a.workers.split(",") if a.workers else [str(cores)])]
    rows = []
    for n in (int(s) for s in a.sizes.split(",")):
        path = synthetic(n, a.work)
        for way in ways:
            done = subprocess.run([sys.executable, "-c", TIMED, str(path), way], check=True,
                                  capture_output=True, text=True, cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
            row = {"records": n, "way": "one process" if way == "one" else f"{way} workers",
                   "bytes": path.stat().st_size, **json.loads(done.stdout.splitlines()[-1])}
            rows.append(row)
            print(json.dumps(row), flush=True)
        digests = {r["digest"] for r in rows if r["records"] == n}
        if len(digests) != 1:
            raise SystemExit(f"{n} records: the split index differs from one pass")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"machine": {"cpu": platform.processor() or platform.machine(),
                                             "cores": cores, "python": platform.python_version()},
                                 "rows": rows}, indent=1))
    print(f"written {a.out}")


if __name__ == "__main__":
    main()
