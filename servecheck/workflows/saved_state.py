"""Saved check state as plain data: a file planted in the state directory can run no code.

``check --state DIR`` reads back whatever it finds there. Pickle would run whatever a planted
file names, so the verdicts are written as JSON and read back by a decoder that can only build
what servecheck itself defines: a dataclass is written as ``{"$type": "module.QualName", ...its
init fields}`` and read back only when that name resolves, without importing anything, to a
dataclass of a ``servecheck.*`` module already loaded; the only call made is that dataclass's
own constructor. Tuples, sets, numpy scalars, numpy arrays of plain numbers (their bytes, in
base64: exact and compact, as a pooled check's evidence needs) and dicts whose keys are not
plain strings are tagged, so that a round trip gives back equal objects of the same types (a resumed run must
report exactly what an uninterrupted one would). Anything else is ``StateError``: the caller
treats the file as damaged.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import sys
from types import ModuleType
from typing import Any

FORMAT = "servecheck-check-state"
VERSION = 1
"""Bumped when the encoding changes; a file of another version is checked again, not read."""

_NUMPY = ("float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint64",
          "uint32", "uint16", "uint8", "bool_", "bool")
"""The numpy scalar types kept as themselves (checks compute with them), by their type name."""


class StateError(ValueError):
    """A state file that is not one this version of servecheck wrote: treated as absent."""


def dumps(obj: object) -> str:
    """The JSON text of ``obj`` with its format and version."""
    return json.dumps({"format": FORMAT, "version": VERSION, "data": _encode(obj)},
                      allow_nan=True, separators=(",", ":"))


def loads(text: str) -> object:
    """The object ``dumps`` wrote; ``StateError`` for anything else (another format or version,
    a type outside servecheck's own dataclasses, a malformed tag)."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise StateError(f"not JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StateError("not a servecheck state file")
    if doc.get("version") != VERSION:
        raise StateError(f"state format version {doc.get('version')!r}, this servecheck reads "
                         f"{VERSION}")
    try:
        return _decode(doc.get("data"))
    except RecursionError:
        raise StateError("nested too deeply") from None


def _encode(obj: object) -> object:
    if obj is None or type(obj) in (bool, int, float, str):
        return obj
    kind = type(obj)
    if kind.__module__ == "numpy" and kind.__name__ in _NUMPY:
        return {"$numpy": kind.__name__, "value": obj.item()}  # type: ignore[attr-defined]
    if kind.__module__ == "numpy" and kind.__name__ == "ndarray":
        array = obj  # type: ignore[assignment]
        if array.dtype.name not in _NUMPY or array.ndim > 2:  # type: ignore[attr-defined]
            raise TypeError(f"cannot save a numpy array of {array.dtype}")  # type: ignore[attr-defined]
        return {"$ndarray": [array.dtype.name, list(array.shape),  # type: ignore[attr-defined]
                             base64.b64encode(array.tobytes()).decode()]}  # type: ignore[attr-defined]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if not kind.__module__.startswith("servecheck.") or "<" in kind.__qualname__:
            raise TypeError(f"cannot save a {kind.__module__}.{kind.__qualname__}")
        fields = {f.name: _encode(getattr(obj, f.name))
                  for f in dataclasses.fields(obj) if f.init}
        return {"$type": f"{kind.__module__}.{kind.__qualname__}", **fields}
    if kind is list:
        return [_encode(v) for v in obj]  # type: ignore[attr-defined]
    if kind is tuple:
        return {"$tuple": [_encode(v) for v in obj]}  # type: ignore[attr-defined]
    if kind in (set, frozenset):
        return {"$" + kind.__name__: [_encode(v) for v in obj]}  # type: ignore[attr-defined]
    if kind is dict:
        items = obj.items()  # type: ignore[attr-defined]
        if all(type(k) is str and not k.startswith("$") for k, _ in items):
            return {k: _encode(v) for k, v in items}
        return {"$dict": [[_encode(k), _encode(v)] for k, v in items]}
    raise TypeError(f"cannot save a {kind.__module__}.{kind.__qualname__}")


def _decode(data: object) -> Any:
    if isinstance(data, list):
        return [_decode(v) for v in data]
    if not isinstance(data, dict):
        return data  # a number (NaN and ±inf too, as JSON's extension writes them), str, None
    tags = [k for k in data if k.startswith("$")]
    if not tags:
        return {k: _decode(v) for k, v in data.items()}
    tag = tags[0]
    if tag == "$type" and len(tags) == 1:
        cls = _servecheck_dataclass(data["$type"])
        fields = {k: _decode(v) for k, v in data.items() if k != "$type"}
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        if set(fields) - known:
            raise StateError(f"{data['$type']} has no field(s) {sorted(set(fields) - known)}")
        try:
            return cls(**fields)
        except Exception as e:  # its own validation refusing the values: a damaged file
            raise StateError(f"{data['$type']}: {e}") from None
    if tag == "$ndarray" and len(data) == 1:
        return _array(data[tag])
    if len(data) != 1 or tag not in ("$tuple", "$set", "$frozenset", "$dict"):
        return _numpy(data) if tag == "$numpy" else _bad(f"unknown tag {tag!r}")
    items = data[tag]
    if not isinstance(items, list):
        raise StateError(f"{tag} holds {type(items).__name__}, not a list")
    if tag == "$dict":
        if not all(isinstance(p, list) and len(p) == 2 for p in items):
            raise StateError("$dict holds something other than [key, value] pairs")
        return {_hashable(_decode(k)): _decode(v) for k, v in items}
    values = [_decode(v) for v in items]
    if tag == "$tuple":
        return tuple(values)
    hashable = [_hashable(v) for v in values]
    return set(hashable) if tag == "$set" else frozenset(hashable)


def _servecheck_dataclass(name: object) -> type:
    """The class ``name`` names, when it is a dataclass defined in a servecheck module already
    loaded. Looked up in module and class dicts only: no import, no ``__getattr__`` hook."""
    if not isinstance(name, str):
        raise StateError(f"$type {name!r} is not a name")
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # the longest loaded module that prefixes it
        module_name, qualname = ".".join(parts[:cut]), ".".join(parts[cut:])
        module = sys.modules.get(module_name)
        if module is None:
            continue
        if not module_name.startswith("servecheck."):
            break
        found: object = module
        for part in parts[cut:]:
            found = vars(found).get(part) if isinstance(found, (ModuleType, type)) and \
                not part.startswith("__") else None
        if isinstance(found, type) and dataclasses.is_dataclass(found) and \
                found.__module__ == module_name and found.__qualname__ == qualname:
            return found
        break
    raise StateError(f"$type {name!r} is not a servecheck dataclass")


def _numpy(data: dict) -> object:
    name, value = data.get("$numpy"), data.get("value")
    numpy = sys.modules.get("numpy")
    if set(data) != {"$numpy", "value"} or name not in _NUMPY or numpy is None or \
            not isinstance(value, (bool, int, float)):
        raise StateError(f"$numpy {name!r} is not a numpy scalar this state holds")
    return getattr(numpy, name)(value)


def _array(data: object) -> object:
    """An array of one of the plain numeric dtypes, its shape checked against its bytes."""
    numpy = sys.modules.get("numpy")
    if numpy is None or not isinstance(data, list) or len(data) != 3 or \
            data[0] not in _NUMPY or not isinstance(data[1], list) or len(data[1]) > 2 or \
            not all(isinstance(n, int) and n >= 0 for n in data[1]) or \
            not isinstance(data[2], str):
        raise StateError("$ndarray is not [dtype, shape, base64 bytes]")
    try:
        raw = base64.b64decode(data[2], validate=True)
        return numpy.frombuffer(raw, dtype=data[0]).reshape(data[1]).copy()
    except ValueError as e:
        raise StateError(f"$ndarray: {e}") from None


def _hashable(value: object) -> object:
    try:
        hash(value)
    except TypeError:
        raise StateError(f"a {type(value).__name__} as a key or set member") from None
    return value


def _bad(message: str) -> object:
    raise StateError(message)


__all__ = ["FORMAT", "VERSION", "StateError", "dumps", "loads"]
