"""Reference scores by teacher forcing: one forward pass over prompt + served output.

The server's RNG cannot be reproduced and need not be: feeding the served tokens back through
the reference gives, at every output position, the distribution q_i = S_θ(z_i) a correct server
sampled from. This costs one forward pass per response, where regenerating costs one per token.

How it stays fast (docs/performance.md has the measurements):

- Responses are sorted by length and batched under a token budget, right-padded, with no
  attention mask: attention is causal, so pads after a sequence never reach its real positions,
  and with no mask SDPA takes its flash kernel (the sliding-window mask of long rows aside).
- Only output positions are projected onto the vocabulary, grouped by sampling parameters, never
  more than ``logit_budget`` logits at once: rows per block shrink as the vocabulary grows, so
  memory stays flat in both batch size and vocabulary (Gemma's is 262k).
- The statistics come from streaming passes over each block of logits (``servecheck.fused``,
  Triton kernels on CUDA), and everything stays on the device until one copy per call.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from servecheck.fused import row_pass, sampled_stats
from servecheck.reference import Reference
from servecheck.sampling import HF, Convention, Sampling, apply_penalties, boundary_slack

TEMPERATURE_FACTORS = np.exp(np.linspace(np.log(0.4), np.log(2.5), 41))
"""Grid for the temperature profile likelihood, as multiples of the requested temperature."""
STAT_KEYS = ("logq", "above", "entropy", "var", "top", "pre_nucleus_above", "rule", "slack")


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
    """Logits in the model's dtype (bf16 stays bf16: the passes read it and upcast in registers)."""
    head = ref.model.get_output_embeddings()
    logits = head(hidden.to(head.weight.device))
    cap = getattr(ref.model.config, "final_logit_softcapping", None)
    return torch.tanh(logits.float() / cap) * cap if cap else logits


def _counts(item: ScoreItem, rows: slice, vocab: int, convention: Convention,
            device: torch.device | str = "cpu") -> torch.Tensor:
    """Token counts of the penalised context before each output position in ``rows``."""
    base = torch.zeros(vocab, device=device)
    if convention.penalty_scope == "prompt+output":
        prompt = torch.tensor(item.prompt_ids, dtype=torch.long, device=device)
        base.index_add_(0, prompt, torch.ones(len(prompt), device=device))
    before = torch.tensor(item.output_ids[: rows.start], dtype=torch.long, device=device)
    base.index_add_(0, before, torch.ones(len(before), device=device))
    block = torch.tensor(item.output_ids[rows], dtype=torch.long, device=device)
    onehot = torch.zeros(len(block), vocab, device=device).scatter_(1, block[:, None], 1.0)
    return base + onehot.cumsum(0) - onehot


def _factors(device: torch.device) -> torch.Tensor:
    return torch.tensor(TEMPERATURE_FACTORS, dtype=torch.float32, device=device)


