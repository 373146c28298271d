"""Per-token statistics of q = S_θ(z) without materialising q: a few streaming passes per row.

``sampling.transform`` defines q by sorting the whole vocabulary and building [rows, vocab]
masks and log-softmaxes; at a 262k vocabulary that is megabytes of traffic per token (and 41
more log-softmaxes for the temperature profile). Every rule of S_θ keeps a *top set* of the
(penalised) logits, so the support is {d ≥ cut} for one cut per row, d = (z - max z)/T, and every
statistic is a sum over that set:

- ``row_pass``: max, argmax, rank of the served token, Σe^(z-m), Σe^d and its part above the
  served token; one read of the row. This alone gives the raw log-prob, margin and rank.
- the cut: top_k from ``topk``; min_p is d ≥ ln(min_p); top_p from the sorted top candidates when
  the nucleus lies among them (the usual case), else by bracketing the cut with ``threshold_pass``
  (8 thresholds per pass, 9 passes: the bracket shrinks 8⁹-fold, to float32 resolution).
- ``support_pass``: Σ_S e^d, Σ_S e^d·d, Σ_S e^d·d², the mass above the served token (also over
  the pre-nucleus support), and the temperature profile Σ_S e^(d/f) for the 41 factors; one read.

From these sums: log q(y) = d_y - log Σ_S e^d, entropy = log Σ_S e^d - E_q[d], Var_q(log q) =
Var_q(d), top = 1/Σ_S e^d. Equal to ``transform`` in exact arithmetic (tests/test_scoring_fast.py
and tests/test_sampling.py check against it, and it against HF's processors); the one semantic
choice is at exact ties on the nucleus boundary, where every tied token is kept (sort order
decides in HF). When the support lies among the sorted candidates, the temperature profile is
summed over them instead of the vocabulary.

On CUDA the three passes are Triton kernels (``servecheck._kernels``); elsewhere the same math in
torch, which tests/test_scoring_gpu.py compares them with. ``SERVECHECK_TRITON=0`` forces the
torch path on CUDA too.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cache

import torch

from servecheck.sampling import HF, Convention, Sampling

CANDIDATES = 256
"""Sorted top candidates in which the top_p nucleus is looked for before bracketing."""
ROUNDS, THRESHOLDS = 9, 8
FLOOR = -128.0
"""d below this has e^d = 0 in float32: the lowest a bracket ever needs to start."""


@cache
def _triton():
    if os.environ.get("SERVECHECK_TRITON", "1") == "0":
        return None
    try:
        from servecheck import _kernels
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

    def raw(self) -> torch.Tensor:
        """[logprob, argmax, margin, rank] per row (temperature 1, no truncation)."""
        return torch.stack([self.zy - self.m - self.s1.log(), self.arg.float(), self.m - self.zy,
                            self.rank.float()], dim=1)


def row_pass(z: torch.Tensor, tok: torch.Tensor, inv_t: torch.Tensor) -> RowPass:
    zy = z.gather(1, tok[:, None])[:, 0].float()
    k = _kernels_for(z)
    if k is not None:
        return RowPass(zy, *k.row_pass(z, zy, inv_t))
    zf = z.float()
    m, arg = zf.max(1)
    d1 = zf - m[:, None]
    et = (d1 * inv_t[:, None]).exp()
    above = zf > zy[:, None]
    return RowPass(zy, m, arg, above.sum(1), d1.exp().sum(1), et.sum(1), (et * above).sum(1),
                   zf.amin(1))


def threshold_pass(z: torch.Tensor, m: torch.Tensor, inv_t: torch.Tensor, th: torch.Tensor
                   ) -> torch.Tensor:
    """G[r, j] = Σ_{d > th[r, j]} e^d."""
    k = _kernels_for(z)
    if k is not None:
        return k.threshold_pass(z, m, inv_t, th)
    d = (z.float() - m[:, None]) * inv_t[:, None]
    e = d.exp()
    return torch.stack([(e * (d > th[:, j:j + 1])).sum(1) for j in range(th.shape[1])], 1)


def support_pass(z: torch.Tensor, m: torch.Tensor, inv_t: torch.Tensor, cuts: torch.Tensor,
                 dy: torch.Tensor, factors: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sums over the nested sets {d ≥ cuts[:, c]} (c = 0 is the support S): [Σ_c e^d for each c,
    Σ_{c, d > dy} e^d for each c, Σ_S e^d·d, Σ_S e^d·d²] per row; with ``factors`` also the
    temperature profile Σ_S e^(d/f) for each factor f."""
    k = _kernels_for(z)
    if k is not None:
        return k.support_pass(z, m, inv_t, cuts, dy, factors)
    d = (z.float() - m[:, None]) * inv_t[:, None]
    e = d.exp()
    ea = e * (d > dy[:, None])
    sets = [d >= cuts[:, c:c + 1] for c in range(4)]
    e0 = e * sets[0]
    dd = torch.where(e0 > 0, d, torch.zeros_like(d))
    sums = torch.stack([(e * w).sum(1) for w in sets] + [(ea * w).sum(1) for w in sets]
                       + [(e0 * dd).sum(1), (e0 * dd * dd).sum(1)], 1)
    if factors is None:
        return sums, None
    ds = torch.where(sets[0], d, torch.zeros_like(d))
    temps = torch.stack([(torch.exp(ds / float(f)) * sets[0]).sum(1) for f in factors.tolist()], 1)
    return sums, temps


