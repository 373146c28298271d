"""A forced tool call's grammar, in the dialect its engine decodes it.

``tool_choice`` ``required`` or a named function makes an engine decode under a grammar of its
own, in one of two dialects, and the text a record carries says which:

- the template's markup (vLLM 0.32's structural tags, SGLang's EBNF, the in-process server):
  ``<tool_call>`` + a JSON object ``{"name": <an offered function>, "arguments": …}`` +
  ``</tool_call>``, one call or more, then the end token; the calls are read as any call is
  (``Markup.parse``). The arguments follow the function's parameters schema where the tool
  says ``"strict": true``; otherwise, as OpenAI's API promises no more, any JSON object (vLLM
  0.32 served a forced ``get_weather`` with ``{"animal": "dog"}``), unless ``schemas`` (an
  engine that enforces them anyway, found from the records);
- vLLM's JSON: for ``required`` an array of ``{"name", "parameters"}`` objects, for a named
  function its arguments alone; vLLM builds ``tool_calls`` from that JSON, so the raw output
  holds no markup (``calls_of_json`` reads it).

Either way the grammar is a ``Grammar`` like a structured output's, walked and masked by the
same machinery (``reference.grammar``).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from servecheck.formats.grammar import Grammar
from servecheck.formats.tools import FunctionCall, ToolCall
from servecheck.reference.markup import Markup, RawCall

__all__ = ["AT_MOST", "Dialect", "calls_of_json", "dialect_of", "forced_call_grammar"]

Dialect = Literal["markup", "json"]
AT_MOST = 4
"""Calls a ``required`` markup grammar allows in a row: engines force one and let the model
add more (parallel calls); four covers every template's examples."""


def _offered(tool_choice: str | dict[str, Any], tools: list[dict[str, Any]], schemas: bool
             ) -> list[tuple[str, dict[str, Any]]]:
    """(name, arguments schema) of the functions the call may be: all offered, or the named
    one; the parameters schema where it is enforced, else any object."""
    named = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, dict) else None
    return [(t["function"]["name"],
             (t["function"].get("parameters") or {"type": "object"})
             if schemas or t["function"].get("strict") else {"type": "object"})
            for t in tools if named is None or t["function"]["name"] == named]


def dialect_of(content: str, markup: Markup) -> Dialect:
    """The markup where the text opens with the template's call opener (or the template has
    none to open with); vLLM's JSON where it opens with a bracket instead."""
    text = content.lstrip()
    opener = (markup.call_open or "").strip()
    return "json" if opener and not text.startswith(opener) and text[:1] in "[{" else "markup"


def forced_call_grammar(tool_choice: str | dict[str, Any], tools: list[dict[str, Any]],
                        markup: Markup, dialect: Dialect, schemas: bool = False) -> Grammar:
    """The grammar of a forced call; ``schemas``: the markup's arguments follow every offered
    function's schema, strict or not (vLLM's JSON always does: its schema is built from them)."""
    offered = _offered(tool_choice, tools, schemas or dialect == "json")
    if dialect == "json":
        if isinstance(tool_choice, dict):
            return Grammar.json_schema(offered[0][1] if offered else {"type": "object"})
        item = {"anyOf": [{"type": "object", "properties": {
            "name": {"type": "string", "enum": [name]}, "parameters": schema},
            "required": ["name", "parameters"]} for name, schema in offered]}
        return Grammar.json_schema({"type": "array", "minItems": 1, "items": item})
    body = {"anyOf": [{"type": "object", "properties": {
        markup.name_key: {"type": "string", "enum": [name]}, markup.arguments_key: schema},
        "required": [markup.name_key, markup.arguments_key]} for name, schema in offered]}
    return Grammar("tool_calls", json.dumps({
        "open": markup.call_open or "", "close": markup.call_close or "", "separator": "\n",
        "schema": body, "at_most": 1 if isinstance(tool_choice, dict) else AT_MOST},
        separators=(",", ":")))


def calls_of_json(content: str, tool_choice: str | dict[str, Any]) -> list[RawCall]:
    """vLLM's forced-call JSON as the calls it stands for (what its ``tool_calls`` must be)."""
    try:
        value = json.loads(content)
    except json.JSONDecodeError as e:
        return [RawCall(content, None, f"invalid JSON ({e.msg} at char {e.pos})")]
    if isinstance(tool_choice, dict):
        name = tool_choice.get("function", {}).get("name", "")
        return [RawCall(content, ToolCall(function=FunctionCall(name=name, arguments=value)))
                if isinstance(value, dict) else RawCall(content, None, "arguments are not an object")]
    if not isinstance(value, list):
        return [RawCall(content, None, "not an array of calls")]
    out = []
    for item in value:
        ok = isinstance(item, dict) and isinstance(item.get("name"), str) \
            and isinstance(item.get("parameters", {}), dict)
        out.append(RawCall(json.dumps(item), ToolCall(function=FunctionCall(
            name=item["name"], arguments=item.get("parameters", {}))) if ok else None,
            None if ok else "no 'name' string or 'parameters' object"))
    return out
