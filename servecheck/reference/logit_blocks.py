"""Output rows to statistics: hidden states projected onto the vocabulary in blocks of rows.

Only output positions are projected, grouped by sampling parameters, never more than
``logit_budget`` logits at once: rows per block shrink as the vocabulary grows, so memory stays
flat in both batch size and vocabulary (Gemma's is 262k). A block's statistics come from the
streaming passes of ``fused`` (Triton kernels on CUDA). Apart from ``scoring``, which runs the
forward passes, because this is the other half of the work and has its own state: rows waiting,
across forward batches, until a block of their group is full (``LogitBlocks``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from servecheck.reference.fused import sampled_stats
from servecheck.reference.model import Reference
from servecheck.reference.passes import row_pass
from servecheck.reference.sampling import Convention, Sampling, apply_penalties, boundary_slack, transform
from servecheck.reference.tails import context_windows, tail_stats
from servecheck.reference.token_scores import STAT_KEYS, ScoreItem

__all__ = ["MAX_ROWS", "LogitBlocks", "block_stats", "masked_logits", "reference_logits",
           "token_counts", "unpack_bits"]

MAX_ROWS = 4096
"""Rows per logit block at most; 2048 already fill an H100 (one Triton program per row)."""


def reference_logits(ref: Reference, hidden: torch.Tensor) -> torch.Tensor:
    """Logits in the model's dtype (bf16 stays bf16: the passes read it and upcast in registers)."""
    head = ref.model.get_output_embeddings()
    logits = head(hidden.to(head.weight.device))
    cap = getattr(ref.model.config, "final_logit_softcapping", None)
    return torch.tanh(logits.float() / cap) * cap if cap else logits


def unpack_bits(bits: torch.Tensor, vocab: int) -> torch.Tensor:
    """bool [R, vocab] from an int32 bitmask (``ScoreItem.allowed``); rows of the output head
    past the tokenizer's vocabulary (padding) are never allowed."""
    shifts = torch.arange(32, device=bits.device, dtype=torch.int32)
    out = ((bits.unsqueeze(-1) >> shifts) & 1).bool().reshape(len(bits), -1)[:, :vocab]
    return torch.nn.functional.pad(out, (0, vocab - out.shape[1])) if out.shape[1] < vocab else out


