"""reasoning_effort against the second built-in model's template (Qwen3-style: it reads only
``enable_thinking``, which vLLM 0.32 and SGLang derive from the effort).

The records are hand-made, as a server would have answered: one that passed ``none`` on renders
the template's empty thinking block and answers; one that dropped it lets the model think, and
with a budget of a few tokens the thinking runs to the end. The reasoning check alone judges
them (no scoring), so these run in the fast suite.
"""

from __future__ import annotations

import pytest

from servecheck.checks import reasoning
from servecheck.checks.core.context import CheckContext
from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.parameters import Parameters, template_variables
from servecheck.formats.records import ResponseRecord
from servecheck.reference.model import Reference

CAT = Conversation(contents=[Message(role="user", content="What does the cat say?")])


@pytest.fixture(scope="module")
def tools_ref() -> Reference:
    return Reference("builtin-tools")


def _record(ref: Reference, effort: str | None, output: str, finish: str, served_kwargs: dict,
            max_tokens: int = 64, kwargs: dict | None = None) -> ResponseRecord:
    """A record asking ``effort``, whose server rendered the prompt with ``served_kwargs``."""
    conversation = CAT.model_copy(update={"chat_template_kwargs": kwargs})
    return ResponseRecord(
        id=f"{effort}-{finish}-{len(output)}", conversations=conversation,
        parameters=Parameters(temperature=0, max_tokens=max_tokens, reasoning_effort=effort),
        input=ref.render_messages(conversation.hf_messages(), **served_kwargs), output=output,
        finish_reason=finish)


def _run(ref: Reference, records: list[ResponseRecord]):
    (result,) = reasoning.run(CheckContext(records, ref))
    return result


def test_template_variables_follow_the_servers() -> None:
    assert template_variables(CAT, Parameters()) == {}
    assert template_variables(CAT, Parameters(reasoning_effort="none")) == {
        "reasoning_effort": "none", "enable_thinking": False}
    assert template_variables(CAT, Parameters(reasoning_effort="minimal"))["enable_thinking"]
    asked = CAT.model_copy(update={"chat_template_kwargs": {"enable_thinking": True,
                                                             "reasoning_effort": "high"}})
    assert template_variables(asked, Parameters(reasoning_effort="low")) == {
        "reasoning_effort": "low", "enable_thinking": True}  # the parameter wins, as in vLLM


def test_effort_none_passed_on_passes(tools_ref: Reference) -> None:
    honest = _record(tools_ref, "none", "The cat says meow.<|im_end|>", "stop",
                     {"enable_thinking": False, "reasoning_effort": "none"})
    result = _run(tools_ref, [honest])
    assert result.verdict == "pass" and result.details.off_requested == 1


def test_budget_spent_thinking_is_named(tools_ref: Reference) -> None:
    """The server dropped reasoning_effort: thinking on, and 6 tokens are all thinking."""
    dropped = _record(tools_ref, "none", "<think>\nThe user said:", "length", {}, max_tokens=6)
    result = _run(tools_ref, [dropped])
    assert result.verdict == "fail" and result.details.kinds == {"budget spent thinking": 1}
    assert result.findings[0].message == (
        "budget spent thinking: reasoning_effort none was asked and the whole budget (6 tokens) "
        "went to thinking: the server did not pass reasoning_effort to the template")


def test_closed_thinking_under_effort_none_is_named(tools_ref: Reference) -> None:
    thought = ("<think>\nThe user said: What does the cat say?\n</think>\n\nThe cat says meow."
               "<|im_end|>")
    result = _run(tools_ref, [_record(tools_ref, "none", thought, "stop", {})])
    assert result.verdict == "fail"
    assert "reasoning_effort none was asked, yet the output thinks" in result.findings[0].message


def test_thinking_open_to_the_end_under_enable_thinking_false(tools_ref: Reference) -> None:
    """An unclosed block, which the markup parser reads as no thinking, still counts."""
    record = _record(tools_ref, None, "<think>\nThe user said:", "length", {}, max_tokens=6,
                     kwargs={"enable_thinking": False})
    result = _run(tools_ref, [record])
    assert result.verdict == "fail" and "the block open to the end" in result.findings[0].message


@pytest.mark.parametrize("effort", ["minimal", "low", "high"])
def test_efforts_that_leave_thinking_on_are_not_judged(tools_ref: Reference, effort: str) -> None:
    """vLLM and SGLang switch Qwen3 thinking off only for none: a budget spent thinking under
    another effort is what an honest server serves."""
    record = _record(tools_ref, effort, "<think>\nThe user said:", "length",
                     {"enable_thinking": True, "reasoning_effort": effort}, max_tokens=6)
    assert _run(tools_ref, [record]).verdict == "skipped"
