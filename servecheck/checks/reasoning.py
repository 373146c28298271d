"""Reasoning check: thinking switched off when asked, and the server's reasoning/content split.

The thinking text is part of the raw output, so the other checks teacher-force it with the
answer. Here, with the reference template's thinking markers (``reference/markup.py``):

- a request whose ``chat_template_kwargs`` switch thinking off (``enable_thinking: false``) must
  get no thinking: a server that drops the kwargs lets the model think (the template check names
  the prompt it built);
- so must a request with ``reasoning_effort: none``: vLLM 0.32 and SGLang derive
  ``enable_thinking: false`` from it (``formats.parameters.template_variables``), and
  any other effort counts as off only where the reference prompt ends in the template's empty
  thinking block. ``minimal`` does not switch Qwen3-style thinking off on either server, so a
  thinking output is no fault there. The telling case is a small budget spent entirely on
  thinking (the block open to the end, ``finish_reason`` length): it is named as the effort that
  never reached the template;
- where the server split the output (``reasoning_content`` / ``content``, a reasoning parser),
  the split must be the template's: not the answer returned as reasoning, not thinking left in
  the content, not reasoning lost.

Both are the server's own code, not numerics: any mismatch fails.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.registry import check
from servecheck.checks.core.results import CheckResult, Details, Finding
from servecheck.checks.core.thinking_odds import ThinkingOdds, thinking_odds
from servecheck.formats.parameters import template_variables
from servecheck.formats.records import ResponseRecord
from servecheck.reference.markup import Markup, Parsed

NAME = "reasoning"


@dataclass(frozen=True)
class ReasoningDetails(Details):
    records: int
    thinking: int
    """Records whose raw output thinks."""
    off_requested: int
    """Records that asked for no thinking."""
    kinds: dict[str, int] = field(default_factory=dict)
    expected_units: float = 0.0
    """How many (seed, choice) units a correct server thinks on, told not to
    (``checks.core.thinking_odds``)."""
    chance: float = 1.0
    """The chance of thinking on as many of them as the file does."""

    def effect(self) -> str:
        return f"{sum(self.kinds.values())}/{self.records} records wrong"


def thinking_off(r: ResponseRecord) -> bool:
    """The request's template variables (``reasoning_effort: none`` included) switch thinking
    off."""
    kwargs = template_variables(r.conversations, r.parameters)
    return kwargs.get("enable_thinking") is False or kwargs.get("thinking") is False


def _effort_off(ctx: CheckContext, i: int, markup: Markup) -> bool:
    """A ``reasoning_effort`` the reference template answers with its empty thinking block."""
    return bool(ctx.records[i].parameters.reasoning_effort and markup.think_off
                and ctx.expected_prompts[i].endswith(markup.think_off))


def open_thinking(output: str, markup: Markup, at_start: bool = False) -> str | None:
    """The thinking of an output whose block opens and never closes (None: no such block): what
    a budget spent entirely on thinking leaves, which ``Markup.parse`` reads as no thinking.
    ``at_start``: only a block that opens the output (a structured output's text may hold the
    opener inside a JSON string, where it is text)."""
    assert markup.think_open is not None and markup.think_close is not None
    text = markup.strip_end(output)
    start = text.find(markup.think_open.strip())
    if start < 0 or markup.think_close.strip() in text[start:] or \
            (at_start and text[:start].strip()):
        return None
    return text[start + len(markup.think_open.strip()):].strip("\n")


def told_not_to(r: ResponseRecord, thought: str, unclosed: bool) -> tuple[str, str]:
    """(kind, message) for thinking in an output whose request switched it off."""
    effort = r.parameters.reasoning_effort
    if effort is not None and not (r.conversations.chat_template_kwargs or {}).keys() & {
            "enable_thinking", "thinking"}:
        if unclosed and r.finish_reason == "length":
            budget = r.parameters.max_tokens
            return "budget spent thinking", (
                f"reasoning_effort {effort} was asked and the whole budget"
                f"{f' ({budget} tokens)' if budget else ''} went to thinking: the server did not "
                f"pass reasoning_effort to the template")
        return "thought when told not to", (
            f"reasoning_effort {effort} was asked, yet the output thinks ({len(thought)} "
            f"characters): the server did not pass reasoning_effort to the template")
    return "thought when told not to", (
        f"enable_thinking=false was sent, yet the output thinks ({len(thought)} characters"
        f"{', the block open to the end' if unclosed else ''}): the flag did not reach the "
        f"template")


def split_problem(r: ResponseRecord, parsed: Parsed, markup: Markup) -> tuple[str, str] | None:
    """(kind, message) where the server's reasoning/content split is not the template's."""
    served_reasoning = (r.reasoning_content or "").strip()
    served_content = (r.content or "").strip()
    opener_call = (markup.call_open or "").strip()
    if opener_call and opener_call in served_content and \
            (r.parameters.grammar is None or r.parameters.forces_call):
        # calls are the tool-call check's (in a structured output, the opener is text)
        served_content = served_content[: served_content.find(opener_call)].strip()
    want_reasoning = (parsed.reasoning or "").strip()
    want_content = parsed.content.strip()
    opener, closer = (markup.think_open or "").strip(), (markup.think_close or "").strip()
    if served_reasoning == want_reasoning and (served_content == want_content or r.tool_calls):
        return None
    whole = markup.strip_end(r.output).strip()
    if not served_content and (served_reasoning == whole or
                               (want_content and want_content in served_reasoning)):
        return "answer as reasoning", (f"the answer came back as reasoning_content and content is "
                                       f"empty (the parser missed {closer!r}?)")
    if want_reasoning and not served_reasoning and (closer in served_content
                                                     or opener in served_content):
        return "thinking left in content", ("content still holds the thinking block: the "
                                            "reasoning parser did not run or missed its markers")
    if want_reasoning and not served_reasoning:
        return "reasoning lost", "the output thinks, but reasoning_content is empty"
    if served_reasoning != want_reasoning:
        return "reasoning differs", (f"reasoning_content {served_reasoning[:40]!r} ≠ the "
                                     f"output's {want_reasoning[:40]!r}")
    return "content differs", f"content {served_content[:40]!r} ≠ the output's {want_content[:40]!r}"


@check(NAME, order=33,
       catches="thinking that ignores enable_thinking=false, or a broken reasoning/content split",
       needs="requests with thinking off, or answers split into reasoning and content")
def run(ctx: CheckContext) -> list[CheckResult]:
    markup = ctx.outputs.markup
    split = [i for i, r in enumerate(ctx.records)
             if r.reasoning_content is not None or (r.content is not None and markup.has_thinking)]
    off = [i for i, r in enumerate(ctx.records) if thinking_off(r)
           or (markup.has_thinking and _effort_off(ctx, i, markup))]
    if not split and not off:
        return [CheckResult(NAME, "skipped", "no record asked for thinking off or came "
                            "back split into reasoning and content")]
    if not markup.has_thinking:
        return [CheckResult(NAME, "skipped", "the reference template has no thinking "
                            "block, so thinking in the outputs cannot be found")]
    kinds: Counter[str] = Counter()
    findings: list[Finding] = []
    thoughts: dict[int, tuple[str, bool]] = {}
    for i in sorted(set(split) | set(off)):
        parsed = ctx.outputs.parsed(i)
        unclosed = open_thinking(ctx.records[i].output, markup,
                                 at_start=ctx.records[i].parameters.constrained) \
            if parsed.reasoning is None else None
        if thought := (parsed.reasoning or unclosed or "").strip():
            thoughts[i] = thought, unclosed is not None
    assert markup.think_open is not None
    odds = thinking_odds(ctx, off, set(off) & thoughts.keys(), markup.think_open)
    for i in sorted(set(split) | set(off)):
        r = ctx.records[i]
        problem = None
        if i in off and i in thoughts:
            if odds.too_many or i in odds.implausible:
                problem = told_not_to(r, *thoughts[i])
        elif i in split:
            problem = split_problem(r, ctx.outputs.parsed(i), markup)
        if problem:
            kinds[problem[0]] += 1
            findings.append(Finding(ctx.labels[i], f"{problem[0]}: {problem[1]}", 1.0))
    n = len(set(split) | set(off))
    details = ReasoningDetails(n, len(thoughts), len(off), dict(kinds), odds.expected,
                               odds.together)
    if findings:
        return [CheckResult(NAME, "fail", f"{len(findings)}/{n} records: " + ", ".join(
            f"{k} ({c})" for k, c in kinds.most_common()), details, findings, per_record=True)]
    return [CheckResult(NAME, "pass",
                        f"{n} records: thinking as the template writes it ({len(thoughts)} think, "
                        f"{len(off)} asked not to{_within_odds(off, thoughts, odds)})", details,
                        per_record=True)]


def _within_odds(off: list[int], thoughts: dict[int, tuple[str, bool]], odds: ThinkingOdds) -> str:
    """A pass's word on records that thought though told not to: as often as the reference
    itself opens a thinking block after the empty one."""
    told = len(set(off) & thoughts.keys())
    return (f"; {told} of those think, as often as the reference itself opens a block after the "
            f"empty one (chance {odds.together:.2g})" if told else "")
