"""``check`` end to end on one GPU as the records grow: where the time goes with a 1B-shaped
reference, the baseline for issue 18's goal (10k records in ≤ 20 s on one H200, report included,
≤ 1 ms of CPU per record).

The records are the 5,376 honest ones of ``check_time.py`` (ids and log-probs), repeated with new
ids to reach each size. The reference is ``scoring_throughput.gemma_1b`` (the built-in tokenizer
and a Gemma-3-1B-shaped model of random weights, bf16): what is timed is the work, not the
verdicts (random weights fail most checks). Each phase is timed apart: reading, the check's
context (templating, tokenizing), teacher forcing, the checks, the JSON and HTML outputs; a
cProfile of the whole run names the Python that costs most.

    python benchmarks/gpu_check_scale.py --sizes 1000,10000 --out /tmp/out/gpu_check_scale.json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
SOURCE = ROOT / "benchmarks" / ".cache" / "text-only" / "hf-8.jsonl"


def grown(records: list, n: int) -> list:
    out = []
    for k in range(n):
        r = records[k % len(records)]
        out.append(r.model_copy(update={"id": f"{r.id}-{k // len(records)}"}))
    return out


def one(records: list, ref, out_dir: Path, device: str) -> dict:
    from rich.console import Console

    from servecheck.checks import run_checks
    from servecheck.checks.core.context import CheckContext
    from servecheck.checks.core.options import CheckOptions
    from servecheck.checks.plausibility import judge
    from servecheck.report.outputs import write_outputs
    from servecheck.workflows.check import teacher_force

    phases: dict[str, float] = {}
    t = time.perf_counter()
    ctx = CheckContext(records, ref, CheckOptions("builtin", device=device))
    phases["context (render, tokenize)"] = time.perf_counter() - t
    t = time.perf_counter()
    fit = teacher_force(ctx, Console(quiet=True), enabled=False)
    phases["teacher forcing"] = time.perf_counter() - t
    t = time.perf_counter()
    results = run_checks(ctx)
    phases["checks"] = time.perf_counter() - t
    t = time.perf_counter()
    meta = {"reference": "gemma-1b-shape", "records": len(records), "convention": fit.to_json()}
    write_outputs(Console(quiet=True), ctx, results, judge(ctx, results), meta, "gpu scale",
                  out_dir / "s.json", out_dir / "r.html", None)
    phases["outputs (JSON, HTML)"] = time.perf_counter() - t
    tokens = sum(len(ctx.output_ids(i)[0]) + len(ctx.prompt_ids(i)[0])
                 for i in range(len(ctx.records)))
    return {"records": len(records), "tokens": tokens,
            "phases_s": {k: round(v, 2) for k, v in phases.items()},
            "total_s": round(sum(phases.values()), 2)}


def main() -> None:
    import torch
    from scoring_throughput import gemma_1b

    from servecheck.formats.responses import read_records

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_check_scale.json")
    a = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a.out.parent.mkdir(parents=True, exist_ok=True)
    base = read_records(SOURCE)
    t = time.perf_counter()
    from servecheck.reference.model import Reference

    ref = gemma_1b(Reference("builtin").vocab_size, device)
    load_s = time.perf_counter() - t
    rows = []
    for n in (int(s) for s in a.sizes.split(",")):
        records = grown(base, n)
        profile = cProfile.Profile()
        profile.enable()
        row = one(records, ref, a.out.parent, device)
        profile.disable()
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(15)
        row["profile_top"] = text.getvalue().splitlines()[-22:]
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "profile_top"}), flush=True)
    gpu = torch.cuda.get_device_name() if device == "cuda" else "none"
    a.out.write_text(json.dumps({"device": gpu, "torch": torch.__version__,
                                 "reference_load_s": round(load_s, 2), "rows": rows}, indent=1))
    print(f"written {a.out}")


if __name__ == "__main__":
    main()
