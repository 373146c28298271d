"""The tool calls and thinking in each output, read once with the reference template's markup.

The tool-call, reasoning and usage checks and the report all read them; parsing an output and
validating its calls against the offered schemas is done here once per record and cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from servecheck.formats.records import ResponseRecord
from servecheck.formats.tools import schema_of
from servecheck.reference.forced_calls import Dialect, calls_of_json, dialect_of
from servecheck.reference.markup import Markup, Parsed, RawCall, markup_of
from servecheck.reference.model import Reference

__all__ = ["CheckedCall", "RecordMarkup", "structure_problem"]


@dataclass(frozen=True)
class CheckedCall:
    """A call as the model wrote it, and what is wrong with it as a call of an offered function."""

    raw: RawCall
    problem: tuple[str, str] | None
    """(bucket, message): invalid JSON, unknown name, schema mismatch; None for a valid call."""


class RecordMarkup:
    """Each record's output parsed with the reference template's markup, on first use."""

    def __init__(self, ref: Reference, records: list[ResponseRecord],
                 prompts: list[str] | None = None) -> None:
        self.ref, self.records = ref, records
        self.prompts = prompts
        """The reference prompts: where one ends on the thinking opener, the output starts
        inside a thinking block."""
        self._parsed: dict[int, Parsed] = {}
        self._calls: dict[int, list[CheckedCall]] = {}

    @cached_property
    def markup(self) -> Markup:
        return markup_of(self.ref)

    def parsed(self, i: int) -> Parsed:
        if i not in self._parsed:
            p = self.records[i].parameters
            if not p.constrained:
                self._parsed[i] = self.markup.parse(self.records[i].output)
            elif not p.forces_call:
                self._parsed[i] = self._structured(i)
            else:  # a forced call: the calls in the markup, or vLLM's JSON read as calls
                head = self._structured(i)
                inner = self.markup.parse(head.content) if self.dialect(i) == "markup" else \
                    Parsed(None, "", calls_of_json(head.content, p.tool_choice or "required"))
                self._parsed[i] = Parsed(head.reasoning, inner.content, inner.calls)
        return self._parsed[i]

    def _structured(self, i: int) -> Parsed:
        prefilled = self.prompts is not None and self.markup.think_open is not None and \
            self.prompts[i].rstrip().endswith(self.markup.think_open.strip())
        return self.markup.parse_structured(self.records[i].output, prefilled)

    def dialect(self, i: int) -> Dialect:
        """The dialect of record i's forced call (``forced_calls.dialect_of``)."""
        return dialect_of(self._structured(i).content, self.markup)

    def calls(self, i: int) -> list[CheckedCall]:
        """Record i's calls, each checked against the tools its request offered."""
        if i not in self._calls:
            tools = self.records[i].conversations.tools or []
            self._calls[i] = [CheckedCall(c, structure_problem(c, tools))
                              for c in self.parsed(i).calls]
        return self._calls[i]


def structure_problem(raw: RawCall, tools: list[dict]) -> tuple[str, str] | None:
    """(bucket, message) for a call that is not a valid call of an offered function."""
    from jsonschema.validators import validator_for

    if raw.call is None:
        return "invalid JSON", f"{raw.error}: {raw.text[:80]!r}"
    name = raw.call.function.name
    schema = schema_of(tools, name)
    if schema is None:
        return "unknown name", f"calls {name!r}, which is not among the tools offered"
    args = raw.call.parsed_arguments()
    validator = validator_for(schema)(schema)
    error = next(iter(sorted(validator.iter_errors(args), key=lambda e: list(e.path))), None)
    if error is not None:
        where = "/".join(str(p) for p in error.path) or "arguments"
        return "schema mismatch", f"{name}: {where}: {error.message[:120]}"
    return None
