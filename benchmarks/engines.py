"""False alarms and named defaults on engines that share no code with the reference.

A correct server must pass whatever its engine. This runs the built-in model on three
independent engines, each configured as a correct deployment would be, and checks what they
serve exactly as ``servecheck check`` does (α = 0.01, ``--numerics bf16``): every run is N
requests of a realistic mix (``servecheck.servers.mix``: greedy and sampled, top_p and top_k,
with and without a system prompt, multi-turn), each with its own seed, checked twice, as
collected (ids and log-probs where the engine gives them) and stripped to the original notes'
four fields. A run "fails" when any check fails; every record is also judged on its own
(``CheckRun.verdicts``, ``plausibility.judge``).

    python benchmarks/engines.py --runs 200 --rep-offset 300000          # the published table
    python benchmarks/engines.py --runs 5 --n 1000 --defaults            # shipped defaults

Engines: CTranslate2 and ONNX Runtime GenAI in process (``ct2:``, ``ortgenai:``), llama.cpp
through llama-cpp-python's OpenAI server (``.ci/llama-cpp-env``; chat mode, the GGUF's own
template). The checkpoints are converted by each engine's own converter
(``servecheck.servers.convert``). With ``--defaults`` the deployments leave settings to the
engine (CTranslate2's top_k 1, ONNX Runtime GenAI's do_sample off and its top_p dropped at
top_k 0, llama.cpp's top_k 40 / min_p 0.05 / repeat_penalty 1.1, a repetition_penalty sent
under a name llama.cpp does not read, a deployment's repetition penalty of 1.1): each must fail,
named. Rows are appended to ``--results`` as runs finish, so a stopped benchmark resumes.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from resumable import run_all  # noqa: E402 - the benchmarks' one run loop

RESULTS = ROOT / "benchmarks" / "results" / "engines"
CORRECT = {
    "CTranslate2": "ct2:{ct2}",
    "ONNX Runtime GenAI": "ortgenai:{ortgenai}",
    "llama.cpp (llama-cpp-python server, chat)": "openai://{llama}/v1?mode=chat&concurrency=1",
}
DEFAULTS = {
    "CTranslate2, its own defaults (sampling_topk 1)": ("ct2:{ct2}?defaults=engine", "shipped"),
    "CTranslate2, repetition_penalty 1.1 set by the deployment":
        ("ct2:{ct2}?repetition_penalty=1.1", "shipped"),
    "ONNX Runtime GenAI, its own defaults (do_sample false)":
        ("ortgenai:{ortgenai}?defaults=engine", "shipped"),
    "ONNX Runtime GenAI, top_k 0 sent as 0 (top_p dropped)":
        ("ortgenai:{ortgenai}?top_k_zero=1", "neutral"),
    "llama.cpp, its own defaults (top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1.1)":
        ("openai://{llama}/v1?mode=chat&concurrency=1", "shipped"),
    "llama.cpp, repetition_penalty 1.0 sent under vLLM's name (not read)":
        ("openai://{llama}/v1?mode=chat&concurrency=1&server=openai", "neutral"),
}
"""name → (target, how the requests spell their settings)."""

_state: dict = {}


def _init() -> None:
    import torch

    from servecheck.reference.model import BUILTIN, Reference
    from servecheck.servers.convert import converted

    torch.set_num_threads(1)
    _state["ref"] = Reference("builtin")
    _state["paths"] = {"ct2": converted("ct2", BUILTIN), "ortgenai": converted("ortgenai", BUILTIN)}


def _llama() -> str:
    """This worker's llama.cpp server, started on first use."""
    if "llama" not in _state:
        from servecheck.reference.model import BUILTIN
        from servecheck.servers import llama_cpp
        from servecheck.servers.triton_host import free_ports

        serving = llama_cpp.serving(BUILTIN, free_ports(1)[0], Path(tempfile.mkdtemp()))
        _state["llama"] = serving.__enter__()
        atexit.register(serving.__exit__, None, None, None)
    return _state["llama"]


