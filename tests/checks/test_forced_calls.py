"""Forced tool calls (``tool_choice`` required or a named function) judged under the grammar
their engine decodes them with (``reference.forced_calls``): the template's call markup (SGLang,
the in-process server) or vLLM's JSON (an array of ``{"name", "parameters"}``, or a named
function's arguments alone), found from each record's text. Hand-made records as those servers
return them; the walk is deterministic, so there is no false-failure rate to state. The
in-process server forcing calls under the markup grammar is in ``test_grammar``'s run of
``examples/prompts-json.json``."""

from __future__ import annotations

import pytest

from servecheck.checks import grammar, tool_calls
from servecheck.checks.core.context import CheckContext
from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.parameters import Parameters
from servecheck.formats.records import ResponseRecord
from servecheck.formats.tools import FunctionCall, ToolCall
from servecheck.reference.model import Reference

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
         {"type": "function", "function": {"name": "add", "parameters": {
             "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
             "required": ["a", "b"]}}}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
END = "<|im_end|>"


@pytest.fixture(scope="module")
def ref() -> Reference:
    return Reference("builtin-tools")


def _record(ref: Reference, output: str, choice: str | dict = "required", rid: str = "r",
            calls: list[tuple[str, dict]] | None = None, sent: dict | None = None) -> ResponseRecord:
    return ResponseRecord(
        id=rid, conversations=Conversation(contents=[Message(role="user", content="Weather?")],
                                           tools=TOOLS,
                                           chat_template_kwargs={"enable_thinking": False}),
        parameters=Parameters(temperature=0.0, max_tokens=60, tool_choice=choice),
        output=output, output_token_ids=ref.encode(output) if sent is None else None,
        finish_reason="tool_calls", sent=sent,
        tool_calls=[ToolCall(id=f"call_{k}", function=FunctionCall(name=n, arguments=a))
                    for k, (n, a) in enumerate(calls or [])] or None)


def _checked(ref: Reference, records: list[ResponseRecord]):
    ctx = CheckContext(records, ref)
    return ctx, grammar.run(ctx)[0]


def test_markup_calls_pass_and_prose_is_named(ref: Reference) -> None:
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    ctx, result = _checked(ref, [
        _record(ref, call + END, rid="one", calls=[("get_weather", {"city": "Oslo"})]),
        _record(ref, call + "\n" + call.replace("Oslo", "Rome") + END, rid="two",
                calls=[("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Rome"})]),
        _record(ref, "It is sunny in Oslo." + END, rid="prose"),
        _record(ref, call.replace("get_weather", "add") + END, NAMED, rid="other")])
    assert result.verdict == "fail" and result.details.kinds == {"grammar not enforced": 2}
    assert {f.record for f in result.findings} == {"prose", "other"}
    assert ctx.outputs.dialect(0) == "markup"
    (calls,) = tool_calls.run(ctx)[:1]
    assert "one" not in str(calls.findings) and "two" not in str(calls.findings)


def test_vllm_json_calls_are_judged_as_vllm_decodes_them(ref: Reference) -> None:
    array = '[{"name": "get_weather", "parameters": {"city": "Oslo"}}]'
    ctx, result = _checked(ref, [
        _record(ref, array + END, rid="required", calls=[("get_weather", {"city": "Oslo"})]),
        _record(ref, '{"city": "Oslo"}' + END, NAMED, rid="named",
                calls=[("get_weather", {"city": "Oslo"})]),
        _record(ref, '[{"name": "get_weather", "parameters": {}}]' + END, rid="missing")])
    assert ctx.outputs.dialect(0) == "json" and ctx.outputs.dialect(1) == "json"
    assert [c.raw.call.function.name for c in ctx.outputs.calls(1) if c.raw.call] == ["get_weather"]
    assert result.verdict == "fail" and [f.record for f in result.findings] == ["missing"]
    assert result.findings[0].message.startswith("grammar not enforced")


def test_a_call_rebuilt_from_the_parsed_fields_is_counted_not_judged(ref: Reference) -> None:
    """Without the server's ids the raw text was rebuilt in the template's markup, which is
    not what vLLM decoded: no grammar can be walked along it."""
    rebuilt = _record(ref, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}'
                      '\n</tool_call>', sent={"output": "rebuilt from the parsed fields with the "
                                                          "reference template's markup"})
    ctx, result = _checked(ref, [rebuilt])
    assert ctx.records == [] and ctx.constrained == 1 and result.verdict == "skipped"


def test_arguments_follow_the_schema_only_where_a_tool_is_strict(ref: Reference) -> None:
    """OpenAI's API promises a forced call's arguments match the parameters schema only for a
    tool with ``"strict": true``: vLLM 0.32 forced ``get_weather`` and let the model write
    ``{"animal": "dog"}``. That passes; the same call of a strict tool is named."""
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"animal": "dog"}}\n</tool_call>'
    loose = _record(ref, call + END, NAMED, rid="loose")
    _, result = _checked(ref, [loose])
    assert result.verdict == "pass", result.summary
    strict = [{**t, "function": {**t["function"], "strict": True}} for t in TOOLS]
    tight = loose.model_copy(update={"id": "strict", "conversations": loose.conversations.model_copy(
        update={"tools": strict})})
    _, result = _checked(ref, [tight])
    assert result.verdict == "fail" and result.findings[0].record == "strict"
