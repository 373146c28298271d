"""The request side of a record: a conversation of turns, with the tools and template variables
sent with it, as a prompts file builds it and a responses file carries it back.

Both files, the targets that send it and the reference that templates it take one model, in the
original notes' names (``conversations.contents[].role/content``), so an export from a production
stack reads as it is.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from servecheck.formats.tools import ToolCall, check_tools

__all__ = ["NEW_FIELDS", "Conversation", "Message", "Role", "stable_dump"]

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
              "stop", "n", "tool_choice", "reasoning_effort", "response_format",
              "structured_outputs")
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
