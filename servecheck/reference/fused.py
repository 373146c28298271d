"""Per-token statistics of q = S_θ(z) without materialising q: a few streaming passes per row.

``sampling.transform`` defines q by sorting the whole vocabulary and building [rows, vocab]
masks and log-softmaxes; at a 262k vocabulary that is megabytes of traffic per token (and 64
more log-softmaxes for the temperature profile). Every rule of S_θ keeps a *top set* of the
(penalised) logits, so the support is {d ≥ cut} for one cut per row, d = (z - max z)/T, and every
statistic is a sum over that set:

- ``passes.row_pass``: max, argmax, rank of the served token, Σe^(z-m), Σe^d and its part above the
  served token; one read of the row. This alone gives the raw log-prob, margin and rank.
- the cut: top_k from ``topk``; min_p is d ≥ ln(min_p); top_p from the sorted top candidates when
  the nucleus lies among them (the usual case), else by bracketing the cut with ``threshold_pass``
  over the logits' own values, ordered as integers: 16 thresholds a pass, so 4 passes pin the cut
  to one bf16 value (65536 of them; 8 passes for float32), exactly (``nucleus.nucleus_cut``).
- ``passes.support_pass``: Σ_S e^d, Σ_S e^d·d, Σ_S e^d·d², the mass above the served token (also over
  the pre-nucleus support), and the temperature profile Σ_S e^(β·d) for the 64 inverse factors
  β of ``PROFILE``; one read.

From these sums: log q(y) = d_y - log Σ_S e^d, entropy = log Σ_S e^d - E_q[d], Var_q(log q) =
Var_q(d), top = 1/Σ_S e^d. Equal to ``transform`` in exact arithmetic (tests/reference/test_scoring.py
and tests/reference/test_sampling.py check against it, and it against HF's processors); the one semantic
choice is at exact ties on the nucleus boundary, where every tied token is kept (sort order
decides in HF). When the support lies among the sorted candidates, the temperature profile is
summed over them instead of the vocabulary.

This module turns those sums into the statistics (``sampled_stats``). The passes themselves are
``servecheck.reference.passes``: on CUDA Triton kernels (``servecheck.reference.kernels``),
elsewhere the same math in torch, which tests/reference/test_scoring_gpu.py compares them with.
``SERVECHECK_TRITON=0`` forces the torch path on CUDA too.
"""

from __future__ import annotations

import math

import torch

from servecheck.reference.nucleus import nucleus_cut
from servecheck.reference.passes import PROFILE, RowPass, betas, support_pass, top_values
from servecheck.reference.sampling import HF, Convention, Sampling

__all__ = ["sampled_stats"]


def sampled_stats(z: torch.Tensor, s: Sampling, rp: RowPass, convention: Convention = HF
                  ) -> dict[str, torch.Tensor]:
    """Statistics of q = S_θ(z) at the served tokens, for rows z [R, V] of penalised logits and
    their ``row_pass`` at inv_t = 1/T: the keys of ``token_scores.TokenScores.stats`` less ``pit``
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
    # rows whose support lies among sorted candidates sum the temperature profile there, each
    # row by itself: the path is chosen per row, never per block, so a row's numbers do not
    # depend on which rows share its block (a chunked set scores as one process does)
    by_k = complete if cand is not None else torch.zeros_like(complete)
    by_p, pcand = torch.zeros_like(complete), None
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
            if pcand is not None:
                by_p = resolved & ~by_k
        cut_kp = torch.maximum(cut_k, cut_p)
    cuts = torch.stack([torch.maximum(cut_kp, cut_min), torch.maximum(cut_k, cut_min), cut_k,
                        cut_kp], 1)
    full = ~(by_k | by_p)
    sums, temps = support_pass(z, rp.m, inv_t, cuts, dy, bool(full.any()))
    beta = betas(z.device)
    for use, among in ((by_k, cand), (by_p, pcand)):
        if among is not None and bool(use.any()):
            held = (among >= cuts[:, :1])[:, :, None]
            there = (torch.exp(among[:, :, None] * beta[None, None, :]) * held).sum(1)
            temps = there if temps is None else torch.where(use[:, None], there, temps)
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
