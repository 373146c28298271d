"""``servecheck check`` as the records grow, in one file or in shards, in one process or on a
local Dask cluster: wall time, records/s, peak RAM, and verdicts that must agree.

The records are the 5,376 that ``check_time.py`` collects from the built-in model (ids and
log-probs kept; ``benchmarks/.cache/text-only/hf-8.jsonl``), the first N of them for each size.
Each configuration runs ``python -m servecheck.cli check`` in its own process, one after another
on the same machine, so the figures sit side by side:

    python benchmarks/check_scale.py --sizes 1000,5376 --dask 1,2

Results: ``benchmarks/results/scale/check_scale.json`` and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "benchmarks" / ".cache" / "text-only" / "hf-8.jsonl"
OUT = ROOT / "benchmarks" / "results" / "scale"


def prepare(n: int, work: Path) -> dict[str, Path]:
    """The first ``n`` records as one JSON Lines file and as 8 gzipped shards."""
    lines = [line for line in SOURCE.read_text().splitlines() if line.strip()][:n]
    one = work / f"records-{n}.jsonl"
    one.write_text("\n".join(lines) + "\n")
    shards = work / f"shards-{n}"
    shards.mkdir(exist_ok=True)
    size = -(-len(lines) // 8)
    for k in range(0, len(lines), size):
        (shards / f"part-{k // size:03d}.jsonl.gz").write_bytes(
            gzip.compress(("\n".join(lines[k:k + size]) + "\n").encode()))
    return {"one file": one, "8 gzip shards": shards}


def run(path: Path, summary: Path, dask: int | None) -> dict:
    rss = summary.with_suffix(".rss")
    cmd = ["/usr/bin/time", "-f", "%M", "-o", str(rss), sys.executable, "-m", "servecheck.cli",
           "check", str(path), "--reference", "builtin", "--json", str(summary), "--no-progress"]
    if dask:
        cmd += ["--dask", f"local:{dask}"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if done.returncode not in (0, 1):
        raise SystemExit(done.stderr[-2000:])
    doc = json.loads(summary.read_text())
    return {"wall_s": round(wall, 2), "exit": done.returncode,
            "peak_rss_mb_driver": round(int(rss.read_text().split()[-1]) / 1024, 1),
            "verdicts": [(c["name"], c["verdict"]) for c in doc["checks"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,5376")
    ap.add_argument("--dask", default="1,2", help="local Dask worker counts to run (besides none)")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".cache" / "scale")
    a = ap.parse_args()
    if not SOURCE.exists():
        raise SystemExit(f"{SOURCE} is missing: python benchmarks/check_time.py builds it")
    a.work.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in (int(s) for s in a.sizes.split(",")):
        inputs = prepare(n, a.work)
        configs = [("one file", None), ("8 gzip shards", None)]
        configs += [("one file", int(w)) for w in a.dask.split(",") if w]
        for form, workers in configs:
            row = run(inputs[form], a.work / "summary.json", workers)
            row.update(records=n, input=form, dask_workers=workers,
                       records_per_s=round(n / row["wall_s"], 1))
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "verdicts"}), flush=True)
    for n in {r["records"] for r in rows}:
        same = {json.dumps(r["verdicts"]) for r in rows if r["records"] == n}
        print(f"{n} records: verdicts {'agree' if len(same) == 1 else 'DIFFER'} across configurations")
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "python": platform.python_version()}
    (OUT / "check_scale.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    table = ["| records | input | Dask workers | wall (s) | records/s | driver peak RSS (MB) |",
             "|---|---|---|---|---|---|"]
    table += [f"| {r['records']} | {r['input']} | {r['dask_workers'] or '–'} | {r['wall_s']} | "
              f"{r['records_per_s']} | {r['peak_rss_mb_driver']} |" for r in rows]
    (OUT / "check_scale.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