def masked_logits(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Logits with what a grammar refuses pushed far below the rest: finite, so the passes'
    p·log p stays 0 rather than NaN, and far enough that no temperature brings it back."""
    floor = max(torch.finfo(logits.dtype).min / 2, -1e9)
    return logits.masked_fill(~allowed, floor)


def token_counts(item: ScoreItem, rows: slice, vocab: int, convention: Convention,
            device: torch.device | str = "cpu") -> torch.Tensor:
    """Token counts of the penalised context before each output position in ``rows``."""
    base = torch.zeros(vocab, device=device)
    if convention.penalty_scope == "prompt+output":
        prompt = torch.tensor(item.prompt_ids, dtype=torch.long, device=device)
        base.index_add_(0, prompt, torch.ones(len(prompt), device=device))
    before = torch.tensor(item.output_ids[: rows.start], dtype=torch.long, device=device)
    base.index_add_(0, before, torch.ones(len(before), device=device))
    block = torch.tensor(item.output_ids[rows], dtype=torch.long, device=device)
    onehot = torch.zeros(len(block), vocab, device=device).scatter_(1, block[:, None], 1.0)
    return base + onehot.cumsum(0) - onehot


def block_stats(logits: torch.Tensor, tok: torch.Tensor, s: Sampling | None,
                 convention: Convention, counts: torch.Tensor | None,
                 windows: tuple[torch.Tensor, torch.Tensor] | None = None,
                 watch: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Raw [R, 4] and, with a sampling, [R, len(STAT_KEYS) + 64 + len(TAIL_KEYS)] statistics of
    one logit block (``windows``: the rows' penalty contexts, ``tails.context_windows``;
    ``watch``: the token set whose q-mass is ``watched``)."""
    sampled = s is not None and s.temperature > 0
    inv_t = torch.full((len(tok),), 1.0 / s.temperature if sampled else 1.0,  # type: ignore[union-attr]
                       device=logits.device, dtype=torch.float32)
    lanes = sampled and (s.top_k > 0 or s.top_p < 1)  # type: ignore[union-attr]  # candidates ahead
    rp = row_pass(logits, tok, inv_t, lanes)
    if s is None:
        return rp.raw(), None
    z, rq = logits, rp
    if counts is not None and s.penalised:
        z = apply_penalties(logits.float(), counts, s)
        rq = row_pass(z, tok, inv_t, lanes)
    st = sampled_stats(z, s, rq, convention)
    if "rule" not in st:  # a convention the fused sums do not explain: ask boundary_slack
        st["rule"], st["slack"] = torch.zeros_like(st["logq"]), torch.zeros_like(st["logq"])
        out = torch.isinf(st["logq"]).nonzero()[:, 0]
        if len(out):
            r, sl = boundary_slack(logits[out].float(), tok[out], s, convention,
                                   None if counts is None else counts[out])
            st["rule"][out], st["slack"][out] = r.float(), sl
    st["watched"] = torch.full_like(st["logq"], float("nan")) if watch is None else \
        transform(logits.float(), s, convention, counts)[:, watch].exp().sum(-1)
    tails = tail_stats(z, tok, rq.m, inv_t, st["support_cut"], st["norm"], windows)
    return rp.raw(), torch.cat([torch.stack([st[k] for k in STAT_KEYS], 1), st["temp_ll"], tails], 1)

def _group_rows(items: Sequence[ScoreItem], batch: list[int]) -> dict[Sampling | None, list[int]]:
    """Batch rows (in item order) of each sampling group; greedy and unsampled items share None."""
    groups: dict[Sampling | None, list[int]] = {}
    for i in batch:
        s = items[i].sampling
        groups.setdefault(s if s is not None and not s.greedy else None, []).append(i)
    return groups


def _to(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on the device without waiting for the device: a blocking copy would wait
    for every queued kernel (the forward just launched) before the next launch."""
    return torch.from_numpy(a).to(device, non_blocking=True)


class LogitBlocks:
    """Output rows waiting for their logit block, per sampling group, across forward batches.

    One Triton program streams one row, so a block needs a thousand rows or more to fill the GPU;
    a group's rows from one forward batch are often fewer. Rows (hidden states, 2 KiB each) wait
    here until a full block of their group is ready; ``flush`` scores the rest at the end.
    Penalised rows need their own item's token counts and are scored item by item at once.
    """

    def __init__(self, ref: Reference, items: Sequence[ScoreItem], convention: Convention,
                 logit_budget: int, raw: torch.Tensor, extra: torch.Tensor) -> None:
        self.ref, self.items, self.convention = ref, items, convention
        self.raw, self.extra = raw, extra
        self.vocab = ref.model.get_output_embeddings().weight.shape[0]
        # rows per block: what the logit budget allows, at most MAX_ROWS (per-row tensors such
        # as the candidates' temperature profile would otherwise grow as the vocabulary shrinks)
        self.step = max(1, min(MAX_ROWS, logit_budget // self.vocab))
        self.pending: dict[Sampling | None, list[tuple[torch.Tensor, ...]]] = {}

    def add(self, row_of: dict[int, int], hidden: torch.Tensor, offsets: dict[int, int]) -> None:
        """Queue the items ``row_of`` names, item → its row of ``hidden`` (rows may be shared)."""
        width, dim = hidden.shape[1], hidden.shape[2]
        flat = hidden.reshape(-1, dim)
        dev = hidden.device
        for s, members in _group_rows(self.items, list(row_of)).items():
            parts = []
            for i in members:
                row, p, o = row_of[i], len(self.items[i].prompt_ids), len(self.items[i].output_ids)
                # the hidden state at the position before each output token predicts that token
                parts.append((np.arange(row * width + p - 1, row * width + p + o - 1),
                              np.arange(offsets[i], offsets[i] + o),
                              np.asarray(self.items[i].output_ids, dtype=np.int64), i))
            alone = [x for x in parts if self.items[x[3]].alone]
            for pos, dst, tok, i in alone:
                self._alone(s, flat[_to(pos, dev)], _to(tok, dev), _to(dst, dev), i)
            parts = [x for x in parts if not self.items[x[3]].alone]
            if not parts:
                continue
            pos, dst, tok = (_to(np.concatenate([x[k] for x in parts]), dev) for k in range(3))
            waiting = (flat[pos], tok, dst)
            if s is not None:  # sampled rows carry their penalty contexts
                wins = [self._windows(i, np.arange(len(x[2]))) for x in parts for i in [x[3]]]
                waiting += tuple(_to(np.concatenate([w[k] for w in wins]), dev) for k in range(2))
            self.pending.setdefault(s, []).append(waiting)
            if sum(len(x[1]) for x in self.pending[s]) >= self.step:
                self._run(s, final=False)

    def _windows(self, i: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return context_windows(self.items[i].prompt_ids, self.items[i].output_ids, positions)

    def flush(self) -> None:
        for s in list(self.pending):
            self._run(s, final=True)

    def _run(self, s: Sampling | None, final: bool) -> None:
        waiting = self.pending.pop(s)
        cols = [torch.cat([x[k] for x in waiting]) for k in range(len(waiting[0]))]
        n = len(cols[1])
        blocks = -(-n // self.step)
        size = -(-n // blocks)  # even blocks: no small tail block leaving the GPU idle
        end = n if final else (n // self.step) * self.step
        size = size if final else self.step
        for a in range(0, end, size):
            h, tok, dst, *wins = (c[a:a + size] for c in cols)
            self._block(s, h, tok, dst, None, (wins[0], wins[1]) if wins else None)
        if end < n:
            self.pending[s] = [tuple(c[end:] for c in cols)]

    def _alone(self, s: Sampling | None, h: torch.Tensor, tok: torch.Tensor, dst: torch.Tensor,
               i: int) -> None:
        it = self.items[i]
        for a in range(0, len(tok), self.step):
            b = min(a + self.step, len(tok))
            counts = None
            if s is not None and s.penalised:
                counts = token_counts(it, slice(a, b), self.vocab, self.convention, h.device)
            wins = self._windows(i, np.arange(a, b)) if s is not None else None
            allowed = None if it.allowed is None else unpack_bits(_to(it.allowed[a:b], h.device),
                                                                   self.vocab)
            watch = None if it.watch is None else torch.nn.functional.pad(
                _to(it.watch, h.device), (0, self.vocab - len(it.watch)))
            self._block(s, h[a:b], tok[a:b], dst[a:b], counts,
                        None if wins is None else (_to(wins[0], h.device), _to(wins[1], h.device)),
                        allowed, watch)

    def _block(self, s: Sampling | None, h: torch.Tensor, tok: torch.Tensor, dst: torch.Tensor,
               counts: torch.Tensor | None,
               windows: tuple[torch.Tensor, torch.Tensor] | None = None,
               allowed: torch.Tensor | None = None, watch: torch.Tensor | None = None) -> None:
        logits = reference_logits(self.ref, h)
        if allowed is not None:
            logits = masked_logits(logits, allowed)
        r, x = block_stats(logits, tok, s, self.convention, counts, windows, watch)
        self.raw[dst] = r
        if x is not None:
            self.extra[dst] = x
