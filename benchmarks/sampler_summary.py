"""The sampler table of docs/validation-power.md from ``detection_power.py --mix realistic`` rows.

    python benchmarks/sampler_summary.py benchmarks/results/sampler/detection_power_realistic.jsonl

Per server: false alarms with their 95% Clopper–Pearson upper bound (correct servers), or the
detection rate (faulty ones), with ids and text-only side by side, and how often the sampler
check's named setting is the one the fault changed.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from scipy.stats import beta

NAMED = {"min-p-default": {"min_p"}, "top-k-40": {"top_k"}, "top-k-50": {"top_k"},
         "temperature-10pct": {"temperature", "temperature offset"},
         "temperature-ignored": {"temperature", "temperature offset"},
         "presence-penalty": {"presence_penalty"}, "frequency-penalty": {"frequency_penalty"},
         "repetition-penalty": {"repetition_penalty"}}


def main(path: str) -> None:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    by = defaultdict(list)
    for r in rows:
        by[r["spec"]].append(r)
    print("| server | runs | with ids | text only | sampler named the right setting (ids / text) |")
    print("|---|---|---|---|---|")
    for spec, runs in by.items():
        fault = spec.partition("fault=")[2]
        cells = []
        for key in ("failed", "failed_text_only"):
            k = sum(bool(r[key]) for r in runs)
            if fault:
                cells.append(f"{100 * k / len(runs):.0f}% ({k}/{len(runs)})")
            else:
                up = beta.ppf(0.95, k + 1, len(runs) - k)
                cells.append(f"{k}/{len(runs)} false alarms (95% upper bound {100 * up:.1f}%)")
        named = []
        for key in ("diagnosis", "diagnosis_text_only"):
            got = [r[key]["setting"] for r in runs if r.get(key)]
            want = NAMED.get(fault)
            named.append(f"{sum(g in want for g in got)}/{len(got)}" if want and got else "–")
        print(f"| {fault or spec} | {len(runs)} | {cells[0]} | {cells[1]} | {' / '.join(named)} |")


if __name__ == "__main__":
    main(sys.argv[1])
