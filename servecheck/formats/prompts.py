"""prompts.json → requests: every combination of a block's variation lists is one request.

A block's schema (``Variations``) is here beside the expansion that reads it: a list field the
model accepts is a dimension of the matrix, so the two change together.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from servecheck.errors import InputError
from servecheck.formats import jsontext
from servecheck.formats.conversation import Conversation, Message, stable_dump
from servecheck.formats.explain import explain
from servecheck.formats.files import read_text
from servecheck.formats.limits import MAX_REQUESTS
from servecheck.formats.parameters import Parameters

PARAMETER_FIELDS = [f for f in Parameters.model_fields]


@dataclass(frozen=True)
class Request:
    id: str
    conversation: Conversation
    parameters: Parameters


def _wrap_scalar(v: object) -> object:
    """A scalar is a list of one; so is a single conversation given as a prompt."""
    if isinstance(v, list) and not (v and all(isinstance(x, dict) for x in v)):
        return v
    return [v]


class Variations(BaseModel):
    """One block of a prompts file: every combination of its lists is one request."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: list[str | list[Message]] = Field(min_length=1)
    """A user message, or a whole conversation (roles alternate, the last one is ``user``)."""
    system_prompt: list[str | None] = Field([None], min_length=1)
    temperature: list[float | None] = Field([None], min_length=1)
    top_p: list[float | None] = Field([None], min_length=1)
    top_k: list[int | None] = Field([None], min_length=1)
    min_p: list[float | None] = Field([None], min_length=1)
    seed: list[int | None] = Field([None], min_length=1)
    max_tokens: list[int | None] = Field([None], min_length=1)
    repetition_penalty: list[float | None] = Field([None], min_length=1)
    presence_penalty: list[float | None] = Field([None], min_length=1)
    frequency_penalty: list[float | None] = Field([None], min_length=1)
    stop: list[list[str] | None] = Field([None], min_length=1)
    """A string or a flat list of strings is one stop set; a list of sets (or nulls) varies it."""
    n: list[int | None] = Field([None], min_length=1)
    tool_choice: list[str | dict[str, Any] | None] = Field([None], min_length=1)
    tools: list[list[dict[str, Any]] | None] = Field([None], min_length=1)
    """One tool list, or a list of tool lists (and nulls) to vary it."""
    chat_template_kwargs: list[dict[str, Any] | None] = Field([None], min_length=1)

    _wrap = field_validator(
        "prompt", "system_prompt", "temperature", "top_p", "top_k", "min_p", "seed", "max_tokens",
        "repetition_penalty", "presence_penalty", "frequency_penalty", "n", "tools",
        mode="before")(classmethod(lambda cls, v: _wrap_scalar(v)))

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_set(cls, v: object) -> object:
        if v is None or isinstance(v, str) or (isinstance(v, list) and v and
                                               all(isinstance(x, str) for x in v)):
            return [[v] if isinstance(v, str) else v]
        return [[x] if isinstance(x, str) else x for x in v] if isinstance(v, list) else v

    @field_validator("chat_template_kwargs", "tool_choice", mode="before")
    @classmethod
    def _one_mapping(cls, v: object) -> object:
        return v if isinstance(v, list) else [v]


def load_json(path: Path) -> object:
    text = read_text(path)
    if not text.strip():
        raise InputError("file is empty", where=str(path))
    try:
        raw = jsontext.parse(text, str(path))
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON ({e.msg}): line {e.lineno}, column {e.colno}",
                         where=str(path)) from None
    deep, surrogates = jsontext.suspect(text)
    if deep or surrogates:  # each block named where the prompts file is a list of them
        blocks = enumerate(raw) if isinstance(raw, list) else [(None, raw)]
        for b, block in blocks:
            where = str(path) if b is None else f"{path} block {b}"
            jsontext.check_value(block, where, deep=deep, surrogates=surrogates)
    return raw


