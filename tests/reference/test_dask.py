"""Scoring on a real local Dask cluster (scheduler and worker processes, not a mock): ``check
--dask local:2`` says what one process says, and a worker killed mid-run costs nothing but time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
pytestmark = pytest.mark.slow  # a cluster of worker processes, each loading the model


def _tests(summary: dict) -> list[tuple]:
    return [(c["name"], t.get("group"), t.get("name"), t.get("p")) for c in summary["checks"]
            for t in c["details"].get("tests", []) if isinstance(t, dict)]


def test_check_on_a_local_cluster_equals_one_process(lite_responses: Path, tmp_path: Path,
                                                     run_cli) -> None:
    one, many = tmp_path / "one.json", tmp_path / "dask.json"
    code_one = run_cli("check", lite_responses, "--reference", "builtin", "--json", one,
                       "--no-progress")
    code_dask = run_cli("check", lite_responses, "--reference", "builtin", "--json", many,
                        "--no-progress", "--dask", "local:2")
    a, b = json.loads(one.read_text()), json.loads(many.read_text())
    assert code_one == code_dask == 0
    assert [(c["name"], c["verdict"], c["findings_total"]) for c in a["checks"]] == \
        [(c["name"], c["verdict"], c["findings_total"]) for c in b["checks"]]
    pa, pb = _tests(a), _tests(b)
    assert [t[:3] for t in pa] == [t[:3] for t in pb]
    # the same numbers to float rounding (another batch composition on the workers)
    np.testing.assert_allclose([t[3] for t in pa], [t[3] for t in pb], rtol=1e-3, atol=1e-9)


def _dies_once(marker: str):
    def task(*args):
        from servecheck.reference.dask_scoring import score_partition

        if not os.path.exists(marker):
            Path(marker).write_text("died")
            os._exit(1)  # the worker process dies mid-task, as a preempted node does
        return score_partition(*args)

    return task


def test_a_lost_worker_is_retried_without_double_counting(ref, tmp_path: Path) -> None:
    from servecheck.reference.dask_scoring import DaskScorer, open_client
    from servecheck.reference.sampling import HF, Sampling
    from servecheck.reference.scoring import score
    from servecheck.reference.token_scores import ScoreItem

    rng = np.random.default_rng(3)
    items = [ScoreItem(rng.integers(3, 900, 12).tolist(), rng.integers(3, 900, 9).tolist(),
                       Sampling(temperature=0.8), j) for j in range(12)]
    scorer = DaskScorer(open_client("local:2"), task=_dies_once(str(tmp_path / "died")))
    try:
        got = scorer(ref, items, HF)
    finally:
        scorer.close()
    assert (tmp_path / "died").exists()  # a worker really was lost
    want = score(ref, items, HF)
    assert [len(s) for s in got] == [len(s) for s in want]
    np.testing.assert_allclose(np.concatenate([s.logprob for s in got]),
                               np.concatenate([s.logprob for s in want]), atol=1e-5)


def test_local_gpu_workers_need_a_gpu() -> None:
    """``--dask local-gpu`` on a machine without CUDA: bad input naming the flag, before any
    worker starts (the one-worker-per-GPU run itself is measured on the device machine)."""
    import torch

    from servecheck.errors import InputError
    from servecheck.reference.dask_scoring import open_client

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(InputError, match="no CUDA GPU"):
        open_client("local-gpu")
    with pytest.raises(InputError, match="local-gpu:N"):
        open_client("local-gpu:x")
