"""Honest servers at scale, checked text-only and with ids: no check may fail.

``examples/prompts.json`` with seeds 1…S (S = 8: 5,376 requests) is collected twice, from two
correct servers of the built-in model:

- ``hf``: HF's own sampler in process, float32, batched and left-padded (64 a batch);
- ``triton``: the real Triton server (``servecheck serve triton``) over HTTP, through the
  ``ensemble`` model (text and one log-prob per generated token) and the ``tensorrt_llm`` model
  (text and ids), as ``servecheck generate`` collects them.

Each collection is checked as it came (ids where the server gave them) and stripped to the
original notes' four fields (``conversations``, ``parameters``, ``input``, ``output``), as
``servecheck check`` does, and the verdicts are tabulated. Beside them, what the tokenization
search did: how many records it changed, how many of the tokenizations it chose equal the ids the
server really produced, and the bias of each way of choosing (a posterior draw, the default, and
the most likely tokenization) in the per-group statistics, against the same records scored on
their true ids.

    python benchmarks/text_only_honest.py                 # both servers, 8 seeds (~40 min, 2 cores)
    python benchmarks/text_only_honest.py --seeds 2 --servers hf      # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from servecheck import CheckContext, CheckOptions, run_checks  # noqa: E402
from servecheck.checks.core.pooling import informative, sampled_groups  # noqa: E402
from servecheck.collect.targets.hf import HFTarget  # noqa: E402
from servecheck.formats.prompts import expand  # noqa: E402
from servecheck.formats.records import ResponseRecord  # noqa: E402
from servecheck.formats.responses import ResponseWriter, read_records  # noqa: E402
from servecheck.reference.model import Reference  # noqa: E402
from servecheck.reference.sampling import Sampling  # noqa: E402


def prompts_file(seeds: int, out: Path) -> Path:
    block = json.loads((ROOT / "servecheck" / "examples" / "prompts.json").read_text())[0]
    block["seed"] = list(range(1, seeds + 1))
    out.write_text(json.dumps(block))
    return out


def collect_hf(prompts: Path, out: Path) -> float:
    t = time.perf_counter()
    target = HFTarget("builtin")
    groups = defaultdict(list)
    for r in expand(prompts):
        groups[(Sampling.of(r.parameters), r.parameters.max_tokens, r.parameters.seed)].append(r)
    with ResponseWriter(out) as w:
        for g in groups.values():
            for b in range(0, len(g), 64):
                for r in target.generate_batch(g[b:b + 64]):
                    w.write(r)
    return time.perf_counter() - t


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def collect_triton(prompts: Path, outs: dict[str, Path]) -> float:
    """Start the real Triton host, collect each model with ``servecheck generate``, stop it."""
    http, grpc, metrics = free_port(), free_port(), free_port()
    exe = str(Path(sys.executable).parent / "servecheck")
    host = subprocess.Popen([exe, "serve", "triton", "--http-port", str(http), "--grpc-port",
                             str(grpc), "--metrics-port", str(metrics)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t = time.perf_counter()
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", http), 1).close()
                break
            except OSError:
                time.sleep(1)
        time.sleep(5)
        for model, out in outs.items():
            code = subprocess.call([exe, "generate", str(prompts), "--target",
                                    f"triton://127.0.0.1:{http}/{model}?concurrency=8",
                                    "--reference", "builtin", "--out", str(out), "--no-progress"])
            if code:
                raise SystemExit(f"generate from {model} exited {code}")
    finally:
        host.terminate()
        host.wait(60)
    return time.perf_counter() - t


def text_only(records: list[ResponseRecord]) -> list[ResponseRecord]:
    return [ResponseRecord(conversations=r.conversations, parameters=r.parameters, input=r.input,
                           output=r.output) for r in records]


def verdicts(ctx: CheckContext) -> dict:
    t = time.perf_counter()
    ctx.prefetch()
    results = run_checks(ctx)
    return {"seconds": round(time.perf_counter() - t, 1),
            "verdicts": {r.name: r.verdict for r in results},
            "failed": {r.name: r.summary for r in results if r.verdict == "fail"}}


def group_stats(ctx: CheckContext) -> dict[str, dict[str, float]]:
    """Per sampled group: mean log q per informative token, the PIT mean, the temperature fit."""
    from servecheck.checks.core.stats import temperature_fit
    from servecheck.reference.token_scores import TEMPERATURE_FACTORS

    out = {}
    for s, idx in sampled_groups(ctx).items():
        scores = ctx.scores(idx)
        m = {i: informative(scores[i]) for i in idx}
        logq = np.concatenate([scores[i].stats["logq"][m[i]] for i in idx])
        pit = np.concatenate([scores[i].stats["pit"][m[i]] for i in idx])
        temp = np.concatenate([scores[i].stats["temp_ll"][m[i]] for i in idx])
        fit = temperature_fit(temp, s.temperature, TEMPERATURE_FACTORS, s.label(), 0.1)
        out[s.label()] = {"tokens": len(logq), "mean_logq": float(logq.mean()),
                          "mean_pit": float(pit.mean()), "temperature": float(fit.estimate)}
    return out


def tokenization(ctx: CheckContext, records: list[ResponseRecord]) -> dict:
    """How the chosen tokens compare with the ids the server produced."""
    ends = set(ctx.ref.end_ids)
    same = changed = 0
    truly_off = 0
    for i, r in enumerate(records):
        ids = list(r.output_token_ids or [])
        cut = next((k + 1 for k, t in enumerate(ids) if t in ends), len(ids))
        same += ctx.output_ids(i)[0] == ids[:cut]
        changed += i in ctx.departures
        truly_off += ctx.ref.encode(r.output)[:cut] != ids[:cut]
    return {"records": len(records), "server_tokens_not_canonical": truly_off,
            "search_changed": changed, "chosen_equal_server_ids": same}


def study(name: str, path: Path, ref: Reference) -> dict:
    records = read_records(path)
    row: dict = {"collection": name, "records": len(records)}
    has_ids = all(r.output_token_ids for r in records)
    row["as_collected"] = verdicts(CheckContext(records, ref))
    text = CheckContext(text_only(records), ref)
    row["text_only"] = verdicts(text)
    if has_ids:
        row["tokens"] = tokenization(text, records)
        truth = CheckContext(records, ref)
        greatest = CheckContext(text_only(records), ref, CheckOptions(token_choice="max"))
        greatest.prefetch()
        row["bias"] = {"server ids": group_stats(truth), "posterior draw": group_stats(text),
                       "most likely": group_stats(greatest)}
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| collection | records | checked | failing checks | check s |", "|---|---|---|---|---|"]
    for r in rows:
        for how in ("as_collected", "text_only"):
            v = r[how]
            lines.append(f"| {r['collection']} | {r['records']} | {how.replace('_', ' ')} | "
                         f"{len(v['failed'])} {sorted(v['failed']) or ''} | {v['seconds']} |")
    for r in rows:
        if "tokens" in r:
            t = r["tokens"]
            lines.append(f"\n{r['collection']}: {t['server_tokens_not_canonical']} records whose "
                         f"served ids are not the canonical tokenization; the search changed "
                         f"{t['search_changed']}; the chosen tokens equal the server's ids in "
                         f"{t['chosen_equal_server_ids']}/{t['records']}.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--servers", default="hf,triton")
    ap.add_argument("--device", default="cpu", help="where the reference scores (cuda on a GPU)")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".cache" / "text-only")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" /
                    "text_only" / "text_only_honest_cpu.json")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    prompts = prompts_file(a.seeds, a.work / f"prompts-{a.seeds}-seeds.json")
    servers = a.servers.split(",")
    timing = {}
    files: dict[str, Path] = {}
    if "hf" in servers:
        files["hf (in process)"] = a.work / f"hf-{a.seeds}.jsonl"
        if not files["hf (in process)"].exists():
            timing["hf"] = collect_hf(prompts, files["hf (in process)"])
    if "triton" in servers:
        outs = {"ensemble": a.work / f"triton-ensemble-{a.seeds}.jsonl",
                "tensorrt_llm": a.work / f"triton-tensorrt_llm-{a.seeds}.jsonl"}
        if not all(p.exists() for p in outs.values()):
            timing["triton"] = collect_triton(prompts, outs)
        files |= {f"triton {m} (HTTP)": p for m, p in outs.items()}
    ref = Reference("builtin", device=a.device)
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    rows = [study(name, path, ref) for name, path in files.items()]
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(),
               "python": platform.python_version()}
    if a.device.startswith("cuda"):
        import torch

        machine["gpu"] = torch.cuda.get_device_name()
    doc = {"device": a.device, "seeds": a.seeds, "collect_seconds": timing, "rows": rows, "machine": machine}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
