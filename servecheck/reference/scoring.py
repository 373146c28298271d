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
- The statistics come from streaming passes over each block of logits (``servecheck.reference.fused``,
  Triton kernels on CUDA), and everything stays on the device until one copy per call.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from servecheck.reference.fused import PROFILE, row_pass, sampled_stats
from servecheck.reference.model import Reference
from servecheck.reference.overlap import Overlap
from servecheck.reference.sampling import HF, Convention, Sampling, apply_penalties, boundary_slack
from servecheck.reference.tails import TAIL_KEYS, context_windows, tail_stats

TEMPERATURE_FACTORS = 1 / (PROFILE[0] + PROFILE[1] * np.arange(PROFILE[2]))[::-1]
"""Grid for the temperature profile likelihood, as multiples of the requested temperature: 64
factors from 0.4 to 2.5, evenly spaced in their inverse (``fused.PROFILE`` says why)."""
MAX_ROWS = 4096
"""Rows per logit block at most; 2048 already fill an H100 (one Triton program per row)."""
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


def plan_batches(order: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    out: list[list[int]] = []
    current: list[int] = []
    for i in order:  # longest first, so each batch's width is its first item's length
        if current and (len(current) + 1) * lengths[current[0]] > budget:
            out.append(current)
            current = []
        current.append(i)
    return out + ([current] if current else [])


def reference_logits(ref: Reference, hidden: torch.Tensor) -> torch.Tensor:
    """Logits in the model's dtype (bf16 stays bf16: the passes read it and upcast in registers)."""
    head = ref.model.get_output_embeddings()
    logits = head(hidden.to(head.weight.device))
    cap = getattr(ref.model.config, "final_logit_softcapping", None)
    return torch.tanh(logits.float() / cap) * cap if cap else logits


def token_counts(item: ScoreItem, rows: slice, vocab: int, convention: Convention,
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


def block_stats(logits: torch.Tensor, tok: torch.Tensor, s: Sampling | None,
                 convention: Convention, counts: torch.Tensor | None,
                 windows: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Raw [R, 4] and, with a sampling, [R, len(STAT_KEYS) + 64 + len(TAIL_KEYS)] statistics of
    one logit block (``windows``: the rows' penalty contexts, ``tails.context_windows``)."""
    sampled = s is not None and s.temperature > 0
    inv_t = torch.full((len(tok),), 1.0 / s.temperature if sampled else 1.0,  # type: ignore[union-attr]
                       device=logits.device, dtype=torch.float32)
    lanes = sampled and (s.top_k > 0 or s.top_p < 1)  # type: ignore[union-attr]  # candidates ahead
    rp = row_pass(logits, tok, inv_t, lanes)
    if s is None:
        return rp.raw(), None
    z, rq = logits, rp
    if counts is not None and s.penalised:
        z = apply_penalties(logits.float(), counts, s)
        rq = row_pass(z, tok, inv_t, lanes)
    st = sampled_stats(z, s, rq, convention)
    if "rule" not in st:  # a convention the fused sums do not explain: ask boundary_slack
        st["rule"], st["slack"] = torch.zeros_like(st["logq"]), torch.zeros_like(st["logq"])
        out = torch.isinf(st["logq"]).nonzero()[:, 0]
        if len(out):
            r, sl = boundary_slack(logits[out].float(), tok[out], s, convention,
                                   None if counts is None else counts[out])
            st["rule"][out], st["slack"][out] = r.float(), sl
    tails = tail_stats(z, tok, rq.m, inv_t, st["support_cut"], st["norm"], windows)
    return rp.raw(), torch.cat([torch.stack([st[k] for k in STAT_KEYS], 1), st["temp_ll"], tails], 1)


def reference_sampled_stats(logits: torch.Tensor, tok: torch.Tensor, s: Sampling, convention: Convention,
                   counts: torch.Tensor | None, uniforms: torch.Tensor,
                   windows: tuple[torch.Tensor, torch.Tensor] | None = None
                   ) -> dict[str, torch.Tensor]:
    """The statistics of one block as a dict (``TokenScores.stats`` for these rows)."""
    _, block = block_stats(logits, tok, s, convention, counts, windows)
    assert block is not None
    out = {k: block[:, j] for j, k in enumerate(STAT_KEYS)}
    out["rule"] = out["rule"].long()
    out["pit"] = out["above"] + uniforms.to(block.device) * out["logq"].exp()
    n = len(STAT_KEYS) + len(TEMPERATURE_FACTORS)
    out["temp_ll"] = block[:, len(STAT_KEYS):n]
    out.update({k: block[:, n + j] for j, k in enumerate(TAIL_KEYS)})
    return out


def _group_rows(items: Sequence[ScoreItem], batch: list[int]) -> dict[Sampling | None, list[int]]:
    """Batch rows (in item order) of each sampling group; greedy and unsampled items share None."""
    groups: dict[Sampling | None, list[int]] = {}
    for i in batch:
        s = items[i].sampling
        groups.setdefault(s if s is not None and not s.greedy else None, []).append(i)
    return groups


def _to(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on the device without waiting for the device: a blocking copy would wait
    for every queued kernel (the forward just launched) before the next launch."""
    return torch.from_numpy(a).to(device, non_blocking=True)


class _Blocks:
    """Output rows waiting for their logit block, per sampling group, across forward batches.

    One Triton program streams one row, so a block needs a thousand rows or more to fill the GPU;
    a group's rows from one forward batch are often fewer. Rows (hidden states, 2 KiB each) wait
    here until a full block of their group is ready; ``flush`` scores the rest at the end.
    Penalised rows need their own item's token counts and are scored item by item at once.
    """

    def __init__(self, ref: Reference, items: Sequence[ScoreItem], convention: Convention,
                 logit_budget: int, raw: torch.Tensor, extra: torch.Tensor) -> None:
        self.ref, self.items, self.convention = ref, items, convention
        self.raw, self.extra = raw, extra
        self.vocab = ref.model.get_output_embeddings().weight.shape[0]
        # rows per block: what the logit budget allows, at most MAX_ROWS (per-row tensors such
        # as the candidates' temperature profile would otherwise grow as the vocabulary shrinks)
        self.step = max(1, min(MAX_ROWS, logit_budget // self.vocab))
        self.pending: dict[Sampling | None, list[tuple[torch.Tensor, ...]]] = {}

    def add(self, batch: list[int], hidden: torch.Tensor, offsets: dict[int, int]) -> None:
        width, dim = hidden.shape[1], hidden.shape[2]
        flat = hidden.reshape(-1, dim)
        dev = hidden.device
        row_of = {i: row for row, i in enumerate(batch)}
        for s, members in _group_rows(self.items, batch).items():
            parts = []
            for i in members:
                row, p, o = row_of[i], len(self.items[i].prompt_ids), len(self.items[i].output_ids)
                # the hidden state at the position before each output token predicts that token
                parts.append((np.arange(row * width + p - 1, row * width + p + o - 1),
                              np.arange(offsets[i], offsets[i] + o),
                              np.asarray(self.items[i].output_ids, dtype=np.int64), i))
            if s is not None and s.penalised:
                for pos, dst, tok, i in parts:
                    self._penalised(s, flat[_to(pos, dev)], _to(tok, dev), _to(dst, dev), i)
                continue
            pos, dst, tok = (_to(np.concatenate([x[k] for x in parts]), dev) for k in range(3))
            waiting = (flat[pos], tok, dst)
            if s is not None:  # sampled rows carry their penalty contexts
                wins = [self._windows(i, np.arange(len(x[2]))) for x in parts for i in [x[3]]]
                waiting += tuple(_to(np.concatenate([w[k] for w in wins]), dev) for k in range(2))
            self.pending.setdefault(s, []).append(waiting)
            if sum(len(x[1]) for x in self.pending[s]) >= self.step:
                self._run(s, final=False)

    def _windows(self, i: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return context_windows(self.items[i].prompt_ids, self.items[i].output_ids, positions)

    def flush(self) -> None:
        for s in list(self.pending):
            self._run(s, final=True)

    def _run(self, s: Sampling | None, final: bool) -> None:
        waiting = self.pending.pop(s)
        cols = [torch.cat([x[k] for x in waiting]) for k in range(len(waiting[0]))]
        n = len(cols[1])
        blocks = -(-n // self.step)
        size = -(-n // blocks)  # even blocks: no small tail block leaving the GPU idle
        end = n if final else (n // self.step) * self.step
        size = size if final else self.step
        for a in range(0, end, size):
            h, tok, dst, *wins = (c[a:a + size] for c in cols)
            self._block(s, h, tok, dst, None, (wins[0], wins[1]) if wins else None)
        if end < n:
            self.pending[s] = [tuple(c[end:] for c in cols)]

    def _penalised(self, s: Sampling, h: torch.Tensor, tok: torch.Tensor, dst: torch.Tensor,
                   i: int) -> None:
        for a in range(0, len(tok), self.step):
            b = min(a + self.step, len(tok))
            counts = token_counts(self.items[i], slice(a, b), self.vocab, self.convention, h.device)
            wins = self._windows(i, np.arange(a, b))
            self._block(s, h[a:b], tok[a:b], dst[a:b], counts,
                        (_to(wins[0], h.device), _to(wins[1], h.device)))

    def _block(self, s: Sampling | None, h: torch.Tensor, tok: torch.Tensor, dst: torch.Tensor,
               counts: torch.Tensor | None,
               windows: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        r, x = block_stats(reference_logits(self.ref, h), tok, s, self.convention, counts,
                           windows)
        self.raw[dst] = r
        if x is not None:
            self.extra[dst] = x


COMPILED_SHAPES: set[int] = set()
COMPILE_FROM_TOKENS = 10_000_000
"""Compiling the layers costs ~25 s once per process and speeds scoring from ~130k to ~200k
tokens/s on one H200 (1B shape), which repays it past ~9M tokens; below, a cold run is faster
eager (docs/performance.md, "Scale")."""
_PLANNED: dict[str, int] = {}


def plan_compile(tokens: int) -> None:
    """Tell the scorer how many tokens this process is about to score (the most it was told
    wins): with ``SERVECHECK_COMPILE`` unset, layers are compiled only when that repays."""
    _PLANNED["tokens"] = max(_PLANNED.get("tokens", 0), tokens)


def _compiling(ids: torch.Tensor) -> bool:
    """``SERVECHECK_COMPILE``: 1 always, 0 never, unset: when the planned tokens repay it (no
    plan, as for a caller of ``score`` alone: always)."""
    mode = os.environ.get("SERVECHECK_COMPILE", "")
    if not ids.is_cuda or mode == "0":
        return False
    return mode == "1" or _PLANNED.get("tokens", COMPILE_FROM_TOKENS) >= COMPILE_FROM_TOKENS


def compile_layers(ref: Reference) -> None:
    """Regional compilation: ``torch.compile`` each decoder layer (one graph serves all layers of
    a kind), fusing the norms, rotary and activation kernels between the matmuls. Costs ~25 s
    once per process and doubles the decoder's throughput on an H100 (docs/performance.md)."""
    model = ref.model
    if id(model) in COMPILED_SHAPES:
        return
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for layer in model.get_decoder().layers:
        layer.compile(dynamic=True)
    COMPILED_SHAPES.add(id(model))


def forward_hidden(ref: Reference, ids: torch.Tensor) -> torch.Tensor:
    """Last hidden states; compiled layers on CUDA where that repays (``_compiling``), and eager
    again if compiling fails (an old compiler, a model it cannot trace).

    cuDNN's attention is left out: it builds a graph on the CPU for every new batch shape (2.7 ms
    a layer, measured), and every batch here has a new shape; flash attention needs none."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    decoder = ref.model.get_decoder()
    if _compiling(ids):
        compile_layers(ref)
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    try:
        with sdpa_kernel(backends):
            return decoder(input_ids=ids, use_cache=False).last_hidden_state
    except Exception as e:
        if id(ref.model) not in COMPILED_SHAPES:
            raise
        warnings.warn(f"torch.compile failed, scoring eagerly: {e}", stacklevel=2)
        for layer in decoder.layers:
            layer._compiled_call_impl = None
        os.environ["SERVECHECK_COMPILE"] = "0"
        COMPILED_SHAPES.discard(id(ref.model))
        with sdpa_kernel(backends):
            return decoder(input_ids=ids, use_cache=False).last_hidden_state


def score(ref: Reference, items: Sequence[ScoreItem], convention: Convention = HF,
          token_budget: int | None = None, logit_budget: int | None = None) -> list[TokenScores]:
    """Teacher-force every item; the result is in the order of ``items``.

    Budgets default by device: 8192 tokens and 4M logits per block on CPU; 32768 tokens and 512M
    logits (1 GiB of bf16 logits, whatever the vocabulary) on CUDA.
    """
    raw, extra = score_rows(ref, items, convention, token_budget, logit_budget)
    return unpack(items, raw.cpu().numpy(), extra.cpu().numpy())


def score_rows(ref: Reference, items: Sequence[ScoreItem], convention: Convention = HF,
               token_budget: int | None = None, logit_budget: int | None = None,
               sampled: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``score``'s numbers as two tensors on the scoring device, one row per output token in item
    order: raw [rows, 4] (log-prob, argmax, margin, rank) and extra [rows, 8 + 64 + 25]
    (``STAT_KEYS``, ``temp_ll``, then ``TAIL_KEYS``; NaN for unsampled items; no columns unless
    ``sampled``, which defaults to whether any item is sampled)."""
    dev = ref.model.get_output_embeddings().weight.device  # where the statistics are computed
    cuda = dev.type == "cuda"
    token_budget = token_budget or (32768 if cuda else 8192)
    logit_budget = logit_budget or (1 << 29 if cuda else 1 << 22)
    lengths = [len(it.prompt_ids) + len(it.output_ids) for it in items]
    order = sorted(range(len(items)), key=lambda i: -lengths[i])
    n_out = [len(it.output_ids) for it in items]
    offsets = dict(zip(range(len(items)), np.cumsum([0, *n_out])[:-1].tolist(), strict=True))
    total = sum(n_out)
    if sampled is None:
        sampled = any(it.sampling is not None and not it.sampling.greedy for it in items)
    pad = ref.tokenizer.pad_token_id or 0
    first = ref.model.get_input_embeddings().weight.device  # differs from dev under a device_map
    raw = torch.zeros(total, 4, device=dev)
    extra = torch.full((total, len(STAT_KEYS) + len(TEMPERATURE_FACTORS) + len(TAIL_KEYS)
                        if sampled else 0),
                       math.nan, device=dev)
    blocks = _Blocks(ref, items, convention, logit_budget, raw, extra)
    # batch i's statistics run (on the worker) while the decoder runs batch i+1
    with torch.inference_mode(), Overlap(dev) as overlap:
        for batch in plan_batches(order, lengths, token_budget):
            ids = np.full((len(batch), lengths[batch[0]]), pad, dtype=np.int64)
            for row, i in enumerate(batch):
                p = len(items[i].prompt_ids)
                ids[row, :p] = items[i].prompt_ids
                ids[row, p:lengths[i]] = items[i].output_ids
            hidden = forward_hidden(ref, torch.from_numpy(ids).to(first, non_blocking=True)).to(dev)
            overlap.submit(blocks.add, batch, hidden, offsets)
        overlap.submit(blocks.flush)
    return raw, extra


def unpack(items: Sequence[ScoreItem], raw: np.ndarray, extra: np.ndarray) -> list[TokenScores]:
    """``score_rows``'s arrays (on the host) as one ``TokenScores`` per item: views into them, with
    the randomised PIT drawn here from each item's seed (column by column for all rows at once;
    per item, only the draw and the slicing)."""
    n_out = [len(it.output_ids) for it in items]
    ends = np.cumsum([0, *n_out])
    cols: dict[str, np.ndarray] = {}
    if extra.shape[1]:
        cols = {k: extra[:, j] for j, k in enumerate(STAT_KEYS)}
        cols["rule"] = np.nan_to_num(cols["rule"]).astype(np.int64).astype(np.float32)
        u = np.zeros(len(extra), dtype=np.float32)
        for it, a, b in zip(items, ends[:-1], ends[1:], strict=True):
            if it.sampling is not None and not it.sampling.greedy:
                u[a:b] = np.random.default_rng(it.seed).random(b - a)
        cols["pit"] = cols["above"] + u * np.exp(cols["logq"])
        n = len(STAT_KEYS) + len(TEMPERATURE_FACTORS)
        cols["temp_ll"] = extra[:, len(STAT_KEYS):n]
        cols.update({k: extra[:, n + j] for j, k in enumerate(TAIL_KEYS)})
    argmax, rank = raw[:, 1].astype(np.int64), raw[:, 3].astype(np.int64)
    out = []
    for it, a, b in zip(items, ends[:-1], ends[1:], strict=True):
        sampled = it.sampling is not None and not it.sampling.greedy
        out.append(TokenScores(token_ids=np.asarray(it.output_ids, dtype=np.int64),
                               logprob=raw[a:b, 0], argmax=argmax[a:b], margin=raw[a:b, 2],
                               rank=rank[a:b], stats={k: v[a:b] for k, v in cols.items()}
                               if sampled else {}))
    return out
