"""A structured output's grammar as token masks over the reference's vocabulary.

Served under a grammar, a correct engine samples from the model's distribution masked to the
tokens the grammar allows next, renormalised. To judge such an output, servecheck needs the same
masks, position by position along the served tokens. They come from xgrammar 0.2.8, not from
code of our own: it is the version vLLM 0.32 ships and the backend its ``auto`` picks first (and
SGLang's default), so its masks are the masks those servers applied; it always gives the full
set a grammar allows (llguidance narrows forced text to its canonical token by default, which
would make a correct server's other spelling look like a violation), and a rejected token leaves
its matcher usable, so a walk can name the position and go on.

Two freedoms engines legitimately differ on are layouts here, not faults: whitespace between
JSON tokens (xgrammar's ``any_whitespace``, vLLM's ``disable_any_whitespace``) and properties a
schema does not forbid (``strict``: xgrammar and vLLM forbid them unless the schema allows,
llguidance allows them unless it forbids). ``LAYOUTS`` lists them; a check finds from the
records which one the server used, as the sampling convention is found.
"""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from servecheck.formats.grammar import Grammar
from servecheck.reference.model import Reference

__all__ = ["LAYOUTS", "PERMISSIVE", "CompiledGrammar", "GrammarMasks", "Layout", "Walk", "masks_for"]


@dataclass(frozen=True)
class Layout:
    any_whitespace: bool = True
    strict: bool = True
    """Properties a schema does not name are forbidden unless it allows them (xgrammar, vLLM)."""

    def describe(self) -> str:
        return (f"{'any' if self.any_whitespace else 'no optional'} whitespace, "
                f"{'strict' if self.strict else 'loose'} properties")


LAYOUTS = (Layout(any_whitespace=False), Layout(), Layout(any_whitespace=False, strict=False),
           Layout(strict=False))
"""The layouts a correct engine may decode a schema under, tightest first: no optional
whitespace and strict properties (vLLM's ``disable_any_whitespace``), then xgrammar's default
(any whitespace, strict), then each with loose properties (llguidance's default)."""
PERMISSIVE = LAYOUTS[-1]
"""The widest a correct engine's mask may be: a token outside it is no engine's freedom."""


@dataclass(frozen=True)
class CompiledGrammar:
    grammar: Grammar
    layout: Layout
    compiled: Any
    """xgrammar's ``CompiledGrammar``."""


@dataclass(frozen=True)
class Walk:
    """A served output walked through a grammar."""

    bits: np.ndarray
    """int32 [positions, ⌈vocab/32⌉]: the tokens the grammar allowed at each served position,
    as a bitmask (``ScoreItem.allowed``); after a violation every token: the grammar no longer
    says anything."""
    violation: int | None
    """The first position whose served token the grammar did not allow (None: none)."""
    complete: bool
    """The grammar accepted the output as a whole (it ended where the grammar may end)."""


def _choice_grammar(choices: list[str]) -> str:
    """vLLM's choice as an EBNF alternation of the literal strings."""
    quoted = [re.sub(r'(["\\])', r"\\\1", c) for c in choices]
    return "root ::= " + " | ".join(f'"{q}"' for q in quoted)


def _calls_grammar(spec: dict[str, Any], layout: Layout) -> Any:
    """A forced call in the template's markup: opener, the body's JSON, closer; up to
    ``at_most`` of them, separated (xgrammar's own concatenation and union of grammars)."""
    import xgrammar as xgr

    def literal(text: str) -> Any:
        return xgr.Grammar.from_ebnf("root ::= " + json.dumps(text))

    body = xgr.Grammar.from_json_schema(json.dumps(spec["schema"]),
                                        any_whitespace=layout.any_whitespace,
                                        strict_mode=layout.strict)
    call = xgr.Grammar.concat(literal(spec["open"]), body, literal(spec["close"]))
    options = [call]
    for _ in range(spec["at_most"] - 1):
        options.append(xgr.Grammar.concat(options[-1], literal(spec["separator"]), call))
    return xgr.Grammar.union(*options) if len(options) > 1 else call


