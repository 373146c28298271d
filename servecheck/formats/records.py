"""Typed, versioned records: one request and what the target answered, as a responses file holds
it.

The field names are the original notes' (``conversations.contents[].role/content``,
``parameters``, ``input``, ``output``) so files exported from a production stack check as they
are; servecheck's own additions are optional. ``SCHEMA_VERSION`` goes up when a field changes
meaning; ``docs/formats.md`` documents both formats and ``servecheck schema`` prints the JSON
Schema.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from servecheck.formats.conversation import Conversation
from servecheck.formats.parameters import Parameters
from servecheck.formats.tools import ToolCall, Usage

__all__ = ["END_MARKER_UNKNOWN", "LOGPROB_SLACK", "SCHEMA_VERSION", "ResponseRecord", "Serving", "Timing"]

SCHEMA_VERSION = 1
LOGPROB_SLACK = 1e-4
"""How far above 0 a served log-probability may round (float32 log-softmax of a sure token)."""


class Timing(BaseModel):
    started_at: str
    """ISO 8601, UTC."""
    latency_s: float


class Serving(BaseModel):
    """Deployment settings a record was served under; each None where not known."""

    model_config = ConfigDict(extra="forbid")

    speculative: str | None = None
    """The speculative-decoding method (``draft``, ``ngram``, ``eagle``…), or ``off``."""
    kv_cache_dtype: str | None = None
    """``auto`` (the model's dtype), ``fp8``, ``fp8_e4m3``…"""
    prefix_caching: bool | None = None


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
    serving: Serving | None = None
    """How the deployment ran, where the target or the user knows it (speculation, KV-cache
    type, prefix caching): the checks name a fault by what was on."""
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
