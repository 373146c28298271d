"""Tool-call check: the calls in the raw output, as structure, and the server's parser against them.

The raw output (tool-call markup included) is teacher-forced like any output by the other checks.
Here the calls in it are read with the reference template's own markup (``reference/markup.py``)
and judged two ways:

- **Structure**, OpenRouter's three buckets: invalid JSON, a name not in ``tools``, arguments
  that fail the function's JSON Schema (jsonschema, the schema's own draft). These are reported
  and counted but do not fail the run: a correct server runs the model, and a model may write a
  bad call; whether the served model is the reference is the sampled and greedy checks' question.
- **The server's parser**: where the server returned ``tool_calls``, they must equal what the raw
  text says, by value. A mismatch is the server's own code, never numerics, so it fails, named
  in the parser's terms: a call lost or invented, arguments re-escaped, a name changed, call
  markup left in ``content``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.registry import check
from servecheck.checks.core.results import CheckResult, Details, Finding
from servecheck.formats.records import ResponseRecord
from servecheck.formats.tools import ToolCall
from servecheck.reference.markup import Markup, RawCall

NAME = "tool calls"


@dataclass(frozen=True)
class ToolCallDetails(Details):
    records: int
    """Records offered tools, or holding calls."""
    calls: int
    """Calls in the raw outputs."""
    structure: dict[str, int] = field(default_factory=dict)
    """Malformed calls by kind: invalid JSON, unknown name, schema mismatch."""
    parser: dict[str, int] = field(default_factory=dict)
    """Records where the server's parsed calls disagree with the raw text, by kind."""
    examples: list[str] = field(default_factory=list)
    """A few malformed calls, as the model wrote them."""

    def effect(self) -> str:
        bad = sum(self.parser.values())
        return f"{bad}/{self.records} parsed wrongly, {sum(self.structure.values())}/{self.calls} malformed"


def _value(call: ToolCall) -> tuple[str, object]:
    return call.function.name, call.parsed_arguments()


def parser_problem(r: ResponseRecord, raw: list[RawCall], markup: Markup) -> tuple[str, str] | None:
    """(kind, message) where the server's ``tool_calls`` disagree with the raw output."""
    served = r.tool_calls or []
    written = [c.call for c in raw if c.call is not None]
    opener = (markup.call_open or "").strip()
    if r.content and opener and opener in r.content and len(served) < len(written):
        return "markup left in content", (f"content still holds {opener!r} markup: the parser did "
                                          f"not take the call out ({len(written)} call(s) written)")
    if len(served) < len(written):
        return "call lost", (f"the output writes {len(written)} call(s), the server returned "
                             f"{len(served)}: {', '.join(c.function.name for c in written)}")
    if len(served) > len(written):
        return "call invented", (f"the server returned {len(served)} call(s), the output writes "
                                 f"{len(written)}")
    for k, (got, want) in enumerate(zip(served, written, strict=True)):
        (g_name, g_args), (w_name, w_args) = _value(got), _value(want)
        if g_name != w_name:
            return "name changed", f"call {k}: the server says {g_name!r}, the output {w_name!r}"
        if g_args != w_args:
            if isinstance(g_args, str) and _loads(g_args) == w_args:
                return "arguments re-escaped", (f"call {k} ({w_name}): arguments JSON-encoded "
                                                f"twice: {got.function.arguments!s:.80}")
            return "arguments changed", (f"call {k} ({w_name}): the server's arguments "
                                         f"{json.dumps(g_args)[:60]} ≠ the output's "
                                         f"{json.dumps(w_args)[:60]}")
    return None


def _loads(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


@check(NAME, order=32,
       catches="a broken tool-call parser: calls lost, invented, re-escaped or left in content",
       needs="requests that offer tools")
def run(ctx: CheckContext) -> list[CheckResult]:
    markup = ctx.outputs.markup
    relevant = [i for i, r in enumerate(ctx.records) if r.conversations.tools or r.tool_calls]
    if not relevant:
        return [CheckResult(NAME, "skipped", "no request offered tools")]
    if not markup.has_calls:
        return [CheckResult(NAME, "skipped", "the reference template renders no tool "
                            "calls, so the calls in the outputs cannot be read")]
    structure: Counter[str] = Counter()
    parser: Counter[str] = Counter()
    findings: list[Finding] = []
    examples: list[str] = []
    calls = 0
    for i in relevant:
        r = ctx.records[i]
        checked = ctx.outputs.calls(i)
        if checked and r.finish_reason == "length" and checked[-1].raw.error:
            checked = checked[:-1]  # a call cut off by max_tokens is unfinished, not malformed
        raw = [c.raw for c in checked]
        calls += len(raw)
        for c in checked:
            problem = c.problem
            if problem:
                structure[problem[0]] += 1
                if len(examples) < 5:
                    examples.append(f"{ctx.labels[i]}: {problem[1]}")
        if r.tool_calls is not None or r.content is not None:
            problem = parser_problem(r, raw, markup)
            if problem:
                parser[problem[0]] += 1
                findings.append(Finding(ctx.labels[i], f"{problem[0]}: {problem[1]}", 1.0))
    details = ToolCallDetails(len(relevant), calls, dict(structure), dict(parser), examples)
    malformed = (f"; {sum(structure.values())} of {calls} calls the model wrote are malformed ("
                 + ", ".join(f"{k} {n}" for k, n in structure.most_common())
                 + "): the model's own output, not a serving fault") if structure else ""
    if findings:
        return [CheckResult(NAME, "fail",
                            f"{len(findings)}/{len(relevant)} records: the server's parsed calls "
                            f"differ from its output: " + ", ".join(
                                f"{k} ({n})" for k, n in parser.most_common()) + malformed,
                            details, findings, per_record=True)]
    return [CheckResult(NAME, "pass",
                        f"{calls} call(s) in {len(relevant)} records parse as the template writes "
                        f"them{malformed}", details, per_record=True)]
