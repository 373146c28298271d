"""Thinking where it was switched off, judged by the reference's own odds.

The second built-in model, told not to think (``enable_thinking: false``, its template's empty
thinking block), still opens a block as its first token with probability 1.5% at temperature 1
on "Name a color.": an honest server does it now and then, and a rule that any thinking is a
fault false-alarmed on a CI run (stop 38). The records are hand-made, as a server would have
answered; the reasoning check alone judges them. Deterministic: no false-failure rate to state
beyond the check's own level (``checks.core.thinking_odds.LEVEL``, 1e-4).
"""

from __future__ import annotations

import pytest

from servecheck.checks import reasoning
from servecheck.checks.core.context import CheckContext
from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.parameters import Parameters
from servecheck.formats.records import ResponseRecord
from servecheck.reference.model import Reference

OFF = {"enable_thinking": False}
THOUGHT = "<think>\nThe brave cat swims to the lake.\n</think>\n\nRed.<|im_end|>"


@pytest.fixture(scope="module")
def tools_ref() -> Reference:
    return Reference("builtin-tools")


def _record(ref: Reference, seed: int, output: str, temperature: float = 1.0,
            choice: int | None = None, question: str = "Name a color.") -> ResponseRecord:
    conversation = Conversation(contents=[Message(role="user", content=question)],
                                chat_template_kwargs=OFF)
    return ResponseRecord(
        id=f"{question}-{seed}-{choice}", conversations=conversation, choice=choice,
        parameters=Parameters(temperature=temperature, seed=seed, max_tokens=40),
        input=ref.render(conversation), output=output, finish_reason="stop")


def _run(ref: Reference, records: list[ResponseRecord]):
    (result,) = reasoning.run(CheckContext(records, ref))
    return result


def test_a_rare_honest_thought_passes(tools_ref: Reference) -> None:
    records = [_record(tools_ref, s, "Blue.<|im_end|>") for s in range(11)]
    result = _run(tools_ref, [*records, _record(tools_ref, 11, THOUGHT)])
    assert result.verdict == "pass", result.summary
    assert "1 of those think, as often as the reference itself" in result.summary
    assert 0.1 < result.details.expected_units < 0.3  # 12 units at about 1.5% each


def test_two_thoughts_on_one_seed_are_one_draw(tools_ref: Reference) -> None:
    """Requests with the same seed share the server's stream: both thinking is one chance."""
    records = [_record(tools_ref, 40, THOUGHT, choice=2, question=q)
               for q in ("Name a color.", "Tell me a story about the cat.")]
    records += [_record(tools_ref, 40, "Blue.<|im_end|>", choice=c) for c in (0, 1)]
    result = _run(tools_ref, records)
    assert result.verdict == "pass", result.summary


def test_thinking_on_every_record_is_named(tools_ref: Reference) -> None:
    result = _run(tools_ref, [_record(tools_ref, s, THOUGHT) for s in range(8)])
    assert result.verdict == "fail" and result.details.kinds == {"thought when told not to": 8}
    assert result.details.chance < 1e-5


def test_a_greedy_thought_is_named_alone(tools_ref: Reference) -> None:
    """At temperature 0 the opener trails the argmax by far more than the near-tie δ."""
    result = _run(tools_ref, [_record(tools_ref, 0, THOUGHT, temperature=0.0)])
    assert result.verdict == "fail" and "enable_thinking=false was sent" in result.findings[0].message


def test_a_cold_thought_is_named_alone(tools_ref: Reference) -> None:
    """At temperature 0.2 the opener's probability is about 1e-6, below 1e-4 / 2: no correct server."""
    result = _run(tools_ref, [_record(tools_ref, 0, THOUGHT, temperature=0.2)])
    assert result.verdict == "fail"
