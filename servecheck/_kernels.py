"""Triton kernels for the three passes of ``servecheck.fused`` over a block of logit rows.

Each program owns one row and streams it once from device memory (bf16 or fp32), keeping every
sum in registers: at a 262k vocabulary a row is 0.5 MiB of bf16, and the statistics need up to 45
exponentials per logit (41 of them for the temperature profile), so what bounds the work is
either the memory traffic (one read per pass) or the special-function unit, never intermediate
[rows, vocab] tensors. ``servecheck.fused`` holds the same math in plain torch (the CPU path and
the reference these kernels are tested against); the formulas below mirror it line for line.

Imported only when a CUDA tensor is scored and Triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _row_pass(Z, stride, V, ZY, INV_T, M, ARG, RANK, S1, ST, AT, ZMIN,
              BLOCK: tl.constexpr):
    """Online max/argmax, rank of the served token, Σexp(z-m), Σexp((z-m)/T), the part of the
    latter strictly above the served token, and the row minimum: one read of the row."""
    r = tl.program_id(0)
    row = Z + r.to(tl.int64) * stride
    zy = tl.load(ZY + r)
    c = tl.load(INV_T + r) * 1.4426950408889634
    m = -float("inf")
    arg = 0
    s1 = 0.0
    st = 0.0
    at = 0.0
    rank = 0
    zmin = float("inf")
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < V
        z = tl.load(row + offs, mask=inside, other=-float("inf")).to(tl.float32)
        tile_max = tl.max(z, 0)
        tile_arg = tl.min(tl.where(z == tile_max, offs, V), 0)
        arg = tl.where(tile_max > m, tile_arg, arg)
        new_m = tl.maximum(m, tile_max)
        keep1 = tl.exp2((m - new_m) * 1.4426950408889634)
        keep_t = tl.exp2((m - new_m) * c)
        e1 = tl.exp2((z - new_m) * 1.4426950408889634)
        et = tl.exp2((z - new_m) * c)
        above = z > zy
        s1 = s1 * keep1 + tl.sum(e1, 0)
        st = st * keep_t + tl.sum(et, 0)
        at = at * keep_t + tl.sum(tl.where(above, et, 0.0), 0)
        rank += tl.sum(above.to(tl.int32), 0)
        zmin = tl.minimum(zmin, tl.min(tl.where(inside, z, float("inf")), 0))
        m = new_m
    tl.store(M + r, m)
    tl.store(ARG + r, arg.to(tl.int64))
    tl.store(RANK + r, rank)
    tl.store(S1 + r, s1)
    tl.store(ST + r, st)
    tl.store(AT + r, at)
    tl.store(ZMIN + r, zmin)


@triton.jit
def _threshold_pass(Z, stride, V, M, INV_T, TH, G, N, NT: tl.constexpr, BLOCK: tl.constexpr):
    """For NT thresholds t per row: G = Σ_{d > t} exp(d) and N = #{d > t}, d = (z - m)/T."""
    r = tl.program_id(0)
    row = Z + r.to(tl.int64) * stride
    m = tl.load(M + r)
    inv_t = tl.load(INV_T + r)
    js = tl.arange(0, NT)
    th = tl.load(TH + r * NT + js)
    g = tl.zeros([NT], dtype=tl.float32)
    n = tl.zeros([NT], dtype=tl.int32)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        z = tl.load(row + offs, mask=offs < V, other=-float("inf")).to(tl.float32)
        d = (z - m) * inv_t
        e = tl.exp2(d * 1.4426950408889634)
        gt = d[None, :] > th[:, None]
        g += tl.sum(tl.where(gt, e[None, :], 0.0), 1)
        n += tl.sum(gt.to(tl.int32), 1)
    tl.store(G + r * NT + js, g)
    tl.store(N + r * NT + js, n)


