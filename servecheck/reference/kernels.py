"""Triton kernels for the three passes of ``servecheck.reference.passes`` over a block of logit rows.

Each program owns one row and streams it once from device memory (bf16 or fp32), keeping every
sum in registers: at a 262k vocabulary a row is 0.5 MiB of bf16, and the statistics need up to 17
exponentials per logit (16 of them for the 64-point temperature profile), so what bounds the work
is either the memory traffic (one read per pass) or the special-function unit, never
intermediate [rows, vocab] tensors. Sums are kept per lane (vectors of BLOCK, the online max
too) and reduced once at the end: a block-wide reduction in every tile costs a barrier each
(docs/performance.md has what that cost). ``servecheck.reference.passes`` holds the same math in plain
torch (the CPU path and the reference these kernels are tested against); the formulas below
mirror it line for line.

Imported only when a CUDA tensor is scored and Triton is installed.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _load(row, offs, V):
    """One tile of the row (-inf past its end). Each loop loads two tiles ahead of the one it
    works on: a program streams its row with one load in flight otherwise, and the passes were
    bound by that latency, not by bandwidth or arithmetic (docs/performance.md)."""
    return tl.load(row + offs, mask=offs < V, other=-float("inf"))


@triton.jit
def _row_pass(Z, stride, V, ZY, INV_T, M, ARG, RANK, S1, ST, AT, ZMIN, LANES,
              KEEP_LANES: tl.constexpr, BLOCK: tl.constexpr):
    """Max/argmax, rank of the served token, Σexp(z-m), Σexp((z-m)/T), the part of the latter
    strictly above the served token, and the row minimum: one read of the row, online per lane.
    With KEEP_LANES, each lane's own maximum too (``top_values`` starts from them)."""
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
    z1, z2 = _load(row, lanes, V), _load(row, BLOCK + lanes, V)
    for start in range(0, V, BLOCK):
        offs = start + lanes
        inside = offs < V
        z, z1, z2 = z1.to(tl.float32), z2, _load(row, offs + 2 * BLOCK, V)
        # online sums with one exponential per sum, not two: either z is the lane's new
        # maximum (the sums scale by e^(m - z), z adds 1) or it is not (it adds e^(z - m)),
        # and both are e^(-|z - m|); the pass was bound by the special-function unit
        up = z > m
        gap = -tl.abs(z - m)
        x1 = tl.exp2(gap * 1.4426950408889634)
        xt = tl.exp2(gap * c)
        above = z > zy
        s1 = tl.where(up, s1 * x1 + 1.0, s1 + x1)
        st = tl.where(up, st * xt + 1.0, st + xt)
        at = tl.where(up, at * xt + tl.where(above, 1.0, 0.0), at + tl.where(above, xt, 0.0))
        arg = tl.where(up, offs, arg)
        rank += above.to(tl.int32)
        zmin = tl.minimum(zmin, tl.where(inside, z, float("inf")))
        m = tl.maximum(m, z)
    if KEEP_LANES:
        tl.store(LANES + r * BLOCK + lanes, m)
    top = tl.max(m, 0)
    tl.store(M + r, top)
    tl.store(ARG + r, tl.min(tl.where(m == top, arg, V), 0).to(tl.int64))
    tl.store(RANK + r, tl.sum(rank, 0))
    tl.store(S1 + r, tl.sum(s1 * tl.exp2((m - top) * 1.4426950408889634), 0))
    tl.store(ST + r, tl.sum(st * tl.exp2((m - top) * c), 0))
    tl.store(AT + r, tl.sum(at * tl.exp2((m - top) * c), 0))
    tl.store(ZMIN + r, tl.min(zmin, 0))


@triton.jit
def _threshold_pass(Z, stride, V, ROWS, M, INV_T, TH, G, NT: tl.constexpr, BLOCK: tl.constexpr):
    """For NT thresholds t per listed row, in logit space: G = Σ_{z > t} exp(d), d = (z - m)/T.
    The thresholds are values of the row's own dtype, so the comparison is exact."""
    r = tl.program_id(0)
    i = tl.load(ROWS + r)
    row = Z + i * stride
    m = tl.load(M + i)
    inv_t = tl.load(INV_T + i)
    js = tl.arange(0, NT)
    th = tl.load(TH + r * NT + js)
    g = tl.zeros([NT, BLOCK], dtype=tl.float32)
    lanes = tl.arange(0, BLOCK)
    z1, z2 = _load(row, lanes, V), _load(row, BLOCK + lanes, V)
    for start in range(0, V, BLOCK):
        z, z1, z2 = z1.to(tl.float32), z2, _load(row, start + 2 * BLOCK + lanes, V)
        e = tl.exp2((z - m) * inv_t * 1.4426950408889634)
        g += tl.where(z[None, :] > th[:, None], e[None, :], 0.0)
    tl.store(G + r * NT + js, tl.sum(g, 1))


