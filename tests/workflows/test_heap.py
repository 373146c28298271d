"""The collector set for a check: fewer passes, so a chunk's objects must not need one to be
freed. A run's context (its records' scores, hundreds of MB in a chunk of 20,000) is freed by
reference counting the moment its run is dropped; a cycle through it would keep each chunk
alive until a full pass, which the tuned collector makes rare (``workflows.heap``)."""

from __future__ import annotations

import gc
import weakref

import pytest

from servecheck.checks.core.options import CheckOptions
from servecheck.workflows import heap
from servecheck.workflows.check import check


def test_a_runs_context_is_freed_without_the_collector(lite_records, ref) -> None:
    assert ref.model is not None  # loaded before: the load's own frames are not the run's
    gc.collect()
    gc.disable()
    try:
        run = check(lite_records, CheckOptions(reference="builtin"), reference=ref, pooled=True)
        ctx = weakref.ref(run.context)
        scores = [weakref.ref(s) for s in list(run.context._scores.values())[:4]]
        assert scores
        del run
        assert ctx() is None, [type(r).__name__ for r in gc.get_referrers(ctx())]
        assert all(s() is None for s in scores)
    finally:
        gc.enable()


def test_tuned_sets_the_collector_while_it_runs_and_default_leaves_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    before = gc.get_threshold()
    monkeypatch.setenv("SERVECHECK_GC", "default")
    with heap.tuned():
        assert gc.get_threshold() == before
    monkeypatch.delenv("SERVECHECK_GC")
    with heap.tuned():
        assert gc.get_threshold() == heap.THRESHOLDS and gc.get_freeze_count() > 0
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
