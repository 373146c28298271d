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


def code_env(code: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")])}


def assert_runs_from(code: Path) -> None:
    """The child imports the checkout's servecheck, not an installed one."""
    found = subprocess.run([sys.executable, "-c", "import servecheck; print(servecheck.__file__)"],
                           env=code_env(code), cwd=code, capture_output=True, text=True, check=True)
    if not Path(found.stdout.strip()).resolve().is_relative_to(code):
        raise SystemExit(f"{code}: servecheck imports from {found.stdout.strip()}")


PHASES = r"""
import json, sys, time
from pathlib import Path
t0 = time.perf_counter()
try:  # the stage packages
    from servecheck.checks import run_checks
    from servecheck.checks.core.context import CheckContext
    from servecheck.formats.responses import read_records
    from servecheck.reference.model import Reference
except ImportError:  # the flat layout before them
    from servecheck.checks import run_checks
    from servecheck.checks.core.context import CheckContext
    from servecheck.reference import Reference
    from servecheck.responses import read_records
out = {"import_s": time.perf_counter() - t0}
t = time.perf_counter(); records = read_records(Path(sys.argv[1])); out["read_s"] = time.perf_counter() - t
device = sys.argv[2] or ("cuda" if __import__("torch").cuda.is_available() else "cpu")
t = time.perf_counter(); ref = Reference("builtin", device=device); ref.model
out["load_s"] = time.perf_counter() - t
for rep in range(int(sys.argv[3])):  # the first pass compiles and warms
    ctx = CheckContext(records, ref)
    t = time.perf_counter(); ctx.prefetch(); out.setdefault("score_s", []).append(time.perf_counter() - t)
    t = time.perf_counter(); run_checks(ctx); out.setdefault("checks_s", []).append(time.perf_counter() - t)
print(json.dumps(out))
"""


def phases(code: Path, responses: Path, device: str | None, reps: int) -> dict:
    """One process: import, read, load, then ``reps`` × (score every record, run every check)."""
    args = [str(responses.resolve()), device or "", str(reps)]
    proc = subprocess.run([sys.executable, "-c", PHASES, *args], env=code_env(code), cwd=code,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{code}: phases failed\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def one_run(code: Path, responses: Path, device: str | None, summary: Path) -> dict:
    cmd = [sys.executable, "-m", "servecheck.cli", "check", str(responses.resolve()),
           "--reference", "builtin",
           "--no-progress", "--json", str(summary.resolve())] + (["--device", device] if device else [])
    env = code_env(code)  # and run from the checkout: ``-m`` puts the working directory first
    summary.unlink(missing_ok=True)
    log = summary.with_suffix(".log")
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=code)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS
    wall = time.perf_counter() - t0
    code_ = os.waitstatus_to_exitcode(status)
    if code_ not in (0, 1) or not summary.exists():
        raise SystemExit(f"{code}: exit {code_}\n{log.read_text()[-2000:]}")
    verdicts = {c["name"]: c["verdict"] for c in json.loads(summary.read_text())["checks"]}
    return {"wall_s": round(wall, 2), "max_rss_mib": round(usage.ru_maxrss / 1024),
            "verdicts": verdicts}


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--code", action="append", required=True, metavar="NAME=DIR")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", help="passed to check --device (default: check's own choice)")
    ap.add_argument("--responses", type=Path, help="default: the 5,376-record file, built on demand")
    ap.add_argument("--phases", type=int, default=0, metavar="REPS",
                    help="instead of whole commands, time the phases in one process per code: "
                         "import, read, load, then REPS × (score all, run the checks)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "check_time.json")
    a = ap.parse_args()
    codes = dict(c.split("=", 1) for c in a.code)
    ids = a.responses or ensure_file()
    files = {"ids": ids, "text-only": text_only(ids)}
    for code in codes.values():
        assert_runs_from(Path(code).resolve())
    runs: dict[str, dict[str, list[dict]]] = {n: {f: [] for f in files} for n in codes}
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "check_time"
    work.mkdir(parents=True, exist_ok=True)
    if a.phases:
        found: dict[str, dict[str, list[dict]]] = {n: {f: [] for f in files} for n in codes}
        for round_ in range(a.rounds):
            for kind, path in files.items():
                for name, code in codes.items():
                    r = phases(Path(code).resolve(), path, a.device, a.phases)
                    found[name][kind].append(r)
                    print(f"round {round_} {kind:9s} {name:14s} score "
                          f"{', '.join(f'{x:.2f}' for x in r['score_s'])} s, checks "
                          f"{', '.join(f'{x:.2f}' for x in r['checks_s'])} s", flush=True)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"records": sum(1 for _ in ids.open()), "device": a.device,
                                     "codes": codes, "machine": machine(), "phases": found},
                                    indent=2) + "\n")
        print(f"written {a.out}")
        return
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
              "machine": machine(), "results": table}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, per in table.items():
        print(name, {k: v["median_wall_s"] for k, v in per.items()})
    print(f"written {a.out}")


if __name__ == "__main__":
    main()
