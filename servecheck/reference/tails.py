"""What the alternatives to the requested sampler need, per served token, beside q itself.

A server that applies a setting nobody asked for (a min_p or top_k default, a presence or
frequency penalty) changes q in a known shape. Each alternative's evidence is a sum over the
tokens of q at every position:

- a truncation the server should not apply removes a known mass: ``beyond_k{k}`` (q-mass ranked
  after the k-th token), ``below_min_p{c}`` (mass on tokens with q < c·max q), ``beyond_top_p{p}``
  (mass outside the top_p = p nucleus of q). A correct server puts that share of its tokens there;
  one that truncates puts none. The served token's own place is ``rank_q`` (tokens with larger q)
  with ``logq``/``top``/``above`` from the main statistics.
- a penalty moves mass away from tokens already in the context. Its score (the derivative of
  log q(y) in the penalty at 0) needs the q-mass of the context's tokens (``seen``), their mean
  count (``count``, ``count2``) and mean |logit| (``rep``, ``rep2``), beside the served token's
  own count. Under a correct server each score has mean 0 whatever set is used, so the context is
  a window of the last ``WINDOW`` tokens: the output so far (``out``, vLLM's presence and
  frequency scope) and prompt and output together (``all``, HF's and vLLM's repetition scope).

Sums over the sorted top ``TAIL_CANDIDATES`` of q, except min_p's, which is one
``passes.threshold_pass`` over the row (a Triton kernel on CUDA): its kept set can be thousands of
tokens. A top_p mass that needs more candidates is NaN and that row leaves the test (a choice made
from q alone, never from the served token, so the test stays exact).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from servecheck.reference.passes import threshold_pass

K_GRID = (1, 20, 40, 50, 100)
"""top_k defaults engines ship (CTranslate2 1, that is greedy; llama.cpp 40; transformers'
GenerationConfig and ONNX Runtime GenAI's builder 50) and neighbours. Each is one more test in
the sampler's Holm family, so the grid stays short (1 took the place of 64, a default of none)."""
MIN_P_GRID = (0.02, 0.05, 0.1)
"""min_p values seen as defaults (llama.cpp 0.05) and either side."""
TOP_P_GRID = (0.8, 0.9, 0.95)
TAIL_CANDIDATES = 128
WINDOW = 256
SCOPES = ("all", "out")  # the order of ``context_windows``
_PER_SCOPE = ("count_y", "seen", "count", "count2", "rep", "rep2")
TAIL_KEYS = (*(f"beyond_k{k}" for k in K_GRID), *(f"below_min_p{c:g}" for c in MIN_P_GRID),
             *(f"beyond_top_p{p:g}" for p in TOP_P_GRID), "rank_q", "abs_zy",
             *(f"{s}_{k}" for s in SCOPES for k in _PER_SCOPE))


def context_windows(prompt: list[int], output: list[int], positions: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The penalty contexts before each output position: [rows, WINDOW] token ids, -1 padded,
    of the output so far and of prompt + output so far (the last ``WINDOW`` tokens)."""
    pad = np.full(WINDOW, -1, dtype=np.int32)
    seq = np.concatenate([pad, np.asarray(prompt, np.int32), np.asarray(output, np.int32)])
    out = np.concatenate([pad, np.asarray(output, np.int32)])
    view_all = np.lib.stride_tricks.sliding_window_view(seq, WINDOW)
    view_out = np.lib.stride_tricks.sliding_window_view(out, WINDOW)
    return view_all[len(prompt) + positions], view_out[positions]


def _window_counts(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """For each entry of a [R, W] id window, how often its id occurs in its row (0 for pads)."""
    rows = torch.arange(ids.shape[0], device=ids.device)[:, None]
    key = rows * (vocab + 1) + ids.long() + 1
    _, inverse, counts = torch.unique(key.flatten(), return_inverse=True, return_counts=True)
    return torch.where(ids >= 0, counts[inverse].view(ids.shape), 0).float()


def tail_stats(z: torch.Tensor, tok: torch.Tensor, m: torch.Tensor, inv_t: torch.Tensor,
               cut: torch.Tensor, s0: torch.Tensor, windows: tuple[torch.Tensor, torch.Tensor]
               | None) -> torch.Tensor:
    """[R, len(TAIL_KEYS)] for rows z of (penalised) logits: ``m`` their max, ``cut`` the support
    {d ≥ cut} of q in d = (z - m)/T, ``s0`` = Σ_S e^d (q = e^d/s0 there); ``windows`` the
    ``context_windows`` of the rows (NaN columns without them)."""
    vocab = z.shape[1]
    k = min(vocab, TAIL_CANDIDATES)
    cand = (z.topk(k, dim=1).values.float() - m[:, None]) * inv_t[:, None]
    inside = cand >= cut[:, None]
    q = torch.where(inside, cand.exp(), 0.0) / s0[:, None]
    cum = q.cumsum(1)
    covered = ~inside[:, -1] if k < vocab else torch.ones_like(cut, dtype=torch.bool)
    nan = torch.full_like(cut, math.nan)
    cols = []
    for kk in K_GRID:  # exact: k ≤ TAIL_CANDIDATES
        cols.append((1 - cum[:, min(kk, k) - 1]).clamp(min=0) if kk < vocab else torch.zeros_like(cut))
    # min_p's kept set can hold thousands of tokens at a flat position: summed over the row
    floors = torch.stack([torch.maximum(cut, torch.full_like(cut, math.log(c)))
                          for c in MIN_P_GRID], 1)
    th = m[:, None] + floors / inv_t[:, None] - 1e-4  # ">" in the pass; the cut token is kept
    kept = threshold_pass(z, torch.arange(len(m), device=z.device), m, inv_t, th)
    cols += list((1 - kept / s0[:, None]).clamp(min=0).unbind(1))
    above = cum - q
    for p in TOP_P_GRID:
        known = covered | (above[:, -1] >= p)
        cols.append(torch.where(known, (1 - (q * (above < p)).sum(1)).clamp(min=0), nan))
    dy = (z.gather(1, tok[:, None])[:, 0].float() - m) * inv_t
    cols.append((cand > dy[:, None]).sum(1).float())
    zy = z.gather(1, tok[:, None])[:, 0].float()
    cols.append(zy.abs())
    if windows is None:
        cols += [nan] * (len(SCOPES) * len(_PER_SCOPE))
        return torch.stack(cols, 1)
    for ids in windows:
        safe = ids.long().clamp(min=0)
        zw = z.gather(1, safe).float()
        dw = (zw - m[:, None]) * inv_t[:, None]
        qw = torch.where((ids >= 0) & (dw >= cut[:, None]), dw.exp(), 0.0) / s0[:, None]
        cnt = _window_counts(ids, vocab)
        once = torch.where(cnt > 0, qw / cnt.clamp(min=1), 0.0)  # each distinct token once
        cols += [(ids == tok[:, None]).sum(1).float(), once.sum(1), qw.sum(1), (qw * cnt).sum(1),
                 (once * zw.abs()).sum(1), (once * zw * zw).sum(1)]
    return torch.stack(cols, 1)
