"""One code, one machine, a setting off and on: cold ``servecheck check`` processes on the
built-in model, alternated so that the machine's drift falls on both.

    python benchmarks/cli_ab.py --var SERVECHECK_GC --records 10000 --pairs 3

Each row is one process (``VAR=0``, then ``VAR=1``, ``--pairs`` times) with its wall time, peak
RSS and ``SERVECHECK_TIMINGS`` phases; the JSON summaries of all rows must be equal to the byte,
or the run stops. Records: ``check_scale.py``'s. Results: ``benchmarks/results/scale/
cli_ab_<var>_<records>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from check_scale import ROOT, synthetic  # the same records as the CPU benchmark


def one(path: Path, work: Path, var: str, value: str) -> dict:
    timings, summary = work / "t.json", work / "s.json"
    timings.unlink(missing_ok=True)
    env = {**os.environ, var: value, "SERVECHECK_TIMINGS": str(timings),
           "SERVECHECK_STATE": str(work / f"state-{time.time_ns()}"), "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "servecheck.cli", "check", str(path),
                             "--reference", "builtin", "--no-progress", "--json", str(summary)],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) not in (0, 1, 3):
        raise SystemExit(proc.stderr.read().decode()[-2000:])
    phases = json.loads(timings.read_text())["phases_s"]
    return {var: value, "wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "phases_s": phases, "summary_sha256": hashlib.sha256(summary.read_bytes()).hexdigest()[:16]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--var", required=True)
    ap.add_argument("--records", type=int, default=10000)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".cache" / "scale")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    path = synthetic(a.records, a.work)
    rows = []
    for _ in range(a.pairs):
        for value in "01":
            rows.append(one(path, a.work, a.var, value))
            print(json.dumps(rows[-1]), flush=True)
    if len({r["summary_sha256"] for r in rows}) != 1:
        raise SystemExit("the JSON summaries differ between the settings")
    out = a.out or ROOT / "benchmarks" / "results" / "scale" / f"cli_ab_{a.var}_{a.records}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"cpu": platform.processor() or platform.machine(),
                                           "cores": os.cpu_count(),
                                           "python": platform.python_version()},
                               "records": a.records, "rows": rows}, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
