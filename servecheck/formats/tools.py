"""Tool schemas and tool calls, as the OpenAI API and HF chat templates spell them.

A request offers ``tools`` (``{"type": "function", "function": {"name", "description",
"parameters": <JSON Schema>}}``); an assistant turn, or a server's answer, carries ``tool_calls``
(``{"id", "type": "function", "function": {"name", "arguments"}}``). The API sends ``arguments``
as a JSON string and HF templates take a mapping; both are accepted and compared by value
(``ToolCall.parsed_arguments``), since a parser that re-escapes them is one of the bugs to name.
A tool's schema is checked when the file is read (jsonschema's own meta-schema check): a broken
schema would make every call "fail its schema" for the user's mistake, not the server's.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    arguments: str | dict[str, Any] = Field(default_factory=dict)


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall

    def parsed_arguments(self) -> object:
        """The arguments as a value: a JSON string decoded once, a mapping as it is. A string
        that is not JSON comes back as itself, for the structure check to name."""
        args = self.function.arguments
        if isinstance(args, dict):
            return args
        try:
            return json.loads(args)
        except (ValueError, RecursionError):  # not JSON, a number past Python's digits, or
            return args                       # nesting past its parser: not arguments either

    def for_template(self) -> dict[str, Any]:
        """The call as HF templates take it (arguments a mapping where they parse as one)."""
        args = self.parsed_arguments()
        return {"type": "function", "function": {
            "name": self.function.name,
            "arguments": args if isinstance(args, dict) else self.function.arguments}}


def _check_tool(tool: object) -> dict[str, Any]:
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise ValueError('each tool must be {"type": "function", "function": {...}}')
    function = tool.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ValueError("each tool needs function.name (a string)")
    schema = function.get("parameters", {})
    if not isinstance(schema, dict):
        raise ValueError(f"tool {function['name']!r}: function.parameters must be a JSON Schema "
                         f"object")
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as e:
        raise ValueError(f"tool {function['name']!r}: function.parameters is not a valid JSON "
                         f"Schema: {e.message}") from None
    return tool


class ToolSet(BaseModel):
    """The ``tools`` of one request, validated once."""

    model_config = ConfigDict(extra="forbid")

    tools: list[dict[str, Any]]

    @field_validator("tools")
    @classmethod
    def _valid(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        names = [_check_tool(t)["function"]["name"] for t in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"tool names must be unique: {', '.join(twice)} given twice")
        return v


def check_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Validate a ``tools`` list (pydantic field validators call this)."""
    return None if tools is None else ToolSet(tools=tools).tools


def schema_of(tools: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The parameters schema of the tool called ``name``, or None when no such tool is offered."""
    for tool in tools:
        if tool["function"]["name"] == name:
            return tool["function"].get("parameters", {})
    return None


class Usage(BaseModel):
    """What the server said it counted (OpenAI ``usage``)."""

    model_config = ConfigDict(extra="ignore")

    prompt_tokens: int | None = Field(None, ge=0)
    completion_tokens: int | None = Field(None, ge=0)
    reasoning_tokens: int | None = Field(None, ge=0)
    """``completion_tokens_details.reasoning_tokens`` where the server reports it."""
    cached_tokens: int | None = Field(None, ge=0)
    """``prompt_tokens_details.cached_tokens`` where the server reports it (OpenAI; vLLM with
    ``--enable-prompt-tokens-details``): prompt tokens whose keys and values came from a cache."""
