"""The template check's diagnoses for the newer request fields, on the tools model's template.

Each served prompt is the reference rendering with one thing done wrong, the way servers get it
wrong; the diagnosis must name that thing. Deterministic: no false-failure rate."""

from __future__ import annotations

import pytest

from servecheck.checks.template import diagnose
from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.tools import FunctionCall, ToolCall
from servecheck.reference.model import Reference
from servecheck.tinymodels.tool_corpus import TOOLS


@pytest.fixture(scope="module")
def ref() -> Reference:
    return Reference("builtin-tools")


def _agent_turns() -> Conversation:
    call = ToolCall(id="c0", function=FunctionCall(name="add", arguments={"a": 1, "b": 2}))
    return Conversation(contents=[
        Message(role="user", content="Add 1 and 2."),
        Message(role="model", content=None, tool_calls=[call], reasoning_content="I will add."),
        Message(role="tool", content='{"sum": 3}', tool_call_id="c0"),
    ], tools=[TOOLS["add"], TOOLS["get_weather"]], chat_template_kwargs={"enable_thinking": False})


def test_tools_reordered(ref: Reference) -> None:
    conv = _agent_turns()
    served = ref.render_messages(conv.hf_messages(), tools=list(reversed(conv.tools)),
                                 enable_thinking=False)
    assert diagnose(served, conv, ref, ref.render(conv))[0] == "tools reordered"


def test_tool_result_as_a_user_turn(ref: Reference) -> None:
    conv = _agent_turns()
    messages = [{"role": "user", "content": m["content"]} if m["role"] == "tool" else m
                for m in conv.hf_messages()]
    served = ref.render_messages(messages, **conv.template_kwargs())
    assert diagnose(served, conv, ref, ref.render(conv))[0] == "tool result role"


def test_thinking_flag_not_applied(ref: Reference) -> None:
    conv = _agent_turns()
    served = ref.render_messages(conv.hf_messages(), tools=conv.tools)
    kind, message = diagnose(served, conv, ref, ref.render(conv))
    assert kind == "template kwargs not applied" and "enable_thinking" in message


def test_earlier_reasoning_kept_against_the_template(ref: Reference) -> None:
    """The template drops reasoning of turns before the last user turn; a server that keeps it
    (as text in the turn) is named."""
    call_turns = _agent_turns().contents
    conv = Conversation(contents=[*call_turns, Message(role="model", content="It is 3."),
                                  Message(role="user", content="Add 2 and 2.")],
                        tools=[TOOLS["add"]])
    messages = conv.hf_messages()
    messages[1] = {**messages[1], "content": "I will add."}
    served = ref.render_messages(messages, **conv.template_kwargs())
    assert diagnose(served, conv, ref, ref.render(conv))[0] == "reasoning kept"
