"""The fused scorer against the definition: full-vocabulary ``transform`` statistics, token by token.

``reference_stats`` is the scorer as first written (materialise q = S_θ(z) over the vocabulary,
sort for the nucleus, 41 log-softmaxes for the temperature profile); the fused passes must give the
same numbers on random logits of every shape that stresses them: truncation by each rule, exact
ties (bf16-rounded logits), nuclei too large for the candidate list (the bracketing path), both
conventions, penalties. ``score`` itself is checked against one unpadded forward per item.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from servecheck.reference import nucleus
from servecheck.reference.logit_blocks import token_counts
from servecheck.reference.model import Reference
from servecheck.reference.sampling import (
    HF,
    LLAMA_CPP,
    NEG_INF,
    Convention,
    Sampling,
    apply_penalties,
    boundary_slack,
    transform,
)
from servecheck.reference.scoring import score
from servecheck.reference.token_scores import TEMPERATURE_FACTORS, ScoreItem
from tests.reference.cases import CASES
from tests.reference.stats_by_key import reference_sampled_stats

KEYS = ("logq", "above", "entropy", "var", "top", "pre_nucleus_above", "pit")


def reference_stats(logits: torch.Tensor, tok: torch.Tensor, s: Sampling, convention: Convention,
                    counts: torch.Tensor | None, uniforms: torch.Tensor) -> dict[str, torch.Tensor]:
    """The statistics by definition, over materialised [rows, vocab] tensors (float32)."""
    logq = transform(logits, s, convention, counts)
    q = logq.exp()
    lq_y = logq.gather(1, tok[:, None])[:, 0]
    plogq = torch.where(q > 0, q * logq, torch.zeros_like(q))
    entropy = -plogq.sum(1)
    second = torch.where(q > 0, q * logq * logq, torch.zeros_like(q)).sum(1)
    pre = transform(logits, replace(s, top_p=1.0), convention, counts)
    z = apply_penalties(logits.float(), counts, s)
    support = torch.isfinite(logq)
    temp_ll = torch.stack([(z / (s.temperature * f)).masked_fill(~support, NEG_INF)
                           .log_softmax(-1).gather(1, tok[:, None])[:, 0]
                           for f in TEMPERATURE_FACTORS], dim=1)
    above = (q * (logq > lq_y[:, None])).sum(1)
    rule, slack = torch.zeros_like(lq_y), torch.zeros_like(lq_y)
    out = torch.isinf(lq_y).nonzero()[:, 0]
    if len(out):
        r, sl = boundary_slack(logits[out], tok[out], s, convention,
                               None if counts is None else counts[out])
        rule[out], slack[out] = r.float(), sl
    return {"logq": lq_y, "rule": rule, "slack": slack, "above": above, "pit": above + uniforms * lq_y.exp(),
            "entropy": entropy, "var": (second - entropy**2).clamp(min=0), "top": q.amax(1),
            "pre_nucleus_above": (pre.exp() * (pre > pre.gather(1, tok[:, None]))).sum(1),
            "temp_ll": temp_ll}


def assert_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol: float) -> None:
    """Same support (finite log q) row by row, and every statistic within ``atol``."""
    for key in (*KEYS, "temp_ll", "rule", "slack"):
        a, b = got[key].double().cpu(), want[key].double().cpu()
        assert torch.equal(torch.isfinite(a), torch.isfinite(b)), key
        fin = torch.isfinite(b)
        assert torch.equal(a[~fin], b[~fin]), key
        assert torch.allclose(a[fin], b[fin], atol=atol, rtol=1e-4), (key, (a - b)[fin].abs().max())


def _draw(rows: int, vocab: int, scale: float, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=gen) * scale


def _tokens(z: torch.Tensor, s: Sampling, gen: torch.Generator) -> torch.Tensor:
    """Mostly tokens from q, some from the raw distribution (outside the support)."""
    inside = torch.multinomial(transform(z, s).exp(), 1, generator=gen)[:, 0]
    anywhere = torch.multinomial(z.softmax(-1), 1, generator=gen)[:, 0]
    return torch.where(torch.rand(len(z), generator=gen) < 0.8, inside, anywhere)


@pytest.mark.parametrize("s", CASES, ids=lambda s: s.label())
@pytest.mark.parametrize("scale", [0.7, 3.0, 8.0])
@pytest.mark.parametrize("candidates", [256, 4])
def test_fused_statistics_equal_the_definition(s: Sampling, scale: float, candidates: int,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Flat (0.7: the nucleus holds most of the vocabulary) to peaked (8) logits; with 4
    candidates every nucleus goes through the bracketing passes."""
    monkeypatch.setattr(nucleus, "CANDIDATES", candidates)
    gen = torch.Generator().manual_seed(int(scale * 10) + candidates)
    z = _draw(48, 3000, scale, gen)
    tok = _tokens(z, s, gen)
    u = torch.rand(48, generator=gen)
    assert_close(reference_sampled_stats(z, tok, s, HF, None, u), reference_stats(z, tok, s, HF, None, u),
                 atol=2e-5)


