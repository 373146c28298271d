"""What scoring text-only records costs: the tokenization search against the canonical path.

``scoring_throughput.py --text-only`` runs this. Honest records are generated in process from
``examples/prompts.json`` (the built-in model, HF's sampler, batched and left-padded), stripped to
the original notes' four fields, and scored exactly as ``check`` scores them
(``CheckContext.prefetch``): once with every output on its canonical tokenization, once with the
search on (``servecheck.reference.tokenization``). Both are timed in the same process, interleaved, the
median of ``repeat`` runs each; the goal is a ratio ≤ 1.5. The same is done for every extra
reference given (the Gemma-3-1B-shaped one on a GPU), on the same texts.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import servecheck

ROOT = Path(__file__).resolve().parents[1]


def honest_records(n: int) -> list:
    """``n`` text-only records (seeds 1, 2, … as needed) from the built-in model."""
    from servecheck.collect.targets.hf import HFTarget
    from servecheck.formats.prompts import expand
    from servecheck.formats.records import ResponseRecord
    from servecheck.reference.sampling import Sampling

    block = json.loads((ROOT / "servecheck" / "examples" / "prompts.json").read_text())[0]
    per_seed = len(expand_block(block | {"seed": [1]}, expand))
    block["seed"] = list(range(1, -(-n // per_seed) + 1))
    requests = expand_block(block, expand)[:n]
    target = HFTarget("builtin")  # generation on the CPU: the records, not its speed, matter
    groups = defaultdict(list)
    for r in requests:
        groups[(Sampling.of(r.parameters), r.parameters.max_tokens, r.parameters.seed)].append(r)
    out = []
    for g in groups.values():
        for b in range(0, len(g), 64):
            out += target.generate_batch(g[b:b + 64])
    return [ResponseRecord(conversations=r.conversations, parameters=r.parameters, input=r.input,
                           output=r.output) for r in out]


def expand_block(block: dict, expand) -> list:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(block, fh)
    try:
        return expand(Path(fh.name))
    finally:
        Path(fh.name).unlink()


def cost(ref, records: list, repeat: int) -> dict:
    """Seconds of ``prefetch`` canonical and searched (medians), their ratio, and how many
    records the search changed."""

    times: dict[bool, list[float]] = {False: [], True: []}
    changed = 0
    servecheck.CheckContext(records[:32], ref).prefetch()  # warm-up: weights, kernels, caches
    for _ in range(repeat):
        for search in (False, True):
            ctx = servecheck.CheckContext(records, ref, servecheck.CheckOptions(search_tokens=search))
            t = time.perf_counter()
            ctx.prefetch()
            times[search].append(time.perf_counter() - t)
            if search:
                changed = len(ctx.departures)
    canonical, searched = statistics.median(times[False]), statistics.median(times[True])
    return {"records": len(records), "canonical_s": canonical, "searched_s": searched,
            "ratio": searched / canonical, "records_changed": changed, "runs": times}
