"""Scoring on a Dask cluster: the scorer seam's third runner, after one process and torchrun.

``check --dask ADDRESS`` scores on an existing cluster (Kubernetes, Slurm through
dask-jobqueue, YARN, the clouds: wherever serving teams already run one); ``--dask local[:N]``
starts a local one of N worker processes bound to 127.0.0.1. Why Dask: it is pure Python (the
GPU machines here take wheels of at most 64 MiB; Ray's is 79 MB), and dask-cuda gives one worker
per GPU. The seam is one callable, ``Scorer(ref, items, convention) -> scores``, so a Ray runner
would be another class like ``DaskScorer``.

Each worker loads the reference once (cached per process) and scores whole items; items are
split into partitions balanced by token count, so a worker's share is as long as another's.
The checks themselves run in the driver on all the scores, so every verdict, p-value and
estimate is the single-process computation on the same numbers (the numbers agree to float
rounding: another batch composition). A worker lost mid-run has its partitions rerun elsewhere
(``retries``), and each partition's result is taken once, so nothing is counted twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from servecheck.errors import InputError
from servecheck.reference.parallel import shares
from servecheck.reference.sampling import Convention
from servecheck.reference.token_scores import ScoreItem, TokenScores

PARTITIONS_PER_WORKER = 2
"""More partitions than workers: a slow or lost worker delays less of the run."""
RETRIES = 3

_references: dict[tuple[str, str, str], Any] = {}


def score_partition(spec: str, dtype: str, device: str, items: list[ScoreItem],
                    convention: Convention) -> list[TokenScores]:
    """A worker's task: its reference (loaded once per worker process) scores ``items``."""
    import torch

    from servecheck.reference.model import Reference
    from servecheck.reference.scoring import score

    key = (spec, dtype, device)
    if key not in _references:
        torch.set_num_threads(1)  # one thread a worker process: workers are the parallelism
        _references[key] = Reference(spec, dtype=dtype, device=device)
    return score(_references[key], items, convention)


def gpu_cluster(count: int | None = None):
    """A local cluster of one worker process per GPU, each seeing only its own card
    (``CUDA_VISIBLE_DEVICES``), bound to 127.0.0.1. This is what dask-cuda's
    ``LocalCUDACluster`` does for this use; dask-cuda itself needs numba, llvmlite and pandas
    (~60 MB of wheels, over what the GPU machines here take), so a real cluster's GPU workers
    come from ``dask cuda worker`` (docs/cluster.md) and the local one from here."""
    import torch
    from distributed import Nanny, Scheduler, SpecCluster

    gpus = torch.cuda.device_count()
    if not gpus:
        raise InputError("--dask local-gpu: this machine has no CUDA GPU", where="--dask")
    n = min(count or gpus, gpus)
    workers = {i: {"cls": Nanny, "options": {"nthreads": 1, "host": "127.0.0.1",
                                             "env": {"CUDA_VISIBLE_DEVICES": str(i)}}}
               for i in range(n)}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": None}}
    return SpecCluster(workers=workers, scheduler=scheduler)


def open_client(address: str):
    """A client of the cluster at ``address``, or of a new local one: ``local[:N]`` (N CPU
    worker processes) or ``local-gpu[:N]`` (one worker per GPU, N of them at most)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise InputError("--dask needs Dask: pip install 'servecheck[dask]'",
                         where="--dask") from None
    if address == "local-gpu" or address.startswith("local-gpu:"):
        count = address.partition(":")[2]
        if count and (not count.isdigit() or int(count) < 1):
            raise InputError(f"expected local-gpu or local-gpu:N (N GPUs), got {address!r}",
                             where="--dask")
        return Client(gpu_cluster(int(count) if count else None))
    if address == "local" or address.startswith("local:"):
        count = address.partition(":")[2] or "2"
        if not count.isdigit() or int(count) < 1:
            raise InputError(f"expected local or local:N (N workers), got {address!r}",
                             where="--dask")
        cluster = LocalCluster(n_workers=int(count), threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None)
        return Client(cluster)
    try:
        return Client(address, timeout="30s")
    except (OSError, TimeoutError) as e:
        raise InputError(f"cannot reach the Dask scheduler ({e})", where=address) from None


class DaskScorer:
    """The scorer seam over a Dask cluster (``Scorer`` in ``checks/context.py``)."""

    remote = True
    """The driver need not load the model: the workers do."""

    def __init__(self, client, dtype: str = "float32", device: str = "cpu",
                 task: Callable[..., list[TokenScores]] = score_partition) -> None:
        self.client = client
        self.dtype, self.device = dtype, device
        self.task = task
        """What a worker runs (a test passes one that kills its worker once)."""

    @property
    def workers(self) -> int:
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    def __call__(self, ref, items: Sequence[ScoreItem], convention: Convention
                 ) -> list[TokenScores]:
        if not items:
            return []
        parts = [p for p in shares(items, self.workers * PARTITIONS_PER_WORKER) if p]
        futures = [self.client.submit(self.task, ref.spec, self.dtype, self.device,
                                      [items[i] for i in part], convention, pure=False,
                                      retries=RETRIES) for part in parts]
        out: list[TokenScores | None] = [None] * len(items)
        for part, scores in zip(parts, self.client.gather(futures), strict=True):
            for i, s in zip(part, scores, strict=True):
                out[i] = s
        assert all(s is not None for s in out)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        cluster = getattr(self.client, "cluster", None)
        self.client.close()
        if cluster is not None:
            cluster.close()
