"""The original notes' own record shape: the variation a request came from, in ``parameters``.

Their ``generate_responses.py`` writes the mixed-and-matched variation into each record's
``parameters`` ("the mixed and matched parameters loaded from prompts.json"), ``prompt`` and
``system_prompt`` included. Those two are checked against ``conversations`` and kept nowhere
else; ``system_prompt: ""`` with no system turn is the notes' "no system prompt"
(``ResponseRecord.asked_empty_system``).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from servecheck.formats.conversation import Conversation

VARIATION_KEYS = ("prompt", "system_prompt")
"""Keys of a prompts file that the original notes' ``generate_responses.py`` also writes into a
record's ``parameters`` ("the mixed and matched parameters loaded from prompts.json"). They are
accepted there and must agree with ``conversations``; the record keeps them nowhere else."""


def variation_mismatch(conversation: Conversation, variation: dict[str, Any]) -> str | None:
    """Why ``parameters.prompt`` / ``parameters.system_prompt`` disagree with the conversation
    (None when they agree): the problem, naming the field."""
    turns = conversation.contents
    system = variation.get("system_prompt")
    has_system = turns[0].role == "system"
    if "system_prompt" in variation and system is not None:
        if not isinstance(system, str):
            return f"field 'parameters.system_prompt': expected a string or null, got {system!r}"
        if system == "" and not has_system:
            return None  # the notes' "no system prompt" (``ResponseRecord.asked_empty_system``)
        if not has_system or turns[0].content != system:
            found = repr(turns[0].content[:60]) if has_system else "no system turn"
            return (f"field 'parameters.system_prompt' ({system[:60]!r}) disagrees with "
                    f"conversations ({found})")
    if "prompt" not in variation:
        return None
    prompt = variation["prompt"]
    rest = turns[1:] if has_system and system is not None else turns
    if isinstance(prompt, str):
        last = turns[-1]
        if last.role != "user" or last.content != prompt:
            return (f"field 'parameters.prompt' ({prompt[:60]!r}) disagrees with conversations "
                    f"(last turn: {last.role} {last.content[:60]!r})")
        return None
    try:
        asked = Conversation(contents=prompt)
    except ValidationError:
        return "field 'parameters.prompt': expected a string or a list of {role, content} turns"
    if [(m.role, m.content) for m in asked.contents] != [(m.role, m.content) for m in rest]:
        return "field 'parameters.prompt' (a conversation) disagrees with conversations"
    return None
