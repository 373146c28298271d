"""``servecheck check`` as the records grow: wall time, records/s and peak RAM of this code against
an older copy, in one file or in shards, in one process or on a local Dask cluster, with
verdicts that must agree between configurations of the same code.

The records are the 5,376 that ``check_time.py`` collects from the built-in model (ids and
log-probs kept; ``benchmarks/.cache/text-only/hf-8.jsonl``), repeated with fresh ids to each size
(the scoring benchmark's shapes: a prompts matrix of greedy and sampled requests, 8 seeds).
Each configuration runs ``python -m servecheck.cli check`` in its own process, one after another
on the same machine, so the figures sit side by side:

    python benchmarks/check_scale.py --sizes 1000,10000,100000 --code before=/tmp/wt --code after=.
    python benchmarks/check_scale.py --sizes 1000,5376 --dask 1,2 --shards
    python benchmarks/check_scale.py --read-only 1000000       # the reading passes alone

``--read-only N``: peak RAM of the two reading passes over N records (validate and index every
record, then stream them) without scoring, which is the part of a chunked run that grows with
the records; the scoring part is bounded by the chunk (``--records-per-chunk``).

Results: ``benchmarks/results/scale/check_scale.json`` (or ``--out``) and a Markdown table beside.
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
OUT = ROOT / "benchmarks" / "results" / "scale" / "check_scale.json"


def synthetic(n: int, work: Path) -> Path:
    """``n`` records: the collected ones in order, then again with ids suffixed ``~k``."""
    out = work / f"records-{n}.jsonl"
    if out.exists():
        return out
    base = [json.loads(line) for line in SOURCE.read_text().splitlines() if line.strip()]
    with out.open("w") as fh:
        for i in range(n):
            rec, k = dict(base[i % len(base)]), i // len(base)
            if k and rec.get("id"):
                rec["id"] = f"{rec['id']}~{k}"
            fh.write(json.dumps(rec) + "\n")
    return out


def sharded(one: Path, shards: int = 8) -> Path:
    """The same records as gzipped JSON Lines shards."""
    folder = one.with_name(one.stem + "-shards")
    if folder.exists():
        return folder
    folder.mkdir()
    lines = one.read_text().splitlines()
    size = -(-len(lines) // shards)
    for k in range(0, len(lines), size):
        (folder / f"part-{k // size:03d}.jsonl.gz").write_bytes(
            gzip.compress(("\n".join(lines[k:k + size]) + "\n").encode()))
    return folder


def code_env(code: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]),
            "SERVECHECK_STATE": str(ROOT / "benchmarks" / ".cache" / "scale" / "state")}


def measured(cmd: list[str], code: Path) -> tuple[float, int, float]:
    """(wall seconds, exit code, peak RSS in MB) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=code_env(code), cwd=code, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    exit_ = os.waitstatus_to_exitcode(status)
    if exit_ not in (0, 1, 3):
        raise SystemExit(f"{' '.join(cmd)} → {exit_}\n{proc.stderr.read()[-2000:]}")
    return wall, exit_, usage.ru_maxrss / 1024


def run(code: Path, path: Path, summary: Path, dask: int | None, chunk: int | None) -> dict:
    cmd = [sys.executable, "-m", "servecheck.cli", "check", str(path), "--reference", "builtin",
           "--json", str(summary), "--no-progress"]
    cmd += ["--dask", f"local:{dask}"] if dask else []
    cmd += ["--records-per-chunk", str(chunk), "--fresh"] if chunk else []
    summary.unlink(missing_ok=True)
    wall, exit_, rss = measured(cmd, code)
    doc = json.loads(summary.read_text())
    return {"wall_s": round(wall, 2), "exit": exit_, "peak_rss_mb_driver": round(rss, 1),
            "chunks": doc.get("chunks", 1),
            "verdicts": [(c["name"], c["verdict"]) for c in doc["checks"]]}


READ_ONLY = r"""
import sys
from pathlib import Path
from servecheck.formats.stream import index, records
found = index(Path(sys.argv[1]))
n = sum(1 for _ in records(found))
assert n == found.records, (n, found.records)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--code", action="append", default=[], metavar="NAME=DIR",
                    help="a checkout to run (default: after=.)")
    ap.add_argument("--dask", default="", help="local Dask worker counts to run (besides none)")
    ap.add_argument("--shards", action="store_true", help="also the records as 8 gzip shards")
    ap.add_argument("--records-per-chunk", type=int, help="chunk size for codes that chunk")
    ap.add_argument("--read-only", type=int, help="only the reading passes, over this many")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".cache" / "scale")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    if not SOURCE.exists():
        raise SystemExit(f"{SOURCE} is missing: python benchmarks/check_time.py builds it")
    a.work.mkdir(parents=True, exist_ok=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    codes = dict(c.split("=", 1) for c in a.code) or {"after": "."}
    codes = {name: Path(d).resolve() for name, d in codes.items()}
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "python": platform.python_version()}
    rows = []
    if a.read_only:
        path = synthetic(a.read_only, a.work)
        for name, code in codes.items():
            wall, _, rss = measured([sys.executable, "-c", READ_ONLY, str(path)], code)
            rows.append({"code": name, "records": a.read_only, "input": "one file, read only",
                         "wall_s": round(wall, 2), "peak_rss_mb_driver": round(rss, 1),
                         "records_per_s": round(a.read_only / wall, 1)})
            print(json.dumps(rows[-1]), flush=True)
    for n in (int(s) for s in a.sizes.split(",") if s and not a.read_only):
        one = synthetic(n, a.work)
        inputs = {"one file": one, **({"8 gzip shards": sharded(one)} if a.shards else {})}
        for name, code in codes.items():
            configs = [(form, None) for form in inputs]
            configs += [("one file", int(w)) for w in a.dask.split(",") if w]
            for form, workers in configs:
                chunk = a.records_per_chunk if name != "before" else None
                row = run(code, inputs[form], a.work / "summary.json", workers, chunk)
                row.update(code=name, records=n, input=form, dask_workers=workers,
                           records_per_s=round(n / row["wall_s"], 1),
                           ms_per_record=round(1000 * row["wall_s"] / n, 2))
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "verdicts"}), flush=True)
    for n in sorted({r["records"] for r in rows if "verdicts" in r}):
        for name in codes:
            same = {json.dumps(r["verdicts"]) for r in rows if r["records"] == n
                    and r["code"] == name and "verdicts" in r}
            print(f"{n} records, {name}: verdicts {'agree' if len(same) == 1 else 'DIFFER'} "
                  f"across configurations")
    a.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    table = ["| code | records | input | Dask workers | chunks | wall (s) | ms/record | "
             "peak RSS (MB) |", "|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['code']} | {r['records']} | {r['input']} | {r.get('dask_workers') or '–'} | "
              f"{r.get('chunks', '–')} | {r['wall_s']} | {r.get('ms_per_record', '–')} | "
              f"{r['peak_rss_mb_driver']} |" for r in rows]
    a.out.with_suffix(".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
