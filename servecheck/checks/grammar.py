"""Grammar check: did the server decode a structured output under the grammar it was asked?

A request with a ``response_format`` (or vLLM's ``structured_outputs``, SGLang's ``regex``)
asks the server to mask every token the grammar does not allow. A server that ignores it
(vLLM #13038: guided decoding dropped without an error) returns what the model would have
written anyway, often almost JSON; one that drops a schema's ``required`` returns JSON that
parses and misses keys. Both are a token the grammar refused, at a position the walk through the
grammar names (``reference.grammar``, xgrammar's masks over the reference tokenizer).

Each record is walked under the most permissive layout a correct engine may use (any whitespace
between JSON tokens, properties the schema does not forbid allowed): a token outside it is no
engine's freedom, so any one fails the record, deterministically. An output that stops (not
cut by ``max_tokens``) where the grammar cannot end, its end token refused or none at all,
"ended early"; either leaves the record out of the statistical checks (a screening check).
The layouts every record fits are reported, found from the records as the sampling convention
is, and the statistics score each record under the tightest one's masks; the JSON's schema
errors (invalid, missing required, extra keys) are counted, as tool arguments' are. Whether the
tokens inside the mask follow the masked distribution is the statistical checks' question,
asked under the same masks (``checks.core.structured``), and whether the mask took away
what the grammar allows is the mask check's (``checks.mask``).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from jsonschema import Draft202012Validator

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.registry import check
from servecheck.checks.core.results import CheckResult, Details, Finding
from servecheck.formats.grammar import Grammar
from servecheck.formats.records import ResponseRecord
from servecheck.reference.grammar import LAYOUTS, PERMISSIVE, masks_for

NAME = "grammar"


@dataclass(frozen=True)
class GrammarDetails(Details):
    records: int
    kinds: dict[str, int] = field(default_factory=dict)
    """Records wrong, by kind: not enforced, ended early."""
    schema_errors: dict[str, int] = field(default_factory=dict)
    """JSON outputs' schema errors, by kind: invalid JSON, missing required, extra keys, …"""
    layouts: tuple[str, ...] = ()
    """The layouts every record fits, tightest first."""

    def effect(self) -> str:
        return f"{sum(self.kinds.values())}/{self.records} records wrong"


def _text(i: int, ctx: CheckContext) -> str:
    """The grammar's text: the raw output without its end marker, after a thinking block (a
    reasoning parser may have moved part of it out of ``content``; special tokens inside a
    JSON string are its text)."""
    return ctx.outputs.parsed(i).content.strip()


def schema_errors(text: str, grammar: Grammar) -> list[str]:
    """The kinds of what is wrong with a JSON output against its schema (empty: nothing)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return ["invalid JSON"]
    if grammar.kind == "json_object":
        return [] if isinstance(value, dict) else ["not an object"]
    kinds = {"required": "missing required", "additionalProperties": "extra keys",
             "type": "wrong type", "enum": "not in enum"}
    return sorted({kinds.get(str(e.validator), "schema mismatch")
                   for e in Draft202012Validator(grammar.schema or {}).iter_errors(value)})


def _stopped(r: ResponseRecord, ids: list[int], ctx: CheckContext) -> bool:
    """The output ended of itself: finish_reason stop, or none said and an end token last (a
    record that does not say why it ended, without one, may have been cut by max_tokens)."""
    return r.finish_reason in ("stop", "tool_calls") or (r.finish_reason is None and bool(ids)
                                         and ids[-1] in ctx.ref.end_ids)


@check(NAME, order=36, screens=True,
       catches=("a structured output the server did not decode under its grammar: guided "
                "decoding ignored, a schema's required keys or its additionalProperties dropped"),
       needs=("requests with a response_format (json_object or json_schema), or vLLM's "
              "structured_outputs / SGLang's regex"))
def run(ctx: CheckContext) -> list[CheckResult]:
    asked = [(ctx.labels[i], ctx.records[i], i) for i in ctx.structured.indices()]
    if not asked:
        return [CheckResult(NAME, "skipped", "no request asked for a structured output "
                            "(response_format, structured_outputs)")]
    masks = masks_for(ctx.ref)
    kinds: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    findings: list[Finding] = []
    fits = {layout: True for layout in LAYOUTS[:-1]}
    for name, r, i in asked:
        grammar = ctx.structured.grammar(i)
        assert grammar is not None
        start, ids = ctx.structured.start(i), ctx.structured.ids(i)
        walk = masks.walk(masks.compile(grammar, PERMISSIVE), ids)
        wrong = schema_errors(_text(i, ctx), grammar) if grammar.is_json else []
        if r.finish_reason != "length":
            errors.update(wrong)
        said = f" (the JSON: {', '.join(wrong)})" if wrong else ""
        ends_there = walk.violation == len(ids) - 1 and ids[-1] in ctx.ref.end_ids
        if walk.violation is not None and not ends_there:
            k = walk.violation
            kinds["grammar not enforced"] += 1
            findings.append(Finding(name, (
                f"grammar not enforced: output token {start + k} {ctx.ref.decode([ids[k]])!r} is not "
                f"allowed by the {grammar.describe()} after "
                f"{ctx.ref.decode(ids[max(0, k - 12):k])!r}{said}"), 1.0))
        elif ends_there or (not walk.complete and _stopped(r, ids, ctx)):
            kinds["ended early"] += 1
            findings.append(Finding(name, (
                f"ended early: the output stops where the {grammar.describe()} cannot end"
                f"{said}"), 1.0))
        for layout in fits:
            if fits[layout] and walk.violation is None and grammar.holds_json:
                fits[layout] = masks.walk(masks.compile(grammar, layout), ids).violation is None
    fitting = tuple(lay.describe() for lay in LAYOUTS if fits.get(lay, True))
    details = GrammarDetails(len(asked), dict(kinds), dict(errors), fitting)
    errs = ("; the JSON: " + ", ".join(f"{k} {n}" for k, n in errors.most_common())) if errors else ""
    if findings:
        return [CheckResult(NAME, "fail", f"{len(findings)}/{len(asked)} records: " + ", ".join(
            f"{k} ({n})" for k, n in kinds.most_common()) + errs, details, findings,
            per_record=True)]
    unscored = len(ctx.structured.text_only())
    scored = (f"; scored under the masks of the tightest layout they fit: "
              f"{ctx.structured.layout.describe()}") if unscored < len(asked) else ""
    text_only = (f"; {unscored} without the server's token ids: walked, not scored by the "
                 f"statistics (under a mask a model often spells a word in pieces its text's "
                 f"tokens do not show: ask for log-probs or token ids)") if unscored else ""
    return [CheckResult(NAME, "pass", (
        f"{len(asked)} records decoded under their grammar, every token one it allows{scored}"
        f"{text_only}{errs}"), details, per_record=True)]
