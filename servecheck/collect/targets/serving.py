"""What an OpenAI-compatible server does with generated text before it answers, for ``hf:``.

vLLM, SGLang and TGI cut the text at the first stop string, split out the thinking and the tool
calls with their parsers, count ``usage`` and return ``n`` choices. The ``hf`` target does the
same here, honestly or with one of ``faults.SERVING_FAULTS`` on, so that every check of those
steps has a server whose mistake is known. The parsers here read the reference template's own
markup (``reference/markup.py``); a real engine has a parser per model family.
"""

from __future__ import annotations

import json

from servecheck.formats.conversation import Conversation
from servecheck.formats.parameters import Parameters
from servecheck.formats.tools import FunctionCall, ToolCall, Usage
from servecheck.reference.markup import Markup


def cut_at_stop(text: str, stops: list[str] | None, faults: frozenset[str]) -> tuple[str, bool]:
    """(text, stopped): OpenAI semantics, the text ends before the first stop string."""
    if not stops or "stop-ignored" in faults:
        return text, False
    hits = [(text.find(s), s) for s in stops if s in text]
    if not hits:
        return text, False
    at, stop = min(hits)
    return text[: at + len(stop)] if "stop-leaked" in faults else text[:at], True


def parsed_fields(output: str, conversation: Conversation, markup: Markup,
                  faults: frozenset[str], structured: bool = False, prefilled: bool = False) -> dict:
    """``content``, ``reasoning_content`` and ``tool_calls`` as a server with the family's
    parsers on returns them (nothing where the template has no such markup); a ``structured``
    output is the grammar's text, after a thinking block it opens (or its prompt, ``prefilled``)."""
    wants_calls = bool(conversation.tools) and markup.has_calls and not structured
    if not (wants_calls or markup.has_thinking):
        return {}
    parsed = markup.parse_structured(output, prefilled) if structured else markup.parse(output)
    out: dict = {"content": parsed.content}
    if markup.has_thinking:
        out["reasoning_content"] = parsed.reasoning
    if "answer-as-reasoning" in faults and markup.has_thinking:
        out.update(reasoning_content=markup.strip_end(output), content=None)
    if wants_calls:
        calls = [c.call for c in parsed.calls if c.call is not None]
        if "call-lost" in faults and calls:
            calls = calls[:-1]
        out["tool_calls"] = [_as_api(c, k, faults) for k, c in enumerate(calls)] or None
        if parsed.calls and not parsed.content:
            out["content"] = None
    return out


def _as_api(call: ToolCall, k: int, faults: frozenset[str]) -> ToolCall:
    """A call as the API returns it: an id, and the arguments as a JSON string."""
    args = json.dumps(call.parsed_arguments(), ensure_ascii=False)
    if "arguments-reescaped" in faults:
        args = json.dumps(args)
    return ToolCall(id=f"call_{k}", function=FunctionCall(name=call.function.name,
                                                          arguments=args))


def usage(prompt_ids: list[int], output_ids: list[int], faults: frozenset[str],
          cached_tokens: int | None = None) -> Usage:
    """``cached_tokens``: prompt tokens restored from a prefix cache, None where none is on."""
    extra = 1 if "usage-off-by-one" in faults else 0
    return Usage(prompt_tokens=len(prompt_ids), completion_tokens=len(output_ids) + extra,
                 cached_tokens=cached_tokens)


def choices(p: Parameters) -> int:
    return p.n or 1
