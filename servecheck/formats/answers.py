"""Which records a responses set holds: each object validated where it was read, and of each
request only its current answer.

A set read whole and one read in two passes must refuse the same records in the same words and
let a retry replace the same errors, so both take these rules from here.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import ValidationError

from servecheck.errors import InputError
from servecheck.formats.explain import explain
from servecheck.formats.records import ResponseRecord
from servecheck.formats.variations import VARIATION_KEYS, variation_mismatch

__all__ = ["latest", "supersedes", "validate_record"]


def validate_record(obj: object, where: str) -> ResponseRecord:
    """One record object as read, validated; bad input names ``where`` (shard and line)."""
    if not isinstance(obj, dict):
        raise InputError(f"expected a record object, got {type(obj).__name__}", where=where)
    obj, variation = _split_variation(obj)
    try:
        rec = ResponseRecord.model_validate(obj, strict=True)
    except ValidationError as e:
        raise explain(e, where) from None
    problem = variation_mismatch(rec.conversations, variation) if variation else None
    if problem:
        raise InputError(problem, where=where + (f" (id {rec.id})" if rec.id else ""))
    if variation.get("system_prompt") == "" and rec.conversations.contents[0].role != "system":
        rec.mark_empty_system()
    rec.locate(where)
    return rec


def _split_variation(obj: dict) -> tuple[dict, dict]:
    """A record with the prompts file's ``prompt`` / ``system_prompt`` in its ``parameters`` (as
    the original notes write it), and those keys apart, to be checked against its conversation."""
    params = obj.get("parameters")
    if not isinstance(params, dict) or not any(k in params for k in VARIATION_KEYS):
        return obj, {}
    variation = {k: params[k] for k in VARIATION_KEYS if k in params}
    rest = {k: v for k, v in params.items() if k not in VARIATION_KEYS}
    return {**obj, "parameters": rest}, variation


def supersedes(answer: dict[int | None, object], choice: int | None) -> bool:
    """Whether a record of ``choice`` starts a new answer to its request (an error, then a
    retry), rather than adding a choice to the answer so far."""
    return choice is None or None in answer or choice in answer


def latest(records: Iterable[ResponseRecord]) -> list[ResponseRecord]:
    """The last answer per id, in the order each id first appeared."""
    answers: dict[str | int, dict[int | None, ResponseRecord]] = {}
    for i, rec in enumerate(records):
        key = rec.id or i  # no id: its own answer (an int never equals an id, not even "#3")
        answer = answers.get(key, {})
        if supersedes(answer, rec.choice):
            answer = {}  # a new answer: it supersedes the one before (an error, a retry)
        answer[rec.choice] = rec
        answers[key] = answer
    return [rec for answer in answers.values() for rec in answer.values()]
