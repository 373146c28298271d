"""Typed, versioned records: what a prompts file asks for and what a responses file holds.

The field names are the original notes' (``conversations.contents[].role/content``,
``parameters``, ``input``, ``output``) so files exported from a production stack check as they
are; servecheck's own additions are optional. ``SCHEMA_VERSION`` goes up when a field changes
meaning; ``docs/formats.md`` documents both formats and ``servecheck schema`` prints the JSON
Schema.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from servecheck.errors import InputError
from servecheck.formats.tools import ToolCall, Usage, check_tools

SCHEMA_VERSION = 1
LOGPROB_SLACK = 1e-4
"""How far above 0 a served log-probability may round (float32 log-softmax of a sure token)."""
MIN_TEMPERATURE = 1e-5
"""The smallest temperature above 0 a request may ask (``Parameters._greedy_or_sampled``)."""

Role = Literal["system", "user", "model", "tool"]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    """``model`` is the seed's name for the answering role (HF templates call it ``assistant``);
    ``tool`` turns carry a function's result."""
    content: str | None = Field(None, validate_default=True)
    """None only on a ``model`` turn that is all tool calls, as the API allows."""
    tool_calls: list[ToolCall] | None = None
    """The calls a ``model`` turn made (an agent loop's history)."""
    tool_call_id: str | None = None
    """Which call a ``tool`` turn answers."""
    reasoning_content: str | None = None
    """A ``model`` turn's thinking, sent back as history; the template decides whether it is
    kept (the template check names a server that keeps or drops it against the template)."""

    @field_validator("role", mode="before")
    @classmethod
    def _assistant_is_model(cls, v: object) -> object:
        return "model" if v == "assistant" else v

    @field_validator("content")
    @classmethod
    def _text_unless_calling(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None and info.data.get("role") not in ("model", None):
            raise ValueError(f"Field required: a {info.data['role']} turn needs its text (only a "
                             f"model turn that calls tools may have none)")
        return v

    @model_validator(mode="after")
    def _fields_fit_the_role(self) -> Message:
        if self.content is None and not (self.role == "model" and self.tool_calls):
            raise ValueError("content may be null only on a model turn with tool_calls")
        if self.tool_calls is not None and self.role != "model":
            raise ValueError(f"tool_calls belong on a model turn, not {self.role!r}")
        if self.reasoning_content is not None and self.role != "model":
            raise ValueError(f"reasoning_content belongs on a model turn, not {self.role!r}")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError(f"tool_call_id belongs on a tool turn, not {self.role!r}")
        return self

    def hf_message(self) -> dict[str, Any]:
        """This turn as HF chat templates take it (role ``model`` becomes ``assistant``)."""
        out: dict[str, Any] = {"role": "assistant" if self.role == "model" else self.role,
                               "content": self.content}
        if self.tool_calls is not None:
            out["tool_calls"] = [c.for_template() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.reasoning_content is not None:
            out["reasoning_content"] = self.reasoning_content
        return out


NEW_FIELDS = ("tool_calls", "tool_call_id", "reasoning_content", "tools", "chat_template_kwargs",
              "stop", "n", "tool_choice")
"""Fields added after the first records were written: left out of a dump while unset, so the
content-addressed ids of older requests do not change (formats/prompts.request_id)."""


class Conversation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    contents: list[Message] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    """OpenAI function schemas offered with the request; the template renders them."""
    chat_template_kwargs: dict[str, Any] | None = None
    """Extra template variables the request sets (``enable_thinking``, ``reasoning_effort``)."""

    _tools = field_validator("tools")(classmethod(lambda cls, v: check_tools(v)))

    def hf_messages(self) -> list[dict[str, Any]]:
        """The conversation as HF chat messages (role ``model`` becomes ``assistant``)."""
        return [m.hf_message() for m in self.contents]

    def template_kwargs(self) -> dict[str, Any]:
        """What ``apply_chat_template`` gets besides the messages: tools and the request's
        template variables."""
        out: dict[str, Any] = dict(self.chat_template_kwargs or {})
        if self.tools:
            out["tools"] = self.tools
        return out


def stable_dump(model: BaseModel) -> dict[str, Any]:
    """A model's dump without the newer fields that are unset (see ``NEW_FIELDS``)."""
    def prune(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: prune(v) for k, v in value.items() if not (k in NEW_FIELDS and v is None)}
        if isinstance(value, list):
            return [prune(v) for v in value]
        return value

    return prune(model.model_dump())


def read_text(path: Path) -> str:
    """A prompts or responses file's text: it must exist, be a file and be UTF-8 (a byte-order
    mark is allowed and dropped, as editors on Windows write one)."""
    if not path.exists():
        raise InputError("file not found", where=str(path))
    if not path.is_file():
        raise InputError("is a directory, not a file" if path.is_dir() else "not a regular file",
                         where=str(path))
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(f"not UTF-8: byte 0x{data[e.start]:02x} at offset {e.start} (line "
                         f"{line}); save the file as UTF-8", where=str(path)) from None


def is_greedy(temperature: float, top_k: int) -> bool:
    """Temperature 0 or top_k 1: one right token at every step (the one definition of greedy)."""
    return temperature == 0 or top_k == 1


class Parameters(BaseModel):
    """Sampling parameters as requested. ``None`` means "not sent": the server's default applies.
    Infinity and NaN are refused: JSON readers accept them, and a server would get nonsense."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    """0 means "no top-k", as in vLLM and TensorRT-LLM."""
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, ge=0, lt=2**63)
    """What every engine takes: a signed 64-bit seed, not negative."""
    max_tokens: int | None = Field(None, ge=1)
    repetition_penalty: float | None = Field(None, gt=0)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: list[str] | None = None
    """OpenAI semantics: the text ends before the first occurrence of any of them."""
    n: int | None = Field(None, ge=1, le=128)
    """Choices per request; each comes back as its own record (``ResponseRecord.choice``)."""
    tool_choice: str | dict[str, Any] | None = None
    """``auto``, ``none``, ``required`` or ``{"type": "function", "function": {"name": …}}``."""

    @field_validator("temperature")
    @classmethod
    def _greedy_or_sampled(cls, v: float | None) -> float | None:
        """Under ``MIN_TEMPERATURE`` is greedy to engines that check (vLLM: under 1e-5) and
        overflows logits / T in the others (1e-300: NaN probabilities in the hf target)."""
        if v is not None and 0 < v < MIN_TEMPERATURE:
            raise ValueError(f"a temperature of {v:g} is under {MIN_TEMPERATURE:g}: write 0 for "
                             f"greedy (vLLM and others treat a temperature under 1e-5 as greedy)")
        return v

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, v: object) -> object:
        """One stop string is a list of one; an empty one would end every text at once."""
        if v == "" or (isinstance(v, list) and "" in v):
            raise ValueError("a stop string must not be empty")
        return [v] if isinstance(v, str) else v

    @field_validator("tool_choice")
    @classmethod
    def _known_choice(cls, v: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if isinstance(v, str) and v not in ("auto", "none", "required"):
            raise ValueError(f"tool_choice must be auto, none, required or a function, not {v!r}")
        return v

    @property
    def constrained(self) -> bool:
        """Decoded under a grammar: ``tool_choice`` ``required`` or a named function makes an
        engine force a call (vLLM: structured outputs), which no reference reproduces."""
        return self.tool_choice == "required" or isinstance(self.tool_choice, dict)

    @property
    def greedy(self) -> bool:
        """Greedy as requested, a parameter not sent taking the usual default (T 1, no top_k)."""
        return is_greedy(1.0 if self.temperature is None else self.temperature, self.top_k or 0)


class Timing(BaseModel):
    started_at: str
    """ISO 8601, UTC."""
    latency_s: float


class ResponseRecord(BaseModel):
    """One request and what the target answered. Only the seed's four fields are required."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = Field(SCHEMA_VERSION, ge=1, le=SCHEMA_VERSION)
    """A file from a newer servecheck is refused rather than half understood."""
    id: str | None = None
    """Stable for the same request; a rerun skips ids already answered."""
    conversations: Conversation
    parameters: Parameters = Field(default_factory=Parameters)
    input: str = ""
    """The templated prompt as the target built or received it: one string, special tokens included."""
    output: str = ""
    """Generated text only, ending with the end-of-turn marker when the model finished."""
    target: str | None = None
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    choice: int | None = Field(None, ge=0)
    """Which of a request's ``n`` choices this is (records of one id differ only here)."""
    content: str | None = None
    """The server's ``content`` where its parsers split the output (tool calls and reasoning
    taken out); ``output`` stays the raw generated text, markup included."""
    reasoning_content: str | None = None
    """The thinking the server's reasoning parser took out of the output."""
    tool_calls: list[ToolCall] | None = None
    """The calls the server's tool parser found in the output."""
    usage: Usage | None = None
    prompt_token_ids: list[int] | None = None
    output_token_ids: list[int] | None = None
    output_logprobs: list[float] | None = None
    sent: dict[str, Any] | None = None
    """The request's inputs in the server's own names, each value as the server decodes it (an
    FP32 input receives 0.8999999762 when 0.9 was asked; ``parameters`` keeps what was asked)."""
    timing: Timing | None = None
    error: str | None = None
    """Set when the request failed; such records are kept, reported, and retried on resume."""

    _empty_system: bool = PrivateAttr(False)
    _where: str | None = PrivateAttr(None)

    @property
    def where(self) -> str | None:
        """Where the record was read (``shard-0003.jsonl line 12``), if from a file."""
        return self._where

    def locate(self, where: str) -> None:
        self._where = where

    def named(self, label: str) -> str:
        """How an error found after reading names it: where it was read, and ``label`` (id)."""
        return f"{self._where} (record {label})" if self._where else f"record {label}"

    @property
    def asked_empty_system(self) -> bool:
        """The record's ``parameters`` said ``system_prompt: ""`` and its conversation has no
        system turn: the original notes' "no system prompt". The server may have rendered it
        either way (no system turn, or an empty one, which Gemma's template writes as a blank
        line in the user turn); the template check accepts the one its ``input`` shows."""
        return self._empty_system

    def mark_empty_system(self) -> None:
        self._empty_system = True

    @field_validator("output_logprobs")
    @classmethod
    def _log_probabilities(cls, v: list[float] | None) -> list[float] | None:
        """A log-probability is at most 0; NaN or a positive value is a broken export, not
        evidence about the server (minus infinity is evidence: a token it called impossible)."""
        for k, x in enumerate(v or []):
            if math.isnan(x) or x > LOGPROB_SLACK:
                raise ValueError(f"output_logprobs[{k}] = {x} is not a log-probability (≤ 0)")
        return v

    @model_validator(mode="after")
    def _ids_and_logprobs_line_up(self) -> ResponseRecord:
        """Ids and log-probs of one output come one per token; a server may report one extra
        log-prob (the end token's, its id left out), never more."""
        ids, lps = self.output_token_ids, self.output_logprobs
        if ids is not None and lps is not None and not 0 <= len(lps) - len(ids) <= 1 and lps:
            raise ValueError(f"output_logprobs has {len(lps)} values for {len(ids)} "
                             f"output_token_ids: they must be one per token")
        return self


END_MARKER_UNKNOWN = "unknown: not restored, no --reference or ?template= named"
"""``sent["end_marker"]`` of a record whose target could not put back the end marker a server
strips (no reference named at collection): a missing marker is then no evidence."""

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


UNION_TAGS = {"str", "int", "float", "bool", "none", "dict", "list"}


def _field_path(loc: tuple) -> str:
    """A pydantic error location as the file's field path: union members' tags
    (``str``, ``list[Message]``) are pydantic's, not the user's."""
    parts = [str(p) for p in loc if not (isinstance(p, str) and (p in UNION_TAGS or "[" in p
                                                                 or p.startswith("function-")))]
    return ".".join(parts) or "(top level)"


def explain(err: ValidationError, where: str) -> InputError:
    """One readable message from a pydantic error. Of several (a union tried every member), the
    deepest is the one that names what the user got wrong: ``prompt.0.0.role``, not ``prompt.0``."""
    errors = err.errors()
    first = max(errors, key=lambda e: len(e["loc"]))
    path = _field_path(first["loc"])
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    if first["type"] == "extra_forbidden":
        return InputError(f"unknown field '{path}'{more}", where=where)
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "literal_error" and path.endswith("role"):
        msg += " ('assistant' is read as 'model')"
    got = first.get("input")
    shown = "" if isinstance(got, dict | list) or "input" not in first else \
        f", got {json.dumps(got)[:60]}" if _jsonable(got) else f", got {got!r:.60}"
    if path == "(top level)":
        return InputError(f"{msg}{more}", where=where)
    return InputError(f"field '{path}': {msg}{shown}{more}", where=where)


def _jsonable(value: object) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True
