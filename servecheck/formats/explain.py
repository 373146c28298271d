"""A pydantic validation error as lines a user can act on: the field path as the file writes it,
what is wrong with it, the value found, and for an unknown field the known one it is probably
meant to be.

pydantic's own report runs over many lines, one per union member it tried, with locations in its
own terms (``function-after[...]``, ``list[Message]``); prompts and responses files are both
refused through this, so a bad field reads the same in either. ``explain`` gives the one problem
that names what the user got wrong (a responses file is refused at its first bad record);
``problems`` gives every one of them, a union's tries folded into one, so a prompts file is
mended in one round (``refusal`` puts them in one message, capped at ``MAX_PROBLEMS``).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Collection, Mapping

from pydantic import ValidationError

from servecheck.errors import InputError

__all__ = ["MAX_PROBLEMS", "explain", "problems", "refusal", "suggest"]

UNION_TAGS = {"str", "int", "float", "bool", "none", "dict", "list"}
MAX_PROBLEMS = 20
"""Problems one refusal lists; past it the message says how many there are in all."""

ALIASES = {
    "max_new_tokens": "max_tokens", "max_completion_tokens": "max_tokens",
    "max_output_tokens": "max_tokens", "max_length": "max_tokens", "num_tokens": "max_tokens",
    "num_predict": "max_tokens", "system": "system_prompt", "system_message": "system_prompt",
    "system_messages": "system_prompt", "messages": "prompt", "message": "prompt",
    "conversation": "prompt", "conversations": "prompt", "input": "prompt", "inputs": "prompt",
    "user_prompt": "prompt", "question": "prompt", "questions": "prompt", "temp": "temperature",
    "random_seed": "seed", "stop_sequences": "stop", "stop_words": "stop", "stop_strings": "stop",
    "repeat_penalty": "repetition_penalty", "num_return_sequences": "n", "num_samples": "n",
    "functions": "tools", "text": "content", "author": "role",
}
"""Other engines' and libraries' names for a field (``max_new_tokens`` is transformers'); a
plural of a field (``prompts``, ``temperatures``) is found without being listed."""


def _is_tag(p: object) -> bool:
    return isinstance(p, str) and (p in UNION_TAGS or "[" in p or p.startswith("function-"))


def _field_path(loc: tuple) -> str:
    """A pydantic error location as the file's field path: union members' tags
    (``str``, ``list[Message]``) are pydantic's, not the user's."""
    return ".".join(str(p) for p in loc if not _is_tag(p)) or "(top level)"


def suggest(name: str, known: Collection[str]) -> str | None:
    """The known field ``name`` is probably meant to be: the same in snake_case (``topP``,
    ``top-p``), a plural or singular of one (``prompts``, ``tool``), another engine's name for
    it (``max_new_tokens``), or a close spelling (``temprature``)."""
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower().replace("-", "_")
    snake = re.sub(r"[\s_]+", "_", snake).strip("_")
    for form in (snake, snake.removesuffix("s"), snake.removesuffix("es"), snake + "s"):
        for guess in (form, ALIASES.get(form)):
            if guess in known and guess != name:
                return guess
    aliases = {a: f for a, f in ALIASES.items() if f in known}
    close = difflib.get_close_matches(snake, [*known, *aliases], n=1, cutoff=0.6)
    guess = aliases.get(close[0], close[0]) if close else None
    return None if guess == name else guess


def _got(e: Mapping) -> str:
    got = e.get("input")
    if isinstance(got, dict | list) or "input" not in e:
        return ""
    return f", got {json.dumps(got)[:60]}" if _jsonable(got) else f", got {got!r:.60}"


def _describe(e: Mapping, path: str) -> str:
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "literal_error" and path.endswith("role"):
        msg += " ('assistant' is read as 'model')"
    return msg if path == "(top level)" else f"field '{path}': {msg}{_got(e)}"


def explain(err: ValidationError, where: str) -> InputError:
    """One readable message from a pydantic error. Of several (a union tried every member), the
    deepest is the one that names what the user got wrong: ``prompt.0.0.role``, not ``prompt.0``."""
    first = max(err.errors(), key=lambda e: len(e["loc"]))
    path = _field_path(first["loc"])
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    if first["type"] == "extra_forbidden":
        return InputError(f"unknown field '{path}'{more}", where=where)
    return InputError(_describe(first, path) + more, where=where)


def _kind(tag: str) -> str:
    """A union member's tag as the user's kind of value: ``list[Message]`` is a list of turns."""
    if "Message" in tag:
        return "a list of turns"
    base = tag.split("[")[0]
    return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
            "none": "null", "dict": "an object", "list": "a list"}.get(base, base)


def problems(err: ValidationError, known: Mapping[int, Collection[str]] | None = None
             ) -> list[str]:
    """Every problem of ``err``, one line each. A union's tries at one value are one problem:
    the member that got deepest names it (``prompt.0.0.role``), and where none got past the
    value itself they are said together (``a string or a list of turns``). An unknown field
    comes with the known one it is probably meant to be, or the list of them (``known``: the
    fields at each depth of a field path, ``{1: a block's, 4: a turn's}`` for ``prompt.0.1.x``),
    and a required field it stands for is not said missing again."""
    groups: dict[tuple, dict[object, list[Mapping]]] = {}
    for k, e in enumerate(err.errors()):
        cut = next((i for i, p in enumerate(e["loc"]) if _is_tag(p)), None)
        key = (k,) if cut is None else tuple(e["loc"][:cut])
        groups.setdefault(key, {}).setdefault(None if cut is None else e["loc"][cut], []).append(e)
    found: list[tuple[str, str]] = []  # (the path a missing field is said at, or "", line)
    meant: set[str] = set()
    for key, members in groups.items():
        chosen = max(members.values(), key=lambda es: max(len(e["loc"]) for e in es))
        if len(members) > 1 and all(len(e["loc"]) == len(key) + 1 for e in chosen):
            kinds = " or ".join(_kind(tag) for tag in members)
            found.append(("", f"field '{_field_path(key)}': Input should be {kinds}"
                              f"{_got(chosen[0])}"))
            continue
        for e in chosen:
            path = _field_path(e["loc"])
            if e["type"] != "extra_forbidden":
                missing = e["msg"].removeprefix("Value error, ").startswith("Field required")
                found.append((path if missing else "", _describe(e, path)))
                continue
            fields = (known or {}).get(path.count(".") + 1, ())
            guess = suggest(str(e["loc"][-1]), fields)
            if guess:
                meant.add(".".join([*path.split(".")[:-1], guess]))
            hint = f"did you mean '{guess}'?" if guess else \
                "the fields are " + ", ".join(fields) if fields else ""
            found.append(("", f"unknown field '{path}'" + (f" ({hint})" if hint else "")))
    return [line for missing, line in found if not missing or missing not in meant]


def refusal(found: list[tuple[str, str]], where: str, cap: int = MAX_PROBLEMS) -> InputError:
    """One message for every ``(place, problem)`` found in the file ``where`` (a place such as
    ``block 2``, or ""): a single problem reads as it always did, several are numbered on the
    one line the command line prints, at most ``cap`` of them with the count of all."""
    unique = list(dict.fromkeys(found))
    if len(unique) == 1:
        place, problem = unique[0]
        return InputError(problem, where=f"{where} {place}".strip())
    shown = [f"{k}) {place + ': ' if place else ''}{problem}"
             for k, (place, problem) in enumerate(unique[:cap], 1)]
    rest = len(unique) - len(shown)
    head = f"{len(unique)} problems" + (f", the first {cap}" if rest else "")
    tail = f"; and {rest} more (fix these and run again to see them)" if rest else ""
    return InputError(f"{head}: " + "; ".join(shown) + tail, where=where)


def _jsonable(value: object) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True
