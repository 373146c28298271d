"""The context and cache rows of a set checked in chunks are one process's: each chunk keeps its
tokens' evidence (``checks.core.token_pool``), the chunks' pool merges in set order, and the
rows are decided once over the set, at their full α, on the distinct draws the fit chose; a
resumed run merges the pools it saved.

The records are served by the in-process ``hf:builtin`` target with a real fault, greedy and
sampled, past the 128-token window and before it, with served log-probs, judged at fp32
numerics: one set whose window
is ignored (the context row fails), one whose prefix cache restores stale keys (the cache row
fails). Each sequence is scored alone (``SERVECHECK_TOKEN_BUDGET=1``), so that both runs score
every record alike; deterministic (fixed seeds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from servecheck.checks.core.served_logprobs import ServedColumns
from servecheck.checks.core.token_pool import TokenPool
from servecheck.workflows.saved_state import dumps, loads


def _row(summary: dict, name: str) -> dict:
    return next(c for c in summary["checks"] if c["name"] == name)


def _same(a: Any, b: Any, where: str = "") -> None:
    """Equal, numbers to 1e-9 (a p-value's absolute, an effect's relative error)."""
    if isinstance(b, dict):
        assert isinstance(a, dict) and a.keys() == b.keys(), where
        for k in b:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(b, list):
        assert isinstance(a, list) and len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{k}]")
    elif isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-9, nan_ok=True), where
    else:
        assert a == b, where


@pytest.mark.slow  # 32 long requests served per fault, each set checked whole and in 4 chunks
@pytest.mark.parametrize(("spec", "failing"), [
    ("hf:builtin?fault=window-ignored", "context"),
    ("hf:builtin?fault=prefix-cache-stale", "cache"),
])
def test_chunks_pool_context_and_cache_into_the_rows_of_one_process(
        serve, long_requests, tmp_path: Path, check_json, spec: str, failing: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVECHECK_TOKEN_BUDGET", "1")
    records = serve(spec, long_requests(seed=5, temperatures=(0.0, 1.0)))
    path = tmp_path / "responses.jsonl"
    path.write_text("".join(r.model_dump_json(exclude_none=True) + "\n" for r in records))
    _, whole = check_json(path, tmp_path, "builtin", "--numerics", "fp32")
    _, chunked = check_json(path, tmp_path, "builtin", "--numerics", "fp32",
                            "--records-per-chunk", "8", "--state", tmp_path / "state")
    assert chunked["chunks"] == 4
    assert {"context", "cache", "logprobs"} <= set(chunked["pooled_checks"])
    for name in ("context", "cache", "logprobs", "fit", "temperature"):
        row = _row(chunked, name)
        said = row["summary"].removesuffix(" (pooled over the 4 chunks, tested once)")
        _same({**row, "summary": said}, _row(whole, name), name)
    # stopped before the third chunk was saved: the resumed run merges what the others saved
    (tmp_path / "state" / "chunk-00002.json").unlink()
    _, resumed = check_json(path, tmp_path, "builtin", "--numerics", "fp32",
                            "--records-per-chunk", "8", "--state", tmp_path / "state")
    assert resumed["resumed_chunks"] == 3
    for name in ("context", "cache", "logprobs"):
        _same(_row(resumed, name), _row(chunked, name), name)
    row = _row(chunked, failing)
    assert row["verdict"] == "fail", row["summary"]
    assert row["details"]["tests"], row  # decided on tokens, not skipped
    if failing == "cache":
        assert _row(chunked, "cache")["details"]["hits"] > 0
        assert _row(chunked, "context")["details"]["tests"]  # both rows tested, not skipped


def _pool(labels: tuple[str, ...], tokens: list[int], served: list[bool], kv: dict[str, int]
          ) -> TokenPool:
    n = int(sum(tokens))
    rng = np.random.default_rng(len(labels))
    m = int(sum(t for t, s in zip(tokens, served, strict=True) if s))
    columns = ServedColumns(np.array([t for t, s in zip(tokens, served, strict=True) if s]),
                            np.array([t for t, s in zip(tokens, served, strict=True) if s]),
                            np.zeros(sum(served), bool), np.zeros(sum(served), bool),
                            rng.random((3, m)), np.array([1, 0])) if any(served) else None
    return TokenPool(128, labels, np.array([k % 2 == 0 for k in range(len(labels))]),
                     np.arange(len(labels), dtype=np.int64) * 50, np.array(tokens),
                     rng.random(n) < 0.1, rng.random(n).astype(np.float32), np.array(served),
                     columns, kv)


def test_a_merged_pool_keeps_set_order_and_round_trips() -> None:
    a = _pool(("a", "b"), [3, 2], [True, False], {"fp8": 1})
    b = _pool(("c",), [4], [False], {})
    c = _pool(("d", "e", "f"), [1, 0, 2], [True, True, False], {"q4_0": 2, "fp8": 1})
    abc = a.merge(b, c)
    assert abc.labels == ("a", "b", "c", "d", "e", "f") and len(abc) == 6
    assert abc.kv == {"fp8": 2, "q4_0": 2} and abc.kv_cache() == "fp8"  # a tie: first seen
    assert abc.columns is not None and abc.columns.diffs.shape == (3, 3 + 1 + 0)
    ev = abc.evidence(np.ones(int((~abc.greedy).sum()), dtype=bool))
    # each token knows its record and its position (prompt length + output index)
    assert ev.record.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 5, 5]
    assert ev.position.tolist() == [0, 1, 2, 50, 51, 0, 1, 2, 3, 0, 100, 101]
    served = ~np.isnan(ev.served)
    assert served.tolist() == [True] * 3 + [False] * 6 + [True] + [False] * 2
    back = loads(dumps(abc))
    assert isinstance(back, TokenPool) and back.labels == abc.labels
    for field in ("greedy", "prompt", "tokens", "mismatch", "pit", "served"):
        assert np.array_equal(getattr(back, field), getattr(abc, field), equal_nan=True)
    assert np.array_equal(back.columns.diffs, abc.columns.diffs)
