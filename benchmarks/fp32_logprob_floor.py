"""How far correct fp32 servers' log-probs stray from the reference on long contexts, beside the
faults the fp32 tolerance must catch: the evidence for ``NUMERICS["fp32"].logprob``.

Every server answers the 84 long requests of ``examples/prompts-long.json`` (115 to 512 prompt
tokens around the built-in model's 128-token window; greedy and sampled, log-probs on), and the
answers are checked as ``servecheck check --numerics fp32`` does. Servers: the in-process one
(``hf:builtin``) and engines that share no code with the reference, each fp32 with its own
converter: vLLM 0.32 CPU (``.ci/vllm-env``), llama.cpp (f32 GGUF, f32 KV cache), CTranslate2,
ONNX Runtime GenAI; the real engines' own coarser KV caches (vLLM's ``--kv-cache-dtype fp8``,
llama.cpp's keys as q8_0 or q4_0), declared on the target as a user would; and the in-process
server with an FP8 KV cache and with its window one key too wide. An engine whose environment
is missing is left out of the table, said so.

    python benchmarks/fp32_logprob_floor.py        # writes benchmarks/results/fp32_logprob_floor.{json,md}
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "fp32_logprob_floor"
PROMPTS = ROOT / "examples" / "prompts-long.json"


@contextlib.contextmanager
def _vllm(kv_cache: str = "auto") -> Iterator[str]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from vllm_prefix_false_alarms import start_server

    proc, address = start_server(Path(tempfile.mkdtemp(prefix="fp32-floor-vllm-")),
                                 ("--kv-cache-dtype", kv_cache))
    try:
        yield f"openai://{address}/v1?mode=chat&concurrency=8&kv_cache_dtype={kv_cache}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


@contextlib.contextmanager
def _llama(kv_cache: str = "f32") -> Iterator[str]:
    from servecheck.reference.model import BUILTIN
    from servecheck.servers import llama_cpp
    from servecheck.servers.triton_host import free_ports

    with llama_cpp.serving(BUILTIN, free_ports(1)[0], Path(tempfile.mkdtemp()),
                           kv_cache=kv_cache) as address:
        yield f"openai://{address}/v1?mode=chat&concurrency=1&kv_cache_dtype={kv_cache}"


@contextlib.contextmanager
def _converted(engine: str, prefix: str) -> Iterator[str]:
    from servecheck.reference.model import BUILTIN
    from servecheck.servers.convert import converted

    yield f"{prefix}:{converted(engine, BUILTIN)}"


@contextlib.contextmanager
def _plain(spec: str) -> Iterator[str]:
    yield spec


SERVERS = {
    "in-process (hf:builtin)": lambda: _plain("hf:builtin"),
    "vLLM 0.32 CPU": _vllm,
    "llama.cpp (f32, f32 KV cache)": _llama,
    "ONNX Runtime GenAI": lambda: _converted("ortgenai", "ortgenai"),
    "CTranslate2 4.8": lambda: _converted("ct2", "ct2"),
    "vLLM 0.32 CPU, --kv-cache-dtype fp8": lambda: _vllm("fp8"),
    "llama.cpp, keys cached as q8_0": lambda: _llama("q8_0"),
    "llama.cpp, keys cached as q4_0": lambda: _llama("q4_0"),
    "fault: kv-fp8": lambda: _plain("hf:builtin?fault=kv-fp8"),
    "fault: window-off-by-one": lambda: _plain("hf:builtin?fault=window-off-by-one"),
}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "servecheck.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)


def one(name: str, spec: str, work: Path) -> dict:
    out, summary = work / "responses.jsonl", work / "summary.json"
    done = _cli("generate", str(PROMPTS), "--target", spec, "--out", str(out), "--no-progress")
    if done.returncode:
        return {"server": name, "error": (done.stdout + done.stderr)[-500:]}
    code = _cli("check", str(out), "--reference", "builtin", "--numerics", "fp32", "--json",
                str(summary), "--no-progress").returncode
    checks = {c["name"]: c for c in json.loads(summary.read_text())["checks"]}
    lp, ctx = checks["logprobs"], checks["context"]
    sides = (ctx.get("details") or {}).get("sides", {})
    return {"server": name, "exit": code,
            "mean_abs_diff": (lp.get("details") or {}).get("mean_abs_diff"),
            "max_abs_diff": (lp.get("details") or {}).get("max_abs_diff"),
            "by_side": {k: v.get("served_mean") for k, v in sides.items()},
            "failed": {c: v["summary"] for c, v in checks.items() if v["verdict"] == "fail"}}


def table(rows: list[dict]) -> str:
    out = ["| server | mean \\|Δ\\| | before the window | just past | far past | max \\|Δ\\| | "
           "fails at --numerics fp32 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['server']} | not run: {r['error'][-120:]!r} | | | | | |")
            continue
        mean = min((v for v in (r["mean_abs_diff"] or {}).values() if v is not None),
                   default=float("nan"))  # the convention the check names: the closest
        side = [r["by_side"].get(k) for k in ("before the window", "just past", "far past")]
        out.append(f"| {r['server']} | {mean:.1e} | " +
                   " | ".join("–" if v is None else f"{v:.1e}" for v in side) +
                   f" | {r['max_abs_diff'] or 0:.4f} | {', '.join(r['failed']) or '—'} |")
    return "\n".join(out)


def main() -> None:
    rows = []
    for name, server in SERVERS.items():
        try:
            with server() as spec:
                rows.append(one(name, spec, Path(tempfile.mkdtemp(prefix="fp32-floor-"))))
        except Exception as e:  # an engine this machine lacks: said in the table
            rows.append({"server": name, "error": f"{type(e).__name__}: {e}"})
        print(json.dumps(rows[-1])[:300], flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    text = table(rows)
    RESULTS.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
