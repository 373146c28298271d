"""Per-token statistics of q = S_θ(z) without materialising q: a few streaming passes per row.

``sampling.transform`` defines q by sorting the whole vocabulary and building [rows, vocab]
masks and log-softmaxes; at a 262k vocabulary that is megabytes of traffic per token (and 64
more log-softmaxes for the temperature profile). Every rule of S_θ keeps a *top set* of the
(penalised) logits, so the support is {d ≥ cut} for one cut per row, d = (z - max z)/T, and every
statistic is a sum over that set:

- ``row_pass``: max, argmax, rank of the served token, Σe^(z-m), Σe^d and its part above the
  served token; one read of the row. This alone gives the raw log-prob, margin and rank.
- the cut: top_k from ``topk``; min_p is d ≥ ln(min_p); top_p from the sorted top candidates when
  the nucleus lies among them (the usual case), else by bracketing the cut with ``threshold_pass``
  over the logits' own values, ordered as integers: 16 thresholds a pass, so 4 passes pin the cut
  to one bf16 value (65536 of them; 8 passes for float32), exactly.
- ``support_pass``: Σ_S e^d, Σ_S e^d·d, Σ_S e^d·d², the mass above the served token (also over
  the pre-nucleus support), and the temperature profile Σ_S e^(β·d) for the 64 inverse factors
  β of ``PROFILE``; one read.

From these sums: log q(y) = d_y - log Σ_S e^d, entropy = log Σ_S e^d - E_q[d], Var_q(log q) =
Var_q(d), top = 1/Σ_S e^d. Equal to ``transform`` in exact arithmetic (tests/reference/test_scoring.py
and tests/reference/test_sampling.py check against it, and it against HF's processors); the one semantic
choice is at exact ties on the nucleus boundary, where every tied token is kept (sort order
decides in HF). When the support lies among the sorted candidates, the temperature profile is
summed over them instead of the vocabulary.

On CUDA the three passes are Triton kernels (``servecheck.reference.kernels``); elsewhere the same math in
torch, which tests/reference/test_scoring_gpu.py compares them with. ``SERVECHECK_TRITON=0`` forces the
torch path on CUDA too.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cache

import torch

from servecheck.reference.sampling import HF, Convention, Sampling

CANDIDATES = 256
"""Sorted top candidates in which the top_p nucleus is looked for before bracketing."""
THRESHOLDS = 16
"""Per bracketing pass. 8 would make a pass cheaper (0.67 µs a 262k row against 1.23 on an H100)
but too narrow a window around the interpolated cut: 5 passes instead of 3 on some rows."""
PROFILE = (0.4, 1 / 30, 64)
"""The temperature profile's inverse factors β = 0.4 + i/30, i < 64 (factors 1/β from 2.5 down
to 0.4). Even steps in β, the inverse temperature, let e^(β·d) for all 64 come from 9
exponentials and products (``_kernels._support_pass``; the torch path below does the same); 41
exponentials a logit (the log-spaced grid this replaced) were what bounded the support pass."""


@cache
def betas(device: torch.device | str) -> torch.Tensor:
    """``PROFILE``'s inverse factors, increasing, made on the device (no host copy, no sync)."""
    b0, step, n = PROFILE
    return b0 + step * torch.arange(n, dtype=torch.float32, device=device)


@cache
def _triton():
    if os.environ.get("SERVECHECK_TRITON", "1") == "0":
        return None
    try:
        from servecheck.reference import kernels as _kernels
    except ImportError:
        return None
    return _kernels


def _kernels_for(z: torch.Tensor):
    return _triton() if z.is_cuda else None


@dataclass
class RowPass:
    """One pass over each row of z (model dtype) for the served tokens ``tok`` at 1/T = inv_t."""

    zy: torch.Tensor
    m: torch.Tensor
    arg: torch.Tensor
    rank: torch.Tensor
    s1: torch.Tensor
    """Σ exp(z - m)."""
    st: torch.Tensor
    """Σ exp(d), d = (z - m)/T."""
    at: torch.Tensor
    """Σ exp(d) over tokens whose logit is strictly above the served token's."""
    zmin: torch.Tensor
    lanes: torch.Tensor | None = None
    """Per-lane maxima of the Triton pass (asked for where top candidates will be needed)."""

    def raw(self) -> torch.Tensor:
        """[logprob, argmax, margin, rank] per row (temperature 1, no truncation)."""
        return torch.stack([self.zy - self.m - self.s1.log(), self.arg.float(), self.m - self.zy,
                            self.rank.float()], dim=1)


def row_pass(z: torch.Tensor, tok: torch.Tensor, inv_t: torch.Tensor, lanes: bool = False
             ) -> RowPass:
    zy = z.gather(1, tok[:, None])[:, 0].float()
    k = _kernels_for(z)
    if k is not None:
        return RowPass(zy, *k.row_pass(z, zy, inv_t, lanes))
    zf = z.float()
    m, arg = zf.max(1)
    d1 = zf - m[:, None]
    et = (d1 * inv_t[:, None]).exp()
    above = zf > zy[:, None]
    return RowPass(zy, m, arg, above.sum(1), d1.exp().sum(1), et.sum(1), (et * above).sum(1),
                   zf.amin(1))


