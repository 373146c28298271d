"""The one reader of the responses file formats: JSON Lines (plain or gzipped), a JSON array
and Parquet, as (location, object) pairs, streamed.

A set is read whole where it is small and in two passes where it is a day of logs; both go
through here, so they hold the same records and refuse bad input in the same words. JSON Lines
go line by line and Parquet by row group, in bounded memory; a JSON array is parsed whole, as
only a whole array is JSON (one that a killed run left open is read line by line).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from servecheck.errors import InputError
from servecheck.formats import jsontext
from servecheck.formats.files import text_lines
from servecheck.formats.parquet import parquet_rows

__all__ = ["MAX_RECORD_BYTES", "first_char", "located", "parse_lines", "raw_stream", "torn"]

MAX_RECORD_BYTES = 16 * 2**20
"""A record beyond this is refused by name: one 50 MB record once drove ``check`` to 13 GB."""

log = logging.getLogger("servecheck")


def located(shards: Iterable[Path], max_bytes: int = MAX_RECORD_BYTES, warn: bool = True
            ) -> Iterator[tuple[str, object]]:
    """(where, object) of every shard in turn; ``where`` names the shard and the line, record
    or row, as bad input found later names it."""
    for shard in shards:
        for loc, obj in raw_stream(shard, max_bytes, warn):
            yield f"{shard} {loc}", obj


def raw_stream(path: Path, max_bytes: int = MAX_RECORD_BYTES, warn: bool = True
               ) -> Iterator[tuple[str, object]]:
    """(location, object) pairs of one file or shard (gzipped where it ends in ``.gz``):
    ``line N`` of JSON Lines and of an array left open, ``record N`` of a whole array, ``row N``
    of Parquet. ``warn``: say so where a torn last line is left out."""
    if path.name.endswith(".parquet"):
        yield from parquet_rows(path)
        return
    gunzip = path.name.endswith(".gz")
    if first_char(path, gunzip) == "{":
        for n, obj in parse_lines(text_lines(path, gunzip), path, max_bytes, warn):
            yield f"line {n}", obj
        return
    yield from _array(path, "".join(text_lines(path, gunzip)), max_bytes, warn)


def first_char(path: Path, gunzip: bool) -> str:
    for line in text_lines(path, gunzip):
        if line.strip():
            return line.lstrip()[:1]
    raise InputError("file is empty", where=str(path))


def _array(path: Path, text: str, max_bytes: int, warn: bool) -> list[tuple[str, object]]:
    """A file that does not start with ``{``: a JSON array, whole or left open; anything else
    is named by what it starts with. Parsed before any of it is handed on."""
    if not text.lstrip().startswith("["):
        raise InputError(f"not JSON: it starts with {text.lstrip()[:20]!r} (expected a JSON "
                         f"list of records or JSON Lines)", where=str(path))
    try:
        data = jsontext.parse(text, str(path))
    except json.JSONDecodeError as e:
        if "\n" not in text.strip():  # one line: no record boundary to recover at
            what = "cut short" if e.pos >= len(text.rstrip()) else e.msg
            raise InputError(f"not valid JSON ({what}, line {e.lineno} column {e.colno})",
                             where=str(path)) from None
        # an array left open by a killed run, or one element per line: parse lines
        return [(f"line {n}", obj)
                for n, obj in parse_lines(io.StringIO(text), path, max_bytes, warn)]
    if not isinstance(data, list):
        raise InputError("expected a list of records", where=str(path))
    deep, surrogates = jsontext.suspect(text)
    for i, obj in enumerate(data):
        if deep or surrogates:
            jsontext.check_value(obj, f"{path} record {i}", deep, surrogates)
        if len(text) > max_bytes and len(size := json.dumps(obj)) > max_bytes:
            _refuse_size(len(size.encode("utf-8")), max_bytes, f"{path} record {i}")
    return [(f"record {i}", obj) for i, obj in enumerate(data)]


def parse_lines(lines: Iterable[str], path: Path, max_bytes: int, warn: bool
                ) -> Iterator[tuple[int, object]]:
    """Parse a JSONL body or an array written one element per line, from its lines as read
    (each with its newline, the last perhaps without). A torn last line is left out with a
    warning naming it; any other line that is not JSON is an error naming it."""
    it = iter(lines)
    line = next(it, None)
    n = 0
    while line is not None:
        n += 1
        following = next(it, None)
        s = line.strip().rstrip(",").lstrip(",").strip()
        if s not in ("", "[", "]"):
            if len(s) > max_bytes:  # characters ≤ bytes: a cheap bound before the exact one
                _refuse_size(len(s.encode("utf-8")), max_bytes, f"{path} line {n}")
            try:
                yield n, jsontext.loads(s, f"{path} line {n}")
            except json.JSONDecodeError as e:
                if not torn(line, following is None, line.endswith("\n")):
                    what = "cut short" if e.pos >= len(s) else f"{e.msg} at column {e.colno}"
                    raise InputError(f"line {n} is not valid JSON ({what}): {s[:40]!r}",
                                     where=str(path)) from None
                if warn:
                    log.warning("%s line %d is cut short (a run killed mid-write?): left out; a "
                                "rerun of generate redoes it", path, n)
        line = following


def torn(line: str, last: bool, ends_with_newline: bool) -> bool:
    """A record a killed writer left half written: the file's last line, without its newline,
    and the start of a record. Anything else that fails to parse is damage the user must see."""
    s = line.strip().lstrip(",").lstrip()
    return last and not ends_with_newline and s.startswith("{")


def _refuse_size(size: int, max_bytes: int, where: str) -> None:
    raise InputError(f"a record of {size / 2**20:.1f} MiB is over the {max_bytes / 2**20:.1f} MiB "
                     f"limit (a whole document in one output?); raise --max-record-mb to read it",
                     where=where)
