"""Scoring over every GPU of a host: data parallel under ``torchrun``, no scheduler of our own.

``torchrun --nproc-per-node=N`` starts one process per GPU and sets up ``torch.distributed``;
each process holds a whole reference on its GPU, scores its share of the items (shares balanced
by token count, longest first onto the least loaded rank, so every rank sees the same split) and
``all_gather_object`` hands every rank all the scores, in the order of ``items``.

A reference too large for one GPU is the other case: ``Reference(spec, device="auto")`` lets
accelerate's ``device_map="auto"`` place its layers over the GPUs, and ``score`` runs it as one
model (one process); the two do not combine.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Sequence

import torch

from servecheck.reference import Reference
from servecheck.sampling import HF, Convention
from servecheck.scoring import ScoreItem, TokenScores, score


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
    mine = shares(items, dist.get_world_size())[dist.get_rank()]
    scored = score(ref, [items[i] for i in mine], convention, **budgets)
    gathered: list[tuple[list[int], list[TokenScores]] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (mine, scored))
    out: list[TokenScores | None] = [None] * len(items)
    for part in gathered:
        assert part is not None
        for i, s in zip(*part, strict=True):
            out[i] = s
    return [s for s in out if s is not None]