def top_values(z: torch.Tensor, k: int, lanes: torch.Tensor | None) -> torch.Tensor:
    """The k largest values of each row of z, sorted (``topk``'s values): from the lane maxima of
    the row pass where it kept them (``RowPass.lanes``), else ``torch.topk``."""
    kern = _kernels_for(z)
    if kern is not None and lanes is not None and k <= lanes.shape[1] // 4:
        top = kern.top_values(z, k, lanes)
        if top is not None:
            return top
    return z.topk(k, dim=1).values


def threshold_pass(z: torch.Tensor, rows: torch.Tensor, m: torch.Tensor, inv_t: torch.Tensor,
                   th: torch.Tensor) -> torch.Tensor:
    """G[i, j] = Σ_{z > th[i, j]} e^d over row ``rows[i]`` of z, thresholds in logit space (values
    of z's dtype); ``m`` and ``inv_t`` are per row of z."""
    k = _kernels_for(z)
    if k is not None:
        return k.threshold_pass(z, rows, m, inv_t, th)
    zf = z[rows].float()
    e = ((zf - m[rows, None]) * inv_t[rows, None]).exp()
    return torch.stack([(e * (zf > th[:, j:j + 1])).sum(1) for j in range(th.shape[1])], 1)


def support_pass(z: torch.Tensor, m: torch.Tensor, inv_t: torch.Tensor, cuts: torch.Tensor,
                 dy: torch.Tensor, profile: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sums over the nested sets {d ≥ cuts[:, c]} (c = 0 is the support S): [Σ_c e^d for each c,
    Σ_{c, d > dy} e^d for each c, Σ_S e^d·d, Σ_S e^d·d²] per row; with ``profile`` also the
    temperature profile Σ_S e^(β·d) for each β of ``betas`` (increasing)."""
    k = _kernels_for(z)
    if k is not None:
        return k.support_pass(z, m, inv_t, cuts, dy, PROFILE if profile else None)
    d = (z.float() - m[:, None]) * inv_t[:, None]
    e = d.exp()
    ea = e * (d > dy[:, None])
    sets = [d >= cuts[:, c:c + 1] for c in range(4)]
    e0 = e * sets[0]
    dd = torch.where(e0 > 0, d, torch.zeros_like(d))
    sums = torch.stack([(e * w).sum(1) for w in sets] + [(ea * w).sum(1) for w in sets]
                       + [(e0 * dd).sum(1), (e0 * dd * dd).sum(1)], 1)
    if not profile:
        return sums, None
    # as the kernel does: β = b0 + (8a + b)·step, e^(β·d) = e^((b0 + 8a·step)·d) · (e^(step·d))^b
    b0, step, n = PROFILE
    ds = torch.where(sets[0], d, torch.zeros_like(d))
    fine = (ds * step).exp()
    temps = []
    for a in range(0, n, 8):
        x = (ds * (b0 + a * step)).exp() * sets[0]
        for _ in range(min(8, n - a)):
            temps.append(x.sum(1))
            x = x * fine
    return sums, torch.stack(temps, 1)


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


def sampled_stats(z: torch.Tensor, s: Sampling, rp: RowPass, convention: Convention = HF
                  ) -> dict[str, torch.Tensor]:
    """Statistics of q = S_θ(z) at the served tokens, for rows z [R, V] of penalised logits and
    their ``row_pass`` at inv_t = 1/T: the keys of ``scoring.TokenScores.stats`` less ``pit``
    (the caller draws the uniforms); ``temp_ll`` in order of increasing factor 1/β.
    ``rule``/``slack`` are those of ``sampling.boundary_slack``, from the same sums; absent
    where top_p or min_p come before temperature (the caller asks ``boundary_slack``)."""
    rows, vocab = z.shape
    if s.greedy:
        return _point_mass(rp, PROFILE[2])
    inv_t = torch.full((rows,), 1.0 / s.temperature, device=z.device, dtype=torch.float32)
    neg = torch.full((rows,), -math.inf, device=z.device)
    dy = (rp.zy - rp.m) * inv_t
    cut_k, zfloor, zcand, cand, total = neg, neg, None, None, rp.st
    complete = torch.zeros_like(neg, dtype=torch.bool)
    if 0 < s.top_k < vocab:
        zcand = top_values(z, min(vocab, s.top_k + 16), rp.lanes)
        cand = (zcand.float() - rp.m[:, None]) * inv_t[:, None]
        cut_k, zfloor = cand[:, s.top_k - 1], zcand[:, s.top_k - 1].float()
        complete = cand[:, -1] < cut_k if cand.shape[1] < vocab else torch.ones_like(cut_k, dtype=torch.bool)
        mass = (cand.exp() * (cand >= cut_k[:, None])).sum(1)
        total = torch.where(complete, mass, torch.full_like(mass, math.nan))
    # rows whose support lies among sorted candidates: sum the temperature profile there
    small = cand is not None and bool(complete.all())
    cut_min = torch.full_like(neg, math.log(s.min_p) if s.min_p > 0 else -math.inf)
    if convention.min_p_before_temperature:
        cut_min = cut_min * inv_t  # p₁(y)/p₁(max) ≥ min_p, in d = log p_T(y)/p_T(max)
    cut_kp = cut_k
    if s.top_p < 1.0:
        if convention.top_p_before_temperature:  # the nucleus of the top_k set, at T = 1
            total1 = rp.s1
            if cand is not None:
                held = (zcand.float() - rp.m[:, None]).exp() * (cand >= cut_k[:, None])
                total1 = torch.where(complete, held.sum(1), torch.full_like(total, math.nan))
            cut_p = nucleus_cut(z, rp.m, torch.ones_like(inv_t), zfloor, total1, rp.zmin,
                                s.top_p, convention.top_p_inclusive, zcand, rp.lanes)[0] * inv_t
        else:
            cut_p, pcand, resolved = nucleus_cut(z, rp.m, inv_t, zfloor, total, rp.zmin, s.top_p,
                                                 convention.top_p_inclusive, zcand, rp.lanes)
            if not small and pcand is not None and bool(resolved.all()):
                small, cand = True, pcand
        cut_kp = torch.maximum(cut_k, cut_p)
    cuts = torch.stack([torch.maximum(cut_kp, cut_min), torch.maximum(cut_k, cut_min), cut_k,
                        cut_kp], 1)
    sums, temps = support_pass(z, rp.m, inv_t, cuts, dy, not small)
    beta = betas(z.device)
    if small:
        assert cand is not None
        held = (cand >= cuts[:, :1])[:, :, None]
        temps = (torch.exp(cand[:, :, None] * beta[None, None, :]) * held).sum(1)
    assert temps is not None
    s0, s0_pre, s0_k, s0_kp, a0, a_pre, a_k, _, m1, m2 = sums.unbind(1)
    c = s0.log()
    inside = dy >= cuts[:, 0]
    mean = m1 / s0
    one = torch.ones_like(s0)
    temp_ll = (dy[:, None] * beta[None, :] - temps.log()).flip(1)
    out = {"logq": torch.where(inside, dy - c, neg), "above": torch.where(inside, a0 / s0, one),
           "entropy": c - mean, "var": (m2 / s0 - mean * mean).clamp(min=0), "top": 1 / s0,
           "pre_nucleus_above": torch.where(dy >= cuts[:, 1], a_pre / s0_pre, one),
           "temp_ll": torch.where(inside[:, None], temp_ll, neg[:, None]),
           "support_cut": cuts[:, 0], "norm": s0}
    if not (convention.top_p_before_temperature or convention.min_p_before_temperature):
        out["rule"], out["slack"] = _explain(s, convention, inside, dy, cut_k, a_k / s0_k, s0_kp)
    return out


def _explain(s: Sampling, convention: Convention, inside: torch.Tensor, dy: torch.Tensor,
             cut_k: torch.Tensor, above_k: torch.Tensor, s0_kp: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``boundary_slack`` for the tokens outside the support, rules tried in the order applied:
    top_k (raw-logit gap), top_p (mass above the token within top_k, beyond top_p), min_p
    (probability shortfall after top_k and top_p). Inside tokens get rule 0, slack 0."""
    out_k = dy < cut_k
    out_p = ~out_k & ((above_k > s.top_p) if convention.top_p_inclusive else (above_k >= s.top_p))
    if s.top_p >= 1.0:
        out_p = torch.zeros_like(out_k)
    py = dy.exp()
    out_m = ~out_k & ~out_p & (py < s.min_p) if s.min_p > 0 else torch.zeros_like(out_k)
    slack = torch.where(out_k, (cut_k - dy) * s.temperature,
                        torch.where(out_p, above_k - s.top_p,
                                    torch.where(out_m, (s.min_p - py) / s0_kp,
                                                torch.full_like(dy, math.inf))))
    rule = torch.where(out_k, 1, torch.where(out_p, 2, torch.where(out_m, 3, 0))).float()
    return torch.where(inside, 0.0, rule), torch.where(inside, 0.0, slack)


def _point_mass(rp: RowPass, n_factors: int) -> dict[str, torch.Tensor]:
    """Greedy parameters: q is a point mass on the argmax (``transform``'s greedy case)."""
    hit = rp.zy >= rp.m
    zero, one = torch.zeros_like(rp.m), torch.ones_like(rp.m)
    lq = torch.where(hit, zero, torch.full_like(zero, -math.inf))
    above = torch.where(hit, zero, one)
    return {"logq": lq, "above": above, "entropy": zero, "var": zero, "top": one,
            "pre_nucleus_above": above, "temp_ll": lq[:, None].expand(-1, n_factors),
            "support_cut": zero, "norm": one,  # the support {d ≥ 0}: the argmax, Σe^d = 1
            "rule": zero, "slack": torch.where(hit, zero, torch.full_like(zero, math.inf))}
