"""prompts.json → requests: every combination of a block's variation lists is one request.

A block's schema (``Variations``) is here beside the expansion that reads it: a list field the
model accepts is a dimension of the matrix, so the two change together. A file is read whole
before it is refused (``read_blocks``): every problem of every block in one message, each
unknown field with the field it is probably meant to be.
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
from servecheck.formats.explain import explain, problems, refusal
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
    reasoning_effort: list[str | None] = Field([None], min_length=1)
    """none, minimal, low, medium or high (``Parameters.reasoning_effort``)."""
    response_format: list[dict[str, Any] | None] = Field([None], min_length=1)
    """One ``response_format`` (OpenAI's), or a list of them (and nulls) to vary it."""
    structured_outputs: list[dict[str, Any] | None] = Field([None], min_length=1)
    """One of vLLM's ``structured_outputs`` (json, regex, choice, grammar), or a list of them."""

    _wrap = field_validator(
        "prompt", "system_prompt", "temperature", "top_p", "top_k", "min_p", "seed", "max_tokens",
        "repetition_penalty", "presence_penalty", "frequency_penalty", "n", "tools",
        "reasoning_effort", mode="before")(classmethod(lambda cls, v: _wrap_scalar(v)))

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_set(cls, v: object) -> object:
        if v is None or isinstance(v, str) or (isinstance(v, list) and v and
                                               all(isinstance(x, str) for x in v)):
            return [[v] if isinstance(v, str) else v]
        return [[x] if isinstance(x, str) else x for x in v] if isinstance(v, list) else v

    @field_validator("chat_template_kwargs", "tool_choice", "response_format",
                     "structured_outputs", mode="before")
    @classmethod
    def _one_mapping(cls, v: object) -> object:
        return v if isinstance(v, list) else [v]


FIELDS = list(Variations.model_fields)
"""A block's fields: what an unknown field is matched against (``explain.suggest``)."""
TURN_FIELDS = list(Message.model_fields)
"""A conversation turn's fields (``prompt.0.1.role``)."""


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


def _turns(prompt: str | list[Message], system: str | None) -> list[Message] | str:
    """A request's turns, the system prompt first; or, as a string, why they are no
    conversation a request may send."""
    turns = [Message(role="user", content=prompt)] if isinstance(prompt, str) else list(prompt)
    if not turns:
        return "a conversation must have at least one turn (got [])"
    if system is not None:
        if turns[0].role == "system":
            return "conversation has a system turn and system_prompt is set too"
        turns.insert(0, Message(role="system", content=system))
    if turns[-1].role not in ("user", "tool"):
        return "a conversation must end with a user turn (or a tool result)"
    chat = [m.role for m in turns if m.role != "system"]
    if any(m.role == "system" for m in turns[1:]):
        return "a system turn may only come first"
    if chat[0] != "user":
        return (f"a conversation must start with a user turn (after any system turn), "
                f"not {chat[0]!r}")
    for k in range(1, len(chat)):
        if chat[k] == chat[k - 1] != "tool":
            return f"turns must alternate user/model: turns {k - 1} and {k} are both {chat[k]!r}"
    for k, m in enumerate(turns):
        if m.role == "tool" and (k == 0 or turns[k - 1].role not in ("model", "tool")
                                 or not _calls_before(turns, k)):
            return f"turn {k}: a tool turn must follow a model turn with tool_calls"
    return turns


def _conversation(prompt: str | list[Message], system: str | None, where: str,
                  tools: list | None = None, kwargs: dict | None = None) -> Conversation:
    turns = _turns(prompt, system)
    if isinstance(turns, str):
        raise InputError(turns, where=where)
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


def _value_problems(v: Variations, numbers: list[int] | None = None) -> list[str]:
    """What a block's lists hold that no request may: a parameter out of bounds, a conversation
    out of order, a tool list that does not validate. Each value is tried alone, so this costs
    the lists' lengths, not the matrix's size. ``numbers``: each prompt's place in the file,
    where ``v`` holds only some of them."""
    found: list[str] = []
    for name in PARAMETER_FIELDS:
        for value in getattr(v, name):
            try:
                Parameters(**{name: value})
            except ValidationError as e:
                found += problems(e)
    systems = dict.fromkeys(None if s is None else "" for s in v.system_prompt)
    for i, prompt in enumerate(v.prompt):
        for system in systems if not isinstance(prompt, str) else ():
            turns = _turns(prompt, system)
            if isinstance(turns, str):
                found.append(f"field 'prompt.{numbers[i] if numbers else i}': {turns}")
    for tools in v.tools:
        try:
            Conversation(contents=[Message(role="user", content="")], tools=tools)
        except ValidationError as e:
            found += [p.replace("field 'tools.tools", "field 'tools", 1) for p in problems(e)]
    return found


def _the_rest(block: dict, err: ValidationError) -> list[str]:
    """The problems of the values of a block that did validate (the fields without an error,
    the prompts without one), so they are said in the same round as the block's errors."""
    bad = {e["loc"][0] for e in err.errors() if e["loc"]}
    rest = {k: x for k, x in block.items() if k in FIELDS and k not in bad}
    prompts = _wrap_scalar(block.get("prompt"))
    wrong = {e["loc"][1] for e in err.errors() if e["loc"][:1] == ("prompt",)
             and len(e["loc"]) > 1}
    numbers = [i for i in range(len(prompts)) if i not in wrong] if "prompt" in block and \
        isinstance(prompts, list) and all(isinstance(i, int) for i in wrong) else []
    try:
        v = Variations.model_validate({**rest, "prompt": [prompts[i] for i in numbers] or ""},
                                      strict=True)
    except ValidationError:
        return []
    return _value_problems(v, numbers)


def block_size(v: Variations) -> int:
    """Requests a block expands to: the product of its lists' lengths."""
    return math.prod(len(getattr(v, name)) for name in FIELDS)


def read_blocks(path: Path, max_requests: int = MAX_REQUESTS) -> list[tuple[str, Variations]]:
    """A prompts file's blocks, validated, each with where it is (``PATH block N``). Every
    problem of every block is found before any is said, and one refusal lists them
    (``explain.refusal``): a first file with four wrong names is mended in one round, not four.
    A matrix of more than ``max_requests`` (``generate --max-requests``) is refused before any
    request exists: the size is a product of list lengths, known before expanding, and a matrix
    of 10^9 grew by 60 MiB/s until memory ran out."""
    raw = load_json(path)
    listed = isinstance(raw, list)
    blocks = raw if listed else [raw]
    if not blocks:
        raise InputError("no variation blocks (empty list)", where=str(path))
    found: list[tuple[str, str]] = []
    valid: list[tuple[str, Variations]] = []
    for b, block in enumerate(blocks):
        place = f"block {b}" if listed else ""
        if not isinstance(block, dict):
            found.append((place, f"expected an object of variation lists, got "
                                 f"{type(block).__name__}"))
            continue
        try:
            v = Variations.model_validate(block, strict=True)
        except ValidationError as e:
            found += [(place, p) for p in problems(e, {1: FIELDS, 4: TURN_FIELDS})]
            found += [(place, p) for p in _the_rest(block, e)]
            continue
        found += [(place, p) for p in _value_problems(v)]
        valid.append((f"{path} {place}".strip(), v))
    if found:
        raise refusal(found, str(path))
    total = sum(block_size(v) for _, v in valid)
    if total > max_requests:
        raise InputError(f"the matrix expands to {total:,} requests, over the limit of "
                         f"{max_requests:,} (raise it with --max-requests N)", where=str(path))
    return valid


def expand(path: Path, max_requests: int = MAX_REQUESTS) -> list[Request]:
    """Read a prompts file (one block or a list of blocks, ``read_blocks``) and expand its
    matrix, in the file's order."""
    requests: list[Request] = []
    seen: dict[str, int] = {}
    for where, v in read_blocks(path, max_requests):
        lists = [v.prompt, v.system_prompt, v.tools, v.chat_template_kwargs]
        for combo in itertools.product(*lists, *(getattr(v, f) for f in PARAMETER_FIELDS)):
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
