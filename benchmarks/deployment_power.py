"""False alarms and detection power where 2026 deployments break: the sliding window, an FP8 KV
cache, a prefix cache, speculative decoding (issue 32).

Each run is N long requests (``reference.long_prompts``: 0.9×, 1.1×, 2× and 4× the sliding
window, greedy and sampled, 64 tokens), each behind one of two long system prompts as production
traffic shares them, so a prefix cache hits on every request after the first of its system
prompt, and exact repeats hit deeper. The in-process server (``hf:builtin``) serves them
correctly, with a correct prefix cache, with lossless speculative sampling, or with one of five
real bugs; each run is checked exactly as ``servecheck check`` does (α = 0.01, ``--numerics
bf16``), as served (ids, log-probs, ``cached_tokens``) and stripped to text only, and as served
at ``--numerics fp32``, the server's own. A record the
per-record verdict judges implausible counts as an alarm too.

    python benchmarks/deployment_power.py --fa-runs 100 --reps 20 --sizes 50,100,200

Seeds: run r draws request seeds r·100003 + j; the default first block, 700000, was never used
to tune anything. Rows append to ``--results`` as they finish (resumable).
"""

from __future__ import annotations

import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from power_runs import outcome, power_args, run_power, upper  # noqa: E402 - shared shape

SYSTEMS = ["You are a helpful assistant. Read the whole message before you answer, and answer "
           "only from what it says. Keep the answer short and plain.",
           "You are a careful reader. The user gives you a long text; every answer must come "
           "from that text, in the words it uses, without a story of your own."]
CORRECT = {"fp32 (no cache, no speculation)": "hf:builtin",
           "prefix cache, correct": "hf:builtin?prefix_cache=on",
           "speculative sampling, lossless (1-layer draft)": "hf:builtin?speculative=draft"}
FAULTY = {f: f"hf:builtin?fault={f}" for f in
          ("window-off-by-one", "window-ignored", "kv-fp8", "prefix-cache-stale", "spec-lossy")}

VARIANTS = (("", "ids, log-probs"), ("_text_only", "text only"),
            ("_fp32", "ids, log-probs, checked --numerics fp32"))
"""How each run is checked: as served at bf16 tolerances (what GPU servers run), stripped to
text, and at fp32 tolerances, the in-process server's own numerics."""

_state: dict = {}


def _init() -> None:
    import torch

    from servecheck.reference.model import Reference

    torch.set_num_threads(1)
    _state["ref"] = Reference("builtin")
    _state["targets"] = {}


def requests_for(n: int, rep: int) -> list:
    from dataclasses import replace

    from servecheck.formats.conversation import Conversation, Message
    from servecheck.workflows.long_requests import long_requests

    pool = long_requests(_state["ref"])
    out = []
    for j in range(n):
        base = pool[(rep * 7919 + j) % len(pool)]
        turns = [Message(role="system", content=SYSTEMS[(rep + j) % 2]),
                 *base.conversation.contents]
        params = base.parameters.model_copy(update={"seed": rep * 100_003 + j})
        out.append(replace(base, id=f"r{rep}-{j}", conversation=Conversation(contents=turns),
                           parameters=params))
    return out


def one_run(name: str, spec: str, n: int, rep: int) -> dict:
    import servecheck
    from servecheck.collect.targets.hf import HFTarget
    from servecheck.formats.records import ResponseRecord

    ref = _state["ref"]
    target = _state["targets"].get(spec) or HFTarget.from_spec(spec, spec.partition(":")[2])
    _state["targets"] = {spec: target}  # one server at a time: a cache lives with its server
    t0 = time.perf_counter()
    records = []
    requests = requests_for(n, rep)
    if "prefix" in spec or "spec" in spec:  # one at a time, in order, as the cache sees traffic
        for r in requests:
            records += target.generate_batch([r])
    else:  # batched by sampling setting, as an engine batches
        from servecheck.reference.sampling import Sampling

        groups = defaultdict(list)
        for r in requests:
            groups[Sampling.of(r.parameters)].append(r)
        for group in groups.values():
            for b in range(0, len(group), 64):
                records += target.generate_batch(group[b:b + 64])
    row = {"server": name, "spec": spec, "n": n, "rep": rep,
           "hits": sum(bool(r.usage and r.usage.cached_tokens) for r in records)}
    text_only = [ResponseRecord(id=r.id, conversations=r.conversations, parameters=r.parameters,
                                input=r.input, output=r.output) for r in records]
    bf16 = servecheck.CheckOptions("builtin", numerics="bf16")
    fp32 = servecheck.CheckOptions("builtin", numerics="fp32")  # the server's own numerics
    for key, recs, options in (("", records, bf16), ("_text_only", text_only, bf16),
                               ("_fp32", records, fp32)):
        row.update(outcome(servecheck.check(recs, options, reference=ref), key))
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def table(rows: list[dict], sizes: list[int]) -> str:
    out = ["| correct server | variant | runs × N | runs failing any check (95% upper) | "
           "by check | runs with a record judged implausible |", "|---|---|---|---|---|---|"]
    for name in CORRECT:
        runs = [r for r in rows if r["server"] == name]
        for key, what in VARIANTS:
            if not runs or f"failed{key}" not in runs[0]:
                continue
            k = sum(bool(r[f"failed{key}"]) for r in runs)
            one = sum(bool(r[f"implausible{key}"]) for r in runs)
            by = Counter(c for r in runs for c in r[f"failed{key}"])
            out.append(f"| {name} | {what} | {len(runs)} × {runs[0]['n']} | {k}/{len(runs)} "
                       f"({100 * upper(k, len(runs)):.1f}%) | "
                       f"{', '.join(f'{c} {v}' for c, v in by.most_common()) or '—'} | "
                       f"{one}/{len(runs)} ({100 * upper(one, len(runs)):.1f}%) |")
    out += ["", "| fault | variant | " + " | ".join(f"N={n}" for n in sizes) +
            " | caught by | named first |", "|---|---|" + "---|" * len(sizes) + "---|---|"]
    for fault in FAULTY:
        runs = [r for r in rows if r["server"] == fault]
        for key, what in VARIANTS:
            if not runs or f"failed{key}" not in runs[0]:
                continue
            cells = []
            for n in sizes:
                v = [bool(r[f"failed{key}"]) for r in runs if r["n"] == n]
                cells.append(f"{sum(v)}/{len(v)}" if v else "–")
            by = Counter(c for r in runs for c in r[f"failed{key}"])
            named = Counter(r[f"first_cause{key}"] for r in runs if r[f"first_cause{key}"])
            out.append(f"| {fault} | {what} | " + " | ".join(cells) + " | " +
                       (", ".join(f"{c} {v}" for c, v in by.most_common(4)) or "—") + " | " +
                       (named.most_common(1)[0][0][:140] if named else "—") + " |")
    return "\n".join(out)


def main() -> None:
    a = power_args(__doc__.split("\n\n")[0], ROOT / "benchmarks" / "results" / "deployment_power",
                   100, "50,100,200", 700_000)
    run_power(a, CORRECT, FAULTY, one_run, _init, table)


if __name__ == "__main__":
    main()
