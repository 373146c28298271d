"""A pydantic validation error as the one line a user can act on: the field path as the file
writes it, what is wrong with it, and the value found.

pydantic's own report runs over many lines, one per union member it tried, with locations in its
own terms (``function-after[...]``, ``list[Message]``); prompts and responses files are both
refused through this, so a bad field reads the same in either.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from servecheck.errors import InputError

__all__ = ["explain"]

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
