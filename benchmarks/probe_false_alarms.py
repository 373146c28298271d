"""False-alarm rate of the seed probe's test on a correct sampler (in-process HF generation).

Each trial sends two prompts under ``--seeds`` fresh seeds at temperature 1 to ``hf:builtin``
(a correct server by construction) and runs the same test as ``servecheck probe`` and the
``seeds`` check. The design bound is α; this measures it. Results go to
benchmarks/results/probe_false_alarms.json.

    .venv/bin/python benchmarks/probe_false_alarms.py --trials 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import servecheck  # noqa: E402
from servecheck.checks.core.seed_tests import group_test  # noqa: E402
from servecheck.collect.targets.hf import HFTarget  # noqa: E402
from servecheck.reference.model import Reference  # noqa: E402
from servecheck.workflows.probe import CONVERSATIONS, probe_request  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--out", type=Path,
                    default=ROOT / "benchmarks" / "results" / "probe_false_alarms.json")
    a = ap.parse_args()
    ref = Reference("builtin")
    target = HFTarget("builtin")
    alarms, p_values, t0 = 0, [], time.time()
    for trial in range(a.trials):
        pair = [CONVERSATIONS[(2 * trial + k) % len(CONVERSATIONS)] for k in range(2)]
        ps = []
        for j, conv in enumerate(pair):
            records = [asyncio.run(target.generate(probe_request(f"t{trial}-{j}-{s}", conv, temperature=1.0,
                                                            seed=1000 * trial + s,
                                                            max_tokens=a.max_tokens)))
                       for s in range(a.seeds)]
            ps.append(group_test(servecheck.CheckContext(records, ref), records).p_value)
        p_values.append(min(ps))
        alarms += min(ps) * len(ps) < a.alpha
        print(f"trial {trial}: p = {min(ps):.3g} alarms {alarms}", flush=True)
    result = {"trials": a.trials, "seeds": a.seeds, "alpha": a.alpha, "false_alarms": alarms,
              "rate": alarms / a.trials, "p_values": p_values, "seconds": round(time.time() - t0),
              "machine": f"{platform.machine()}, {platform.python_version()}"}
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{alarms}/{a.trials} false alarms; written {a.out}")


if __name__ == "__main__":
    main()