@triton.jit
def _support_pass(Z, stride, V, M, INV_T, CUTS, DY, OUT, TOUT, B0, STEP,
                  NA: tl.constexpr, NB: tl.constexpr, TEMPS: tl.constexpr, BLOCK: tl.constexpr):
    """Sums over four nested sets {d ≥ cut_c} (CUTS[r, c]; c = 0 is the support S): OUT[r] =
    [Σ_c e^d for c in 0..3, Σ_{c, d > dy} e^d for c in 0..3, Σ_S e^d·d, Σ_S e^d·d²], and with
    TEMPS the temperature profile Σ_S exp(β·d) for the NA·NB inverse factors β = B0 + i·STEP:
    since the grid is even in β, exp(β_(a·NB+b)·d) = exp((B0 + a·NB·STEP)·d) · exp(STEP·d)^b,
    so NA + 1 exponentials, NB - 1 products (a running product down the tile's first axis, in
    registers) and NA·NB multiply-adds give all of them (64 from 9 here; 41 exponentials a
    logit, at the special-function unit's rate, were what bounded this pass).
    Asked for only where the support is too large to sum from the top candidates. (A per-tile
    test to skip tiles without support tokens cost a block-wide barrier per tile, measured 2.6
    µs a row at top_k = 40 against 0.6 without the profile.)"""
    r = tl.program_id(0)
    row = Z + r.to(tl.int64) * stride
    m = tl.load(M + r)
    inv_t = tl.load(INV_T + r)
    c0 = tl.load(CUTS + r * 4 + 0)
    c1 = tl.load(CUTS + r * 4 + 1)
    c2 = tl.load(CUTS + r * 4 + 2)
    c3 = tl.load(CUTS + r * 4 + 3)
    dy = tl.load(DY + r)
    ca = (B0 + tl.arange(0, NA).to(tl.float32) * (NB * STEP)) * 1.4426950408889634
    zero = tl.zeros([BLOCK], dtype=tl.float32)
    e0, e1, e2, e3, a0, a1, a2, a3, m1, m2 = zero, zero, zero, zero, zero, zero, zero, zero, \
        zero, zero
    t = tl.zeros([NA, NB, BLOCK], dtype=tl.float32)
    lanes = tl.arange(0, BLOCK)
    z1, z2 = _load(row, lanes, V), _load(row, BLOCK + lanes, V)
    for start in range(0, V, BLOCK):
        offs = start + lanes
        inside = offs < V
        z, z1, z2 = z1.to(tl.float32), z2, _load(row, offs + 2 * BLOCK, V)
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
            ds = tl.where(in0, d, -float("inf"))  # exp2(-inf · c) = 0 off the support
            big = tl.exp2(ds[None, :] * ca[:, None])
            step = tl.exp2(tl.where(in0, d, 0.0) * (STEP * 1.4426950408889634))
            small = tl.cumprod(tl.where(tl.arange(0, NB)[:, None] == 0, 1.0, step[None, :]), 0)
            t += big[:, None, :] * small[None, :, :]
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
        ij = tl.arange(0, NA)[:, None] * NB + tl.arange(0, NB)[None, :]
        tl.store(TOUT + r * (NA * NB) + ij, tl.sum(t, 2))


LANES = 1024
"""The row pass's tile: lanes, each with its own running maximum."""


def row_pass(z: torch.Tensor, zy: torch.Tensor, inv_t: torch.Tensor, keep_lanes: bool
             ) -> list[torch.Tensor | None]:
    """[m, argmax, rank, s1, sT, aT, zmin, lane maxima or None] for each row of ``z`` (see
    ``passes.row_pass``)."""
    rows, vocab = z.shape
    f32 = dict(device=z.device, dtype=torch.float32)
    m, s1, st, at, zmin = (torch.empty(rows, **f32) for _ in range(5))
    arg = torch.empty(rows, device=z.device, dtype=torch.int64)
    rank = torch.empty(rows, device=z.device, dtype=torch.int32)
    lanes = torch.empty(rows if keep_lanes else 0, LANES, **f32)
    if rows:
        _row_pass[(rows,)](z, z.stride(0), vocab, zy.float().contiguous(), inv_t.contiguous(),
                           m, arg, rank, s1, st, at, zmin, lanes, KEEP_LANES=keep_lanes,
                           BLOCK=LANES, num_warps=4)
    return [m, arg, rank, s1, st, at, zmin, lanes if keep_lanes else None]


