"""GPU statistics (Triton passes) against the CPU float32 ones; skipped where CUDA is absent.

Tolerance: |gpu - cpu| ≤ TOL + 1e-4·|cpu| on every statistic, the same support (finite log q) and
the same rule on every row. The two sides differ only in float32 rounding: the kernels use the
hardware exp2 (relative error ~2⁻²²) and sum each row in another order, which moves a sum over
262k terms by ~1e-6 relative and a log-probability by ~1e-6; TOL = 1e-4 leaves two orders of
magnitude. (A bf16 *reference* differs from an fp32 one far more, ~1e-2: that is the numerics
tolerance of the checks, not this one.) docs/performance.md records the measured differences.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from servecheck.reference.model import Reference
from servecheck.reference.sampling import HF, LLAMA_CPP, Convention, Sampling
from servecheck.reference.scoring import score
from servecheck.reference.tails import TAIL_KEYS
from servecheck.reference.token_scores import ScoreItem
from tests.reference.cases import CASES
from tests.reference.stats_by_key import reference_sampled_stats

STEPPED = {k for k in TAIL_KEYS if k.startswith(("beyond_", "below_min_p")) or k == "rank_q"}
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TOL = 1e-4


def _diff(gpu: dict[str, torch.Tensor], cpu: dict[str, torch.Tensor]) -> dict[str, float]:
    """Largest |gpu - cpu| per statistic, after checking support and rule agree exactly."""
    worst = {}
    for key, want in cpu.items():
        a, b = gpu[key].double().cpu(), want.double()
        assert torch.equal(torch.isfinite(a), torch.isfinite(b)), key
        if key == "rule":
            assert torch.equal(a, b)
        fin = torch.isfinite(b)
        # the same -inf (outside the support) and NaN (a tail mass the candidates do not cover)
        assert torch.allclose(a[~fin], b[~fin], rtol=0, atol=0, equal_nan=True), key
        err = (a[fin] - b[fin]).abs()
        assert bool((err <= TOL + 1e-4 * b[fin].abs()).all()), (key, err.max())
        worst[key] = float(err.max()) if len(err) else 0.0
    return worst


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("scale", [0.7, 4.0], ids=["flat", "peaked"])
def test_fused_statistics_gpu_equal_cpu(dtype: torch.dtype, scale: float) -> None:
    """Gemma-3 vocabulary (262144), flat and peaked logits, every parameter case."""
    gen = torch.Generator().manual_seed(11)
    worst: dict[str, float] = {}
    for s in [*CASES, Sampling(temperature=0.7, top_p=0.9, repetition_penalty=1.0)]:
        z = (torch.randn(8, 262144, generator=gen) * scale).to(dtype)
        tok = torch.multinomial(z.float().softmax(-1), 1, generator=gen)[:, 0]
        u = torch.rand(8, generator=gen)
        cpu = reference_sampled_stats(z, tok, s, HF, None, u)
        gpu = reference_sampled_stats(z.cuda(), tok.cuda(), s, HF, None, u)
        for k, v in _diff(gpu, cpu).items():
            worst[k] = max(worst.get(k, 0.0), v)
    print(f"\nmax |gpu - cpu| {dtype} scale {scale}: " + ", ".join(
        f"{k} {v:.2e}" for k, v in sorted(worst.items())))


@pytest.mark.parametrize("conv", [Convention(top_p_inclusive=True), LLAMA_CPP],
                         ids=["inclusive", "llama.cpp"])
def test_other_conventions_gpu_equal_cpu(conv: Convention) -> None:
    gen = torch.Generator().manual_seed(12)
    for s in (Sampling(temperature=0.9, top_k=50, top_p=0.8),
              Sampling(temperature=0.7, top_p=0.9, min_p=0.05)):
        z = torch.randn(16, 65536, generator=gen) * 3
        tok = torch.randint(0, 65536, (16,), generator=gen)
        u = torch.rand(16, generator=gen)
        _diff(reference_sampled_stats(z.cuda(), tok.cuda(), s, conv, None, u),
              reference_sampled_stats(z, tok, s, conv, None, u))


@pytest.mark.parametrize("nt", [1, 3, 5])
def test_threshold_pass_takes_any_number_of_thresholds(nt: int) -> None:
    """The kernel's tile wants a power of two; the tail statistics ask for 3 (min_p 0.02, 0.05,
    0.1), which once failed to compile on the GPU only."""
    from servecheck.reference.passes import threshold_pass

    gen = torch.Generator().manual_seed(14)
    z = torch.randn(6, 262144, generator=gen) * 2
    rows, m, inv_t = torch.arange(6), z.amax(1), torch.full((6,), 1 / 0.8)
    th = z.sort(1, descending=True).values[:, [10, 100, 1000, 10000, 100000][:nt]]
    cpu = threshold_pass(z, rows, m, inv_t, th)
    gpu = threshold_pass(z.cuda(), rows.cuda(), m.cuda(), inv_t.cuda(), th.cuda()).cpu()
    assert gpu.shape == cpu.shape and torch.allclose(gpu, cpu, rtol=1e-4)


def test_score_gpu_equals_cpu() -> None:
    """The whole path (forward, blocks, passes) on the built-in model in float32. The forwards
    themselves differ by float32 rounding (~1e-5 in a logit), so a token within that of a support
    boundary may fall on either side: at most 0.5% of rows may disagree on the support, and the
    others agree within 10·TOL."""
    cpu, gpu = Reference("builtin"), Reference("builtin", device="cuda")
    rng = np.random.default_rng(1)
    vocab = cpu.model.config.vocab_size
    kinds = [None, Sampling(temperature=0.7, top_p=0.9), Sampling(temperature=1.0),
             Sampling(temperature=1.0, top_k=40), Sampling(temperature=0.8, repetition_penalty=1.3)]
    items = [ScoreItem(rng.integers(3, vocab, rng.integers(5, 300)).tolist(),
                       rng.integers(3, vocab, rng.integers(1, 200)).tolist(), kinds[j % 5], j)
             for j in range(60)]
    got, want = score(gpu, items), score(cpu, items)
    np.testing.assert_allclose(np.concatenate([a.logprob for a in got]),
                               np.concatenate([b.logprob for b in want]), atol=10 * TOL)
    sampled = [(a.stats, b.stats) for a, b in zip(got, want, strict=True) if b.stats]
    a = {k: np.concatenate([x[k] for x, _ in sampled]) for k in sampled[0][1]}
    b = {k: np.concatenate([y[k] for _, y in sampled]) for k in sampled[0][1]}
    same = np.isfinite(a["logq"]) == np.isfinite(b["logq"])
    assert same.mean() >= 0.995, same.mean()
    worst = {}
    for k in b:
        x, y = a[k][same], b[k][same]
        fin = np.isfinite(y)
        assert np.array_equal(np.isfinite(x), fin), k
        err = np.abs(x[fin] - y[fin]).reshape(-1)
        close = err <= 10 * TOL * (1 + np.abs(y[fin]).reshape(-1))
        # tail masses and ranks step where a token crosses a nucleus, min_p or rank boundary,
        # as the support does: the same 0.5% of rows may step on one side only
        assert close.all() or (k in STEPPED and close.mean() >= 0.995), (k, err.max())
        worst[k] = float(err.max()) if len(err) else 0.0
    print(f"\nscore(): {same.mean():.4f} of {len(same)} rows agree on the support; max |gpu - cpu| "
          + ", ".join(f"{k} {v:.2e}" for k, v in sorted(worst.items())))


def test_overlap_runs_in_order_and_raises_worker_errors() -> None:
    """The statistics worker (servecheck.reference.overlap): calls run in the order submitted, on the side
    stream, and an exception there is raised in the caller."""
    from servecheck.reference.overlap import Overlap

    seen: list[tuple[int, bool]] = []
    x = torch.arange(4, device="cuda")
    with Overlap(torch.device("cuda")) as overlap:
        for i in range(5):
            overlap.submit(lambda i, t: seen.append((i, torch.cuda.current_stream() == overlap.stream)),
                           i, x)
    assert seen == [(i, True) for i in range(5)]

    def fail() -> None:
        raise ValueError("worker")

    with pytest.raises(ValueError, match="worker"), Overlap(torch.device("cuda")) as overlap:
        overlap.submit(fail)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_top_values_equal_topk(dtype: torch.dtype) -> None:
    """The candidates from the row pass's lane maxima (servecheck.reference.kernels.top_values) are
    torch.topk's values, ties included; a row with more than ``cap`` values at the floor falls
    back (None)."""
    from servecheck.reference import kernels as _kernels

    gen = torch.Generator().manual_seed(13)
    z = (torch.randn(64, 262144, generator=gen) * 2).to(dtype).cuda()
    z[:4, :50] = z[:4].amax(1, keepdim=True)  # ties at the top
    rows = _kernels.row_pass(z, z[:, 0].float(), torch.ones(64, device="cuda"), True)
    for k in (56, 256):
        top = _kernels.top_values(z, k, rows[-1])
        assert top is not None and torch.equal(top, z.topk(k, dim=1).values)
    z[:, :1000] = 100.0
    rows = _kernels.row_pass(z, z[:, 0].float(), torch.ones(64, device="cuda"), True)
    assert _kernels.top_values(z, 56, rows[-1]) is None