@pytest.mark.parametrize("convention", [Convention(top_p_before_temperature=True),
                                        Convention(top_p_inclusive=True), LLAMA_CPP,
                                        Convention(min_p_before_temperature=True)],
                         ids=["before", "incl", "llama.cpp", "min_p-before"])
def test_conventions_and_ties(convention: Convention, monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16-rounded logits tie often, at the top_k and at the nucleus boundary alike."""
    gen = torch.Generator().manual_seed(3)
    for candidates in (256, 4):
        monkeypatch.setattr(nucleus, "CANDIDATES", candidates)
        for s in (Sampling(temperature=1.5, top_p=0.7), Sampling(temperature=0.9, top_k=20, top_p=0.6),
                  Sampling(temperature=0.7, top_k=30, top_p=0.9, min_p=0.05),
                  Sampling(temperature=1.4, min_p=0.1)):
            z = _draw(64, 800, 2.0, gen).bfloat16().float()
            tok = _tokens(z, s, gen)
            u = torch.rand(64, generator=gen)
            assert_close(reference_sampled_stats(z, tok, s, convention, None, u),
                         reference_stats(z, tok, s, convention, None, u), atol=2e-5)


def test_penalties_follow_the_counts() -> None:
    gen = torch.Generator().manual_seed(5)
    item = ScoreItem(prompt_ids=[1, 2, 3, 3], output_ids=[4, 5, 4, 6, 1, 7], sampling=Sampling(
        temperature=0.8, top_p=0.9, repetition_penalty=1.3, presence_penalty=0.2))
    assert item.sampling is not None
    counts = token_counts(item, slice(0, 6), 50, HF)
    z = _draw(6, 50, 2.0, gen)
    tok = torch.tensor(item.output_ids)
    u = torch.rand(6, generator=gen)
    assert_close(reference_sampled_stats(z, tok, item.sampling, HF, counts, u),
                 reference_stats(z, tok, item.sampling, HF, counts, u), atol=2e-5)


def _oracle(ref: Reference, item: ScoreItem) -> tuple[np.ndarray, dict[str, torch.Tensor] | None]:
    """One item alone: unpadded forward, full logits, the definition."""
    ids = torch.tensor([item.prompt_ids + item.output_ids])
    with torch.inference_mode():
        logits = ref.model(input_ids=ids).logits[0, len(item.prompt_ids) - 1:-1].float()
    tok = torch.tensor(item.output_ids)
    chosen = logits.gather(1, tok[:, None])[:, 0]
    raw = (chosen - torch.logsumexp(logits, 1)).numpy()
    s = item.sampling
    if s is None or s.greedy:
        return raw, None
    counts = token_counts(item, slice(0, len(tok)), logits.shape[1], HF) if s.penalised else None
    u = torch.from_numpy(np.random.default_rng(item.seed).random(len(tok))).float()
    return raw, reference_stats(logits, tok, s, HF, counts, u)


def test_score_equals_one_forward_per_item(ref: Reference) -> None:
    """Batched, right-padded with no mask, grouped by sampling, in blocks: the same numbers as
    scoring each item alone (many batches and blocks: tiny budgets)."""
    rng = np.random.default_rng(0)
    vocab = ref.model.config.vocab_size
    kinds = [None, Sampling(temperature=0.0), Sampling(temperature=0.7, top_p=0.9),
             Sampling(temperature=1.0), Sampling(temperature=1.0, top_k=40),
             Sampling(temperature=0.9, repetition_penalty=1.2)]
    items = [ScoreItem(rng.integers(3, vocab, rng.integers(5, 60)).tolist(),
                       rng.integers(3, vocab, rng.integers(1, 40)).tolist(), kinds[j % len(kinds)], j)
             for j in range(24)]
    got = score(ref, items, token_budget=300, logit_budget=vocab * 7)
    for item, scores in zip(items, got, strict=True):
        raw, want = _oracle(ref, item)
        np.testing.assert_allclose(scores.logprob, raw, atol=2e-4)
        if want is None:
            assert not scores.stats
            continue
        have = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in scores.stats.items()}
        assert_close(have, want, atol=2e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_keys_order_the_values(dtype: torch.dtype) -> None:
    """The bracketing searches integer keys of the logits' own dtype: they must sort like the
    values (every 16-bit value, a random float32 sample), and map back exactly."""
    if dtype == torch.float32:
        gen = torch.Generator().manual_seed(1)
        bits = torch.randint(-(1 << 31), (1 << 31) - 1, (200_000,), generator=gen,
                             dtype=torch.int64).to(torch.int32)
    else:
        bits = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16)
    x = bits.view(dtype)
    x = x[~torch.isnan(x)]
    keys = nucleus.order_keys(x)
    order = torch.argsort(keys)
    assert bool((x[order][1:].float() >= x[order][:-1].float()).all())
    assert torch.equal(nucleus.key_values(keys, dtype), x.float())
    zeros = nucleus.order_keys(torch.tensor([0.0, -0.0], dtype=dtype))
    assert zeros.tolist() == [0, 0]


@pytest.mark.parametrize("scale", [0.7, 5.0])
def test_bf16_bracket_resolves_in_four_passes(scale: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 logits whose nuclei are all bracketed (4 passes of 16 thresholds): the cut is the
    exact one, found by sorting, and the statistics equal the definition in float32."""
    monkeypatch.setattr(nucleus, "CANDIDATES", 4)
    gen = torch.Generator().manual_seed(9)
    z = (_draw(32, 5000, scale, gen)).bfloat16()
    m, zmin = z.float().amax(1), z.float().amin(1)
    inv_t = torch.full((32,), 1 / 0.7)
    d = ((z.float() - m[:, None]) * inv_t[:, None]).sort(1, descending=True).values
    mass = d.exp()
    before = mass.cumsum(1) - mass
    n = (before < 0.9 * mass.sum(1, keepdim=True)).sum(1)
    exact = d.gather(1, (n - 1)[:, None])[:, 0]
    neg = torch.full((32,), -math.inf)
    cut, _, resolved = nucleus.nucleus_cut(z, m, inv_t, neg, mass.sum(1), zmin, 0.9, False)
    assert not bool(resolved.all())  # most or all of the rows were bracketed
    assert torch.equal(cut, exact)
    for s in (Sampling(temperature=0.7, top_p=0.9), Sampling(temperature=1.2, top_p=0.5),
              Sampling(temperature=0.9, top_k=300, top_p=0.8)):
        tok = _tokens(z.float(), s, gen)
        u = torch.rand(32, generator=gen)
        assert_close(reference_sampled_stats(z, tok, s, HF, None, u),
                     reference_stats(z.float(), tok, s, HF, None, u), atol=2e-5)
