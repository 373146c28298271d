"""JSON text parsed into values every later stage can hold: what ``json.loads`` lets through or
throws besides a syntax error, refused as bad input where it is read.

``json.loads`` accepts three things that break servecheck far from the file: a lone surrogate
(``"\\ud800"``: a ``str`` that no UTF-8 writer can write, so the report crashed at the end of
a run), nesting thousands deep (a ``RecursionError``, or a structure the validators and the
JSON encoder then recurse through), and an integer of thousands of digits (Python's own
``int_max_str_digits`` ``ValueError``). Each is refused here with the file, the line or record
and the field. The checks cost one ``str.count`` and one regular expression search per text;
the walk over the value runs only when they say it may find something.
"""

from __future__ import annotations

import json
import re
import sys

from servecheck.errors import InputError

MAX_DEPTH = 100
"""Arrays and objects inside one another, at most: a record is 4 deep, a tool's JSON Schema
rarely 20. Python's own parser gives up near 1000, and the validators and the encoder that
walk a value later recurse once or more per level."""
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
"""A ``\\uD800``–``\\uDFFF`` escape: a lone surrogate, unless it is half of a pair (an emoji
written as two escapes), which the walk tells apart."""
_LONG_NUMBER = re.compile(r"-?\d+")


def loads(text: str, where: str) -> object:
    """``json.loads(text)``; a syntax error stays ``json.JSONDecodeError`` (each reader words its
    own), everything else wrong is an ``InputError`` naming ``where`` and, in a text of several
    lines, the line."""
    value = parse(text, where)
    check(value, text, where)
    return value


def parse(text: str, where: str) -> object:
    """``json.loads``, its ``RecursionError`` and number-size ``ValueError`` as bad input."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise InputError(f"nested deeper than {MAX_DEPTH} levels (arrays and objects inside one "
                         f"another)", where=_at_line(where, text, _too_deep_at(text))) from None
    except ValueError as e:  # Python's int_max_str_digits limit
        limit = sys.get_int_max_str_digits()
        found = next((m for m in _LONG_NUMBER.finditer(text)
                      if limit and len(m.group().lstrip("-")) > limit), None)
        if found is None:
            raise InputError(f"not valid JSON ({str(e)[:120]})", where=where) from None
        digits = len(found.group().lstrip("-"))
        raise InputError(f"a number of {digits:,} digits (at most {limit:,}): not a value any "
                         f"field takes", where=_at_line(where, text, found.start())) from None


def suspect(text: str) -> tuple[bool, bool]:
    """Whether a value parsed from ``text`` may be too deep, and may hold a lone surrogate: the
    cheap tests that decide whether ``check_value`` must walk it."""
    return (text.count("[") + text.count("{") > MAX_DEPTH,
            _SURROGATE_ESCAPE.search(text) is not None)


def check(value: object, text: str, where: str) -> None:
    """Refuse a value parsed from ``text`` that is too deep or holds a lone surrogate."""
    deep, surrogates = suspect(text)
    if deep or surrogates:
        check_value(value, where, deep=deep, surrogates=surrogates)


def check_value(value: object, where: str, deep: bool = True, surrogates: bool = True) -> None:
    """Walk ``value`` (iteratively: the depth is what is in doubt) for nesting deeper than
    ``MAX_DEPTH`` and for a string or key that is not valid Unicode; the first found, in
    document order, is refused naming its field."""
    stack: list[tuple[object, tuple[str, ...], int]] = [(value, (), 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            if surrogates:
                _refuse_surrogate(item, path, where)
            continue
        if not isinstance(item, dict | list):
            continue
        if deep and depth > MAX_DEPTH:
            raise InputError(f"{_field(path)}nested deeper than {MAX_DEPTH} levels (arrays and "
                             f"objects inside one another)", where=where)
        pairs = list(item.items()) if isinstance(item, dict) else list(enumerate(item))
        for key, child in reversed(pairs):
            if surrogates and isinstance(key, str):
                _refuse_surrogate(key, (*path, key), where, key=True)
            stack.append((child, (*path, str(key)), depth + 1))


def _refuse_surrogate(text: str, path: tuple[str, ...], where: str, key: bool = False) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        what = f"the key {ascii(text)[:60]} of " if key else ""
        field = _field(path[:-1] if key else path).removesuffix(": ")
        raise InputError(f"{what}{field or 'the value'}: a lone surrogate "
                         f"(\\u{ord(text[e.start]):04x}) at character {e.start}: not valid "
                         f"Unicode text", where=where) from None


def _field(path: tuple[str, ...]) -> str:
    """``field 'a.b.c': ``, a long path shortened to its ends (one line stays readable)."""
    if len(path) > 8:
        path = (*path[:4], "…", *path[-3:])
    return f"field '{'.'.join(p[:40] for p in path)}': " if path else ""


def _at_line(where: str, text: str, offset: int | None) -> str:
    """``where`` with the line of ``offset`` added, for a text of several lines."""
    if offset is None or "\n" not in text.strip():
        return where
    return f"{where} line {text.count(chr(10), 0, offset) + 1}"


def _too_deep_at(text: str) -> int | None:
    """Where nesting first goes past ``MAX_DEPTH`` (strings skipped): only on the error path, so
    a character loop is fine."""
    depth, in_string, escaped = 0, False, False
    for k, c in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return k
        elif c in "]}":
            depth -= 1
    return None
