"""The top_p cut of each row, exact: the smallest kept logit of the nucleus, in d = (z - max z)/T.

Usually the nucleus lies among the sorted top ``CANDIDATES`` and a cumulative sum finds it. Where
it does not, ``_bracket`` pins the cut by ``passes.threshold_pass`` over the logits' own values,
ordered as integers (``order_keys``): 16 thresholds a pass, so 4 passes pin the cut to one bf16
value (65536 of them; 8 passes for float32), with no float rounding. Apart from ``fused`` because it is the
one search in the statistics; everything else there is a closed form of the passes' sums.
"""

from __future__ import annotations

import math

import torch

from servecheck.reference.passes import threshold_pass, top_values

__all__ = ["CANDIDATES", "THRESHOLDS", "key_values", "nucleus_cut", "order_keys"]

CANDIDATES = 256
"""Sorted top candidates in which the top_p nucleus is looked for before bracketing."""
THRESHOLDS = 16
"""Per bracketing pass. 8 would make a pass cheaper (0.67 µs a 262k row against 1.23 on an H100)
but too narrow a window around the interpolated cut: 5 passes instead of 3 on some rows."""


def order_keys(x: torch.Tensor) -> torch.Tensor:
    """Float values of a 16- or 32-bit dtype as int64 keys in the same order (±0 → 0), adjacent
    values adjacent keys: the sign-magnitude bits, negatives mirrored."""
    bits = x.view(torch.int16 if x.element_size() == 2 else torch.int32).long()
    low = -(1 << (8 * x.element_size() - 1))
    return torch.where(bits >= 0, bits, low - bits)


