"""A set checked in chunks against the same set in one process: the pooled checks (fit,
temperature, sampler, mask, context, cache, seeds: those the summary's ``pooled_checks`` names)
must give the same verdicts and p-values (to 1e-9), at 1k, 10k and 100k records on this CPU.

The records are the 5,376 that ``check_time.py`` collects from the built-in model (greedy and
sampled requests, 8 seeds), in a fixed shuffled order so that every size holds both, repeated
with fresh ids to each size: as sent (a repeat is the same request with the same seed, which
counts once), and as a server that ignores the seed would have served them (a repeat carries a
new seed and the same text: the seeds check fails, and the fit counts each text once). Their
prompts are short, so the context and cache rows are skipped there: a third set, ``long``
(``long_source``), has outputs before and past the window and prefix-cache hits and misses,
so that those rows are tested; it is repeated as sent. Each size
and set runs ``servecheck check`` twice, each in its own process: once with a chunk as large
as the set (one process holds it all), once in ``--chunks`` chunks (5 by default). The other
checks run per chunk at α/k, so their verdicts may differ from one process's (fewer records,
a stricter level); the JSON says which.

Scores are batched: a record scored beside other records than in one process moves by float32
rounding (about 1e-7 in a p-value), which says nothing of the pooling. So by default each
sequence is forwarded alone (``SERVECHECK_TOKEN_BUDGET=1``; ``--batched`` keeps the batches)
and both runs score every record exactly alike.

    python benchmarks/pooled_chunks.py --sizes 1000,10000,100000

Results: ``benchmarks/results/scale/pooled_chunks.json`` and a Markdown table beside.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "scale" / "pooled_chunks.json"
SOURCE = ROOT / "benchmarks" / ".cache" / "text-only" / "hf-8.jsonl"
LONG = ROOT / "benchmarks" / ".cache" / "pooled" / "long-prefix-cache.jsonl"
TURNS = (0, 1, 2, 4, 6, 8, 10, 12)
"""Earlier turns per conversation of the long set: prompts of about 40 to 360 tokens, before,
just past and far past the built-in model's 128-token window."""


def long_source(conversations: int = 200) -> Path:
    """The long set's records (made once, cached): ``conversations`` chats of the built-in
    model's kind, each asked greedy and at temperature 1 with its own seed, one request at a
    time to ``hf:builtin?prefix_cache=on``, so that the second of each pair is a prefix-cache
    hit (``usage.cached_tokens``) and the first a miss; the context and cache rows have tokens
    on both sides of the window and both hits and misses to compare."""
    if LONG.exists():
        return LONG
    from servecheck.collect.targets import open_target
    from servecheck.formats.conversation import Conversation, Message
    from servecheck.formats.parameters import Parameters
    from servecheck.formats.prompts import Request, request_id
    from servecheck.tinymodels import corpus

    rng, target = random.Random(7), open_target("hf:builtin?prefix_cache=on")
    LONG.parent.mkdir(parents=True, exist_ok=True)
    with LONG.with_suffix(".tmp").open("w") as fh:
        for j in range(conversations):
            messages = []
            for _ in range(TURNS[j % len(TURNS)]):
                q, a, _ = rng.choice(corpus.SIMPLE_TASKS)(rng)
                messages += [Message(role="user", content=q), Message(role="model", content=a)]
            ask = rng.choice([corpus._story, corpus._count])  # answers of 10-30 tokens
            conv = Conversation(contents=[*messages, Message(role="user", content=ask(rng)[0])])
            for t in (0.0, 1.0):
                params = Parameters(temperature=t, seed=j, max_tokens=40)
                for r in target.generate_batch([Request(request_id(conv, params, 0), conv, params)]):
                    fh.write(r.model_dump_json(exclude_none=True) + "\n")
    LONG.with_suffix(".tmp").replace(LONG)
    return LONG


def mixed(n: int, work: Path, reseed: bool, source: Path = SOURCE) -> Path:
    """``n`` records: the collected ones shuffled (fixed order), repeated with ids suffixed
    ``~k``; with ``reseed``, repeat k's seed moved by k·100003 (its text unchanged)."""
    out = work / f"records-{n}-{source.stem}-{'reseeded' if reseed else 'sent'}.jsonl"
    base = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    random.Random(0).shuffle(base)
    with out.open("w") as fh:
        for i in range(n):
            rec, k = json.loads(json.dumps(base[i % len(base)])), i // len(base)
            if k:
                rec["id"] = f"{rec.get('id') or i}~{k}"
                seed = rec["parameters"].get("seed")
                if reseed and seed is not None:
                    rec["parameters"]["seed"] = seed + 100003 * k
            fh.write(json.dumps(rec) + "\n")
    return out


