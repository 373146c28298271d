"""Reference scores by teacher forcing: one forward pass over prompt + served output.

The server's RNG cannot be reproduced and need not be: feeding the served tokens back through
the reference gives, at every output position, the distribution q_i = S_θ(z_i) a correct server
sampled from. This costs one forward pass per response, where regenerating costs one per token, and one per
sequence where several items share it (a sequence rescored under several samplings).

How it stays fast (docs/performance.md has the measurements):

- Responses are sorted by length and batched under a token budget, right-padded, with no
  attention mask: attention is causal, so pads after a sequence never reach its real positions,
  and with no mask SDPA takes its flash kernel (the sliding-window mask of long rows aside).
- Only output positions are projected onto the vocabulary, grouped by sampling parameters, never
  more than ``logit_budget`` logits at once: rows per block shrink as the vocabulary grows, so
  memory stays flat in both batch size and vocabulary (Gemma's is 262k).
- The statistics come from streaming passes over each block of logits (``servecheck.reference.fused``,
  Triton kernels on CUDA), and everything stays on the device until one copy per call.

This module batches the items and runs the forward passes (``forward``); the blocks of logits are
``logit_blocks``, and what goes in and comes out (``ScoreItem``, ``TokenScores``) is
``token_scores``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch

from servecheck.reference.forward import forward_hidden
from servecheck.reference.logit_blocks import LogitBlocks
from servecheck.reference.model import Reference
from servecheck.reference.overlap import Overlap
from servecheck.reference.sampling import HF, Convention
from servecheck.reference.tails import TAIL_KEYS
from servecheck.reference.token_scores import STAT_KEYS, TEMPERATURE_FACTORS, ScoreItem, TokenScores, unpack

__all__ = ["plan_batches", "score", "score_rows"]


def plan_batches(order: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    out: list[list[int]] = []
    current: list[int] = []
    for i in order:  # longest first, so each batch's width is its first item's length
        if current and (len(current) + 1) * lengths[current[0]] > budget:
            out.append(current)
            current = []
        current.append(i)
    return out + ([current] if current else [])


def score(ref: Reference, items: Sequence[ScoreItem], convention: Convention = HF,
          token_budget: int | None = None, logit_budget: int | None = None) -> list[TokenScores]:
    """Teacher-force every item; the result is in the order of ``items``.

    Budgets default by device: 8192 tokens and 4M logits per block on CPU; 32768 tokens and 512M
    logits (1 GiB of bf16 logits, whatever the vocabulary) on CUDA. ``SERVECHECK_TOKEN_BUDGET``
    overrides the tokens: 1 forwards each sequence alone, so that its scores do not depend on
    which others share its batch (a chunked run then scores exactly as one process does:
    ``benchmarks/pooled_chunks.py``), at some cost in speed.
    """
    raw, extra = score_rows(ref, items, convention, token_budget, logit_budget)
    return unpack(items, raw.cpu().numpy(), extra.cpu().numpy())


def score_rows(ref: Reference, items: Sequence[ScoreItem], convention: Convention = HF,
               token_budget: int | None = None, logit_budget: int | None = None,
               sampled: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``score``'s numbers as two tensors on the scoring device, one row per output token in item
    order: raw [rows, 4] (log-prob, argmax, margin, rank) and extra [rows, 8 + 64 + 25]
    (``STAT_KEYS``, ``temp_ll``, then ``TAIL_KEYS``; NaN for unsampled items; no columns unless
    ``sampled``, which defaults to whether any item is sampled)."""
    dev = ref.model.get_output_embeddings().weight.device  # where the statistics are computed
    cuda = dev.type == "cuda"
    token_budget = token_budget or int(os.environ.get("SERVECHECK_TOKEN_BUDGET") or 0) or \
        (32768 if cuda else 8192)
    logit_budget = logit_budget or (1 << 29 if cuda else 1 << 22)
    lengths = [len(it.prompt_ids) + len(it.output_ids) for it in items]
    # items sharing their id lists (one sequence under several samplings) share one forward
    first_of: dict[tuple[int, int], int] = {}
    shared = [first_of.setdefault((id(it.prompt_ids), id(it.output_ids)), i)
              for i, it in enumerate(items)]
    riders: dict[int, list[int]] = {}
    for i, rep in enumerate(shared):
        riders.setdefault(rep, []).append(i)
    order = sorted(riders, key=lambda i: -lengths[i])
    n_out = [len(it.output_ids) for it in items]
    offsets = dict(zip(range(len(items)), np.cumsum([0, *n_out])[:-1].tolist(), strict=True))
    total = sum(n_out)
    if sampled is None:
        sampled = any(it.sampling is not None and not it.sampling.greedy for it in items)
    pad = ref.tokenizer.pad_token_id or 0
    first = ref.model.get_input_embeddings().weight.device  # differs from dev under a device_map
    raw = torch.zeros(total, 4, device=dev)
    extra = torch.full((total, len(STAT_KEYS) + len(TEMPERATURE_FACTORS) + len(TAIL_KEYS)
                        if sampled else 0),
                       math.nan, device=dev)
    blocks = LogitBlocks(ref, items, convention, logit_budget, raw, extra)
    # batch i's statistics run (on the worker) while the decoder runs batch i+1
    with torch.inference_mode(), Overlap(dev) as overlap:
        for batch in plan_batches(order, lengths, token_budget):
            ids = np.full((len(batch), lengths[batch[0]]), pad, dtype=np.int64)
            for row, i in enumerate(batch):
                p = len(items[i].prompt_ids)
                ids[row, :p] = items[i].prompt_ids
                ids[row, p:lengths[i]] = items[i].output_ids
            hidden = forward_hidden(ref, torch.from_numpy(ids).to(first, non_blocking=True)).to(dev)
            row_of = {i: row for row, rep in enumerate(batch) for i in riders[rep]}
            overlap.submit(blocks.add, row_of, hidden, offsets)
        overlap.submit(blocks.flush)
    return raw, extra
