"""Every server answer checked at the seam, before anything is made of it.

A server that breaks its interface in one field of one answer (a log-prob ``"abc"``, a
``text_output`` of ``["Blue.", 7, null]``, ``choices`` missing) must fail that request with the
field named, not stop the run with a traceback deep in the record code, and never be coerced into
text that looks like output ("Blue.7None"). So the targets read answers through a ``Reader``,
whose checks raise one ``TargetError`` of one form: "the server's answer broke the interface:
``choices[0].logprobs.content[3].logprob`` is ``'abc'``, not a number". It is never transient:
the same request would get the same answer in this run (the next run retries error records).

``record`` is the last of these checks: the record's own validators (a positive log-prob, more
log-probs than ids) reject what no field check caught, and are named the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from servecheck.errors import TargetError
from servecheck.formats.records import LOGPROB_SLACK, ResponseRecord

BROKE = "the server's answer broke the interface"
MISSING: Any = type("Missing", (), {"__repr__": lambda self: "missing"})()
"""What ``get`` returns for an absent key: told apart from an explicit ``null``."""


def get(data: dict[str, Any], key: str) -> Any:
    """``data[key]``, or ``MISSING``, for a required field."""
    return data.get(key, MISSING)


def shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Reader:
    """Typed reads of one answer; ``where`` prefixes every message (the endpoint, the frame)."""

    def __init__(self, where: str = "") -> None:
        self.where = where

    def broken(self, field: str, what: str) -> TargetError:
        prefix = f"{self.where}: " if self.where else ""
        return TargetError(f"{prefix}{BROKE}: {field} {what}")

    def _wrong(self, value: Any, field: str, noun: str) -> TargetError:
        if value is MISSING:
            return self.broken(field, f"is missing (expected {noun})")
        return self.broken(field, f"is {shown(value)}, not {noun}")

    def _optional(self, value: Any, optional: bool) -> bool:
        return optional and (value is None or value is MISSING)

    def obj(self, value: Any, field: str, optional: bool = False) -> dict[str, Any]:
        """A JSON object; ``{}`` for an optional one that is absent or null."""
        if self._optional(value, optional):
            return {}
        if not isinstance(value, dict):
            raise self._wrong(value, field, "an object")
        return value

    def items(self, value: Any, field: str, optional: bool = False) -> list[Any]:
        """A JSON array; ``[]`` for an optional one that is absent or null."""
        if self._optional(value, optional):
            return []
        if not isinstance(value, list):
            raise self._wrong(value, field, "a list")
        return value

    def text(self, value: Any, field: str, optional: bool = False) -> str | None:
        if self._optional(value, optional):
            return None
        if not isinstance(value, str):
            raise self._wrong(value, field, "a string")
        return value

    def number(self, value: Any, field: str, optional: bool = False) -> float | None:
        if self._optional(value, optional):
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._wrong(value, field, "a number")
        return value

    def logprob(self, value: Any, field: str, optional: bool = False) -> float | None:
        """A log-probability: a number, at most 0 (NaN or a positive one is no probability)."""
        x = self.number(value, field, optional)
        if x is not None and (math.isnan(x) or x > LOGPROB_SLACK):
            raise self.broken(field, f"is {shown(value)}, not a log-probability (≤ 0)")
        return x

    def _each(self, read: Callable[[Any, str], Any], value: Any, field: str,
              optional: bool) -> list[Any] | None:
        """A JSON array read element by element with ``read``, each named by its index."""
        if self._optional(value, optional):
            return None
        return [read(x, f"{field}[{k}]") for k, x in enumerate(self.items(value, field))]

    def logprobs(self, value: Any, field: str, optional: bool = False) -> list[float] | None:
        return self._each(self.logprob, value, field, optional)

    def integer(self, value: Any, field: str, optional: bool = False) -> int | None:
        if self._optional(value, optional):
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(value, field, "a whole number")
        return value

    def numbers(self, value: Any, field: str, optional: bool = False) -> list[float] | None:
        return self._each(self.number, value, field, optional)

    def integers(self, value: Any, field: str, optional: bool = False) -> list[int] | None:
        return self._each(self.integer, value, field, optional)

    def texts(self, value: Any, field: str) -> list[str]:
        """Strings, or UTF-8 bytes (a gRPC ``BYTES`` tensor)."""
        out = []
        for k, x in enumerate(self.items(value, field)):
            if isinstance(x, bytes):
                try:
                    x = x.decode("utf-8")
                except UnicodeDecodeError:
                    raise self.broken(f"{field}[{k}]", f"is {shown(x)}, not UTF-8 text") from None
            out.append(self.text(x, f"{field}[{k}]"))
        return out

    def model(self, kind: Any, value: Any, field: str) -> Any:
        """``kind.model_validate(value)``, its first complaint named under ``field``."""
        try:
            return kind.model_validate(value)
        except ValidationError as e:
            raise self.broken(*_first(e, field)) from None


def _first(e: ValidationError, field: str) -> tuple[str, str]:
    error = e.errors()[0]
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.get("loc", ()))
    name = f"{field}{loc}" if field else loc.lstrip(".") or "the record made of it"
    what = error.get("msg", "is invalid").removeprefix("Value error, ")
    shown_input = "" if "input" not in error else f" (got {shown(error['input'])})"
    return name, f"is refused: {what}{shown_input}"


def record(where: str = "", **fields: Any) -> ResponseRecord:
    """A ``ResponseRecord`` of what a server answered; a value the record refuses (a positive
    log-prob, more log-probs than ids) is the server's broken answer, named, not a traceback."""
    for name in ("output", "content", "reasoning_content", "input"):
        text = fields.get(name)
        if isinstance(text, str) and not _utf8(text):
            raise Reader(where).broken(name, "holds a lone surrogate: not valid Unicode text "
                                             "(a file of it could not be checked)")
    try:
        return ResponseRecord(**fields)
    except ValidationError as e:
        raise Reader(where).broken(*_first(e, "")) from None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