def _block_stats(logits: torch.Tensor, tok: torch.Tensor, s: Sampling | None,
                 convention: Convention, counts: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Raw [R, 4] and, with a sampling, [R, len(STAT_KEYS) + 41] statistics of one logit block."""
    sampled = s is not None and s.temperature > 0
    inv_t = torch.full((len(tok),), 1.0 / s.temperature if sampled else 1.0,  # type: ignore[union-attr]
                       device=logits.device, dtype=torch.float32)
    rp = row_pass(logits, tok, inv_t)
    if s is None:
        return rp.raw(), None
    z, rq = logits, rp
    if counts is not None and s.penalised:
        z = apply_penalties(logits.float(), counts, s)
        rq = row_pass(z, tok, inv_t)
    st = sampled_stats(z, s, rq, _factors(logits.device), convention)
    if "rule" not in st:  # a convention the fused sums do not explain: ask boundary_slack
        st["rule"], st["slack"] = torch.zeros_like(st["logq"]), torch.zeros_like(st["logq"])
        out = torch.isinf(st["logq"]).nonzero()[:, 0]
        if len(out):
            r, sl = boundary_slack(logits[out].float(), tok[out], s, convention,
                                   None if counts is None else counts[out])
            st["rule"][out], st["slack"][out] = r.float(), sl
    return rp.raw(), torch.cat([torch.stack([st[k] for k in STAT_KEYS], 1), st["temp_ll"]], 1)


def _sampled_stats(logits: torch.Tensor, tok: torch.Tensor, s: Sampling, convention: Convention,
                   counts: torch.Tensor | None, uniforms: torch.Tensor) -> dict[str, torch.Tensor]:
    """The statistics of one block as a dict (``TokenScores.stats`` for these rows)."""
    _, block = _block_stats(logits, tok, s, convention, counts)
    assert block is not None
    out = {k: block[:, j] for j, k in enumerate(STAT_KEYS)}
    out["rule"] = out["rule"].long()
    out["pit"] = out["above"] + uniforms.to(block.device) * out["logq"].exp()
    out["temp_ll"] = block[:, len(STAT_KEYS):]
    return out


def _group_rows(items: Sequence[ScoreItem], batch: list[int]) -> dict[Sampling | None, list[int]]:
    """Batch rows (in item order) of each sampling group; greedy and unsampled items share None."""
    groups: dict[Sampling | None, list[int]] = {}
    for i in batch:
        s = items[i].sampling
        groups.setdefault(s if s is not None and not s.greedy else None, []).append(i)
    return groups


def _score_batch(ref: Reference, items: Sequence[ScoreItem], batch: list[int], hidden: torch.Tensor,
                 convention: Convention, logit_budget: int, raw: torch.Tensor, extra: torch.Tensor,
                 offsets: dict[int, int]) -> None:
    """Fill rows ``offsets[i]...`` of ``raw``/``extra`` with the scores of the batch's items."""
    width, dim = hidden.shape[1], hidden.shape[2]
    flat = hidden.reshape(-1, dim)
    vocab = ref.model.get_output_embeddings().weight.shape[0]
    step = max(1, logit_budget // vocab)
    dev = hidden.device
    row_of = {i: row for row, i in enumerate(batch)}
    for s, members in _group_rows(items, batch).items():
        pos, dst, tok = [], [], []
        for i in members:
            row, p, o = row_of[i], len(items[i].prompt_ids), len(items[i].output_ids)
            # the hidden state at the position before each output token predicts that token
            pos.append(np.arange(row * width + p - 1, row * width + p + o - 1))
            dst.append(np.arange(offsets[i], offsets[i] + o))
            tok.append(np.asarray(items[i].output_ids, dtype=np.int64))
        penal = s is not None and s.penalised
        # penalised rows need their item's counts, so those blocks never straddle two items
        spans = ([(sum(map(len, pos[:k])), len(pos[k])) for k in range(len(pos))] if penal
                 else [(0, sum(map(len, pos)))])
        pos_t = torch.from_numpy(np.concatenate(pos)).to(dev, non_blocking=True)
        dst_t = torch.from_numpy(np.concatenate(dst)).to(dev, non_blocking=True)
        tok_t = torch.from_numpy(np.concatenate(tok)).to(dev, non_blocking=True)
        for k, (start, n) in enumerate(spans):
            for a in range(start, start + n, step):
                b = min(a + step, start + n)
                logits = _logits(ref, flat[pos_t[a:b]])
                counts = (_counts(items[members[k]], slice(a - start, b - start), vocab, convention,
                                  dev) if penal else None)
                r, x = _block_stats(logits, tok_t[a:b], s, convention, counts)
                raw[dst_t[a:b]] = r
                if x is not None:
                    extra[dst_t[a:b]] = x
                del logits


_COMPILED: set[int] = set()


def compile_layers(ref: Reference) -> None:
    """Regional compilation: ``torch.compile`` each decoder layer (one graph serves all layers of
    a kind), fusing the norms, rotary and activation kernels between the matmuls."""
    model = ref.model
    if id(model) in _COMPILED:
        return
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for layer in model.get_decoder().layers:
        layer.compile(dynamic=True)
    _COMPILED.add(id(model))


def score(ref: Reference, items: Sequence[ScoreItem], convention: Convention = HF,
          token_budget: int | None = None, logit_budget: int | None = None) -> list[TokenScores]:
    """Teacher-force every item; the result is in the order of ``items``.

    Budgets default by device: 8192 tokens and 4M logits per block on CPU; 32768 tokens and 256M
    logits (1 GiB of fp32 at most, whatever the vocabulary) on CUDA.
    """
    dev = ref.model.get_output_embeddings().weight.device  # where the statistics are computed
    cuda = dev.type == "cuda"
    token_budget = token_budget or (32768 if cuda else 8192)
    logit_budget = logit_budget or (1 << 28 if cuda else 1 << 22)
    if cuda and os.environ.get("SERVECHECK_COMPILE") == "1":
        compile_layers(ref)
    lengths = [len(it.prompt_ids) + len(it.output_ids) for it in items]
    order = sorted(range(len(items)), key=lambda i: -lengths[i])
    n_out = [len(it.output_ids) for it in items]
    offsets = dict(zip(range(len(items)), np.cumsum([0, *n_out])[:-1].tolist(), strict=True))
    total = sum(n_out)
    sampled = any(it.sampling is not None and not it.sampling.greedy for it in items)
    decoder = ref.model.get_decoder()
    pad = ref.tokenizer.pad_token_id or 0
    first = ref.model.get_input_embeddings().weight.device  # differs from dev under a device_map
    raw = torch.zeros(total, 4, device=dev)
    extra = torch.full((total, len(STAT_KEYS) + len(TEMPERATURE_FACTORS) if sampled else 0),
                       math.nan, device=dev)
    with torch.inference_mode():
        for batch in _batches(order, lengths, token_budget):
            width = lengths[batch[0]]
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            for row, i in enumerate(batch):
                seq = items[i].prompt_ids + items[i].output_ids
                ids[row, : len(seq)] = torch.tensor(seq)
            hidden = decoder(input_ids=ids.to(first, non_blocking=True),
                             use_cache=False).last_hidden_state.to(dev)
            _score_batch(ref, items, batch, hidden, convention, logit_budget, raw, extra, offsets)
            del hidden
        raw_np, extra_np = raw.cpu().numpy(), extra.cpu().numpy()
    return [_unpack(it, raw_np[o:o + n], extra_np[o:o + n])
            for it, o, n in zip(items, offsets.values(), n_out, strict=True)]


def _unpack(item: ScoreItem, raw: np.ndarray, extra: np.ndarray) -> TokenScores:
    stats: dict[str, np.ndarray] = {}
    if item.sampling is not None and not item.sampling.greedy:
        stats = {k: extra[:, j] for j, k in enumerate(STAT_KEYS)}
        stats["rule"] = stats["rule"].astype(np.int64).astype(np.float32)
        u = np.random.default_rng(item.seed).random(len(item.output_ids)).astype(np.float32)
        stats["pit"] = stats["above"] + u * np.exp(stats["logq"])
        stats["temp_ll"] = extra[:, len(STAT_KEYS):]
    return TokenScores(token_ids=np.asarray(item.output_ids, dtype=np.int64), logprob=raw[:, 0],
                       argmax=raw[:, 1].astype(np.int64), margin=raw[:, 2],
                       rank=raw[:, 3].astype(np.int64), stats=stats)
