"""Structured outputs: the grammar a request asks the server to decode under, in the names the
servers read, and the one form the rest of servecheck reads it in.

A request asks for structure in one of three dialects, and a production log carries whichever
its clients sent:

- OpenAI's ``response_format``: ``{"type": "json_object"}`` or ``{"type": "json_schema",
  "json_schema": {"name": …, "schema": {…}, "strict": …}}`` (every OpenAI-compatible server);
- vLLM's ``structured_outputs`` (0.10.2 on; ``json``, ``regex``, ``choice``, ``grammar``,
  ``json_object``), and its older top-level ``guided_json``, ``guided_regex``,
  ``guided_choice``, ``guided_grammar``, read here as the same thing;
- SGLang's top-level ``regex`` and ``ebnf`` (its ``json_schema`` is a string of the schema).

``Grammar`` is what they mean, once: a kind and its source. A request that asks two (a
``response_format`` and a regex) is refused, as vLLM refuses it, rather than guessed at.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["GRAMMAR_FIELDS", "Grammar", "GrammarKind", "grammar_of"]

GrammarKind = Literal["json_object", "json_schema", "regex", "choice", "ebnf", "tool_calls"]

GRAMMAR_FIELDS = ("response_format", "structured_outputs", "guided_json", "guided_regex",
                  "guided_choice", "guided_grammar", "regex", "ebnf", "json_schema")
"""The request fields, in the servers' names, that ask for a grammar."""

_VLLM_KEYS = {"json": "json_schema", "regex": "regex", "choice": "choice", "grammar": "ebnf",
              "json_object": "json_object"}


@dataclass(frozen=True)
class Grammar:
    kind: GrammarKind
    source: str
    """``json_schema``: the schema as compact JSON, its keys in their order (engines emit properties
    in the order the schema declares them); ``regex``: the pattern; ``choice``: a JSON
    list of the strings; ``ebnf``: the grammar's text; ``json_object``: empty; ``tool_calls`` (a
    forced call in the template's markup, ``reference.forced_calls``, never a request's own
    field): JSON of the call's opener, closer, separator, its body's schema and how many calls
    may follow one another."""

    @property
    def schema(self) -> dict[str, Any] | None:
        return json.loads(self.source) if self.kind == "json_schema" else None

    @property
    def choices(self) -> list[str] | None:
        return json.loads(self.source) if self.kind == "choice" else None

    @property
    def is_json(self) -> bool:
        return self.kind in ("json_object", "json_schema")

    @property
    def holds_json(self) -> bool:
        """JSON inside, so a layout (whitespace, properties) applies."""
        return self.is_json or self.kind == "tool_calls"

    def describe(self) -> str:
        """In words, for findings: the kind, and the schema's name or the source's start."""
        if self.kind == "tool_calls":
            return "forced tool call's grammar (the template's call markup)"
        return self.kind if self.kind == "json_object" else f"{self.kind} {self.source[:60]!r}"

    @classmethod
    def json_schema(cls, schema: dict[str, Any]) -> Grammar:
        return cls("json_schema", json.dumps(schema, separators=(",", ":")))  # order is meaning


def _did_you_mean(key: str) -> str:
    close = difflib.get_close_matches(key, list(_VLLM_KEYS), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _schema(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where} is a string that is not JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a JSON schema (an object), not {type(value).__name__}")
    return value


def _from_response_format(rf: Any) -> Grammar | None:
    if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
        raise ValueError('response_format must be {"type": "text"}, {"type": "json_object"} or '
                         '{"type": "json_schema", "json_schema": {"name": …, "schema": {…}}}')
    if rf["type"] == "text":
        return None
    if rf["type"] == "json_object":
        return Grammar("json_object", "")
    spec = rf.get("json_schema")
    if not isinstance(spec, dict) or "schema" not in spec:
        raise ValueError('response_format json_schema needs "json_schema": {"name": …, '
                         '"schema": {…}}')
    return Grammar.json_schema(_schema(spec["schema"], "response_format.json_schema.schema"))


def _one(kind: str, value: Any, where: str) -> Grammar | None:
    if value is None or value is False:
        return None
    if kind == "json_schema":
        return Grammar.json_schema(_schema(value, where))
    if kind == "json_object":
        return Grammar("json_object", "")
    if kind == "choice":
        if not (isinstance(value, list) and value and all(isinstance(c, str) for c in value)):
            raise ValueError(f"{where} must be a non-empty list of strings")
        return Grammar("choice", json.dumps(value))
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where} must be a non-empty string")
    return Grammar(kind, value)  # type: ignore[arg-type]


def grammar_of(fields: dict[str, Any]) -> Grammar | None:
    """The grammar that a request's fields (``GRAMMAR_FIELDS``, as sent) ask for; None: none.
    Raises ``ValueError`` naming the fields where they ask two or are malformed."""
    found: list[tuple[str, Grammar]] = []
    if fields.get("response_format") is not None:
        g = _from_response_format(fields["response_format"])
        found += [("response_format", g)] if g else []
    so = fields.get("structured_outputs")
    if so is not None:
        if not isinstance(so, dict) or set(so) - set(_VLLM_KEYS):
            raise ValueError(f"structured_outputs takes {', '.join(_VLLM_KEYS)}" + (
                "".join(f", not {k!r}{_did_you_mean(k)}" for k in sorted(set(so) - set(_VLLM_KEYS)))
                if isinstance(so, dict) else ""))
        found += [(f"structured_outputs.{k}", g) for k, v in so.items()
                  if (g := _one(_VLLM_KEYS[k], v, f"structured_outputs.{k}"))]
    for name, kind in (("guided_json", "json_schema"), ("guided_regex", "regex"),
                       ("guided_choice", "choice"), ("guided_grammar", "ebnf"),
                       ("regex", "regex"), ("ebnf", "ebnf"), ("json_schema", "json_schema")):
        if (g := _one(kind, fields.get(name), name)) is not None:
            found.append((name, g))
    if len(found) > 1:
        raise ValueError(f"a request asks for one structure at most, this one for "
                         f"{len(found)}: {', '.join(n for n, _ in found)}")
    return found[0][1] if found else None
