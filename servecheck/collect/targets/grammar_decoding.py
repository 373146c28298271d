"""Structured outputs on the in-process server: each row's logits masked to its grammar.

vLLM applies a structured output's bitmask to the logits before its sampler (temperature,
top-k, top-p run on what is left), with one xgrammar matcher per request that accepts each
token as it is sampled. ``GrammarDecoding`` is that, as a ``generate`` logits processor that
runs first. Its three faults are real implementations of what stacks get wrong:

- ``grammar-ignored``: no mask (vLLM #13038: guided decoding dropped without an error);
- ``grammar-loose``: the schema's ``required`` and ``additionalProperties`` dropped before
  compiling (keys may go missing, others appear);
- ``grammar-tight``: whitespace forbidden wherever the grammar leaves another choice, inside
  strings too (no engine's layout: a correct one never forbids a space inside a string).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from servecheck.formats.grammar import Grammar
from servecheck.formats.prompts import Request
from servecheck.reference.forced_calls import forced_call_grammar
from servecheck.reference.grammar import CompiledGrammar, GrammarMasks, Layout
from servecheck.reference.markup import Markup
from servecheck.reference.sampling import NEG_INF

__all__ = ["GRAMMAR_FAULTS", "GrammarDecoding", "decoding_for", "forced_call_of"]

GRAMMAR_FAULTS = {
    "grammar-ignored": "response_format / structured_outputs accepted and not applied",
    "grammar-loose": "the schema's required and additionalProperties dropped before compiling",
    "grammar-tight": "whitespace forbidden wherever the grammar allows another token, "
                     "inside strings too",
}


def _loosened(schema: Any) -> Any:
    """The schema with every ``required`` and ``additionalProperties`` taken out."""
    if isinstance(schema, dict):
        return {k: _loosened(v) for k, v in schema.items()
                if k not in ("required", "additionalProperties")}
    if isinstance(schema, list):
        return [_loosened(v) for v in schema]
    return schema


class GrammarDecoding:
    """Masks row r's logits to what its matcher allows next; accepts each sampled token."""

    def __init__(self, masks: GrammarMasks, compiled: CompiledGrammar, rows: int,
                 forbid: np.ndarray | None = None) -> None:
        self.masks = masks
        self.matchers = [masks.matcher(compiled) for _ in range(rows)]
        self.bits = masks.bitmask(rows)
        self.forbid = None if forbid is None else torch.from_numpy(forbid)
        self.width: int | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import xgrammar as xgr

        if self.width is None:
            self.width = input_ids.shape[1]
        elif input_ids.shape[1] > self.width:
            for m, t in zip(self.matchers, input_ids[:, -1].tolist(), strict=True):
                if not m.is_terminated():
                    m.accept_token(t)
        for r, m in enumerate(self.matchers):
            if m.is_terminated():
                self.bits[r] = -1  # a finished row: generate pads it, whatever it is given
            else:
                m.fill_next_token_bitmask(self.bits, r)
        masked = scores.float().clone()
        xgr.apply_token_bitmask_inplace(masked, self.bits, vocab_size=self.masks.vocab)
        if self.forbid is not None:
            tight = masked.masked_fill(self.forbid[:masked.shape[1]], NEG_INF)
            keep = (tight > NEG_INF).any(-1, keepdim=True)  # where only whitespace may come
            masked = torch.where(keep, tight, masked)
        return masked.to(scores.dtype)


def decoding_for(masks: GrammarMasks, grammar: Grammar, rows: int,
                 faults: frozenset[str] | set[str]) -> GrammarDecoding | None:
    """The processor a server with ``faults`` decodes ``grammar`` with (None: no mask)."""
    if "grammar-ignored" in faults:
        return None
    if "grammar-loose" in faults and grammar.kind == "json_schema":
        compiled = masks.compile(Grammar.json_schema(_loosened(grammar.schema)),
                                 Layout(strict=False))
    else:
        compiled = masks.compile(grammar)
    forbid = masks.whitespace if "grammar-tight" in faults else None
    return GrammarDecoding(masks, compiled, rows, forbid)


def forced_call_of(requests: list[Request], markup: Markup) -> Grammar | None:
    """The grammar a batch's forced tool call decodes under: the template's call markup around
    the offered functions' JSON (``reference.forced_calls``), as SGLang forces it; None where
    the batch forces no call (or asks a structured output of its own)."""
    p, tools = requests[0].parameters, requests[0].conversation.tools
    if not p.forces_call or p.grammar is not None or not tools:
        return None
    if any(r.conversation.tools != tools or r.parameters.tool_choice != p.tool_choice
           for r in requests):
        raise ValueError("generate_batch needs forced calls of the same tools")
    return forced_call_grammar(p.tool_choice or "required", tools, markup, "markup")