@triton.jit
def _gather_above(Z, stride, V, FLOOR, OUT, COUNT, CAP: tl.constexpr, BLOCK: tl.constexpr):
    """Every z ≥ FLOOR[r] of row r into OUT[r, :CAP], in no order, and how many there were."""
    r = tl.program_id(0)
    row = Z + r.to(tl.int64) * stride
    floor = tl.load(FLOOR + r)
    lanes = tl.arange(0, BLOCK)
    counter = COUNT + r + tl.zeros([BLOCK], dtype=tl.int32)
    one = tl.full([BLOCK], 1, dtype=tl.int32)
    z1, z2 = _load(row, lanes, V), _load(row, BLOCK + lanes, V)
    for start in range(0, V, BLOCK):
        z, z1, z2 = z1.to(tl.float32), z2, _load(row, start + 2 * BLOCK + lanes, V)
        hit = z >= floor
        at = tl.atomic_add(counter, one, mask=hit)
        tl.store(OUT + r * CAP + at, z, mask=hit & (at < CAP))


def top_values(z: torch.Tensor, k: int, lanes: torch.Tensor, cap: int = 512) -> torch.Tensor | None:
    """The k largest values of each row of ``z``, sorted, from the row pass's lane maxima: the
    k-th largest lane maximum is a floor with at least k values at or above it and, on any row
    without long runs of ties, few more (lanes stride the row), so one more read gathers them
    and a sort of ``cap`` values finishes. None where a row had more than ``cap`` (ask topk).
    torch.topk over a 262k row took 2.0 µs on an H100; this is one row read."""
    rows, vocab = z.shape
    floor = lanes.topk(k, dim=1).values[:, -1].contiguous()
    out = torch.full((rows, cap), -float("inf"), device=z.device, dtype=torch.float32)
    count = torch.zeros(rows, device=z.device, dtype=torch.int32)
    if rows:
        _gather_above[(rows,)](z, z.stride(0), vocab, floor, out, count, CAP=cap, BLOCK=256,
                               num_warps=4)
    if bool((count > cap).any()):
        return None
    return out.topk(k, dim=1).values.to(z.dtype)


def threshold_pass(z: torch.Tensor, rows: torch.Tensor, m: torch.Tensor, inv_t: torch.Tensor,
                   th: torch.Tensor) -> torch.Tensor:
    vocab = z.shape[1]
    nt = th.shape[1]
    padded = 1 << max(0, nt - 1).bit_length()  # tl.arange needs a power of two: 3 min_p cuts → 4
    th = torch.nn.functional.pad(th.float(), (0, padded - nt), value=math.inf)  # sums nothing
    g = torch.empty(len(rows), padded, device=z.device, dtype=torch.float32)
    if len(rows):
        _threshold_pass[(len(rows),)](z, z.stride(0), vocab, rows.long().contiguous(), m.contiguous(),
                                      inv_t.contiguous(), th.contiguous(), g, NT=padded,
                                      BLOCK=256, num_warps=4)
    return g[:, :nt]


NA, NB = 8, 8
"""The profile's 64 inverse factors as 8 exponentials of the coarse steps times 8 of the fine."""


def support_pass(z: torch.Tensor, m: torch.Tensor, inv_t: torch.Tensor, cuts: torch.Tensor,
                 dy: torch.Tensor, grid: tuple[float, float, int] | None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    rows, vocab = z.shape
    out = torch.empty(rows, 10, device=z.device, dtype=torch.float32)
    b0, step, n = grid if grid is not None else (0.0, 0.0, 0)
    assert n <= NA * NB
    tout = torch.empty(rows, NA * NB if grid is not None else 1, device=z.device, dtype=torch.float32)
    if rows:
        _support_pass[(rows,)](z, z.stride(0), vocab, m.contiguous(), inv_t.contiguous(),
                               cuts.float().contiguous(), dy.contiguous(), out, tout, b0, step,
                               NA=NA, NB=NB, TEMPS=grid is not None, BLOCK=256, num_warps=8)
    return out, None if grid is None else tout[:, :n]
