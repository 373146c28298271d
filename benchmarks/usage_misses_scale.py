"""The usage check's search for unexplained prefix-cache misses at scale: the code before (each
record scanned every earlier one, quadratic) against this one (each looks back along its own
prompt's runs), on the same records, with the same answer.

The records are ``pooled_chunks.py``'s ``long`` set (prompts past the window, each asked
greedy then sampled, the second a prefix-cache hit) repeated with fresh ids to each size. The
code before is read from git (``--base``, default the commit before the change).

    python benchmarks/usage_misses_scale.py --sizes 2000,10000,20000
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from pooled_chunks import LONG, long_source, mixed  # noqa: E402 - the same records

OUT = ROOT / "benchmarks" / "results" / "scale" / "usage_misses_scale.json"


def before(base: str) -> types.ModuleType:
    """``checks/usage.py`` as it was at ``base``, its helpers only (no second registration)."""
    source = subprocess.run(["git", "show", f"{base}:servecheck/checks/usage.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    module = types.ModuleType("usage_before")
    sys.modules[module.__name__] = module
    exec(compile(source.split("@check(")[0], module.__name__, "exec"), module.__dict__)
    return module


def main() -> None:
    from servecheck.checks import usage
    from servecheck.checks.core.context import CheckContext
    from servecheck.checks.core.options import CheckOptions
    from servecheck.formats.responses import read_records
    from servecheck.reference.model import Reference

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="2000,10000,20000")
    ap.add_argument("--base", default="4be5419")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    old, ref, rows = before(args.base), Reference("builtin"), []
    long_source()
    assert LONG.exists()
    for n in map(int, args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            ctx = CheckContext(read_records(mixed(n, Path(tmp), False, LONG)), ref,
                               CheckOptions())
        idx = [i for i, r in enumerate(ctx.records)
               if r.usage is not None and r.usage.cached_tokens is not None]
        answers = {}
        for name, code in (("after", usage), ("before", old)):
            t = time.perf_counter()
            answers[name] = code.unexplained_misses(ctx, idx)
            rows.append({"records": n, "code": name, "seconds": round(time.perf_counter() - t, 3),
                         "unexplained": len(answers[name][0]), "others": len(answers[name][1])})
            print(json.dumps(rows[-1]), flush=True)
        assert answers["after"] == answers["before"], n
    machine = f"{platform.machine()}, Python {platform.python_version()}"
    args.out.write_text(json.dumps({"machine": machine, "base": args.base, "rows": rows},
                                   indent=1) + "\n")


if __name__ == "__main__":
    main()
