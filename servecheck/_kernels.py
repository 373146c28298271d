"""Triton kernels for the three passes of ``servecheck.fused`` over a block of logit rows.

Each program owns one row and streams it once from device memory (bf16 or fp32), keeping every
sum in registers: at a 262k vocabulary a row is 0.5 MiB of bf16, and the statistics need up to 42
exponentials per logit (41 of them for the temperature profile), so what bounds the work is
either the memory traffic (one read per pass) or the special-function unit, never intermediate
[rows, vocab] tensors. Sums are kept per lane (vectors of BLOCK, the online max too) and reduced
once at the end: a block-wide reduction in every tile costs a barrier each (docs/performance.md
has what that cost). ``servecheck.fused`` holds the same math in plain torch (the CPU path and
the reference these kernels are tested against); the formulas below mirror it line for line.

Imported only when a CUDA tensor is scored and Triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _exp2_fma(x):
    """2^x (x ≤ 0) on the FMA and integer pipes, not the special-function unit: round x to the
    nearest integer n with the 1.5·2^23 trick (no conversion instruction, which runs at the
    special-function rate), 2^(x-n) by a degree-5 polynomial (relative error 2.2e-7 in float32,
    like the hardware ex2.approx), 2^n by writing the exponent bits. Below 2^-127 it returns 0.
    The temperature profile needs 41 exponentials a logit; 9 of them go here, so both pipes work."""
    x = tl.maximum(x, -127.0)
    t = x + 12582912.0
    f = x - (t - 12582912.0)
    p = 0.0013266970636323094 * f + 0.009675459936261177
    p = p * f + 0.05550742521882057
    p = p * f + 0.24022121727466583
    p = p * f + 0.6931469440460205
    p = p * f + 1.0000001192092896
    n = t.to(tl.int32, bitcast=True) - 0x4B400000
    return p * ((n + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _row_pass(Z, stride, V, ZY, INV_T, M, ARG, RANK, S1, ST, AT, ZMIN, BLOCK: tl.constexpr):
    """Max/argmax, rank of the served token, Σexp(z-m), Σexp((z-m)/T), the part of the latter
    strictly above the served token, and the row minimum: one read of the row, online per lane."""
    r = tl.program_id(0)
    row = Z + r.to(tl.int64) * stride
    zy = tl.load(ZY + r)
    c = tl.load(INV_T + r) * 1.4426950408889634
    lanes = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], -1e30, tl.float32)
    arg = tl.zeros([BLOCK], dtype=tl.int32)
    s1 = tl.zeros([BLOCK], dtype=tl.float32)
    st = tl.zeros([BLOCK], dtype=tl.float32)
    at = tl.zeros([BLOCK], dtype=tl.float32)
    rank = tl.zeros([BLOCK], dtype=tl.int32)
    zmin = tl.full([BLOCK], float("inf"), tl.float32)
    for start in range(0, V, BLOCK):
        offs = start + lanes
        inside = offs < V
        z = tl.load(row + offs, mask=inside, other=-float("inf")).to(tl.float32)
        new = tl.maximum(m, z)
        arg = tl.where(z > m, offs, arg)
        back = m - new
        et = tl.exp2((z - new) * c)
        above = z > zy
        s1 = s1 * tl.exp2(back * 1.4426950408889634) + tl.exp2((z - new) * 1.4426950408889634)
        keep = tl.exp2(back * c)
        st = st * keep + et
        at = at * keep + tl.where(above, et, 0.0)
        rank += above.to(tl.int32)
        zmin = tl.minimum(zmin, tl.where(inside, z, float("inf")))
        m = new
    top = tl.max(m, 0)
    tl.store(M + r, top)
    tl.store(ARG + r, tl.min(tl.where(m == top, arg, V), 0).to(tl.int64))
    tl.store(RANK + r, tl.sum(rank, 0))
    tl.store(S1 + r, tl.sum(s1 * tl.exp2((m - top) * 1.4426950408889634), 0))
    tl.store(ST + r, tl.sum(st * tl.exp2((m - top) * c), 0))
    tl.store(AT + r, tl.sum(at * tl.exp2((m - top) * c), 0))
    tl.store(ZMIN + r, tl.min(zmin, 0))


@triton.jit
def _threshold_pass(Z, stride, V, M, INV_T, TH, G, NT: tl.constexpr, BLOCK: tl.constexpr):
    """For NT thresholds t per row: G = Σ_{d > t} exp(d), d = (z - m)/T."""
    r = tl.program_id(0)
    row = Z + r.to(tl.int64) * stride
    m = tl.load(M + r)
    inv_t = tl.load(INV_T + r)
    js = tl.arange(0, NT)
    th = tl.load(TH + r * NT + js)
    g = tl.zeros([NT, BLOCK], dtype=tl.float32)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        z = tl.load(row + offs, mask=offs < V, other=-float("inf")).to(tl.float32)
        d = (z - m) * inv_t
        e = tl.exp2(d * 1.4426950408889634)
        g += tl.where(d[None, :] > th[:, None], e[None, :], 0.0)
    tl.store(G + r * NT + js, tl.sum(g, 1))


@triton.jit
def _support_pass(Z, stride, V, M, INV_T, CUTS, DY, F1, F2, F3, OUT, TOUT,
                  NF1: tl.constexpr, NF2: tl.constexpr, TEMPS: tl.constexpr, BLOCK: tl.constexpr):
    """Sums over four nested sets {d ≥ cut_c} (CUTS[r, c]; c = 0 is the support S): OUT[r] =
    [Σ_c e^d for c in 0..3, Σ_{c, d > dy} e^d for c in 0..3, Σ_S e^d·d, Σ_S e^d·d²], and with
    TEMPS the temperature profile Σ_S exp(d/f) for NF1 + NF2 + 1 factors f (F1, F2, F3 hold
    log2(e)/f); asked for only where the support is too large to sum from the top candidates.
    (A per-tile test to skip tiles without support tokens cost a block-wide barrier per tile,
    measured 2.6 µs a row at top_k = 40 against 0.6 without the profile.)"""
    r = tl.program_id(0)
    row = Z + r.to(tl.int64) * stride
    m = tl.load(M + r)
    inv_t = tl.load(INV_T + r)
    c0 = tl.load(CUTS + r * 4 + 0)
    c1 = tl.load(CUTS + r * 4 + 1)
    c2 = tl.load(CUTS + r * 4 + 2)
    c3 = tl.load(CUTS + r * 4 + 3)
    dy = tl.load(DY + r)
    f1 = tl.load(F1 + tl.arange(0, NF1))
    f2 = tl.load(F2 + tl.arange(0, NF2))
    f3 = tl.load(F3)
    zero = tl.zeros([BLOCK], dtype=tl.float32)
    e0, e1, e2, e3, a0, a1, a2, a3, m1, m2, t3 = zero, zero, zero, zero, zero, zero, zero, zero, \
        zero, zero, zero
    t1 = tl.zeros([NF1, BLOCK], dtype=tl.float32)
    t2 = tl.zeros([NF2, BLOCK], dtype=tl.float32)
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
        e0 += x0
        a0 += tl.where(in0, ea, 0.0)
        m1 += x0 * dd
        m2 += x0 * dd * dd
        e1 += tl.where(d >= c1, e, 0.0)
        a1 += tl.where(d >= c1, ea, 0.0)
        e2 += tl.where(d >= c2, e, 0.0)
        a2 += tl.where(d >= c2, ea, 0.0)
        e3 += tl.where(d >= c3, e, 0.0)
        a3 += tl.where(d >= c3, ea, 0.0)
        if TEMPS:
            ds = tl.where(in0, d, -float("inf"))  # exp2(-inf · f) = 0 off the support
            t1 += tl.exp2(ds[None, :] * f1[:, None])
            t2 += _exp2_fma(ds[None, :] * f2[:, None])
            t3 += _exp2_fma(ds * f3)
    base = OUT + r * 10
    tl.store(base + 0, tl.sum(e0, 0))
    tl.store(base + 1, tl.sum(e1, 0))
    tl.store(base + 2, tl.sum(e2, 0))
    tl.store(base + 3, tl.sum(e3, 0))
    tl.store(base + 4, tl.sum(a0, 0))
    tl.store(base + 5, tl.sum(a1, 0))
    tl.store(base + 6, tl.sum(a2, 0))
    tl.store(base + 7, tl.sum(a3, 0))
    tl.store(base + 8, tl.sum(m1, 0))
    tl.store(base + 9, tl.sum(m2, 0))
    if TEMPS:
        width = NF1 + NF2 + 1
        tl.store(TOUT + r * width + tl.arange(0, NF1), tl.sum(t1, 1))
        tl.store(TOUT + r * width + NF1 + tl.arange(0, NF2), tl.sum(t2, 1))
        tl.store(TOUT + r * width + NF1 + NF2, tl.sum(t3, 0))


def row_pass(z: torch.Tensor, zy: torch.Tensor, inv_t: torch.Tensor) -> list[torch.Tensor]:
    """[m, argmax, rank, s1, sT, aT, zmin] for each row of ``z`` (see ``fused.row_pass``)."""
    rows, vocab = z.shape
    f32 = dict(device=z.device, dtype=torch.float32)
    m, s1, st, at, zmin = (torch.empty(rows, **f32) for _ in range(5))
    arg = torch.empty(rows, device=z.device, dtype=torch.int64)
    rank = torch.empty(rows, device=z.device, dtype=torch.int32)
    if rows:
        _row_pass[(rows,)](z, z.stride(0), vocab, zy.float().contiguous(), inv_t.contiguous(),
                           m, arg, rank, s1, st, at, zmin, BLOCK=1024, num_warps=4)
    return [m, arg, rank, s1, st, at, zmin]


def threshold_pass(z: torch.Tensor, m: torch.Tensor, inv_t: torch.Tensor, th: torch.Tensor
                   ) -> torch.Tensor:
    rows, vocab = z.shape
    nt = th.shape[1]
    g = torch.empty(rows, nt, device=z.device, dtype=torch.float32)
    if rows:
        _threshold_pass[(rows,)](z, z.stride(0), vocab, m.contiguous(), inv_t.contiguous(),
                                 th.float().contiguous(), g, NT=nt, BLOCK=256, num_warps=4)
    return g


NF1, NF2 = 32, 8
"""The 41 temperature factors as a 32-wide tile, an 8-wide tile and one more: no padding."""


def support_pass(z: torch.Tensor, m: torch.Tensor, inv_t: torch.Tensor, cuts: torch.Tensor,
                 dy: torch.Tensor, factors: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    rows, vocab = z.shape
    out = torch.empty(rows, 10, device=z.device, dtype=torch.float32)
    nf = 0 if factors is None else len(factors)
    assert nf <= NF1 + NF2 + 1
    scaled = torch.zeros(NF1 + NF2 + 1, device=z.device, dtype=torch.float32)
    if factors is not None:
        scaled[:nf] = LOG2E / factors.float()
    tout = torch.empty(rows, NF1 + NF2 + 1, device=z.device, dtype=torch.float32)
    if rows:
        _support_pass[(rows,)](z, z.stride(0), vocab, m.contiguous(), inv_t.contiguous(),
                               cuts.float().contiguous(), dy.contiguous(), scaled[:NF1],
                               scaled[NF1:NF1 + NF2], scaled[NF1 + NF2:], out, tout, NF1=NF1,
                               NF2=NF2, TEMPS=factors is not None, BLOCK=256, num_warps=8)
    return out, None if factors is None else tout[:, :nf]