def p_values(check: dict) -> dict[str, float]:
    """Every p-value a pooled row reports, by where it sits in its details."""
    d = check.get("details") or {}
    out = {}
    for k, t in enumerate(d.get("tests") or []):
        out[f"test {k} {t['group']} {t['name']}"] = t["p"]
        out[f"test {k} {t['group']} {t['name']} (Holm)"] = t["p_adjusted"]
    for g, row in (d.get("groups") or {}).items() if isinstance(d.get("groups"), dict) else ():
        out[f"{g} temperature"] = row["test"]["p"]
        out[f"{g} estimate"] = row["estimate"]
    for k, g in enumerate(d.get("groups") or []) if isinstance(d.get("groups"), list) else ():
        out[f"seed group {k}"] = g["p_value"]
    if "pooled_p" in d:
        out["seeds pooled"] = d["pooled_p"]
    for a in d.get("alternatives") or []:
        key = f"sampler {a['setting']} {a['grid_value']:g} {a['scope']}"
        out[key], out[f"{key} (Holm)"] = a["test"]["p"], a["test"]["p_adjusted"]
        out[f"{key} estimate"] = a["estimate"]
    return out


def run(path: Path, per_chunk: int, work: Path, batched: bool) -> tuple[dict, float]:
    summary = work / f"summary-{per_chunk}.json"
    t = time.perf_counter()
    code = subprocess.run([sys.executable, "-m", "servecheck.cli", "check", str(path),
                           "--reference", "builtin", "--json", str(summary), "--no-progress",
                           "--records-per-chunk", str(per_chunk), "--state", str(work / "state"),
                           "--fresh"], cwd=ROOT, stdout=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONHASHSEED": "0",
                               **({} if batched else {"SERVECHECK_TOKEN_BUDGET": "1"})}
                          ).returncode
    wall = time.perf_counter() - t
    if code not in (0, 1):
        raise SystemExit(f"check exited {code} on {path}")
    return json.loads(summary.read_text()), wall


def compare(n: int, chunks: int, work: Path, reseed: bool, batched: bool,
            source: Path = SOURCE) -> dict:
    path = mixed(n, work, reseed, source)
    whole, t_whole = run(path, n, work, batched)
    chunked, t_chunked = run(path, -(-n // chunks), work, batched)
    rows = {c["name"]: c for c in whole["checks"]}
    pooled, others = {}, {}
    for c in chunked["checks"]:
        w = rows[c["name"]]
        if c["name"] in chunked["pooled_checks"]:
            a, b = p_values(c), p_values(w)
            diff = max((abs(a[k] - b[k]) for k in a.keys() & b.keys()), default=0.0)
            pooled[c["name"]] = {"verdict": c["verdict"], "same_verdict": c["verdict"] ==
                                 w["verdict"], "p_values": len(a), "same_keys": a.keys() ==
                                 b.keys(), "max_abs_diff": diff}
        else:
            others[c["name"]] = [w["verdict"], c["verdict"]]
    name = "seed ignored" if reseed else "as sent"
    return {"records": n, "set": f"long, {name}" if source == LONG else name,
            "chunks": chunked.get("chunks", 1), "wall_whole_s": round(t_whole, 2),
            "wall_chunked_s": round(t_chunked, 2), "pooled": pooled,
            "other_rows_whole_vs_chunked": others}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--chunks", type=int, default=5)
    ap.add_argument("--sets", default="sent,ignored,long",
                    help="which sets: as sent, as a seed-ignoring server would have served the "
                         "repeats, and long (prompts past the window, prefix-cache hits and "
                         "misses, as sent)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--batched", action="store_true",
                    help="score in batches, as a check does by default (p-values then agree to "
                         "float32 rounding, not exactly)")
    args = ap.parse_args()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    scoring = "batched" if args.batched else "each sequence alone (SERVECHECK_TOKEN_BUDGET=1)"
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in map(int, args.sizes.split(",")):
            for which in args.sets.split(","):
                source = long_source() if which == "long" else SOURCE
                rows.append(compare(n, args.chunks, Path(tmp), which == "ignored",
                                    args.batched, source))
                print(json.dumps(rows[-1]), flush=True)
                write(args.out, rows, machine, scoring)  # each row kept as soon as it is made


def write(out: Path, rows: list[dict], machine: str, scoring: str) -> None:
    """The rows as JSON, and as the Markdown table docs/performance.md quotes."""
    out.write_text(json.dumps({"machine": machine, "scoring": scoring, "rows": rows},
                              indent=1) + "\n")
    lines = ["| records | set | chunks | whole (s) | chunked (s) | pooled rows: verdict, same, "
             "max abs Δp over p-values |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = "; ".join(f"{k} {v['verdict']}, {'same' if v['same_verdict'] else 'DIFFERENT'}, "
                          f"{v['max_abs_diff']:.1e} over {v['p_values']}"
                          for k, v in r["pooled"].items())
        lines.append(f"| {r['records']:,} | {r['set']} | {r['chunks']} | {r['wall_whole_s']} | "
                     f"{r['wall_chunked_s']} | {cells} |")
    out.with_suffix(".md").write_text(f"Machine: {machine}; scoring: {scoring}\n\n" +
                                      "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
