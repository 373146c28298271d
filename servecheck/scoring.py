"""Reference scores by teacher forcing: one forward pass over prompt + served output.

The server's RNG cannot be reproduced and need not be: feeding the served tokens back through
the reference gives, at every output position, the distribution q_i = S_θ(z_i) a correct server
sampled from. This costs one forward pass per response, where regenerating costs one per token.

Responses are sorted by length and batched under a token budget (little padding). Only output
positions are projected onto the vocabulary, and never more than ``logit_budget`` logits at once:
the number of positions per block shrinks as the vocabulary grows, so memory stays flat in both
batch size and vocabulary (Gemma's is 262k).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from servecheck.reference import Reference
from servecheck.sampling import HF, NEG_INF, Convention, Sampling, apply_penalties, boundary_slack, transform

TEMPERATURE_FACTORS = np.exp(np.linspace(np.log(0.4), np.log(2.5), 41))
"""Grid for the temperature profile likelihood, as multiples of the requested temperature."""


@dataclass(frozen=True)
class ScoreItem:
    prompt_ids: list[int]
    output_ids: list[int]
    sampling: Sampling | None = None
    """Requested sampling; None scores raw log-probs only (greedy checks need no more)."""
    seed: int = 0
    """Seeds the uniform draws of the randomised PIT, so results are reproducible."""


@dataclass
class TokenScores:
    """Per output token: what the reference thinks of the token the server produced."""

    token_ids: np.ndarray
    logprob: np.ndarray
    """Raw log-probability (temperature 1, no truncation)."""
    argmax: np.ndarray
    margin: np.ndarray
    """Logit of the argmax minus logit of the served token (0 when they are the same)."""
    rank: np.ndarray
    """How many tokens have a strictly higher raw logit (0 = argmax)."""
    stats: dict[str, np.ndarray] = field(default_factory=dict)
    """With a sampling transform: ``logq`` (log q(y), -inf outside the support), ``above``
    (q-mass ranked above y), ``pit``, ``entropy`` and ``var`` (of log q under q), ``top``
    (largest q), ``pre_nucleus_above`` (mass above y before top_p), and ``temp_ll``
    (log q(y) at each temperature of ``TEMPERATURE_FACTORS`` × requested, on the requested
    support); for tokens outside
    the support, ``rule`` (index into ``sampling.RULES``) and ``slack`` (how far outside)."""

    def __len__(self) -> int:
        return len(self.token_ids)


def _batches(order: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    out: list[list[int]] = []
    current: list[int] = []
    for i in order:  # longest first, so each batch's width is its first item's length
        if current and (len(current) + 1) * lengths[current[0]] > budget:
            out.append(current)
            current = []
        current.append(i)
    return out + ([current] if current else [])


def _logits(ref: Reference, hidden: torch.Tensor) -> torch.Tensor:
    logits = ref.model.get_output_embeddings()(hidden).float()
    cap = getattr(ref.model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def _counts(item: ScoreItem, rows: slice, vocab: int, convention: Convention) -> torch.Tensor:
    """Token counts of the penalised context before each output position in ``rows``."""
    base = torch.zeros(vocab)
    if convention.penalty_scope == "prompt+output":
        base.index_add_(0, torch.tensor(item.prompt_ids, dtype=torch.long),
                        torch.ones(len(item.prompt_ids)))
    before = torch.tensor(item.output_ids[: rows.start], dtype=torch.long)
    base.index_add_(0, before, torch.ones(len(before)))
    block = torch.tensor(item.output_ids[rows], dtype=torch.long)
    onehot = torch.zeros(len(block), vocab).scatter_(1, block[:, None], 1.0)
    return base + onehot.cumsum(0) - onehot


def _sampled_stats(logits: torch.Tensor, tok: torch.Tensor, s: Sampling, convention: Convention,
                   counts: torch.Tensor | None, uniforms: torch.Tensor) -> dict[str, torch.Tensor]:
    logq = transform(logits, s, convention, counts)
    q = logq.exp()
    lq_y = logq.gather(1, tok[:, None])[:, 0]
    above = (q * (logq > lq_y[:, None])).sum(1)
    plogq = torch.where(q > 0, q * logq, torch.zeros_like(q))
    entropy = -plogq.sum(1)
    second = torch.where(q > 0, q * logq * logq, torch.zeros_like(q)).sum(1)
    pre = transform(logits, replace(s, top_p=1.0), convention, counts)
    pre_above = (pre.exp() * (pre > pre.gather(1, tok[:, None]))).sum(1)
    # Temperature profile on the requested support: the nucleus would move with T and make
    # the likelihood jump; holding it fixed keeps the profile smooth in T.
    z = apply_penalties(logits.float(), counts, s)
    support = torch.isfinite(logq)
    temp_ll = torch.stack([(z / (s.temperature * f)).masked_fill(~support, NEG_INF)
                           .log_softmax(-1).gather(1, tok[:, None])[:, 0]
                           for f in TEMPERATURE_FACTORS], dim=1)
    rule = torch.zeros(len(tok), dtype=torch.long)
    slack = torch.zeros(len(tok))
    outside = torch.isinf(lq_y)
    if outside.any():
        rows = outside.nonzero()[:, 0]
        r, sl = boundary_slack(logits[rows], tok[rows], s, convention,
                               None if counts is None else counts[rows])
        rule[rows], slack[rows] = r, sl
    return {"logq": lq_y, "above": above, "rule": rule.float(), "slack": slack,
            "pit": above + uniforms * lq_y.exp(),
            "entropy": entropy, "var": (second - entropy**2).clamp(min=0), "top": q.amax(1),
            "pre_nucleus_above": pre_above, "temp_ll": temp_ll}


def _score_rows(ref: Reference, item: ScoreItem, hidden: torch.Tensor, convention: Convention,
                logit_budget: int) -> TokenScores:
    vocab = ref.model.get_output_embeddings().weight.shape[0]
    step = max(1, logit_budget // vocab)
    tokens = torch.tensor(item.output_ids, dtype=torch.long)
    sampled = item.sampling is not None and not item.sampling.greedy
    uniforms = torch.from_numpy(np.random.default_rng(item.seed).random(len(tokens))).float()
    raw: list[torch.Tensor] = []
    extra: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(tokens), step):
        rows = slice(start, min(start + step, len(tokens)))
        logits = _logits(ref, hidden[rows]).cpu()
        tok = tokens[rows]
        chosen = logits.gather(1, tok[:, None])[:, 0]
        top, arg = logits.max(dim=1)
        raw.append(torch.stack([chosen - torch.logsumexp(logits, 1), arg.float(), top - chosen,
                                (logits > chosen[:, None]).sum(1).float()], dim=1))
        if sampled:
            assert item.sampling is not None
            counts = _counts(item, rows, vocab, convention) if item.sampling.penalised else None
            for k, v in _sampled_stats(logits, tok, item.sampling, convention, counts,
                                       uniforms[rows]).items():
                extra.setdefault(k, []).append(v)
    r = torch.cat(raw).numpy()
    return TokenScores(token_ids=tokens.numpy(), logprob=r[:, 0], argmax=r[:, 1].astype(np.int64),
                       margin=r[:, 2], rank=r[:, 3].astype(np.int64),
                       stats={k: torch.cat(v).numpy() for k, v in extra.items()})


def score(ref: Reference, items: Sequence[ScoreItem], convention: Convention = HF,
          token_budget: int = 8192, logit_budget: int = 1 << 22) -> list[TokenScores]:
    """Teacher-force every item; the result is in the order of ``items``."""
    lengths = [len(it.prompt_ids) + len(it.output_ids) for it in items]
    order = sorted(range(len(items)), key=lambda i: -lengths[i])
    results: list[TokenScores | None] = [None] * len(items)
    decoder = ref.model.get_decoder()
    pad = ref.tokenizer.pad_token_id or 0
    with torch.inference_mode():
        for batch in _batches(order, lengths, token_budget):
            width = lengths[batch[0]]
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                seq = items[i].prompt_ids + items[i].output_ids
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            hidden = decoder(input_ids=ids.to(ref.device),
                             attention_mask=mask.to(ref.device)).last_hidden_state
            for row, i in enumerate(batch):
                p, o = len(items[i].prompt_ids), len(items[i].output_ids)
                # hidden state at the position before each output token predicts that token
                results[i] = _score_rows(ref, items[i], hidden[row, p - 1:p + o - 1], convention,
                                         logit_budget)
    return [r for r in results if r is not None]
