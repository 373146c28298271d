"""responses.json on disk: appended record by record, read back whatever state it was left in.

A run can die at any moment (Ctrl-C, a killed server, a full disk), so every record is written
and flushed as soon as it exists, one per line. ``.jsonl`` files are plain JSON Lines. ``.json``
files are a JSON array written one element per line: the closing ``]`` is added when the run
ends and removed again when a rerun appends, and a file left without it is still read. Reading
takes the last record per id, so a retried request replaces its earlier error and nothing is
counted twice.

Records are flushed to the OS as they are written (the collector batches a burst, flushing at
most 50 ms after its first record), which is what survives a killed process; ``fsync``
(surviving a power cut too) runs at most every ``FSYNC_EVERY_S`` and on close, because one per
record costs more than the request itself against a fast server.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

from pydantic import ValidationError

from servecheck.errors import InputError
from servecheck.formats import jsontext
from servecheck.formats.records import (
    ResponseRecord,
    explain,
    read_text,
)
from servecheck.formats.shards import is_sharded, parquet_rows, shard_paths, shard_text
from servecheck.formats.variations import VARIATION_KEYS, variation_mismatch

FSYNC_EVERY_S = 1.0
MAX_RECORD_BYTES = 16 * 2**20
"""A record beyond this is refused by name: one 50 MB record once drove ``check`` to 13 GB."""

log = logging.getLogger("servecheck")


def _torn(line: str, last: bool, ends_with_newline: bool) -> bool:
    """A record a killed writer left half written: the file's last line, without its newline,
    and the start of a record. Anything else that fails to parse is damage the user must see."""
    s = line.strip().lstrip(",").lstrip()
    return last and not ends_with_newline and s.startswith("{")


def _parse_lines(text: str, path: Path, max_bytes: int) -> list[tuple[int, object]]:
    return list(parse_lines(io.StringIO(text), path, max_bytes))


def parse_lines(lines: Iterable[str], path: Path, max_bytes: int, warn: bool = True
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
                if not _torn(line, following is None, line.endswith("\n")):
                    what = "cut short" if e.pos >= len(s) else f"{e.msg} at column {e.colno}"
                    raise InputError(f"line {n} is not valid JSON ({what}): {s[:40]!r}",
                                     where=str(path)) from None
                if warn:
                    log.warning("%s line %d is cut short (a run killed mid-write?): left out; a "
                                "rerun of generate redoes it", path, n)
        line = following


def _refuse_size(size: int, max_bytes: int, where: str) -> None:
    raise InputError(f"a record of {size / 2**20:.1f} MiB is over the {max_bytes / 2**20:.1f} MiB "
                     f"limit (a whole document in one output?); raise --max-record-mb to read it",
                     where=where)


def _drop_torn_tail(path: Path) -> str:
    """Cut a half-written last line (a run killed mid-write) so appends stay parseable."""
    text = read_text(path)
    body, _, last = text.rstrip("\n").rpartition("\n")
    s = last.strip().strip(",")
    if s in ("", "[", "]"):
        return text
    try:
        json.loads(s)
    except json.JSONDecodeError:
        if not _torn(last, True, text.endswith("\n")):
            raise InputError(f"line {body.count(chr(10)) + 2 if body else 1} is not valid JSON; "
                             f"fix or move the file before appending to it",
                             where=str(path)) from None
        text = body + "\n" if body else ""
        path.write_text(text, encoding="utf-8")
    return text


def read_raw(path: Path, max_bytes: int = MAX_RECORD_BYTES) -> list[tuple[str, object]]:
    """(location, object) pairs from a JSON array or JSON Lines file (gzipped where it ends in
    ``.gz``), or the rows of a Parquet shard."""
    if path.name.endswith(".parquet"):
        return parquet_rows(path)
    text = shard_text(path) if path.name.endswith(".gz") else read_text(path)
    if not text.strip():
        raise InputError("file is empty", where=str(path))
    head = text.lstrip()[:1]
    if head not in ("[", "{"):
        raise InputError(f"not JSON: it starts with {text.lstrip()[:20]!r} (expected a JSON "
                         f"list of records or JSON Lines)", where=str(path))
    if head == "[":
        try:
            data = jsontext.parse(text, str(path))
        except json.JSONDecodeError as e:
            if "\n" not in text.strip():  # one line: no record boundary to recover at
                what = "cut short" if e.pos >= len(text.rstrip()) else e.msg
                raise InputError(f"not valid JSON ({what}, line {e.lineno} column {e.colno})",
                                 where=str(path)) from None
        else:  # an array left open by a killed run, or one element per line: parse lines
            if not isinstance(data, list):
                raise InputError("expected a list of records", where=str(path))
            deep, surrogates = jsontext.suspect(text)
            for i, obj in enumerate(data):
                if deep or surrogates:
                    jsontext.check_value(obj, f"{path} record {i}", deep, surrogates)
                if len(text) > max_bytes and len(size := json.dumps(obj)) > max_bytes:
                    _refuse_size(len(size.encode("utf-8")), max_bytes, f"{path} record {i}")
            return [(f"record {i}", obj) for i, obj in enumerate(data)]
    return [(f"line {n}", obj) for n, obj in _parse_lines(text, path, max_bytes)]


def read_records(path: Path, max_record_bytes: int = MAX_RECORD_BYTES) -> list[ResponseRecord]:
    """Validated records, the last answer per id kept (ids absent in foreign files: all kept).
    An answer is one record, or the records of its ``n`` choices (``choice`` 0, 1, …)."""
    located = [(shard, loc, obj) for shard in (shard_paths(path) if is_sharded(path) else [path])
               for loc, obj in read_raw(shard, max_record_bytes)]
    kept = latest(validate_record(obj, f"{shard} {loc}") for shard, loc, obj in located)
    if not kept:
        raise InputError("no records: the file holds only brackets and blank lines",
                         where=str(path))
    return kept


def latest(records: Iterable[ResponseRecord]) -> list[ResponseRecord]:
    """The last answer per id, in the order each id first appeared."""
    answers: dict[str | int, dict[int | None, ResponseRecord]] = {}
    for i, rec in enumerate(records):
        key = rec.id or i  # no id: its own answer (an int never equals an id, not even "#3")
        answer = answers.get(key, {})
        if supersedes(answer, rec.choice):
            answer = {}  # a new answer: it supersedes the one before (an error, a retry)
        answer[rec.choice] = rec
        answers[key] = answer
    return [rec for answer in answers.values() for rec in answer.values()]


def validate_record(obj: object, where: str) -> ResponseRecord:
    """One record object as read, validated; bad input names ``where`` (shard and line)."""
    if not isinstance(obj, dict):
        raise InputError(f"expected a record object, got {type(obj).__name__}", where=where)
    obj, variation = _split_variation(obj)
    try:
        rec = ResponseRecord.model_validate(obj, strict=True)
    except ValidationError as e:
        raise explain(e, where) from None
    problem = variation_mismatch(rec.conversations, variation) if variation else None
    if problem:
        raise InputError(problem, where=where + (f" (id {rec.id})" if rec.id else ""))
    if variation.get("system_prompt") == "" and rec.conversations.contents[0].role != "system":
        rec.mark_empty_system()
    rec.locate(where)
    return rec


def supersedes(answer: dict[int | None, object], choice: int | None) -> bool:
    """Whether a record of ``choice`` starts a new answer to its request (an error, then a
    retry), rather than adding a choice to the answer so far."""
    return choice is None or None in answer or choice in answer


def _split_variation(obj: dict) -> tuple[dict, dict]:
    """A record with the prompts file's ``prompt`` / ``system_prompt`` in its ``parameters`` (as
    the original notes write it), and those keys apart, to be checked against its conversation."""
    params = obj.get("parameters")
    if not isinstance(params, dict) or not any(k in params for k in VARIATION_KEYS):
        return obj, {}
    variation = {k: params[k] for k in VARIATION_KEYS if k in params}
    rest = {k: v for k, v in params.items() if k not in VARIATION_KEYS}
    return {**obj, "parameters": rest}, variation


def compact(path: Path) -> int:
    """Rewrite a finished file without the records a retry superseded (an error, then its
    answer), so plain JSON readers see each request once. Atomic: a new file beside it, fsynced,
    then renamed over it; a crash leaves the old file or the new one, never half of either.
    Returns how many records were dropped. Run it under ``OutputLock``: a writer appending to
    the old file while it is renamed away would lose what it appends."""
    if not path.exists():
        return 0
    raw = read_raw(path)
    records = read_records(path)
    dropped = len(raw) - len(records)
    if dropped <= 0:
        return 0
    array = read_text(path).lstrip().startswith("[")
    tmp = path.with_name(f".{path.name}.compacting")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            lines = [r.model_dump_json(exclude_none=True) for r in records]
            fh.write("[\n" + ",\n".join(lines) + "\n]\n" if array else "\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot rewrite it without its {dropped} superseded error record(s) "
                         f"({_reason(e)}): the file is whole as it is, and read as it is",
                         where=str(path)) from None
    return dropped


def _reason(e: OSError) -> str:
    if e.errno:
        return e.strerror or os.strerror(e.errno)
    return str(e) or type(e).__name__


class WriteFailed(Exception):
    """Writing ``path`` failed (a full or read-only disk, a lost permission): nothing more can
    be kept, so whoever produces records must stop. ``kept``: records flushed before it."""

    def __init__(self, path: Path, error: OSError, kept: int) -> None:
        self.path, self.error, self.kept = path, error, kept
        self.reason = _reason(error)
        super().__init__(f"{path}: cannot write ({self.reason})")


class ResponseWriter:
    """Appends records to ``path`` durably; see the module docstring for the on-disk shape.

    The file is opened (created, or reopened for appending) only when the first record comes, so
    a run that writes nothing leaves no empty file. Any ``OSError`` writing it is raised as
    ``WriteFailed``, and after one the writer writes nothing more (what is on disk stays)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.array = path.suffix != ".jsonl"
        self.kept = 0
        """Records handed to the OS (flushed): what survives this process."""
        self._written = 0
        self._fh: io.TextIOWrapper | None = None
        self._failed: WriteFailed | None = None
        self._created = False
        self._empty = True
        self._synced = 0.0

    def _open(self) -> None:
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._created = not path.exists()
        existing = "" if self._created else _drop_torn_tail(path)
        if self.array and existing.strip() and not existing.lstrip().startswith("["):
            self.array = False  # an existing JSON Lines file keeps its shape
        if self.array and existing.rstrip().endswith("]"):
            # Reopen a finished array: drop the closing bracket so records can follow.
            body = existing.rstrip()[:-1].rstrip()
            path.write_text(body + "\n", encoding="utf-8")
            existing = body
        self._empty = not existing.strip() or existing.strip() == "["
        self._fh = path.open("a", encoding="utf-8")
        if self.array and not existing.strip():
            self._fh.write("[\n")

    def _fail(self, e: OSError) -> WriteFailed:
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.close()  # what it still holds reaches the file, where there is room
                self.kept = self._written
            except OSError:
                pass  # it did not fit either: the file ends torn, which a reader leaves out
        if self._created and not self._written:  # nothing of this run's in it: no file
            self.path.unlink(missing_ok=True)
        self._failed = WriteFailed(self.path, e, self.kept)
        return self._failed

    def write(self, record: ResponseRecord, flush: bool = True) -> None:
        """Append one record; ``flush=False`` leaves it to a ``flush()`` the caller schedules."""
        if self._failed:
            raise self._failed
        line = record.model_dump_json(exclude_none=True)
        try:
            if self._fh is None:
                self._open()
            assert self._fh is not None
            prefix = "," if self.array and not self._empty else ""
            self._fh.write(prefix + line + "\n")
        except OSError as e:
            raise self._fail(e) from e
        self._empty = False
        self._written += 1
        if flush:
            self.flush()

    def flush(self) -> None:
        """Into the OS: what survives a killed process. fsync at most every FSYNC_EVERY_S."""
        if self._failed:
            raise self._failed
        if self._fh is None:
            return
        try:
            self._fh.flush()
            self.kept = self._written
            if time.monotonic() - self._synced > FSYNC_EVERY_S:
                os.fsync(self._fh.fileno())
                self._synced = time.monotonic()
        except OSError as e:
            raise self._fail(e) from e

    def close(self) -> None:
        if self._fh is None or self._fh.closed:
            return
        try:
            if self.array:
                self._fh.write("]\n")
            self._fh.flush()
            self.kept = self._written
            os.fsync(self._fh.fileno())
            self._fh.close()
        except OSError as e:
            raise self._fail(e) from e

    def __enter__(self) -> ResponseWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None and issubclass(exc_type, WriteFailed):
            return  # already closed, as far as it could be
        self.close()
