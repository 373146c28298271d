"""``servecheck check`` end to end on a ≥ 5,000-record file: this code against older copies.

The file is ``examples/prompts.json`` with seeds 1…8 (5,376 requests), collected from the
built-in model's HF sampler in process (``text_only_honest.py`` builds it, about 10 minutes on 2
cores; it is cached in ``benchmarks/.cache/text-only``). It is checked as collected (ids and
log-probs) and stripped to the original notes' four fields (text only, the tokenization search
running). Each code version runs the same command in its own process, interleaved with the others
round by round, so drift of the machine hits them alike; the median wall time and the peak RSS
are reported, with the verdicts, which must agree.

    python benchmarks/check_time.py --code base=/tmp/wt-old --code new=. --rounds 3
    python benchmarks/check_time.py --code new=. --device cuda      # on a GPU machine

``--code NAME=DIR``: a checkout whose ``servecheck`` package is run (``python -m servecheck.cli``
with ``PYTHONPATH=DIR``); every DIR uses this interpreter and its installed dependencies.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache" / "text-only"


def ensure_file(seeds: int = 8) -> Path:
    """The collected file, built on demand."""
    out = CACHE / f"hf-{seeds}.jsonl"
    if not out.exists():
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from text_only_honest import collect_hf, prompts_file

        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"collecting {out} (about 10 minutes on 2 cores)", flush=True)
        collect_hf(prompts_file(seeds, CACHE / f"prompts-{seeds}-seeds.json"), out)
    return out


def text_only(path: Path) -> Path:
    """The same records with only the notes' four fields."""
    out = path.with_name(path.stem + "-text.jsonl")
    if not out.exists():
        keep = ("conversations", "parameters", "input", "output")
        with path.open() as src, out.open("w") as dst:
            for line in src:
                r = json.loads(line)
                dst.write(json.dumps({k: r[k] for k in keep if k in r}) + "\n")
    return out


def one_run(code: Path, responses: Path, device: str | None, summary: Path) -> dict:
    cmd = [sys.executable, "-m", "servecheck.cli", "check", str(responses), "--no-progress",
           "--json", str(summary)] + (["--device", device] if device else [])
    env = {**os.environ, "PYTHONPATH": str(code)}
    log = summary.with_suffix(".log")
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS
    wall = time.perf_counter() - t0
    code_ = os.waitstatus_to_exitcode(status)
    if code_ not in (0, 1):
        raise SystemExit(f"{code}: exit {code_}\n{log.read_text()[-2000:]}")
    verdicts = {c["name"]: c["verdict"] for c in json.loads(summary.read_text())["checks"]}
    return {"wall_s": round(wall, 2), "max_rss_mib": round(usage.ru_maxrss / 1024),
            "verdicts": verdicts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--code", action="append", required=True, metavar="NAME=DIR")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", help="passed to check --device (default: check's own choice)")
    ap.add_argument("--responses", type=Path, help="default: the 5,376-record file, built on demand")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "check_time.json")
    a = ap.parse_args()
    codes = dict(c.split("=", 1) for c in a.code)
    ids = a.responses or ensure_file()
    files = {"ids": ids, "text-only": text_only(ids)}
    runs: dict[str, dict[str, list[dict]]] = {n: {f: [] for f in files} for n in codes}
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "check_time"
    work.mkdir(parents=True, exist_ok=True)
    for round_ in range(a.rounds):
        for kind, path in files.items():
            for name, code in codes.items():
                r = one_run(Path(code).resolve(), path, a.device, work / f"{name}-{kind}.json")
                runs[name][kind].append(r)
                print(f"round {round_} {kind:9s} {name:8s} {r['wall_s']:7.2f} s "
                      f"{r['max_rss_mib']} MiB", flush=True)
    table = {name: {kind: {"median_wall_s": statistics.median(r["wall_s"] for r in rs),
                           "walls_s": [r["wall_s"] for r in rs],
                           "max_rss_mib": max(r["max_rss_mib"] for r in rs),
                           "verdicts": rs[-1]["verdicts"]} for kind, rs in per.items()}
             for name, per in runs.items()}
    records = sum(1 for _ in ids.open())
    result = {"records": records, "files": {k: str(v.relative_to(ROOT)) if v.is_relative_to(ROOT)
                                            else str(v) for k, v in files.items()},
              "device": a.device or "default", "rounds": a.rounds, "codes": codes,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
                         f"{platform.python_version()}", "results": table}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, per in table.items():
        print(name, {k: v["median_wall_s"] for k, v in per.items()})
    print(f"written {a.out}")


if __name__ == "__main__":
    main()