@triton.jit
def _support_pass(Z, stride, V, M, INV_T, CUTS, DY, F1, F2, OUT, TOUT,
                  NF1: tl.constexpr, NF2: tl.constexpr, TEMPS: tl.constexpr, BLOCK: tl.constexpr):
    """Sums over four nested sets {d ≥ cut_c} (CUTS[r, c]; c = 0 is the support S): OUT[r] =
    [Σ_c e^d for c in 0..3, Σ_{c, d > dy} e^d for c in 0..3, Σ_S e^d·d, Σ_S e^d·d²], and with
    TEMPS the temperature profile Σ_S exp(d/f) for each factor f (F1, F2: log2(e)/f, padded with
    zeros). The profile's exponentials are computed only in tiles that hold a support token."""
    r = tl.program_id(0)
    row = Z + r.to(tl.int64) * stride
    m = tl.load(M + r)
    inv_t = tl.load(INV_T + r)
    c0 = tl.load(CUTS + r * 4 + 0)
    c1 = tl.load(CUTS + r * 4 + 1)
    c2 = tl.load(CUTS + r * 4 + 2)
    c3 = tl.load(CUTS + r * 4 + 3)
    dy = tl.load(DY + r)
    e0 = 0.0
    e1 = 0.0
    e2 = 0.0
    e3 = 0.0
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    a3 = 0.0
    m1 = 0.0
    m2 = 0.0
    f1 = tl.load(F1 + tl.arange(0, NF1))
    f2 = tl.load(F2 + tl.arange(0, NF2))
    t1 = tl.zeros([NF1], dtype=tl.float32)
    t2 = tl.zeros([NF2], dtype=tl.float32)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < V
        z = tl.load(row + offs, mask=inside, other=-float("inf")).to(tl.float32)
        d = (z - m) * inv_t
        e = tl.where(inside, tl.exp2(d * 1.4426950408889634), 0.0)
        ea = tl.where(d > dy, e, 0.0)
        in0 = inside & (d >= c0)
        x0 = tl.where(in0, e, 0.0)
        dd = tl.where(x0 > 0, d, 0.0)
        e0 += tl.sum(x0, 0)
        a0 += tl.sum(tl.where(in0, ea, 0.0), 0)
        m1 += tl.sum(x0 * dd, 0)
        m2 += tl.sum(x0 * dd * dd, 0)
        e1 += tl.sum(tl.where(d >= c1, e, 0.0), 0)
        a1 += tl.sum(tl.where(d >= c1, ea, 0.0), 0)
        e2 += tl.sum(tl.where(d >= c2, e, 0.0), 0)
        a2 += tl.sum(tl.where(d >= c2, ea, 0.0), 0)
        e3 += tl.sum(tl.where(d >= c3, e, 0.0), 0)
        a3 += tl.sum(tl.where(d >= c3, ea, 0.0), 0)
        if TEMPS:  # noqa: SIM102 (a constexpr test; Triton has no `and` on tensors)
            if tl.max(tl.where(in0, 1, 0), 0) > 0:
                ds = tl.where(in0, d, 0.0)
                t1 += tl.sum(tl.where(in0[None, :], tl.exp2(ds[None, :] * f1[:, None]), 0.0), 1)
                t2 += tl.sum(tl.where(in0[None, :], tl.exp2(ds[None, :] * f2[:, None]), 0.0), 1)
    base = OUT + r * 10
    tl.store(base + 0, e0)
    tl.store(base + 1, e1)
    tl.store(base + 2, e2)
    tl.store(base + 3, e3)
    tl.store(base + 4, a0)
    tl.store(base + 5, a1)
    tl.store(base + 6, a2)
    tl.store(base + 7, a3)
    tl.store(base + 8, m1)
    tl.store(base + 9, m2)
    if TEMPS:
        tl.store(TOUT + r * (NF1 + NF2) + tl.arange(0, NF1), t1)
        tl.store(TOUT + r * (NF1 + NF2) + NF1 + tl.arange(0, NF2), t2)


def row_pass(z: torch.Tensor, zy: torch.Tensor, inv_t: torch.Tensor) -> list[torch.Tensor]:
    """[m, argmax, rank, s1, sT, aT, zmin] for each row of ``z`` (see ``fused.row_pass``)."""
    rows, vocab = z.shape
    f32 = dict(device=z.device, dtype=torch.float32)
    m, s1, st, at, zmin = (torch.empty(rows, **f32) for _ in range(5))
    arg = torch.empty(rows, device=z.device, dtype=torch.int64)
    rank = torch.empty(rows, device=z.device, dtype=torch.int32)
    if rows:
        _row_pass[(rows,)](z, z.stride(0), vocab, zy.float().contiguous(), inv_t.contiguous(),
                           m, arg, rank, s1, st, at, zmin, BLOCK=2048, num_warps=8)
    return [m, arg, rank, s1, st, at, zmin]


def threshold_pass(z: torch.Tensor, m: torch.Tensor, inv_t: torch.Tensor, th: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    rows, vocab = z.shape
    nt = th.shape[1]
    g = torch.empty(rows, nt, device=z.device, dtype=torch.float32)
    n = torch.empty(rows, nt, device=z.device, dtype=torch.int32)
    if rows:
        _threshold_pass[(rows,)](z, z.stride(0), vocab, m.contiguous(), inv_t.contiguous(),
                                 th.float().contiguous(), g, n, NT=nt, BLOCK=512, num_warps=4)
    return g, n.long()


def support_pass(z: torch.Tensor, m: torch.Tensor, inv_t: torch.Tensor, cuts: torch.Tensor,
                 dy: torch.Tensor, factors: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    rows, vocab = z.shape
    out = torch.empty(rows, 10, device=z.device, dtype=torch.float32)
    nf = 0 if factors is None else len(factors)
    nf1, nf2 = 32, 16
    assert nf <= nf1 + nf2
    scaled = torch.zeros(nf1 + nf2, device=z.device, dtype=torch.float32)
    if factors is not None:
        scaled[:nf] = LOG2E / factors.float()
    tout = torch.empty(rows, nf1 + nf2, device=z.device, dtype=torch.float32)
    if rows:
        _support_pass[(rows,)](z, z.stride(0), vocab, m.contiguous(), inv_t.contiguous(),
                               cuts.float().contiguous(), dy.contiguous(), scaled[:nf1],
                               scaled[nf1:], out, tout, NF1=nf1, NF2=nf2,
                               TEMPS=factors is not None, BLOCK=256, num_warps=4)
    return out, None if factors is None else tout[:, :nf]
