"""The three streaming passes over a block of logit rows, on whichever device holds the rows.

``fused`` computes the statistics of q = S_θ(z) from a few sums per row; these are the passes
that take them, one read of the row each: ``row_pass`` (max, argmax, rank, Σe^d), the
bracketing ``threshold_pass`` (Σe^d above thresholds) and ``support_pass`` (the sums over the
support and the temperature profile). Kept apart from the statistics because they are the one
place the device decides the code: Triton kernels on CUDA (``servecheck.reference.kernels``), the
same math in torch elsewhere, which tests/reference/test_scoring_gpu.py compares them with.
``SERVECHECK_TRITON=0`` forces the torch path on CUDA too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

import torch

__all__ = ["PROFILE", "RowPass", "betas", "row_pass", "support_pass", "threshold_pass", "top_values"]

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