def _bracket(z: torch.Tensor, m: torch.Tensor, inv_t: torch.Tensor, lo: torch.Tensor,
             hi: torch.Tensor, top_p: float, inclusive: bool) -> torch.Tensor:
    """The nucleus cut by bracketing: invariant G(lo) ≥ P (tokens ≤ lo are out), G(hi) < P
    (tokens ≥ hi are in), with P = top_p·G(lo) fixed by the first pass (lo starts below the
    kept set). Returns hi once the bracket is below float32 resolution."""
    frac = torch.arange(1, THRESHOLDS + 1, device=z.device, dtype=torch.float32) / (THRESHOLDS + 1)
    p = None
    for r in range(ROUNDS):
        th = lo[:, None] + (hi - lo)[:, None] * frac[None, :]
        if r == 0:
            th[:, 0] = lo
        g = threshold_pass(z, m, inv_t, th)
        if p is None:
            p = top_p * g[:, 0]
        out = g > p[:, None] if inclusive else g >= p[:, None]
        inf = torch.full_like(th, math.inf)
        lo = torch.maximum(lo, torch.where(out, th, -inf).amax(1))
        hi = torch.minimum(hi, torch.where(out, inf, th).amin(1))
    return hi


def nucleus_cut(z: torch.Tensor, m: torch.Tensor, inv_t: torch.Tensor, floor: torch.Tensor,
                total: torch.Tensor, dmin: torch.Tensor, top_p: float, inclusive: bool,
                cand: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Cut (in d) of the top_p nucleus of the set {d ≥ floor}, whose Σe^d is ``total`` (NaN where
    unknown). ``cand``: sorted top d values already at hand (top_k's), else the top CANDIDATES.
    Returns (cut, the candidates, rows whose nucleus lies among the candidates)."""
    vocab = z.shape[1]
    if cand is None:
        k = min(vocab, CANDIDATES)
        if k < vocab and bool((k < top_p * total).all()):
            # each candidate has e^d ≤ 1, so k of them cannot hold the nucleus: bracket at once
            cut = _bracket(z, m, inv_t, (dmin - 1).clamp(min=FLOOR), torch.zeros_like(m), top_p,
                           inclusive)
            return cut, None, torch.zeros_like(cut, dtype=torch.bool)
        cand = (z.topk(k, dim=1).values.float() - m[:, None]) * inv_t[:, None]
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
        f = floor[todo]
        lo = torch.where(torch.isfinite(f), torch.nextafter(f, torch.full_like(f, -math.inf)),
                         (dmin[todo] - 1).clamp(min=FLOOR))
        hi = torch.where(torch.isfinite(f), torch.zeros_like(f), cand[todo, -1])
        cut[todo] = _bracket(z[todo], m[todo], inv_t[todo], lo, hi, top_p, inclusive)
    return cut, cand, resolved


def sampled_stats(z: torch.Tensor, s: Sampling, rp: RowPass, factors: torch.Tensor,
                  convention: Convention = HF) -> dict[str, torch.Tensor]:
    """Statistics of q = S_θ(z) at the served tokens, for rows z [R, V] of penalised logits and
    their ``row_pass`` at inv_t = 1/T: the keys of ``scoring.TokenScores.stats`` less ``pit``
    (the caller draws the uniforms). ``rule``/``slack`` are those of ``sampling.boundary_slack``,
    from the same sums; absent under ``top_p_before_temperature`` (the caller asks
    ``boundary_slack``)."""
    rows, vocab = z.shape
    if s.greedy:
        return _point_mass(rp, len(factors))
    inv_t = torch.full((rows,), 1.0 / s.temperature, device=z.device, dtype=torch.float32)
    neg = torch.full((rows,), -math.inf, device=z.device)
    dy = (rp.zy - rp.m) * inv_t
    cut_k, cand, total = neg, None, rp.st
    complete = torch.zeros_like(neg, dtype=torch.bool)
    if 0 < s.top_k < vocab:
        cand = (z.topk(min(vocab, s.top_k + 16), dim=1).values.float() - rp.m[:, None]) * inv_t[:, None]
        cut_k = cand[:, s.top_k - 1]
        complete = cand[:, -1] < cut_k if cand.shape[1] < vocab else torch.ones_like(cut_k, dtype=torch.bool)
        mass = (cand.exp() * (cand >= cut_k[:, None])).sum(1)
        total = torch.where(complete, mass, torch.full_like(mass, math.nan))
    # rows whose support lies among sorted candidates: sum the temperature profile there
    small = cand is not None and bool(complete.all())
    cut_min = torch.full_like(neg, math.log(s.min_p) if s.min_p > 0 else -math.inf)
    cut_kp = cut_k
    if s.top_p < 1.0:
        if convention.top_p_before_temperature:
            one = torch.ones_like(inv_t)
            cut_p = nucleus_cut(z, rp.m, one, neg, rp.s1, rp.zmin - rp.m, s.top_p,
                                convention.top_p_inclusive)[0] * inv_t
        else:
            cut_p, pcand, resolved = nucleus_cut(z, rp.m, inv_t, cut_k, total,
                                                 (rp.zmin - rp.m) * inv_t, s.top_p,
                                                 convention.top_p_inclusive, cand)
            if not small and pcand is not None and bool(resolved.all()):
                small, cand = True, pcand
        cut_kp = torch.maximum(cut_k, cut_p)
    cuts = torch.stack([torch.maximum(cut_kp, cut_min), torch.maximum(cut_k, cut_min), cut_k,
                        cut_kp], 1)
    sums, temps = support_pass(z, rp.m, inv_t, cuts, dy, None if small else factors)
    if small:
        assert cand is not None
        held = (cand >= cuts[:, :1])[:, :, None]
        temps = (torch.exp(cand[:, :, None] / factors[None, None, :]) * held).sum(1)
    assert temps is not None
    s0, s0_pre, s0_k, s0_kp, a0, a_pre, a_k, _, m1, m2 = sums.unbind(1)
    c = s0.log()
    inside = dy >= cuts[:, 0]
    mean = m1 / s0
    one = torch.ones_like(s0)
    out = {"logq": torch.where(inside, dy - c, neg), "above": torch.where(inside, a0 / s0, one),
           "entropy": c - mean, "var": (m2 / s0 - mean * mean).clamp(min=0), "top": 1 / s0,
           "pre_nucleus_above": torch.where(dy >= cuts[:, 1], a_pre / s0_pre, one),
           "temp_ll": torch.where(inside[:, None], dy[:, None] / factors[None, :] - temps.log(),
                                  neg[:, None])}
    if not convention.top_p_before_temperature:
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
            "rule": zero, "slack": torch.where(hit, zero, torch.full_like(zero, math.inf))}