def _conversation(prompt: str | list[Message], system: str | None, where: str,
                  tools: list | None = None, kwargs: dict | None = None) -> Conversation:
    turns = [Message(role="user", content=prompt)] if isinstance(prompt, str) else list(prompt)
    if not turns:
        raise InputError("a conversation must have at least one turn (got [])", where=where)
    if system is not None:
        if turns[0].role == "system":
            raise InputError("conversation has a system turn and system_prompt is set too",
                             where=where)
        turns.insert(0, Message(role="system", content=system))
    if turns[-1].role not in ("user", "tool"):
        raise InputError("a conversation must end with a user turn (or a tool result)",
                         where=where)
    chat = [m.role for m in turns if m.role != "system"]
    if any(m.role == "system" for m in turns[1:]):
        raise InputError("a system turn may only come first", where=where)
    if chat[0] != "user":
        raise InputError(f"a conversation must start with a user turn (after any system turn), "
                         f"not {chat[0]!r}", where=where)
    for k in range(1, len(chat)):
        if chat[k] == chat[k - 1] != "tool":
            raise InputError(f"turns must alternate user/model: turns {k - 1} and {k} are both "
                             f"{chat[k]!r}", where=where)
    for k, m in enumerate(turns):
        if m.role == "tool" and (k == 0 or turns[k - 1].role not in ("model", "tool")
                                 or not _calls_before(turns, k)):
            raise InputError(f"turn {k}: a tool turn must follow a model turn with tool_calls",
                             where=where)
    try:
        return Conversation(contents=turns, tools=tools, chat_template_kwargs=kwargs)
    except ValidationError as e:
        raise explain(e, where) from None


def _calls_before(turns: list[Message], k: int) -> bool:
    while k > 0 and turns[k - 1].role == "tool":
        k -= 1
    return k > 0 and bool(turns[k - 1].tool_calls)


def request_id(conversation: Conversation, parameters: Parameters, repeat: int) -> str:
    """Content-addressed, so a rerun (even of an edited prompts file) skips what is answered."""
    key = json.dumps([stable_dump(conversation), stable_dump(parameters), repeat], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def expand(path: Path, max_requests: int = MAX_REQUESTS) -> list[Request]:
    """Read a prompts file (one block or a list of blocks) and expand its matrix. A matrix of
    more than ``max_requests`` (``generate --max-requests``) is refused before any request is
    made: the size is a product of list lengths, known before expanding, and a matrix of 10^9
    grew by 60 MiB/s until memory ran out."""
    raw = load_json(path)
    blocks = raw if isinstance(raw, list) else [raw]
    if not blocks:
        raise InputError("no variation blocks (empty list)", where=str(path))
    validated: list[tuple[str, list[list]]] = []
    for b, block in enumerate(blocks):
        where = f"{path} block {b}" if isinstance(raw, list) else str(path)
        if not isinstance(block, dict):
            raise InputError(f"expected an object of variation lists, got {type(block).__name__}",
                             where=where)
        try:
            v = Variations.model_validate(block, strict=True)
        except ValidationError as e:
            raise explain(e, where) from None
        lists = [v.prompt, v.system_prompt, v.tools, v.chat_template_kwargs]
        validated.append((where, lists + [getattr(v, f) for f in PARAMETER_FIELDS]))
    limit = max_requests
    total = sum(math.prod(len(x) for x in lists) for _, lists in validated)
    if total > limit:
        raise InputError(f"the matrix expands to {total:,} requests, over the limit of "
                         f"{limit:,} (raise it with --max-requests N)", where=str(path))
    requests: list[Request] = []
    seen: dict[str, int] = {}
    for where, lists in validated:
        for combo in itertools.product(*lists):
            prompt, system, tools, kwargs, *values = combo
            try:
                params = Parameters(**dict(zip(PARAMETER_FIELDS, values, strict=True)))
            except ValidationError as e:
                raise explain(e, where) from None
            conv = _conversation(prompt, system, where, tools, kwargs)
            base = request_id(conv, params, 0)
            repeat = seen.get(base, 0)
            seen[base] = repeat + 1
            rid = base if repeat == 0 else request_id(conv, params, repeat)
            requests.append(Request(rid, conv, params))
    return requests
