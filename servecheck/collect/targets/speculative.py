"""Speculative decoding for ``hf:builtin?speculative=draft``, lossless, and the lossy verifier of
the ``spec-lossy`` fault.

A draft model proposes ``K`` tokens, the target scores them all in one pass, and the standard
rejection rule (Leviathan et al. 2023; Chen et al. 2023) keeps the output distribution exactly
the target's: accept a proposed x with probability min(1, q(x)/p(x)), where q and p are the
target's and the draft's distributions after the request's sampling transform; on a rejection
draw from normalize(max(0, q − p)); when all K are accepted, draw a bonus token from q. Greedy is
the same rule on point masses: a proposal is kept while it is the target's argmax.

The draft is the served checkpoint itself cut after its first decoder layer (its final norm and
tied embeddings kept): a self-speculative draft in the manner of LayerSkip, built in memory from
the reference's weights, so nothing is downloaded and the draft is weak enough (35–48 % of its
proposals accepted on the built-in model, greedy to T=1) that a verifier that skips the
rejection test shows.

``spec-lossy`` accepts every proposal q gives any probability, skipping min(1, q/p): the output
follows the draft wherever the target's support allows, a bug of hand-written verifiers.

The log-probs returned are the target's raw ones of the emitted tokens, from the verification
pass, as a server that reports log-probs under speculation computes them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from servecheck.collect.targets.rng import draw, uniform

__all__ = ["Decoded", "K", "Speculation", "draft_model", "ending", "transform_of"]

K = 4
"""Proposals a step (vLLM's ``num_speculative_tokens`` in its examples)."""

Transform = Callable[[list[int], torch.Tensor], torch.Tensor]
"""(context ids, raw logits row) → log-probabilities after the request's sampling transform."""


def draft_model(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` cut after its first decoder layer: same embeddings, first layer, final norm."""
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = 1
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:1]
    draft = type(model)(config).to(model.dtype)
    kept = {k: v for k, v in model.state_dict().items()
            if not k.startswith("model.layers.") or k.startswith("model.layers.0.")}
    draft.load_state_dict(kept, strict=True)
    return draft.to(model.device).eval()


def transform_of(sampler: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Transform:
    """A ``generate`` logits processor (ids, scores batch → log-probs) as a ``Transform``."""
    return lambda ids, logits: sampler(torch.tensor([ids], device=logits.device), logits[None])[0]


def ending(ends: set[int], stops: list[str] | None,
           decode: Callable[[list[int]], str]) -> Callable[[list[int]], bool]:
    """Whether output ids end generation: their last an end token, or their text holding a stop
    string (where ``generate``'s ``stop_strings`` would have stopped)."""
    return lambda ids: ids[-1] in ends or any(s in decode(ids) for s in stops or ())


@dataclass
class Decoded:
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    """The target's raw log-prob of each emitted token."""
    proposed: int = 0
    accepted: int = 0


@dataclass
class Speculation:
    """One request decoded speculatively (batch size 1)."""

    target: torch.nn.Module
    draft: torch.nn.Module
    transform: Transform
    gen: torch.Generator
    lossy: bool = False

    def decode(self, prompt: list[int], max_new: int, done: Callable[[list[int]], bool],
               target_cache, draft_cache) -> Decoded:
        """Up to ``max_new`` tokens after ``prompt``; ``done(ids)`` ends it after a token (an end
        token, a stop string). The caches may hold a prefix of ``prompt`` already."""
        out = Decoded()
        while len(out.ids) < max_new:
            context = prompt + out.ids
            k = min(K, max_new - len(out.ids))
            proposals, p_rows = self._propose(context, k, draft_cache)
            q_logits = _forward(self.target, target_cache, context[_length(target_cache):]
                                + proposals)[-(k + 1):]
            emitted = self._verify(context, proposals, p_rows, q_logits)
            out.proposed += k
            out.accepted += len(emitted) - 1 if len(emitted) <= k else k
            for i, token in enumerate(emitted):
                out.ids.append(token)
                out.logprobs.append(float(q_logits[i].log_softmax(-1)[token]))
                if done(out.ids) or len(out.ids) >= max_new:
                    return out
            _keep(target_cache, len(context) + len(emitted) - 1)
            _keep(draft_cache, len(context) + min(len(emitted) - 1, k - 1))
        return out

    def _propose(self, context: list[int], k: int, cache) -> tuple[list[int], list[torch.Tensor]]:
        """k tokens from the draft, each drawn from its transformed distribution p."""
        proposals: list[int] = []
        p_rows = []
        feed = context[_length(cache):]
        for _ in range(k):
            p = self.transform(context + proposals, _forward(self.draft, cache, feed)[-1])
            token = draw(p.exp(), self.gen)
            proposals.append(token)
            p_rows.append(p)
            feed = [token]
        return proposals, p_rows

    def _verify(self, context: list[int], proposals: list[int], p_rows: list[torch.Tensor],
                q_logits: torch.Tensor) -> list[int]:
        """The tokens this step emits: the accepted proposals, then a corrected or bonus one."""
        emitted: list[int] = []
        for i, (x, p) in enumerate(zip(proposals, p_rows, strict=True)):
            q = self.transform(context + emitted, q_logits[i])
            if self.lossy:
                keep = bool(q[x] > float("-inf"))
            else:  # u < min(1, q/p), with u in [0, 1)
                keep = uniform(self.gen) < float((q[x] - p[x]).exp())
            if keep:
                emitted.append(x)
                continue
            residual = (q.exp() - p.exp()).clamp(min=0)
            emitted.append(draw(residual if residual.sum() > 0 else q.exp(), self.gen))
            return emitted
        bonus = self.transform(context + emitted, q_logits[len(proposals)])
        return [*emitted, draw(bonus.exp(), self.gen)]


def _length(cache) -> int:
    return cache.get_seq_length()


def _forward(model: torch.nn.Module, cache, ids: list[int]) -> torch.Tensor:
    """Raw float32 logits of every position of ``ids``, decoded on from ``cache``."""
    x = torch.tensor([ids], device=model.device)
    return model(input_ids=x, cache=cache, use_cache=True).logits[0].float()


def _keep(cache, length: int) -> None:
    """Drop what the cache holds past ``length`` positions (rejected proposals)."""
    extra = _length(cache) - length
    if extra > 0:
        cache.crop(-extra)