class GrammarMasks:
    """One reference's grammar compiler: a grammar compiled once per layout, and walks."""

    def __init__(self, ref: Reference) -> None:
        import xgrammar as xgr

        self.ref = ref
        self.vocab = ref.vocab_size
        self._info = xgr.TokenizerInfo.from_huggingface(ref.tokenizer, vocab_size=self.vocab,
                                                        stop_token_ids=sorted(set(ref.end_ids)))
        self._compiler = xgr.GrammarCompiler(self._info, max_threads=2)
        self._compiled: dict[tuple[Grammar, Layout], CompiledGrammar] = {}

    def compile(self, grammar: Grammar, layout: Layout = LAYOUTS[0]) -> CompiledGrammar:
        key = (grammar, layout)
        if key not in self._compiled:
            c = self._compiler
            if grammar.is_json:
                schema = grammar.source if grammar.kind == "json_schema" else '{"type": "object"}'
                out = c.compile_json_schema(schema, any_whitespace=layout.any_whitespace,
                                            strict_mode=layout.strict)
            elif grammar.kind == "regex":
                out = c.compile_regex(grammar.source)
            elif grammar.kind == "choice":
                out = c.compile_grammar(_choice_grammar(grammar.choices or []))
            elif grammar.kind == "tool_calls":
                out = c.compile_grammar(_calls_grammar(json.loads(grammar.source), layout))
            else:
                out = c.compile_grammar(grammar.source)
            self._compiled[key] = CompiledGrammar(grammar, layout, out)
        return self._compiled[key]

    def matcher(self, compiled: CompiledGrammar) -> Any:
        import xgrammar as xgr

        return xgr.GrammarMatcher(compiled.compiled)

    def bitmask(self, rows: int) -> Any:
        import xgrammar as xgr

        return xgr.allocate_token_bitmask(rows, self.vocab)

    def walk(self, compiled: CompiledGrammar, output_ids: list[int]) -> Walk:
        """The masks along ``output_ids``, and where the first token the grammar refused is."""
        bits = self.bitmask(max(1, len(output_ids)))
        matcher = self.matcher(compiled)
        violation = None
        for i, t in enumerate(output_ids):
            matcher.fill_next_token_bitmask(bits, i)
            if not matcher.accept_token(t):
                violation = i
                bits[i + 1:] = -1
                break
        complete = violation is None and matcher.is_terminated()
        return Walk(bits[:len(output_ids)].numpy(), violation, complete)

    def tightest(self, outputs: list[tuple[Grammar, list[int]]]) -> Layout:
        """The first of ``LAYOUTS`` that every output fits, leaving out those not even the
        permissive one allows (a grammar not enforced is the grammar check's finding, not a
        layout): a server that decodes tight is judged tight, one whose outputs use a freedom
        under the layout that has it."""
        outputs = [(g, ids) for g, ids in outputs if g.holds_json
                   and self.walk(self.compile(g, PERMISSIVE), ids).violation is None]
        for layout in LAYOUTS[:-1]:
            if all(self.walk(self.compile(g, layout), ids).violation is None for g, ids in outputs):
                return layout
        return PERMISSIVE

    @cached_property
    def whitespace(self) -> np.ndarray:
        """bool [vocab]: the tokens whose text holds whitespace, the freedom a grammar leaves
        that an over-constrained mask takes away (between JSON tokens, inside strings)."""
        tok = self.ref.tokenizer
        out = np.zeros(self.vocab, dtype=bool)
        for i in range(min(len(tok), self.vocab)):
            text = tok.decode([i])
            out[i] = bool(text) and any(c.isspace() for c in text)
        return out


_MADE: weakref.WeakKeyDictionary[Reference, GrammarMasks] = weakref.WeakKeyDictionary()


def masks_for(ref: Reference) -> GrammarMasks:
    """The reference's compiler, made once per reference (building the tokenizer's table takes
    a second on a 150k vocabulary)."""
    if ref not in _MADE:
        _MADE[ref] = GrammarMasks(ref)
    return _MADE[ref]
