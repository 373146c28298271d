"""Scoring over every GPU of a host: data parallel under ``torchrun``, no scheduler of our own.

``torchrun --nproc-per-node=N`` starts one process per GPU and sets up ``torch.distributed``;
each process holds a whole reference on its GPU, scores its share of the items (shares balanced
by token count, longest first onto the least loaded rank, so every rank sees the same split), and
one ``all_gather`` of the per-row tensors (padded to the longest share; NCCL, GPU to GPU) hands
every rank all the rows, which it puts back in the order of ``items``. (Pickling the scores
through ``all_gather_object`` instead cost most of what two GPUs lost to one; run 6 of
benchmarks/results/scoring/NOTES.md.)

A reference too large for one GPU is the other case: ``Reference(spec, device="auto")`` lets
accelerate's ``device_map="auto"`` place its layers over the GPUs, and ``score`` runs it as one
model (one process); the two do not combine.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Sequence

import numpy as np
import torch

from servecheck.reference.model import Reference
from servecheck.reference.sampling import HF, Convention
from servecheck.reference.scoring import score, score_rows
from servecheck.reference.token_scores import ScoreItem, TokenScores, unpack


def init_from_torchrun() -> tuple[int, int]:
    """(rank, world size); joins the process group torchrun describes, one GPU per process."""
    if "RANK" not in os.environ:
        return 0, 1
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def leave_group() -> None:
    """Every rank waits for the others, then leaves the process group: a rank that exits with
    its group still up can abort at interpreter exit while a peer is still tearing down
    ("terminate called without an active exception", SIGABRT, seen on 2 CPU ranks)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shares(items: Sequence[ScoreItem], world: int) -> list[list[int]]:
    """Item indices per rank, balanced by prompt + output tokens (deterministic)."""
    lengths = [len(it.prompt_ids) + len(it.output_ids) for it in items]
    heap = [(0, r) for r in range(world)]
    out: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(items)), key=lambda i: -lengths[i]):
        load, r = heapq.heappop(heap)
        out[r].append(i)
        heapq.heappush(heap, (load + lengths[i], r))
    return out


def score_data_parallel(ref: Reference, items: Sequence[ScoreItem], convention: Convention = HF,
                        **budgets: int) -> list[TokenScores]:
    """``score`` spread over the ranks of the current process group (plain ``score`` without
    one); every rank returns the scores of all items."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return score(ref, items, convention, **budgets)
    parts = shares(items, dist.get_world_size())
    sampled = any(it.sampling is not None and not it.sampling.greedy for it in items)
    mine = parts[dist.get_rank()]
    raw, extra = score_rows(ref, [items[i] for i in mine], convention, sampled=sampled, **budgets)
    rows = [sum(len(items[i].output_ids) for i in part) for part in parts]
    gathered = [_gather(t, max(rows)) for t in (raw, extra)]
    # rank r's rows sit at r·max(rows) in the gathered tensors, its items' rows one after another
    start: dict[int, int] = {}
    for r, part in enumerate(parts):
        at = r * max(rows)
        for i in part:
            start[i] = at
            at += len(items[i].output_ids)
    perm = np.concatenate([np.arange(start[i], start[i] + len(it.output_ids))
                           for i, it in enumerate(items)]).astype(np.int64)
    raw_all, extra_all = (g.cpu().numpy()[perm] for g in gathered)
    return unpack(items, raw_all, extra_all)


def _gather(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Every rank's ``t`` padded to ``rows`` rows, stacked rank after rank."""
    import torch.distributed as dist

    padded = torch.zeros(rows, t.shape[1], dtype=t.dtype, device=t.device)
    padded[: len(t)] = t
    out = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(out, padded)  # the list form: gloo (CPU) has it too
    return torch.cat(out)
