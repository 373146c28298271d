"""Data-parallel scoring (servecheck.reference.parallel) on two CPU processes joined by gloo: every rank gets
every item's scores, in item order, equal to one process scoring them all."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from servecheck.reference.sampling import Sampling
from servecheck.reference.token_scores import ScoreItem

pytestmark = pytest.mark.slow  # spawned ranks and torchrun, each loading the model


def _items(vocab: int) -> list[ScoreItem]:
    rng = np.random.default_rng(4)
    kinds = [None, Sampling(temperature=0.7, top_p=0.9), Sampling(temperature=0.0),
             Sampling(temperature=1.0, top_k=40)]
    return [ScoreItem(rng.integers(3, vocab, rng.integers(5, 40)).tolist(),
                      rng.integers(3, vocab, rng.integers(1, 30)).tolist(), kinds[j % 4], j)
            for j in range(13)]


def _rank(rank: int, port: int, out: str) -> None:
    from servecheck.reference.model import Reference
    from servecheck.reference.parallel import leave_group, score_data_parallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    ref = Reference("builtin")
    got = score_data_parallel(ref, _items(ref.model.config.vocab_size))
    np.savez(f"{out}{rank}.npz", logprob=np.concatenate([s.logprob for s in got]),
             logq=np.concatenate([s.stats.get("logq", np.zeros(0)) for s in got]),
             temp=np.concatenate([s.stats["temp_ll"] for s in got if s.stats]),
             sizes=np.array([len(s) for s in got]))
    leave_group()


def test_two_ranks_equal_one_process(ref, tmp_path) -> None:
    from servecheck.reference.scoring import score

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(port, str(tmp_path / "r")), nprocs=2, start_method="spawn")
    items = _items(ref.model.config.vocab_size)
    want = score(ref, items)
    for rank in range(2):
        got = np.load(tmp_path / f"r{rank}.npz")
        assert got["sizes"].tolist() == [len(it.output_ids) for it in items]
        np.testing.assert_allclose(got["logprob"], np.concatenate([s.logprob for s in want]), atol=1e-5)
        np.testing.assert_allclose(got["logq"], np.concatenate([s.stats.get("logq", np.zeros(0))
                                                                for s in want]), atol=1e-5)
        np.testing.assert_allclose(got["temp"], np.concatenate([s.stats["temp_ll"] for s in want
                                                                if s.stats]), atol=1e-5)


def test_check_under_torchrun_equals_one_process(lite_responses, tmp_path) -> None:
    """``torchrun --nproc-per-node=2 -m servecheck.cli check``: the ranks share the scoring, rank 0
    alone writes the summary, and it says what a single process says."""
    import json
    import subprocess
    import sys

    from servecheck.cli import main

    one = tmp_path / "one.json"
    code = main(["check", str(lite_responses), "--reference", "builtin", "--json", str(one),
                 "--no-progress"])
    two = tmp_path / "two.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node=2", "-m", "servecheck.cli", "check", str(lite_responses),
                          "--reference", "builtin",
                          "--json", str(two), "--no-progress"], capture_output=True, text=True,
                         env=env, timeout=600, cwd=tmp_path)
    assert run.returncode == code, run.stderr[-2000:]
    assert run.stdout.count("summary written to") == 1  # rank 0 only

    def verdicts(path):
        doc = json.loads(path.read_text())
        return [(c["name"], c["verdict"], c["findings_total"]) for c in doc["checks"]]

    assert verdicts(two) == verdicts(one)