def one_run(name: str, spec: str, style: str, n: int, rep: int) -> dict:
    import servecheck
    from servecheck.formats.records import ResponseRecord
    from servecheck.servers import mix

    ref = _state["ref"]
    paths = dict(_state["paths"])
    if "{llama}" in spec:
        paths["llama"] = _llama()
    target = spec.format(**paths)
    work = Path(tempfile.mkdtemp(prefix="engines-"))
    prompts, out = work / "prompts.json", work / "responses.jsonl"
    mix.write(prompts, n, rep, style)
    t0 = time.perf_counter()
    summary = servecheck.collect(prompts, target, out, show_progress=False, reference="builtin")
    records = [r for r in servecheck.read_records(out) if r.error is None]
    row = {"engine": name, "spec": spec, "style": style, "n": n, "rep": rep,
           "answered": len(records), "errors": len(summary.errors)}
    options = servecheck.CheckOptions("builtin")
    text_only = [ResponseRecord(id=r.id, conversations=r.conversations, parameters=r.parameters,
                                input=r.input, output=r.output) for r in records]
    for key, recs in (("", records), ("_text_only", text_only)):
        run = servecheck.check(recs, options, reference=ref)
        verdicts = run.verdicts
        sampler = next((r for r in run.results if r.name == "sampler"), None)
        best = sampler.details.best() if sampler and sampler.verdict == "fail" else None
        row.update({
            f"failed{key}": [r.name for r in run.results if r.verdict == "fail"],
            f"summaries{key}": {r.name: r.summary for r in run.results if r.verdict == "fail"},
            f"implausible{key}": [run.context.labels[i] for i, v in verdicts.items()
                                  if v.verdict != "pass"],
            f"judged{key}": len(verdicts),
            f"named{key}": best.describe() if best else None,
            f"convention{key}": run.convention.chosen.name,
            f"end_counting{key}": run.context.end_counting.to_json(),
        })
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def _beta_upper(k: int, n: int) -> float:
    from scipy.stats import beta

    if not n:
        return float("nan")
    return 1.0 if k == n else float(beta.ppf(0.975, k + 1, n - k))


def table(rows: list[dict]) -> str:
    """Per correct engine, per variant: runs, records, false alarms per check, any check (with
    the 95% upper bound), records judged implausible."""
    out = []
    by = defaultdict(list)
    for r in rows:
        if r["style"] == "neutral" and r["engine"] in CORRECT:
            by[r["engine"]].append(r)
    for engine, runs in by.items():
        out.append(f"#### {engine}\n")
        out.append("| variant | runs | records | false alarms by check | runs failing any "
                   "check (95% upper bound) | records judged implausible | runs with one |")
        out.append("|---|---|---|---|---|---|---|")
        for key, what in (("", "as served (ids, log-probs)"), ("_text_only", "text only")):
            k = sum(bool(r[f"failed{key}"]) for r in runs)
            checks = Counter(c for r in runs for c in r[f"failed{key}"])
            bad = sum(len(r[f"implausible{key}"]) for r in runs)
            judged = sum(r[f"judged{key}"] for r in runs)
            with_one = sum(bool(r[f"implausible{key}"]) for r in runs)
            per_check = ", ".join(f"{c} {v}" for c, v in checks.most_common()) or "none"
            out.append(f"| {what} | {len(runs)} | {sum(r['answered'] for r in runs)} | "
                       f"{per_check} | {k}/{len(runs)} ({100 * _beta_upper(k, len(runs)):.1f}%) "
                       f"| {bad}/{judged} | {with_one}/{len(runs)} "
                       f"({100 * _beta_upper(with_one, len(runs)):.1f}%) |")
        out.append("")
    faulty = [r for r in rows if r["engine"] in DEFAULTS]
    if faulty:
        out.append("#### Shipped defaults and deployment mistakes\n")
        out.append("| deployment | runs × requests | runs failing | checks failing | named first "
                   "by the sampler (or greedy) row |")
        out.append("|---|---|---|---|---|")
        for name in DEFAULTS:
            runs = [r for r in faulty if r["engine"] == name]
            if not runs:
                continue
            checks = Counter(c for r in runs for c in r["failed"])
            named = runs[0]["named"] or runs[0]["summaries"].get("greedy", "—")
            out.append(f"| {name} | {len(runs)} × {runs[0]['n']} | "
                       f"{sum(bool(r['failed']) for r in runs)}/{len(runs)} | "
                       f"{', '.join(f'{c} {v}' for c, v in checks.most_common())} | {named} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--n", type=int, default=200, help="requests per run (at most 1000)")
    ap.add_argument("--rep-offset", type=int, default=300_000,
                    help="first seed block: blocks from 300000 were never used to tune")
    ap.add_argument("--defaults", action="store_true",
                    help="the shipped-defaults deployments instead of the correct ones")
    ap.add_argument("--only", default="", help="engine names to run, separated by ;")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--results", type=Path, default=RESULTS / "engines.jsonl")
    ap.add_argument("--table", type=Path, default=RESULTS / "engines.md")
    a = ap.parse_args()
    a.results.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(x) for x in a.results.read_text().splitlines() if x.strip()] \
        if a.results.exists() else []
    done = {(r["engine"], r["n"], r["rep"]) for r in rows}
    servers = {k: (v, "neutral") for k, v in CORRECT.items()} if not a.defaults else DEFAULTS
    only = [w.strip() for w in a.only.split(";") if w.strip()]
    jobs = [(name, spec, style, a.n, a.rep_offset + rep) for name, (spec, style) in
            servers.items() if not only or any(w in name for w in only) for rep in range(a.runs)]
    todo = [j for j in jobs if (j[0], j[3], j[4]) not in done]
    print(f"{len(jobs)} runs, {len(todo)} to do, {a.workers} worker(s)", flush=True)
    run_all(todo, one_run, a.results, rows, a.workers, _init)
    a.table.write_text(table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