def key_values(keys: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The inverse of ``order_keys``: float32 holding exactly the values of ``dtype``."""
    size = torch.empty((), dtype=dtype).element_size()
    low = -(1 << (8 * size - 1))
    bits = torch.where(keys >= 0, keys, low - keys)
    return bits.to(torch.int16 if size == 2 else torch.int32).view(dtype).float()


def _bracket(z: torch.Tensor, rows: torch.Tensor, m: torch.Tensor, inv_t: torch.Tensor,
             lo: torch.Tensor, hi: torch.Tensor, top_p: float, inclusive: bool) -> torch.Tensor:
    """The nucleus cut of each row in ``rows`` by bracketing over the keys of z's values.

    Invariant: G(lo) ≥ P (tokens ≤ lo are out), G(hi) < P (tokens ≥ hi are in), with P =
    top_p·G(lo) fixed by the first pass (lo starts below the kept set). A row is done when lo and
    hi are adjacent keys: hi is then the smallest kept value, found with no float rounding. The
    first two passes spread 16 thresholds evenly in value (over the row, then over the interval
    that holds the cut); then passes alternate: the 16 keys around where G, interpolated
    linearly between lo and hi, crosses P (on near-uniform rows that lands within a key or two,
    so most rows finish in three passes), and 16 keys evenly spaced (a 17-fold shrink, so every
    row finishes). Each pass reads only the rows not yet done; finding which those are is the one
    sync a pass. Returns the cuts in d."""
    dtype = z.dtype
    j = torch.arange(THRESHOLDS, device=z.device)
    vlo, vhi = key_values(lo + 1, dtype), key_values(hi, dtype)  # lo may be -inf's key: lo + 1 is finite
    th = order_keys(torch.lerp(vlo[:, None], vhi[:, None], j[None, :] / THRESHOLDS).to(dtype))
    th = torch.minimum(torch.maximum(th, lo[:, None]), (hi - 1)[:, None])
    th[:, 0] = lo
    g = threshold_pass(z, rows, m, inv_t, key_values(th, dtype))
    p = top_p * g[:, 0]
    glo, ghi = g[:, 0], torch.zeros_like(p)
    active = torch.arange(len(rows), device=z.device)
    for r in range(1, 64):
        # lo and hi move to the crossing: G is non-increasing in t, so the "out" thresholds
        # (G ≥ P) are a prefix of the sorted ones
        out = g > p[active, None] if inclusive else g >= p[active, None]
        k = out.sum(1)
        at_lo, at_hi = (k - 1).clamp(min=0)[:, None], k.clamp(max=THRESHOLDS - 1)[:, None]
        new_lo = torch.where(k > 0, th.gather(1, at_lo)[:, 0], lo[active])
        new_hi = torch.where(k < THRESHOLDS, th.gather(1, at_hi)[:, 0], hi[active])
        glo[active] = torch.where(k > 0, g.gather(1, at_lo)[:, 0], glo[active])
        ghi[active] = torch.where(k < THRESHOLDS, g.gather(1, at_hi)[:, 0], ghi[active])
        new_lo, new_hi = torch.maximum(new_lo, lo[active]), torch.minimum(new_hi, hi[active])
        lo[active], hi[active] = new_lo, new_hi
        active = active[new_hi - new_lo > 1]
        if not len(active):
            break
        a_lo, a_hi = lo[active], hi[active]
        width = a_hi - a_lo
        frac = ((glo[active] - p[active]) / (glo[active] - ghi[active])).nan_to_num(0.5).clamp(0, 1)
        guess = order_keys(torch.lerp(key_values(a_lo + 1, dtype), key_values(a_hi, dtype), frac).to(dtype))
        start = (guess - THRESHOLDS // 2).clamp(min=a_lo + 1)
        start = torch.minimum(start, (a_hi - THRESHOLDS).clamp(min=a_lo + 1))
        near = start[:, None] + j[None, :]
        if r == 1:  # evenly in value again: the crossing interval is too wide to interpolate
            v_lo, v_hi = key_values(a_lo + 1, dtype), key_values(a_hi, dtype)
            even = order_keys(torch.lerp(v_lo[:, None], v_hi[:, None], j[None, :] / THRESHOLDS).to(dtype))
        else:
            even = a_lo[:, None] + width[:, None] * (j[None, :] + 1) // (THRESHOLDS + 1)
        small = width <= (16 * THRESHOLDS if r == 1 else THRESHOLDS)  # few keys: interpolate
        th = near if r % 2 == 0 else torch.where(small[:, None], near, even)
        th = torch.maximum(th, (a_lo + 1)[:, None])
        th = torch.minimum(th, (a_hi - 1)[:, None])
        g = threshold_pass(z, rows[active], m, inv_t, key_values(th, dtype))
    return (key_values(hi, dtype) - m[rows]) * inv_t[rows]


def nucleus_cut(z: torch.Tensor, m: torch.Tensor, inv_t: torch.Tensor, zfloor: torch.Tensor,
                total: torch.Tensor, zmin: torch.Tensor, top_p: float, inclusive: bool,
                zcand: torch.Tensor | None = None, lanes: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Cut (in d) of the top_p nucleus of the set {z ≥ zfloor}, whose Σe^d is ``total`` (NaN
    where unknown). ``zcand``: sorted top logits already at hand (top_k's), else the top
    CANDIDATES (from the row pass's ``lanes`` where given). Returns (cut, the candidates in d,
    rows whose nucleus lies among them)."""
    vocab = z.shape[1]
    floor = (zfloor - m) * inv_t
    lowest = -int(order_keys(torch.tensor(math.inf, dtype=z.dtype)))  # -inf's key, on the host
    if zcand is None:
        k = min(vocab, CANDIDATES)
        if k < vocab and bool((k < top_p * total).all()):
            # each candidate has e^d ≤ 1, so k of them cannot hold the nucleus: bracket at once
            every = torch.arange(len(m), device=z.device)
            cut = _bracket(z, every, m, inv_t, (order_keys(zmin.to(z.dtype)) - 1).clamp(min=lowest),
                           order_keys(m.to(z.dtype)), top_p, inclusive)
            return cut, None, torch.zeros_like(cut, dtype=torch.bool)
        zcand = top_values(z, k, lanes)
    cand = (zcand.float() - m[:, None]) * inv_t[:, None]
    p = cand.exp() * (cand >= floor[:, None])
    cum = p.cumsum(1)
    limit = top_p * total
    keep = (cum - p <= limit[:, None]) if inclusive else (cum - p < limit[:, None])
    keep[:, 0] = True
    n = keep.sum(1)
    cut = cand.gather(1, (n - 1)[:, None])[:, 0]
    if cand.shape[1] < vocab:
        ends = cum[:, -1] > limit if inclusive else cum[:, -1] >= limit
        resolved = ((n < cand.shape[1]) | ends) & (cut > cand[:, -1])
    else:
        resolved = torch.ones_like(n, dtype=torch.bool)
    resolved &= torch.isfinite(limit)
    todo = (~resolved).nonzero()[:, 0]
    if len(todo):
        bounded = torch.isfinite(zfloor[todo])
        lo = torch.where(bounded, order_keys(zfloor[todo].to(z.dtype)) - 1,
                         order_keys(zmin[todo].to(z.dtype)) - 1).clamp(min=lowest)
        hi = torch.where(bounded, order_keys(m[todo].to(z.dtype)), order_keys(zcand[todo, -1]))
        cut[todo] = _bracket(z, todo, m, inv_t, lo, hi, top_p, inclusive)
    return cut, cand, resolved
