"""Reference scores by teacher forcing: one forward pass over prompt + served output.

The server's RNG cannot be reproduced and need not be: feeding the served tokens back through
the reference gives, at every output position, the distribution a correct server sampled from.
This costs one forward pass per response, where regenerating costs one per output token.

Responses are sorted by length and batched under a token budget (little padding), and only
the output positions are projected onto the vocabulary, a few positions at a time, so memory
does not grow with prompt length or batch size times vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from servecheck.reference import Reference


@dataclass(frozen=True)
class ScoreItem:
    prompt_ids: list[int]
    output_ids: list[int]


@dataclass
class TokenScores:
    """Per output token: what the reference thinks of the token the server produced."""

    token_ids: np.ndarray
    logprob: np.ndarray
    """Raw log-probability of the served token (temperature 1, no truncation)."""
    argmax: np.ndarray
    """The reference's greedy token at this position."""
    margin: np.ndarray
    """Logit of the argmax minus logit of the served token (0 when they are the same)."""
    rank: np.ndarray
    """How many tokens the reference ranks strictly above the served one (0 = argmax)."""

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


def _project(ref: Reference, hidden, token_ids, chunk: int):
    """Log-probs stats for rows of hidden states, ``chunk`` rows of full-vocabulary logits at a time."""
    import torch

    head = ref.model.get_output_embeddings()
    cap = getattr(ref.model.config, "final_logit_softcapping", None)
    stats = []
    for s in range(0, hidden.shape[0], chunk):
        logits = head(hidden[s:s + chunk]).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        tok = token_ids[s:s + chunk]
        chosen = logits.gather(1, tok[:, None])[:, 0]
        top, arg = logits.max(dim=1)
        rank = (logits > chosen[:, None]).sum(dim=1)
        logprob = chosen - torch.logsumexp(logits, dim=1)
        stats.append(torch.stack([logprob, arg.float(), top - chosen, rank.float()], dim=1))
    return torch.cat(stats).cpu().numpy()


def score(ref: Reference, items: Sequence[ScoreItem], token_budget: int = 8192,
          vocab_chunk: int = 256) -> list[TokenScores]:
    """Teacher-force every item; the result is in the order of ``items``."""
    import torch

    lengths = [len(it.prompt_ids) + len(it.output_ids) for it in items]
    order = sorted(range(len(items)), key=lambda i: -lengths[i])
    results: list[TokenScores | None] = [None] * len(items)
    model = ref.model
    decoder = model.get_decoder()
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
            rows, positions, targets = [], [], []
            for row, i in enumerate(batch):
                p, o = len(items[i].prompt_ids), len(items[i].output_ids)
                rows += [row] * o
                positions += range(p - 1, p + o - 1)  # the position before each output token
                targets += items[i].output_ids
            if not targets:
                for i in batch:
                    results[i] = _empty()
                continue
            h = hidden[torch.tensor(rows), torch.tensor(positions)]
            stats = _project(ref, h, torch.tensor(targets, device=h.device), vocab_chunk)
            start = 0
            for i in batch:
                o = len(items[i].output_ids)
                s = stats[start:start + o]
                start += o
                results[i] = TokenScores(
                    token_ids=np.asarray(items[i].output_ids, dtype=np.int64),
                    logprob=s[:, 0], argmax=s[:, 1].astype(np.int64), margin=s[:, 2],
                    rank=s[:, 3].astype(np.int64))
    return [r if r is not None else _empty() for r in results]


def _empty() -> TokenScores:
    z = np.zeros(0)
    return TokenScores(z.astype(np.int64), z, z.astype(np.int64), z, z.astype(np.int64))
