"""``servecheck probe`` against the in-process server: correct, it passes every probe; with each
deployment fault of issue 32 it exits 1 with the probe that sees it naming the fault.

The in-process server computes in fp32, so it is probed ``--numerics fp32``. Each fault is the
bug itself (``collect/targets/hf.py``): sliding layers one key too wide or attending globally,
keys and values stored in FP8 E4M3, a prefix cache that reuses another request's keys past the
shared prefix. ``spec-lossy`` is found by ``check`` on the long prompts instead
(``tests/checks/test_speculation.py``). Every request is seeded, so each outcome is fixed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # five probes of the in-process server, about 20 s each

WINDOW = "the sliding window is not what the checkpoint says"
CASES = {
    "": None,
    "?fault=window-ignored": ("long context", WINDOW),
    "?fault=window-off-by-one": ("long context", WINDOW),
    "?fault=kv-fp8": ("long context", "the records say the KV cache is fp8"),
    "?fault=prefix-cache-stale": ("prefix cache", "cache"),
}


@pytest.mark.parametrize("fault", list(CASES), ids=lambda f: f.partition("=")[2] or "correct")
def test_probe_names_each_deployment_fault(fault: str, run_cli, tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    code = run_cli("probe", "--target", f"hf:builtin{fault}", "--reference", "builtin",
                   "--numerics", "fp32", "--json", out)
    results = {r["name"]: r for r in json.loads(out.read_text())}
    verdicts = {name: r["verdict"] for name, r in results.items()}
    if CASES[fault] is None:
        assert code == 0 and "fail" not in verdicts.values(), verdicts
        return
    probe, words = CASES[fault]
    assert code == 1 and results[probe]["verdict"] == "fail", verdicts
    assert words in results[probe]["summary"], results[probe]["summary"]
