"""Sampling parameters as a request asks for them, and the one definition of greedy.

A prompts file varies them, every target translates them into its server's names and the
reference's sampling transform reads them back, so each bound (a temperature too small to be
anything but greedy, a stop string that is empty) is refused once, where they are read.

``reasoning_effort`` is a request parameter (the OpenAI API's top-level field) that reaches the
model only through the chat template, so ``template_variables`` says, in one place, what the
template gets for a request: the conversation's variables, ``reasoning_effort``, and the
``enable_thinking`` that vLLM and SGLang derive from it. The targets that template here and the
reference both render with it, so a server and its reference disagree only where the server does.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from servecheck.formats.conversation import Conversation
from servecheck.formats.grammar import Grammar, grammar_of

_OTHER_NAMES = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
                "guided_grammar": "grammar", "regex": "regex", "ebnf": "grammar",
                "json_schema": "json"}
"""vLLM's older names and SGLang's, for the keys of vLLM's ``structured_outputs``."""

__all__ = ["EFFORTS", "MIN_TEMPERATURE", "Parameters", "ReasoningEffort", "is_greedy",
           "template_variables"]

ReasoningEffort = Literal["none", "minimal", "low", "medium", "high"]
EFFORTS: tuple[str, ...] = ("none", "minimal", "low", "medium", "high")
"""``reasoning_effort`` as the OpenAI API spells it (vLLM 0.32 and SGLang also take ``xhigh`` and
``max``, which no OpenAI model reads; a prompts file asking them is refused by name)."""

MIN_TEMPERATURE = 1e-5
"""The smallest temperature above 0 a request may ask (``Parameters._greedy_or_sampled``)."""


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
    reasoning_effort: ReasoningEffort | None = None
    """How much a reasoning model should think: the API's top-level field. It changes the prompt,
    not the sampler: the server hands it to the chat template (``template_variables``)."""
    response_format: dict[str, Any] | None = None
    """OpenAI's structured output: ``{"type": "json_object"}`` or ``{"type": "json_schema",
    "json_schema": {"name": …, "schema": {…}}}`` (``formats.grammar``)."""
    structured_outputs: dict[str, Any] | None = None
    """vLLM's: one of ``json``, ``regex``, ``choice``, ``grammar``, ``json_object``; vLLM's older
    ``guided_*`` fields and SGLang's ``regex``, ``ebnf`` and ``json_schema`` are read into it."""

    @model_validator(mode="before")
    @classmethod
    def _one_structure_field(cls, data: Any) -> Any:
        """The other servers' names for a grammar, read as vLLM's ``structured_outputs``."""
        if not isinstance(data, dict) or not (set(data) & set(_OTHER_NAMES)):
            return data
        data = dict(data)
        moved = {key: data.pop(name) for name, key in _OTHER_NAMES.items() if name in data}
        so = data.get("structured_outputs")
        if so is not None and not isinstance(so, dict):
            return data  # the field's own validation names it
        clash = sorted(set(moved) & set(so or {}))
        if clash:
            raise ValueError(f"structured_outputs.{clash[0]} is also asked by another field: "
                             f"one structure per request")
        data["structured_outputs"] = {**(so or {}), **moved}
        return data

    @model_validator(mode="after")
    def _a_grammar_it_can_name(self) -> Parameters:
        grammar_of({"response_format": self.response_format,
                    "structured_outputs": self.structured_outputs})
        return self

    @property
    def grammar(self) -> Grammar | None:
        """The grammar the request asks the server to decode under (``formats.grammar``)."""
        return grammar_of({"response_format": self.response_format,
                           "structured_outputs": self.structured_outputs})

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
        """Decoded under a grammar: a structured output (``grammar``), or a forced tool call
        (``forces_call``)."""
        return self.forces_call or self.grammar is not None

    @property
    def forces_call(self) -> bool:
        """``tool_choice`` ``required`` or a named function, which makes an engine force a call
        (vLLM: structured outputs over its own JSON, not the model's markup): no grammar the
        reference knows, so the statistical checks leave these out."""
        return self.tool_choice == "required" or isinstance(self.tool_choice, dict)

    @property
    def greedy(self) -> bool:
        """Greedy as requested, a parameter not sent taking the usual default (T 1, no top_k)."""
        return is_greedy(1.0 if self.temperature is None else self.temperature, self.top_k or 0)


def template_variables(conversation: Conversation, parameters: Parameters) -> dict[str, Any]:
    """What ``apply_chat_template`` gets besides the messages for this request: the
    conversation's tools and template variables (``Conversation.template_kwargs``), and the
    request's ``reasoning_effort``, which templates such as gpt-oss's read. With it comes
    ``enable_thinking = reasoning_effort != "none"`` unless the request set ``enable_thinking``
    itself: vLLM 0.32 (``ChatCompletionRequest.build_chat_params``) and SGLang
    (``normalize_reasoning_inputs``) both derive it, so that ``none`` switches off the thinking
    of templates that read only that flag (Qwen3's). A server that drops the field renders
    another prompt, and the template and reasoning checks say so. Where ``chat_template_kwargs``
    names a ``reasoning_effort`` too, the parameter wins, as in vLLM."""
    out = conversation.template_kwargs()
    effort = parameters.reasoning_effort
    if effort is not None:
        out["reasoning_effort"] = effort
        out.setdefault("enable_thinking", effort != "none")
    return out
