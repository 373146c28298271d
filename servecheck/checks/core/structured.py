"""Records decoded under a grammar, as the checks read them: each one's grammar, where in its
output the grammar begins, and the masks it is scored under.

A record is decoded under a grammar when it asks for a structured output
(``Parameters.grammar``) or forces a tool call (``tool_choice`` required or a named function:
the engine's own grammar, in the dialect its text shows, ``reference.forced_calls``). A correct
engine samples such an output from the reference masked to what the grammar allows next, and
renormalised, so the statistical checks score it that way (``ScoreItem.allowed``). The grammar
starts after a thinking block the output opens, as vLLM applies it after its reasoning
parser's end; the thinking itself is scored unmasked. The layout (whitespace between JSON
tokens, properties a schema does not name) is found from the records: the tightest every one
fits (``GrammarMasks.tightest``), as the sampling convention is found, and so is whether a
forced call's arguments follow their schemas where no tool asks it (``schemas``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import numpy as np

from servecheck.checks.core.record_markup import RecordMarkup
from servecheck.formats.grammar import Grammar
from servecheck.formats.records import ResponseRecord
from servecheck.reference.forced_calls import forced_call_grammar
from servecheck.reference.grammar import PERMISSIVE, Layout, masks_for
from servecheck.reference.model import Reference

__all__ = ["TEXT_ONLY_GRAMMAR", "Structured", "judged"]

TEXT_ONLY_GRAMMAR = "grammar, text only"
"""Why a record decoded under a grammar without token ids is left out (``Structured.text_only``)."""


def judged(r: ResponseRecord) -> bool:
    """Whether a record's grammar can be judged from its text: a forced call whose raw output
    the collector rebuilt from the parsed calls (no server ids) is not what the engine decoded
    (vLLM decodes JSON, the rebuild writes the template's markup), so it is counted, not judged."""
    rebuilt = str((r.sent or {}).get("output", "")).startswith("rebuilt")
    return not (r.parameters.forces_call and rebuilt)


class Structured:
    """The grammar facts of one run's records, each found once."""

    def __init__(self, ref: Reference, records: list[ResponseRecord],
                 output_ids: Callable[[int], list[int]], outputs: RecordMarkup) -> None:
        self.ref, self.records, self.outputs = ref, records, outputs
        self._output_ids = output_ids
        self._grammars: dict[int, Grammar | None] = {}
        self._starts: dict[int, int] = {}

    def grammar(self, i: int) -> Grammar | None:
        """Record i's grammar: its structured output's, or its forced call's; None: none."""
        if i not in self._grammars:
            r = self.records[i]
            p = r.parameters
            self._grammars[i] = p.grammar if p.grammar is not None or not p.forces_call else \
                self._forced(i, self.schemas)
        return self._grammars[i]

    def _forced(self, i: int, schemas: bool) -> Grammar:
        r = self.records[i]
        return forced_call_grammar(r.parameters.tool_choice or "required",
                                   r.conversations.tools or [], self.outputs.markup,
                                   self.outputs.dialect(i), schemas)

    @cached_property
    def schemas(self) -> bool:
        """Whether forced calls' arguments are scored under their functions' schemas though no
        tool says ``strict``: where every forced call fits them (an engine that enforces them
        anyway: a looser mask would expect mass it never let through), found from the records
        as the layout is; a call not even the looser grammar allows is the grammar check's."""
        masks = masks_for(self.ref)
        forced = [i for i in range(len(self.records)) if self.records[i].parameters.forces_call
                  and self.records[i].parameters.grammar is None]
        fits = [i for i in forced if masks.walk(masks.compile(self._forced(i, False), PERMISSIVE),
                                                self.ids(i)).violation is None]
        return all(masks.walk(masks.compile(self._forced(i, True), PERMISSIVE),
                              self.ids(i)).violation is None for i in fits)

    def indices(self) -> list[int]:
        """The records decoded under a grammar."""
        return [i for i in range(len(self.records)) if self.grammar(i) is not None]

    def text_only(self) -> list[int]:
        """Records decoded under a grammar without the server's token ids: the grammar check
        walks their text (a byte-level grammar allows every spelling of allowed text), but the
        statistics leave them out. Under a mask a model often spells a word in pieces
        (``an``, ``i``, ``m``, ``a``, ``l`` where ``animal`` is one token), and the canonical
        tokens of such a text put a correct greedy record off the argmax later on."""
        return [i for i in self.indices() if self.records[i].output_token_ids is None]

    def start(self, i: int, ids: list[int] | None = None) -> int:
        """The output token where record i's grammar begins (along ``ids``, another spelling
        of its text, where given): 0, or just past its thinking."""
        if ids is None and i in self._starts:
            return self._starts[i]
        tokens = self._output_ids(i) if ids is None else ids
        at = 0
        if self.outputs.parsed(i).reasoning is not None:
            closer = (self.outputs.markup.think_close or "").strip()
            at = next((k for k in range(1, len(tokens) + 1)
                       if closer in self.ref.decode(tokens[:k])), 0)
        if ids is None:
            self._starts[i] = at
        return at

    def ids(self, i: int) -> list[int]:
        """Record i's output tokens from where its grammar begins."""
        return self._output_ids(i)[self.start(i):]

    @cached_property
    def layout(self) -> Layout:
        """The layout every structured output is scored under (``GrammarMasks.tightest``)."""
        return masks_for(self.ref).tightest([(g, self.ids(i)) for i in self.indices()
                                             if (g := self.grammar(i)) is not None])

    def masks(self, i: int, ids: list[int] | None = None
              ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Record i's masks along its output (or along ``ids``, a tokenization of its text the
        search proposes), every token allowed in its thinking, and the whitespace tokens whose
        mass the mask check weighs; (None, None): no grammar."""
        grammar = self.grammar(i)
        if grammar is None:
            return None, None
        masks = masks_for(self.ref)
        tokens = self._output_ids(i) if ids is None else ids
        start = self.start(i, ids)
        bits = masks.bitmask(len(tokens)).numpy()
        bits[start:] = masks.walk(masks.compile(grammar, self.layout), tokens[start:]).bits
        return bits, masks.whitespace
